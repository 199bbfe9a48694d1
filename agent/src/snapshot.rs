//! Snapshots: a JPEG of a camera's latest keyframe, decoded on demand. The camera keeps
//! its last keyframe (already in memory for the fragment), so a snapshot costs nothing until
//! asked for, works for passthrough sources too, and never touches the capture pipeline.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use thiserror::Error;

use crate::codec::CodecConfig;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("no keyframe captured yet")]
    NoKeyframe,
    #[error("decoding the keyframe: {0}")]
    Decode(String),
}

/// Decodes one keyframe (H.264 or H.265, length-prefixed, with its decoder configuration)
/// into a JPEG.
/// Blocking: run it on the blocking pool.
pub fn jpeg(codec: &CodecConfig, keyframe: &[u8], quality: u8) -> Result<Vec<u8>, SnapshotError> {
    let err = |e: &dyn std::fmt::Display| SnapshotError::Decode(e.to_string());
    crate::capture::init().map_err(|e| err(&e))?;
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time ! {} ! decodebin ! videoconvert \
         ! jpegenc quality={quality} ! appsink name=sink sync=false",
        codec.codec.parser()
    ))
    .map_err(|e| err(&e))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| err(&"not a pipeline"))?;
    let run = || -> Result<Vec<u8>, SnapshotError> {
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| err(&"no appsrc"))?;
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| err(&"no appsink"))?;
        let caps: gst::Caps = codec
            .codec
            .parsed_caps()
            .parse()
            .map_err(|_| err(&"bad caps"))?;
        let mut caps = caps;
        caps.make_mut()
            .set("codec_data", gst::Buffer::from_slice(codec.private.clone()));
        src.set_caps(Some(&caps));
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| err(&e))?;
        let mut buffer = gst::Buffer::from_slice(keyframe.to_vec());
        buffer
            .get_mut()
            .expect("a new buffer is writable")
            .set_pts(gst::ClockTime::ZERO);
        src.push_buffer(buffer).map_err(|e| err(&e))?;
        src.end_of_stream().map_err(|e| err(&e))?;
        let sample = sink
            .try_pull_sample(gst::ClockTime::from_seconds(10))
            .ok_or_else(|| {
                let bus_error = pipeline.bus().and_then(|b| {
                    b.pop_filtered(&[gst::MessageType::Error])
                        .and_then(|m| match m.view() {
                            gst::MessageView::Error(e) => Some(e.error().to_string()),
                            _ => None,
                        })
                });
                err(&bus_error.unwrap_or_else(|| "no picture within 10 s".into()))
            })?;
        let buffer = sample.buffer().ok_or_else(|| err(&"empty sample"))?;
        let map = buffer.map_readable().map_err(|e| err(&e))?;
        Ok(map.as_slice().to_vec())
    };
    let out = run();
    let _ = pipeline.set_state(gst::State::Null);
    out
}
