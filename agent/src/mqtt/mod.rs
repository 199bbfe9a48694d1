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
//! MQTT 5 (the default) adds "retain as published" subscriptions, a packet size limit the
//! broker honours, and request/response: an answer also goes to a request's response topic
//! with its correlation data (`link`). With `[mqtt.shadow]`, the desired configuration also
//! comes from an AWS IoT named shadow and is reported back after it is applied (`shadow`).
//! The broker being unreachable never affects streaming: publishes are dropped while
//! disconnected, the connection is retried with backoff, and everything retained is
//! republished on every (re)connect.

mod link;
mod shadow;
mod topics;

pub use link::{Message, Reply};
pub use topics::{ShadowTopics, Topics};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_edge_config::AgentConfig;
use kvs_edge_config::agent::{MqttConfig, UploadMode};
use kvs_edge_config::remote;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::camera::CameraCommand;
use crate::control::{self, Alarm, Command, Plan};
use crate::credentials::CredentialSource;
use crate::metrics::{CameraMetrics, Registry, Snapshot};
use crate::policy::{WindowEvent, WindowRequest};
use crate::runner::Control;
use crate::timeline::WallMs;

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
    /// Where window progress goes (this link's own requests, and the cameras').
    pub signals: crate::camera::Signals,
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

/// The MQTT side of a running agent.
struct Agent {
    cfg: MqttConfig,
    topics: Topics,
    shadow: Option<ShadowTopics>,
    client: link::Client,
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
    /// Where cameras send their upload windows' progress (published on `upload/events`).
    uploads: mpsc::UnboundedSender<WindowEvent>,
}

/// Runs the MQTT side until `shutdown`; then publishes "stopped" and disconnects.
pub async fn run(
    cfg: MqttConfig,
    ctx: Context,
    mut signals: crate::camera::SignalsRx,
    mut shutdown: watch::Receiver<bool>,
) {
    let (client, mut link, driver) = match link::start(&cfg, &ctx.config.device_id) {
        Ok(started) => started,
        Err(e) => {
            error!("MQTT disabled: {e:#}");
            return;
        }
    };
    let mut stats = tokio::time::interval(Duration::from_secs(cfg.stats_interval_secs));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctx_windows = ctx.signals.windows.clone();
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
        uploads: ctx_windows,
    };
    loop {
        let next_alarm_end = agent.alarms.values().map(|a| a.end_ms).min();
        tokio::select! {
            change = link.recv() => match change {
                Some(link::Event::Up) => agent.connected().await,
                Some(link::Event::Down(e)) => {
                    if agent.connected {
                        warn!(broker = %agent.cfg.host, port = agent.cfg.port, "MQTT connection lost: {e}");
                    } else {
                        debug!(broker = %agent.cfg.host, port = agent.cfg.port, "MQTT: {e}");
                    }
                    agent.connected = false;
                    agent.ctx.link.set(false);
                }
                Some(link::Event::Message(m)) => agent.message(m).await,
                Some(link::Event::Closed) | None => break,
            },
            _ = stats.tick() => agent.tick(),
            Some(event) = signals.windows.recv() => agent.upload_event(&event),
            Some((camera, raised)) = signals.alarms.recv() => agent.raised(&camera, raised),
            _ = sleep_until_ms(next_alarm_end) => agent.end_alarms(),
            _ = shutdown.changed() => break,
        }
    }
    if agent.connected {
        agent.stopping();
        let _ = agent.client.disconnect();
        // Wait (bounded) until the DISCONNECT, and so everything before it, went out.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(l) = link.recv().await {
                if matches!(l, link::Event::Closed) {
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
            .publish(topic, link::Qos::AtLeastOnce, retain, payload)
        {
            warn!(topic, "MQTT publish dropped: {e}");
        }
    }

    /// Answers a request (MQTT 5) on its response topic too; `result` says how it went.
    fn answer(&self, reply: Option<&Reply>, result: &str, payload: &Value) {
        let Some(reply) = reply.filter(|_| self.connected) else {
            return;
        };
        if let Err(e) = self
            .client
            .answer(reply, result, "application/json", payload.to_string())
        {
            warn!(topic = %reply.topic, "MQTT answer dropped: {e}");
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
        if let Err(e) = self.client.subscribe(&filters) {
            warn!(?filters, "MQTT subscribe failed: {e}");
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
            .publish(&self.topics.stats, link::Qos::AtMostOnce, false, payload);
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

    async fn message(&mut self, p: Message) {
        let reply = p.reply.as_ref();
        if p.topic == self.topics.config_set {
            self.config_set(&p.payload, reply).await;
        } else if let Some((camera, feature)) = self.topics.command(&p.topic) {
            let (camera, feature) = (camera.to_string(), feature.to_string());
            if p.payload.is_empty() && feature != "snapshot" {
                // How a retained message is deleted; nothing to do.
                return;
            }
            if p.retain {
                // A retained command would act again on every reconnect: settings that
                // flip back after a restart are what this design exists to prevent.
                // (MQTT 5 shows the flag on live messages too; 3.1.1 only on subscribing.)
                self.reject_command(
                    &camera,
                    &feature,
                    None,
                    "retained commands are ignored: publish commands without the retain flag",
                    reply,
                );
                return;
            }
            self.command(&camera, &feature, &p.payload, reply).await;
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
    async fn config_set(&mut self, payload: &[u8], reply: Option<&Reply>) {
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
                        self.answer(reply, "accepted", &answer);
                        self.report_to_shadow(None);
                    }
                    Err(reason) => {
                        let answer = json!({"token": accepted.token, "version": accepted.version, "path": "", "reason": reason});
                        self.publish(&self.topics.config_rejected, false, answer.to_string());
                        self.answer(reply, "rejected", &answer);
                    }
                }
            }
            Err(r) => {
                info!(version = ?r.version, "config/set rejected: {r}");
                let answer = json!({"token": r.token, "version": r.version, "path": r.path, "reason": r.reason});
                self.publish(&self.topics.config_rejected, false, answer.to_string());
                self.answer(reply, "rejected", &answer);
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

    async fn command(
        &mut self,
        camera: &str,
        feature: &str,
        payload: &[u8],
        reply: Option<&Reply>,
    ) {
        let request =
            match control::parse(&self.ctx.config, camera, feature, payload, WallMs::now()) {
                Ok(r) => r,
                Err(refusal) => {
                    self.reject_command(camera, feature, refusal.token, &refusal.reason, reply);
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
                        self.reject_command(camera, feature, token, &reason, reply);
                        return;
                    }
                };
                let why = format!("{camera}/{feature}/set");
                match self.commit(next, self.ctx.version, &why).await {
                    Ok(_) => {
                        // The state topics are the answer; publish them even when unchanged.
                        self.publish_feature_states(camera);
                        self.report_to_shadow(None);
                        let state = self.feature_state(camera, feature);
                        self.answer(
                            reply,
                            "accepted",
                            &json!({"token": token, "camera": camera, "feature": feature, "state": state}),
                        );
                    }
                    Err(reason) => self.reject_command(camera, feature, token, &reason, reply),
                }
            }
            Command::Alarm(alarm) => {
                if !self
                    .ctx
                    .control
                    .command(camera, CameraCommand::Alarm(alarm.clone()))
                    .await
                {
                    let why = "the camera is not streaming";
                    self.reject_command(camera, feature, token, why, reply);
                    return;
                }
                let key = (camera.to_string(), alarm.id.clone());
                let kind = match self.alarms.get(&key) {
                    Some(_) => "update",
                    None => "new",
                };
                self.alarms.insert(key, alarm.clone());
                let event = self.event(kind, camera, &alarm);
                // On a scheduled or on-demand camera the camera asks for the alarm's window
                // itself (its `new` event comes on upload/events).
                self.answer(reply, "accepted", &json!({"token": token, "event": event}));
            }
            Command::Upload {
                id,
                start_ms,
                end_ms,
            } => match self.request_window(camera, id, start_ms, end_ms).await {
                Ok(event) => {
                    self.answer(reply, "accepted", &json!({"token": token, "event": event}))
                }
                Err(reason) => self.reject_command(camera, feature, token, &reason, reply),
            },
            Command::Snapshot => {
                let (tx, rx) = oneshot::channel();
                if !self
                    .ctx
                    .control
                    .command(camera, CameraCommand::Snapshot(tx))
                    .await
                {
                    let why = "the camera is not streaming";
                    self.reject_command(camera, feature, token, why, reply);
                    return;
                }
                // Decoding takes a moment: answer from a task, keep handling messages.
                let (client, connected) = (self.client.clone(), self.connected);
                let topic = self.topics.camera(camera, "snapshot");
                let rejected = self.topics.camera(camera, "snapshot/rejected");
                let reply = reply.cloned();
                tokio::spawn(async move {
                    if !connected {
                        return;
                    }
                    let reason = match tokio::time::timeout(Duration::from_secs(20), rx).await {
                        Ok(Ok(Ok(jpeg))) => {
                            // The JPEG goes to the snapshot topic, and to a response topic.
                            let sent = client
                                .publish(&topic, link::Qos::AtLeastOnce, false, jpeg.clone())
                                .and_then(|()| match &reply {
                                    Some(r) => client.answer(r, "accepted", "image/jpeg", jpeg),
                                    None => Ok(()),
                                });
                            match sent {
                                Ok(()) => return,
                                Err(e) => format!("the snapshot cannot be sent: {e}"),
                            }
                        }
                        Ok(Ok(Err(e))) => e.to_string(),
                        _ => "no snapshot within 20 s".to_string(),
                    };
                    info!(topic = %rejected, "snapshot rejected: {reason}");
                    let answer = json!({"token": token, "reason": reason}).to_string();
                    let _ =
                        client.publish(&rejected, link::Qos::AtLeastOnce, false, answer.clone());
                    if let Some(r) = &reply {
                        let _ = client.answer(r, "rejected", "application/json", answer);
                    }
                });
            }
        }
    }

    fn reject_command(
        &self,
        camera: &str,
        feature: &str,
        token: Option<String>,
        reason: &str,
        reply: Option<&Reply>,
    ) {
        info!(camera, feature, "command rejected: {reason}");
        let answer = json!({ "token": token, "reason": reason });
        self.answer(reply, "rejected", &answer);
        // Keep the reply topic a single, wildcard-free level whatever arrived.
        let safe = |s: &str| !s.is_empty() && !s.contains(['+', '#', '/', '\0']);
        if !safe(camera) || !safe(feature) {
            return;
        }
        self.publish(
            &self.topics.camera(camera, &format!("{feature}/rejected")),
            false,
            answer.to_string(),
        );
    }

    /// Asks the camera for a window of its recording; its `new` event is published.
    async fn request_window(
        &mut self,
        camera: &str,
        id: String,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<WindowEvent, String> {
        let (tx, rx) = oneshot::channel();
        let request = WindowRequest {
            id,
            start_ms,
            end_ms,
            events: self.uploads.clone(),
        };
        if !self
            .ctx
            .control
            .command(camera, CameraCommand::Upload(request, tx))
            .await
        {
            return Err("the camera is not running".into());
        }
        let event = rx.await.map_err(|_| "the camera stopped".to_string())??;
        self.upload_event(&event);
        Ok(event)
    }

    /// A window's progress, on `<camera>/upload/events`.
    fn upload_event(&self, event: &WindowEvent) {
        let topic = self.topics.camera(&event.camera, "upload/events");
        let mut payload = serde_json::to_value(event).unwrap_or_default();
        payload["time"] = json!(WallMs::now().0);
        self.publish(&topic, false, payload.to_string());
    }

    /// A feature's state after a command, as its `state` topic shows it.
    fn feature_state(&self, camera: &str, feature: &str) -> Option<String> {
        let cam = self.ctx.config.cameras.iter().find(|c| c.name == camera)?;
        control::feature_states(cam)
            .into_iter()
            .find(|(f, _)| *f == feature)
            .map(|(_, v)| v)
    }

    fn event(&self, kind: &str, camera: &str, alarm: &Alarm) -> Value {
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
        event
    }

    /// An alarm a camera raised by itself (motion): announced like a commanded one, and
    /// ended when its window closes.
    fn raised(&mut self, camera: &str, raised: crate::motion::Raised) {
        let kind = if raised.new { "new" } else { "update" };
        let alarm = raised.alarm;
        self.alarms
            .insert((camera.to_string(), alarm.id.clone()), alarm.clone());
        self.event(kind, camera, &alarm);
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

    /// Whether `count` (fragments delivered, or recorded) grew within two stats intervals
    /// (at least 10 s).
    fn progressed(&mut self, camera: &str, count: u64) -> bool {
        let window =
            Duration::from_secs(self.cfg.stats_interval_secs * 2).max(Duration::from_secs(10));
        let now = Instant::now();
        let entry = self.persisted.entry(camera.to_string()).or_insert((0, now));
        if count > entry.0 {
            *entry = (count, now);
        }
        entry.0 > 0 && now.duration_since(entry.1) < window
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
                Some(m) if m.upload_mode != UploadMode::Continuous => {
                    // Its journal is the recording: online while it records.
                    let snap = Snapshot::of(m);
                    let recorded = m.camera_stats.fragments.load(Ordering::Relaxed);
                    let online = self.progressed(&cam.name, recorded);
                    json!({
                        "state": if online { "online" } else { "offline" },
                        "quality": "good",
                        "upload": m.upload_mode,
                        "recorded_fragments": snap.pending,
                        "recorded_age_s": snap.oldest_age_s,
                    })
                }
                Some(m) => {
                    let snap = Snapshot::of(m);
                    let persisted = m.upload_stats.delivered();
                    // Online: fragments reached KVS lately.
                    let online = self.progressed(&cam.name, persisted);
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
}
