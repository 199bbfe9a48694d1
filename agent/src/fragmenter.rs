//! Cutting a camera's access units into KVS fragments, pure (no I/O, no clock): one Cluster
//! per fragment, starting on a video keyframe, cut at the first keyframe after the target
//! duration, never longer than the limit, never over 50 MB.
//!
//! With audio, a fragment holds the audio frames of its time span, blocks interleaved in
//! time order. KVS wants every frame of a fragment after every frame of the previous one, and
//! audio may arrive after the video of the same moment: so a fragment cut at a keyframe is
//! held until the audio has reached that keyframe (or video has run `AUDIO_WAIT_MS` past it:
//! the audio is late or gone, and the fragment goes without what did not come). Several
//! fragments can be held at once (audio late by more than a fragment, on a loaded device):
//! a fragment sent without its audio changes the stream's tracks, and GetClip refuses a
//! range where they change. Audio may
//! also run ahead (a slower video encoder): what is at or past a cut belongs to the next
//! fragment, and audio before the first picture waits for it. Audio too late for its
//! fragment, or older than the first picture, is dropped and counted.

use thiserror::Error;

use crate::mkv::{self, AUDIO_TRACK, Block, MAX_BLOCK_OFFSET_MS, MAX_FRAGMENT_BYTES, VIDEO_TRACK};

/// How long a cut fragment waits for its audio, in video time.
pub const AUDIO_WAIT_MS: i64 = 3000;

/// At most this many fragments wait for their audio; an older one goes without it.
pub const MAX_HELD: usize = 8;

/// How much audio is kept while no picture has come yet.
pub const EARLY_AUDIO_MS: i64 = 10_000;

/// One encoded picture, in length-prefixed form (AVCC / HVCC), timed in producer time.
/// Access units arrive in decode order; with B-frames presentation times are not monotonic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// Presentation time, ms since the epoch (ABSOLUTE timecodes): the block timecode.
    pub pts_ms: i64,
    /// Decode time, ms since the epoch; equal to `pts_ms` without B-frames.
    pub dts_ms: i64,
    pub keyframe: bool,
    /// Shared, not copied: GStreamer's own buffer where the source allows it.
    pub data: bytes::Bytes,
}

/// One audio frame (an AAC access unit, or a run of A-law samples), in producer time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    pub pts_ms: i64,
    pub data: Vec<u8>,
}

/// A complete fragment: optional fragment-metadata Tags, then one Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// The Cluster timecode = the first frame's time: the ack's `FragmentTimecode`.
    pub timecode_ms: i64,
    pub last_ms: i64,
    pub duration_ms: i64,
    /// Video frames.
    pub frames: usize,
    /// Audio frames: when there are none, the fragment's session must not declare audio.
    pub audio_frames: usize,
    pub bytes: Vec<u8>,
    /// Metadata tags left out to stay within KVS's limits (see `mkv::fit_tags`).
    pub tags_omitted: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MkvError {
    #[error("frame at {got} ms is not after the previous frame at {prev} ms")]
    NonMonotonic { prev: i64, got: i64 },
    #[error("a fragment must start with a keyframe; dropped a non-key frame at {0} ms")]
    NeedKeyframe(i64),
    #[error(
        "the GOP starting at {start} ms is longer than the {max} ms fragment limit: \
         the camera's keyframe interval must be shorter"
    )]
    GopTooLong { start: i64, max: i64 },
    #[error("the fragment starting at {0} ms would exceed 50 MB")]
    FragmentTooLarge(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmenterConfig {
    /// Cut at the first keyframe once the fragment is at least this long.
    pub target_ms: i64,
    /// Never emit a fragment longer than this (KVS takes at most 10 s).
    pub max_ms: i64,
}

impl Default for FragmenterConfig {
    fn default() -> Self {
        FragmenterConfig {
            target_ms: 2_000,
            max_ms: 10_000,
        }
    }
}

/// What goes into one fragment.
#[derive(Default)]
struct Parts {
    video: Vec<AccessUnit>,
    audio: Vec<AudioFrame>,
    tags: Vec<(String, String)>,
    tags_omitted: usize,
}

/// A fragment cut at a keyframe, waiting for the audio to reach `until` (that keyframe).
struct Held {
    parts: Parts,
    until: i64,
}

/// Accumulates access units (and audio frames) and cuts fragments on keyframes.
pub struct Fragmenter {
    cfg: FragmenterConfig,
    pending: Parts,
    pending_bytes: usize,
    /// Lowest and highest presentation time of the pending video.
    pts_range: (i64, i64),
    last_dts: Option<i64>,
    last_audio: Option<i64>,
    /// Whether the stream has audio: cut fragments then wait for it.
    audio: bool,
    /// Cut fragments waiting for their audio, oldest first.
    held: std::collections::VecDeque<Held>,
    /// Fragments complete and not yet handed out (`next_ready`).
    ready: std::collections::VecDeque<Fragment>,
    /// Audio frames that came too late (or before the first keyframe) and were dropped.
    pub audio_dropped: u64,
}

impl Fragmenter {
    pub fn new(cfg: FragmenterConfig) -> Self {
        let max_ms = cfg.max_ms.min(MAX_BLOCK_OFFSET_MS);
        Fragmenter {
            cfg: FragmenterConfig { max_ms, ..cfg },
            pending: Parts::default(),
            pending_bytes: 0,
            pts_range: (0, 0),
            last_dts: None,
            last_audio: None,
            audio: false,
            held: Default::default(),
            ready: Default::default(),
            audio_dropped: 0,
        }
    }

    /// Whether audio comes with the video (cut fragments wait for it from now on).
    pub fn set_audio(&mut self, audio: bool) {
        self.audio = audio;
    }

    /// Sets the fragment metadata (KVS MKV tags) of the fragment being built, replacing
    /// what was set before; it is written when the fragment is emitted, within KVS's limits
    /// (`fit_tags`). `already_omitted` counts what the caller had to leave out itself.
    pub fn set_tags(&mut self, tags: Vec<(String, String)>, already_omitted: usize) {
        let (tags, omitted) = mkv::fit_tags(tags);
        self.pending.tags = tags;
        self.pending.tags_omitted = omitted + already_omitted;
    }

    /// The presentation time of the fragment being built (its first keyframe), if any.
    pub fn pending_start_ms(&self) -> Option<i64> {
        self.pending.video.first().map(|au| au.pts_ms)
    }

    /// Adds an access unit (in decode order); returns the fragment it completed, if any.
    pub fn push(&mut self, au: AccessUnit) -> Result<Option<Fragment>, MkvError> {
        if let Some(prev) = self.last_dts
            && au.dts_ms <= prev
        {
            return Err(MkvError::NonMonotonic {
                prev,
                got: au.dts_ms,
            });
        }
        // Held fragments whose audio is this late go without the rest of it.
        while self
            .held
            .front()
            .is_some_and(|h| au.dts_ms > h.until + AUDIO_WAIT_MS)
        {
            self.release_oldest();
        }
        let Some(first) = self.pending.video.first() else {
            if !au.keyframe {
                return Err(MkvError::NeedKeyframe(au.pts_ms));
            }
            // Audio that came before the first picture: what is older than it has no video.
            let older = self.pending.audio.partition_point(|a| a.pts_ms < au.pts_ms);
            self.pending.audio.drain(..older);
            self.audio_dropped += older as u64;
            self.last_dts = Some(au.dts_ms);
            self.pending_bytes = au.data.len()
                + self
                    .pending
                    .audio
                    .iter()
                    .map(|a| a.data.len())
                    .sum::<usize>();
            self.pts_range = (au.pts_ms, au.pts_ms);
            self.pending.video.push(au);
            return Ok(self.next_ready());
        };
        let (first_pts, first_dts) = (first.pts_ms, first.dts_ms);
        let span = self.pts_range.1.max(au.pts_ms) - self.pts_range.0.min(au.pts_ms);
        let offset = au.pts_ms - first_pts;
        if au.keyframe && au.dts_ms - first_dts >= self.cfg.target_ms {
            let mut parts = std::mem::take(&mut self.pending);
            // Audio that ran ahead of the video belongs to the fragment this keyframe starts.
            let ahead = parts.audio.partition_point(|a| a.pts_ms < au.pts_ms);
            self.pending.audio = parts.audio.split_off(ahead);
            if self.audio {
                // Wait for the audio to reach this keyframe (behind those already waiting).
                if self.held.len() >= MAX_HELD {
                    self.release_oldest();
                }
                self.held.push_back(Held {
                    parts,
                    until: au.pts_ms,
                });
            } else {
                self.ready.extend(build(parts));
            }
            self.pending_bytes = self.pending.audio.iter().map(|a| a.data.len()).sum();
            self.pts_range = (au.pts_ms, au.pts_ms);
        } else if span > self.cfg.max_ms
            || !(i64::from(i16::MIN)..=MAX_BLOCK_OFFSET_MS).contains(&offset)
        {
            return Err(MkvError::GopTooLong {
                start: first_pts,
                max: self.cfg.max_ms,
            });
        } else if self.pending_bytes + au.data.len() > MAX_FRAGMENT_BYTES - 64 * 1024 {
            return Err(MkvError::FragmentTooLarge(first_pts));
        } else {
            self.pts_range = (
                self.pts_range.0.min(au.pts_ms),
                self.pts_range.1.max(au.pts_ms),
            );
        }
        self.last_dts = Some(au.dts_ms);
        self.pending_bytes += au.data.len();
        self.pending.video.push(au);
        Ok(self.next_ready())
    }

    /// Adds an audio frame; returns the fragment it completed (a held one its audio has now
    /// reached), if any. Frames not after the previous one, or older than the fragment being
    /// built, are dropped and counted.
    pub fn push_audio(&mut self, frame: AudioFrame) -> Option<Fragment> {
        if self.last_audio.is_some_and(|last| frame.pts_ms <= last) {
            self.audio_dropped += 1;
            return None;
        }
        self.last_audio = Some(frame.pts_ms);
        // The audio has passed these held fragments' ends: they are complete.
        while self.held.front().is_some_and(|h| frame.pts_ms >= h.until) {
            self.release_oldest();
        }
        if let Some(h) = self.held.front_mut() {
            // Before the oldest held fragment's end: its audio (or older than it: too late).
            if h.parts
                .video
                .first()
                .is_some_and(|v| frame.pts_ms >= v.pts_ms)
            {
                h.parts.audio.push(frame);
            } else {
                self.audio_dropped += 1;
            }
            return self.next_ready();
        }
        match self.pending_start_ms() {
            Some(start) if frame.pts_ms >= start => {
                self.pending_bytes += frame.data.len();
                self.pending.audio.push(frame);
            }
            Some(_) => self.audio_dropped += 1,
            None => {
                // No picture yet (a video encoder is slower to start than an audio one, a
                // file's audio branch runs ahead): keep the last EARLY_AUDIO_MS for the first
                // keyframe to sort out.
                let horizon = frame.pts_ms - EARLY_AUDIO_MS;
                let stale = self.pending.audio.partition_point(|a| a.pts_ms < horizon);
                self.pending.audio.drain(..stale);
                self.audio_dropped += stale as u64;
                self.pending.audio.push(frame);
            }
        }
        self.next_ready()
    }

    /// A complete fragment not handed out yet: `push` and `push_audio` return the first one,
    /// call this until `None` for the rest (a late audio frame can complete several).
    pub fn next_ready(&mut self) -> Option<Fragment> {
        self.ready.pop_front()
    }

    fn release_oldest(&mut self) {
        if let Some(h) = self.held.pop_front() {
            self.ready.extend(build(h.parts));
        }
    }

    /// Drops what is pending (after an error the GOP cannot be sent); returns how many
    /// video frames.
    pub fn discard(&mut self) -> usize {
        self.pending_bytes = 0;
        let parts = std::mem::take(&mut self.pending);
        self.audio_dropped += parts.audio.len() as u64;
        parts.video.len()
    }

    /// Emits what is held or pending as a fragment (at end of stream or session, or a codec
    /// change): call it until it returns `None`. Audio without a picture yet stays for the
    /// first keyframe.
    pub fn flush(&mut self) -> Option<Fragment> {
        while !self.held.is_empty() {
            self.release_oldest();
        }
        if let Some(f) = self.next_ready() {
            return Some(f);
        }
        if self.pending.video.is_empty() {
            return None;
        }
        self.pending_bytes = 0;
        build(std::mem::take(&mut self.pending))
    }
}

/// The fragment of `parts` (`None` without video): blocks in time order, video in decode
/// order with each audio frame before the first picture decoded after it.
fn build(parts: Parts) -> Option<Fragment> {
    let Parts {
        video,
        audio,
        tags,
        tags_omitted,
    } = parts;
    // The Cluster timecode is the keyframe's presentation time; B-frames may sit on either
    // side of it (int16 offsets), and the fragment spans the whole PTS range.
    let first = video.first()?.pts_ms;
    let (low, high) = video
        .iter()
        .map(|f| f.pts_ms)
        .chain(audio.iter().map(|a| a.pts_ms))
        .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let (vlow, vhigh) = video.iter().fold((i64::MAX, i64::MIN), |(lo, hi), f| {
        (lo.min(f.pts_ms), hi.max(f.pts_ms))
    });
    let interval = if video.len() > 1 {
        (vhigh - vlow) / (video.len() as i64 - 1)
    } else {
        0
    };
    // The fragment ends after its last picture's interval, or just after its last audio
    // frame (which comes before the next fragment's keyframe): never into the next one.
    let end = (vhigh + interval).max(audio.last().map_or(i64::MIN, |a| a.pts_ms + 1));
    let mut blocks = Vec::with_capacity(video.len() + audio.len());
    let mut a = audio.iter().peekable();
    for v in &video {
        while let Some(f) = a.next_if(|f| f.pts_ms <= v.dts_ms) {
            blocks.push(Block {
                track: AUDIO_TRACK,
                pts_ms: f.pts_ms,
                keyframe: true,
                data: &f.data,
            });
        }
        blocks.push(Block {
            track: VIDEO_TRACK,
            pts_ms: v.pts_ms,
            keyframe: v.keyframe,
            data: &v.data,
        });
    }
    blocks.extend(a.map(|f| Block {
        track: AUDIO_TRACK,
        pts_ms: f.pts_ms,
        keyframe: true,
        data: &f.data,
    }));
    Some(Fragment {
        timecode_ms: first,
        last_ms: high,
        duration_ms: end - low,
        frames: video.len(),
        audio_frames: audio.len(),
        bytes: mkv::cluster(first, &blocks, &tags),
        tags_omitted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    fn au(pts_ms: i64, keyframe: bool) -> AccessUnit {
        AccessUnit {
            dts_ms: pts_ms,
            pts_ms,
            keyframe,
            data: vec![0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }].into(),
        }
    }

    #[test]
    fn cuts_on_the_first_keyframe_after_the_target() {
        let mut f = Fragmenter::new(FragmenterConfig {
            target_ms: 1000,
            max_ms: 10_000,
        });
        let mut out = Vec::new();
        for i in 0..100 {
            // 25 fps, keyframe every 12 frames (480 ms)
            if let Some(frag) = f.push(au(1_700_000_000_000 + i * 40, i % 12 == 0)).unwrap() {
                out.push(frag);
            }
        }
        out.extend(f.flush());
        let starts: Vec<i64> = out
            .iter()
            .map(|f| f.timecode_ms - 1_700_000_000_000)
            .collect();
        assert_eq!(starts, [0, 1440, 2880]);
        assert_eq!(out.iter().map(|f| f.frames).sum::<usize>(), 100);
        assert_eq!(out[0].duration_ms, 1440);
    }

    #[test]
    fn guard_rails() {
        let mut f = Fragmenter::new(FragmenterConfig {
            target_ms: 1000,
            max_ms: 2000,
        });
        assert_eq!(f.push(au(0, false)), Err(MkvError::NeedKeyframe(0)));
        f.push(au(0, true)).unwrap();
        assert_eq!(
            f.push(au(0, false)),
            Err(MkvError::NonMonotonic { prev: 0, got: 0 })
        );
        f.push(au(2000, false)).unwrap();
        assert_eq!(
            f.push(au(2040, false)),
            Err(MkvError::GopTooLong {
                start: 0,
                max: 2000
            })
        );
    }

    #[test]
    fn tags_precede_the_cluster() {
        let mut f = Fragmenter::new(FragmenterConfig::default());
        f.set_tags(vec![("alarm".into(), "door".into())], 0);
        f.push(au(0, true)).unwrap();
        let frag = f.flush().unwrap();
        assert_eq!(&frag.bytes[..4], &[0x12, 0x54, 0xC3, 0x67]);
        assert_eq!(frag.tags_omitted, 0);
    }

    #[test]
    fn b_frames_keep_decode_order_and_presentation_offsets() {
        let mut f = Fragmenter::new(FragmenterConfig {
            target_ms: 100,
            max_ms: 10_000,
        });
        // decode order I P B B | I: presentation 0, 120, 40, 80 | 160
        let frames = [
            (0, -40, true),
            (120, 0, false),
            (40, 40, false),
            (80, 80, false),
        ];
        for (pts, dts, key) in frames {
            let unit = AccessUnit {
                pts_ms: 1000 + pts,
                dts_ms: 1000 + dts,
                keyframe: key,
                data: vec![1].into(),
            };
            assert_eq!(f.push(unit), Ok(None));
        }
        let frag = f
            .push(AccessUnit {
                pts_ms: 1160,
                dts_ms: 1120,
                keyframe: true,
                data: vec![1].into(),
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            (frag.timecode_ms, frag.last_ms, frag.frames),
            (1000, 1120, 4)
        );
        // Block offsets in decode order: 0, 120, 40, 80.
        let mut found = Vec::new();
        let mut i = 0;
        while i + 4 < frag.bytes.len() {
            if frag.bytes[i] == 0xA3 && frag.bytes[i + 2] == 0x81 {
                found.push(i16::from_be_bytes([frag.bytes[i + 3], frag.bytes[i + 4]]));
                i += 6;
            } else {
                i += 1;
            }
        }
        assert_eq!(found, [0, 120, 40, 80]);
        // Decode time, not presentation time, must increase.
        assert_eq!(
            f.push(AccessUnit {
                pts_ms: 1200,
                dts_ms: 1120,
                keyframe: false,
                data: vec![1].into()
            }),
            Err(MkvError::NonMonotonic {
                prev: 1120,
                got: 1120
            })
        );
    }

    #[test]
    fn tags_left_out_are_counted() {
        let mut f = Fragmenter::new(FragmenterConfig::default());
        f.set_tags((0..11).map(|i| (format!("T{i}"), "v".into())).collect(), 3);
        f.push(au(0, true)).unwrap();
        assert_eq!(f.flush().unwrap().tags_omitted, 4);
    }

    fn audio(pts_ms: i64) -> AudioFrame {
        AudioFrame {
            pts_ms,
            data: vec![0x21, pts_ms as u8],
        }
    }

    /// (track, offset) of every block of a fragment's Cluster, read back independently.
    fn blocks(f: &Fragment) -> Vec<(u8, i16)> {
        let cluster = f
            .bytes
            .windows(4)
            .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
            .unwrap();
        let mut out = Vec::new();
        let mut i = cluster + 4;
        while i < f.bytes.len() {
            if f.bytes[i] == 0xA3 {
                let size_len = f.bytes[i + 1].leading_zeros() as usize + 1;
                let mut size = (f.bytes[i + 1] & (0xFF >> size_len)) as usize;
                for b in &f.bytes[i + 2..i + 1 + size_len] {
                    size = size << 8 | *b as usize;
                }
                let body = &f.bytes[i + 1 + size_len..];
                out.push((body[0] & 0x7F, i16::from_be_bytes([body[1], body[2]])));
                i += 1 + size_len + size;
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn audio_is_interleaved_and_a_cut_waits_for_it() {
        // Audio arriving 200 ms after the video of the same moment, and 150 ms before it (a
        // camera whose video encoder is slower): each fragment gets exactly its own span.
        interleaved_with_audio_lagging(200);
        interleaved_with_audio_lagging(-150);
    }

    fn interleaved_with_audio_lagging(lag_ms: i64) {
        let t0 = 1_700_000_000_000;
        let mut f = Fragmenter::new(FragmenterConfig {
            target_ms: 1000,
            max_ms: 10_000,
        });
        f.set_audio(true);
        let mut out = Vec::new();
        // Video at 25 fps (keyframes every 1 s); audio frames every 33 ms.
        let mut next_audio = t0;
        for i in 0..75 {
            let t = t0 + i * 40;
            out.extend(f.push(au(t, i % 25 == 0)).unwrap());
            while next_audio <= t - lag_ms {
                out.extend(f.push_audio(audio(next_audio)));
                next_audio += 33;
            }
        }
        // The cut at 1 s waited for the audio to reach it: the first fragment is complete.
        assert_eq!(out.len(), 2, "two fragments cut, the third pending");
        for (k, frag) in out.iter().enumerate() {
            let start = t0 + k as i64 * 1000;
            assert_eq!(frag.timecode_ms, start);
            let b = blocks(frag);
            let audio_offsets: Vec<i16> = b.iter().filter(|x| x.0 == 2).map(|x| x.1).collect();
            assert_eq!(frag.audio_frames, audio_offsets.len());
            assert!(frag.audio_frames >= 15, "{}", frag.audio_frames);
            assert!(
                audio_offsets
                    .iter()
                    .all(|o| (0..1000).contains(&(*o as i32))),
                "audio lagging {lag_ms} ms: {audio_offsets:?}"
            );
            // Time order: every block after the previous one within ~one video frame.
            for w in b.windows(2) {
                assert!(w[1].1 + 40 > w[0].1, "{b:?}");
            }
        }
        // Each fragment ends where the next begins, not after.
        for w in out.windows(2) {
            assert!(
                w[0].timecode_ms + w[0].duration_ms <= w[1].timecode_ms,
                "audio lagging {lag_ms} ms: {} + {} > {}",
                w[0].timecode_ms,
                w[0].duration_ms,
                w[1].timecode_ms
            );
        }
        // No audio frame dropped, none in two fragments.
        assert_eq!(f.audio_dropped, 0);
        while let Some(last) = f.flush() {
            out.push(last);
        }
        let total: usize = out.iter().map(|f| f.audio_frames).sum();
        assert_eq!(total as i64, (next_audio - t0) / 33);
    }

    #[test]
    fn audio_later_than_a_whole_fragment_still_lands_in_its_own() {
        // A loaded device: the audio arrives 1.5 s after the video of the same moment, with
        // 1 s fragments. Several fragments wait at once; none goes without its audio (a
        // fragment without it changes the tracks, and GetClip refuses the range).
        let t0 = 1_700_000_000_000;
        let mut f = Fragmenter::new(FragmenterConfig {
            target_ms: 1000,
            max_ms: 10_000,
        });
        f.set_audio(true);
        /// Audio frames every 33 ms up to `until`, with what they complete.
        fn audio_until(f: &mut Fragmenter, next: &mut i64, until: i64, out: &mut Vec<Fragment>) {
            while *next <= until {
                out.extend(f.push_audio(audio(*next)));
                out.extend(std::iter::from_fn(|| f.next_ready()));
                *next += 33;
            }
        }
        let mut out = Vec::new();
        let mut next_audio = t0;
        for i in 0..150 {
            let t = t0 + i * 40;
            out.extend(f.push(au(t, i % 25 == 0)).unwrap());
            out.extend(std::iter::from_fn(|| f.next_ready()));
            audio_until(&mut f, &mut next_audio, t - 1500, &mut out);
        }
        assert_eq!(out.len(), 4, "cut at 1..5 s, the last still waiting");
        // The audio catches up by the end.
        audio_until(&mut f, &mut next_audio, t0 + 149 * 40, &mut out);
        while let Some(last) = f.flush() {
            out.push(last);
        }
        assert_eq!(f.audio_dropped, 0);
        for (k, frag) in out.iter().enumerate() {
            assert_eq!(frag.timecode_ms, t0 + k as i64 * 1000);
            assert!(frag.audio_frames > 0, "fragment {k} without audio");
        }
        let total: usize = out.iter().map(|f| f.audio_frames).sum();
        assert_eq!(total as i64, (next_audio - t0) / 33);
    }

    #[test]
    fn a_fragment_does_not_wait_for_audio_that_stops() {
        let t0 = 1_000_000;
        let mut f = Fragmenter::new(FragmenterConfig {
            target_ms: 1000,
            max_ms: 10_000,
        });
        f.set_audio(true);
        // Audio before the first picture waits for it (a flush, as when the video's codec
        // becomes known, keeps it); what is older than the picture is dropped.
        assert!(f.push_audio(audio(t0 - 10)).is_none());
        assert!(f.push_audio(audio(t0 + 5)).is_none());
        assert!(f.flush().is_none());
        assert_eq!(f.audio_dropped, 0, "kept until the first keyframe");
        let mut out = Vec::new();
        for i in 0..110 {
            out.extend(f.push(au(t0 + i * 40, i % 25 == 0)).unwrap());
        }
        // The cut at 1 s was held; video ran AUDIO_WAIT_MS past it: released without audio
        // (the cuts at 2, 3 and 4 s still wait).
        assert_eq!(out.len(), 1);
        assert_eq!(f.audio_dropped, 1, "the frame before the first picture");
        assert_eq!((out[0].timecode_ms, out[0].audio_frames), (t0, 1));
        // Audio older than the fragment being built is dropped, not put out of order.
        assert!(f.push_audio(audio(t0 + 900)).is_none());
        assert_eq!(f.audio_dropped, 2);
    }
}
