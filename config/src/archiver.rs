//! The archiver's configuration (`archiver.toml`, or the `KVS_EDGE_ARCHIVER_CONFIG` file in
//! Lambda): where clips go, the default clip window, and which alarms mean which streams.
//!
//! ```toml
//! bucket = "camera-clips"
//! [clip]
//! pre_roll_s = 60          # the default window is 180 s, as in the source document
//! post_roll_s = 120
//! [[mappings]]
//! alarm = "garage-*"       # an alarm name or ARN; `*` matches any run of characters
//! streams = ["garage-cam"]
//! post_roll_s = 30
//! ```

use serde::Deserialize;

use crate::{AwsSettings, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiverConfig {
    /// Region and an endpoint override for every service (kvs-local); the SDK's
    /// `AWS_ENDPOINT_URL_<SERVICE>` variables also work.
    #[serde(default)]
    pub aws: AwsSettings,
    #[serde(default)]
    pub s3: S3Settings,
    /// The bucket clips are stored in.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Object key of a clip. Fields: `{stream}`, `{alarm}` (the alarm name, made key-safe),
    /// `{yyyy}`, `{mm}`, `{dd}` (of the window start, UTC), `{start}`, `{end}`
    /// (`20240217T115308Z`).
    #[serde(default = "default_key_template")]
    pub key_template: String,
    /// Server-side encryption with this KMS key (SSE-KMS); S3's default encryption otherwise.
    pub sse_kms_key_id: Option<String>,
    #[serde(default)]
    pub clip: ClipSettings,
    /// The SQS consumer (`kvs-edge-archiver sqs`).
    #[serde(default)]
    pub sqs: SqsSettings,
    /// What happens to a stored clip next.
    #[serde(default)]
    pub transcode: TranscodeSettings,
    /// Alarm → streams, tried in order; the first match wins.
    #[serde(default)]
    pub mappings: Vec<Mapping>,
    /// Use the `StreamName` dimension of the alarm's metric (KVS metrics carry it) when no
    /// mapping matches.
    #[serde(default = "yes")]
    pub use_stream_dimension: bool,
    /// Then the alarm's tags (`kvs-edge:streams`, comma-separated, or `StreamName`), read
    /// with CloudWatch ListTagsForResource.
    #[serde(default = "yes")]
    pub use_alarm_tags: bool,
    /// Where CloudWatch is, when it is not where the other services are.
    #[serde(default)]
    pub cloudwatch: EndpointSettings,
    /// Alarms silenced by a CloudWatch mute rule make no clip (by default they still do:
    /// muting stops notifications, not the need for evidence).
    #[serde(default)]
    pub skip_muted: bool,
    /// Ask devices for video KVS does not have: a window recorded by an on-demand or
    /// scheduled camera is requested from it over MQTT before clipping.
    pub pull: Option<PullSettings>,
}

/// Pulling windows from devices (`<prefix>/<device>/<camera>/upload/set`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullSettings {
    /// The devices' broker (mosquitto, or AWS IoT Core with a certificate and `[pull.tls]`).
    #[serde(default)]
    pub host: String,
    /// Instead of `host`: AWS IoT's data plane over HTTPS with the archiver's IAM
    /// credentials (for a Lambda function, which has no certificate): the account's
    /// `iot:Data-ATS` endpoint, `https://xxxx-ats.iot.<region>.amazonaws.com`.
    pub iot_endpoint: Option<String>,
    #[serde(default = "crate::agent::default_mqtt_port")]
    pub port: u16,
    /// The devices' topic prefix (their `[mqtt] prefix`).
    #[serde(default = "crate::agent::default_prefix")]
    pub prefix: String,
    /// Default: `kvs-edge-archiver-<random>`.
    pub client_id: Option<String>,
    pub tls: Option<crate::agent::MqttTls>,
    /// How long to wait for a device to upload a window before clipping what KVS has.
    #[serde(default = "default_pull_wait")]
    pub wait_s: u64,
    /// Which device records which stream.
    #[serde(default)]
    pub devices: Vec<PullDevice>,
}

/// A stream recorded by a device's camera.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullDevice {
    pub stream: String,
    /// The device's `device_id`.
    pub device: String,
    /// The camera's name on that device.
    pub camera: String,
}

fn default_pull_wait() -> u64 {
    300
}

/// A service endpoint override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    pub endpoint_url: Option<String>,
}

/// Where S3 is, when it is not where the other services are (an S3-compatible server).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub force_path_style: bool,
}

/// The transcoding hand-off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscodeSettings {
    #[serde(default)]
    pub mode: TranscodeMode,
    /// The IAM role MediaConvert assumes (required in `mediaconvert` mode).
    pub role_arn: Option<String>,
    /// A MediaConvert queue ARN; the account's default queue when absent.
    pub queue: Option<String>,
    /// A job template file (a CreateJob request or bare job settings); the built-in HLS
    /// ladder + MP4 + thumbnails when absent.
    pub template: Option<std::path::PathBuf>,
    /// Where outputs go: `s3://<output_bucket>/<output_prefix><clip key without .mp4>/<group>/`.
    pub output_bucket: Option<String>,
    #[serde(default = "default_output_prefix")]
    pub output_prefix: String,
    /// The MediaConvert endpoint to ask DescribeEndpoints (kvs-local); regional by default.
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TranscodeMode {
    /// Only store the clip.
    #[default]
    Off,
    /// Submit a MediaConvert job for every stored clip.
    Mediaconvert,
    /// Only store: an S3 event notification drives MediaConvert (the event-driven design).
    S3Event,
}

impl Default for TranscodeSettings {
    fn default() -> Self {
        TranscodeSettings {
            mode: TranscodeMode::Off,
            role_arn: None,
            queue: None,
            template: None,
            output_bucket: None,
            output_prefix: default_output_prefix(),
            endpoint_url: None,
        }
    }
}

fn default_output_prefix() -> String {
    "transcoded/".into()
}

/// The queue an EventBridge rule feeds, and where messages go that can never succeed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsSettings {
    pub queue_url: Option<String>,
    /// Where SQS is, when it is not where the other services are.
    pub endpoint_url: Option<String>,
    /// Malformed messages, and messages received `max_receives` times, are moved here;
    /// without it they are deleted (and logged).
    pub dlq_url: Option<String>,
    #[serde(default = "default_max_receives")]
    pub max_receives: u32,
    /// Messages are hidden this long while handled, and the time is extended while work
    /// goes on.
    #[serde(default = "default_visibility")]
    pub visibility_timeout_s: u32,
    /// Messages handled at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for SqsSettings {
    fn default() -> Self {
        SqsSettings {
            queue_url: None,
            endpoint_url: None,
            dlq_url: None,
            max_receives: default_max_receives(),
            visibility_timeout_s: default_visibility(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_max_receives() -> u32 {
    5
}
fn default_visibility() -> u32 {
    120
}
fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipSettings {
    /// Seconds before the alarm.
    #[serde(default = "default_pre_roll")]
    pub pre_roll_s: u64,
    /// Seconds after the alarm.
    #[serde(default = "default_post_roll")]
    pub post_roll_s: u64,
    /// How long to wait for the post-roll to be ingested before clipping what exists.
    #[serde(default = "default_ingest_wait")]
    pub ingest_wait_s: u64,
    /// How long one KVS call (GetClip, ListFragments, GetDataEndpoint) is retried while KVS
    /// throttles it (ClientLimitExceededException); never past a Lambda invocation's end.
    #[serde(default = "default_throttle_retry")]
    pub throttle_retry_s: u64,
}

impl Default for ClipSettings {
    fn default() -> Self {
        ClipSettings {
            pre_roll_s: default_pre_roll(),
            post_roll_s: default_post_roll(),
            ingest_wait_s: default_ingest_wait(),
            throttle_retry_s: default_throttle_retry(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// An alarm name or ARN pattern (`*` matches any run of characters).
    pub alarm: String,
    pub streams: Vec<String>,
    pub pre_roll_s: Option<u64>,
    pub post_roll_s: Option<u64>,
}

fn default_throttle_retry() -> u64 {
    120
}

fn default_bucket() -> String {
    "kvs-edge-clips".into()
}
fn default_key_template() -> String {
    "clips/{stream}/{yyyy}/{mm}/{dd}/{alarm}-{start}-{end}.mp4".into()
}
fn default_pre_roll() -> u64 {
    60
}
fn default_post_roll() -> u64 {
    120
}
fn default_ingest_wait() -> u64 {
    120
}
fn yes() -> bool {
    true
}

/// A clip window may not exceed GetClip's 24-hour range.
const MAX_WINDOW_S: u64 = 24 * 3600;

impl Default for ArchiverConfig {
    fn default() -> Self {
        ArchiverConfig::from_toml("defaults", "").expect("the defaults are valid")
    }
}

impl ArchiverConfig {
    pub fn from_toml(source_name: &str, text: &str) -> Result<ArchiverConfig, ConfigError> {
        let cfg: ArchiverConfig = crate::from_toml(source_name, text)?;
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    pub fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let err = |path: String, message: String| ConfigError {
            source_name: source_name.into(),
            path,
            message,
        };
        self.aws.validate(source_name, "aws")?;
        AwsSettings {
            region: None,
            endpoint_url: self.s3.endpoint_url.clone(),
        }
        .validate(source_name, "s3")?;
        let b = &self.bucket;
        if !(3..=63).contains(&b.len())
            || !b
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-".contains(&c))
        {
            return Err(err(
                "bucket".into(),
                format!("{b:?} is not an S3 bucket name (3-63 of a-z 0-9 . -)"),
            ));
        }
        if let Some(p) = &self.pull {
            match (p.host.trim().is_empty(), &p.iot_endpoint) {
                (true, None) => {
                    return Err(err(
                        "pull.host".into(),
                        "required (the devices' MQTT broker), or pull.iot_endpoint".into(),
                    ));
                }
                (false, Some(_)) => {
                    return Err(err(
                        "pull.iot_endpoint".into(),
                        "either host (MQTT) or iot_endpoint (HTTPS), not both".into(),
                    ));
                }
                (true, Some(url))
                    if !url.starts_with("https://") && !url.starts_with("http://") =>
                {
                    return Err(err(
                        "pull.iot_endpoint".into(),
                        format!("{url:?} must be an https:// URL"),
                    ));
                }
                _ => {}
            }
            if !(1..=3600).contains(&p.wait_s) {
                return Err(err("pull.wait_s".into(), "must be 1 to 3600".into()));
            }
            let topic_level = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#', '\0']);
            for (i, d) in p.devices.iter().enumerate() {
                for (field, value) in [("device", &d.device), ("camera", &d.camera)] {
                    if !topic_level(value) {
                        return Err(err(
                            format!("pull.devices[{i}].{field}"),
                            format!("{value:?} must be one topic level (no / + #)"),
                        ));
                    }
                }
            }
            if let Some(tls) = &p.tls
                && tls.cert_path.is_some() != tls.key_path.is_some()
            {
                return Err(err(
                    "pull.tls".into(),
                    "cert_path and key_path go together".into(),
                ));
            }
        }
        if !self.key_template.contains("{start}") && !self.key_template.contains("{alarm}") {
            return Err(err(
                "key_template".into(),
                "must contain {start} or {alarm}: clips of different alarms need different keys"
                    .into(),
            ));
        }
        if let Some(unknown) = template_fields(&self.key_template)
            .into_iter()
            .find(|f| !KEY_FIELDS.contains(&f.as_str()))
        {
            return Err(err(
                "key_template".into(),
                format!(
                    "unknown field {{{unknown}}}; known: {}",
                    KEY_FIELDS.join(", ")
                ),
            ));
        }
        let window = |pre: u64, post: u64, path: String| {
            if pre + post == 0 || pre + post > MAX_WINDOW_S {
                Err(err(
                    path,
                    "pre_roll_s + post_roll_s must be 1 s to 24 h".into(),
                ))
            } else {
                Ok(())
            }
        };
        window(self.clip.pre_roll_s, self.clip.post_roll_s, "clip".into())?;
        if self.transcode.mode == TranscodeMode::Mediaconvert
            && self.transcode.role_arn.as_deref().is_none_or(str::is_empty)
        {
            return Err(err(
                "transcode.role_arn".into(),
                "required with mode = \"mediaconvert\" (the role MediaConvert assumes)".into(),
            ));
        }
        let q = &self.sqs;
        if q.max_receives == 0
            || !(10..=43_200).contains(&q.visibility_timeout_s)
            || !(1..=64).contains(&q.concurrency)
        {
            return Err(err(
                "sqs".into(),
                "max_receives must be at least 1, visibility_timeout_s 10 to 43200, concurrency 1 to 64".into(),
            ));
        }
        for (i, m) in self.mappings.iter().enumerate() {
            if m.alarm.is_empty() {
                return Err(err(
                    format!("mappings[{i}].alarm"),
                    "must not be empty".into(),
                ));
            }
            if m.streams.is_empty() {
                return Err(err(
                    format!("mappings[{i}].streams"),
                    "name at least one stream".into(),
                ));
            }
            window(
                m.pre_roll_s.unwrap_or(self.clip.pre_roll_s),
                m.post_roll_s.unwrap_or(self.clip.post_roll_s),
                format!("mappings[{i}]"),
            )?;
        }
        Ok(())
    }
}

const KEY_FIELDS: [&str; 7] = ["stream", "alarm", "yyyy", "mm", "dd", "start", "end"];

fn template_fields(t: &str) -> Vec<String> {
    t.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(f, _)| f.to_string()))
        .collect()
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let cfg = ArchiverConfig::from_toml("a.toml", "bucket = \"clips\"").unwrap();
        assert_eq!((cfg.clip.pre_roll_s, cfg.clip.post_roll_s), (60, 120));
        assert!(cfg.use_stream_dimension && !cfg.skip_muted);
        for (text, path) in [
            ("bucket = \"Clips!\"", "bucket"),
            (
                "bucket = \"clips\"\nkey_template = \"x/{stream}.mp4\"",
                "key_template",
            ),
            (
                "bucket = \"clips\"\nkey_template = \"{alarm}/{nope}\"",
                "key_template",
            ),
            (
                "bucket = \"clips\"\n[clip]\npre_roll_s = 0\npost_roll_s = 0",
                "clip",
            ),
            (
                "bucket = \"clips\"\n[[mappings]]\nalarm = \"a\"\nstreams = []",
                "mappings[0].streams",
            ),
            // [pull]: an MQTT broker or AWS IoT's HTTPS endpoint, exactly one.
            ("bucket = \"clips\"\n[pull]\nwait_s = 30", "pull.host"),
            (
                "bucket = \"clips\"\n[pull]\nhost = \"b\"\niot_endpoint = \"https://x\"",
                "pull.iot_endpoint",
            ),
            (
                "bucket = \"clips\"\n[pull]\niot_endpoint = \"x-ats.iot.amazonaws.com\"",
                "pull.iot_endpoint",
            ),
        ] {
            assert_eq!(
                ArchiverConfig::from_toml("a.toml", text).unwrap_err().path,
                path,
                "{text}"
            );
        }
    }

    #[test]
    fn pull_over_https_needs_no_broker() {
        let text = "bucket = \"clips\"\n[pull]\niot_endpoint = \"https://x-ats.iot.eu-west-1.amazonaws.com\"";
        let pull = ArchiverConfig::from_toml("a.toml", text)
            .unwrap()
            .pull
            .unwrap();
        assert!(pull.host.is_empty() && pull.iot_endpoint.is_some());
    }

    #[test]
    fn globs() {
        assert!(glob_match("garage-*", "garage-motion"));
        assert!(glob_match(
            "*:alarm:garage-*",
            "arn:aws:cloudwatch:us-east-1:1:alarm:garage-x"
        ));
        assert!(glob_match("a*b*c", "aXXbYYc") && glob_match("*", "") && glob_match("abc", "abc"));
        assert!(
            !glob_match("garage-*", "door")
                && !glob_match("a*b", "ab-")
                && !glob_match("ab*ba", "aba")
        );
    }
}
