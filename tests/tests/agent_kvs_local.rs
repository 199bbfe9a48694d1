//! The agent (in-process, its real runner) streaming a live GStreamer test source into
//! kvs-local: every captured fragment PERSISTED, timecodes monotonic, no duplicates, a clip
//! that plays and lasts as long as the capture; and recovery from injected faults without
//! anyone stepping in.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_agent::metrics::CameraMetrics;
use kvs_edge_agent::runner;
use kvs_edge_agent::uploader::UploadStats;
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(60);

fn config(url: &str, stream: &str, state: &std::path::Path) -> AgentConfig {
    let text = format!(
        r#"
        device_id = "test-device"
        state_dir = "{}"
        [aws]
        region = "us-east-1"
        endpoint_url = "{url}"
        [credentials]
        kind = "static"
        access_key_id = "{DEFAULT_ACCESS_KEY}"
        secret_access_key = "{DEFAULT_SECRET_KEY}"
        [metrics]
        listen = "127.0.0.1:0"
        [upload]
        backoff_min_ms = 50
        backoff_max_ms = 400
        ack_timeout_secs = 5
        [[cameras]]
        name = "cam"
        stream_name = "{stream}"
        fragment_duration_ms = 1000
        source = {{ type = "test", width = 320, height = 240, fps = 25 }}
        encoder = {{ bitrate_kbps = 500 }}
        create_stream = {{ retention_period_hours = 24 }}
        "#,
        state.display()
    );
    AgentConfig::from_toml("test.toml", &text).expect("valid test config")
}

async fn wait(stats: &UploadStats, what: &str, cond: impl Fn(&UploadStats) -> bool) {
    tokio::time::timeout(BOUND, stats.wait_until(cond))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn persisted(s: &UploadStats) -> u64 {
    s.fragments_persisted.load(Ordering::Relaxed)
}

/// Stops the agent and checks the no-loss invariant: every fragment made was PERSISTED and
/// KVS holds each exactly once, in order. Returns the stored fragments' (start, length).
async fn stop_and_check(
    local: &Local,
    stream: &str,
    stop: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
    running: runner::Running,
    cam: CameraMetrics,
) -> anyhow::Result<Vec<(i64, i64)>> {
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(30))).await?;
    let made = cam.camera_stats.fragments.load(Ordering::Relaxed);
    let up = &cam.upload_stats;
    let journal = cam.journal.lock().unwrap().stats();
    let dropped = journal.dropped_oldest + journal.denied + journal.expired;
    println!(
        "made {made}, persisted {}, dropped by policy {dropped}, rejected {}, sessions {}, failures {}",
        persisted(up),
        up.fragments_rejected.load(Ordering::Relaxed),
        up.sessions.load(Ordering::Relaxed),
        up.session_failures.load(Ordering::Relaxed)
    );
    assert_eq!(persisted(up), made, "every fragment made was PERSISTED");
    assert_eq!(dropped, 0, "nothing dropped by policy");
    let listed = list_all_fragments(&local.archived(), stream).await?;
    let mut spans: Vec<(i64, i64)> = listed
        .iter()
        .map(|f| {
            (
                f.producer_timestamp.unwrap().to_millis().unwrap(),
                f.fragment_length_in_milliseconds,
            )
        })
        .collect();
    spans.sort();
    assert_eq!(
        spans.len() as u64,
        made,
        "KVS holds each fragment exactly once"
    );
    for w in spans.windows(2) {
        assert!(w[1].0 > w[0].0, "monotonic producer timestamps: {w:?}");
    }
    Ok(spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_source_streams_every_fragment_and_the_clip_plays() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(
        config(
            &local.url(),
            "agent-cam",
            &local.dir.path().join("agent-state"),
        ),
        shutdown.clone(),
    )
    .await?;
    let cam = running.cameras()[0].clone();
    let metrics_addr = running.metrics_addr.expect("metrics listener");
    wait(&cam.upload_stats, "4 fragments", |s| persisted(s) >= 4).await;

    // Metrics are served while streaming.
    let body = scrape_metrics(metrics_addr).await?;
    assert!(
        body.contains("kvs_edge_fragments_persisted_total{camera=\"cam\",stream=\"agent-cam\"}"),
        "{body}"
    );
    assert!(
        body.contains("kvs_edge_encoder_info{camera=\"cam\",encoder=\"x264enc\"} 1"),
        "{body}"
    );

    let spans = stop_and_check(&local, "agent-cam", stop, shutdown, running, cam).await?;
    // The stream was created by the agent with the configured retention.
    let info = local
        .control()
        .describe_stream()
        .stream_name("agent-cam")
        .send()
        .await?
        .stream_info
        .unwrap();
    assert_eq!(info.data_retention_in_hours, Some(24));

    // A clip of the whole capture plays and lasts as long as the capture, ± one fragment.
    let (start, _) = spans[0];
    let (last_start, last_len) = *spans.last().unwrap();
    let captured_ms = last_start + last_len - start;
    let clip = get_clip(&local.archived(), "agent-cam", start, last_start).await?;
    let mp4 = clip.1;
    let path = local.dir.path().join("agent.mp4");
    std::fs::write(&path, &mp4)?;
    let (codec, w, h, duration, _) = ffprobe(&path)?;
    assert_eq!((codec.as_str(), w, h), ("h264", 320, 240));
    assert!(
        (duration * 1000.0 - captured_ms as f64).abs() <= 1500.0,
        "clip {duration} s vs captured {captured_ms} ms"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_injected_faults_without_losing_fragments() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(
        config(
            &local.url(),
            "faulty",
            &local.dir.path().join("agent-state"),
        ),
        shutdown.clone(),
    )
    .await?;
    let cam = running.cameras()[0].clone();
    let up: Arc<UploadStats> = cam.upload_stats.clone();
    let failures = |s: &UploadStats| s.session_failures.load(Ordering::Relaxed);
    wait(&up, "the first fragments", |s| persisted(s) >= 2).await;

    // Connections dropped mid-upload.
    let base = failures(&up);
    local.server.set_faults(Faults {
        drop_put_media_after_bytes: Some(20_000),
        ..Faults::default()
    });
    wait(&up, "two dropped sessions", |s| failures(s) >= base + 2).await;
    local.server.set_faults(Faults::default());
    let p = persisted(&up);
    wait(&up, "recovery after drops", |s| persisted(s) > p + 1).await;

    // HTTP 500s on PutMedia (the running session is cut so that new ones meet them).
    let base = failures(&up);
    local.server.set_faults(Faults {
        http_error: Some(kvs_local::faults::HttpErrorFault {
            status: 500,
            error_type: "InternalFailure".into(),
            message: None,
            operations: vec!["PutMedia".into()],
            count: Some(2),
        }),
        drop_put_media_after_bytes: Some(1),
        ..Faults::default()
    });
    wait(&up, "a cut session and two 500s", |s| {
        failures(s) >= base + 3
    })
    .await;
    local.server.set_faults(Faults::default());
    let p = persisted(&up);
    wait(&up, "recovery after 500s", |s| persisted(s) > p + 1).await;

    // ERROR acks (retryable 5000) at the first fragment of every session.
    let base = failures(&up);
    local.server.set_faults(Faults {
        put_media_error: Some(kvs_local::faults::PutMediaErrorFault {
            error_id: 5000,
            after_fragments: 0,
            ..Default::default()
        }),
        ..Faults::default()
    });
    wait(&up, "two error acks", |s| failures(s) >= base + 2).await;
    local.server.set_faults(Faults::default());
    let p = persisted(&up);
    wait(&up, "recovery after error acks", |s| persisted(s) > p + 1).await;

    // Slow acks: still every fragment.
    local.server.set_faults(Faults {
        ack_delay_ms: 700,
        ..Faults::default()
    });
    let p = persisted(&up);
    wait(&up, "progress with delayed acks", |s| persisted(s) > p + 2).await;
    local.server.set_faults(Faults::default());

    stop_and_check(&local, "faulty", stop, shutdown, running, cam).await?;
    Ok(())
}
