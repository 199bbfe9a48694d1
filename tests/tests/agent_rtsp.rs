//! The agent passing an IP camera's H.264 through without re-encoding: a real RTSP server
//! (gst-rtsp-server) started by the test, the agent's rtsp source, kvs-local. The camera's
//! picture size reaches KVS untouched, no encoder is used, and when the camera goes away and
//! comes back the agent reconnects by itself.

use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_agent::runner;
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use tokio::sync::watch;

const CAMERA: &str = "( videotestsrc is-live=true pattern=smpte ! video/x-raw,width=352,height=288,framerate=25/1 \
    ! x264enc tune=zerolatency key-int-max=25 bitrate=400 ! video/x-h264,profile=baseline \
    ! rtph264pay name=pay0 pt=96 config-interval=1 )";
const BOUND: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_h264_is_passed_through_and_reconnects() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let camera = RtspServer::start(CAMERA, 0)?;
    let port = camera.port;
    let text = format!(
        r#"
        state_dir = "{}"
        [aws]
        region = "us-east-1"
        endpoint_url = "{}"
        [credentials]
        kind = "static"
        access_key_id = "{DEFAULT_ACCESS_KEY}"
        secret_access_key = "{DEFAULT_SECRET_KEY}"
        [[cameras]]
        name = "ipcam"
        stream_name = "ipcam"
        fragment_duration_ms = 1000
        stall_timeout_secs = 3
        source = {{ type = "rtsp", url = "{}", transport = "tcp", latency_ms = 100 }}
        create_stream = {{ retention_period_hours = 1 }}
        "#,
        local.dir.path().join("agent-state").display(),
        local.url(),
        camera.url()
    );
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(
        AgentConfig::from_toml("rtsp.toml", &text)?,
        shutdown.clone(),
    )
    .await?;
    let cam = running.cameras()[0].clone();
    let up = cam.upload_stats.clone();
    let persisted =
        |s: &kvs_edge_agent::uploader::UploadStats| s.fragments_persisted.load(Ordering::Relaxed);
    tokio::time::timeout(BOUND, up.wait_until(|s| persisted(s) >= 3)).await?;
    assert_eq!(*cam.camera_stats.encoder.lock().await, "passthrough");

    // The camera goes away and comes back on the same address.
    drop(camera);
    let p = persisted(&up);
    let camera = tokio::task::spawn_blocking(move || RtspServer::start(CAMERA, port)).await??;
    tokio::time::timeout(BOUND, up.wait_until(|s| persisted(s) >= p + 3)).await?;
    assert!(
        cam.camera_stats.restarts.load(Ordering::Relaxed) >= 1,
        "the source was restarted"
    );

    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    drop(camera);
    let made = cam.camera_stats.fragments.load(Ordering::Relaxed);
    assert_eq!(persisted(&up), made, "every fragment made was PERSISTED");

    // The stored video is the camera's own: 352x288 baseline H.264, as sent.
    let listed = local
        .archived()
        .list_fragments()
        .stream_name("ipcam")
        .max_results(1000)
        .send()
        .await?;
    let numbers: Vec<String> = listed
        .fragments
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.fragment_number)
        .collect();
    assert_eq!(numbers.len() as u64, made);
    let media = local
        .archived()
        .get_media_for_fragment_list()
        .stream_name("ipcam")
        .fragments(&numbers[0])
        .send()
        .await?;
    let mkv = media.payload.collect().await?.into_bytes();
    let path = local.dir.path().join("ipcam.mkv");
    std::fs::write(&path, &mkv)?;
    let (codec, w, h, _, _) = ffprobe(&path)?;
    assert_eq!((codec.as_str(), w, h), ("h264", 352, 288));
    let info = mkvinfo(&path)?;
    assert!(info.contains("H.264 profile: Baseline"), "{info}");
    Ok(())
}
