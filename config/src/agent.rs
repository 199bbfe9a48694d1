//! The agent's configuration (`agent.toml`): AWS access, metrics, and one section per camera.
//! Names follow kvssink where a setting means the same (`stream_name`, `fragment_duration`,
//! `retention_period`, `kms_key_id`), with the unit in the name.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{AwsSettings, ConfigError};

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

/// The MQTT broker the agent reports to (topics under `<prefix>/<device_id>/`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Topic prefix (like Frigate's `frigate/`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Default: `kvs-edge-<device_id>`.
    pub client_id: Option<String>,
    /// `"5"` (default) or `"3.1.1"` for brokers that speak only that. MQTT 5 is what lets
    /// the agent see a retained command sent while it is connected, keep messages too large
    /// for it at the broker, and answer on a request's response topic (docs/mqtt.md).
    #[serde(default)]
    pub protocol: MqttProtocol,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Publish per-camera stats this often.
    #[serde(default = "default_stats_interval")]
    pub stats_interval_secs: u64,
    /// TLS to the broker (server verification always on); plain TCP when absent.
    pub tls: Option<MqttTls>,
    /// Also take the configuration from an AWS IoT named shadow.
    pub shadow: Option<ShadowConfig>,
}

/// TLS to the broker: a CA file (system roots when absent), a client certificate for mutual
/// TLS (AWS IoT Core's device certificate), and ALPN protocols (AWS IoT on port 443 needs
/// `x-amzn-mqtt-ca`, which is the default there).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    pub ca_path: Option<PathBuf>,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    #[serde(default)]
    pub alpn: Vec<String>,
}

/// AWS IoT Device Shadow mode: desired configuration from
/// `$aws/things/<thing_name>/shadow/name/<name>/…`, reported back after it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    pub thing_name: String,
    #[serde(default = "default_shadow_name")]
    pub name: String,
}

fn default_shadow_name() -> String {
    "kvs-edge".into()
}

impl MqttTls {
    /// The ALPN protocols to offer: the configured ones, or AWS IoT's on port 443.
    pub fn alpn_for(&self, port: u16) -> Vec<String> {
        if self.alpn.is_empty() && port == 443 {
            vec!["x-amzn-mqtt-ca".into()]
        } else {
            self.alpn.clone()
        }
    }
}

/// The MQTT protocol version the agent speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum MqttProtocol {
    #[default]
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}

pub(crate) fn default_mqtt_port() -> u16 {
    1883
}
pub(crate) fn default_prefix() -> String {
    "kvs-edge".into()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_stats_interval() -> u64 {
    30
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

/// The longest fragment KVS takes (PutMedia API reference: "Fragments that have time codes
/// spanning longer than 10 seconds … are not allowed"; ERROR 4002 otherwise).
pub const MAX_FRAGMENT_DURATION_MS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    pub name: String,
    pub stream_name: String,
    pub source: SourceConfig,
    /// Cut a fragment at the first keyframe after this long (ms).
    #[serde(default = "default_fragment", alias = "fragment_duration")]
    pub fragment_duration_ms: u64,
    /// Never send a fragment longer than this (ms; at most 10 s: the PutMedia reference
    /// refuses longer fragments with ERROR 4002, and their video is lost).
    #[serde(default = "default_max_fragment")]
    pub max_fragment_duration_ms: u64,
    /// Restart the source when it delivers nothing for this long.
    #[serde(default = "default_stall")]
    pub stall_timeout_secs: u64,
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// Audio: absent = send what the camera sends (an RTSP camera's or a file's audio track);
    /// true = also make it where the source can (a test tone, a V4L2 camera's microphone);
    /// false = video only.
    pub audio: Option<bool>,
    /// Create the stream when it does not exist (like kvssink); off = it must exist.
    pub create_stream: Option<CreateStreamConfig>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When recorded video goes to KVS (the KVS Edge Agent's uploader schedule). Recording
    /// into the journal never stops; `[journal]` is its retention.
    #[serde(default)]
    pub upload_policy: UploadPolicy,
    /// A local motion trigger: motion raises an alarm like `alarm/set` does (fragment tags,
    /// events, and on a scheduled or on-demand camera its window uploaded). Absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub motion: Option<MotionSettings>,
    /// When the camera records (the KVS Edge Agent's recorder ScheduleConfig): absent =
    /// always; else only in the schedule's windows, and while an alarm lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_schedule: Option<RecordSchedule>,
}

/// Recording windows: a Quartz cron expression in UTC and how long each stays open.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSchedule {
    pub schedule: String,
    pub duration_s: u64,
}

/// The local motion trigger of a camera.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MotionSettings {
    /// The fraction of the picture (0-1, compared at 64x36) that must change between two
    /// looks for motion: 0.005 sees a person across a room; raise it for trees and rain.
    #[serde(default = "default_motion_threshold")]
    pub threshold: f32,
    /// Seconds before the motion started that the alarm covers (from the recording).
    #[serde(default = "default_motion_pre")]
    pub pre_s: u64,
    /// Seconds after the motion ended that the alarm covers.
    #[serde(default = "default_motion_post")]
    pub post_s: u64,
    /// Seconds without motion after which motion has ended.
    #[serde(default = "default_motion_quiet")]
    pub quiet_s: u64,
    /// The alarm's label.
    #[serde(default = "default_motion_label")]
    pub label: String,
}

impl Default for MotionSettings {
    fn default() -> Self {
        MotionSettings {
            threshold: default_motion_threshold(),
            pre_s: default_motion_pre(),
            post_s: default_motion_post(),
            quiet_s: default_motion_quiet(),
            label: default_motion_label(),
        }
    }
}

fn default_motion_threshold() -> f32 {
    0.005
}
fn default_motion_pre() -> u64 {
    10
}
fn default_motion_post() -> u64 {
    30
}
fn default_motion_quiet() -> u64 {
    5
}
fn default_motion_label() -> String {
    "motion".into()
}

/// A camera's upload policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadPolicy {
    #[serde(default)]
    pub mode: UploadMode,
    /// `scheduled`: when upload windows open, a Quartz cron expression evaluated in UTC
    /// (seconds first, like the KVS Edge Agent's ScheduleExpression: `0 0 2 * * ?`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// `scheduled`: how long each window stays open (the Edge Agent's DurationInSeconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u64>,
    /// This camera's upload byte rate cap (bytes/s); the `[upload]` cap when absent (the
    /// lower of the two applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
    /// A further byte rate cap (bytes/s) on video recorded under a scheduled or on-demand
    /// policy: what windows send, on top of `max_bytes_per_sec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_max_bytes_per_sec: Option<u64>,
    /// How long live video waits at most while a window of older video is sent on the
    /// same connection: windows go in bursts of at most this long, then live catches up.
    #[serde(default = "default_live_max_wait_s")]
    pub live_max_wait_s: u64,
    /// Delete video from the device once KVS has it (default); `false` keeps it for local
    /// playback until the journal's retention needs the room.
    #[serde(default = "yes")]
    pub delete_after_upload: bool,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        UploadPolicy {
            mode: UploadMode::default(),
            schedule: None,
            duration_s: None,
            max_bytes_per_sec: None,
            window_max_bytes_per_sec: None,
            live_max_wait_s: default_live_max_wait_s(),
            delete_after_upload: true,
        }
    }
}

fn default_live_max_wait_s() -> u64 {
    10
}

impl UploadPolicy {
    /// The Quartz cron parser: seconds required, an optional year, `1`-`7` = SUN-SAT.
    pub fn cron(expr: &str) -> Result<croner::Cron, String> {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .alternative_weekdays(true)
            .build()
            .parse(expr)
            .map_err(|e| format!("{expr:?} is not a Quartz cron expression: {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UploadMode {
    /// Everything, as it is recorded (after an outage, the backlog first).
    #[default]
    Continuous,
    /// Everything, but only while a `schedule` window is open (the backlog first).
    Scheduled,
    /// Only the windows asked for (`<camera>/upload/set`, alarms); the rest stays on the
    /// device until the journal's retention drops it.
    OnDemand,
}

fn default_fragment() -> u64 {
    2000
}
fn default_max_fragment() -> u64 {
    10_000
}
fn default_stall() -> u64 {
    10
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateStreamConfig {
    /// Hours of archive (kvssink `retention-period`); 0 = no archive.
    #[serde(default = "default_retention", alias = "retention_period")]
    pub retention_period_hours: u32,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub kms_key_id: Option<String>,
}

fn default_retention() -> u32 {
    24
}

#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// videotestsrc with a burned-in wall clock.
    Test {
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_fps")]
        fps: u32,
        #[serde(default = "default_pattern")]
        pattern: String,
    },
    /// A recorded file (mp4, mkv, raw .h264); H.264 is passed through.
    File {
        path: PathBuf,
        #[serde(default, rename = "loop")]
        looping: bool,
        /// Pace at real time (true) or as fast as possible.
        #[serde(default = "yes")]
        realtime: bool,
    },
    /// An IP camera; its H.264 is passed through without re-encoding.
    Rtsp {
        url: String,
        username: Option<String>,
        password: Option<String>,
        #[serde(default)]
        transport: RtspTransport,
        #[serde(default = "default_latency")]
        latency_ms: u32,
    },
    /// A V4L2 camera (`/dev/video0`), MJPEG or raw, encoded to H.264 here (or `h264` passthrough).
    V4l2 {
        #[serde(default = "default_device")]
        device: PathBuf,
        width: Option<u32>,
        height: Option<u32>,
        fps: Option<u32>,
        #[serde(default)]
        format: V4l2Format,
        /// An ALSA capture device (`hw:1,0`, `plughw:CARD=Mic`) recorded next to the video
        /// and encoded to AAC, when the camera's `audio` is not false.
        microphone: Option<String>,
    },
}

impl fmt::Debug for SourceConfig {
    /// Redacts RTSP passwords (in the field and inside the URL).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceConfig::Test {
                width,
                height,
                fps,
                pattern,
            } => {
                write!(f, "Test {{ {width}x{height}@{fps}, pattern {pattern} }}")
            }
            SourceConfig::File {
                path,
                looping,
                realtime,
            } => {
                write!(
                    f,
                    "File {{ {}, loop {looping}, realtime {realtime} }}",
                    path.display()
                )
            }
            SourceConfig::Rtsp {
                url,
                username,
                transport,
                latency_ms,
                ..
            } => write!(
                f,
                "Rtsp {{ {}, user {username:?}, {transport:?}, latency {latency_ms} ms }}",
                redact_url(url)
            ),
            SourceConfig::V4l2 {
                device,
                width,
                height,
                fps,
                format,
                microphone,
            } => {
                write!(
                    f,
                    "V4l2 {{ {}, {width:?}x{height:?}@{fps:?}, {format:?}, microphone {microphone:?} }}",
                    device.display()
                )
            }
        }
    }
}

/// `rtsp://user:secret@host/…` → `rtsp://user:***@host/…`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let sep = if path.is_empty() && !rest.contains('/') {
                ""
            } else {
                "/"
            };
            format!("{scheme}://{user}:***@{host}{sep}{path}")
        }
        None => url.to_string(),
    }
}

fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    360
}
fn default_fps() -> u32 {
    25
}
fn default_pattern() -> String {
    "ball".into()
}
fn default_latency() -> u32 {
    200
}
fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RtspTransport {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum V4l2Format {
    /// Whatever the camera offers, decoded and encoded.
    #[default]
    Auto,
    Mjpeg,
    Raw,
    /// The camera encodes H.264 itself: passed through.
    H264,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    #[serde(default = "default_bitrate")]
    pub bitrate_kbps: u32,
    /// Encoder elements to try in order; empty = hardware encoders first, then x264enc.
    #[serde(default)]
    pub prefer: Vec<String>,
}

fn default_bitrate() -> u32 {
    2000
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            bitrate_kbps: default_bitrate(),
            prefer: Vec::new(),
        }
    }
}

impl AgentConfig {
    /// Parses and validates `agent.toml`; `source_name` appears in every error.
    pub fn from_toml(source_name: &str, text: &str) -> Result<AgentConfig, ConfigError> {
        let mut cfg: AgentConfig = crate::from_toml(source_name, text).map_err(|mut e| {
            // `cameras[0].source (line 7, column 10)` → `cameras[0].source.fps (…)`.
            let (field, place) = e.path.split_once(" (").unwrap_or((e.path.as_str(), ""));
            if let Some(culprit) = toml_source_culprit(text, field) {
                e.path = match place {
                    "" => format!("{field}.{culprit}"),
                    place => format!("{field}.{culprit} ({place}"),
                };
            }
            e
        })?;
        cfg.apply_environment();
        let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        cfg.resolve_credentials(source_name, creds.as_deref())?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    /// Secrets and key files from systemd's credentials (`LoadCredential=`): a setting
    /// written `credential:NAME` is the file `NAME` in `$CREDENTIALS_DIRECTORY` (a path
    /// setting becomes that path; a secret setting becomes the file's content, trimmed).
    pub fn resolve_credentials(
        &mut self,
        source_name: &str,
        directory: Option<&std::path::Path>,
    ) -> Result<(), ConfigError> {
        let err = |path: &str, message: String| ConfigError {
            source_name: source_name.into(),
            path: path.into(),
            message,
        };
        let file = |path: &str, value: &str| -> Result<Option<PathBuf>, ConfigError> {
            let Some(name) = value.strip_prefix("credential:") else {
                return Ok(None);
            };
            let dir = directory.ok_or_else(|| {
                err(
                    path,
                    format!(
                        "{value}: $CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit)"
                    ),
                )
            })?;
            if name.is_empty() || name.contains('/') {
                return Err(err(path, format!("{value}: not a credential name")));
            }
            let p = dir.join(name);
            if !p.is_file() {
                return Err(err(
                    path,
                    format!("{value}: no such credential ({} is missing)", p.display()),
                ));
            }
            Ok(Some(p))
        };
        let resolve_path = |path: &str, v: &mut PathBuf| -> Result<(), ConfigError> {
            if let Some(p) = file(path, &v.to_string_lossy())? {
                *v = p;
            }
            Ok(())
        };
        let resolve_secret = |path: &str, v: &mut String| -> Result<(), ConfigError> {
            if let Some(p) = file(path, v)? {
                *v = std::fs::read_to_string(&p)
                    .map_err(|e| err(path, format!("{}: {e}", p.display())))?
                    .trim()
                    .to_string();
            }
            Ok(())
        };
        match &mut self.credentials {
            CredentialsConfig::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                resolve_secret("credentials.access_key_id", access_key_id)?;
                resolve_secret("credentials.secret_access_key", secret_access_key)?;
                if let Some(t) = session_token {
                    resolve_secret("credentials.session_token", t)?;
                }
            }
            CredentialsConfig::Iot {
                cert_path,
                key_path,
                ca_path,
                ..
            } => {
                resolve_path("credentials.cert_path", cert_path)?;
                resolve_path("credentials.key_path", key_path)?;
                if let Some(c) = ca_path {
                    resolve_path("credentials.ca_path", c)?;
                }
            }
            CredentialsConfig::Chain | CredentialsConfig::Environment => {}
        }
        if let Some(tls) = self.mqtt.as_mut().and_then(|m| m.tls.as_mut()) {
            for (path, v) in [
                ("mqtt.tls.ca_path", &mut tls.ca_path),
                ("mqtt.tls.cert_path", &mut tls.cert_path),
                ("mqtt.tls.key_path", &mut tls.key_path),
            ] {
                if let Some(v) = v {
                    resolve_path(path, v)?;
                }
            }
        }
        for cam in &mut self.cameras {
            if let SourceConfig::Rtsp {
                password: Some(p), ..
            } = &mut cam.source
            {
                resolve_secret(&format!("cameras.{}.source.password", cam.name), p)?;
            }
        }
        Ok(())
    }

    /// The AWS SDK's endpoint variables apply when the file sets no endpoint.
    /// The configuration as TOML, as it would run (defaults filled in, the environment and
    /// systemd's directories applied), with secrets (`secret_access_key`, `session_token`,
    /// passwords, passwords inside RTSP URLs) replaced by `***`: what `--check` prints.
    pub fn effective_toml(&self) -> Result<String, String> {
        let mut value = toml::Value::try_from(self).map_err(|e| e.to_string())?;
        redact_secrets(&mut value);
        toml::to_string_pretty(&value).map_err(|e| e.to_string())
    }

    /// systemd's `STATE_DIRECTORY` (from `StateDirectory=` in the unit), when set, is where
    /// the state goes whatever the file says: the unit's sandbox allows writing only there.
    /// Returns the file's setting when it was overridden, for the log.
    pub fn use_state_directory(&mut self, state_directory: Option<PathBuf>) -> Option<PathBuf> {
        let dir = state_directory.filter(|d| !d.as_os_str().is_empty())?;
        if dir == self.state_dir {
            return None;
        }
        Some(std::mem::replace(&mut self.state_dir, dir))
    }

    fn apply_environment(&mut self) {
        if self.aws.endpoint_url.is_none() {
            self.aws.endpoint_url = ["AWS_ENDPOINT_URL_KINESIS_VIDEO", "AWS_ENDPOINT_URL"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        }
        if self.aws.region.is_none() {
            self.aws.region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        }
    }

    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let err = |path: String, message: String| ConfigError {
            source_name: source_name.into(),
            path,
            message,
        };
        self.aws.validate(source_name, "aws")?;
        if self.aws.region.is_none() {
            return Err(err(
                "aws.region".into(),
                "required (or set AWS_REGION)".into(),
            ));
        }
        if let CredentialsConfig::Iot {
            endpoint,
            role_alias,
            thing_name,
            ..
        } = &self.credentials
        {
            for (field, value) in [
                ("endpoint", endpoint),
                ("role_alias", role_alias),
                ("thing_name", thing_name),
            ] {
                if value.trim().is_empty() {
                    return Err(err(
                        format!("credentials.{field}"),
                        "must not be empty".into(),
                    ));
                }
            }
            if endpoint.starts_with("http://") {
                return Err(err(
                    "credentials.endpoint".into(),
                    "the IoT credential provider needs https".into(),
                ));
            }
        }
        if self.cameras.is_empty() {
            return Err(err(
                "cameras".into(),
                "at least one camera is required".into(),
            ));
        }
        let u = &self.upload;
        if u.backoff_min_ms == 0 || u.backoff_min_ms > u.backoff_max_ms {
            return Err(err(
                "upload.backoff_min_ms".into(),
                "must be at least 1 and at most backoff_max_ms".into(),
            ));
        }
        if !(60..=44 * 60).contains(&u.session_rotate_secs) {
            return Err(err(
                "upload.session_rotate_secs".into(),
                "must be 60 to 2640 (KVS ends sessions at 45 min)".into(),
            ));
        }
        if u.max_in_flight == 0 || u.max_fragments_per_sec == 0 || u.max_bytes_per_sec < 100_000 {
            return Err(err(
                "upload".into(),
                "max_in_flight and max_fragments_per_sec must be at least 1, max_bytes_per_sec at least 100000".into(),
            ));
        }
        let j = &self.journal;
        if j.max_size_mb == 0 {
            return Err(err(
                "journal.max_size_mb".into(),
                "must be at least 1".into(),
            ));
        }
        if j.max_age_hours.is_some_and(|h| !(1..=720).contains(&h)) {
            return Err(err(
                "journal.max_age_hours".into(),
                "must be 1 to 720 (like EdgeRetentionInHours)".into(),
            ));
        }
        if !(1..=256).contains(&j.segment_mb) {
            return Err(err("journal.segment_mb".into(), "must be 1 to 256".into()));
        }
        if let Some(m) = &self.mqtt {
            if m.host.trim().is_empty() {
                return Err(err("mqtt.host".into(), "must not be empty".into()));
            }
            let topic_safe =
                |t: &str| !t.is_empty() && !t.contains(['+', '#', '\0']) && !t.starts_with('$');
            if !topic_safe(&m.prefix)
                || !topic_safe(&self.device_id)
                || self.device_id.contains('/')
            {
                return Err(err(
                    "mqtt.prefix".into(),
                    "prefix and device_id must be MQTT topic levels without +, # or a leading $"
                        .into(),
                ));
            }
            if let Some(t) = &m.tls
                && t.cert_path.is_some() != t.key_path.is_some()
            {
                return Err(err(
                    "mqtt.tls".into(),
                    "cert_path and key_path go together (the client certificate and its key)"
                        .into(),
                ));
            }
            if let Some(s) = &m.shadow {
                for (field, value) in [("thing_name", &s.thing_name), ("name", &s.name)] {
                    let ok = (1..=128).contains(&value.len())
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b));
                    if !ok {
                        return Err(err(
                            format!("mqtt.shadow.{field}"),
                            format!("{value:?} must be 1-128 characters of [a-zA-Z0-9_:-]"),
                        ));
                    }
                }
            }
            if !(5..=3600).contains(&m.keep_alive_secs)
                || !(1..=86_400).contains(&m.stats_interval_secs)
            {
                return Err(err(
                    "mqtt".into(),
                    "keep_alive_secs must be 5 to 3600 and stats_interval_secs 1 to 86400".into(),
                ));
            }
        }
        let (mut names, mut streams) = (HashSet::new(), HashSet::new());
        for (i, cam) in self.cameras.iter().enumerate() {
            let at = |field: &str| format!("cameras[{i}].{field}");
            let p = &cam.upload_policy;
            match (p.mode, &p.schedule, p.duration_s) {
                (UploadMode::Scheduled, None, _) => {
                    return Err(err(
                        at("upload_policy.schedule"),
                        "required with mode = \"scheduled\"".into(),
                    ));
                }
                (UploadMode::Scheduled, Some(expr), d) => {
                    UploadPolicy::cron(expr).map_err(|e| err(at("upload_policy.schedule"), e))?;
                    if !d.is_some_and(|d| (1..=86_400).contains(&d)) {
                        return Err(err(
                            at("upload_policy.duration_s"),
                            "required with a schedule: 1 to 86400 seconds".into(),
                        ));
                    }
                }
                (_, Some(_), _) | (_, _, Some(_)) => {
                    return Err(err(
                        at("upload_policy"),
                        "schedule and duration_s apply only to mode = \"scheduled\"".into(),
                    ));
                }
                _ => {}
            }
            for (field, cap) in [
                ("max_bytes_per_sec", p.max_bytes_per_sec),
                ("window_max_bytes_per_sec", p.window_max_bytes_per_sec),
            ] {
                if cap.is_some_and(|b| b < 10_000) {
                    return Err(err(
                        at(&format!("upload_policy.{field}")),
                        "must be at least 10000".into(),
                    ));
                }
            }
            if let Some(r) = &cam.record_schedule {
                UploadPolicy::cron(&r.schedule)
                    .map_err(|e| err(at("record_schedule.schedule"), e))?;
                if !(1..=86_400).contains(&r.duration_s) {
                    return Err(err(
                        at("record_schedule.duration_s"),
                        "must be 1 to 86400 seconds".into(),
                    ));
                }
            }
            if let Some(m) = &cam.motion {
                if !(m.threshold > 0.0 && m.threshold <= 1.0) {
                    return Err(err(
                        at("motion.threshold"),
                        "must be a fraction of the picture, above 0 and at most 1".into(),
                    ));
                }
                for (field, v) in [("pre_s", m.pre_s), ("post_s", m.post_s)] {
                    if v > 3600 {
                        return Err(err(
                            at(&format!("motion.{field}")),
                            "must be 0 to 3600 seconds".into(),
                        ));
                    }
                }
                if !(1..=600).contains(&m.quiet_s) {
                    return Err(err(at("motion.quiet_s"), "must be 1 to 600 seconds".into()));
                }
                if m.label.is_empty()
                    || m.label.chars().count() > 64
                    || m.label.chars().any(char::is_control)
                {
                    return Err(err(
                        at("motion.label"),
                        "must be 1 to 64 printable characters".into(),
                    ));
                }
            }
            if !(1..=600).contains(&p.live_max_wait_s) {
                return Err(err(
                    at("upload_policy.live_max_wait_s"),
                    "must be 1 to 600 seconds".into(),
                ));
            }
            if cam.name.is_empty()
                || !cam
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            {
                return Err(err(
                    at("name"),
                    format!("{:?} must be non-empty [a-zA-Z0-9_-]", cam.name),
                ));
            }
            if !names.insert(&cam.name) {
                return Err(err(
                    at("name"),
                    format!("{:?} is used by two cameras", cam.name),
                ));
            }
            let valid_stream = (1..=256).contains(&cam.stream_name.len())
                && cam
                    .stream_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !valid_stream {
                return Err(err(
                    at("stream_name"),
                    format!(
                        "{:?} must be 1-256 characters of [a-zA-Z0-9_.-]",
                        cam.stream_name
                    ),
                ));
            }
            if !streams.insert(&cam.stream_name) {
                return Err(err(
                    at("stream_name"),
                    format!(
                        "{:?}: KVS allows one producer connection per stream",
                        cam.stream_name
                    ),
                ));
            }
            if !(1_000..=MAX_FRAGMENT_DURATION_MS).contains(&cam.max_fragment_duration_ms) {
                return Err(err(
                    at("max_fragment_duration_ms"),
                    format!(
                        "{} is outside 1000 to {MAX_FRAGMENT_DURATION_MS}: KVS refuses fragments \
                         longer than 10 s (PutMedia ERROR 4002 MAX_FRAGMENT_DURATION_REACHED) \
                         and their video is lost",
                        cam.max_fragment_duration_ms
                    ),
                ));
            }
            if !(500..=cam.max_fragment_duration_ms).contains(&cam.fragment_duration_ms) {
                return Err(err(
                    at("fragment_duration_ms"),
                    format!(
                        "{} is outside 500 to max_fragment_duration_ms ({}; KVS takes fragments \
                         of at most 10 s)",
                        cam.fragment_duration_ms, cam.max_fragment_duration_ms
                    ),
                ));
            }
            if cam.stall_timeout_secs == 0 {
                return Err(err(at("stall_timeout_secs"), "must be at least 1".into()));
            }
            if !(50..=100_000).contains(&cam.encoder.bitrate_kbps) {
                return Err(err(
                    at("encoder.bitrate_kbps"),
                    "must be 50 to 100000".into(),
                ));
            }
            if let Some(cs) = &cam.create_stream
                && cs.retention_period_hours > 87_600
            {
                return Err(err(
                    at("create_stream.retention_period_hours"),
                    "must be 0 to 87600".into(),
                ));
            }
            match &cam.source {
                SourceConfig::Test {
                    width, height, fps, ..
                } => {
                    check_picture(*width, *height, *fps).map_err(|m| err(at("source"), m))?;
                }
                SourceConfig::Rtsp { url, .. } => {
                    if !(url.starts_with("rtsp://") || url.starts_with("rtsps://")) {
                        return Err(err(
                            at("source.url"),
                            format!("{} must start with rtsp:// or rtsps://", redact_url(url)),
                        ));
                    }
                }
                SourceConfig::File { path, .. } => {
                    if path.as_os_str().is_empty() {
                        return Err(err(at("source.path"), "must not be empty".into()));
                    }
                    // Said now (and by --check), not as a pipeline that fails to start.
                    match std::fs::metadata(path) {
                        Ok(m) if m.is_dir() => {
                            return Err(err(
                                at("source.path"),
                                format!("{} is a directory, not a media file", path.display()),
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            return Err(err(at("source.path"), format!("{}: {e}", path.display())));
                        }
                    }
                }
                SourceConfig::V4l2 {
                    width,
                    height,
                    fps,
                    microphone,
                    ..
                } => {
                    if let (Some(w), Some(h), Some(f)) = (width, height, fps) {
                        check_picture(*w, *h, *f).map_err(|m| err(at("source"), m))?;
                    }
                    if cam.audio == Some(true) && microphone.is_none() {
                        return Err(err(
                            at("audio"),
                            "true, but the V4L2 source has no `microphone` (an ALSA device such \
                             as \"hw:1,0\") to record"
                                .into(),
                        ));
                    }
                    if microphone.as_deref().is_some_and(str::is_empty) {
                        return Err(err(at("source.microphone"), "must not be empty".into()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The setting of `cameras[N].source` an error there is about: serde reads the tagged
/// `source` table through a buffer, and its errors lose the setting's name. It is the one
/// whose absence changes the outcome.
fn toml_source_culprit(text: &str, path: &str) -> Option<String> {
    let index: usize = path
        .strip_prefix("cameras[")?
        .strip_suffix("].source")?
        .parse()
        .ok()?;
    let doc: toml::Table = toml::from_str(text).ok()?;
    let source = doc.get("cameras")?.get(index)?.get("source")?;
    match serde_json::to_value(source).ok()? {
        serde_json::Value::Object(source) => source_culprit(&source),
        _ => None,
    }
}

/// Of a `source` object's settings, the one whose absence changes how reading it ends: the
/// one an error without a field name is about (the TOML file's and config/set's).
pub(crate) fn source_culprit(
    source: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    let parse = |o: &serde_json::Map<String, serde_json::Value>| {
        serde_json::from_value::<SourceConfig>(serde_json::Value::Object(o.clone()))
            .map_err(|e| e.to_string())
    };
    let original = parse(source).err()?;
    source
        .keys()
        .filter(|k| k.as_str() != "type")
        .find(|key| {
            let mut without = source.clone();
            without.remove(key.as_str());
            parse(&without).err().as_ref() != Some(&original)
        })
        .cloned()
}

/// Settings whose values are secrets, wherever they are.
const SECRET_KEYS: &[&str] = &["secret_access_key", "session_token", "password"];

fn redact_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                match v {
                    toml::Value::String(s) if SECRET_KEYS.contains(&key.as_str()) => {
                        *s = "***".into();
                    }
                    toml::Value::String(s) if s.starts_with("rtsp") => *s = redact_url(s),
                    other => redact_secrets(other),
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

fn check_picture(width: u32, height: u32, fps: u32) -> Result<(), String> {
    if !(16..=7680).contains(&width)
        || !(16..=4320).contains(&height)
        || !width.is_multiple_of(2)
        || !height.is_multiple_of(2)
    {
        return Err(format!("{width}x{height} must be even, 16x16 to 7680x4320"));
    }
    if !(1..=120).contains(&fps) {
        return Err(format!("fps {fps} must be 1 to 120"));
    }
    Ok(())
}

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
        let policy = |p: &str| {
            AgentConfig::from_toml(
                "agent.toml",
                &MINIMAL.replace("[[cameras]]", &format!("[[cameras]]\nupload_policy = {p}")),
            )
        };
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
        let motion = |m: &str| {
            AgentConfig::from_toml(
                "agent.toml",
                &MINIMAL.replace("[[cameras]]", &format!("[[cameras]]\nmotion = {m}")),
            )
        };
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
        let record = |r: &str| {
            AgentConfig::from_toml(
                "agent.toml",
                &MINIMAL.replace(
                    "[[cameras]]",
                    &format!("[[cameras]]\nrecord_schedule = {r}"),
                ),
            )
        };
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
