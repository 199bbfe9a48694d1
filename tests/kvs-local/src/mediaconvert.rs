//! A MediaConvert subset that really transcodes: DescribeEndpoints, CreateJob, GetJob and
//! ListJobs (REST-JSON under `/2017-08-29/` with MediaConvert's camelCase member names, as
//! the SDKs send them; SigV4 for the `mediaconvert` service), with jobs
//! run by GStreamer (`gst-launch-1.0`) from and into kvs-local's S3 store:
//!
//! - HLS groups: one rendition per video output (its Width/Height and bitrate; segments of
//!   SegmentLength seconds), plus the master playlist `<input name>.m3u8`;
//! - file groups with an MP4 container: `<input name><NameModifier>.mp4`;
//! - file groups of frame captures: `<input name><NameModifier>.0000000.jpg`, … at the
//!   capture rate, at most MaxCaptures.
//!
//! Audio: outputs with an AAC audio description carry the input's audio; an audio-only HLS
//! output is an alternate rendition the video renditions name (`AudioRenditionSets`). An
//! input without audio gives outputs without audio (see `transcode`). Status goes
//! SUBMITTED → PROGRESSING → COMPLETE or ERROR (with an error message),
//! and each change is written as an EventBridge "MediaConvert Job State Change" event to the
//! events directory when one is configured (what an EventBridge rule would deliver).
//!
//! Queues: GetQueue and UpdateQueue (`status` ACTIVE or PAUSED) for any queue name; a job in
//! a paused queue stays SUBMITTED until the queue is active again, as in MediaConvert. At most
//! `TRANSCODES` jobs transcode at once; the others wait their turn (still SUBMITTED).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::error::ApiError;
use crate::transcode;

/// Jobs transcoding at once (each is a gst-launch-1.0 process).
const TRANSCODES: usize = 2;

/// The jobs, by id, and the queues' state.
#[derive(Clone)]
pub struct Jobs {
    jobs: Arc<Mutex<Vec<Value>>>,
    tokens: Arc<Mutex<HashMap<String, String>>>,
    /// Names of the paused queues.
    paused: Arc<watch::Sender<Vec<String>>>,
    transcodes: Arc<Semaphore>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs::new(Vec::new())
    }
}

/// `arn:aws:mediaconvert:…:queues/Name` or `Name` → `Name`.
fn queue_name(queue: &str) -> &str {
    queue.rsplit('/').next().unwrap_or(queue)
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(404, "NotFoundException", format!("job {id} does not exist"))
}

fn bad_request(m: impl Into<String>) -> ApiError {
    ApiError::new(400, "BadRequestException", m.into())
}

/// `s3://bucket/key` → the object's file under the S3 store.
pub(crate) fn object_path(s3_root: &Path, url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.contains("..")).then(|| s3_root.join(bucket).join(key))
}

impl Jobs {
    /// Jobs with these queues paused from the start.
    pub fn new(paused: Vec<String>) -> Jobs {
        Jobs {
            jobs: Default::default(),
            tokens: Default::default(),
            paused: Arc::new(watch::Sender::new(paused)),
            transcodes: Arc::new(Semaphore::new(TRANSCODES)),
        }
    }

    /// GetQueue: any name is a queue (there is no CreateQueue here).
    pub fn queue(&self, name: &str, account: &str, region: &str) -> Value {
        let paused = self.paused.borrow().iter().any(|q| q == name);
        let submitted = self
            .jobs
            .lock()
            .unwrap()
            .iter()
            .filter(|j| {
                j["status"] == "SUBMITTED" && queue_name(j["queue"].as_str().unwrap_or("")) == name
            })
            .count();
        json!({ "queue": {
            "name": name,
            "arn": format!("arn:aws:mediaconvert:{region}:{account}:queues/{name}"),
            "status": if paused { "PAUSED" } else { "ACTIVE" },
            "submittedJobsCount": submitted,
            "type": "ON_DEMAND",
        }})
    }

    /// UpdateQueue: `status` ACTIVE or PAUSED.
    pub fn update_queue(
        &self,
        name: &str,
        request: &Value,
        account: &str,
        region: &str,
    ) -> Result<Value, ApiError> {
        let pause = match request["status"].as_str() {
            Some("PAUSED") => true,
            Some("ACTIVE") => false,
            Some(other) => {
                return Err(bad_request(format!(
                    "status: {other:?} is not ACTIVE or PAUSED"
                )));
            }
            None => return Ok(self.queue(name, account, region)),
        };
        self.paused.send_modify(|p| {
            p.retain(|q| q != name);
            if pause {
                p.push(name.to_string());
            }
        });
        info!(
            "MediaConvert queue {name}: {}",
            if pause { "PAUSED" } else { "ACTIVE" }
        );
        Ok(self.queue(name, account, region))
    }

    pub fn get(&self, id: &str) -> Result<Value, ApiError> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    pub fn list(&self, status: Option<&str>) -> Value {
        let jobs: Vec<Value> = self
            .jobs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|j| status.is_none_or(|s| j["status"] == s))
            .cloned()
            .collect();
        json!({ "jobs": jobs })
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Value)) -> Option<Value> {
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs.iter_mut().find(|j| j["id"] == id)?;
        f(job);
        Some(job.clone())
    }

    /// CreateJob: validates, stores and starts the job; the same ClientRequestToken gives
    /// the same job, also to calls arriving at the same time (the token is held from the
    /// check until the job is stored).
    pub fn create(
        &self,
        request: Value,
        s3_root: PathBuf,
        account: &str,
        region: &str,
        events: Option<PathBuf>,
    ) -> Result<Value, ApiError> {
        let token = request["clientRequestToken"].as_str().map(str::to_string);
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = &token
            && let Some(id) = tokens.get(t)
        {
            return self.get(id);
        }
        if request["role"].as_str().is_none_or(str::is_empty) {
            return Err(bad_request("role is required"));
        }
        let settings = &request["settings"];
        let input = settings["inputs"][0]["fileInput"]
            .as_str()
            .ok_or_else(|| bad_request("settings.inputs[0].fileInput is required"))?;
        let input_path = object_path(&s3_root, input)
            .ok_or_else(|| bad_request(format!("{input} is not an s3:// URL")))?;
        if settings["outputGroups"]
            .as_array()
            .is_none_or(|g| g.is_empty())
        {
            return Err(bad_request(
                "settings.outputGroups needs at least one group",
            ));
        }
        let now = chrono::Utc::now();
        let id = format!("{}-{:06x}", now.timestamp_millis(), rand_suffix());
        let queue = request["queue"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("arn:aws:mediaconvert:{region}:{account}:queues/Default"));
        let job = json!({
            "id": id,
            "arn": format!("arn:aws:mediaconvert:{region}:{account}:jobs/{id}"),
            "status": "SUBMITTED",
            "createdAt": now.timestamp(),
            "role": request["role"],
            "queue": queue,
            "settings": settings,
            "userMetadata": request.get("userMetadata").cloned().unwrap_or(json!({})),
        });
        self.jobs.lock().unwrap().push(job.clone());
        if let Some(t) = token {
            tokens.insert(t, id.clone());
        }
        drop(tokens);
        emit(&events, &job, account, region);
        let jobs = self.clone();
        tokio::spawn(async move {
            let queue = queue_name(&queue).to_string();
            let mut paused = jobs.paused.subscribe();
            if paused.wait_for(|p| !p.contains(&queue)).await.is_err() {
                return;
            }
            let Ok(_turn) = jobs.transcodes.clone().acquire_owned().await else {
                return;
            };
            if let Some(j) = jobs.update(&id, |j| j["status"] = json!("PROGRESSING")) {
                emit(&events, &j, &account_of(&j), &region_of(&j));
            }
            let outcome = transcode::run(&settings_of(&jobs, &id), &input_path, &s3_root).await;
            let done = jobs.update(&id, |j| match &outcome {
                Ok(outputs) => {
                    j["status"] = json!("COMPLETE");
                    j["outputGroupDetails"] = json!(outputs);
                }
                Err(message) => {
                    j["status"] = json!("ERROR");
                    j["errorCode"] = json!(1010);
                    j["errorMessage"] = json!(message);
                }
            });
            if let Some(j) = done {
                info!("MediaConvert job {id}: {}", j["status"]);
                emit(&events, &j, &account_of(&j), &region_of(&j));
            }
        });
        Ok(job)
    }
}

fn settings_of(jobs: &Jobs, id: &str) -> Value {
    jobs.get(id)
        .map(|j| j["settings"].clone())
        .unwrap_or(Value::Null)
}

fn arn_part(job: &Value, i: usize) -> String {
    job["arn"]
        .as_str()
        .unwrap_or("")
        .split(':')
        .nth(i)
        .unwrap_or("")
        .to_string()
}
fn account_of(job: &Value) -> String {
    arn_part(job, 4)
}
fn region_of(job: &Value) -> String {
    arn_part(job, 3)
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() & 0xFF_FFFF) as u32
}

/// Writes the EventBridge event of the job's current state.
fn emit(dir: &Option<PathBuf>, job: &Value, account: &str, region: &str) {
    let Some(dir) = dir else { return };
    let status = job["status"].as_str().unwrap_or("");
    let mut detail = json!({
        "timestamp": chrono::Utc::now().timestamp_millis(),
        "accountId": account,
        "queue": job["queue"],
        "jobId": job["id"],
        "status": status,
        "userMetadata": job["userMetadata"],
    });
    if status == "ERROR" {
        detail["errorCode"] = job["errorCode"].clone();
        detail["errorMessage"] = job["errorMessage"].clone();
    }
    if status == "COMPLETE" {
        detail["outputGroupDetails"] = job["outputGroupDetails"].clone();
    }
    let event = json!({
        "version": "0",
        "id": format!("{}-{status}", job["id"].as_str().unwrap_or("")),
        "detail-type": "MediaConvert Job State Change",
        "source": "aws.mediaconvert",
        "account": account,
        "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": region,
        "resources": [job["arn"]],
        "detail": detail,
    });
    let _ = std::fs::create_dir_all(dir);
    let name = format!("{}-{status}.json", job["id"].as_str().unwrap_or("job"));
    if let Err(e) = std::fs::write(dir.join(name), event.to_string()) {
        warn!("writing a MediaConvert event: {e}");
    }
}
