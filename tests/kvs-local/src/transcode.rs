//! The transcoding half of kvs-local's MediaConvert: a job's output groups, each output one
//! `gst-launch-1.0` pipeline from the input in the S3 store into the store.
//!
//! Video is decoded, scaled to the output's Width/Height and encoded with x264 at its
//! bitrate. Audio is decoded, resampled to the description's SampleRate and channel count
//! (CodingMode) and encoded as AAC at its Bitrate. What the input does not have is left
//! out: an input without audio gives video-only outputs and no audio-only rendition.
//! (Whether real MediaConvert inserts silence there instead is not checked; see
//! docs/kvs-local.md.)

use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::mediaconvert::object_path;

/// An output's audio, from its first audio description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Audio {
    bitrate: u64,
    rate: u64,
    channels: u64,
}

impl Audio {
    /// `None` without an audio description; an error for codecs kvs-local does not encode.
    fn of(output: &Value) -> Result<Option<Audio>, String> {
        let Some(d) = output["audioDescriptions"]
            .as_array()
            .and_then(|a| a.first())
        else {
            return Ok(None);
        };
        let codec = d["codecSettings"]["codec"].as_str().unwrap_or("AAC");
        if codec != "AAC" {
            return Err(format!(
                "audio codec {codec}: kvs-local's MediaConvert encodes AAC only"
            ));
        }
        let aac = &d["codecSettings"]["aacSettings"];
        let channels = match aac["codingMode"].as_str().unwrap_or("CODING_MODE_2_0") {
            "CODING_MODE_1_0" => 1,
            "CODING_MODE_2_0" => 2,
            other => {
                return Err(format!(
                    "AAC coding mode {other}: kvs-local encodes CODING_MODE_1_0 or CODING_MODE_2_0"
                ));
            }
        };
        Ok(Some(Audio {
            bitrate: aac["bitrate"].as_u64().unwrap_or(96_000),
            rate: aac["sampleRate"].as_u64().unwrap_or(48_000),
            channels,
        }))
    }

    /// The chain from the decoder's audio pad to encoded AAC (ends with `! `).
    fn encode(&self) -> String {
        format!(
            "d. ! audio/x-raw ! queue ! audioconvert ! audioresample ! audio/x-raw,rate={},channels={} ! {} bitrate={} ! aacparse ! queue ! ",
            self.rate,
            self.channels,
            aac_encoder(),
            self.bitrate
        )
    }
}

/// The AAC encoder element: voaacenc where it is installed, else libav's.
fn aac_encoder() -> &'static str {
    static CHOSEN: OnceLock<&'static str> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let exists = |e: &str| {
            std::process::Command::new("gst-inspect-1.0")
                .args(["--exists", e])
                .status()
                .is_ok_and(|s| s.success())
        };
        if exists("voaacenc") {
            "voaacenc"
        } else {
            "avenc_aac"
        }
    })
}

/// Whether an MP4 input has an audio track (a `soun` handler in its `moov`). Other
/// containers count as video only.
fn has_audio(input: &Path) -> Result<bool, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut at = 0u64;
    while at + 8 <= len {
        let mut header = [0u8; 16];
        f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        f.read_exact(&mut header[..8]).map_err(|e| e.to_string())?;
        let mut size = u64::from(u32::from_be_bytes(header[..4].try_into().unwrap()));
        let mut header_len = 8;
        if size == 1 {
            f.read_exact(&mut header[8..]).map_err(|e| e.to_string())?;
            size = u64::from_be_bytes(header[8..].try_into().unwrap());
            header_len = 16;
        } else if size == 0 {
            size = len - at;
        }
        if size < header_len {
            return Ok(false); // not an MP4
        }
        if &header[4..8] == b"moov" {
            let mut moov = vec![0u8; (size - header_len).min(64 << 20) as usize];
            f.read_exact(&mut moov).map_err(|e| e.to_string())?;
            // hdlr: size, "hdlr", version/flags, pre_defined, then the handler type.
            return Ok(moov
                .windows(16)
                .any(|w| &w[..4] == b"hdlr" && &w[12..16] == b"soun"));
        }
        at += size;
    }
    Ok(false)
}

/// The bitrate (bit/s) an output asks for, whatever its rate control.
fn bitrate(output: &Value) -> u64 {
    let h264 = &output["videoDescription"]["codecSettings"]["h264Settings"];
    h264["bitrate"]
        .as_u64()
        .or(h264["maxBitrate"].as_u64())
        .unwrap_or(2_000_000)
}

fn scale(output: &Value) -> String {
    let v = &output["videoDescription"];
    match (v["width"].as_u64(), v["height"].as_u64()) {
        (Some(w), Some(h)) => {
            format!("videoscale ! video/x-raw,width={w},height={h},pixel-aspect-ratio=1/1 ! ")
        }
        (None, Some(h)) => format!("videoscale ! video/x-raw,height={h} ! "),
        _ => String::new(),
    }
}

async fn gst(description: String) -> Result<(), String> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new("gst-launch-1.0")
            .kill_on_drop(true)
            .arg("-q")
            .args(shell_words(&description))
            .output(),
    )
    .await
    .map_err(|_| "transcoding took over 5 minutes".to_string())?
    .map_err(|e| format!("gst-launch-1.0: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "gst-launch-1.0 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Splits a pipeline description on spaces; quoted paths keep their spaces.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// An HLS rendition for the master playlist.
struct Rendition {
    base: String,
    bandwidth: u64,
    size: Option<(u64, u64)>,
    /// The audio group it plays with (`AudioRenditionSets`).
    audio_group: Option<String>,
}

/// An audio-only HLS rendition: (group id, name, playlist base name).
struct AudioRendition {
    group: String,
    name: String,
    base: String,
}

fn master_playlist(renditions: &[Rendition], audio: &[AudioRendition]) -> String {
    let mut m = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
    for (i, a) in audio.iter().enumerate() {
        let default = if i == 0 { "YES" } else { "NO" };
        m.push_str(&format!(
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{}\",NAME=\"{}\",DEFAULT={default},AUTOSELECT=YES,URI=\"{}.m3u8\"\n",
            a.group, a.name, a.base
        ));
    }
    for r in renditions {
        let resolution = r
            .size
            .map_or(String::new(), |(w, h)| format!(",RESOLUTION={w}x{h}"));
        let group = r
            .audio_group
            .as_ref()
            .filter(|g| audio.iter().any(|a| &a.group == *g))
            .map_or(String::new(), |g| format!(",AUDIO=\"{g}\""));
        m.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={}{resolution}{group}\n{}.m3u8\n",
            r.bandwidth, r.base
        ));
    }
    m
}

/// Runs every output group; the output group details on success.
pub(crate) async fn run(
    settings: &Value,
    input: &Path,
    s3_root: &Path,
) -> Result<Vec<Value>, String> {
    if !input.is_file() {
        return Err(format!("the input {} does not exist", input.display()));
    }
    let input_audio = has_audio(input)?;
    let name = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("output")
        .to_string();
    let src = format!(
        "filesrc location=\"{}\" ! decodebin name=d ",
        input.display()
    );
    let video_in = "d. ! video/x-raw ! queue ! videoconvert ! ";
    // A decoded stream no output uses still has to go somewhere.
    let drop_audio = if input_audio {
        "d. ! audio/x-raw ! queue ! fakesink sync=false "
    } else {
        ""
    };
    let drop_video = "d. ! video/x-raw ! queue ! fakesink sync=false ";
    let mut details = Vec::new();
    for group in settings["outputGroups"].as_array().into_iter().flatten() {
        let kind = group["outputGroupSettings"]["type"].as_str().unwrap_or("");
        let (key, hls) = match kind {
            "HLS_GROUP_SETTINGS" => ("hlsGroupSettings", true),
            "FILE_GROUP_SETTINGS" => ("fileGroupSettings", false),
            other => {
                return Err(format!(
                    "output group type {other} is not supported by kvs-local"
                ));
            }
        };
        let gs = &group["outputGroupSettings"][key];
        let destination = gs["destination"]
            .as_str()
            .ok_or("an output group has no destination")?;
        let dir = object_path(s3_root, destination)
            .ok_or(format!("{destination} is not an s3:// URL"))?;
        let dir = if destination.ends_with('/') {
            dir
        } else {
            dir.parent().map(Path::to_path_buf).unwrap_or(dir)
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let seconds = gs["segmentLength"].as_u64().unwrap_or(6);
        let hls_sink = |base: &str| {
            // hlssink, not hlssink2: the latter stalls now and then at end of stream.
            format!(
                "mpegtsmux name=mux ! hlssink location=\"{}\" playlist-location=\"{}\" target-duration={seconds} max-files=0 playlist-length=0 ",
                dir.join(format!("{base}_%05d.ts")).display(),
                dir.join(format!("{base}.m3u8")).display()
            )
        };
        let mut output_details = Vec::new();
        let mut renditions = Vec::new();
        let mut audio_renditions = Vec::new();
        for output in group["outputs"].as_array().into_iter().flatten() {
            let modifier = output["nameModifier"].as_str().unwrap_or("");
            let base = format!("{name}{modifier}");
            let audio = Audio::of(output)?.filter(|_| input_audio);
            let hls_settings = &output["outputSettings"]["hlsSettings"];
            if output["videoDescription"].is_null() {
                // Audio only: an alternate rendition (HLS) or an audio file.
                let Some(audio) = audio else {
                    continue; // the input has no audio to make it of
                };
                if !hls {
                    return Err(
                        "audio-only file outputs are not supported by kvs-local".to_string()
                    );
                }
                // hlssink cuts segments on video keyframes only, so an audio rendition is one
                // segment (hlssink2 would cut it, but stalls at end of stream now and then).
                gst(format!(
                    "{src}{drop_video}{}{}",
                    audio.encode(),
                    hls_sink(&base)
                ))
                .await?;
                let description = &output["audioDescriptions"][0];
                audio_renditions.push(AudioRendition {
                    group: hls_settings["audioGroupId"]
                        .as_str()
                        .unwrap_or("program_audio")
                        .to_string(),
                    name: description["streamName"]
                        .as_str()
                        .or(description["audioSourceName"].as_str())
                        .unwrap_or("Audio")
                        .to_string(),
                    base: base.clone(),
                });
                output_details
                    .push(json!({ "outputFilePaths": [format!("{destination}{base}.m3u8")] }));
                continue;
            }
            let kbps = bitrate(output) / 1000;
            let encode = format!(
                "{}x264enc bitrate={kbps} key-int-max=60 speed-preset=veryfast ! h264parse ! queue ! ",
                scale(output)
            );
            let codec = output["videoDescription"]["codecSettings"]["codec"]
                .as_str()
                .unwrap_or("");
            // The audio joins the output's muxer; unused audio is dropped.
            let audio_branch =
                audio.map_or(drop_audio.to_string(), |a| format!("{}mux. ", a.encode()));
            if hls {
                gst(format!(
                    "{src}{video_in}{encode}{}{audio_branch}",
                    hls_sink(&base)
                ))
                .await?;
                let v = &output["videoDescription"];
                renditions.push(Rendition {
                    base: base.clone(),
                    bandwidth: kbps * 1000 + audio.map_or(0, |a| a.bitrate),
                    size: v["width"].as_u64().zip(v["height"].as_u64()),
                    audio_group: hls_settings["audioRenditionSets"]
                        .as_str()
                        .map(str::to_string),
                });
            } else if codec == "FRAME_CAPTURE" {
                let fc = &output["videoDescription"]["codecSettings"]["frameCaptureSettings"];
                let (num, den) = (
                    fc["framerateNumerator"].as_u64().unwrap_or(1),
                    fc["framerateDenominator"].as_u64().unwrap_or(1),
                );
                let max = fc["maxCaptures"]
                    .as_u64()
                    .map_or(String::new(), |m| format!("identity eos-after={m} ! "));
                gst(format!(
                    "{src}{video_in}{}videorate ! video/x-raw,framerate={num}/{den} ! {max}jpegenc ! multifilesink location=\"{}\" {drop_audio}",
                    scale(output),
                    dir.join(format!("{base}.%07d.jpg")).display()
                ))
                .await?;
            } else {
                gst(format!(
                    "{src}{video_in}{encode}mp4mux name=mux ! filesink location=\"{}\" {audio_branch}",
                    dir.join(format!("{base}.mp4")).display()
                ))
                .await?;
            }
            output_details.push(json!({ "outputFilePaths": [format!("{destination}{base}")] }));
        }
        if hls && !renditions.is_empty() {
            std::fs::write(
                dir.join(format!("{name}.m3u8")),
                master_playlist(&renditions, &audio_renditions),
            )
            .map_err(|e| e.to_string())?;
        }
        details.push(json!({ "type": kind, "outputDetails": output_details,
                             "playlistFilePaths": if hls { json!([format!("{destination}{name}.m3u8")]) } else { json!(null) } }));
    }
    Ok(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_descriptions_are_read_or_refused() {
        let out = json!({ "audioDescriptions": [{ "codecSettings": { "codec": "AAC",
            "aacSettings": { "bitrate": 64000, "sampleRate": 44100, "codingMode": "CODING_MODE_1_0" } } }] });
        assert_eq!(
            Audio::of(&out),
            Ok(Some(Audio {
                bitrate: 64000,
                rate: 44100,
                channels: 1
            }))
        );
        assert_eq!(Audio::of(&json!({})), Ok(None));
        let mp3 = json!({ "audioDescriptions": [{ "codecSettings": { "codec": "MP3" } }] });
        assert!(Audio::of(&mp3).unwrap_err().contains("MP3"));
    }

    #[test]
    fn the_master_playlist_names_the_audio_group() {
        let m = master_playlist(
            &[Rendition {
                base: "c_720".into(),
                bandwidth: 3_000_000,
                size: Some((1280, 720)),
                audio_group: Some("program_audio".into()),
            }],
            &[AudioRendition {
                group: "program_audio".into(),
                name: "Audio".into(),
                base: "c_audio".into(),
            }],
        );
        assert!(m.contains("#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"program_audio\""));
        assert!(m.contains("URI=\"c_audio.m3u8\""));
        assert!(m.contains("RESOLUTION=1280x720,AUDIO=\"program_audio\"\nc_720.m3u8"));
        // Without the audio rendition, no dangling group.
        let m = master_playlist(
            &[Rendition {
                base: "c_720".into(),
                bandwidth: 1,
                size: None,
                audio_group: Some("program_audio".into()),
            }],
            &[],
        );
        assert!(!m.contains("AUDIO="));
    }
}
