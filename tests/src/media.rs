//! Media checks by tools no one here wrote: ffprobe (streams, durations, frame counts),
//! ffmpeg (a full decode, every error reported), mkvinfo (Matroska structure).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// `ffprobe` of a media file: (codec, width, height, duration in seconds, frame count).
pub fn ffprobe(path: &Path) -> Result<(String, u32, u32, f64, u64)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(path)
        .output()
        .context("running ffprobe (scripts/install-deps installs ffmpeg)")?;
    if !out.status.success() {
        bail!(
            "ffprobe rejected {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let s = &v["streams"][0];
    let num = |x: &serde_json::Value| {
        x.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .or_else(|| x.as_f64())
    };
    Ok((
        s["codec_name"].as_str().unwrap_or_default().to_string(),
        s["width"].as_u64().unwrap_or(0) as u32,
        s["height"].as_u64().unwrap_or(0) as u32,
        num(&v["format"]["duration"]).unwrap_or(0.0),
        s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    ))
}

/// One stream of a media file as ffprobe sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// `video` or `audio`.
    pub kind: String,
    pub codec: String,
    pub start: f64,
    pub duration: f64,
    pub sample_rate: u32,
    pub channels: u32,
}

/// What ffprobe sees in a media file: (kind, codec) per stream, in file order.
pub fn kinds(streams: &[Stream]) -> Vec<(&str, &str)> {
    streams
        .iter()
        .map(|s| (s.kind.as_str(), s.codec.as_str()))
        .collect()
}

/// Every stream of a media file (ffprobe, counting packets), in file order.
pub fn ffprobe_streams(path: &Path) -> Result<Vec<Stream>> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_streams"])
        .arg(path)
        .output()
        .context("running ffprobe (scripts/install-deps installs ffmpeg)")?;
    ensure!(
        out.status.success(),
        "ffprobe rejected {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let num = |x: &serde_json::Value| {
        x.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .or_else(|| x.as_f64())
            .unwrap_or(0.0)
    };
    Ok(v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Stream {
            kind: s["codec_type"].as_str().unwrap_or_default().to_string(),
            codec: s["codec_name"].as_str().unwrap_or_default().to_string(),
            start: num(&s["start_time"]),
            duration: num(&s["duration"]),
            sample_rate: num(&s["sample_rate"]) as u32,
            channels: s["channels"].as_u64().unwrap_or(0) as u32,
        })
        .collect())
}

/// `mkvinfo --all` (mkvtoolnix) output of a Matroska file; fails if mkvinfo reports an error.
pub fn mkvinfo(path: &Path) -> Result<String> {
    let out = Command::new("mkvinfo")
        .arg("--all")
        .arg(path)
        .output()
        .context("running mkvinfo (scripts/install-deps installs mkvtoolnix)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success() && !text.contains("Error:"),
        "mkvinfo rejected {}: {text}",
        path.display()
    );
    Ok(text)
}

/// A full decode of every stream with ffmpeg: the errors it reports (empty when the file
/// decodes cleanly). Fails only when ffmpeg cannot open the file at all.
pub fn decode_errors(path: &Path) -> Result<String> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        // Each stream keeps its own time base: a live camera's jittered frame times would
        // otherwise collide on the null muxer's nominal frame rate, a muxing complaint
        // that says nothing about the media.
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .context("running ffmpeg (scripts/install-deps installs ffmpeg)")?;
    let errors = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "ffmpeg could not decode {}: {errors}",
        path.display()
    );
    Ok(errors)
}
