//! The uploader drives PutMedia sessions for one stream: it keeps every fragment until KVS
//! says PERSISTED, opens sessions (header first, then the unacknowledged fragments oldest
//! first), rotates them before KVS's 45-minute limit, starts a new session when the codec
//! configuration changes, and retries with jittered backoff. ERROR acks are classified:
//! retryable ones keep the fragment, fatal ones are reported and drop it.
//!
//! Until the journal lands, unacknowledged fragments live in a bounded in-memory buffer: when
//! it is full the oldest are dropped, counted and logged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kvs_edge_config::agent::UploadConfig;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, random_u64};
use crate::capture::CodecConfig;
use crate::credentials::CredentialSource;
use crate::kvs::DataEndpoint;
use crate::mkv::{self, TrackSpec};
use crate::putmedia::{Ack, AckEvent, PutMediaError, Session, SessionParams};

/// A fragment on its way to KVS.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub timecode_ms: i64,
    pub duration_ms: i64,
    pub bytes: Bytes,
    pub codec: Arc<CodecConfig>,
}

/// Counters for health and metrics.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub fragments_sent: AtomicU64,
    pub fragments_persisted: AtomicU64,
    pub fragments_dropped: AtomicU64,
    pub fragments_rejected: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub sessions: AtomicU64,
    pub session_failures: AtomicU64,
    pub error_acks: AtomicU64,
    /// Sessions ended to stay under KVS's connection-age limit.
    pub rotations: AtomicU64,
    pub last_ack_latency_ms: AtomicU64,
    pub buffered_fragments: AtomicU64,
    pub buffered_bytes: AtomicU64,
    /// Producer timestamp of the newest PERSISTED fragment.
    pub last_persisted_ms: AtomicI64,
    /// Woken whenever a fragment is PERSISTED, a session fails or rotates (health, tests).
    pub changed: tokio::sync::Notify,
}

impl UploadStats {
    /// Waits until `cond` holds; it is re-checked after every PERSISTED or failure.
    pub async fn wait_until(&self, cond: impl Fn(&UploadStats) -> bool) {
        loop {
            let notified = self.changed.notified();
            if cond(self) {
                return;
            }
            notified.await;
        }
    }
}

/// What to do about an ERROR ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Keep the fragment and retry in a new session after backoff.
    Retry,
    /// Start a new session right away (4003: the connection is too old).
    Rotate,
    /// KVS already has this fragment (4004 after a lost ack): forget it, go on.
    AlreadyStored,
    /// The fragment can never be accepted: drop it (counted) and go on.
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
}

struct Entry {
    out: Outgoing,
    sent_at: Option<Instant>,
}

/// How a session ended.
enum End {
    /// Input closed and everything acknowledged: the uploader is done.
    Done,
    /// Rotation or codec change: open the next session at once.
    Next,
    /// Something failed: back off, then try again.
    Failed(String),
    /// Like `Failed`, but an operator must act; wait the longest backoff.
    Operator(String),
}

impl Uploader {
    /// Runs until `input` is closed and every buffered fragment is PERSISTED or dropped.
    pub async fn run(self, input: mpsc::Receiver<Outgoing>) {
        self.upload(input).await;
        let r = Ordering::Relaxed;
        info!(
            stream = %self.stream,
            persisted = self.stats.fragments_persisted.load(r),
            dropped = self.stats.fragments_dropped.load(r),
            rejected = self.stats.fragments_rejected.load(r),
            sessions = self.stats.sessions.load(r),
            "uploader finished"
        );
    }

    async fn upload(&self, mut input: mpsc::Receiver<Outgoing>) {
        let mut queue: VecDeque<Entry> = VecDeque::new();
        let mut endpoint = DataEndpoint::new(&self.stream);
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.backoff_min_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
        );
        let mut input_open = true;
        loop {
            while queue.is_empty() {
                if !input_open {
                    return;
                }
                match input.recv().await {
                    Some(out) => self.push(&mut queue, out),
                    None => input_open = false,
                }
            }
            let end = match endpoint.get(&self.kvs).await {
                Ok(url) => {
                    self.session(&url, &mut queue, &mut input, &mut input_open, &mut backoff)
                        .await
                }
                Err(e) => End::Failed(e.to_string()),
            };
            match end {
                End::Done => return,
                End::Next => continue,
                End::Failed(reason) | End::Operator(reason) if !input_open && queue.is_empty() => {
                    debug!(stream = %self.stream, "last session ended: {reason}");
                    return;
                }
                End::Failed(reason) => {
                    self.stats.session_failures.fetch_add(1, Ordering::Relaxed);
                    self.stats.changed.notify_waiters();
                    endpoint.invalidate();
                    let delay = backoff.next_delay();
                    warn!(stream = %self.stream, failures = backoff.failures(), "PutMedia: {reason}; retrying in {delay:?}");
                    self.wait_buffering(delay, &mut queue, &mut input, &mut input_open)
                        .await;
                }
                End::Operator(reason) => {
                    self.stats.session_failures.fetch_add(1, Ordering::Relaxed);
                    self.stats.changed.notify_waiters();
                    endpoint.invalidate();
                    let delay = Duration::from_millis(self.cfg.backoff_max_ms);
                    error!(stream = %self.stream, "PutMedia needs attention: {reason}; retrying in {delay:?}");
                    self.wait_buffering(delay, &mut queue, &mut input, &mut input_open)
                        .await;
                }
            }
        }
    }

    /// Waits out a backoff while still taking fragments in (so capture never blocks).
    async fn wait_buffering(
        &self,
        delay: Duration,
        queue: &mut VecDeque<Entry>,
        input: &mut mpsc::Receiver<Outgoing>,
        input_open: &mut bool,
    ) {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return,
                out = input.recv(), if *input_open => match out {
                    Some(out) => self.push(queue, out),
                    None => *input_open = false,
                },
            }
        }
    }

    /// Adds a fragment, dropping the oldest when the buffer budget is exceeded.
    fn push(&self, queue: &mut VecDeque<Entry>, out: Outgoing) {
        queue.push_back(Entry { out, sent_at: None });
        let budget = self.cfg.max_buffer_mib * 1024 * 1024;
        let mut bytes: u64 = queue.iter().map(|e| e.out.bytes.len() as u64).sum();
        let mut dropped = 0;
        while bytes > budget && queue.len() > 1 {
            let e = queue.pop_front().expect("len > 1");
            bytes -= e.out.bytes.len() as u64;
            dropped += 1;
        }
        if dropped > 0 {
            let total = self
                .stats
                .fragments_dropped
                .fetch_add(dropped, Ordering::Relaxed)
                + dropped;
            warn!(stream = %self.stream, dropped, total, "upload buffer full ({} MiB): dropped the oldest fragments", self.cfg.max_buffer_mib);
        }
        self.stats
            .buffered_fragments
            .store(queue.len() as u64, Ordering::Relaxed);
        self.stats.buffered_bytes.store(bytes, Ordering::Relaxed);
    }

    fn remove(&self, queue: &mut VecDeque<Entry>, timecode_ms: i64) -> Option<Entry> {
        let i = queue
            .iter()
            .position(|e| e.out.timecode_ms == timecode_ms)?;
        let e = queue.remove(i);
        self.stats
            .buffered_fragments
            .store(queue.len() as u64, Ordering::Relaxed);
        self.stats.buffered_bytes.store(
            queue.iter().map(|e| e.out.bytes.len() as u64).sum(),
            Ordering::Relaxed,
        );
        e
    }

    /// One PutMedia session, from open to end.
    async fn session(
        &self,
        url: &str,
        queue: &mut VecDeque<Entry>,
        input: &mut mpsc::Receiver<Outgoing>,
        input_open: &mut bool,
        backoff: &mut Backoff,
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
        let Session { upload, mut acks } = session;
        let mut upload = upload;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        let codec = queue.front().expect("non-empty").out.codec.clone();
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
        for e in queue.iter_mut() {
            e.sent_at = None;
        }
        debug!(stream = %self.stream, url, "PutMedia session open ({}x{})", codec.width, codec.height);
        let rotate_at = Instant::now() + Duration::from_secs(self.cfg.session_rotate_secs);
        let ack_timeout = Duration::from_secs(self.cfg.ack_timeout_secs);
        let mut draining: Option<End> = None;
        loop {
            // What to send next: the oldest unsent fragment, if it fits this session.
            let next = queue.iter().position(|e| e.sent_at.is_none());
            let in_flight = queue.iter().any(|e| e.sent_at.is_some());
            if draining.is_none() {
                if let Some(i) = next
                    && queue[i].out.codec != codec
                {
                    draining = Some(End::Next);
                } else if Instant::now() >= rotate_at {
                    debug!(stream = %self.stream, "rotating the PutMedia session");
                    self.stats.rotations.fetch_add(1, Ordering::Relaxed);
                    self.stats.changed.notify_waiters();
                    draining = Some(End::Next);
                } else if !*input_open && next.is_none() {
                    draining = Some(End::Done);
                }
                if draining.is_some() {
                    upload.finish();
                }
            }
            if !in_flight && let Some(end) = draining.take() {
                return end;
            }
            let sendable = if draining.is_none() { next } else { None };
            let oldest = queue.iter().filter_map(|e| e.sent_at).min();
            let deadline = oldest.map(|t| t + ack_timeout).unwrap_or(rotate_at);
            let payload = sendable.map(|i| queue[i].out.bytes.clone());
            tokio::select! {
                biased;
                ack = acks.next() => match ack {
                    None => return End::Failed("the service closed the session".into()),
                    Some(Err(e)) => return End::Failed(e.to_string()),
                    Some(Ok(ack)) => {
                        if let Some(end) = self.on_ack(&ack, queue, backoff) {
                            return end;
                        }
                    }
                },
                out = input.recv(), if *input_open => match out {
                    Some(out) => self.push(queue, out),
                    None => *input_open = false,
                },
                sent = upload.send(payload.clone().unwrap_or_default()), if payload.is_some() => match sent {
                    Ok(()) => {
                        let i = sendable.expect("payload implies index");
                        queue[i].sent_at = Some(Instant::now());
                        self.stats.fragments_sent.fetch_add(1, Ordering::Relaxed);
                        self.stats.bytes_sent.fetch_add(queue[i].out.bytes.len() as u64, Ordering::Relaxed);
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

    /// Applies one ack; `Some` ends the session.
    fn on_ack(&self, ack: &Ack, queue: &mut VecDeque<Entry>, backoff: &mut Backoff) -> Option<End> {
        match ack.event_type {
            AckEvent::Persisted => {
                let tc = ack.fragment_timecode?;
                if let Some(e) = self.remove(queue, tc) {
                    let latency = e
                        .sent_at
                        .map_or(0, |sent| sent.elapsed().as_millis() as u64);
                    self.stats
                        .last_ack_latency_ms
                        .store(latency, Ordering::Relaxed);
                    debug!(stream = %self.stream, timecode = tc, latency_ms = latency, "PERSISTED");
                    self.stats
                        .fragments_persisted
                        .fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .last_persisted_ms
                        .fetch_max(tc, Ordering::Relaxed);
                    self.stats.changed.notify_waiters();
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
                            && self.remove(queue, tc).is_some()
                        {
                            info!(stream = %self.stream, "{what}: KVS already has it (an ack was lost); skipping it");
                            self.stats
                                .fragments_persisted
                                .fetch_add(1, Ordering::Relaxed);
                            self.stats.changed.notify_waiters();
                        }
                        Some(End::Next)
                    }
                    ErrorAction::DropFragment => {
                        if let Some(tc) = ack.fragment_timecode
                            && self.remove(queue, tc).is_some()
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
}
