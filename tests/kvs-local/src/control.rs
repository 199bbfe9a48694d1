//! The KVS control plane: CreateStream, DescribeStream, ListStreams, DeleteStream,
//! TagStream, UntagStream, ListTagsForStream, UpdateDataRetention, GetDataEndpoint.
//! Request validation follows the API reference's constraints; errors use its names.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::server::{Body, State, epoch_seconds, json, parse};
use crate::store::{NewStream, StreamInfo};

const MAX_TAGS: usize = 50;
const API_NAMES: &[&str] = &[
    "PUT_MEDIA",
    "GET_MEDIA",
    "LIST_FRAGMENTS",
    "GET_MEDIA_FOR_FRAGMENT_LIST",
    "GET_HLS_STREAMING_SESSION_URL",
    "GET_DASH_STREAMING_SESSION_URL",
    "GET_CLIP",
    "GET_IMAGES",
];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamRef {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

pub fn validate_stream_name(name: &str) -> Result<(), ApiError> {
    let ok = (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "StreamName {name:?} must be 1-256 characters of [a-zA-Z0-9_.-]"
        )))
    }
}

fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in tags {
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return Err(ApiError::invalid(format!(
                "tag {k:?}: keys are 1-128 and values 0-256 characters"
            )));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::new(
            400,
            "TagsPerResourceExceededLimitException",
            format!("a stream can have at most {MAX_TAGS} tags"),
        ));
    }
    Ok(())
}

pub fn stream_info_json(info: &StreamInfo) -> Value {
    let mut v = json!({
        "StreamName": info.name,
        "StreamARN": info.arn,
        "KmsKeyId": info.kms_key_id,
        "Version": info.version,
        "Status": info.status,
        "CreationTime": epoch_seconds(info.creation_ms),
        "DataRetentionInHours": info.retention_hours,
    });
    if let Some(d) = &info.device_name {
        v["DeviceName"] = json!(d);
    }
    if let Some(m) = &info.media_type {
        v["MediaType"] = json!(m);
    }
    v
}

pub(crate) fn handle(
    state: &State,
    op: &str,
    body: &[u8],
    region: &str,
) -> Result<Response<Body>, ApiError> {
    let store = &state.store;
    match op {
        "CreateStream" => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Req {
                stream_name: String,
                device_name: Option<String>,
                media_type: Option<String>,
                kms_key_id: Option<String>,
                data_retention_in_hours: Option<i64>,
                #[serde(default)]
                tags: BTreeMap<String, String>,
            }
            let req: Req = parse(body)?;
            validate_stream_name(&req.stream_name)?;
            let retention = req.data_retention_in_hours.unwrap_or(0);
            if !(0..=87_600).contains(&retention) {
                return Err(ApiError::invalid(format!(
                    "DataRetentionInHours {retention} must be 0 to 87600"
                )));
            }
            if req
                .device_name
                .as_ref()
                .is_some_and(|d| d.is_empty() || d.len() > 128)
            {
                return Err(ApiError::invalid("DeviceName must be 1-128 characters"));
            }
            validate_tags(&req.tags)?;
            let info = store.create_stream(NewStream {
                name: req.stream_name,
                region: region.to_string(),
                device_name: req.device_name,
                media_type: req.media_type,
                kms_key_id: req.kms_key_id,
                retention_hours: retention as u32,
                tags: req.tags,
                now_ms: state.now_ms(),
            })?;
            Ok(json(&json!({ "StreamARN": info.arn })))
        }
        "DescribeStream" => {
            let r: StreamRef = parse(body)?;
            let info = store.describe(r.stream_name.as_deref(), r.stream_arn.as_deref())?;
            Ok(json(&json!({ "StreamInfo": stream_info_json(&info) })))
        }
        "ListStreams" => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Cond {
                comparison_operator: Option<String>,
                comparison_value: Option<String>,
            }
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Req {
                max_results: Option<usize>,
                next_token: Option<String>,
                stream_name_condition: Option<Cond>,
            }
            let req: Req = parse(body)?;
            let max = req.max_results.unwrap_or(10_000);
            if !(1..=10_000).contains(&max) {
                return Err(ApiError::invalid("MaxResults must be 1 to 10000"));
            }
            let prefix = match req.stream_name_condition {
                Some(c) => {
                    if c.comparison_operator
                        .as_deref()
                        .is_some_and(|o| o != "BEGINS_WITH")
                    {
                        return Err(ApiError::invalid("ComparisonOperator must be BEGINS_WITH"));
                    }
                    c.comparison_value.unwrap_or_default()
                }
                None => String::new(),
            };
            let start = decode_token(req.next_token.as_deref())?;
            let all: Vec<StreamInfo> = store
                .list()
                .into_iter()
                .filter(|s| s.name.starts_with(&prefix))
                .collect();
            let page: Vec<Value> = all
                .iter()
                .skip(start)
                .take(max)
                .map(stream_info_json)
                .collect();
            let mut out = json!({ "StreamInfoList": page });
            if start + max < all.len() {
                out["NextToken"] = json!(encode_token(start + max));
            }
            Ok(json(&out))
        }
        "DeleteStream" => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Req {
                #[serde(rename = "StreamARN")]
                stream_arn: Option<String>,
                current_version: Option<String>,
            }
            let req: Req = parse(body)?;
            let arn = req
                .stream_arn
                .ok_or_else(|| ApiError::invalid("StreamARN is required"))?;
            store.delete(&arn, req.current_version.as_deref())?;
            Ok(json(&json!({})))
        }
        "TagStream" => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Req {
                #[serde(flatten)]
                stream: StreamRef,
                tags: BTreeMap<String, String>,
            }
            let req: Req = parse(body)?;
            store.update(
                req.stream.stream_name.as_deref(),
                req.stream.stream_arn.as_deref(),
                |info| {
                    let mut tags = info.tags.clone();
                    tags.extend(req.tags);
                    validate_tags(&tags)?;
                    info.tags = tags;
                    Ok(())
                },
            )?;
            Ok(json(&json!({})))
        }
        "UntagStream" => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Req {
                #[serde(flatten)]
                stream: StreamRef,
                tag_key_list: Vec<String>,
            }
            let req: Req = parse(body)?;
            if req.tag_key_list.is_empty() || req.tag_key_list.len() > MAX_TAGS {
                return Err(ApiError::invalid("TagKeyList must have 1 to 50 keys"));
            }
            store.update(
                req.stream.stream_name.as_deref(),
                req.stream.stream_arn.as_deref(),
                |info| {
                    for k in &req.tag_key_list {
                        info.tags.remove(k);
                    }
                    Ok(())
                },
            )?;
            Ok(json(&json!({})))
        }
        "ListTagsForStream" => {
            let r: StreamRef = parse(body)?;
            let info = store.describe(r.stream_name.as_deref(), r.stream_arn.as_deref())?;
            Ok(json(&json!({ "Tags": info.tags })))
        }
        "UpdateDataRetention" => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Req {
                #[serde(flatten)]
                stream: StreamRef,
                current_version: Option<String>,
                operation: Option<String>,
                data_retention_change_in_hours: Option<i64>,
            }
            let req: Req = parse(body)?;
            let version = req
                .current_version
                .ok_or_else(|| ApiError::invalid("CurrentVersion is required"))?;
            let change = req
                .data_retention_change_in_hours
                .filter(|h| *h >= 1)
                .ok_or_else(|| {
                    ApiError::invalid("DataRetentionChangeInHours must be at least 1")
                })?;
            let sign = match req.operation.as_deref() {
                Some("INCREASE_DATA_RETENTION") => 1,
                Some("DECREASE_DATA_RETENTION") => -1,
                other => {
                    return Err(ApiError::invalid(format!(
                        "Operation must be INCREASE_DATA_RETENTION or DECREASE_DATA_RETENTION, got {other:?}"
                    )));
                }
            };
            store.update(
                req.stream.stream_name.as_deref(),
                req.stream.stream_arn.as_deref(),
                |info| {
                    if info.version != version {
                        return Err(ApiError::version_mismatch(format!(
                            "The stream version {version} does not match the current version {}",
                            info.version
                        )));
                    }
                    let new = i64::from(info.retention_hours) + sign * change;
                    if !(0..=87_600).contains(&new) {
                        return Err(ApiError::invalid(format!(
                            "the resulting retention {new} h must be 0 to 87600"
                        )));
                    }
                    info.retention_hours = new as u32;
                    Ok(())
                },
            )?;
            Ok(json(&json!({})))
        }
        "GetDataEndpoint" => {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Req {
                #[serde(flatten)]
                stream: StreamRef,
                #[serde(rename = "APIName")]
                api_name: Option<String>,
            }
            let req: Req = parse(body)?;
            let api = req.api_name.unwrap_or_default();
            if !API_NAMES.contains(&api.as_str()) {
                return Err(ApiError::invalid(format!(
                    "APIName {api:?} must be one of {}",
                    API_NAMES.join(", ")
                )));
            }
            store.describe(
                req.stream.stream_name.as_deref(),
                req.stream.stream_arn.as_deref(),
            )?;
            Ok(json(&json!({ "DataEndpoint": state.url })))
        }
        _ => Err(ApiError::unknown_operation(op)),
    }
}

pub fn encode_token(offset: usize) -> String {
    B64.encode(format!("kvs-local:{offset}"))
}

pub fn decode_token(token: Option<&str>) -> Result<usize, ApiError> {
    let Some(token) = token else { return Ok(0) };
    B64.decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("kvs-local:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "NextToken {token:?} is not a token this server issued"
            ))
        })
}
