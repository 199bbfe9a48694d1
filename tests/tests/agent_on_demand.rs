//! A camera in `on_demand` upload mode against mosquitto and kvs-local: it records into its
//! journal and sends nothing until a window is asked for; an `upload/set` request sends
//! exactly the recorded fragments that overlap the window (older ones, in a session of their
//! own) with `new` and `end` events on `upload/events`; an alarm's window is uploaded from
//! the recording, its pre-roll included; bad requests are refused on `upload/rejected`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use kvs_edge_agent::metrics::CameraMetrics;
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(60);
const BASE: &str = "kvs-edge/garage-pi";
const STREAM: &str = "on-demand-cam";

/// The journal's unsent fragments: (timecode, duration).
fn recorded(cam: &CameraMetrics) -> Vec<(i64, i64)> {
    let journal = cam.journal.lock().unwrap();
    journal
        .pending()
        .map(|e| (e.timecode_ms, e.duration_ms))
        .collect()
}

/// The producer timestamps KVS holds for the stream, in ms. (They come as JSON epoch
/// seconds, a double: rounded, not truncated, `…362.320` is 362320 ms, not 362319.)
async fn in_kvs(local: &Local) -> anyhow::Result<Vec<i64>> {
    Ok(list_all_fragments(&local.archived(), STREAM)
        .await?
        .iter()
        .filter_map(|f| f.producer_timestamp)
        .map(|t| ((t.as_nanos() + 500_000).div_euclid(1_000_000)) as i64)
        .collect())
}

/// (producer timestamp ms, arrival ms, bytes) of every fragment KVS holds of `STREAM`, in
/// arrival order (kvs-local's server timestamps are arrival times).
async fn arrivals(local: &Local) -> anyhow::Result<Vec<(i64, i64, i64)>> {
    let mut out: Vec<(i64, i64, i64)> = list_all_fragments(&local.archived(), STREAM)
        .await?
        .iter()
        .filter_map(|f| {
            let tc = (f.producer_timestamp?.as_nanos() + 500_000).div_euclid(1_000_000) as i64;
            let at = f.server_timestamp?.as_nanos().div_euclid(1_000_000) as i64;
            Some((tc, at, f.fragment_size_in_bytes))
        })
        .collect();
    out.sort_by_key(|(_, at, _)| *at);
    Ok(out)
}

/// No second of `arrivals` carries more than `cap` bytes and the one fragment the cap lets
/// start.
fn assert_under_cap(arrivals: &[&(i64, i64, i64)], cap: i64) {
    let largest = arrivals.iter().map(|(_, _, b)| *b).max().unwrap_or(0);
    for (_, from, _) in arrivals {
        let in_a_second: i64 = arrivals
            .iter()
            .filter(|(_, at, _)| (*from..from + 1000).contains(at))
            .map(|(_, _, b)| b)
            .sum();
        assert!(
            in_a_second <= cap + largest,
            "{in_a_second} bytes within a second from {from}: {arrivals:?}"
        );
    }
}

/// A `[[cameras]]` table: test pattern `(width, height, fps)` in 1 s fragments to `STREAM`,
/// with `upload_policy` (a TOML inline table).
fn test_camera(name: &str, (width, height, fps): (u32, u32, u32), upload_policy: &str) -> String {
    format!(
        r#"
        [[cameras]]
        name = "{name}"
        stream_name = "{STREAM}"
        fragment_duration_ms = 1000
        encoder = {{ bitrate_kbps = 500 }}
        source = {{ type = "test", width = {width}, height = {height}, fps = {fps} }}
        create_stream = {{ retention_period_hours = 1 }}
        upload_policy = {upload_policy}
        "#
    )
}

/// The next event on the camera's `upload/events` for window `id` of type `kind`.
async fn event(mq: &mut MqttWatch, id: &str, kind: &str) -> anyhow::Result<Value> {
    let topic = format!("{BASE}/cam/upload/events");
    let (_, payload, _) = mq
        .wait_for(BOUND, |t, p| {
            t == topic
                && serde_json::from_str::<Value>(p)
                    .is_ok_and(|v| v["id"] == id && v["type"] == kind)
        })
        .await
        .with_context(|| format!("no {kind} event for {id}"))?;
    Ok(serde_json::from_str(&payload)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_records_and_sends_only_the_windows_asked_for() -> anyhow::Result<()> {
    init_logs();
    let rig = MqttRig::start(
        STREAM,
        "upload_policy = { mode = \"on_demand\", delete_after_upload = false }",
    )
    .await?;
    let MqttRig {
        local,
        watch: mut mq,
        agent,
        broker: _broker,
        cfg: file,
    } = rig;
    let cam = agent.camera("cam").expect("cam runs");

    // Recording, not uploading.
    eventually(BOUND, "five fragments recorded", || {
        recorded(&cam).len() >= 5
    })
    .await?;
    assert_eq!(cam.upload_stats.fragments_sent.load(Ordering::Relaxed), 0);
    let fragments = recorded(&cam);
    // Its status says it records (a continuous camera this far behind would be "poor").
    let status = format!("{BASE}/cam/status");
    mq.wait_for(BOUND, |t, p| {
        t == status
            && serde_json::from_str::<Value>(p).is_ok_and(|v| {
                v["state"] == "online" && v["quality"] == "good" && v["upload"] == "on_demand"
            })
    })
    .await
    .context("no on-demand online status")?;

    // A window over the second and third fragments: exactly those go, in a session of their
    // own, though newer ones were recorded since.
    let (start, end) = (fragments[1].0 + 1, fragments[2].0 + 1);
    let overlapping: Vec<i64> = fragments
        .iter()
        .filter(|(tc, d)| *tc < end && tc + d > start)
        .map(|(tc, _)| *tc)
        .collect();
    assert!(overlapping.len() >= 2, "{overlapping:?}");
    let set = format!("{BASE}/cam/upload/set");
    let start_text = chrono::DateTime::from_timestamp_millis(start)
        .expect("a time")
        .to_rfc3339();
    mq.publish(
        &set,
        json!({"id": "w1", "start": start_text, "end": end}).to_string(),
        false,
    )
    .await?;
    let new = event(&mut mq, "w1", "new").await?;
    assert_eq!(new["fragments_available"], overlapping.len());
    assert_eq!(new["missing"], json!([]), "{new}");
    let done = event(&mut mq, "w1", "end").await?;
    assert_eq!(done["fragments_sent"], overlapping.len(), "{done}");
    assert!(done["bytes_sent"].as_u64().unwrap() > 0);
    assert_eq!(
        in_kvs(&local).await?,
        overlapping,
        "only the window is in KVS"
    );
    // delete_after_upload = false: what was sent stays on the device, not pending again.
    let kept: Vec<i64> = cam
        .journal
        .lock()
        .unwrap()
        .kept()
        .map(|e| e.timecode_ms)
        .collect();
    assert_eq!(kept, overlapping, "kept for local playback");
    assert!(
        recorded(&cam)
            .iter()
            .all(|(tc, _)| !overlapping.contains(tc))
    );

    // A window before anything was recorded: nothing to send, said at once.
    let early = fragments[0].0 - 60_000;
    mq.publish(
        &set,
        json!({"id": "w0", "start": early, "end": early + 10_000}).to_string(),
        false,
    )
    .await?;
    let new = event(&mut mq, "w0", "new").await?;
    assert_eq!(new["missing"], json!([[early, early + 10_000]]), "{new}");
    let done = event(&mut mq, "w0", "end").await?;
    assert_eq!(done["fragments_sent"], 0);

    // Refused, with the reason: a window ending before it starts, a time in seconds.
    for (bad, why) in [
        (
            json!({"id": "b1", "start": end, "end": start}),
            "after start",
        ),
        (
            json!({"id": "b2", "start": start / 1000, "end": end}),
            "milliseconds",
        ),
        (json!({"id": "b/3", "start": start, "end": end}), "id"),
    ] {
        mq.publish(&set, bad.to_string(), false).await?;
        let r = mq
            .json_on(BOUND, &format!("{BASE}/cam/upload/rejected"))
            .await?;
        assert!(r["reason"].as_str().unwrap().contains(why), "{bad}: {r}");
    }

    // An alarm on an on-demand camera uploads its window from the recording: the pre-roll
    // was recorded before anyone asked.
    let alarm_at = kvs_edge_agent::timeline::WallMs::now().0;
    mq.publish(
        &format!("{BASE}/cam/alarm/set"),
        json!({"id": "door-1", "pre_s": 3, "post_s": 1}).to_string(),
        false,
    )
    .await?;
    event(&mut mq, "door-1", "new").await?;
    let done = event(&mut mq, "door-1", "end").await?;
    assert!(done["fragments_sent"].as_u64().unwrap() >= 2, "{done}");
    let stored = in_kvs(&local).await?;
    assert!(
        stored.iter().any(|tc| *tc < alarm_at - 1000),
        "pre-roll from the recording: {stored:?} (alarm at {alarm_at})"
    );
    assert_eq!(
        cam.upload_stats.fragments_persisted.load(Ordering::Relaxed) as usize,
        stored.len(),
        "nothing but the windows was sent"
    );

    // Switched to continuous: new video goes as it is recorded, but what was recorded on
    // demand stays on the device (it was never promised to KVS).
    let switched_at = kvs_edge_agent::timeline::WallMs::now().0;
    let switch = json!({"version": 1, "token": "c1", "cameras": {"cam": {"upload_policy": {"mode": "continuous"}}}});
    let accepted = mq
        .ask(
            &format!("{BASE}/config/set"),
            &switch,
            &format!("{BASE}/config/accepted"),
            BOUND,
        )
        .await?;
    assert_eq!(accepted["applied"]["restart"], json!(["cam"]), "{accepted}");
    let cam = agent.camera("cam").expect("restarted");
    let before = stored.len() as u64; // the camera's counters outlive its restarts
    eventually(BOUND, "a continuous camera uploads", || {
        cam.upload_stats.fragments_persisted.load(Ordering::Relaxed) >= before + 3
    })
    .await?;
    let after = in_kvs(&local).await?;
    assert!(after.len() >= stored.len() + 3, "{after:?}");
    let new: Vec<i64> = after
        .iter()
        .filter(|tc| !stored.contains(tc))
        .copied()
        .collect();
    assert!(
        new.iter().all(|tc| *tc >= switched_at - 1500),
        "recorded on demand before the switch, never asked for, yet uploaded: {new:?} (switched at {switched_at})"
    );
    assert!(!after.contains(&fragments[0].0));
    agent.stop().await?;

    // Started again: the copies kept on the device are still there (from the release marks).
    let agent = InProcessAgent::start(file).await?;
    let cam = agent.camera("cam").expect("cam runs");
    let again: Vec<i64> = cam
        .journal
        .lock()
        .unwrap()
        .kept()
        .map(|e| e.timecode_ms)
        .collect();
    assert!(
        overlapping.iter().all(|tc| again.contains(tc)),
        "kept across a restart: {again:?} lacks some of {overlapping:?}"
    );
    agent.stop().await
}

/// A continuous camera holding older video recorded on demand: a window asking for it shares
/// the connection with live video in turns. The window goes under `window_max_bytes_per_sec`
/// (20 kB/s: several seconds per 60 kB fragment), live video waits at most
/// `live_max_wait_s` (2 s) behind it and then goes between the window's fragments (kvs-local's
/// server timestamps are arrival times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_video_takes_turns_with_a_window_of_older_video() -> anyhow::Result<()> {
    init_logs();
    // Snow at 500 kbit/s: every 1 s fragment is about 60 kB.
    let camera = |policy: &str| {
        format!(
            r#"
            [[cameras]]
            name = "cam"
            stream_name = "{STREAM}"
            fragment_duration_ms = 1000
            encoder = {{ bitrate_kbps = 500 }}
            source = {{ type = "test", width = 320, height = 240, fps = 20, pattern = "snow" }}
            create_stream = {{ retention_period_hours = 1 }}
            upload_policy = {policy}
            "#
        )
    };
    let rig = MqttRig::with_cameras(&camera(r#"{ mode = "on_demand" }"#)).await?;
    let MqttRig {
        local,
        watch: mut mq,
        agent,
        broker: _broker,
        cfg: _,
    } = rig;
    let cam = agent.camera("cam").expect("cam runs");
    eventually(BOUND, "six fragments recorded", || {
        recorded(&cam).len() >= 6
    })
    .await?;

    // Now continuous, with the older video still on the device.
    let policy =
        json!({"mode": "continuous", "window_max_bytes_per_sec": 20000, "live_max_wait_s": 2});
    let switch =
        json!({"version": 1, "token": "c1", "cameras": {"cam": {"upload_policy": policy}}});
    mq.ask(
        &format!("{BASE}/config/set"),
        &switch,
        &format!("{BASE}/config/accepted"),
        BOUND,
    )
    .await?;
    let cam = agent.camera("cam").expect("restarted");
    let deferred: Vec<i64> = {
        let journal = cam.journal.lock().unwrap();
        journal
            .pending()
            .filter(|e| e.deferred)
            .map(|e| e.timecode_ms)
            .collect()
    };
    assert!(deferred.len() >= 6, "{deferred:?}");
    let start = deferred[0];
    let end = *deferred.last().unwrap() + 1;
    mq.publish(
        &format!("{BASE}/cam/upload/set"),
        json!({"id": "older", "start": start, "end": end}).to_string(),
        false,
    )
    .await?;
    let new = event(&mut mq, "older", "new").await?;
    assert_eq!(new["fragments_available"], deferred.len(), "{new}");
    let (_, payload, _) = mq
        .wait_for(Duration::from_secs(120), |t, p| {
            t == format!("{BASE}/cam/upload/events")
                && serde_json::from_str::<Value>(p)
                    .is_ok_and(|v| v["id"] == "older" && v["type"] == "end")
        })
        .await
        .context("the window never ended")?;
    let done: Value = serde_json::from_str(&payload)?;
    assert_eq!(done["fragments_sent"], deferred.len(), "{done}");
    agent.stop().await?;

    let arrivals = arrivals(&local).await?;
    let window: Vec<&(i64, i64, i64)> = arrivals
        .iter()
        .filter(|(tc, _, _)| deferred.contains(tc))
        .collect();
    assert_eq!(window.len(), deferred.len(), "the whole window reached KVS");
    let (first, last) = (window[0].1, window[window.len() - 1].1);
    let live_between: Vec<&(i64, i64, i64)> = arrivals
        .iter()
        .filter(|(tc, at, _)| !deferred.contains(tc) && (first..last).contains(at))
        .collect();
    assert!(
        live_between.len() >= 3,
        "live video went between the window's fragments ({first}..{last}): {arrivals:?}"
    );
    for (tc, at, _) in &live_between {
        // It ended at tc + 1 s; then waited at most 2 s (plus a loaded machine's slack).
        let lag = at - (tc + 1000);
        assert!(
            lag <= 2000 + 2500,
            "live fragment {tc} waited {lag} ms: {arrivals:?}"
        );
    }
    // The window under its own cap.
    assert_under_cap(&window, 20_000);
    Ok(())
}

/// A scheduled camera (windows every 6 s, open 2 s, a 20 kB/s cap): KVS receives its video
/// only while a window is open (kvs-local's server timestamps are arrival times), and never
/// faster than the cap (plus the one fragment the cap lets start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_uploads_only_in_windows_and_under_the_cap() -> anyhow::Result<()> {
    init_logs();
    let local = Local::start().await?;
    let state = local.dir.path().join("state");
    let cameras = test_camera(
        "sched",
        (160, 120, 20),
        r#"{ mode = "scheduled", schedule = "*/6 * * * * ?", duration_s = 2, max_bytes_per_sec = 20000 }"#,
    );
    let cfg = AgentConfig::from_toml(
        "scheduled.toml",
        &agent_toml(&local.url(), &cameras, &state),
    )?;
    let agent = InProcessAgent::start(cfg).await?;
    let cam = agent.camera("sched").expect("runs");
    // Three windows' worth.
    eventually(BOUND, "six fragments in KVS", || {
        cam.upload_stats.fragments_persisted.load(Ordering::Relaxed) >= 6
    })
    .await?;
    agent.stop().await?;

    let arrivals = arrivals(&local).await?;
    assert!(arrivals.len() >= 6, "{arrivals:?}");
    for (_, at, _) in &arrivals {
        // Windows open at every sixth second (UTC) for 2 s; a fragment sent just before a
        // window closes arrives a moment later.
        assert!(
            at.rem_euclid(6000) < 2500,
            "arrived at {at} ({} ms into a 6 s period)",
            at.rem_euclid(6000)
        );
    }
    assert_under_cap(&arrivals.iter().collect::<Vec<_>>(), 20_000);
    Ok(())
}

/// A recorder schedule (windows every 6 s, open 2 s) on a continuous camera: only the
/// fragments that start in a window are recorded, so only they reach KVS; the rest are
/// counted as not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_records_only_in_its_recording_windows() -> anyhow::Result<()> {
    init_logs();
    let local = Local::start().await?;
    let state = local.dir.path().join("state");
    let cameras = format!(
        "{}record_schedule = {{ schedule = \"*/6 * * * * ?\", duration_s = 2 }}\n",
        test_camera("rec", (160, 120, 20), r#"{ mode = "continuous" }"#)
    );
    let cfg = AgentConfig::from_toml("record.toml", &agent_toml(&local.url(), &cameras, &state))?;
    let agent = InProcessAgent::start(cfg).await?;
    let cam = agent.camera("rec").expect("runs");
    eventually(BOUND, "four fragments recorded and four not", || {
        cam.upload_stats.fragments_persisted.load(Ordering::Relaxed) >= 4
            && cam
                .camera_stats
                .fragments_not_recorded
                .load(Ordering::Relaxed)
                >= 4
    })
    .await?;
    agent.stop().await?;
    let stored = in_kvs(&local).await?;
    for tc in &stored {
        assert!(
            tc.rem_euclid(6000) < 2000,
            "recorded at {tc}, {} ms into a 6 s period: {stored:?}",
            tc.rem_euclid(6000)
        );
    }
    Ok(())
}

/// Retention while only recording (on demand, nothing uploaded): a 1 MB journal keeps the
/// newest video under `delete_oldest`, the oldest under `deny_new`, never more than 1 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_only_retention_follows_on_full() -> anyhow::Result<()> {
    init_logs();
    for on_full in ["delete_oldest", "deny_new"] {
        let local = Local::start().await?;
        let state = local.dir.path().join("state");
        // Snow at 2 Mbit/s: about 250 kB a fragment, four to a megabyte.
        let cameras = format!(
            r#"
            [[cameras]]
            name = "cam"
            stream_name = "{STREAM}"
            fragment_duration_ms = 1000
            encoder = {{ bitrate_kbps = 2000 }}
            source = {{ type = "test", width = 320, height = 240, fps = 20, pattern = "snow" }}
            create_stream = {{ retention_period_hours = 1 }}
            upload_policy = {{ mode = "on_demand" }}
            [journal]
            max_size_mb = 1
            on_full = "{on_full}"
            "#
        );
        let cfg = AgentConfig::from_toml(
            "retention.toml",
            &agent_toml(&local.url(), &cameras, &state),
        )?;
        let agent = InProcessAgent::start(cfg).await?;
        let cam = agent.camera("cam").expect("runs");
        tokio::time::timeout(BOUND, async {
            while cam.camera_stats.fragments.load(Ordering::Relaxed) < 10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .context("ten fragments")?;
        let first = recorded(&cam);
        let (bytes, stats) = {
            let j = cam.journal.lock().unwrap();
            (j.pending_bytes(), j.stats())
        };
        agent.stop().await?;
        assert!(bytes <= 1024 * 1024, "{on_full}: {bytes} bytes kept");
        assert_eq!(
            cam.upload_stats.fragments_sent.load(Ordering::Relaxed),
            0,
            "{on_full}"
        );
        let made = cam.camera_stats.fragments.load(Ordering::Relaxed);
        assert!(
            (first.len() as u64) < made,
            "{on_full}: {} of {made} kept",
            first.len()
        );
        match on_full {
            "delete_oldest" => assert!(stats.dropped_oldest > 0, "{on_full}: {stats:?}"),
            _ => assert!(
                cam.camera_stats.fragments_denied.load(Ordering::Relaxed) > 0,
                "{on_full}: the newest refused"
            ),
        }
    }
    Ok(())
}

/// `kvs-edge-agent --export`: the recording, sent or not, as a Matroska file any player
/// opens, read while the agent runs (ffprobe checks it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_exports_for_local_playback_while_the_agent_runs() -> anyhow::Result<()> {
    init_logs();
    let local = Local::start().await?;
    let state = local.dir.path().join("state");
    let cameras = test_camera("yard", (320, 240, 25), r#"{ mode = "on_demand" }"#);
    let text = agent_toml(&local.url(), &cameras, &state);
    let path = local.dir.path().join("export.toml");
    std::fs::write(&path, &text)?;
    let agent = InProcessAgent::start(AgentConfig::from_toml("export.toml", &text)?).await?;
    let cam = agent.camera("yard").expect("runs");
    eventually(BOUND, "six fragments recorded", || {
        recorded(&cam).len() >= 6
    })
    .await?;
    let fragments = recorded(&cam);
    let (start, end) = (fragments[1].0, fragments[4].0);
    let out = local.dir.path().join("yard.mkv");
    let run = std::process::Command::new(agent_binary()?)
        .arg("--config")
        .arg(&path)
        .args(["--export", "yard", "--start", &start.to_string(), "--end"])
        .arg(
            chrono::DateTime::from_timestamp_millis(end)
                .expect("a time")
                .to_rfc3339(),
        )
        .arg("--output")
        .arg(&out)
        .output()?;
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(said.contains("yard.mkv\t3 fragments"), "{said}");
    let (codec, width, height, _, frames) = ffprobe(&out)?;
    assert_eq!((codec.as_str(), width, height), ("h264", 320, 240));
    assert!(
        (60..=90).contains(&frames),
        "three 1 s fragments at 25 fps: {frames} frames"
    );
    // Nothing of a window: said, and no file.
    let none = std::process::Command::new(agent_binary()?)
        .arg("--config")
        .arg(&path)
        .args([
            "--export",
            "yard",
            "--start",
            "1000000000000",
            "--end",
            "1000000060000",
            "--output",
        ])
        .arg(local.dir.path().join("none.mkv"))
        .output()?;
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("holds nothing of that window"));
    agent.stop().await
}
