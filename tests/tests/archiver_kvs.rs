//! The archiver against KVS as the service behaves, not as we first read it: throttled
//! calls (ClientLimitExceededException) are absorbed in-process, a clip stored after failed
//! attempts removes its failure record, and a window in which the camera's resolution
//! changes (GetClip refuses such a range) becomes numbered parts, each playable.

use std::path::Path;
use std::time::Duration;

use kvs_edge_tests::*;
use kvs_local::faults::{Faults, ThrottleFault};
use serde_json::{Value, json};

fn config(dir: &Path, url: &str, extra: &str) -> std::path::PathBuf {
    write_archiver_config(
        dir,
        "archiver.toml",
        url,
        url,
        &format!("[clip]\npre_roll_s = 4\npost_roll_s = 6\ningest_wait_s = 1\n{extra}"),
    )
    .unwrap()
}

/// `events` as one SQS batch (Lambda's shape), written to `<dir>/<name>`.
fn batch(dir: &Path, name: &str, events: &[Value]) -> anyhow::Result<String> {
    let records: Vec<Value> = events
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"messageId": format!("m-{i}"), "eventSource": "aws:sqs", "body": e.to_string()}))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, json!({ "Records": records }).to_string())?;
    Ok(path.to_str().unwrap().to_string())
}

/// Every object key in kvs-local's bucket `clips` (its S3 is a directory).
fn keys(local: &Local) -> Vec<String> {
    let root = local.dir.path().join("s3/clips");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(rel) = p.strip_prefix(&root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn throttle(max_per_second: u32) -> Faults {
    Faults {
        throttle: Some(ThrottleFault {
            operations: vec![
                "GetClip".into(),
                "ListFragments".into(),
                "GetDataEndpoint".into(),
            ],
            max_per_second,
        }),
        ..Faults::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_kvs_calls_are_retried_in_process() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.buckets = vec!["clips".into()]).await?;
    let start = now_ms() - 40_000;
    let streams = ["cam-a", "cam-b", "cam-c"];
    for s in streams {
        ingest(&local, s, 500, (160, 120), start).await?;
    }
    let cfg = config(local.dir.path(), &local.url(), "");
    // An alarm storm: two alarms per stream, each delivered twice, in one batch, while KVS
    // takes one call per operation and second.
    let mut events = Vec::new();
    for s in streams {
        for (i, at) in [8_000, 14_000].into_iter().enumerate() {
            let e = alarm_event(&format!("{s} motion {i}"), s, start + at);
            events.push(e.clone());
            events.push(e);
        }
    }
    let input = batch(local.dir.path(), "storm.json", &events)?;
    local.server.set_faults(throttle(1));
    let run = archiver_configured(&cfg)?
        .args(["handle-event", &input])
        .output()?;
    let log = String::from_utf8_lossy(&run.stderr);
    let out: Vec<Value> = String::from_utf8(run.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(run.status.success(), "{out:?}\n{log}");
    assert!(
        log.contains("throttled by KVS (ClientLimitExceededException)"),
        "the storm was throttled and retried: {log}"
    );
    let results: Vec<&str> = out.iter().map(|o| o["result"].as_str().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| **r == "stored").count(),
        6,
        "{out:?}"
    );
    assert_eq!(results.iter().filter(|r| **r == "duplicate").count(), 6);
    let keys = keys(&local);
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.ends_with(".mp4")),
        "no failure records: {keys:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_stored_after_a_failure_removes_its_failure_record() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.buckets = vec!["clips".into()]).await?;
    let start = now_ms() - 40_000;
    ingest(&local, "porch", 500, (160, 120), start).await?;
    // No patience for throttling: the first delivery fails and leaves its record.
    let cfg = config(local.dir.path(), &local.url(), "throttle_retry_s = 0");
    let event = local.dir.path().join("event.json");
    std::fs::write(
        &event,
        alarm_event("Porch motion", "porch", start + 8_000).to_string(),
    )?;
    local.server.set_faults(Faults {
        throttle: Some(ThrottleFault {
            operations: vec!["GetClip".into()],
            max_per_second: 0,
        }),
        ..Faults::default()
    });
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(!ok, "{out:?}");
    assert_eq!(out[0]["result"], "failed");
    assert!(
        out[0]["reason"]
            .as_str()
            .unwrap()
            .contains("ClientLimitExceeded"),
        "{out:?}"
    );
    let record = keys(&local);
    assert_eq!(record.len(), 1);
    assert!(record[0].ends_with(".error.json"), "{record:?}");

    // The redelivery, once KVS takes calls again, stores the clip and the record goes.
    local.server.set_faults(Faults::default());
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    assert_eq!(out[0]["result"], "stored");
    assert_eq!(keys(&local), [out[0]["key"].as_str().unwrap().to_string()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolution_change_inside_the_window_gives_playable_numbered_parts() -> anyhow::Result<()>
{
    let local = Local::start_with(|c| c.buckets = vec!["clips".into()]).await?;
    let start = now_ms() - 60_000;
    // 10 s at 320x240, then the camera switches to 160x120 (a new session, new Tracks).
    ingest(&local, "gate", 250, (320, 240), start).await?;
    let video = Encoded::gstreamer(250, 25, 25, 160, 120)?;
    let (body, _) = video.upload(start + 10_000, 1000)?;
    put_media(&local.url(), "gate", vec![body], Duration::from_secs(60)).await?;
    // GetClip refuses the whole range, as the service does.
    let whole = get_clip(&local.archived(), "gate", start, start + 19_999).await;
    assert!(
        whole.is_err(),
        "kvs-local's GetClip must refuse a codec change"
    );

    let cfg = config(local.dir.path(), &local.url(), "");
    let event = local.dir.path().join("event.json");
    // The window [start + 4 s, start + 16 s] spans the change at 10 s.
    std::fs::write(
        &event,
        alarm_event("Gate opened", "gate", start + 8_000 + 2_000).to_string(),
    )?;
    let (out, ok) = run_archiver(&cfg, &["handle-event", event.to_str().unwrap()])?;
    assert!(ok, "{out:?}");
    let o = &out[0];
    assert_eq!(o["result"], "stored", "{o}");
    assert_eq!(o["unplayable_fragments"], 0);
    let first = o["key"].as_str().unwrap();
    let more: Vec<&str> = o["more_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        more,
        [format!("{}-part2.mp4", first.trim_end_matches(".mp4"))]
    );
    let mut total = 0.0;
    for (key, width) in [(first, 320), (more[0], 160)] {
        let path = local.dir.path().join("s3/clips").join(key);
        let (codec, w, _, duration, frames) = ffprobe(&path)?;
        assert_eq!((codec.as_str(), w), ("h264", width), "{key}");
        assert!(frames > 0 && duration > 0.0, "{key}");
        total += duration;
    }
    assert!(
        (11.0..=13.0).contains(&total),
        "the parts cover the 12 s window: {total}"
    );
    Ok(())
}
