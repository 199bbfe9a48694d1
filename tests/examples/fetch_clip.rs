//! `make demo`'s last step: the clip of everything a stream holds, through the AWS SDK
//! (ListFragments for the range, then GetClip), written to `--out` and described by ffprobe.
//!
//!     fetch_clip --endpoint http://127.0.0.1:4567 --stream demo-cam --out DIR

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use aws_sdk_kinesisvideoarchivedmedia::primitives::DateTime;
use aws_sdk_kinesisvideoarchivedmedia::types::{
    ClipFragmentSelector, ClipFragmentSelectorType, ClipTimestampRange,
};
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
    let mut fragments = Vec::new();
    let mut token = None;
    loop {
        let page = media
            .list_fragments()
            .stream_name(&stream)
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await?;
        fragments.extend(page.fragments.unwrap_or_default());
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    let times: Vec<i64> = fragments
        .iter()
        .filter_map(|f| f.producer_timestamp.and_then(|t| t.to_millis().ok()))
        .collect();
    let (Some(&first), Some(&last)) = (times.iter().min(), times.iter().max()) else {
        bail!("stream {stream} holds no fragments")
    };
    let clip = media
        .get_clip()
        .stream_name(&stream)
        .clip_fragment_selector(
            ClipFragmentSelector::builder()
                .fragment_selector_type(ClipFragmentSelectorType::ProducerTimestamp)
                .timestamp_range(
                    ClipTimestampRange::builder()
                        .start_timestamp(DateTime::from_millis(first - 1))
                        .end_timestamp(DateTime::from_millis(last + 1))
                        .build()?,
                )
                .build()?,
        )
        .send()
        .await?;
    let mp4 = clip.payload.collect().await?.into_bytes();
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
