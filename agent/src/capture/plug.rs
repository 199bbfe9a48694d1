//! Linking what a passed-through source (a file, an RTSP camera) carries: each stream
//! `parsebin` exposes is looked at before anything flows. H.264 or H.265 video through its
//! parser to the video appsink, AAC or G.711 audio to a new audio appsink (µ-law becoming
//! A-law), anything KVS cannot play refused by name, the rest discarded.

use anyhow::{Context, anyhow};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::describe::{AUDIO_APPSINK, AUDIO_SINK, AUTOPLUG, RTSP};
use super::handoff::{EventTx, attach_audio};
use super::{AudioPolicy, CaptureEvent};
use crate::codec::{SUPPORTED_AUDIO, SUPPORTED_VIDEO, VideoCodec};

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

/// What the stream plugging needs to know.
#[derive(Clone)]
pub(super) struct Plug {
    pub pipeline: gst::glib::WeakRef<gst::Pipeline>,
    pub sink: gst::Element,
    pub events: EventTx,
    pub audio: AudioPolicy,
    /// The motion trigger: the video's keyframes decoded, on a tee before the appsink.
    pub motion: Option<super::MotionSpec>,
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
        Some(codec) if !linked => link_video(&pipeline, pad, sink, codec, plug.motion.is_some())
            .map(|tee| {
                if let (Some(tee), Some(spec)) = (tee, plug.motion) {
                    let tap = super::motion::Tap::Encoded(codec);
                    if let Err(e) =
                        super::motion::attach(&pipeline, &tee, tap, spec, events.clone())
                    {
                        // The video goes on without it.
                        events.try_send(CaptureEvent::Notice(format!(
                            "the motion trigger is off: {e:#}"
                        )));
                    }
                }
            }),
        _ if is_audio && plug.audio == AudioPolicy::Send && !audio_linked => {
            match audio_chain(&caps) {
                Some(chain) => link_audio(&pipeline, pad, &chain, events),
                None => {
                    events.try_send(CaptureEvent::Unsupported(format!(
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
                events.try_send(event);
            }
            discard(&pipeline, pad)
        }
    };
    if let Err(e) = result {
        events.try_send(CaptureEvent::Error(format!("linking {name}: {e:#}")));
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
    events: &EventTx,
) -> anyhow::Result<()> {
    let bin = gst::parse::bin_from_description(&format!("{chain} ! {AUDIO_APPSINK}"), true)
        .with_context(|| format!("building `{chain}`"))?;
    let appsink = bin
        .by_name(AUDIO_SINK)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .context("no audio appsink")?;
    appsink.set_property("sync", sink_syncs(pipeline));
    attach_audio(&appsink, events.clone());
    pipeline.add(&bin).context("adding the audio chain")?;
    bin.sync_state_with_parent()
        .context("starting the audio chain")?;
    let target = bin
        .static_pad("sink")
        .context("the audio chain has no sink pad")?;
    pad.link(&target).context("linking the audio chain")?;
    Ok(())
}

/// Whether the pipeline's video appsink syncs to the clock (a file read in real time): the
/// audio appsink does the same.
fn sink_syncs(pipeline: &gst::Pipeline) -> bool {
    pipeline
        .by_name("sink")
        .is_some_and(|s| s.property::<bool>("sync"))
}

/// Returns the tee the motion branch hangs on, when `motion` asks for one.
fn link_video(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    sink: &gst::Element,
    codec: VideoCodec,
    motion: bool,
) -> anyhow::Result<Option<gst::Element>> {
    let caps: gst::Caps = codec
        .parsed_caps()
        .parse()
        .map_err(|_| anyhow!("bad caps {}", codec.parsed_caps()))?;
    let filter = make("capsfilter")?;
    filter.set_property("caps", &caps);
    // `parsebin` has parsed the stream already; a second parser is needed only to convert
    // (Annex B byte-stream to length-prefixed, NAL to access-unit alignment). When the
    // stream is in KVS's form already (MP4 files, most RTSP depayloaders), it is linked
    // as it is: one element less to go through per frame.
    let converted = !pad.current_caps().is_some_and(|c| c.is_subset(&caps));
    let mut chain = Vec::new();
    if converted {
        chain.push(make(codec.parser())?);
    }
    chain.push(filter);
    let tee = if motion {
        let tee = make("tee")?;
        chain.push(tee.clone());
        Some(tee)
    } else {
        None
    };
    // No queue: the appsinks do not preroll (see `APPSINK`), so one demuxer thread can
    // feed both tracks.
    pipeline
        .add_many(&chain)
        .context("adding the video chain")?;
    let mut linked: Vec<&gst::Element> = chain.iter().collect();
    linked.push(sink);
    gst::Element::link_many(linked).context("linking the video chain to the appsink")?;
    for e in &chain {
        e.sync_state_with_parent()
            .with_context(|| format!("starting {}", e.name()))?;
    }
    let target = chain[0]
        .static_pad("sink")
        .context("the video chain has no sink pad")?;
    pad.link(&target)
        .context("linking the stream to the video chain")?;
    Ok(tee)
}

/// A stream nobody wants: into a fakesink, so that it cannot stall or fail the pipeline.
fn discard(pipeline: &gst::Pipeline, pad: &gst::Pad) -> anyhow::Result<()> {
    let fakesink = make("fakesink")?;
    fakesink.set_property("sync", false);
    fakesink.set_property("async", false);
    pipeline.add(&fakesink).context("adding a fakesink")?;
    fakesink
        .sync_state_with_parent()
        .context("starting a fakesink")?;
    let target = fakesink.static_pad("sink").context("no fakesink pad")?;
    pad.link(&target).context("linking to a fakesink")?;
    Ok(())
}

/// An element of `factory`, or an error naming it (its plugin may be missing).
pub(super) fn make(factory: &str) -> anyhow::Result<gst::Element> {
    gst::ElementFactory::make(factory)
        .build()
        .with_context(|| format!("making a {factory}"))
}

/// Wires a passed-through source's streams: `parsebin`'s pads directly, `rtspsrc`'s through
/// a `parsebin` each.
pub(super) fn plug_streams(plug: &Plug, pipeline: &gst::Pipeline) {
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
                    plug.events
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
                plug.events.try_send(CaptureEvent::Error(
                    "could not plug a stream of the RTSP source".into(),
                ));
            }
        });
    }
}
