//! `make demo`'s last step: the clip of everything a stream holds, through the AWS SDK
//! (ListFragments for the range, then GetClip), written to `--out` and described by ffprobe.
//!
//!     fetch_clip --endpoint http://127.0.0.1:4567 --stream demo-cam --out DIR

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kvs_edge_tests::*;

#[tokio::main]
async fn main() -> Result<()> {
    let (mut endpoint, mut stream, mut out) =
        (String::new(), "demo-cam".to_string(), PathBuf::from("."));
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--endpoint" => endpoint = value,
            "--stream" => stream = value,
            "--out" => out = value.into(),
            other => bail!("unknown flag {other}"),
        }
    }
    let media = archived_client(&endpoint);
    let fragments = list_all_fragments(&media, &stream).await?;
    let times: Vec<i64> = fragments
        .iter()
        .filter_map(|f| f.producer_timestamp.and_then(|t| t.to_millis().ok()))
        .collect();
    let (Some(&first), Some(&last)) = (times.iter().min(), times.iter().max()) else {
        bail!("stream {stream} holds no fragments")
    };
    let clip = get_clip(&media, &stream, first - 1, last + 1).await?;
    let mp4 = clip.1;
    std::fs::create_dir_all(&out)?;
    let path = out.join(format!("{stream}.mp4"));
    std::fs::write(&path, &mp4)?;
    let (codec, w, h, duration, frames) = ffprobe(&path)?;
    println!(
        "GetClip: {} fragments → {} ({codec} {w}x{h}, {duration:.1} s, {frames} frames)",
        fragments.len(),
        path.display()
    );
    Ok(())
}
