//! The connection to the broker, in MQTT 5 (the default) or 3.1.1: rumqttc's two clients
//! behind one [`Client`], the event loop driven in its own task with reconnect backoff, and
//! incoming messages as [`Message`]s whichever protocol carried them.
//!
//! What MQTT 5 adds here, and 3.1.1 cannot do:
//! - subscriptions with "retain as published", so a retained command is seen as retained
//!   even when it arrives while the agent is connected;
//! - the Maximum Packet Size in CONNECT, so the broker drops what the agent would not read
//!   instead of the connection ending on it (and the broker's own maximum, from CONNACK, is
//!   checked before sending rather than failing the connection);
//! - request/response: a request's response topic and correlation data ([`Reply`]);
//! - reason codes and strings on refused subscriptions, publishes and disconnects, logged.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use kvs_edge_config::agent::{MqttConfig, MqttProtocol};
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Topics;
use crate::backoff::Backoff;

/// The largest packet the agent reads. MQTT 5 tells the broker, which then never sends a
/// larger one (it drops that message for this client); in 3.1.1 a larger packet ends the
/// connection. Documents and commands have their own, smaller limits and are answered
/// with a rejection.
pub const MAX_INCOMING: usize = 1024 * 1024;
/// Snapshots are the largest messages we send (unless the broker allows less).
const MAX_OUTGOING: usize = 8 * 1024 * 1024;
/// Room for a PUBLISH's fixed header, packet id and properties around topic and payload.
const PUBLISH_OVERHEAD: usize = 64;

/// A message from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// It was published retained. MQTT 3.1.1 only says so for messages delivered on
    /// subscribing: brokers clear the flag on what they forward live.
    pub retain: bool,
    /// MQTT 5 request/response: where to send the answer as well.
    pub reply: Option<Reply>,
}

/// A request's response topic and correlation data (MQTT 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub topic: String,
    pub correlation: Option<Bytes>,
}

impl Reply {
    /// The reply a publish asks for; none for a topic one may not publish to (a wildcard
    /// would make the broker end the connection).
    fn of(topic: &str, properties: Option<&p5::PublishProperties>) -> Option<Reply> {
        let props = properties?;
        let reply = props.response_topic.as_deref()?;
        if reply.is_empty() || reply.contains(['+', '#', '\0']) {
            warn!(
                topic,
                response_topic = reply,
                "not answering on a response topic with wildcards"
            );
            return None;
        }
        Some(Reply {
            topic: reply.to_string(),
            correlation: props.correlation_data.clone(),
        })
    }
}

/// What the connection reports.
#[derive(Debug)]
pub enum Event {
    Up,
    Down(String),
    Message(Message),
    /// The DISCONNECT went out (after a clean stop).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

/// Publishes and subscribes on the connection; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Inner,
    /// The largest packet the broker takes (its CONNACK's Maximum Packet Size, MQTT 5).
    max_outgoing: Arc<AtomicUsize>,
}

#[derive(Clone)]
enum Inner {
    V5(v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

impl Client {
    pub fn publish(
        &self,
        topic: &str,
        qos: Qos,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> anyhow::Result<()> {
        let payload = payload.into();
        self.fits(topic, payload.len())?;
        match &self.inner {
            Inner::V5(c) => c.try_publish(topic, qos.v5(), retain, payload)?,
            Inner::V311(c) => c.try_publish(topic, qos.v311(), retain, payload)?,
        }
        Ok(())
    }

    /// Answers a request on its response topic, with its correlation data, the content
    /// type and a `result` user property (`accepted`, `rejected`, a feature's `state`), so
    /// request/response tools need not parse the payload to know the outcome.
    pub fn answer(
        &self,
        reply: &Reply,
        result: &str,
        content_type: &str,
        payload: impl Into<Vec<u8>>,
    ) -> anyhow::Result<()> {
        let Inner::V5(c) = &self.inner else {
            // 3.1.1 has no response topics: there is never a Reply to answer.
            return Ok(());
        };
        let payload = payload.into();
        self.fits(&reply.topic, payload.len())?;
        let properties = p5::PublishProperties {
            correlation_data: reply.correlation.clone(),
            content_type: Some(content_type.to_string()),
            user_properties: vec![("result".into(), result.into())],
            ..Default::default()
        };
        c.try_publish_with_properties(
            reply.topic.as_str(),
            Qos::AtLeastOnce.v5(),
            false,
            payload,
            properties,
        )?;
        Ok(())
    }

    /// Subscribes at QoS 1; in MQTT 5 with "retain as published".
    pub fn subscribe(&self, filters: &[String]) -> anyhow::Result<()> {
        match &self.inner {
            Inner::V5(c) => c.try_subscribe_many(filters.iter().map(|f| {
                let mut filter = p5::Filter::new(f, Qos::AtLeastOnce.v5());
                filter.preserve_retain = true;
                filter
            }))?,
            Inner::V311(c) => c.try_subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), Qos::AtLeastOnce.v311())),
            )?,
        }
        Ok(())
    }

    pub fn disconnect(&self) -> anyhow::Result<()> {
        match &self.inner {
            Inner::V5(c) => c.try_disconnect()?,
            Inner::V311(c) => c.try_disconnect()?,
        }
        Ok(())
    }

    fn fits(&self, topic: &str, payload: usize) -> anyhow::Result<()> {
        let max = self.max_outgoing.load(Ordering::Relaxed);
        let size = topic.len() + payload + PUBLISH_OVERHEAD;
        if size > max {
            bail!("{payload} bytes is more than the broker accepts in one message ({max} bytes)");
        }
        Ok(())
    }
}

impl Qos {
    fn v5(self) -> v5::mqttbytes::QoS {
        match self {
            Qos::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
            Qos::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        }
    }

    fn v311(self) -> rumqttc::QoS {
        match self {
            Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        }
    }
}

/// Connects (in the background: the first attempt is made by the driver task) and returns
/// the client, the connection's events, and the driver task.
pub fn start(
    cfg: &MqttConfig,
    device: &str,
) -> anyhow::Result<(Client, mpsc::UnboundedReceiver<Event>, JoinHandle<()>)> {
    let topics = Topics::new(&cfg.prefix, device);
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("kvs-edge-{device}"));
    let transport = transport(cfg)?;
    let keep_alive = Duration::from_secs(cfg.keep_alive_secs);
    let max_outgoing = Arc::new(AtomicUsize::new(MAX_OUTGOING));
    let (tx, rx) = mpsc::unbounded_channel();
    let (inner, driver) = match cfg.protocol {
        MqttProtocol::V5 => {
            let mut opts = v5::MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
            opts.set_keep_alive(keep_alive);
            opts.set_max_packet_size(Some(MAX_INCOMING as u32));
            opts.set_last_will(p5::LastWill::new(
                &topics.available,
                "offline",
                Qos::AtLeastOnce.v5(),
                true,
                None,
            ));
            opts.set_transport(transport);
            let (client, events) = v5::AsyncClient::new(opts, 256);
            let driver = tokio::spawn(drive(V5Loop(events), tx, max_outgoing.clone()));
            (Inner::V5(client), driver)
        }
        MqttProtocol::V311 => {
            let mut opts = rumqttc::MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
            opts.set_keep_alive(keep_alive);
            opts.set_max_packet_size(MAX_INCOMING, MAX_OUTGOING);
            opts.set_last_will(rumqttc::LastWill::new(
                &topics.available,
                "offline",
                Qos::AtLeastOnce.v311(),
                true,
            ));
            opts.set_transport(transport);
            let (client, events) = rumqttc::AsyncClient::new(opts, 256);
            let driver = tokio::spawn(drive(V311Loop(events), tx, max_outgoing.clone()));
            (Inner::V311(client), driver)
        }
    };
    Ok((
        Client {
            inner,
            max_outgoing,
        },
        rx,
        driver,
    ))
}

/// TCP, or TLS with server verification (and a client certificate when configured).
fn transport(cfg: &MqttConfig) -> anyhow::Result<Transport> {
    let Some(tls) = &cfg.tls else {
        return Ok(Transport::Tcp);
    };
    let identity = tls.cert_path.as_deref().zip(tls.key_path.as_deref());
    let config = crate::tls::client_config(tls.ca_path.as_deref(), identity).context("mqtt.tls")?;
    let mut config = (*config).clone();
    config.alpn_protocols = tls
        .alpn_for(cfg.port)
        .into_iter()
        .map(String::into_bytes)
        .collect();
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

/// One step of an event loop, either protocol's.
enum Step {
    /// CONNACK, with the broker's Maximum Packet Size if it set one.
    Connected(Option<usize>),
    Message(Message),
    /// Our DISCONNECT went out.
    Disconnecting,
    Other,
}

trait Loop: Send + 'static {
    fn step(&mut self) -> impl Future<Output = Result<Step, String>> + Send;
}

struct V5Loop(v5::EventLoop);

impl Loop for V5Loop {
    async fn step(&mut self) -> Result<Step, String> {
        use p5::Packet;
        let event = self.0.poll().await.map_err(|e| e.to_string())?;
        Ok(match event {
            v5::Event::Incoming(Packet::ConnAck(ack)) => Step::Connected(
                ack.properties
                    .and_then(|p| p.max_packet_size)
                    .map(|m| m as usize),
            ),
            v5::Event::Incoming(Packet::Publish(p)) => {
                let Ok(topic) = String::from_utf8(p.topic.to_vec()) else {
                    return Ok(Step::Other);
                };
                let reply = Reply::of(&topic, p.properties.as_ref());
                Step::Message(Message {
                    topic,
                    payload: p.payload,
                    retain: p.retain,
                    reply,
                })
            }
            v5::Event::Incoming(Packet::SubAck(ack)) => {
                let refused: Vec<String> = ack
                    .return_codes
                    .iter()
                    .filter(|c| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                    .map(|c| format!("{c:?}"))
                    .collect();
                if !refused.is_empty() {
                    let why = ack.properties.and_then(|p| p.reason_string);
                    warn!(reason = ?why, "MQTT: the broker refused a subscription: {refused:?}");
                }
                Step::Other
            }
            v5::Event::Incoming(Packet::PubAck(ack))
                if !matches!(
                    ack.reason,
                    p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers
                ) =>
            {
                let why = ack.properties.and_then(|p| p.reason_string);
                warn!(reason = ?why, "MQTT: the broker refused a message: {:?}", ack.reason);
                Step::Other
            }
            v5::Event::Incoming(Packet::Disconnect(d)) => {
                let why = d.properties.and_then(|p| p.reason_string);
                warn!(reason = ?why, "MQTT: the broker disconnects: {:?}", d.reason_code);
                Step::Other
            }
            v5::Event::Outgoing(Outgoing::Disconnect) => Step::Disconnecting,
            _ => Step::Other,
        })
    }
}

struct V311Loop(rumqttc::EventLoop);

impl Loop for V311Loop {
    async fn step(&mut self) -> Result<Step, String> {
        use rumqttc::{ConnectionError, Error, Packet, StateError};
        let event = match self.0.poll().await {
            Ok(e) => e,
            Err(ConnectionError::MqttState(StateError::Deserialization(
                Error::PayloadSizeLimitExceeded(n),
            ))) => {
                return Err(format!(
                    "a {n}-byte message arrived, over the {MAX_INCOMING}-byte limit; MQTT 3.1.1 \
                     cannot refuse it, so the connection ends (if it is retained, delete it \
                     at the broker, or use MQTT 5)"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        Ok(match event {
            rumqttc::Event::Incoming(Packet::ConnAck(_)) => Step::Connected(None),
            rumqttc::Event::Incoming(Packet::Publish(p)) => Step::Message(Message {
                topic: p.topic,
                payload: p.payload,
                retain: p.retain,
                reply: None,
            }),
            rumqttc::Event::Outgoing(Outgoing::Disconnect) => Step::Disconnecting,
            _ => Step::Other,
        })
    }
}

/// A connection must stay up this long before its loss counts as a fresh failure: a broker
/// that drops the agent right after connecting (a retained message it cannot read, a
/// duplicate client id) is then retried with growing waits, not in a tight loop.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// The reconnect policy: backoff that resets only once a connection has proven stable.
struct Reconnect {
    backoff: Backoff,
    up_since: Option<Instant>,
}

impl Reconnect {
    fn new() -> Reconnect {
        Reconnect {
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            up_since: None,
        }
    }

    fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The wait before the next attempt, after the connection (or an attempt) failed.
    fn lost(&mut self, now: Instant) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|since| now.duration_since(since) >= STABLE_AFTER)
        {
            self.backoff.reset();
        }
        self.backoff.next_delay()
    }
}

/// Drives an event loop (its `poll` is never cancelled), reconnecting with backoff and
/// reporting connection changes and incoming messages.
async fn drive(mut events: impl Loop, link: mpsc::UnboundedSender<Event>, max: Arc<AtomicUsize>) {
    let mut reconnect = Reconnect::new();
    loop {
        let report = match events.step().await {
            Ok(Step::Connected(broker_max)) => {
                reconnect.connected(Instant::now());
                let m = broker_max.map_or(MAX_OUTGOING, |b| b.min(MAX_OUTGOING));
                if m < MAX_OUTGOING {
                    info!("MQTT: the broker takes messages up to {m} bytes");
                }
                max.store(m, Ordering::Relaxed);
                Event::Up
            }
            Ok(Step::Message(m)) => Event::Message(m),
            Ok(Step::Disconnecting) => {
                // Queued is not sent: poll on until the broker closes the connection, so the
                // DISCONNECT (and what precedes it) really went out and no will fires.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while events.step().await.is_ok() {}
                })
                .await;
                let _ = link.send(Event::Closed);
                return;
            }
            Ok(Step::Other) => continue,
            Err(e) => {
                if link.send(Event::Down(e)).is_err() {
                    return;
                }
                // The next poll reconnects; waiting first keeps a dead broker (or one that
                // drops every fresh connection) from a hot loop.
                tokio::time::sleep(reconnect.lost(Instant::now())).await;
                continue;
            }
        };
        if link.send(report).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_until_a_connection_proves_stable() {
        let t0 = Instant::now();
        let mut r = Reconnect::new();
        // Dropped a second after every connection (a retained message it cannot read):
        // the waits grow to the cap instead of staying at the first one.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            r.connected(now);
            now += Duration::from_secs(1);
            let wait = r.lost(now);
            waits.push(wait);
            now += wait;
        }
        assert!(waits[0] <= Duration::from_millis(500), "{waits:?}");
        assert!(waits[9] >= Duration::from_secs(15), "{waits:?}");
        // A connection that stayed up a while starts the waits over.
        r.connected(now);
        let wait = r.lost(now + STABLE_AFTER);
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
    }

    #[test]
    fn replies_go_only_to_topics_one_may_publish_to() {
        let props = |topic: &str| p5::PublishProperties {
            response_topic: Some(topic.into()),
            correlation_data: Some(Bytes::from_static(b"c-1")),
            ..Default::default()
        };
        assert_eq!(
            Reply::of("t", Some(&props("ops/replies/7"))),
            Some(Reply {
                topic: "ops/replies/7".into(),
                correlation: Some(Bytes::from_static(b"c-1"))
            })
        );
        for bad in ["", "ops/+/x", "ops/#", "a\0b"] {
            assert_eq!(Reply::of("t", Some(&props(bad))), None, "{bad:?}");
        }
        assert_eq!(Reply::of("t", None), None);
        assert_eq!(
            Reply::of("t", Some(&p5::PublishProperties::default())),
            None
        );
    }

    #[tokio::test]
    async fn messages_over_the_brokers_limit_are_refused_before_sending() {
        let cfg: MqttConfig =
            serde_json::from_value(serde_json::json!({"host": "127.0.0.1", "port": 9})).unwrap();
        let (client, _events, driver) = start(&cfg, "d").unwrap();
        client.max_outgoing.store(1000, Ordering::Relaxed);
        let e = client
            .publish("t", Qos::AtLeastOnce, false, vec![0; 2000])
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("more than the broker accepts in one message (1000 bytes)"),
            "{e}"
        );
        client
            .publish("t", Qos::AtLeastOnce, false, vec![0; 100])
            .unwrap();
        driver.abort();
    }
}
