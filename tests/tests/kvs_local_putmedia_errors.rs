//! PutMedia rule violations get the real KVS ErrorIds, HTTP-level failures the real error
//! types, and injected faults behave as documented; the server never wedges.

use std::time::Duration;

use bytes::Bytes;
use kvs_edge_agent::mkv::{self, TrackSpec};
use kvs_edge_agent::putmedia::{AckEvent, PutMediaError, Session};
use kvs_edge_tests::*;
use kvs_local::ebml;

const T: Duration = Duration::from_secs(30);

/// A hand-made Cluster: (track, relative ms, keyframe) blocks with tiny payloads.
fn cluster(timecode_ms: i64, blocks: &[(u8, i16, bool)]) -> Vec<u8> {
    let mut body = Vec::new();
    ebml::write_uint(&mut body, ebml::TIMECODE, timecode_ms as u64);
    for &(track, rel, key) in blocks {
        let mut b = vec![0x80 | track];
        b.extend_from_slice(&rel.to_be_bytes());
        b.push(if key { 0x80 } else { 0 });
        b.extend_from_slice(&[0, 0, 0, 2, 0x65, 0x88]);
        ebml::write_element(&mut body, ebml::SIMPLE_BLOCK, &b);
    }
    let mut out = Vec::new();
    ebml::write_element(&mut out, ebml::CLUSTER, &body);
    out
}

fn header(tracks: usize) -> Vec<u8> {
    let video = Encoded::from_annex_b(&annex_b_stub(), 25).expect("stub parses");
    let specs: Vec<TrackSpec> = (1..=tracks as u64)
        .map(|n| TrackSpec {
            number: n,
            uid: n,
            ..video.track()
        })
        .collect();
    mkv::session_header([1; 16], &specs, "kvs-edge-tests")
}

/// A minimal real SPS/PPS pair (x264, 320x240) and one IDR slice, as Annex B.
fn annex_b_stub() -> Vec<u8> {
    let sps = [
        0x67, 0x4D, 0x40, 0x15, 0xD9, 0x01, 0x41, 0xFB, 0x01, 0x6A, 0x0C, 0x0C, 0x0D, 0x4A, 0x00,
        0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x65, 0x1E, 0x2C, 0x5C, 0x90,
    ];
    [
        &[0, 0, 0, 1][..],
        &sps,
        &[0, 0, 0, 1, 0x68, 0xEB, 0xCC, 0xB2],
        &[0, 0, 0, 1, 0x65, 0x88, 0x84],
    ]
    .concat()
}

async fn errors_for(local: &Local, stream: &str, body: Vec<u8>) -> Vec<(u32, String)> {
    let acks = put_media(&local.url(), stream, vec![body], T)
        .await
        .expect("session runs");
    acks_of(&acks, AckEvent::Error)
        .iter()
        .map(|a| {
            (
                a.error_id.unwrap_or(0),
                a.error_code.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn rule_violations_get_their_error_ids() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.limits.max_fragment_bytes = 64 * 1024).await?;
    let kvs = local.control();
    let t0 = now_ms() - 600_000;
    let mut n = 0;
    let mut next_stream = || {
        n += 1;
        format!("s{n}")
    };
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "first frame not a keyframe",
            [header(1), cluster(t0, &[(1, 0, false)])].concat(),
            4006,
        ),
        (
            "garbage instead of MKV",
            b"this is not matroska at all".to_vec(),
            4006,
        ),
        (
            "no segment",
            [header(1)[..40].to_vec(), cluster(t0, &[(1, 0, true)])].concat(),
            4006,
        ),
        (
            "cluster before tracks",
            [header(1)[..52].to_vec(), cluster(t0, &[(1, 0, true)])].concat(),
            4006,
        ),
        (
            "truncated fragment",
            {
                let mut b = [header(1), cluster(t0, &[(1, 0, true), (1, 40, false)])].concat();
                b.truncate(b.len() - 3);
                b
            },
            4006,
        ),
        (
            "block for an undeclared track",
            [header(1), cluster(t0, &[(1, 0, true), (2, 40, true)])].concat(),
            4010,
        ),
        (
            "declared track without frames",
            [header(2), cluster(t0, &[(1, 0, true)])].concat(),
            4011,
        ),
        (
            "fragment longer than 10 s (the PutMedia reference's limit)",
            [header(1), cluster(t0, &[(1, 0, true), (1, 10_500, false)])].concat(),
            4002,
        ),
        (
            "too many tracks",
            [header(4), cluster(t0, &[(1, 0, true)])].concat(),
            4012,
        ),
        (
            "second segment",
            [header(1), cluster(t0, &[(1, 0, true)]), header(1)].concat(),
            4006,
        ),
        (
            "timecode going backwards",
            [
                header(1),
                cluster(t0, &[(1, 0, true)]),
                cluster(t0 - 1000, &[(1, 0, true)]),
            ]
            .concat(),
            4004,
        ),
    ];
    for (what, body, id) in cases {
        let stream = next_stream();
        create_stream(&kvs, &stream, 1).await?;
        let errors = errors_for(&local, &stream, body).await;
        assert_eq!(
            errors.iter().map(|e| e.0).collect::<Vec<_>>(),
            [id],
            "{what}: {errors:?}"
        );
    }

    // Fragment metadata: reserved names and more than 10 tags per fragment (written by
    // hand: the agent's fragmenter keeps within the limits).
    for tags in [
        vec![("AWS_SOMETHING".to_string(), "x".to_string())],
        (0..11)
            .map(|i| (format!("T{i}"), "x".to_string()))
            .collect(),
    ] {
        let stream = next_stream();
        create_stream(&kvs, &stream, 1).await?;
        let errors = errors_for(
            &local,
            &stream,
            [
                header(1),
                ebml::tags_element(&tags, true),
                cluster(t0, &[(1, 0, true)]),
            ]
            .concat(),
        )
        .await;
        assert_eq!(
            errors,
            [(4009, "FRAGMENT_METADATA_LIMIT_REACHED".to_string())]
        );
    }

    // A fragment over the (here lowered) size limit.
    let big: Vec<(u8, i16, bool)> = (0..8000).map(|i| (1, i as i16 / 10, i == 0)).collect();
    let stream = next_stream();
    create_stream(&kvs, &stream, 1).await?;
    let errors = errors_for(&local, &stream, [header(1), cluster(t0, &big)].concat()).await;
    assert_eq!(errors.iter().map(|e| e.0).collect::<Vec<_>>(), [4001]);

    // After all that the server still serves: a good session on a fresh stream works.
    let stream = next_stream();
    create_stream(&kvs, &stream, 1).await?;
    let acks = put_media(
        &local.url(),
        &stream,
        vec![[header(1), cluster(t0, &[(1, 0, true)])].concat()],
        T,
    )
    .await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 1, "{acks:?}");
    Ok(())
}

#[tokio::test]
async fn http_level_failures_before_streaming() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;

    let mut params = session_params(&local.url(), "missing");
    match open_answered(&params, T).await {
        Err(PutMediaError::Http {
            status: 404,
            error_type,
            ..
        }) => assert_eq!(error_type, "ResourceNotFoundException"),
        other => panic!("expected 404, got {:?}", other.err()),
    }
    params.stream_name = "cam".into();
    params.credentials =
        aws_credential_types::Credentials::new(DEFAULT_ACCESS_KEY, "wrong", None, None, "test");
    match open_answered(&params, T).await {
        Err(PutMediaError::Http {
            status: 403,
            error_type,
            ..
        }) => assert_eq!(error_type, "InvalidSignatureException"),
        other => panic!("expected 403, got {:?}", other.err()),
    }

    // One PutMedia connection per stream: a second one while the first is open is refused.
    let first = open_answered(&session_params(&local.url(), "cam"), T).await?;
    match open_answered(&session_params(&local.url(), "cam"), T).await {
        Err(PutMediaError::Http {
            status: 400,
            error_type,
            ..
        }) => assert_eq!(error_type, "ConnectionLimitExceededException"),
        other => panic!("expected ConnectionLimitExceeded, got {:?}", other.err()),
    }
    drop(first);
    // Once the first is gone the stream takes a new session (the server notices the close).
    let acks = tokio::time::timeout(T, async {
        loop {
            match put_media(
                &local.url(),
                "cam",
                vec![[header(1), cluster(now_ms() - 1000, &[(1, 0, true)])].concat()],
                T,
            )
            .await
            {
                Ok(acks) => break acks,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 1);
    Ok(())
}

#[tokio::test]
async fn injected_putmedia_faults() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 1).await?;
    let video = Encoded::gstreamer(100, 25, 25, 160, 120)?;
    let t0 = now_ms() - 300_000;
    let body = |start: i64| -> anyhow::Result<Vec<u8>> { Ok(video.upload(start, 1000)?.0) };

    // Refused connections: the client sees a connect error; clearing the fault restores service.
    local.server.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let refused = Session::open(&session_params(&local.url(), "cam"), T).await;
    assert!(
        matches!(refused, Err(PutMediaError::Connect { .. })),
        "{:?}",
        refused.err()
    );
    local.server.set_faults(Faults::default());
    let acks = tokio::time::timeout(T, async {
        loop {
            if let Ok(acks) = put_media(&local.url(), "cam", vec![body(t0)?], T).await {
                break Ok::<_, anyhow::Error>(acks);
            }
            tokio::task::yield_now().await;
        }
    })
    .await??;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 4);

    // An HTTP error on PutMedia.
    local.server.set_faults(Faults {
        http_error: Some(kvs_local::faults::HttpErrorFault {
            status: 500,
            error_type: "InternalFailure".into(),
            message: None,
            operations: vec!["PutMedia".into()],
            count: None,
        }),
        ..Faults::default()
    });
    assert!(matches!(
        open_answered(&session_params(&local.url(), "cam"), T).await,
        Err(PutMediaError::Http { status: 500, .. })
    ));

    // A chosen ErrorId after one fragment.
    local.server.set_faults(Faults {
        put_media_error: Some(kvs_local::faults::PutMediaErrorFault {
            error_id: 5001,
            after_fragments: 1,
            ..Default::default()
        }),
        ..Faults::default()
    });
    let acks = put_media(&local.url(), "cam", vec![body(t0 + 10_000)?], T).await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 1);
    let errors = acks_of(&acks, AckEvent::Error);
    assert_eq!(
        (
            errors.len(),
            errors[0].error_id,
            errors[0].error_code.as_deref()
        ),
        (1, Some(5001), Some("ARCHIVAL_ERROR"))
    );

    // Dropped mid-upload: the connection is cut, the cut fragment is never PERSISTED.
    let upload = body(t0 + 20_000)?;
    local.server.set_faults(Faults {
        drop_put_media_after_bytes: Some(upload.len() as u64 / 2),
        ..Faults::default()
    });
    let chunks: Vec<Vec<u8>> = upload.chunks(1000).map(<[u8]>::to_vec).collect();
    let acks = put_media(&local.url(), "cam", chunks, T).await?;
    let persisted = acks_of(&acks, AckEvent::Persisted).len();
    assert!(persisted < 4, "{acks:?}");
    assert_eq!(
        acks.last().map(|a| a.event_type),
        Some(AckEvent::Error),
        "the client sees the cut: {acks:?}"
    );

    // Delayed acks still all arrive, in order.
    local.server.set_faults(Faults {
        ack_delay_ms: 200,
        ..Faults::default()
    });
    let acks = put_media(&local.url(), "cam", vec![body(t0 + 30_000)?], T).await?;
    let kinds: Vec<AckEvent> = acks.iter().map(|a| a.event_type).take(3).collect();
    assert_eq!(
        kinds,
        [AckEvent::Buffering, AckEvent::Received, AckEvent::Persisted]
    );
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 4);
    Ok(())
}

#[tokio::test]
async fn idle_sessions_get_idle_acks_then_are_closed() -> anyhow::Result<()> {
    let local = Local::start_with(|c| {
        c.idle_ack_interval = Duration::from_millis(100);
        c.idle_timeout = Duration::from_millis(700);
    })
    .await?;
    create_stream(&local.control(), "cam", 1).await?;
    let mut session = Session::open(&session_params(&local.url(), "cam"), T).await?;
    session
        .send(Bytes::from(
            [header(1), cluster(now_ms() - 1000, &[(1, 0, true)])].concat(),
        ))
        .await?;
    // Upload left open and silent: the service must end the response by itself.
    let acks = tokio::time::timeout(T, async {
        let mut acks = Vec::new();
        while let Some(ack) = session.next_ack().await {
            acks.push(ack.expect("well-formed ack"));
        }
        acks
    })
    .await?;
    assert_eq!(
        acks.first().map(|a| a.event_type),
        Some(AckEvent::Buffering)
    );
    assert!(acks_of(&acks, AckEvent::Idle).len() >= 2, "{acks:?}");
    assert!(
        acks_of(&acks, AckEvent::Idle)
            .iter()
            .all(|a| a.fragment_timecode.is_none())
    );
    // The known-size Cluster was complete on arrival, so it was acked in full before the close.
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 1);
    Ok(())
}

#[tokio::test]
async fn archived_media_errors_through_the_sdk() -> anyhow::Result<()> {
    use aws_sdk_kinesisvideoarchivedmedia::primitives::DateTime;
    use aws_sdk_kinesisvideoarchivedmedia::types::*;
    let local = Local::start().await?;
    let kvs = local.control();
    let media = local.archived();
    let t0 = now_ms() - 600_000;
    let clip = |stream: &str, start: i64, end: i64| {
        media.get_clip().stream_name(stream).clip_fragment_selector(
            ClipFragmentSelector::builder()
                .fragment_selector_type(ClipFragmentSelectorType::ProducerTimestamp)
                .timestamp_range(
                    ClipTimestampRange::builder()
                        .start_timestamp(DateTime::from_millis(start))
                        .end_timestamp(DateTime::from_millis(end))
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
    };

    // A stream whose track has no codec private data, and one whose data is garbage.
    let video = Encoded::from_annex_b(&annex_b_stub(), 25)?;
    for (stream, private) in [("no-cpd", vec![]), ("bad-cpd", vec![1, 2, 3])] {
        create_stream(&kvs, stream, 1).await?;
        let track = TrackSpec {
            codec_private: private,
            ..video.track()
        };
        let body = [
            mkv::session_header([2; 16], &[track], "t"),
            cluster(t0, &[(1, 0, true)]),
        ]
        .concat();
        let acks = put_media(&local.url(), stream, vec![body], T).await?;
        assert_eq!(
            acks_of(&acks, AckEvent::Persisted).len(),
            1,
            "KVS stores it without checking: {acks:?}"
        );
    }
    let e = clip("no-cpd", t0 - 1, t0 + 1000)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_missing_codec_private_data_exception(), "{e:?}");
    let e = clip("bad-cpd", t0 - 1, t0 + 1000)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_codec_private_data_exception(), "{e:?}");

    // Nothing in range, a reversed range, a range over 24 h, an unknown stream.
    let e = clip("no-cpd", t0 + 60_000, t0 + 70_000)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_resource_not_found_exception(), "{e:?}");
    let e = clip("no-cpd", t0 + 1000, t0)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_argument_exception(), "{e:?}");
    let e = clip("no-cpd", t0, t0 + 25 * 3_600_000)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_argument_exception(), "{e:?}");
    let e = clip("nope", t0, t0 + 1000)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_resource_not_found_exception(), "{e:?}");
    let e = media
        .list_fragments()
        .stream_name("nope")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_resource_not_found_exception(), "{e:?}");
    let e = media
        .list_fragments()
        .stream_name("no-cpd")
        .max_results(5000)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_invalid_argument_exception(), "{e:?}");
    let e = media
        .get_media_for_fragment_list()
        .stream_name("nope")
        .fragments("1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(e.is_resource_not_found_exception(), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn twelve_overlapping_alarms_never_cost_the_video() -> anyhow::Result<()> {
    use kvs_edge_agent::camera::alarm_tags;
    use kvs_edge_agent::control::Alarm;
    let local = Local::start().await?;
    create_stream(&local.control(), "busy", 1).await?;
    let video = Encoded::gstreamer(50, 25, 25, 160, 120)?;
    let t0 = now_ms() - 60_000;
    let alarms: Vec<Alarm> = (0..12)
        .map(|i| Alarm {
            id: format!("zone-{i:02}-motion"),
            label: "person".into(),
            pre_s: 10,
            post_s: 30,
            start_ms: t0 - 1000 + i,
            end_ms: t0 + 60_000,
        })
        .collect();
    let refs: Vec<&Alarm> = alarms.iter().collect();
    let (tags, omitted) = alarm_tags(&refs);
    let mut f =
        kvs_edge_agent::fragmenter::Fragmenter::new(kvs_edge_agent::fragmenter::FragmenterConfig {
            target_ms: 1000,
            max_ms: 10_000,
        });
    let mut fragments = Vec::new();
    for au in video.access_units(t0) {
        if au.keyframe {
            f.set_tags(tags.clone(), omitted);
        }
        fragments.extend(f.push(au)?);
    }
    fragments.extend(f.flush());
    assert_eq!(fragments[0].tags_omitted, 0, "twelve short ids fit");
    let body = [
        mkv::session_header([3; 16], &[video.track()], "kvs-edge-tests"),
        fragments.iter().flat_map(|f| f.bytes.clone()).collect(),
    ]
    .concat();
    let acks = put_media(&local.url(), "busy", vec![body], T).await?;
    assert!(
        acks_of(&acks, AckEvent::Error).is_empty(),
        "no 4009: {acks:?}"
    );
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), fragments.len());
    // Every alarm is in the stored fragment's metadata.
    let listed = list_all_fragments(&local.archived(), "busy").await?;
    let number = listed[0].fragment_number.clone().unwrap();
    let media = get_media(&local.archived(), "busy", &[number]).await?;
    for a in &alarms {
        assert!(
            media.windows(a.id.len()).any(|w| w == a.id.as_bytes()),
            "{} is tagged",
            a.id
        );
    }
    Ok(())
}
