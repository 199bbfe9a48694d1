//! Batch replay, end to end: `kvs-edge-archiver replay` over clips stored in kvs-local's S3
//! (and moto's, for listing, filters, inventories and lists), MediaConvert jobs submitted to
//! kvs-local (its Default queue paused, so the jobs are counted, not transcoded), the
//! completion report, resuming after the process is killed, throttling absorbed, and the
//! S3 Batch Operations Lambda handler answering the published invocations.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use kvs_edge_tests::*;
use serde_json::{Value, json};

const TEMPLATE: &str = "clips/{stream}/{yyyy}/{mm}/{dd}/{alarm}-{start}-{end}.mp4";

/// The key the archiver gives clip `i` (four streams, a clip a minute from `day`).
fn clip(i: usize, day: &str) -> (String, String) {
    let stream = format!("cam-{}", i % 4);
    let start = chrono::DateTime::parse_from_rfc3339(day)
        .unwrap()
        .with_timezone(&chrono::Utc)
        + chrono::Duration::minutes(i as i64);
    let key = kvs_edge_archiver::decide::clip_key(
        TEMPLATE,
        &stream,
        "motion",
        start,
        start + chrono::Duration::seconds(180),
    );
    (stream, key)
}

/// Stores clips (small stand-in bodies: the paused queue never reads them) with the
/// metadata the archiver writes, plus `extra` objects (records, outputs) as they are.
async fn seed(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    clips: &[(String, String)],
    extra: &[(String, String)],
) -> anyhow::Result<()> {
    let mut puts = tokio::task::JoinSet::new();
    let mut all: Vec<(String, Option<String>, Vec<u8>)> = clips
        .iter()
        .map(|(stream, key)| (key.clone(), Some(stream.clone()), b"clip".to_vec()))
        .collect();
    all.extend(
        extra
            .iter()
            .map(|(k, body)| (k.clone(), None, body.as_bytes().to_vec())),
    );
    for (key, stream, body) in all {
        if puts.len() >= 16 {
            puts.join_next().await.unwrap()??;
        }
        let s3 = s3.clone();
        let bucket = bucket.to_string();
        puts.spawn(async move {
            let mut put = s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(ByteStream::from(body));
            if let Some(stream) = stream {
                put = put
                    .metadata("stream", stream)
                    .metadata("alarm-name", "motion");
            }
            put.send().await.map(|_| ())
        });
    }
    while let Some(r) = puts.join_next().await {
        r??;
    }
    Ok(())
}

/// Transcoding stays off for live clips; `replay` hands clips to the MediaConvert at `mc_url`.
fn config(dir: &Path, s3_url: &str, mc_url: &str) -> anyhow::Result<PathBuf> {
    let transcode = mediaconvert_at(mc_url).replace("mode = \"mediaconvert\"", "mode = \"off\"");
    write_archiver_config(dir, "archiver.toml", mc_url, s3_url, &transcode)
}

/// The report's rows: (key, result code, job id).
fn report_rows(dir: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(dir.join("report.csv"))?;
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        assert_eq!(rec.len(), 7, "{rec:?}");
        assert!(rec[0].ends_with("clips"), "{rec:?}");
        // S3 Batch Operations' columns: the HTTP status, the result code, the message
        // (which ends with the job id).
        assert_eq!(&rec[4], "200");
        rows.push((
            kvs_edge_archiver::batch::decode_key(&rec[1]).map_err(anyhow::Error::msg)?,
            rec[5].to_string(),
            rec[6]
                .rsplit_once(": job ")
                .map_or("", |(_, job)| job)
                .to_string(),
        ));
    }
    Ok(rows)
}

/// kvs-local's MediaConvert jobs as boto3 (a second client) lists them: clip key → job ids.
fn jobs_by_clip(url: &str) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let out = python(
        r#"
import sys, json, boto3
kw = dict(region_name="us-east-1", aws_access_key_id="kvslocal",
          aws_secret_access_key="kvslocal-secret")
mc = boto3.client("mediaconvert", endpoint_url=sys.argv[1], **kw)
url = mc.describe_endpoints()["Endpoints"][0]["Url"]
mc = boto3.client("mediaconvert", endpoint_url=url, **kw)
print(json.dumps([[j["UserMetadata"]["clip_key"], j["Id"], j["Status"]]
                  for j in mc.list_jobs()["Jobs"]]))
"#,
        &[url],
    )?;
    let mut by_clip: HashMap<String, Vec<String>> = HashMap::new();
    for j in serde_json::from_str::<Vec<(String, String, String)>>(out.trim())? {
        assert_eq!(j.2, "SUBMITTED", "the paused queue holds every job");
        by_clip.entry(j.0).or_default().push(j.1);
    }
    Ok(by_clip)
}

fn summary(dir: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        dir.join("summary.json"),
    )?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clips_replay_and_a_killed_run_resumes_without_duplicate_jobs()
-> anyhow::Result<()> {
    let (local, s3, cfg) = paused_local().await?;
    let clips: Vec<_> = (0..1000).map(|i| clip(i, "2024-02-17T00:00:00Z")).collect();
    // What the live hand-off left: job records for some clips, and outputs, which a replay
    // must neither take for clips nor be stopped by.
    let extra: Vec<(String, String)> = clips
        .iter()
        .take(50)
        .flat_map(|(_, k)| {
            let stem = k.trim_end_matches(".mp4");
            [
                (
                    format!("{stem}.job.json"),
                    json!({"job": "live-1"}).to_string(),
                ),
                (format!("transcoded/{stem}/mp4/x.mp4"), "out".to_string()),
            ]
        })
        .collect();
    seed(&s3, "clips", &clips, &extra).await?;
    let report = local.dir.path().join("report");
    let args = [
        "replay",
        "--report",
        report.to_str().unwrap(),
        "--concurrency",
        "8",
        "--rate",
        "1000",
        "--progress-every",
        "1",
    ];

    // Killed (SIGKILL: no chance to tidy up) once a third of the report is written.
    let mut first = archiver_configured(&cfg)?
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rows = std::fs::read_to_string(report.join("report.csv"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if rows >= 330 {
            break;
        }
        assert!(first.try_wait()?.is_none(), "the run ended before the kill");
        assert!(
            std::time::Instant::now() < deadline,
            "no progress: {rows} rows"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill()?;
    first.wait()?;
    let interrupted = summary(&report)?;
    assert_eq!(interrupted["state"], "running", "killed, it could not say");
    let run = interrupted["run"].as_str().unwrap().to_string();
    let rows_before = report_rows(&report)?.len();
    assert!(rows_before < 1000);

    // The rerun with the same report.
    let out = archiver_configured(&cfg)?.args(args).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("replay: ") && stderr.contains("done"),
        "plain progress lines off a terminal: {stderr}"
    );
    let done = summary(&report)?;
    assert_eq!(done["state"], "complete");
    assert_eq!(done["run"], run.as_str(), "the resumed run keeps its id");
    let tasks = &done["tasks"];
    assert_eq!(tasks["listed"], 1000, "{done}");
    assert_eq!(tasks["temporary_failure"], 0, "{done}");
    assert_eq!(tasks["permanent_failure"], 0, "{done}");
    assert_eq!(
        tasks["succeeded_before"].as_u64().unwrap() + tasks["submitted"].as_u64().unwrap(),
        1000,
        "{done}"
    );
    assert!(tasks["succeeded_before"].as_u64().unwrap() >= 330);

    // The report: every clip once, succeeded, with its job.
    let rows = report_rows(&report)?;
    let keys: BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let expected: BTreeSet<&str> = clips.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(keys, expected);
    assert_eq!(rows.len(), 1000, "no task reported twice");
    assert!(rows.iter().all(|r| r.1 == "Succeeded" && !r.2.is_empty()));

    // No duplicate work: one job per clip in MediaConvert, the one the report names, and
    // each clip's job record says this run submitted it.
    let jobs = jobs_by_clip(&local.url())?;
    assert_eq!(jobs.len(), 1000);
    assert!(
        jobs.values().all(|j| j.len() == 1),
        "{:?}",
        jobs.iter().find(|j| j.1.len() > 1)
    );
    for (key, _, job) in &rows {
        assert_eq!(&jobs[key][0], job, "{key}");
    }
    let stem = clips[0].1.trim_end_matches(".mp4");
    let record: Value = serde_json::from_slice(&std::fs::read(
        local.dir.path().join(format!("s3/clips/{stem}.job.json")),
    )?)?;
    assert_eq!(record["replay"], run.as_str());
    assert_eq!(record["previous"], "live-1", "the live job is remembered");

    // A third run has nothing left to do.
    let out = archiver_configured(&cfg)?.args(args).output()?;
    assert!(out.status.success());
    assert_eq!(summary(&report)?["tasks"]["submitted"], 0);
    assert_eq!(jobs_by_clip(&local.url())?.len(), 1000);
    Ok(())
}

/// kvs-local with a `clips` bucket and its MediaConvert Default queue paused (jobs are
/// counted, not transcoded); an S3 client and an archiver configuration for it.
async fn paused_local() -> anyhow::Result<(Local, aws_sdk_s3::Client, PathBuf)> {
    let local = Local::start_with(|c| {
        c.buckets = vec!["clips".into()];
        c.paused_queues = vec!["Default".into()];
    })
    .await?;
    let s3 = local_s3(&local);
    let cfg = config(local.dir.path(), &local.url(), &local.url())?;
    Ok((local, s3, cfg))
}

fn local_s3(local: &Local) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            kvs_local::DEFAULT_ACCESS_KEY,
            kvs_local::DEFAULT_SECRET_KEY,
            None,
            None,
            "test",
        ))
        .endpoint_url(local.url())
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_absorbed_by_retries() -> anyhow::Result<()> {
    let (local, s3, cfg) = paused_local().await?;
    // CreateJob: five 503s, then at most 10 per second (429 TooManyRequestsException).
    local.server.set_faults(serde_json::from_value(json!({
        "http_error": {"status": 503, "error_type": "ServiceUnavailableException",
                       "operations": ["CreateJob"], "count": 5},
        "throttle": {"operations": ["CreateJob"], "max_per_second": 10},
    }))?);
    let clips: Vec<_> = (0..100).map(|i| clip(i, "2024-03-01T00:00:00Z")).collect();
    seed(&s3, "clips", &clips, &[]).await?;
    let report = local.dir.path().join("report");
    let out = archiver_configured(&cfg)?
        .args(["replay", "--report", report.to_str().unwrap()])
        .args(["--concurrency", "16", "--rate", "100", "--attempts", "10"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("TooManyRequestsException") && stderr.contains("retrying"),
        "throttled and retried: {stderr}"
    );
    assert!(stderr.contains("ServiceUnavailableException"));
    let rows = report_rows(&report)?;
    assert_eq!(rows.len(), 100);
    assert!(rows.iter().all(|r| r.1 == "Succeeded"), "{rows:?}");
    let jobs = jobs_by_clip(&local.url())?;
    assert_eq!(jobs.len(), 100);
    assert!(jobs.values().all(|j| j.len() == 1));

    // Throttled beyond the attempts: TemporaryFailure rows (S3 Batch Operations' code for
    // "retry me"), exit status 1, and a rerun with the same report finishes the job.
    local.server.set_faults(serde_json::from_value(json!({
        "http_error": {"status": 429, "error_type": "TooManyRequestsException",
                       "operations": ["CreateJob"]},
    }))?);
    let more: Vec<_> = (100..110)
        .map(|i| clip(i, "2024-03-01T00:00:00Z"))
        .collect();
    seed(&s3, "clips", &more, &[]).await?;
    let args = [
        "replay",
        "--report",
        report.to_str().unwrap(),
        "--attempts",
        "2",
    ];
    let out = archiver_configured(&cfg)?.args(args).output()?;
    assert_eq!(out.status.code(), Some(1));
    let failed: Vec<_> = report_rows(&report)?
        .into_iter()
        .filter(|r| r.1 == "TemporaryFailure")
        .collect();
    assert_eq!(failed.len(), 10, "{failed:?}");
    assert_eq!(summary(&report)?["tasks"]["temporary_failure"], 10);
    local.server.set_faults(Default::default());
    let out = archiver_configured(&cfg)?.args(args).output()?;
    assert!(out.status.success());
    let s = summary(&report)?;
    assert_eq!(
        (
            s["tasks"]["succeeded_before"].clone(),
            s["tasks"]["submitted"].clone()
        ),
        (json!(100), json!(10))
    );
    assert_eq!(jobs_by_clip(&local.url())?.len(), 110);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_job_records_fail_for_good_and_runs_never_share_an_id() -> anyhow::Result<()> {
    let (local, s3, cfg) = paused_local().await?;
    let clips: Vec<_> = (0..3).map(|i| clip(i, "2024-04-01T00:00:00Z")).collect();
    let broken = format!("{}.job.json", clips[0].1.trim_end_matches(".mp4"));
    seed(&s3, "clips", &clips, &[(broken, "{not json".to_string())]).await?;

    // Two report directories started at once: two runs, each submitting every clip.
    let runs: Vec<PathBuf> = ["report-a", "report-b"]
        .iter()
        .map(|d| local.dir.path().join(d))
        .collect();
    let children = runs
        .iter()
        .map(|report| {
            archiver_configured(&cfg)?
                .args(["replay", "--report", report.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for mut child in children {
        // A task failed for good: exit status 1.
        assert_eq!(child.wait()?.code(), Some(1));
    }
    let (a, b) = (summary(&runs[0])?, summary(&runs[1])?);
    assert_ne!(a["run"], b["run"], "one run id each");
    for report in &runs {
        let rows = report_rows(report)?;
        assert_eq!(rows.len(), 3, "{rows:?}");
        let bad = rows.iter().find(|r| r.0 == clips[0].1).unwrap();
        assert_eq!(
            bad.1, "PermanentFailure",
            "a record that is not JSON stays so"
        );
        assert_eq!(
            rows.iter().filter(|r| r.1 == "Succeeded").count(),
            2,
            "{rows:?}"
        );
        let text = std::fs::read_to_string(report.join("report.csv"))?;
        assert!(text.contains("is not JSON"), "the reason is said: {text}");
    }
    let jobs = jobs_by_clip(&local.url())?;
    assert_eq!(jobs.len(), 2);
    assert!(
        jobs.values().all(|j| j.len() == 2),
        "each run submitted: {jobs:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_replays_offline_and_what_it_needs_is_checked_first()
-> anyhow::Result<()> {
    let local = Local::start_with(|c| {
        c.buckets = vec!["kvs-edge-clips".into()];
        c.paused_queues = vec!["Default".into()];
    })
    .await?;
    let s3 = local_s3(&local);
    let template = "clips/{stream}/{yyyy}/{mm}/{dd}/{alarm}-{start}-{end}.mp4";
    let at = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")?.to_utc();
    let key = kvs_edge_archiver::decide::clip_key(
        template,
        "garage-cam",
        "motion",
        at,
        at + chrono::Duration::seconds(180),
    );
    seed(
        &s3,
        "kvs-edge-clips",
        &[("garage-cam".into(), key.clone())],
        &[],
    )
    .await?;
    // The example as it is, but for kvs-local's port.
    let example = std::fs::read_to_string(repo_root().join("archiver/examples/local.toml"))?
        .replace("http://127.0.0.1:4567", &local.url());
    let cfg = local.dir.path().join("example.toml");
    std::fs::write(&cfg, &example)?;
    let report = local.dir.path().join("report");
    let out = archiver_configured(&cfg)?
        .args(["replay", "--report", report.to_str().unwrap()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = report_rows(&report)?;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str()),
        (key.as_str(), "Succeeded")
    );
    assert!(!rows[0].2.is_empty(), "the job id is in the message");

    // Without the role, or with MediaConvert unreachable: one clear error, before any task.
    for (broken, says) in [
        (
            example.replace(
                "role_arn = \"arn:aws:iam::000000000000:role/MediaConvertRole\"\n",
                "",
            ),
            "transcode.role_arn",
        ),
        (
            // The last line is [transcode]'s endpoint: a port nobody listens on.
            format!(
                "{}endpoint_url = \"http://127.0.0.1:{}\"\n",
                &example[..example.rfind("endpoint_url = ").unwrap()],
                free_port()?
            ),
            "DescribeEndpoints",
        ),
    ] {
        let cfg = local.dir.path().join("broken.toml");
        std::fs::write(&cfg, &broken)?;
        let report = local.dir.path().join(format!("report-{says}"));
        let out = archiver_configured(&cfg)?
            .args([
                "replay",
                "--report",
                report.to_str().unwrap(),
                "--attempts",
                "1",
            ])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!report.join("report.csv").exists(), "no task ran");
    }
    Ok(())
}

/// A dry run's task keys.
fn dry_run(cfg: &Path, args: &[&str]) -> anyhow::Result<BTreeSet<String>> {
    let out = archiver_configured(cfg)?
        .args(["replay", "--dry-run"])
        .args(args)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut keys = BTreeSet::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: Value = serde_json::from_str(line)?;
        assert_eq!(v["result"], "Succeeded", "{v}");
        assert_eq!(v["detail"], "dry run", "{v}");
        keys.insert(v["key"].as_str().unwrap().to_string());
    }
    Ok(keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_inventories_and_lists_select_the_clips_on_moto() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.paused_queues = vec!["Default".into()]).await?;
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let s3 = s3_client(&moto.url);
    for b in ["clips", "inventory"] {
        s3.create_bucket().bucket(b).send().await?;
    }
    // 40 clips over two days; the first 8 of each day transcoded already.
    let mut clips: Vec<_> = (0..20).map(|i| clip(i, "2024-02-17T10:00:00Z")).collect();
    clips.extend((0..20).map(|i| clip(i, "2024-02-18T10:00:00Z")));
    let transcoded: Vec<&String> = clips[..8]
        .iter()
        .chain(&clips[20..28])
        .map(|c| &c.1)
        .collect();
    let extra: Vec<(String, String)> = transcoded
        .iter()
        .map(|k| {
            (
                format!("{}.transcode.json", k.trim_end_matches(".mp4")),
                json!({"job": "j", "status": "COMPLETE"}).to_string(),
            )
        })
        .chain([("clips/cam-0/notes.txt".into(), "x".into())])
        .collect();
    seed(&s3, "clips", &clips, &extra).await?;
    let cfg = config(local.dir.path(), &moto.url, &local.url())?;
    let keys = |f: &dyn Fn(&(String, String)) -> bool| -> BTreeSet<String> {
        clips.iter().filter(|c| f(c)).map(|c| c.1.clone()).collect()
    };

    // The whole bucket: every clip, nothing else.
    assert_eq!(dry_run(&cfg, &[])?, keys(&|_| true));
    // One stream, one day, not yet transcoded.
    let picked = dry_run(
        &cfg,
        &[
            "--stream",
            "cam-1",
            "--since",
            "2024-02-18T00:00:00Z",
            "--until",
            "2024-02-19T00:00:00Z",
            "--untranscoded",
        ],
    )?;
    assert_eq!(
        picked,
        keys(&|c| c.0 == "cam-1" && c.1.contains("/2024/02/18/") && !transcoded.contains(&&c.1))
    );
    assert_eq!(picked.len(), 3);
    // A key pattern.
    assert_eq!(
        dry_run(&cfg, &["--match", "*/2024/02/17/*T1001*"])?,
        keys(&|c| c.1.contains("/2024/02/17/") && c.1.contains("T1001"))
    );

    // An S3 Inventory report (gzipped CSV, URL-encoded keys): latest versions only.
    let mut csv = String::new();
    for (i, (_, key)) in clips.iter().enumerate().take(10) {
        let enc = kvs_edge_archiver::batch::encode_key(key);
        let (latest, deleted) = match i {
            8 => ("false", "false"),
            9 => ("true", "true"),
            _ => ("true", "false"),
        };
        csv.push_str(&format!(
            "\"clips\",\"{enc}\",\"\",\"{latest}\",\"{deleted}\",\"4\",\"2024-02-17T10:00:00.000Z\"\n"
        ));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(csv.as_bytes())?;
    let gz = gz.finish()?;
    let md5 = {
        use md5::Digest;
        hex::encode(md5::Md5::digest(&gz))
    };
    let data_key = "inv/clips/daily/2024-02-19T01-00Z/files/part-0.csv.gz";
    s3.put_object()
        .bucket("inventory")
        .key(data_key)
        .body(ByteStream::from(gz))
        .send()
        .await?;
    let manifest = |md5: &str| {
        json!({
            "sourceBucket": "clips",
            "destinationBucket": "arn:aws:s3:::inventory",
            "version": "2016-11-30",
            "fileFormat": "CSV",
            "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate",
            "files": [{"key": data_key, "size": 1, "MD5checksum": md5}],
        })
        .to_string()
        .into_bytes()
    };
    for (name, md5) in [
        ("manifest.json", md5.as_str()),
        ("bad-manifest.json", "0123456789abcdef0123456789abcdef"),
    ] {
        s3.put_object()
            .bucket("inventory")
            .key(format!("inv/clips/daily/2024-02-19T01-00Z/{name}"))
            .body(ByteStream::from(manifest(md5)))
            .send()
            .await?;
    }
    let from_inventory = dry_run(
        &cfg,
        &[
            "--inventory",
            "s3://inventory/inv/clips/daily/2024-02-19T01-00Z/manifest.json",
        ],
    )?;
    let first8: BTreeSet<String> = clips[..8].iter().map(|c| c.1.clone()).collect();
    assert_eq!(from_inventory, first8);

    // A bucket,key list, with a clip that is not there: PermanentFailure in the report,
    // while the others are submitted.
    let list = local.dir.path().join("list.csv");
    let mut text: String = clips[30..33]
        .iter()
        .map(|c| format!("clips,{}\n", kvs_edge_archiver::batch::encode_key(&c.1)))
        .collect();
    text.push_str("clips,clips/cam-9/2024/02/17/gone.mp4\n");
    std::fs::write(&list, text)?;
    let report = local.dir.path().join("report");
    let out = archiver_configured(&cfg)?
        .args(["replay", "--list", list.to_str().unwrap()])
        .args(["--report", report.to_str().unwrap()])
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = report_rows(&report)?;
    assert_eq!(rows.len(), 4);
    let gone = rows.iter().find(|r| r.0.ends_with("gone.mp4")).unwrap();
    assert_eq!(gone.1, "PermanentFailure");
    assert_eq!(rows.iter().filter(|r| r.1 == "Succeeded").count(), 3);
    // The job records went to moto's bucket, next to the clips.
    let record = s3
        .get_object()
        .bucket("clips")
        .key(format!("{}.job.json", clips[30].1.trim_end_matches(".mp4")))
        .send()
        .await?;
    let record: Value = serde_json::from_slice(&record.body.collect().await?.into_bytes())?;
    assert_eq!(record["replay"], summary(&report)?["run"]);

    // Bad input is named: a file that is not what its manifest says, a missing manifest.
    let out = archiver_configured(&cfg)?
        .args([
            "replay",
            "--dry-run",
            "--inventory",
            "s3://inventory/inv/clips/daily/2024-02-19T01-00Z/bad-manifest.json",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(data_key) && stderr.contains("the manifest says"),
        "{stderr}"
    );
    let out = archiver_configured(&cfg)?
        .args([
            "replay",
            "--dry-run",
            "--inventory",
            "s3://inventory/nope.json",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("s3://inventory/nope.json"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_batch_operations_handler_answers_the_published_invocations() -> anyhow::Result<()> {
    use kvs_edge_tests::lambda_api::LambdaApi;
    let (local, s3, cfg) = paused_local().await?;
    let clips: Vec<_> = (0..1).map(|i| clip(i, "2024-02-17T00:00:00Z")).collect();
    seed(&s3, "clips", &clips, &[]).await?;
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)?.replace("mode = \"off\"", "mode = \"mediaconvert\""),
    )?;
    let fixture = |name: &str| -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(
            repo_root().join("tests/fixtures/aws-events").join(name),
        )?)?)
    };
    // As published: objects that are not clips are permanent failures.
    let v1 = fixture("s3-batch-ops-lambda-invocation-schema-1.0.awsdocs.json")?;
    // Schema 2.0 pointed at a stored clip, delivered twice (Batch Operations retries).
    let mut v2 = fixture("s3-batch-ops-lambda-invocation-schema-2.0.aws-lambda-go.json")?;
    v2["tasks"][0]["s3Bucket"] = json!("clips");
    v2["tasks"][0]["s3Key"] = json!(clips[0].1);
    v2["tasks"][0]["s3VersionId"] = Value::Null;
    let mut api = LambdaApi::start(vec![
        v1.clone(),
        v2.clone(),
        v2.clone(),
        json!({"invocationSchemaVersion": "2.0", "invocationId": "x", "tasks": [{"s3Key": "k"}]}),
    ])
    .await?;
    let mut function = archiver_command()?;
    function.env("KVS_EDGE_ARCHIVER_CONFIG", &cfg);
    let answers = api.run_function(function, 4).await?;

    let (_, kind, body) = &answers[0];
    assert_eq!(kind, "response");
    assert_eq!(body["invocationSchemaVersion"], "1.0");
    assert_eq!(body["invocationId"], v1["invocationId"]);
    assert_eq!(body["treatMissingKeysAs"], "PermanentFailure");
    assert_eq!(body["results"][0]["taskId"], v1["tasks"][0]["taskId"]);
    assert_eq!(
        body["results"][0]["resultCode"], "PermanentFailure",
        "{body}"
    );
    assert!(
        body["results"][0]["resultString"]
            .as_str()
            .unwrap()
            .contains("not a clip")
    );

    let (_, _, first) = &answers[1];
    let (_, _, retried) = &answers[2];
    assert_eq!(first["invocationSchemaVersion"], "2.0");
    assert_eq!(first["results"][0]["resultCode"], "Succeeded", "{first}");
    assert_eq!(
        retried["results"][0]["resultCode"], "Succeeded",
        "{retried}"
    );
    let job = |b: &Value| {
        b["results"][0]["resultString"]
            .as_str()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(job(first), job(retried), "a retried task is the same job");
    let jobs = jobs_by_clip(&local.url())?;
    assert_eq!(jobs[&clips[0].1], vec![job(first)]);

    assert_eq!(answers[3].1, "error");
    assert_eq!(answers[3].2["errorType"], "MalformedEvent");
    assert!(
        answers[3].2["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("tasks[0]")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_tasks_in_flight_and_says_interrupted() -> anyhow::Result<()> {
    let (local, s3, cfg) = paused_local().await?;
    let clips: Vec<_> = (0..200).map(|i| clip(i, "2024-04-01T00:00:00Z")).collect();
    seed(&s3, "clips", &clips, &[]).await?;
    let report = local.dir.path().join("report");
    let args = ["replay", "--report", report.to_str().unwrap()];
    let run = archiver_configured(&cfg)?
        .args(args)
        .args(["--rate", "40"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(report.join("report.csv"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 20
    {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    let out = run.wait_with_output()?;
    assert_eq!(out.status.code(), Some(130), "interrupted");
    let s = summary(&report)?;
    assert_eq!(s["state"], "interrupted");
    // Everything started was finished and reported: rows and jobs agree.
    let rows = report_rows(&report)?;
    assert!(rows.len() < 200, "stopped early");
    assert_eq!(s["tasks"]["submitted"], rows.len() as u64);
    assert_eq!(jobs_by_clip(&local.url())?.len(), rows.len());

    let out = archiver_configured(&cfg)?
        .args(args)
        .args(["--rate", "0"])
        .output()?;
    assert!(out.status.success());
    assert_eq!(report_rows(&report)?.len(), 200);
    assert_eq!(jobs_by_clip(&local.url())?.len(), 200);
    Ok(())
}
