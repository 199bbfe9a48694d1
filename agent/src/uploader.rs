//! The uploader drives PutMedia sessions for one stream from the camera's journal: it sends
//! unreleased fragments oldest first (so after an outage or a restart the backlog goes out
//! before live video, keeping the stream's timecodes monotonic), releases each on its
//! PERSISTED ack, rotates sessions before KVS's 45-minute limit, starts a new session when the
//! codec configuration changes, caps its rate, and retries with jittered backoff. ERROR acks
//! are classified: retryable ones keep the fragment, fatal ones are reported and release it.
//!
//! RAM stays bounded whatever the backlog: the uploader holds metadata for a window of
//! fragments and reads media bytes from the journal only to send them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kvs_edge_config::agent::UploadConfig;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, random_u64};
use crate::capture::CodecConfig;
use crate::credentials::CredentialSource;
use crate::journal::{Journal, JournalError};
use crate::kvs::DataEndpoint;
use crate::mkv::{self, TrackSpec};
use crate::putmedia::{Ack, AckEvent, PutMediaError, Session, SessionParams};

/// Counters for health and metrics.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub fragments_sent: AtomicU64,
    pub fragments_persisted: AtomicU64,
    pub fragments_rejected: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub sessions: AtomicU64,
    pub session_failures: AtomicU64,
    pub error_acks: AtomicU64,
    /// Sessions ended to stay under KVS's connection-age limit.
    pub rotations: AtomicU64,
    pub last_ack_latency_ms: AtomicU64,
    /// Woken whenever a fragment is PERSISTED, a session fails or rotates (health, tests).
    pub changed: tokio::sync::Notify,
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

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

/// What to do about an ERROR ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Keep the fragment and retry in a new session after backoff.
    Retry,
    /// Start a new session right away (4003: the connection is too old).
    Rotate,
    /// KVS already has this fragment (4004 after a lost ack): release it, go on.
    AlreadyStored,
    /// The fragment can never be accepted: release it (counted) and go on.
    DropFragment,
    /// A stream or account problem an operator must fix; retried at the longest backoff.
    Operator,
}

/// Classifies a PutMedia ErrorId.
pub fn classify(error_id: u32) -> ErrorAction {
    match error_id {
        4003 => ErrorAction::Rotate,
        4004 => ErrorAction::AlreadyStored,
        4001 | 4002 | 4005 | 4006 | 4007 | 4009 | 4010 | 4011 | 4012 => ErrorAction::DropFragment,
        4008 | 4500..=4506 => ErrorAction::Operator,
        _ => ErrorAction::Retry,
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
}

/// A fragment of the window: the journal's metadata, and when it went out in this session.
struct Slot {
    seq: u64,
    timecode_ms: i64,
    codec: Arc<CodecConfig>,
    sent_at: Option<Instant>,
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

/// Fragments kept in the window at most: metadata only, the media stays on disk.
const WINDOW: usize = 64;

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

/// Paces sends to a fragment rate and a byte rate.
struct RateCap {
    fragments: Vec<Instant>,
    bytes: VecDeque<(Instant, u64)>,
    max_fragments: u32,
    max_bytes: u64,
}

impl RateCap {
    /// When the next fragment of `len` bytes may go.
    fn next_slot(&mut self, len: u64) -> Instant {
        let now = Instant::now();
        let window = Duration::from_secs(1);
        self.fragments.retain(|t| now.duration_since(*t) < window);
        while self
            .bytes
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            self.bytes.pop_front();
        }
        let mut at = now;
        if self.fragments.len() as u32 >= self.max_fragments
            && let Some(first) = self.fragments.first()
        {
            at = at.max(*first + window);
        }
        let used: u64 = self.bytes.iter().map(|(_, b)| b).sum();
        if used + len > self.max_bytes {
            // Wait until enough of the last second's bytes have aged out.
            let mut freed = 0;
            for (t, b) in &self.bytes {
                freed += b;
                if used - freed + len <= self.max_bytes {
                    at = at.max(*t + window);
                    break;
                }
            }
        }
        at
    }

    fn record(&mut self, len: u64) {
        let now = Instant::now();
        self.fragments.push(now);
        self.bytes.push_back((now, len));
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
            rejected = self.stats.fragments_rejected.load(r),
            sessions = self.stats.sessions.load(r),
            "uploader finished"
        );
    }

    /// Stream set-up (DescribeStream, CreateStream when allowed, TagStream), retried with
    /// backoff while the camera keeps journaling. False when the camera stopped meanwhile.
    async fn set_up(&self, appended: &mut mpsc::Receiver<u64>) -> bool {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            match crate::kvs::ensure_stream(&self.kvs, &self.stream, self.create_stream.as_ref())
                .await
            {
                Ok(()) => return true,
                Err(e) => {
                    let delay = backoff.next_delay();
                    error!(stream = %self.stream, "{e}; retrying in {delay:?}");
                    let until = Instant::now() + delay;
                    loop {
                        tokio::select! {
                            _ = sleep_until(until) => break,
                            n = appended.recv() => if n.is_none() { return false },
                        }
                    }
                }
            }
        }
    }

    async fn upload(&self, mut appended: mpsc::Receiver<u64>) {
        if !self.set_up(&mut appended).await {
            return;
        }
        let mut window: VecDeque<Slot> = VecDeque::new();
        let mut pulled: Option<u64> = None;
        let mut endpoint = DataEndpoint::new(&self.stream);
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.backoff_min_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
        );
        let mut rate = RateCap {
            fragments: Vec::new(),
            bytes: VecDeque::new(),
            max_fragments: self.cfg.max_fragments_per_sec,
            max_bytes: self.cfg.max_bytes_per_sec,
        };
        let mut input_open = true;
        loop {
            self.refill(&mut window, &mut pulled).await;
            while window.is_empty() {
                if !input_open {
                    return;
                }
                match appended.recv().await {
                    Some(_) => self.refill(&mut window, &mut pulled).await,
                    None => input_open = false,
                }
            }
            let end = match endpoint.get(&self.kvs).await {
                Ok(url) => {
                    self.session(
                        &url,
                        &mut window,
                        &mut pulled,
                        &mut appended,
                        &mut input_open,
                        &mut backoff,
                        &mut rate,
                    )
                    .await
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

    /// Tops the window up from the journal (fragments after the last one pulled), dropping
    /// slots the journal no longer holds (released, or dropped by its budget).
    async fn refill(&self, window: &mut VecDeque<Slot>, pulled: &mut Option<u64>) {
        if window.len() >= WINDOW / 2 {
            return;
        }
        let after = *pulled;
        let want = WINDOW - window.len();
        let known: Vec<u64> = window.iter().map(|s| s.seq).collect();
        let result = with_journal(&self.journal, move |j| {
            let alive: Vec<bool> = known.iter().map(|s| j.get(*s).is_some()).collect();
            let new: Vec<(u64, i64, Arc<CodecConfig>)> = j
                .pending_after(after)
                .take(want)
                .map(|e| (e.seq, e.timecode_ms, e.codec.clone()))
                .collect();
            Ok((alive, new))
        })
        .await;
        let Ok((alive, new)) = result else { return };
        let mut i = 0;
        window.retain(|_| {
            let keep = alive[i];
            i += 1;
            keep
        });
        for (seq, timecode_ms, codec) in new {
            *pulled = Some(seq);
            window.push_back(Slot {
                seq,
                timecode_ms,
                codec,
                sent_at: None,
            });
        }
    }

    /// One PutMedia session, from open to end.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        url: &str,
        window: &mut VecDeque<Slot>,
        pulled: &mut Option<u64>,
        appended: &mut mpsc::Receiver<u64>,
        input_open: &mut bool,
        backoff: &mut Backoff,
        rate: &mut RateCap,
    ) -> End {
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
            user_agent: concat!("kvs-edge-agent/", env!("CARGO_PKG_VERSION")).to_string(),
            tls: self.tls.clone(),
        };
        let session = match Session::open(&params, Duration::from_secs(10)).await {
            Ok(s) => s,
            Err(e @ PutMediaError::Http { status: 404, .. }) => {
                return End::Operator(e.to_string());
            }
            Err(
                e @ PutMediaError::Http {
                    status: 401 | 403, ..
                },
            ) => {
                // Expired or revoked credentials: ask the provider again next time.
                self.credentials.invalidate().await;
                return End::Failed(e.to_string());
            }
            Err(e) => return End::Failed(e.to_string()),
        };
        let Session {
            mut upload,
            mut acks,
        } = session;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let codec = window.front().expect("non-empty").codec.clone();
        let mut uid = [0u8; 16];
        uid[..8].copy_from_slice(&random_u64().to_be_bytes());
        uid[8..].copy_from_slice(&random_u64().to_be_bytes());
        let header = mkv::session_header(
            uid,
            &[TrackSpec::h264(
                codec.avcc.clone(),
                codec.width,
                codec.height,
            )],
            concat!("kvs-edge-agent ", env!("CARGO_PKG_VERSION")),
        );
        if let Err(e) = upload.send(Bytes::from(header)).await {
            return End::Failed(e.to_string());
        }
        for s in window.iter_mut() {
            s.sent_at = None;
        }
        debug!(stream = %self.stream, url, "PutMedia session open ({}x{})", codec.width, codec.height);
        let rotate_at = Instant::now() + Duration::from_secs(self.cfg.session_rotate_secs);
        let ack_timeout = Duration::from_secs(self.cfg.ack_timeout_secs);
        let mut draining: Option<End> = None;
        // The next fragment's bytes, read from the journal ahead of its turn.
        let mut ready: Option<(u64, Bytes)> = None;
        loop {
            self.refill(window, pulled).await;
            let next = window.iter().position(|s| s.sent_at.is_none());
            let in_flight = window.iter().filter(|s| s.sent_at.is_some()).count();
            if draining.is_none() {
                if let Some(i) = next
                    && window[i].codec != codec
                {
                    draining = Some(End::Next);
                } else if Instant::now() >= rotate_at {
                    debug!(stream = %self.stream, "rotating the PutMedia session");
                    self.stats.bump(&self.stats.rotations);
                    draining = Some(End::Next);
                } else if !*input_open && next.is_none() {
                    draining = Some(End::Done);
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
                match with_journal(&self.journal, move |j| match j.get(seq).cloned() {
                    Some(e) => j.read_media(&e).map(Some),
                    None => Ok(None),
                })
                .await
                {
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
            let send_at = payload.as_ref().map(|b| rate.next_slot(b.len() as u64));
            let oldest = window.iter().filter_map(|s| s.sent_at).min();
            let deadline = oldest.map(|t| t + ack_timeout).unwrap_or(rotate_at);
            tokio::select! {
                biased;
                ack = acks.next() => match ack {
                    None => return End::Failed("the service closed the session".into()),
                    Some(Err(e)) => return End::Failed(e.to_string()),
                    Some(Ok(ack)) => {
                        if let Some(end) = self.on_ack(&ack, window, backoff).await {
                            return end;
                        }
                    }
                },
                n = appended.recv(), if *input_open => if n.is_none() { *input_open = false },
                sent = async {
                    sleep_until(send_at.expect("guarded")).await;
                    upload.send(payload.clone().expect("guarded")).await
                }, if payload.is_some() => match sent {
                    Ok(()) => {
                        let i = sendable.expect("payload implies a slot");
                        let len = payload.as_ref().map_or(0, |b| b.len() as u64);
                        window[i].sent_at = Some(Instant::now());
                        rate.record(len);
                        ready = None;
                        self.stats.fragments_sent.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(e) => return End::Failed(e.to_string()),
                },
                _ = sleep_until(deadline) => {
                    if oldest.is_some() {
                        return End::Failed(format!("no ack within {ack_timeout:?}"));
                    }
                }
            }
        }
    }

    /// Releases a fragment from the journal and the window.
    async fn release(&self, window: &mut VecDeque<Slot>, timecode_ms: i64) -> Option<Slot> {
        let i = window.iter().position(|s| s.timecode_ms == timecode_ms)?;
        let slot = window.remove(i)?;
        let seq = slot.seq;
        if let Err(e) = with_journal(&self.journal, move |j| j.release(seq)).await {
            // Not fatal: the fragment may be resent, and KVS answers that with 4004.
            warn!(stream = %self.stream, "{e}");
        }
        Some(slot)
    }

    /// Applies one ack; `Some` ends the session.
    async fn on_ack(
        &self,
        ack: &Ack,
        window: &mut VecDeque<Slot>,
        backoff: &mut Backoff,
    ) -> Option<End> {
        match ack.event_type {
            AckEvent::Persisted => {
                let tc = ack.fragment_timecode?;
                if let Some(slot) = self.release(window, tc).await {
                    let latency = slot
                        .sent_at
                        .map_or(0, |sent| sent.elapsed().as_millis() as u64);
                    self.stats
                        .last_ack_latency_ms
                        .store(latency, Ordering::Relaxed);
                    debug!(stream = %self.stream, timecode = tc, latency_ms = latency, "PERSISTED");
                    self.stats.bump(&self.stats.fragments_persisted);
                    backoff.reset();
                }
                None
            }
            AckEvent::Error => {
                self.stats.error_acks.fetch_add(1, Ordering::Relaxed);
                let id = ack.error_id.unwrap_or(0);
                let code = ack.error_code.clone().unwrap_or_default();
                let what = format!("ERROR {id} {code} for fragment {:?}", ack.fragment_timecode);
                match classify(id) {
                    ErrorAction::Retry => Some(End::Failed(what)),
                    ErrorAction::Rotate => Some(End::Next),
                    ErrorAction::Operator => Some(End::Operator(what)),
                    ErrorAction::AlreadyStored => {
                        if let Some(tc) = ack.fragment_timecode
                            && self.release(window, tc).await.is_some()
                        {
                            info!(stream = %self.stream, "{what}: KVS already has it (an ack was lost); skipping it");
                            self.stats.bump(&self.stats.fragments_persisted);
                        }
                        Some(End::Next)
                    }
                    ErrorAction::DropFragment => {
                        if let Some(tc) = ack.fragment_timecode
                            && self.release(window, tc).await.is_some()
                        {
                            self.stats
                                .fragments_rejected
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        error!(stream = %self.stream, "{what}: KVS will never accept this fragment; dropped it");
                        Some(End::Failed(what))
                    }
                }
            }
            AckEvent::Buffering | AckEvent::Received | AckEvent::Idle => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_ids_are_classified() {
        assert_eq!(classify(4003), ErrorAction::Rotate);
        assert_eq!(classify(4004), ErrorAction::AlreadyStored);
        assert_eq!(classify(4011), ErrorAction::DropFragment);
        assert_eq!(classify(4008), ErrorAction::Operator);
        assert_eq!(classify(4502), ErrorAction::Operator);
        assert_eq!(classify(5000), ErrorAction::Retry);
        assert_eq!(classify(5001), ErrorAction::Retry);
        assert_eq!(classify(4000), ErrorAction::Retry);
    }

    #[test]
    fn the_rate_cap_spaces_fragments() {
        let second = Duration::from_secs(1);
        let mut cap = RateCap {
            fragments: Vec::new(),
            bytes: VecDeque::new(),
            max_fragments: 2,
            max_bytes: 1000,
        };
        for _ in 0..2 {
            assert!(cap.next_slot(100) <= Instant::now(), "within the cap: now");
            cap.record(100);
        }
        let third = cap.next_slot(100);
        assert!(
            third > Instant::now() + second / 2,
            "a third fragment in the same second waits"
        );
        let mut cap = RateCap {
            fragments: Vec::new(),
            bytes: VecDeque::new(),
            max_fragments: 100,
            max_bytes: 1000,
        };
        cap.record(900);
        assert!(
            cap.next_slot(200) > Instant::now() + second / 2,
            "over the byte cap waits"
        );
        assert!(cap.next_slot(100) <= Instant::now());
    }
}
