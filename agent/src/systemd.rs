//! The agent under systemd (`Type=notify`, through the `sd-notify` crate): readiness once
//! the first camera captures, and the watchdog loop: every half `$WATCHDOG_USEC` the
//! cameras' counters go through `health`, `STATUS=` gets the health line, and `WATCHDOG=1`
//! is sent only while no stage is stalled. Without `$NOTIFY_SOCKET` nothing is sent.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::health::{self, Health, Progress};
use crate::metrics::{CameraMetrics, Registry};

/// True when systemd listens (`$NOTIFY_SOCKET` is set).
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
}

/// Sends notifications; a failure is only worth a debug line (systemd may be gone).
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// systemd's watchdog interval (`$WATCHDOG_USEC`) when it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
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
        // A fragment the journal refused, or left out of the recording windows, was
        // handled too: the journal stage is not stuck.
        journaled: journaled + cs.fragments_denied.load(r) + cs.fragments_not_recorded.load(r),
        uploads: us.fragments_sent.load(r)
            + us.delivered()
            + us.sessions.load(r)
            + us.session_failures.load(r)
            + us.error_acks.load(r)
            + us.rotations.load(r),
        pending,
        fps: 0.0,
        failed: cs.failure.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

/// Waits until the first camera captures a frame, or every camera has failed for a reason
/// waiting cannot cure (an unsupported codec), or at once when none runs; then READY=1.
pub async fn ready_when_capturing(registry: &Registry) {
    if under_systemd() {
        loop {
            let cams = registry.cameras();
            let captured =
                |c: &CameraMetrics| c.camera_stats.capture.frames.load(Ordering::Relaxed) > 0;
            let failed = |c: &CameraMetrics| {
                c.camera_stats
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
            };
            if cams.is_empty() || cams.iter().any(captured) || cams.iter().all(failed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let cams = registry.cameras().len();
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("started, {cams} cameras")),
    ]);
    tracing::info!("ready ({cams} cameras)");
}

/// Every `period`: STATUS= with the health line, and WATCHDOG=1 when `watchdog` is on and
/// nothing is stalled. Ends with STOPPING=1 on shutdown.
pub async fn supervise(
    registry: Registry,
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
                notify(&[
                    NotifyState::Stopping,
                    NotifyState::Status("stopping: sending what was captured"),
                ]);
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
            if watchdog {
                notify(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
            } else {
                notify(&[NotifyState::Status(&line)]);
            }
        } else {
            if !was_stalled {
                tracing::error!("{line}: the watchdog is no longer pinged");
            }
            notify(&[NotifyState::Status(&line)]);
        }
        was_stalled = !stalls.is_empty();
    }
}
