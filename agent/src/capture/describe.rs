//! The pipeline description for a source: what runs for a test pattern, a V4L2 camera, a
//! file or an RTSP camera, as gst-launch text. Pure, so every source's pipeline is
//! unit-tested; choosing an encoder asks GStreamer which elements exist.

use gstreamer as gst;
use kvs_edge_config::agent::{EncoderConfig, RtspTransport, SourceConfig, V4l2Format};

use super::{CaptureError, init};

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

/// A passed-through source's video appsink. `async=false`: a demuxer feeds the video and
/// audio appsinks from one streaming thread, and a sink that waited for its preroll would
/// hold that thread before the other sink had anything: the pipeline would never start. So
/// the sinks do not take part in the state change, and no queue (a thread hop per frame)
/// is needed to keep them apart.
pub(super) const APPSINK: &str = "appsink name=sink max-buffers=64 drop=false async=false";
/// The audio appsink's name and settings.
pub(super) const AUDIO_SINK: &str = "audio";
pub(super) const AUDIO_APPSINK: &str = "appsink name=audio max-buffers=256 drop=false async=false";
/// Encoded H.264 into the appsink.
const SINK: &str = "h264parse ! video/x-h264,stream-format=avc,alignment=au ! appsink name=sink max-buffers=64 drop=false";

/// The `parsebin` of a file source, plugged by the Rust side (see `plug_streams`).
pub(super) const AUTOPLUG: &str = "autoplug";
/// The `rtspsrc` of an RTSP source: each stream it announces gets its own `parsebin`.
pub(super) const RTSP: &str = "rtsp";

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
/// (a tone) or a V4L2 camera (its microphone) makes; `motion` puts a tee for the motion
/// branch before the encoder (`motiontap`), or on encoded video (`motionkeys`; passed-through
/// files and RTSP get theirs when they are plugged).
pub fn pipeline_description(
    source: &SourceConfig,
    encoder: &str,
    aac: Option<&str>,
    motion: bool,
) -> String {
    let video = video_description(source, encoder, motion);
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

fn video_description(source: &SourceConfig, encoder: &str, motion: bool) -> String {
    let tap = |name: &str| {
        if motion {
            format!("tee name={name} ! ")
        } else {
            String::new()
        }
    };
    let (raw, keys) = (tap(super::motion::RAW_TAP), tap(super::motion::ENCODED_TAP));
    match source {
        SourceConfig::Test {
            width,
            height,
            fps,
            pattern,
        } => format!(
            "videotestsrc is-live=true pattern={pattern} ! video/x-raw,width={width},height={height},framerate={fps}/1 \
             ! clockoverlay time-format=\"%Y-%m-%d %H:%M:%S\" ! videoconvert ! video/x-raw,format=I420 \
             ! {raw}{encoder} ! {SINK} sync=false"
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
                V4l2Format::H264 => {
                    format!("{src} ! video/x-h264{extra} ! {keys}{SINK} sync=false")
                }
                V4l2Format::Mjpeg => format!(
                    "{src} ! image/jpeg{extra} ! jpegdec ! videoconvert ! video/x-raw,format=I420 ! {raw}{encoder} ! {SINK} sync=false"
                ),
                V4l2Format::Raw => format!(
                    "{src} ! video/x-raw{extra} ! videoconvert ! video/x-raw,format=I420 ! {raw}{encoder} ! {SINK} sync=false"
                ),
                V4l2Format::Auto => format!(
                    "{src} ! decodebin ! videoconvert ! videoscale ! video/x-raw,format=I420{extra} ! {raw}{encoder} ! {SINK} sync=false"
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
        let d = pipeline_description(&src, "NOT-USED", None, false);
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
        let d = pipeline_description(&test, &chain, None, false);
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
        let d = pipeline_description(&test, &chain, Some("voaacenc"), false);
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
        let d = pipeline_description(&v4l2, &chain, None, false);
        assert!(
            d.contains("image/jpeg,width=1280,height=720,framerate=30/1 ! jpegdec"),
            "{d}"
        );
        let d = pipeline_description(&v4l2, &chain, Some("avenc_aac"), false);
        assert!(
            d.contains("alsasrc device=\"hw:1,0\"") && d.contains("avenc_aac"),
            "the microphone, encoded to AAC: {d}"
        );
        // The motion trigger taps raw video before the encoder, or a camera's own H.264.
        let d = pipeline_description(&test, &chain, None, true);
        assert!(
            d.contains("format=I420 ! tee name=motiontap ! x264enc"),
            "{d}"
        );
        let h264 = SourceConfig::V4l2 {
            device: "/dev/video2".into(),
            width: Some(1280),
            height: Some(720),
            fps: Some(30),
            format: V4l2Format::H264,
            microphone: None,
        };
        let d = pipeline_description(&h264, &chain, None, true);
        assert!(d.contains("video/x-h264,width=1280,height=720,framerate=30/1 ! tee name=motionkeys ! h264parse"), "{d}");
        assert!(!pipeline_description(&h264, &chain, None, false).contains("tee"));
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
