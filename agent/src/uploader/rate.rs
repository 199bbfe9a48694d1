//! Pacing sends to a fragment rate and a byte rate.

use std::time::Duration;

use tokio::time::Instant;

/// Paces sends to a fragment rate (at most `max_fragments` in any second) and a byte rate:
/// after a fragment of `len` bytes the next waits `len / max_bytes` seconds, so any second
/// carries at most `max_bytes` and the one fragment that started in it, however large the
/// fragments are against the cap.
pub(super) struct RateCap {
    fragments: Vec<Instant>,
    max_fragments: u32,
    max_bytes: u64,
    /// When the bytes sent so far are paid for.
    bytes_free_at: Option<Instant>,
}

impl RateCap {
    pub(super) fn new(max_fragments: u32, max_bytes: u64) -> RateCap {
        RateCap {
            fragments: Vec::new(),
            max_fragments,
            max_bytes: max_bytes.max(1),
            bytes_free_at: None,
        }
    }

    /// When the next fragment may go.
    pub(super) fn next_slot(&mut self) -> Instant {
        let now = Instant::now();
        let window = Duration::from_secs(1);
        self.fragments.retain(|t| now.duration_since(*t) < window);
        let mut at = now.max(self.bytes_free_at.unwrap_or(now));
        if self.fragments.len() as u32 >= self.max_fragments
            && let Some(first) = self.fragments.first()
        {
            at = at.max(*first + window);
        }
        at
    }

    pub(super) fn record(&mut self, len: u64) {
        let now = Instant::now();
        if self.max_fragments < u32::MAX {
            self.fragments.push(now);
        }
        let paid = Duration::from_secs_f64(len as f64 / self.max_bytes as f64);
        self.bytes_free_at = Some(now.max(self.bytes_free_at.unwrap_or(now)) + paid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_cap_spaces_fragments() {
        let second = Duration::from_secs(1);
        let mut cap = RateCap::new(2, 1_000_000);
        for _ in 0..2 {
            let soon = Instant::now() + Duration::from_millis(1);
            assert!(cap.next_slot() <= soon, "within the caps: (all but) now");
            cap.record(100);
        }
        let third = cap.next_slot();
        assert!(
            third > Instant::now() + second / 2,
            "a third fragment in the same second waits"
        );
        let mut cap = RateCap::new(100, 1000);
        assert!(cap.next_slot() <= Instant::now(), "the first goes at once");
        cap.record(900);
        let next = cap.next_slot();
        assert!(
            next > Instant::now() + second * 8 / 10,
            "900 bytes at 1000 bytes/s: the next waits 0.9 s"
        );
        // A fragment larger than a second's worth: the next waits for all of it.
        let mut cap = RateCap::new(100, 1000);
        cap.record(5000);
        assert!(cap.next_slot() > Instant::now() + second * 4);
    }
}
