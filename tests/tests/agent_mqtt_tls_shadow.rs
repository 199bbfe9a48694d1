//! MQTT over TLS with client certificates (mosquitto requires them, so getting in proves
//! the agent presents its certificate; certificates made by the test with openssl), and AWS IoT Device Shadow mode. AWS IoT's shadow service is
//! played by the test on mosquitto: it answers `get` with a shadow document and publishes
//! `update/delta` messages, as the service does; the agent's side is what ships.

use std::time::Duration;

use kvs_edge_agent::runner;
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use serde_json::{Value, json};
use tokio::sync::watch;

const BOUND: Duration = Duration::from_secs(60);
const BASE: &str = "kvs-edge/garage-pi";
const SHADOW: &str = "$aws/things/garage-pi/shadow/name/kvs-edge";

fn toml(url: &str, state: &std::path::Path, mqtt: &str) -> String {
    mqtt_agent_toml(url, state, "shadow-cam", mqtt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_the_broker() -> anyhow::Result<()> {
    init_logs();
    let certs = tempfile::tempdir()?;
    certs::certificates(certs.path());
    let broker = Mosquitto::start_tls(certs.path())?;
    let local = Local::start().await?;
    let d = certs.path().display();
    let mqtt = format!(
        r#"[mqtt]
        host = "127.0.0.1"
        port = {}
        stats_interval_secs = 1
        [mqtt.tls]
        ca_path = "{d}/ca.pem"
        cert_path = "{d}/device.pem"
        key_path = "{d}/device.key""#,
        broker.port
    );
    let cfg = AgentConfig::from_toml(
        "tls.toml",
        &toml(&local.url(), &local.dir.path().join("state"), &mqtt),
    )?;
    let mut mq = MqttWatch::subscribe_tls(broker.port, certs.path(), &format!("{BASE}/#")).await?;
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(cfg, shutdown.clone()).await?;
    mq.wait_for(BOUND, |t, p| {
        t == format!("{BASE}/available") && p == "online"
    })
    .await?;
    // Configuration works over TLS like anywhere else.
    let accepted = mq
        .ask(&format!("{BASE}/config/set"), &json!({"version": 1, "token": "tls", "cameras": {"cam": {"encoder": {"bitrate_kbps": 700}}}}), &format!("{BASE}/config/accepted"), BOUND)
        .await?;
    assert_eq!(accepted["token"], "tls");
    mq.wait_for(BOUND, |t, _| t == format!("{BASE}/stats"))
        .await?;

    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    Ok(())
}

/// The `state.reported` of the next shadow update the agent sends.
async fn next_report(mq: &mut MqttWatch) -> anyhow::Result<Value> {
    let update = mq.json_on(BOUND, &format!("{SHADOW}/update")).await?;
    Ok(update["state"]["reported"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_desired_state_is_applied_and_reported() -> anyhow::Result<()> {
    init_logs();
    let broker = Mosquitto::start(None)?;
    let local = Local::start().await?;
    let mqtt = format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[mqtt.shadow]\nthing_name = \"garage-pi\"",
        broker.port
    );
    let cfg = AgentConfig::from_toml(
        "shadow.toml",
        &toml(&local.url(), &local.dir.path().join("state"), &mqtt),
    )?;
    // The shadow service: it sees what the agent publishes under the shadow's topics.
    let mut shadow = MqttWatch::subscribe(broker.port, &format!("{SHADOW}/#")).await?;
    let (stop, shutdown) = watch::channel(false);
    let running = runner::start(cfg, shutdown.clone()).await?;

    // The agent asks for the shadow; the service answers with a desired state.
    shadow
        .wait_for(BOUND, |t, _| t == format!("{SHADOW}/get"))
        .await?;
    shadow
        .publish(
            &format!("{SHADOW}/get/accepted"),
            json!({"state": {"desired": {"cameras": {"cam": {"encoder": {"bitrate_kbps": 900}}}}},
                   "version": 5, "timestamp": 1})
            .to_string(),
            false,
        )
        .await?;
    let reported = next_report(&mut shadow).await?;
    assert_eq!(
        reported["cameras"]["cam"]["encoder"]["bitrate_kbps"], 900,
        "{reported}"
    );

    // A delta: applied, and only the difference is reported.
    shadow
        .publish(
            &format!("{SHADOW}/update/delta"),
            json!({"state": {"cameras": {"cam": {"fragment_duration_ms": 3000}}}, "version": 6})
                .to_string(),
            false,
        )
        .await?;
    let reported = next_report(&mut shadow).await?;
    assert_eq!(
        reported,
        json!({"cameras": {"cam": {"fragment_duration_ms": 3000}}}),
        "only what changed"
    );

    // A stale delta (version 6 again) is ignored; an invalid one is reported as rejected.
    shadow
        .publish(
            &format!("{SHADOW}/update/delta"),
            json!({"state": {"cameras": {"cam": {"encoder": {"bitrate_kbps": 100}}}}, "version": 6})
                .to_string(),
            false,
        )
        .await?;
    shadow
        .publish(
            &format!("{SHADOW}/update/delta"),
            json!({"state": {"cameras": {"cam": {"encoder": {"bitrate_kbps": "max"}}}}, "version": 7})
                .to_string(),
            false,
        )
        .await?;
    let reported = next_report(&mut shadow).await?;
    assert_eq!(
        reported["rejected"]["path"], "cameras.cam.encoder.bitrate_kbps",
        "{reported}"
    );
    assert!(
        reported.get("cameras").is_none(),
        "the stale delta changed nothing: {reported}"
    );

    // The configuration the shadow set is the device's, persisted like any other.
    let mut late = MqttWatch::subscribe(broker.port, &format!("{BASE}/config/state")).await?;
    let state = late.json_on(BOUND, &format!("{BASE}/config/state")).await?;
    assert_eq!(state["cameras"]["cam"]["encoder"]["bitrate_kbps"], 900);
    assert_eq!(state["cameras"]["cam"]["fragment_duration_ms"], 3000);
    let saved: Value = serde_json::from_slice(&std::fs::read(
        local.dir.path().join("state/remote-config.json"),
    )?)?;
    assert_eq!(
        saved["document"]["cameras"]["cam"]["fragment_duration_ms"],
        3000
    );

    stop.send_replace(true);
    tokio::time::timeout(BOUND, running.wait(shutdown, Duration::from_secs(20))).await?;
    Ok(())
}
