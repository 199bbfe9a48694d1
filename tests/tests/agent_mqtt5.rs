//! What the MQTT protocol version changes, against a real mosquitto, checked with mosquitto's
//! own clients (`mosquitto_rr`, `mosquitto_pub`/`mosquitto_sub -V 5`) where properties
//! matter:
//! - MQTT 5 (the default): a retained command sent while the agent is connected is refused
//!   (retain as published); a retained config/set too large for the agent stays at the
//!   broker and costs no connection; requests with a response topic are answered there with
//!   their correlation data, content type and a `result` user property.
//! - MQTT 3.1.1 (`protocol = "3.1.1"`): works, with the limits docs/mqtt.md names: a
//!   retained command sent live is acted on once, an oversized retained message ends the
//!   connection until it is deleted at the broker.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use kvs_edge_config::AgentConfig;
use kvs_edge_tests::*;
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(60);
const BASE: &str = "kvs-edge/garage-pi";

/// An oversized config/set: larger than the agent reads (1 MiB).
fn oversized() -> Vec<u8> {
    format!(r#"{{"version": 50, "pad": "{}"}}"#, "x".repeat(2 << 20)).into_bytes()
}

struct Rig {
    broker: Mosquitto,
    _local: Local,
    agent: InProcessAgent,
    watch: MqttWatch,
}

impl Rig {
    /// A broker (with `before` published retained on it first), kvs-local and the agent
    /// speaking `protocol`, connected; `watch` sees every device topic.
    async fn start(protocol: &str, before: Option<(&str, Vec<u8>)>) -> anyhow::Result<Rig> {
        let broker = Mosquitto::start(None)?;
        let local = Local::start().await?;
        let mut watch = MqttWatch::subscribe(broker.port, &format!("{BASE}/#")).await?;
        if let Some((topic, payload)) = before {
            watch.publish(topic, payload, true).await?;
            // Stored once the publisher sees it come back (it subscribed to the topic).
            watch.wait_for_raw(BOUND, |t, _| t == topic).await?;
        }
        let state = local.dir.path().join("state");
        let mqtt = format!("{}protocol = \"{protocol}\"\n", plain_mqtt(broker.port));
        let toml = mqtt_agent_toml(&local.url(), &state, "mqtt5-cam", &mqtt);
        let cfg = AgentConfig::from_toml("mqtt5.toml", &toml)?;
        let agent = InProcessAgent::start(cfg).await?;
        // "online" follows the agent's SUBSCRIBE on the same connection: it is subscribed.
        watch
            .wait_for(BOUND, |t, p| {
                t == format!("{BASE}/available") && p == "online"
            })
            .await?;
        Ok(Rig {
            broker,
            _local: local,
            agent,
            watch,
        })
    }

    fn connections(&self) -> u64 {
        let link = self.agent.running.mqtt_link.as_ref();
        link.expect("[mqtt] configured")
            .connections
            .load(Ordering::Relaxed)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.agent.stop().await
    }

    /// Publishes `message` to the camera's `feature` as an MQTT 5 request with correlation
    /// data (`mosquitto_pub`), and returns the answer on `reply` as `mosquitto_sub` prints
    /// it: (correlation data, user properties, content type, payload or its length).
    fn request_with_properties(
        &self,
        feature: &str,
        reply: &str,
        correlation: &str,
        message: &str,
        length_only: bool,
    ) -> anyhow::Result<[String; 4]> {
        let port = self.broker.port;
        let sub = Sub::start(port, reply, length_only)?;
        let topic = format!("{BASE}/cam/{feature}/set");
        publish_request(port, &topic, reply, correlation, message)?;
        sub.message()
    }
}

/// `mosquitto_rr` (MQTT 5 request/response): publishes `message` on `topic` with response
/// topic `reply` and returns the answer's payload.
async fn request(port: u16, topic: &str, reply: &str, message: &str) -> anyhow::Result<Value> {
    let out = tokio::task::spawn_blocking({
        let args = [
            "-V",
            "5",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-e",
            reply,
            "-W",
            "30",
            "-m",
            message,
        ]
        .map(String::from);
        move || Command::new("mosquitto_rr").args(args).output()
    })
    .await?
    .context("running mosquitto_rr (scripts/install-deps installs mosquitto-clients)")?;
    anyhow::ensure!(
        out.status.success(),
        "mosquitto_rr {topic}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("the answer is not JSON: {text}"))
}

/// `mosquitto_sub -V 5` on one topic, printing the first message as
/// `correlation|user properties|content type|payload` (or the payload's length).
struct Sub {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Sub {
    /// Returns once the broker acknowledged the subscription.
    fn start(port: u16, topic: &str, length_only: bool) -> anyhow::Result<Sub> {
        let format = if length_only {
            "MSG|%D|%P|%C|%l"
        } else {
            "MSG|%D|%P|%C|%p"
        };
        // Line-buffered: mosquitto_sub's stdout to a pipe would only flush at its exit.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-V",
                "5",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                topic,
            ])
            .args(["-C", "1", "-W", "60", "-d", "-F", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running mosquitto_sub")?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let sub = Sub { child, lines };
        sub.line(|l| l.contains("SUBACK"))?;
        Ok(sub)
    }

    fn line(&self, pred: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .context("mosquitto_sub printed nothing matching in time")?;
            if pred(&line) {
                return Ok(line);
            }
        }
    }

    /// (correlation data, user properties, content type, payload) of the message.
    fn message(&self) -> anyhow::Result<[String; 4]> {
        let line = self.line(|l| l.starts_with("MSG|"))?;
        let parts: Vec<&str> = line["MSG|".len()..].splitn(4, '|').collect();
        let [d, p, c, payload] = parts[..] else {
            bail!("unexpected mosquitto_sub line: {line}")
        };
        Ok([d, p, c, payload].map(String::from))
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_pub -V 5` of `message` on `topic` with a response topic and correlation data.
fn publish_request(
    port: u16,
    topic: &str,
    reply: &str,
    correlation: &str,
    message: &str,
) -> anyhow::Result<()> {
    let status = Command::new("mosquitto_pub")
        .args([
            "-V",
            "5",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
        ])
        .args(["-t", topic, "-m", message])
        .args(["-D", "publish", "response-topic", reply])
        .args(["-D", "publish", "correlation-data", correlation])
        .status()
        .context("running mosquitto_pub")?;
    anyhow::ensure!(status.success(), "mosquitto_pub {topic}: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_answers_requests_and_keeps_what_it_cannot_read_at_the_broker() -> anyhow::Result<()>
{
    init_logs();
    // Left retained before the agent connects: larger than it reads. In MQTT 5 the broker
    // knows the agent's Maximum Packet Size and keeps it to itself.
    let set = format!("{BASE}/config/set");
    let mut rig = Rig::start("5", Some((&set, oversized()))).await?;
    let port = rig.broker.port;

    // config/set as a request: the answer comes on the response topic too.
    let doc = json!({"version": 1, "token": "rr-1", "cameras": {"cam": {"encoder": {"bitrate_kbps": 800}}}});
    let answer = request(port, &set, "ops/replies/a", &doc.to_string()).await?;
    assert_eq!(
        (answer["token"].as_str(), answer["version"].as_u64()),
        (Some("rr-1"), Some(1)),
        "{answer}"
    );
    assert_eq!(answer["applied"]["reconfigure"], json!(["cam"]), "{answer}");
    let stale = json!({"version": 1, "token": "rr-2"}).to_string();
    let answer = request(port, &set, "ops/replies/b", &stale).await?;
    assert_eq!(
        (answer["token"].as_str(), answer["path"].as_str()),
        (Some("rr-2"), Some("version")),
        "{answer}"
    );

    // A command as a request: correlation data back, the outcome as a user property.
    let [correlation, properties, content_type, payload] =
        rig.request_with_properties("bitrate", "ops/replies/c", "c-42", "900", false)?;
    assert_eq!(correlation, "c-42");
    assert_eq!(properties, "result:accepted");
    assert_eq!(content_type, "application/json");
    let payload: Value = serde_json::from_str(&payload)?;
    assert_eq!(
        (payload["feature"].as_str(), payload["state"].as_str()),
        (Some("bitrate"), Some("900")),
        "{payload}"
    );
    let [correlation, properties, _, payload] =
        rig.request_with_properties("fps", "ops/replies/d", "c-43", "fast", false)?;
    assert_eq!(
        (correlation.as_str(), properties.as_str()),
        ("c-43", "result:rejected")
    );
    assert!(payload.contains("reason"), "{payload}");
    // A snapshot as a request: the JPEG itself is the answer.
    let [correlation, properties, content_type, length] =
        rig.request_with_properties("snapshot", "ops/replies/e", "c-44", "", true)?;
    assert_eq!(
        (correlation.as_str(), properties.as_str()),
        ("c-44", "result:accepted")
    );
    assert_eq!(content_type, "image/jpeg");
    assert!(length.parse::<usize>()? > 500, "a {length}-byte JPEG");

    // A command published retained while the agent listens: seen as retained, refused.
    let streaming = format!("{BASE}/cam/streaming/set");
    rig.watch.publish(&streaming, "OFF", true).await?;
    let (_, r, _) = rig
        .watch
        .wait_for(BOUND, |t, _| t == format!("{BASE}/cam/streaming/rejected"))
        .await?;
    assert!(r.contains("retained"), "{r}");
    rig.watch.publish(&streaming, "", true).await?; // deleted, as operators do
    assert!(
        rig.agent.camera("cam").is_some(),
        "the camera still streams"
    );

    // All of it on the first connection: the oversized message never cost one.
    assert_eq!(rig.connections(), 1, "reconnections");
    rig.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_works_with_the_limits_the_docs_name() -> anyhow::Result<()> {
    init_logs();
    let mut rig = Rig::start("3.1.1", None).await?;
    let set = format!("{BASE}/config/set");
    let doc =
        json!({"version": 1, "token": "t1", "cameras": {"cam": {"fragment_duration_ms": 2000}}});
    let answer = rig
        .watch
        .ask(&set, &doc, &format!("{BASE}/config/accepted"), BOUND)
        .await?;
    assert_eq!(answer["token"], "t1");

    // The broker clears the retain flag of what it forwards live: the agent acts on it.
    let streaming = format!("{BASE}/cam/streaming/set");
    rig.watch.publish(&streaming, "OFF", true).await?;
    rig.watch
        .wait_for(BOUND, |t, p| {
            t == format!("{BASE}/cam/streaming/state") && p == "OFF"
        })
        .await?;
    rig.watch.publish(&streaming, "", true).await?;

    // An oversized retained message ends the connection, again on every reconnect, until
    // it is deleted at the broker; then the agent connects and is commanded again.
    rig.watch.publish(&set, oversized(), true).await?;
    tokio::time::timeout(BOUND, async {
        while rig.connections() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("the agent was never dropped for the oversized message")?;
    rig.watch.publish(&set, "", true).await?;
    // The agent may be between attempts (a clean session hears nothing then): ask again
    // until it answers.
    let doc =
        json!({"version": 2, "token": "t2", "cameras": {"cam": {"fragment_duration_ms": 1000}}});
    let accepted = format!("{BASE}/config/accepted");
    let answer = tokio::time::timeout(BOUND, async {
        loop {
            match rig
                .watch
                .ask(&set, &doc, &accepted, Duration::from_secs(2))
                .await
            {
                Ok(answer) => return answer,
                Err(_) => continue,
            }
        }
    })
    .await
    .context("the agent never answered once the message was deleted")?;
    assert_eq!(answer["token"], "t2");
    rig.stop().await
}
