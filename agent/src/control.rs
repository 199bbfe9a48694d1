//! Control, the pure part: per-camera commands (`<camera>/<feature>/set` payloads) turned into
//! configuration patches or camera actions, the retained feature states, and the plan of what
//! a configuration change touches. The MQTT module does the I/O; the runner applies plans.
//!
//! Settings changed by command go through the same validation as a `config/set` document and
//! are persisted with it, so they survive a restart instead of flipping back.

use kvs_edge_config::AgentConfig;
use kvs_edge_config::agent::{CameraConfig, SourceConfig};
use serde::Serialize;
use serde_json::{Value, json};

use crate::timeline::WallMs;

/// Command payloads larger than this are rejected unread.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// An alarm marked on a camera: its fragments in `[start_ms, end_ms]` (wall clock) carry
/// the id and label as fragment metadata, and events announce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alarm {
    pub id: String,
    pub label: String,
    pub pre_s: u64,
    pub post_s: u64,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A change to the configuration (a remote-document patch).
    Patch(Value),
    Alarm(Alarm),
    Snapshot,
    /// Send the recording's `[start_ms, end_ms)` to KVS (`upload/set`).
    Upload {
        id: String,
        start_ms: i64,
        end_ms: i64,
    },
}

/// A command with the token to echo back.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub command: Command,
    pub token: Option<String>,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub token: Option<String>,
    pub reason: String,
}

/// The command topics of a camera: `<prefix>/<device>/<camera>/<feature>/set`.
pub const FEATURES: [&str; 8] = [
    "streaming",
    "bitrate",
    "resolution",
    "fps",
    "fragment_duration",
    "alarm",
    "upload",
    "snapshot",
];

/// Parses a command for `camera`'s `feature`. The payload is a bare value (`ON`, `1500`,
/// `1280x720`), or a JSON object `{"value": …, "token": …}`; alarms are objects
/// `{"id", "label", "pre_s", "post_s", "token"}`.
pub fn parse(
    cfg: &AgentConfig,
    camera: &str,
    feature: &str,
    payload: &[u8],
    now: WallMs,
) -> Result<Request, Refusal> {
    let refuse = |token: &Option<String>, reason: String| Refusal {
        token: token.clone(),
        reason,
    };
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(refuse(
            &None,
            format!(
                "the command is {} bytes; the limit is {MAX_COMMAND_BYTES}",
                payload.len()
            ),
        ));
    }
    // JSON when it parses as JSON; otherwise the bare text (`ON`, `1280x720`).
    let value = match serde_json::from_slice::<Value>(payload) {
        Ok(v) => v,
        Err(_) => match std::str::from_utf8(payload) {
            Ok(text) => Value::String(text.trim().to_string()),
            Err(_) => return Err(refuse(&None, "the payload is not UTF-8 text".into())),
        },
    };
    let (value, token) = match value {
        Value::Object(mut o) if feature != "alarm" && feature != "upload" => {
            let token = take_token(&mut o).map_err(|r| refuse(&None, r))?;
            let value = o.remove("value").unwrap_or(Value::Null);
            if let Some(k) = o.keys().next() {
                return Err(refuse(
                    &token,
                    format!("unknown field {k:?}; a command object has value and token"),
                ));
            }
            (value, token)
        }
        Value::Object(mut o) => {
            let token = take_token(&mut o).map_err(|r| refuse(&None, r))?;
            (Value::Object(o), token)
        }
        v => (v, None),
    };
    let Some(cam) = cfg.cameras.iter().find(|c| c.name == camera) else {
        return Err(refuse(&token, format!("unknown camera {camera:?}")));
    };
    let patch = |fields: Value| json!({ "cameras": { camera: fields } });
    let command = match feature {
        "streaming" => {
            let on = match &value {
                Value::Bool(b) => *b,
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "on" | "true" | "start" => true,
                    "off" | "false" | "stop" => false,
                    _ => return Err(refuse(&token, format!("{s:?}: expected ON or OFF"))),
                },
                _ => return Err(refuse(&token, "expected ON or OFF".into())),
            };
            Command::Patch(patch(json!({ "enabled": on })))
        }
        "bitrate" => {
            if !crate::capture::needs_encoder(&cam.source) {
                return Err(refuse(
                    &token,
                    "this source is passed through without re-encoding: no bitrate to set".into(),
                ));
            }
            let kbps = number(&value).map_err(|r| refuse(&token, r))?;
            Command::Patch(patch(json!({ "encoder": { "bitrate_kbps": kbps } })))
        }
        "resolution" => {
            picture_source(cam).map_err(|r| refuse(&token, r))?;
            let (w, h) = resolution(&value).map_err(|r| refuse(&token, r))?;
            Command::Patch(patch(json!({ "source": { "width": w, "height": h } })))
        }
        "fps" => {
            picture_source(cam).map_err(|r| refuse(&token, r))?;
            let fps = number(&value).map_err(|r| refuse(&token, r))?;
            Command::Patch(patch(json!({ "source": { "fps": fps } })))
        }
        "fragment_duration" => {
            let ms = number(&value).map_err(|r| refuse(&token, r))?;
            Command::Patch(patch(json!({ "fragment_duration_ms": ms })))
        }
        "alarm" => Command::Alarm(alarm(&value, now).map_err(|r| refuse(&token, r))?),
        "upload" => upload(&value).map_err(|r| refuse(&token, r))?,
        "snapshot" => match &value {
            Value::Null => Command::Snapshot,
            Value::String(s) if s.is_empty() => Command::Snapshot,
            _ => {
                return Err(refuse(
                    &token,
                    "a snapshot takes no value (an empty payload, or {\"token\": …})".into(),
                ));
            }
        },
        other => {
            return Err(refuse(
                &token,
                format!("unknown feature {other:?}; one of {}", FEATURES.join(", ")),
            ));
        }
    };
    Ok(Request { command, token })
}

fn take_token(o: &mut serde_json::Map<String, Value>) -> Result<Option<String>, String> {
    match o.remove("token") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t.chars().count() <= 256 => Ok(Some(t)),
        Some(_) => Err("token: must be a string of at most 256 characters".into()),
    }
}

fn number(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{value}: expected a whole number"))
}

fn resolution(value: &Value) -> Result<(u64, u64), String> {
    let parsed = match value {
        Value::String(s) => s
            .split_once(['x', 'X'])
            .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?))),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{value}: expected WIDTHxHEIGHT, like 1280x720"))
}

/// Resolution and frame rate are ours to choose only when we encode raw video.
fn picture_source(cam: &CameraConfig) -> Result<(), String> {
    match cam.source {
        SourceConfig::Test { .. } | SourceConfig::V4l2 { .. } => Ok(()),
        _ => Err(
            "this source is passed through: its resolution and frame rate are the camera's".into(),
        ),
    }
}

/// `{"id", "start", "end"}`: times as RFC 3339 (`2026-12-03T10:00:00Z`) or milliseconds
/// since the epoch.
fn upload(value: &Value) -> Result<Command, String> {
    let Value::Object(o) = value else {
        return Err(r#"expected {"id", "start", "end"}"#.into());
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["id", "start", "end"].contains(&k.as_str()))
    {
        return Err(format!("unknown field {k:?}"));
    }
    let id = match o.get("id") {
        Some(Value::String(s)) => event_id(s)?,
        None | Some(Value::Null) => return Err("id: required".into()),
        Some(_) => return Err("id: must be a string".into()),
    };
    let time = |key: &str| -> Result<i64, String> {
        let ms = match o.get(key) {
            None | Some(Value::Null) => return Err(format!("{key}: required")),
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_millis()),
            Some(_) => None,
        };
        // After 2001 and before 2286: anything else is seconds, or a typo.
        ms.filter(|ms| (1_000_000_000_000..10_000_000_000_000).contains(ms))
            .ok_or_else(|| {
                format!("{key}: expected an RFC 3339 time or milliseconds since the epoch")
            })
    };
    Ok(Command::Upload {
        id,
        start_ms: time("start")?,
        end_ms: time("end")?,
    })
}

/// An alarm's or upload window's id: 1-64 of `[A-Za-z0-9_.:-]` (it names a topic's events
/// and the archiver's S3 keys).
fn event_id(id: &str) -> Result<String, String> {
    if !(1..=64).contains(&id.len())
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        return Err("id: must be 1-64 characters of [a-zA-Z0-9_.:-]".into());
    }
    Ok(id.to_string())
}

fn alarm(value: &Value, now: WallMs) -> Result<Alarm, String> {
    let Value::Object(o) = value else {
        return Err(r#"expected {"id", "label", "pre_s", "post_s"}"#.into());
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["id", "label", "pre_s", "post_s"].contains(&k.as_str()))
    {
        return Err(format!("unknown field {k:?}"));
    }
    let text = |key: &str, default: Option<&str>| -> Result<String, String> {
        match (o.get(key), default) {
            (Some(Value::String(s)), _) => Ok(s.clone()),
            (None | Some(Value::Null), Some(d)) => Ok(d.to_string()),
            (None | Some(Value::Null), None) => Err(format!("{key}: required")),
            (Some(_), _) => Err(format!("{key}: must be a string")),
        }
    };
    let seconds = |key: &str, default: u64| -> Result<u64, String> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|s| *s <= 3600)
                .ok_or_else(|| format!("{key}: must be a whole number of seconds, 0 to 3600")),
        }
    };
    let id = event_id(&text("id", None)?)?;
    let label = text("label", Some("alarm"))?;
    if label.chars().count() > 64 || label.chars().any(char::is_control) {
        return Err("label: must be at most 64 printable characters".into());
    }
    let (pre_s, post_s) = (seconds("pre_s", 10)?, seconds("post_s", 30)?);
    Ok(Alarm {
        id,
        label,
        pre_s,
        post_s,
        start_ms: now.0 - pre_s as i64 * 1000,
        end_ms: now.0 + post_s as i64 * 1000,
    })
}

/// The retained `<camera>/<feature>/state` values of a camera.
pub fn feature_states(cam: &CameraConfig) -> Vec<(&'static str, String)> {
    let mut states = vec![
        (
            "streaming",
            if cam.enabled { "ON" } else { "OFF" }.to_string(),
        ),
        ("fragment_duration", cam.fragment_duration_ms.to_string()),
    ];
    if crate::capture::needs_encoder(&cam.source) {
        states.push(("bitrate", cam.encoder.bitrate_kbps.to_string()));
    }
    match &cam.source {
        SourceConfig::Test {
            width, height, fps, ..
        } => {
            states.push(("resolution", format!("{width}x{height}")));
            states.push(("fps", fps.to_string()));
        }
        SourceConfig::V4l2 {
            width, height, fps, ..
        } => {
            if let (Some(w), Some(h)) = (width, height) {
                states.push(("resolution", format!("{w}x{h}")));
            }
            if let Some(f) = fps {
                states.push(("fps", f.to_string()));
            }
        }
        _ => {}
    }
    states
}

/// What a configuration change does to the running cameras.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Newly added or enabled.
    pub start: Vec<String>,
    /// Removed or disabled.
    pub stop: Vec<String>,
    /// The stream or the upload settings changed: capture, journal hand-off and uploader restart.
    pub restart: Vec<String>,
    /// Capture settings changed: applied to the running camera (bitrate live, the rest by
    /// restarting its source); the uploader carries on.
    pub reconfigure: Vec<String>,
    /// The journal settings changed (applied to every open journal).
    pub journal: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

pub fn plan(old: &AgentConfig, new: &AgentConfig) -> Plan {
    let running = |cfg: &AgentConfig, name: &str| {
        cfg.cameras
            .iter()
            .find(|c| c.name == name && c.enabled)
            .cloned()
    };
    let mut p = Plan {
        journal: old.journal != new.journal,
        ..Plan::default()
    };
    for cam in &new.cameras {
        match (running(old, &cam.name), cam.enabled) {
            (None, true) => p.start.push(cam.name.clone()),
            (Some(_), false) => p.stop.push(cam.name.clone()),
            (Some(before), true) => {
                if before.stream_name != cam.stream_name
                    || before.create_stream != cam.create_stream
                    || before.upload_policy != cam.upload_policy
                    || before.record_schedule != cam.record_schedule
                    || old.upload != new.upload
                {
                    p.restart.push(cam.name.clone());
                } else if before != *cam {
                    p.reconfigure.push(cam.name.clone());
                }
            }
            (None, false) => {}
        }
    }
    for cam in old.cameras.iter().filter(|c| c.enabled) {
        if !new.cameras.iter().any(|c| c.name == cam.name) {
            p.stop.push(cam.name.clone());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [aws]
        region = "us-east-1"
        [[cameras]]
        name = "front"
        stream_name = "front-cam"
        source = { type = "test" }
        [[cameras]]
        name = "door"
        stream_name = "door-cam"
        source = { type = "rtsp", url = "rtsp://10.0.0.5/live" }
    "#;

    fn cfg() -> AgentConfig {
        AgentConfig::from_toml("agent.toml", BASE).unwrap()
    }

    fn cmd(camera: &str, feature: &str, payload: &str) -> Result<Request, Refusal> {
        parse(
            &cfg(),
            camera,
            feature,
            payload.as_bytes(),
            WallMs(1_000_000),
        )
    }

    fn applied(camera: &str, feature: &str, payload: &str) -> AgentConfig {
        let Command::Patch(p) = cmd(camera, feature, payload).unwrap().command else {
            panic!("not a patch");
        };
        kvs_edge_config::remote::apply_patch(&cfg(), &p).unwrap()
    }

    #[test]
    fn commands_become_configuration_changes() {
        assert!(!applied("front", "streaming", "OFF").cameras[0].enabled);
        assert!(
            !applied("front", "streaming", r#"{"value": false, "token": "t"}"#).cameras[0].enabled
        );
        assert_eq!(
            applied("front", "bitrate", "1500").cameras[0]
                .encoder
                .bitrate_kbps,
            1500
        );
        assert!(matches!(
            applied("front", "resolution", "1280x720").cameras[0].source,
            SourceConfig::Test {
                width: 1280,
                height: 720,
                ..
            }
        ));
        assert!(matches!(
            applied("front", "fps", "15").cameras[0].source,
            SourceConfig::Test { fps: 15, .. }
        ));
        assert_eq!(
            applied("front", "fragment_duration", "4000").cameras[0].fragment_duration_ms,
            4000
        );
    }

    #[test]
    fn commands_that_cannot_apply_say_why() {
        for (camera, feature, payload, expect) in [
            ("door", "bitrate", "1500", "passed through"),
            ("door", "resolution", "1280x720", "passed through"),
            ("front", "resolution", "big", "WIDTHxHEIGHT"),
            ("front", "streaming", "maybe", "ON or OFF"),
            ("back", "streaming", "ON", "unknown camera"),
            ("front", "zoom", "2", "unknown feature"),
            ("front", "snapshot", "now", "no value"),
            ("front", "bitrate", "-5", "whole number"),
            ("front", "alarm", "ON", "expected"),
            ("front", "alarm", r#"{"label": "x"}"#, "id: required"),
            ("front", "alarm", r#"{"id": "a b"}"#, "id:"),
            ("front", "alarm", r#"{"id": "a", "pre_s": 99999}"#, "pre_s"),
        ] {
            let e = cmd(camera, feature, payload).unwrap_err();
            assert!(
                e.reason.contains(expect),
                "{feature} {payload}: {}",
                e.reason
            );
        }
        let e = cmd("front", "bitrate", r#"{"value": "x", "token": "t9"}"#).unwrap_err();
        assert_eq!(e.token.as_deref(), Some("t9"));
    }

    #[test]
    fn alarms_span_the_pre_and_post_roll() {
        let r = cmd(
            "front",
            "alarm",
            r#"{"id": "a1", "pre_s": 5, "post_s": 20, "token": "t"}"#,
        )
        .unwrap();
        assert_eq!(r.token.as_deref(), Some("t"));
        let Command::Alarm(a) = r.command else {
            panic!()
        };
        assert_eq!(
            (a.start_ms, a.end_ms, a.label.as_str()),
            (995_000, 1_020_000, "alarm")
        );
    }

    #[test]
    fn upload_windows_take_absolute_times_and_a_token() {
        let r = cmd(
            "front",
            "upload",
            r#"{"id": "w1", "start": "2026-12-03T10:00:00Z", "end": 1796292060000, "token": "w1"}"#,
        )
        .unwrap();
        assert_eq!(r.token.as_deref(), Some("w1"), "answered in a rejection");
        assert_eq!(
            r.command,
            Command::Upload {
                id: "w1".into(),
                start_ms: 1_796_292_000_000,
                end_ms: 1_796_292_060_000
            }
        );
        for (bad, why) in [
            (
                r#"{"id": "w1", "start": 1796292000, "end": 1796292060000}"#,
                "start: expected",
            ),
            (r#"{"id": "w1", "start": 1796292000000}"#, "end: required"),
            (
                r#"{"id": "w/1", "start": 1796292000000, "end": 1796292060000}"#,
                "id:",
            ),
            (
                r#"{"id": "w1", "start": 1, "end": 2, "pad": 0}"#,
                "unknown field",
            ),
        ] {
            let e = cmd("front", "upload", bad).unwrap_err();
            assert!(e.reason.contains(why), "{bad}: {}", e.reason);
        }
    }

    #[test]
    fn plans_touch_only_what_changed() {
        let old = cfg();
        let bitrate = applied("front", "bitrate", "900");
        assert_eq!(
            plan(&old, &bitrate),
            Plan {
                reconfigure: vec!["front".into()],
                ..Plan::default()
            }
        );
        let off = applied("door", "streaming", "OFF");
        assert_eq!(plan(&old, &off).stop, ["door"]);
        assert_eq!(plan(&off, &old).start, ["door"]);
        let mut stream = old.clone();
        stream.cameras[0].stream_name = "other".into();
        assert_eq!(plan(&old, &stream).restart, ["front"]);
        let mut upload = old.clone();
        upload.upload.max_in_flight = 3;
        assert_eq!(plan(&old, &upload).restart, ["front", "door"]);
        let mut journal = old.clone();
        journal.journal.max_size_mb = 10;
        assert!(plan(&old, &journal).journal && plan(&old, &journal).restart.is_empty());
        let mut removed = old.clone();
        removed.cameras.pop();
        assert_eq!(plan(&old, &removed).stop, ["door"]);
        assert!(plan(&old, &old).is_empty());
    }
}
