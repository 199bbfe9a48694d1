//! PutMedia into kvs-local with real GStreamer-encoded H.264, the agent's fragmenter and
//! PutMedia client; archived media read back with the official AWS SDK for Rust and checked
//! by ffprobe and mkvinfo.

use std::time::Duration;

use kvs_edge_agent::putmedia::AckEvent;
use kvs_edge_tests::*;

const T: Duration = Duration::from_secs(30);

fn range(
    start_ms: i64,
    end_ms: i64,
) -> aws_sdk_kinesisvideoarchivedmedia::types::ClipTimestampRange {
    aws_sdk_kinesisvideoarchivedmedia::types::ClipTimestampRange::builder()
        .start_timestamp(
            aws_sdk_kinesisvideoarchivedmedia::primitives::DateTime::from_millis(start_ms),
        )
        .end_timestamp(aws_sdk_kinesisvideoarchivedmedia::primitives::DateTime::from_millis(end_ms))
        .build()
        .unwrap()
}

#[tokio::test]
async fn fragments_are_acked_persisted_listed_and_clipped() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let client = local.control();
    create_stream(&client, "cam-front", 24).await?;

    // 10 s of 320x240 at 25 fps with a keyframe every second → 5 fragments of 2 s.
    let video = Encoded::gstreamer(250, 25, 25, 320, 240)?;
    let start = now_ms() - 60_000;
    let (header, fragments) = video.fragments(start, 2000)?;
    assert_eq!(fragments.len(), 5);

    // The exact bytes we upload are valid Matroska to mkvtoolnix and ffprobe.
    let mut stream = header.clone();
    fragments
        .iter()
        .for_each(|f| stream.extend_from_slice(&f.bytes));
    let file = local.dir.path().join("upload.mkv");
    std::fs::write(&file, &stream)?;
    let info = mkvinfo(&file)?;
    assert!(info.contains("V_MPEG4/ISO/AVC"), "{info}");
    assert_eq!(info.lines().filter(|l| *l == "|+ Cluster").count(), 5);
    let (codec, w, h, _, frames) = ffprobe(&file)?;
    assert_eq!((codec.as_str(), w, h, frames), ("h264", 320, 240, 250));

    // Upload in odd-sized chunks so element boundaries never line up with chunk edges.
    let chunks: Vec<Vec<u8>> = stream.chunks(7919).map(<[u8]>::to_vec).collect();
    let acks = put_media(&local.url(), "cam-front", chunks, T).await?;
    let persisted = acks_of(&acks, AckEvent::Persisted);
    assert_eq!(acks_of(&acks, AckEvent::Buffering).len(), 5, "{acks:?}");
    assert_eq!(acks_of(&acks, AckEvent::Received).len(), 5);
    assert_eq!(persisted.len(), 5);
    assert!(acks_of(&acks, AckEvent::Error).is_empty(), "{acks:?}");
    let timecodes: Vec<i64> = persisted
        .iter()
        .map(|a| a.fragment_timecode.unwrap())
        .collect();
    assert_eq!(
        timecodes,
        fragments.iter().map(|f| f.timecode_ms).collect::<Vec<_>>()
    );
    let numbers: Vec<&str> = persisted
        .iter()
        .map(|a| a.fragment_number.as_deref().unwrap())
        .collect();
    assert!(
        numbers
            .iter()
            .all(|n| n.len() == 47 && n.bytes().all(|b| b.is_ascii_digit())),
        "{numbers:?}"
    );
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "fragment numbers increase"
    );
    // Per fragment the order is BUFFERING, RECEIVED, PERSISTED.
    for n in &numbers {
        let kinds: Vec<AckEvent> = acks
            .iter()
            .filter(|a| a.fragment_number.as_deref() == Some(n))
            .map(|a| a.event_type)
            .collect();
        assert_eq!(
            kinds,
            [AckEvent::Buffering, AckEvent::Received, AckEvent::Persisted]
        );
    }

    // GetDataEndpoint → archived-media client.
    let endpoint = client
        .get_data_endpoint()
        .stream_name("cam-front")
        .api_name(aws_sdk_kinesisvideo::types::ApiName::ListFragments)
        .send()
        .await?
        .data_endpoint
        .unwrap();
    assert_eq!(endpoint, local.url());
    let archived = archived_client(&endpoint);

    // ListFragments with paging, by producer timestamp.
    use aws_sdk_kinesisvideoarchivedmedia::types::{
        FragmentSelector, FragmentSelectorType, TimestampRange,
    };
    let selector = FragmentSelector::builder()
        .fragment_selector_type(FragmentSelectorType::ProducerTimestamp)
        .timestamp_range(
            TimestampRange::builder()
                .start_timestamp(
                    aws_sdk_kinesisvideoarchivedmedia::primitives::DateTime::from_millis(start),
                )
                .end_timestamp(
                    aws_sdk_kinesisvideoarchivedmedia::primitives::DateTime::from_millis(
                        start + 20_000,
                    ),
                )
                .build()?,
        )
        .build()?;
    let mut listed = Vec::new();
    let mut token = None;
    loop {
        let page = archived
            .list_fragments()
            .stream_name("cam-front")
            .max_results(2)
            .fragment_selector(selector.clone())
            .set_next_token(token)
            .send()
            .await?;
        listed.extend(page.fragments.unwrap_or_default());
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(listed.len(), 5);
    let mut listed_numbers: Vec<String> = listed
        .iter()
        .map(|f| f.fragment_number.clone().unwrap())
        .collect();
    listed_numbers.sort();
    assert_eq!(listed_numbers, numbers);
    let first = &listed[0];
    // rest-json timestamps are float epoch seconds: clients may land 1 ms below.
    assert!((first.producer_timestamp.unwrap().to_millis()? - start).abs() <= 1);
    assert_eq!(first.fragment_length_in_milliseconds, 2000);
    assert!(first.fragment_size_in_bytes > 1000);
    assert!(first.server_timestamp.unwrap().to_millis()? >= now_ms() - T.as_millis() as i64);

    // GetClip of the middle 6 s: three whole fragments, a playable MP4.
    let (content_type, mp4) = get_clip(&archived, "cam-front", start + 2000, start + 7999).await?;
    assert_eq!(content_type.as_deref(), Some("video/mp4"));
    let path = local.dir.path().join("clip.mp4");
    std::fs::write(&path, &mp4)?;
    let (codec, w, h, duration, frames) = ffprobe(&path)?;
    assert_eq!((codec.as_str(), w, h), ("h264", 320, 240));
    assert_eq!(frames, 150, "three 2 s fragments at 25 fps");
    assert!(
        (duration - 6.0).abs() < 2.0,
        "duration {duration} within one fragment of the 6 s asked for"
    );

    // GetMediaForFragmentList: the stored fragments come back as Matroska with KVS tags;
    // an unknown fragment number comes back as error tags with HTTP 200.
    let media = archived
        .get_media_for_fragment_list()
        .stream_name("cam-front")
        .fragments(numbers[1])
        .fragments("91343852333999999999999999999999999999999999999")
        .send()
        .await?;
    let mkv = media.payload.collect().await?.into_bytes();
    let text = String::from_utf8_lossy(&mkv);
    assert!(text.contains("AWS_KINESISVIDEO_FRAGMENT_NUMBER") && text.contains(numbers[1]));
    assert!(text.contains("FRAGMENT_NOT_FOUND") && text.contains("3000"));
    // Its first segment is a valid, playable MKV of one 2 s fragment.
    let first_segment_end = mkv
        .windows(4)
        .skip(4)
        .position(|w| w == [0x1A, 0x45, 0xDF, 0xA3])
        .map(|p| p + 4)
        .unwrap();
    let path = local.dir.path().join("fragment.mkv");
    std::fs::write(&path, &mkv[..first_segment_end])?;
    mkvinfo(&path)?;
    let (_, _, _, _, frames) = ffprobe(&path)?;
    assert_eq!(frames, 50);
    Ok(())
}

#[tokio::test]
async fn fragments_survive_a_restart_and_a_resend_is_stored_again() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    let video = Encoded::gstreamer(50, 25, 25, 160, 120)?;
    let start = now_ms() - 30_000;
    let (body, _) = video.upload(start, 1000)?;
    let acks = put_media(&local.url(), "cam", vec![body.clone()], T).await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 2, "{acks:?}");

    // Restart on the same data dir: streams and fragments are still there.
    let Local { server, dir } = local;
    server.stop().await;
    let cfg = Config::new("127.0.0.1:0".parse()?, dir.path());
    let server = Server::start(cfg).await?;
    let archived = archived_client(&server.url());
    assert_eq!(list_all_fragments(&archived, "cam").await?.len(), 2);

    // A later session may send older producer timestamps (a resend after a lost ack, an
    // upload of recorded video): the service stores them again (4004 is about order within
    // one session), ListFragments lists both copies, GetClip deduplicates producer time.
    let acks = put_media(&server.url(), "cam", vec![body], T).await?;
    assert!(acks_of(&acks, AckEvent::Error).is_empty(), "{acks:?}");
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 2, "{acks:?}");
    assert_eq!(
        list_all_fragments(&archived, "cam").await?.len(),
        4,
        "both copies are stored"
    );
    let (_, clip) = get_clip(&archived, "cam", start - 1000, start + 5000).await?;
    let path = dir.path().join("dedup.mp4");
    std::fs::write(&path, clip)?;
    let (_, _, _, _, frames) = ffprobe(&path)?;
    assert_eq!(frames, 50, "each frame once");

    // Later video is accepted.
    let (body, _) = video.upload(start + 10_000, 1000)?;
    let acks = put_media(&server.url(), "cam", vec![body], T).await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 2, "{acks:?}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn retention_expires_old_fragments() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "short", 1).await?;
    let video = Encoded::gstreamer(25, 25, 25, 160, 120)?;
    let (body, _) = video.upload(now_ms() - 10_000, 1000)?;
    let acks = put_media(&local.url(), "short", vec![body], T).await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 1);
    let archived = local.archived();
    assert_eq!(
        archived
            .list_fragments()
            .stream_name("short")
            .send()
            .await?
            .fragments
            .unwrap_or_default()
            .len(),
        1
    );

    // Two hours later (the data clock is shifted), the 1 h retention has removed it.
    local.server.set_faults(Faults {
        clock_offset_ms: 2 * 3_600_000,
        ..Faults::default()
    });
    assert!(
        archived
            .list_fragments()
            .stream_name("short")
            .send()
            .await?
            .fragments
            .unwrap_or_default()
            .is_empty()
    );
    let fragment_files = std::fs::read_dir(local.dir.path().join("streams/1/fragments"))?.count();
    assert_eq!(fragment_files, 0, "expired fragment files are deleted");
    Ok(())
}

#[tokio::test]
async fn zero_retention_acks_without_persisting() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "live-only", 0).await?;
    let video = Encoded::gstreamer(25, 25, 25, 160, 120)?;
    let (body, _) = video.upload(now_ms() - 5_000, 1000)?;
    let acks = put_media(&local.url(), "live-only", vec![body], T).await?;
    assert_eq!(acks_of(&acks, AckEvent::Received).len(), 1);
    assert!(
        acks_of(&acks, AckEvent::Persisted).is_empty(),
        "no archive, no PERSISTED"
    );
    let err = local
        .archived()
        .get_clip()
        .stream_name("live-only")
        .clip_fragment_selector(
            aws_sdk_kinesisvideoarchivedmedia::types::ClipFragmentSelector::builder()
                .fragment_selector_type(aws_sdk_kinesisvideoarchivedmedia::types::ClipFragmentSelectorType::ServerTimestamp)
                .timestamp_range(range(now_ms() - 60_000, now_ms() - 1))
                .build()?,
        )
        .send()
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_no_data_retention_exception());
    Ok(())
}
