//! The motion branch of a pipeline: a tee on the video feeds, through a leaky queue (the
//! branch never holds the video back), small grey pictures to an appsink whose callback runs
//! the `Detector` in the branch's own thread and tells the camera task when motion starts or
//! ends. Raw video (before the encoder) is looked at five times a second; passed-through
//! video is encoded, so only its keyframes are decoded and looked at (every GOP, typically
//! 1-2 s), which costs a small fraction of decoding it all.

use anyhow::{Context, anyhow};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::CaptureEvent;
use super::handoff::EventTx;
use super::plug::make;
use crate::codec::VideoCodec;
use crate::motion::{Detector, HEIGHT, WIDTH};
use crate::timeline::WallMs;

/// The tee before the encoder of an encoded source.
pub(super) const RAW_TAP: &str = "motiontap";
/// The tee on already-encoded video (a V4L2 camera's H.264).
pub(super) const ENCODED_TAP: &str = "motionkeys";
/// Pictures a second looked at from raw video.
const RAW_RATE: i32 = 5;

/// What the motion trigger needs from the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionSpec {
    pub threshold: f32,
    pub quiet_ms: i64,
}

/// What the tee carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tap {
    Raw,
    Encoded(VideoCodec),
}

/// Decoders for the keyframes, software first (always there with gst-libav).
fn decoder(codec: VideoCodec) -> anyhow::Result<gst::Element> {
    let candidates: &[&str] = match codec {
        VideoCodec::H264 => &["avdec_h264", "openh264dec"],
        VideoCodec::H265 => &["avdec_h265", "libde265dec"],
    };
    let name = candidates
        .iter()
        .find(|n| gst::ElementFactory::find(n).is_some())
        .ok_or_else(|| anyhow!("no {codec} decoder (tried {})", candidates.join(", ")))?;
    let element = make(name)?;
    // One thread: a picture every GOP needs no frame threading, which would hold pictures
    // back and start a thread per core per camera.
    if element.find_property("max-threads").is_some() {
        element.set_property("max-threads", 1i32);
    }
    Ok(element)
}

/// Links the motion branch to a new src pad of `tee`.
pub(super) fn attach(
    pipeline: &gst::Pipeline,
    tee: &gst::Element,
    tap: Tap,
    spec: MotionSpec,
    events: EventTx,
) -> anyhow::Result<()> {
    let queue = make("queue")?;
    queue.set_property_from_str("leaky", "downstream");
    queue.set_property("max-size-buffers", 1u32);
    queue.set_property("max-size-bytes", 0u32);
    queue.set_property("max-size-time", 0u64);
    let scale = make("videoscale")?;
    let convert = make("videoconvert")?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "GRAY8")
        .field("width", WIDTH as i32)
        .field("height", HEIGHT as i32)
        .build();
    let filter = make("capsfilter")?;
    filter.set_property("caps", &caps);
    let sink = gst_app::AppSink::builder()
        .name("motion")
        .sync(false)
        .max_buffers(1)
        .drop(true)
        .build();
    sink.set_property("async", false);
    let confirm = match tap {
        Tap::Raw => 2,
        Tap::Encoded(_) => 1,
    };
    let mut detector = Detector::new(spec.threshold, spec.quiet_ms, confirm);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok())
                    && let Some(change) = detector.push(map.as_slice(), WallMs::now().0)
                {
                    events.try_send(CaptureEvent::Motion(change));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let sink: gst::Element = sink.upcast();
    let mut tail = vec![scale.clone(), convert, filter, sink];
    let head = match tap {
        Tap::Raw => {
            let rate = make("videorate")?;
            rate.set_property("max-rate", RAW_RATE);
            vec![queue.clone(), rate]
        }
        Tap::Encoded(codec) => {
            // Keyframes only (they decode on their own), dropped before the queue so that
            // it holds the latest keyframe; parsed for the decoder (a camera's own H.264
            // may come as a byte-stream).
            let keys = make("identity")?;
            keys.set_property_from_str("drop-buffer-flags", "delta-unit");
            vec![keys, queue.clone(), make(codec.parser())?, decoder(codec)?]
        }
    };
    let all: Vec<&gst::Element> = head.iter().chain(tail.iter()).collect();
    pipeline.add_many(all).context("adding the motion branch")?;
    gst::Element::link_many(&tail).context("linking the motion branch's scaler to its appsink")?;
    gst::Element::link_many(&head)
        .and_then(|_| head[head.len() - 1].link(&scale))
        .context("linking the motion branch's decoder")?;
    tail.splice(0..0, head);
    for e in &tail {
        e.sync_state_with_parent()
            .with_context(|| format!("starting the motion branch's {}", e.name()))?;
    }
    let src = tee
        .request_pad_simple("src_%u")
        .context("the tee gave no pad for the motion branch")?;
    let sink_pad = tail[0]
        .static_pad("sink")
        .context("the motion branch has no sink")?;
    src.link(&sink_pad)
        .context("linking the motion branch to the tee")?;
    Ok(())
}
