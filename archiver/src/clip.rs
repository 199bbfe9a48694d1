//! Clipping, the I/O side: for each stream of a decision, wait (bounded) until the post-roll
//! is ingested (ListFragments), fetch the window with GetClip (split at 200 fragments /
//! 100 MB) and stream it into S3 under its deterministic key. Every stream ends with an
//! outcome (stored, already there, or a failure record in the bucket), never a crash.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kinesisvideo::types::ApiName;
use chrono::{DateTime, SecondsFormat, Utc};
use kvs_edge_config::archiver::ArchiverConfig;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::cloudwatch::CloudWatch;
use crate::decide::{ClipRequest, Decision, clip_key};
use crate::event::JobState;
use crate::fetch::{ClipError, Kvs};
use crate::mediaconvert::MediaConvert;
use crate::mp4join::{Joiner, Output};
use crate::plan;
use crate::pull;
use crate::store::{self, StoreError, Target, Upload, Written, error_chain};
use crate::transcode::{JobFor, Template};
use kvs_edge_config::archiver::{TranscodeMode, TranscodeSettings};
use sha2::{Digest, Sha256};

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

/// The MediaConvert hand-off: client, template, settings.
struct Transcoder {
    mc: MediaConvert,
    template: Template,
    settings: TranscodeSettings,
}

impl Transcoder {
    fn new(
        settings: &TranscodeSettings,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Transcoder, String> {
        let template = match &settings.template {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Template::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?
            }
            None => Template::default_template(),
        };
        Ok(Transcoder {
            mc: MediaConvert::new(sdk, settings.endpoint_url.as_deref())?,
            template,
            settings: settings.clone(),
        })
    }
}

impl Transcoder {
    /// The CreateJob request for a clip: its outputs under `<output prefix><clip stem>/` of
    /// the output bucket (the clip's bucket by default).
    fn request(
        &self,
        bucket: &str,
        key: &str,
        stream: &str,
        alarm: &str,
        replay: Option<&str>,
    ) -> Value {
        let stem = key.trim_end_matches(".mp4");
        let out_bucket = self.settings.output_bucket.as_deref().unwrap_or(bucket);
        let mut user_metadata = vec![
            ("clip_bucket".into(), bucket.to_string()),
            ("clip_key".into(), key.to_string()),
            ("stream".into(), stream.to_string()),
            ("alarm".into(), ascii(alarm, 255)),
        ];
        if let Some(run) = replay {
            user_metadata.push(("replay".into(), run.to_string()));
        }
        self.template.job(&JobFor {
            input: format!("s3://{bucket}/{key}"),
            destination: format!("s3://{out_bucket}/{}{stem}/", self.settings.output_prefix),
            role: self.settings.role_arn.clone().unwrap_or_default(),
            queue: self.settings.queue.clone(),
            user_metadata,
        })
    }
}

/// What a replayed clip's hand-off did (see `Archiver::resubmit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resubmitted {
    /// A job was submitted now.
    Submitted { job: String },
    /// This run submitted it before (an interrupted run, resumed).
    Before { job: String },
    /// Filtered: the clip's job completed (with `only_untranscoded`).
    Transcoded { job: String },
    /// `dry_run`: a job would be submitted.
    WouldSubmit,
}

/// Why a replayed clip's hand-off failed; `retryable` maps to S3 Batch Operations'
/// TemporaryFailure (PermanentFailure otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayError {
    pub retryable: bool,
    pub message: String,
}

impl ReplayError {
    fn permanent(message: impl Into<String>) -> ReplayError {
        ReplayError {
            retryable: false,
            message: message.into(),
        }
    }
    fn temporary(message: impl Into<String>) -> ReplayError {
        ReplayError {
            retryable: true,
            message: message.into(),
        }
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
    pub async fn new(cfg: ArchiverConfig) -> Result<Archiver, String> {
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
            Some(CloudWatch::new(
                &sdk,
                cfg.cloudwatch.endpoint_url.as_deref(),
            )?)
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
                        warn!("{e}");
                        (
                            vec![json!({"result": "failed", "alarm": alarm.name, "reason": e})],
                            true,
                        )
                    }
                }
            }
            Decision::Record(job) => match self.record_job(&job).await {
                Ok(v) => (vec![v], false),
                Err(e) => (
                    vec![json!({"result": "failed", "job": job.job_id, "reason": e})],
                    true,
                ),
            },
        }
    }

    /// What a run of MediaConvert jobs needs, checked before the first one: the role
    /// MediaConvert assumes, and the account's endpoint (DescribeEndpoints answers). The
    /// template was read and parsed when the archiver was made.
    pub async fn check_transcoding(&self) -> Result<String, String> {
        let t = self
            .transcoder
            .as_ref()
            .ok_or("transcoding is off ([transcode] mode)")?;
        if t.settings.role_arn.as_deref().is_none_or(str::is_empty) {
            return Err(
                "transcode.role_arn: required (the IAM role MediaConvert assumes to read the \
                 clips and write the outputs)"
                    .into(),
            );
        }
        t.mc.endpoint()
            .await
            .map_err(|e| format!("MediaConvert DescribeEndpoints: {e}"))
    }

    /// The MediaConvert template for jobs from now on (a replay run's choice).
    pub fn use_template(&mut self, template: Template) {
        if let Some(t) = self.transcoder.as_mut() {
            t.template = template;
        }
    }

    /// The MediaConvert client's retry policy for throttling and server errors.
    pub fn set_retries(&mut self, attempts: u32, first_delay: Duration) {
        if let Some(t) = self.transcoder.as_mut() {
            t.mc.set_retries(attempts, first_delay);
        }
    }

    /// Replays a stored clip through the transcoding hand-off: a new MediaConvert job from
    /// the current template, once per `run` (its job record says which run submitted it, and
    /// the CreateJob token is derived from the run, so an interrupted run resumed submits
    /// nothing twice). The clip's stream and alarm come from its metadata.
    pub async fn resubmit(
        &self,
        bucket: &str,
        key: &str,
        version: Option<&str>,
        run: &str,
        only_untranscoded: bool,
        dry_run: bool,
    ) -> Result<Resubmitted, ReplayError> {
        let Some(t) = self.transcoder.as_ref() else {
            return Err(ReplayError::permanent(
                "transcoding is not handed to MediaConvert ([transcode] mode)",
            ));
        };
        let Some(stem) = key.strip_suffix(".mp4") else {
            return Err(ReplayError::permanent(format!("{key}: not a clip (.mp4)")));
        };
        // A record that is not JSON stays so: permanent (an operator must look), unlike an
        // S3 error, which a rerun may not meet.
        let s3_err = |e: StoreError| match e {
            StoreError::NotJson { .. } => ReplayError::permanent(e.to_string()),
            e => ReplayError::temporary(e.to_string()),
        };
        let record_key = format!("{stem}.job.json");
        let record = store::get_json(&self.s3, bucket, &record_key)
            .await
            .map_err(s3_err)?;
        if let Some(r) = &record
            && r["replay"] == run
        {
            let job = r["job"].as_str().unwrap_or_default().to_string();
            return Ok(Resubmitted::Before { job });
        }
        if only_untranscoded {
            let outcome = store::get_json(&self.s3, bucket, &format!("{stem}.transcode.json"))
                .await
                .map_err(s3_err)?;
            if let Some(o) = outcome
                && o["status"] == "COMPLETE"
            {
                let job = o["job"].as_str().unwrap_or_default().to_string();
                return Ok(Resubmitted::Transcoded { job });
            }
        }
        let Some(meta) = store::metadata(&self.s3, bucket, key, version)
            .await
            .map_err(s3_err)?
        else {
            return Err(ReplayError::permanent(format!(
                "s3://{bucket}/{key}: no such clip"
            )));
        };
        if dry_run {
            return Ok(Resubmitted::WouldSubmit);
        }
        let stream = meta.get("stream").map(String::as_str).unwrap_or("");
        let alarm = meta.get("alarm-name").map(String::as_str).unwrap_or("");
        let request = t.request(bucket, key, stream, alarm, Some(run));
        let token = hex::encode(
            &Sha256::digest(format!("{bucket}/{key}/{}/{run}", version.unwrap_or("")).as_bytes())
                [..16],
        );
        let job =
            t.mc.create_job(&request, &token)
                .await
                .map_err(|e| ReplayError {
                    retryable: e.retryable(),
                    message: e.to_string(),
                })?;
        let id = job["id"].as_str().unwrap_or_default().to_string();
        let new_record = json!({
            "job": job["id"],
            "arn": job["arn"],
            "status": job["status"],
            "replay": run,
            "previous": record.as_ref().map(|r| r["job"].clone()),
            "destination": request["Settings"]["OutputGroups"][0]["OutputGroupSettings"],
            "submitted": rfc3339(Utc::now()),
        });
        store::put_json(&self.s3, bucket, &record_key, &new_record)
            .await
            .map_err(s3_err)?;
        info!(key, job = %id, run, "MediaConvert job submitted (replay)");
        Ok(Resubmitted::Submitted { job: id })
    }

    /// Writes a job's final state next to its clip (`<clip>.transcode.json`).
    pub async fn record_job(&self, job: &JobState) -> Result<Value, String> {
        let key = format!("{}.transcode.json", job.clip_key.trim_end_matches(".mp4"));
        let record = json!({
            "job": job.job_id,
            "status": job.status,
            "error": job.error,
            "clip": format!("s3://{}/{}", job.clip_bucket, job.clip_key),
            "outputs": job.outputs,
            "time": rfc3339(Utc::now()),
        });
        store::put_json(&self.s3, &job.clip_bucket, &key, &record)
            .await
            .map_err(|e| e.to_string())?;
        info!(job = %job.job_id, status = %job.status, key, "transcoding outcome recorded");
        Ok(
            json!({"result": "recorded", "job": job.job_id, "status": job.status,
                  "bucket": job.clip_bucket, "key": key}),
        )
    }

    /// Submits the clip's MediaConvert job once: a job record next to the clip says it was.
    async fn hand_off(
        &self,
        req: &ClipRequest,
        stream: &str,
        key: &str,
    ) -> Option<Result<Value, String>> {
        let t = self.transcoder.as_ref()?;
        let stem = key.trim_end_matches(".mp4");
        let record_key = format!("{stem}.job.json");
        match store::exists(&self.s3, &self.cfg.bucket, &record_key).await {
            Ok(true) => return Some(Ok(json!({"job": "submitted before", "record": record_key}))),
            Ok(false) => {}
            Err(e) => return Some(Err(e.to_string())),
        }
        let request = t.request(&self.cfg.bucket, key, stream, &req.alarm.name, None);
        // The same clip always gives the same token: a retried CreateJob is one job.
        let token =
            hex::encode(&Sha256::digest(format!("{}/{key}", self.cfg.bucket).as_bytes())[..16]);
        let job = match t.mc.create_job(&request, &token).await {
            Ok(j) => j,
            Err(e) => {
                // Recorded, so the clip never lacks an outcome; a later delivery of the
                // alarm submits the job again (no job record yet).
                warn!(key, "MediaConvert job not submitted: {e}");
                let record = json!({"status": "NOT_SUBMITTED", "error": e.to_string(),
                                    "retryable": e.retryable(), "time": rfc3339(Utc::now())});
                let outcome_key = format!("{stem}.transcode.json");
                if let Err(w) =
                    store::put_json(&self.s3, &self.cfg.bucket, &outcome_key, &record).await
                {
                    warn!("could not record it: {w}");
                }
                return Some(Err(e.to_string()));
            }
        };
        let record = json!({
            "job": job["id"],
            "arn": job["arn"],
            "status": job["status"],
            "destination": request["Settings"]["OutputGroups"][0]["OutputGroupSettings"],
            "submitted": rfc3339(Utc::now()),
        });
        if let Err(e) = store::put_json(&self.s3, &self.cfg.bucket, &record_key, &record).await {
            return Some(Err(e.to_string()));
        }
        info!(key, job = %job["id"], "MediaConvert job submitted");
        Some(Ok(json!({"job": job["id"], "record": record_key})))
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

    /// Stores the clip under `key` (the one `clip_key` gives for this stream and window).
    /// A failure leaves `<key>.error.json`; a clip stored later (by a redelivery, or by
    /// another process meanwhile) removes it, so that a failure record always means a clip
    /// is missing.
    async fn store_clip(&self, req: &ClipRequest, stream: &str, key: &str) -> Outcome {
        let mut pulled = None;
        let outcome = |result, pull: Option<Value>| Outcome {
            stream: stream.to_string(),
            bucket: self.cfg.bucket.clone(),
            key: key.to_string(),
            result,
            transcode: None,
            pull,
        };
        let result = match store::exists(&self.s3, &self.cfg.bucket, key).await {
            Ok(true) => {
                info!(
                    stream,
                    key,
                    "already stored: a repeated delivery of {}",
                    req.alarm.transition_id()
                );
                ClipResult::Duplicate
            }
            Ok(false) => match self.fetch_and_store(req, stream, key, &mut pulled).await {
                Ok(Some(result)) => result,
                Ok(None) => ClipResult::Duplicate,
                Err(reason) => {
                    warn!(stream, key, "clip failed: {reason}");
                    self.record_failure(req, stream, key, &reason).await;
                    return outcome(ClipResult::Failed(reason), pulled);
                }
            },
            Err(e) => return outcome(ClipResult::Failed(e.to_string()), None),
        };
        let failure_key = failure_key(key);
        if let Err(e) = store::delete(&self.s3, &self.cfg.bucket, &failure_key).await {
            warn!(
                key = failure_key,
                "could not remove the superseded failure record: {e}"
            );
        }
        outcome(result, pulled)
    }

    /// Writes `<key>.error.json`, unless the clip exists (stored by another delivery
    /// meanwhile); looks again after writing, so a record never outlives a stored clip.
    async fn record_failure(&self, req: &ClipRequest, stream: &str, key: &str, reason: &str) {
        let bucket = &self.cfg.bucket;
        if matches!(store::exists(&self.s3, bucket, key).await, Ok(true)) {
            return;
        }
        let record = json!({
            "stream": stream,
            "alarm": req.alarm.name,
            "alarm_arn": req.alarm.arn,
            "transition": req.alarm.transition_id(),
            "start": rfc3339(req.start),
            "end": rfc3339(req.end),
            "reason": reason,
            "time": rfc3339(Utc::now()),
        });
        let failure_key = failure_key(key);
        if let Err(e) = store::put_json(&self.s3, bucket, &failure_key, &record).await {
            warn!("could not write the failure record: {e}");
            return;
        }
        if matches!(store::exists(&self.s3, bucket, key).await, Ok(true)) {
            let _ = store::delete(&self.s3, bucket, &failure_key).await;
        }
    }

    /// When a device records `stream` and KVS lacks part of the window, asks the device for
    /// it (the span from the first missing moment to the last) and waits, bounded, for it to
    /// be sent. The outcome goes into the clip's JSON.
    async fn pull_missing(
        &self,
        req: &ClipRequest,
        stream: &str,
        key: &str,
    ) -> Result<Option<Value>, String> {
        let Some(cfg) = &self.cfg.pull else {
            return Ok(None);
        };
        let (have, _) = self
            .kvs
            .fragments(stream, req.start, req.end, Duration::ZERO)
            .await?;
        // The fragment holding the window's first moment starts before it and is not
        // listed: a gap up to a fragment's length there is expected.
        let longest = have.iter().map(|f| f.duration_ms).max().unwrap_or(0);
        let tolerance = longest.max(1000) + 500;
        let gaps = plan::gaps(&have, ms(req.start), ms(req.end), tolerance);
        let (Some(first), Some(last)) = (gaps.first(), gaps.last()) else {
            return Ok(None);
        };
        let span = (first.0, last.1);
        let device = match pull::device_for(
            cfg,
            &self.kvs.control,
            self.kvs.throttle_budget,
            stream,
        )
        .await
        {
            Ok(Some(device)) => device,
            Ok(None) => return Ok(None),
            Err(e) => {
                // Clipped from what KVS has, with the reason no device was asked.
                warn!(stream, "cannot tell which device records the stream: {e:#}");
                return Ok(Some(
                    json!({"result": "no_device", "error": format!("{e:#}")}),
                ));
            }
        };
        let device = &device;
        let id = pull::request_id(key);
        info!(stream, device = %device.device, camera = %device.camera, id, "KVS lacks {} ms of the window: asking the device", span.1 - span.0);
        let pulled = match &cfg.iot_endpoint {
            None => pull::pull(cfg, device, &id, span.0, span.1).await,
            Some(endpoint) => {
                let client = crate::signed::SignedClient::new(&self.sdk)?;
                let base = format!("{}/{}", cfg.prefix, device.device);
                let camera = format!("{base}/{}", device.camera);
                let missing = || async {
                    let (have, _) = self
                        .kvs
                        .fragments(stream, req.start, req.end, Duration::ZERO)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    let gaps = plan::gaps(&have, ms(req.start), ms(req.end), tolerance);
                    Ok(gaps.iter().map(|(a, b)| b - a).sum::<i64>())
                };
                pull::https::pull(
                    &client,
                    cfg,
                    endpoint,
                    &base,
                    &camera,
                    (&id, span.0, span.1),
                    missing,
                )
                .await
            }
        };
        let note = pulled.json(device, &id, span);
        match &pulled {
            pull::Pulled::Sent { .. } => info!(stream, "the device sent the window: {note}"),
            _ => warn!(stream, "the device did not send the window: {note}"),
        }
        Ok(Some(note))
    }

    async fn fetch_and_store(
        &self,
        req: &ClipRequest,
        stream: &str,
        key: &str,
        pulled: &mut Option<Value>,
    ) -> Result<Option<ClipResult>, String> {
        *pulled = self.pull_missing(req, stream, key).await?;
        let wait = Duration::from_secs(self.cfg.clip.ingest_wait_s);
        let (fragments, short) = self.kvs.fragments(stream, req.start, req.end, wait).await?;
        if fragments.is_empty() {
            return Err(format!(
                "no video in {stream} between {} and {}",
                rfc3339(req.start),
                rfc3339(req.end)
            ));
        }
        if short {
            warn!(
                stream,
                "the post-roll was not ingested within {} s: clipping what exists",
                self.cfg.clip.ingest_wait_s
            );
        }
        let requests = plan::requests(
            &fragments,
            ms(req.start),
            ms(req.end),
            plan::MAX_FRAGMENTS,
            plan::MAX_BYTES,
        );
        let a = &req.alarm;
        let metadata: HashMap<String, String> = [
            ("alarm-name", ascii(&a.name, 255)),
            ("alarm-arn", ascii(a.arn.as_deref().unwrap_or(""), 512)),
            ("alarm-reason", ascii(&a.reason, 1024)),
            ("alarm-time", rfc3339(a.time)),
            ("stream", stream.to_string()),
            ("window-start", rfc3339(req.start)),
            ("window-end", rfc3339(req.end)),
            ("fragments", fragments.len().to_string()),
            ("short", short.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let target = Target {
            bucket: self.cfg.bucket.clone(),
            key: key.to_string(),
            metadata,
            tags: vec![
                ("alarm".into(), tag_value(&a.name)),
                ("stream".into(), tag_value(stream)),
            ],
            kms_key_id: self.cfg.sse_kms_key_id.clone(),
        };
        let clips = self.kvs.media(stream, ApiName::GetClip).await?;
        let mut sink = Sink {
            upload: Upload::start(&self.s3, target.clone())
                .await
                .map_err(|e| e.to_string())?,
            s3: &self.s3,
            target,
            more_keys: Vec::new(),
            bytes: 0,
            written: false,
        };
        // One GetClip result is stored as it is; several are joined into one file (a new,
        // numbered file where the codec configuration changes).
        let mut joiner = (requests.len() > 1).then(Joiner::default);
        let mut todo: std::collections::VecDeque<plan::Request> = requests.into();
        let (mut calls, mut unplayable) = (0, 0);
        while let Some(r) = todo.pop_front() {
            calls += 1;
            let body = match self.kvs.clip(&clips, stream, &r).await {
                Ok(body) => body,
                Err(ClipError::Unplayable { code, message, .. }) => {
                    if let Some((first, second)) = r.halves(&fragments) {
                        // GetClip plays a range only while its tracks and codec private
                        // data stay the same: look for the change in each half.
                        info!(
                            stream,
                            fragments = r.fragments,
                            "GetClip refused the range ({code}: {message}): fetching it in halves"
                        );
                        if joiner.is_none() && !sink.written {
                            joiner = Some(Joiner::default());
                        }
                        todo.push_front(second);
                        todo.push_front(first);
                        continue;
                    }
                    warn!(stream, fragment = %fragments[r.first].number, "GetClip cannot play this fragment ({code}: {message}): the clip goes on without it");
                    unplayable += 1;
                    continue;
                }
                Err(ClipError::Failed(e)) => {
                    sink.upload.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = sink.part(stream, body, joiner.as_mut()).await {
                sink.upload.abort().await;
                return Err(e);
            }
        }
        if unplayable == fragments.len() {
            sink.upload.abort().await;
            return Err(format!(
                "GetClip could play none of the {} fragments of {stream} in the window",
                fragments.len()
            ));
        }
        let more_keys = std::mem::take(&mut sink.more_keys);
        let written = sink.upload.finish().await.map_err(|e| e.to_string())?;
        match written {
            Written::Stored { bytes } => {
                let bytes = bytes + sink.bytes;
                info!(
                    stream,
                    key,
                    bytes,
                    fragments = fragments.len(),
                    get_clip_calls = calls,
                    unplayable,
                    short,
                    "clip stored"
                );
                Ok(Some(ClipResult::Stored {
                    bytes,
                    fragments: fragments.len(),
                    requests: calls,
                    short,
                    more_keys,
                    unplayable,
                }))
            }
            Written::AlreadyThere => Ok(None),
        }
    }
}

/// Where a clip's bytes go: the upload in progress, and the files already finished.
struct Sink<'a> {
    s3: &'a aws_sdk_s3::Client,
    target: Target,
    upload: Upload<'a>,
    more_keys: Vec<String>,
    /// Bytes of the finished files.
    bytes: u64,
    /// Whether any media went out yet.
    written: bool,
}

impl Sink<'_> {
    /// One GetClip call's MP4, through the joiner when there is one.
    async fn part(
        &mut self,
        stream: &str,
        mut body: aws_smithy_types::byte_stream::ByteStream,
        mut joiner: Option<&mut Joiner>,
    ) -> Result<(), String> {
        if let Some(j) = joiner.as_deref_mut() {
            j.begin_part();
        }
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| format!("GetClip {stream}: {}", error_chain(&e)))?
        {
            let outputs = match joiner.as_deref_mut() {
                None => vec![Output::Bytes(chunk)],
                Some(j) => j.push(&chunk).map_err(|e| e.to_string())?,
            };
            for o in outputs {
                match o {
                    Output::Bytes(b) => {
                        self.written = true;
                        self.upload.push(&b).await.map_err(|e| e.to_string())?
                    }
                    Output::NextFile => self.next_file(stream).await?,
                }
            }
        }
        if let Some(j) = joiner {
            j.end_part().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Finishes the current file and starts `<key>-part<n>.mp4`.
    async fn next_file(&mut self, stream: &str) -> Result<(), String> {
        let key = format!(
            "{}-part{}.mp4",
            self.target.key.trim_end_matches(".mp4"),
            self.more_keys.len() + 2
        );
        warn!(
            stream,
            key, "the codec configuration changes inside the window: continuing in a new file"
        );
        let next = Upload::start(
            self.s3,
            Target {
                key: key.clone(),
                ..self.target.clone()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let done = std::mem::replace(&mut self.upload, next);
        if let Written::Stored { bytes } = done.finish().await.map_err(|e| e.to_string())? {
            self.bytes += bytes;
        }
        self.more_keys.push(key);
        Ok(())
    }
}
