//! A stream's window from KVS into S3: GetClip part by part (joined into one MP4, split
//! into further files where the codec configuration changes), streamed into a conditional
//! upload; a recording device asked first for what KVS lacks; a failure record otherwise.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kinesisvideo::types::ApiName;
use chrono::Utc;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{Archiver, ClipResult, Outcome, ascii, failure_key, ms, rfc3339, tag_value};
use crate::decide::ClipRequest;
use crate::fetch::ClipError;
use crate::mp4join::{Joiner, Output};
use crate::plan;
use crate::pull;
use crate::store::{self, Target, Upload, Written, error_chain};

impl Archiver {
    /// Stores the clip under `key` (the one `clip_key` gives for this stream and window).
    /// A failure leaves `<key>.error.json`; a clip stored later (by a redelivery, or by
    /// another process meanwhile) removes it, so that a failure record always means a clip
    /// is missing.
    pub(super) async fn store_clip(&self, req: &ClipRequest, stream: &str, key: &str) -> Outcome {
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
                let client = crate::signed::SignedClient::new(&self.sdk)
                    .map_err(|e| error_chain(e.as_ref()))?;
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
