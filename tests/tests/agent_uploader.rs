//! The agent's uploader on its own, fed real GStreamer-encoded fragments through a journal,
//! against kvs-local: a codec change starts a new session with new Tracks, sessions rotate on
//! time, fragments KVS already stored (an ack lost before a restart) are recognised and not
//! duplicated, and the rate cap holds.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvs_edge_agent::capture::CodecConfig;
use kvs_edge_agent::credentials::CredentialSource;
use kvs_edge_agent::journal::{Appended, FsyncPolicy, FullPolicy, Journal, JournalConfig, Record};
use kvs_edge_agent::kvs;
use kvs_edge_agent::uploader::{UploadStats, Uploader};
use kvs_edge_config::AwsSettings;
use kvs_edge_config::agent::{CredentialsConfig, UploadConfig};
use kvs_edge_tests::*;
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(60);

fn records(video: &Encoded, start_ms: i64) -> anyhow::Result<Vec<Record>> {
    let codec = Arc::new(CodecConfig {
        avcc: video.codec_private.clone(),
        width: video.width,
        height: video.height,
    });
    let (_, fragments) = video.fragments(start_ms, 1000)?;
    Ok(fragments
        .into_iter()
        .map(|f| Record {
            timecode_ms: f.timecode_ms,
            duration_ms: f.duration_ms,
            codec: codec.clone(),
            bytes: f.bytes,
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
async fn fragments_kvs_already_has_are_not_sent_twice() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    let fragments = records(
        &Encoded::gstreamer(75, 25, 25, 160, 120)?,
        now_ms() - 60_000,
    )?;
    upload_all(
        &local,
        "cam",
        &local.dir.path().join("j1"),
        fast(),
        fragments[..2].to_vec(),
    )
    .await;

    // A restarted agent whose journal never saw the acks of the first two sends all three.
    let stats = upload_all(
        &local,
        "cam",
        &local.dir.path().join("j2"),
        fast(),
        fragments,
    )
    .await;
    assert_eq!(
        stats.fragments_persisted.load(Ordering::Relaxed),
        3,
        "2 recognised as stored, 1 new"
    );
    assert_eq!(
        list_all_fragments(&local.archived(), "cam").await?.len(),
        3,
        "no duplicates in KVS"
    );
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
