//! Cameras as they are: H.265 from an IP camera (gst-rtsp-server with x265) and from a
//! recording is passed through as `V_MPEGH/ISO/HEVC` and comes back from GetClip as an `hvc1`
//! MP4 of the camera's picture size; snapshots decode H.265 keyframes; a camera that sends
//! video KVS cannot play (MJPEG) is refused with one clear error naming the codec, marked
//! failed in its status and metrics, and retried slowly, while the other camera streams on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_agent::camera::CameraCommand;
use kvs_edge_agent::codec::VideoCodec;
use kvs_edge_tests::*;
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(60);

const H265_CAMERA: &str = "( videotestsrc is-live=true pattern=smpte ! video/x-raw,format=I420,width=352,height=288,framerate=25/1 \
    ! x265enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=300 \
    ! rtph265pay name=pay0 pt=96 config-interval=1 )";

const MJPEG_CAMERA: &str = "( videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=10/1 \
    ! jpegenc ! rtpjpegpay name=pay0 )";

fn rtsp_camera(name: &str, url: &str) -> String {
    format!(
        "[[cameras]]\nname = \"{name}\"\nstream_name = \"{name}\"\nfragment_duration_ms = 1000\n\
         stall_timeout_secs = 5\n\
         source = {{ type = \"rtsp\", url = \"{url}\", transport = \"tcp\", latency_ms = 100 }}\n\
         create_stream = {{ retention_period_hours = 1 }}\n"
    )
}

fn persisted(s: &kvs_edge_agent::uploader::UploadStats) -> u64 {
    s.fragments_persisted.load(Ordering::Relaxed)
}

/// The whole stream through GetClip, into `<dir>/<stream>.mp4`: ffprobe's view of it.
async fn clip_of(local: &Local, stream: &str) -> anyhow::Result<(String, u32, u32, f64, u64)> {
    // (A file read faster than real time runs ahead of the wall clock.)
    let (_, mp4) = get_clip(
        &local.archived(),
        stream,
        now_ms() - 600_000,
        now_ms() + 600_000,
    )
    .await?;
    let path = local.dir.path().join(format!("{stream}.mp4"));
    std::fs::write(&path, mp4)?;
    ffprobe(&path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h265_ip_camera_is_passed_through_clipped_and_snapshotted() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let camera = RtspServer::start(H265_CAMERA, 0)?;
    let (stop, shutdown) = watch::channel(false);
    let running = start_agent(
        &local,
        "h265.toml",
        &rtsp_camera("hevc-cam", &camera.url()),
        &shutdown,
    )
    .await?;
    let cam = running.cameras()[0].clone();
    tokio::time::timeout(BOUND, cam.upload_stats.wait_until(|s| persisted(s) >= 3)).await?;
    assert_eq!(*cam.camera_stats.encoder.lock().await, "passthrough");
    assert_eq!(
        *cam.camera_stats.video.lock().unwrap(),
        Some((VideoCodec::H265, 352, 288)),
        "the track's codec is known, for stats and metrics"
    );
    // A snapshot decodes the latest H.265 keyframe.
    let (tx, rx) = tokio::sync::oneshot::channel();
    assert!(
        running
            .control
            .command("hevc-cam", CameraCommand::Snapshot(tx))
            .await
    );
    let jpeg = tokio::time::timeout(BOUND, rx).await??.expect("a snapshot");
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG");
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    drop(camera);

    // KVS holds V_MPEGH/ISO/HEVC with its HEVCDecoderConfigurationRecord …
    let listed = list_all_fragments(&local.archived(), "hevc-cam").await?;
    let first = listed[0].fragment_number.clone().unwrap();
    let mkv = local.dir.path().join("hevc.mkv");
    std::fs::write(
        &mkv,
        get_media(&local.archived(), "hevc-cam", &[first]).await?,
    )?;
    let info = mkvinfo(&mkv)?;
    assert!(info.contains("V_MPEGH/ISO/HEVC"), "{info}");
    // … and GetClip makes an hvc1 MP4 of the camera's own picture.
    let (codec, w, h, duration, frames) = clip_of(&local, "hevc-cam").await?;
    assert_eq!((codec.as_str(), w, h), ("hevc", 352, 288));
    assert!(
        frames >= 50 && duration >= 2.0,
        "{frames} frames, {duration} s"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h265_recording_is_passed_through() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let file = recorded_file(
        &local.dir.path().join("recorded.mkv"),
        "videotestsrc num-buffers=100 ! video/x-raw,format=I420,width=320,height=240,framerate=25/1 \
         ! x265enc key-int-max=25 speed-preset=ultrafast ! h265parse ! matroskamux",
    )?;
    let cameras = format!(
        "[[cameras]]\nname = \"rec\"\nstream_name = \"rec\"\nfragment_duration_ms = 1000\n\
         source = {{ type = \"file\", path = \"{}\", realtime = false }}\n\
         create_stream = {{ retention_period_hours = 1 }}",
        file.display()
    );
    let (_stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "rec.toml", &cameras, &shutdown).await?;
    let cam = running.cameras()[0].clone();
    // The file ends and the agent delivers it.
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(10))).await?;
    assert_eq!(persisted(&cam.upload_stats), 4, "4 s in 1 s fragments");
    let (codec, w, h, _, frames) = clip_of(&local, "rec").await?;
    assert_eq!((codec.as_str(), w, h, frames), ("hevc", 320, 240, 100));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_codec_is_refused_clearly_and_the_other_camera_streams_on()
-> anyhow::Result<()> {
    init_logs();
    let local = Local::start().await?;
    let mjpeg = RtspServer::start(MJPEG_CAMERA, 0)?;
    let cameras = format!(
        "{}\n[[cameras]]\nname = \"good\"\nstream_name = \"good\"\nfragment_duration_ms = 1000\n\
         encoder = {{ bitrate_kbps = 300 }}\n\
         source = {{ type = \"test\", width = 160, height = 120, fps = 10 }}\n\
         create_stream = {{ retention_period_hours = 1 }}\n",
        rtsp_camera("door", &mjpeg.url())
    );
    let (stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "mixed.toml", &cameras, &shutdown).await?;
    let cams = running.cameras();
    let door = cams.iter().find(|c| c.camera == "door").unwrap().clone();
    let good = cams.iter().find(|c| c.camera == "good").unwrap().clone();
    // The good camera streams while the MJPEG one is refused.
    tokio::time::timeout(BOUND, good.upload_stats.wait_until(|s| persisted(s) >= 3)).await?;
    let failure = tokio::time::timeout(BOUND, async {
        loop {
            if let Some(f) = door.camera_stats.failure.lock().unwrap().clone() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    assert!(
        failure.contains("MJPEG") && failure.contains("H.264 or H.265"),
        "names the codec and what is supported: {failure}"
    );
    assert_eq!(door.camera_stats.fragments.load(Ordering::Relaxed), 0);
    // Metrics say so; the failed camera is retried slowly (not in a tight loop).
    let text = kvs_edge_agent::metrics::render(&running.cameras(), None, None);
    assert!(
        text.contains("kvs_edge_camera_failed{camera=\"door\",stream=\"door\"} 1"),
        "{text}"
    );
    assert!(text.contains("kvs_edge_camera_failed{camera=\"good\",stream=\"good\"} 0"));
    assert!(text.contains("kvs_edge_track_info{camera=\"good\",track=\"video\",codec=\"h264\""));
    assert!(door.camera_stats.restarts.load(Ordering::Relaxed) <= 1);
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(10))).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_pattern_with_a_tone_sends_video_and_aac_audio() -> anyhow::Result<()> {
    init_logs();
    let local = Local::start().await?;
    let cameras = "[[cameras]]\nname = \"tone\"\nstream_name = \"tone\"\nfragment_duration_ms = 1000\n\
         audio = true\nencoder = { bitrate_kbps = 300 }\n\
         source = { type = \"test\", width = 160, height = 120, fps = 10 }\n\
         create_stream = { retention_period_hours = 1 }\n";
    let (stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "tone.toml", cameras, &shutdown).await?;
    let cam = running.cameras()[0].clone();
    tokio::time::timeout(BOUND, cam.upload_stats.wait_until(|s| persisted(s) >= 3)).await?;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(10))).await?;
    assert_eq!(
        *cam.camera_stats.audio.lock().unwrap(),
        Some((kvs_edge_agent::codec::AudioCodec::Aac, 48_000, 1))
    );
    // Every fragment carries both tracks, audio and video of the same seconds.
    let listed = list_all_fragments(&local.archived(), "tone").await?;
    let number = listed[1].fragment_number.clone().unwrap();
    let mkv = local.dir.path().join("tone.mkv");
    std::fs::write(&mkv, get_media(&local.archived(), "tone", &[number]).await?)?;
    let streams = ffprobe_streams(&mkv)?;
    assert_eq!(kinds(&streams), [("video", "h264"), ("audio", "aac")]);
    assert!(
        (streams[0].start - streams[1].start).abs() < 0.1,
        "audio and video start together: {streams:?}"
    );
    // Only what came before the first picture is left out.
    assert!(cam.camera_stats.audio_dropped.load(Ordering::Relaxed) < 5);
    // GetClip plays both: an avc1 track and an mp4a track of the same length.
    let (_, mp4) = get_clip(
        &local.archived(),
        "tone",
        now_ms() - 600_000,
        now_ms() + 600_000,
    )
    .await?;
    let path = local.dir.path().join("tone.mp4");
    std::fs::write(&path, mp4)?;
    let streams = ffprobe_streams(&path)?;
    assert_eq!(kinds(&streams), [("video", "h264"), ("audio", "aac")]);
    assert!(
        (streams[0].start - streams[1].start).abs() < 0.1
            && (streams[0].duration - streams[1].duration).abs() < 0.5,
        "the clip's audio covers its video: {streams:?}"
    );
    assert_eq!(decode_errors(&path)?, "");
    Ok(())
}
