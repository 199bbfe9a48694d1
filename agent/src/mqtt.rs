//! MQTT: health, configuration and commands on a broker (mosquitto, AWS IoT Core), in the
//! topic layout Frigate users know. Under `<prefix>/<device>/` (see docs/mqtt.md):
//!
//! ```text
//! available                 retained  online / offline (last will) / stopped (clean exit)
//! stats                               per-camera counters every stats_interval_secs
//! events                              alarms: {"type": new|update|end, "id", …}
//! config/set                in        a JSON document {version, token, …} → accepted|rejected
//! config/state              retained  the effective configuration (secrets redacted), its version
//! config/accepted|rejected            {token, version, …}: the answer to each config/set
//! <camera>/<feature>/set    in        streaming, bitrate, resolution, fps, fragment_duration,
//!                                     alarm, snapshot (never act on retained commands)
//! <camera>/<feature>/state  retained  the feature's value after the command
//! <camera>/<feature>/rejected         {token, reason}
//! <camera>/status           retained  {"state": online|offline|disabled, "quality", …}
//! <camera>/snapshot                   a JPEG of the latest keyframe
//! ```
//!
//! With `[mqtt.shadow]`, the desired configuration also comes from an AWS IoT named shadow
//! and is reported back after it is applied. The broker being unreachable never affects
//! streaming: publishes are dropped while disconnected, the connection is retried with
//! backoff, and everything retained is republished on every (re)connect.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_config::AgentConfig;
use kvs_edge_config::agent::MqttConfig;
use kvs_edge_config::remote;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::camera::CameraCommand;
use crate::control::{self, Alarm, Command, Plan};
use crate::credentials::CredentialSource;
use crate::metrics::{CameraMetrics, Registry, Snapshot};
use crate::runner::Control;
use crate::timeline::WallMs;

/// Incoming packets larger than this end the connection (rumqttc's limit); documents and
/// commands have their own, smaller limits and are answered with a rejection.
const MAX_INCOMING: usize = 1024 * 1024;
/// Snapshots are the largest messages we send.
const MAX_OUTGOING: usize = 8 * 1024 * 1024;

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
    pub available: String,
    pub stats: String,
    pub events: String,
    pub config_set: String,
    pub config_state: String,
    pub config_accepted: String,
    pub config_rejected: String,
    /// `<base>/+/+/set`: every camera's commands.
    pub commands: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Topics {
        let base = format!("{prefix}/{device}");
        Topics {
            available: format!("{base}/available"),
            stats: format!("{base}/stats"),
            events: format!("{base}/events"),
            config_set: format!("{base}/config/set"),
            config_state: format!("{base}/config/state"),
            config_accepted: format!("{base}/config/accepted"),
            config_rejected: format!("{base}/config/rejected"),
            commands: format!("{base}/+/+/set"),
            base,
        }
    }

    /// `<base>/<camera>/<leaf>`.
    pub fn camera(&self, camera: &str, leaf: &str) -> String {
        format!("{}/{camera}/{leaf}", self.base)
    }

    /// (camera, feature) of a command topic.
    pub fn command<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let rest = rest.strip_suffix("/set")?;
        let (camera, feature) = rest.split_once('/')?;
        (!camera.is_empty() && !feature.contains('/')).then_some((camera, feature))
    }
}

/// An AWS IoT named shadow's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowTopics {
    pub get: String,
    pub get_accepted: String,
    pub get_rejected: String,
    pub update: String,
    pub update_delta: String,
    pub update_rejected: String,
}

impl ShadowTopics {
    pub fn new(thing: &str, name: &str) -> ShadowTopics {
        let base = format!("$aws/things/{thing}/shadow/name/{name}");
        ShadowTopics {
            get: format!("{base}/get"),
            get_accepted: format!("{base}/get/accepted"),
            get_rejected: format!("{base}/get/rejected"),
            update: format!("{base}/update"),
            update_delta: format!("{base}/update/delta"),
            update_rejected: format!("{base}/update/rejected"),
        }
    }
}

/// Frame and byte counts per camera at the previous stats message, for rates.
type Rates = HashMap<String, (Instant, u64, u64)>;

/// The stats message: every camera's counters (named as in Prometheus), its measured frame
/// rate and upload bitrate since the previous message, and the credentials' expiry.
pub fn stats_payload(
    device: &str,
    cameras: &[CameraMetrics],
    credentials: &CredentialSource,
    rates: &mut Rates,
) -> String {
    let now = Instant::now();
    let cams: Vec<Value> = cameras
        .iter()
        .map(|c| {
            let mut v = Snapshot::of(c).json();
            let frames = c.camera_stats.capture.frames.load(Ordering::Relaxed);
            let bytes = c.upload_stats.bytes_sent.load(Ordering::Relaxed);
            if let Some((at, f0, b0)) = rates.insert(c.camera.clone(), (now, frames, bytes)) {
                let secs = now.duration_since(at).as_secs_f64().max(0.001);
                v["fps"] = json!(((frames.saturating_sub(f0)) as f64 / secs * 10.0).round() / 10.0);
                v["bitrate_kbps"] =
                    json!((bytes.saturating_sub(b0) as f64 * 8.0 / 1000.0 / secs).round());
            }
            v
        })
        .collect();
    rates.retain(|name, _| cameras.iter().any(|c| &c.camera == name));
    json!({
        "device": device,
        "time": WallMs::now().0,
        "credentials": {"source": credentials.kind(), "expires_in_s": credentials.expires_in_secs()},
        "cameras": cams,
    })
    .to_string()
}

/// What the agent's MQTT side starts from and acts through.
pub struct Context {
    /// The effective configuration and its version.
    pub config: AgentConfig,
    pub version: u64,
    pub control: Control,
    pub registry: Registry,
    pub credentials: Arc<CredentialSource>,
    /// The connection's state, for `/metrics`.
    pub link: Arc<LinkStats>,
}

/// Whether the agent is connected to its broker, and how often it connected: what the
/// `kvs_edge_mqtt_*` metrics export (a device that cannot be commanded is worth an alert).
#[derive(Debug, Default)]
pub struct LinkStats {
    pub connected: std::sync::atomic::AtomicBool,
    pub connections: std::sync::atomic::AtomicU64,
}

impl LinkStats {
    fn set(&self, up: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if up && !self.connected.swap(true, Relaxed) {
            self.connections.fetch_add(1, Relaxed);
        } else if !up {
            self.connected.store(false, Relaxed);
        }
    }
}

/// What the event-loop task reports.
enum Link {
    Up,
    Down(String),
    Message(Publish),
    /// The DISCONNECT went out (after a clean stop).
    Closed,
}

/// Drives rumqttc's event loop in its own task (its `poll` is never cancelled), reconnecting
/// with backoff and reporting connection changes and incoming messages.
/// A connection must stay up this long before its loss counts as a fresh failure: a broker
/// that drops the agent right after connecting (a retained message it cannot read, a
/// duplicate client id) is then retried with growing waits, not in a tight loop.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// The reconnect policy: backoff that resets only once a connection has proven stable.
struct Reconnect {
    backoff: Backoff,
    up_since: Option<std::time::Instant>,
}

impl Reconnect {
    fn new() -> Reconnect {
        Reconnect {
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            up_since: None,
        }
    }

    fn connected(&mut self, now: std::time::Instant) {
        self.up_since = Some(now);
    }

    /// The wait before the next attempt, after the connection (or an attempt) failed.
    fn lost(&mut self, now: std::time::Instant) -> Duration {
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

async fn drive(mut events: EventLoop, link: mpsc::UnboundedSender<Link>) {
    let mut reconnect = Reconnect::new();
    loop {
        let report = match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                reconnect.connected(std::time::Instant::now());
                Link::Up
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Link::Message(p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Queued is not sent: poll on until the broker closes the connection, so the
                // DISCONNECT (and what precedes it) really went out and no will fires.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while events.poll().await.is_ok() {}
                })
                .await;
                let _ = link.send(Link::Closed);
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                if link.send(Link::Down(e.to_string())).is_err() {
                    return;
                }
                // The next poll reconnects; waiting first keeps a dead broker (or one that
                // drops every fresh connection) from a hot loop.
                tokio::time::sleep(reconnect.lost(std::time::Instant::now())).await;
                continue;
            }
        };
        if link.send(report).is_err() {
            return;
        }
    }
}

/// The client options: identity, last will, limits and transport (TLS when configured).
pub fn options(cfg: &MqttConfig, device: &str) -> Result<MqttOptions, String> {
    let topics = Topics::new(&cfg.prefix, device);
    let client_id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("kvs-edge-{device}"));
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs));
    opts.set_max_packet_size(MAX_INCOMING, MAX_OUTGOING);
    opts.set_last_will(LastWill::new(
        &topics.available,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(tls) = &cfg.tls {
        let identity = tls.cert_path.as_deref().zip(tls.key_path.as_deref());
        let config = crate::tls::client_config(tls.ca_path.as_deref(), identity)
            .map_err(|e| format!("mqtt.tls: {e}"))?;
        let mut config = (*config).clone();
        config.alpn_protocols = tls
            .alpn_for(cfg.port)
            .into_iter()
            .map(String::into_bytes)
            .collect();
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(opts)
}

/// The MQTT side of a running agent.
struct Agent {
    cfg: MqttConfig,
    topics: Topics,
    shadow: Option<ShadowTopics>,
    client: AsyncClient,
    ctx: Context,
    connected: bool,
    /// Active alarms by (camera, id).
    alarms: HashMap<(String, String), Alarm>,
    /// The last retained status per camera, to publish only changes.
    statuses: HashMap<String, Value>,
    /// fragments_persisted per camera, and when it last grew.
    persisted: HashMap<String, (u64, Instant)>,
    /// What the shadow holds as reported (to send only differences, nulls for removals).
    shadow_reported: Value,
    shadow_version: u64,
    rates: Rates,
}

/// Runs the MQTT side until `shutdown`; then publishes "stopped" and disconnects.
pub async fn run(cfg: MqttConfig, ctx: Context, mut shutdown: watch::Receiver<bool>) {
    let opts = match options(&cfg, &ctx.config.device_id) {
        Ok(o) => o,
        Err(e) => {
            error!("MQTT disabled: {e}");
            return;
        }
    };
    let (client, events) = AsyncClient::new(opts, 256);
    let (link_tx, mut link) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(events, link_tx));
    let mut stats = tokio::time::interval(Duration::from_secs(cfg.stats_interval_secs));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut agent = Agent {
        topics: Topics::new(&cfg.prefix, &ctx.config.device_id),
        shadow: cfg
            .shadow
            .as_ref()
            .map(|s| ShadowTopics::new(&s.thing_name, &s.name)),
        cfg,
        client,
        ctx,
        connected: false,
        alarms: HashMap::new(),
        statuses: HashMap::new(),
        persisted: HashMap::new(),
        shadow_reported: Value::Null,
        shadow_version: 0,
        rates: HashMap::new(),
    };
    loop {
        let next_alarm_end = agent.alarms.values().map(|a| a.end_ms).min();
        tokio::select! {
            change = link.recv() => match change {
                Some(Link::Up) => agent.connected().await,
                Some(Link::Down(e)) => {
                    if agent.connected {
                        warn!(broker = %agent.cfg.host, port = agent.cfg.port, "MQTT connection lost: {e}");
                    } else {
                        debug!(broker = %agent.cfg.host, port = agent.cfg.port, "MQTT: {e}");
                    }
                    agent.connected = false;
                    agent.ctx.link.set(false);
                }
                Some(Link::Message(p)) => agent.message(p).await,
                Some(Link::Closed) | None => break,
            },
            _ = stats.tick() => agent.tick(),
            _ = sleep_until_ms(next_alarm_end) => agent.end_alarms(),
            _ = shutdown.changed() => break,
        }
    }
    if agent.connected {
        agent.stopping();
        let _ = agent.client.try_disconnect();
        // Wait (bounded) until the DISCONNECT, and so everything before it, went out.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(l) = link.recv().await {
                if matches!(l, Link::Closed) {
                    return;
                }
            }
        })
        .await;
    }
    agent.ctx.link.set(false);
    driver.abort();
}

async fn sleep_until_ms(at_ms: Option<i64>) {
    match at_ms {
        Some(ms) => {
            let wait = (ms - WallMs::now().0).max(0) as u64;
            tokio::time::sleep_until(Instant::now() + Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

impl Agent {
    fn publish(&self, topic: &str, retain: bool, payload: impl Into<Vec<u8>>) {
        if !self.connected {
            return;
        }
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            warn!(topic, "MQTT publish dropped: {e}");
        }
    }

    /// On every (re)connect: subscribe (the session is clean) and republish everything
    /// retained, since the broker may have lost it.
    async fn connected(&mut self) {
        info!(broker = %self.cfg.host, port = self.cfg.port, "MQTT connected");
        self.connected = true;
        self.ctx.link.set(true);
        let mut filters = vec![self.topics.config_set.clone(), self.topics.commands.clone()];
        if let Some(s) = &self.shadow {
            filters.extend([
                s.update_delta.clone(),
                s.get_accepted.clone(),
                s.get_rejected.clone(),
                s.update_rejected.clone(),
            ]);
        }
        for f in filters {
            if let Err(e) = self.client.try_subscribe(&f, QoS::AtLeastOnce) {
                warn!(filter = %f, "MQTT subscribe failed: {e}");
            }
        }
        self.publish(&self.topics.available, true, "online");
        self.publish_config_state();
        let names: Vec<String> = self
            .ctx
            .config
            .cameras
            .iter()
            .map(|c| c.name.clone())
            .collect();
        for name in &names {
            self.publish_feature_states(name);
        }
        self.statuses.clear();
        self.publish_statuses();
        if let Some(s) = &self.shadow {
            // The answer (get/accepted) carries the desired state to apply.
            self.publish(&s.get.clone(), false, "{}");
        }
    }

    fn tick(&mut self) {
        if !self.connected {
            return;
        }
        // Stats are periodic: one lost to a full queue is replaced by the next.
        let payload = stats_payload(
            &self.ctx.config.device_id,
            &self.ctx.registry.cameras(),
            &self.ctx.credentials,
            &mut self.rates,
        );
        let _ = self
            .client
            .try_publish(&self.topics.stats, QoS::AtMostOnce, false, payload);
        self.publish_statuses();
    }

    /// Before a clean exit: cameras go offline and the device says "stopped".
    fn stopping(&mut self) {
        for cam in &self.ctx.config.cameras {
            let state = if cam.enabled { "offline" } else { "disabled" };
            self.publish(
                &self.topics.camera(&cam.name, "status"),
                true,
                json!({ "state": state }).to_string(),
            );
        }
        self.publish(&self.topics.available, true, "stopped");
    }

    async fn message(&mut self, p: Publish) {
        if p.topic == self.topics.config_set {
            self.config_set(&p.payload).await;
        } else if let Some((camera, feature)) = self.topics.command(&p.topic) {
            let (camera, feature) = (camera.to_string(), feature.to_string());
            if p.retain {
                // A retained command would act again on every reconnect: settings that
                // flip back after a restart are what this design exists to prevent.
                self.reject_command(
                    &camera,
                    &feature,
                    None,
                    "retained commands are ignored: publish commands without the retain flag",
                );
                return;
            }
            if p.payload.is_empty() && feature != "snapshot" {
                // How a retained message is deleted; nothing to do.
                return;
            }
            self.command(&camera, &feature, &p.payload).await;
        } else if let Some(s) = self.shadow.clone() {
            if p.topic == s.update_delta {
                self.shadow_delta(&p.payload).await;
            } else if p.topic == s.get_accepted {
                self.shadow_document(&p.payload).await;
            } else if p.topic == s.get_rejected || p.topic == s.update_rejected {
                warn!(topic = %p.topic, "shadow: {}", String::from_utf8_lossy(&p.payload));
            }
        }
    }

    /// `config/set`: validate, persist, apply, answer.
    async fn config_set(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            // How operators delete a retained message: nothing to apply, nothing to answer.
            info!("config/set: an empty message (a retained one being cleared): ignored");
            return;
        }
        match remote::handle_set(&self.ctx.config, self.ctx.version, payload) {
            Ok(accepted) => {
                match self
                    .commit(accepted.config, accepted.version, "config/set")
                    .await
                {
                    Ok(plan) => {
                        let answer = json!({
                            "token": accepted.token,
                            "version": accepted.version,
                            "applied": plan,
                        });
                        self.publish(&self.topics.config_accepted, false, answer.to_string());
                        self.report_to_shadow(None);
                    }
                    Err(reason) => self.publish(
                        &self.topics.config_rejected,
                        false,
                        json!({"token": accepted.token, "version": accepted.version, "path": "", "reason": reason})
                            .to_string(),
                    ),
                }
            }
            Err(r) => {
                info!(version = ?r.version, "config/set rejected: {r}");
                self.publish(
                    &self.topics.config_rejected,
                    false,
                    json!({"token": r.token, "version": r.version, "path": r.path, "reason": r.reason})
                        .to_string(),
                );
            }
        }
    }

    /// Persists `next` (write-rename), then applies it; on success it is the running
    /// configuration and `config/state` says so.
    async fn commit(&mut self, next: AgentConfig, version: u64, why: &str) -> Result<Plan, String> {
        let state_dir = next.state_dir.clone();
        let to_save = next.clone();
        let saved = tokio::task::spawn_blocking(move || {
            crate::persisted::save(&state_dir, version, &to_save, WallMs::now().0)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = saved {
            error!("not applying the {why} change: persisting it failed: {e}");
            return Err(format!(
                "could not persist the configuration in {}: {e}",
                self.ctx.config.state_dir.display()
            ));
        }
        let Some(plan) = self.ctx.control.apply(next.clone()).await else {
            return Err("the agent is shutting down".into());
        };
        let before = std::mem::replace(&mut self.ctx.config, next);
        self.ctx.version = version;
        info!(version, "{why}: configuration accepted");
        self.publish_config_state();
        for cam in &before.cameras {
            if !self.ctx.config.cameras.iter().any(|c| c.name == cam.name) {
                self.clear_camera(&cam.name);
            }
        }
        let changed: Vec<String> = self
            .ctx
            .config
            .cameras
            .iter()
            .filter(|c| before.cameras.iter().all(|b| b != *c))
            .map(|c| c.name.clone())
            .collect();
        for name in &changed {
            self.publish_feature_states(name);
            self.statuses.remove(name);
        }
        self.publish_statuses();
        Ok(plan)
    }

    async fn command(&mut self, camera: &str, feature: &str, payload: &[u8]) {
        let request =
            match control::parse(&self.ctx.config, camera, feature, payload, WallMs::now()) {
                Ok(r) => r,
                Err(refusal) => {
                    self.reject_command(camera, feature, refusal.token, &refusal.reason);
                    return;
                }
            };
        let token = request.token;
        match request.command {
            Command::Patch(patch) => {
                let next = match remote::apply_patch(&self.ctx.config, &patch) {
                    Ok(n) => n,
                    Err(e) => {
                        let reason = format!("{}: {}", e.path, e.message);
                        self.reject_command(camera, feature, token, &reason);
                        return;
                    }
                };
                let why = format!("{camera}/{feature}/set");
                match self.commit(next, self.ctx.version, &why).await {
                    Ok(_) => {
                        // The state topics are the answer; publish them even when unchanged.
                        self.publish_feature_states(camera);
                        self.report_to_shadow(None);
                    }
                    Err(reason) => self.reject_command(camera, feature, token, &reason),
                }
            }
            Command::Alarm(alarm) => {
                if !self
                    .ctx
                    .control
                    .command(camera, CameraCommand::Alarm(alarm.clone()))
                    .await
                {
                    self.reject_command(camera, feature, token, "the camera is not streaming");
                    return;
                }
                let key = (camera.to_string(), alarm.id.clone());
                let kind = match self.alarms.get(&key) {
                    Some(_) => "update",
                    None => "new",
                };
                self.alarms.insert(key, alarm.clone());
                self.event(kind, camera, &alarm);
            }
            Command::Snapshot => {
                let (tx, rx) = oneshot::channel();
                if !self
                    .ctx
                    .control
                    .command(camera, CameraCommand::Snapshot(tx))
                    .await
                {
                    self.reject_command(camera, feature, token, "the camera is not streaming");
                    return;
                }
                // Decoding takes a moment: answer from a task, keep handling messages.
                let (client, connected) = (self.client.clone(), self.connected);
                let topic = self.topics.camera(camera, "snapshot");
                let rejected = self.topics.camera(camera, "snapshot/rejected");
                tokio::spawn(async move {
                    let (topic, payload) =
                        match tokio::time::timeout(Duration::from_secs(20), rx).await {
                            Ok(Ok(Ok(jpeg))) => (topic, jpeg),
                            Ok(Ok(Err(e))) => (
                                rejected,
                                json!({"token": token, "reason": e.to_string()})
                                    .to_string()
                                    .into_bytes(),
                            ),
                            _ => (
                                rejected,
                                json!({"token": token, "reason": "no snapshot within 20 s"})
                                    .to_string()
                                    .into_bytes(),
                            ),
                        };
                    if connected {
                        let _ = client
                            .publish(topic, QoS::AtLeastOnce, false, payload)
                            .await;
                    }
                });
            }
        }
    }

    fn reject_command(&self, camera: &str, feature: &str, token: Option<String>, reason: &str) {
        info!(camera, feature, "command rejected: {reason}");
        // Keep the reply topic a single, wildcard-free level whatever arrived.
        let safe = |s: &str| !s.is_empty() && !s.contains(['+', '#', '/', '\0']);
        if !safe(camera) || !safe(feature) {
            return;
        }
        self.publish(
            &self.topics.camera(camera, &format!("{feature}/rejected")),
            false,
            json!({ "token": token, "reason": reason }).to_string(),
        );
    }

    fn event(&self, kind: &str, camera: &str, alarm: &Alarm) {
        let stream = self
            .ctx
            .config
            .cameras
            .iter()
            .find(|c| c.name == camera)
            .map(|c| c.stream_name.clone());
        let event = json!({
            "type": kind,
            "id": alarm.id,
            "camera": camera,
            "stream": stream,
            "label": alarm.label,
            "pre_s": alarm.pre_s,
            "post_s": alarm.post_s,
            "start_ms": alarm.start_ms,
            "end_ms": alarm.end_ms,
            "time": WallMs::now().0,
        });
        info!(camera, id = %alarm.id, "event {kind}");
        self.publish(&self.topics.events, false, event.to_string());
    }

    fn end_alarms(&mut self) {
        let now = WallMs::now().0;
        let ended: Vec<(String, String)> = self
            .alarms
            .iter()
            .filter(|(_, a)| a.end_ms <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(alarm) = self.alarms.remove(&key) {
                self.event("end", &key.0, &alarm);
            }
        }
    }

    fn publish_config_state(&self) {
        let mut state = remote::redacted(&self.ctx.config);
        state["version"] = json!(self.ctx.version);
        self.publish(&self.topics.config_state, true, state.to_string());
    }

    fn publish_feature_states(&self, camera: &str) {
        let Some(cam) = self.ctx.config.cameras.iter().find(|c| c.name == camera) else {
            return;
        };
        for (feature, value) in control::feature_states(cam) {
            self.publish(
                &self.topics.camera(camera, &format!("{feature}/state")),
                true,
                value,
            );
        }
    }

    /// A removed camera's retained topics are cleared (an empty retained message).
    fn clear_camera(&mut self, camera: &str) {
        for feature in control::FEATURES {
            self.publish(
                &self.topics.camera(camera, &format!("{feature}/state")),
                true,
                "",
            );
        }
        self.publish(&self.topics.camera(camera, "status"), true, "");
        self.statuses.remove(camera);
    }

    /// Each camera's retained status, published when it changes.
    fn publish_statuses(&mut self) {
        let running: HashMap<String, CameraMetrics> = self
            .ctx
            .registry
            .cameras()
            .into_iter()
            .map(|c| (c.camera.clone(), c))
            .collect();
        let cameras = self.ctx.config.cameras.clone();
        for cam in &cameras {
            let status = match running.get(&cam.name) {
                None if !cam.enabled => json!({ "state": "disabled" }),
                None => json!({ "state": "offline", "reason": "not running" }),
                Some(m) if m.camera_stats.failure.lock().is_ok_and(|f| f.is_some()) => {
                    let why = m
                        .camera_stats
                        .failure
                        .lock()
                        .map(|f| f.clone())
                        .ok()
                        .flatten();
                    json!({ "state": "failed", "reason": why })
                }
                Some(m) => {
                    let snap = Snapshot::of(m);
                    let persisted = m.upload_stats.delivered();
                    // Online: fragments reached KVS lately (within two stats intervals).
                    let window = Duration::from_secs(self.cfg.stats_interval_secs * 2)
                        .max(Duration::from_secs(10));
                    let now = Instant::now();
                    let entry = self.persisted.entry(cam.name.clone()).or_insert((0, now));
                    if persisted > entry.0 {
                        *entry = (persisted, now);
                    }
                    let online = entry.0 > 0 && now.duration_since(entry.1) < window;
                    let quality = match snap.oldest_age_s {
                        0..10 => "good",
                        10..60 => "degraded",
                        _ => "poor",
                    };
                    json!({
                        "state": if online { "online" } else { "offline" },
                        "quality": quality,
                        "backlog_fragments": snap.pending,
                        "backlog_age_s": snap.oldest_age_s,
                        "ack_latency_ms": m.upload_stats.last_ack_latency_ms.load(Ordering::Relaxed),
                    })
                }
            };
            // Compare what is stable: the state and quality (not the counters).
            let key = json!([status["state"], status["quality"]]);
            if self.statuses.get(&cam.name) != Some(&key) {
                self.publish(
                    &self.topics.camera(&cam.name, "status"),
                    true,
                    status.to_string(),
                );
                if self.connected {
                    self.statuses.insert(cam.name.clone(), key);
                }
            }
        }
    }

    /// `update/delta`: the desired fields that differ from what was reported.
    async fn shadow_delta(&mut self, payload: &[u8]) {
        let Ok(doc) = serde_json::from_slice::<Value>(payload) else {
            warn!("shadow delta is not JSON: ignored");
            return;
        };
        let version = doc["version"].as_u64().unwrap_or(0);
        if version != 0 && version <= self.shadow_version {
            debug!(version, "stale shadow delta ignored");
            return;
        }
        self.shadow_version = self.shadow_version.max(version);
        self.apply_shadow(&doc["state"], version, false).await;
    }

    /// `get/accepted`: the whole shadow; apply its desired state, learn what is reported.
    async fn shadow_document(&mut self, payload: &[u8]) {
        let Ok(doc) = serde_json::from_slice::<Value>(payload) else {
            warn!("shadow document is not JSON: ignored");
            return;
        };
        let version = doc["version"].as_u64().unwrap_or(0);
        self.shadow_version = self.shadow_version.max(version);
        self.shadow_reported = doc["state"]["reported"].clone();
        let desired = doc["state"]["desired"].clone();
        self.apply_shadow(&desired, version, true).await;
    }

    async fn apply_shadow(&mut self, desired: &Value, version: u64, always_report: bool) {
        if desired.is_null() {
            if always_report {
                self.report_to_shadow(None);
            }
            return;
        }
        // Desired states copied from config/set documents may carry these; they mean nothing here.
        let mut desired = desired.clone();
        if let Some(o) = desired.as_object_mut() {
            o.remove("version");
            o.remove("token");
            o.remove("rejected");
        }
        let next = match remote::apply_patch(&self.ctx.config, &desired) {
            Ok(n) => n,
            Err(e) => {
                info!(
                    version,
                    "shadow desired state rejected: {}: {}", e.path, e.message
                );
                let rejection = json!({"version": version, "path": e.path, "reason": e.message});
                self.publish(
                    &self.topics.config_rejected,
                    false,
                    json!({"token": format!("shadow:{version}"), "version": version, "path": e.path, "reason": e.message})
                        .to_string(),
                );
                self.report_to_shadow(Some(rejection));
                return;
            }
        };
        if next == self.ctx.config {
            // Nothing to do. Reporting again would only echo (and a redacted secret would
            // differ from the desired one forever): report only when asked to.
            if always_report {
                self.report_to_shadow(None);
            }
            return;
        }
        match self.commit(next, self.ctx.version, "shadow").await {
            Ok(_) => self.report_to_shadow(None),
            Err(reason) => {
                self.report_to_shadow(Some(json!({"version": version, "reason": reason})))
            }
        }
    }

    /// Reports the effective configuration (only what changed, nulls for what went away),
    /// and the last rejection (or null).
    fn report_to_shadow(&mut self, rejected: Option<Value>) {
        let Some(s) = self.shadow.clone() else {
            return;
        };
        let mut reported = remote::redacted(&self.ctx.config);
        reported["rejected"] = rejected.unwrap_or(Value::Null);
        remote::strip_nulls(&mut reported);
        let patch = remote::diff(&self.shadow_reported, &reported);
        if patch.as_object().is_some_and(|o| o.is_empty()) {
            return;
        }
        self.publish(
            &s.update,
            false,
            json!({ "state": { "reported": patch } }).to_string(),
        );
        self.shadow_reported = reported;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_waits_grow_until_a_connection_proves_stable() {
        let t0 = std::time::Instant::now();
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
    fn topics_follow_the_prefix_and_device() {
        let t = Topics::new("kvs-edge", "garage-pi");
        assert_eq!(t.available, "kvs-edge/garage-pi/available");
        assert_eq!(t.config_set, "kvs-edge/garage-pi/config/set");
        assert_eq!(t.commands, "kvs-edge/garage-pi/+/+/set");
        assert_eq!(
            t.camera("front", "bitrate/state"),
            "kvs-edge/garage-pi/front/bitrate/state"
        );
        assert_eq!(
            t.command("kvs-edge/garage-pi/front/bitrate/set"),
            Some(("front", "bitrate"))
        );
        for not_a_command in [
            "kvs-edge/garage-pi/config/set",
            "kvs-edge/garage-pi/front/bitrate/state",
            "kvs-edge/other/front/bitrate/set",
            "kvs-edge/garage-pi//bitrate/set",
        ] {
            assert_eq!(t.command(not_a_command), None, "{not_a_command}");
        }
        let s = ShadowTopics::new("pi-7", "kvs-edge");
        assert_eq!(
            s.update_delta,
            "$aws/things/pi-7/shadow/name/kvs-edge/update/delta"
        );
    }
}
