//! Hostile input for the MQTT handlers: malformed, oversized, deeply nested and wrongly
//! typed payloads thrown at `config/set` (remote::handle_set) and at every command
//! (control::parse + the patch they make). The handlers never panic; a refusal always has
//! a reason; anything accepted is a configuration that validates, and versions only go up.
//! (The integration test `agent_mqtt_control::hostile_payloads_*` sends a corpus of the
//! same through mosquitto to a streaming agent.)

use kvs_edge_agent::control::{self, Command, FEATURES};
use kvs_edge_agent::timeline::WallMs;
use kvs_edge_config::AgentConfig;
use kvs_edge_config::remote::{self, handle_set};
use proptest::prelude::*;
use serde_json::{Value, json};

const BASE: &str = r#"
    [aws]
    region = "us-east-1"
    [[cameras]]
    name = "cam"
    stream_name = "cam-stream"
    source = { type = "test" }
    [[cameras]]
    name = "door"
    stream_name = "door-stream"
    source = { type = "rtsp", url = "rtsp://u:p@10.0.0.5/live" }
"#;

fn base() -> AgentConfig {
    AgentConfig::from_toml("agent.toml", BASE).unwrap()
}

/// Any JSON value, nested up to a few levels, with the document's own keys mixed in so
/// that generated documents reach deep into the configuration.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("cameras".to_string()),
        Just("cam".to_string()),
        Just("door".to_string()),
        Just("encoder".to_string()),
        Just("bitrate_kbps".to_string()),
        Just("source".to_string()),
        Just("type".to_string()),
        Just("width".to_string()),
        Just("fps".to_string()),
        Just("upload".to_string()),
        Just("journal".to_string()),
        Just("max_size_mb".to_string()),
        Just("enabled".to_string()),
        Just("stream_name".to_string()),
        Just("fragment_duration_ms".to_string()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("test")),
        Just(Value::from("rtsp")),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A `config/set` document: mostly with a fresh version, so that validation is reached.
fn document() -> impl Strategy<Value = Value> {
    (json_value(), prop::option::of(any::<u64>()), any::<bool>()).prop_map(
        |(body, version, token)| {
            let mut doc = match body {
                Value::Object(o) => Value::Object(o),
                other => json!({ "cameras": { "cam": other } }),
            };
            if let Some(v) = version {
                doc["version"] = json!(v % 20);
            }
            if token {
                doc["token"] = json!("tok");
            }
            doc
        },
    )
}

fn check_set(payload: &[u8]) {
    let cfg = base();
    match handle_set(&cfg, 3, payload) {
        Ok(accepted) => {
            assert!(accepted.version > 3, "versions only go up");
            accepted
                .config
                .validate("accepted")
                .expect("an accepted configuration validates");
        }
        Err(r) => assert!(!r.reason.is_empty(), "a rejection says why"),
    }
}

fn check_command(camera: &str, feature: &str, payload: &[u8]) {
    let cfg = base();
    match control::parse(&cfg, camera, feature, payload, WallMs(1_700_000_000_000)) {
        Ok(request) => {
            if let Command::Patch(p) = request.command
                && let Ok(next) = remote::apply_patch(&cfg, &p)
            {
                next.validate("after a command").expect("validates");
            }
        }
        Err(refusal) => assert!(!refusal.reason.is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn generated_documents_never_panic(doc in document()) {
        check_set(doc.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_set(&bytes);
        for feature in FEATURES {
            check_command("cam", feature, &bytes);
        }
    }

    #[test]
    fn generated_commands_never_panic(
        value in json_value(),
        camera in prop_oneof![Just("cam"), Just("door"), Just("nope")],
        feature in prop_oneof![Just("streaming"), Just("bitrate"), Just("resolution"), Just("fps"),
            Just("fragment_duration"), Just("alarm"), Just("snapshot"), Just("zoom")],
    ) {
        check_command(camera, feature, value.to_string().as_bytes());
        check_command(camera, feature, json!({"value": value, "token": "t"}).to_string().as_bytes());
    }
}

#[test]
fn extreme_payloads_are_refused_with_a_reason() {
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!(
        r#"{{"version": 9, "cameras": {}1{}}}"#,
        r#"{"a":"#.repeat(50_000),
        "}".repeat(50_000)
    );
    let oversized = format!(r#"{{"version": 9, "pad": "{}"}}"#, "x".repeat(1 << 20));
    let wrong_types = [
        r#"{"version": "9"}"#,
        r#"{"version": 9.5}"#,
        r#"{"version": 9, "cameras": []}"#,
        r#"{"version": 9, "cameras": {"cam": {"encoder": []}}}"#,
        r#"{"version": 9, "cameras": {"cam": {"source": {"type": "laser"}}}}"#,
        r#"{"version": 9, "upload": {"max_in_flight": -1}}"#,
        r#"{"version": 9, "journal": {"max_size_mb": 1e300}}"#,
        r#"{"version": 18446744073709551616}"#,
    ];
    for payload in [
        deep_array.as_str(),
        deep_object.as_str(),
        oversized.as_str(),
    ]
    .into_iter()
    .chain(wrong_types)
    {
        let r = handle_set(&base(), 3, payload.as_bytes())
            .expect_err(&payload[..payload.len().min(60)]);
        assert!(!r.reason.is_empty());
        for feature in FEATURES {
            check_command("cam", feature, payload.as_bytes());
        }
    }
}
