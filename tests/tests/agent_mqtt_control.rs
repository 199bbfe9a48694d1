//! Configuration and commands over MQTT against a real mosquitto started by the test, the
//! agent streaming into kvs-local meanwhile: config/set accepted, rejected (naming the field)
//! and stale; live apply that restarts only what a change touches; the accepted
//! configuration surviving a restart (and a stale retained message); per-camera commands,
//! alarms (events + fragment tags read back from kvs-local) and snapshots (checked by ffprobe).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_agent::metrics::CameraMetrics;
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(60);
const BASE: &str = "kvs-edge/garage-pi";

fn toml(url: &str, state: &Path, broker_port: u16) -> String {
    mqtt_agent_toml(url, state, "ctl-cam", &plain_mqtt(broker_port))
}

/// Waits until the camera has had `n` more fragments PERSISTED.
async fn more_persisted(cam: &CameraMetrics, n: u64) -> anyhow::Result<()> {
    let p = cam.upload_stats.fragments_persisted.load(Ordering::Relaxed);
    tokio::time::timeout(
        BOUND,
        cam.upload_stats
            .wait_until(|s| s.fragments_persisted.load(Ordering::Relaxed) >= p + n),
    )
    .await?;
    Ok(())
}

/// The retained message on `topic` now, as a new subscriber gets it.
async fn retained(port: u16, topic: &str) -> anyhow::Result<String> {
    let mut w = MqttWatch::subscribe(port, topic).await?;
    let (_, payload, retained) = w.wait_for(BOUND, |_, _| true).await?;
    anyhow::ensure!(retained, "{topic}: not retained");
    Ok(payload)
}

/// A broker, kvs-local, the test configuration and a watcher on every device topic.
async fn rig() -> anyhow::Result<(Mosquitto, Local, AgentConfig, MqttWatch)> {
    let broker = Mosquitto::start(None)?;
    let local = Local::start().await?;
    let state = local.dir.path().join("state");
    let file = AgentConfig::from_toml("ctl.toml", &toml(&local.url(), &state, broker.port))?;
    let mq = MqttWatch::subscribe(broker.port, &format!("{BASE}/#")).await?;
    Ok((broker, local, file, mq))
}

fn restarts(cam: &CameraMetrics) -> u64 {
    cam.camera_stats.restarts.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_accepts_rejects_and_survives_a_restart() -> anyhow::Result<()> {
    init_logs();
    let (broker, _local, file, mut mq) = rig().await?;
    let agent = InProcessAgent::start(file.clone()).await?;
    let cam = agent.camera("cam").expect("cam runs");

    let initial = mq.json_on(BOUND, &format!("{BASE}/config/state")).await?;
    assert_eq!(initial["version"], 0);
    assert_eq!(initial["cameras"]["cam"]["encoder"]["bitrate_kbps"], 500);
    more_persisted(&cam, 1).await?;

    // A partial document: the bitrate goes to the running encoder; the source keeps running.
    let before = restarts(&cam);
    let set = format!("{BASE}/config/set");
    let accepted = mq
        .ask(&set, &json!({"version": 1, "token": "t1", "cameras": {"cam": {"encoder": {"bitrate_kbps": 800}}}}), &format!("{BASE}/config/accepted"), BOUND)
        .await?;
    assert_eq!(
        (accepted["token"].as_str(), accepted["version"].as_u64()),
        (Some("t1"), Some(1))
    );
    assert_eq!(accepted["applied"]["reconfigure"], json!(["cam"]));
    let state_doc: Value =
        serde_json::from_str(&retained(broker.port, &format!("{BASE}/config/state")).await?)?;
    assert_eq!(state_doc["version"], 1);
    assert_eq!(state_doc["cameras"]["cam"]["encoder"]["bitrate_kbps"], 800);
    assert_eq!(
        retained(broker.port, &format!("{BASE}/cam/bitrate/state")).await?,
        "800"
    );
    more_persisted(&cam, 2).await?;
    assert_eq!(
        restarts(&cam),
        before,
        "a bitrate change does not restart the source"
    );

    // Invalid: rejected, naming the field, with the token; nothing changes.
    let rejected = mq
        .ask(&set, &json!({"version": 2, "token": "t2", "cameras": {"cam": {"encoder": {"bitrate_kbps": "fast"}}}}), &format!("{BASE}/config/rejected"), BOUND)
        .await?;
    assert_eq!(rejected["token"], "t2");
    assert_eq!(rejected["path"], "cameras.cam.encoder.bitrate_kbps");
    // An empty message (how operators clear a retained one) is ignored: the next answer is
    // the stale document's, not a rejection of the empty one.
    mq.publish(&set, Vec::new(), false).await?;
    // Stale: rejected.
    mq.publish(
        &set,
        json!({"version": 1, "token": "t3"}).to_string(),
        false,
    )
    .await?;
    let rejected = mq
        .json_on(BOUND, &format!("{BASE}/config/rejected"))
        .await?;
    assert_eq!(
        (rejected["token"].as_str(), rejected["path"].as_str()),
        (Some("t3"), Some("version"))
    );
    assert!(
        rejected["reason"].as_str().unwrap().contains("stale"),
        "{rejected}"
    );

    // A second camera: it starts; the first one is not touched.
    let before = (
        restarts(&cam),
        cam.upload_stats.sessions.load(Ordering::Relaxed),
    );
    mq.publish(
        &set,
        json!({"version": 3, "token": "t4", "cameras": {"cam2": {
            "stream_name": "ctl-cam-2", "fragment_duration_ms": 1000,
            "source": {"type": "test", "width": 160, "height": 120, "fps": 20},
            "create_stream": {"retention_period_hours": 1}}}})
        .to_string(),
        false,
    )
    .await?;
    let accepted = mq
        .json_on(BOUND, &format!("{BASE}/config/accepted"))
        .await?;
    assert_eq!(accepted["applied"]["start"], json!(["cam2"]), "{accepted}");
    let cam2 = agent.camera("cam2").expect("cam2 runs");
    more_persisted(&cam2, 1).await?;
    more_persisted(&cam, 1).await?;
    assert_eq!(
        (
            restarts(&cam),
            cam.upload_stats.sessions.load(Ordering::Relaxed)
        ),
        before,
        "adding a camera leaves the others alone"
    );
    let (_, status, retained) = mq
        .wait_for(BOUND, |t, p| {
            t == format!("{BASE}/cam2/status") && p.contains("\"online\"")
        })
        .await?;
    assert!(retained || status.contains("online"));

    // A stale document left retained on the broker must not win after the restart.
    mq.publish(
        &set,
        json!({"version": 2, "token": "old", "cameras": {"cam2": null}}).to_string(),
        true,
    )
    .await?;
    mq.json_on(BOUND, &format!("{BASE}/config/rejected"))
        .await?;
    agent.stop().await?;

    // Restart with the same file: the accepted configuration (version 3) comes back.
    let agent = InProcessAgent::start(file).await?;
    let state_doc = mq
        .wait_for(BOUND, |t, p| {
            t == format!("{BASE}/config/state") && p.contains("\"version\":3")
        })
        .await?;
    let doc: Value = serde_json::from_str(&state_doc.1)?;
    assert_eq!(doc["cameras"]["cam"]["encoder"]["bitrate_kbps"], 800);
    assert!(doc["cameras"]["cam2"].is_object());
    let rejected = mq
        .json_on(BOUND, &format!("{BASE}/config/rejected"))
        .await?;
    assert_eq!(
        rejected["token"], "old",
        "the retained stale document is rejected again"
    );
    let mut names: Vec<String> = agent
        .running
        .cameras()
        .iter()
        .map(|c| c.camera.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["cam", "cam2"]);
    more_persisted(&agent.camera("cam2").unwrap(), 1).await?;
    agent.stop().await?;
    Ok(())
}

/// Every fragment's media of `stream`, as kvs-local returns it (tags included).
async fn stored_media(local: &Local, stream: &str) -> anyhow::Result<Vec<u8>> {
    let media = local.archived();
    let numbers: Vec<String> = list_all_fragments(&media, stream)
        .await?
        .into_iter()
        .filter_map(|f| f.fragment_number)
        .collect();
    let out = media
        .get_media_for_fragment_list()
        .stream_name(stream)
        .set_fragments(Some(numbers))
        .send()
        .await?;
    Ok(out.payload.collect().await?.into_bytes().to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_change_settings_mark_alarms_and_take_snapshots() -> anyhow::Result<()> {
    init_logs();
    let (broker, local, file, mut mq) = rig().await?;
    let topic = |leaf: &str| format!("{BASE}/cam/{leaf}");
    // A command someone left retained: the agent is told on subscribing, and must not act.
    mq.publish(&topic("streaming/set"), "OFF", true).await?;
    let agent = InProcessAgent::start(file).await?;
    let cam = agent.camera("cam").expect("cam runs");
    let r = mq.json_on(BOUND, &topic("streaming/rejected")).await?;
    assert!(r["reason"].as_str().unwrap().contains("retained"), "{r}");
    mq.publish(&topic("streaming/set"), "", true).await?; // clears it
    assert_eq!(
        retained(broker.port, &topic("streaming/state")).await?,
        "ON"
    );
    more_persisted(&cam, 1).await?;

    // Resolution: the source restarts with the new caps; the uploader carries on (it opens
    // a new session for the new codec configuration, as it does for any codec change).
    let restarts_before = restarts(&cam);
    mq.publish(&topic("resolution/set"), "320x240", false)
        .await?;
    mq.wait_for(BOUND, |t, p| {
        t == topic("resolution/state") && p == "320x240"
    })
    .await?;
    more_persisted(&cam, 2).await?;
    assert!(restarts(&cam) > restarts_before, "the source restarted");
    // Nothing lost on the way (a session may be retried on a loaded machine; that is the
    // uploader doing its job, not a loss).
    assert_eq!(
        cam.upload_stats.fragments_rejected.load(Ordering::Relaxed),
        0,
        "no fragment rejected"
    );
    let j = cam.journal.lock().unwrap().stats();
    assert_eq!(
        (j.dropped_oldest, j.denied, j.expired),
        (0, 0, 0),
        "no fragment dropped"
    );

    // Bad values and retained commands are answered, never acted on.
    mq.publish(
        &topic("bitrate/set"),
        json!({"value": "fast", "token": "b1"}).to_string(),
        false,
    )
    .await?;
    let r = mq.json_on(BOUND, &topic("bitrate/rejected")).await?;
    assert_eq!(r["token"], "b1");
    assert!(
        r["reason"].as_str().unwrap().contains("whole number"),
        "{r}"
    );

    // An alarm: events new → end, and the fragments in its window carry its tags in KVS.
    mq.publish(
        &topic("alarm/set"),
        json!({"id": "door-1", "label": "person", "pre_s": 1, "post_s": 2}).to_string(),
        false,
    )
    .await?;
    let new = mq.json_on(BOUND, &format!("{BASE}/events")).await?;
    assert_eq!(
        (
            new["type"].as_str(),
            new["id"].as_str(),
            new["camera"].as_str()
        ),
        (Some("new"), Some("door-1"), Some("cam"))
    );
    assert_eq!(
        new["end_ms"].as_i64().unwrap() - new["start_ms"].as_i64().unwrap(),
        3000
    );
    let end = mq.json_on(BOUND, &format!("{BASE}/events")).await?;
    assert_eq!(
        (end["type"].as_str(), end["id"].as_str()),
        (Some("end"), Some("door-1"))
    );
    more_persisted(&cam, 2).await?;
    let media = stored_media(&local, "ctl-cam").await?;
    assert!(
        contains(&media, b"ALARM_ID") && contains(&media, b"door-1") && contains(&media, b"person"),
        "the alarm's fragments carry its tags"
    );

    // A snapshot: a JPEG of the current picture (320x240 after the resolution change).
    mq.publish(&topic("snapshot/set"), "", false).await?;
    let (_, jpeg, _) = mq
        .wait_for_raw(BOUND, |t, _| t == topic("snapshot"))
        .await?;
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "JPEG start of image");
    let path = local.dir.path().join("snapshot.jpg");
    std::fs::write(&path, &jpeg)?;
    let (codec, width, height, _, _) = ffprobe(&path)?;
    assert_eq!((codec.as_str(), width, height), ("mjpeg", 320, 240));

    // Stop and start streaming by command.
    mq.publish(&topic("streaming/set"), "OFF", false).await?;
    mq.wait_for(BOUND, |t, p| t == topic("streaming/state") && p == "OFF")
        .await?;
    let status = mq
        .wait_for(BOUND, |t, p| t == topic("status") && p.contains("disabled"))
        .await?;
    assert!(status.2 || status.1.contains("disabled"));
    assert!(agent.camera("cam").is_none(), "stopped");
    mq.publish(&topic("snapshot/set"), "", false).await?;
    let r = mq.json_on(BOUND, &topic("snapshot/rejected")).await?;
    assert!(
        r["reason"].as_str().unwrap().contains("not streaming"),
        "{r}"
    );
    mq.publish(&topic("streaming/set"), "ON", false).await?;
    mq.wait_for(BOUND, |t, p| t == topic("streaming/state") && p == "ON")
        .await?;
    let cam = agent.camera("cam").expect("streaming again");
    more_persisted(&cam, 1).await?;
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_answered_and_streaming_continues() -> anyhow::Result<()> {
    init_logs();
    let (broker, _local, file, mut mq) = rig().await?;
    let agent = InProcessAgent::start(file).await?;
    let cam = agent.camera("cam").expect("cam runs");
    more_persisted(&cam, 1).await?;

    let corpus: Vec<Vec<u8>> = vec![
        b"{\"version\": 9, ".to_vec(), // truncated
        format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)).into_bytes(), // deep
        format!(
            r#"{{"version": 9, "cameras": {}1{}}}"#,
            r#"{"a":"#.repeat(5_000),
            "}".repeat(5_000)
        )
        .into_bytes(),
        format!(r#"{{"version": 9, "pad": "{}"}}"#, "x".repeat(512 * 1024)).into_bytes(), // big
        br#"{"version": "nine", "cameras": {"cam": {"enabled": "yes"}}}"#.to_vec(),
        br#"{"version": 9, "cameras": {"cam": {"encoder": {"bitrate_kbps": [1, 2]}}}}"#.to_vec(),
        br#"{"version": 9, "cameras": {"cam": {"source": {"type": "test", "fps": -3}}}}"#.to_vec(),
        br#"{"version": 9, "aws": {"endpoint_url": "http://evil"}}"#.to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80, 0xc3], // not UTF-8
        br#"{"value": {"deep": [1]}, "token": 7}"#.to_vec(), // wrong token
    ];
    let topics: Vec<(String, String)> = std::iter::once((
        format!("{BASE}/config/set"),
        format!("{BASE}/config/rejected"),
    ))
    .chain(kvs_edge_agent::control::FEATURES.iter().map(|f| {
        (
            format!("{BASE}/cam/{f}/set"),
            format!("{BASE}/cam/{f}/rejected"),
        )
    }))
    .collect();
    for (set, rejected) in &topics {
        for payload in &corpus {
            mq.publish(set, payload.clone(), false).await?;
            let (_, answer, _) = mq
                .wait_for(BOUND, |t, p| {
                    t == rejected || (t.ends_with("/accepted") && !p.is_empty())
                })
                .await?;
            let answer: Value = serde_json::from_str(&answer)?;
            assert!(
                answer["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{set}: every hostile payload is rejected with a reason, got {answer}"
            );
        }
    }
    // Still streaming, still online, and nothing changed.
    more_persisted(&cam, 2).await?;
    assert_eq!(
        retained(broker.port, &format!("{BASE}/available")).await?,
        "online"
    );
    let state_doc: Value =
        serde_json::from_str(&retained(broker.port, &format!("{BASE}/config/state")).await?)?;
    assert_eq!(state_doc["version"], 0);
    assert_eq!(state_doc["cameras"]["cam"]["encoder"]["bitrate_kbps"], 500);
    agent.stop().await?;
    Ok(())
}
