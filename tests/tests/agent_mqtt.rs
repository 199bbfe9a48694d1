//! The agent's MQTT health against a real mosquitto started by the test: retained
//! availability ("online", "stopped" on a clean exit, the last will "offline" when killed),
//! per-camera stats, and a broker restart that never interrupts streaming.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_agent::runner;
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(60);

fn toml(url: &str, state: &std::path::Path, broker_port: u16) -> String {
    mqtt_agent_toml(url, state, "mqtt-cam", &plain_mqtt(broker_port))
}

const AVAILABLE: &str = "kvs-edge/garage-pi/available";
const STATS: &str = "kvs-edge/garage-pi/stats";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_and_stats_then_stopped() -> anyhow::Result<()> {
    let broker = Mosquitto::start(None)?;
    let local = Local::start().await?;
    let mut watch_all = MqttWatch::subscribe(broker.port, "kvs-edge/#").await?;
    let cfg = AgentConfig::from_toml(
        "mqtt.toml",
        &toml(&local.url(), &local.dir.path().join("state"), broker.port),
    )?;
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(cfg, shutdown.clone()).await?;
    let cam = running.cameras()[0].clone();

    let (_, first, _) = watch_all.wait_for(BOUND, |t, _| t == AVAILABLE).await?;
    assert_eq!(
        first, "online",
        "no dropped first connection (its will) before online"
    );
    // Retained: a subscriber arriving now is told at once (with RETAIN set).
    let mut late = MqttWatch::subscribe(broker.port, AVAILABLE).await?;
    let (_, state, retained) = late.wait_for(BOUND, |_, _| true).await?;
    assert_eq!((state.as_str(), retained), ("online", true));
    // Stats carry the camera's counters; wait for one that shows delivered video.
    let (_, stats, _) = watch_all
        .wait_for(BOUND, |t, p| {
            t == STATS
                && serde_json::from_str::<serde_json::Value>(p).is_ok_and(|v| {
                    v["cameras"][0]["fragments_persisted_total"]
                        .as_u64()
                        .unwrap_or(0)
                        >= 1
                        && v["cameras"][0]["fps"].as_f64().unwrap_or(0.0) > 0.0
                })
        })
        .await?;
    let v: serde_json::Value = serde_json::from_str(&stats)?;
    assert_eq!(v["device"], "garage-pi");
    let c = &v["cameras"][0];
    assert_eq!(
        (
            c["camera"].as_str(),
            c["stream"].as_str(),
            c["encoder"].as_str()
        ),
        (Some("cam"), Some("mqtt-cam"), Some("x264enc"))
    );
    // Measured since the previous message: the 20 fps test source, and the upload rate.
    let fps = c["fps"].as_f64().unwrap();
    assert!((5.0..=30.0).contains(&fps), "fps {fps}");
    assert!(c["bitrate_kbps"].is_number(), "{c}");
    assert_eq!(v["credentials"]["source"], "static");
    assert!(
        v["credentials"]["expires_in_s"].is_null(),
        "static keys do not expire"
    );
    for key in [
        "frames_total",
        "journal_pending_fragments",
        "ack_latency_ms",
        "fragments_dropped_total",
        "session_failures_total",
    ] {
        assert!(c[key].is_u64(), "{key} in {c}");
    }

    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    assert!(cam.upload_stats.fragments_persisted.load(Ordering::Relaxed) >= 1);
    let (_, stopped, _) = watch_all
        .wait_for(BOUND, |t, p| t == AVAILABLE && p != "online")
        .await?;
    assert_eq!(stopped, "stopped", "a clean exit says stopped, not offline");
    // A late subscriber sees the retained state.
    let mut late = MqttWatch::subscribe(broker.port, AVAILABLE).await?;
    let (_, state, retained) = late.wait_for(BOUND, |_, _| true).await?;
    assert_eq!((state.as_str(), retained), ("stopped", true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_never_interrupts_streaming() -> anyhow::Result<()> {
    let broker = Mosquitto::start(None)?;
    let port = broker.port;
    let local = Local::start().await?;
    let cfg = AgentConfig::from_toml(
        "mqtt.toml",
        &toml(&local.url(), &local.dir.path().join("state"), port),
    )?;
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(cfg, shutdown.clone()).await?;
    let cam = running.cameras()[0].clone();
    let mut watch_all = MqttWatch::subscribe(port, "kvs-edge/#").await?;
    watch_all
        .wait_for(BOUND, |t, p| t == AVAILABLE && p == "online")
        .await?;

    drop(watch_all);
    drop(broker);
    // The broker is gone: video keeps flowing into KVS.
    let p = cam.upload_stats.fragments_persisted.load(Ordering::Relaxed);
    tokio::time::timeout(
        BOUND,
        cam.upload_stats
            .wait_until(|s| s.fragments_persisted.load(Ordering::Relaxed) >= p + 2),
    )
    .await?;

    // Back on the same port, with no retained state: the agent republishes it on reconnect.
    let _broker = tokio::task::spawn_blocking(move || Mosquitto::start(Some(port))).await??;
    let mut watch_all = MqttWatch::subscribe(port, "kvs-edge/#").await?;
    watch_all
        .wait_for(BOUND, |t, p| t == AVAILABLE && p == "online")
        .await?;
    watch_all.wait_for(BOUND, |t, _| t == STATS).await?;
    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leaves_the_last_will_offline() -> anyhow::Result<()> {
    let broker = Mosquitto::start(None)?;
    let local = Local::start().await?;
    let config = local.dir.path().join("agent.toml");
    std::fs::write(
        &config,
        toml(&local.url(), &local.dir.path().join("state"), broker.port),
    )?;
    let mut watch_all = MqttWatch::subscribe(broker.port, AVAILABLE).await?;
    let mut child = std::process::Command::new(agent_binary()?)
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()?;
    watch_all.wait_for(BOUND, |_, p| p == "online").await?;
    child.kill()?; // SIGKILL: no goodbye
    child.wait()?;
    let (_, will, _) = watch_all.wait_for(BOUND, |_, p| p != "online").await?;
    assert_eq!(will, "offline");
    // The will is retained: a subscriber arriving now is told the device is offline.
    let mut late = MqttWatch::subscribe(broker.port, AVAILABLE).await?;
    let (_, state, retained) = late.wait_for(BOUND, |_, _| true).await?;
    assert_eq!((state.as_str(), retained), ("offline", true));
    Ok(())
}
