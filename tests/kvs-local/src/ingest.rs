//! The PutMedia ingest state machine: bytes of a Matroska stream go in as they arrive, in
//! any split; fragment events and KVS `ErrorId`s come out. Pure (no I/O, no clock): the
//! server feeds it body chunks and turns its events into acks and stored fragments.
//!
//! It enforces the rules of the KVS Matroska subset (see docs/kvs-local.md): one EBML
//! header and one Segment, Info and Tracks before the first Cluster, one Cluster per
//! fragment starting on a keyframe, blocks only for declared tracks, every track present
//! in every fragment, monotonic timecodes across fragments, and the size, duration and
//! metadata limits.

use std::fmt;
use std::sync::Arc;

use crate::ebml::{self, Children, EbmlError};

/// The PutMedia error ids KVS reports in ERROR acks, with their `ErrorCode` strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorId {
    StreamReadError = 4000,
    MaxFragmentSizeReached = 4001,
    MaxFragmentDurationReached = 4002,
    MaxConnectionDurationReached = 4003,
    FragmentTimecodeLesserThanPrevious = 4004,
    MoreThanAllowedTracksFound = 4005,
    InvalidMkvData = 4006,
    InvalidProducerTimestamp = 4007,
    StreamNotActive = 4008,
    FragmentMetadataLimitReached = 4009,
    TrackNumberMismatch = 4010,
    FramesMissingForTrack = 4011,
    TooManyTracks = 4012,
    InternalError = 5000,
    ArchivalError = 5001,
}

impl ErrorId {
    pub fn code(self) -> &'static str {
        match self {
            ErrorId::StreamReadError => "STREAM_READ_ERROR",
            ErrorId::MaxFragmentSizeReached => "MAX_FRAGMENT_SIZE_REACHED",
            ErrorId::MaxFragmentDurationReached => "MAX_FRAGMENT_DURATION_REACHED",
            ErrorId::MaxConnectionDurationReached => "MAX_CONNECTION_DURATION_REACHED",
            ErrorId::FragmentTimecodeLesserThanPrevious => "FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS",
            ErrorId::MoreThanAllowedTracksFound => "MORE_THAN_ALLOWED_TRACKS_FOUND",
            ErrorId::InvalidMkvData => "INVALID_MKV_DATA",
            ErrorId::InvalidProducerTimestamp => "INVALID_PRODUCER_TIMESTAMP",
            ErrorId::StreamNotActive => "STREAM_NOT_ACTIVE",
            ErrorId::FragmentMetadataLimitReached => "FRAGMENT_METADATA_LIMIT_REACHED",
            ErrorId::TrackNumberMismatch => "TRACK_NUMBER_MISMATCH",
            ErrorId::FramesMissingForTrack => "FRAMES_MISSING_FOR_TRACK",
            ErrorId::TooManyTracks => "TOO_MANY_TRACKS",
            ErrorId::InternalError => "INTERNAL_ERROR",
            ErrorId::ArchivalError => "ARCHIVAL_ERROR",
        }
    }

    pub fn from_id(id: u32) -> Option<ErrorId> {
        use ErrorId::*;
        [
            StreamReadError,
            MaxFragmentSizeReached,
            MaxFragmentDurationReached,
            MaxConnectionDurationReached,
            FragmentTimecodeLesserThanPrevious,
            MoreThanAllowedTracksFound,
            InvalidMkvData,
            InvalidProducerTimestamp,
            StreamNotActive,
            FragmentMetadataLimitReached,
            TrackNumberMismatch,
            FramesMissingForTrack,
            TooManyTracks,
            InternalError,
            ArchivalError,
        ]
        .into_iter()
        .find(|e| *e as u32 == id)
    }
}

/// A rule violation: the id for the ERROR ack, the fragment it concerns (when known) and a
/// human-readable reason for the server log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestError {
    pub id: ErrorId,
    pub timecode_ms: Option<i64>,
    pub detail: String,
}

impl fmt::Display for IngestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.id.code(),
            self.id as u32,
            self.detail
        )?;
        if let Some(tc) = self.timecode_ms {
            write!(f, " [fragment timecode {tc}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for IngestError {}

fn invalid(detail: impl Into<String>) -> IngestError {
    IngestError {
        id: ErrorId::InvalidMkvData,
        timecode_ms: None,
        detail: detail.into(),
    }
}

impl From<EbmlError> for IngestError {
    fn from(e: EbmlError) -> Self {
        invalid(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimecodeType {
    /// Cluster timecodes are absolute (ms since the epoch at the usual 1 ms scale).
    Absolute,
    /// Cluster timecodes are relative to the producer start timestamp (ms since the epoch).
    Relative { producer_start_ms: i64 },
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_fragment_bytes: u64,
    pub max_fragment_duration_ms: i64,
    pub max_tracks: usize,
    pub max_tags_per_fragment: usize,
    /// Upper bound for buffered non-Cluster elements (EBML header, Info, Tracks, Tags).
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_fragment_bytes: 50 * 1024 * 1024,
            max_fragment_duration_ms: 10_000,
            max_tracks: 3,
            max_tags_per_fragment: 10,
            max_metadata_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub number: u64,
    pub track_type: u64,
    pub codec_id: String,
    pub codec_private: Vec<u8>,
    pub width: u64,
    pub height: u64,
    /// Audio tracks: SamplingFrequency (Hz, as an integer) and Channels.
    pub sampling_frequency: u64,
    pub channels: u64,
}

/// The session header as received: the timecode scale, the tracks, and the raw Info and
/// Tracks elements (stored so GetMediaForFragmentList can return them byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeader {
    pub timecode_scale_ns: u64,
    pub tracks: Vec<Track>,
    pub raw_info: Vec<u8>,
    pub raw_tracks: Vec<u8>,
}

impl SessionHeader {
    /// A header with no tracks (for error-only segments).
    pub fn empty() -> SessionHeader {
        SessionHeader {
            timecode_scale_ns: 1_000_000,
            tracks: Vec::new(),
            raw_info: Vec::new(),
            raw_tracks: Vec::new(),
        }
    }
}

/// One frame of a fragment, located inside `Fragment::body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub track: u64,
    pub timestamp_ms: i64,
    pub keyframe: bool,
    pub offset: usize,
    pub len: usize,
}

/// A complete fragment: one Cluster.
#[derive(Debug, Clone)]
pub struct Fragment {
    /// The cluster timecode in producer time (ms since the epoch): the ack's `FragmentTimecode`.
    pub timecode_ms: i64,
    /// The earliest and latest frame timestamps (producer time, ms).
    pub first_ms: i64,
    pub last_ms: i64,
    /// The Cluster's children as received (Timecode, SimpleBlocks, …), without the Cluster header.
    pub body: Vec<u8>,
    pub frames: Vec<FrameInfo>,
    /// Fragment metadata (Tags seen before this Cluster).
    pub tags: Vec<(String, String)>,
    pub header: Arc<SessionHeader>,
}

impl Fragment {
    /// Duration as KVS reports it: first to last frame plus one typical frame interval.
    pub fn duration_ms(&self) -> i64 {
        let span = self.last_ms.saturating_sub(self.first_ms);
        let n = self.frames.len() as i64;
        if n > 1 {
            span.saturating_add(span / (n - 1))
        } else {
            span
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    /// The first bytes of a fragment arrived (after its cluster Timecode): BUFFERING.
    FragmentStarted { timecode_ms: i64 },
    /// The whole fragment arrived and passed validation: RECEIVED, then store → PERSISTED.
    FragmentComplete(Fragment),
}

enum State {
    EbmlHeader,
    Segment,
    Top,
    Cluster(ClusterState),
    /// Skipping the rest of an ignored element (SeekHead, Cues, Void, unknown IDs …).
    Skip(u64),
    SegmentEnded,
}

struct ClusterState {
    /// Bytes of the Cluster payload still to come; `None` for an unknown-size Cluster.
    remaining: Option<u64>,
    timecode: Option<i64>,
    body: Vec<u8>,
    frames: Vec<FrameInfo>,
    tags: Vec<(String, String)>,
}

pub struct Ingest {
    mode: TimecodeType,
    limits: Limits,
    state: State,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`, for error messages.
    consumed: u64,
    segment_remaining: Option<u64>,
    scale_ns: u64,
    raw_info: Vec<u8>,
    header: Option<Arc<SessionHeader>>,
    pending_tags: Vec<(String, String)>,
    /// The latest frame timestamp of the previous fragment of this session.
    last_ms: Option<i64>,
}

impl Ingest {
    pub fn new(mode: TimecodeType, limits: Limits) -> Self {
        Ingest {
            mode,
            limits,
            state: State::EbmlHeader,
            buf: Vec::new(),
            consumed: 0,
            segment_remaining: None,
            scale_ns: 1_000_000,
            raw_info: Vec::new(),
            header: None,
            pending_tags: Vec::new(),
            last_ms: None,
        }
    }

    /// Feeds the next bytes of the body. Events are appended to `out`; after an error the
    /// session is over (the caller sends the ERROR ack and closes).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Event>) -> Result<(), IngestError> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        let result = loop {
            match self.step(pos, out) {
                Ok(Some(used)) => pos += used,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..pos);
        self.consumed += pos as u64;
        result
    }

    /// The body ended: completes an unknown-size Cluster, rejects a truncated element.
    pub fn finish(&mut self, out: &mut Vec<Event>) -> Result<(), IngestError> {
        let state = std::mem::replace(&mut self.state, State::SegmentEnded);
        match state {
            State::Cluster(cluster) => {
                if !self.buf.is_empty() || cluster.remaining.is_some_and(|r| r > 0) {
                    let tc = cluster.timecode;
                    return Err(IngestError {
                        timecode_ms: tc.map(|t| self.to_ms(t)),
                        ..invalid("the stream ended inside a Cluster (truncated fragment)")
                    });
                }
                self.close_cluster(cluster, out)
            }
            _ if !self.buf.is_empty() => Err(invalid(format!(
                "the stream ended inside an element ({} bytes left over)",
                self.buf.len()
            ))),
            State::Skip(n) if n > 0 => Err(invalid("the stream ended inside an element")),
            _ => Ok(()),
        }
    }

    fn to_ms(&self, ticks: i64) -> i64 {
        let ms = (i128::from(ticks) * i128::from(self.scale_ns) / 1_000_000) as i64;
        match self.mode {
            TimecodeType::Absolute => ms,
            TimecodeType::Relative { producer_start_ms } => producer_start_ms.saturating_add(ms),
        }
    }

    /// Makes one step of progress from `buf[pos..]`: `Some(bytes consumed)`, or `None` when
    /// more input is needed.
    fn step(&mut self, pos: usize, out: &mut Vec<Event>) -> Result<Option<usize>, IngestError> {
        let at = self.consumed + pos as u64;
        let avail = &self.buf[pos..];
        if avail.is_empty() {
            return Ok(None);
        }
        if let State::Skip(n) = self.state {
            let used = (n.min(avail.len() as u64)) as usize;
            self.state = if used as u64 == n {
                State::Top
            } else {
                State::Skip(n - used as u64)
            };
            self.count_segment(used as u64)?;
            return Ok(Some(used));
        }
        let Some(header) = ebml::read_header(avail, at)? else {
            return Ok(None);
        };
        match &mut self.state {
            State::EbmlHeader => {
                if header.id != ebml::EBML {
                    return Err(invalid(format!(
                        "expected the EBML header at byte {at}, found element 0x{:X}",
                        header.id
                    )));
                }
                let Some(whole) = self.whole(avail, header)? else {
                    return Ok(None);
                };
                check_ebml_header(&whole[header.len..])?;
                self.state = State::Segment;
                Ok(Some(whole.len()))
            }
            State::Segment => {
                if header.id != ebml::SEGMENT {
                    return Err(invalid(format!(
                        "expected a Segment at byte {at}, found element 0x{:X}",
                        header.id
                    )));
                }
                self.segment_remaining = header.size;
                self.state = State::Top;
                Ok(Some(header.len))
            }
            State::SegmentEnded => Err(invalid(format!(
                "data after the end of the Segment at byte {at}: one Segment per PutMedia request"
            ))),
            State::Top => self.top_level(pos, header),
            State::Cluster(_) => self.cluster_child(pos, header, out),
            State::Skip(_) => unreachable!("handled above"),
        }
    }

    /// Returns the whole element (header + payload) once it is buffered, enforcing the
    /// metadata size bound so a bogus size cannot make us buffer without limit.
    fn whole<'b>(
        &self,
        avail: &'b [u8],
        header: ebml::Header,
    ) -> Result<Option<&'b [u8]>, IngestError> {
        let Some(size) = header.size else {
            return Err(invalid(format!(
                "element 0x{:X} has an unknown size; only Segment and Cluster may",
                header.id
            )));
        };
        if size > self.limits.max_metadata_bytes {
            return Err(invalid(format!(
                "element 0x{:X} declares {size} bytes, over the {} byte limit for metadata elements",
                header.id, self.limits.max_metadata_bytes
            )));
        }
        let total = header.len + size as usize;
        Ok((avail.len() >= total).then(|| &avail[..total]))
    }

    fn count_segment(&mut self, n: u64) -> Result<(), IngestError> {
        if let Some(rem) = self.segment_remaining.as_mut() {
            if n > *rem {
                return Err(invalid("an element extends past the end of the Segment"));
            }
            *rem -= n;
            if *rem == 0 && !matches!(self.state, State::Cluster(_)) {
                self.state = State::SegmentEnded;
            }
        }
        Ok(())
    }

    fn top_level(
        &mut self,
        pos: usize,
        header: ebml::Header,
    ) -> Result<Option<usize>, IngestError> {
        let avail = &self.buf[pos..];
        match header.id {
            ebml::CLUSTER => {
                if self.header.is_none() {
                    return Err(invalid("a Cluster arrived before the Tracks element"));
                }
                if header
                    .size
                    .is_some_and(|s| s > self.limits.max_fragment_bytes)
                {
                    return Err(IngestError {
                        id: ErrorId::MaxFragmentSizeReached,
                        timecode_ms: None,
                        detail: format!(
                            "a Cluster of {} bytes exceeds the fragment size limit",
                            header.size.unwrap_or(0)
                        ),
                    });
                }
                self.state = State::Cluster(ClusterState {
                    remaining: header.size,
                    timecode: None,
                    body: Vec::new(),
                    frames: Vec::new(),
                    tags: std::mem::take(&mut self.pending_tags),
                });
                self.count_segment(header.len as u64)?;
                if header.size == Some(0) {
                    return Err(invalid("an empty Cluster: a fragment needs frames"));
                }
                Ok(Some(header.len))
            }
            ebml::INFO | ebml::TRACKS | ebml::TAGS => {
                let Some(whole) = self.whole(avail, header)? else {
                    return Ok(None);
                };
                let whole = whole.to_vec();
                let payload = &whole[header.len..];
                match header.id {
                    ebml::INFO => {
                        if self.header.is_some() {
                            return Err(invalid(
                                "a second Info element: start a new PutMedia session instead",
                            ));
                        }
                        self.scale_ns = parse_info(payload)?;
                        self.raw_info = whole.clone();
                    }
                    ebml::TRACKS => {
                        if self.header.is_some() {
                            return Err(invalid(
                                "a second Tracks element: new tracks need a new PutMedia session",
                            ));
                        }
                        let tracks = parse_tracks(payload, &self.limits)?;
                        self.header = Some(Arc::new(SessionHeader {
                            timecode_scale_ns: self.scale_ns,
                            tracks,
                            raw_info: std::mem::take(&mut self.raw_info),
                            raw_tracks: whole.clone(),
                        }));
                    }
                    _ => {
                        let tags = parse_tags(payload)?;
                        self.pending_tags.extend(tags);
                        check_tags(&self.pending_tags, &self.limits)?;
                    }
                }
                self.count_segment(whole.len() as u64)?;
                Ok(Some(whole.len()))
            }
            ebml::EBML | ebml::SEGMENT => Err(invalid(
                "a second EBML header or Segment: one Segment per PutMedia request",
            )),
            _ => {
                let Some(size) = header.size else {
                    return Err(invalid(format!(
                        "element 0x{:X} has an unknown size",
                        header.id
                    )));
                };
                self.count_segment(header.len as u64)?;
                if !matches!(self.state, State::SegmentEnded) {
                    self.state = State::Skip(size);
                    if size == 0 {
                        self.state = State::Top;
                    }
                }
                Ok(Some(header.len))
            }
        }
    }

    fn cluster_child(
        &mut self,
        pos: usize,
        header: ebml::Header,
        out: &mut Vec<Event>,
    ) -> Result<Option<usize>, IngestError> {
        let State::Cluster(cluster) = &self.state else {
            unreachable!()
        };
        if cluster.remaining.is_none() && ebml::is_top_level(header.id) {
            // An unknown-size Cluster ends where the next top-level element starts.
            let State::Cluster(cluster) = std::mem::replace(&mut self.state, State::Top) else {
                unreachable!()
            };
            self.close_cluster(cluster, out)?;
            return Ok(Some(0));
        }
        let tc_ms = cluster.timecode.map(|t| self.to_ms(t));
        let fail = |id: ErrorId, detail: String| IngestError {
            id,
            timecode_ms: tc_ms,
            detail,
        };
        let Some(size) = header.size else {
            return Err(fail(
                ErrorId::InvalidMkvData,
                format!("Cluster child 0x{:X} has an unknown size", header.id),
            ));
        };
        let total = header.len as u64 + size;
        if cluster.remaining.is_some_and(|r| total > r) {
            return Err(fail(
                ErrorId::InvalidMkvData,
                format!(
                    "element 0x{:X} extends past the end of its Cluster",
                    header.id
                ),
            ));
        }
        if cluster.body.len() as u64 + total > self.limits.max_fragment_bytes {
            return Err(fail(
                ErrorId::MaxFragmentSizeReached,
                format!(
                    "the fragment exceeds {} bytes",
                    self.limits.max_fragment_bytes
                ),
            ));
        }
        let avail = &self.buf[pos..];
        if (avail.len() as u64) < total {
            return Ok(None);
        }
        let whole = avail[..total as usize].to_vec();
        let payload = &whole[header.len..];
        let scale = self.scale_ns;
        let to_ms = |ticks: i64| {
            let ms = (i128::from(ticks) * i128::from(scale) / 1_000_000) as i64;
            match self.mode {
                TimecodeType::Absolute => ms,
                TimecodeType::Relative { producer_start_ms } => {
                    producer_start_ms.saturating_add(ms)
                }
            }
        };
        let session = self.header.clone().expect("Tracks precede Clusters");
        let last_ms = self.last_ms;
        let limits = self.limits.clone();
        let State::Cluster(cluster) = &mut self.state else {
            unreachable!()
        };
        match header.id {
            ebml::TIMECODE => {
                if cluster.timecode.is_some() || !cluster.frames.is_empty() {
                    return Err(invalid(
                        "the Cluster Timecode must come once, before the blocks",
                    ));
                }
                let tc = ebml::read_uint("Cluster Timecode", payload)?;
                let tc = i64::try_from(tc).map_err(|_| invalid("Cluster Timecode out of range"))?;
                cluster.timecode = Some(tc);
                let timecode_ms = to_ms(tc);
                if timecode_ms < 0 {
                    return Err(IngestError {
                        id: ErrorId::InvalidProducerTimestamp,
                        timecode_ms: Some(timecode_ms),
                        detail: "the fragment timestamp is before the epoch".into(),
                    });
                }
                out.push(Event::FragmentStarted { timecode_ms });
            }
            ebml::SIMPLE_BLOCK | ebml::BLOCK_GROUP => {
                let Some(cluster_tc) = cluster.timecode else {
                    return Err(invalid("a block arrived before the Cluster Timecode"));
                };
                let tc_ms = to_ms(cluster_tc);
                let fail = |id: ErrorId, detail: String| IngestError {
                    id,
                    timecode_ms: Some(tc_ms),
                    detail,
                };
                let (block, keyframe_flag) = if header.id == ebml::SIMPLE_BLOCK {
                    (payload, None)
                } else {
                    block_in_group(payload)?
                };
                let parsed = parse_block(block).map_err(|d| fail(ErrorId::InvalidMkvData, d))?;
                let keyframe = keyframe_flag.unwrap_or(parsed.keyframe);
                if !session.tracks.iter().any(|t| t.number == parsed.track) {
                    return Err(fail(
                        ErrorId::TrackNumberMismatch,
                        format!(
                            "a block for track {} which the Tracks element does not declare",
                            parsed.track
                        ),
                    ));
                }
                if cluster.frames.is_empty() && !keyframe {
                    return Err(fail(
                        ErrorId::InvalidMkvData,
                        "a fragment must start with a keyframe".into(),
                    ));
                }
                let ts = to_ms(cluster_tc.saturating_add(i64::from(parsed.relative)));
                if let Some(last) = last_ms.filter(|&last| ts <= last) {
                    return Err(fail(
                        ErrorId::FragmentTimecodeLesserThanPrevious,
                        format!(
                            "frame timestamp {ts} is not after the last frame {last} of the session's previous fragment"
                        ),
                    ));
                }
                if let Some(first) = cluster.frames.iter().map(|f| f.timestamp_ms).min() {
                    let span = ts.max(first).saturating_sub(ts.min(first));
                    if span > limits.max_fragment_duration_ms {
                        return Err(fail(
                            ErrorId::MaxFragmentDurationReached,
                            format!(
                                "the fragment spans {span} ms, over the {} ms limit",
                                limits.max_fragment_duration_ms
                            ),
                        ));
                    }
                }
                let data_offset = cluster.body.len()
                    + header.len
                    + (block.as_ptr() as usize - payload.as_ptr() as usize)
                    + parsed.header_len;
                cluster.frames.push(FrameInfo {
                    track: parsed.track,
                    timestamp_ms: ts,
                    keyframe,
                    offset: data_offset,
                    len: block.len() - parsed.header_len,
                });
            }
            _ => {}
        }
        cluster.body.extend_from_slice(&whole);
        if let Some(r) = cluster.remaining.as_mut() {
            *r -= total;
        }
        self.count_segment_in_cluster(total)?;
        let State::Cluster(cluster) = &self.state else {
            unreachable!()
        };
        if cluster.remaining == Some(0) {
            let State::Cluster(cluster) = std::mem::replace(&mut self.state, State::Top) else {
                unreachable!()
            };
            self.close_cluster(cluster, out)?;
            if self.segment_remaining == Some(0) {
                self.state = State::SegmentEnded;
            }
        }
        Ok(Some(total as usize))
    }

    fn count_segment_in_cluster(&mut self, n: u64) -> Result<(), IngestError> {
        if let Some(rem) = self.segment_remaining.as_mut() {
            if n > *rem {
                return Err(invalid("a Cluster extends past the end of the Segment"));
            }
            *rem -= n;
        }
        Ok(())
    }

    fn close_cluster(
        &mut self,
        cluster: ClusterState,
        out: &mut Vec<Event>,
    ) -> Result<(), IngestError> {
        let header = self.header.clone().expect("Tracks precede Clusters");
        let Some(tc) = cluster.timecode else {
            return Err(invalid("a Cluster without a Timecode"));
        };
        let timecode_ms = self.to_ms(tc);
        let fail = |id: ErrorId, detail: String| IngestError {
            id,
            timecode_ms: Some(timecode_ms),
            detail,
        };
        if cluster.frames.is_empty() {
            return Err(fail(
                ErrorId::InvalidMkvData,
                "a Cluster without frames".into(),
            ));
        }
        for track in &header.tracks {
            if !cluster.frames.iter().any(|f| f.track == track.number) {
                return Err(fail(
                    ErrorId::FramesMissingForTrack,
                    format!(
                        "declared track {} has no frames in this fragment",
                        track.number
                    ),
                ));
            }
        }
        let first_ms = cluster
            .frames
            .iter()
            .map(|f| f.timestamp_ms)
            .min()
            .unwrap_or(timecode_ms);
        let last_ms = cluster
            .frames
            .iter()
            .map(|f| f.timestamp_ms)
            .max()
            .unwrap_or(timecode_ms);
        self.last_ms = Some(last_ms);
        out.push(Event::FragmentComplete(Fragment {
            timecode_ms,
            first_ms,
            last_ms,
            body: cluster.body,
            frames: cluster.frames,
            tags: cluster.tags,
            header,
        }));
        Ok(())
    }
}

fn check_ebml_header(payload: &[u8]) -> Result<(), IngestError> {
    let mut doc_type = None;
    for child in Children::new(payload) {
        let (id, value, _) = child?;
        match id {
            ebml::EBML_READ_VERSION if ebml::read_uint("EBMLReadVersion", value)? > 1 => {
                return Err(invalid("EBMLReadVersion above 1 is not supported"));
            }
            ebml::EBML_MAX_ID_LENGTH if ebml::read_uint("EBMLMaxIDLength", value)? > 4 => {
                return Err(invalid("EBMLMaxIDLength above 4 is not supported"));
            }
            ebml::EBML_MAX_SIZE_LENGTH if ebml::read_uint("EBMLMaxSizeLength", value)? > 8 => {
                return Err(invalid("EBMLMaxSizeLength above 8 is not supported"));
            }
            ebml::DOC_TYPE => doc_type = Some(ebml::read_string("DocType", value)?),
            _ => {}
        }
    }
    match doc_type.as_deref() {
        Some("matroska") | Some("webm") => Ok(()),
        Some(other) => Err(invalid(format!("DocType {other:?} is not matroska"))),
        None => Err(invalid("the EBML header has no DocType")),
    }
}

fn parse_info(payload: &[u8]) -> Result<u64, IngestError> {
    let mut scale = 1_000_000;
    for child in Children::new(payload) {
        let (id, value, _) = child?;
        if id == ebml::TIMECODE_SCALE {
            scale = ebml::read_uint("TimecodeScale", value)?;
        }
    }
    if scale == 0 {
        return Err(invalid("TimecodeScale 0"));
    }
    Ok(scale)
}

/// Rebuilds a session header from its raw Info (may be empty) and Tracks elements.
pub fn parse_session_header(
    raw_info: &[u8],
    raw_tracks: &[u8],
) -> Result<SessionHeader, IngestError> {
    let payload = |raw: &[u8]| -> Result<Vec<u8>, IngestError> {
        let h = ebml::read_header(raw, 0)?.ok_or_else(|| invalid("a truncated stored header"))?;
        Ok(raw[h.len..].to_vec())
    };
    let timecode_scale_ns = if raw_info.is_empty() {
        1_000_000
    } else {
        parse_info(&payload(raw_info)?)?
    };
    let tracks = parse_tracks(&payload(raw_tracks)?, &Limits::default())?;
    Ok(SessionHeader {
        timecode_scale_ns,
        tracks,
        raw_info: raw_info.to_vec(),
        raw_tracks: raw_tracks.to_vec(),
    })
}

pub fn parse_tracks(payload: &[u8], limits: &Limits) -> Result<Vec<Track>, IngestError> {
    let mut tracks: Vec<Track> = Vec::new();
    for child in Children::new(payload) {
        let (id, entry, _) = child?;
        if id != ebml::TRACK_ENTRY {
            continue;
        }
        let mut track = Track {
            number: 0,
            track_type: 0,
            codec_id: String::new(),
            codec_private: Vec::new(),
            width: 0,
            height: 0,
            sampling_frequency: 0,
            channels: 0,
        };
        for field in Children::new(entry) {
            let (id, value, _) = field?;
            match id {
                ebml::TRACK_NUMBER => track.number = ebml::read_uint("TrackNumber", value)?,
                ebml::TRACK_TYPE => track.track_type = ebml::read_uint("TrackType", value)?,
                ebml::CODEC_ID => track.codec_id = ebml::read_string("CodecID", value)?,
                ebml::CODEC_PRIVATE => track.codec_private = value.to_vec(),
                ebml::VIDEO => {
                    for v in Children::new(value) {
                        let (id, value, _) = v?;
                        match id {
                            ebml::PIXEL_WIDTH => {
                                track.width = ebml::read_uint("PixelWidth", value)?
                            }
                            ebml::PIXEL_HEIGHT => {
                                track.height = ebml::read_uint("PixelHeight", value)?
                            }
                            _ => {}
                        }
                    }
                }
                ebml::AUDIO => {
                    for a in Children::new(value) {
                        let (id, value, _) = a?;
                        match id {
                            ebml::SAMPLING_FREQUENCY => {
                                track.sampling_frequency =
                                    ebml::read_float("SamplingFrequency", value)?.round() as u64
                            }
                            ebml::CHANNELS => track.channels = ebml::read_uint("Channels", value)?,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if track.number == 0 {
            return Err(invalid("a TrackEntry without a TrackNumber (or number 0)"));
        }
        if track.codec_id.is_empty() {
            return Err(invalid(format!("track {} has no CodecID", track.number)));
        }
        if tracks.iter().any(|t| t.number == track.number) {
            return Err(invalid(format!(
                "track number {} declared twice",
                track.number
            )));
        }
        tracks.push(track);
    }
    if tracks.is_empty() {
        return Err(invalid("the Tracks element declares no track"));
    }
    if tracks.len() > limits.max_tracks {
        return Err(IngestError {
            id: ErrorId::TooManyTracks,
            timecode_ms: None,
            detail: format!(
                "{} tracks declared, at most {} allowed",
                tracks.len(),
                limits.max_tracks
            ),
        });
    }
    Ok(tracks)
}

fn parse_tags(payload: &[u8]) -> Result<Vec<(String, String)>, IngestError> {
    let mut out = Vec::new();
    for tag in Children::new(payload) {
        let (id, tag, _) = tag?;
        if id != ebml::TAG {
            continue;
        }
        for simple in Children::new(tag) {
            let (id, simple, _) = simple?;
            if id != ebml::SIMPLE_TAG {
                continue;
            }
            let (mut name, mut value) = (None, String::new());
            for field in Children::new(simple) {
                let (id, v, _) = field?;
                match id {
                    ebml::TAG_NAME => name = Some(ebml::read_string("TagName", v)?),
                    ebml::TAG_STRING => value = ebml::read_string("TagString", v)?,
                    _ => {}
                }
            }
            let name = name.ok_or_else(|| invalid("a SimpleTag without a TagName"))?;
            out.push((name, value));
        }
    }
    Ok(out)
}

fn check_tags(tags: &[(String, String)], limits: &Limits) -> Result<(), IngestError> {
    let fail = |detail: String| IngestError {
        id: ErrorId::FragmentMetadataLimitReached,
        timecode_ms: None,
        detail,
    };
    if tags.len() > limits.max_tags_per_fragment {
        return Err(fail(format!(
            "{} metadata tags for one fragment, at most {}",
            tags.len(),
            limits.max_tags_per_fragment
        )));
    }
    for (name, value) in tags {
        if name.len() > 128 || value.len() > 256 {
            return Err(fail(format!(
                "metadata tag {name:?}: name over 128 or value over 256 bytes"
            )));
        }
        if name.starts_with("AWS") {
            return Err(fail(format!(
                "metadata tag {name:?}: names starting with AWS are reserved"
            )));
        }
    }
    Ok(())
}

/// Finds the Block inside a BlockGroup; a Block is a keyframe when no ReferenceBlock is present.
fn block_in_group(payload: &[u8]) -> Result<(&[u8], Option<bool>), IngestError> {
    let mut block = None;
    let mut referenced = false;
    for child in Children::new(payload) {
        let (id, value, _) = child?;
        match id {
            ebml::BLOCK => block = Some(value),
            ebml::REFERENCE_BLOCK => referenced = true,
            _ => {}
        }
    }
    let block = block.ok_or_else(|| invalid("a BlockGroup without a Block"))?;
    Ok((block, Some(!referenced)))
}

pub struct ParsedBlock {
    pub track: u64,
    pub relative: i16,
    pub keyframe: bool,
    pub header_len: usize,
}

/// Parses a (Simple)Block header: track number, int16 relative timecode, flags.
pub fn parse_block(block: &[u8]) -> Result<ParsedBlock, String> {
    let (track, n) = match ebml::read_vint(block, 0) {
        Ok(Some((Some(track), n))) => (track, n),
        _ => return Err("a block with an invalid track number".into()),
    };
    if block.len() < n + 3 {
        return Err("a block shorter than its header".into());
    }
    let relative = i16::from_be_bytes([block[n], block[n + 1]]);
    let flags = block[n + 2];
    if flags & 0x06 != 0 {
        return Err("laced blocks are not supported: one frame per block".into());
    }
    if block.len() == n + 3 {
        return Err("a block without frame data".into());
    }
    Ok(ParsedBlock {
        track,
        relative,
        keyframe: flags & 0x80 != 0,
        header_len: n + 3,
    })
}

/// Walks a stored Cluster body and returns its frames, timed in producer time given the
/// fragment's timecode (used by the archived-media APIs).
pub fn frames_of_body(
    body: &[u8],
    scale_ns: u64,
    fragment_timecode_ms: i64,
) -> Result<Vec<FrameInfo>, IngestError> {
    let ticks_ms = |ticks: i64| (i128::from(ticks) * i128::from(scale_ns) / 1_000_000) as i64;
    let mut frames = Vec::new();
    let mut tc = None;
    let mut offset = 0;
    for child in Children::new(body) {
        let (id, payload, whole) = child?;
        let header_len = whole.len() - payload.len();
        match id {
            ebml::TIMECODE => {
                let t = ebml::read_uint("Cluster Timecode", payload)?;
                tc = Some(i64::try_from(t).map_err(|_| invalid("Cluster Timecode out of range"))?);
            }
            ebml::SIMPLE_BLOCK | ebml::BLOCK_GROUP => {
                let (block, key) = if id == ebml::SIMPLE_BLOCK {
                    (payload, None)
                } else {
                    block_in_group(payload)?
                };
                let parsed = parse_block(block).map_err(invalid)?;
                let tc = tc.ok_or_else(|| invalid("a block before the Cluster Timecode"))?;
                let data_start = offset
                    + header_len
                    + (block.as_ptr() as usize - payload.as_ptr() as usize)
                    + parsed.header_len;
                frames.push(FrameInfo {
                    track: parsed.track,
                    timestamp_ms: fragment_timecode_ms + ticks_ms(tc + i64::from(parsed.relative))
                        - ticks_ms(tc),
                    keyframe: key.unwrap_or(parsed.keyframe),
                    offset: data_start,
                    len: block.len() - parsed.header_len,
                });
            }
            _ => {}
        }
        offset += whole.len();
    }
    Ok(frames)
}
