//! boto3 (from the project's venv) as a second, independent client of kvs-local: the
//! Python script checks every control-plane and archived-media operation, and the clip it
//! fetched is checked again by ffprobe.

use std::process::Command;
use std::time::Duration;

use kvs_edge_agent::putmedia::AckEvent;
use kvs_edge_tests::*;

#[tokio::test]
async fn boto3_drives_every_operation() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "boto-cam", 24).await?;
    let video = Encoded::gstreamer(125, 25, 25, 320, 240)?;
    let start = now_ms() - 120_000;
    let (body, _) = video.upload(start, 1000)?;
    let acks = put_media(
        &local.url(),
        "boto-cam",
        vec![body],
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 5);

    let script = repo_root().join("tests/python/kvs_local_boto3.py");
    let out_dir = local.dir.path().to_path_buf();
    let url = local.url();
    // The server runs on this runtime; the blocking child process waits on another thread.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(venv_python()?)
            .arg(script)
            .args([
                "--endpoint",
                &url,
                "--stream",
                "boto-cam",
                "--fragments",
                "5",
            ])
            .args(["--start-ms", &start.to_string()])
            .arg("--out")
            .arg(&out_dir)
            .output()
            .map_err(anyhow::Error::from)
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "boto3 checks failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("boto3: every kvs-local operation checked"),
        "{stdout}"
    );

    let (codec, w, h, duration, frames) = ffprobe(&local.dir.path().join("boto3-clip.mp4"))?;
    assert_eq!((codec.as_str(), w, h, frames), ("h264", 320, 240, 125));
    assert!((duration - 5.0).abs() < 1.0, "{duration}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_mediaconvert_queue_holds_jobs_until_boto3_resumes_it() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.buckets = vec!["clips".into()]).await?;
    let url = local.url();
    let out = tokio::task::spawn_blocking(move || {
        python(
            r#"
import sys, json, time, boto3
kw = dict(region_name="us-east-1", aws_access_key_id="kvslocal",
          aws_secret_access_key="kvslocal-secret")
mc = boto3.client("mediaconvert", endpoint_url=sys.argv[1], **kw)
mc = boto3.client("mediaconvert", endpoint_url=mc.describe_endpoints()["Endpoints"][0]["Url"], **kw)
paused = mc.update_queue(Name="Default", Status="PAUSED")["Queue"]["Status"]
job = mc.create_job(Role="arn:aws:iam::000000000000:role/MC", Settings={
    "Inputs": [{"FileInput": "s3://clips/missing.mp4"}],
    "OutputGroups": [{"OutputGroupSettings": {"Type": "FILE_GROUP_SETTINGS",
        "FileGroupSettings": {"Destination": "s3://clips/out/"}},
        "Outputs": [{"ContainerSettings": {"Container": "MP4"},
                     "VideoDescription": {"CodecSettings": {"Codec": "H_264"}}}]}]})["Job"]
held = mc.get_job(Id=job["Id"])["Job"]["Status"]
queue = mc.get_queue(Name="Default")["Queue"]
mc.update_queue(Name="Default", Status="ACTIVE")
deadline = time.time() + 60
while mc.get_job(Id=job["Id"])["Job"]["Status"] in ("SUBMITTED", "PROGRESSING") and time.time() < deadline:
    time.sleep(0.1)
print(json.dumps({"paused": paused, "held": held, "queue": queue["Status"],
                  "waiting": queue["SubmittedJobsCount"],
                  "after": mc.get_job(Id=job["Id"])["Job"]["Status"]}))
"#,
            &[&url],
        )
    })
    .await??;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        v,
        serde_json::json!({"paused": "PAUSED", "held": "SUBMITTED", "queue": "PAUSED",
                           "waiting": 1, "after": "ERROR"}),
        "the input does not exist, so the job ends in ERROR once it runs"
    );
    Ok(())
}
