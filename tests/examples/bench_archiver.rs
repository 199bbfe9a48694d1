//! `make bench`: the archiver against an in-process kvs-local (KVS and S3) on loopback.
//! 180 s of 1080p30 H.264 is encoded once and PutMedia'd ten times back to back (30 min of
//! stream, in the past, so everything is ingested). Then the release archiver binary:
//!
//! 1. clips a 30-minute window (GetClip calls joined into one file): wall time and peak RSS
//!    (the target: flat, at most 64 MB), and
//! 2. handles an alarm whose 180 s window is already ingested: the time from "post-roll
//!    ingested" to "clip stored".
//!
//! 3. has kvs-local's MediaConvert transcode that 180 s clip with the default template (HLS
//!    360/540/720, MP4 720p, thumbnails), timed from submission to the COMPLETE event, and
//!    the same renditions by hand with one `gst-launch-1.0` (decode once, `tee`): the floor.
//!
//! Results are printed as Markdown rows for docs/benchmarks.md.
//!
//!     cargo build --release -p kvs-edge-archiver
//!     cargo run --release -p kvs-edge-tests --example bench_archiver

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use kvs_edge_tests::*;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a valid time")
        .to_rfc3339()
}

/// The archiver under GNU time, which must have stored a clip: wall time, standard output
/// and peak RSS (MiB).
fn archiver(config: &std::path::Path, args: &[&str]) -> Result<(Duration, String, f64)> {
    let (took, rss, stdout) = run_archiver_timed(config, args)?;
    ensure!(stdout.contains("\"stored\""), "not stored: {stdout}");
    Ok((took, stdout, rss))
}

#[tokio::main]
async fn main() -> Result<()> {
    let events = tempfile::tempdir()?;
    let events_dir = events.path().to_path_buf();
    let local = Local::start_with(|c| {
        c.buckets = vec!["clips".into()];
        c.events_dir = Some(events_dir.clone());
    })
    .await?;
    create_stream(&local.control(), "bench-cam", 24).await?;
    let started = Instant::now();
    let video =
        tokio::task::spawn_blocking(|| Encoded::gstreamer(5400, 30, 60, 1920, 1080)).await??;
    let bytes: usize = video.frames.iter().map(|(_, f)| f.len()).sum();
    let mbps = bytes as f64 * 8.0 / 180.0 / 1e6;
    eprintln!(
        "encoded 180 s of 1080p30 ({:.1} MB, {mbps:.1} Mbit/s) in {:.0?}",
        bytes as f64 / 1e6,
        started.elapsed()
    );
    let base = now_ms() - 3 * 3600 * 1000;
    let started = Instant::now();
    for i in 0..10 {
        let (body, fragments) = video.upload(base + i * 180_000, 2000)?;
        put_media(
            &local.url(),
            "bench-cam",
            vec![body],
            Duration::from_secs(600),
        )
        .await?;
        eprintln!("uploaded part {}/10 ({} fragments)", i + 1, fragments.len());
    }
    eprintln!("30 min of stream ingested in {:.0?}", started.elapsed());

    let config = write_archiver_config(
        local.dir.path(),
        "archiver.toml",
        &local.url(),
        &local.url(),
        "[clip]\npre_roll_s = 60\npost_roll_s = 120\ningest_wait_s = 5",
    )?;
    let (long, out, rss_long) = archiver(
        &config,
        &[
            "clip",
            "--stream",
            "bench-cam",
            "--start",
            &rfc3339(base),
            "--end",
            &rfc3339(base + 1_800_000),
        ],
    )?;
    eprintln!("{out}");

    // An alarm 60 s into the first part: its window [0, 180 s] is ingested already.
    let alarm_time = chrono::DateTime::from_timestamp_millis(base + 60_000)
        .expect("a valid time")
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string();
    let event = serde_json::json!({
        "version": "0", "id": "bench", "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch", "account": "000000000000", "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1", "resources": ["arn:aws:cloudwatch:us-east-1:000000000000:alarm:bench"],
        "detail": {"alarmName": "bench",
            "state": {"value": "ALARM", "reason": "bench", "timestamp": alarm_time},
            "previousState": {"value": "OK", "reason": "bench",
                              "timestamp": "2026-01-01T00:00:00.000+0000"},
            "configuration": {"metrics": [{"id": "m1", "returnData": true, "metricStat": {
                "period": 60, "stat": "Sum", "metric": {"namespace": "AWS/KinesisVideo",
                "name": "PutMedia.IncomingFrames", "dimensions": {"StreamName": "bench-cam"}}}}]}}
    });
    let event_file = local.dir.path().join("event.json");
    std::fs::write(&event_file, event.to_string())?;
    let (short, out, rss_short) = archiver(
        &config,
        &["handle-event", event_file.to_str().expect("UTF-8 path")],
    )?;
    eprintln!("{out}");
    let key = serde_json::from_str::<serde_json::Value>(out.lines().next().unwrap_or("{}"))?["key"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // 3. Transcoding: the same alarm again with the hand-off on submits the job.
    let transcode_cfg = write_archiver_config(
        local.dir.path(),
        "transcode.toml",
        &local.url(),
        &local.url(),
        &format!(
            "[clip]\npre_roll_s = 60\npost_roll_s = 120\ningest_wait_s = 5\n{}",
            mediaconvert_at(&local.url())
        ),
    )?;
    let started = Instant::now();
    let out = Command::new(archiver_binary()?)
        .args([
            "--config",
            transcode_cfg.to_str().expect("UTF-8 path"),
            "handle-event",
        ])
        .arg(&event_file)
        .env("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()?;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let job = answer["transcode"]["job"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(!job.is_empty(), "no job: {answer}");
    let complete = events.path().join(format!("{job}-COMPLETE.json"));
    let error = events.path().join(format!("{job}-ERROR.json"));
    while !complete.exists() {
        ensure!(
            !error.exists(),
            "the job failed: {}",
            std::fs::read_to_string(&error)?
        );
        ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the job did not finish"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let transcode = started.elapsed();
    eprintln!("kvs-local MediaConvert job {job}: {transcode:.1?}");

    // The floor: the same renditions by hand, decoding once. The queues after the tee hold
    // up to 5 s each: x264's lookahead needs dozens of frames, and the default 10 MB queue
    // (three 1080p frames) deadlocks the tee.
    let clip = local.dir.path().join("s3/clips").join(&key);
    let floor_dir = tempfile::tempdir()?;
    let d = floor_dir.path().display();
    let hls = |w: u32, h: u32, kbps: u32| {
        format!(
            "t. ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=5000000000 ! videoscale ! video/x-raw,width={w},height={h} ! x264enc bitrate={kbps} key-int-max=60 speed-preset=veryfast \
             ! h264parse ! mpegtsmux ! hlssink location={d}/r{h}_%05d.ts playlist-location={d}/r{h}.m3u8 target-duration=10 max-files=0 playlist-length=0 "
        )
    };
    let pipeline = format!(
        "filesrc location={} ! decodebin ! videoconvert ! tee name=t {}{}{}\
         t. ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=5000000000 ! videoscale ! video/x-raw,width=1280,height=720 ! x264enc bitrate=5000 key-int-max=60 speed-preset=veryfast ! h264parse ! mp4mux ! filesink location={d}/out.mp4 \
         t. ! queue max-size-buffers=0 max-size-bytes=0 max-size-time=5000000000 ! videoscale ! video/x-raw,width=1280,height=720 ! videorate ! video/x-raw,framerate=1/5 ! jpegenc ! multifilesink location={d}/thumb.%07d.jpg",
        clip.display(),
        hls(640, 360, 1200),
        hls(960, 540, 3500),
        hls(1280, 720, 5000)
    );
    let started = Instant::now();
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .status()?;
    ensure!(status.success(), "gst-launch-1.0 failed");
    let floor = started.elapsed();

    println!(
        "| archiver: 180 s 1080p30 clip ({mbps:.1} Mbit/s), post-roll ingested → stored in S3 | {:.2} s, peak RSS {rss_short:.1} MiB |",
        short.as_secs_f64()
    );
    println!(
        "| archiver: 30-minute window ({:.0} MB, GetClip calls joined into one fMP4) | {:.1} s, peak RSS {rss_long:.1} MiB |",
        10.0 * bytes as f64 / 1e6,
        long.as_secs_f64()
    );
    println!(
        "| kvs-local MediaConvert: the 180 s 1080p clip, default template (HLS 360/540/720, MP4 720p, thumbnails), submission → COMPLETE | {:.1} s |",
        transcode.as_secs_f64()
    );
    println!(
        "| the floor: the same renditions by hand, one gst-launch-1.0 decoding once (tee) | {:.1} s |",
        floor.as_secs_f64()
    );
    Ok(())
}
