//! Reading `agent.toml` and checking it whole: every error names the field path.

use std::collections::HashSet;

use super::*;
use crate::ConfigError;

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
