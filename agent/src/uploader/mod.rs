//! The uploader drives PutMedia sessions for one stream from the camera's journal: it sends
//! unreleased fragments oldest first (so after an outage or a restart the backlog goes out
//! before live video), releases each once the service has it (PERSISTED; RECEIVED on a
//! stream that archives nothing, whose fragments are never PERSISTED), rotates sessions
//! before KVS's 45-minute limit, starts a new session when the tracks change (codec
//! configuration, audio coming or going) or a fragment would not follow the previous one in time (KVS checks that within a
//! session), caps its rate, and retries with jittered backoff. ERROR acks are classified:
//! retryable ones keep the fragment, fatal ones are reported and release it; an ERROR that
//! names no fragment is laid on the one the service was reading, so it cannot loop.
//!
//! Live video comes before older video sent for a window. A continuous camera's journal can
//! hold video recorded under a scheduled or on-demand policy (`deferred`) that a window asks
//! for; KVS takes one PutMedia connection per stream and orders fragments only within a
//! session, so the two share the connection in turns: the window's fragments go (under
//! `window_max_bytes_per_sec`) until live video has waited `live_max_wait_s`, then live
//! catches up in the same session (it is newer), and the window goes on in a new session.
//!
//! RAM stays bounded whatever the backlog: the uploader holds metadata for a window of
//! fragments and reads media bytes from the journal only to send them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kvs_edge_config::agent::{UploadConfig, UploadMode};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, random_u64};
use crate::codec::TrackSet;
use crate::credentials::CredentialSource;
use crate::journal::{Journal, JournalError};
use crate::kvs::DataEndpoint;
use crate::mkv::{self, TrackSpec};
use crate::policy::Gate;
use crate::putmedia::{AckEvent, PutMediaError, Session, SessionParams};
use crate::timeline::WallMs;

mod acks;
mod rate;
mod slots;

pub use acks::{ErrorAction, classify};
use rate::RateCap;
use slots::{Slot, WINDOW, pick};

/// Counters for health and metrics.
#[derive(Debug)]
pub struct UploadStats {
    pub fragments_sent: AtomicU64,
    pub fragments_persisted: AtomicU64,
    /// Fragments released on RECEIVED: the stream's retention is 0, so the service keeps
    /// nothing and never answers PERSISTED.
    pub fragments_received: AtomicU64,
    pub fragments_rejected: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub sessions: AtomicU64,
    pub session_failures: AtomicU64,
    pub error_acks: AtomicU64,
    /// Sessions ended to stay under KVS's connection-age limit.
    pub rotations: AtomicU64,
    pub last_ack_latency_ms: AtomicU64,
    /// The stream's data retention as DescribeStream reported it; -1 until known.
    pub retention_hours: std::sync::atomic::AtomicI64,
    /// Woken whenever a fragment is released, a session fails or rotates (health, tests).
    pub changed: tokio::sync::Notify,
}

impl Default for UploadStats {
    fn default() -> Self {
        UploadStats {
            fragments_sent: AtomicU64::new(0),
            fragments_persisted: AtomicU64::new(0),
            fragments_received: AtomicU64::new(0),
            fragments_rejected: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            session_failures: AtomicU64::new(0),
            error_acks: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            last_ack_latency_ms: AtomicU64::new(0),
            retention_hours: std::sync::atomic::AtomicI64::new(-1),
            changed: tokio::sync::Notify::new(),
        }
    }
}

impl UploadStats {
    /// Waits until `cond` holds; it is re-checked after every PERSISTED, failure or rotation.
    pub async fn wait_until(&self, cond: impl Fn(&UploadStats) -> bool) {
        loop {
            let notified = self.changed.notified();
            if cond(self) {
                return;
            }
            notified.await;
        }
    }

    /// Fragments the service has taken: PERSISTED, or RECEIVED on a stream without archive.
    pub fn delivered(&self) -> u64 {
        self.fragments_persisted.load(Ordering::Relaxed)
            + self.fragments_received.load(Ordering::Relaxed)
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

pub struct Uploader {
    pub stream: String,
    pub region: String,
    pub credentials: Arc<CredentialSource>,
    pub kvs: aws_sdk_kinesisvideo::Client,
    pub cfg: UploadConfig,
    pub stats: Arc<UploadStats>,
    /// TLS for https data endpoints (built once; `None` = built per session).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub journal: Arc<Mutex<Journal>>,
    /// Create the stream when it is missing (kvssink-style); `None` = it must exist.
    pub create_stream: Option<kvs_edge_config::agent::CreateStreamConfig>,
    /// What may be sent (everything, or the windows asked for), and whom to tell.
    pub gate: Arc<Gate>,
}

/// How a session ended.
enum End {
    /// Input closed and everything released: the uploader is done.
    Done,
    /// Rotation or codec change: open the next session at once.
    Next,
    /// Something failed: back off, then try again.
    Failed(String),
    /// Like `Failed`, but an operator must act; wait the longest backoff.
    Operator(String),
}

/// Runs journal work on the blocking pool.
async fn with_journal<T: Send + 'static>(
    journal: &Arc<Mutex<Journal>>,
    f: impl FnOnce(&mut Journal) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || f(&mut journal.lock().unwrap_or_else(|p| p.into_inner())))
        .await
        .expect("journal task does not panic")
}

/// `with_journal` for what only looks at the journal's index or memory (no file I/O): run
/// in place when the journal is free, which it nearly always is, sparing a blocking-pool
/// thread hop; off to the blocking pool when the camera holds it (writing a fragment).
async fn with_journal_index<T: Send + 'static>(
    journal: &Arc<Mutex<Journal>>,
    f: impl FnOnce(&mut Journal) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    let mut f = Some(f);
    let mut run = |j: &mut Journal| f.take().expect("run once")(j);
    let done = match journal.try_lock() {
        Ok(mut guard) => Some(run(&mut guard)),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(run(&mut p.into_inner())),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    match done {
        Some(result) => result,
        None => with_journal(journal, f.expect("not run")).await,
    }
}

impl Uploader {
    /// Runs until `appended` is closed (the camera stopped) and the journal holds nothing
    /// unreleased. Starts with whatever the journal already holds (replay).
    pub async fn run(self, appended: mpsc::Receiver<u64>) {
        self.upload(appended).await;
        let r = Ordering::Relaxed;
        info!(
            stream = %self.stream,
            persisted = self.stats.fragments_persisted.load(r),
            received = self.stats.fragments_received.load(r),
            rejected = self.stats.fragments_rejected.load(r),
            sessions = self.stats.sessions.load(r),
            bytes = self.stats.bytes_sent.load(r),
            "uploader finished"
        );
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.cfg.backoff_min_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
        )
    }

    /// Stream set-up (DescribeStream, CreateStream when allowed, TagStream), retried with
    /// the `[upload]` backoff while the camera keeps journaling. Returns the stream's
    /// retention in hours; `None` once the camera has stopped and nothing waits to be sent
    /// (the runner's shutdown grace bounds the rest).
    async fn set_up(&self, appended: &mut mpsc::Receiver<u64>) -> Option<u32> {
        let mut backoff = self.backoff();
        let mut input_open = true;
        loop {
            if !input_open
                && with_journal(&self.journal, |j| Ok(j.pending_len()))
                    .await
                    .unwrap_or(0)
                    == 0
            {
                return None;
            }
            match crate::kvs::ensure_stream(&self.kvs, &self.stream, self.create_stream.as_ref())
                .await
            {
                Ok(info) => {
                    self.stats
                        .retention_hours
                        .store(i64::from(info.retention_hours), Ordering::Relaxed);
                    if info.retention_hours == 0 {
                        warn!(
                            stream = %self.stream,
                            "the stream's data retention is 0: KVS keeps nothing (no clips, no \
                             playback) and never answers PERSISTED; fragments are released on RECEIVED"
                        );
                    }
                    return Some(info.retention_hours);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(stream = %self.stream, failures = backoff.failures(), "stream set-up: {e}; retrying in {delay:?}");
                    let until = Instant::now() + delay;
                    while input_open {
                        tokio::select! {
                            _ = sleep_until(until) => break,
                            n = appended.recv() => if n.is_none() { input_open = false },
                        }
                    }
                    sleep_until(until).await;
                }
            }
        }
    }

    async fn upload(&self, mut appended: mpsc::Receiver<u64>) {
        let Some(retention_hours) = self.set_up(&mut appended).await else {
            return;
        };
        let release_on = if retention_hours == 0 {
            AckEvent::Received
        } else {
            AckEvent::Persisted
        };
        let mut window: VecDeque<Slot> = VecDeque::new();
        let mut cursor = Cursor {
            pulled: [None, None],
            windows: self.gate.subscribe(),
            seen: (0, None),
        };
        let mut endpoint = DataEndpoint::new(&self.stream);
        let mut backoff = self.backoff();
        let mut rate = RateCap::new(
            self.cfg.max_fragments_per_sec,
            self.cfg
                .max_bytes_per_sec
                .min(self.gate.max_bytes_per_sec().unwrap_or(u64::MAX)),
        );
        let mut window_rate = self
            .gate
            .window_max_bytes_per_sec()
            .map(|max_bytes| RateCap::new(u32::MAX, max_bytes));
        let mut window_since = None;
        let mut input_open = true;
        loop {
            self.refill(&mut window, &mut cursor).await;
            while window.is_empty() {
                if !input_open {
                    return;
                }
                tokio::select! {
                    n = appended.recv() => if n.is_none() { input_open = false },
                    _ = cursor.windows.changed() => {}
                    _ = self.policy_changes() => {}
                }
                self.refill(&mut window, &mut cursor).await;
            }
            let end = match endpoint.get(&self.kvs).await {
                Ok(url) => {
                    let mut session = SessionState {
                        window: &mut window,
                        cursor: &mut cursor,
                        appended: &mut appended,
                        input_open: &mut input_open,
                        backoff: &mut backoff,
                        rate: &mut rate,
                        window_rate: &mut window_rate,
                        window_since: &mut window_since,
                        release_on,
                    };
                    self.session(&url, &mut session).await
                }
                Err(e) => End::Failed(e.to_string()),
            };
            let (reason, delay, level_error) = match end {
                End::Done => return,
                End::Next => continue,
                End::Failed(reason) => (reason, backoff.next_delay(), false),
                End::Operator(reason) => {
                    (reason, Duration::from_millis(self.cfg.backoff_max_ms), true)
                }
            };
            self.stats.bump(&self.stats.session_failures);
            endpoint.invalidate();
            if level_error {
                error!(stream = %self.stream, "PutMedia needs attention: {reason}; retrying in {delay:?}");
            } else {
                warn!(stream = %self.stream, failures = backoff.failures(), "PutMedia: {reason}; retrying in {delay:?}");
            }
            // Meanwhile the camera keeps journaling; nothing waits on us.
            let until = Instant::now() + delay;
            while input_open {
                tokio::select! {
                    _ = sleep_until(until) => break,
                    n = appended.recv() => if n.is_none() { input_open = false },
                }
            }
            if !input_open {
                sleep_until(until).await;
            }
        }
    }

    /// Tops the window up from the journal with what the policy admits, live and deferred
    /// fragments each up to `WINDOW` (after the last one of its kind looked at; all again
    /// when a window was asked for), dropping slots the journal no longer holds (released,
    /// or dropped by its budget). Windows with nothing left to send end here.
    async fn refill(&self, window: &mut VecDeque<Slot>, cursor: &mut Cursor) {
        let now = WallMs::now().0;
        cursor.windows.mark_unchanged();
        let epoch = self.gate.epoch(now);
        if epoch != cursor.seen {
            cursor.seen = epoch;
            cursor.pulled = [None, None];
        }
        let by_policy = self.gate.mode() != UploadMode::Continuous || self.gate.has_windows();
        if by_policy {
            // A schedule window closed: what was not sent yet waits for the next.
            window.retain(|s| {
                s.sent_at.is_some()
                    || self
                        .gate
                        .admits(s.timecode_ms, s.duration_ms, s.deferred, now)
            });
        } else if window.len() >= WINDOW / 2 {
            return;
        }
        let after = cursor.pulled;
        let held = |deferred: bool| window.iter().filter(|s| s.deferred == deferred).count();
        // Without a window or schedule, deferred fragments wait: no need to look at them.
        let want = [
            WINDOW.saturating_sub(held(false)),
            if by_policy {
                WINDOW.saturating_sub(held(true))
            } else {
                0
            },
        ];
        let known: Vec<u64> = window.iter().map(|s| s.seq).collect();
        let gate = self.gate.clone();
        let result = with_journal_index(&self.journal, move |j| {
            let alive: Vec<bool> = known.iter().map(|s| j.get(*s).is_some()).collect();
            let mut looked_at = after;
            let mut new: Vec<(u64, i64, i64, bool, Arc<TrackSet>)> = Vec::new();
            // Each kind from its own cursor, so a long window cannot keep live video out.
            for (kind, deferred) in [(0, false), (1, true)] {
                let mut taken = 0;
                for e in j.pending_after(after[kind]) {
                    if taken >= want[kind] {
                        break;
                    }
                    looked_at[kind] = Some(e.seq);
                    if e.deferred == deferred
                        && !known.contains(&e.seq)
                        && gate.admits(e.timecode_ms, e.duration_ms, e.deferred, now)
                    {
                        taken += 1;
                        new.push((
                            e.seq,
                            e.timecode_ms,
                            e.duration_ms,
                            e.deferred,
                            e.tracks.clone(),
                        ));
                    }
                }
            }
            if by_policy {
                gate.settle(j, now);
            }
            Ok((alive, new, looked_at))
        })
        .await;
        let Ok((alive, new, looked_at)) = result else {
            return;
        };
        cursor.pulled = looked_at;
        let mut i = 0;
        window.retain(|_| {
            let keep = alive[i];
            i += 1;
            keep
        });
        for (seq, timecode_ms, duration_ms, deferred, tracks) in new {
            window.push_back(Slot {
                seq,
                timecode_ms,
                duration_ms,
                deferred,
                tracks,
                sent_at: None,
                len: 0,
                received: false,
                opened_session: false,
            });
        }
    }

    /// Resolves when a schedule window opens or closes.
    async fn policy_changes(&self) {
        let now = WallMs::now().0;
        match self.gate.next_change(now) {
            Some(at) => {
                sleep_until(Instant::now() + Duration::from_millis((at - now).max(0) as u64)).await
            }
            None => std::future::pending().await,
        }
    }

    /// How a failure to open or keep a session ends it: a missing stream needs an operator,
    /// refused credentials are fetched again.
    async fn failed(&self, e: PutMediaError) -> End {
        match e {
            PutMediaError::Http { status: 404, .. } => End::Operator(e.to_string()),
            PutMediaError::Http {
                status: 401 | 403, ..
            } => {
                // Expired or revoked credentials: ask the provider again next time.
                self.credentials.invalidate().await;
                End::Failed(e.to_string())
            }
            e => End::Failed(e.to_string()),
        }
    }

    /// One PutMedia session, from open to end.
    async fn session(&self, url: &str, st: &mut SessionState<'_>) -> End {
        let credentials = match self.credentials.get().await {
            Ok(c) => c,
            Err(e) => return End::Failed(e.to_string()),
        };
        let params = SessionParams {
            endpoint: url.to_string(),
            stream_name: self.stream.clone(),
            region: self.region.clone(),
            credentials,
            producer_start: SystemTime::now(),
            timecodes: Default::default(),
            user_agent: concat!("kvs-edge-agent/", env!("CARGO_PKG_VERSION")).to_string(),
            tls: self.tls.clone(),
        };
        // The body streams at once; the response head is read meanwhile (an HTTP error
        // comes out of the acks).
        let Session {
            mut upload,
            mut acks,
        } = match Session::open(&params, Duration::from_secs(10)).await {
            Ok(s) => s,
            Err(e) => return self.failed(e).await,
        };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let window = &mut *st.window;
        for s in window.iter_mut() {
            s.sent_at = None;
            s.received = false;
            s.opened_session = false;
        }
        let live_max_wait = self.gate.live_max_wait();
        let window_turn = |since: &Option<Instant>, sent_live: bool| {
            !sent_live && since.is_none_or(|t| Instant::now() < t + live_max_wait)
        };
        // The fragment to go first sets the session's tracks.
        let first = pick(window, window_turn(st.window_since, false)).unwrap_or(0);
        let header_seq = window[first].seq;
        let tracks = window[first].tracks.clone();
        let mut uid = [0u8; 16];
        uid[..8].copy_from_slice(&random_u64().to_be_bytes());
        uid[8..].copy_from_slice(&random_u64().to_be_bytes());
        let header = mkv::session_header(
            uid,
            &TrackSpec::of(&tracks),
            concat!("kvs-edge-agent ", env!("CARGO_PKG_VERSION")),
        );
        if let Err(e) = upload.send(Bytes::from(header)).await {
            return self
                .send_failed(e, &mut acks, window, st.backoff, st.release_on, header_seq)
                .await;
        }
        let v = &tracks.video;
        debug!(stream = %self.stream, url, audio = ?tracks.audio.as_ref().map(|a| a.codec), "PutMedia session open ({} {}x{})", v.codec, v.width, v.height);
        let rotate_at = Instant::now() + Duration::from_secs(self.cfg.session_rotate_secs);
        let ack_timeout = Duration::from_secs(self.cfg.ack_timeout_secs);
        let mut draining: Option<End> = None;
        // Where the last fragment sent in this session ends: the next must start after it.
        let mut sent_until: Option<i64> = None;
        // The next fragment's bytes, read from the journal ahead of its turn.
        let mut ready: Option<(u64, Bytes)> = None;
        // A live fragment went in this session: older (window) fragments cannot follow.
        let mut sent_live = false;
        loop {
            self.refill(window, st.cursor).await;
            let live_waiting = window.iter().any(|s| s.sent_at.is_none() && !s.deferred);
            let next = pick(window, window_turn(st.window_since, sent_live));
            if next.is_some_and(|i| window[i].deferred) && live_waiting {
                st.window_since.get_or_insert_with(Instant::now);
            }
            // When live video's wait is up, its turn comes without another event.
            let turn_ends = st
                .window_since
                .filter(|_| live_waiting && !sent_live)
                .map(|t| t + live_max_wait)
                .filter(|at| *at > Instant::now());
            let in_flight = window.iter().filter(|s| s.sent_at.is_some()).count();
            if draining.is_none() {
                if let Some(i) = next
                    && window[i].tracks != tracks
                {
                    draining = Some(End::Next);
                } else if let Some(i) = next
                    && sent_until.is_some_and(|until| window[i].timecode_ms < until)
                {
                    // KVS refuses (4004) a fragment that does not follow the previous one
                    // within a session; a new session takes it.
                    info!(stream = %self.stream, timecode = window[i].timecode_ms, "a fragment starts before the previous one ends (the clock stepped back?): sending it in a new session");
                    draining = Some(End::Next);
                } else if Instant::now() >= rotate_at {
                    debug!(stream = %self.stream, "rotating the PutMedia session");
                    self.stats.bump(&self.stats.rotations);
                    draining = Some(End::Next);
                } else if !*st.input_open && next.is_none() {
                    draining = Some(End::Done);
                } else if next.is_none() && self.gate.closes_idle(WallMs::now().0) {
                    // Everything asked for is sent, or the schedule window closed: close
                    // the session rather than keep an idle one open (the service would end
                    // it after 30 s without frames).
                    draining = Some(End::Next);
                }
                if draining.is_some() {
                    upload.finish();
                }
            }
            if in_flight == 0
                && let Some(end) = draining.take()
            {
                return end;
            }
            // Load the next fragment's bytes (once) when it may be sent in this session.
            let sendable =
                next.filter(|_| draining.is_none() && in_flight < self.cfg.max_in_flight);
            if let Some(i) = sendable
                && ready.as_ref().is_none_or(|(seq, _)| *seq != window[i].seq)
            {
                let seq = window[i].seq;
                // The newest fragment is in memory; older ones are read back from disk.
                let loaded =
                    match with_journal_index(&self.journal, move |j| Ok(j.hot_media(seq))).await {
                        Ok(Some(media)) => Ok(Some(media)),
                        _ => {
                            with_journal(&self.journal, move |j| match j.get(seq).cloned() {
                                Some(e) => j.read_media(&e).map(Some),
                                None => Ok(None),
                            })
                            .await
                        }
                    };
                match loaded {
                    Ok(Some(media)) => ready = Some((seq, media)),
                    Ok(None) => {
                        // Dropped by the journal's budget meanwhile.
                        window.remove(i);
                        continue;
                    }
                    Err(e) => {
                        error!(stream = %self.stream, "{e}: skipping this fragment");
                        let _ = with_journal(&self.journal, move |j| j.release(seq)).await;
                        self.stats
                            .fragments_rejected
                            .fetch_add(1, Ordering::Relaxed);
                        window.remove(i);
                        continue;
                    }
                }
            }
            let payload = sendable
                .and_then(|i| ready.as_ref().filter(|(seq, _)| *seq == window[i].seq))
                .map(|(_, b)| b.clone());
            let deferred = sendable.is_some_and(|i| window[i].deferred);
            let send_at = payload.as_ref().map(|_| {
                let at = st.rate.next_slot();
                match st.window_rate.as_mut() {
                    Some(cap) if deferred => at.max(cap.next_slot()),
                    _ => at,
                }
            });
            let oldest = window.iter().filter_map(|s| s.sent_at).min();
            let deadline = oldest.map(|t| t + ack_timeout).unwrap_or(rotate_at);
            tokio::select! {
                biased;
                ack = acks.next() => match ack {
                    None => return End::Failed("the service closed the session".into()),
                    Some(Err(e)) => return self.failed(e).await,
                    Some(Ok(ack)) => {
                        if let Some(end) = self.on_ack(&ack, window, st.backoff, st.release_on, header_seq).await {
                            return end;
                        }
                    }
                },
                n = st.appended.recv(), if *st.input_open => if n.is_none() { *st.input_open = false },
                _ = st.cursor.windows.changed() => {}
                _ = self.policy_changes() => {}
                _ = async { sleep_until(turn_ends.expect("guarded")).await }, if turn_ends.is_some() => {}
                sent = async {
                    sleep_until(send_at.expect("guarded")).await;
                    upload.send(payload.clone().expect("guarded")).await
                }, if payload.is_some() => match sent {
                    Ok(()) => {
                        let i = sendable.expect("payload implies a slot");
                        let len = payload.as_ref().map_or(0, |b| b.len() as u64);
                        window[i].opened_session = sent_until.is_none();
                        window[i].sent_at = Some(Instant::now());
                        window[i].len = len;
                        sent_until = Some(sent_until.unwrap_or(i64::MIN).max(window[i].end_ms()));
                        st.rate.record(len);
                        if window[i].deferred {
                            if let Some(cap) = st.window_rate.as_mut() {
                                cap.record(len);
                            }
                        } else {
                            sent_live = true;
                            *st.window_since = None;
                        }
                        ready = None;
                        self.stats.fragments_sent.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(e) => {
                        return self
                            .send_failed(e, &mut acks, window, st.backoff, st.release_on, header_seq)
                            .await;
                    }
                },
                _ = sleep_until(deadline) => {
                    if oldest.is_some() {
                        return End::Failed(format!("no ack within {ack_timeout:?}"));
                    }
                }
            }
        }
    }
}

/// Where the uploader is in the journal: the last fragment it looked at for live and for
/// deferred fragments, and the policy's windows as last seen (a new window means looking at
/// everything again).
struct Cursor {
    pulled: [Option<u64>; 2],
    windows: watch::Receiver<u64>,
    seen: (u64, Option<i64>),
}

/// What one session works on, borrowed from the upload loop.
struct SessionState<'a> {
    window: &'a mut VecDeque<Slot>,
    cursor: &'a mut Cursor,
    appended: &'a mut mpsc::Receiver<u64>,
    input_open: &'a mut bool,
    backoff: &'a mut Backoff,
    rate: &'a mut RateCap,
    /// `window_max_bytes_per_sec` for deferred fragments.
    window_rate: &'a mut Option<RateCap>,
    /// Since when live video has waited behind a window's fragments.
    window_since: &'a mut Option<Instant>,
    /// PERSISTED normally; RECEIVED on a stream whose retention is 0.
    release_on: AckEvent,
}
