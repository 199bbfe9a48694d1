//! The agent under systemd (`Type=notify`): `sd_notify(3)` datagrams (`READY=1`,
//! `WATCHDOG=1`, `STATUS=…`) to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace), readiness once the first camera captures, and the watchdog loop: every half
//! `$WATCHDOG_USEC` the cameras' counters go through `health`, and `WATCHDOG=1` is sent
//! only while no stage is stalled. Without `$NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::health::{self, Health, Progress};
use crate::metrics::{CameraMetrics, Registry};

/// Where notifications go, if anywhere.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a socket that cannot be used is logged and ignored.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|path| match UnixDatagram::unbound() {
                Ok(s) => Some((s, path)),
                Err(e) => {
                    tracing::warn!("NOTIFY_SOCKET: {e}");
                    None
                }
            });
        Notifier { socket }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one notification (newline-separated assignments).
    pub fn send(&self, state: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        let sent = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
            }
            None => socket.send_to(state.as_bytes(), path),
        };
        if let Err(e) = sent {
            tracing::debug!("sd_notify {path}: {e}");
        }
    }
}

/// systemd's watchdog interval (`$WATCHDOG_USEC`) when it is meant for this process
/// (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// One line for `STATUS=`: no newlines (they separate assignments).
pub fn status_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// A camera's counters as `health` reads them.
fn progress(c: &CameraMetrics) -> Progress {
    let cs = &c.camera_stats;
    let us = &c.upload_stats;
    let (journaled, pending) = {
        let j = c.journal.lock().unwrap_or_else(|p| p.into_inner());
        let st = j.stats();
        (st.appended + st.denied, j.pending_len() as u64)
    };
    let r = Ordering::Relaxed;
    Progress {
        capture: cs.capture.frames.load(r) + cs.restarts.load(r),
        fragments: cs.fragments.load(r),
        journaled: journaled + cs.fragments_denied.load(r),
        uploads: us.fragments_sent.load(r)
            + us.fragments_persisted.load(r)
            + us.sessions.load(r)
            + us.session_failures.load(r)
            + us.error_acks.load(r)
            + us.rotations.load(r),
        pending,
        fps: 0.0,
    }
}

/// Waits until the first camera captures a frame (at once when none runs), then READY=1.
pub async fn ready_when_capturing(registry: &Registry, notifier: &Notifier) {
    if notifier.enabled() {
        loop {
            let cams = registry.cameras();
            if cams.is_empty()
                || cams
                    .iter()
                    .any(|c| c.camera_stats.capture.frames.load(Ordering::Relaxed) > 0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let cams = registry.cameras().len();
    notifier.send(&format!("READY=1\nSTATUS=started, {cams} cameras"));
    tracing::info!("ready ({cams} cameras)");
}

/// Every `period`: STATUS= with the health line, and WATCHDOG=1 when `watchdog` is on and
/// nothing is stalled. Ends with STOPPING=1 on shutdown.
pub async fn supervise(
    registry: Registry,
    notifier: Notifier,
    watchdog: bool,
    period: Duration,
    stall_after: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut health = Health::new(stall_after);
    let mut last: HashMap<String, (Instant, u64)> = HashMap::new();
    let mut was_stalled = false;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => {
                notifier.send("STOPPING=1\nSTATUS=stopping: sending what was captured");
                return;
            }
        }
        let now = Instant::now();
        let cameras: Vec<(String, Progress)> = registry
            .cameras()
            .iter()
            .map(|c| {
                let mut p = progress(c);
                let frames = c.camera_stats.capture.frames.load(Ordering::Relaxed);
                if let Some((t, f)) = last.insert(c.camera.clone(), (now, frames)) {
                    let secs = now.duration_since(t).as_secs_f64();
                    if secs > 0.0 {
                        p.fps = frames.saturating_sub(f) as f64 / secs;
                    }
                }
                (c.camera.clone(), p)
            })
            .collect();
        last.retain(|name, _| cameras.iter().any(|(n, _)| n == name));
        let stalls = health.observe(now.into_std(), &cameras);
        let line = status_line(&health::status(&cameras, &stalls));
        if stalls.is_empty() {
            if was_stalled {
                tracing::info!("every stage makes progress again");
            }
            let ping = if watchdog { "WATCHDOG=1\n" } else { "" };
            notifier.send(&format!("{ping}STATUS={line}"));
        } else {
            if !was_stalled {
                tracing::error!("{line}: the watchdog is no longer pinged");
            }
            notifier.send(&format!("STATUS={line}"));
        }
        was_stalled = !stalls.is_empty();
    }
}
