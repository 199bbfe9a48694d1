//! Camera capture with GStreamer: one pipeline per camera delivering video access units
//! (H.264 or H.265, length-prefixed) with their running time, keyframe flag and codec
//! configuration. Knows GStreamer; knows nothing of KVS.
//!
//! Encoded sources (test pattern, V4L2 raw or MJPEG) run `… ! encoder ! h264parse ! appsink`.
//! Passed-through sources (files, RTSP) are plugged by what they carry: `parsebin` finds the
//! demuxer, depayloader and parser, and each stream it exposes is looked at before anything
//! flows: H.264 and H.265 video go to the appsink through their parser; AAC and G.711 A-law
//! audio to a second appsink (`audio`), G.711 µ-law converted to A-law on the way (KVS's
//! GetClip plays A-law only; the conversion is G.711's own table); a codec KVS cannot play
//! (MJPEG, MPEG-4 part 2, Opus …) is one clear `Unsupported` event naming it.
//! The test pattern can carry a test tone and a V4L2 camera a microphone, encoded to AAC.
//!
//! The pipeline description is built by a pure function (`pipeline_description`), so what
//! runs for each source can be unit-tested; `Capture` is the I/O around it. GStreamer's
//! streaming thread hands units over through a bounded channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use kvs_edge_config::agent::{EncoderConfig, RtspTransport, SourceConfig, V4l2Format};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::codec::{
    AudioConfig, CodecConfig, CodecError, SUPPORTED_AUDIO, SUPPORTED_VIDEO, VideoCodec,
};
use crate::timeline::MediaTime;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("GStreamer could not be initialised: {0}")]
    Init(String),
    #[error("building the pipeline `{pipeline}`: {reason}")]
    Build { pipeline: String, reason: String },
    #[error("no H.264 encoder element is available (tried {0})")]
    NoEncoder(String),
    #[error("starting the pipeline: {0}")]
    Start(String),
}

#[derive(Debug, Clone)]
pub struct CapturedUnit {
    /// Presentation running time.
    pub pts: MediaTime,
    /// How long before its presentation the unit is decoded (PTS − DTS; 0 without
    /// B-frames). Units arrive in decode order.
    pub decode_delay_ns: u64,
    pub keyframe: bool,
    /// Length-prefixed NAL units (AVCC / HVCC).
    pub data: Vec<u8>,
    pub codec: Arc<CodecConfig>,
}

/// One audio frame (an AAC access unit, or a run of A-law samples) with its running time.
#[derive(Debug, Clone)]
pub struct CapturedAudio {
    pub pts: MediaTime,
    pub data: Vec<u8>,
    pub config: Arc<AudioConfig>,
}

#[derive(Debug)]
pub enum CaptureEvent {
    Unit(CapturedUnit),
    Audio(CapturedAudio),
    /// The source ended (file without loop, camera gone).
    Eos,
    /// The pipeline failed; the message names the element.
    Error(String),
    /// The stream's codec data is unusable: what KVS would store but never play.
    BadCodec(CodecError),
    /// The source carries video KVS cannot play, or no video at all; the text names it.
    Unsupported(String),
    /// Something worth one log line (an audio track left out).
    Notice(String),
    /// An audio stream is linked: its frames follow (fragments can wait for them).
    AudioLinked,
}

/// Hardware encoders first (by the element names their platforms use), then x264.
pub const ENCODER_CANDIDATES: &[&str] = &[
    "v4l2h264enc",
    "nvv4l2h264enc",
    "vaapih264enc",
    "vah264enc",
    "qsvh264enc",
    "omxh264enc",
    "x264enc",
];

/// AAC encoders, best first (fdk is the best of them where it is built).
pub const AAC_CANDIDATES: &[&str] = &["fdkaacenc", "voaacenc", "avenc_aac"];

/// The first AAC encoder element that exists.
pub fn choose_aac_encoder() -> Result<String, CaptureError> {
    init()?;
    AAC_CANDIDATES
        .iter()
        .find(|name| gst::ElementFactory::find(name).is_some())
        .map(|s| s.to_string())
        .ok_or_else(|| CaptureError::NoEncoder(AAC_CANDIDATES.join(", ")))
}

/// The encoder chain for `element`: x264 tuned for live with a keyframe every `key_int`
/// frames; hardware encoders with their defaults plus a main-profile caps filter.
pub fn encoder_chain(element: &str, cfg: &EncoderConfig, key_int: u32) -> String {
    match element {
        "x264enc" => format!(
            "x264enc name=encoder tune=zerolatency speed-preset=veryfast bitrate={} key-int-max={key_int} bframes=0 \
             ! video/x-h264,profile=main",
            cfg.bitrate_kbps
        ),
        other => format!("{other} ! video/x-h264,profile=main"),
    }
}

/// Picks the first available encoder from `prefer` (or the default candidates).
pub fn choose_encoder(cfg: &EncoderConfig) -> Result<String, CaptureError> {
    init()?;
    let list: Vec<&str> = if cfg.prefer.is_empty() {
        ENCODER_CANDIDATES.to_vec()
    } else {
        cfg.prefer.iter().map(String::as_str).collect()
    };
    list.iter()
        .find(|name| gst::ElementFactory::find(name).is_some())
        .map(|s| s.to_string())
        .ok_or_else(|| CaptureError::NoEncoder(list.join(", ")))
}

const APPSINK: &str = "appsink name=sink max-buffers=64 drop=false";
/// The audio appsink's name and settings.
const AUDIO_SINK: &str = "audio";
const AUDIO_APPSINK: &str = "appsink name=audio max-buffers=256 drop=false";
/// Encoded H.264 into the appsink.
const SINK: &str = "h264parse ! video/x-h264,stream-format=avc,alignment=au ! appsink name=sink max-buffers=64 drop=false";

/// The `parsebin` of a file source, plugged by the Rust side (see `plug_streams`).
const AUTOPLUG: &str = "autoplug";
/// The `rtspsrc` of an RTSP source: each stream it announces gets its own `parsebin`.
const RTSP: &str = "rtsp";

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Raw audio into AAC into the `audio` appsink (a test tone, a microphone).
fn aac_branch(raw: &str, aac: &str) -> String {
    format!(
        "{raw} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1 ! {aac} \
         ! aacparse ! audio/mpeg,mpegversion=4,stream-format=raw ! {AUDIO_APPSINK} sync=false"
    )
}

/// The gst-launch description for a source. `encoder` is the chosen encoder chain (unused
/// by passthrough sources); `aac`, when given, the AAC encoder for the audio a test pattern
/// (a tone) or a V4L2 camera (its microphone) makes.
pub fn pipeline_description(source: &SourceConfig, encoder: &str, aac: Option<&str>) -> String {
    let video = video_description(source, encoder);
    let audio = match (source, aac) {
        (SourceConfig::Test { .. }, Some(aac)) => Some(aac_branch(
            "audiotestsrc is-live=true wave=sine freq=440 volume=0.2",
            aac,
        )),
        (
            SourceConfig::V4l2 {
                microphone: Some(mic),
                ..
            },
            Some(aac),
        ) => Some(aac_branch(&format!("alsasrc device={}", quote(mic)), aac)),
        _ => None,
    };
    match audio {
        Some(audio) => format!("{video}  {audio}"),
        None => video,
    }
}

fn video_description(source: &SourceConfig, encoder: &str) -> String {
    match source {
        SourceConfig::Test {
            width,
            height,
            fps,
            pattern,
        } => format!(
            "videotestsrc is-live=true pattern={pattern} ! video/x-raw,width={width},height={height},framerate={fps}/1 \
             ! clockoverlay time-format=\"%Y-%m-%d %H:%M:%S\" ! videoconvert ! video/x-raw,format=I420 \
             ! {encoder} ! {SINK} sync=false"
        ),
        SourceConfig::File { path, realtime, .. } => format!(
            "filesrc location={} ! parsebin name={AUTOPLUG}  {APPSINK} sync={realtime}",
            quote(&path.display().to_string())
        ),
        SourceConfig::Rtsp {
            url,
            username,
            password,
            transport,
            latency_ms,
        } => {
            let mut src = format!(
                "rtspsrc name={RTSP} location={} latency={latency_ms} protocols={}",
                quote(url),
                match transport {
                    RtspTransport::Tcp => "tcp",
                    RtspTransport::Udp => "udp",
                }
            );
            if let Some(u) = username {
                src.push_str(&format!(" user-id={}", quote(u)));
            }
            if let Some(p) = password {
                src.push_str(&format!(" user-pw={}", quote(p)));
            }
            format!("{src}  {APPSINK} sync=false")
        }
        SourceConfig::V4l2 {
            device,
            width,
            height,
            fps,
            format,
            ..
        } => {
            let mut caps = Vec::new();
            if let Some(w) = width {
                caps.push(format!("width={w}"));
            }
            if let Some(h) = height {
                caps.push(format!("height={h}"));
            }
            if let Some(f) = fps {
                caps.push(format!("framerate={f}/1"));
            }
            let extra = if caps.is_empty() {
                String::new()
            } else {
                format!(",{}", caps.join(","))
            };
            let src = format!("v4l2src device={}", quote(&device.display().to_string()));
            match format {
                V4l2Format::H264 => format!("{src} ! video/x-h264{extra} ! {SINK} sync=false"),
                V4l2Format::Mjpeg => format!(
                    "{src} ! image/jpeg{extra} ! jpegdec ! videoconvert ! video/x-raw,format=I420 ! {encoder} ! {SINK} sync=false"
                ),
                V4l2Format::Raw => format!(
                    "{src} ! video/x-raw{extra} ! videoconvert ! video/x-raw,format=I420 ! {encoder} ! {SINK} sync=false"
                ),
                V4l2Format::Auto => format!(
                    "{src} ! decodebin ! videoconvert ! videoscale ! video/x-raw,format=I420{extra} ! {encoder} ! {SINK} sync=false"
                ),
            }
        }
    }
}

/// Whether the source is encoded here (true) or passed through.
pub fn needs_encoder(source: &SourceConfig) -> bool {
    match source {
        SourceConfig::Test { .. } => true,
        SourceConfig::V4l2 { format, .. } => *format != V4l2Format::H264,
        SourceConfig::File { .. } | SourceConfig::Rtsp { .. } => false,
    }
}

pub fn init() -> Result<(), CaptureError> {
    gst::init().map_err(|e| CaptureError::Init(e.to_string()))
}

/// Counters shared with health reporting.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub frames: AtomicU64,
    pub dropped_no_codec: AtomicU64,
}

/// A running pipeline. Dropping it stops the pipeline.
pub struct Capture {
    pipeline: gst::Pipeline,
    events: mpsc::Receiver<CaptureEvent>,
}

impl Capture {
    /// Builds and starts the pipeline described by `description`; `audio` says whether a
    /// passed-through source's audio is sent.
    pub fn start(
        description: &str,
        stats: Arc<CaptureStats>,
        audio: AudioPolicy,
    ) -> Result<Capture, CaptureError> {
        init()?;
        let build_err = |reason: String| CaptureError::Build {
            pipeline: redact(description),
            reason,
        };
        let pipeline = gst::parse::launch(description)
            .map_err(|e| build_err(e.to_string()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| build_err("not a pipeline".into()))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| build_err("no appsink named sink".into()))?;
        let (tx, events) = mpsc::channel(512);
        let plug = Plug {
            pipeline: pipeline.downgrade(),
            sink: sink.clone().upcast(),
            events: tx.clone(),
            audio,
        };
        plug_streams(&plug, &pipeline);
        if let Some(tone) = pipeline
            .by_name(AUDIO_SINK)
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        {
            attach_audio(&tone, tx.clone());
        }

        let unit_tx = tx.clone();
        let mut codec: Option<Arc<CodecConfig>> = None;
        let mut last_caps: Option<gst::Caps> = None;
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer() else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    if let Some(caps) = sample.caps()
                        && last_caps.as_ref().is_none_or(|c| c.as_ref() != caps)
                    {
                        last_caps = Some(caps.to_owned());
                        match codec_from_caps(caps) {
                            Ok(c) => codec = Some(Arc::new(c)),
                            Err(e) => {
                                codec = None;
                                let _ = unit_tx.blocking_send(CaptureEvent::BadCodec(e));
                            }
                        }
                    }
                    let Some(codec) = codec.clone() else {
                        stats.dropped_no_codec.fetch_add(1, Ordering::Relaxed);
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let pts = buffer.pts().or(buffer.dts());
                    let running = match (sample.segment(), pts) {
                        (Some(seg), Some(pts)) => seg
                            .downcast_ref::<gst::ClockTime>()
                            .and_then(|s| s.to_running_time(pts))
                            .unwrap_or(pts),
                        (_, Some(pts)) => pts,
                        _ => return Ok(gst::FlowSuccess::Ok),
                    };
                    let decode_delay_ns = match (buffer.pts(), buffer.dts()) {
                        (Some(p), Some(d)) if p > d => (p - d).nseconds(),
                        _ => 0,
                    };
                    let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    let unit = CapturedUnit {
                        pts: MediaTime(running.nseconds()),
                        decode_delay_ns,
                        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                        data: map.as_slice().to_vec(),
                        codec,
                    };
                    // Back-pressure: the consumer only fragments and queues, so waiting here
                    // is short; a closed channel means the capture is being stopped.
                    unit_tx
                        .blocking_send(CaptureEvent::Unit(unit))
                        .map_err(|_| gst::FlowError::Flushing)?;
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );

        let bus = pipeline.bus().ok_or_else(|| build_err("no bus".into()))?;
        let bus_tx = tx;
        std::thread::Builder::new()
            .name("capture-bus".into())
            .spawn(move || {
                // Ends at the first terminal message, or once the Capture is dropped.
                while !bus_tx.is_closed() {
                    let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) else {
                        continue;
                    };
                    let event = match msg.view() {
                        gst::MessageView::Eos(_) => CaptureEvent::Eos,
                        gst::MessageView::Error(e) => CaptureEvent::Error(format!(
                            "{}: {}{}",
                            e.src()
                                .map(|s| s.path_string().to_string())
                                .unwrap_or_default(),
                            e.error(),
                            e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
                        )),
                        _ => continue,
                    };
                    let _ = bus_tx.blocking_send(event);
                    break;
                }
            })
            .map_err(|e| build_err(e.to_string()))?;

        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| CaptureError::Start(format!("{e}: see the error event")))?;
        Ok(Capture { pipeline, events })
    }

    /// Changes the encoder's bitrate while running; false when the pipeline has no encoder
    /// that can (passthrough sources, hardware encoders: those restart instead).
    pub fn set_bitrate(&self, kbps: u32) -> bool {
        let Some(encoder) = self.pipeline.by_name("encoder") else {
            return false;
        };
        if encoder.find_property("bitrate").is_none() {
            return false;
        }
        encoder.set_property("bitrate", kbps);
        true
    }

    /// The next event; `None` once the pipeline has gone quiet for good.
    pub async fn next(&mut self) -> Option<CaptureEvent> {
        self.events.recv().await
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Close the channel first so a blocked streaming thread gets unstuck.
        self.events.close();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The codec configuration the parser announces in its caps (`codec_data`).
fn codec_from_caps(caps: &gst::CapsRef) -> Result<CodecConfig, CodecError> {
    let missing = |codec| match codec {
        VideoCodec::H264 => CodecError::from(crate::h264::H264Error::MissingSps),
        VideoCodec::H265 => CodecError::from(crate::h265::H265Error::Missing("VPS, SPS and PPS")),
    };
    let s = caps.structure(0).ok_or_else(|| missing(VideoCodec::H264))?;
    let codec = VideoCodec::from_caps_name(s.name()).unwrap_or(VideoCodec::H264);
    let buffer = s
        .get::<gst::Buffer>("codec_data")
        .map_err(|_| missing(codec))?;
    let map = buffer.map_readable().map_err(|_| missing(codec))?;
    CodecConfig::new(codec, map.as_slice().to_vec())
}

/// A stream's codec as people name it, from its caps (for errors and notices).
pub fn describe_caps(caps: &gst::CapsRef) -> String {
    let Some(s) = caps.structure(0) else {
        return "an unknown stream".into();
    };
    let name = s.name().as_str();
    let known = match name {
        "image/jpeg" => Some("MJPEG".to_string()),
        "video/mpeg" => s.get::<i32>("mpegversion").ok().map(|v| {
            if v == 4 {
                "MPEG-4 part 2".to_string()
            } else {
                format!("MPEG-{v} video")
            }
        }),
        "video/x-vp8" => Some("VP8".into()),
        "video/x-vp9" => Some("VP9".into()),
        "video/x-av1" => Some("AV1".into()),
        "audio/mpeg" => s.get::<i32>("mpegversion").ok().map(|v| match v {
            4 | 2 => "AAC".to_string(),
            _ => "MP3".to_string(),
        }),
        "audio/x-mulaw" => Some("G.711 µ-law".into()),
        "audio/x-alaw" => Some("G.711 A-law".into()),
        "audio/x-opus" => Some("Opus".into()),
        _ => None,
    };
    match known {
        Some(k) => format!("{k} ({name})"),
        None => name.to_string(),
    }
}

/// Whether a passed-through source's audio is sent (the camera's `audio` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioPolicy {
    Send,
    Drop,
}

/// What the stream plugging needs to know.
#[derive(Clone)]
struct Plug {
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
    sink: gst::Element,
    events: mpsc::Sender<CaptureEvent>,
    audio: AudioPolicy,
}

/// Links a stream `parsebin` exposes: the first H.264 or H.265 video through its parser to
/// the appsink; the first AAC or G.711 audio to the audio appsink; any other video or audio
/// is refused with an `Unsupported` event; the rest goes to a fakesink (said once).
fn plug_stream(plug: &Plug, pad: &gst::Pad) {
    let Some(pipeline) = plug.pipeline.upgrade() else {
        return;
    };
    let (sink, events) = (&plug.sink, &plug.events);
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    let name = caps
        .structure(0)
        .map(|s| s.name().to_string())
        .unwrap_or_default();
    let codec = VideoCodec::from_caps_name(&name);
    let linked = sink.static_pad("sink").is_some_and(|p| p.is_linked());
    let is_audio = name.starts_with("audio/");
    let audio_linked = pipeline.by_name(AUDIO_SINK).is_some();
    let result = match codec {
        Some(codec) if !linked => link_video(&pipeline, pad, sink, codec),
        _ if is_audio && plug.audio == AudioPolicy::Send && !audio_linked => {
            match audio_chain(&caps) {
                Some(chain) => link_audio(&pipeline, pad, &chain, events),
                None => {
                    let _ = events.try_send(CaptureEvent::Unsupported(format!(
                        "the source sends {} audio, which Kinesis Video Streams cannot play \
                         with the video: it takes {SUPPORTED_AUDIO} (set the camera's audio \
                         codec to one of them, or `audio = false` to send the video alone)",
                        describe_caps(&caps)
                    )));
                    discard(&pipeline, pad)
                }
            }
        }
        _ => {
            let what = describe_caps(&caps);
            let event = if name.starts_with("video/") || name.starts_with("image/") {
                if codec.is_some() {
                    Some(CaptureEvent::Notice(format!(
                        "a second video stream ({what}) is left out"
                    )))
                } else {
                    Some(CaptureEvent::Unsupported(format!(
                        "the source sends {what} video, which Kinesis Video Streams cannot play: \
                         it takes {SUPPORTED_VIDEO} (set the camera's encoder to one of them)"
                    )))
                }
            } else if is_audio && plug.audio == AudioPolicy::Drop {
                None
            } else if is_audio {
                Some(CaptureEvent::Notice(format!(
                    "a second audio stream ({what}) is left out"
                )))
            } else {
                Some(CaptureEvent::Notice(format!("a {what} stream is left out")))
            };
            if let Some(event) = event {
                let _ = events.try_send(event);
            }
            discard(&pipeline, pad)
        }
    };
    if let Err(e) = result {
        let _ = events.try_send(CaptureEvent::Error(format!("linking {name}: {e}")));
    }
}

/// The elements that bring an audio stream to what KVS plays, `None` for codecs it does not:
/// AAC in raw form (with its AudioSpecificConfig), A-law as it is, µ-law to A-law.
fn audio_chain(caps: &gst::CapsRef) -> Option<String> {
    let s = caps.structure(0)?;
    match s.name().as_str() {
        "audio/mpeg" if matches!(s.get::<i32>("mpegversion"), Ok(2 | 4)) => {
            Some("aacparse ! audio/mpeg,mpegversion=4,stream-format=raw".into())
        }
        "audio/x-alaw" => Some("identity".into()),
        "audio/x-mulaw" => Some("mulawdec ! alawenc".into()),
        _ => None,
    }
}

/// Links an audio stream through `chain` to a new audio appsink.
fn link_audio(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    chain: &str,
    events: &mpsc::Sender<CaptureEvent>,
) -> Result<(), String> {
    let bin = gst::parse::bin_from_description(&format!("queue ! {chain} ! {AUDIO_APPSINK}"), true)
        .map_err(|e| e.to_string())?;
    let appsink = bin
        .by_name(AUDIO_SINK)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or("no audio appsink")?;
    appsink.set_property("sync", sink_syncs(pipeline));
    attach_audio(&appsink, events.clone());
    pipeline.add(&bin).map_err(|e| e.to_string())?;
    bin.sync_state_with_parent().map_err(|e| e.to_string())?;
    let target = bin
        .static_pad("sink")
        .ok_or("the audio chain has no sink pad")?;
    pad.link(&target).map_err(|e| e.to_string())?;
    Ok(())
}

/// Whether the pipeline's video appsink syncs to the clock (a file read in real time): the
/// audio appsink does the same.
fn sink_syncs(pipeline: &gst::Pipeline) -> bool {
    pipeline
        .by_name("sink")
        .is_some_and(|s| s.property::<bool>("sync"))
}

/// The audio configuration of an audio appsink's caps.
fn audio_config(caps: &gst::CapsRef) -> Result<AudioConfig, String> {
    let s = caps.structure(0).ok_or("no caps")?;
    match s.name().as_str() {
        "audio/mpeg" => {
            let data = s
                .get::<gst::Buffer>("codec_data")
                .map_err(|_| "AAC without its AudioSpecificConfig (codec_data)".to_string())?;
            let map = data.map_readable().map_err(|e| e.to_string())?;
            AudioConfig::aac(map.as_slice().to_vec())
        }
        "audio/x-alaw" => {
            let rate = s.get::<i32>("rate").map_err(|_| "A-law without a rate")?;
            let channels = s.get::<i32>("channels").unwrap_or(1);
            Ok(AudioConfig::alaw(rate as u32, channels.clamp(1, 8) as u8))
        }
        other => Err(format!("{other} is not audio KVS plays")),
    }
}

/// Hands an audio appsink's frames over as `CaptureEvent::Audio`.
fn attach_audio(appsink: &gst_app::AppSink, events: mpsc::Sender<CaptureEvent>) {
    let _ = events.try_send(CaptureEvent::AudioLinked);
    let mut config: Option<Arc<AudioConfig>> = None;
    let mut last_caps: Option<gst::Caps> = None;
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                if let Some(caps) = sample.caps()
                    && last_caps.as_ref().is_none_or(|c| c.as_ref() != caps)
                {
                    last_caps = Some(caps.to_owned());
                    config = match audio_config(caps) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(e) => {
                            let _ = events.blocking_send(CaptureEvent::Notice(format!(
                                "the audio is left out: {e}"
                            )));
                            None
                        }
                    };
                }
                let (Some(config), Some(pts)) = (config.clone(), buffer.pts()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let running = sample
                    .segment()
                    .and_then(|seg| seg.downcast_ref::<gst::ClockTime>())
                    .and_then(|seg| seg.to_running_time(pts))
                    .unwrap_or(pts);
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let frame = CapturedAudio {
                    pts: MediaTime(running.nseconds()),
                    data: map.as_slice().to_vec(),
                    config,
                };
                events
                    .blocking_send(CaptureEvent::Audio(frame))
                    .map_err(|_| gst::FlowError::Flushing)?;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

fn link_video(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    sink: &gst::Element,
    codec: VideoCodec,
) -> Result<(), String> {
    let parser = gst::ElementFactory::make(codec.parser())
        .build()
        .map_err(|e| e.to_string())?;
    let caps: gst::Caps = codec
        .parsed_caps()
        .parse()
        .map_err(|_| "bad caps".to_string())?;
    let filter = gst::ElementFactory::make("capsfilter")
        .property("caps", caps)
        .build()
        .map_err(|e| e.to_string())?;
    // A queue per stream: a demuxer feeding the video and audio appsinks from one thread
    // would otherwise block in the first sink's preroll, and the pipeline never starts.
    let queue = gst::ElementFactory::make("queue")
        .build()
        .map_err(|e| e.to_string())?;
    pipeline
        .add_many([&queue, &parser, &filter])
        .map_err(|e| e.to_string())?;
    gst::Element::link_many([&queue, &parser, &filter, sink]).map_err(|e| e.to_string())?;
    for e in [&queue, &parser, &filter] {
        e.sync_state_with_parent().map_err(|e| e.to_string())?;
    }
    let target = queue
        .static_pad("sink")
        .ok_or("the queue has no sink pad")?;
    pad.link(&target).map_err(|e| e.to_string())?;
    Ok(())
}

/// A stream nobody wants: into a fakesink, so that it cannot stall or fail the pipeline.
fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) -> Result<(), String> {
    let fakesink = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
        .map_err(|e| e.to_string())?;
    pipeline.add(&fakesink).map_err(|e| e.to_string())?;
    fakesink
        .sync_state_with_parent()
        .map_err(|e| e.to_string())?;
    let target = fakesink.static_pad("sink").ok_or("no fakesink pad")?;
    pad.link(&target).map_err(|e| e.to_string())?;
    Ok(())
}

/// Wires a passed-through source's streams: `parsebin`'s pads directly, `rtspsrc`'s through
/// a `parsebin` each.
fn plug_streams(plug: &Plug, pipeline: &gst::Pipeline) {
    let watch = |parsebin: &gst::Element| {
        let plug = plug.clone();
        parsebin.connect_pad_added(move |_, pad| plug_stream(&plug, pad));
    };
    if let Some(parsebin) = pipeline.by_name(AUTOPLUG) {
        watch(&parsebin);
    }
    if let Some(rtsp) = pipeline.by_name(RTSP) {
        let plug = plug.clone();
        rtsp.connect_pad_added(move |_, pad| {
            let Some(pipeline) = plug.pipeline.upgrade() else {
                return;
            };
            let parsebin = match gst::ElementFactory::make("parsebin").build() {
                Ok(p) => p,
                Err(e) => {
                    let _ = plug
                        .events
                        .try_send(CaptureEvent::Error(format!("parsebin: {e}")));
                    return;
                }
            };
            let inner = plug.clone();
            parsebin.connect_pad_added(move |_, pad| plug_stream(&inner, pad));
            let linked = pipeline.add(&parsebin).is_ok()
                && parsebin.sync_state_with_parent().is_ok()
                && parsebin
                    .static_pad("sink")
                    .is_some_and(|target| pad.link(&target).is_ok());
            if !linked {
                let _ = plug.events.try_send(CaptureEvent::Error(
                    "could not plug a stream of the RTSP source".into(),
                ));
            }
        });
    }
}

/// A pipeline description with RTSP passwords masked, for logs and errors.
pub fn redact(description: &str) -> String {
    description
        .split(' ')
        .map(|part| {
            if part.starts_with("user-pw=") {
                "user-pw=***".to_string()
            } else if part.starts_with("location=\"rtsp") {
                format!(
                    "location=\"{}",
                    kvs_edge_config::agent::redact_url(part.trim_start_matches("location=\""))
                )
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc() -> EncoderConfig {
        EncoderConfig {
            bitrate_kbps: 1500,
            prefer: vec![],
        }
    }

    #[test]
    fn rtsp_is_passed_through_with_credentials_redacted_in_logs() {
        let src = SourceConfig::Rtsp {
            url: "rtsp://cam.local:554/s1".into(),
            username: Some("admin".into()),
            password: Some("hunter2".into()),
            transport: RtspTransport::Tcp,
            latency_ms: 100,
        };
        let d = pipeline_description(&src, "NOT-USED", None);
        // Plugged by what the camera sends (parsebin per stream), never re-encoded.
        assert!(
            d.starts_with("rtspsrc name=rtsp ")
                && d.contains("appsink name=sink")
                && !d.contains("NOT-USED"),
            "{d}"
        );
        assert!(d.contains("protocols=tcp") && d.contains("latency=100"));
        assert!(!needs_encoder(&src));
        let shown = redact(&d);
        assert!(
            !shown.contains("hunter2") && shown.contains("user-pw=***"),
            "{shown}"
        );
    }

    #[test]
    fn encoded_sources_use_the_chosen_encoder() {
        let chain = encoder_chain("x264enc", &enc(), 50);
        assert!(
            chain.contains("key-int-max=50")
                && chain.contains("bitrate=1500")
                && chain.contains("profile=main")
        );
        let test = SourceConfig::Test {
            width: 320,
            height: 240,
            fps: 25,
            pattern: "ball".into(),
        };
        let d = pipeline_description(&test, &chain, None);
        assert!(
            d.contains("clockoverlay") && d.contains("x264enc") && d.contains("format=I420"),
            "{d}"
        );
        assert!(
            !d.contains("appsink name=audio"),
            "no tone unless asked: {d}"
        );
        assert!(needs_encoder(&test));
        // A tone, encoded to AAC into the audio appsink.
        let d = pipeline_description(&test, &chain, Some("voaacenc"));
        assert!(
            d.contains("audiotestsrc")
                && d.contains("! voaacenc ! aacparse")
                && d.contains("appsink name=audio"),
            "{d}"
        );
        let v4l2 = SourceConfig::V4l2 {
            device: "/dev/video2".into(),
            width: Some(1280),
            height: Some(720),
            fps: Some(30),
            format: V4l2Format::Mjpeg,
            microphone: Some("hw:1,0".into()),
        };
        let d = pipeline_description(&v4l2, &chain, None);
        assert!(
            d.contains("image/jpeg,width=1280,height=720,framerate=30/1 ! jpegdec"),
            "{d}"
        );
        let d = pipeline_description(&v4l2, &chain, Some("avenc_aac"));
        assert!(
            d.contains("alsasrc device=\"hw:1,0\"") && d.contains("avenc_aac"),
            "the microphone, encoded to AAC: {d}"
        );
    }

    #[test]
    fn x264_is_always_available_here() {
        assert_eq!(
            choose_encoder(&EncoderConfig {
                bitrate_kbps: 1000,
                prefer: vec!["nosuchenc".into(), "x264enc".into()]
            })
            .unwrap(),
            "x264enc"
        );
        assert!(matches!(
            choose_encoder(&EncoderConfig {
                bitrate_kbps: 1000,
                prefer: vec!["nosuchenc".into()]
            }),
            Err(CaptureError::NoEncoder(_))
        ));
    }
}
