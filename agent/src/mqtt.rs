//! MQTT health: the agent's availability and per-camera stats on a broker, in the topic
//! layout Frigate users know (see docs/agent.md, "MQTT"):
//!
//! ```text
//! <prefix>/<device>/available   retained: "online" / "offline" (last will) / "stopped" (clean exit)
//! <prefix>/<device>/stats       every stats_interval_secs: {"device", "time", "cameras": [...]}
//! ```
//!
//! It only reports; nothing calls into it. The broker being unreachable never affects
//! streaming: publishes are dropped while disconnected, and the connection is retried with
//! backoff; on every (re)connect the availability is published again. Configuration and
//! commands over MQTT are still to come.

use std::time::Duration;

use kvs_edge_config::agent::MqttConfig;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::metrics::{CameraMetrics, Snapshot};
use crate::timeline::WallMs;

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub available: String,
    pub stats: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Topics {
        Topics {
            available: format!("{prefix}/{device}/available"),
            stats: format!("{prefix}/{device}/stats"),
        }
    }
}

/// The stats message: every camera's counters (named as in Prometheus).
pub fn stats_payload(device: &str, cameras: &[CameraMetrics]) -> String {
    let cams: Vec<serde_json::Value> = cameras.iter().map(|c| Snapshot::of(c).json()).collect();
    serde_json::json!({ "device": device, "time": WallMs::now().0, "cameras": cams }).to_string()
}

/// What the event-loop task reports.
enum Link {
    Up,
    Down(String),
    /// The DISCONNECT went out (after a clean stop).
    Closed,
}

/// Drives rumqttc's event loop in its own task (its `poll` is never cancelled), reconnecting
/// with backoff and reporting connection changes.
async fn drive(mut events: EventLoop, link: mpsc::UnboundedSender<Link>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                if link.send(Link::Up).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = link.send(Link::Closed);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if link.send(Link::Down(e.to_string())).is_err() {
                    return;
                }
                // The next poll reconnects; waiting first keeps a dead broker from a hot loop.
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Runs the MQTT reporting until `shutdown`; then publishes "stopped" and disconnects.
pub async fn run(
    cfg: MqttConfig,
    device: String,
    cameras: Vec<CameraMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let topics = Topics::new(&cfg.prefix, &device);
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("kvs-edge-{device}"));
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs));
    opts.set_last_will(LastWill::new(
        &topics.available,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let (client, events) = AsyncClient::new(opts, 64);
    let (link_tx, mut link) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(events, link_tx));
    let mut stats = tokio::time::interval(Duration::from_secs(cfg.stats_interval_secs));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut connected = false;
    loop {
        tokio::select! {
            change = link.recv() => match change {
                Some(Link::Up) => {
                    info!(broker = %cfg.host, port = cfg.port, "MQTT connected");
                    connected = true;
                    // On every (re)connect: the broker may have lost the retained state.
                    let _ = client.try_publish(&topics.available, QoS::AtLeastOnce, true, "online");
                }
                Some(Link::Down(e)) => {
                    if connected {
                        warn!(broker = %cfg.host, port = cfg.port, "MQTT connection lost: {e}");
                    } else {
                        debug!(broker = %cfg.host, port = cfg.port, "MQTT: {e}");
                    }
                    connected = false;
                }
                Some(Link::Closed) | None => break,
            },
            _ = stats.tick() => {
                if connected {
                    // Stats are periodic: one lost to a full queue is replaced by the next.
                    let _ = client.try_publish(&topics.stats, QoS::AtMostOnce, false, stats_payload(&device, &cameras));
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    if connected {
        let _ = client.try_publish(&topics.available, QoS::AtLeastOnce, true, "stopped");
        let _ = client.try_disconnect();
        // Wait (bounded) until the DISCONNECT, and so "stopped" before it, went out.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(l) = link.recv().await {
                if matches!(l, Link::Closed) {
                    return;
                }
            }
        })
        .await;
    }
    driver.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_prefix_and_device() {
        let t = Topics::new("kvs-edge", "garage-pi");
        assert_eq!(t.available, "kvs-edge/garage-pi/available");
        assert_eq!(t.stats, "kvs-edge/garage-pi/stats");
    }
}
