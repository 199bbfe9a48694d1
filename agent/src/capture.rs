//! Camera capture with GStreamer: one pipeline per camera (source → [decode/encode] →
//! h264parse → appsink) delivering H.264 access units in AVCC form with their running time,
//! keyframe flag and codec configuration. Knows GStreamer; knows nothing of KVS.
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

use crate::h264::{self, H264Error};
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

/// The codec configuration of a run of access units: a change means new Tracks, so a new
/// PutMedia session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecConfig {
    /// AVCDecoderConfigurationRecord, validated.
    pub avcc: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone)]
pub struct CapturedUnit {
    /// Presentation running time.
    pub pts: MediaTime,
    /// How long before its presentation the unit is decoded (PTS − DTS; 0 without
    /// B-frames). Units arrive in decode order.
    pub decode_delay_ns: u64,
    pub keyframe: bool,
    /// AVCC (length-prefixed NAL units).
    pub data: Vec<u8>,
    pub codec: Arc<CodecConfig>,
}

#[derive(Debug)]
pub enum CaptureEvent {
    Unit(CapturedUnit),
    /// The source ended (file without loop, camera gone).
    Eos,
    /// The pipeline failed; the message names the element.
    Error(String),
    /// The stream's codec data is unusable: what KVS would store but never play.
    BadCodec(H264Error),
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

const SINK: &str = "h264parse ! video/x-h264,stream-format=avc,alignment=au ! appsink name=sink max-buffers=64 drop=false";

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The gst-launch description for a source. `encoder` is the chosen encoder chain (unused
/// by passthrough sources); `key_int` the keyframe interval in frames for encoded sources.
pub fn pipeline_description(source: &SourceConfig, encoder: &str) -> String {
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
            "filesrc location={} ! parsebin ! {SINK} sync={realtime}",
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
                "rtspsrc location={} latency={latency_ms} protocols={}",
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
            format!("{src} ! rtph264depay ! {SINK} sync=false")
        }
        SourceConfig::V4l2 {
            device,
            width,
            height,
            fps,
            format,
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
    /// Builds and starts the pipeline described by `description`.
    pub fn start(description: &str, stats: Arc<CaptureStats>) -> Result<Capture, CaptureError> {
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
        let (tx, events) = mpsc::channel(256);

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

fn codec_from_caps(caps: &gst::CapsRef) -> Result<CodecConfig, H264Error> {
    let s = caps.structure(0).ok_or(H264Error::MissingSps)?;
    let buffer = s
        .get::<gst::Buffer>("codec_data")
        .map_err(|_| H264Error::MissingSps)?;
    let map = buffer.map_readable().map_err(|_| H264Error::MissingSps)?;
    let avcc = map.as_slice().to_vec();
    let sps = h264::validate_avcc(&avcc)?;
    Ok(CodecConfig {
        avcc,
        width: sps.width,
        height: sps.height,
    })
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
        let d = pipeline_description(&src, "NOT-USED");
        assert!(
            d.contains("rtph264depay ! h264parse") && !d.contains("NOT-USED"),
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
        let d = pipeline_description(&test, &chain);
        assert!(
            d.contains("clockoverlay") && d.contains("x264enc") && d.contains("format=I420"),
            "{d}"
        );
        assert!(needs_encoder(&test));
        let v4l2 = SourceConfig::V4l2 {
            device: "/dev/video2".into(),
            width: Some(1280),
            height: Some(720),
            fps: Some(30),
            format: V4l2Format::Mjpeg,
        };
        let d = pipeline_description(&v4l2, &chain);
        assert!(
            d.contains("image/jpeg,width=1280,height=720,framerate=30/1 ! jpegdec"),
            "{d}"
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
