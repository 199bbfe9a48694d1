//! The agent's uploader on its own, fed real GStreamer-encoded fragments through a journal,
//! against kvs-local: a codec change starts a new session with new Tracks, sessions rotate on
//! time, a resend after lost release marks is stored again (as the service does) and clips
//! once, streams without retention release on RECEIVED, error acks never count as stored
//! and never loop, the body streams before the service answers, and the rate cap holds.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvs_edge_agent::codec::{CodecConfig, TrackSet};
use kvs_edge_agent::credentials::CredentialSource;
use kvs_edge_agent::journal::{Appended, FsyncPolicy, FullPolicy, Journal, JournalConfig, Record};
use kvs_edge_agent::kvs;
use kvs_edge_agent::policy::Gate;
use kvs_edge_agent::uploader::{UploadStats, Uploader};
use kvs_edge_config::AwsSettings;
use kvs_edge_config::agent::{CredentialsConfig, UploadConfig, UploadPolicy};
use kvs_edge_tests::*;
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(60);

fn records(video: &Encoded, start_ms: i64) -> anyhow::Result<Vec<Record>> {
    let tracks = Arc::new(TrackSet {
        video: CodecConfig::new(
            kvs_edge_agent::codec::VideoCodec::H264,
            video.codec_private.clone(),
        )?,
        audio: None,
    });
    let (_, fragments) = video.fragments(start_ms, 1000)?;
    Ok(fragments
        .into_iter()
        .map(|f| Record {
            timecode_ms: f.timecode_ms,
            duration_ms: f.duration_ms,
            tracks: tracks.clone(),
            bytes: f.bytes.into(),
            deferred: false,
        })
        .collect())
}

fn journal(dir: &Path) -> Arc<Mutex<Journal>> {
    let cfg = JournalConfig {
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::Always,
        max_bytes: 1 << 30,
        max_age: None,
        min_free_bytes: 0,
        policy: FullPolicy::DeleteOldest,
        segment_bytes: 1 << 20,
        keep_delivered: false,
    };
    Arc::new(Mutex::new(Journal::open(cfg).expect("journal opens").0))
}

/// Appends to the journal and tells the uploader, as the camera does.
async fn append(journal: &Arc<Mutex<Journal>>, tx: &mpsc::Sender<u64>, records: Vec<Record>) {
    for r in records {
        let Appended::Stored { seq, .. } = journal.lock().unwrap().append(&r, now_ms()).unwrap()
        else {
            panic!("stored")
        };
        tx.send(seq).await.expect("uploader running");
    }
}

async fn uploader(
    local: &Local,
    stream: &str,
    cfg: UploadConfig,
    journal: Arc<Mutex<Journal>>,
) -> (Uploader, Arc<UploadStats>) {
    let static_keys = CredentialsConfig::Static {
        access_key_id: DEFAULT_ACCESS_KEY.into(),
        secret_access_key: DEFAULT_SECRET_KEY.into(),
        session_token: None,
    };
    let credentials = Arc::new(
        CredentialSource::from_config(&static_keys, Some(REGION))
            .await
            .expect("static keys"),
    );
    let aws = AwsSettings {
        region: Some(REGION.into()),
        endpoint_url: Some(local.url()),
    };
    let stats = Arc::new(UploadStats::default());
    let u = Uploader {
        stream: stream.into(),
        region: REGION.into(),
        kvs: kvs::client(&aws, credentials.provider()),
        credentials,
        cfg,
        stats: stats.clone(),
        tls: None,
        journal,
        create_stream: None,
        gate: Arc::new(Gate::new("cam", &UploadPolicy::default())),
    };
    (u, stats)
}

fn fast() -> UploadConfig {
    UploadConfig {
        backoff_min_ms: 20,
        backoff_max_ms: 200,
        ack_timeout_secs: 5,
        ..UploadConfig::default()
    }
}

/// Journals `records`, runs an uploader until it has sent them all, returns its counters.
async fn upload_all(
    local: &Local,
    stream: &str,
    dir: &Path,
    cfg: UploadConfig,
    records: Vec<Record>,
) -> Arc<UploadStats> {
    let journal = journal(dir);
    let (u, stats) = uploader(local, stream, cfg, journal.clone()).await;
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(u.run(rx));
    append(&journal, &tx, records).await;
    drop(tx);
    tokio::time::timeout(BOUND, task)
        .await
        .expect("uploader finishes")
        .expect("no panic");
    assert_eq!(
        journal.lock().unwrap().pending_len(),
        0,
        "everything released"
    );
    stats
}

#[tokio::test]
async fn a_codec_change_starts_a_new_session_with_new_tracks() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    let start = now_ms() - 60_000;
    let mut fragments = records(&Encoded::gstreamer(50, 25, 25, 320, 240)?, start)?;
    fragments.extend(records(
        &Encoded::gstreamer(50, 25, 25, 160, 120)?,
        start + 10_000,
    )?);
    let stats = upload_all(
        &local,
        "cam",
        &local.dir.path().join("j"),
        fast(),
        fragments,
    )
    .await;
    assert_eq!(stats.fragments_persisted.load(Ordering::Relaxed), 4);
    assert_eq!(
        stats.sessions.load(Ordering::Relaxed),
        2,
        "one session per codec configuration"
    );

    let listed = list_all_fragments(&local.archived(), "cam").await?;
    for (i, (w, h)) in [(0, (320, 240)), (3, (160, 120))] {
        let number = listed[i].fragment_number.clone().unwrap();
        let mkv = local
            .archived()
            .get_media_for_fragment_list()
            .stream_name("cam")
            .fragments(number)
            .send()
            .await?;
        let path = local.dir.path().join(format!("f{i}.mkv"));
        std::fs::write(&path, mkv.payload.collect().await?.into_bytes())?;
        let (_, pw, ph, _, _) = ffprobe(&path)?;
        assert_eq!((pw, ph), (w, h), "fragment {i}");
    }
    Ok(())
}

#[tokio::test]
async fn sessions_rotate_on_time() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    let video = Encoded::gstreamer(50, 25, 25, 160, 120)?;
    let start = now_ms() - 60_000;
    let mut fragments = records(&video, start)?;
    fragments.extend(records(&video, start + 10_000)?);
    let later = fragments.split_off(2);
    let journal = journal(&local.dir.path().join("j"));
    let (u, stats) = uploader(
        &local,
        "cam",
        UploadConfig {
            session_rotate_secs: 1,
            ..fast()
        },
        journal.clone(),
    )
    .await;
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(u.run(rx));
    append(&journal, &tx, fragments).await;
    let persisted = |s: &UploadStats| s.fragments_persisted.load(Ordering::Relaxed);
    tokio::time::timeout(
        BOUND,
        stats.wait_until(|s| persisted(s) >= 2 && s.rotations.load(Ordering::Relaxed) >= 1),
    )
    .await?;
    append(&journal, &tx, later).await;
    drop(tx);
    tokio::time::timeout(BOUND, task).await??;
    assert_eq!(persisted(&stats), 4);
    assert_eq!(
        stats.sessions.load(Ordering::Relaxed),
        2,
        "the second pair went in a new session"
    );
    assert_eq!(
        stats.session_failures.load(Ordering::Relaxed),
        0,
        "rotation is not a failure"
    );
    Ok(())
}

#[tokio::test]
async fn a_resend_after_lost_release_marks_is_stored_again_and_clips_once() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    let start = now_ms() - 60_000;
    let fragments = records(&Encoded::gstreamer(75, 25, 25, 160, 120)?, start)?;
    upload_all(
        &local,
        "cam",
        &local.dir.path().join("j1"),
        fast(),
        fragments[..2].to_vec(),
    )
    .await;

    // A restarted agent whose journal never saw the acks of the first two sends all three in
    // a new session. The service takes older producer timestamps in a new session (4004 is
    // about order within one) and stores them again: persisted means persisted.
    let stats = upload_all(
        &local,
        "cam",
        &local.dir.path().join("j2"),
        fast(),
        fragments,
    )
    .await;
    assert_eq!(stats.fragments_persisted.load(Ordering::Relaxed), 3);
    assert_eq!(stats.error_acks.load(Ordering::Relaxed), 0);
    assert_eq!(
        list_all_fragments(&local.archived(), "cam").await?.len(),
        5,
        "the resent two are stored a second time"
    );
    // GetClip deduplicates producer timestamps: each frame once.
    let clip = local.dir.path().join("clip.mp4");
    let (_, mp4) = get_clip(&local.archived(), "cam", start - 1000, start + 10_000).await?;
    std::fs::write(&clip, mp4)?;
    assert_eq!(ffprobe(&clip)?.4, 75);
    Ok(())
}

#[tokio::test]
async fn a_stream_without_retention_releases_on_received() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let (stats, n) = upload_test_video(&local, "live", 0).await?;
    let r = Ordering::Relaxed;
    assert_eq!(stats.fragments_received.load(r), n, "released on RECEIVED");
    assert_eq!(
        stats.fragments_persisted.load(r),
        0,
        "KVS never says PERSISTED"
    );
    assert_eq!(stats.retention_hours.load(r), 0);
    assert_eq!(
        (stats.sessions.load(r), stats.session_failures.load(r)),
        (1, 0),
        "no ack timeouts, no resends"
    );
    assert_eq!(stats.fragments_sent.load(r), n, "each fragment sent once");
    Ok(())
}

/// Creates `stream` with this retention, journals four seconds of test video and uploads it;
/// the counters and how many fragments there were.
async fn upload_test_video(
    local: &Local,
    stream: &str,
    retention_hours: i32,
) -> anyhow::Result<(Arc<UploadStats>, u64)> {
    create_stream(&local.control(), stream, retention_hours).await?;
    let fragments = records(
        &Encoded::gstreamer(100, 25, 25, 160, 120)?,
        now_ms() - 60_000,
    )?;
    let n = fragments.len() as u64;
    let dir = local.dir.path().join(format!("journal-{stream}"));
    Ok((upload_all(local, stream, &dir, fast(), fragments).await, n))
}

/// Uploads `records` to a fresh stream while `fault` is in force; returns the counters and
/// how many fragments the stream holds.
async fn upload_with_fault(
    fault: kvs_local::faults::PutMediaErrorFault,
    records: Vec<Record>,
) -> anyhow::Result<(Arc<UploadStats>, usize)> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    local.server.set_faults(kvs_local::Faults {
        put_media_error: Some(fault),
        ..kvs_local::Faults::default()
    });
    let stats = upload_all(&local, "cam", &local.dir.path().join("j"), fast(), records).await;
    let stored = list_all_fragments(&local.archived(), "cam").await?.len();
    Ok((stats, stored))
}

#[tokio::test]
async fn error_acks_never_count_as_stored_and_never_loop() -> anyhow::Result<()> {
    use kvs_local::faults::PutMediaErrorFault;
    let video = Encoded::gstreamer(150, 25, 25, 160, 120)?;
    let fragments = records(&video, now_ms() - 60_000)?;
    let n = fragments.len() as u64;
    assert_eq!(n, 6);
    let r = Ordering::Relaxed;
    let counts = |s: &UploadStats| {
        (
            s.fragments_persisted.load(r),
            s.fragments_rejected.load(r),
            s.error_acks.load(r),
        )
    };

    // 4004 for the second fragment of a session: it was not stored; a new session, where it
    // comes first, stores it. Everything persisted exactly once.
    let (stats, stored) = upload_with_fault(
        PutMediaErrorFault {
            error_id: 4004,
            after_fragments: 1,
            count: Some(1),
            ..Default::default()
        },
        fragments.clone(),
    )
    .await?;
    assert_eq!(counts(&stats), (n, 0, 1));
    assert_eq!(stored as u64, n, "no duplicates, nothing missing");

    // 4004 for the first fragment of a session cannot be cured by another session: dropped
    // and counted as rejected, never as persisted.
    let (stats, stored) = upload_with_fault(
        PutMediaErrorFault {
            error_id: 4004,
            after_fragments: 0,
            count: Some(2),
            ..Default::default()
        },
        fragments.clone(),
    )
    .await?;
    assert_eq!(counts(&stats), (n - 2, 2, 2));
    assert_eq!(stored as u64, n - 2);

    // An error ack naming no fragment (FragmentTimecode -1, FragmentNumber ""), as the real
    // service sends them, for a fragment KVS refuses for good: laid on the fragment the
    // service was reading, which is dropped; no resend loop.
    let (stats, stored) = upload_with_fault(
        PutMediaErrorFault {
            error_id: 4006,
            after_fragments: 1,
            count: None,
            without_fragment: true,
        },
        fragments.clone(),
    )
    .await?;
    let (persisted, rejected, errors) = counts(&stats);
    assert_eq!(persisted + rejected, n, "every fragment resolved");
    assert!(rejected >= 1 && errors == rejected, "{:?}", counts(&stats));
    assert_eq!(stored as u64, persisted);
    assert!(
        stats.sessions.load(r) <= 2 * n,
        "bounded sessions: {}",
        stats.sessions.load(r)
    );

    // The same without a fragment for a retryable error: kept, sent again, all persisted.
    let (stats, stored) = upload_with_fault(
        PutMediaErrorFault {
            error_id: 5000,
            after_fragments: 1,
            count: Some(2),
            without_fragment: true,
        },
        fragments,
    )
    .await?;
    assert_eq!(counts(&stats), (n, 0, 2));
    assert_eq!(stored as u64, n);
    Ok(())
}

#[tokio::test]
async fn the_body_streams_before_the_service_answers() -> anyhow::Result<()> {
    // kvs-local's strict modes hold the 200 back until the first body bytes, or the first
    // whole fragment, have arrived; a client that waits for the answer first never sends.
    for answer in [
        kvs_local::AnswerAt::FirstBytes,
        kvs_local::AnswerAt::FirstFragment,
    ] {
        let local = Local::start_with(|c| c.put_media_answer = answer).await?;
        let (stats, n) = upload_test_video(&local, "cam", 1).await?;
        let r = Ordering::Relaxed;
        assert_eq!(stats.fragments_persisted.load(r), n, "{answer:?}");
        assert_eq!(
            (stats.sessions.load(r), stats.session_failures.load(r)),
            (1, 0),
            "{answer:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_rate_cap_holds_while_draining_a_backlog() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    let fragments = records(
        &Encoded::gstreamer(200, 25, 25, 160, 120)?,
        now_ms() - 60_000,
    )?;
    assert_eq!(fragments.len(), 8);
    let started = Instant::now();
    let stats = upload_all(
        &local,
        "cam",
        &local.dir.path().join("j"),
        UploadConfig {
            max_fragments_per_sec: 2,
            ..fast()
        },
        fragments,
    )
    .await;
    assert_eq!(stats.fragments_persisted.load(Ordering::Relaxed), 8);
    // 8 fragments at 2 per second: the last cannot go before 3 s have passed.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn the_request_goes_out_in_origin_form_and_the_body_without_an_answer() -> anyhow::Result<()>
{
    use tokio::io::AsyncReadExt;
    // A peer that never answers: what the agent sends is all there is to see.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let session =
        kvs_edge_agent::putmedia::Session::open(&session_params(&url, "cam"), BOUND).await?;
    let (mut peer, _) = listener.accept().await?;
    session
        .send(bytes::Bytes::from_static(b"\x1a\x45\xdf\xa3first-bytes"))
        .await?;
    let mut seen = Vec::new();
    tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        while !seen.windows(11).any(|w| w == b"first-bytes") {
            let n = peer.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the connection closed");
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(())
    })
    .await??;
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("POST /putMedia HTTP/1.1\r\n"),
        "request line: {:?}",
        text.lines().next()
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    );
    Ok(())
}

/// A policy without TagStream costs the stream its tags, not its video: set-up goes on.
#[tokio::test]
async fn a_refused_tag_stream_does_not_stop_the_set_up() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    local.server.set_faults(kvs_local::Faults {
        http_error: Some(kvs_local::faults::HttpErrorFault {
            status: 403,
            error_type: "AccessDeniedException".into(),
            message: None,
            operations: vec!["TagStream".into()],
            count: None,
        }),
        ..kvs_local::Faults::default()
    });
    let create = kvs_edge_config::agent::CreateStreamConfig {
        retention_period_hours: 1,
        tags: [("kvs-edge:device".to_string(), "pi".to_string())].into(),
        kms_key_id: None,
    };
    let info = kvs_edge_agent::kvs::ensure_stream(&local.control(), "cam", Some(&create)).await?;
    assert_eq!(info.retention_hours, 1);
    Ok(())
}

#[tokio::test]
async fn stream_set_up_retries_with_the_upload_backoff() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    local.server.set_faults(kvs_local::Faults {
        http_error: Some(kvs_local::faults::HttpErrorFault {
            status: 500,
            error_type: "InternalFailure".into(),
            message: None,
            operations: vec!["DescribeStream".into()],
            count: Some(3),
        }),
        ..kvs_local::Faults::default()
    });
    let fragments = records(
        &Encoded::gstreamer(50, 25, 25, 160, 120)?,
        now_ms() - 60_000,
    )?;
    // Refusals of the set-up are retried (the SDK's own attempts, then the uploader's
    // `[upload]` backoff) while nothing is lost.
    let stats = upload_all(
        &local,
        "cam",
        &local.dir.path().join("j"),
        fast(),
        fragments,
    )
    .await;
    assert_eq!(stats.fragments_persisted.load(Ordering::Relaxed), 2);
    assert_eq!(stats.retention_hours.load(Ordering::Relaxed), 1);
    Ok(())
}
