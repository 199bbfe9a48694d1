//! What to fetch for a window, from the fragments ListFragments reports. Pure.
//!
//! GetClip returns at most 200 fragments or 100 MB (the first ones), so a window is split
//! into consecutive requests that each stay under both limits; a request whose media GetClip
//! refuses (the codec configuration changes inside it) is split in halves. Both ends of a
//! GetClip range are inclusive (ClipTimestampRange), so a request ends 1 ms before the next
//! one's first fragment. The post-roll counts as ingested once a fragment reaches the
//! window's end.

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

/// One GetClip call: a producer-time range (both ends inclusive) and what it holds, the
/// fragments `first..first + fragments` of the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub start_ms: i64,
    pub end_ms: i64,
    pub first: usize,
    pub fragments: usize,
    pub bytes: i64,
}

impl Request {
    /// The two halves of a request of two or more fragments (of `window`, the fragments it
    /// was planned from); they meet without sharing a fragment.
    pub fn halves(&self, window: &[Fragment]) -> Option<(Request, Request)> {
        if self.fragments < 2 {
            return None;
        }
        let held = window.get(self.first..self.first + self.fragments)?;
        let mid = self.fragments / 2;
        let bytes = |fs: &[Fragment]| fs.iter().map(|f| f.size).sum();
        let split_at = held[mid].start_ms;
        Some((
            Request {
                start_ms: self.start_ms,
                end_ms: split_at - 1,
                first: self.first,
                fragments: mid,
                bytes: bytes(&held[..mid]),
            },
            Request {
                start_ms: split_at,
                end_ms: self.end_ms,
                first: self.first + mid,
                fragments: self.fragments - mid,
                bytes: bytes(&held[mid..]),
            },
        ))
    }
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
/// `max_fragments` and `max_bytes`. A request ends 1 ms before the next one's first fragment
/// starts (GetClip's end is inclusive), so no frame is fetched twice.
pub fn requests(
    fragments: &[Fragment],
    start_ms: i64,
    end_ms: i64,
    max_fragments: usize,
    max_bytes: i64,
) -> Vec<Request> {
    let mut out: Vec<Request> = Vec::new();
    let mut current: Option<Request> = None;
    for (i, f) in fragments.iter().enumerate() {
        let fits = current
            .as_ref()
            .is_some_and(|r| r.fragments < max_fragments && r.bytes + f.size <= max_bytes);
        if !fits {
            if let Some(mut done) = current.take() {
                done.end_ms = f.start_ms - 1;
                out.push(done);
            }
            current = Some(Request {
                start_ms: if out.is_empty() { start_ms } else { f.start_ms },
                end_ms,
                first: i,
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

/// The parts of `[start_ms, end_ms)` no fragment covers, counting only gaps longer than
/// `tolerance_ms` (fragments begin at key frames: the one holding a window's first moment
/// may start before it and not be listed).
pub fn gaps(
    fragments: &[Fragment],
    start_ms: i64,
    end_ms: i64,
    tolerance_ms: i64,
) -> Vec<(i64, i64)> {
    let mut spans: Vec<(i64, i64)> = fragments.iter().map(|f| (f.start_ms, f.end_ms())).collect();
    spans.sort_unstable();
    let mut out = Vec::new();
    let mut at = start_ms;
    for (s, e) in spans {
        if s - at > tolerance_ms && at < end_ms {
            out.push((at, s.min(end_ms)));
        }
        at = at.max(e);
    }
    if end_ms - at > tolerance_ms {
        out.push((at, end_ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_longer_than_the_tolerance_are_what_kvs_lacks() {
        let f = |start_ms: i64, duration_ms: i64| Fragment {
            number: start_ms.to_string(),
            start_ms,
            duration_ms,
            size: 1,
        };
        assert_eq!(gaps(&[], 0, 10_000, 2000), vec![(0, 10_000)]);
        let whole = [
            f(-500, 2000),
            f(1500, 2000),
            f(3500, 2000),
            f(5500, 2000),
            f(7500, 2000),
        ];
        assert_eq!(gaps(&whole, 0, 9000, 2000), Vec::<(i64, i64)>::new());
        // Before the first key frame in the window, a fragment's length: not a gap.
        assert_eq!(gaps(&whole[1..], 0, 9000, 2000), Vec::<(i64, i64)>::new());
        assert_eq!(
            gaps(&[f(0, 2000), f(6000, 2000)], 0, 12_000, 2000),
            vec![(2000, 6000), (8000, 12_000)]
        );
    }

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
                first: 0,
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
        assert_eq!(
            r[0].end_ms,
            r[1].start_ms - 1,
            "inclusive ends never overlap"
        );
        assert_eq!(r[1].start_ms, f[200].start_ms);
        assert_eq!((r[1].first, r[2].first), (200, 400));
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
    fn halves_split_the_fragments_and_meet() {
        let f = frags(7, 10);
        let r = &requests(&f, 999_000, 1_020_000, MAX_FRAGMENTS, MAX_BYTES)[0];
        let (a, b) = r.halves(&f).unwrap();
        assert_eq!((a.first, a.fragments, a.bytes), (0, 3, 30));
        assert_eq!((b.first, b.fragments, b.bytes), (3, 4, 40));
        assert_eq!((a.start_ms, a.end_ms), (999_000, f[3].start_ms - 1));
        assert_eq!((b.start_ms, b.end_ms), (f[3].start_ms, 1_020_000));
        let (c, d) = b.halves(&f).unwrap();
        assert_eq!((c.first, c.fragments, d.first, d.fragments), (3, 2, 5, 2));
        let one = c.halves(&f).unwrap().0;
        assert!(one.halves(&f).is_none(), "one fragment cannot be split");
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
