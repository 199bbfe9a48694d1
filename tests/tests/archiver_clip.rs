//! The archiver binary as deployed from the command line: an alarm event (the published
//! EventBridge sample, pointed at a KVS stream through its StreamName dimension) → the
//! window's fragments in kvs-local → GetClip → a streamed multipart upload into S3, here
//! moto's (an independent implementation). ffprobe checks the clip's duration; a second
//! delivery of the same event stores nothing new; a missing stream leaves a failure record.

use std::path::Path;
use std::time::Duration;

use kvs_edge_agent::putmedia::AckEvent;
use kvs_edge_tests::*;
use serde_json::{Value, json};

fn config(dir: &Path, kvs: &str, s3: &str) -> std::path::PathBuf {
    write_archiver_config(
        dir,
        "archiver.toml",
        kvs,
        s3,
        "[clip]\npre_roll_s = 4\npost_roll_s = 6\ningest_wait_s = 2",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_becomes_one_clip_in_s3() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "porch-cam", 24).await?;
    // 20 s of video in 1 s fragments, ending a little before now.
    let video = Encoded::gstreamer(500, 25, 25, 320, 240)?;
    let start = now_ms() - 40_000;
    let (body, fragments) = video.upload(start, 1000)?;
    let acks = put_media(
        &local.url(),
        "porch-cam",
        vec![body],
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), fragments.len());
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let s3 = s3_client(&moto.url);
    s3.create_bucket().bucket("clips").send().await?;
    let cfg = config(local.dir.path(), &local.url(), &moto.url);
    // Clips encrypted with a customer-managed KMS key (SSE-KMS).
    let text = std::fs::read_to_string(&cfg)?.replace(
        "bucket = \"clips\"",
        "bucket = \"clips\"\nsse_kms_key_id = \"alias/camera-clips\"",
    );
    std::fs::write(&cfg, text)?;

    // The alarm 8 s into the video: the window is [4 s, 14 s].
    let alarm_ms = start + 8_000;
    let event = local.dir.path().join("event.json");
    std::fs::write(
        &event,
        alarm_event("Porch motion", "porch-cam", alarm_ms).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    assert_eq!(out.len(), 1);
    let o = &out[0];
    assert_eq!(
        (o["result"].as_str(), o["short"].as_bool()),
        (Some("stored"), Some(false)),
        "{o}"
    );
    let key = o["key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("clips/porch-cam/") && key.contains("/Porch-motion-"),
        "{key}"
    );

    // The object: a playable MP4 of the window (± one fragment), with its alarm attached.
    let got = s3.get_object().bucket("clips").key(&key).send().await?;
    let meta = got.metadata.clone().unwrap_or_default();
    assert_eq!(
        meta.get("alarm-name").map(String::as_str),
        Some("Porch motion")
    );
    assert_eq!(meta.get("stream").map(String::as_str), Some("porch-cam"));
    assert_eq!(got.content_type.as_deref(), Some("video/mp4"));
    assert_eq!(
        (
            got.server_side_encryption.as_ref().map(|e| e.as_str()),
            got.ssekms_key_id.as_deref()
        ),
        (Some("aws:kms"), Some("alias/camera-clips"))
    );
    let bytes = got.body.collect().await?.into_bytes();
    let path = local.dir.path().join("clip.mp4");
    std::fs::write(&path, &bytes)?;
    let (codec, width, _, duration, _) = ffprobe(&path)?;
    assert_eq!((codec.as_str(), width), ("h264", 320));
    assert!(
        (9.0..=11.0).contains(&duration),
        "a 10 s window gave {duration} s"
    );
    let tags = s3
        .get_object_tagging()
        .bucket("clips")
        .key(&key)
        .send()
        .await?;
    assert!(
        tags.tag_set
            .iter()
            .any(|t| t.key == "alarm" && t.value == "Porch motion")
    );

    // The same event again (EventBridge and SQS deliver at least once): nothing new.
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok);
    assert_eq!(out[0]["result"], "duplicate", "{out:?}");
    assert_eq!(out[0]["key"], key.as_str());
    let listed = s3.list_objects_v2().bucket("clips").send().await?;
    assert_eq!(listed.contents().len(), 1, "one clip per alarm");

    // A window running past the video: clipped after the (short) wait, marked short.
    let late = local.dir.path().join("late.json");
    std::fs::write(
        &late,
        alarm_event("Porch motion", "porch-cam", start + 18_000).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", late.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    assert_eq!(
        (out[0]["result"].as_str(), out[0]["short"].as_bool()),
        (Some("stored"), Some(true))
    );

    // A stream that does not exist: a failure record next to where the clip would be.
    let missing = local.dir.path().join("missing.json");
    std::fs::write(
        &missing,
        alarm_event("Porch motion", "no-such-cam", alarm_ms).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", missing.to_str().unwrap()])?;
    assert!(!ok, "a failed clip is a failed run");
    assert_eq!(out[0]["result"], "failed");
    let record_key = out[0]["key"]
        .as_str()
        .unwrap()
        .replace(".mp4", ".error.json");
    let record = s3
        .get_object()
        .bucket("clips")
        .key(&record_key)
        .send()
        .await?;
    let record: Value = serde_json::from_slice(&record.body.collect().await?.into_bytes())?;
    assert!(
        record["reason"].as_str().unwrap().contains("no-such-cam"),
        "{record}"
    );
    assert_eq!(record["alarm"], "Porch motion");

    // The CLI's explicit window.
    let t = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let (out, ok) = run_archiver(
        &cfg,
        &[
            "clip",
            "--stream",
            "porch-cam",
            "--start",
            &t(start + 1000),
            "--end",
            &t(start + 6000),
        ],
    )?;
    assert!(ok, "{out:?}");
    assert!(
        out[0]["key"].as_str().unwrap().contains("/manual-"),
        "{out:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_longer_than_200_fragments_is_one_playable_file() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "long-cam", 24).await?;
    // 250 fragments of 200 ms (a keyframe every 5 frames at 25 fps): two GetClip calls.
    let video = Encoded::gstreamer(1250, 25, 5, 160, 120)?;
    let start = now_ms() - 120_000;
    let (body, fragments) = video.upload(start, 200)?;
    assert_eq!(fragments.len(), 250);
    let acks = put_media(
        &local.url(),
        "long-cam",
        vec![body],
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 250);
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let s3 = s3_client(&moto.url);
    s3.create_bucket().bucket("clips").send().await?;
    let cfg = config(local.dir.path(), &local.url(), &moto.url);

    let t = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let (out, ok) = run_archiver(
        &cfg,
        &[
            "clip",
            "--stream",
            "long-cam",
            "--start",
            &t(start),
            "--end",
            &t(start + 50_000),
        ],
    )?;
    assert!(ok, "{out:?}");
    let o = &out[0];
    assert_eq!(
        (o["fragments"].as_u64(), o["get_clip_calls"].as_u64()),
        (Some(250), Some(2)),
        "{o}"
    );
    assert_eq!(
        o["more_keys"],
        json!([]),
        "one codec configuration: one file"
    );
    let got = s3
        .get_object()
        .bucket("clips")
        .key(o["key"].as_str().unwrap())
        .send()
        .await?;
    let path = local.dir.path().join("long.mp4");
    std::fs::write(&path, got.body.collect().await?.into_bytes())?;
    let (codec, width, _, duration, frames) = ffprobe(&path)?;
    assert_eq!(
        (codec.as_str(), width, frames),
        ("h264", 160, 1250),
        "every frame, once"
    );
    assert!((49.0..=51.0).contains(&duration), "{duration} s");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_consumer_clips_once_and_dead_letters_what_can_never_work() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let start = now_ms() - 40_000;
    ingest(&local, "queue-cam", 500, (320, 240), start).await?;
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let s3 = s3_client(&moto.url);
    s3.create_bucket().bucket("clips").send().await?;
    let sqs = sqs_client(&moto.url);
    let queue = create_queue(&sqs, "alarms").await?;
    let dlq = create_queue(&sqs, "alarms-dlq").await?;
    let cfg = config(local.dir.path(), &local.url(), &moto.url);
    let mut text = std::fs::read_to_string(&cfg)?;
    text.push_str(&format!(
        "[sqs]\nendpoint_url = \"{}\"\nqueue_url = \"{queue}\"\ndlq_url = \"{dlq}\"\nvisibility_timeout_s = 10\n",
        moto.url
    ));
    std::fs::write(&cfg, text)?;

    // EventBridge → SQS: the event is the body. Delivered twice, plus one malformed message.
    let event = alarm_event("Porch motion", "queue-cam", start + 8_000).to_string();
    for body in [
        event.as_str(),
        event.as_str(),
        "{\"detail-type\": \"CloudWatch Alarm State Change\"",
    ] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await?;
    }
    let consumer = ArchiverProcess::spawn(&cfg, &["sqs"])?;
    let mut fates = Vec::new();
    while fates.len() < 3 {
        fates.push(consumer.next_json(Duration::from_secs(60))?);
    }
    assert!(consumer.stop()?, "SIGTERM: a clean stop");

    let results: Vec<&str> = fates
        .iter()
        .map(|f| f["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|r| **r == "done").count(),
        2,
        "{fates:?}"
    );
    let stored: Vec<&str> = fates
        .iter()
        .flat_map(|f| f["outcomes"].as_array().cloned().unwrap_or_default())
        .map(|o| {
            if o["result"] == "stored" {
                "stored"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(
        stored.iter().filter(|s| **s == "stored").count(),
        1,
        "one clip: {fates:?}"
    );
    let dead = fates
        .iter()
        .find(|f| f["result"] == "dead-letter")
        .expect("the malformed one");
    assert!(
        dead["reason"].as_str().unwrap().contains("malformed"),
        "{dead}"
    );
    let listed = s3.list_objects_v2().bucket("clips").send().await?;
    assert_eq!(listed.contents().len(), 1);
    // The malformed message is in the dead-letter queue, with the reason; the queue is empty.
    let got = sqs
        .receive_message()
        .queue_url(&dlq)
        .message_attribute_names("All")
        .wait_time_seconds(5)
        .send()
        .await?;
    let m = &got.messages()[0];
    assert!(m.body().unwrap().starts_with("{\"detail-type\""));
    assert!(
        m.message_attributes()
            .unwrap()
            .contains_key("kvs-edge-error")
    );
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await?;
    let count = |name: aws_sdk_sqs::types::QueueAttributeName| {
        attrs
            .attributes()
            .and_then(|a| a.get(&name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages),
        "0"
    );
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        "0"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_function_answers_every_invocation_shape() -> anyhow::Result<()> {
    use kvs_edge_tests::lambda_api::LambdaApi;
    let local = Local::start().await?;
    let start = now_ms() - 40_000;
    ingest(&local, "fn-cam", 500, (320, 240), start).await?;
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let s3 = s3_client(&moto.url);
    s3.create_bucket().bucket("clips").send().await?;
    let cfg = config(local.dir.path(), &local.url(), &moto.url);

    let event = alarm_event("Porch motion", "fn-cam", start + 8_000);
    let sqs_batch = json!({"Records": [
        {"messageId": "m-1", "eventSource": "aws:sqs", "body": event.to_string()},
        {"messageId": "m-2", "eventSource": "aws:sqs", "body": "{\"detail-type\": "}]});
    let config_change: Value = serde_json::from_slice(&std::fs::read(repo_root().join(
        "tests/fixtures/aws-events/eventbridge-cw-alarm-config-change-update-metric.json",
    ))?)?;
    let mut api = LambdaApi::start(vec![
        event.clone(),
        sqs_batch,
        config_change,
        json!({"detail-type": "CloudWatch Alarm State Change", "detail": 7}),
        alarm_event("Porch motion", "no-such-cam", start + 8_000),
    ])
    .await?;
    let mut function = archiver_command()?;
    function.env("KVS_EDGE_ARCHIVER_CONFIG", &cfg);
    let answers = api.run_function(function, 5).await?;

    // An EventBridge rule's event: the clip is stored.
    let (id, kind, body) = &answers[0];
    assert_eq!((id.as_str(), kind.as_str()), ("req-1", "response"));
    assert_eq!(body["outcomes"][0]["result"], "stored", "{body}");
    // An SQS batch: the repeat is a duplicate, the malformed message is not retried.
    let (_, kind, body) = &answers[1];
    assert_eq!(kind, "response");
    assert_eq!(body["batchItemFailures"], json!([]), "{body}");
    assert_eq!(body["outcomes"][0]["result"], "duplicate", "{body}");
    // Ignored events succeed; malformed ones and failed clips are errors (Lambda retries).
    assert_eq!(answers[2].2["outcomes"][0]["action"], "ignore");
    assert_eq!(answers[3].1, "error");
    assert_eq!(answers[3].2["errorType"], "MalformedEvent");
    assert_eq!(answers[3].2["errorMessage"], "detail: must be an object");
    assert_eq!(answers[4].1, "error");
    assert_eq!(answers[4].2["errorType"], "ClipFailed", "{:?}", answers[4]);
    let listed = s3.list_objects_v2().bucket("clips").send().await?;
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys.iter().filter(|k| k.ends_with(".mp4")).count(),
        1,
        "{keys:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvs_local_serves_s3_so_offline_runs_need_no_other_process() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.buckets = vec!["clips".into()]).await?;
    let start = now_ms() - 40_000;
    ingest(&local, "solo-cam", 500, (320, 240), start).await?;
    let cfg = config(local.dir.path(), &local.url(), &local.url());
    let event = local.dir.path().join("event.json");
    std::fs::write(
        &event,
        alarm_event("Porch motion", "solo-cam", start + 8_000).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    assert_eq!(out[0]["result"], "stored");
    // The object is a file under the data dir, and playable.
    let key = out[0]["key"].as_str().unwrap();
    let file = local.dir.path().join("s3/clips").join(key);
    let (codec, _, _, duration, _) = ffprobe(&file)?;
    assert_eq!(codec, "h264");
    assert!((9.0..=11.0).contains(&duration), "{duration}");
    let (out, _) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert_eq!(out[0]["result"], "duplicate");
    // S3 requests are SigV4-checked like the rest of kvs-local.
    let wrong = s3_client(&local.url());
    let e = wrong
        .head_object()
        .bucket("clips")
        .key(key)
        .send()
        .await
        .expect_err("a wrong key is refused");
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(403));
    Ok(())
}

/// The whole offline flow: the agent (its real runner) streams a live test pattern into
/// kvs-local; an alarm on its stream arrives while it streams; the archiver waits for the
/// post-roll to be ingested and stores the clip in kvs-local's S3; ffprobe checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_streams_an_alarm_fires_and_the_clip_lands_in_s3() -> anyhow::Result<()> {
    use kvs_edge_agent::runner;
    use std::sync::atomic::Ordering;
    let local = Local::start_with(|c| c.buckets = vec!["clips".into()]).await?;
    let agent_cfg = kvs_edge_config::AgentConfig::from_toml(
        "agent.toml",
        &format!(
            r#"
            state_dir = "{}"
            [aws]
            region = "us-east-1"
            endpoint_url = "{}"
            [credentials]
            kind = "static"
            access_key_id = "{DEFAULT_ACCESS_KEY}"
            secret_access_key = "{DEFAULT_SECRET_KEY}"
            [[cameras]]
            name = "cam"
            stream_name = "live-cam"
            fragment_duration_ms = 1000
            source = {{ type = "test", width = 320, height = 240, fps = 25 }}
            create_stream = {{ retention_period_hours = 1 }}
            "#,
            local.dir.path().join("agent").display(),
            local.url()
        ),
    )?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = runner::start(agent_cfg, shutdown.clone()).await?;
    let cam = running.cameras()[0].clone();
    // The pre-roll (4 s) is in KVS before the alarm goes off.
    tokio::time::timeout(
        Duration::from_secs(60),
        cam.upload_stats
            .wait_until(|s| s.fragments_persisted.load(Ordering::Relaxed) >= 5),
    )
    .await?;
    let cfg = config(local.dir.path(), &local.url(), &local.url());
    let event = local.dir.path().join("event.json");
    std::fs::write(
        &event,
        alarm_event("Porch motion", "live-cam", now_ms()).to_string(),
    )?;
    // The post-roll (6 s) is still to come: the archiver waits for it while the agent streams.
    let (out, ok) = tokio::task::spawn_blocking(move || {
        run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])
    })
    .await??;
    stop.send_replace(true);
    running.wait(shutdown, Duration::from_secs(20)).await;
    assert!(ok, "{out:?}");
    assert_eq!(
        (out[0]["result"].as_str(), out[0]["short"].as_bool()),
        (Some("stored"), Some(false)),
        "{out:?}"
    );
    let clip = local
        .dir
        .path()
        .join("s3/clips")
        .join(out[0]["key"].as_str().unwrap());
    let (codec, width, _, duration, _) = ffprobe(&clip)?;
    assert_eq!((codec.as_str(), width), ("h264", 320));
    // A 10 s window, ± one 1 s fragment.
    assert!((9.0..=11.0).contains(&duration), "{duration} s");
    Ok(())
}

/// A message whose clip takes longer than the queue's visibility timeout (the archiver
/// waits for a post-roll still to come) stays hidden while it is worked on: it is received
/// once, not handed out again halfway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_consumer_keeps_a_long_job_hidden() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.buckets = vec!["clips".into()]).await?;
    let start = now_ms() - 10_000;
    ingest(&local, "slow-cam", 250, (160, 120), start).await?;
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let sqs = sqs_client(&moto.url);
    let queue = create_queue(&sqs, "slow").await?;
    let cfg = config(local.dir.path(), &local.url(), &local.url());
    // The window ends 12 s from now and the post-roll never comes: the job takes about
    // 12 s + ingest_wait_s (2 s), more than the 10 s visibility timeout.
    let mut text = std::fs::read_to_string(&cfg)?.replace("post_roll_s = 6", "post_roll_s = 16");
    text.push_str(&format!(
        "[sqs]\nendpoint_url = \"{}\"\nqueue_url = \"{queue}\"\nvisibility_timeout_s = 10\n",
        moto.url
    ));
    std::fs::write(&cfg, text)?;
    let event = alarm_event("Porch motion", "slow-cam", now_ms() - 4_000).to_string();
    sqs.send_message()
        .queue_url(&queue)
        .message_body(&event)
        .send()
        .await?;
    let consumer = ArchiverProcess::spawn(&cfg, &["sqs"])?;
    let fate = consumer.next_json(Duration::from_secs(60))?;
    let more: Vec<String> = consumer.lines.try_iter().collect();
    assert!(consumer.stop()?);
    assert_eq!(
        (fate["result"].as_str(), fate["receives"].as_u64()),
        (Some("done"), Some(1)),
        "{fate}"
    );
    assert_eq!(fate["outcomes"][0]["short"], true, "{fate}");
    assert!(more.is_empty(), "handled once: {more:?}");
    Ok(())
}

/// An alarm that no mapping names and whose metric has no StreamName dimension: its tags
/// (CloudWatch ListTagsForResource, here moto's) name the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alarms_tags_name_the_stream() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.buckets = vec!["clips".into()]).await?;
    let start = now_ms() - 40_000;
    ingest(&local, "tagged-cam", 500, (160, 120), start).await?;
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let arn = python(
        r#"
import sys, boto3
cw = boto3.client("cloudwatch", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
cw.put_metric_alarm(AlarmName="Shed door", MetricName="DoorOpen", Namespace="Site",
    Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1,
    ComparisonOperator="GreaterThanOrEqualToThreshold",
    Tags=[{"Key": "kvs-edge:streams", "Value": "tagged-cam"}, {"Key": "team", "Value": "ops"}])
print(cw.describe_alarms(AlarmNames=["Shed door"])["MetricAlarms"][0]["AlarmArn"])
"#,
        &[&moto.url],
    )?
    .trim()
    .to_string();
    let cfg = config(local.dir.path(), &local.url(), &local.url());
    let mut text = std::fs::read_to_string(&cfg)?;
    text.push_str(&format!("[cloudwatch]\nendpoint_url = \"{}\"\n", moto.url));
    std::fs::write(&cfg, text)?;
    let mut event = alarm_event("Porch motion", "unused", start + 8_000);
    event["detail"]["alarmName"] = json!("Shed door");
    event["resources"] = json!([arn]);
    event["detail"]["configuration"]["metrics"][0]["metricStat"]["metric"] =
        json!({"name": "DoorOpen", "namespace": "Site", "dimensions": {}});
    let file = local.dir.path().join("tagged.json");
    std::fs::write(&file, event.to_string())?;
    let (out, _) = run_archiver(&cfg, &["handle-event", "--dry-run", file.to_str().unwrap()])?;
    assert_eq!(out[0]["action"], "lookup-tags", "{out:?}");
    let (out, ok) = run_archiver(&cfg, &["handle-event", file.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    assert_eq!(
        (out[0]["result"].as_str(), out[0]["stream"].as_str()),
        (Some("stored"), Some("tagged-cam")),
        "{out:?}"
    );
    Ok(())
}
