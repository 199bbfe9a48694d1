//! The KVS control plane of kvs-local through the official AWS SDK for Rust: every
//! operation, and the error shapes the SDK must recognise.

use aws_sdk_kinesisvideo::types::{
    ApiName, ComparisonOperator, StreamNameCondition, UpdateDataRetentionOperation,
};
use kvs_edge_tests::*;

#[tokio::test]
async fn every_control_plane_operation_through_the_sdk() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let kvs = local.control();

    let arn = kvs
        .create_stream()
        .stream_name("garage-cam")
        .device_name("pi-garage")
        .media_type("video/h264")
        .data_retention_in_hours(24)
        .tags("site", "home")
        .send()
        .await?
        .stream_arn
        .unwrap();
    assert!(
        arn.starts_with("arn:aws:kinesisvideo:us-east-1:000000000000:stream/garage-cam/"),
        "{arn}"
    );

    let info = kvs
        .describe_stream()
        .stream_name("garage-cam")
        .send()
        .await?
        .stream_info
        .unwrap();
    assert_eq!(info.stream_arn.as_deref(), Some(arn.as_str()));
    assert_eq!(info.device_name.as_deref(), Some("pi-garage"));
    assert_eq!(info.media_type.as_deref(), Some("video/h264"));
    assert_eq!(info.data_retention_in_hours, Some(24));
    assert_eq!(
        info.status,
        Some(aws_sdk_kinesisvideo::types::Status::Active)
    );
    assert!(info.creation_time.unwrap().secs() > 1_700_000_000);
    let by_arn = kvs
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await?
        .stream_info
        .unwrap();
    assert_eq!(by_arn.stream_name.as_deref(), Some("garage-cam"));

    // ListStreams: prefix filter and paging.
    for name in ["door-1", "door-2", "door-3"] {
        create_stream(&kvs, name, 0).await?;
    }
    let cond = StreamNameCondition::builder()
        .comparison_operator(ComparisonOperator::BeginsWith)
        .comparison_value("door-")
        .build();
    let first = kvs
        .list_streams()
        .stream_name_condition(cond.clone())
        .max_results(2)
        .send()
        .await?;
    assert_eq!(first.stream_info_list.unwrap_or_default().len(), 2);
    let rest = kvs
        .list_streams()
        .stream_name_condition(cond)
        .max_results(2)
        .next_token(first.next_token.expect("a second page"))
        .send()
        .await?;
    let names: Vec<String> = rest
        .stream_info_list
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| s.stream_name)
        .collect();
    assert_eq!(names, ["door-3"]);
    assert!(rest.next_token.is_none());
    assert_eq!(
        kvs.list_streams()
            .send()
            .await?
            .stream_info_list
            .unwrap_or_default()
            .len(),
        4
    );

    // Tags.
    kvs.tag_stream()
        .stream_name("garage-cam")
        .tags("camera", "c1")
        .tags("site", "barn")
        .send()
        .await?;
    let tags = kvs
        .list_tags_for_stream()
        .stream_arn(&arn)
        .send()
        .await?
        .tags
        .unwrap_or_default();
    assert_eq!(
        (tags["site"].as_str(), tags["camera"].as_str(), tags.len()),
        ("barn", "c1", 2)
    );
    kvs.untag_stream()
        .stream_name("garage-cam")
        .tag_key_list("camera")
        .send()
        .await?;
    let tags = kvs
        .list_tags_for_stream()
        .stream_name("garage-cam")
        .send()
        .await?
        .tags
        .unwrap_or_default();
    assert_eq!(tags.keys().collect::<Vec<_>>(), ["site"]);

    // UpdateDataRetention with the current version; a stale version is refused.
    let version = kvs
        .describe_stream()
        .stream_name("garage-cam")
        .send()
        .await?
        .stream_info
        .unwrap()
        .version
        .unwrap();
    kvs.update_data_retention()
        .stream_name("garage-cam")
        .current_version(&version)
        .operation(UpdateDataRetentionOperation::IncreaseDataRetention)
        .data_retention_change_in_hours(48)
        .send()
        .await?;
    let info = kvs
        .describe_stream()
        .stream_name("garage-cam")
        .send()
        .await?
        .stream_info
        .unwrap();
    assert_eq!(info.data_retention_in_hours, Some(72));
    let stale = kvs
        .update_data_retention()
        .stream_name("garage-cam")
        .current_version(&version)
        .operation(UpdateDataRetentionOperation::DecreaseDataRetention)
        .data_retention_change_in_hours(1)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(stale.is_version_mismatch_exception(), "{stale:?}");

    // GetDataEndpoint returns kvs-local's own URL for every data API.
    for api in [
        ApiName::PutMedia,
        ApiName::GetClip,
        ApiName::ListFragments,
        ApiName::GetMediaForFragmentList,
    ] {
        let ep = kvs
            .get_data_endpoint()
            .stream_name("garage-cam")
            .api_name(api)
            .send()
            .await?;
        assert_eq!(ep.data_endpoint.as_deref(), Some(local.url().as_str()));
    }

    // DeleteStream with a stale version fails; with none it works, and the stream is gone.
    let err = kvs
        .delete_stream()
        .stream_arn(&arn)
        .current_version("v9999-9")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_version_mismatch_exception(), "{err:?}");
    kvs.delete_stream().stream_arn(&arn).send().await?;
    let err = kvs
        .describe_stream()
        .stream_name("garage-cam")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_resource_not_found_exception(), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn errors_have_the_shapes_the_sdk_parses() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let kvs = local.control();
    create_stream(&kvs, "cam", 1).await?;

    let dup = kvs
        .create_stream()
        .stream_name("cam")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(dup.is_resource_in_use_exception(), "{dup:?}");

    let bad_name = kvs
        .create_stream()
        .stream_name("no spaces/allowed")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(bad_name.is_invalid_argument_exception(), "{bad_name:?}");
    assert!(
        bad_name.to_string().contains("StreamName")
            || format!("{bad_name:?}").contains("StreamName")
    );

    let missing = kvs
        .get_data_endpoint()
        .stream_name("nope")
        .api_name(ApiName::PutMedia)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(missing.is_resource_not_found_exception(), "{missing:?}");

    let too_many = (0..51).fold(kvs.tag_stream().stream_name("cam"), |req, i| {
        req.tags(format!("k{i}"), "v")
    });
    let err = too_many.send().await.unwrap_err().into_service_error();
    assert!(
        err.is_tags_per_resource_exceeded_limit_exception(),
        "{err:?}"
    );

    // A wrong secret key: HTTP 403 with an AWS auth error code, for every operation.
    let wrong = kvs_client(&local.url(), DEFAULT_ACCESS_KEY, "not-the-secret");
    let err = wrong.list_streams().send().await.unwrap_err();
    let raw = err.raw_response().expect("an HTTP response");
    assert_eq!(raw.status().as_u16(), 403);
    assert_eq!(
        aws_sdk_kinesisvideo::error::ProvideErrorMetadata::code(&err),
        Some("InvalidSignatureException")
    );
    let unknown = kvs_client(&local.url(), "someone-else", DEFAULT_SECRET_KEY);
    let err = unknown
        .describe_stream()
        .stream_name("cam")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_kinesisvideo::error::ProvideErrorMetadata::code(&err),
        Some("UnrecognizedClientException")
    );
    Ok(())
}

#[tokio::test]
async fn injected_faults_reach_the_sdk() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let kvs = local.control();
    create_stream(&kvs, "cam", 1).await?;

    // A one-shot 500 on DescribeStream: the SDK's standard retry absorbs it.
    local.server.set_faults(Faults {
        http_error: Some(kvs_local::faults::HttpErrorFault {
            status: 500,
            error_type: "InternalFailure".into(),
            message: None,
            operations: vec!["DescribeStream".into()],
            count: Some(1),
        }),
        ..Faults::default()
    });
    kvs.describe_stream().stream_name("cam").send().await?;

    // Throttling: ClientLimitExceededException once the per-second budget is spent.
    let no_retry = aws_sdk_kinesisvideo::Client::from_conf(
        kvs.config()
            .to_builder()
            .retry_config(aws_sdk_kinesisvideo::config::retry::RetryConfig::disabled())
            .build(),
    );
    local.server.set_faults(Faults {
        throttle: Some(kvs_local::faults::ThrottleFault {
            operations: vec!["ListStreams".into()],
            max_per_second: 1,
        }),
        ..Faults::default()
    });
    let mut throttled = None;
    for _ in 0..5 {
        if let Err(e) = no_retry.list_streams().send().await {
            throttled = Some(e.into_service_error());
            break;
        }
    }
    let throttled = throttled.expect("five calls within a 1 TPS budget: at least one throttled");
    assert!(
        throttled.is_client_limit_exceeded_exception(),
        "{throttled:?}"
    );
    local.server.set_faults(Faults::default());
    no_retry.list_streams().send().await?;
    Ok(())
}
