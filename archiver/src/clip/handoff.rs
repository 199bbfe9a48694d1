//! The transcoding hand-off: a stored clip's MediaConvert job, submitted once (a job record
//! next to the clip says it was), replays of stored clips under a run id, and the final
//! state of a job recorded next to its clip.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use kvs_edge_config::archiver::TranscodeSettings;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Archiver, ascii, rfc3339};
use crate::decide::ClipRequest;
use crate::event::JobState;
use crate::mediaconvert::MediaConvert;
use crate::store::{self, StoreError};
use crate::transcode::{JobFor, Template};

/// The MediaConvert hand-off: client, template, settings.
pub(super) struct Transcoder {
    mc: MediaConvert,
    template: Template,
    settings: TranscodeSettings,
}

impl Transcoder {
    pub(super) fn new(
        settings: &TranscodeSettings,
        sdk: &aws_config::SdkConfig,
    ) -> anyhow::Result<Transcoder> {
        let template = match &settings.template {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("transcode.template: {}", path.display()))?;
                Template::parse(&path.display().to_string(), &text)?
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

impl Archiver {
    /// What a run of MediaConvert jobs needs, checked before the first one: the role
    /// MediaConvert assumes, and the account's endpoint (DescribeEndpoints answers). The
    /// template was read and parsed when the archiver was made.
    pub async fn check_transcoding(&self) -> anyhow::Result<String> {
        let t = self
            .transcoder
            .as_ref()
            .context("transcoding is off ([transcode] mode)")?;
        if t.settings.role_arn.as_deref().is_none_or(str::is_empty) {
            bail!(
                "transcode.role_arn: required (the IAM role MediaConvert assumes to read the \
                 clips and write the outputs)"
            );
        }
        t.mc.endpoint()
            .await
            .context("MediaConvert DescribeEndpoints")
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
    pub async fn record_job(&self, job: &JobState) -> anyhow::Result<Value> {
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
            .with_context(|| {
                format!(
                    "recording job {} in s3://{}/{key}",
                    job.job_id, job.clip_bucket
                )
            })?;
        info!(job = %job.job_id, status = %job.status, key, "transcoding outcome recorded");
        Ok(
            json!({"result": "recorded", "job": job.job_id, "status": job.status,
                  "bucket": job.clip_bucket, "key": key}),
        )
    }

    /// Submits the clip's MediaConvert job once: a job record next to the clip says it was.
    pub(super) async fn hand_off(
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
}
