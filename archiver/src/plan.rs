//! What to fetch for a window, from the fragments ListFragments reports. Pure.
//!
//! GetClip returns at most 200 fragments or 100 MB (the first ones), so a window is split
//! into consecutive requests that each stay under both limits. The post-roll counts as
//! ingested once a fragment reaches the window's end.

/// A fragment as ListFragments describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub number: String,
    /// Producer timestamp of its first frame (ms since the epoch).
    pub start_ms: i64,
    pub duration_ms: i64,
    pub size: i64,
}

impl Fragment {
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.duration_ms
    }
}

/// GetClip's limits per call.
pub const MAX_FRAGMENTS: usize = 200;
pub const MAX_BYTES: i64 = 100 * 1024 * 1024;

/// One GetClip call: a producer-time range and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub start_ms: i64,
    pub end_ms: i64,
    pub fragments: usize,
    pub bytes: i64,
}

/// The fragments of `[start_ms, end_ms)`, sorted and without duplicates.
pub fn in_window(mut fragments: Vec<Fragment>, start_ms: i64, end_ms: i64) -> Vec<Fragment> {
    fragments.retain(|f| f.end_ms() > start_ms && f.start_ms < end_ms);
    fragments.sort_by(|a, b| (a.start_ms, &a.number).cmp(&(b.start_ms, &b.number)));
    fragments.dedup_by(|a, b| a.number == b.number);
    fragments
}

/// A fragment's reported length can stop one frame short of where the next frame starts
/// (the last frame's own duration): up to this much is still "reaching" a time.
pub const FRAME_SLACK_MS: i64 = 100;

/// True once the stream has video up to the window's end.
pub fn ingested_to(fragments: &[Fragment], end_ms: i64) -> bool {
    fragments
        .iter()
        .any(|f| f.end_ms() + FRAME_SLACK_MS >= end_ms)
}

/// Consecutive GetClip requests covering `fragments` (sorted, from `in_window`), each under
/// `max_fragments` and `max_bytes`. Ranges meet exactly: a request ends where the next one's
/// first fragment starts, so no frame is fetched twice.
pub fn requests(
    fragments: &[Fragment],
    start_ms: i64,
    end_ms: i64,
    max_fragments: usize,
    max_bytes: i64,
) -> Vec<Request> {
    let mut out: Vec<Request> = Vec::new();
    let mut current: Option<Request> = None;
    for f in fragments {
        let fits = current
            .as_ref()
            .is_some_and(|r| r.fragments < max_fragments && r.bytes + f.size <= max_bytes);
        if !fits {
            if let Some(mut done) = current.take() {
                done.end_ms = f.start_ms;
                out.push(done);
            }
            current = Some(Request {
                start_ms: if out.is_empty() { start_ms } else { f.start_ms },
                end_ms,
                fragments: 0,
                bytes: 0,
            });
        }
        let r = current.as_mut().expect("set above");
        r.fragments += 1;
        r.bytes += f.size;
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(n: usize, size: i64) -> Vec<Fragment> {
        (0..n)
            .map(|i| Fragment {
                number: format!("{i:04}"),
                start_ms: 1_000_000 + i as i64 * 2000,
                duration_ms: 2000,
                size,
            })
            .collect()
    }

    #[test]
    fn a_short_window_is_one_request() {
        let f = frags(90, 1 << 20);
        let r = requests(&f, 1_000_000, 1_180_000, MAX_FRAGMENTS, MAX_BYTES);
        assert_eq!(
            r,
            [Request {
                start_ms: 1_000_000,
                end_ms: 1_180_000,
                fragments: 90,
                bytes: 90 << 20
            }]
        );
    }

    #[test]
    fn long_windows_split_at_200_fragments_or_100_mb_and_ranges_meet() {
        let f = frags(450, 100_000);
        let r = requests(&f, 1_000_000, 1_900_000, MAX_FRAGMENTS, MAX_BYTES);
        assert_eq!(
            r.iter().map(|r| r.fragments).collect::<Vec<_>>(),
            [200, 200, 50]
        );
        assert_eq!(r[0].end_ms, r[1].start_ms);
        assert_eq!(r[1].start_ms, f[200].start_ms);
        assert_eq!((r[0].start_ms, r[2].end_ms), (1_000_000, 1_900_000));
        let big = frags(10, 30 << 20);
        let r = requests(&big, 1_000_000, 1_020_000, MAX_FRAGMENTS, MAX_BYTES);
        assert_eq!(
            r.iter().map(|r| r.fragments).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        assert!(r.iter().all(|r| r.bytes <= MAX_BYTES));
    }

    #[test]
    fn window_filtering_and_ingest() {
        let f = frags(10, 1);
        let w = in_window(
            f.iter().rev().cloned().chain(f.clone()).collect(),
            1_003_000,
            1_009_000,
        );
        assert_eq!(
            w.iter().map(|f| f.number.as_str()).collect::<Vec<_>>(),
            ["0001", "0002", "0003", "0004"]
        );
        assert!(ingested_to(&w, 1_010_000) && ingested_to(&w, 1_010_100));
        assert!(!ingested_to(&w, 1_010_101));
        assert!(requests(&[], 0, 1, MAX_FRAGMENTS, MAX_BYTES).is_empty());
    }
}
