//! The agent's other sources and its isolation between cameras: a recorded MP4 passed
//! through (once: the agent finishes by itself; looped: timecodes keep increasing), and a
//! broken camera that does not hold up a working one.

use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_agent::uploader::UploadStats;
use kvs_edge_tests::*;
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(60);

/// 4 s of 320x240 H.264 in an MP4, keyframe every second, with `bframes` B-frames.
fn mp4_file_with(dir: &std::path::Path, bframes: u32) -> anyhow::Result<std::path::PathBuf> {
    recorded_file(
        &dir.join(format!("recorded-b{bframes}.mp4")),
        &format!(
            "videotestsrc num-buffers=100 ! video/x-raw,format=I420,width=320,height=240,framerate=25/1 \
             ! x264enc key-int-max=25 bframes={bframes} ! video/x-h264,profile=main ! mp4mux"
        ),
    )
}

fn mp4_file(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    mp4_file_with(dir, 0)
}

fn persisted(s: &UploadStats) -> u64 {
    s.fragments_persisted.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_file_is_passed_through_and_the_agent_finishes() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let file = mp4_file(local.dir.path())?;
    let cameras = format!(
        "[[cameras]]\nname = \"rec\"\nstream_name = \"rec\"\nfragment_duration_ms = 1000\n\
         source = {{ type = \"file\", path = \"{}\", realtime = false }}\ncreate_stream = {{ retention_period_hours = 1 }}",
        file.display()
    );
    let (_stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "file.toml", &cameras, &shutdown).await?;
    let cam = running.cameras()[0].clone();
    // No shutdown asked: the file ends, the agent delivers it and is done.
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(10))).await?;
    assert_eq!(
        persisted(&cam.upload_stats),
        4,
        "4 s of video in 1 s fragments"
    );
    assert_eq!(
        cam.camera_stats.capture.frames.load(Ordering::Relaxed),
        100,
        "every frame, none re-encoded away"
    );
    assert_eq!(*cam.camera_stats.encoder.lock().await, "passthrough");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looped_file_keeps_timecodes_increasing() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let file = mp4_file(local.dir.path())?;
    let cameras = format!(
        "[[cameras]]\nname = \"loop\"\nstream_name = \"loop\"\nfragment_duration_ms = 1000\n\
         source = {{ type = \"file\", path = \"{}\", loop = true, realtime = false }}\ncreate_stream = {{ retention_period_hours = 1 }}",
        file.display()
    );
    let (stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "loop.toml", &cameras, &shutdown).await?;
    let cam = running.cameras()[0].clone();
    tokio::time::timeout(BOUND, cam.upload_stats.wait_until(|s| persisted(s) >= 10)).await?;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(2))).await?;
    // Read faster than the 5 fragments/s upload cap: the rest waits in the journal. The last
    // fragment's append may still be finishing on the blocking pool when the tasks end.
    let made = cam.camera_stats.fragments.load(Ordering::Relaxed);
    let accounted =
        || persisted(&cam.upload_stats) + cam.journal.lock().unwrap().pending_len() as u64;
    let _ = tokio::time::timeout(BOUND, async {
        while accounted() != made {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (journaled, journal) = {
        let j = cam.journal.lock().unwrap();
        (j.pending_len(), j.stats())
    };
    println!(
        "made {made}, persisted {}, still journaled {journaled}, rejected {}, denied {}, journal {journal:?}",
        persisted(&cam.upload_stats),
        cam.upload_stats.fragments_rejected.load(Ordering::Relaxed),
        cam.camera_stats.fragments_denied.load(Ordering::Relaxed),
    );
    // Every fragment made is PERSISTED or still journaled (one PERSISTED as the shutdown
    // ended the uploader may be both: it is sent again, and reads deduplicate it).
    let accounted = accounted();
    assert!(
        (made..=made + 1).contains(&accounted),
        "nothing lost: {accounted} of {made}"
    );
    assert_eq!(
        cam.upload_stats.error_acks.load(Ordering::Relaxed),
        0,
        "no 4004: timecodes never went back"
    );
    assert!(
        cam.camera_stats.restarts.load(Ordering::Relaxed) >= 2,
        "the file was played more than once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_camera_does_not_hold_up_the_others() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let dead = free_port()?;
    let cameras = format!(
        "[[cameras]]\nname = \"dead\"\nstream_name = \"dead\"\nstall_timeout_secs = 1\n\
         source = {{ type = \"rtsp\", url = \"rtsp://127.0.0.1:{dead}/nothing\" }}\ncreate_stream = {{ retention_period_hours = 1 }}\n\
         [[cameras]]\nname = \"alive\"\nstream_name = \"alive\"\nfragment_duration_ms = 1000\n\
         source = {{ type = \"test\", width = 160, height = 120 }}\ncreate_stream = {{ retention_period_hours = 1 }}"
    );
    let (stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "two.toml", &cameras, &shutdown).await?;
    let (dead, alive) = (running.cameras()[0].clone(), running.cameras()[1].clone());
    tokio::time::timeout(BOUND, alive.upload_stats.wait_until(|s| persisted(s) >= 3)).await?;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    assert_eq!(
        persisted(&alive.upload_stats),
        alive.camera_stats.fragments.load(Ordering::Relaxed)
    );
    assert_eq!(dead.camera_stats.fragments.load(Ordering::Relaxed), 0);
    assert!(
        dead.camera_stats.restarts.load(Ordering::Relaxed) >= 1,
        "the broken source is retried"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_frames_are_passed_through_in_decode_order() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let file = mp4_file_with(local.dir.path(), 2)?;
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pict_type",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()?;
    let b_frames = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .filter(|l| l.starts_with('B'))
        .count();
    assert!(b_frames > 20, "the source really has B-frames ({b_frames})");
    let cameras = format!(
        "[[cameras]]\nname = \"bf\"\nstream_name = \"bf\"\nfragment_duration_ms = 1000\n\
         source = {{ type = \"file\", path = \"{}\", realtime = false }}\ncreate_stream = {{ retention_period_hours = 1 }}",
        file.display()
    );
    let (_stop, shutdown) = watch::channel(false);
    let running = start_agent(&local, "bf.toml", &cameras, &shutdown).await?;
    let cam = running.cameras()[0].clone();
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(10))).await?;
    assert_eq!(
        cam.camera_stats.frames_discarded.load(Ordering::Relaxed),
        0,
        "no frame refused"
    );
    assert_eq!(persisted(&cam.upload_stats), 4);

    // The stored fragments decode with every frame, and GetClip (with ctts) plays.
    let listed = local
        .archived()
        .list_fragments()
        .stream_name("bf")
        .send()
        .await?
        .fragments
        .unwrap_or_default();
    let times: Vec<i64> = listed
        .iter()
        .map(|f| f.producer_timestamp.unwrap().to_millis().unwrap())
        .collect();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let clip = get_clip(&local.archived(), "bf", first - 1, last + 1).await?;
    let path = local.dir.path().join("bf.mp4");
    std::fs::write(&path, clip.1)?;
    let (codec, w, h, duration, frames) = ffprobe(&path)?;
    assert_eq!((codec.as_str(), w, h, frames), ("h264", 320, 240, 100));
    assert!((duration - 4.0).abs() < 0.5, "{duration}");
    Ok(())
}
