//! The uploader's window: the journaled fragments it is working on (metadata only), and
//! which of them goes next. Live video (recorded under a continuous policy) comes before a
//! window's older, deferred video except in the window's turn.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use crate::codec::TrackSet;

/// A fragment of the window: the journal's metadata, and how far it got in this session.
pub(super) struct Slot {
    pub(super) seq: u64,
    pub(super) timecode_ms: i64,
    pub(super) duration_ms: i64,
    pub(super) tracks: Arc<TrackSet>,
    /// Recorded under a scheduled or on-demand policy (see `Record::deferred`).
    pub(super) deferred: bool,
    pub(super) sent_at: Option<Instant>,
    /// Bytes sent (once sent).
    pub(super) len: u64,
    /// RECEIVED in this session: the service has all of it.
    pub(super) received: bool,
    /// Sent first in its session: a 4004 then cannot be cured by a new session.
    pub(super) opened_session: bool,
}

impl Slot {
    pub(super) fn end_ms(&self) -> i64 {
        self.timecode_ms + self.duration_ms
    }
}

/// Fragments of each kind (live, deferred) kept in the window at most: metadata only, the
/// media stays on disk.
pub(super) const WINDOW: usize = 64;

/// Which unsent fragment goes next: the oldest live one (recorded under a continuous
/// policy), or, while it is the window's turn, the oldest deferred one (recorded under a
/// scheduled or on-demand policy, sent for a window); either when the other kind has none.
pub(super) fn pick(window: &VecDeque<Slot>, window_turn: bool) -> Option<usize> {
    let oldest = |deferred: bool| {
        window
            .iter()
            .enumerate()
            .filter(|(_, s)| s.sent_at.is_none() && s.deferred == deferred)
            .min_by_key(|(_, s)| s.seq)
            .map(|(i, _)| i)
    };
    match (oldest(false), oldest(true)) {
        (Some(live), Some(deferred)) => Some(if window_turn { deferred } else { live }),
        (live, deferred) => live.or(deferred),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn slot(seq: u64, deferred: bool) -> Slot {
        Slot {
            seq,
            timecode_ms: seq as i64 * 1000,
            duration_ms: 1000,
            tracks: Arc::new(TrackSet {
                video: crate::codec::CodecConfig {
                    codec: crate::codec::VideoCodec::H264,
                    private: vec![1, 77, 0, 30],
                    width: 320,
                    height: 240,
                },
                audio: None,
            }),
            deferred,
            sent_at: None,
            len: 0,
            received: false,
            opened_session: false,
        }
    }

    #[test]
    fn live_and_window_fragments_take_turns_each_oldest_first() {
        // Live fragments 10 and 11 (pulled first), a window's older fragments 3 and 2.
        let mut window: VecDeque<Slot> = [
            slot(10, false),
            slot(11, false),
            slot(3, true),
            slot(2, true),
        ]
        .into();
        let seq = |w: &VecDeque<Slot>, turn| pick(w, turn).map(|i| w[i].seq);
        assert_eq!(seq(&window, false), Some(10), "live first");
        assert_eq!(
            seq(&window, true),
            Some(2),
            "the window's oldest in its turn"
        );
        window[3].sent_at = Some(Instant::now());
        assert_eq!(seq(&window, true), Some(3));
        window[2].sent_at = Some(Instant::now());
        assert_eq!(
            seq(&window, true),
            Some(10),
            "window done: live, turn or not"
        );
        window[0].sent_at = Some(Instant::now());
        window[1].sent_at = Some(Instant::now());
        assert_eq!(seq(&window, false), None);
        // Only window fragments: they go, whoever's turn it is.
        let only: VecDeque<Slot> = [slot(5, true), slot(4, true)].into();
        assert_eq!(seq(&only, false), Some(4));
    }
}
