//! The agent's top level: a supervisor owning one task tree per camera (capture →
//! journal → uploader), metrics and MQTT, and an orderly shutdown that lets each camera send
//! its last fragment. Configuration changes (from MQTT) arrive as whole configurations; the
//! supervisor works out the plan and touches only the cameras it names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kvs_edge_config::AgentConfig;
use kvs_edge_config::agent::CameraConfig;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::camera::{Camera, CameraCommand, CameraStats};
use crate::control::{self, Plan};
use crate::journal::{Journal, JournalConfig};
use crate::metrics::{self, CameraMetrics, Registry};
use crate::uploader::{UploadStats, Uploader};
use crate::{capture, credentials, kvs};

/// How long a camera being restarted or stopped by a configuration change may take to
/// send what it has in flight; the rest stays in its journal for the next uploader.
const RESTART_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A handle to the supervisor: apply a configuration, send a camera a command.
#[derive(Clone)]
pub struct Control(mpsc::Sender<Request>);

enum Request {
    Apply(Box<AgentConfig>, oneshot::Sender<Plan>),
    Command(String, CameraCommand, oneshot::Sender<bool>),
}

impl Control {
    /// Applies `cfg` (already validated) and returns what it touched.
    pub async fn apply(&self, cfg: AgentConfig) -> Option<Plan> {
        let (tx, rx) = oneshot::channel();
        self.0.send(Request::Apply(Box::new(cfg), tx)).await.ok()?;
        rx.await.ok()
    }

    /// Hands `command` to a running camera; false when it is not running.
    pub async fn command(&self, camera: &str, command: CameraCommand) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .0
            .send(Request::Command(camera.into(), command, tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// A started agent: its cameras' counters, and the tasks to wait for.
pub struct Running {
    pub registry: Registry,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub control: Control,
    /// The MQTT connection's state, when `[mqtt]` is configured.
    pub mqtt_link: Option<Arc<crate::mqtt::LinkStats>>,
    supervisor: JoinHandle<Vec<JoinHandle<()>>>,
    metrics_task: Option<JoinHandle<()>>,
    /// Publishes "stopped" on shutdown, so it is waited for (briefly).
    mqtt_task: Option<JoinHandle<()>>,
}

/// What every camera shares.
struct Shared {
    credentials: Arc<credentials::CredentialSource>,
    kvs: aws_sdk_kinesisvideo::Client,
    region: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A camera's state that outlives restarts: its journal and counters.
struct Slot {
    journal: Arc<std::sync::Mutex<Journal>>,
    camera_stats: Arc<CameraStats>,
    upload_stats: Arc<UploadStats>,
    stream: String,
}

/// A running camera.
struct Unit {
    generation: u64,
    stop: watch::Sender<bool>,
    updates: watch::Sender<CameraConfig>,
    commands: mpsc::Sender<CameraCommand>,
    handle: JoinHandle<()>,
}

/// Aborts the task when dropped (so an aborted camera takes its uploader with it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Fleet {
    cfg: AgentConfig,
    shared: Shared,
    slots: HashMap<String, Slot>,
    units: HashMap<String, Unit>,
    registry: Registry,
    ended: mpsc::UnboundedSender<(String, u64)>,
    generation: u64,
    /// What cameras raise by themselves, to the MQTT link.
    signals: crate::camera::Signals,
}

impl Fleet {
    fn slot(&mut self, cam: &CameraConfig) -> Result<&Slot, AgentError> {
        if !self.slots.contains_key(&cam.name) {
            let dir = self.cfg.state_dir.join("journal").join(&cam.name);
            // Opened with the camera's keep setting, so that delivered copies kept before a
            // restart are indexed again from the release marks.
            let (journal, recovery) = Journal::open(JournalConfig {
                keep_delivered: !cam.upload_policy.delete_after_upload,
                ..JournalConfig::from_settings(&self.cfg.journal, dir.clone())
            })?;
            if recovery.pending > 0 || recovery.torn_bytes > 0 || !recovery.quarantined.is_empty() {
                info!(
                    camera = %cam.name,
                    pending = recovery.pending,
                    torn_bytes = recovery.torn_bytes,
                    quarantined = recovery.quarantined.len(),
                    salvaged = recovery.salvaged,
                    "journal {} recovered: unsent video goes out first",
                    dir.display()
                );
            }
            self.slots.insert(
                cam.name.clone(),
                Slot {
                    journal: Arc::new(std::sync::Mutex::new(journal)),
                    camera_stats: Arc::default(),
                    upload_stats: Arc::default(),
                    stream: cam.stream_name.clone(),
                },
            );
        }
        let slot = self.slots.get_mut(&cam.name).expect("inserted above");
        slot.stream.clone_from(&cam.stream_name);
        Ok(slot)
    }

    fn start_camera(&mut self, cam: CameraConfig) -> Result<(), AgentError> {
        let slot = self.slot(&cam)?;
        let (journal, camera_stats, upload_stats) = (
            slot.journal.clone(),
            slot.camera_stats.clone(),
            slot.upload_stats.clone(),
        );
        let gate = Arc::new(crate::policy::Gate::new(&cam.name, &cam.upload_policy));
        let keep = !cam.upload_policy.delete_after_upload;
        if let Err(e) = journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keep_delivered(keep)
        {
            warn!(camera = %cam.name, "journal: {e}");
        }
        let uploader = Uploader {
            gate: gate.clone(),
            stream: cam.stream_name.clone(),
            region: self.shared.region.clone(),
            credentials: self.shared.credentials.clone(),
            kvs: self.shared.kvs.clone(),
            cfg: self.cfg.upload.clone(),
            stats: upload_stats,
            tls: self.shared.tls.clone(),
            journal: journal.clone(),
            create_stream: cam.create_stream.clone().map(|mut c| {
                // Who records the stream, for the archiver to ask for windows.
                for (k, v) in [
                    (kvs_edge_config::STREAM_DEVICE_TAG, &self.cfg.device_id),
                    (kvs_edge_config::STREAM_CAMERA_TAG, &cam.name),
                ] {
                    c.tags.entry(k.to_string()).or_insert_with(|| v.clone());
                }
                c
            }),
        };
        self.generation += 1;
        let generation = self.generation;
        let (stop, stop_rx) = watch::channel(false);
        let (updates, updates_rx) = watch::channel(cam.clone());
        let (commands, commands_rx) = mpsc::channel(16);
        let ended = self.ended.clone();
        let signals = self.signals.clone();
        let recording = crate::policy::Recording::new(&cam.name, cam.record_schedule.as_ref());
        let key = cam.name.clone();
        let name = cam.name.clone();
        let handle = tokio::spawn(async move {
            // Capture starts at once, whatever the network: the journal holds the video
            // until the uploader has set the stream up and can send it.
            let (tx, rx) = mpsc::channel(64);
            let upload = AbortOnDrop(tokio::spawn(uploader.run(rx)));
            Camera {
                cfg: cam,
                stats: camera_stats,
                journal,
                gate,
                denying: Default::default(),
                updates: updates_rx,
                commands: commands_rx,
                signals,
                recording,
            }
            .run(tx, stop_rx)
            .await;
            let mut upload = upload;
            let _ = (&mut upload.0).await;
            let _ = ended.send((name, generation));
        });
        self.units.insert(
            key,
            Unit {
                generation,
                stop,
                updates,
                commands,
                handle,
            },
        );
        Ok(())
    }

    /// Stops a camera, giving it `RESTART_GRACE` to deliver what is in flight.
    async fn stop_camera(&mut self, name: &str) {
        let Some(mut unit) = self.units.remove(name) else {
            return;
        };
        unit.stop.send_replace(true);
        if tokio::time::timeout(RESTART_GRACE, &mut unit.handle)
            .await
            .is_err()
        {
            info!(camera = %name, "unsent video stays in the journal for the next uploader");
            unit.handle.abort();
            let _ = unit.handle.await;
        }
    }

    fn publish_registry(&self) {
        let mut cameras: Vec<CameraMetrics> = Vec::new();
        for cam in &self.cfg.cameras {
            if let (true, Some(slot)) = (
                self.units.contains_key(&cam.name),
                self.slots.get(&cam.name),
            ) {
                cameras.push(CameraMetrics {
                    camera: cam.name.clone(),
                    stream: slot.stream.clone(),
                    camera_stats: slot.camera_stats.clone(),
                    upload_stats: slot.upload_stats.clone(),
                    journal: slot.journal.clone(),
                    upload_mode: cam.upload_policy.mode,
                });
            }
        }
        self.registry.set(cameras);
    }

    async fn apply(&mut self, next: AgentConfig) -> Plan {
        let plan = control::plan(&self.cfg, &next);
        let old = std::mem::replace(&mut self.cfg, next);
        if plan.journal {
            for (name, slot) in &self.slots {
                let dir = self.cfg.state_dir.join("journal").join(name);
                let settings = JournalConfig::from_settings(&self.cfg.journal, dir);
                slot.journal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_limits(settings);
            }
        }
        for name in plan.stop.iter().chain(&plan.restart) {
            self.stop_camera(name).await;
        }
        let cameras = self.cfg.cameras.clone();
        let find = |name: &str| cameras.iter().find(|c| c.name == name).cloned();
        for name in plan.start.iter().chain(&plan.restart) {
            if let Some(cam) = find(name)
                && let Err(e) = self.start_camera(cam)
            {
                error!(camera = %name, "cannot start: {e}");
            }
        }
        for name in &plan.reconfigure {
            if let (Some(cam), Some(unit)) = (find(name), self.units.get(name)) {
                unit.updates.send_replace(cam);
            }
        }
        // Cameras that were removed give up their slots (their journals stay on disk).
        self.slots
            .retain(|name, _| self.cfg.cameras.iter().any(|c| &c.name == name));
        self.publish_registry();
        if !plan.is_empty() {
            info!(?plan, "configuration applied");
        }
        drop(old);
        plan
    }

    /// Runs until shutdown (then hands back the running cameras to wait for) or until
    /// every camera's source has ended on its own.
    async fn supervise(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut ended: mpsc::UnboundedReceiver<(String, u64)>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let mut finished_on_their_own = 0;
        loop {
            tokio::select! {
                Some(request) = requests.recv() => match request {
                    Request::Apply(cfg, reply) => {
                        let _ = reply.send(self.apply(*cfg).await);
                    }
                    Request::Command(camera, command, reply) => {
                        let sent = match self.units.get(&camera) {
                            Some(unit) => unit.commands.send(command).await.is_ok(),
                            None => false,
                        };
                        let _ = reply.send(sent);
                    }
                },
                Some((name, generation)) = ended.recv() => {
                    if self.units.get(&name).is_some_and(|u| u.generation == generation) {
                        self.units.remove(&name);
                        finished_on_their_own += 1;
                        self.publish_registry();
                        if self.units.is_empty() && finished_on_their_own > 0 {
                            return Vec::new();
                        }
                    }
                }
                _ = async { shutdown.wait_for(|s| *s).await.is_ok() } => {
                    return self
                        .units
                        .drain()
                        .map(|(_, unit)| {
                            unit.stop.send_replace(true);
                            unit.handle
                        })
                        .collect();
                }
            }
        }
    }
}

/// Starts every enabled camera. Returns once they run; `shutdown` (set to true) stops them.
/// The configuration accepted remotely last (in the state dir) replaces the file's cameras,
/// upload and journal settings.
pub async fn start(
    file_cfg: AgentConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Running, AgentError> {
    let (cfg, version, note) = crate::persisted::effective(file_cfg);
    if let Some(note) = note {
        info!("{note}");
    }
    let credentials = Arc::new(
        credentials::CredentialSource::from_config(&cfg.credentials, cfg.aws.region.as_deref())
            .await?,
    );
    capture::init()?;
    let tls = match crate::tls::client_config(None, None) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!("TLS: {e}; https endpoints will fail");
            None
        }
    };
    let shared = Shared {
        kvs: kvs::client(&cfg.aws, credentials.provider()),
        region: cfg.aws.region.clone().unwrap_or_default(),
        credentials: credentials.clone(),
        tls,
    };
    let registry = Registry::default();
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let (signals, signals_rx) = crate::camera::signals();
    let mut fleet = Fleet {
        signals: signals.clone(),
        cfg: cfg.clone(),
        shared,
        slots: HashMap::new(),
        units: HashMap::new(),
        registry: registry.clone(),
        ended: ended_tx,
        generation: 0,
    };
    for cam in cfg.cameras.iter().filter(|c| c.enabled) {
        fleet.start_camera(cam.clone())?;
    }
    fleet.publish_registry();
    let running_cameras = fleet.units.len();
    let (requests_tx, requests_rx) = mpsc::channel(16);
    let control = Control(requests_tx);
    let supervisor = tokio::spawn(fleet.supervise(requests_rx, ended_rx, shutdown.clone()));

    let mqtt_link = cfg
        .mqtt
        .as_ref()
        .map(|_| Arc::new(crate::mqtt::LinkStats::default()));
    let mut metrics_addr = None;
    let mut metrics_task = None;
    if let Some(addr) = cfg.metrics.listen {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        metrics_addr = listener.local_addr().ok();
        info!("metrics on http://{}/metrics", metrics_addr.unwrap_or(addr));
        metrics_task = Some(tokio::spawn(metrics::serve(
            listener,
            registry.clone(),
            credentials.clone(),
            mqtt_link.clone(),
        )));
    }
    let mqtt_task = cfg.mqtt.clone().map(|m| {
        tokio::spawn(crate::mqtt::run(
            m,
            crate::mqtt::Context {
                config: cfg.clone(),
                version,
                control: control.clone(),
                registry: registry.clone(),
                credentials: credentials.clone(),
                link: mqtt_link.clone().unwrap_or_default(),
                signals,
            },
            signals_rx,
            shutdown.clone(),
        ))
    });
    info!(cameras = running_cameras, device = %cfg.device_id, version, "agent started");
    Ok(Running {
        registry,
        metrics_addr,
        control,
        mqtt_link,
        supervisor,
        metrics_task,
        mqtt_task,
    })
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in [self.metrics_task.take(), self.mqtt_task.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
    }
}

impl Running {
    /// The cameras running now.
    pub fn cameras(&self) -> Vec<CameraMetrics> {
        self.registry.cameras()
    }

    /// Waits for the cameras to finish (after shutdown, or when every source has ended),
    /// giving them at most `grace` after `shutdown` was set to deliver what they have.
    pub async fn wait(mut self, shutdown: watch::Receiver<bool>, grace: Duration) {
        let units = (&mut self.supervisor).await.unwrap_or_default();
        if !*shutdown.borrow() {
            info!("every source has ended");
            return;
        }
        info!("shutting down: sending what was captured (up to {grace:?})");
        let mut units: Vec<AbortOnDrop> = units.into_iter().map(AbortOnDrop).collect();
        if tokio::time::timeout(grace, async {
            for u in &mut units {
                let _ = (&mut u.0).await;
            }
        })
        .await
        .is_err()
        {
            warn!("shutdown grace period over: unacknowledged fragments stay in the journal");
        }
        drop(units);
        if let Some(t) = self.mqtt_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
