//! The KVS control plane as the agent uses it, through the official AWS SDK: stream set-up
//! like kvssink (DescribeStream, CreateStream when allowed, TagStream) and the PutMedia data
//! endpoint (GetDataEndpoint, cached, refreshed on failure and every 45 minutes).

use std::time::{Duration, Instant};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_kinesisvideo::Client;
use aws_sdk_kinesisvideo::config::{BehaviorVersion, Region};
use aws_sdk_kinesisvideo::types::ApiName;
use kvs_edge_config::AwsSettings;
use kvs_edge_config::agent::CreateStreamConfig;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KvsError {
    #[error("stream {stream} does not exist and create_stream is not set for it")]
    Missing { stream: String },
    #[error("{op} for stream {stream}: {reason}")]
    Api {
        op: &'static str,
        stream: String,
        reason: String,
    },
}

pub fn client(aws: &AwsSettings, credentials: SharedCredentialsProvider) -> Client {
    let mut cfg = aws_sdk_kinesisvideo::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(
            aws.region.clone().unwrap_or_else(|| "us-east-1".into()),
        ))
        .credentials_provider(credentials);
    if let Some(url) = &aws.endpoint_url {
        cfg = cfg.endpoint_url(url);
    }
    Client::from_conf(cfg.build())
}

fn api(op: &'static str, stream: &str, e: impl std::error::Error) -> KvsError {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // The SDK's operation errors repeat their inner error's text: said once.
        let text = s.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = s.source();
    }
    KvsError::Api {
        op,
        stream: stream.to_string(),
        reason,
    }
}

/// What the uploader needs to know of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// 0: the stream archives nothing; fragments are RECEIVED but never PERSISTED.
    pub retention_hours: u32,
}

impl StreamInfo {
    fn described(
        out: &aws_sdk_kinesisvideo::operation::describe_stream::DescribeStreamOutput,
    ) -> Self {
        let hours = out
            .stream_info
            .as_ref()
            .and_then(|i| i.data_retention_in_hours)
            .unwrap_or(0);
        StreamInfo {
            retention_hours: hours.max(0) as u32,
        }
    }
}

/// Makes sure the stream exists: creates it when `create` allows, applies its tags.
pub async fn ensure_stream(
    kvs: &Client,
    stream: &str,
    create: Option<&CreateStreamConfig>,
) -> Result<StreamInfo, KvsError> {
    match kvs.describe_stream().stream_name(stream).send().await {
        Ok(out) => {
            let info = StreamInfo::described(&out);
            if let Some(c) = create.filter(|c| !c.tags.is_empty()) {
                let mut req = kvs.tag_stream().stream_name(stream);
                for (k, v) in &c.tags {
                    req = req.tags(k, v);
                }
                // Tags are worth a warning, not the video: a policy without TagStream
                // (written before the agent tagged its streams) still streams.
                if let Err(e) = req.send().await {
                    tracing::warn!(
                        stream,
                        "could not tag the stream (the archiver then cannot tell which device \
                         records it without [[pull.devices]]): {}",
                        api("TagStream", stream, e)
                    );
                }
            }
            Ok(info)
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            let Some(c) = create else {
                return Err(KvsError::Missing {
                    stream: stream.to_string(),
                });
            };
            let mut req = kvs
                .create_stream()
                .stream_name(stream)
                .media_type("video/h264")
                .data_retention_in_hours(c.retention_period_hours as i32)
                .set_kms_key_id(c.kms_key_id.clone());
            for (k, v) in &c.tags {
                req = req.tags(k, v);
            }
            match req.send().await {
                Ok(_) => {
                    tracing::info!(
                        stream,
                        retention_hours = c.retention_period_hours,
                        "created the stream"
                    );
                    Ok(StreamInfo {
                        retention_hours: c.retention_period_hours,
                    })
                }
                // Another producer created it meanwhile: ask what it made.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_in_use_exception()) =>
                {
                    let out = kvs
                        .describe_stream()
                        .stream_name(stream)
                        .send()
                        .await
                        .map_err(|e| api("DescribeStream", stream, e))?;
                    Ok(StreamInfo::described(&out))
                }
                Err(e) => Err(api("CreateStream", stream, e)),
            }
        }
        Err(e) => Err(api("DescribeStream", stream, e)),
    }
}

/// The PUT_MEDIA data endpoint of one stream, cached.
pub struct DataEndpoint {
    stream: String,
    cached: Option<(String, Instant)>,
}

pub const ENDPOINT_TTL: Duration = Duration::from_secs(45 * 60);

impl DataEndpoint {
    pub fn new(stream: &str) -> DataEndpoint {
        DataEndpoint {
            stream: stream.to_string(),
            cached: None,
        }
    }

    pub async fn get(&mut self, kvs: &Client) -> Result<String, KvsError> {
        if let Some((url, at)) = &self.cached
            && at.elapsed() < ENDPOINT_TTL
        {
            return Ok(url.clone());
        }
        let out = kvs
            .get_data_endpoint()
            .stream_name(&self.stream)
            .api_name(ApiName::PutMedia)
            .send()
            .await
            .map_err(|e| api("GetDataEndpoint", &self.stream, e))?;
        let url = out.data_endpoint.ok_or_else(|| KvsError::Api {
            op: "GetDataEndpoint",
            stream: self.stream.clone(),
            reason: "no DataEndpoint in the answer".into(),
        })?;
        self.cached = Some((url.clone(), Instant::now()));
        Ok(url)
    }

    /// Forget the endpoint (after a failure): the next `get` asks again.
    pub fn invalidate(&mut self) {
        self.cached = None;
    }
}
