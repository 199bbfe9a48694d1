//! The agent's top level: one task tree per camera (stream set-up, capture, uploader),
//! metrics, and an orderly shutdown that lets each camera send its last fragment.

use std::sync::Arc;
use std::time::Duration;

use kvs_edge_config::AgentConfig;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::camera::{Camera, CameraStats};
use crate::journal::{Journal, JournalConfig};
use crate::metrics::{self, CameraMetrics};
use crate::uploader::{UploadStats, Uploader};
use crate::{capture, credentials, kvs};

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

/// A started agent: its cameras' counters, and the tasks to wait for.
pub struct Running {
    pub cameras: Vec<CameraMetrics>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// One task per camera; the agent is done when they are.
    tasks: JoinSet<()>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    /// Publishes "stopped" on shutdown, so it is waited for (briefly).
    mqtt_task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts every enabled camera. Returns once they run; `shutdown` (set to true) stops them.
pub async fn start(
    cfg: AgentConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<Running, AgentError> {
    let credentials = Arc::new(
        credentials::CredentialSource::from_config(&cfg.credentials, cfg.aws.region.as_deref())
            .await?,
    );
    capture::init()?;
    let client = kvs::client(&cfg.aws, credentials.provider());
    let region = cfg.aws.region.clone().unwrap_or_default();
    let tls = match crate::tls::client_config(None, None) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!("TLS: {e}; https endpoints will fail");
            None
        }
    };
    let mut tasks = JoinSet::new();
    let mut cameras = Vec::new();
    for cam in cfg.cameras.iter().filter(|c| c.enabled).cloned() {
        let camera_stats = Arc::new(CameraStats::default());
        let upload_stats = Arc::new(UploadStats::default());
        let dir = cfg.state_dir.join("journal").join(&cam.name);
        let (journal, recovery) =
            Journal::open(JournalConfig::from_settings(&cfg.journal, dir.clone()))?;
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
        let journal = Arc::new(std::sync::Mutex::new(journal));
        cameras.push(CameraMetrics {
            camera: cam.name.clone(),
            stream: cam.stream_name.clone(),
            camera_stats: camera_stats.clone(),
            upload_stats: upload_stats.clone(),
            journal: journal.clone(),
        });
        let uploader = Uploader {
            stream: cam.stream_name.clone(),
            region: region.clone(),
            credentials: credentials.clone(),
            kvs: client.clone(),
            cfg: cfg.upload.clone(),
            stats: upload_stats,
            tls: tls.clone(),
            journal: journal.clone(),
            create_stream: cam.create_stream.clone(),
        };
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            // Capture starts at once, whatever the network: the journal holds the video
            // until the uploader has set the stream up and can send it.
            let (tx, rx) = mpsc::channel(64);
            let upload = tokio::spawn(uploader.run(rx));
            Camera {
                cfg: cam,
                stats: camera_stats,
                journal,
                denying: Default::default(),
            }
            .run(tx, shutdown)
            .await;
            let _ = upload.await;
        });
    }
    let mut metrics_addr = None;
    let mut metrics_task = None;
    if let Some(addr) = cfg.metrics.listen {
        let listener = metrics::bind(addr)
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        metrics_addr = listener.local_addr().ok();
        info!("metrics on http://{}/metrics", metrics_addr.unwrap_or(addr));
        metrics_task = Some(tokio::spawn(metrics::serve(listener, cameras.clone())));
    }
    let mqtt_task = cfg.mqtt.clone().map(|m| {
        tokio::spawn(crate::mqtt::run(
            m,
            cfg.device_id.clone(),
            cameras.clone(),
            shutdown.clone(),
        ))
    });
    info!(cameras = cameras.len(), device = %cfg.device_id, "agent started");
    Ok(Running {
        cameras,
        metrics_addr,
        tasks,
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
    /// Waits for the cameras to finish (after shutdown, or when every source has ended),
    /// giving them at most `grace` after `shutdown` was set to deliver what they have.
    pub async fn wait(mut self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        tokio::select! {
            _ = async { while self.tasks.join_next().await.is_some() {} } => {
                info!("every source has ended");
                return;
            }
            _ = shutdown.wait_for(|s| *s) => {}
        }
        info!("shutting down: sending what was captured (up to {grace:?})");
        if tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!("shutdown grace period over: unacknowledged fragments stay in the journal");
            self.tasks.shutdown().await;
        }
        if let Some(t) = self.mqtt_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
