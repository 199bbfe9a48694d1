//! The Matroska subset KVS accepts, written by us and pure (no I/O, no clock):
//! `session_header` is what starts every PutMedia session (EBML header, an unknown-size
//! Segment, Info, Tracks: the video as track 1, the audio as track 2); `cluster` writes one
//! fragment (its metadata Tags, then a Cluster of SimpleBlocks with ABSOLUTE millisecond
//! timecodes and int16 offsets), within KVS's metadata limits (`fit_tags`). The fragmenter
//! decides what goes in a fragment.

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

fn id_len(id: u32) -> u64 {
    4 - u64::from(id.leading_zeros() / 8).min(3)
}

/// The shortest encoding whose all-ones value (reserved for "unknown") is not hit.
fn size_len(size: u64) -> u64 {
    (1..=8)
        .find(|&n| size < (1u64 << (7 * n)) - 1)
        .expect("size below 2^56")
}

fn put_size(out: &mut Vec<u8>, size: u64) {
    let len = size_len(size) as usize;
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
    pub kind: TrackKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Video { width: u32, height: u32 },
    Audio { rate: u32, channels: u8 },
}

/// Track numbers: the video is track 1, the audio track 2 (as GetClip wants them).
pub const VIDEO_TRACK: u64 = 1;
pub const AUDIO_TRACK: u64 = 2;

impl TrackSpec {
    /// The usual single H.264 video track (number 1).
    pub fn h264(codec_private: Vec<u8>, width: u32, height: u32) -> TrackSpec {
        TrackSpec {
            number: VIDEO_TRACK,
            uid: VIDEO_TRACK,
            name: "video".into(),
            codec_id: CODEC_H264.into(),
            codec_private,
            kind: TrackKind::Video { width, height },
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

    /// The audio track (number 2): `A_AAC` with its AudioSpecificConfig, or `A_MS/ACM` with
    /// a WAVEFORMATEX.
    pub fn audio(audio: &crate::codec::AudioConfig) -> TrackSpec {
        TrackSpec {
            number: AUDIO_TRACK,
            uid: AUDIO_TRACK,
            name: "audio".into(),
            codec_id: audio.codec.matroska_id().into(),
            codec_private: audio.private.clone(),
            kind: TrackKind::Audio {
                rate: audio.rate,
                channels: audio.channels,
            },
        }
    }

    /// The Tracks of a session carrying `tracks`.
    pub fn of(tracks: &crate::codec::TrackSet) -> Vec<TrackSpec> {
        let mut out = vec![TrackSpec::video(&tracks.video)];
        out.extend(tracks.audio.as_ref().map(TrackSpec::audio));
        out
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
                match track.kind {
                    TrackKind::Video { .. } => uint(e, 0x83, 1), // TrackType: video
                    TrackKind::Audio { .. } => uint(e, 0x83, 2), // TrackType: audio
                }
                element(e, 0x536E, track.name.as_bytes()); // Name
                element(e, 0x86, track.codec_id.as_bytes()); // CodecID
                element(e, 0x63A2, &track.codec_private); // CodecPrivate
                match track.kind {
                    TrackKind::Video { width, height } => master(e, 0xE0, |v| {
                        uint(v, 0xB0, u64::from(width)); // PixelWidth
                        uint(v, 0xBA, u64::from(height)); // PixelHeight
                    }),
                    TrackKind::Audio { rate, channels } => master(e, 0xE1, |a| {
                        // SamplingFrequency (a float), Channels
                        element(a, 0xB5, &f64::from(rate).to_be_bytes());
                        uint(a, 0x9F, u64::from(channels));
                    }),
                }
            });
        }
    });
    out
}

/// One block of a Cluster: its track, presentation time and data.
pub(crate) struct Block<'a> {
    pub track: u64,
    pub pts_ms: i64,
    pub keyframe: bool,
    pub data: &'a [u8],
}

/// A fragment's bytes: its metadata Tags (when there are any), then the Cluster of `blocks`
/// (in the order given) timed from `timecode_ms`. Offsets must fit an int16.
pub(crate) fn cluster(
    timecode_ms: i64,
    blocks: &[Block<'_>],
    tags: &[(String, String)],
) -> Vec<u8> {
    let mut tag_bytes = Vec::new();
    if !tags.is_empty() {
        master(&mut tag_bytes, TAGS, |t| {
            master(t, TAG, |tag| {
                element(tag, TARGETS, &[]);
                for (name, value) in tags {
                    master(tag, SIMPLE_TAG, |s| {
                        element(s, 0x45A3, name.as_bytes()); // TagName
                        element(s, 0x4487, value.as_bytes()); // TagString
                    });
                }
            });
        });
    }
    // One pass into one (reused) buffer: a fragment is ~1 MB of frames, and building each
    // block and then the Cluster as nested buffers copied every frame three times.
    let block_len = |b: &Block<'_>| 4 + b.data.len() as u64;
    let mut timecode = Vec::with_capacity(10);
    uint(&mut timecode, TIMECODE, timecode_ms as u64);
    let payload = timecode.len() as u64
        + blocks
            .iter()
            .map(|b| id_len(SIMPLE_BLOCK) + size_len(block_len(b)) + block_len(b))
            .sum::<u64>();
    let mut bytes = crate::recycle::take(
        tag_bytes.len() + (id_len(CLUSTER) + size_len(payload) + payload) as usize,
    );
    bytes.extend_from_slice(&tag_bytes);
    put_id(&mut bytes, CLUSTER);
    put_size(&mut bytes, payload);
    bytes.extend_from_slice(&timecode);
    for b in blocks {
        put_id(&mut bytes, SIMPLE_BLOCK);
        put_size(&mut bytes, block_len(b));
        bytes.push(0x80 | b.track as u8); // a one-byte track number
        bytes.extend_from_slice(&((b.pts_ms - timecode_ms) as i16).to_be_bytes());
        bytes.push(if b.keyframe { 0x80 } else { 0x00 });
        bytes.extend_from_slice(b.data);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The Cluster as nested elements, the obvious way: what `cluster` must equal.
    fn nested_cluster(timecode_ms: i64, blocks: &[Block<'_>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        master(&mut bytes, CLUSTER, |c| {
            uint(c, TIMECODE, timecode_ms as u64);
            for b in blocks {
                let mut block = vec![0x80 | b.track as u8];
                block.extend_from_slice(&((b.pts_ms - timecode_ms) as i16).to_be_bytes());
                block.push(if b.keyframe { 0x80 } else { 0x00 });
                block.extend_from_slice(b.data);
                element(c, SIMPLE_BLOCK, &block);
            }
        });
        bytes
    }

    proptest! {
        #[test]
        fn the_one_pass_cluster_is_the_nested_one(
            timecode_ms in 0i64..1 << 42,
            frames in proptest::collection::vec((1u64..=2, 0i64..3000, any::<bool>(), 0usize..20_000), 0..12),
        ) {
            let data: Vec<Vec<u8>> = frames.iter().map(|f| vec![0xAB; f.3]).collect();
            let blocks: Vec<Block<'_>> = frames
                .iter()
                .zip(&data)
                .map(|(f, d)| Block { track: f.0, pts_ms: timecode_ms + f.1, keyframe: f.2, data: d })
                .collect();
            let one_pass = cluster(timecode_ms, &blocks, &[]);
            prop_assert_eq!(one_pass.len(), one_pass.capacity(), "one allocation, exactly sized");
            prop_assert_eq!(one_pass, nested_cluster(timecode_ms, &blocks));
        }
    }

    #[test]
    fn id_lengths() {
        assert_eq!(id_len(SIMPLE_BLOCK), 1);
        assert_eq!(id_len(0x4286), 2);
        assert_eq!(id_len(0x2A_D7B1), 3);
        assert_eq!(id_len(CLUSTER), 4);
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
    }
}
