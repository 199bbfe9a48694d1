//! Archived media: ListFragments, GetMediaForFragmentList (MKV out, error tags for missing
//! fragments) and GetClip (a progressive MP4 of the range's H.264 or H.265 video, capped like
//! AWS at the first 200 fragments / 100 MB). Runs on the blocking pool: it reads fragment
//! files.

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::control::{decode_token, encode_token};
use crate::ebml;
use crate::error::ApiError;
use crate::ingest::{self, SessionHeader};
use crate::mp4;
use crate::server::{Body, State, epoch_seconds, json, ms_from_epoch_seconds, parse, respond};
use crate::store::{FragmentMeta, StreamInfo};

pub const GET_CLIP_MAX_FRAGMENTS: usize = 200;
pub const GET_CLIP_MAX_BYTES: u64 = 100 * 1024 * 1024;
const MAX_RANGE_MS: i64 = 24 * 3_600_000;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Range {
    start_timestamp: Option<Value>,
    end_timestamp: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Selector {
    fragment_selector_type: Option<String>,
    timestamp_range: Option<Range>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    Producer,
    Server,
}

/// A validated selector: which clock, and the inclusive range of fragment start times.
struct Window {
    clock: Clock,
    start_ms: i64,
    end_ms: i64,
}

impl Window {
    fn parse(sel: Selector, what: &str) -> Result<Window, ApiError> {
        let clock = match sel.fragment_selector_type.as_deref() {
            Some("PRODUCER_TIMESTAMP") => Clock::Producer,
            Some("SERVER_TIMESTAMP") => Clock::Server,
            other => {
                return Err(ApiError::invalid(format!(
                    "{what}.FragmentSelectorType must be PRODUCER_TIMESTAMP or SERVER_TIMESTAMP, got {other:?}"
                )));
            }
        };
        let range = sel
            .timestamp_range
            .ok_or_else(|| ApiError::invalid(format!("{what}.TimestampRange is required")))?;
        let field = |v: Option<Value>, name: &str| {
            let v = v.ok_or_else(|| {
                ApiError::invalid(format!("{what}.TimestampRange.{name} is required"))
            })?;
            ms_from_epoch_seconds(&format!("{what}.TimestampRange.{name}"), &v)
        };
        let start_ms = field(range.start_timestamp, "StartTimestamp")?;
        let end_ms = field(range.end_timestamp, "EndTimestamp")?;
        if end_ms <= start_ms {
            return Err(ApiError::invalid(format!(
                "{what}: EndTimestamp must be later than StartTimestamp"
            )));
        }
        Ok(Window {
            clock,
            start_ms,
            end_ms,
        })
    }

    fn contains(&self, f: &FragmentMeta) -> bool {
        let t = match self.clock {
            Clock::Producer => f.producer_ms,
            Clock::Server => f.server_ms,
        };
        (self.start_ms..=self.end_ms).contains(&t)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamRef {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

pub(crate) fn handle(state: &State, op: &str, body: &[u8]) -> Result<Response<Body>, ApiError> {
    match op {
        "ListFragments" => list_fragments(state, body),
        "GetClip" => get_clip(state, body),
        "GetMediaForFragmentList" => get_media_for_fragment_list(state, body),
        _ => Err(ApiError::unknown_operation(op)),
    }
}

fn fragment_json(f: &FragmentMeta) -> Value {
    json!({
        "FragmentNumber": f.number,
        "FragmentSizeInBytes": f.size,
        "ProducerTimestamp": epoch_seconds(f.producer_ms),
        "ServerTimestamp": epoch_seconds(f.server_ms),
        "FragmentLengthInMilliseconds": f.duration_ms,
    })
}

fn list_fragments(state: &State, body: &[u8]) -> Result<Response<Body>, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Req {
        #[serde(flatten)]
        stream: StreamRef,
        max_results: Option<usize>,
        next_token: Option<String>,
        fragment_selector: Option<Selector>,
    }
    let req: Req = parse(body)?;
    let max = req.max_results.unwrap_or(100);
    if !(1..=1000).contains(&max) {
        return Err(ApiError::invalid("MaxResults must be 1 to 1000"));
    }
    let window = req
        .fragment_selector
        .map(|s| Window::parse(s, "FragmentSelector"))
        .transpose()?;
    let start = decode_token(req.next_token.as_deref())?;
    let (_, fragments) = state.store.fragments(
        req.stream.stream_name.as_deref(),
        req.stream.stream_arn.as_deref(),
        state.now_ms(),
    )?;
    let mut selected: Vec<&FragmentMeta> = fragments
        .iter()
        .filter(|f| window.as_ref().is_none_or(|w| w.contains(f)))
        .collect();
    selected.sort_by_key(|f| (f.producer_ms, f.number.clone()));
    let page: Vec<Value> = selected
        .iter()
        .skip(start)
        .take(max)
        .map(|f| fragment_json(f))
        .collect();
    let mut out = json!({ "Fragments": page });
    if start + max < selected.len() {
        out["NextToken"] = json!(encode_token(start + max));
    }
    Ok(json(&out))
}

/// One stored fragment as the service returns it (compare the real GetMedia output in
/// tests/fixtures/kvs-media): an EBML header, a Segment of unknown size, the session's Info
/// and Tracks as the producer sent them, the producer's metadata for the fragment (its own
/// Tags element), the service's Tags (`AWS_KINESISVIDEO_FRAGMENT_NUMBER`, `…_SERVER_TIMESTAMP`,
/// `…_PRODUCER_TIMESTAMP`, no Targets) and then the Cluster. A missing fragment is a
/// Segment with only the error Tags.
fn fragment_segment(
    body: &[u8],
    header: &SessionHeader,
    meta: &FragmentMeta,
    cluster: bool,
) -> Vec<u8> {
    let mut out = ebml_header();
    ebml::write_header(&mut out, ebml::SEGMENT, None);
    let service = |tags: &[(&str, String)]| {
        let owned: Vec<(String, String)> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        ebml::tags_element(&owned, false)
    };
    if !cluster {
        out.extend(service(&[
            ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", meta.number.clone()),
            ("AWS_KINESISVIDEO_ERROR_CODE", "FRAGMENT_NOT_FOUND".into()),
            ("AWS_KINESISVIDEO_ERROR_ID", "3000".into()),
        ]));
        return out;
    }
    out.extend_from_slice(&header.raw_info);
    out.extend_from_slice(&header.raw_tracks);
    if !meta.tags.is_empty() {
        out.extend(ebml::tags_element(&meta.tags, true));
    }
    out.extend(service(&[
        ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", meta.number.clone()),
        (
            "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
            format!("{:.3}", epoch_seconds(meta.server_ms)),
        ),
        (
            "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
            format!("{:.3}", epoch_seconds(meta.producer_ms)),
        ),
    ]));
    ebml::write_element(&mut out, ebml::CLUSTER, body);
    out
}

fn ebml_header() -> Vec<u8> {
    let mut h = Vec::new();
    ebml::write_uint(&mut h, ebml::EBML_VERSION, 1);
    ebml::write_uint(&mut h, ebml::EBML_READ_VERSION, 1);
    ebml::write_uint(&mut h, ebml::EBML_MAX_ID_LENGTH, 4);
    ebml::write_uint(&mut h, ebml::EBML_MAX_SIZE_LENGTH, 8);
    ebml::write_element(&mut h, ebml::DOC_TYPE, b"matroska");
    ebml::write_uint(&mut h, ebml::DOC_TYPE_VERSION, 2);
    ebml::write_uint(&mut h, ebml::DOC_TYPE_READ_VERSION, 2);
    let mut out = Vec::new();
    ebml::write_element(&mut out, ebml::EBML, &h);
    out
}

fn get_media_for_fragment_list(state: &State, body: &[u8]) -> Result<Response<Body>, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Req {
        #[serde(flatten)]
        stream: StreamRef,
        fragments: Option<Vec<String>>,
    }
    let req: Req = parse(body)?;
    let wanted = req
        .fragments
        .ok_or_else(|| ApiError::invalid("Fragments is required"))?;
    if wanted.is_empty() || wanted.len() > 1000 {
        return Err(ApiError::invalid(
            "Fragments must list 1 to 1000 fragment numbers",
        ));
    }
    let (info, fragments) = state.store.fragments(
        req.stream.stream_name.as_deref(),
        req.stream.stream_arn.as_deref(),
        state.now_ms(),
    )?;
    let mut out = Vec::new();
    for number in &wanted {
        match fragments.iter().find(|f| &f.number == number) {
            Some(meta) => {
                let (body, header) = state.store.read_fragment(&info, meta)?;
                out.extend(fragment_segment(&body, &header, meta, true));
            }
            None => {
                let missing = FragmentMeta {
                    number: number.clone(),
                    producer_ms: 0,
                    server_ms: 0,
                    duration_ms: 0,
                    size: 0,
                    last_ms: 0,
                    header: String::new(),
                    tags: Vec::new(),
                };
                out.extend(fragment_segment(
                    &[],
                    &SessionHeader::empty(),
                    &missing,
                    false,
                ));
            }
        }
    }
    Ok(respond(StatusCode::OK, "video/webm", out))
}

/// Checks an AVCDecoderConfigurationRecord well enough to build a playable `avcC`.
fn check_avcc(avcc: &[u8]) -> Result<(), String> {
    if avcc.len() < 7 || avcc[0] != 1 {
        return Err("not an AVCDecoderConfigurationRecord (version 1, at least 7 bytes)".into());
    }
    let sps_count = (avcc[5] & 0x1F) as usize;
    if sps_count == 0 {
        return Err("no SPS".into());
    }
    let mut pos = 6;
    for kind in ["SPS", "PPS"] {
        let count = if kind == "SPS" {
            sps_count
        } else {
            let c = *avcc.get(pos).ok_or("truncated before the PPS count")? as usize;
            pos += 1;
            c
        };
        if kind == "PPS" && count == 0 {
            return Err("no PPS".into());
        }
        for _ in 0..count {
            let len = avcc
                .get(pos..pos + 2)
                .ok_or(format!("truncated {kind} length"))?;
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            pos += 2;
            if avcc.len() < pos + len || len == 0 {
                return Err(format!("truncated {kind}"));
            }
            pos += len;
        }
    }
    Ok(())
}

/// Checks a HEVCDecoderConfigurationRecord's structure: version 1, and VPS, SPS and PPS
/// arrays each with a NAL unit of that type (kvs-local's reading, not the agent's parser).
fn check_hvcc(hvcc: &[u8]) -> Result<(), String> {
    if hvcc.len() < 23 || hvcc[0] != 1 {
        return Err("not an HEVCDecoderConfigurationRecord (version 1, at least 23 bytes)".into());
    }
    let mut pos = 23;
    let mut seen = Vec::new();
    for _ in 0..hvcc[22] {
        let header = hvcc.get(pos..pos + 3).ok_or("truncated array header")?;
        let (kind, count) = (header[0] & 0x3F, u16::from_be_bytes([header[1], header[2]]));
        pos += 3;
        for _ in 0..count {
            let len = hvcc.get(pos..pos + 2).ok_or("truncated NAL unit length")?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let nal = hvcc
                .get(pos + 2..pos + 2 + len)
                .ok_or("truncated NAL unit")?;
            if nal.first().map(|b| (b >> 1) & 0x3F) != Some(kind) {
                return Err(format!(
                    "a NAL unit in the array of type {kind} is of another type"
                ));
            }
            seen.push(kind);
            pos += 2 + len;
        }
    }
    for (kind, name) in [(32, "VPS"), (33, "SPS"), (34, "PPS")] {
        if !seen.contains(&kind) {
            return Err(format!("no {name}"));
        }
    }
    Ok(())
}

fn get_clip(state: &State, body: &[u8]) -> Result<Response<Body>, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Req {
        #[serde(flatten)]
        stream: StreamRef,
        clip_fragment_selector: Option<Selector>,
    }
    let req: Req = parse(body)?;
    let selector = req
        .clip_fragment_selector
        .ok_or_else(|| ApiError::invalid("ClipFragmentSelector is required"))?;
    let window = Window::parse(selector, "ClipFragmentSelector")?;
    if window.end_ms - window.start_ms > MAX_RANGE_MS {
        return Err(ApiError::invalid("the clip range must not exceed 24 hours"));
    }
    let now = state.now_ms();
    if window.clock == Clock::Server && window.end_ms > now {
        return Err(ApiError::invalid(
            "with SERVER_TIMESTAMP, EndTimestamp must be in the past",
        ));
    }
    let (info, fragments) = state.store.fragments(
        req.stream.stream_name.as_deref(),
        req.stream.stream_arn.as_deref(),
        now,
    )?;
    if info.retention_hours == 0 {
        return Err(ApiError::new(
            400,
            "NoDataRetentionException",
            format!("stream {} has no data retention", info.name),
        ));
    }
    let selected = deduplicated(fragments.iter().filter(|f| window.contains(f)).collect());
    if selected.is_empty() {
        return Err(ApiError::not_found(format!(
            "No fragments found in the requested range of stream {}",
            info.name
        )));
    }
    // Like AWS: only the first 200 fragments or 100 MB of the range.
    let mut total = 0;
    let selected: Vec<&FragmentMeta> = selected
        .into_iter()
        .take(GET_CLIP_MAX_FRAGMENTS)
        .take_while(|f| {
            total += f.size;
            total <= GET_CLIP_MAX_BYTES
        })
        .collect();
    let mp4 = build_clip(state, &info, &selected)?;
    Ok(respond(StatusCode::OK, "video/mp4", mp4))
}

/// The fragments GetClip plays, in producer-time order. Producer timestamps are
/// deduplicated as the service documents it (ClipFragmentSelector): where fragments ingested
/// at different times cover the same producer time (a resend after a lost ack, a later
/// upload of recorded video), only the earliest ingested is used.
fn deduplicated(mut fragments: Vec<&FragmentMeta>) -> Vec<&FragmentMeta> {
    // Fragment numbers increase with ingestion: first come, first kept.
    fragments.sort_by(|a, b| (a.number.len(), &a.number).cmp(&(b.number.len(), &b.number)));
    let mut kept: std::collections::BTreeMap<i64, (i64, &FragmentMeta)> = Default::default();
    for f in fragments {
        // Spans are half open, [first frame, last frame): a fragment whose last frame (an
        // audio frame straddling the cut) shares the next one's first timestamp is no copy.
        let (start, end) = (f.producer_ms, f.last_ms.max(f.producer_ms + 1));
        let before = kept.range(..=start).next_back();
        let after = kept.range(start..).next();
        let overlaps =
            before.is_some_and(|(_, (e, _))| *e > start) || after.is_some_and(|(s, _)| *s < end);
        if !overlaps {
            kept.insert(start, (end, f));
        }
    }
    kept.into_values().map(|(_, f)| f).collect()
}

/// Concatenates the selected fragments' video frames into one MP4. Like the service, it
/// refuses a range in which the tracks or their codec private data change ("Video playback
/// track requirements": one clip has one sample description per track).
fn build_clip(
    state: &State,
    info: &StreamInfo,
    selected: &[&FragmentMeta],
) -> Result<Vec<u8>, ApiError> {
    let mut first_header: Option<std::sync::Arc<SessionHeader>> = None;
    let mut bodies = Vec::new();
    for meta in selected {
        let (body, header) = state.store.read_fragment(info, meta)?;
        match &first_header {
            None => first_header = Some(header.clone()),
            Some(h) => consistent(h, &header, meta)?,
        }
        bodies.push((body, header));
    }
    let header = first_header.ok_or_else(|| ApiError::not_found("no fragments"))?;
    let layout = ClipLayout::of(&header)?;
    let track = layout.video;
    let codec = layout.codec;
    let scale = header.timecode_scale_ns;
    let mut samples = Vec::new();
    let mut audio_samples = Vec::new();
    for (meta, (body, _)) in selected.iter().zip(&bodies) {
        let frames = ingest::frames_of_body(body, scale, meta.producer_ms)
            .map_err(|e| ApiError::new(400, "InvalidMediaFrameException", e.to_string()))?;
        for f in frames {
            let sample = mp4::Sample {
                pts_ms: f.timestamp_ms,
                keyframe: f.keyframe,
                data: &body[f.offset..f.offset + f.len],
            };
            if f.track == track.number {
                samples.push(sample);
            } else if layout
                .audio
                .as_ref()
                .is_some_and(|(t, _)| t.number == f.track)
            {
                audio_samples.push(sample);
            }
        }
    }
    if samples.is_empty() {
        return Err(ApiError::new(
            400,
            "InvalidMediaFrameException",
            "no video frames in the range",
        ));
    }
    let video = mp4::VideoTrack {
        width: track.width as u32,
        height: track.height as u32,
        codec,
        config: &track.codec_private,
    };
    let audio = layout.audio.as_ref().map(|(t, codec)| mp4::AudioTrack {
        codec: *codec,
        config: &t.codec_private,
        rate: t.sampling_frequency as u32,
        channels: t.channels as u16,
    });
    Ok(mp4::write(
        &video,
        &samples,
        audio.as_ref().map(|a| (a, audio_samples.as_slice())),
    ))
}

/// The track layouts GetClip plays ("Video playback track requirements", GetClip): track 1
/// H.264 or H.265 video; optionally track 2 AAC audio, or G.711 A-law (A_MS/ACM) after
/// H.264. Anything else is UnsupportedStreamMediaTypeException, before any media is read.
struct ClipLayout<'a> {
    video: &'a ingest::Track,
    codec: mp4::Codec,
    audio: Option<(&'a ingest::Track, mp4::AudioCodec)>,
}

/// WAVEFORMATEX wFormatTag values (RFC 2361): the MS/ACM codec private data's first field.
const WAVE_FORMAT_ALAW: u16 = 6;
const WAVE_FORMAT_MULAW: u16 = 7;

impl<'a> ClipLayout<'a> {
    fn of(header: &'a SessionHeader) -> Result<ClipLayout<'a>, ApiError> {
        let unsupported =
            |msg: String| ApiError::new(400, "UnsupportedStreamMediaTypeException", msg);
        let track = header
            .tracks
            .iter()
            .find(|t| t.number == 1)
            .filter(|t| t.track_type == 1)
            .ok_or_else(|| unsupported("track 1 of the stream is not a video track".into()))?;
        let codec = match track.codec_id.as_str() {
            "V_MPEG4/ISO/AVC" => mp4::Codec::H264,
            "V_MPEGH/ISO/HEVC" => mp4::Codec::H265,
            other => {
                return Err(unsupported(format!(
                    "codec {other} is not one GetClip plays (V_MPEG4/ISO/AVC or V_MPEGH/ISO/HEVC)"
                )));
            }
        };
        if track.codec_private.is_empty() {
            return Err(ApiError::new(
                400,
                "MissingCodecPrivateDataException",
                "the video track has no codec private data",
            ));
        }
        match codec {
            mp4::Codec::H264 => check_avcc(&track.codec_private),
            mp4::Codec::H265 => check_hvcc(&track.codec_private),
        }
        .map_err(|e| {
            ApiError::new(
                400,
                "InvalidCodecPrivateDataException",
                format!("invalid codec private data: {e}"),
            )
        })?;
        let others: Vec<&ingest::Track> = header.tracks.iter().filter(|t| t.number != 1).collect();
        let audio = match others.as_slice() {
            [] => None,
            [a] if a.number == 2 && a.track_type == 2 => Some((*a, audio_codec(a, codec)?)),
            _ => {
                return Err(unsupported(format!(
                    "GetClip plays track 1 video with at most a track 2 audio; the stream has tracks {:?}",
                    header
                        .tracks
                        .iter()
                        .map(|t| (t.number, t.codec_id.as_str()))
                        .collect::<Vec<_>>()
                )));
            }
        };
        Ok(ClipLayout {
            video: track,
            codec,
            audio,
        })
    }
}

/// Which MP4 audio a track 2 becomes, if GetClip plays it next to `video`.
fn audio_codec(track: &ingest::Track, video: mp4::Codec) -> Result<mp4::AudioCodec, ApiError> {
    let unsupported = |msg: String| ApiError::new(400, "UnsupportedStreamMediaTypeException", msg);
    let invalid = |msg: String| ApiError::new(400, "InvalidCodecPrivateDataException", msg);
    if track.sampling_frequency == 0 || track.channels == 0 {
        return Err(invalid(format!(
            "audio track {} has no SamplingFrequency or Channels",
            track.number
        )));
    }
    match track.codec_id.as_str() {
        "A_AAC" => {
            if track.codec_private.len() < 2 {
                return Err(invalid(
                    "the AAC track's codec private data is not an AudioSpecificConfig".into(),
                ));
            }
            Ok(mp4::AudioCodec::Aac)
        }
        "A_MS/ACM" => {
            let tag = track
                .codec_private
                .get(..2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| {
                    invalid("the A_MS/ACM track's codec private data is not a WAVEFORMATEX".into())
                })?;
            match (tag, video) {
                (WAVE_FORMAT_ALAW, mp4::Codec::H264) => Ok(mp4::AudioCodec::Alaw),
                (WAVE_FORMAT_ALAW, mp4::Codec::H265) => Err(unsupported(
                    "GetClip plays G.711 audio only next to H.264 video".into(),
                )),
                (WAVE_FORMAT_MULAW, _) => Err(unsupported(
                    "GetClip plays G.711 A-law only; this track is µ-law".into(),
                )),
                (other, _) => Err(unsupported(format!(
                    "A_MS/ACM format tag {other} is not G.711 A-law"
                ))),
            }
        }
        other => Err(unsupported(format!(
            "audio codec {other} is not one GetClip plays (A_AAC or A_MS/ACM)"
        ))),
    }
}

/// GetClip's rule: the tracks, and each track's codec private data, stay the same through
/// the requested media. Which error the service names is not documented; kvs-local answers
/// a layout change with UnsupportedStreamMediaTypeException and a codec private data change
/// with InvalidCodecPrivateDataException.
fn consistent(
    first: &SessionHeader,
    next: &SessionHeader,
    at: &FragmentMeta,
) -> Result<(), ApiError> {
    let layout = |h: &SessionHeader| {
        h.tracks
            .iter()
            .map(|t| (t.number, t.track_type, t.codec_id.clone()))
            .collect::<Vec<_>>()
    };
    if layout(first) != layout(next) {
        return Err(ApiError::new(
            400,
            "UnsupportedStreamMediaTypeException",
            format!(
                "the tracks change inside the requested range (at fragment {}): {:?} then {:?}",
                at.number,
                layout(first),
                layout(next)
            ),
        ));
    }
    if first.tracks != next.tracks {
        return Err(ApiError::new(
            400,
            "InvalidCodecPrivateDataException",
            format!(
                "the codec private data changes inside the requested range (at fragment {}); \
                 it must stay the same through the clip",
                at.number
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(number: &str, producer_ms: i64, last_ms: i64) -> FragmentMeta {
        FragmentMeta {
            number: number.into(),
            producer_ms,
            server_ms: 0,
            duration_ms: last_ms - producer_ms,
            size: 1,
            last_ms,
            header: String::new(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn duplicate_producer_times_keep_the_first_ingested() {
        let first = [meta("10", 0, 1900), meta("11", 2000, 3900)];
        // A resend of both (later numbers), and one of them again shifted a little.
        let again = [
            meta("12", 0, 1900),
            meta("13", 2000, 3900),
            meta("14", 1000, 2900),
        ];
        let newer = [meta("15", 4000, 5900)];
        let all: Vec<&FragmentMeta> = again.iter().chain(&newer).chain(&first).collect();
        let kept: Vec<&str> = deduplicated(all)
            .iter()
            .map(|f| f.number.as_str())
            .collect();
        assert_eq!(kept, ["10", "11", "15"]);
        // Touching spans are neighbours, not copies; single-frame resends are still copies.
        let touching = [meta("20", 0, 1000), meta("21", 1000, 1900)];
        let single = [meta("22", 3000, 3000), meta("23", 3000, 3000)];
        let all: Vec<&FragmentMeta> = touching.iter().chain(&single).collect();
        let kept: Vec<&str> = deduplicated(all)
            .iter()
            .map(|f| f.number.as_str())
            .collect();
        assert_eq!(kept, ["20", "21", "22"]);
    }

    #[test]
    fn avcc_checks() {
        assert!(check_avcc(&[]).is_err());
        assert!(
            check_avcc(&[1, 77, 0, 30, 0xFF, 0xE0, 0])
                .unwrap_err()
                .contains("no SPS")
        );
        let good = [1, 77, 0, 30, 0xFF, 0xE1, 0, 2, 0x67, 0x4D, 1, 0, 1, 0x68];
        assert_eq!(check_avcc(&good), Ok(()));
        assert!(check_avcc(&good[..good.len() - 1]).is_err());
    }

    fn track(number: u64, track_type: u64, codec_id: &str, private: &[u8]) -> ingest::Track {
        ingest::Track {
            number,
            track_type,
            codec_id: codec_id.into(),
            codec_private: private.to_vec(),
            width: 320,
            height: 240,
            sampling_frequency: if track_type == 2 { 8000 } else { 0 },
            channels: if track_type == 2 { 1 } else { 0 },
        }
    }

    fn layout_of(tracks: Vec<ingest::Track>) -> Result<Option<mp4::AudioCodec>, String> {
        let header = SessionHeader {
            tracks,
            ..SessionHeader::empty()
        };
        ClipLayout::of(&header)
            .map(|l| l.audio.map(|(_, c)| c))
            .map_err(|e| e.error_type)
    }

    #[test]
    fn clip_layouts_follow_the_playback_track_requirements() {
        const AVCC: [u8; 14] = [1, 77, 0, 30, 0xFF, 0xE1, 0, 2, 0x67, 0x4D, 1, 0, 1, 0x68];
        let h264 = || track(1, 1, "V_MPEG4/ISO/AVC", &AVCC);
        let aac = || track(2, 2, "A_AAC", &[0x15, 0x88]);
        let wave = |tag: u16| {
            let mut w = tag.to_le_bytes().to_vec();
            w.extend_from_slice(&[1, 0, 0x40, 0x1F, 0, 0, 0x40, 0x1F, 0, 0, 1, 0, 8, 0, 0, 0]);
            track(2, 2, "A_MS/ACM", &w)
        };
        assert_eq!(layout_of(vec![h264()]), Ok(None));
        assert_eq!(
            layout_of(vec![h264(), aac()]),
            Ok(Some(mp4::AudioCodec::Aac))
        );
        assert_eq!(
            layout_of(vec![h264(), wave(6)]),
            Ok(Some(mp4::AudioCodec::Alaw))
        );
        let unsupported = Err("UnsupportedStreamMediaTypeException".to_string());
        // µ-law, Opus, audio first, a third track.
        assert_eq!(layout_of(vec![h264(), wave(7)]), unsupported);
        assert_eq!(
            layout_of(vec![h264(), track(2, 2, "A_OPUS", &[0; 19])]),
            unsupported
        );
        assert_eq!(
            layout_of(vec![track(1, 2, "A_AAC", &[0x15, 0x88])]),
            unsupported
        );
        assert_eq!(
            layout_of(vec![h264(), aac(), track(3, 2, "A_AAC", &[0x15, 0x88])]),
            unsupported
        );
        assert_eq!(
            layout_of(vec![h264(), track(2, 2, "A_AAC", &[])]),
            Err("InvalidCodecPrivateDataException".to_string())
        );
    }
}
