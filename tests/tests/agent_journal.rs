//! The journal's promise, end to end with the real agent (in-process) and kvs-local: video
//! captured during an outage, or before a restart, is all PERSISTED later, in order, never
//! duplicated; a torn write loses at most the torn record; a full journal follows its policy
//! and the agent keeps running. Each test prints captured / persisted / dropped / lost.

use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_agent::metrics::CameraMetrics;
use kvs_edge_agent::runner;
use kvs_edge_agent::uploader::UploadStats;
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(90);

fn config(url: &str, state: &std::path::Path, journal: &str) -> AgentConfig {
    config_with(url, state, journal, "pattern = \"ball\"", 400)
}

fn config_with(
    url: &str,
    state: &std::path::Path,
    journal: &str,
    pattern: &str,
    kbps: u32,
) -> AgentConfig {
    let text = format!(
        r#"
        state_dir = "{}"
        [aws]
        region = "us-east-1"
        endpoint_url = "{url}"
        [credentials]
        kind = "static"
        access_key_id = "{DEFAULT_ACCESS_KEY}"
        secret_access_key = "{DEFAULT_SECRET_KEY}"
        [upload]
        backoff_min_ms = 50
        backoff_max_ms = 300
        ack_timeout_secs = 5
        [journal]
        {journal}
        [[cameras]]
        name = "cam"
        stream_name = "journal-cam"
        fragment_duration_ms = 500
        source = {{ type = "test", width = 160, height = 120, fps = 20, {pattern} }}
        encoder = {{ bitrate_kbps = {kbps} }}
        create_stream = {{ retention_period_hours = 24 }}
        "#,
        state.display()
    );
    AgentConfig::from_toml("journal-test.toml", &text).expect("valid test config")
}

fn persisted(s: &UploadStats) -> u64 {
    s.fragments_persisted.load(Ordering::Relaxed)
}

fn made(c: &CameraMetrics) -> u64 {
    c.camera_stats.fragments.load(Ordering::Relaxed)
}

/// Waits until the camera has made `n` more fragments than `from` (a fragment per 500 ms).
async fn fragments_made(c: &CameraMetrics, n: u64) {
    let target = made(c) + n;
    // The camera has no event for this; the journal's pending count is checked whenever
    // the uploader reports (it retries every few hundred ms during an outage).
    tokio::time::timeout(BOUND, async {
        while made(c) < target {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the camera keeps making fragments");
}

/// Checks KVS holds every fragment exactly once, in order; returns how many.
async fn stored_once_in_order(local: &Local) -> anyhow::Result<usize> {
    let listed = list_all_fragments(&local.archived(), "journal-cam").await?;
    let times: Vec<i64> = listed
        .iter()
        .map(|f| f.producer_timestamp.unwrap().to_millis().unwrap())
        .collect();
    for w in times.windows(2) {
        assert!(w[1] > w[0], "strictly increasing, no duplicates: {w:?}");
    }
    Ok(times.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_loses_nothing() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let state = local.dir.path().join("state");
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(config(&local.url(), &state, ""), shutdown.clone()).await?;
    let cam = running.cameras()[0].clone();
    tokio::time::timeout(BOUND, cam.upload_stats.wait_until(|s| persisted(s) >= 2)).await?;

    local.server.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let before = persisted(&cam.upload_stats);
    fragments_made(&cam, 8).await; // 4 s of outage
    let backlog = cam.journal.lock().unwrap().pending_len();
    assert!(
        backlog >= 7,
        "the journal holds the outage's video ({backlog})"
    );
    local.server.set_faults(Faults::default());
    let target = before + backlog as u64;
    tokio::time::timeout(
        BOUND,
        cam.upload_stats.wait_until(|s| persisted(s) >= target),
    )
    .await?;

    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    let (captured, done) = (made(&cam), persisted(&cam.upload_stats));
    let stored = stored_once_in_order(&local).await?;
    println!(
        "captured {captured}, persisted {done}, dropped-by-policy 0, lost {}",
        captured - done
    );
    assert_eq!(done, captured);
    assert_eq!(stored as u64, captured);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_sends_the_backlog_first_then_live_video() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let state = local.dir.path().join("state");
    // First run: KVS unreachable the whole time (the device booted without network):
    // capture goes on, everything stays in the journal, even the stream set-up waits.
    local.server.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(config(&local.url(), &state, ""), shutdown.clone()).await?;
    let cam = running.cameras()[0].clone();
    fragments_made(&cam, 6).await;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(1))).await?;
    let first_run = made(&cam);
    assert_eq!(persisted(&cam.upload_stats), 0);

    // Second run, KVS back: the backlog goes out first, then live video, one stream, in order.
    local.server.set_faults(Faults::default());
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(config(&local.url(), &state, ""), shutdown.clone()).await?;
    let cam = running.cameras()[0].clone();
    tokio::time::timeout(
        BOUND,
        cam.upload_stats
            .wait_until(|s| persisted(s) >= first_run + 3),
    )
    .await?;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    let captured = first_run + made(&cam);
    let done = persisted(&cam.upload_stats);
    let stored = stored_once_in_order(&local).await?;
    println!(
        "captured {captured}, persisted {done}, dropped-by-policy 0, lost {}",
        captured - done
    );
    assert_eq!(done, captured, "every fragment of both runs");
    assert_eq!(stored as u64, captured);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_write_loses_at_most_the_torn_record() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "journal-cam", 24).await?;
    let state = local.dir.path().join("state");
    local.server.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(config(&local.url(), &state, ""), shutdown.clone()).await?;
    let cam = running.cameras()[0].clone();
    fragments_made(&cam, 5).await;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(1))).await?;
    let journaled = cam.journal.lock().unwrap().pending_len() as u64;
    drop(cam);

    // Power loss in the middle of the last write: the segment ends inside a record.
    let dir = state.join("journal/cam");
    let segment = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .max()
        .expect("a segment");
    let len = std::fs::metadata(&segment)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(len - 1000)?;

    local.server.set_faults(Faults::default());
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(config(&local.url(), &state, ""), shutdown.clone()).await?;
    let cam = running.cameras()[0].clone();
    tokio::time::timeout(
        BOUND,
        cam.upload_stats
            .wait_until(|s| persisted(s) >= journaled - 1),
    )
    .await?;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    let done = persisted(&cam.upload_stats);
    let captured = journaled + made(&cam);
    println!(
        "captured {captured}, persisted {done}, torn 1, lost {}",
        captured - done
    );
    assert_eq!(done, captured - 1, "only the torn record is lost");
    stored_once_in_order(&local).await?;
    Ok(())
}

async fn fill(policy: &str) -> anyhow::Result<(Local, CameraMetrics, u64, Vec<i64>)> {
    let local = Local::start().await?;
    create_stream(&local.control(), "journal-cam", 24).await?;
    let state = local.dir.path().join("state");
    local.server.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let (stop, shutdown) = watch::channel(false);
    // Noise at 2 Mbit/s: ~125 kB fragments, so 1 MB holds about 8; make well over that.
    let journal = format!("max_size_mb = 1\non_full = \"{policy}\"");
    let running = runner::start(
        config_with(&local.url(), &state, &journal, "pattern = \"snow\"", 2000),
        shutdown.clone(),
    )
    .await?;
    let cam = running.cameras()[0].clone();
    fragments_made(&cam, 20).await;
    let (pending_bytes, pending_times) = {
        let j = cam.journal.lock().unwrap();
        (
            j.pending_bytes(),
            j.pending().map(|e| e.timecode_ms).collect::<Vec<_>>(),
        )
    };
    assert!(
        pending_bytes <= 1024 * 1024,
        "the budget holds: {pending_bytes}"
    );
    let captured = made(&cam);
    // The agent kept running through it all; KVS comes back and gets what was kept.
    local.server.set_faults(Faults::default());
    let kept = pending_times.len() as u64;
    tokio::time::timeout(BOUND, cam.upload_stats.wait_until(|s| persisted(s) >= kept)).await?;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    Ok((local, cam, captured, pending_times))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_with_delete_oldest_keeps_the_newest_video() -> anyhow::Result<()> {
    let (local, cam, _, kept) = fill("delete_oldest").await?;
    let stats = cam.journal.lock().unwrap().stats();
    let done = persisted(&cam.upload_stats);
    let dropped = stats.dropped_oldest;
    println!(
        "captured {}, persisted {done}, dropped-by-policy {dropped}, lost {}",
        made(&cam),
        made(&cam) - done - dropped
    );
    assert!(dropped > 0, "the budget forced drops");
    assert_eq!(
        made(&cam),
        done + dropped,
        "every fragment is persisted or counted as dropped"
    );
    let stored: Vec<i64> = list_all_fragments(&local.archived(), "journal-cam")
        .await?
        .iter()
        .map(|f| f.producer_timestamp.unwrap().to_millis().unwrap())
        .collect();
    assert!(
        stored.iter().all(|t| *t >= kept[0] - 1),
        "what was dropped is the oldest"
    );
    stored_once_in_order(&local).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_with_deny_new_keeps_the_backlog() -> anyhow::Result<()> {
    let (local, cam, _, kept) = fill("deny_new").await?;
    let stats = cam.journal.lock().unwrap().stats();
    let denied = cam.camera_stats.fragments_denied.load(Ordering::Relaxed);
    let done = persisted(&cam.upload_stats);
    println!(
        "captured {}, persisted {done}, dropped-by-policy {denied}, lost {}",
        made(&cam),
        made(&cam) - done - denied
    );
    assert!(
        denied > 0 && stats.denied == denied,
        "new video was refused and counted"
    );
    assert_eq!(
        made(&cam),
        done + denied,
        "every fragment is persisted or counted as refused"
    );
    let stored = list_all_fragments(&local.archived(), "journal-cam").await?;
    let first = stored[0].producer_timestamp.unwrap().to_millis().unwrap();
    assert!(
        (first - kept[0]).abs() <= 1,
        "the oldest video of the outage was kept"
    );
    stored_once_in_order(&local).await?;
    Ok(())
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills a 3 MB tmpfs (the budget would allow a gigabyte: only the file system says no)
/// during an outage, then lets KVS back. Returns (captured, persisted, dropped, refused), or
/// `None` where mounting is not allowed.
async fn really_full_disk(policy: &str) -> anyhow::Result<Option<(u64, u64, u64, u64)>> {
    let local = Local::start().await?;
    create_stream(&local.control(), "journal-cam", 24).await?;
    let mount = local.dir.path().join("tiny");
    std::fs::create_dir_all(&mount)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mount)
        .output()?;
    if !mounted.status.success() {
        // CI and the reference machine run as root; elsewhere this one needs sudo.
        println!(
            "skipped: mounting a tmpfs needs root ({})",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return Ok(None);
    }
    let _guard = Tmpfs(mount.clone());
    local.server.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let (stop, shutdown) = watch::channel(false);
    // The budget would allow a gigabyte: only the file system says no (ENOSPC).
    let running = runner::start(
        config_with(
            &local.url(),
            &mount,
            &format!("max_size_mb = 1024\nmin_free_mb = 0\non_full = \"{policy}\""),
            "pattern = \"snow\"",
            2000,
        ),
        shutdown.clone(),
    )
    .await?;
    let cam = running.cameras()[0].clone();
    // Well past what 3 MB holds (~125 kB fragments).
    fragments_made(&cam, 40).await;
    // KVS comes back: the journal drains, space frees up, new video is stored again.
    local.server.set_faults(Faults::default());
    // What was kept, and then three fragments made after the disk had room again.
    let target =
        persisted(&cam.upload_stats) + cam.journal.lock().unwrap().pending_len() as u64 + 3;
    tokio::time::timeout(
        BOUND,
        cam.upload_stats.wait_until(|s| persisted(s) >= target),
    )
    .await?;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    let (captured, done) = (made(&cam), persisted(&cam.upload_stats));
    let denied = cam.camera_stats.fragments_denied.load(Ordering::Relaxed);
    let dropped = cam.journal.lock().unwrap().stats().dropped_oldest;
    println!(
        "{policy}: captured {captured}, persisted {done}, dropped-by-policy {}, lost {}",
        dropped + denied,
        captured - done - dropped - denied
    );
    assert_eq!(
        captured,
        done + dropped + denied,
        "every fragment persisted or counted as dropped"
    );
    stored_once_in_order(&local).await?;
    Ok(Some((captured, done, dropped, denied)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_full_disk_with_deny_new_refuses_new_video_and_keeps_running() -> anyhow::Result<()>
{
    if let Some((_, _, dropped, denied)) = really_full_disk("deny_new").await? {
        assert!(
            denied >= 3 && dropped == 0,
            "new video refused, the backlog kept"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_really_full_disk_with_delete_oldest_frees_whole_segments() -> anyhow::Result<()> {
    if let Some((_, _, dropped, _)) = really_full_disk("delete_oldest").await? {
        assert!(
            dropped >= 3,
            "the oldest segments were deleted to make room"
        );
    }
    Ok(())
}
