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
//! Outputs without a video description (audio-only renditions) are skipped: clips have no
//! audio. Status goes SUBMITTED → PROGRESSING → COMPLETE or ERROR (with an error message),
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
fn object_path(s3_root: &Path, url: &str) -> Option<PathBuf> {
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
            let outcome = run(&settings_of(&jobs, &id), &input_path, &s3_root).await;
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

/// The bitrate (bit/s) an output asks for, whatever its rate control.
fn bitrate(output: &Value) -> u64 {
    let h264 = &output["videoDescription"]["codecSettings"]["h264Settings"];
    h264["bitrate"]
        .as_u64()
        .or(h264["maxBitrate"].as_u64())
        .unwrap_or(2_000_000)
}

fn scale(output: &Value) -> String {
    let v = &output["videoDescription"];
    match (v["width"].as_u64(), v["height"].as_u64()) {
        (Some(w), Some(h)) => {
            format!("videoscale ! video/x-raw,width={w},height={h},pixel-aspect-ratio=1/1 ! ")
        }
        (None, Some(h)) => format!("videoscale ! video/x-raw,height={h} ! "),
        _ => String::new(),
    }
}

async fn gst(description: String) -> Result<(), String> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new("gst-launch-1.0")
            .kill_on_drop(true)
            .arg("-q")
            .args(shell_words(&description))
            .output(),
    )
    .await
    .map_err(|_| "transcoding took over 5 minutes".to_string())?
    .map_err(|e| format!("gst-launch-1.0: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "gst-launch-1.0 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Splits a pipeline description on spaces; quoted paths keep their spaces.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Runs every output group; the output group details on success.
async fn run(settings: &Value, input: &Path, s3_root: &Path) -> Result<Vec<Value>, String> {
    if !input.is_file() {
        return Err(format!("the input {} does not exist", input.display()));
    }
    let name = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("output")
        .to_string();
    let src = format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! ",
        input.display()
    );
    let mut details = Vec::new();
    for group in settings["outputGroups"].as_array().into_iter().flatten() {
        let kind = group["outputGroupSettings"]["type"].as_str().unwrap_or("");
        let (key, ext) = match kind {
            "HLS_GROUP_SETTINGS" => ("hlsGroupSettings", "m3u8"),
            "FILE_GROUP_SETTINGS" => ("fileGroupSettings", ""),
            other => {
                return Err(format!(
                    "output group type {other} is not supported by kvs-local"
                ));
            }
        };
        let gs = &group["outputGroupSettings"][key];
        let destination = gs["destination"]
            .as_str()
            .ok_or("an output group has no destination")?;
        let dir = object_path(s3_root, destination)
            .ok_or(format!("{destination} is not an s3:// URL"))?;
        let dir = if destination.ends_with('/') {
            dir
        } else {
            dir.parent().map(Path::to_path_buf).unwrap_or(dir)
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut output_details = Vec::new();
        let mut renditions = Vec::new();
        for output in group["outputs"].as_array().into_iter().flatten() {
            if output["videoDescription"].is_null() {
                continue; // audio-only: clips have no audio
            }
            let modifier = output["nameModifier"].as_str().unwrap_or("");
            let base = format!("{name}{modifier}");
            let kbps = bitrate(output) / 1000;
            let encode = format!(
                "{}x264enc bitrate={kbps} key-int-max=60 speed-preset=veryfast ! h264parse ! ",
                scale(output)
            );
            let codec = output["videoDescription"]["codecSettings"]["codec"]
                .as_str()
                .unwrap_or("");
            if ext == "m3u8" {
                let seconds = gs["segmentLength"].as_u64().unwrap_or(6);
                gst(format!(
                    // hlssink, not hlssink2: the latter stalls now and then at end of stream.
                    "{src}{encode}mpegtsmux ! hlssink location=\"{}\" playlist-location=\"{}\" target-duration={seconds} max-files=0 playlist-length=0",
                    dir.join(format!("{base}_%05d.ts")).display(),
                    dir.join(format!("{base}.m3u8")).display()
                ))
                .await?;
                let v = &output["videoDescription"];
                renditions.push((
                    base.clone(),
                    kbps * 1000,
                    v["width"].as_u64(),
                    v["height"].as_u64(),
                ));
            } else if codec == "FRAME_CAPTURE" {
                let fc = &output["videoDescription"]["codecSettings"]["frameCaptureSettings"];
                let (num, den) = (
                    fc["framerateNumerator"].as_u64().unwrap_or(1),
                    fc["framerateDenominator"].as_u64().unwrap_or(1),
                );
                let max = fc["maxCaptures"]
                    .as_u64()
                    .map_or(String::new(), |m| format!("identity eos-after={m} ! "));
                gst(format!(
                    "{src}{}videorate ! video/x-raw,framerate={num}/{den} ! {max}jpegenc ! multifilesink location=\"{}\"",
                    scale(output),
                    dir.join(format!("{base}.%07d.jpg")).display()
                ))
                .await?;
            } else {
                gst(format!(
                    "{src}{encode}mp4mux ! filesink location=\"{}\"",
                    dir.join(format!("{base}.mp4")).display()
                ))
                .await?;
            }
            output_details.push(json!({ "outputFilePaths": [format!("{destination}{base}")] }));
        }
        if ext == "m3u8" && !renditions.is_empty() {
            let mut master = String::from("#EXTM3U\n#EXT-X-VERSION:3\n");
            for (base, bandwidth, w, h) in &renditions {
                let resolution = match (w, h) {
                    (Some(w), Some(h)) => format!(",RESOLUTION={w}x{h}"),
                    _ => String::new(),
                };
                master.push_str(&format!(
                    "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth}{resolution}\n{base}.m3u8\n"
                ));
            }
            std::fs::write(dir.join(format!("{name}.m3u8")), master).map_err(|e| e.to_string())?;
        }
        details.push(json!({ "type": kind, "outputDetails": output_details,
                             "playlistFilePaths": if ext == "m3u8" { json!([format!("{destination}{name}.m3u8")]) } else { json!(null) } }));
    }
    Ok(details)
}
