//! Applying PutMedia acks to the fragments in flight: PERSISTED (or RECEIVED on a stream
//! that archives nothing) releases a fragment from the journal; an ERROR is classified as the
//! official producer does and laid on the fragment it names, else on the one the service was
//! reading, so a refused fragment cannot loop.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{debug, error, warn};

use super::slots::Slot;
use super::{End, Uploader, with_journal};
use crate::backoff::Backoff;
use crate::putmedia::{Ack, AckEvent, PutMediaError};

/// What to do about an ERROR ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Keep the fragment and retry in a new session after backoff.
    Retry,
    /// Start a new session right away (4003: the connection is too old).
    Rotate,
    /// 4004: the fragment does not follow the previous one *of this session* and was not
    /// stored. A new session starting with it is accepted (the service deduplicates
    /// producer timestamps on read); if it was already first in its session, it is dropped.
    NotAfterPrevious,
    /// The fragment can never be accepted: release it (counted) and go on.
    DropFragment,
    /// A stream or account problem an operator must fix; retried at the longest backoff.
    Operator,
}

/// Classifies a PutMedia ErrorId, as the official producer does (it retries 4000, 4003,
/// 5000 and 5001 and skips the fragment otherwise).
pub fn classify(error_id: u32) -> ErrorAction {
    match error_id {
        4003 => ErrorAction::Rotate,
        4004 => ErrorAction::NotAfterPrevious,
        4001 | 4002 | 4005 | 4006 | 4007 | 4009 | 4010 | 4011 | 4012 => ErrorAction::DropFragment,
        4008 | 4500..=4507 => ErrorAction::Operator,
        _ => ErrorAction::Retry,
    }
}

/// Where an ERROR ack applies: the fragment it names, else the one the service was reading
/// (the first sent and not yet RECEIVED), else the first in flight, else the one whose
/// codec made the session header (`header_seq`).
pub(super) fn blamed(
    window: &VecDeque<Slot>,
    timecode_ms: Option<i64>,
    header_seq: u64,
) -> Option<usize> {
    if let Some(tc) = timecode_ms
        && let Some(i) = window.iter().position(|s| s.timecode_ms == tc)
    {
        return Some(i);
    }
    let first_sent = |unreceived: bool| {
        window
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sent_at.is_some() && !(unreceived && s.received))
            .min_by_key(|(_, s)| s.sent_at)
            .map(|(i, _)| i)
    };
    first_sent(true)
        .or_else(|| first_sent(false))
        .or_else(|| window.iter().position(|s| s.seq == header_seq))
}

impl Uploader {
    /// The request body was refused: the service's answer says why better than the dropped
    /// body does (a 403 arriving early, or ERROR acks it sent before closing). Acks already
    /// sent are applied, so a fragment the service stored or refused is not sent again.
    pub(super) async fn send_failed(
        &self,
        e: PutMediaError,
        acks: &mut crate::putmedia::Acks,
        window: &mut VecDeque<Slot>,
        backoff: &mut Backoff,
        release_on: AckEvent,
        header_seq: u64,
    ) -> End {
        let linger = Duration::from_secs(2);
        loop {
            match tokio::time::timeout(linger, acks.next()).await {
                Ok(Some(Ok(ack))) => {
                    if let Some(end) = self
                        .on_ack(&ack, window, backoff, release_on, header_seq)
                        .await
                    {
                        return end;
                    }
                }
                Ok(Some(Err(answer @ PutMediaError::Http { .. }))) => {
                    return self.failed(answer).await;
                }
                _ => return End::Failed(e.to_string()),
            }
        }
    }

    /// Releases the fragment at `i` from the journal and the window.
    pub(super) async fn release(&self, window: &mut VecDeque<Slot>, i: usize) -> Option<Slot> {
        let slot = window.remove(i)?;
        let seq = slot.seq;
        if let Err(e) = with_journal(&self.journal, move |j| j.release(seq)).await {
            // Not fatal: the fragment may be sent again, and KVS stores it again (reads
            // deduplicate producer timestamps).
            warn!(stream = %self.stream, "{e}");
        }
        Some(slot)
    }

    /// Applies one ack; `Some` ends the session.
    pub(super) async fn on_ack(
        &self,
        ack: &Ack,
        window: &mut VecDeque<Slot>,
        backoff: &mut Backoff,
        release_on: AckEvent,
        header_seq: u64,
    ) -> Option<End> {
        let named = || {
            let tc = ack.fragment_timecode?;
            window.iter().position(|s| s.timecode_ms == tc)
        };
        match ack.event_type {
            AckEvent::Received | AckEvent::Persisted => {
                let i = named()?;
                window[i].received = true;
                if ack.event_type != release_on {
                    return None;
                }
                let latency = window[i]
                    .sent_at
                    .map_or(0, |sent| sent.elapsed().as_millis() as u64);
                self.stats
                    .last_ack_latency_ms
                    .store(latency, Ordering::Relaxed);
                let (counter, what) = match ack.event_type {
                    AckEvent::Persisted => (&self.stats.fragments_persisted, "PERSISTED"),
                    _ => (&self.stats.fragments_received, "RECEIVED (no retention)"),
                };
                debug!(stream = %self.stream, timecode = window[i].timecode_ms, latency_ms = latency, "{what}");
                // Counted before the journal lets go: the service has it whatever happens to
                // this task meanwhile (a shutdown may end it during the release).
                self.stats.bump(counter);
                backoff.reset();
                let s = &window[i];
                self.gate.delivered(s.timecode_ms, s.duration_ms, s.len);
                self.release(window, i).await;
                None
            }
            AckEvent::Error => {
                self.stats.error_acks.fetch_add(1, Ordering::Relaxed);
                let id = ack.error_id.unwrap_or(0);
                let code = ack.error_code.clone().unwrap_or_default();
                let blame = blamed(window, ack.fragment_timecode, header_seq);
                let what = format!(
                    "ERROR {id} {code} for fragment {}",
                    blame.map_or("(none in flight)".to_string(), |i| window[i]
                        .timecode_ms
                        .to_string())
                );
                match classify(id) {
                    ErrorAction::Retry => Some(End::Failed(what)),
                    ErrorAction::Rotate => Some(End::Next),
                    ErrorAction::Operator => Some(End::Operator(what)),
                    ErrorAction::NotAfterPrevious
                        if blame.is_some_and(|i| !window[i].opened_session) =>
                    {
                        // Not stored; it opens the next session, where it follows nothing.
                        warn!(stream = %self.stream, "{what}: not stored; sending it again in a new session");
                        Some(End::Next)
                    }
                    ErrorAction::NotAfterPrevious | ErrorAction::DropFragment => {
                        if let Some(i) = blame {
                            self.release(window, i).await;
                            self.stats
                                .fragments_rejected
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        error!(stream = %self.stream, "{what}: KVS will never accept this fragment; dropped it");
                        Some(End::Failed(what))
                    }
                }
            }
            AckEvent::Buffering | AckEvent::Idle => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uploader::slots::tests::slot;
    use tokio::time::Instant;

    #[test]
    fn error_ids_are_classified() {
        assert_eq!(classify(4003), ErrorAction::Rotate);
        assert_eq!(classify(4004), ErrorAction::NotAfterPrevious);
        assert_eq!(classify(4011), ErrorAction::DropFragment);
        assert_eq!(classify(4008), ErrorAction::Operator);
        assert_eq!(classify(4502), ErrorAction::Operator);
        assert_eq!(classify(5000), ErrorAction::Retry);
        assert_eq!(classify(5001), ErrorAction::Retry);
        assert_eq!(classify(4000), ErrorAction::Retry);
    }

    #[test]
    fn an_error_without_a_fragment_blames_what_the_service_read_first() {
        let mut window: VecDeque<Slot> = [slot(10, false), slot(2, true), slot(3, true)].into();
        // Nothing sent yet: the fragment whose codec made the session header.
        assert_eq!(blamed(&window, None, 2), Some(1));
        let t = Instant::now();
        window[1].sent_at = Some(t);
        window[2].sent_at = Some(t + Duration::from_millis(5));
        window[0].sent_at = Some(t + Duration::from_millis(10));
        assert_eq!(blamed(&window, None, 2), Some(1), "the first sent");
        window[1].received = true;
        assert_eq!(
            blamed(&window, None, 2),
            Some(2),
            "the first sent not received"
        );
        assert_eq!(blamed(&window, Some(10_000), 2), Some(0), "the one named");
    }
}
