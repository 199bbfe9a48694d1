//! Upload policy: which journaled fragments the uploader may send. A continuous camera sends
//! everything it records; a scheduled one everything, but only while a schedule window (a
//! Quartz cron expression in UTC and a duration) is open; an on-demand camera only what
//! overlaps a window someone asked for (`<camera>/upload/set`, an alarm), the rest staying
//! on the device until the journal's retention drops it. Requested windows report their
//! progress as events: `new` (with what the device does not have), `update` as fragments
//! reach KVS, `end` once everything it could send is acknowledged.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use kvs_edge_config::agent::{UploadMode, UploadPolicy};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::journal::Journal;

/// The longest window one request may ask for.
pub const MAX_WINDOW_MS: i64 = 12 * 3600 * 1000;

/// A window someone asked for.
#[derive(Debug, Clone)]
pub struct WindowRequest {
    pub id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Where the window's events go.
    pub events: mpsc::UnboundedSender<WindowEvent>,
}

/// A window's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub camera: String,
    pub id: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Fragments of the window on the device, unsent, when it was asked for.
    pub fragments_available: u64,
    pub fragments_sent: u64,
    pub bytes_sent: u64,
    /// Parts of the window (up to now) the device has no unsent video for: never recorded,
    /// dropped by retention, or sent already.
    pub missing: Vec<[i64; 2]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    New,
    Update,
    End,
}

/// Windows that open at a Quartz cron expression's times (UTC) and stay open a duration:
/// the KVS Edge Agent's ScheduleConfig, for uploading and for recording.
pub struct Schedule {
    cron: croner::Cron,
    duration_ms: i64,
}

impl Schedule {
    pub fn new(expr: &str, duration_s: u64) -> Result<Schedule, String> {
        Ok(Schedule {
            cron: UploadPolicy::cron(expr)?,
            duration_ms: duration_s as i64 * 1000,
        })
    }

    /// The window open at `now_ms`, as [start, end).
    pub fn window_at(&self, now_ms: i64) -> Option<(i64, i64)> {
        let now = DateTime::<Utc>::from_timestamp_millis(now_ms)?;
        let start = self
            .cron
            .find_previous_occurrence(&now, true)
            .ok()?
            .timestamp_millis();
        let end = start + self.duration_ms;
        (now_ms < end).then_some((start, end))
    }

    /// When a window next opens or closes after `now_ms`.
    pub fn next_change(&self, now_ms: i64) -> Option<i64> {
        if let Some((_, end)) = self.window_at(now_ms) {
            return Some(end);
        }
        let now = DateTime::<Utc>::from_timestamp_millis(now_ms)?;
        Some(
            self.cron
                .find_next_occurrence(&now, false)
                .ok()?
                .timestamp_millis(),
        )
    }
}

/// When a camera records: always, or in its `record_schedule`'s windows and while an alarm
/// lasts (an alarm outside the windows records from when it is raised to its end; its
/// pre-roll was not recorded).
#[derive(Default)]
pub struct Recording {
    schedule: Option<Schedule>,
    /// The end of the latest alarm (ms).
    alarm_until: std::sync::atomic::AtomicI64,
}

impl Recording {
    pub fn new(camera: &str, cfg: Option<&kvs_edge_config::agent::RecordSchedule>) -> Recording {
        let schedule = cfg.and_then(|r| match Schedule::new(&r.schedule, r.duration_s) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(camera, "record schedule: {e}; recording always");
                None
            }
        });
        Recording {
            schedule,
            alarm_until: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// An alarm lasting until `end_ms`: fragments until then are recorded.
    pub fn alarm(&self, end_ms: i64) {
        self.alarm_until
            .fetch_max(end_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the fragment starting at `start_ms` is recorded.
    pub fn records(&self, start_ms: i64) -> bool {
        match &self.schedule {
            None => true,
            Some(s) => {
                s.window_at(start_ms).is_some()
                    || start_ms <= self.alarm_until.load(std::sync::atomic::Ordering::Relaxed)
            }
        }
    }
}

/// The upload policy of one camera, shared by its camera task (which takes requests) and
/// its uploader (which asks what it may send, and says what was delivered).
pub struct Gate {
    camera: String,
    mode: UploadMode,
    /// `scheduled`: when windows open, and for how long.
    schedule: Option<Schedule>,
    max_bytes_per_sec: Option<u64>,
    window_max_bytes_per_sec: Option<u64>,
    live_max_wait: std::time::Duration,
    windows: Mutex<Vec<Window>>,
    /// Bumped when a window is added: the uploader looks at the journal again.
    changed: watch::Sender<u64>,
}

struct Window {
    event: WindowEvent,
    events: mpsc::UnboundedSender<WindowEvent>,
}

impl Gate {
    pub fn new(camera: &str, policy: &UploadPolicy) -> Gate {
        let schedule = match (policy.mode, &policy.schedule) {
            (UploadMode::Scheduled, Some(expr)) => {
                match Schedule::new(expr, policy.duration_s.unwrap_or(0)) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        // Validated with the configuration; never open rather than always.
                        tracing::error!(camera, "upload schedule: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        Gate {
            camera: camera.to_string(),
            mode: policy.mode,
            schedule,
            max_bytes_per_sec: policy.max_bytes_per_sec,
            window_max_bytes_per_sec: policy.window_max_bytes_per_sec,
            live_max_wait: std::time::Duration::from_secs(policy.live_max_wait_s),
            windows: Mutex::new(Vec::new()),
            changed: watch::Sender::new(0),
        }
    }

    pub fn mode(&self) -> UploadMode {
        self.mode
    }

    /// This camera's own byte rate cap.
    pub fn max_bytes_per_sec(&self) -> Option<u64> {
        self.max_bytes_per_sec
    }

    /// The further cap on video recorded under a scheduled or on-demand policy (`deferred`).
    pub fn window_max_bytes_per_sec(&self) -> Option<u64> {
        self.window_max_bytes_per_sec
    }

    /// How long live video waits at most behind a window of older (deferred) video.
    pub fn live_max_wait(&self) -> std::time::Duration {
        self.live_max_wait
    }

    /// Whether the fragment `[timecode_ms, timecode_ms + duration_ms)` may be sent at
    /// `now_ms`. One recorded under a continuous policy always may (it was promised to
    /// KVS); one recorded under a scheduled or on-demand policy (`deferred`) only in a
    /// window: asked for, or, while the camera is scheduled, of the schedule.
    pub fn admits(&self, timecode_ms: i64, duration_ms: i64, deferred: bool, now_ms: i64) -> bool {
        if !deferred || (self.mode == UploadMode::Scheduled && self.open_window(now_ms).is_some()) {
            return true;
        }
        self.lock()
            .iter()
            .any(|w| overlaps(&w.event, timecode_ms, duration_ms))
    }

    /// Whether any window asked for is open.
    pub fn has_windows(&self) -> bool {
        !self.lock().is_empty()
    }

    /// `scheduled`: the schedule window open at `now_ms`, as [start, end).
    pub fn open_window(&self, now_ms: i64) -> Option<(i64, i64)> {
        self.schedule.as_ref()?.window_at(now_ms)
    }

    /// When what `admits` answers next changes by itself (a schedule window opens or
    /// closes), for the uploader to look again then.
    pub fn next_change(&self, now_ms: i64) -> Option<i64> {
        self.schedule.as_ref()?.next_change(now_ms)
    }

    /// Changes the uploader must look at everything again for: a window asked for, a
    /// schedule window opening (then its start).
    pub fn epoch(&self, now_ms: i64) -> (u64, Option<i64>) {
        (
            *self.changed.borrow(),
            self.open_window(now_ms).map(|(start, _)| start),
        )
    }

    /// Whether a session with nothing left to send should close: not on a continuous
    /// camera (new video comes every fragment), and on a scheduled one only out of its
    /// windows.
    pub fn closes_idle(&self, now_ms: i64) -> bool {
        match self.mode {
            UploadMode::Continuous => false,
            UploadMode::Scheduled => self.open_window(now_ms).is_none(),
            UploadMode::OnDemand => true,
        }
    }

    /// Changes to the windows, for the uploader to wait on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Takes a window (the same id again replaces it): its `new` event, with what `journal`
    /// does not hold unsent, or why it is refused.
    pub fn request(
        &self,
        req: WindowRequest,
        journal: &Journal,
        now_ms: i64,
    ) -> Result<WindowEvent, String> {
        if req.end_ms <= req.start_ms {
            return Err("end must be after start".into());
        }
        if req.end_ms - req.start_ms > MAX_WINDOW_MS {
            return Err(format!(
                "a window is at most {} hours",
                MAX_WINDOW_MS / 3_600_000
            ));
        }
        if req.start_ms > now_ms {
            return Err("the window starts in the future".into());
        }
        let spans: Vec<(i64, i64)> = journal
            .pending()
            .filter(|e| e.timecode_ms < req.end_ms && e.timecode_ms + e.duration_ms > req.start_ms)
            .map(|e| (e.timecode_ms, e.timecode_ms + e.duration_ms))
            .collect();
        let event = WindowEvent {
            kind: EventKind::New,
            camera: self.camera.clone(),
            id: req.id.clone(),
            start_ms: req.start_ms,
            end_ms: req.end_ms,
            fragments_available: spans.len() as u64,
            fragments_sent: 0,
            bytes_sent: 0,
            missing: gaps(req.start_ms, req.end_ms.min(now_ms), &spans),
        };
        {
            let mut windows = self.lock();
            windows.retain(|w| w.event.id != req.id);
            windows.push(Window {
                event: event.clone(),
                events: req.events,
            });
        }
        self.changed.send_modify(|g| *g += 1);
        Ok(event)
    }

    /// A fragment reached KVS: the windows it belongs to say so.
    pub fn delivered(&self, timecode_ms: i64, duration_ms: i64, bytes: u64) {
        for w in self.lock().iter_mut() {
            if overlaps(&w.event, timecode_ms, duration_ms) {
                w.event.kind = EventKind::Update;
                w.event.fragments_sent += 1;
                w.event.bytes_sent += bytes;
                let _ = w.events.send(w.event.clone());
            }
        }
    }

    /// Ends the windows that have nothing left to send: their end is recorded (or past, for
    /// a camera that stopped) and no unsent fragment of `journal` overlaps them.
    pub fn settle(&self, journal: &Journal, now_ms: i64) {
        // Called on every refill: with no window open, no pass over the journal.
        if self.lock().is_empty() {
            return;
        }
        let recorded_until = journal
            .pending()
            .map(|e| e.timecode_ms + e.duration_ms)
            .max()
            .unwrap_or(i64::MIN);
        let mut windows = self.lock();
        windows.retain_mut(|w| {
            let e = &w.event;
            let closed = e.end_ms <= recorded_until || e.end_ms <= now_ms - 60_000;
            let unsent = journal
                .pending()
                .any(|f| overlaps(e, f.timecode_ms, f.duration_ms));
            if !closed || unsent {
                return true;
            }
            w.event.kind = EventKind::End;
            let _ = w.events.send(w.event.clone());
            false
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn overlaps(w: &WindowEvent, timecode_ms: i64, duration_ms: i64) -> bool {
    timecode_ms < w.end_ms && timecode_ms + duration_ms.max(1) > w.start_ms
}

/// The parts of `[start, end)` that no span covers.
fn gaps(start: i64, end: i64, spans: &[(i64, i64)]) -> Vec<[i64; 2]> {
    let mut spans = spans.to_vec();
    spans.sort_unstable();
    let mut out = Vec::new();
    let mut at = start;
    for (s, e) in spans {
        if s > at && at < end {
            out.push([at, s.min(end)]);
        }
        at = at.max(e);
    }
    if at < end {
        out.push([at, end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_demand() -> UploadPolicy {
        UploadPolicy {
            mode: UploadMode::OnDemand,
            ..Default::default()
        }
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn recording_follows_its_schedule_and_alarms() {
        let always = Recording::new("yard", None);
        assert!(always.records(ms("2026-12-03T03:00:00Z")));
        let office = Recording::new(
            "yard",
            Some(&kvs_edge_config::agent::RecordSchedule {
                schedule: "0 0 8 ? * MON-FRI".into(),
                duration_s: 10 * 3600,
            }),
        );
        // Thursday 2026-12-03.
        assert!(office.records(ms("2026-12-03T08:00:00Z")));
        assert!(office.records(ms("2026-12-03T17:59:59Z")));
        assert!(!office.records(ms("2026-12-03T18:00:00Z")));
        assert!(!office.records(ms("2026-12-05T12:00:00Z")), "Saturday");
        // An alarm at night records until its end.
        office.alarm(ms("2026-12-03T22:01:00Z"));
        assert!(office.records(ms("2026-12-03T22:00:30Z")));
        assert!(!office.records(ms("2026-12-03T22:01:01Z")));
        office.alarm(ms("2026-12-03T21:00:00Z"));
        assert!(
            office.records(ms("2026-12-03T22:00:59Z")),
            "an earlier end does not shorten it"
        );
    }

    #[test]
    fn a_schedule_opens_windows_of_its_duration_in_utc() {
        // Every day at 02:00:00 UTC for an hour, like the Edge Agent's ScheduleConfig.
        let gate = Gate::new(
            "yard",
            &UploadPolicy {
                mode: UploadMode::Scheduled,
                schedule: Some("0 0 2 * * ?".into()),
                duration_s: Some(3600),
                max_bytes_per_sec: Some(250_000),
                ..Default::default()
            },
        );
        let (closed, open, last) = (
            ms("2026-12-03T01:59:59Z"),
            ms("2026-12-03T02:30:00Z"),
            ms("2026-12-03T02:59:59.999Z"),
        );
        assert_eq!(gate.open_window(closed), None);
        let window = (ms("2026-12-03T02:00:00Z"), ms("2026-12-03T03:00:00Z"));
        assert_eq!(gate.open_window(open), Some(window));
        assert_eq!(gate.open_window(last), Some(window));
        assert_eq!(gate.open_window(window.1), None, "the end is not in it");
        // Any fragment while open (the backlog too), none when closed.
        assert!(gate.admits(ms("2026-12-01T00:00:00Z"), 2000, true, open));
        assert!(!gate.admits(open - 60_000, 2000, true, window.1 + 1000));
        assert_eq!(gate.next_change(closed), Some(window.0));
        assert_eq!(gate.next_change(open), Some(window.1));
        assert_eq!(gate.next_change(window.1), Some(window.0 + 86_400_000));
        assert!(gate.closes_idle(closed) && !gate.closes_idle(open));
        assert_ne!(
            gate.epoch(closed),
            gate.epoch(open),
            "a window opening is news"
        );
        assert_eq!(gate.max_bytes_per_sec(), Some(250_000));
    }

    #[test]
    fn a_full_recording_drops_or_keeps_by_its_strategy_and_windows_say_what_is_gone() {
        use crate::journal::{FullPolicy, Journal, JournalConfig, test_support};
        // Room for three 1 s fragments; five recorded on demand (nothing sent).
        let record = |tc: i64| crate::journal::Record {
            deferred: true,
            ..test_support::record(tc, 1000)
        };
        let gate = Gate::new("yard", &on_demand());
        let (tx, _rx) = mpsc::unbounded_channel();
        for (policy, kept) in [
            // DELETE_OLDEST_MEDIA: the newest three stay, the first two are missing.
            (FullPolicy::DeleteOldest, vec![[0, 2000]]),
            // DENY_NEW_MEDIA: the first three stay, the rest was never recorded.
            (FullPolicy::DenyNew, vec![[3000, 5000]]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let one = crate::journal::encoded_len(&record(0));
            let (mut journal, _) = Journal::open(JournalConfig {
                max_bytes: one * 3,
                policy,
                ..test_support::cfg(dir.path())
            })
            .unwrap();
            for tc in 0..5 {
                let _ = journal.append(&record(tc * 1000), 0);
            }
            assert_eq!(journal.pending().count(), 3, "{policy:?}");
            assert!(
                journal.pending().all(|e| e.deferred),
                "recorded, not for sending"
            );
            let asked = WindowRequest {
                id: format!("{policy:?}"),
                start_ms: 0,
                end_ms: 5000,
                events: tx.clone(),
            };
            let new = gate.request(asked, &journal, 10_000).unwrap();
            assert_eq!(
                (new.fragments_available, new.missing),
                (3, kept),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn gaps_are_what_no_fragment_covers() {
        assert_eq!(gaps(0, 10, &[]), vec![[0, 10]]);
        assert_eq!(gaps(0, 10, &[(0, 4), (4, 10)]), Vec::<[i64; 2]>::new());
        assert_eq!(gaps(0, 10, &[(6, 8), (-5, 2)]), vec![[2, 6], [8, 10]]);
        assert_eq!(gaps(0, 10, &[(2, 20)]), vec![[0, 2]]);
        assert_eq!(gaps(5, 5, &[]), Vec::<[i64; 2]>::new());
    }

    #[test]
    fn on_demand_admits_only_what_a_window_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crate::journal::test_support::open(dir.path());
        let gate = Gate::new("front", &on_demand());
        assert!(!gate.admits(1000, 2000, true, 0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let req = |id: &str, start_ms, end_ms| WindowRequest {
            id: id.into(),
            start_ms,
            end_ms,
            events: tx.clone(),
        };
        let mut changed = gate.subscribe();
        let new = gate
            .request(req("w1", 5000, 9000), &journal, 20_000)
            .unwrap();
        assert_eq!(new.kind, EventKind::New);
        assert_eq!(
            new.missing,
            vec![[5000, 9000]],
            "an empty journal has none of it"
        );
        assert!(changed.has_changed().unwrap());
        changed.mark_unchanged();
        assert!(gate.admits(4000, 2000, true, 0) && gate.admits(8999, 1000, true, 0));
        assert!(!gate.admits(3000, 2000, true, 0) && !gate.admits(9000, 1000, true, 0));
        // Delivery is counted per window; the window ends when nothing is left to send.
        gate.delivered(6000, 2000, 1234);
        let update = rx.try_recv().unwrap();
        assert_eq!(
            (update.kind, update.fragments_sent, update.bytes_sent),
            (EventKind::Update, 1, 1234)
        );
        gate.settle(&journal, 20_000 + 60_000);
        assert_eq!(rx.try_recv().unwrap().kind, EventKind::End);
        assert!(
            !gate.admits(6000, 2000, true, 0),
            "an ended window admits nothing"
        );

        for (start, end, why) in [
            (9000, 5000, "after start"),
            (0, MAX_WINDOW_MS + 1, "at most"),
            (30_000, 40_000, "future"),
        ] {
            let e = gate
                .request(req("bad", start, end), &journal, 20_000)
                .unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        // With video on the device: what it lacks is named, and the window stays open
        // while anything of it is unsent.
        let mut journal = journal;
        for tc in [5000, 7000] {
            journal
                .append(&crate::journal::test_support::record(tc, 100), 0)
                .unwrap();
        }
        let new = gate
            .request(req("w2", 5000, 9000), &journal, 20_000)
            .unwrap();
        assert_eq!(
            (new.fragments_available, new.missing),
            (2, vec![[6000, 7000], [8000, 9000]])
        );
        gate.settle(&journal, 100_000);
        assert!(rx.try_recv().is_err(), "two fragments unsent: not ended");
        for seq in journal.pending().map(|e| e.seq).collect::<Vec<_>>() {
            journal.release(seq).unwrap();
        }
        gate.settle(&journal, 100_000);
        assert_eq!(rx.try_recv().unwrap().kind, EventKind::End);

        // A continuous camera sends what it recorded, but what it recorded on demand
        // before (deferred) only when asked for.
        let continuous = Gate::new("back", &UploadPolicy::default());
        assert!(continuous.admits(0, 1, false, 0));
        assert!(!continuous.admits(0, 1, true, 0));
        // And an on-demand camera still sends the backlog it recorded as continuous.
        assert!(gate.admits(0, 1, false, 0));
    }
}
