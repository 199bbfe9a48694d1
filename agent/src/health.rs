//! The agent's health as systemd sees it: per camera, whether capture, fragmenter, journal
//! and uploader make progress, from the counters the metrics already keep. A stage with work
//! to do that has done nothing for the stall limit is stalled; the watchdog is pinged only
//! while no stage is. Pure: observations in, verdict and status line out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What one camera's counters say now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Frames captured, plus source restarts (a supervisor restarting a dead camera is at
    /// work; restarting the agent would not bring the camera back sooner).
    pub capture: u64,
    /// Fragments made.
    pub fragments: u64,
    /// Fragments the journal took or refused (a full journal deciding is progress).
    pub journaled: u64,
    /// Anything the uploader did: fragments sent or acknowledged, sessions opened, failed,
    /// rotated, error acks.
    pub uploads: u64,
    /// Fragments waiting for PERSISTED.
    pub pending: u64,
    pub fps: f64,
    /// Why the camera cannot stream (an unsupported codec): its capture waits by design,
    /// which is not a stall (restarting the agent would not change what the camera sends).
    pub failed: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Capture,
    Fragmenter,
    Journal,
    Uploader,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Fragmenter => "fragmenter",
            Stage::Journal => "journal",
            Stage::Uploader => "uploader",
        }
    }
}

/// The last observation of a camera and when each stage last moved (or had nothing to do).
struct Seen {
    progress: Progress,
    moved: [Instant; 4],
}

/// Health over time.
pub struct Health {
    stall_after: Duration,
    seen: HashMap<String, Seen>,
}

/// A stalled stage: camera, stage, for how long.
pub type Stall = (String, Stage, Duration);

impl Health {
    pub fn new(stall_after: Duration) -> Health {
        Health {
            stall_after,
            seen: HashMap::new(),
        }
    }

    /// Takes the cameras' counters at `now`; the stalled stages.
    pub fn observe(&mut self, now: Instant, cameras: &[(String, Progress)]) -> Vec<Stall> {
        self.seen
            .retain(|name, _| cameras.iter().any(|(n, _)| n == name));
        let mut stalls = Vec::new();
        for (name, p) in cameras {
            let seen = self.seen.entry(name.clone()).or_insert_with(|| Seen {
                progress: p.clone(),
                moved: [now; 4],
            });
            let before = &seen.progress;
            // A stage moved, or had nothing to do because the stage before it did not move.
            let moved = [
                p.capture != before.capture || p.failed.is_some(),
                p.fragments != before.fragments || p.capture == before.capture,
                p.journaled != before.journaled || p.fragments == before.fragments,
                p.uploads != before.uploads || p.pending == 0,
            ];
            for (i, m) in moved.into_iter().enumerate() {
                if m {
                    seen.moved[i] = now;
                }
            }
            seen.progress = p.clone();
            for (i, stage) in [
                Stage::Capture,
                Stage::Fragmenter,
                Stage::Journal,
                Stage::Uploader,
            ]
            .into_iter()
            .enumerate()
            {
                let idle = now.saturating_duration_since(seen.moved[i]);
                if idle >= self.stall_after {
                    stalls.push((name.clone(), stage, idle));
                }
            }
        }
        stalls
    }
}

/// The one-line summary for `STATUS=`.
pub fn status(cameras: &[(String, Progress)], stalls: &[Stall]) -> String {
    let mut out = if stalls.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = stalls
            .iter()
            .map(|(c, s, d)| format!("{c} {} for {} s", s.as_str(), d.as_secs()))
            .collect();
        format!("STALLED: {}; ", list.join(", "))
    };
    if cameras.is_empty() {
        out.push_str("no cameras running");
        return out;
    }
    let parts: Vec<String> = cameras
        .iter()
        .map(|(name, p)| match &p.failed {
            Some(why) => format!("{name} FAILED ({why}), {} pending", p.pending),
            None => format!("{name} {:.1} fps, {} pending", p.fps, p.pending),
        })
        .collect();
    out.push_str(&parts.join("; "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(capture: u64, fragments: u64, journaled: u64, uploads: u64, pending: u64) -> Progress {
        Progress {
            capture,
            fragments,
            journaled,
            uploads,
            pending,
            fps: 25.0,
            failed: None,
        }
    }

    #[test]
    fn a_camera_failed_for_its_codec_waits_without_stalling() {
        let t0 = Instant::now();
        let mut h = Health::new(Duration::from_secs(10));
        let failed = Progress {
            failed: Some("MJPEG video".into()),
            ..p(3, 0, 0, 0, 0)
        };
        for i in 0..60u64 {
            let cams = [("door".to_string(), failed.clone())];
            assert!(h.observe(t0 + Duration::from_secs(i), &cams).is_empty());
        }
        let line = status(&[("door".into(), failed)], &[]);
        assert_eq!(line, "door FAILED (MJPEG video), 0 pending");
    }

    #[test]
    fn a_pipeline_that_moves_is_healthy() {
        let t0 = Instant::now();
        let mut h = Health::new(Duration::from_secs(10));
        for i in 0..30u64 {
            let cams = [("front".to_string(), p(i * 25, i, i, i * 2, 1))];
            assert!(h.observe(t0 + Duration::from_secs(i), &cams).is_empty());
        }
    }

    #[test]
    fn an_uploader_with_work_that_does_nothing_stalls() {
        let t0 = Instant::now();
        let mut h = Health::new(Duration::from_secs(10));
        let mut stalls = vec![];
        for i in 0..12u64 {
            // Capture, fragments and journal go on; the uploader is stuck with 3 pending.
            let cams = [("front".to_string(), p(i * 25, i, i, 7, 3))];
            stalls = h.observe(t0 + Duration::from_secs(i), &cams);
        }
        assert_eq!(stalls.len(), 1);
        assert_eq!(stalls[0].1, Stage::Uploader);
        assert_eq!(stalls[0].2, Duration::from_secs(11));
        let line = status(&[("front".into(), p(0, 0, 0, 0, 3))], &stalls);
        assert!(
            line.starts_with("STALLED: front uploader for 11 s; front 25.0 fps, 3 pending"),
            "{line}"
        );
    }

    #[test]
    fn an_idle_uploader_with_nothing_pending_is_fine_and_so_is_waiting_out_an_outage() {
        let t0 = Instant::now();
        let mut h = Health::new(Duration::from_secs(10));
        for i in 0..30u64 {
            // Nothing pending: uploads do not need to move.
            let cams = [("a".to_string(), p(i, i, i, 0, 0))];
            assert!(h.observe(t0 + Duration::from_secs(i), &cams).is_empty());
        }
        let mut h = Health::new(Duration::from_secs(10));
        for i in 0..60u64 {
            // An outage: a failed session every 8 s keeps the uploader alive; pending grows.
            let cams = [("a".to_string(), p(i, i, i, i / 8, i))];
            assert!(h.observe(t0 + Duration::from_secs(i), &cams).is_empty());
        }
    }

    #[test]
    fn a_dead_capture_stalls_capture_only() {
        let t0 = Instant::now();
        let mut h = Health::new(Duration::from_secs(5));
        let mut stalls = vec![];
        for i in 0..6u64 {
            stalls = h.observe(
                t0 + Duration::from_secs(i),
                &[("a".to_string(), p(9, 3, 3, 9, 0))],
            );
        }
        let stages: Vec<Stage> = stalls.iter().map(|s| s.1).collect();
        assert_eq!(stages, vec![Stage::Capture]);
        // Frames arrive but no fragment is made: the fragmenter.
        let mut h = Health::new(Duration::from_secs(5));
        for i in 0..6u64 {
            stalls = h.observe(
                t0 + Duration::from_secs(i),
                &[("a".to_string(), p(i, 3, 3, 9, 0))],
            );
        }
        let stages: Vec<Stage> = stalls.iter().map(|s| s.1).collect();
        assert_eq!(stages, vec![Stage::Fragmenter]);
        assert_eq!(status(&[], &[]), "no cameras running");
    }
}
