//! Local playback: a window of a camera's journal written out as Matroska files that any
//! player opens (`kvs-edge-agent --export`), from what the device recorded, sent or not.
//! Read-only, so it works while the agent runs. A file per codec configuration: where the
//! camera's tracks change inside the window, the next file (`<name>-2.mkv` …) begins.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kvs_edge_config::AgentConfig;

use crate::codec::TrackSet;
use crate::journal::{self, JournalError};
use crate::mkv::{self, TrackSpec};

/// Writes `camera`'s recording of `[start_ms, end_ms)` to `output` (and numbered siblings
/// where the tracks change); the files written, with how many fragments each holds.
pub fn export(
    cfg: &AgentConfig,
    camera: &str,
    start_ms: i64,
    end_ms: i64,
    output: &Path,
) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    if !cfg.cameras.iter().any(|c| c.name == camera) {
        let names: Vec<&str> = cfg.cameras.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "no camera {camera:?} in the configuration (cameras: {})",
            names.join(", ")
        );
    }
    if end_ms <= start_ms {
        bail!("the window ends before it starts");
    }
    let dir = cfg.state_dir.join("journal").join(camera);
    let mut files: Vec<(PathBuf, usize)> = Vec::new();
    let mut current: Option<(std::sync::Arc<TrackSet>, BufWriter<File>)> = None;
    let mut write = |record: journal::Record| -> Result<(), JournalError> {
        let io = |path: &Path, e: std::io::Error| JournalError::Io {
            path: path.display().to_string(),
            source: e,
        };
        if current
            .as_ref()
            .is_none_or(|(tracks, _)| **tracks != *record.tracks)
        {
            if let Some((_, mut w)) = current.take() {
                let path = &files.last().expect("a file is open").0;
                w.flush().map_err(|e| io(path, e))?;
            }
            let path = numbered(output, files.len() + 1);
            let file = File::create(&path).map_err(|e| io(&path, e))?;
            let mut w = BufWriter::new(file);
            let uid: [u8; 16] = rand_uid();
            let header = mkv::session_header(
                uid,
                &TrackSpec::of(&record.tracks),
                concat!("kvs-edge-agent ", env!("CARGO_PKG_VERSION"), " export"),
            );
            w.write_all(&header).map_err(|e| io(&path, e))?;
            files.push((path, 0));
            current = Some((record.tracks.clone(), w));
        }
        let (_, w) = current.as_mut().expect("opened above");
        let (path, n) = files.last_mut().expect("a file is open");
        w.write_all(&record.bytes).map_err(|e| io(path, e))?;
        *n += 1;
        Ok(())
    };
    let count = journal::read_window(&dir, start_ms, end_ms, &mut write)
        .with_context(|| format!("reading {}", dir.display()))?;
    if let Some((_, mut w)) = current {
        w.flush().context("writing the export")?;
    }
    if count == 0 {
        bail!(
            "the journal in {} holds nothing of that window (never recorded, or dropped by retention)",
            dir.display()
        );
    }
    Ok(files)
}

/// `out.mkv`, then `out-2.mkv`, `out-3.mkv` …
fn numbered(output: &Path, n: usize) -> PathBuf {
    if n == 1 {
        return output.to_path_buf();
    }
    let stem = output
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("export");
    let ext = output.extension().and_then(|s| s.to_str()).unwrap_or("mkv");
    output.with_file_name(format!("{stem}-{n}.{ext}"))
}

fn rand_uid() -> [u8; 16] {
    let mut uid = [0u8; 16];
    uid[..8].copy_from_slice(&crate::backoff::random_u64().to_be_bytes());
    uid[8..].copy_from_slice(&crate::backoff::random_u64().to_be_bytes());
    uid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_after_the_first_are_numbered() {
        let out = Path::new("/tmp/yard.mkv");
        assert_eq!(numbered(out, 1), PathBuf::from("/tmp/yard.mkv"));
        assert_eq!(numbered(out, 3), PathBuf::from("/tmp/yard-3.mkv"));
    }
}
