//! The transcoding hand-off end to end, offline: a clip stored by the archiver becomes a
//! MediaConvert job (the default template: HLS 360/540/720 ladder, MP4, thumbnails) in
//! kvs-local, which really transcodes it with GStreamer; the job's COMPLETE event, handled
//! by the archiver, records the outcome next to the clip; ffprobe accepts every output. A
//! repeated alarm submits no second job.

use std::path::Path;
use std::time::Duration;

use kvs_edge_tests::*;
use serde_json::{Value, json};

/// kvs-local with a `clips` bucket, writing MediaConvert job events into the returned
/// directory (what an EventBridge rule would deliver).
async fn local_with_events() -> anyhow::Result<(tempfile::TempDir, Local)> {
    let events = tempfile::tempdir()?;
    let dir = events.path().to_path_buf();
    let local = Local::start_with(|c| {
        c.buckets = vec!["clips".into()];
        c.events_dir = Some(dir);
    })
    .await?;
    Ok((events, local))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_clip_is_transcoded_once_and_its_outcome_recorded() -> anyhow::Result<()> {
    let (events, local) = local_with_events().await?;
    let start = now_ms() - 30_000;
    ingest(&local, "door-cam", 250, (640, 360), start).await?;
    let cfg = write_archiver_config(
        local.dir.path(),
        "archiver.toml",
        &local.url(),
        &local.url(),
        &format!(
            "[clip]\npre_roll_s = 3\npost_roll_s = 4\n{}",
            mediaconvert_at(&local.url())
        ),
    )?;
    let event = local.dir.path().join("alarm.json");
    std::fs::write(
        &event,
        alarm_event("door", "door-cam", start + 5_000).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    assert_eq!(out[0]["result"], "stored", "{out:?}");
    let job_id = out[0]["transcode"]["job"]
        .as_str()
        .expect("a job")
        .to_string();
    let key = out[0]["key"].as_str().unwrap().to_string();

    // A repeated alarm: the clip is there, and so is its job.
    let (again, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok);
    assert_eq!(again[0]["result"], "duplicate");
    assert_eq!(again[0]["transcode"]["job"], "submitted before");

    // kvs-local transcodes; its COMPLETE event is what an EventBridge rule would deliver.
    let complete = events.path().join(format!("{job_id}-COMPLETE.json"));
    let error = events.path().join(format!("{job_id}-ERROR.json"));
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while !complete.exists() {
        assert!(!error.exists(), "{}", std::fs::read_to_string(&error)?);
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (out, ok) = run_archiver(&cfg, &["handle-event", complete.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    assert_eq!(
        (out[0]["result"].as_str(), out[0]["status"].as_str()),
        (Some("recorded"), Some("COMPLETE"))
    );
    // boto3, a second client of kvs-local's MediaConvert: one job, COMPLETE, as submitted.
    let listed = python(
        r#"
import sys, json, boto3
mc = boto3.client("mediaconvert", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="kvslocal", aws_secret_access_key="kvslocal-secret")
url = mc.describe_endpoints()["Endpoints"][0]["Url"]
mc = boto3.client("mediaconvert", endpoint_url=url, region_name="us-east-1",
                  aws_access_key_id="kvslocal", aws_secret_access_key="kvslocal-secret")
jobs = mc.list_jobs()["Jobs"]
job = mc.get_job(Id=sys.argv[2])["Job"]
print(json.dumps({"count": len(jobs), "status": job["Status"],
                  "input": job["Settings"]["Inputs"][0]["FileInput"],
                  "clip_key": job["UserMetadata"]["clip_key"]}))
"#,
        &[&local.url(), &job_id],
    )?;
    let listed: Value = serde_json::from_str(listed.trim())?;
    assert_eq!(
        listed,
        json!({"count": 1, "status": "COMPLETE", "input": format!("s3://clips/{key}"), "clip_key": key})
    );
    let s3 = local.dir.path().join("s3/clips");
    let stem = key.trim_end_matches(".mp4");
    let record: Value =
        serde_json::from_slice(&std::fs::read(s3.join(format!("{stem}.transcode.json")))?)?;
    assert_eq!(
        (record["job"].as_str(), record["status"].as_str()),
        (Some(job_id.as_str()), Some("COMPLETE"))
    );

    // The outputs, where the template's groups put them, each accepted by ffprobe.
    let out_dir = s3.join(format!("transcoded/{stem}"));
    let name = Path::new(&key).file_stem().unwrap().to_str().unwrap();
    let master = std::fs::read_to_string(out_dir.join(format!("hls/{name}.m3u8")))?;
    assert_eq!(master.matches("#EXT-X-STREAM-INF").count(), 3, "{master}");
    for (rendition, height) in [("_360", 360), ("_540", 540), ("_720", 720)] {
        let (codec, _, h, duration, _) =
            ffprobe(&out_dir.join(format!("hls/{name}{rendition}.m3u8")))?;
        assert_eq!((codec.as_str(), h), ("h264", height), "{rendition}");
        assert!(duration > 5.0, "{rendition}: {duration} s");
    }
    let (codec, _, h, _, _) = ffprobe(&out_dir.join(format!("mp4/{name}.mp4")))?;
    assert_eq!((codec.as_str(), h), ("h264", 720));
    let thumbnail = out_dir.join(format!("thumbnails/{name}.0000000.jpg"));
    let (codec, w, _, _, _) = ffprobe(&thumbnail)?;
    assert_eq!((codec.as_str(), w), ("mjpeg", 1280));
    Ok(())
}

/// Jobs that fail still leave an outcome next to the clip: a job MediaConvert ends in ERROR
/// (here a template kvs-local cannot run), and a job that could not even be submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_recorded_with_the_reason() -> anyhow::Result<()> {
    let (events, local) = local_with_events().await?;
    let start = now_ms() - 30_000;
    ingest(&local, "gate-cam", 250, (320, 240), start).await?;
    let template = local.dir.path().join("dash.json");
    std::fs::write(
        &template,
        json!({"Inputs": [{"FileInput": "s3://x/y.mp4"}], "OutputGroups": [{"Name": "DASH",
            "OutputGroupSettings": {"Type": "DASH_ISO_GROUP_SETTINGS",
                "DashIsoGroupSettings": {"Destination": "s3://x/dash/", "SegmentLength": 6}},
            "Outputs": [{"VideoDescription": {"Height": 240}}]}]})
        .to_string(),
    )?;
    let write_cfg = |name: &str, mediaconvert: &str| {
        write_archiver_config(
            local.dir.path(),
            name,
            &local.url(),
            &local.url(),
            &format!(
                "[clip]\npre_roll_s = 2\npost_roll_s = 2\n{}template = \"{}\"\n",
                mediaconvert_at(mediaconvert),
                template.display()
            ),
        )
    };
    let s3 = local.dir.path().join("s3/clips");

    // ERROR: the job runs and fails; its event records the reason.
    let cfg = write_cfg("dash.toml", &local.url())?;
    let event = local.dir.path().join("a.json");
    std::fs::write(
        &event,
        alarm_event("door", "gate-cam", start + 4_000).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    let job_id = out[0]["transcode"]["job"].as_str().unwrap().to_string();
    let stem = out[0]["key"]
        .as_str()
        .unwrap()
        .trim_end_matches(".mp4")
        .to_string();
    let error = events.path().join(format!("{job_id}-ERROR.json"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !error.exists() {
        assert!(std::time::Instant::now() < deadline, "no ERROR event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (out, ok) = run_archiver(&cfg, &["handle-event", error.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    let record: Value =
        serde_json::from_slice(&std::fs::read(s3.join(format!("{stem}.transcode.json")))?)?;
    assert_eq!(record["status"], "ERROR");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("DASH_ISO_GROUP_SETTINGS"),
        "{record}"
    );

    // Not submitted (MediaConvert unreachable, after retries): recorded, and the run fails
    // so that the delivery is retried.
    let closed = format!("http://127.0.0.1:{}", free_port()?);
    let cfg = write_cfg("down.toml", &closed)?;
    let event = local.dir.path().join("b.json");
    std::fs::write(
        &event,
        alarm_event("door", "gate-cam", start + 7_000).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(!ok, "{out:?}");
    assert_eq!(out[0]["result"], "stored");
    assert!(out[0]["transcode"]["error"].is_string(), "{out:?}");
    let stem = out[0]["key"]
        .as_str()
        .unwrap()
        .trim_end_matches(".mp4")
        .to_string();
    let record: Value =
        serde_json::from_slice(&std::fs::read(s3.join(format!("{stem}.transcode.json")))?)?;
    assert_eq!(
        (record["status"].as_str(), record["retryable"].as_bool()),
        (Some("NOT_SUBMITTED"), Some(true))
    );
    Ok(())
}
