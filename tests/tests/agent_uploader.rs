//! The agent's uploader on its own, fed real GStreamer-encoded fragments, against kvs-local:
//! a codec change starts a new session with new Tracks, sessions rotate on time, and
//! fragments KVS already stored (an ack lost before a restart) are recognised, not duplicated.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kvs_edge_agent::capture::CodecConfig;
use kvs_edge_agent::credentials::CredentialSource;
use kvs_edge_agent::kvs;
use kvs_edge_agent::uploader::{Outgoing, UploadStats, Uploader};
use kvs_edge_config::AwsSettings;
use kvs_edge_config::agent::{CredentialsConfig, UploadConfig};
use kvs_edge_tests::*;
use tokio::sync::mpsc;

const BOUND: Duration = Duration::from_secs(60);

fn outgoing(video: &Encoded, start_ms: i64) -> anyhow::Result<Vec<Outgoing>> {
    let codec = Arc::new(CodecConfig {
        avcc: video.codec_private.clone(),
        width: video.width,
        height: video.height,
    });
    let (_, fragments) = video.fragments(start_ms, 1000)?;
    Ok(fragments
        .into_iter()
        .map(|f| Outgoing {
            timecode_ms: f.timecode_ms,
            duration_ms: f.duration_ms,
            bytes: Bytes::from(f.bytes),
            codec: codec.clone(),
        })
        .collect())
}

async fn uploader(local: &Local, stream: &str, cfg: UploadConfig) -> (Uploader, Arc<UploadStats>) {
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

async fn upload_all(u: Uploader, fragments: Vec<Outgoing>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(u.run(rx));
    for f in fragments {
        tx.send(f).await.expect("uploader running");
    }
    drop(tx);
    tokio::time::timeout(BOUND, task)
        .await
        .expect("uploader finishes")
        .expect("no panic");
}

#[tokio::test]
async fn a_codec_change_starts_a_new_session_with_new_tracks() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    let start = now_ms() - 60_000;
    let mut fragments = outgoing(&Encoded::gstreamer(50, 25, 25, 320, 240)?, start)?;
    fragments.extend(outgoing(
        &Encoded::gstreamer(50, 25, 25, 160, 120)?,
        start + 10_000,
    )?);
    let (u, stats) = uploader(&local, "cam", fast()).await;
    upload_all(u, fragments).await;
    assert_eq!(stats.fragments_persisted.load(Ordering::Relaxed), 4);
    assert_eq!(
        stats.sessions.load(Ordering::Relaxed),
        2,
        "one session per codec configuration"
    );

    let listed = local
        .archived()
        .list_fragments()
        .stream_name("cam")
        .send()
        .await?
        .fragments
        .unwrap_or_default();
    let mut by_time: Vec<_> = listed
        .iter()
        .map(|f| {
            (
                f.producer_timestamp.unwrap().to_millis().unwrap(),
                f.fragment_number.clone().unwrap(),
            )
        })
        .collect();
    by_time.sort();
    for (i, (w, h)) in [(0, (320, 240)), (3, (160, 120))] {
        let mkv = local
            .archived()
            .get_media_for_fragment_list()
            .stream_name("cam")
            .fragments(&by_time[i].1)
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
    let mut fragments = outgoing(&video, start)?;
    fragments.extend(outgoing(&video, start + 10_000)?);
    let later = fragments.split_off(2);
    let (u, stats) = uploader(
        &local,
        "cam",
        UploadConfig {
            session_rotate_secs: 1,
            ..fast()
        },
    )
    .await;
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(u.run(rx));
    for f in fragments {
        tx.send(f).await?;
    }
    let persisted = |s: &UploadStats| s.fragments_persisted.load(Ordering::Relaxed);
    tokio::time::timeout(
        BOUND,
        stats.wait_until(|s| persisted(s) >= 2 && s.rotations.load(Ordering::Relaxed) >= 1),
    )
    .await?;
    for f in later {
        tx.send(f).await?;
    }
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
    let fragments = outgoing(
        &Encoded::gstreamer(75, 25, 25, 160, 120)?,
        now_ms() - 60_000,
    )?;
    let (u, _) = uploader(&local, "cam", fast()).await;
    upload_all(u, fragments[..2].to_vec()).await;

    // A restarted agent that never saw the acks of the first two sends all three again.
    let (u, stats) = uploader(&local, "cam", fast()).await;
    upload_all(u, fragments.clone()).await;
    assert_eq!(
        stats.fragments_persisted.load(Ordering::Relaxed),
        3,
        "2 recognised as stored, 1 new"
    );
    let listed = local
        .archived()
        .list_fragments()
        .stream_name("cam")
        .send()
        .await?
        .fragments
        .unwrap_or_default();
    assert_eq!(listed.len(), 3, "no duplicates in KVS");
    Ok(())
}
