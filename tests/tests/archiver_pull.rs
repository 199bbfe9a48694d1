//! The archiver pulling a window from the device that recorded it, offline with mosquitto
//! and kvs-local: an on-demand camera records and uploads nothing; an alarm event for its
//! stream makes the archiver (the binary, as deployed) ask the device for the window over
//! MQTT, the agent uploads just those fragments from its recording (pre-roll included),
//! and the clip lands in S3 with the window's duration (ffprobe). The same event again
//! stores nothing new; a device that is not connected is a recorded outcome, not a hang.

use std::time::Duration;

use anyhow::Context;
use kvs_edge_tests::*;
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(60);
const STREAM: &str = "pulled-cam";

async fn archiver(
    cfg: &std::path::Path,
    event: &std::path::Path,
) -> anyhow::Result<(Vec<Value>, bool)> {
    let (cfg, event) = (cfg.to_path_buf(), event.to_path_buf());
    tokio::task::spawn_blocking(move || {
        run_archiver(&cfg, &["handle-event", event.to_str().expect("UTF-8 path")])
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_pulls_its_window_from_an_on_demand_camera() -> anyhow::Result<()> {
    init_logs();
    let MqttRig {
        broker,
        local,
        agent,
        watch: _watch,
        cfg: _,
    } = MqttRig::start(STREAM, "upload_policy = { mode = \"on_demand\" }").await?;
    let cam = agent.camera("cam").expect("cam runs");
    // Ten seconds of recording, nothing uploaded.
    let started = now_ms();
    eventually(BOUND, "ten fragments recorded", || {
        cam.journal.lock().unwrap().pending().count() >= 10
    })
    .await?;
    assert!(
        list_all_fragments(&local.archived(), STREAM)
            .await?
            .is_empty()
    );

    let archiver_cfg = write_archiver_config(
        local.dir.path(),
        "archiver.toml",
        &local.url(),
        &local.url(),
        &format!(
            "[clip]\npre_roll_s = 3\npost_roll_s = 3\ningest_wait_s = 10\n\
             [pull]\nhost = \"127.0.0.1\"\nport = {}\nwait_s = 30\n\
             [[pull.devices]]\nstream = \"{STREAM}\"\ndevice = \"garage-pi\"\ncamera = \"cam\"\n",
            broker.port
        ),
    )?;
    // The alarm 5 s after the camera started: its window [2 s, 8 s] is only on the device.
    let alarm_at = started + 5_000;
    let event = local.dir.path().join("alarm.json");
    std::fs::write(&event, alarm_event("Gate", STREAM, alarm_at).to_string())?;
    let (out, ok) = archiver(&archiver_cfg, &event).await?;
    assert!(ok, "{out:?}");
    let o = &out[0];
    assert_eq!(o["result"], "stored", "{o}");
    assert_eq!(o["pull"]["result"], "sent", "{o}");
    assert!(o["pull"]["fragments"].as_u64().unwrap() >= 6, "{o}");
    let key = o["key"].as_str().unwrap().to_string();
    let clip = local.dir.path().join("s3/clips").join(&key);
    let streams = ffprobe_streams(&clip)?;
    let video = streams
        .iter()
        .find(|s| s.kind == "video")
        .context("video")?;
    assert!(
        (video.duration - 6.0).abs() <= 1.5,
        "a 6 s window within a fragment: {streams:?}"
    );
    // Only the window was uploaded (and what overlapped its edges).
    let uploaded = list_all_fragments(&local.archived(), STREAM).await?;
    assert!(uploaded.len() <= 9, "{} fragments uploaded", uploaded.len());

    // The same event again: already stored, nothing asked of the device.
    let (out, ok) = archiver(&archiver_cfg, &event).await?;
    assert!(ok, "{out:?}");
    assert_eq!(out[0]["result"], "duplicate", "{:?}", out[0]);
    assert!(out[0]["pull"].is_null(), "{:?}", out[0]);

    // Without [[pull.devices]], the stream's tags say who records it: the agent set them
    // when it created the stream.
    let tags = local
        .control()
        .list_tags_for_stream()
        .stream_name(STREAM)
        .send()
        .await?
        .tags
        .unwrap_or_default();
    assert_eq!(
        tags.get("kvs-edge:device").map(String::as_str),
        Some("garage-pi"),
        "{tags:?}"
    );
    assert_eq!(
        tags.get("kvs-edge:camera").map(String::as_str),
        Some("cam"),
        "{tags:?}"
    );
    let archiver_cfg = write_archiver_config(
        local.dir.path(),
        "archiver-tags.toml",
        &local.url(),
        &local.url(),
        &format!(
            "[clip]\npre_roll_s = 3\npost_roll_s = 3\ningest_wait_s = 10\n\
             [pull]\nhost = \"127.0.0.1\"\nport = {}\nwait_s = 30\n",
            broker.port
        ),
    )?;

    // Another alarm, delivered twice at once (two consumers): both ask with the same id, the
    // device sends the window once, and one clip is stored under the one key.
    let event = local.dir.path().join("alarm-twice.json");
    std::fs::write(
        &event,
        alarm_event("Gate twice", STREAM, started + 9_000).to_string(),
    )?;
    let (a, b) = tokio::join!(
        archiver(&archiver_cfg, &event),
        archiver(&archiver_cfg, &event)
    );
    let (a, b) = (a?.0, b?.0);
    assert_eq!(a[0]["key"], b[0]["key"]);
    for o in [&a[0], &b[0]] {
        assert!(
            ["stored", "duplicate"].contains(&o["result"].as_str().unwrap_or("")),
            "{o}"
        );
    }
    assert!(
        [&a[0], &b[0]]
            .iter()
            .any(|o| o["pull"]["device"] == "garage-pi"),
        "the device found by the stream's tags was asked: {a:?} {b:?}"
    );
    let dir = std::path::Path::new(a[0]["key"].as_str().unwrap())
        .parent()
        .map(|p| local.dir.path().join("s3/clips").join(p))
        .context("a key with a directory")?;
    let twice: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("Gate-twice-") && n.ends_with(".mp4"))
        .collect();
    assert_eq!(twice.len(), 1, "one clip: {twice:?}");
    let listed = list_all_fragments(&local.archived(), STREAM).await?;
    let mut stamps: Vec<i128> = listed
        .iter()
        .filter_map(|f| f.producer_timestamp)
        .map(|t| t.as_nanos())
        .collect();
    let all = stamps.len();
    stamps.sort_unstable();
    stamps.dedup();
    assert_eq!(stamps.len(), all, "no fragment was sent twice");

    // The device gone: a window it alone had (recorded well after the last one asked
    // for, never sent) is a recorded outcome at once.
    eventually(BOUND, "recording past 22 s", || {
        let journal = cam.journal.lock().unwrap();
        journal.pending().any(|e| e.timecode_ms >= started + 22_000)
    })
    .await?;
    agent.stop().await?;
    let event = local.dir.path().join("alarm-2.json");
    std::fs::write(
        &event,
        alarm_event("Gate again", STREAM, started + 18_000).to_string(),
    )?;
    let asked = std::time::Instant::now();
    let (out, _) = archiver(&archiver_cfg, &event).await?;
    assert_eq!(out[0]["pull"]["result"], "device_offline", "{:?}", out[0]);
    assert_eq!(out[0]["pull"]["available"], "stopped", "{:?}", out[0]);
    assert!(
        asked.elapsed() < Duration::from_secs(40),
        "no waiting for an absent device"
    );
    Ok(())
}

/// From a Lambda function there is no certificate for MQTT: `[pull] iot_endpoint` asks over
/// AWS IoT's data plane (HTTPS, SigV4: GetRetainedMessage for `available`, Publish for the
/// request; kvs-local bridges both to mosquitto) and watches the window arrive in
/// ListFragments. The device is found by the stream's tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_pulls_its_window_over_aws_iot_https() -> anyhow::Result<()> {
    init_logs();
    let MqttRig {
        broker: _broker,
        local,
        agent,
        watch: _watch,
        cfg: _,
    } = MqttRig::start(STREAM, "upload_policy = { mode = \"on_demand\" }").await?;
    let cam = agent.camera("cam").expect("cam runs");
    let started = now_ms();
    eventually(BOUND, "eight fragments recorded", || {
        cam.journal.lock().unwrap().pending().count() >= 8
    })
    .await?;
    let archiver_cfg = write_archiver_config(
        local.dir.path(),
        "archiver-https.toml",
        &local.url(),
        &local.url(),
        &format!(
            "[clip]\npre_roll_s = 2\npost_roll_s = 2\ningest_wait_s = 10\n\
             [pull]\niot_endpoint = \"{}\"\nwait_s = 30\n",
            local.url()
        ),
    )?;
    let event = local.dir.path().join("alarm-https.json");
    std::fs::write(
        &event,
        alarm_event("Gate", STREAM, started + 4_000).to_string(),
    )?;
    let (out, ok) = archiver(&archiver_cfg, &event).await?;
    assert!(ok, "{out:?}");
    let o = &out[0];
    assert_eq!(o["result"], "stored", "{o}");
    assert_eq!(o["pull"]["result"], "sent", "{o}");
    assert_eq!(o["pull"]["seen_in"], "ListFragments", "{o}");
    assert_eq!(o["pull"]["device"], "garage-pi", "{o}");
    let uploaded = list_all_fragments(&local.archived(), STREAM).await?;
    assert!(
        (3..=7).contains(&uploaded.len()),
        "the 4 s window and its edges: {} fragments",
        uploaded.len()
    );

    // The device gone: its retained `available` says so, over HTTPS too.
    agent.stop().await?;
    let event = local.dir.path().join("alarm-https-2.json");
    std::fs::write(
        &event,
        alarm_event("Gate later", STREAM, started + 7_000).to_string(),
    )?;
    let (out, _) = archiver(&archiver_cfg, &event).await?;
    assert_eq!(out[0]["pull"]["result"], "device_offline", "{:?}", out[0]);
    Ok(())
}
