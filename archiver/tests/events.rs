//! Every published event shape in tests/fixtures/aws-events/ through the archiver's
//! decision, and `handle-event --dry-run` as a user runs it: one JSON object per record,
//! exit 0 for clip and ignore, non-zero with a message for malformed input.

use std::path::PathBuf;
use std::process::Command;

use kvs_edge_archiver::decide::Decision;
use kvs_edge_archiver::decisions;
use kvs_edge_config::archiver::ArchiverConfig;
use serde_json::{Value, json};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../tests/fixtures/aws-events")
    .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const CONFIG: &str = r#"
    bucket = "clips"
    [[mappings]]
    alarm = "ServerCpuTooHigh"
    streams = ["front-cam"]
    [[mappings]]
    alarm = "arn:aws:cloudwatch:*:alarm:EC2 CPU*"
    streams = ["yard-cam", "gate-cam"]
    pre_roll_s = 10
    post_roll_s = 20
    [[mappings]]
    alarm = "*"
    streams = ["catch-all"]
"#;

fn decide(name: &str) -> Vec<Value> {
    let cfg = ArchiverConfig::from_toml("test.toml", CONFIG).unwrap();
    decisions(&cfg, &fixture(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .iter()
        .map(Decision::json)
        .collect()
}

fn one(name: &str) -> Value {
    let mut d = decide(name);
    assert_eq!(d.len(), 1, "{name}: {d:?}");
    d.remove(0)
}

fn clip(name: &str) -> Value {
    let d = one(name);
    assert_eq!(d["action"], "clip", "{name}: {d}");
    d
}

fn ignored(name: &str, because: &str) {
    let d = one(name);
    assert_eq!(d["action"], "ignore", "{name}: {d}");
    assert!(
        d["reason"].as_str().unwrap().contains(because),
        "{name}: {d}"
    );
}

#[test]
fn eventbridge_state_changes_become_clips() {
    let d = clip("eventbridge-cw-alarm-state-change-single-metric.json");
    assert_eq!(d["alarm"], "ServerCpuTooHigh");
    assert_eq!(d["streams"], json!(["front-cam"]));
    assert_eq!(d["alarm_time"], "2019-10-02T17:04:40.989Z");
    // The default window: 60 s before to 120 s after.
    assert_eq!(
        (d["start"].as_str(), d["end"].as_str()),
        (
            Some("2019-10-02T17:03:40.989Z"),
            Some("2019-10-02T17:06:40.989Z")
        )
    );
    assert_eq!(
        d["alarm_arn"],
        "arn:aws:cloudwatch:us-east-1:123456789012:alarm:ServerCpuTooHigh"
    );
    // The muted variant is the same event: still a clip (muting stops notifications).
    let muted = clip("eventbridge-cw-alarm-state-change-single-metric-muted.json");
    assert_eq!(muted["transition"], d["transition"]);

    // A mapping by ARN pattern, with its own window, and several streams.
    for f in [
        "eventbridge-cw-alarm-state-change-anomaly-detection.json",
        "eventbridge-cw-alarm-state-change-anomaly-detection-muted.json",
    ] {
        let d = clip(f);
        assert_eq!(d["streams"], json!(["yard-cam", "gate-cam"]), "{f}");
        let span = chrono::DateTime::parse_from_rfc3339(d["end"].as_str().unwrap()).unwrap()
            - chrono::DateTime::parse_from_rfc3339(d["start"].as_str().unwrap()).unwrap();
        assert_eq!(span.num_seconds(), 30, "{f}");
    }
    for f in [
        "eventbridge-cw-alarm-state-change-metric-math.json",
        "eventbridge-cw-alarm-state-change-metric-math-muted.json",
        "eventbridge-cw-alarm-state-change-metrics-insights-multi-time-series.json",
    ] {
        assert_eq!(clip(f)["streams"], json!(["catch-all"]), "{f}");
    }
    // Composite alarms set off by ServerCpuTooHigh take its mapping.
    for f in [
        "eventbridge-cw-alarm-state-change-composite-with-suppressor.json",
        "eventbridge-cw-alarm-state-change-composite-muted.json",
        "hybrid-eventbridge-envelope-with-alarmData.rust-runtime.json",
    ] {
        assert_eq!(clip(f)["streams"], json!(["front-cam"]), "{f}");
    }
}

#[test]
fn configuration_and_contributor_events_and_other_states_are_ignored() {
    for f in [
        "eventbridge-cw-alarm-config-change-create-composite.json",
        "eventbridge-cw-alarm-config-change-create-composite-with-suppressor.json",
        "eventbridge-cw-alarm-config-change-update-metric.json",
        "eventbridge-cw-alarm-config-change-update-composite-with-suppressor.json",
        "eventbridge-cw-alarm-config-change-delete-metric-math.json",
        "eventbridge-cw-alarm-config-change-delete-composite-with-suppressor.json",
    ] {
        ignored(f, "configuration change");
    }
    ignored(
        "eventbridge-cw-alarm-contributor-state-change-metrics-insights.json",
        "contributor",
    );
    ignored(
        "sqs-body-eventbridge-cw-alarm-state-change.cw-alert-router.json",
        "the state is OK",
    );
    ignored(
        "sns-http-notification-cw-alarm-insufficient-data.alerta.json",
        "INSUFFICIENT_DATA",
    );
    ignored(
        "sns-http-subscription-confirmation.alerta.json",
        "SubscriptionConfirmation",
    );
    ignored(
        "sqs-receive-message-eventbridge-event.serverless-patterns.json",
        "not an alarm state change",
    );
    // Composite re-evaluations that stay in ALARM are not transitions.
    ignored(
        "lambda-alarm-action-composite-alarm.powertools.json",
        "already in ALARM",
    );
    ignored(
        "mediaconvert-job-state-change-queue-hop.json",
        "only final states",
    );
    ignored("s3-inventory-manifest-csv.json", "not an alarm event");
}

#[test]
fn lambda_alarm_actions_and_sns_notifications_become_clips() {
    let d = clip("lambda-alarm-action-metric-math-alarm.powertools.json");
    assert_eq!(
        (d["alarm"].as_str(), d["shape"].as_str()),
        (Some("Test alert"), Some("lambda-alarm-action"))
    );
    assert_eq!(d["alarm_time"], "2024-02-17T11:53:08.431Z");
    // Published with spaces inside timestamps and ARNs: still understood.
    let d = clip("lambda-alarm-action-metric-alarm.rust-runtime-mangled.json");
    assert_eq!(d["alarm_time"], "2023-08-04T12:36:15.490Z");
    assert_eq!(
        d["alarm_arn"],
        "arn:aws:cloudwatch:us-east-1:444455556666:alarm:lambda-demo-metric-alarm"
    );
    let d = clip("sns-http-notification-cw-alarm-alarm.alerta.json");
    assert_eq!(
        (d["alarm"].as_str(), d["shape"].as_str()),
        (Some("bucketbytesAlarm"), Some("sns"))
    );
    for f in [
        "sns-lambda-event-cw-alarm-single-metric.aws-lambda-go.json",
        "sns-lambda-event-cw-alarm-single-metric.rust-runtime.json",
        "sns-lambda-event-cw-alarm-multiple-metrics.aws-lambda-go.json",
    ] {
        assert_eq!(clip(f)["alarm_time"], "2015-06-03T17:43:27.123Z", "{f}");
    }
    // Two records, two decisions.
    let d = decide("sns-lambda-event-cw-alarm-multiple-metrics.rust-runtime.json");
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|d| d["action"] == "clip"));
}

#[test]
fn the_stream_name_dimension_names_the_stream_and_unknown_alarms_are_reported() {
    // A KVS metric alarm: its StreamName dimension is the stream.
    let mut event: Value = serde_json::from_slice(&fixture(
        "eventbridge-cw-alarm-state-change-single-metric.json",
    ))
    .unwrap();
    event["detail"]["configuration"]["metrics"][0]["metricStat"]["metric"] = json!({
        "dimensions": {"StreamName": "porch-cam"},
        "name": "PutMedia.IncomingFrames", "namespace": "AWS/KinesisVideo"});
    event["detail"]["alarmName"] = json!("PorchNoFrames");
    let cfg = ArchiverConfig::default();
    let d = decisions(&cfg, event.to_string().as_bytes()).unwrap()[0].json();
    assert_eq!(
        (d["action"].as_str(), d["streams"].clone()),
        (Some("clip"), json!(["porch-cam"]))
    );
    assert_eq!(d["resolved_by"], "StreamName dimension");
    // The same event through SQS (a Lambda SQS event) decides the same.
    let sqs = json!({"Records": [{"messageId": "m1", "eventSource": "aws:sqs", "body": event.to_string()}]});
    assert_eq!(
        decisions(&cfg, sqs.to_string().as_bytes()).unwrap()[0].json(),
        d
    );
    // Without a mapping or the dimension: the alarm's tags are asked (not in a dry run)...
    let single = fixture("eventbridge-cw-alarm-state-change-single-metric.json");
    let d = decisions(&cfg, &single).unwrap()[0].json();
    assert_eq!(d["action"], "lookup-tags", "{d}");
    // ...or, with tags off, it is reported as unknown: no clip.
    let no_tags = ArchiverConfig::from_toml("t", "use_alarm_tags = false").unwrap();
    let d = decisions(&no_tags, &single).unwrap()[0].json();
    assert_eq!(d["action"], "ignore");
    assert!(
        d["reason"].as_str().unwrap().contains("unknown alarm"),
        "{d}"
    );
    // Muted alarms are skipped when configured so.
    let cfg = ArchiverConfig::from_toml(
        "t",
        "skip_muted = true\n[[mappings]]\nalarm = \"*\"\nstreams = [\"s\"]",
    )
    .unwrap();
    let d = decisions(
        &cfg,
        &fixture("eventbridge-cw-alarm-state-change-single-metric-muted.json"),
    )
    .unwrap()[0]
        .json();
    assert!(d["reason"].as_str().unwrap().contains("muted by"), "{d}");
}

#[test]
fn mediaconvert_job_events_record_final_states_of_our_jobs() {
    // Jobs not submitted by the archiver (no clip in their user metadata) are not ours.
    ignored(
        "mediaconvert-job-state-change-error.json",
        "not submitted by kvs-edge",
    );
    ignored(
        "mediaconvert-job-state-change-canceled.json",
        "not submitted by kvs-edge",
    );
    for f in [
        "mediaconvert-job-state-change-progressing.json",
        "mediaconvert-job-state-change-status-update.json",
        "mediaconvert-job-state-change-input-information.json",
        "mediaconvert-job-state-change-new-warning.json",
    ] {
        ignored(f, "only final states");
    }
    // The same ERROR event for a job the archiver submitted: recorded next to its clip.
    let mut e: Value =
        serde_json::from_slice(&fixture("mediaconvert-job-state-change-error.json")).unwrap();
    e["detail"]["userMetadata"] = json!({"clip_bucket": "clips", "clip_key": "clips/cam/x.mp4"});
    let d = decisions(&ArchiverConfig::default(), e.to_string().as_bytes()).unwrap()[0].json();
    assert_eq!(
        d,
        json!({"action": "record", "job": "1515368087458-qnoxtd", "status": "ERROR",
               "clip": "s3://clips/clips/cam/x.mp4"})
    );
    // Published with `"code": 000000`: not JSON, so an error naming it, not a panic.
    let bad = fixture("mediaconvert-job-state-change-complete.nonstrict-json.txt");
    assert!(decisions(&ArchiverConfig::default(), &bad).is_err());
}

#[test]
fn dry_run_prints_one_json_object_and_fails_on_malformed_input() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("archiver.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let run = |input: &str| {
        Command::new(env!("CARGO_BIN_EXE_kvs-edge-archiver"))
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "handle-event",
                "--dry-run",
                input,
            ])
            .output()
            .unwrap()
    };
    let fixtures = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../tests/fixtures/aws-events");
    let out = run(fixtures
        .join("eventbridge-cw-alarm-state-change-single-metric.json")
        .to_str()
        .unwrap());
    assert!(out.status.success());
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["action"], "clip");
    let out = run(fixtures
        .join("eventbridge-cw-alarm-config-change-update-metric.json")
        .to_str()
        .unwrap());
    assert!(out.status.success(), "ignoring is a success too");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["action"],
        "ignore"
    );
    // Not JSON as published (a Python literal): an error naming the input.
    let bad = fixtures.join("lambda-alarm-action-metric-alarm.awsdocs.python-literal.txt");
    let out = run(bad.to_str().unwrap());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("python-literal.txt") && stderr.contains("not JSON"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
