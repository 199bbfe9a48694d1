//! The last accepted remote configuration, kept in `<state_dir>/remote-config.json` so that
//! a restart comes back with it (not with `agent.toml`'s cameras, nor a retained message).
//! Written atomically: a temporary file, fsync, rename over the old one, fsync the directory.
//! The file holds secrets (RTSP passwords), so it is created mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use kvs_edge_config::AgentConfig;
use kvs_edge_config::remote;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const FILE: &str = "remote-config.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub version: u64,
    /// When it was accepted (ms since the epoch).
    pub accepted_ms: i64,
    pub document: Value,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The persisted configuration, if any. A file that cannot be read is an error naming it.
pub fn load(state_dir: &Path) -> Result<Option<Persisted>, String> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Replaces the persisted configuration with `cfg`'s remote part at `version`.
pub fn save(state_dir: &Path, version: u64, cfg: &AgentConfig, now_ms: i64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir)?;
    let record = Persisted {
        version,
        accepted_ms: now_ms,
        document: remote::document(cfg),
    };
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&record).expect("a JSON value serializes"))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path(state_dir))?;
    std::fs::File::open(state_dir)?.sync_all()
}

/// The configuration to start with: `file` with the persisted remote part over it, and
/// its version (0 without one). A persisted document that no longer validates is reported
/// and skipped, but its version still counts, so old documents stay stale.
pub fn effective(file: AgentConfig) -> (AgentConfig, u64, Option<String>) {
    match load(&file.state_dir) {
        Ok(None) => (file, 0, None),
        Ok(Some(p)) => match remote::replace_with(&file, p.document) {
            Ok(cfg) => {
                let note = format!(
                    "using the remote configuration version {} from {} (cameras, upload and journal as accepted over MQTT)",
                    p.version,
                    path(&file.state_dir).display()
                );
                (cfg, p.version, Some(note))
            }
            Err(e) => {
                let note = format!(
                    "ignoring the remote configuration version {} in {}: {e}; using the file",
                    p.version,
                    path(&file.state_dir).display()
                );
                (file, p.version, Some(note))
            }
        },
        Err(e) => (file, 0, Some(format!("ignoring {e}; using the file"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_configuration_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "state_dir = {:?}\n[aws]\nregion = \"us-east-1\"\n[[cameras]]\nname = \"front\"\nstream_name = \"s\"\nsource = {{ type = \"test\" }}\n",
            dir.path()
        );
        let file = AgentConfig::from_toml("agent.toml", &text).unwrap();
        assert_eq!(effective(file.clone()).1, 0);
        let mut changed = file.clone();
        changed.cameras[0].encoder.bitrate_kbps = 777;
        save(dir.path(), 5, &changed, 1).unwrap();
        let (cfg, version, note) = effective(file.clone());
        assert_eq!((cfg, version), (changed, 5));
        assert!(note.unwrap().contains("version 5"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A damaged file is reported, and the file configuration is used.
        std::fs::write(path(dir.path()), b"{\"version\": 5, \"acc").unwrap();
        let (cfg, version, note) = effective(file.clone());
        assert_eq!((cfg, version), (file, 0));
        assert!(note.unwrap().contains("ignoring"));
    }
}
