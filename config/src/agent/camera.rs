//! A `[[cameras]]` table: the source, its encoding, fragments, the stream, and when video is
//! recorded and uploaded (upload policy, recorder schedule, motion trigger).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
pub(crate) fn yes() -> bool {
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
