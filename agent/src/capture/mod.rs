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
//! - `describe`: the pipeline description for a source, a pure function (unit-tested).
//! - `plug`: linking what a passed-through source carries, stream by stream.
//! - `handoff`: the appsink callbacks and the channel to the camera task.
//!
//! `Capture` here is the running pipeline: built, started, stopped, its bus watched.

mod describe;
mod handoff;
mod motion;
mod plug;

pub use describe::{
    AAC_CANDIDATES, ENCODER_CANDIDATES, choose_aac_encoder, choose_encoder, encoder_chain,
    needs_encoder, pipeline_description, redact,
};
pub use motion::MotionSpec;
pub use plug::describe_caps;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use thiserror::Error;

use crate::codec::{AudioConfig, CodecConfig, CodecError, VideoCodec};
use crate::timeline::{MediaTime, WallMs};

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
    /// Length-prefixed NAL units (AVCC / HVCC): GStreamer's buffer itself, or a copy
    /// (see `FrameMemory`).
    pub data: bytes::Bytes,
    pub codec: Arc<CodecConfig>,
    /// The wall clock when the appsink had it (the camera task may see it a little later).
    pub arrived: WallMs,
}

/// One audio frame (an AAC access unit, or a run of A-law samples) with its running time.
#[derive(Debug, Clone)]
pub struct CapturedAudio {
    pub pts: MediaTime,
    pub data: Vec<u8>,
    pub config: Arc<AudioConfig>,
    /// The wall clock when the appsink had it.
    pub arrived: WallMs,
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
    /// The motion branch saw motion start or end.
    Motion(crate::motion::Change),
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
    events: handoff::EventRx,
}

/// An error message as one line: the element, the error, GStreamer's details (which name the
/// file or device).
fn describe_error(e: &gst::message::Error) -> String {
    format!(
        "{}: {}{}",
        e.src()
            .map(|s| s.path_string().to_string())
            .unwrap_or_default(),
        e.error(),
        e.debug().map(|d| format!(" ({d})")).unwrap_or_default()
    )
}

/// The application message that ends the bus thread.
const STOP: &str = "kvs-edge-capture-stop";

impl Capture {
    /// Builds and starts the pipeline described by `description`; `audio` says whether a
    /// passed-through source's audio is sent; `motion`, when given, runs the motion branch
    /// (its tee named in the description, or put in by the plugging); `frames` whether
    /// frames keep GStreamer's buffers.
    pub fn start(
        description: &str,
        stats: Arc<CaptureStats>,
        audio: AudioPolicy,
        motion: Option<MotionSpec>,
        frames: FrameMemory,
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
        let (tx, events) = handoff::channel();
        let plug = plug::Plug {
            pipeline: pipeline.downgrade(),
            sink: sink.clone().upcast(),
            events: tx.clone(),
            audio,
            motion,
        };
        plug::plug_streams(&plug, &pipeline);
        if let Some(spec) = motion {
            for (name, tap) in [
                (motion::RAW_TAP, motion::Tap::Raw),
                // A V4L2 camera's own encoding.
                (motion::ENCODED_TAP, motion::Tap::Encoded(VideoCodec::H264)),
            ] {
                if let Some(tee) = pipeline.by_name(name)
                    && let Err(e) = motion::attach(&pipeline, &tee, tap, spec, tx.clone())
                {
                    // The video goes on without it.
                    tx.try_send(CaptureEvent::Notice(format!(
                        "the motion trigger is off: {e:#}"
                    )));
                }
            }
        }
        if let Some(tone) = pipeline
            .by_name(describe::AUDIO_SINK)
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        {
            handoff::attach_audio(&tone, tx.clone());
        }
        handoff::attach_video(&sink, tx.clone(), stats, frames);

        let bus = pipeline.bus().ok_or_else(|| build_err("no bus".into()))?;
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            // The element's own error (a file that is not there, a device that is busy) is on
            // the bus: say it, not only that a state change failed.
            let reason = bus
                .pop_filtered(&[gst::MessageType::Error])
                .and_then(|msg| match msg.view() {
                    gst::MessageView::Error(e) => Some(describe_error(e)),
                    _ => None,
                })
                .unwrap_or_else(|| e.to_string());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(CaptureError::Start(reason));
        }
        // Messages posted meanwhile wait on the bus for this thread.
        let bus_tx = tx;
        let watcher = std::thread::Builder::new()
            .name("capture-bus".into())
            .spawn(move || {
                // Ends at the first terminal message, or at the stop message the Capture
                // posts when it is dropped: blocked until then, no polling.
                while let Some(msg) = bus.timed_pop(gst::ClockTime::NONE) {
                    let event = match msg.view() {
                        gst::MessageView::Application(a)
                            if a.structure().is_some_and(|s| s.name() == STOP) =>
                        {
                            break;
                        }
                        gst::MessageView::Eos(_) => CaptureEvent::Eos,
                        gst::MessageView::Error(e) => CaptureEvent::Error(describe_error(e)),
                        _ => continue,
                    };
                    let _ = bus_tx.blocking_send(event);
                    break;
                }
            });
        if let Err(e) = watcher {
            let _ = pipeline.set_state(gst::State::Null);
            return Err(build_err(e.to_string()));
        }
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

    /// The next event; `None` once the pipeline has gone quiet for good. Frames come in
    /// order, some of them a little late (see `handoff`).
    pub async fn next(&mut self) -> Option<CaptureEvent> {
        self.events.recv().await
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Close the channel first so a blocked streaming thread gets unstuck.
        self.events.close();
        if let Some(bus) = self.pipeline.bus() {
            let _ = bus.post(gst::message::Application::new(gst::Structure::new_empty(
                STOP,
            )));
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Where a captured frame's bytes live until its fragment is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameMemory {
    /// In GStreamer's buffer, referenced: no copy. For demuxers and depayloaders, whose
    /// buffers are allocated per frame.
    Keep,
    /// Copied out, the buffer returned at once: a V4L2 device or a hardware encoder hands
    /// out buffers from a small pool, and holding a fragment's worth would stall it.
    Copy,
}

/// Whether a passed-through source's audio is sent (the camera's `audio` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioPolicy {
    Send,
    Drop,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_edge_config::agent::SourceConfig;

    #[test]
    fn a_source_that_cannot_start_says_why() {
        let source = SourceConfig::File {
            path: "/nonexistent/front-door.mp4".into(),
            looping: false,
            realtime: false,
        };
        let description = pipeline_description(&source, "", None, false);
        let e = match Capture::start(
            &description,
            Arc::default(),
            AudioPolicy::Send,
            None,
            FrameMemory::Copy,
        ) {
            Ok(_) => panic!("a missing file started"),
            Err(e) => e.to_string(),
        };
        // GStreamer's own words, with the file: not only "failed to change its state".
        assert!(e.contains("front-door.mp4") && e.contains("filesrc"), "{e}");
    }
}
