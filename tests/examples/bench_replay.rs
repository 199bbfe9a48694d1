//! `make bench`: batch replay over 1 000 and 10 000 listed clips in an in-process kvs-local
//! (S3, and MediaConvert with its Default queue paused, so jobs are submitted and counted,
//! not transcoded). The release archiver runs under GNU time:
//!
//! 1. `replay --dry-run` (listing, filters, one job-record read and one HEAD per clip),
//! 2. `replay` with no rate cap at concurrency 16 (the submission rate the client sustains),
//!
//! each with its wall time, tasks per second and peak RSS: memory must not grow with the
//! number of objects. Results are printed as Markdown rows for docs/benchmarks.md.
//!
//!     cargo build --release -p kvs-edge-archiver
//!     cargo run --release -p kvs-edge-tests --example bench_replay

use anyhow::{Result, ensure};
use aws_sdk_s3::primitives::ByteStream;
use kvs_edge_tests::*;

async fn seed(s3: &aws_sdk_s3::Client, prefix: &str, n: usize) -> Result<()> {
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..n {
        if puts.len() >= 32 {
            puts.join_next().await.expect("a put")??;
        }
        let s3 = s3.clone();
        let key = format!(
            "clips/{prefix}/2024/02/17/motion-20240217T{:02}{:02}{:02}Z-20240217T235959Z.mp4",
            i / 3600 % 24,
            i / 60 % 60,
            i % 60
        );
        puts.spawn(async move {
            s3.put_object()
                .bucket("clips")
                .key(key)
                .metadata("stream", "cam")
                .body(ByteStream::from_static(b"clip"))
                .send()
                .await
                .map(|_| ())
        });
    }
    while let Some(r) = puts.join_next().await {
        r??;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let local = Local::start_with(|c| {
        c.buckets = vec!["clips".into()];
        c.paused_queues = vec!["Default".into()];
    })
    .await?;
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            DEFAULT_ACCESS_KEY,
            DEFAULT_SECRET_KEY,
            None,
            None,
            "bench",
        ))
        .endpoint_url(local.url())
        .force_path_style(true)
        .build();
    let s3 = aws_sdk_s3::Client::from_conf(conf);
    let config = write_archiver_config(
        local.dir.path(),
        "archiver.toml",
        &local.url(),
        &local.url(),
        &mediaconvert_at(&local.url()),
    )?;
    println!("| objects | run | wall | tasks/s | peak RSS |");
    println!("|---|---|---|---|---|");
    for (stream, n) in [("cam-1k", 1_000), ("cam-10k", 10_000)] {
        seed(&s3, stream, n).await?;
        let prefix = format!("clips/{stream}/");
        let (took, rss, out) =
            run_archiver_timed(&config, &["replay", "--dry-run", "--prefix", &prefix])?;
        ensure!(
            out.lines().count() == n,
            "dry run listed {}",
            out.lines().count()
        );
        println!(
            "| {n} | dry run (list, read records, HEAD) | {:.1} s | {:.0} | {rss:.1} MiB |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
        let report = local.dir.path().join(format!("report-{stream}"));
        let (took, rss, out) = run_archiver_timed(
            &config,
            &[
                "replay",
                "--prefix",
                &prefix,
                "--report",
                report.to_str().unwrap_or_default(),
                "--rate",
                "0",
                "--concurrency",
                "16",
            ],
        )?;
        let summary: serde_json::Value = serde_json::from_str(out.trim())?;
        ensure!(
            summary["tasks"]["submitted"] == n,
            "not all submitted: {summary}"
        );
        println!(
            "| {n} | replay, no rate cap, concurrency 16 | {:.1} s | {:.0} | {rss:.1} MiB |",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }
    Ok(())
}
