//! The handover from GStreamer's streaming threads to the camera task: the appsink
//! callbacks that turn buffers into `CaptureEvent`s, and the bounded channel they go through.
//!
//! Waking a task costs a thread wake-up and a context switch, and per frame that was most of
//! the agent's CPU beside the bare GStreamer pipeline (docs/benchmarks.md, "Agent overhead").
//! So the channel wakes the camera task only for what should not wait: a keyframe (it may
//! close a fragment), the first audio frame at or past the latest keyframe (a fragment cut
//! there waits for its audio to arrive), and every event that is not a frame. The frames
//! between are queued without a wake and taken at the next wake, or at the latest
//! `HANDOFF_MS` after the task found the channel empty. Order is kept; a full channel still
//! blocks the streaming thread (back-pressure), and the task's periodic look empties it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Notify, mpsc};

use super::{CaptureEvent, CaptureStats, CapturedAudio, CapturedUnit, FrameMemory};
use crate::codec::{AudioConfig, CodecConfig, CodecError, VideoCodec};
use crate::timeline::{MediaTime, WallMs};

/// The longest a frame waits in the channel for the camera task to look.
pub const HANDOFF_MS: u64 = 500;

/// No keyframe yet.
const NO_KEYFRAME: u64 = u64::MAX;

/// Room for a few seconds of video and audio.
const CAPACITY: usize = 512;

/// The streaming threads' end.
#[derive(Clone)]
pub struct EventTx {
    tx: mpsc::Sender<CaptureEvent>,
    wake: Arc<Notify>,
    /// The running time of the latest video keyframe handed over (ns), for the audio's wake.
    keyframe_ns: Arc<AtomicU64>,
}

/// The camera task's end.
pub struct EventRx {
    rx: mpsc::Receiver<CaptureEvent>,
    wake: Arc<Notify>,
}

/// The capture is gone: the streaming thread should stop.
#[derive(Debug)]
pub struct Closed;

pub fn channel() -> (EventTx, EventRx) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let wake = Arc::new(Notify::new());
    (
        EventTx {
            tx,
            wake: wake.clone(),
            keyframe_ns: Arc::new(AtomicU64::new(NO_KEYFRAME)),
        },
        EventRx { rx, wake },
    )
}

/// Whether the camera task is woken for this event rather than finding it later.
fn urgent(event: &CaptureEvent) -> bool {
    match event {
        CaptureEvent::Unit(unit) => unit.keyframe,
        CaptureEvent::Audio(_) => false,
        _ => true,
    }
}

/// Whether an audio frame at `pts` wakes the task: the first one at or past the latest
/// keyframe, once per keyframe.
fn audio_wakes(keyframe_ns: u64, pts: MediaTime, woken_for: &mut u64) -> bool {
    let wake = keyframe_ns != NO_KEYFRAME && pts.0 >= keyframe_ns && *woken_for != keyframe_ns;
    if wake {
        *woken_for = keyframe_ns;
    }
    wake
}

impl EventTx {
    /// From a streaming thread: waits while the channel is full.
    pub fn blocking_send(&self, event: CaptureEvent) -> Result<(), Closed> {
        let wake = urgent(&event);
        if let CaptureEvent::Unit(unit) = &event
            && unit.keyframe
        {
            self.keyframe_ns.store(unit.pts.0, Ordering::Relaxed);
        }
        self.send(event, wake)
    }

    /// An audio frame, waking the task once per keyframe: when the audio reaches it.
    /// `woken_for` is the audio sink's memory of the keyframe it last woke the task for.
    fn send_audio(&self, frame: CapturedAudio, woken_for: &mut u64) -> Result<(), Closed> {
        let wake = audio_wakes(
            self.keyframe_ns.load(Ordering::Relaxed),
            frame.pts,
            woken_for,
        );
        self.send(CaptureEvent::Audio(frame), wake)
    }

    fn send(&self, event: CaptureEvent, wake: bool) -> Result<(), Closed> {
        // Room is the rule: `try_send` then, and the blocking wait only when full.
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.tx.blocking_send(event).map_err(|_| Closed)?
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed),
        }
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Never waits (pad-added handlers): a notice lost to a full channel is only a log line,
    /// and errors come again through the bus.
    pub fn try_send(&self, event: CaptureEvent) {
        let wake = urgent(&event);
        if self.tx.try_send(event).is_ok() && wake {
            self.wake.notify_one();
        }
    }
}

impl EventRx {
    /// The next event, in order; `None` once every sender is gone.
    ///
    /// Only `try_recv` is used, never `recv`: a receiver waiting in `recv` would be woken by
    /// every send, which is what this channel exists to avoid.
    pub async fn recv(&mut self) -> Option<CaptureEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(HANDOFF_MS)) => {}
            }
        }
    }

    /// Refuses further events and releases a streaming thread blocked on a full channel.
    pub fn close(&mut self) {
        self.rx.close();
    }
}

/// Whether a sample's caps differ from the last ones. Nearly always the very same caps
/// object: compared by pointer first, since a full comparison per frame was a visible part
/// of the handover's cost.
fn caps_changed(last: Option<&gst::Caps>, caps: &gst::CapsRef) -> bool {
    last.is_none_or(|c| !std::ptr::eq(c.as_ptr(), caps.as_ptr()) && c.as_ref() != caps)
}

/// Calls `each` with every sample of `appsink` that holds a buffer, in its streaming thread.
fn on_samples(
    appsink: &gst_app::AppSink,
    mut each: impl FnMut(&gst::Sample, &gst::BufferRef) -> Result<gst::FlowSuccess, gst::FlowError>
    + Send
    + 'static,
) {
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                match sample.buffer() {
                    Some(buffer) => each(&sample, buffer),
                    None => Ok(gst::FlowSuccess::Ok),
                }
            })
            .build(),
    );
}

/// The sample's caps when they differ from the last ones, which it then remembers (by
/// reference, not a copy: the same pointer next time).
fn changed_caps<'a>(
    sample: &'a gst::Sample,
    last: &mut Option<gst::Caps>,
) -> Option<&'a gst::CapsRef> {
    let caps = sample.caps()?;
    if !caps_changed(last.as_ref(), caps) {
        return None;
    }
    *last = sample.caps_owned();
    Some(caps)
}

/// Hands the video appsink's access units over as `CaptureEvent::Unit`, with the codec
/// configuration of the caps they came with.
pub(super) fn attach_video(
    sink: &gst_app::AppSink,
    events: EventTx,
    stats: Arc<CaptureStats>,
    memory: FrameMemory,
) {
    let mut codec: Option<Arc<CodecConfig>> = None;
    let mut last_caps: Option<gst::Caps> = None;
    on_samples(sink, move |sample, buffer| {
        if let Some(caps) = changed_caps(sample, &mut last_caps) {
            match codec_from_caps(caps) {
                Ok(c) => codec = Some(Arc::new(c)),
                Err(e) => {
                    codec = None;
                    let _ = events.blocking_send(CaptureEvent::BadCodec(e));
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
        let data = match memory {
            FrameMemory::Keep => {
                let mapped = sample
                    .buffer_owned()
                    .ok_or(gst::FlowError::Error)?
                    .into_mapped_buffer_readable()
                    .map_err(|_| gst::FlowError::Error)?;
                Bytes::from_owner(mapped)
            }
            FrameMemory::Copy => {
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                Bytes::copy_from_slice(map.as_slice())
            }
        };
        stats.frames.fetch_add(1, Ordering::Relaxed);
        let unit = CapturedUnit {
            pts: MediaTime(running.nseconds()),
            decode_delay_ns,
            keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
            data,
            codec,
            arrived: WallMs::now(),
        };
        // Back-pressure: the consumer only fragments and queues, so waiting here
        // is short; a closed channel means the capture is being stopped.
        events
            .blocking_send(CaptureEvent::Unit(unit))
            .map_err(|_| gst::FlowError::Flushing)?;
        Ok(gst::FlowSuccess::Ok)
    });
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
pub(super) fn attach_audio(appsink: &gst_app::AppSink, events: EventTx) {
    events.try_send(CaptureEvent::AudioLinked);
    let mut config: Option<Arc<AudioConfig>> = None;
    let mut woken_for = NO_KEYFRAME;
    let mut last_caps: Option<gst::Caps> = None;
    on_samples(appsink, move |sample, buffer| {
        if let Some(caps) = changed_caps(sample, &mut last_caps) {
            config = match audio_config(caps) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    let _ = events
                        .blocking_send(CaptureEvent::Notice(format!("the audio is left out: {e}")));
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
            arrived: WallMs::now(),
        };
        events
            .send_audio(frame, &mut woken_for)
            .map_err(|_| gst::FlowError::Flushing)?;
        Ok(gst::FlowSuccess::Ok)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::VideoCodec;

    fn unit(pts_ms: u64, keyframe: bool) -> CaptureEvent {
        CaptureEvent::Unit(CapturedUnit {
            pts: MediaTime(pts_ms * 1_000_000),
            decode_delay_ns: 0,
            keyframe,
            data: vec![0; 4].into(),
            codec: Arc::new(CodecConfig {
                codec: VideoCodec::H264,
                private: vec![1, 77, 0, 30],
                width: 320,
                height: 240,
            }),
            arrived: WallMs(0),
        })
    }

    fn pts_of(event: &CaptureEvent) -> Option<u64> {
        match event {
            CaptureEvent::Unit(u) => Some(u.pts.0 / 1_000_000),
            _ => None,
        }
    }

    #[test]
    fn only_what_cannot_wait_wakes_the_task() {
        assert!(urgent(&unit(0, true)));
        assert!(!urgent(&unit(33, false)));
        assert!(urgent(&CaptureEvent::Eos));
        assert!(urgent(&CaptureEvent::Error("x".into())));
        assert!(urgent(&CaptureEvent::AudioLinked));
    }

    #[test]
    fn audio_wakes_once_per_keyframe_when_it_reaches_it() {
        let ms = |v: u64| MediaTime(v * 1_000_000);
        let mut woken_for = NO_KEYFRAME;
        assert!(
            !audio_wakes(NO_KEYFRAME, ms(5), &mut woken_for),
            "no keyframe yet"
        );
        let key = 2_000_000_000;
        assert!(
            !audio_wakes(key, ms(1990), &mut woken_for),
            "still before it"
        );
        assert!(audio_wakes(key, ms(2000), &mut woken_for), "reached it");
        assert!(!audio_wakes(key, ms(2021), &mut woken_for), "once");
        assert!(
            audio_wakes(4_000_000_000, ms(4010), &mut woken_for),
            "the next one"
        );
    }

    #[tokio::test]
    async fn frames_come_in_order_woken_or_not() {
        let (tx, mut rx) = channel();
        let sender = std::thread::spawn(move || {
            for i in 0..100u64 {
                tx.blocking_send(unit(i * 33, i % 30 == 0)).unwrap();
            }
            tx.blocking_send(CaptureEvent::Eos).unwrap();
        });
        let mut seen = Vec::new();
        while let Some(event) = rx.recv().await {
            match pts_of(&event) {
                Some(pts) => seen.push(pts),
                None => break,
            }
        }
        sender.join().unwrap();
        assert_eq!(seen, (0..100).map(|i| i * 33).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_frame_nobody_wakes_for_is_still_taken() {
        let (tx, mut rx) = channel();
        std::thread::spawn(move || tx.blocking_send(unit(33, false)).unwrap())
            .join()
            .unwrap();
        // No wake was sent, and the sender is gone: the frame is still found, then the
        // channel reports its end.
        assert_eq!(rx.recv().await.as_ref().and_then(pts_of), Some(33));
        assert!(rx.recv().await.is_none());
    }
}
