//! Clipping, the I/O side: for each stream of a decision, wait (bounded) until the post-roll
//! is ingested (ListFragments), fetch the window with GetClip (split at 200 fragments /
//! 100 MB) and stream it into S3 under its deterministic key. Every stream ends with an
//! outcome (stored, already there, or a failure record in the bucket), never a crash.
//!
//! - this module: the `Archiver` (clients, decisions carried out, one clip per key at a time)
//!   and the outcomes it reports;
//! - `getclip`: a stream's window from KVS into S3 (asking a recording device for what KVS
//!   lacks), or its failure record;
//! - `handoff`: the MediaConvert job for a stored clip, replays of stored clips, and the
//!   recorded outcomes of jobs.

mod getclip;
mod handoff;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use kvs_edge_config::archiver::{ArchiverConfig, TranscodeMode};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::cloudwatch::CloudWatch;
use crate::decide::{ClipRequest, Decision, clip_key};
use crate::fetch::Kvs;
use handoff::Transcoder;
pub use handoff::{ReplayError, Resubmitted};

/// What happened to one stream's clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClipResult {
    Stored {
        bytes: u64,
        fragments: usize,
        requests: usize,
        /// The stream had no video up to the window's end by the deadline.
        short: bool,
        /// Further files, when the codec configuration changed inside the window.
        more_keys: Vec<String>,
        /// Fragments GetClip could not play on their own (left out of the clip).
        unplayable: usize,
    },
    /// An earlier delivery of the same alarm stored it.
    Duplicate,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stream: String,
    pub bucket: String,
    pub key: String,
    pub result: ClipResult,
    /// The transcoding hand-off: the job (or why it could not be submitted).
    pub transcode: Option<Result<Value, String>>,
    /// The window asked of the device that recorded it, and how that went.
    pub pull: Option<Value>,
}

impl Outcome {
    pub fn json(&self) -> Value {
        let mut v = json!({ "stream": self.stream, "bucket": self.bucket, "key": self.key });
        if let Some(pull) = &self.pull {
            v["pull"] = pull.clone();
        }
        match &self.transcode {
            Some(Ok(job)) => v["transcode"] = job.clone(),
            Some(Err(reason)) => v["transcode"] = json!({ "error": reason }),
            None => {}
        }
        match &self.result {
            ClipResult::Stored {
                bytes,
                fragments,
                requests,
                short,
                more_keys,
                unplayable,
            } => {
                v["more_keys"] = json!(more_keys);
                v["unplayable_fragments"] = json!(unplayable);
                v["result"] = json!("stored");
                v["bytes"] = json!(bytes);
                v["fragments"] = json!(fragments);
                v["get_clip_calls"] = json!(requests);
                v["short"] = json!(short);
            }
            ClipResult::Duplicate => v["result"] = json!("duplicate"),
            ClipResult::Failed(reason) => {
                v["result"] = json!("failed");
                v["reason"] = json!(reason);
            }
        }
        v
    }

    /// A failed clip, or a job that could not be submitted: either is worth a retry
    /// (a stored clip is then a duplicate, and only the job is submitted).
    pub fn failed(&self) -> bool {
        matches!(self.result, ClipResult::Failed(_)) || matches!(self.transcode, Some(Err(_)))
    }
}

/// The archiver's AWS side.
pub struct Archiver {
    pub cfg: ArchiverConfig,
    /// One lock per clip key: two deliveries of the same alarm handled at once (an SQS batch)
    /// make the clip once; the second finds it stored. (Across processes, the conditional
    /// completion of the upload does the same.)
    making: std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    transcoder: Option<Transcoder>,
    cloudwatch: Option<CloudWatch>,
    kvs: Kvs,
    sdk: aws_config::SdkConfig,
    pub s3: aws_sdk_s3::Client,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Where a clip's failure record goes.
fn failure_key(clip_key: &str) -> String {
    format!("{}.error.json", clip_key.trim_end_matches(".mp4"))
}

/// S3 user metadata must be US-ASCII.
fn ascii(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .take(max)
        .collect()
}

/// S3 tag values allow letters, digits, spaces and `+ - = . _ : / @`.
fn tag_value(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " +-=._:/@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

impl Archiver {
    /// Clients from the SDK's default chain (credentials, region, `AWS_ENDPOINT_URL*`), with
    /// the configuration's region and endpoints over it.
    pub async fn new(cfg: ArchiverConfig) -> anyhow::Result<Archiver> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &cfg.aws.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(url) = &cfg.aws.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        let kvs = Kvs {
            control: aws_sdk_kinesisvideo::Client::new(&sdk),
            sdk: sdk.clone(),
            throttle_budget: Duration::from_secs(cfg.clip.throttle_retry_s),
        };
        let mut s3 =
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(cfg.s3.force_path_style);
        if let Some(url) = &cfg.s3.endpoint_url {
            s3 = s3.endpoint_url(url);
        }
        let transcoder = match cfg.transcode.mode {
            TranscodeMode::Mediaconvert => Some(Transcoder::new(&cfg.transcode, &sdk)?),
            TranscodeMode::Off | TranscodeMode::S3Event => None,
        };
        let cloudwatch = if cfg.use_alarm_tags {
            Some(
                CloudWatch::new(&sdk, cfg.cloudwatch.endpoint_url.as_deref())
                    .context("the CloudWatch client")?,
            )
        } else {
            None
        };
        Ok(Archiver {
            making: Default::default(),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            transcoder,
            cloudwatch,
            cfg,
            kvs,
            sdk,
        })
    }

    /// Carries out one decision: its outcomes as JSON, and whether anything failed.
    pub async fn carry_out(&self, d: Decision) -> (Vec<Value>, bool) {
        match d {
            Decision::Ignore(reason) => {
                info!("ignored: {reason}");
                (vec![Decision::Ignore(reason).json()], false)
            }
            Decision::Clip(req) => {
                let outcomes = self.handle(&req).await;
                let failed = outcomes.iter().any(Outcome::failed);
                (outcomes.iter().map(Outcome::json).collect(), failed)
            }
            Decision::LookupTags(alarm) => {
                let (Some(cw), Some(arn)) = (self.cloudwatch.as_ref(), alarm.arn.clone()) else {
                    return (
                        vec![json!({"action": "ignore", "reason": "alarm tags are not read"})],
                        false,
                    );
                };
                match cw.alarm_tags(&arn).await {
                    Ok(tags) => {
                        let streams = crate::cloudwatch::streams_from_tags(&tags);
                        let d = crate::decide::with_tagged_streams(&self.cfg, *alarm, streams);
                        Box::pin(self.carry_out(d)).await
                    }
                    Err(e) => {
                        let reason = crate::store::error_chain(e.as_ref());
                        warn!("{reason}");
                        (
                            vec![
                                json!({"result": "failed", "alarm": alarm.name, "reason": reason}),
                            ],
                            true,
                        )
                    }
                }
            }
            Decision::Record(job) => match self.record_job(&job).await {
                Ok(v) => (vec![v], false),
                Err(e) => (
                    vec![json!({"result": "failed", "job": job.job_id,
                                "reason": crate::store::error_chain(e.as_ref())})],
                    true,
                ),
            },
        }
    }

    /// An SQS client from the same configuration (`[sqs] endpoint_url` over it).
    pub fn sqs_client(&self) -> aws_sdk_sqs::Client {
        let mut conf = aws_sdk_sqs::config::Builder::from(&self.sdk);
        if let Some(url) = &self.cfg.sqs.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        aws_sdk_sqs::Client::from_conf(conf.build())
    }

    /// Every stream of the decision, one after the other.
    pub async fn handle(&self, req: &ClipRequest) -> Vec<Outcome> {
        let mut out = Vec::new();
        for stream in &req.streams {
            out.push(self.clip_stream(req, stream).await);
        }
        out
    }

    /// One stream's clip, then its transcoding hand-off (for a clip stored now or before).
    async fn clip_stream(&self, req: &ClipRequest, stream: &str) -> Outcome {
        let key = clip_key(
            &self.cfg.key_template,
            stream,
            &req.alarm.name,
            req.start,
            req.end,
        );
        let lock = self
            .making
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let outcome = {
            let _making = lock.lock().await;
            self.store_and_hand_off(req, stream, &key).await
        };
        let mut making = self.making.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the lock once nobody else waits for it.
        if std::sync::Arc::strong_count(&lock) == 2 {
            making.remove(&key);
        }
        outcome
    }

    async fn store_and_hand_off(&self, req: &ClipRequest, stream: &str, key: &str) -> Outcome {
        let mut outcome = self.store_clip(req, stream, key).await;
        if matches!(
            outcome.result,
            ClipResult::Stored { .. } | ClipResult::Duplicate
        ) {
            outcome.transcode = self.hand_off(req, stream, &outcome.key).await;
        }
        outcome
    }
}
