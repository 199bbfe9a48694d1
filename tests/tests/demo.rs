//! `make demo`'s script on the binaries this build made: the whole offline pipeline (a
//! test-pattern camera with a test tone → agent → kvs-local → alarm → archiver → clip →
//! MediaConvert) runs to the end, and what it prints is true: the clip it names exists and
//! holds H.264 video and AAC audio, and so do the HLS and MP4 outputs it points to; the
//! on-demand camera's clip, pulled from the device, too, and it uploaded less than it
//! recorded.

use std::process::Command;

use kvs_edge_tests::*;

#[test]
fn make_demo_streams_a_tone_and_prints_a_clip_with_audio() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let target = agent_binary()?
        .parent()
        .and_then(|d| d.parent())
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no target dir"))?;
    let run = Command::new(repo_root().join("scripts/demo"))
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", &target)
        .env("DEMO_OUT", out.path().join("demo"))
        .env("DEMO_PRE_ROLL", "4")
        .env("DEMO_POST_ROLL", "4")
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    anyhow::ensure!(
        run.status.success(),
        "scripts/demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // "  clip on disk   <path>" and the clip line's description of its streams.
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .map(|rest| rest.trim().to_string())
            .ok_or_else(|| anyhow::anyhow!("no '{label}' line in:\n{stdout}"))
    };
    let described = field("clip in S3")?;
    assert!(
        described.contains("h264 640x360") && described.contains("aac 48000 Hz"),
        "{described}"
    );
    let clip = std::path::PathBuf::from(field("clip on disk")?);
    let streams = ffprobe_streams(&clip)?;
    assert_eq!(kinds(&streams), [("video", "h264"), ("audio", "aac")]);
    let hls = field("HLS")?;
    let master = std::path::PathBuf::from(hls.split_whitespace().next().unwrap_or_default());
    let playlist = std::fs::read_to_string(&master)?;
    assert!(playlist.contains("TYPE=AUDIO"), "{playlist}");
    // The on-demand camera: its clip was pulled from the device, and it uploaded less than
    // it recorded.
    let pulled = std::path::PathBuf::from(field("on disk")?);
    let streams = ffprobe_streams(&pulled)?;
    assert_eq!(kinds(&streams), [("video", "h264"), ("audio", "aac")]);
    let uploaded = field("uploaded")?;
    let numbers: Vec<u64> = uploaded
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [continuous, on_demand, recorded] = numbers[..] else {
        anyhow::bail!("unexpected 'uploaded' line: {uploaded}")
    };
    assert!(continuous > 0 && on_demand > 0, "{uploaded}");
    assert!(on_demand < recorded, "only the window went: {uploaded}");
    let mp4 = std::path::PathBuf::from(field("MP4")?);
    let streams = ffprobe_streams(&mp4)?;
    assert_eq!(
        streams.iter().map(|s| s.codec.as_str()).collect::<Vec<_>>(),
        ["h264", "aac"]
    );
    Ok(())
}
