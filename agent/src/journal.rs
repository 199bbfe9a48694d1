//! The durable per-camera fragment journal: every fragment is appended (and by default
//! fsynced) before it is sent, and released only when KVS says PERSISTED. Knows nothing
//! of HTTP. Synchronous file I/O: callers run it on the blocking pool.
//!
//! On disk, in the camera's directory:
//! ```text
//! seg-<first seq, 20 digits>.log   append-only records: "KVJ1" | len u32 | crc32 u32 | payload
//! released.log                     append-only release marks: "KVA1" | seq u64 | crc32 u32
//! quarantine/                      segments found corrupt (kept, never deleted)
//! ```
//! A record's payload carries everything replay needs: sequence number, producer timecode,
//! duration, the tracks (video codec configuration, audio configuration when the fragment
//! carries audio: the session header) and the Matroska bytes. The
//! in-memory index is rebuilt from the segments alone; `released.log` only saves resending
//! (a lost release mark means a resend, which KVS stores a second time; its reads
//! deduplicate producer timestamps). Marks are fsynced like the fragments.
//!
//! On open, each segment is scanned: a torn last record (power loss mid-write) is cut off;
//! a bad record followed by more data marks the segment corrupt: its readable records are
//! copied into a fresh segment and the file is moved to `quarantine/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::codec::{AudioCodec, AudioConfig, CodecConfig, TrackSet, VideoCodec};

const RECORD_MAGIC: &[u8; 4] = b"KVJ1";
const RELEASE_MAGIC: &[u8; 4] = b"KVA1";
const HEADER: usize = 12;
const RELEASE_LEN: usize = 16;
/// No fragment record is larger than the KVS fragment limit plus headroom.
const MAX_RECORD: u32 = 52 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("journal {path}: record at byte {offset} is damaged: {reason}")]
    Damaged {
        path: String,
        offset: u64,
        reason: String,
    },
}

fn io_err(path: &Path, source: io::Error) -> JournalError {
    JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync after every fragment: a fragment reported journaled survives power loss.
    Always,
    /// fsync at most this often: up to this much video can be lost on power loss.
    Every(Duration),
    /// Leave it to the OS: a crash of the agent loses nothing, power loss may.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Drop the oldest unsent fragments to make room (the newest video wins).
    DeleteOldest,
    /// Refuse new fragments while full (the backlog wins; live video is lost meanwhile).
    DenyNew,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Budget for unreleased fragment bytes on disk.
    pub max_bytes: u64,
    /// Fragments older than this (producer time) are dropped; `None` keeps them.
    pub max_age: Option<Duration>,
    /// Keep at least this much free space on the file system.
    pub min_free_bytes: u64,
    pub policy: FullPolicy,
    /// Start a new segment file past this size.
    pub segment_bytes: u64,
    /// Keep delivered fragments (the camera's `delete_after_upload = false`) until the
    /// budget or `max_age` needs their room; otherwise they go once released.
    pub keep_delivered: bool,
}

impl JournalConfig {
    /// The configuration for one camera's journal in `dir`.
    pub fn from_settings(
        s: &kvs_edge_config::agent::JournalSettings,
        dir: PathBuf,
    ) -> JournalConfig {
        use kvs_edge_config::agent::{FsyncMode, OnFull};
        JournalConfig {
            dir,
            fsync: match s.fsync {
                FsyncMode::Fragment => FsyncPolicy::Always,
                FsyncMode::Interval => {
                    FsyncPolicy::Every(Duration::from_millis(s.fsync_interval_ms))
                }
                FsyncMode::Never => FsyncPolicy::Never,
            },
            max_bytes: s.max_size_mb * 1024 * 1024,
            max_age: s.max_age_hours.map(|h| Duration::from_secs(h * 3600)),
            min_free_bytes: s.min_free_mb * 1024 * 1024,
            policy: match s.on_full {
                OnFull::DeleteOldest => FullPolicy::DeleteOldest,
                OnFull::DenyNew => FullPolicy::DenyNew,
            },
            segment_bytes: s.segment_mb * 1024 * 1024,
            keep_delivered: false,
        }
    }
}

/// A fragment as the journal stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub timecode_ms: i64,
    pub duration_ms: i64,
    pub tracks: Arc<TrackSet>,
    /// The Matroska bytes (shared, not copied, with whoever else holds them).
    pub bytes: bytes::Bytes,
    /// Recorded under a scheduled or on-demand upload policy: sent when that policy says
    /// (a window), even if the camera is continuous by then.
    pub deferred: bool,
}

/// What the index knows of an unreleased fragment (no media bytes: RAM stays bounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub timecode_ms: i64,
    pub duration_ms: i64,
    pub tracks: Arc<TrackSet>,
    pub len: u64,
    /// See [`Record::deferred`].
    pub deferred: bool,
    segment: u64,
    offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pressure {
    None,
    /// Unsent fragments would exceed `max_bytes`.
    Budget,
    /// The file system is short of `min_free_bytes`.
    Disk,
}

/// What `open` found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub pending: usize,
    pub torn_bytes: u64,
    pub quarantined: Vec<PathBuf>,
    pub salvaged: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored {
        seq: u64,
        dropped_oldest: u64,
    },
    /// `deny_new` and full: the fragment was not stored.
    Denied,
}

/// Counters for health and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    pub appended: u64,
    pub released: u64,
    pub dropped_oldest: u64,
    pub denied: u64,
    pub expired: u64,
    pub bytes_written: u64,
    /// Delivered fragments let go to make room or by age (not a loss: KVS has them).
    pub kept_dropped: u64,
}

struct Segment {
    path: PathBuf,
    bytes: u64,
}

pub struct Journal {
    cfg: JournalConfig,
    segments: BTreeMap<u64, Segment>,
    active: Option<(u64, File)>,
    entries: BTreeMap<u64, Entry>,
    /// Delivered fragments kept on the device (`keep_delivered`), oldest first.
    kept: BTreeMap<u64, Entry>,
    released: File,
    released_count: usize,
    next_seq: u64,
    last_sync: Instant,
    /// When `released.log` was last fsynced.
    release_sync: Instant,
    stats: JournalStats,
    /// The newest fragment's bytes while it is unreleased: the uploader, when it keeps up,
    /// asks for it moments after it was written, and gets it without reading it back. One
    /// fragment, so that RAM stays bounded when the uploader falls behind.
    hot: Option<(u64, bytes::Bytes)>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.log"))
}

/// Bytes of a record's payload before the codec private data (version 2).
const FIXED: usize = 38;

/// The audio part of a record: present, codec, rate, channels, private data (length first).
fn audio_bytes(audio: Option<&AudioConfig>) -> Vec<u8> {
    let Some(a) = audio else {
        return vec![0];
    };
    let mut out = vec![1, a.codec.tag()];
    out.extend_from_slice(&a.rate.to_be_bytes());
    out.push(a.channels);
    out.extend_from_slice(&(a.private.len() as u32).to_be_bytes());
    out.extend_from_slice(&a.private);
    out
}

/// The size of a record once framed.
pub(crate) fn encoded_len(r: &Record) -> u64 {
    let audio = r.tracks.audio.as_ref().map_or(1, |a| 11 + a.private.len());
    (HEADER + FIXED + r.tracks.video.private.len() + audio + 1 + r.bytes.len()) as u64
}

/// A record's framing: everything before its Matroska bytes, which follow it on disk as they
/// are (fragments are ~1 MB: they are written from where they lie, never copied into a record
/// buffer). The CRC covers the whole payload, Matroska bytes included.
/// Payload (version 3): version, seq, timecode, duration, width, height, video codec, its
/// private data (length first), the audio part (`audio_bytes`), flags (bit 0: deferred),
/// then the Matroska bytes. Version 2 had no flags byte; version 1 no audio part either.
fn encode_head(seq: u64, r: &Record) -> Vec<u8> {
    let video = &r.tracks.video;
    let audio = audio_bytes(r.tracks.audio.as_ref());
    let payload_len = FIXED + video.private.len() + audio.len() + 1 + r.bytes.len();
    let mut out = Vec::with_capacity(HEADER + payload_len - r.bytes.len());
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&(payload_len as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    out.push(3u8);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&r.timecode_ms.to_be_bytes());
    out.extend_from_slice(&r.duration_ms.to_be_bytes());
    out.extend_from_slice(&video.width.to_be_bytes());
    out.extend_from_slice(&video.height.to_be_bytes());
    out.push(video.codec.tag());
    out.extend_from_slice(&(video.private.len() as u32).to_be_bytes());
    out.extend_from_slice(&video.private);
    out.extend_from_slice(&audio);
    out.push(u8::from(r.deferred));
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[HEADER..]);
    crc.update(&r.bytes);
    out[8..12].copy_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// A whole record in one buffer (tests and tools; the journal writes head and bytes apart).
#[cfg(test)]
fn encode(seq: u64, r: &Record) -> Vec<u8> {
    let mut out = encode_head(seq, r);
    out.extend_from_slice(&r.bytes);
    out
}

/// Where the video codec private data's length is in a payload, by version.
fn private_at(payload: &[u8]) -> Option<usize> {
    match payload.first()? {
        1 => Some(33),
        2 | 3 => Some(34),
        _ => None,
    }
}

fn u32_at(payload: &[u8], at: usize) -> Option<u32> {
    payload
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
}

/// The audio part at `at` (version 2): its configuration and where it ends.
fn audio_at(payload: &[u8], at: usize) -> Option<(Option<AudioConfig>, usize)> {
    if *payload.get(at)? == 0 {
        return Some((None, at + 1));
    }
    let codec = AudioCodec::from_tag(*payload.get(at + 1)?)?;
    let rate = u32_at(payload, at + 2)?;
    let channels = *payload.get(at + 6)?;
    let len = u32_at(payload, at + 7)? as usize;
    let private = payload.get(at + 11..at + 11 + len)?.to_vec();
    let audio = AudioConfig {
        codec,
        private,
        rate,
        channels,
    };
    Some((Some(audio), at + 11 + len))
}

/// Where the Matroska bytes start in a payload, the audio part and the flags before them.
fn media_offset(payload: &[u8]) -> Option<(usize, Option<AudioConfig>, u8)> {
    let at = private_at(payload)?;
    let video_end = at + 4 + u32_at(payload, at)? as usize;
    match payload.first()? {
        1 => Some((video_end, None, 0)),
        2 => audio_at(payload, video_end).map(|(audio, end)| (end, audio, 0)),
        _ => {
            let (audio, end) = audio_at(payload, video_end)?;
            Some((end + 1, audio, *payload.get(end)?))
        }
    }
}

/// Parses a record payload: (seq, record). Version 1 records (before H.265 and audio) are
/// H.264 without audio.
fn decode(payload: &[u8]) -> Option<(u64, Record)> {
    let u64_at = |at: usize| {
        payload
            .get(at..at + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    };
    let codec = match payload.first()? {
        1 => VideoCodec::H264,
        _ => VideoCodec::from_tag(*payload.get(33)?)?,
    };
    let at = private_at(payload)?;
    let private_len = u32_at(payload, at)? as usize;
    let private = payload.get(at + 4..at + 4 + private_len)?.to_vec();
    let (media, audio, flags) = media_offset(payload)?;
    Some((
        u64_at(1)?,
        Record {
            timecode_ms: u64_at(9)? as i64,
            duration_ms: u64_at(17)? as i64,
            tracks: Arc::new(TrackSet {
                video: CodecConfig {
                    codec,
                    private,
                    width: u32_at(payload, 25)?,
                    height: u32_at(payload, 29)?,
                },
                audio,
            }),
            bytes: bytes::Bytes::copy_from_slice(payload.get(media..)?),
            deferred: flags & 1 != 0,
        },
    ))
}

/// Reads, changing nothing (the agent may be running and writing), the fragments recorded
/// in the journal at `dir` that overlap `[start_ms, end_ms)`, sent or not, in the order they
/// were recorded: what a local export plays. A torn or damaged record ends its segment's
/// part of the reading (recovery at the agent's next start deals with it). Returns how many
/// fragments `each` got.
pub fn read_window(
    dir: &Path,
    start_ms: i64,
    end_ms: i64,
    mut each: impl FnMut(Record) -> Result<(), JournalError>,
) -> Result<usize, JournalError> {
    let mut segments: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
        })
        .collect();
    segments.sort();
    let mut seen = BTreeSet::new();
    let mut count = 0;
    for path in segments {
        let (records, _, _) = match scan(&path) {
            Ok(r) => r,
            // Deleted meanwhile (delivered and collected): nothing of it to export.
            Err(JournalError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e),
        };
        for s in records {
            let r = &s.record;
            if r.timecode_ms < end_ms
                && r.timecode_ms + r.duration_ms > start_ms
                && seen.insert(s.seq)
            {
                each(s.record)?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// One scanned record: where it is, and its contents.
struct Scanned {
    offset: u64,
    seq: u64,
    record: Record,
    total: u64,
}

enum ScanEnd {
    Clean,
    /// A damaged record at `offset` that reaches the end of the file: a torn write.
    Torn {
        offset: u64,
    },
    /// A damaged record with more data after it.
    Corrupt {
        offset: u64,
    },
}

fn scan(path: &Path) -> Result<(Vec<Scanned>, ScanEnd, u64), JournalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| io_err(path, e))?;
    let len = data.len() as u64;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        let bad = |pos: usize, reaches_end: bool| {
            if reaches_end {
                ScanEnd::Torn { offset: pos as u64 }
            } else {
                ScanEnd::Corrupt { offset: pos as u64 }
            }
        };
        if rest.len() < HEADER {
            return Ok((out, ScanEnd::Torn { offset: pos as u64 }, len));
        }
        let size = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
        if &rest[..4] != RECORD_MAGIC || size > MAX_RECORD {
            // A header that cannot be trusted: torn only if nothing valid can follow.
            return Ok((
                out,
                bad(pos, !rest[1..].windows(4).any(|w| w == RECORD_MAGIC)),
                len,
            ));
        }
        let end = HEADER + size as usize;
        if rest.len() < end {
            return Ok((out, ScanEnd::Torn { offset: pos as u64 }, len));
        }
        let payload = &rest[HEADER..end];
        match (crc32fast::hash(payload) == crc)
            .then(|| decode(payload))
            .flatten()
        {
            Some((seq, record)) => out.push(Scanned {
                offset: pos as u64,
                seq,
                record,
                total: end as u64,
            }),
            None => return Ok((out, bad(pos, rest.len() == end), len)),
        }
        pos += end;
    }
    Ok((out, ScanEnd::Clean, len))
}

fn read_released(path: &Path) -> Result<(BTreeSet<u64>, u64), JournalError> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut data).map_err(|e| io_err(path, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_err(path, e)),
    };
    let mut set = BTreeSet::new();
    let mut good = 0;
    for chunk in data.chunks(RELEASE_LEN) {
        if chunk.len() < RELEASE_LEN || &chunk[..4] != RELEASE_MAGIC {
            break;
        }
        let seq_bytes: [u8; 8] = chunk[4..12].try_into().expect("8 bytes");
        if crc32fast::hash(&seq_bytes).to_be_bytes() != chunk[12..16] {
            break;
        }
        set.insert(u64::from_be_bytes(seq_bytes));
        good += RELEASE_LEN as u64;
    }
    Ok((set, good))
}

fn release_mark(seq: u64) -> [u8; RELEASE_LEN] {
    let mut out = [0u8; RELEASE_LEN];
    out[..4].copy_from_slice(RELEASE_MAGIC);
    out[4..12].copy_from_slice(&seq.to_be_bytes());
    out[12..].copy_from_slice(&crc32fast::hash(&seq.to_be_bytes()).to_be_bytes());
    out
}

/// Free bytes on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

impl Journal {
    /// Opens (creating) the journal, recovering what a crash or power loss left behind.
    pub fn open(cfg: JournalConfig) -> Result<(Journal, Recovery), JournalError> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let released_path = dir.join("released.log");
        let (released_set, released_good) = read_released(&released_path)?;
        let mut recovery = Recovery::default();
        let mut segments = BTreeMap::new();
        let mut entries = BTreeMap::new();
        let mut kept = BTreeMap::new();
        let mut salvage: Vec<(u64, Record)> = Vec::new();
        let mut ids: Vec<u64> = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let name = e.map_err(|e| io_err(&dir, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut max_seq = released_set.last().copied();
        for id in ids {
            let path = segment_path(&dir, id);
            let (records, end, file_len) = scan(&path)?;
            let mut keep_len = file_len;
            match end {
                ScanEnd::Clean => {}
                ScanEnd::Torn { offset } => {
                    tracing::warn!(segment = %path.display(), offset, bytes = file_len - offset, "torn record at the end cut off");
                    recovery.torn_bytes += file_len - offset;
                    keep_len = offset;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| io_err(&path, e))?;
                    f.set_len(offset)
                        .and_then(|_| f.sync_all())
                        .map_err(|e| io_err(&path, e))?;
                }
                ScanEnd::Corrupt { offset } => {
                    tracing::warn!(segment = %path.display(), offset, kept = records.len(), "damaged record: segment quarantined");
                    let qdir = dir.join("quarantine");
                    fs::create_dir_all(&qdir).map_err(|e| io_err(&qdir, e))?;
                    let target = qdir.join(path.file_name().expect("segment file name"));
                    fs::rename(&path, &target).map_err(|e| io_err(&path, e))?;
                    recovery.quarantined.push(target);
                    for s in records {
                        max_seq = max_seq.max(Some(s.seq));
                        if !released_set.contains(&s.seq) {
                            salvage.push((s.seq, s.record));
                        }
                    }
                    continue;
                }
            }
            recovery.segments += 1;
            for s in &records {
                max_seq = max_seq.max(Some(s.seq));
                let delivered = released_set.contains(&s.seq);
                if delivered && !cfg.keep_delivered {
                    continue;
                }
                let r = &s.record;
                let index = if delivered { &mut kept } else { &mut entries };
                index.insert(
                    s.seq,
                    Entry {
                        seq: s.seq,
                        timecode_ms: r.timecode_ms,
                        duration_ms: r.duration_ms,
                        tracks: r.tracks.clone(),
                        len: s.total,
                        deferred: r.deferred,
                        segment: id,
                        offset: s.offset,
                    },
                );
            }
            segments.insert(
                id,
                Segment {
                    path,
                    bytes: keep_len,
                },
            );
        }
        let released = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&released_path)
            .map_err(|e| io_err(&released_path, e))?;
        // A torn release mark is cut off like a torn record.
        released
            .set_len(released_good)
            .map_err(|e| io_err(&released_path, e))?;
        let mut journal = Journal {
            cfg,
            segments,
            active: None,
            entries,
            kept,
            released,
            released_count: released_set.len(),
            next_seq: max_seq.map_or(0, |m| m + 1),
            last_sync: Instant::now(),
            release_sync: Instant::now(),
            hot: None,
            stats: JournalStats::default(),
        };
        // Records saved from quarantined segments go into a fresh segment, same sequence.
        recovery.salvaged = salvage.len();
        for (seq, record) in salvage {
            journal.write_record(seq, &record, true)?;
        }
        journal.collect_garbage()?;
        recovery.pending = journal.entries.len();
        Ok((journal, recovery))
    }

    /// Applies new settings (budgets, fsync, policy) to the open journal; its directory stays,
    /// and so does whether delivered fragments are kept (a camera setting: `keep_delivered`).
    /// The budgets are enforced from the next append on.
    pub fn set_limits(&mut self, cfg: JournalConfig) {
        self.cfg = JournalConfig {
            dir: self.cfg.dir.clone(),
            keep_delivered: self.cfg.keep_delivered,
            ..cfg
        };
    }

    /// Whether delivered fragments stay (the camera's `delete_after_upload = false`). Turned
    /// off, the kept ones go now.
    pub fn keep_delivered(&mut self, keep: bool) -> Result<(), JournalError> {
        self.cfg.keep_delivered = keep;
        if !keep {
            self.kept.clear();
            self.collect_garbage()?;
        }
        Ok(())
    }

    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    /// Delivered fragments kept on the device (`keep_delivered`), oldest first.
    pub fn kept(&self) -> impl Iterator<Item = &Entry> {
        self.kept.values()
    }

    pub fn kept_bytes(&self) -> u64 {
        self.kept.values().map(|e| e.len).sum()
    }

    /// Unreleased fragments, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Unreleased fragments after `seq`, oldest first.
    pub fn pending_after(&self, seq: Option<u64>) -> impl Iterator<Item = &Entry> {
        let from = seq.map_or(0, |s| s + 1);
        self.entries.range(from..).map(|(_, e)| e)
    }

    /// The entry of an unreleased fragment.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    pub fn pending_len(&self) -> usize {
        self.entries.len()
    }

    pub fn pending_bytes(&self) -> u64 {
        self.entries.values().map(|e| e.len).sum()
    }

    /// Producer time of the oldest unreleased fragment.
    pub fn oldest_ms(&self) -> Option<i64> {
        self.entries.values().next().map(|e| e.timecode_ms)
    }

    /// Reads a fragment's record back (checksum verified).
    pub fn read(&self, entry: &Entry) -> Result<Record, JournalError> {
        let buf = self.read_checked(entry)?;
        decode(&buf[HEADER..])
            .map(|(_, r)| r)
            .ok_or_else(|| self.damaged(entry, "unreadable payload"))
    }

    /// The Matroska bytes of `seq` when they are still in memory (the newest fragment,
    /// unreleased): no file I/O.
    pub fn hot_media(&self, seq: u64) -> Option<bytes::Bytes> {
        self.hot
            .as_ref()
            .filter(|(hot, _)| *hot == seq)
            .map(|(_, bytes)| bytes.clone())
    }

    /// Reads a fragment's Matroska bytes back (checksum verified) without copying them out
    /// of the read buffer: what the uploader sends.
    pub fn read_media(&self, entry: &Entry) -> Result<bytes::Bytes, JournalError> {
        if let Some(bytes) = self.hot_media(entry.seq) {
            return Ok(bytes);
        }
        let buf = self.read_checked(entry)?;
        let start = media_offset(&buf[HEADER..])
            .map(|(at, _, _)| HEADER + at)
            .filter(|start| *start <= buf.len())
            .ok_or_else(|| self.damaged(entry, "unreadable payload"))?;
        Ok(bytes::Bytes::from(buf).slice(start..))
    }

    fn damaged(&self, entry: &Entry, reason: &str) -> JournalError {
        let path = self
            .segments
            .get(&entry.segment)
            .map_or_else(|| self.cfg.dir.clone(), |s| s.path.clone());
        JournalError::Damaged {
            path: path.display().to_string(),
            offset: entry.offset,
            reason: reason.to_string(),
        }
    }

    /// The whole record of `entry`, header and checksum verified.
    fn read_checked(&self, entry: &Entry) -> Result<Vec<u8>, JournalError> {
        let seg = self
            .segments
            .get(&entry.segment)
            .ok_or_else(|| self.damaged(entry, &format!("segment {} is gone", entry.segment)))?;
        let mut f = File::open(&seg.path).map_err(|e| io_err(&seg.path, e))?;
        let mut buf = vec![0u8; entry.len as usize];
        f.seek(SeekFrom::Start(entry.offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| io_err(&seg.path, e))?;
        if buf.get(..4) != Some(RECORD_MAGIC.as_slice()) {
            return Err(self.damaged(entry, "no record header"));
        }
        let crc = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
        if crc32fast::hash(&buf[HEADER..]) != crc {
            return Err(self.damaged(entry, "checksum mismatch"));
        }
        Ok(buf)
    }

    /// Appends a fragment, making room by policy. The fragment is on disk (fsynced under
    /// `FsyncPolicy::Always`) when this returns `Stored`.
    pub fn append(&mut self, record: &Record, now_ms: i64) -> Result<Appended, JournalError> {
        self.expire(now_ms)?;
        let need = encoded_len(record);
        let mut dropped = 0;
        let mut disk_retry = true;
        loop {
            match self.pressure(need) {
                Pressure::None => {}
                // Short of room: delivered copies go first, whatever the policy (KVS has
                // them; the policy is about video not sent yet).
                Pressure::Budget | Pressure::Disk if !self.kept.is_empty() => {
                    let oldest = *self.kept.keys().next().expect("not empty");
                    self.forget_kept(oldest)?;
                    continue;
                }
                Pressure::Budget | Pressure::Disk
                    if self.cfg.policy == FullPolicy::DenyNew || self.entries.is_empty() =>
                {
                    self.stats.denied += 1;
                    return Ok(Appended::Denied);
                }
                // Over the byte budget: the oldest fragment goes.
                Pressure::Budget => {
                    let oldest = *self.entries.keys().next().expect("not empty");
                    dropped += self.drop_entries(&[oldest])?;
                    continue;
                }
                // Short of disk: only deleting a file frees space, so the oldest segment goes.
                Pressure::Disk => {
                    dropped += self.drop_oldest_segment()?;
                    continue;
                }
            }
            let seq = self.next_seq;
            match self.write_record(seq, record, false) {
                Ok(()) => {
                    self.next_seq += 1;
                    self.stats.appended += 1;
                    self.hot = Some((seq, record.bytes.clone()));
                    return Ok(Appended::Stored {
                        seq,
                        dropped_oldest: dropped,
                    });
                }
                Err(JournalError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOSPC)
                        || source.kind() == io::ErrorKind::StorageFull =>
                {
                    // The disk filled up under us: start a new segment next time (so this one
                    // can be deleted once released) and apply the policy, once.
                    self.active = None;
                    if self.cfg.policy == FullPolicy::DeleteOldest
                        && disk_retry
                        && !self.entries.is_empty()
                    {
                        disk_retry = false;
                        dropped += self.drop_oldest_segment()?;
                        continue;
                    }
                    self.stats.denied += 1;
                    return Ok(Appended::Denied);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn pressure(&self, need: u64) -> Pressure {
        if self.pending_bytes() + self.kept_bytes() + need > self.cfg.max_bytes {
            return Pressure::Budget;
        }
        let low_disk = self.cfg.min_free_bytes > 0
            && free_bytes(&self.cfg.dir).is_some_and(|free| free < self.cfg.min_free_bytes + need);
        if low_disk {
            Pressure::Disk
        } else {
            Pressure::None
        }
    }

    /// Drops unsent fragments by policy (counted as dropped, not released).
    fn drop_entries(&mut self, seqs: &[u64]) -> Result<u64, JournalError> {
        for seq in seqs {
            if self.mark(*seq)? {
                self.stats.dropped_oldest += 1;
            }
        }
        Ok(seqs.len() as u64)
    }

    /// Drops every unsent fragment of the oldest segment and deletes its file.
    fn drop_oldest_segment(&mut self) -> Result<u64, JournalError> {
        let Some(oldest) = self.entries.values().next().map(|e| e.segment) else {
            return Ok(0);
        };
        if self.active.as_ref().is_some_and(|(id, _)| *id == oldest) {
            self.active = None;
        }
        let seqs: Vec<u64> = self
            .entries
            .values()
            .filter(|e| e.segment == oldest)
            .map(|e| e.seq)
            .collect();
        self.drop_entries(&seqs)
    }

    fn write_record(
        &mut self,
        seq: u64,
        record: &Record,
        force_sync: bool,
    ) -> Result<(), JournalError> {
        let head = encode_head(seq, record);
        let len = (head.len() + record.bytes.len()) as u64;
        if self
            .active
            .as_ref()
            .is_none_or(|(id, _)| self.segments[id].bytes >= self.cfg.segment_bytes)
        {
            let path = segment_path(&self.cfg.dir, seq);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            if let Ok(d) = File::open(&self.cfg.dir) {
                let _ = d.sync_all();
            }
            self.segments.insert(seq, Segment { path, bytes: 0 });
            self.active = Some((seq, file));
        }
        let (id, file) = self.active.as_mut().expect("opened above");
        let seg = self.segments.get_mut(id).expect("active segment is known");
        let offset = seg.bytes;
        let written = file
            .write_all(&head)
            .and_then(|()| file.write_all(&record.bytes));
        if let Err(e) = written {
            // Leave no partial record behind.
            let _ = file.set_len(offset);
            return Err(io_err(&seg.path, e));
        }
        seg.bytes += len;
        self.stats.bytes_written += len;
        let sync = force_sync
            || match self.cfg.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Every(d) => self.last_sync.elapsed() >= d,
                FsyncPolicy::Never => false,
            };
        if sync {
            file.sync_data().map_err(|e| io_err(&seg.path, e))?;
            self.last_sync = Instant::now();
        }
        self.entries.insert(
            seq,
            Entry {
                seq,
                timecode_ms: record.timecode_ms,
                duration_ms: record.duration_ms,
                deferred: record.deferred,
                tracks: record.tracks.clone(),
                len,
                segment: *id,
                offset,
            },
        );
        Ok(())
    }

    /// Marks a fragment delivered: it will not be sent again; its segment goes when empty.
    /// The mark is fsynced by the same policy as the fragments, so that power loss does not
    /// make the agent send again what KVS already holds (it would store it twice).
    pub fn release(&mut self, seq: u64) -> Result<(), JournalError> {
        if self.cfg.keep_delivered
            && let Some(entry) = self.entries.get(&seq).cloned()
        {
            // Kept for local playback until the budget or the age limit needs its room
            // (indexed before the mark, so that its segment is not collected).
            self.kept.insert(seq, entry);
        }
        if !self.mark(seq)? {
            return Ok(());
        }
        self.stats.released += 1;
        let sync = match self.cfg.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Every(d) => self.release_sync.elapsed() >= d,
            FsyncPolicy::Never => false,
        };
        if sync {
            let path = self.cfg.dir.join("released.log");
            self.released.sync_data().map_err(|e| io_err(&path, e))?;
            self.release_sync = Instant::now();
        }
        Ok(())
    }

    /// Forgets a fragment and writes its mark (not fsynced); false when it was not held.
    fn mark(&mut self, seq: u64) -> Result<bool, JournalError> {
        if self.entries.remove(&seq).is_none() {
            return Ok(false);
        }
        if self.hot.as_ref().is_some_and(|(hot, _)| *hot == seq) {
            self.hot = None;
        }
        let path = self.cfg.dir.join("released.log");
        self.released
            .write_all(&release_mark(seq))
            .map_err(|e| io_err(&path, e))?;
        self.released_count += 1;
        self.collect_garbage()?;
        Ok(true)
    }

    /// Lets a kept (delivered) fragment go; its segment goes once nothing in it is held.
    fn forget_kept(&mut self, seq: u64) -> Result<(), JournalError> {
        if self.kept.remove(&seq).is_some() {
            self.stats.kept_dropped += 1;
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Drops fragments older than `max_age` (counted as expired; kept copies silently).
    pub fn expire(&mut self, now_ms: i64) -> Result<u64, JournalError> {
        let Some(max_age) = self.cfg.max_age else {
            return Ok(0);
        };
        let cutoff = now_ms - max_age.as_millis() as i64;
        let old_kept: Vec<u64> = self
            .kept
            .values()
            .take_while(|e| e.timecode_ms < cutoff)
            .map(|e| e.seq)
            .collect();
        for seq in old_kept {
            self.forget_kept(seq)?;
        }
        let old: Vec<u64> = self
            .entries
            .values()
            .take_while(|e| e.timecode_ms < cutoff)
            .map(|e| e.seq)
            .collect();
        for seq in &old {
            if self.mark(*seq)? {
                self.stats.expired += 1;
            }
        }
        Ok(old.len() as u64)
    }

    /// Deletes segments with nothing unreleased left (not the active one) and compacts
    /// `released.log` once it holds only marks for deleted segments.
    fn collect_garbage(&mut self) -> Result<(), JournalError> {
        let live: BTreeSet<u64> = self
            .entries
            .values()
            .chain(self.kept.values())
            .map(|e| e.segment)
            .collect();
        // A fully released active segment goes too: otherwise a full disk never frees up.
        if self
            .active
            .as_ref()
            .is_some_and(|(id, _)| !live.contains(id))
        {
            self.active = None;
        }
        let active = self.active.as_ref().map(|(id, _)| *id);
        let dead: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|id| Some(*id) != active && !live.contains(id))
            .collect();
        for id in dead {
            let seg = self.segments.remove(&id).expect("listed above");
            fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
        }
        if self.released_count > 4096 {
            // Keep one mark at the highest released sequence, so numbering never restarts.
            let path = self.cfg.dir.join("released.log");
            let tmp = self.cfg.dir.join("released.log.tmp");
            // Needed: every released sequence whose record is still in a segment on disk.
            let floor = self.next_seq.saturating_sub(1);
            let oldest_segment = self
                .segments
                .keys()
                .next()
                .copied()
                .unwrap_or(self.next_seq);
            let mut marks = Vec::new();
            for seq in (oldest_segment..self.next_seq).filter(|s| !self.entries.contains_key(s)) {
                marks.extend_from_slice(&release_mark(seq));
            }
            marks.extend_from_slice(&release_mark(floor));
            let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
            f.write_all(&marks)
                .and_then(|_| f.sync_all())
                .map_err(|e| io_err(&tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
            self.released = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            self.released_count = marks.len() / RELEASE_LEN;
        }
        Ok(())
    }
}

/// Journals and records for tests here and in the modules that read journals.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn cfg(dir: &Path) -> JournalConfig {
        JournalConfig {
            dir: dir.to_path_buf(),
            fsync: FsyncPolicy::Always,
            max_bytes: 1 << 30,
            max_age: None,
            min_free_bytes: 0,
            policy: FullPolicy::DeleteOldest,
            segment_bytes: 4096,
            keep_delivered: false,
        }
    }

    pub fn record(tc: i64, size: usize) -> Record {
        let tracks = Arc::new(TrackSet {
            video: CodecConfig {
                codec: VideoCodec::H264,
                private: vec![1, 77, 0, 30],
                width: 320,
                height: 240,
            },
            audio: None,
        });
        Record {
            timecode_ms: tc,
            duration_ms: 1000,
            tracks,
            bytes: vec![(tc % 251) as u8; size].into(),
            deferred: false,
        }
    }

    /// A journal in `dir` (small segments, fsync always).
    pub fn open(dir: &Path) -> Journal {
        Journal::open(cfg(dir))
            .expect("a journal in a fresh directory")
            .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_support::{cfg, record};

    fn timecodes(j: &Journal) -> Vec<i64> {
        j.pending().map(|e| e.timecode_ms).collect()
    }

    #[test]
    fn survives_reopen_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, r) = Journal::open(cfg(dir.path())).unwrap();
        assert_eq!(r, Recovery::default());
        for tc in 0..10 {
            j.append(&record(tc * 1000, 1500), 0).unwrap();
        }
        let first = j.pending().next().unwrap().clone();
        assert_eq!(j.read(&first).unwrap(), record(0, 1500));
        for seq in 0..4 {
            j.release(seq).unwrap();
        }
        drop(j);
        let (j, r) = Journal::open(cfg(dir.path())).unwrap();
        assert_eq!(r.pending, 6);
        assert_eq!(timecodes(&j), (4..10).map(|t| t * 1000).collect::<Vec<_>>());
        assert_eq!(j.next_seq, 10, "numbering continues");
        let segs = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("seg-")
            })
            .count();
        assert!(
            segs < 5,
            "fully released segments are deleted ({segs} left)"
        );
    }

    /// A closed journal holding records 0, 1, 2 (500 bytes each) in segment 0.
    fn three_records_in_one_segment() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(JournalConfig {
            segment_bytes: 1 << 20,
            ..cfg(dir.path())
        })
        .unwrap();
        for tc in 0..3 {
            j.append(&record(tc, 500), 0).unwrap();
        }
        dir
    }

    #[test]
    fn the_newest_fragment_is_sent_from_memory_and_the_rest_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(JournalConfig {
            segment_bytes: 1 << 20,
            ..cfg(dir.path())
        })
        .unwrap();
        for tc in 0..2 {
            j.append(&record(tc, 500), 0).unwrap();
        }
        // Damage both records on disk: only the older one is read from there.
        let seg = segment_path(dir.path(), 0);
        let mut data = fs::read(&seg).unwrap();
        let len = data.len();
        data[len - 10] ^= 0xFF;
        data[HEADER + FIXED + 10] ^= 0xFF;
        fs::write(&seg, &data).unwrap();
        let entries: Vec<Entry> = j.pending().cloned().collect();
        assert!(matches!(
            j.read_media(&entries[0]),
            Err(JournalError::Damaged { .. })
        ));
        assert_eq!(j.read_media(&entries[1]).unwrap(), record(1, 500).bytes);
        // Released, it is gone from memory too.
        j.release(entries[1].seq).unwrap();
        assert!(j.hot.is_none());
    }

    #[test]
    fn a_torn_tail_is_cut_and_nothing_else_lost() {
        let dir = three_records_in_one_segment();
        let seg = segment_path(dir.path(), 0);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        let (j, r) = Journal::open(cfg(dir.path())).unwrap();
        assert_eq!(timecodes(&j), [0, 1]);
        assert!(r.torn_bytes > 0 && r.quarantined.is_empty());
    }

    #[test]
    fn records_of_the_previous_format_read_as_h264() {
        // Version 1 (before H.265): no codec byte; what an upgraded agent finds on disk.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&7u64.to_be_bytes());
        v1.extend_from_slice(&1_000i64.to_be_bytes());
        v1.extend_from_slice(&2_000i64.to_be_bytes());
        v1.extend_from_slice(&320u32.to_be_bytes());
        v1.extend_from_slice(&240u32.to_be_bytes());
        v1.extend_from_slice(&4u32.to_be_bytes());
        v1.extend_from_slice(&[1, 77, 0, 30]);
        v1.extend_from_slice(b"mkv");
        let (seq, r) = decode(&v1).unwrap();
        assert_eq!((seq, r.timecode_ms, r.duration_ms), (7, 1_000, 2_000));
        assert_eq!(r.tracks.video.codec, VideoCodec::H264);
        assert_eq!(r.tracks.video.private, [1, 77, 0, 30]);
        assert_eq!(r.tracks.audio, None);
        assert_eq!(r.bytes, b"mkv".as_slice());
        assert_eq!(media_offset(&v1).map(|m| m.0), Some(v1.len() - 3));
        // And the current format round-trips H.265 with AAC, and without audio.
        let with_audio = Record {
            tracks: Arc::new(TrackSet {
                video: CodecConfig {
                    codec: VideoCodec::H265,
                    ..record(0, 1).tracks.video.clone()
                },
                audio: Some(AudioConfig::aac(vec![0x11, 0x90]).unwrap()),
            }),
            ..record(5, 10)
        };
        let deferred = Record {
            deferred: true,
            ..record(7, 10)
        };
        for r in [with_audio, record(6, 10), deferred.clone()] {
            let framed = encode(3, &r);
            assert_eq!(framed.len() as u64, encoded_len(&r));
            assert_eq!(decode(&framed[HEADER..]), Some((3, r)));
        }
        // Version 2 (before upload policies) had no flags byte: nothing of it is deferred.
        let mut v2 = encode(3, &deferred)[HEADER..].to_vec();
        let flags_at = v2.len() - deferred.bytes.len() - 1;
        assert_eq!(v2.remove(flags_at), 1);
        v2[0] = 2;
        let (_, read) = decode(&v2).expect("a version 2 payload");
        assert!(!read.deferred);
        assert_eq!(read.bytes, deferred.bytes);
    }

    #[test]
    fn a_corrupt_segment_is_quarantined_and_its_good_records_kept() {
        let dir = three_records_in_one_segment();
        let seg = segment_path(dir.path(), 0);
        let mut data = fs::read(&seg).unwrap();
        let second = (HEADER + FIXED + 4 + 1 + 500) + HEADER + 50; // inside record 1's payload
        data[second] ^= 0xFF;
        fs::write(&seg, &data).unwrap();
        let (j, r) = Journal::open(cfg(dir.path())).unwrap();
        assert_eq!(r.quarantined.len(), 1);
        assert!(r.quarantined[0].exists(), "kept, not deleted");
        assert_eq!(r.salvaged, 1);
        assert_eq!(
            timecodes(&j),
            [0],
            "the good record before the damage is kept"
        );
        assert_eq!(j.read(j.pending().next().unwrap()).unwrap(), record(0, 500));
    }

    #[test]
    fn delivered_fragments_are_kept_when_asked_and_go_first_when_room_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let one = encoded_len(&record(0, 1000));
        let open = |keep| {
            Journal::open(JournalConfig {
                max_bytes: one * 4,
                keep_delivered: keep,
                ..cfg(dir.path())
            })
            .unwrap()
            .0
        };
        let mut j = open(true);
        for tc in 0..3 {
            j.append(&record(tc, 1000), 0).unwrap();
        }
        let seqs: Vec<u64> = j.pending().map(|e| e.seq).collect();
        j.release(seqs[0]).unwrap();
        j.release(seqs[1]).unwrap();
        let kept = |j: &Journal| j.kept().map(|e| e.timecode_ms).collect::<Vec<_>>();
        assert_eq!((timecodes(&j), kept(&j)), (vec![2], vec![0, 1]));
        assert_eq!(
            j.read(j.kept().next().unwrap()).unwrap(),
            record(0, 1000),
            "readable"
        );
        // Reopened: still kept, and never pending again (KVS has them).
        drop(j);
        let mut j = open(true);
        assert_eq!((timecodes(&j), kept(&j)), (vec![2], vec![0, 1]));
        // Room is needed: the oldest delivered copy goes, not unsent video, not counted lost.
        for tc in 3..5 {
            j.append(&record(tc, 1000), 0).unwrap();
        }
        assert_eq!((timecodes(&j), kept(&j)), (vec![2, 3, 4], vec![1]));
        assert_eq!((j.stats().kept_dropped, j.stats().dropped_oldest), (1, 0));
        // Without keeping, a release frees the room at once.
        j.keep_delivered(false).unwrap();
        assert!(kept(&j).is_empty());
        let next = j.pending().next().unwrap().seq;
        j.release(next).unwrap();
        assert!(kept(&j).is_empty());
    }

    #[test]
    fn kept_copies_expire_with_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(JournalConfig {
            max_age: Some(Duration::from_secs(10)),
            keep_delivered: true,
            ..cfg(dir.path())
        })
        .unwrap();
        for tc in [0, 5_000, 20_000] {
            j.append(&record(tc, 100), 0).unwrap();
        }
        for seq in j.pending().map(|e| e.seq).collect::<Vec<_>>() {
            j.release(seq).unwrap();
        }
        assert_eq!(j.kept().count(), 3);
        j.expire(21_000).unwrap();
        let left: Vec<i64> = j.kept().map(|e| e.timecode_ms).collect();
        assert_eq!(left, [20_000], "older than ten seconds: gone");
    }

    #[test]
    fn budgets_apply_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let one = (HEADER + FIXED + 4 + 1 + 1 + 1000) as u64; // private, no audio, flags
        let (mut j, _) = Journal::open(JournalConfig {
            max_bytes: one * 3,
            ..cfg(dir.path())
        })
        .unwrap();
        for tc in 0..5 {
            j.append(&record(tc, 1000), 0).unwrap();
        }
        assert_eq!(timecodes(&j), [2, 3, 4], "delete_oldest keeps the newest");
        assert_eq!(j.stats().dropped_oldest, 2);

        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(JournalConfig {
            max_bytes: one * 3,
            policy: FullPolicy::DenyNew,
            ..cfg(dir.path())
        })
        .unwrap();
        let outcomes: Vec<Appended> = (0..5)
            .map(|tc| j.append(&record(tc, 1000), 0).unwrap())
            .collect();
        assert_eq!(timecodes(&j), [0, 1, 2], "deny_new keeps the backlog");
        assert_eq!(outcomes[4], Appended::Denied);
        assert_eq!(j.stats().denied, 2);
    }

    #[test]
    fn old_fragments_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(JournalConfig {
            max_age: Some(Duration::from_secs(60)),
            ..cfg(dir.path())
        })
        .unwrap();
        j.append(&record(0, 10), 0).unwrap();
        j.append(&record(50_000, 10), 50_000).unwrap();
        j.append(&record(100_000, 10), 100_000).unwrap();
        assert_eq!(timecodes(&j), [50_000, 100_000]);
        assert_eq!(j.stats().expired, 1);
    }
}
