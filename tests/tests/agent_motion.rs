//! The local motion trigger against mosquitto and kvs-local: an on-demand camera whose
//! picture moves raises a `motion` alarm by itself (an event on `<base>/events`, like an
//! `alarm/set` command's), and its window is uploaded from the recording; passed-through
//! video (a file: a moving picture for 3 s, then 6 s of black) is judged on its keyframes
//! alone, and the alarm ends once the picture is still; so is an H.265 RTSP camera's; a still
//! picture with a ticking clock raises nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use kvs_edge_tests::*;
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(60);
const BASE: &str = "kvs-edge/garage-pi";
const STREAM: &str = "motion-cam";

/// An MQTT rig whose camera `cam` has `source` and a motion trigger, on demand.
async fn rig(source: &str, motion: &str) -> anyhow::Result<MqttRig> {
    let camera = format!(
        r#"
        [[cameras]]
        name = "cam"
        stream_name = "{STREAM}"
        fragment_duration_ms = 1000
        encoder = {{ bitrate_kbps = 300 }}
        source = {source}
        create_stream = {{ retention_period_hours = 1 }}
        upload_policy = {{ mode = "on_demand" }}
        motion = {motion}
        "#
    );
    MqttRig::with_cameras(&camera).await
}

/// The next alarm event of `kind` on `<base>/events`.
async fn alarm_event(mq: &mut MqttWatch, kind: &str) -> anyhow::Result<Value> {
    let topic = format!("{BASE}/events");
    let (_, payload, _) = mq
        .wait_for(BOUND, |t, p| {
            t == topic && serde_json::from_str::<Value>(p).is_ok_and(|v| v["type"] == kind)
        })
        .await
        .with_context(|| format!("no {kind} alarm event"))?;
    Ok(serde_json::from_str(&payload)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_picture_raises_an_alarm_whose_window_is_uploaded() -> anyhow::Result<()> {
    init_logs();
    let MqttRig {
        local,
        watch: mut mq,
        agent,
        broker: _broker,
        cfg: _,
    } = rig(
        r#"{ type = "test", width = 320, height = 240, fps = 15, pattern = "ball" }"#,
        r#"{ threshold = 0.003, pre_s = 2, post_s = 2, label = "moving" }"#,
    )
    .await?;
    let new = alarm_event(&mut mq, "new").await?;
    assert_eq!(new["label"], "moving", "{new}");
    assert_eq!(new["camera"], "cam", "{new}");
    let id = new["id"].as_str().context("an id")?.to_string();
    assert!(id.starts_with("motion-"), "{new}");
    // On demand: the alarm's window goes up (as an alarm/set's would), and nothing else.
    let events = format!("{BASE}/cam/upload/events");
    mq.wait_for(BOUND, |t, p| {
        t == events
            && serde_json::from_str::<Value>(p)
                .is_ok_and(|v| v["id"] == id.as_str() && v["fragments_sent"].as_u64() > Some(0))
    })
    .await
    .context("the motion alarm's window was not uploaded")?;
    let cam = agent.camera("cam").expect("runs");
    assert_eq!(cam.camera_stats.motion_alarms.load(Ordering::Relaxed), 1);
    let stored = list_all_fragments(&local.archived(), STREAM).await?;
    assert!(!stored.is_empty());
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passed_through_video_is_judged_on_its_keyframes_and_stillness_ends_the_alarm()
-> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    // A keyframe every half second: 3 s of a moving test picture, then 6 s of black.
    let file = dir.path().join("moving-then-black.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=30:duration=3",
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            "color=c=black:size=320x240:rate=30:duration=6",
        ])
        .args([
            "-filter_complex",
            "[0:v][1:v]concat=n=2:v=1[v]",
            "-map",
            "[v]",
        ])
        .args(["-c:v", "libx264", "-g", "15", "-pix_fmt", "yuv420p"])
        .arg(&file)
        .output()
        .context("ffmpeg (scripts/install-deps installs it)")?;
    anyhow::ensure!(
        made.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let MqttRig {
        local,
        watch: mut mq,
        agent,
        broker: _broker,
        cfg: _,
    } = rig(
        &format!(
            r#"{{ type = "file", path = "{}", loop = true, realtime = true }}"#,
            file.display()
        ),
        r#"{ threshold = 0.003, pre_s = 1, post_s = 1, quiet_s = 1 }"#,
    )
    .await?;
    let new = alarm_event(&mut mq, "new").await?;
    assert_eq!(new["label"], "motion", "{new}");
    // The picture stops: the alarm ends (quiet for 1 s, then its 1 s post-roll).
    let end = alarm_event(&mut mq, "end").await?;
    assert_eq!(end["id"], new["id"], "{end}");
    let span = end["end_ms"].as_i64().unwrap() - end["start_ms"].as_i64().unwrap();
    assert!(
        (3_000..8_000).contains(&span),
        "about 3 s of motion with 1 s either side: {end}"
    );
    agent.stop().await?;
    // Only the alarm's window went up, not the black that followed.
    let stored = list_all_fragments(&local.archived(), STREAM).await?;
    let last = stored
        .iter()
        .filter_map(|f| f.producer_timestamp)
        .map(|t| t.as_nanos() / 1_000_000)
        .max()
        .context("fragments in KVS")?;
    assert!(
        last < i128::from(end["end_ms"].as_i64().unwrap()) + 2_000,
        "a fragment after the alarm's window: {last} vs {end}"
    );
    Ok(())
}

/// An H.265 RTSP camera (gst-rtsp-server): the motion branch hangs off the stream the
/// camera announces and decodes its keyframes with an H.265 decoder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h265_rtsp_camera_raises_motion_alarms() -> anyhow::Result<()> {
    init_logs();
    let camera = RtspServer::start(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=20/1 \
         ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=10 bitrate=300 \
         ! rtph265pay name=pay0 pt=96 config-interval=1 )",
        0,
    )?;
    let MqttRig {
        local: _local,
        watch: mut mq,
        agent,
        broker: _broker,
        cfg: _,
    } = rig(
        &format!(
            r#"{{ type = "rtsp", url = "rtsp://127.0.0.1:{}/cam", transport = "tcp", latency_ms = 100 }}"#,
            camera.port
        ),
        r#"{ threshold = 0.003, pre_s = 1, post_s = 2 }"#,
    )
    .await?;
    let new = alarm_event(&mut mq, "new").await?;
    assert_eq!(new["label"], "motion", "{new}");
    let cam = agent.camera("cam").expect("runs");
    assert_eq!(cam.camera_stats.motion_alarms.load(Ordering::Relaxed), 1);
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_still_picture_with_a_ticking_clock_raises_nothing() -> anyhow::Result<()> {
    init_logs();
    let MqttRig {
        local: _local,
        watch: mut mq,
        agent,
        broker: _broker,
        cfg: _,
    } = rig(
        r#"{ type = "test", width = 320, height = 240, fps = 15, pattern = "gradient" }"#,
        "{}",
    )
    .await?;
    let cam = agent.camera("cam").expect("runs");
    // Six seconds of recording: the clock overlay ticks six times. (Not `smpte`: its corner
    // of noise moves.)
    eventually(BOUND, "six fragments recorded", || {
        cam.camera_stats.fragments.load(Ordering::Relaxed) >= 6
    })
    .await?;
    assert_eq!(cam.camera_stats.motion_alarms.load(Ordering::Relaxed), 0);
    let topic = format!("{BASE}/events");
    assert!(
        mq.wait_for(Duration::from_millis(200), |t, _| t == topic)
            .await
            .is_err(),
        "an alarm event for a still picture"
    );
    agent.stop().await
}
