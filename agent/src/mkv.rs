//! The Matroska subset KVS accepts, written by us and pure (no I/O, no clock):
//! `session_header` is what starts every PutMedia session (EBML header, an unknown-size
//! Segment, Info, Tracks); `Fragmenter` turns access units into fragments, one Cluster each,
//! starting on a keyframe, with ABSOLUTE millisecond timecodes and int16 block offsets.

use thiserror::Error;

const EBML: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const INFO: u32 = 0x1549_A966;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const CLUSTER: u32 = 0x1F43_B675;
const TIMECODE: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;
const TAGS: u32 = 0x1254_C367;
const TAG: u32 = 0x7373;
const TARGETS: u32 = 0x63C0;
const SIMPLE_TAG: u32 = 0x67C8;

/// Timecode scale: 1 ms, the norm for KVS.
pub const TIMECODE_SCALE_NS: u64 = 1_000_000;
/// A cluster's blocks carry int16 offsets: no fragment may span more than this.
pub const MAX_BLOCK_OFFSET_MS: i64 = i16::MAX as i64;
/// The KVS fragment size limit.
pub const MAX_FRAGMENT_BYTES: usize = 50 * 1024 * 1024;
pub const CODEC_H264: &str = "V_MPEG4/ISO/AVC";
/// KVS's fragment metadata limits: beyond them the service answers ERROR 4009
/// (FRAGMENT_METADATA_LIMIT_REACHED) and the fragment's video is lost.
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_NAME_BYTES: usize = 128;
pub const MAX_TAG_VALUE_BYTES: usize = 256;

/// Fragment metadata as KVS takes it: at most `MAX_TAGS` tags, names of at most
/// `MAX_TAG_NAME_BYTES` that do not start with `AWS` (reserved for the service), values cut
/// to `MAX_TAG_VALUE_BYTES` on a character boundary. Our own tags never cost video: what
/// does not fit is left out. Returns the tags kept and how many were left out.
pub fn fit_tags(tags: Vec<(String, String)>) -> (Vec<(String, String)>, usize) {
    let total = tags.len();
    let kept: Vec<(String, String)> = tags
        .into_iter()
        .filter(|(name, _)| {
            !name.is_empty() && name.len() <= MAX_TAG_NAME_BYTES && !name.starts_with("AWS")
        })
        .take(MAX_TAGS)
        .map(|(name, mut value)| {
            if value.len() > MAX_TAG_VALUE_BYTES {
                let mut cut = MAX_TAG_VALUE_BYTES;
                while !value.is_char_boundary(cut) {
                    cut -= 1;
                }
                value.truncate(cut);
            }
            (name, value)
        })
        .collect();
    let omitted = total - kept.len();
    (kept, omitted)
}

fn put_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(3);
    out.extend_from_slice(&bytes[skip..]);
}

fn put_size(out: &mut Vec<u8>, size: u64) {
    // The shortest encoding whose all-ones value (reserved for "unknown") is not hit.
    let len = (1..=8)
        .find(|&n| size < (1u64 << (7 * n)) - 1)
        .expect("size below 2^56");
    let marked = size | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

fn element(out: &mut Vec<u8>, id: u32, payload: &[u8]) {
    put_id(out, id);
    put_size(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn uint(out: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    element(out, id, &bytes[skip..]);
}

fn master(out: &mut Vec<u8>, id: u32, build: impl FnOnce(&mut Vec<u8>)) {
    let mut payload = Vec::new();
    build(&mut payload);
    element(out, id, &payload);
}

/// One track of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSpec {
    pub number: u64,
    pub uid: u64,
    pub name: String,
    pub codec_id: String,
    pub codec_private: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl TrackSpec {
    /// The usual single H.264 video track (number 1).
    pub fn h264(codec_private: Vec<u8>, width: u32, height: u32) -> TrackSpec {
        TrackSpec {
            number: 1,
            uid: 1,
            name: "video".into(),
            codec_id: CODEC_H264.into(),
            codec_private,
            width,
            height,
        }
    }

    /// The video track (number 1) for a codec configuration: `V_MPEG4/ISO/AVC` or
    /// `V_MPEGH/ISO/HEVC` with its decoder configuration record as CodecPrivate.
    pub fn video(codec: &crate::codec::CodecConfig) -> TrackSpec {
        TrackSpec {
            codec_id: codec.codec.matroska_id().into(),
            ..TrackSpec::h264(codec.private.clone(), codec.width, codec.height)
        }
    }
}

/// The bytes that open a PutMedia session: EBML header, Segment (unknown size), Info, Tracks.
pub fn session_header(segment_uid: [u8; 16], tracks: &[TrackSpec], writing_app: &str) -> Vec<u8> {
    let mut out = Vec::new();
    master(&mut out, EBML, |h| {
        uint(h, 0x4286, 1); // EBMLVersion
        uint(h, 0x42F7, 1); // EBMLReadVersion
        uint(h, 0x42F2, 4); // EBMLMaxIDLength
        uint(h, 0x42F3, 8); // EBMLMaxSizeLength
        element(h, 0x4282, b"matroska"); // DocType
        uint(h, 0x4287, 2); // DocTypeVersion
        uint(h, 0x4285, 2); // DocTypeReadVersion
    });
    put_id(&mut out, SEGMENT);
    out.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    master(&mut out, INFO, |i| {
        element(i, 0x73A4, &segment_uid); // SegmentUID
        uint(i, 0x2A_D7B1, TIMECODE_SCALE_NS); // TimecodeScale
        element(i, 0x4D80, writing_app.as_bytes()); // MuxingApp
        element(i, 0x5741, writing_app.as_bytes()); // WritingApp
    });
    master(&mut out, TRACKS, |t| {
        for track in tracks {
            master(t, TRACK_ENTRY, |e| {
                uint(e, 0xD7, track.number); // TrackNumber
                uint(e, 0x73C5, track.uid); // TrackUID
                uint(e, 0x83, 1); // TrackType: video
                element(e, 0x536E, track.name.as_bytes()); // Name
                element(e, 0x86, track.codec_id.as_bytes()); // CodecID
                element(e, 0x63A2, &track.codec_private); // CodecPrivate
                master(e, 0xE0, |v| {
                    uint(v, 0xB0, u64::from(track.width)); // PixelWidth
                    uint(v, 0xBA, u64::from(track.height)); // PixelHeight
                });
            });
        }
    });
    out
}

/// One encoded picture, in AVCC (length-prefixed) form, timed in producer time. Access
/// units arrive in decode order; with B-frames presentation times are not monotonic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// Presentation time, ms since the epoch (ABSOLUTE timecodes): the block timecode.
    pub pts_ms: i64,
    /// Decode time, ms since the epoch; equal to `pts_ms` without B-frames.
    pub dts_ms: i64,
    pub keyframe: bool,
    pub data: Vec<u8>,
}

/// A complete fragment: optional fragment-metadata Tags, then one Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// The Cluster timecode = the first frame's time: the ack's `FragmentTimecode`.
    pub timecode_ms: i64,
    pub last_ms: i64,
    pub duration_ms: i64,
    pub frames: usize,
    pub bytes: Vec<u8>,
    /// Metadata tags left out to stay within KVS's limits (see `fit_tags`).
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
    /// Never emit a fragment longer than this (KVS: ≤ 10 s is safe everywhere).
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

/// Accumulates access units and cuts fragments on keyframes.
pub struct Fragmenter {
    cfg: FragmenterConfig,
    pending: Vec<AccessUnit>,
    pending_bytes: usize,
    /// Lowest and highest presentation time of the pending frames.
    pts_range: (i64, i64),
    last_dts: Option<i64>,
    tags: Vec<(String, String)>,
    /// Tags asked for but left out (KVS limits), plus those the caller already left out.
    tags_omitted: usize,
}

impl Fragmenter {
    pub fn new(cfg: FragmenterConfig) -> Self {
        let max_ms = cfg.max_ms.min(MAX_BLOCK_OFFSET_MS);
        Fragmenter {
            cfg: FragmenterConfig { max_ms, ..cfg },
            pending: Vec::new(),
            pending_bytes: 0,
            pts_range: (0, 0),
            last_dts: None,
            tags: Vec::new(),
            tags_omitted: 0,
        }
    }

    /// Sets the fragment metadata (KVS MKV tags) of the fragment being built, replacing
    /// what was set before; it is written when the fragment is emitted, within KVS's limits
    /// (`fit_tags`). `already_omitted` counts what the caller had to leave out itself.
    pub fn set_tags(&mut self, tags: Vec<(String, String)>, already_omitted: usize) {
        let (tags, omitted) = fit_tags(tags);
        self.tags = tags;
        self.tags_omitted = omitted + already_omitted;
    }

    /// The presentation time of the fragment being built (its first keyframe), if any.
    pub fn pending_start_ms(&self) -> Option<i64> {
        self.pending.first().map(|au| au.pts_ms)
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
        let Some(first) = self.pending.first() else {
            if !au.keyframe {
                return Err(MkvError::NeedKeyframe(au.pts_ms));
            }
            self.last_dts = Some(au.dts_ms);
            self.pending_bytes = au.data.len();
            self.pts_range = (au.pts_ms, au.pts_ms);
            self.pending.push(au);
            return Ok(None);
        };
        let (first_pts, first_dts) = (first.pts_ms, first.dts_ms);
        let span = self.pts_range.1.max(au.pts_ms) - self.pts_range.0.min(au.pts_ms);
        let offset = au.pts_ms - first_pts;
        let done = if au.keyframe && au.dts_ms - first_dts >= self.cfg.target_ms {
            self.flush()
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
            None
        };
        self.last_dts = Some(au.dts_ms);
        self.pending_bytes += au.data.len();
        self.pts_range = if self.pending.is_empty() {
            (au.pts_ms, au.pts_ms)
        } else {
            (
                self.pts_range.0.min(au.pts_ms),
                self.pts_range.1.max(au.pts_ms),
            )
        };
        self.pending.push(au);
        Ok(done)
    }

    /// Drops what is pending (after an error the GOP cannot be sent); returns how many frames.
    pub fn discard(&mut self) -> usize {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending).len()
    }

    /// Emits what is pending as a fragment (at end of stream or session).
    pub fn flush(&mut self) -> Option<Fragment> {
        let frames = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        // The Cluster timecode is the keyframe's presentation time; B-frames may sit on
        // either side of it (int16 offsets), and the fragment spans the whole PTS range.
        let first = frames.first()?.pts_ms;
        let (low, high) = frames.iter().fold((i64::MAX, i64::MIN), |(lo, hi), f| {
            (lo.min(f.pts_ms), hi.max(f.pts_ms))
        });
        let interval = if frames.len() > 1 {
            (high - low) / (frames.len() as i64 - 1)
        } else {
            0
        };
        let mut bytes = Vec::new();
        let tags = std::mem::take(&mut self.tags);
        let tags_omitted = std::mem::take(&mut self.tags_omitted);
        if !tags.is_empty() {
            master(&mut bytes, TAGS, |t| {
                master(t, TAG, |tag| {
                    element(tag, TARGETS, &[]);
                    for (name, value) in &tags {
                        master(tag, SIMPLE_TAG, |s| {
                            element(s, 0x45A3, name.as_bytes()); // TagName
                            element(s, 0x4487, value.as_bytes()); // TagString
                        });
                    }
                });
            });
        }
        master(&mut bytes, CLUSTER, |c| {
            uint(c, TIMECODE, first as u64);
            for f in &frames {
                let mut block = Vec::with_capacity(f.data.len() + 4);
                block.push(0x81); // track 1
                block.extend_from_slice(&((f.pts_ms - first) as i16).to_be_bytes());
                block.push(if f.keyframe { 0x80 } else { 0x00 });
                block.extend_from_slice(&f.data);
                element(c, SIMPLE_BLOCK, &block);
            }
        });
        Some(Fragment {
            timecode_ms: first,
            last_ms: high,
            duration_ms: high - low + interval,
            frames: frames.len(),
            bytes,
            tags_omitted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn au(pts_ms: i64, keyframe: bool) -> AccessUnit {
        AccessUnit {
            dts_ms: pts_ms,
            pts_ms,
            keyframe,
            data: vec![0, 0, 0, 1, if keyframe { 0x65 } else { 0x41 }],
        }
    }

    #[test]
    fn sizes_avoid_the_unknown_marker() {
        let mut out = Vec::new();
        put_size(&mut out, 127);
        assert_eq!(out, [0x40, 0x7F], "127 in one byte would read as unknown");
        out.clear();
        put_size(&mut out, 126);
        assert_eq!(out, [0xFE]);
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
    fn tags_stay_within_the_kvs_limits() {
        let long = "é".repeat(200); // 400 bytes
        let mut tags: Vec<(String, String)> =
            (0..12).map(|i| (format!("T{i}"), long.clone())).collect();
        tags.insert(0, ("AWS_KINESISVIDEO_X".into(), "reserved".into()));
        tags.insert(1, ("N".repeat(129), "too long a name".into()));
        let (kept, omitted) = fit_tags(tags);
        assert_eq!(kept.len(), MAX_TAGS);
        assert_eq!(
            omitted, 4,
            "the reserved name, the long name and two over the count"
        );
        assert_eq!(kept[0].0, "T0");
        assert!(kept.iter().all(|(_, v)| v.len() <= MAX_TAG_VALUE_BYTES));
        assert_eq!(kept[0].1.len(), 256, "cut on a character boundary");

        let mut f = Fragmenter::new(FragmenterConfig::default());
        f.set_tags((0..11).map(|i| (format!("T{i}"), "v".into())).collect(), 3);
        f.push(au(0, true)).unwrap();
        assert_eq!(f.flush().unwrap().tags_omitted, 4);
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
                data: vec![1],
            };
            assert_eq!(f.push(unit), Ok(None));
        }
        let frag = f
            .push(AccessUnit {
                pts_ms: 1160,
                dts_ms: 1120,
                keyframe: true,
                data: vec![1],
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
                data: vec![1]
            }),
            Err(MkvError::NonMonotonic {
                prev: 1120,
                got: 1120
            })
        );
    }
}
