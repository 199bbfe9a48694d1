//! Durable storage of streams and fragments under `--data-dir`, and the stream registry.
//!
//! Layout (one folder per stream, named by its serial so a re-created stream starts clean):
//! ```text
//! <data-dir>/streams/<serial>/stream.json     StreamInfo + tags, replaced atomically
//! <data-dir>/streams/<serial>/index.jsonl     one FragmentMeta per line, append-only
//! <data-dir>/streams/<serial>/headers/<id>    the session's raw Info + Tracks elements
//! <data-dir>/streams/<serial>/fragments/<n>   a fragment's Cluster body
//! ```
//! A fragment is PERSISTED only after its body and its index line are fsynced. A torn last
//! index line (power loss) is dropped on start.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::ingest::{self, Fragment, SessionHeader};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamInfo {
    pub name: String,
    pub arn: String,
    pub serial: u64,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: String,
    pub version: String,
    pub status: String,
    pub creation_ms: i64,
    pub retention_hours: u32,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FragmentMeta {
    pub number: String,
    pub producer_ms: i64,
    pub server_ms: i64,
    pub duration_ms: i64,
    pub size: u64,
    /// The latest frame timestamp in the fragment (producer time, ms).
    #[serde(default)]
    pub last_ms: i64,
    pub header: String,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
}

struct Stream {
    info: StreamInfo,
    dir: PathBuf,
    fragments: Vec<FragmentMeta>,
    next_fragment: u64,
    headers: HashMap<String, Arc<SessionHeader>>,
    putmedia_active: bool,
}

struct Inner {
    streams: BTreeMap<String, Stream>,
    next_serial: u64,
}

pub struct Store {
    root: PathBuf,
    account: String,
    inner: Mutex<Inner>,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> ApiError {
    ApiError::internal(format!("{what} {}: {e}", path.display()))
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Parameters of CreateStream, already validated by the control plane.
pub struct NewStream {
    pub name: String,
    pub region: String,
    pub device_name: Option<String>,
    pub media_type: Option<String>,
    pub kms_key_id: Option<String>,
    pub retention_hours: u32,
    pub tags: BTreeMap<String, String>,
    pub now_ms: i64,
}

/// What PutMedia needs to know about its stream when a session starts.
pub struct SessionStart {
    pub name: String,
    pub retention_hours: u32,
}

impl Store {
    pub fn open(root: &Path, account: &str) -> Result<Store, ApiError> {
        let streams_dir = root.join("streams");
        fs::create_dir_all(&streams_dir).map_err(|e| io_err("creating", &streams_dir, e))?;
        let mut streams = BTreeMap::new();
        let mut next_serial = 1;
        for entry in fs::read_dir(&streams_dir).map_err(|e| io_err("reading", &streams_dir, e))? {
            let dir = entry
                .map_err(|e| io_err("reading", &streams_dir, e))?
                .path();
            let Some(stream) = load_stream(&dir)? else {
                continue;
            };
            next_serial = next_serial.max(stream.info.serial + 1);
            streams.insert(stream.info.name.clone(), stream);
        }
        Ok(Store {
            root: root.to_path_buf(),
            account: account.to_string(),
            inner: Mutex::new(Inner {
                streams,
                next_serial,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create_stream(&self, new: NewStream) -> Result<StreamInfo, ApiError> {
        let mut inner = self.lock();
        if inner.streams.contains_key(&new.name) {
            return Err(ApiError::in_use(format!(
                "The stream {} already exists",
                new.name
            )));
        }
        let serial = inner.next_serial;
        inner.next_serial += 1;
        let info = StreamInfo {
            arn: format!(
                "arn:aws:kinesisvideo:{}:{}:stream/{}/{}",
                new.region, self.account, new.name, new.now_ms
            ),
            name: new.name,
            serial,
            device_name: new.device_name,
            media_type: new.media_type,
            kms_key_id: new.kms_key_id.unwrap_or_else(|| {
                format!(
                    "arn:aws:kms:{}:{}:alias/aws/kinesisvideo",
                    new.region, self.account
                )
            }),
            version: version_string(serial, 0),
            status: "ACTIVE".into(),
            creation_ms: new.now_ms,
            retention_hours: new.retention_hours,
            tags: new.tags,
        };
        let dir = self.root.join("streams").join(serial.to_string());
        for sub in ["headers", "fragments"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| io_err("creating", &dir, e))?;
        }
        save_info(&dir, &info)?;
        inner.streams.insert(
            info.name.clone(),
            Stream {
                info: info.clone(),
                dir,
                fragments: Vec::new(),
                next_fragment: 0,
                headers: HashMap::new(),
                putmedia_active: false,
            },
        );
        Ok(info)
    }

    fn find<'a>(
        inner: &'a mut Inner,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<&'a mut Stream, ApiError> {
        let stream = match (name, arn) {
            (Some(name), _) => inner.streams.get_mut(name),
            (None, Some(arn)) => inner.streams.values_mut().find(|s| s.info.arn == arn),
            (None, None) => return Err(ApiError::invalid("StreamName or StreamARN is required")),
        };
        let stream = stream.ok_or_else(|| {
            ApiError::not_found(format!(
                "The requested stream {} is not found or not active.",
                name.or(arn).unwrap_or("")
            ))
        })?;
        if let (Some(_), Some(arn)) = (name, arn)
            && stream.info.arn != arn
        {
            return Err(ApiError::invalid(
                "StreamName and StreamARN name different streams",
            ));
        }
        Ok(stream)
    }

    pub fn describe(&self, name: Option<&str>, arn: Option<&str>) -> Result<StreamInfo, ApiError> {
        let mut inner = self.lock();
        Ok(Self::find(&mut inner, name, arn)?.info.clone())
    }

    pub fn list(&self) -> Vec<StreamInfo> {
        self.lock()
            .streams
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    pub fn delete(&self, arn: &str, current_version: Option<&str>) -> Result<(), ApiError> {
        let mut inner = self.lock();
        let stream = Self::find(&mut inner, None, Some(arn))?;
        if let Some(v) = current_version
            && v != stream.info.version
        {
            return Err(ApiError::version_mismatch(format!(
                "The stream version {v} does not match the current version {}",
                stream.info.version
            )));
        }
        let name = stream.info.name.clone();
        let dir = stream.dir.clone();
        inner.streams.remove(&name);
        fs::remove_dir_all(&dir).map_err(|e| io_err("deleting", &dir, e))
    }

    /// Applies `change` to a stream's info (tags, retention …) and saves it with a new version.
    pub fn update(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        change: impl FnOnce(&mut StreamInfo) -> Result<(), ApiError>,
    ) -> Result<StreamInfo, ApiError> {
        let mut inner = self.lock();
        let stream = Self::find(&mut inner, name, arn)?;
        let mut info = stream.info.clone();
        change(&mut info)?;
        let bump = info
            .version
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        info.version = version_string(info.serial, bump);
        save_info(&stream.dir, &info)?;
        stream.info = info.clone();
        Ok(info)
    }

    /// Claims the stream's single PutMedia connection.
    pub fn begin_put_media(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<SessionStart, ApiError> {
        let mut inner = self.lock();
        let stream = Self::find(&mut inner, name, arn)?;
        if stream.putmedia_active {
            return Err(ApiError::connection_limit(format!(
                "Stream {} already has an active PutMedia connection",
                stream.info.name
            )));
        }
        stream.putmedia_active = true;
        Ok(SessionStart {
            name: stream.info.name.clone(),
            retention_hours: stream.info.retention_hours,
        })
    }

    pub fn end_put_media(&self, name: &str) {
        if let Some(s) = self.lock().streams.get_mut(name) {
            s.putmedia_active = false;
        }
    }

    /// Hands out the next fragment number of a stream: 47 decimal digits, increasing.
    pub fn next_fragment_number(&self, name: &str) -> Result<String, ApiError> {
        let mut inner = self.lock();
        let stream = inner
            .streams
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("stream {name} was deleted")))?;
        let n = stream.next_fragment;
        stream.next_fragment += 1;
        Ok(fragment_number(stream.info.creation_ms, n))
    }

    /// Stores a fragment durably (body, header, index line, all fsynced).
    pub fn persist(
        &self,
        name: &str,
        number: &str,
        fragment: &Fragment,
        server_ms: i64,
    ) -> Result<FragmentMeta, ApiError> {
        let (dir, header_id, known) = {
            let mut inner = self.lock();
            let stream = inner
                .streams
                .get_mut(name)
                .ok_or_else(|| ApiError::not_found(format!("stream {name} was deleted")))?;
            let id = header_id(&fragment.header);
            let known = stream.headers.contains_key(&id);
            if !known {
                stream.headers.insert(id.clone(), fragment.header.clone());
            }
            (stream.dir.clone(), id, known)
        };
        if !known {
            let path = dir.join("headers").join(&header_id);
            let mut raw = (fragment.header.raw_info.len() as u32)
                .to_be_bytes()
                .to_vec();
            raw.extend_from_slice(&fragment.header.raw_info);
            raw.extend_from_slice(&fragment.header.raw_tracks);
            write_atomic(&path, &raw).map_err(|e| io_err("writing", &path, e))?;
        }
        let path = dir.join("fragments").join(number);
        let mut f = File::create(&path).map_err(|e| io_err("creating", &path, e))?;
        f.write_all(&fragment.body)
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err("writing", &path, e))?;
        let meta = FragmentMeta {
            number: number.to_string(),
            producer_ms: fragment.timecode_ms,
            server_ms,
            duration_ms: fragment.duration_ms(),
            size: fragment.body.len() as u64,
            last_ms: fragment.last_ms,
            header: header_id,
            tags: fragment.tags.clone(),
        };
        let mut line = serde_json::to_vec(&meta).map_err(|e| ApiError::internal(e.to_string()))?;
        line.push(b'\n');
        let index = dir.join("index.jsonl");
        let mut inner = self.lock();
        let stream = inner
            .streams
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("stream {name} was deleted")))?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index)
            .map_err(|e| io_err("opening", &index, e))?;
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .map_err(|e| io_err("appending to", &index, e))?;
        stream.fragments.push(meta.clone());
        Ok(meta)
    }

    /// The stream's fragments after applying retention at `now_ms` (expired ones are deleted).
    pub fn fragments(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        now_ms: i64,
    ) -> Result<(StreamInfo, Vec<FragmentMeta>), ApiError> {
        let mut inner = self.lock();
        let stream = Self::find(&mut inner, name, arn)?;
        let keep_after = now_ms - i64::from(stream.info.retention_hours) * 3_600_000;
        if stream.fragments.iter().any(|f| f.server_ms < keep_after) {
            let (expired, kept): (Vec<_>, Vec<_>) = stream
                .fragments
                .drain(..)
                .partition(|f| f.server_ms < keep_after);
            stream.fragments = kept;
            let mut index = Vec::new();
            for f in &stream.fragments {
                index.extend(serde_json::to_vec(f).map_err(|e| ApiError::internal(e.to_string()))?);
                index.push(b'\n');
            }
            let path = stream.dir.join("index.jsonl");
            write_atomic(&path, &index).map_err(|e| io_err("rewriting", &path, e))?;
            for f in expired {
                let _ = fs::remove_file(stream.dir.join("fragments").join(&f.number));
            }
        }
        Ok((stream.info.clone(), stream.fragments.clone()))
    }

    /// Reads a stored fragment's Cluster body and its session header.
    pub fn read_fragment(
        &self,
        stream: &StreamInfo,
        meta: &FragmentMeta,
    ) -> Result<(Vec<u8>, Arc<SessionHeader>), ApiError> {
        let (dir, header) = {
            let inner = self.lock();
            let s = inner
                .streams
                .get(&stream.name)
                .ok_or_else(|| ApiError::not_found("the stream was deleted"))?;
            let header = s
                .headers
                .get(&meta.header)
                .cloned()
                .ok_or_else(|| ApiError::internal("missing session header"))?;
            (s.dir.clone(), header)
        };
        let path = dir.join("fragments").join(&meta.number);
        let body = fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
        Ok((body, header))
    }
}

fn version_string(serial: u64, n: u64) -> String {
    format!("v{serial:04}-{n}")
}

pub fn fragment_number(creation_ms: i64, n: u64) -> String {
    format!(
        "91343852333{:013}{:023}",
        creation_ms.rem_euclid(10_000_000_000_000),
        n
    )
}

fn header_id(header: &SessionHeader) -> String {
    let mut h = Sha256::new();
    h.update(&header.raw_info);
    h.update(&header.raw_tracks);
    hex::encode(&h.finalize()[..12])
}

fn save_info(dir: &Path, info: &StreamInfo) -> Result<(), ApiError> {
    let path = dir.join("stream.json");
    let data = serde_json::to_vec_pretty(info).map_err(|e| ApiError::internal(e.to_string()))?;
    write_atomic(&path, &data).map_err(|e| io_err("writing", &path, e))
}

fn load_stream(dir: &Path) -> Result<Option<Stream>, ApiError> {
    let info_path = dir.join("stream.json");
    let Ok(raw) = fs::read(&info_path) else {
        return Ok(None);
    };
    let info: StreamInfo = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::internal(format!("{}: {e}", info_path.display())))?;
    let mut headers = HashMap::new();
    let headers_dir = dir.join("headers");
    for entry in fs::read_dir(&headers_dir).map_err(|e| io_err("reading", &headers_dir, e))? {
        let path = entry
            .map_err(|e| io_err("reading", &headers_dir, e))?
            .path();
        if path.extension().is_some_and(|e| e == "tmp") {
            continue;
        }
        let raw = fs::read(&path).map_err(|e| io_err("reading", &path, e))?;
        let header = parse_stored_header(&raw)
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        headers.insert(id, Arc::new(header));
    }
    let mut fragments = Vec::new();
    let index = dir.join("index.jsonl");
    if let Ok(f) = File::open(&index) {
        for line in io::BufReader::new(f).lines() {
            let line = line.map_err(|e| io_err("reading", &index, e))?;
            // A torn last line (power loss mid-append) is not a fragment that was PERSISTED.
            let Ok(meta) = serde_json::from_str::<FragmentMeta>(&line) else {
                break;
            };
            if dir.join("fragments").join(&meta.number).exists() {
                fragments.push(meta);
            }
        }
    }
    let next_fragment = fragments
        .iter()
        .filter_map(|f| f.number.get(24..).and_then(|n| n.parse::<u64>().ok()))
        .max()
        .map_or(0, |n| n + 1);
    Ok(Some(Stream {
        info,
        dir: dir.to_path_buf(),
        fragments,
        next_fragment,
        headers,
        putmedia_active: false,
    }))
}

fn parse_stored_header(raw: &[u8]) -> Result<SessionHeader, String> {
    if raw.len() < 4 {
        return Err("truncated header file".into());
    }
    let info_len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    let raw_info = raw
        .get(4..4 + info_len)
        .ok_or("truncated header file")?
        .to_vec();
    let raw_tracks = raw[4 + info_len..].to_vec();
    ingest::parse_session_header(&raw_info, &raw_tracks).map_err(|e| e.to_string())
}
