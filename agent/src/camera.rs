//! One camera's supervisor: capture → timeline → fragmenter → the uploader's channel.
//! Restarts the source with tiered backoff after errors, EOS or a stall (no frame for
//! `stall_timeout_secs`); loops files at once; never crashes, never spins. On shutdown it
//! flushes the fragment in progress and closes the channel, which lets the uploader finish.
//!
//! Configuration changes arrive on a watch channel: a bitrate change is applied to the
//! running encoder; anything else about the capture restarts the source at once (the
//! journal and the uploader carry on). Commands tag fragments with alarms and take snapshots.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kvs_edge_config::agent::{CameraConfig, SourceConfig, UploadMode};
use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::capture::{self, Capture, CaptureEvent, CaptureStats};
use crate::codec::{AudioConfig, CodecConfig, TrackSet};
use crate::control::Alarm;
use crate::fragmenter::{AccessUnit, AudioFrame, Fragment, Fragmenter, FragmenterConfig, MkvError};
use crate::snapshot::{self, SnapshotError};
use crate::timeline::{MediaTime, Timeline, WallMs};

/// Added to decode times so that a DTS before the segment start stays positive; the
/// timeline only uses differences.
const DECODE_BIAS_NS: u64 = 10_000_000_000;
use crate::journal::{Appended, Journal, Record};
use crate::policy::{Gate, WindowEvent, WindowRequest};

#[derive(Debug, Default)]
pub struct CameraStats {
    pub capture: Arc<CaptureStats>,
    pub fragments: AtomicU64,
    pub restarts: AtomicU64,
    pub stalls: AtomicU64,
    pub frames_discarded: AtomicU64,
    /// Fragments the journal refused (full under `deny_new`, disk full, I/O errors).
    pub fragments_denied: AtomicU64,
    /// Alarms (or other metadata) left out of fragment tags to stay within KVS's limits.
    pub tags_omitted: AtomicU64,
    /// Why the camera cannot stream (an unsupported codec, unusable codec data); cleared
    /// by the first frame captured. Shown in the status, metrics and under systemd.
    pub failure: std::sync::Mutex<Option<String>>,
    /// The video being sent: codec and picture size ("H.265 1920x1080").
    pub video: std::sync::Mutex<Option<(crate::codec::VideoCodec, u32, u32)>>,
    /// The audio being sent: codec, rate and channels.
    pub audio: std::sync::Mutex<Option<(crate::codec::AudioCodec, u32, u8)>>,
    /// Audio frames left out: before the first picture, or too late for their fragment.
    pub audio_dropped: AtomicU64,
    /// The encoder element in use ("passthrough" when none).
    pub encoder: Mutex<String>,
    /// Alarms the motion trigger raised.
    pub motion_alarms: AtomicU64,
    /// Fragments captured outside the recording windows, not journaled.
    pub fragments_not_recorded: AtomicU64,
}

/// What cameras say by themselves, for the MQTT link to publish: alarms they raised
/// (motion) and the progress of the windows those alarms asked for. Nobody listening
/// (no `[mqtt]`) is fine: what the camera does with them does not depend on it.
#[derive(Clone)]
pub struct Signals {
    pub alarms: mpsc::UnboundedSender<(String, crate::motion::Raised)>,
    pub windows: mpsc::UnboundedSender<WindowEvent>,
}

/// The listening end of `Signals`.
pub struct SignalsRx {
    pub alarms: mpsc::UnboundedReceiver<(String, crate::motion::Raised)>,
    pub windows: mpsc::UnboundedReceiver<WindowEvent>,
}

pub fn signals() -> (Signals, SignalsRx) {
    let (alarms, alarms_rx) = mpsc::unbounded_channel();
    let (windows, windows_rx) = mpsc::unbounded_channel();
    (
        Signals { alarms, windows },
        SignalsRx {
            alarms: alarms_rx,
            windows: windows_rx,
        },
    )
}

/// What a camera can be asked to do while it runs.
pub enum CameraCommand {
    /// Tag the fragments overlapping the alarm's window (from now on) with its id and label.
    Alarm(Alarm),
    /// A JPEG of the latest keyframe.
    Snapshot(oneshot::Sender<Result<Vec<u8>, SnapshotError>>),
    /// Send a window of the recording (the `new` event, or why not).
    Upload(WindowRequest, oneshot::Sender<Result<WindowEvent, String>>),
}

pub struct Camera {
    pub cfg: CameraConfig,
    pub stats: Arc<CameraStats>,
    pub journal: Arc<std::sync::Mutex<Journal>>,
    /// The upload policy, shared with the uploader: window requests go there.
    pub gate: Arc<Gate>,
    /// True while the journal refuses fragments (to log a burst once).
    pub denying: std::sync::atomic::AtomicBool,
    /// Configuration changes for this camera (the runner restarts the whole camera for
    /// changes to the stream itself).
    pub updates: watch::Receiver<CameraConfig>,
    pub commands: mpsc::Receiver<CameraCommand>,
    pub signals: Signals,
    /// When fragments are journaled: always, or in recording windows and alarms.
    pub recording: crate::policy::Recording,
}

/// The tracks being captured now: the video's codec configuration and the audio's (while
/// the source sends some).
#[derive(Default)]
struct Current {
    video: Option<Arc<CodecConfig>>,
    audio: Option<Arc<AudioConfig>>,
}

/// Alarms that still cover fragments, and the last keyframe (for snapshots).
#[derive(Default)]
struct Marks {
    alarms: Vec<Alarm>,
    keyframe: Option<(Arc<CodecConfig>, bytes::Bytes)>,
}

/// Alarms described one by one in a fragment's metadata (two tags each); later ones are
/// merged into one tag of ids. With the fragment's other tags this stays within KVS's ten.
const ALARMS_IN_FULL: usize = 4;

impl Marks {
    /// The tags of a fragment spanning `[start_ms, end_ms]`, and how many of its alarms did
    /// not fit; forgets alarms that ended before it.
    fn tags(&mut self, start_ms: i64, end_ms: i64) -> (Vec<(String, String)>, usize) {
        self.alarms.retain(|a| a.end_ms >= start_ms);
        let overlapping: Vec<&Alarm> = self
            .alarms
            .iter()
            .filter(|a| a.start_ms <= end_ms)
            .collect();
        alarm_tags(&overlapping)
    }
}

/// Fragment metadata for the alarms overlapping a fragment, oldest first: the first
/// `ALARMS_IN_FULL` as `ALARM_ID`/`ALARM_LABEL`, `ALARM_ID_2`/`ALARM_LABEL_2` …, the rest
/// merged into `ALARM_MORE_IDS` (comma-separated ids, as many as fit KVS's 256-byte value).
/// Returns the tags and how many alarms appear in none of them. Overlapping alarms once
/// made more than KVS's ten tags, and the service dropped the video (ERROR 4009).
pub fn alarm_tags(alarms: &[&Alarm]) -> (Vec<(String, String)>, usize) {
    let mut tags = Vec::new();
    for (i, a) in alarms.iter().take(ALARMS_IN_FULL).enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!("_{}", i + 1)
        };
        tags.push((format!("ALARM_ID{suffix}"), a.id.clone()));
        tags.push((format!("ALARM_LABEL{suffix}"), a.label.clone()));
    }
    let mut more = String::new();
    let mut omitted = 0;
    for a in alarms.iter().skip(ALARMS_IN_FULL) {
        let sep = usize::from(!more.is_empty());
        if more.len() + sep + a.id.len() <= crate::mkv::MAX_TAG_VALUE_BYTES {
            if sep == 1 {
                more.push(',');
            }
            more.push_str(&a.id);
        } else {
            omitted += 1;
        }
    }
    if !more.is_empty() {
        tags.push(("ALARM_MORE_IDS".to_string(), more));
    }
    (tags, omitted)
}

impl Camera {
    pub async fn run(mut self, out: mpsc::Sender<u64>, mut shutdown: watch::Receiver<bool>) {
        let mut timeline = Timeline::new();
        let mut fragmenter = self.fragmenter();
        let mut tracks = Current::default();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut slow = Backoff::new(Duration::from_secs(60), Duration::from_secs(15 * 60));
        let mut marks = Marks::default();
        let mut trigger = self.cfg.motion.clone().map(crate::motion::Trigger::new);
        'sources: loop {
            let cam = self.cfg.clone();
            let stall = Duration::from_secs(cam.stall_timeout_secs);
            let description = match self.describe() {
                Ok(d) => d,
                Err(e) => {
                    error!(camera = %cam.name, "{e}");
                    if self.pause(&mut backoff, &mut shutdown).await {
                        break 'sources;
                    }
                    continue;
                }
            };
            let motion = cam.motion.as_ref().map(|m| capture::MotionSpec {
                threshold: m.threshold,
                quiet_ms: m.quiet_s as i64 * 1000,
            });
            // Demuxed and depayloaded frames are referenced; a V4L2 camera's or an
            // encoder's, from small pools, copied.
            let frames = match cam.source {
                SourceConfig::File { .. } | SourceConfig::Rtsp { .. } => capture::FrameMemory::Keep,
                _ => capture::FrameMemory::Copy,
            };
            let mut capture = match Capture::start(
                &description,
                self.stats.capture.clone(),
                self.audio_policy(),
                motion,
                frames,
            ) {
                Ok(c) => c,
                Err(e) => {
                    error!(camera = %cam.name, "{e}");
                    if self.pause(&mut backoff, &mut shutdown).await {
                        break 'sources;
                    }
                    continue;
                }
            };
            info!(camera = %cam.name, "capturing: {}", capture::redact(&description));
            timeline.restart();
            // Whether this source instance carries audio shows when its frames come.
            tracks.audio = None;
            fragmenter.set_audio(false);
            let mut last_frame = Instant::now();
            let ended = loop {
                tokio::select! {
                    ev = capture.next() => match ev {
                        Some(CaptureEvent::Unit(unit)) => {
                            last_frame = Instant::now();
                            if tracks.video.as_ref() != Some(&unit.codec) {
                                let c = &unit.codec;
                                if tracks.video.is_some() {
                                    info!(camera = %cam.name, "codec configuration changed: {} {}x{}", c.codec, c.width, c.height);
                                } else {
                                    info!(camera = %cam.name, "video: {} {}x{}", c.codec, c.width, c.height);
                                }
                                *self.stats.video.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some((c.codec, c.width, c.height));
                                *self.stats.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                                // Fragments never mix codec configurations.
                                self.flush_all(&out, &mut fragmenter, &tracks).await;
                                tracks.video = Some(unit.codec.clone());
                            }
                            // Decode time is the monotonic one (B-frames reorder presentation
                            // times), so it goes through the timeline; presentation time
                            // follows at the unit's decode delay.
                            let decode = MediaTime(unit.pts.0 + DECODE_BIAS_NS - unit.decode_delay_ns.min(DECODE_BIAS_NS));
                            let dts_ms = timeline.wall(decode, unit.arrived).0;
                            let au = AccessUnit {
                                pts_ms: dts_ms + (unit.decode_delay_ns / 1_000_000) as i64,
                                dts_ms,
                                keyframe: unit.keyframe,
                                data: unit.data,
                            };
                            if au.keyframe {
                                // This keyframe may close the fragment: give it its alarm tags.
                                let start = fragmenter.pending_start_ms().unwrap_or(au.pts_ms);
                                let (tags, omitted) = marks.tags(start, au.pts_ms);
                                fragmenter.set_tags(tags, omitted);
                                marks.keyframe = Some((unit.codec.clone(), au.data.clone()));
                                // Motion going on keeps its alarm open.
                                if let Some(raised) = trigger.as_mut().and_then(|t| t.tick(WallMs::now().0)) {
                                    self.raise(raised, &mut marks);
                                }
                            }
                            let pushed = fragmenter.push(au);
                            // (A first keyframe drops the early audio older than it.)
                            self.stats.audio_dropped.store(fragmenter.audio_dropped, Ordering::Relaxed);
                            match pushed {
                                Ok(mut done) => {
                                    backoff.reset();
                                    while let Some(f) = done {
                                        self.emit(&out, Some(f), &tracks).await;
                                        done = fragmenter.next_ready();
                                    }
                                }
                                Err(MkvError::NeedKeyframe(_)) => {
                                    self.stats.frames_discarded.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    let n = fragmenter.discard();
                                    self.stats.frames_discarded.fetch_add(n as u64 + 1, Ordering::Relaxed);
                                    error!(camera = %cam.name, discarded_frames = n, "{e}");
                                }
                            }
                        }
                        Some(CaptureEvent::Motion(change)) => {
                            debug!(camera = %cam.name, "motion {change:?}");
                            if let Some(raised) = trigger.as_mut().and_then(|t| t.on_change(change, WallMs::now().0)) {
                                self.raise(raised, &mut marks);
                            }
                        }
                        Some(CaptureEvent::AudioLinked) => {
                            // Fragments wait for the audio from the first one on, so the
                            // stream starts with both tracks instead of switching layouts.
                            fragmenter.set_audio(true);
                        }
                        Some(CaptureEvent::Audio(frame)) => {
                            if tracks.audio.as_ref() != Some(&frame.config) {
                                let a = &frame.config;
                                info!(camera = %cam.name, "audio: {} {} Hz, {} channel(s)", a.codec, a.rate, a.channels);
                                *self.stats.audio.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some((a.codec, a.rate, a.channels));
                                // A fragment has one audio configuration: a changed one starts
                                // the next fragment (the first one joins the fragment under way).
                                if tracks.audio.is_some() {
                                    self.flush_all(&out, &mut fragmenter, &tracks).await;
                                }
                                tracks.audio = Some(frame.config.clone());
                                fragmenter.set_audio(true);
                            }
                            // On the video's timeline: same pipeline clock, same bias.
                            let media = MediaTime(frame.pts.0 + DECODE_BIAS_NS);
                            let pts = timeline.project(media, frame.arrived);
                            let mut done = fragmenter.push_audio(AudioFrame { pts_ms: pts.0, data: frame.data });
                            // Late audio can complete several held fragments at once.
                            while let Some(f) = done {
                                self.emit(&out, Some(f), &tracks).await;
                                done = fragmenter.next_ready();
                            }
                            self.stats.audio_dropped.store(fragmenter.audio_dropped, Ordering::Relaxed);
                        }
                        Some(CaptureEvent::Eos) => break "end of stream",
                        Some(CaptureEvent::Error(e)) => {
                            warn!(camera = %cam.name, "capture error: {e}");
                            break "error";
                        }
                        Some(CaptureEvent::BadCodec(e)) => {
                            let why = format!("{e} (KVS would store such video but never play it)");
                            error!(camera = %cam.name, "{why}");
                            self.fail(why);
                            break "bad codec data";
                        }
                        Some(CaptureEvent::Unsupported(why)) => {
                            error!(camera = %cam.name, "{why}; retrying slowly");
                            self.fail(why);
                            break "unsupported";
                        }
                        Some(CaptureEvent::Notice(what)) => {
                            warn!(camera = %cam.name, "{what}");
                        }
                        None => break "pipeline gone",
                    },
                    _ = sleep_until(last_frame + stall) => {
                        self.stats.stalls.fetch_add(1, Ordering::Relaxed);
                        warn!(camera = %cam.name, "no frame for {stall:?}: restarting the source");
                        break "stall";
                    }
                    _ = shutdown.changed() => break 'sources,
                    Ok(()) = self.updates.changed() => {
                        let next = self.updates.borrow_and_update().clone();
                        if next == self.cfg {
                            continue;
                        }
                        let mut only_bitrate = self.cfg.clone();
                        only_bitrate.encoder.bitrate_kbps = next.encoder.bitrate_kbps;
                        if only_bitrate == next && capture.set_bitrate(next.encoder.bitrate_kbps) {
                            info!(camera = %cam.name, bitrate_kbps = next.encoder.bitrate_kbps, "bitrate changed on the running encoder");
                            self.cfg = next;
                            continue;
                        }
                        self.cfg = next;
                        break "reconfigured";
                    }
                    Some(command) = self.commands.recv() => match command {
                        CameraCommand::Alarm(alarm) => {
                            info!(camera = %cam.name, id = %alarm.id, label = %alarm.label, "alarm: tagging fragments until {}", alarm.end_ms);
                            self.mark(&alarm, &mut marks);
                        }
                        CameraCommand::Upload(request, reply) => {
                            let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
                            let answer = self.gate.request(request, &journal, WallMs::now().0);
                            drop(journal);
                            if let Ok(w) = &answer {
                                info!(camera = %cam.name, id = %w.id, start = w.start_ms, end = w.end_ms, available = w.fragments_available, "upload window accepted");
                            }
                            let _ = reply.send(answer);
                        }
                        CameraCommand::Snapshot(reply) => {
                            let frame = marks.keyframe.clone();
                            tokio::task::spawn_blocking(move || {
                                let jpeg = match frame {
                                    Some((codec, data)) => snapshot::jpeg(&codec, &data, 85),
                                    None => Err(SnapshotError::NoKeyframe),
                                };
                                let _ = reply.send(jpeg);
                            });
                        }
                    },
                }
            };
            drop(capture);
            // What was captured so far is complete video: send it.
            self.flush(&out, &mut fragmenter, &mut marks, &tracks).await;
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            if ended == "reconfigured" {
                info!(camera = %cam.name, "configuration changed: restarting the source");
                fragmenter = self.fragmenter();
                continue;
            }
            let looping = matches!(cam.source, SourceConfig::File { looping: true, .. });
            if ended == "end of stream" && looping {
                continue;
            }
            if ended == "end of stream" && matches!(cam.source, SourceConfig::File { .. }) {
                info!(camera = %cam.name, "the file ended");
                break 'sources;
            }
            // What the camera sends will not change by itself: ask again, but rarely.
            let wait = if matches!(ended, "unsupported" | "bad codec data") {
                &mut slow
            } else {
                &mut backoff
            };
            if self.pause(wait, &mut shutdown).await {
                break 'sources;
            }
        }
        self.flush(&out, &mut fragmenter, &mut marks, &tracks).await;
        info!(camera = %self.cfg.name, fragments = self.stats.fragments.load(Ordering::Relaxed), "capture stopped");
    }

    /// Marks the camera failed (status, metrics, systemd) with the reason.
    fn fail(&self, why: String) {
        *self.stats.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    fn fragmenter(&self) -> Fragmenter {
        Fragmenter::new(FragmenterConfig {
            target_ms: self.cfg.fragment_duration_ms as i64,
            max_ms: self.cfg.max_fragment_duration_ms as i64,
        })
    }

    /// Emits the fragment in progress, tagged with the alarms that overlap it.
    async fn flush(
        &self,
        out: &mpsc::Sender<u64>,
        fragmenter: &mut Fragmenter,
        marks: &mut Marks,
        tracks: &Current,
    ) {
        if let Some(start) = fragmenter.pending_start_ms() {
            let (tags, omitted) = marks.tags(start, WallMs::now().0);
            fragmenter.set_tags(tags, omitted);
        }
        self.flush_all(out, fragmenter, tracks).await;
    }

    /// Emits everything the fragmenter holds (a held fragment, then the pending one).
    async fn flush_all(
        &self,
        out: &mpsc::Sender<u64>,
        fragmenter: &mut Fragmenter,
        tracks: &Current,
    ) {
        while let Some(f) = fragmenter.flush() {
            self.emit(out, Some(f), tracks).await;
        }
        self.stats
            .audio_dropped
            .store(fragmenter.audio_dropped, Ordering::Relaxed);
    }

    /// The pipeline for this camera, choosing an encoder when one is needed.
    fn describe(&self) -> Result<String, capture::CaptureError> {
        let cam = &self.cfg;
        let encoder = if capture::needs_encoder(&cam.source) {
            let element = capture::choose_encoder(&cam.encoder)?;
            let fps = match &cam.source {
                SourceConfig::Test { fps, .. } => *fps,
                SourceConfig::V4l2 { fps, .. } => fps.unwrap_or(30),
                _ => 30,
            };
            // One keyframe per target fragment duration, so cuts land on time.
            let key_int = (u64::from(fps) * cam.fragment_duration_ms / 1000).max(1) as u32;
            if let Ok(mut e) = self.stats.encoder.try_lock() {
                *e = element.clone();
            }
            capture::encoder_chain(&element, &cam.encoder, key_int)
        } else {
            if let Ok(mut e) = self.stats.encoder.try_lock() {
                *e = "passthrough".into();
            }
            String::new()
        };
        // A test pattern gets a tone, a V4L2 camera its microphone, when audio is asked for
        // (the microphone: unless it is refused).
        let makes_audio = match &cam.source {
            SourceConfig::Test { .. } => cam.audio == Some(true),
            SourceConfig::V4l2 { microphone, .. } => {
                microphone.is_some() && cam.audio != Some(false)
            }
            _ => false,
        };
        let aac = if makes_audio {
            Some(capture::choose_aac_encoder()?)
        } else {
            None
        };
        Ok(capture::pipeline_description(
            &cam.source,
            &encoder,
            aac.as_deref(),
            cam.motion.is_some(),
        ))
    }

    /// An alarm the motion trigger raised: marked as an `alarm/set` command's is, and
    /// signalled (the MQTT link announces it).
    fn raise(&self, raised: crate::motion::Raised, marks: &mut Marks) {
        if raised.new {
            let alarm = &raised.alarm;
            info!(camera = %self.cfg.name, id = %alarm.id, "motion: alarm until {}", alarm.end_ms);
            self.stats.motion_alarms.fetch_add(1, Ordering::Relaxed);
        }
        self.mark(&raised.alarm, marks);
        let _ = self.signals.alarms.send((self.cfg.name.clone(), raised));
    }

    /// What an alarm does to the camera, whoever raised it: its fragments are tagged and
    /// recorded whatever the recording schedule; on a scheduled or on-demand camera its
    /// window is asked of the uploader (the pre-roll from the recording), with progress on
    /// `Signals::windows`. The same id again updates it.
    fn mark(&self, alarm: &Alarm, marks: &mut Marks) {
        let cam = &self.cfg.name;
        marks.alarms.retain(|a| a.id != alarm.id);
        marks.alarms.push(alarm.clone());
        self.recording.alarm(alarm.end_ms);
        if self.gate.mode() != kvs_edge_config::agent::UploadMode::Continuous {
            let request = WindowRequest {
                id: alarm.id.clone(),
                start_ms: alarm.start_ms,
                end_ms: alarm.end_ms,
                events: self.signals.windows.clone(),
            };
            let journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
            let answer = self.gate.request(request, &journal, WallMs::now().0);
            drop(journal);
            match answer {
                Ok(event) => {
                    let _ = self.signals.windows.send(event);
                }
                Err(reason) => {
                    warn!(camera = %cam, id = %alarm.id, "the alarm's window is not uploaded: {reason}")
                }
            }
        }
    }

    /// Whether a passed-through source's audio is sent.
    fn audio_policy(&self) -> capture::AudioPolicy {
        match self.cfg.audio {
            Some(false) => capture::AudioPolicy::Drop,
            _ => capture::AudioPolicy::Send,
        }
    }

    /// Journals a finished fragment (fsynced by default) and tells the uploader. Budget
    /// drops are counted by the journal and logged here once per burst.
    async fn emit(&self, out: &mpsc::Sender<u64>, fragment: Option<Fragment>, tracks: &Current) {
        let (Some(f), Some(video)) = (fragment, &tracks.video) else {
            return;
        };
        // A session declares audio only for fragments that carry some (KVS refuses a
        // declared track without frames: 4011).
        let tracks = Arc::new(TrackSet {
            video: (**video).clone(),
            audio: tracks
                .audio
                .as_ref()
                .filter(|_| f.audio_frames > 0)
                .map(|a| (**a).clone()),
        });
        self.stats.fragments.fetch_add(1, Ordering::Relaxed);
        if !self.recording.records(f.timecode_ms) {
            // Outside the recording windows, with no alarm: captured (for motion and
            // snapshots), not kept.
            self.stats
                .fragments_not_recorded
                .fetch_add(1, Ordering::Relaxed);
            drop(crate::recycle::bytes(f.bytes)); // its buffer back to the free list
            return;
        }
        if f.tags_omitted > 0 {
            self.stats
                .tags_omitted
                .fetch_add(f.tags_omitted as u64, Ordering::Relaxed);
            warn!(camera = %self.cfg.name, timecode = f.timecode_ms, omitted = f.tags_omitted, "fragment metadata over KVS's limits (10 tags of 256 bytes): left some alarms out of this fragment's tags, the video is kept");
        }
        let record = Record {
            timecode_ms: f.timecode_ms,
            duration_ms: f.duration_ms,
            tracks,
            bytes: crate::recycle::bytes(f.bytes),
            deferred: self.gate.mode() != UploadMode::Continuous,
        };
        let journal = self.journal.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            journal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&record, WallMs::now().0)
        })
        .await
        .expect("journal task does not panic");
        let cam = &self.cfg.name;
        match outcome {
            Ok(Appended::Stored {
                seq,
                dropped_oldest,
            }) => {
                debug!(camera = %cam, seq, timecode = f.timecode_ms, "journaled");
                if dropped_oldest > 0 {
                    warn!(camera = %cam, dropped_oldest, "journal full: dropped the oldest unsent video (on_full = delete_oldest)");
                }
                if self.denying.swap(false, Ordering::Relaxed) {
                    info!(camera = %cam, "journal has room again: new video is stored");
                }
                // A hint only: the uploader reads the journal, so a full channel loses nothing.
                let _ = out.try_send(seq);
            }
            Ok(Appended::Denied) => {
                self.stats.fragments_denied.fetch_add(1, Ordering::Relaxed);
                if !self.denying.swap(true, Ordering::Relaxed) {
                    warn!(camera = %cam, "journal full: refusing new video until there is room (on_full = deny_new or disk full)");
                }
            }
            Err(e) => {
                self.stats.fragments_denied.fetch_add(1, Ordering::Relaxed);
                error!(camera = %cam, timecode = f.timecode_ms, "could not journal a fragment: {e}");
            }
        }
    }

    /// Backs off before the next source start; true when shutdown was asked meanwhile.
    /// A configuration change ends the pause early (the new settings may be the fix).
    async fn pause(&mut self, backoff: &mut Backoff, shutdown: &mut watch::Receiver<bool>) -> bool {
        let delay = backoff.next_delay();
        info!(camera = %self.cfg.name, "restarting the source in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => *shutdown.borrow(),
            _ = shutdown.changed() => true,
            Ok(()) = self.updates.changed() => {
                self.cfg = self.updates.borrow_and_update().clone();
                backoff.reset();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mkv::{MAX_TAG_VALUE_BYTES, MAX_TAGS, fit_tags};

    fn alarm(i: usize) -> Alarm {
        Alarm {
            id: format!("door-{i:02}-{}", "x".repeat(40)),
            label: "person".into(),
            pre_s: 10,
            post_s: 30,
            start_ms: i as i64,
            end_ms: 1_000_000,
        }
    }

    #[test]
    fn overlapping_alarms_never_exceed_the_kvs_tag_limit() {
        for n in [0, 1, 4, 5, 6, 12, 40] {
            let alarms: Vec<Alarm> = (0..n).map(alarm).collect();
            let refs: Vec<&Alarm> = alarms.iter().collect();
            let (tags, omitted) = alarm_tags(&refs);
            assert!(tags.len() < MAX_TAGS, "{n} alarms: {} tags", tags.len());
            let (fitted, cut) = fit_tags(tags.clone());
            assert_eq!(
                (fitted, cut),
                (tags.clone(), 0),
                "{n} alarms fit as they are"
            );
            let named = tags
                .iter()
                .filter(|(k, _)| k.starts_with("ALARM_ID"))
                .count();
            let merged = tags
                .iter()
                .find(|(k, _)| k == "ALARM_MORE_IDS")
                .map_or(0, |(_, v)| v.split(',').count());
            assert_eq!(
                named + merged + omitted,
                n,
                "every alarm is tagged or counted"
            );
            assert!(tags.iter().all(|(_, v)| v.len() <= MAX_TAG_VALUE_BYTES));
        }
        let alarms: Vec<Alarm> = (0..6).map(alarm).collect();
        let refs: Vec<&Alarm> = alarms.iter().collect();
        let (tags, omitted) = alarm_tags(&refs);
        assert_eq!(tags[0], ("ALARM_ID".into(), alarms[0].id.clone()));
        assert_eq!(tags[3].0, "ALARM_LABEL_2");
        assert_eq!(
            tags.last().unwrap(),
            &(
                "ALARM_MORE_IDS".to_string(),
                format!("{},{}", alarms[4].id, alarms[5].id)
            )
        );
        assert_eq!(omitted, 0);
        let many: Vec<Alarm> = (0..40).map(alarm).collect();
        let refs: Vec<&Alarm> = many.iter().collect();
        assert_eq!(
            alarm_tags(&refs).1,
            40 - 4 - 5,
            "five 48-byte ids fit in 256 bytes"
        );
    }
}
