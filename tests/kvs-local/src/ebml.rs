//! A minimal EBML reader: element headers (ID and size varints) and the scalar payloads the
//! KVS Matroska subset uses. Pure and allocation-free; the incremental PutMedia parser
//! (`ingest`) and the archived-media readers are built on it.
//!
//! Deliberately independent of the agent's Matroska *writer*: a bug shared by the writer
//! and this reader would cancel out in tests.

use thiserror::Error;

pub const EBML: u32 = 0x1A45_DFA3;
pub const EBML_VERSION: u32 = 0x4286;
pub const EBML_READ_VERSION: u32 = 0x42F7;
pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
pub const DOC_TYPE: u32 = 0x4282;
pub const DOC_TYPE_VERSION: u32 = 0x4287;
pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
pub const SEGMENT: u32 = 0x1853_8067;
pub const SEEK_HEAD: u32 = 0x114D_9B74;
pub const INFO: u32 = 0x1549_A966;
pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
pub const SEGMENT_UID: u32 = 0x73A4;
pub const MUXING_APP: u32 = 0x4D80;
pub const WRITING_APP: u32 = 0x5741;
pub const TRACKS: u32 = 0x1654_AE6B;
pub const TRACK_ENTRY: u32 = 0xAE;
pub const TRACK_NUMBER: u32 = 0xD7;
pub const TRACK_UID: u32 = 0x73C5;
pub const TRACK_TYPE: u32 = 0x83;
pub const CODEC_ID: u32 = 0x86;
pub const CODEC_PRIVATE: u32 = 0x63A2;
pub const TRACK_NAME: u32 = 0x536E;
pub const DEFAULT_DURATION: u32 = 0x23_E383;
pub const VIDEO: u32 = 0xE0;
pub const PIXEL_WIDTH: u32 = 0xB0;
pub const PIXEL_HEIGHT: u32 = 0xBA;
pub const AUDIO: u32 = 0xE1;
pub const SAMPLING_FREQUENCY: u32 = 0xB5;
pub const CHANNELS: u32 = 0x9F;
pub const CLUSTER: u32 = 0x1F43_B675;
pub const TIMECODE: u32 = 0xE7;
pub const SIMPLE_BLOCK: u32 = 0xA3;
pub const BLOCK_GROUP: u32 = 0xA0;
pub const BLOCK: u32 = 0xA1;
pub const REFERENCE_BLOCK: u32 = 0xFB;
pub const CUES: u32 = 0x1C53_BB6B;
pub const CHAPTERS: u32 = 0x1043_A770;
pub const ATTACHMENTS: u32 = 0x1941_A469;
pub const TAGS: u32 = 0x1254_C367;
pub const TAG: u32 = 0x7373;
pub const TARGETS: u32 = 0x63C0;
pub const SIMPLE_TAG: u32 = 0x67C8;
pub const TAG_NAME: u32 = 0x45A3;
pub const TAG_STRING: u32 = 0x4487;
pub const VOID: u32 = 0xEC;
pub const CRC32: u32 = 0xBF;

/// Elements that may only appear directly inside a Segment: seeing one of them ends an
/// unknown-size Cluster.
pub fn is_top_level(id: u32) -> bool {
    matches!(
        id,
        EBML | SEGMENT | SEEK_HEAD | INFO | TRACKS | CLUSTER | CUES | CHAPTERS | ATTACHMENTS | TAGS
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EbmlError {
    #[error("invalid element ID at byte {0}: a leading zero byte or longer than 4 bytes")]
    BadId(u64),
    #[error("invalid element size at byte {0}: longer than 8 bytes")]
    BadSize(u64),
    #[error("{what}: payload of {len} bytes is not a valid {kind}")]
    BadPayload {
        what: &'static str,
        len: usize,
        kind: &'static str,
    },
    #[error("element 0x{id:X} extends past the end of its parent")]
    Overrun { id: u32 },
}

/// An element header: its ID (with the length marker kept, as IDs are written in specs),
/// its payload size (`None` = unknown size), and how many bytes the header took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u32,
    pub size: Option<u64>,
    pub len: usize,
}

/// Reads an element header at the start of `buf`. `Ok(None)`: more bytes are needed.
/// `at` is the stream offset of `buf[0]`, used only in errors.
pub fn read_header(buf: &[u8], at: u64) -> Result<Option<Header>, EbmlError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let id_len = first.leading_zeros() as usize + 1;
    if id_len > 4 {
        return Err(EbmlError::BadId(at));
    }
    if buf.len() < id_len + 1 {
        return Ok(None);
    }
    let id = buf[..id_len]
        .iter()
        .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    let Some((size, size_len)) = read_vint(&buf[id_len..], at + id_len as u64)? else {
        return Ok(None);
    };
    Ok(Some(Header {
        id,
        size,
        len: id_len + size_len,
    }))
}

/// Reads a size-style varint (marker bit removed). All value bits set = unknown (`None`).
pub fn read_vint(buf: &[u8], at: u64) -> Result<Option<(Option<u64>, usize)>, EbmlError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return Err(EbmlError::BadSize(at));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut value = u64::from(first) & (0xFF >> len);
    let mut all_ones = value == (0xFF >> len);
    for &b in &buf[1..len] {
        value = (value << 8) | u64::from(b);
        all_ones &= b == 0xFF;
    }
    Ok(Some((if all_ones { None } else { Some(value) }, len)))
}

pub fn read_uint(what: &'static str, payload: &[u8]) -> Result<u64, EbmlError> {
    if payload.len() > 8 {
        return Err(EbmlError::BadPayload {
            what,
            len: payload.len(),
            kind: "unsigned integer",
        });
    }
    Ok(payload
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// An EBML float: 4 or 8 bytes, big-endian (0 bytes is 0.0).
pub fn read_float(what: &'static str, payload: &[u8]) -> Result<f64, EbmlError> {
    match payload.len() {
        0 => Ok(0.0),
        4 => Ok(f64::from(f32::from_be_bytes(
            payload.try_into().expect("4 bytes"),
        ))),
        8 => Ok(f64::from_be_bytes(payload.try_into().expect("8 bytes"))),
        len => Err(EbmlError::BadPayload {
            what,
            len,
            kind: "float",
        }),
    }
}

pub fn read_string(what: &'static str, payload: &[u8]) -> Result<String, EbmlError> {
    // Matroska strings may be NUL-padded (matroskamux writes `V_MPEG4/ISO/AVC\0`).
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    String::from_utf8(payload[..end].to_vec()).map_err(|_| EbmlError::BadPayload {
        what,
        len: payload.len(),
        kind: "UTF-8 string",
    })
}

/// Iterates over the complete children inside a fully buffered master element payload.
pub struct Children<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Children<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Children { buf, pos: 0 }
    }
}

impl<'a> Iterator for Children<'a> {
    /// (id, payload, the whole element including its header)
    type Item = Result<(u32, &'a [u8], &'a [u8]), EbmlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let header = match read_header(rest, self.pos as u64) {
            Ok(Some(h)) => h,
            Ok(None) => {
                self.pos = self.buf.len();
                return Some(Err(EbmlError::Overrun { id: 0 }));
            }
            Err(e) => {
                self.pos = self.buf.len();
                return Some(Err(e));
            }
        };
        let size = match header.size {
            Some(s) if (s as u128) <= (rest.len() - header.len) as u128 => s as usize,
            _ => {
                self.pos = self.buf.len();
                return Some(Err(EbmlError::Overrun { id: header.id }));
            }
        };
        let whole = &rest[..header.len + size];
        self.pos += header.len + size;
        Some(Ok((header.id, &whole[header.len..], whole)))
    }
}

/// Writes an element header (ID then an 8-byte-or-shorter size) into `out`.
pub fn write_header(out: &mut Vec<u8>, id: u32, size: Option<u64>) {
    let id_bytes = id.to_be_bytes();
    let skip = id_bytes.iter().position(|&b| b != 0).unwrap_or(3);
    out.extend_from_slice(&id_bytes[skip..]);
    match size {
        None => out.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
        Some(size) => {
            let mut len = 1;
            while len < 8 && size >= (1u64 << (7 * len)) - 1 {
                len += 1;
            }
            let marked = size | (1u64 << (7 * len));
            out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
        }
    }
}

pub fn write_element(out: &mut Vec<u8>, id: u32, payload: &[u8]) {
    write_header(out, id, Some(payload.len() as u64));
    out.extend_from_slice(payload);
}

pub fn write_uint(out: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    write_element(out, id, &bytes[skip..]);
}

/// A Tags element with one Tag of these SimpleTags (name, value). `targets`: with an empty
/// Targets, as producers write it (the service's own tags have none).
pub fn tags_element(tags: &[(String, String)], targets: bool) -> Vec<u8> {
    let mut tag = Vec::new();
    if targets {
        write_element(&mut tag, TARGETS, &[]);
    }
    for (name, value) in tags {
        let mut simple = Vec::new();
        write_element(&mut simple, TAG_NAME, name.as_bytes());
        write_element(&mut simple, TAG_STRING, value.as_bytes());
        write_element(&mut tag, SIMPLE_TAG, &simple);
    }
    let mut tags_el = Vec::new();
    write_element(&mut tags_el, TAG, &tag);
    let mut out = Vec::new();
    write_element(&mut out, TAGS, &tags_el);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ids_and_sizes() {
        let h = read_header(&[0x1A, 0x45, 0xDF, 0xA3, 0x9F], 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            Header {
                id: EBML,
                size: Some(31),
                len: 5
            }
        );
        let unknown = [
            0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        let h = read_header(&unknown, 0).unwrap().unwrap();
        assert_eq!(
            h,
            Header {
                id: SEGMENT,
                size: None,
                len: 12
            }
        );
        assert_eq!(read_header(&[0x1A, 0x45], 0).unwrap(), None);
        assert_eq!(read_header(&[0x00, 0x45], 7), Err(EbmlError::BadId(7)));
        assert_eq!(read_header(&[0x81, 0x00], 0), Err(EbmlError::BadSize(1)));
    }

    #[test]
    fn writes_what_it_reads() {
        for size in [
            0u64,
            1,
            126,
            127,
            128,
            16_382,
            16_383,
            1 << 30,
            (1 << 56) - 2,
        ] {
            let mut out = Vec::new();
            write_header(&mut out, CLUSTER, Some(size));
            let h = read_header(&out, 0).unwrap().unwrap();
            assert_eq!(
                (h.id, h.size, h.len),
                (CLUSTER, Some(size), out.len()),
                "size {size}"
            );
        }
        let mut out = Vec::new();
        write_header(&mut out, SEGMENT, None);
        assert_eq!(read_header(&out, 0).unwrap().unwrap().size, None);
    }

    #[test]
    fn children_reject_overruns() {
        let mut buf = Vec::new();
        write_uint(&mut buf, TRACK_NUMBER, 1);
        buf.extend_from_slice(&[0x86, 0x85, b'V']); // CodecID claims 5 bytes, has 1
        let items: Vec<_> = Children::new(&buf).collect();
        assert_eq!(items.len(), 2);
        assert!(matches!(items[0], Ok((TRACK_NUMBER, [1], _))));
        assert_eq!(items[1], Err(EbmlError::Overrun { id: CODEC_ID }));
    }

    #[test]
    fn strings_drop_nul_padding() {
        assert_eq!(
            read_string("CodecID", b"V_MPEG4/ISO/AVC\0").unwrap(),
            "V_MPEG4/ISO/AVC"
        );
    }
}
