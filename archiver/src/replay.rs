//! Batch replay: stored clips through the transcoding hand-off again, S3 Batch Operations
//! style. Tasks stream in from an S3 listing, an S3 Inventory report or a `bucket,key` list
//! (a bounded channel: memory does not grow with the number of objects), run with bounded
//! concurrency under a requests-per-second cap (`Archiver::resubmit`, whose MediaConvert
//! client backs off on throttling and server errors), and each outcome is appended to the
//! completion report as it happens. A run has an id, kept in `summary.json` next to the
//! report: rerunning with the same report skips what succeeded, and jobs a killed run
//! submitted are found by their job records instead of being submitted twice.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::batch::{REPORT_SCHEMA, ReportRow, ResultCode, Task};
use crate::clip::{Archiver, ReplayError, Resubmitted};
use crate::selection::{Filter, Inventory, list_row};
use crate::store::error_chain;

/// Where the tasks come from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Clips listed in a bucket (under the filter's prefixes, or this one).
    Prefix {
        bucket: String,
        prefix: Option<String>,
    },
    /// An S3 Inventory report: its `manifest.json` (`s3://…` or a file).
    Inventory(String),
    /// A `bucket,key[,version]` CSV (`s3://…`, a file, or `-` for standard input).
    List(String),
}

impl Input {
    fn describe(&self) -> String {
        match self {
            Input::Prefix { bucket, prefix } => {
                format!("s3://{bucket}/{}", prefix.as_deref().unwrap_or(""))
            }
            Input::Inventory(m) => format!("inventory {m}"),
            Input::List(l) => format!("list {l}"),
        }
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: usize,
    /// Tasks started per second, at most.
    pub rate: f64,
    pub only_untranscoded: bool,
    /// Touch nothing: one JSON line per task that would run, on standard output.
    pub dry_run: bool,
    /// The run's id; a new one (or the report's, when resuming) when absent.
    pub run: Option<String>,
    /// The report directory (`report.csv`, `summary.json`); required unless `dry_run`.
    pub report: Option<PathBuf>,
    /// Plain progress lines this often when standard error is not a terminal.
    pub progress_every: Duration,
    /// Names the template in the summary.
    pub template: String,
}

/// Counts of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Tasks the input gave (after the filters).
    pub listed: u64,
    /// Skipped: the report already has them succeeded (an earlier run of the same report).
    pub resumed: u64,
    /// Skipped with `only_untranscoded`: their job completed.
    pub transcoded: u64,
    /// Submitted now, or found submitted by this run before.
    pub succeeded: u64,
    pub temporary_failure: u64,
    pub permanent_failure: u64,
}

impl Counts {
    fn done(&self) -> u64 {
        self.resumed
            + self.transcoded
            + self.succeeded
            + self.temporary_failure
            + self.permanent_failure
    }
}

/// What the run ended with.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub summary: Value,
    pub counts: Counts,
    pub interrupted: bool,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.counts.temporary_failure + self.counts.permanent_failure > 0
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn task_id(bucket: &str, key: &str, version: Option<&str>) -> [u8; 16] {
    let mut h = Sha256::new();
    for part in [bucket, key, version.unwrap_or("")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.finalize()[..16].try_into().unwrap_or_default()
}

/// Paces task starts to `rate` per second.
struct Pace {
    interval: Duration,
    next: Instant,
}

impl Pace {
    fn new(rate: f64) -> Pace {
        let interval = if rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            Duration::ZERO
        };
        Pace {
            interval,
            next: Instant::now(),
        }
    }

    /// When the next task may start, if asked at `now`.
    fn slot(&mut self, now: Instant) -> Instant {
        let at = self.next.max(now);
        self.next = at + self.interval;
        at
    }

    async fn wait(&mut self) {
        let at = self.slot(Instant::now());
        tokio::time::sleep_until(at).await;
    }
}

/// A bar with rate and ETA on a terminal, plain lines otherwise.
enum Progress {
    Bar(ProgressBar),
    Lines { every: Duration, last: Instant },
    Off,
}

impl Progress {
    fn new(every: Duration, quiet: bool) -> Progress {
        if quiet {
            return Progress::Off;
        }
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {pos}/{len} {per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                every,
                last: Instant::now(),
            }
        }
    }

    fn update(&mut self, c: &Counts, started: Instant, force: bool) {
        let failed = c.temporary_failure + c.permanent_failure;
        match self {
            Progress::Bar(bar) => {
                bar.set_length(c.listed);
                bar.set_position(c.done());
                bar.set_message(format!("ok {} failed {failed}", c.succeeded));
            }
            Progress::Lines { every, last } => {
                if force || last.elapsed() >= *every {
                    *last = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    info!(
                        "replay: {}/{} done ({} submitted, {} resumed, {} transcoded before, {failed} failed), {:.1}/s",
                        c.done(),
                        c.listed,
                        c.succeeded,
                        c.resumed,
                        c.transcoded,
                        c.succeeded as f64 / secs
                    );
                }
            }
            Progress::Off => {}
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            // The summary follows on standard output.
            bar.finish_and_clear();
        }
    }
}

/// Where an opened report stands: the run's id and the tasks that succeeded (as 16-byte
/// digests: 16 bytes per task is all a resumed run keeps in memory).
struct Resume {
    run: String,
    done: HashSet<[u8; 16]>,
}

/// The report directory: the rows, appended and flushed one by one, and the summary.
struct Report {
    dir: PathBuf,
    rows: csv::Writer<std::fs::File>,
}

/// A run id: when it started, readable, and a random part, so that two runs started in the
/// same second (two report directories) never share one: the run id keys the MediaConvert
/// idempotency tokens, and a shared one made the second run submit nothing.
fn new_run_id(now: DateTime<Utc>) -> String {
    let random = crate::retry::random_u64();
    format!(
        "replay-{}-{:08x}",
        now.format("%Y%m%dT%H%M%SZ"),
        random as u32
    )
}

impl Report {
    fn csv_path(dir: &Path) -> PathBuf {
        dir.join("report.csv")
    }
    fn summary_path(dir: &Path) -> PathBuf {
        dir.join("summary.json")
    }

    /// Opens (or starts) a report; a report from an earlier run gives its run id and the
    /// tasks that succeeded (kept as 16-byte digests).
    fn open(dir: &Path, run: Option<String>) -> anyhow::Result<(Report, Resume)> {
        let at = |p: &Path| p.display().to_string();
        std::fs::create_dir_all(dir).with_context(|| at(dir))?;
        let summary_path = Report::summary_path(dir);
        let previous: Option<Value> = match std::fs::read(&summary_path) {
            Ok(b) => Some(
                serde_json::from_slice(&b)
                    .with_context(|| format!("{}: not a replay summary", summary_path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| at(&summary_path)),
        };
        let previous_run = previous
            .as_ref()
            .and_then(|p| p["run"].as_str())
            .map(str::to_string);
        let run = match (run, previous_run) {
            (Some(r), Some(p)) if r != p => bail!(
                "{} belongs to run {p}, not {r}: use another report directory",
                dir.display()
            ),
            (Some(r), _) | (None, Some(r)) => r,
            (None, None) => new_run_id(Utc::now()),
        };
        let csv_path = Report::csv_path(dir);
        let mut done = HashSet::new();
        match std::fs::File::open(&csv_path) {
            Ok(f) => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(std::io::BufReader::new(f));
                for (line, rec) in reader.records().enumerate() {
                    // A run killed mid-row leaves a torn last line: that task runs again.
                    let Ok(rec) = rec else { continue };
                    let fields: Vec<&str> = rec.iter().collect();
                    match ReportRow::from_fields(&fields) {
                        Ok(row) if row.code == ResultCode::Succeeded => {
                            done.insert(task_id(&row.bucket, &row.key, row.version.as_deref()));
                        }
                        Ok(_) => {}
                        Err(e) => warn!("{} line {}: {e}", csv_path.display(), line + 1),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| at(&csv_path)),
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&csv_path)
            .with_context(|| at(&csv_path))?;
        // A torn last row (killed mid-write) is ended, so the next row starts a line.
        if torn(&mut file).with_context(|| at(&csv_path))? {
            file.write_all(b"\n").with_context(|| at(&csv_path))?;
        }
        let rows = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        Ok((
            Report {
                dir: dir.to_path_buf(),
                rows,
            },
            Resume { run, done },
        ))
    }

    fn row(&mut self, row: &ReportRow) -> anyhow::Result<()> {
        self.rows
            .write_record(row.fields())
            .and_then(|()| self.rows.flush().map_err(csv::Error::from))
            .with_context(|| Report::csv_path(&self.dir).display().to_string())
    }

    /// Written whole and renamed into place: a reader never sees half a summary.
    fn summary(&self, v: &Value) -> anyhow::Result<()> {
        let path = Report::summary_path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| path.display().to_string())
    }
}

/// Whether a file's last byte is not a newline.
fn torn(file: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Tasks of the input into `tx`, filtered; stops early when the receiver is gone.
pub async fn produce(
    s3: &aws_sdk_s3::Client,
    input: &Input,
    filter: &Filter,
    tx: mpsc::Sender<Task>,
) -> anyhow::Result<()> {
    match input {
        Input::Prefix { bucket, prefix } => {
            let prefixes = match prefix {
                Some(p) => vec![p.clone()],
                None => filter.prefixes(),
            };
            for p in prefixes {
                // URL-encoded keys: any key S3 holds survives the XML listing.
                let mut pages = s3
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&p)
                    .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page =
                        page.with_context(|| format!("S3 ListObjectsV2 s3://{bucket}/{p}"))?;
                    for o in page.contents.unwrap_or_default() {
                        let Some(key) = o.key else { continue };
                        let key = crate::batch::decode_key(&key)
                            .map_err(|e| anyhow!("S3 ListObjectsV2 s3://{bucket}/{p}: {e}"))?;
                        let modified = o.last_modified.and_then(|t| {
                            chrono::DateTime::from_timestamp_millis(t.to_millis().ok()?)
                        });
                        if !filter.accepts(&key, modified) {
                            continue;
                        }
                        let task = Task {
                            task_id: String::new(),
                            bucket: bucket.clone(),
                            key,
                            version_id: None,
                        };
                        if tx.send(task).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            Ok(())
        }
        Input::Inventory(manifest) => {
            let text = read_all(s3, manifest).await?;
            let v: Value = serde_json::from_slice(&text)
                .with_context(|| format!("{manifest}: not an inventory manifest"))?;
            let inv = Inventory::parse(&v).map_err(|e| anyhow!("{manifest}: {e}"))?;
            for (file, md5) in &inv.files {
                let url = format!("s3://{}/{file}", inv.files_bucket);
                let local = download(s3, &url, md5.as_deref()).await?;
                let columns = inv.columns.clone();
                let filter = filter.clone();
                let tx = tx.clone();
                let gz = file.ends_with(".gz");
                let name = url.clone();
                tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(local.path()).with_context(|| name.clone())?;
                    let reader: Box<dyn Read> = if gz {
                        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                            f,
                        )))
                    } else {
                        Box::new(f)
                    };
                    each_row(&name, reader, |row| {
                        let Some((task, modified)) = columns.task(row)? else {
                            return Ok(true);
                        };
                        if !filter.accepts(&task.key, modified) {
                            return Ok(true);
                        }
                        Ok(tx.blocking_send(task).is_ok())
                    })
                })
                .await
                .with_context(|| url.clone())??;
            }
            Ok(())
        }
        Input::List(list) => {
            let (name, reader): (String, Box<dyn Read + Send>) = if list == "-" {
                ("standard input".into(), Box::new(std::io::stdin()))
            } else if list.starts_with("s3://") {
                let local = download(s3, list, None).await?;
                let f = std::fs::File::open(local.path()).with_context(|| list.clone())?;
                // The file stays readable after the temporary path is gone.
                drop(local);
                (list.clone(), Box::new(f))
            } else {
                let f = std::fs::File::open(list).with_context(|| list.clone())?;
                (list.clone(), Box::new(f))
            };
            let filter = filter.clone();
            tokio::task::spawn_blocking(move || {
                each_row(&name, reader, |row| {
                    let task = list_row(row)?;
                    if !filter.accepts(&task.key, None) {
                        return Ok(true);
                    }
                    Ok(tx.blocking_send(task).is_ok())
                })
            })
            .await
            .with_context(|| list.clone())?
        }
    }
}

/// Calls `f` for each CSV row until it says stop; a bad row is an error naming its line.
fn each_row(
    name: &str,
    reader: impl Read,
    mut f: impl FnMut(&[&str]) -> Result<bool, String>,
) -> anyhow::Result<()> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(std::io::BufReader::new(reader));
    for (i, rec) in csv.records().enumerate() {
        let rec = rec.with_context(|| format!("{name} line {}", i + 1))?;
        let fields: Vec<&str> = rec.iter().collect();
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if !f(&fields).map_err(|e| anyhow!("{name} line {}: {e}", i + 1))? {
            break;
        }
    }
    Ok(())
}

/// The body of the object at `s3://bucket/key`, as a stream.
async fn get(
    s3: &aws_sdk_s3::Client,
    url: &str,
) -> anyhow::Result<aws_sdk_s3::primitives::ByteStream> {
    let (bucket, key) = url
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| anyhow!("{url}: expected s3://bucket/key"))?;
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .with_context(|| format!("S3 GetObject {url}"))?;
    Ok(out.body)
}

/// An S3 object (or a file) read whole: for small things like a manifest.
async fn read_all(s3: &aws_sdk_s3::Client, location: &str) -> anyhow::Result<Vec<u8>> {
    if !location.starts_with("s3://") {
        return std::fs::read(location).with_context(|| location.to_string());
    }
    let body = get(s3, location)
        .await?
        .collect()
        .await
        .with_context(|| format!("S3 GetObject {location}"))?;
    Ok(body.into_bytes().to_vec())
}

/// An S3 object streamed into a temporary file (inventory files can be large), checked
/// against the MD5 the inventory manifest gives for it.
async fn download(
    s3: &aws_sdk_s3::Client,
    url: &str,
    md5: Option<&str>,
) -> anyhow::Result<tempfile::NamedTempFile> {
    use md5::Digest;
    let mut hash = md5::Md5::new();
    let mut body = get(s3, url).await?;
    let tmp = tempfile::NamedTempFile::new().context("a temporary file")?;
    let mut file = std::io::BufWriter::new(tmp.reopen().context("a temporary file")?);
    while let Some(chunk) = body
        .try_next()
        .await
        .with_context(|| format!("S3 GetObject {url}"))?
    {
        hash.update(&chunk);
        file.write_all(&chunk).context("a temporary file")?;
    }
    let got = hex::encode(hash.finalize());
    if let Some(want) = md5
        && got != want
    {
        bail!("{url}: MD5 {got}, but the manifest says {want} (a partial or replaced file)");
    }
    file.flush().context("a temporary file")?;
    Ok(tmp)
}

/// A task's report row from its outcome.
fn row(task: &Task, result: &Result<Resubmitted, ReplayError>) -> ReportRow {
    let (code, text, job) = match result {
        Ok(Resubmitted::Submitted { job }) => {
            (ResultCode::Succeeded, "submitted".into(), Some(job.clone()))
        }
        Ok(Resubmitted::Before { job }) => (
            ResultCode::Succeeded,
            "submitted before by this run".into(),
            Some(job.clone()),
        ),
        Ok(Resubmitted::Transcoded { job }) => (
            ResultCode::Succeeded,
            "already transcoded".into(),
            Some(job.clone()),
        ),
        Ok(Resubmitted::WouldSubmit) => (ResultCode::Succeeded, "dry run".into(), None),
        Err(e) if e.retryable => (ResultCode::TemporaryFailure, e.message.clone(), None),
        Err(e) => (ResultCode::PermanentFailure, e.message.clone(), None),
    };
    ReportRow {
        bucket: task.bucket.clone(),
        key: task.key.clone(),
        version: task.version_id.clone(),
        code,
        result: text,
        job: job.filter(|j| !j.is_empty()),
    }
}

/// Runs a replay until the input is exhausted or `stop` turns true (then the tasks in
/// flight finish and the summary says `interrupted`).
pub async fn run(
    archiver: Arc<Archiver>,
    input: Input,
    filter: Filter,
    opts: Options,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    filter.check().map_err(anyhow::Error::msg)?;
    let (mut report, Resume { run, done }) = match (&opts.report, opts.dry_run) {
        (Some(dir), false) => {
            let (r, resume) = Report::open(dir, opts.run.clone())?;
            (Some(r), resume)
        }
        (_, true) => (
            None,
            Resume {
                run: opts.run.clone().unwrap_or_else(|| "dry-run".into()),
                done: HashSet::new(),
            },
        ),
        (None, false) => bail!("a report directory is needed (--report)"),
    };
    let mut counts = Counts::default();
    let started_at = now();
    let report_path = report.as_ref().map(|r| Report::csv_path(&r.dir));
    let summary = |counts: &Counts, state: &str, secs: f64| {
        json!({
            "run": run,
            "state": state,
            "input": input.describe(),
            "template": opts.template,
            "only_untranscoded": opts.only_untranscoded,
            "started": started_at,
            "updated": now(),
            "report": report_path,
            "report_schema": REPORT_SCHEMA,
            "tasks": {
                "listed": counts.listed,
                "succeeded_before": counts.resumed,
                "already_transcoded": counts.transcoded,
                "submitted": counts.succeeded,
                "temporary_failure": counts.temporary_failure,
                "permanent_failure": counts.permanent_failure,
            },
            "seconds": (secs * 10.0).round() / 10.0,
            "submitted_per_second": ((counts.succeeded as f64 / secs.max(1e-3)) * 10.0).round() / 10.0,
        })
    };
    if let Some(r) = &report {
        r.summary(&summary(&counts, "running", 0.0))?;
    }
    info!(run, input = %input.describe(), "replay started");
    let started = Instant::now();
    let mut progress = Progress::new(opts.progress_every, opts.dry_run);

    let (tx, mut rx) = mpsc::channel::<Task>(1024);
    let producer = {
        let archiver = archiver.clone();
        let input = input.clone();
        let filter = filter.clone();
        tokio::spawn(async move { produce(&archiver.s3, &input, &filter, tx).await })
    };
    let slots = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    // The cap protects MediaConvert's quota; a dry run sends it nothing.
    let mut pace = Pace::new(if opts.dry_run { 0.0 } else { opts.rate });
    let mut running: JoinSet<(Task, Result<Resubmitted, ReplayError>)> = JoinSet::new();
    let mut interrupted = false;
    let finish = |task: Task,
                  result: Result<Resubmitted, ReplayError>,
                  counts: &mut Counts,
                  report: &mut Option<Report>|
     -> anyhow::Result<()> {
        match &result {
            Ok(Resubmitted::Transcoded { .. }) => counts.transcoded += 1,
            Ok(_) => counts.succeeded += 1,
            Err(e) if e.retryable => counts.temporary_failure += 1,
            Err(_) => counts.permanent_failure += 1,
        }
        if let Err(e) = &result {
            warn!(bucket = task.bucket, key = task.key, "{}", e.message);
        }
        let row = row(&task, &result);
        match report {
            Some(r) => r.row(&row)?,
            // A dry run lists what would run.
            None if matches!(result, Ok(Resubmitted::Transcoded { .. })) => {}
            None => println!(
                "{}",
                json!({"bucket": row.bucket, "key": row.key, "version": row.version,
                       "result": row.code.as_str(), "detail": row.result})
            ),
        }
        Ok(())
    };
    loop {
        let task = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => { interrupted = true; break; }
            t = rx.recv() => match t { Some(t) => t, None => break },
        };
        counts.listed += 1;
        if done.contains(&task_id(
            &task.bucket,
            &task.key,
            task.version_id.as_deref(),
        )) {
            counts.resumed += 1;
            progress.update(&counts, started, false);
            continue;
        }
        let slot = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => { interrupted = true; break; }
            s = slots.clone().acquire_owned() => s.context("the task slots")?,
        };
        pace.wait().await;
        let archiver = archiver.clone();
        let run = run.clone();
        let (only, dry) = (opts.only_untranscoded, opts.dry_run);
        running.spawn(async move {
            let r = archiver
                .resubmit(
                    &task.bucket,
                    &task.key,
                    task.version_id.as_deref(),
                    &run,
                    only,
                    dry,
                )
                .await;
            drop(slot);
            (task, r)
        });
        while let Some(done) = running.try_join_next() {
            let (task, result) = done.context("a replay task")?;
            finish(task, result, &mut counts, &mut report)?;
        }
        progress.update(&counts, started, false);
    }
    drop(rx);
    while let Some(done) = running.join_next().await {
        let (task, result) = done.context("a replay task")?;
        finish(task, result, &mut counts, &mut report)?;
        progress.update(&counts, started, false);
    }
    let listing = if interrupted {
        producer.abort();
        Ok(())
    } else {
        producer.await.context("the listing").and_then(|r| r)
    };
    progress.update(&counts, started, true);
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    let state = match (&listing, interrupted) {
        (Err(_), _) => "listing failed",
        (_, true) => "interrupted",
        _ => "complete",
    };
    let mut summary = summary(&counts, state, secs);
    if let Err(e) = &listing {
        summary["error"] = json!(error_chain(e.as_ref()));
    }
    if let Some(r) = &report {
        r.summary(&summary)?;
    }
    listing?;
    info!(run, state, "replay {state}: {}", summary["tasks"]);
    Ok(Outcome {
        summary,
        counts,
        interrupted,
    })
}

/// The tasks of an S3 Batch Operations invocation, each through `Archiver::resubmit`; the
/// documented response. The run is the Batch Operations job (a retried task is the same
/// job, never a second one). `userArguments.onlyUntranscoded` (schema 2.0) skips clips
/// whose job completed.
pub async fn batch_invocation(archiver: &Archiver, inv: &crate::batch::Invocation) -> Value {
    let run = inv
        .job_id
        .clone()
        .unwrap_or_else(|| inv.invocation_id.clone());
    let only = inv.user_arguments["onlyUntranscoded"].as_bool() == Some(true)
        || inv.user_arguments["onlyUntranscoded"] == "true";
    let mut results = Vec::new();
    for t in &inv.tasks {
        let r = archiver
            .resubmit(
                &t.bucket,
                &t.key,
                t.version_id.as_deref(),
                &run,
                only,
                false,
            )
            .await;
        let row = row(t, &r);
        results.push((t.task_id.clone(), row.code, row.message()));
    }
    crate::batch::response(inv, &results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, code: ResultCode) -> ReportRow {
        ReportRow {
            bucket: "clips".into(),
            key: key.into(),
            version: None,
            code,
            result: "r".into(),
            job: Some("j".into()),
        }
    }

    #[test]
    fn runs_started_in_the_same_second_have_their_own_ids() {
        let now = Utc::now();
        let (a, b) = (new_run_id(now), new_run_id(now));
        assert_ne!(a, b);
        assert!(
            a.starts_with(&format!("replay-{}-", now.format("%Y%m%dT%H%M%SZ"))),
            "{a}"
        );
        // Two report directories opened at once.
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_, r1) = Report::open(d1.path(), None).unwrap();
        let (_, r2) = Report::open(d2.path(), None).unwrap();
        assert_ne!(r1.run, r2.run);
    }

    #[test]
    fn the_pace_caps_starts_per_second() {
        let t0 = Instant::now();
        let mut pace = Pace::new(10.0);
        pace.next = t0;
        // Asked all at once: 21 starts at 10/s spread over 2 s.
        let slots: Vec<Duration> = (0..21).map(|_| pace.slot(t0) - t0).collect();
        assert_eq!(slots[0], Duration::ZERO);
        assert_eq!(slots[20], Duration::from_secs(2));
        // Idle time is not saved up for a burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(pace.slot(later), later);
        assert_eq!(pace.slot(later), later + Duration::from_millis(100));
        let mut free = Pace::new(0.0);
        free.next = t0;
        assert!((0..1000).all(|_| free.slot(t0) == t0));
    }

    #[test]
    fn a_report_resumes_with_its_run_and_its_succeeded_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut report, resume) = Report::open(dir.path(), Some("run-1".into())).unwrap();
        assert!(resume.done.is_empty());
        report.row(&row("a.mp4", ResultCode::Succeeded)).unwrap();
        report
            .row(&row("b.mp4", ResultCode::TemporaryFailure))
            .unwrap();
        report.summary(&json!({"run": "run-1"})).unwrap();
        drop(report);
        // Killed in the middle of a row.
        let csv = dir.path().join("report.csv");
        let mut f = std::fs::OpenOptions::new().append(true).open(&csv).unwrap();
        f.write_all(b"clips,c.mp4,,succ").unwrap();
        drop(f);

        let (mut report, resume) = Report::open(dir.path(), None).unwrap();
        assert_eq!(resume.run, "run-1");
        assert!(resume.done.contains(&task_id("clips", "a.mp4", None)));
        assert!(
            !resume.done.contains(&task_id("clips", "b.mp4", None)),
            "failed: runs again"
        );
        assert!(
            !resume.done.contains(&task_id("clips", "c.mp4", None)),
            "torn: runs again"
        );
        report.row(&row("c.mp4", ResultCode::Succeeded)).unwrap();
        drop(report);
        let text = std::fs::read_to_string(&csv).unwrap();
        assert!(
            text.ends_with("\nclips,c.mp4,,succeeded,200,Succeeded,r: job j\n"),
            "{text}"
        );

        let Err(e) = Report::open(dir.path(), Some("run-2".into())) else {
            panic!("another run's report was taken");
        };
        assert!(e.to_string().contains("belongs to run run-1"), "{e}");
    }
}
