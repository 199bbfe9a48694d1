//! The agent's configuration (`agent.toml`): AWS access, metrics, and one section per camera.
//! Names follow kvssink where a setting means the same (`stream_name`, `fragment_duration`,
//! `retention_period`, `kms_key_id`), with the unit in the name.
//!
//! - `camera`: a `[[cameras]]` table (source, encoder, stream, upload policy, recorder
//!   schedule, motion trigger).
//! - `mqtt`: the `[mqtt]` section.
//! - `validate`: reading the file and checking it whole.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::AwsSettings;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Identifies this device in logs and (later) MQTT topics.
    #[serde(default = "default_device_id")]
    pub device_id: String,
    /// Where the agent keeps its state (the journal, the last good config).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub aws: AwsSettings,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub upload: UploadConfig,
    #[serde(default)]
    pub journal: JournalSettings,
    /// MQTT health and (later) control; off when absent.
    pub mqtt: Option<MqttConfig>,
    /// systemd's watchdog (`WatchdogSec=`): when a camera's pipeline counts as stalled.
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    pub cameras: Vec<CameraConfig>,
}

/// The watchdog is pinged only while every camera's capture, fragmenter, journal and
/// uploader make progress; a stage with work that has done nothing for `stall_secs`
/// stops the pings (and systemd restarts the agent once `WatchdogSec=` passes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Default: the upload ack timeout + the longest backoff + 60 s, so that an uploader
    /// waiting out an outage (it retries at least that often) never counts as stalled.
    pub stall_secs: Option<u64>,
}

impl AgentConfig {
    /// How long a stage may do nothing, with work to do, before it counts as stalled.
    pub fn stall_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.watchdog.stall_secs.unwrap_or(
            self.upload.ack_timeout_secs + self.upload.backoff_max_ms.div_ceil(1000) + 60,
        ))
    }
}

fn default_device_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kvs-edge".into())
}

fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kvs-edge-agent"))
}

/// Where AWS credentials come from.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialsConfig {
    /// The AWS SDK's default chain: environment, shared config/credentials files (profiles),
    /// web identity, ECS and EC2 instance metadata.
    #[default]
    #[serde(rename = "default")]
    Chain,
    /// Only the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    Environment,
    /// Keys written in the config (for kvs-local and tests; use `LoadCredential=` in production).
    Static {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
    /// The AWS IoT credential provider: the device's X.509 certificate (mutual TLS) buys
    /// temporary credentials for a role alias. The thing name is its own setting, never the
    /// stream name (kvssink's `iot-certificate` property has the same parts).
    Iot {
        /// The account's credential provider endpoint (`xxxx.credentials.iot.<region>.amazonaws.com`),
        /// a host name or an https:// URL.
        endpoint: String,
        role_alias: String,
        thing_name: String,
        cert_path: PathBuf,
        key_path: PathBuf,
        /// The CA that signs the endpoint's certificate (AmazonRootCA1.pem); system roots when absent.
        ca_path: Option<PathBuf>,
    },
}

impl fmt::Debug for CredentialsConfig {
    /// Never prints secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsConfig::Chain => write!(f, "Default chain"),
            CredentialsConfig::Environment => write!(f, "Environment"),
            CredentialsConfig::Static { access_key_id, .. } => {
                write!(
                    f,
                    "Static {{ access_key_id: {access_key_id:?}, secret_access_key: \"***\" }}"
                )
            }
            CredentialsConfig::Iot {
                endpoint,
                role_alias,
                thing_name,
                cert_path,
                ..
            } => write!(
                f,
                "Iot {{ endpoint: {endpoint:?}, role_alias: {role_alias:?}, thing_name: {thing_name:?}, cert: {} }}",
                cert_path.display()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on this address (e.g. `127.0.0.1:9464`); off when absent.
    pub listen: Option<SocketAddr>,
}

/// The on-device journal, per camera under `<state_dir>/journal/<camera>`. Knobs after the
/// KVS Edge Agent's (`MaxLocalMediaSizeInMB`, `EdgeRetentionInHours`, `StrategyOnFullSize`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    /// `fragment`: fsync each fragment (nothing acknowledged as journaled is lost, even on
    /// power loss); `interval`: at most every `fsync_interval_ms`; `never`: leave it to the OS.
    #[serde(default)]
    pub fsync: FsyncMode,
    #[serde(default = "default_fsync_interval")]
    pub fsync_interval_ms: u64,
    /// Budget per camera for unsent video on disk.
    #[serde(default = "default_journal_size")]
    pub max_size_mb: u64,
    /// Unsent video older than this is dropped (counted); absent = kept until the budget.
    pub max_age_hours: Option<u64>,
    /// Keep this much disk free, whatever the budget says.
    #[serde(default = "default_min_free")]
    pub min_free_mb: u64,
    #[serde(default)]
    pub on_full: OnFull,
    #[serde(default = "default_segment")]
    pub segment_mb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    #[default]
    Fragment,
    Interval,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Drop the oldest unsent video to make room (DELETE_OLDEST_MEDIA).
    #[default]
    DeleteOldest,
    /// Refuse new video while full (DENY_NEW_MEDIA): the backlog is kept, live video is lost.
    DenyNew,
}

fn default_fsync_interval() -> u64 {
    1000
}
fn default_journal_size() -> u64 {
    1024
}
fn default_min_free() -> u64 {
    256
}
fn default_segment() -> u64 {
    4
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            fsync: FsyncMode::default(),
            fsync_interval_ms: default_fsync_interval(),
            max_size_mb: default_journal_size(),
            max_age_hours: None,
            min_free_mb: default_min_free(),
            on_full: OnFull::default(),
            segment_mb: default_segment(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Start a new PutMedia session after this long (KVS ends them at ~45 min).
    #[serde(default = "default_rotate")]
    pub session_rotate_secs: u64,
    /// Fragments sent but not yet PERSISTED, at most (the rest wait in the journal).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Upload rate caps per stream (KVS allows 5 fragments/s and 12.5 MB/s); lower them
    /// so that draining a backlog leaves the uplink usable.
    #[serde(default = "default_fps_cap")]
    pub max_fragments_per_sec: u32,
    #[serde(default = "default_bytes_cap")]
    pub max_bytes_per_sec: u64,
    /// Backoff between failed sessions: from `min` doubling to `max`, with jitter.
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// A session whose acks stop arriving for this long is abandoned and retried.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_secs: u64,
}

fn default_rotate() -> u64 {
    40 * 60
}
fn default_in_flight() -> usize {
    16
}
fn default_fps_cap() -> u32 {
    5
}
fn default_bytes_cap() -> u64 {
    12_500_000
}
fn default_backoff_min() -> u64 {
    250
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_ack_timeout() -> u64 {
    30
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            session_rotate_secs: default_rotate(),
            max_in_flight: default_in_flight(),
            max_fragments_per_sec: default_fps_cap(),
            max_bytes_per_sec: default_bytes_cap(),
            backoff_min_ms: default_backoff_min(),
            backoff_max_ms: default_backoff_max(),
            ack_timeout_secs: default_ack_timeout(),
        }
    }
}

mod camera;
mod mqtt;
mod validate;

pub use camera::*;
pub use mqtt::*;
pub(crate) use mqtt::{default_mqtt_port, default_prefix};
pub(crate) use validate::source_culprit;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [aws]
        region = "us-east-1"
        endpoint_url = "http://127.0.0.1:4567"
        [credentials]
        kind = "static"
        access_key_id = "kvslocal"
        secret_access_key = "kvslocal-secret"
        [[cameras]]
        name = "front"
        stream_name = "demo-cam"
        source = { type = "test" }
        create_stream = { retention_period = 24 }
    "#;

    #[test]
    fn credential_references_read_systemd_credentials() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("aws-secret"), "s3cr3t\n").unwrap();
        std::fs::write(dir.path().join("mqtt-key.pem"), "KEY").unwrap();
        let text = MINIMAL.replace("\"kvslocal-secret\"", "\"credential:aws-secret\"")
            + "[mqtt]\nhost = \"h\"\n[mqtt.tls]\ncert_path = \"c.pem\"\nkey_path = \"credential:mqtt-key.pem\"\n";
        let mut cfg: AgentConfig = crate::from_toml("agent.toml", &text).unwrap();
        cfg.resolve_credentials("agent.toml", Some(dir.path()))
            .unwrap();
        match &cfg.credentials {
            CredentialsConfig::Static {
                secret_access_key, ..
            } => assert_eq!(secret_access_key, "s3cr3t"),
            other => panic!("{other:?}"),
        }
        let tls = cfg.mqtt.as_ref().unwrap().tls.as_ref().unwrap();
        assert_eq!(
            tls.key_path.as_deref(),
            Some(dir.path().join("mqtt-key.pem").as_path())
        );
        assert_eq!(
            tls.cert_path.as_deref(),
            Some(std::path::Path::new("c.pem"))
        );

        let mut cfg: AgentConfig = crate::from_toml("agent.toml", &text).unwrap();
        let e = cfg.resolve_credentials("agent.toml", None).unwrap_err();
        assert_eq!(e.path, "credentials.secret_access_key");
        assert!(e.message.contains("LoadCredential="), "{e}");
        std::fs::remove_file(dir.path().join("mqtt-key.pem")).unwrap();
        let mut cfg: AgentConfig = crate::from_toml("agent.toml", &text).unwrap();
        let e = cfg
            .resolve_credentials("agent.toml", Some(dir.path()))
            .unwrap_err();
        assert_eq!(e.path, "mqtt.tls.key_path");
        assert!(e.message.contains("no such credential"), "{e}");
    }

    #[test]
    fn the_stall_limit_outlasts_the_uploaders_own_retries() {
        let cfg = AgentConfig::from_toml("agent.toml", MINIMAL).unwrap();
        // ack timeout 30 s + longest backoff 30 s + 60 s.
        assert_eq!(cfg.stall_after(), std::time::Duration::from_secs(120));
        let cfg = AgentConfig::from_toml(
            "agent.toml",
            &format!("{MINIMAL}\n[watchdog]\nstall_secs = 5\n"),
        )
        .unwrap();
        assert_eq!(cfg.stall_after(), std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_wrong_source_setting_is_named_inside_the_source() {
        let text = MINIMAL.replace(
            "source = { type = \"test\" }",
            "source = { type = \"test\", fps = -5 }",
        );
        let e = AgentConfig::from_toml("agent.toml", &text).unwrap_err();
        assert!(e.path.starts_with("cameras[0].source.fps (line "), "{e}");
    }

    #[test]
    fn a_file_source_must_be_there() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone.mp4");
        let with = |path: &std::path::Path| {
            MINIMAL.replace(
                "source = { type = \"test\" }",
                &format!(
                    "source = {{ type = \"file\", path = \"{}\" }}",
                    path.display()
                ),
            )
        };
        let e = AgentConfig::from_toml("agent.toml", &with(&missing)).unwrap_err();
        assert_eq!(e.path, "cameras[0].source.path");
        assert!(
            e.message.contains("gone.mp4") && e.message.contains("No such file"),
            "{e}"
        );
        let e = AgentConfig::from_toml("agent.toml", &with(dir.path())).unwrap_err();
        assert!(e.message.contains("is a directory"), "{e}");
        std::fs::write(&missing, b"media").unwrap();
        AgentConfig::from_toml("agent.toml", &with(&missing)).unwrap();
    }

    #[test]
    fn the_effective_toml_reads_back_the_same_without_its_secrets() {
        let text = format!(
            "{MINIMAL}\n[[cameras]]\nname = \"gate\"\nstream_name = \"gate\"\n\
             source = {{ type = \"rtsp\", url = \"rtsp://admin:hunter2@10.0.0.5/stream1\", \
             username = \"admin\", password = \"hunter2\" }}\n"
        );
        let cfg = AgentConfig::from_toml("agent.toml", &text).unwrap();
        let effective = cfg.effective_toml().unwrap();
        assert!(!effective.contains("kvslocal-secret"), "{effective}");
        assert!(!effective.contains("hunter2"), "{effective}");
        assert!(
            effective.contains("fragment_duration_ms = 2000"),
            "defaults shown: {effective}"
        );
        // It is a configuration: read back, it is the same but for the secrets.
        let back = AgentConfig::from_toml("effective.toml", &effective).unwrap();
        assert_eq!(back.cameras.len(), 2);
        assert_eq!(back.cameras[0], cfg.cameras[0]);
        assert_eq!(back.upload, cfg.upload);
        assert_eq!(back.journal, cfg.journal);
    }

    #[test]
    fn systemds_state_directory_wins_over_the_files() {
        let mut cfg = AgentConfig::from_toml(
            "agent.toml",
            &format!("state_dir = \"kvs-edge-state\"\n{MINIMAL}"),
        )
        .unwrap();
        assert_eq!(
            cfg.use_state_directory(Some("/var/lib/kvs-edge-agent".into())),
            Some(PathBuf::from("kvs-edge-state"))
        );
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/kvs-edge-agent"));
        assert_eq!(
            cfg.use_state_directory(None),
            None,
            "nothing set: the file's"
        );
        assert_eq!(
            cfg.use_state_directory(Some("/var/lib/kvs-edge-agent".into())),
            None,
            "the same: nothing to say"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = AgentConfig::from_toml("agent.toml", MINIMAL).unwrap();
        let cam = &cfg.cameras[0];
        assert_eq!(
            (cam.fragment_duration_ms, cam.max_fragment_duration_ms),
            (2000, 10_000)
        );
        assert_eq!(
            cam.create_stream.as_ref().unwrap().retention_period_hours,
            24
        );
        assert!(matches!(
            cam.source,
            SourceConfig::Test {
                width: 640,
                height: 360,
                fps: 25,
                ..
            }
        ));
        assert!(
            !format!("{:?}", cfg.credentials).contains("kvslocal-secret"),
            "secrets are redacted"
        );
    }

    /// MINIMAL with `key = value` in its camera's table.
    fn with_camera_key(key: &str, value: &str) -> Result<AgentConfig, crate::ConfigError> {
        AgentConfig::from_toml(
            "agent.toml",
            &MINIMAL.replace("[[cameras]]", &format!("[[cameras]]\n{key} = {value}")),
        )
    }

    #[test]
    fn errors_name_the_field() {
        let bad = MINIMAL.replace("stream_name = \"demo-cam\"", "stream_name = \"demo cam\"");
        let e = AgentConfig::from_toml("agent.toml", &bad).unwrap_err();
        assert_eq!(e.path, "cameras[0].stream_name");
        let bad = MINIMAL.replace(
            "source = { type = \"test\" }",
            "source = { type = \"test\", fps = 0 }",
        );
        assert_eq!(
            AgentConfig::from_toml("agent.toml", &bad).unwrap_err().path,
            "cameras[0].source"
        );
        let bad = MINIMAL.replace(
            "source = { type = \"test\" }",
            "source = { type = \"rtsp\", url = \"http://x\" }",
        );
        assert_eq!(
            AgentConfig::from_toml("agent.toml", &bad).unwrap_err().path,
            "cameras[0].source.url"
        );
        let bad = MINIMAL.replace(
            "name = \"front\"",
            "name = \"front\"\nfragment_duration_ms = 30000",
        );
        assert_eq!(
            AgentConfig::from_toml("agent.toml", &bad).unwrap_err().path,
            "cameras[0].fragment_duration_ms"
        );
        // The service's limit is checked here, not found out as an error ack.
        let bad = MINIMAL.replace(
            "name = \"front\"",
            "name = \"front\"\nmax_fragment_duration_ms = 15000",
        );
        let e = AgentConfig::from_toml("agent.toml", &bad).unwrap_err();
        assert_eq!(e.path, "cameras[0].max_fragment_duration_ms");
        assert!(
            e.message.contains("10 s") && e.message.contains("4002"),
            "{e}"
        );
        let e = AgentConfig::from_toml("agent.toml", &MINIMAL.replace("[aws]", "[aws]\nbogus = 1"))
            .unwrap_err();
        assert!(e.message.contains("unknown field `bogus`"), "{e}");
        let two = format!(
            "{MINIMAL}\n[[cameras]]\nname = \"back\"\nstream_name = \"demo-cam\"\nsource = {{ type = \"test\" }}"
        );
        let e = AgentConfig::from_toml("agent.toml", &two).unwrap_err();
        assert_eq!(e.path, "cameras[1].stream_name");
    }

    #[test]
    fn mqtt_tls_and_shadow_settings() {
        let with = |mqtt: &str| AgentConfig::from_toml("agent.toml", &format!("{MINIMAL}\n{mqtt}"));
        let cfg = with("[mqtt]\nhost = \"x.iot.us-east-1.amazonaws.com\"\nport = 443\n[mqtt.tls]\ncert_path = \"d.pem\"\nkey_path = \"d.key\"\n[mqtt.shadow]\nthing_name = \"pi-7\"")
            .unwrap();
        let m = cfg.mqtt.unwrap();
        let tls = m.tls.unwrap();
        assert_eq!(
            tls.alpn_for(443),
            ["x-amzn-mqtt-ca"],
            "AWS IoT on 443 needs ALPN"
        );
        assert!(tls.alpn_for(8883).is_empty());
        assert_eq!(m.shadow.unwrap().name, "kvs-edge");
        assert_eq!(m.protocol, MqttProtocol::V5, "MQTT 5 unless asked");
        // Upload policies: a scheduled one needs a Quartz schedule and a duration.
        let policy = |p: &str| with_camera_key("upload_policy", p);
        let cfg = policy(r#"{ mode = "scheduled", schedule = "0 0 2 * * ?", duration_s = 3600, max_bytes_per_sec = 250000 }"#).unwrap();
        assert_eq!(cfg.cameras[0].upload_policy.mode, UploadMode::Scheduled);
        for (bad, path) in [
            (
                r#"{ mode = "scheduled" }"#,
                "cameras[0].upload_policy.schedule",
            ),
            (
                r#"{ mode = "scheduled", schedule = "0 2 * * *", duration_s = 60 }"#,
                "cameras[0].upload_policy.schedule",
            ),
            (
                r#"{ mode = "scheduled", schedule = "0 0 2 * * ?" }"#,
                "cameras[0].upload_policy.duration_s",
            ),
            (
                r#"{ mode = "on_demand", schedule = "0 0 2 * * ?" }"#,
                "cameras[0].upload_policy",
            ),
            (
                r#"{ max_bytes_per_sec = 10 }"#,
                "cameras[0].upload_policy.max_bytes_per_sec",
            ),
            (
                r#"{ window_max_bytes_per_sec = 10 }"#,
                "cameras[0].upload_policy.window_max_bytes_per_sec",
            ),
            (
                r#"{ live_max_wait_s = 0 }"#,
                "cameras[0].upload_policy.live_max_wait_s",
            ),
        ] {
            assert_eq!(policy(bad).unwrap_err().path, path, "{bad}");
        }
        // The motion trigger: off unless set; every bad field named.
        let motion = |m: &str| with_camera_key("motion", m);
        assert_eq!(
            AgentConfig::from_toml("agent.toml", MINIMAL)
                .unwrap()
                .cameras[0]
                .motion,
            None
        );
        let m = motion("{ pre_s = 5 }").unwrap().cameras[0]
            .motion
            .clone()
            .unwrap();
        assert_eq!(
            (m.pre_s, m.post_s, m.threshold, m.label.as_str()),
            (5, 30, 0.005, "motion")
        );
        for (bad, path) in [
            ("{ threshold = 0.0 }", "cameras[0].motion.threshold"),
            ("{ threshold = 2.0 }", "cameras[0].motion.threshold"),
            ("{ post_s = 4000 }", "cameras[0].motion.post_s"),
            ("{ quiet_s = 0 }", "cameras[0].motion.quiet_s"),
            ("{ label = \"\" }", "cameras[0].motion.label"),
        ] {
            assert_eq!(motion(bad).unwrap_err().path, path, "{bad}");
        }
        // A recorder schedule: a Quartz expression and a duration, both checked.
        let record = |r: &str| with_camera_key("record_schedule", r);
        assert!(record(r#"{ schedule = "0 0 8 ? * MON-FRI", duration_s = 36000 }"#).is_ok());
        for (bad, path) in [
            (
                r#"{ schedule = "0 8 * * *", duration_s = 60 }"#,
                "cameras[0].record_schedule.schedule",
            ),
            (
                r#"{ schedule = "0 0 8 * * ?", duration_s = 0 }"#,
                "cameras[0].record_schedule.duration_s",
            ),
        ] {
            assert_eq!(record(bad).unwrap_err().path, path, "{bad}");
        }
        let m = with("[mqtt]\nhost = \"h\"\nprotocol = \"3.1.1\"")
            .unwrap()
            .mqtt
            .unwrap();
        assert_eq!(m.protocol, MqttProtocol::V311);
        let e = with("[mqtt]\nhost = \"h\"\nprotocol = \"4\"").unwrap_err();
        assert!(e.path.starts_with("mqtt.protocol"), "{e:?}");
        let e = with("[mqtt]\nhost = \"h\"\n[mqtt.tls]\ncert_path = \"d.pem\"").unwrap_err();
        assert_eq!(e.path, "mqtt.tls");
        let e = with("[mqtt]\nhost = \"h\"\n[mqtt.shadow]\nthing_name = \"a/#\"").unwrap_err();
        assert_eq!(e.path, "mqtt.shadow.thing_name");
    }

    #[test]
    fn rtsp_passwords_never_print() {
        let src = SourceConfig::Rtsp {
            url: "rtsp://admin:hunter2@10.0.0.5:554/stream1".into(),
            username: None,
            password: Some("hunter2".into()),
            transport: RtspTransport::Tcp,
            latency_ms: 200,
        };
        let shown = format!("{src:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("rtsp://admin:***@10.0.0.5:554/stream1"),
            "{shown}"
        );
        assert_eq!(redact_url("rtsp://cam.local/live"), "rtsp://cam.local/live");
    }
}
