//! Cameras with audio, end to end. Every track layout GetClip plays comes from an IP camera
//! (gst-rtsp-server) through the agent and kvs-local's GetClip: H.264 + AAC, H.264 + G.711
//! µ-law (sent as A-law), H.264 + A-law and H.265 + AAC, each clip checked by ffprobe
//! (streams, audio and video starting within 100 ms, lengths within one fragment) and a
//! full ffmpeg decode; an Opus camera is refused with one clear error while the others
//! stream on. A recording with AAC (the parser library's vogels_330.mkv) goes on through the
//! archiver and kvs-local's MediaConvert: the stored clip, the HLS ladder with its alternate
//! audio rendition and the MP4 all keep the audio.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_tests::*;
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(90);

/// A camera's video: 320x240 at 15 fps, a keyframe a second.
fn video(encoder: &str) -> String {
    let (enc, pay) = match encoder {
        "h265" => (
            "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bitrate=300",
            "rtph265pay",
        ),
        _ => (
            "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bitrate=300",
            "rtph264pay",
        ),
    };
    format!(
        "videotestsrc is-live=true ! video/x-raw,format=I420,width=320,height=240,framerate=15/1 \
         ! {enc} ! {pay} name=pay0 pt=96 config-interval=1"
    )
}

/// A camera's audio, as IP cameras send it.
fn audio(codec: &str) -> &'static str {
    match codec {
        "aac" => {
            "audiotestsrc is-live=true ! audio/x-raw,rate=16000,channels=1 ! voaacenc \
             ! rtpmp4gpay name=pay1 pt=97"
        }
        "pcmu" => {
            "audiotestsrc is-live=true ! audio/x-raw,rate=8000,channels=1 ! mulawenc \
             ! rtppcmupay name=pay1"
        }
        "pcma" => {
            "audiotestsrc is-live=true ! audio/x-raw,rate=8000,channels=1 ! alawenc \
             ! rtppcmapay name=pay1"
        }
        _ => {
            "audiotestsrc is-live=true ! audio/x-raw,rate=48000,channels=1 ! opusenc \
             ! rtpopuspay name=pay1 pt=98"
        }
    }
}

fn rtsp_camera(name: &str, url: &str) -> String {
    format!(
        "[[cameras]]\nname = \"{name}\"\nstream_name = \"{name}\"\nfragment_duration_ms = 1000\n\
         stall_timeout_secs = 10\n\
         source = {{ type = \"rtsp\", url = \"{url}\", transport = \"tcp\", latency_ms = 100 }}\n\
         create_stream = {{ retention_period_hours = 1 }}\n"
    )
}

fn persisted(s: &kvs_edge_agent::uploader::UploadStats) -> u64 {
    s.fragments_persisted.load(Ordering::Relaxed)
}

/// A clip's video and audio start together and last as long, within one `fragment_s`.
fn aligned(path: &Path, fragment_s: f64) -> anyhow::Result<Vec<Stream>> {
    let streams = ffprobe_streams(path)?;
    anyhow::ensure!(streams.len() == 2, "two streams: {streams:?}");
    let (v, a) = (&streams[0], &streams[1]);
    anyhow::ensure!(
        (v.start - a.start).abs() < 0.1,
        "{}: audio and video start within 100 ms: {streams:?}",
        path.display()
    );
    anyhow::ensure!(
        (v.duration - a.duration).abs() < fragment_s,
        "{}: audio and video last as long, within one fragment: {streams:?}",
        path.display()
    );
    Ok(streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_playable_layout_from_ip_cameras_reaches_getclip_and_opus_is_refused()
-> anyhow::Result<()> {
    init_logs();
    let local = Local::start().await?;
    let layouts = [
        ("aac-cam", "h264", "aac", ("h264", "aac")),
        ("pcmu-cam", "h264", "pcmu", ("h264", "pcm_alaw")),
        ("pcma-cam", "h264", "pcma", ("h264", "pcm_alaw")),
        ("hevc-aac-cam", "h265", "aac", ("hevc", "aac")),
        ("opus-cam", "h264", "opus", ("", "")),
    ];
    let mut servers = Vec::new();
    let mut cameras = String::new();
    for (name, v, a, _) in &layouts {
        let server = RtspServer::start(&format!("( {} {} )", video(v), audio(a)), 0)?;
        cameras.push_str(&rtsp_camera(name, &server.url()));
        servers.push(server);
    }
    let (stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "audio.toml", &cameras, &shutdown).await?;
    let cams = running.cameras();
    let cam = |name: &str| cams.iter().find(|c| c.camera == name).unwrap().clone();
    for (name, ..) in &layouts[..4] {
        let c = cam(name);
        tokio::time::timeout(BOUND, c.upload_stats.wait_until(|s| persisted(s) >= 4))
            .await
            .map_err(|_| anyhow::anyhow!("{name} did not stream"))?;
    }
    let opus = cam("opus-cam");
    let failure = tokio::time::timeout(BOUND, async {
        loop {
            if let Some(f) = opus.camera_stats.failure.lock().unwrap().clone() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    assert!(
        failure.contains("Opus") && failure.contains("AAC or G.711"),
        "names the codec and what is supported: {failure}"
    );
    assert_eq!(opus.camera_stats.fragments.load(Ordering::Relaxed), 0);
    // The metrics name each track's codec.
    let text = kvs_edge_agent::metrics::render(&running.cameras(), None, None);
    assert!(
        text.contains("kvs_edge_track_info{camera=\"pcmu-cam\",track=\"audio\",codec=\"alaw\""),
        "{text}"
    );
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(10))).await?;
    for (name, _, _, expected) in &layouts[..4] {
        let (_, mp4) = get_clip(
            &local.archived(),
            name,
            now_ms() - 600_000,
            now_ms() + 600_000,
        )
        .await?;
        let path = local.dir.path().join(format!("{name}.mp4"));
        std::fs::write(&path, mp4)?;
        let streams = aligned(&path, 1.0)?;
        assert_eq!(
            kinds(&streams),
            [("video", expected.0), ("audio", expected.1)],
            "{name}"
        );
        assert!(streams[0].duration >= 3.0, "{name}: {streams:?}");
        assert_eq!(decode_errors(&path)?, "", "{name} decodes cleanly");
    }
    drop(servers);
    Ok(())
}

/// The first fragment's producer time of a stream (ms).
async fn first_fragment_ms(local: &Local, stream: &str) -> anyhow::Result<i64> {
    let listed = list_all_fragments(&local.archived(), stream).await?;
    listed
        .iter()
        .filter_map(|f| f.producer_timestamp.and_then(|t| t.to_millis().ok()))
        .min()
        .ok_or_else(|| anyhow::anyhow!("no fragments in {stream}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_with_aac_is_archived_and_transcoded_with_its_audio() -> anyhow::Result<()> {
    init_logs();
    let events = tempfile::tempdir()?;
    let events_dir = events.path().to_path_buf();
    let local = Local::start_with(|c| {
        c.buckets = vec!["clips".into()];
        c.events_dir = Some(events_dir);
    })
    .await?;
    // 30 s of H.264 + stereo AAC at 48 kHz, a keyframe every ~5 s.
    let fixture = repo_root().join("tests/fixtures/kvs-media/vogels_330.mkv");
    let cameras = format!(
        "[[cameras]]\nname = \"vogels\"\nstream_name = \"vogels\"\nfragment_duration_ms = 2000\n\
         source = {{ type = \"file\", path = \"{}\", realtime = false }}\n\
         create_stream = {{ retention_period_hours = 1 }}",
        fixture.display()
    );
    let (_stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "vogels.toml", &cameras, &shutdown).await?;
    let cam = running.cameras()[0].clone();
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(10))).await?;
    assert_eq!(
        *cam.camera_stats.audio.lock().unwrap(),
        Some((kvs_edge_agent::codec::AudioCodec::Aac, 48_000, 2))
    );
    assert_eq!(cam.camera_stats.audio_dropped.load(Ordering::Relaxed), 0);

    // The whole recording through GetClip: both tracks, as long as the file.
    let (_, mp4) = get_clip(
        &local.archived(),
        "vogels",
        now_ms() - 600_000,
        now_ms() + 600_000,
    )
    .await?;
    let whole = local.dir.path().join("vogels.mp4");
    std::fs::write(&whole, mp4)?;
    let streams = aligned(&whole, 5.0)?;
    assert_eq!(kinds(&streams), [("video", "h264"), ("audio", "aac")]);
    assert!(
        (streams[0].duration - 30.3).abs() < 5.0,
        "the recording's 30.3 s within one fragment: {streams:?}"
    );
    assert_eq!((streams[1].sample_rate, streams[1].channels), (48_000, 2));

    // An alarm 10 s in: the archiver stores its window and MediaConvert transcodes it.
    let start = first_fragment_ms(&local, "vogels").await?;
    let cfg = write_archiver_config(
        local.dir.path(),
        "archiver.toml",
        &local.url(),
        &local.url(),
        &format!(
            "[clip]\npre_roll_s = 8\npost_roll_s = 10\n{}",
            mediaconvert_at(&local.url())
        ),
    )?;
    let event = local.dir.path().join("alarm.json");
    std::fs::write(
        &event,
        alarm_event("birds", "vogels", start + 10_000).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    assert_eq!(out[0]["result"], "stored", "{out:?}");
    let key = out[0]["key"].as_str().unwrap().to_string();
    let job = out[0]["transcode"]["job"]
        .as_str()
        .expect("a job")
        .to_string();
    let s3 = local.dir.path().join("s3/clips");
    let stored = aligned(&s3.join(&key), 5.0)?;
    assert_eq!(kinds(&stored), [("video", "h264"), ("audio", "aac")]);

    let complete = events.path().join(format!("{job}-COMPLETE.json"));
    let error = events.path().join(format!("{job}-ERROR.json"));
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while !complete.exists() {
        assert!(!error.exists(), "{}", std::fs::read_to_string(&error)?);
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stem = key.trim_end_matches(".mp4");
    let out_dir = s3.join(format!("transcoded/{stem}"));
    let name = Path::new(&key).file_stem().unwrap().to_str().unwrap();
    // HLS: the ladder names its audio group, whose rendition is AAC.
    let master = std::fs::read_to_string(out_dir.join(format!("hls/{name}.m3u8")))?;
    assert!(
        master.contains("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"program_audio\"")
            && master.matches("AUDIO=\"program_audio\"").count() == 3,
        "{master}"
    );
    let audio_rendition = ffprobe_streams(&out_dir.join(format!("hls/{name}_audio.m3u8")))?;
    assert_eq!(kinds(&audio_rendition), [("audio", "aac")]);
    let video_rendition = ffprobe_streams(&out_dir.join(format!("hls/{name}_720.m3u8")))?;
    assert_eq!(kinds(&video_rendition), [("video", "h264")]);
    assert!(
        (audio_rendition[0].duration - video_rendition[0].duration).abs() < 5.0,
        "{audio_rendition:?} {video_rendition:?}"
    );
    // The MP4: video and audio together.
    let mp4 = out_dir.join(format!("mp4/{name}.mp4"));
    let streams = aligned(&mp4, 5.0)?;
    assert_eq!(kinds(&streams), [("video", "h264"), ("audio", "aac")]);
    Ok(())
}
