//! The configuration document operators exchange with a device over MQTT (`config/set`,
//! `config/state`) and through an AWS IoT named shadow. It holds the parts of the agent's
//! configuration that may change remotely (`cameras`, `upload`, `journal`); everything that
//! decides how the device reaches AWS or the broker stays in `agent.toml`.
//!
//! ```json
//! {"version": 7, "token": "op-42",
//!  "cameras": {"front": {"encoder": {"bitrate_kbps": 1500}}, "old": null}}
//! ```
//!
//! A document is a JSON merge patch (RFC 7386) over the effective configuration, cameras
//! keyed by name (`null` removes one); `"mode": "replace"` makes it the whole configuration
//! instead. Versions only go up. Every rejection names the field. Pure: no I/O.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::agent::{AgentConfig, CameraConfig, JournalSettings, SourceConfig, UploadConfig};
use crate::{ConfigError, agent::redact_url};

/// Larger documents are rejected before parsing.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Tokens are echoed back; longer ones are rejected.
pub const MAX_TOKEN_CHARS: usize = 256;
/// What secrets look like in `config/state`; sending it back keeps the current secret.
pub const REDACTED: &str = "***";

/// Sections a remote document may carry besides `version`, `token` and `mode`.
const SETTABLE: [&str; 3] = ["cameras", "upload", "journal"];

/// A document refused: the token and version it carried (when readable), the field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub token: Option<String>,
    pub version: Option<u64>,
    /// The field the reason is about (`cameras.front.encoder.bitrate_kbps`, `version`, ``).
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// An accepted `config/set`: the new effective configuration, its version and token.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub config: AgentConfig,
    pub version: u64,
    pub token: Option<String>,
}

/// The remote part of `cfg` as a document (cameras keyed by name), secrets included.
pub fn document(cfg: &AgentConfig) -> Value {
    let mut cameras = Map::new();
    for cam in &cfg.cameras {
        let mut v = serde_json::to_value(cam).expect("camera configuration serializes");
        if let Value::Object(o) = &mut v {
            o.remove("name");
        }
        cameras.insert(cam.name.clone(), v);
    }
    serde_json::json!({
        "upload": serde_json::to_value(&cfg.upload).expect("upload settings serialize"),
        "journal": serde_json::to_value(&cfg.journal).expect("journal settings serialize"),
        "cameras": cameras,
    })
}

/// `document` with RTSP passwords (fields and inside URLs) replaced by `***`.
pub fn redacted(cfg: &AgentConfig) -> Value {
    let mut doc = document(cfg);
    if let Some(Value::Object(cams)) = doc.get_mut("cameras") {
        for cam in cams.values_mut() {
            let Some(Value::Object(src)) = cam.get_mut("source") else {
                continue;
            };
            if let Some(p) = src.get_mut("password")
                && !p.is_null()
            {
                *p = Value::from(REDACTED);
            }
            if let Some(Value::String(url)) = src.get_mut("url") {
                *url = redact_url(url);
            }
        }
    }
    doc
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The merge patch that turns `from` into `to`: changed keys, `null` for removed ones.
/// `merge_patch(from, diff(from, to)) == to` for documents without nulls.
pub fn diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = Map::new();
            for (key, new) in b {
                match a.get(key) {
                    Some(old) if old == new => {}
                    Some(old) => {
                        out.insert(key.clone(), diff(old, new));
                    }
                    None if new.is_null() => {}
                    None => {
                        out.insert(key.clone(), new.clone());
                    }
                }
            }
            for key in a.keys() {
                if !b.contains_key(key) {
                    out.insert(key.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => to.clone(),
    }
}

/// Removes `null` members everywhere (a document as a merge-patch store such as an AWS IoT
/// shadow keeps it: there, null means "delete").
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|_, v| !v.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Handles a `config/set` payload against the running configuration and its version.
pub fn handle_set(
    current: &AgentConfig,
    current_version: u64,
    payload: &[u8],
) -> Result<Accepted, Rejection> {
    let reject = |token: &Option<String>, version, path: &str, reason: String| Rejection {
        token: token.clone(),
        version,
        path: path.into(),
        reason,
    };
    if payload.len() > MAX_DOCUMENT_BYTES {
        return Err(reject(
            &None,
            None,
            "",
            format!(
                "the document is {} bytes; the limit is {MAX_DOCUMENT_BYTES}",
                payload.len()
            ),
        ));
    }
    // A UTF-8 byte order mark (some editors and tools on Windows write one) is not JSON,
    // but it says nothing either: skipped.
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| reject(&None, None, "", format!("not a JSON document: {e}")))?;
    let Value::Object(mut doc) = value else {
        return Err(reject(
            &None,
            None,
            "",
            "the document must be a JSON object".into(),
        ));
    };
    // The token first, so that every later rejection can carry it.
    let token = match doc.remove("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.chars().count() <= MAX_TOKEN_CHARS => Some(t),
        Some(Value::String(_)) => {
            return Err(reject(
                &None,
                None,
                "token",
                format!("longer than {MAX_TOKEN_CHARS} characters"),
            ));
        }
        Some(_) => return Err(reject(&None, None, "token", "must be a string".into())),
    };
    let version = match doc.remove("version") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().expect("checked"),
        None | Some(Value::Null) => {
            return Err(reject(
                &token,
                None,
                "version",
                "required: a whole number above the applied version".into(),
            ));
        }
        Some(_) => {
            return Err(reject(
                &token,
                None,
                "version",
                "must be a whole number from 0".into(),
            ));
        }
    };
    if version <= current_version {
        return Err(reject(
            &token,
            Some(version),
            "version",
            format!("stale: {version} is not newer than the applied version {current_version}"),
        ));
    }
    let replace = match doc.remove("mode") {
        None | Some(Value::Null) => false,
        Some(Value::String(m)) if m == "merge" => false,
        Some(Value::String(m)) if m == "replace" => true,
        Some(_) => {
            return Err(reject(
                &token,
                Some(version),
                "mode",
                "must be \"merge\" (the default) or \"replace\"".into(),
            ));
        }
    };
    let config = if replace {
        replace_with(current, Value::Object(doc))
    } else {
        apply_patch(current, &Value::Object(doc))
    }
    .map_err(|e| reject(&token, Some(version), &e.path, e.message))?;
    Ok(Accepted {
        config,
        version,
        token,
    })
}

/// The running configuration with `patch` merged into its remote part, validated.
pub fn apply_patch(current: &AgentConfig, patch: &Value) -> Result<AgentConfig, ConfigError> {
    check_sections(patch)?;
    let mut doc = document(current);
    merge_patch(&mut doc, patch);
    let mut next = from_document(current, doc)?;
    keep_redacted_secrets(&mut next, current);
    Ok(next)
}

/// The running configuration with its remote part replaced by `doc` (absent sections get
/// their defaults), validated.
pub fn replace_with(current: &AgentConfig, doc: Value) -> Result<AgentConfig, ConfigError> {
    check_sections(&doc)?;
    let mut next = from_document(current, doc)?;
    keep_redacted_secrets(&mut next, current);
    Ok(next)
}

fn remote_error(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        source_name: "remote configuration".into(),
        path: path.into(),
        message: message.into(),
    }
}

fn check_sections(doc: &Value) -> Result<(), ConfigError> {
    let Value::Object(o) = doc else {
        return Err(remote_error("", "the document must be a JSON object"));
    };
    for key in o.keys() {
        if SETTABLE.contains(&key.as_str()) {
            continue;
        }
        let device_only = [
            "aws",
            "credentials",
            "mqtt",
            "metrics",
            "state_dir",
            "device_id",
        ];
        let reason = if device_only.contains(&key.as_str()) {
            "set in agent.toml on the device, not remotely".to_string()
        } else {
            format!(
                "unknown field; a document has version, token, mode and {}",
                SETTABLE.join(", ")
            )
        };
        return Err(remote_error(key.clone(), reason));
    }
    Ok(())
}

/// Builds a configuration from `current`'s device-only parts and a remote document.
fn from_document(current: &AgentConfig, mut doc: Value) -> Result<AgentConfig, ConfigError> {
    // The map key is the camera's name.
    if let Some(Value::Object(cams)) = doc.get_mut("cameras") {
        for (name, cam) in cams.iter_mut() {
            let Value::Object(fields) = cam else {
                return Err(remote_error(
                    format!("cameras.{name}"),
                    "must be an object (or null to remove the camera)",
                ));
            };
            match fields.get("name") {
                None => {
                    fields.insert("name".into(), Value::from(name.clone()));
                }
                Some(Value::String(n)) if n == name => {}
                Some(_) => {
                    return Err(remote_error(
                        format!("cameras.{name}.name"),
                        "the key is the camera's name; to rename, remove it and add the new one",
                    ));
                }
            }
        }
    }
    no_arrays_for_objects(&doc, "")?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Remote {
        #[serde(default)]
        upload: UploadConfig,
        #[serde(default)]
        journal: JournalSettings,
        #[serde(default)]
        cameras: BTreeMap<String, CameraConfig>,
    }
    let remote: Remote = serde_path_to_error::deserialize(doc.clone()).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        if let Some(field) = source_culprit(&doc, &path) {
            path = format!("{path}.{field}");
        }
        remote_error(path, e.inner().to_string())
    })?;
    let mut next = current.clone();
    next.upload = remote.upload;
    next.journal = remote.journal;
    // Cameras keep their order; new ones follow, by name.
    next.cameras = remote.cameras.into_values().collect();
    let position = |name: &str| current.cameras.iter().position(|c| c.name == name);
    next.cameras
        .sort_by_key(|c| (position(&c.name).unwrap_or(usize::MAX), c.name.clone()));
    next.validate("remote configuration").map_err(|mut e| {
        e.path = name_camera_paths(&e.path, &next.cameras);
        e
    })?;
    Ok(next)
}

/// The field of a camera's `source` that an error at `cameras.<name>.source` is about. serde
/// reads an internally tagged object (`{"type": "test", …}`) through a buffer, and its
/// errors lose the field's name (`invalid value: integer -5, expected u32`): the field is
/// the one whose absence changes the outcome.
fn source_culprit(doc: &Value, path: &str) -> Option<String> {
    let name = path.strip_prefix("cameras.")?.strip_suffix(".source")?;
    let source = doc.get("cameras")?.get(name)?.get("source")?.as_object()?;
    crate::agent::source_culprit(source)
}

/// serde reads a struct from an array of its fields in order; in a document that is only
/// ever a mistake, so arrays are refused everywhere but in the one list setting.
fn no_arrays_for_objects(v: &Value, path: &str) -> Result<(), ConfigError> {
    match v {
        Value::Array(_) if path.ends_with(".encoder.prefer") => Ok(()),
        Value::Array(_) => Err(remote_error(
            path.trim_start_matches('.'),
            "expected an object or a single value, not an array",
        )),
        Value::Object(o) => o
            .iter()
            .try_for_each(|(k, v)| no_arrays_for_objects(v, &format!("{path}.{k}"))),
        _ => Ok(()),
    }
}

/// `cameras[1].source` → `cameras.back.source`: documents key cameras by name.
fn name_camera_paths(path: &str, cameras: &[CameraConfig]) -> String {
    let Some(rest) = path.strip_prefix("cameras[") else {
        return path.to_string();
    };
    let Some((index, tail)) = rest.split_once(']') else {
        return path.to_string();
    };
    match index.parse::<usize>().ok().and_then(|i| cameras.get(i)) {
        Some(cam) => format!("cameras.{}{tail}", cam.name),
        None => path.to_string(),
    }
}

/// A document built from `config/state` carries `***` for secrets: keep the current ones.
fn keep_redacted_secrets(next: &mut AgentConfig, current: &AgentConfig) {
    for cam in &mut next.cameras {
        let Some(old) = current.cameras.iter().find(|c| c.name == cam.name) else {
            continue;
        };
        if let (
            SourceConfig::Rtsp { url, password, .. },
            SourceConfig::Rtsp {
                url: old_url,
                password: old_password,
                ..
            },
        ) = (&mut cam.source, &old.source)
        {
            if password.as_deref() == Some(REDACTED) {
                password.clone_from(old_password);
            }
            if url.contains(":***@") && redact_url(old_url) == *url {
                url.clone_from(old_url);
            }
        }
    }
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
        source = { type = "rtsp", url = "rtsp://admin:hunter2@10.0.0.5/live", password = "pw" }
    "#;

    fn base() -> AgentConfig {
        AgentConfig::from_toml("agent.toml", BASE).unwrap()
    }

    fn set(payload: &str) -> Result<Accepted, Rejection> {
        handle_set(&base(), 3, payload.as_bytes())
    }

    #[test]
    fn a_partial_document_changes_only_what_it_names() {
        let a = set(r#"{"version": 4, "token": "t1",
                        "cameras": {"front": {"encoder": {"bitrate_kbps": 1500}}}}"#)
        .unwrap();
        assert_eq!((a.version, a.token.as_deref()), (4, Some("t1")));
        let front = a.config.cameras.iter().find(|c| c.name == "front").unwrap();
        assert_eq!(front.encoder.bitrate_kbps, 1500);
        let door = a.config.cameras.iter().find(|c| c.name == "door").unwrap();
        assert_eq!(
            door,
            base().cameras.iter().find(|c| c.name == "door").unwrap()
        );
        assert_eq!(a.config.upload, base().upload);
    }

    #[test]
    fn a_wrong_source_setting_is_named_inside_the_source() {
        let e =
            set(r#"{"version": 4, "cameras": {"front": {"source": {"type": "test", "fps": -5}}}}"#)
                .unwrap_err();
        assert_eq!(e.path, "cameras.front.source.fps", "{e:?}");
        let e = set(r#"{"version": 4, "cameras": {"door": {"source": {"type": "rtsp", "url": "rtsp://h/x", "latency_ms": "low"}}}}"#)
            .unwrap_err();
        assert_eq!(e.path, "cameras.door.source.latency_ms", "{e:?}");
        // The tag itself is named as it is.
        let e = set(r#"{"version": 4, "cameras": {"front": {"source": {"type": "webcam"}}}}"#)
            .unwrap_err();
        assert_eq!(e.path, "cameras.front.source.type", "{e:?}");
    }

    #[test]
    fn a_byte_order_mark_before_the_json_is_taken() {
        let with_bom = [
            b"\xEF\xBB\xBF".as_slice(),
            br#"{"version": 4, "cameras": {"front": {"encoder": {"bitrate_kbps": 900}}}}"#,
        ]
        .concat();
        let a = handle_set(&base(), 3, &with_bom).unwrap();
        assert_eq!(a.version, 4);
    }

    #[test]
    fn null_removes_a_camera_and_new_keys_add_one() {
        let a = set(r#"{"version": 9, "cameras": {"door": null,
              "yard": {"stream_name": "yard-cam", "source": {"type": "test", "fps": 10}}}}"#)
        .unwrap();
        let names: Vec<_> = a.config.cameras.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["front", "yard"]);
    }

    #[test]
    fn replace_mode_drops_what_the_document_leaves_out() {
        let a = set(r#"{"version": 4, "mode": "replace",
              "cameras": {"front": {"stream_name": "front-cam", "source": {"type": "test"}}}}"#)
        .unwrap();
        assert_eq!(a.config.cameras.len(), 1);
        let e = set(r#"{"version": 4, "mode": "replace", "upload": {}}"#).unwrap_err();
        assert_eq!(e.path, "cameras");
    }

    #[test]
    fn rejections_name_the_field_and_carry_the_token() {
        let cases = [
            (
                r#"{"version": 4, "token": "a", "cameras": {"front": {"encoder": {"bitrate_kbps": "fast"}}}}"#,
                "cameras.front.encoder.bitrate_kbps",
            ),
            (
                r#"{"version": 4, "token": "a", "cameras": {"front": {"encoder": {"bitrate_kbps": 5}}}}"#,
                "cameras.front.encoder.bitrate_kbps",
            ),
            (
                r#"{"version": 4, "token": "a", "cameras": {"door": {"stream_name": "front-cam"}}}"#,
                "cameras.door.stream_name",
            ),
            (
                r#"{"version": 4, "token": "a", "cameras": {"front": {"colour": 1}}}"#,
                "cameras.front.colour",
            ),
            (
                r#"{"version": 4, "token": "a", "aws": {"region": "x"}}"#,
                "aws",
            ),
            (
                r#"{"version": 4, "token": "a", "cameras": {"front": {"encoder": []}}}"#,
                "cameras.front.encoder",
            ),
            (r#"{"version": 3, "token": "a"}"#, "version"),
            (r#"{"version": -1, "token": "a"}"#, "version"),
            (r#"{"token": "a"}"#, "version"),
            (
                r#"{"version": 4, "token": "a", "cameras": {"front": 7}}"#,
                "cameras.front",
            ),
            (
                r#"{"version": 4, "token": "a", "cameras": {"front": {"name": "back"}}}"#,
                "cameras.front.name",
            ),
        ];
        for (doc, path) in cases {
            let e = set(doc).unwrap_err();
            assert_eq!(e.path, path, "{doc}: {e}");
            assert_eq!(e.token.as_deref(), Some("a"), "{doc}");
            assert!(!e.reason.is_empty());
        }
        let stale = set(r#"{"version": 2}"#).unwrap_err();
        assert!(stale.reason.contains("stale"), "{stale}");
        assert_eq!(stale.version, Some(2));
    }

    #[test]
    fn malformed_payloads_are_rejected_without_a_field() {
        for doc in ["", "[]", "nul", "{\"version\": 4", "\"x\""] {
            let e = set(doc).unwrap_err();
            assert_eq!((e.path.as_str(), e.token.clone()), ("", None), "{doc}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(set(&deep).is_err());
        let big = format!(
            r#"{{"version": 4, "token": "{}"}}"#,
            "x".repeat(MAX_DOCUMENT_BYTES)
        );
        assert!(set(&big).unwrap_err().reason.contains("limit"));
    }

    #[test]
    fn state_hides_secrets_and_sending_it_back_keeps_them() {
        let cfg = base();
        let state = redacted(&cfg);
        let text = state.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("\"pw\""),
            "{text}"
        );
        let mut echo = state.clone();
        echo["version"] = Value::from(4);
        let a = handle_set(&cfg, 3, echo.to_string().as_bytes()).unwrap();
        assert_eq!(a.config, cfg, "an echoed state document changes nothing");
    }

    #[test]
    fn diff_is_the_inverse_of_merge_patch() {
        let mut from = document(&base());
        let mut changed = base();
        changed.cameras.remove(1);
        changed.cameras[0].encoder.bitrate_kbps = 900;
        let mut to = document(&changed);
        strip_nulls(&mut from);
        strip_nulls(&mut to);
        let patch = diff(&from, &to);
        assert_eq!(patch["cameras"]["door"], Value::Null);
        assert_eq!(
            patch["cameras"]["front"],
            serde_json::json!({"encoder": {"bitrate_kbps": 900}})
        );
        let mut merged = from.clone();
        merge_patch(&mut merged, &patch);
        assert_eq!(merged, to);
        assert_eq!(diff(&to, &to), serde_json::json!({}));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's own example (section 3).
        let mut target = serde_json::json!({"title": "Goodbye!", "author": {"givenName": "John",
            "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = serde_json::json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null}, "tags": ["example"]});
        merge_patch(&mut target, &patch);
        assert_eq!(
            target,
            serde_json::json!({"title": "Hello!", "author": {"givenName": "John"},
                "tags": ["example"], "content": "This will be unchanged",
                "phoneNumber": "+01-123-456-7890"})
        );
    }
}
