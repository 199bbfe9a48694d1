//! `make demo`'s producer until the agent binary exists: encodes a GStreamer test pattern
//! (with a burned-in clock), fragments it with the agent's Matroska writer, streams it with
//! the agent's PutMedia client into a running kvs-local, then fetches the clip back through
//! the AWS SDK's GetClip and writes it to `--out`.
//!
//!     demo_ingest --endpoint http://127.0.0.1:4567 --stream demo-cam --seconds 10 --out DIR

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_kinesisvideoarchivedmedia::primitives::DateTime;
use aws_sdk_kinesisvideoarchivedmedia::types::{
    ClipFragmentSelector, ClipFragmentSelectorType, ClipTimestampRange,
};
use kvs_edge_agent::putmedia::AckEvent;
use kvs_edge_tests::*;

struct Args {
    endpoint: String,
    stream: String,
    seconds: u32,
    out: PathBuf,
}

fn args() -> Result<Args> {
    let mut a = Args {
        endpoint: String::new(),
        stream: "demo-cam".into(),
        seconds: 10,
        out: PathBuf::from("."),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--endpoint" => a.endpoint = value,
            "--stream" => a.stream = value,
            "--seconds" => a.seconds = value.parse().context("--seconds")?,
            "--out" => a.out = value.into(),
            other => bail!("unknown flag {other}"),
        }
    }
    if a.endpoint.is_empty() {
        bail!("--endpoint is required");
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let kvs = kvs_client(&a.endpoint, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY);
    if kvs
        .describe_stream()
        .stream_name(&a.stream)
        .send()
        .await
        .is_err()
    {
        create_stream(&kvs, &a.stream, 24).await?;
        println!("created stream {}", a.stream);
    }
    let endpoint = kvs
        .get_data_endpoint()
        .stream_name(&a.stream)
        .api_name(aws_sdk_kinesisvideo::types::ApiName::PutMedia)
        .send()
        .await?
        .data_endpoint
        .context("no data endpoint")?;

    println!(
        "encoding {} s of test pattern with GStreamer (x264)…",
        a.seconds
    );
    let video = Encoded::gstreamer(a.seconds * 25, 25, 50, 640, 360)?;
    let start = now_ms() - i64::from(a.seconds) * 1000;
    let (header, fragments) = video.fragments(start, 2000)?;
    let body = fragments.iter().fold(header, |mut b, f| {
        b.extend_from_slice(&f.bytes);
        b
    });
    let acks = put_media(&endpoint, &a.stream, vec![body], Duration::from_secs(60)).await?;
    let persisted = acks_of(&acks, AckEvent::Persisted).len();
    println!(
        "PutMedia: {} fragments sent, {persisted} PERSISTED",
        fragments.len()
    );
    if persisted != fragments.len() {
        bail!("not every fragment was persisted: {acks:?}");
    }

    let clip = archived_client(&endpoint)
        .get_clip()
        .stream_name(&a.stream)
        .clip_fragment_selector(
            ClipFragmentSelector::builder()
                .fragment_selector_type(ClipFragmentSelectorType::ProducerTimestamp)
                .timestamp_range(
                    ClipTimestampRange::builder()
                        .start_timestamp(DateTime::from_millis(start))
                        .end_timestamp(DateTime::from_millis(start + i64::from(a.seconds) * 1000))
                        .build()?,
                )
                .build()?,
        )
        .send()
        .await?;
    let mp4 = clip.payload.collect().await?.into_bytes();
    std::fs::create_dir_all(&a.out)?;
    let path = a.out.join(format!("{}.mp4", a.stream));
    std::fs::write(&path, &mp4)?;
    let (codec, w, h, duration, frames) = ffprobe(&path)?;
    println!(
        "GetClip: {} ({codec} {w}x{h}, {duration:.1} s, {frames} frames)",
        path.display()
    );
    Ok(())
}
