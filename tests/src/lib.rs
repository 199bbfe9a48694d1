//! Helpers for the end-to-end tests in `tests/tests/`: start kvs-local in-process on a free
//! loopback port, encode real H.264 with GStreamer, turn it into KVS Matroska with the
//! agent's fragmenter, stream it with the agent's PutMedia client, and run the third-party
//! checkers (ffprobe, mkvinfo, boto3 from the project's venv).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use aws_credential_types::Credentials;
use bytes::Bytes;
use kvs_edge_agent::fragmenter::{self, AccessUnit, Fragmenter, FragmenterConfig};
use kvs_edge_agent::h264;
use kvs_edge_agent::mkv::{self, TrackSpec};
use kvs_edge_agent::putmedia::{Ack, AckEvent, Session, SessionParams};
pub mod certs;
pub mod lambda_api;
mod media;

pub use media::{Stream, decode_errors, ffprobe, ffprobe_streams, kinds, mkvinfo};

pub use kvs_local::{Config, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, Faults, Server};

pub const REGION: &str = "us-east-1";

/// A kvs-local on a free loopback port with its data in a fresh temporary directory.
pub struct Local {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl Local {
    pub async fn start() -> Result<Local> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<Local> {
        let dir = tempfile::tempdir()?;
        let mut cfg = Config::new("127.0.0.1:0".parse()?, dir.path());
        tweak(&mut cfg);
        let server = Server::start(cfg).await?;
        Ok(Local { server, dir })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn control(&self) -> aws_sdk_kinesisvideo::Client {
        kvs_client(&self.url(), DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY)
    }

    pub fn archived(&self) -> aws_sdk_kinesisvideoarchivedmedia::Client {
        archived_client(&self.url())
    }
}

fn credentials(access_key: &str, secret_key: &str) -> aws_sdk_kinesisvideo::config::Credentials {
    aws_sdk_kinesisvideo::config::Credentials::new(
        access_key,
        secret_key,
        None,
        None,
        "kvs-edge-tests",
    )
}

/// The official AWS SDK for Rust KVS control-plane client, pointed at `url`.
pub fn kvs_client(url: &str, access_key: &str, secret_key: &str) -> aws_sdk_kinesisvideo::Client {
    let cfg = aws_sdk_kinesisvideo::Config::builder()
        .behavior_version(aws_sdk_kinesisvideo::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesisvideo::config::Region::new(REGION))
        .endpoint_url(url)
        .credentials_provider(credentials(access_key, secret_key))
        .build();
    aws_sdk_kinesisvideo::Client::from_conf(cfg)
}

/// The official AWS SDK for Rust archived-media client, pointed at a data endpoint.
pub fn archived_client(url: &str) -> aws_sdk_kinesisvideoarchivedmedia::Client {
    let cfg = aws_sdk_kinesisvideoarchivedmedia::Config::builder()
        .behavior_version(aws_sdk_kinesisvideoarchivedmedia::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesisvideoarchivedmedia::config::Region::new(
            REGION,
        ))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_kinesisvideoarchivedmedia::config::Credentials::new(
            DEFAULT_ACCESS_KEY,
            DEFAULT_SECRET_KEY,
            None,
            None,
            "kvs-edge-tests",
        ))
        .build();
    aws_sdk_kinesisvideoarchivedmedia::Client::from_conf(cfg)
}

/// Real H.264 from GStreamer (videotestsrc → x264enc), split into access units.
pub struct Encoded {
    pub codec_private: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// AVCC samples and keyframe flags, in decode order (no B-frames).
    pub frames: Vec<(bool, Vec<u8>)>,
    pub fps: u32,
}

impl Encoded {
    /// Encodes `frames` pictures at `fps` with a keyframe every `gop` frames.
    pub fn gstreamer(frames: u32, fps: u32, gop: u32, width: u32, height: u32) -> Result<Encoded> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("video.h264");
        let pipeline = format!(
            "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 \
             ! timeoverlay ! x264enc key-int-max={gop} bframes=0 tune=zerolatency speed-preset=ultrafast \
             ! video/x-h264,profile=main,stream-format=byte-stream,alignment=au ! filesink location={}",
            file.display()
        );
        let out = Command::new("gst-launch-1.0")
            .arg("-q")
            .args(pipeline.split_whitespace())
            .output()
            .context("running gst-launch-1.0 (scripts/install-deps installs GStreamer)")?;
        ensure!(
            out.status.success(),
            "gst-launch-1.0 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::from_annex_b(&std::fs::read(&file)?, fps)
    }

    pub fn from_annex_b(data: &[u8], fps: u32) -> Result<Encoded> {
        let nals = h264::split_annex_b(data);
        let sps = nals
            .iter()
            .find(|n| h264::nal_type(n) == h264::NAL_SPS)
            .context("no SPS in the stream")?;
        let pps = nals
            .iter()
            .find(|n| h264::nal_type(n) == h264::NAL_PPS)
            .context("no PPS in the stream")?;
        let codec_private = h264::avcc_record(sps, pps)?;
        let info = h264::validate_avcc(&codec_private)?;
        let frames = h264::access_units(&nals)
            .iter()
            .map(|au| {
                (
                    au.iter().any(|n| h264::nal_type(n) == h264::NAL_IDR),
                    h264::avcc_sample(au),
                )
            })
            .collect();
        Ok(Encoded {
            codec_private,
            width: info.width,
            height: info.height,
            frames,
            fps,
        })
    }

    pub fn track(&self) -> TrackSpec {
        TrackSpec::h264(self.codec_private.clone(), self.width, self.height)
    }

    /// Access units timed from `start_ms` (epoch ms) at the encoded frame rate.
    pub fn access_units(&self, start_ms: i64) -> Vec<AccessUnit> {
        let step = 1000.0 / f64::from(self.fps);
        self.frames
            .iter()
            .enumerate()
            .map(|(i, (key, data))| AccessUnit {
                pts_ms: start_ms + (i as f64 * step).round() as i64,
                dts_ms: start_ms + (i as f64 * step).round() as i64,
                keyframe: *key,
                data: data.clone().into(),
            })
            .collect()
    }

    /// The session header and fragments the agent's fragmenter makes of this video.
    pub fn fragments(
        &self,
        start_ms: i64,
        target_ms: i64,
    ) -> Result<(Vec<u8>, Vec<fragmenter::Fragment>)> {
        let header = mkv::session_header([7; 16], &[self.track()], "kvs-edge-tests");
        let mut f = Fragmenter::new(FragmenterConfig {
            target_ms,
            max_ms: 10_000,
        });
        let mut out = Vec::new();
        for au in self.access_units(start_ms) {
            out.extend(f.push(au)?);
        }
        out.extend(f.flush());
        Ok((header, out))
    }
}

impl Encoded {
    /// A whole PutMedia body (session header, then every fragment) and the fragments.
    pub fn upload(
        &self,
        start_ms: i64,
        target_ms: i64,
    ) -> Result<(Vec<u8>, Vec<fragmenter::Fragment>)> {
        let (mut body, fragments) = self.fragments(start_ms, target_ms)?;
        for f in &fragments {
            body.extend_from_slice(&f.bytes);
        }
        Ok((body, fragments))
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

pub fn session_params(url: &str, stream: &str) -> SessionParams {
    SessionParams {
        endpoint: url.to_string(),
        stream_name: stream.to_string(),
        region: REGION.to_string(),
        credentials: Credentials::new(
            DEFAULT_ACCESS_KEY,
            DEFAULT_SECRET_KEY,
            None,
            None,
            "kvs-edge-tests",
        ),
        producer_start: SystemTime::now(),
        timecodes: Default::default(),
        user_agent: "kvs-edge-tests".into(),
        tls: None,
    }
}

/// Opens a PutMedia session and waits for the service's answer, to check refusals at the
/// HTTP level. (The agent never waits: a service may answer only once a fragment arrived.)
pub async fn open_answered(
    params: &SessionParams,
    timeout: Duration,
) -> std::result::Result<Session, kvs_edge_agent::putmedia::PutMediaError> {
    let mut session = Session::open(params, timeout).await?;
    session.acks.accepted().await?;
    Ok(session)
}

/// Streams `chunks` in one PutMedia session, ends the upload and collects every ack until
/// the service closes the response (bounded by `timeout`).
pub async fn put_media(
    url: &str,
    stream: &str,
    chunks: Vec<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<Ack>> {
    put_media_with(session_params(url, stream), chunks, timeout).await
}

pub async fn put_media_with(
    params: SessionParams,
    chunks: Vec<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<Ack>> {
    tokio::time::timeout(timeout, async move {
        let mut session = Session::open(&params, Duration::from_secs(5)).await?;
        for chunk in chunks {
            // The service may end the session early (an ERROR ack); keep reading acks then.
            if session.send(Bytes::from(chunk)).await.is_err() {
                break;
            }
        }
        session.finish_upload();
        let mut acks = Vec::new();
        while let Some(ack) = session.next_ack().await {
            match ack {
                Ok(a) => acks.push(a),
                Err(e) => {
                    acks.push(Ack {
                        event_type: AckEvent::Error,
                        fragment_timecode: None,
                        fragment_number: None,
                        error_id: None,
                        error_code: Some(format!("client: {e}")),
                    });
                    break;
                }
            }
        }
        Ok::<_, anyhow::Error>(acks)
    })
    .await
    .context("PutMedia session did not finish in time")?
}

/// The acks of one kind, in order.
pub fn acks_of(acks: &[Ack], kind: AckEvent) -> Vec<&Ack> {
    acks.iter().filter(|a| a.event_type == kind).collect()
}

/// Creates a stream with retention through the SDK.
pub async fn create_stream(
    client: &aws_sdk_kinesisvideo::Client,
    name: &str,
    retention_hours: i32,
) -> Result<String> {
    let out = client
        .create_stream()
        .stream_name(name)
        .media_type("video/h264")
        .data_retention_in_hours(retention_hours)
        .send()
        .await
        .with_context(|| format!("CreateStream {name}"))?;
    out.stream_arn.context("no StreamARN")
}

/// The project's Python venv (created by scripts/install-deps).
pub fn venv_python() -> Result<PathBuf> {
    let cache = std::env::var_os("KVS_EDGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kvs-edge")
        });
    let python = cache.join("venv/bin/python");
    ensure!(
        python.exists(),
        "{} is missing: run scripts/install-deps",
        python.display()
    );
    Ok(python)
}

/// The repository root (for scripts and fixtures). Cargo says where the package is when it
/// runs a test; the path compiled in is only the fallback (a shared target directory may
/// hold binaries built from another checkout).
pub fn repo_root() -> PathBuf {
    let package =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&package)
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// One `GET /metrics` of an agent's metrics listener: the whole HTTP response.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> Result<String> {
    Ok(tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })
    .await??)
}

/// A free TCP port on loopback, for servers we start as processes.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `moto_server` (from the project's venv) on a free loopback port: an independent
/// implementation of S3, SQS and EventBridge. Stopped (by PID) when dropped.
pub struct Moto {
    child: std::process::Child,
    pub url: String,
}

impl Moto {
    pub fn start() -> Result<Moto> {
        let bin = venv_python()?.with_file_name("moto_server");
        let port = free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let child = start_until_ready(cmd, "Running on", Duration::from_secs(60))
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

/// An S3 client for an S3-compatible server on loopback (moto), path-style.
pub fn s3_client(url: &str) -> aws_sdk_s3::Client {
    s3_client_with(url, "testing", "testing")
}

/// An S3 client for kvs-local's S3 (signed with its keys).
pub fn local_s3_client(url: &str) -> aws_sdk_s3::Client {
    s3_client_with(url, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY)
}

fn s3_client_with(url: &str, key: &str, secret: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new(key, secret, None, None, "test"))
        .endpoint_url(url)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// An SQS client for moto on loopback.
pub fn sqs_client(url: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(url)
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// An agent configuration with static keys for kvs-local at `url`, state under `state`,
/// a quick `[upload]` backoff, and `cameras` (the `[[cameras]]` tables).
pub fn agent_toml(url: &str, cameras: &str, state: &Path) -> String {
    format!(
        r#"
        state_dir = "{}"
        [aws]
        region = "us-east-1"
        endpoint_url = "{url}"
        [credentials]
        kind = "static"
        access_key_id = "{DEFAULT_ACCESS_KEY}"
        secret_access_key = "{DEFAULT_SECRET_KEY}"
        [upload]
        backoff_min_ms = 50
        backoff_max_ms = 500
        {cameras}
        "#,
        state.display()
    )
}

/// Starts the agent in-process on `cameras` against kvs-local, its state under the test's
/// directory.
pub async fn start_agent(
    local: &Local,
    name: &str,
    cameras: &str,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<kvs_edge_agent::runner::Running> {
    let toml = agent_toml(&local.url(), cameras, &local.dir.path().join("agent-state"));
    let cfg = kvs_edge_config::AgentConfig::from_toml(name, &toml)?;
    Ok(kvs_edge_agent::runner::start(cfg, shutdown.clone()).await?)
}

/// Waits until `cond` holds, looking every 100 ms, for at most `within`; the error says
/// `what` was awaited.
pub async fn eventually(within: Duration, what: &str, cond: impl Fn() -> bool) -> Result<()> {
    tokio::time::timeout(within, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .with_context(|| format!("not within {within:?}: {what}"))
}

/// Records a file with `gst-launch-1.0 <pipeline> ! filesink location=<path>`.
pub fn recorded_file(path: &Path, pipeline: &str) -> Result<PathBuf> {
    let mut args: Vec<String> = vec!["-q".into()];
    args.extend(pipeline.split_whitespace().map(str::to_string));
    args.extend([
        "!".into(),
        "filesink".into(),
        format!("location={}", path.display()),
    ]);
    let out = Command::new("gst-launch-1.0").args(&args).output()?;
    ensure!(
        out.status.success() && path.exists(),
        "gst-launch-1.0 {pipeline}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(path.to_path_buf())
}

/// An agent configuration for the MQTT tests: device `garage-pi` with static keys for
/// kvs-local at `url`, one 160×120 test camera `cam` (x264 at 500 kbit/s) streaming to
/// `stream` in 1 s fragments, and `mqtt` (the `[mqtt]` tables) appended.
pub fn mqtt_agent_toml(url: &str, state: &Path, stream: &str, mqtt: &str) -> String {
    let cameras = format!(
        r#"
        [[cameras]]
        name = "cam"
        stream_name = "{stream}"
        fragment_duration_ms = 1000
        encoder = {{ bitrate_kbps = 500 }}
        source = {{ type = "test", width = 160, height = 120, fps = 20 }}
        create_stream = {{ retention_period_hours = 1 }}
        {mqtt}
        "#
    );
    format!(
        "device_id = \"garage-pi\"\n{}",
        agent_toml(url, &cameras, state)
    )
}

/// The `[mqtt]` table for a plain broker on loopback `port`, stats every second.
pub fn plain_mqtt(port: u16) -> String {
    format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeep_alive_secs = 5\nstats_interval_secs = 1\n"
    )
}

/// Creates an SQS queue (on moto); its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await?
        .queue_url
        .context("CreateQueue answered no URL")
}

/// Starts a server process and waits (bounded) until its stderr shows `ready`; stderr keeps
/// being drained afterwards so the server never blocks on a full pipe.
pub fn start_until_ready(
    mut cmd: Command,
    ready: &str,
    within: Duration,
) -> Result<std::process::Child> {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) if line.contains(ready) => return Ok(child),
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("not ready within {within:?}: {}", seen.join("\n"));
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python snippet with the venv's interpreter; its stdout on success.
pub fn python(code: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(venv_python()?)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An RTSP server (gst-rtsp-server) on loopback serving `launch` at `/cam`, in its own
/// thread and GLib main loop. Stopped when dropped.
pub struct RtspServer {
    pub port: u16,
    main_loop: gstreamer::glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RtspServer {
    /// `port` 0 picks a free one.
    pub fn start(launch: &str, port: u16) -> Result<RtspServer> {
        use gstreamer::glib;
        use gstreamer_rtsp_server::prelude::*;
        gstreamer::init()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let launch = launch.to_string();
        let thread = std::thread::spawn(move || {
            let ctx = glib::MainContext::new();
            let main_loop = glib::MainLoop::new(Some(&ctx), false);
            let server = gstreamer_rtsp_server::RTSPServer::new();
            let result = ctx.with_thread_default(|| -> Result<u16> {
                server.set_address("127.0.0.1");
                server.set_service(&port.to_string());
                let factory = gstreamer_rtsp_server::RTSPMediaFactory::new();
                factory.set_launch(&launch);
                factory.set_shared(true);
                server
                    .mount_points()
                    .context("mount points")?
                    .add_factory("/cam", factory);
                server
                    .attach(Some(&ctx))
                    .context("attaching the RTSP server")?;
                Ok(server.bound_port() as u16)
            });
            match result {
                Ok(Ok(port)) => {
                    let _ = tx.send(Ok((port, main_loop.clone())));
                    main_loop.run();
                    // Like a camera that goes away: close every client connection.
                    let _ = ctx.with_thread_default(|| {
                        server.client_filter(Some(&mut |_, _| {
                            gstreamer_rtsp_server::RTSPFilterResult::Remove
                        }));
                        while ctx.iteration(false) {}
                    });
                }
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e));
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("main context: {e}")));
                }
            }
        });
        let (port, main_loop) = rx
            .recv_timeout(Duration::from_secs(20))
            .context("RTSP server start")??;
        Ok(RtspServer {
            port,
            main_loop,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GetClip of the fragments starting in [start_ms, end_ms] (producer time), through the
/// AWS SDK: (Content-Type, MP4 bytes).
pub async fn get_clip(
    media: &aws_sdk_kinesisvideoarchivedmedia::Client,
    stream: &str,
    start_ms: i64,
    end_ms: i64,
) -> Result<(Option<String>, Bytes)> {
    use aws_sdk_kinesisvideoarchivedmedia::primitives::DateTime;
    use aws_sdk_kinesisvideoarchivedmedia::types::{
        ClipFragmentSelector, ClipFragmentSelectorType, ClipTimestampRange,
    };
    let out = media
        .get_clip()
        .stream_name(stream)
        .clip_fragment_selector(
            ClipFragmentSelector::builder()
                .fragment_selector_type(ClipFragmentSelectorType::ProducerTimestamp)
                .timestamp_range(
                    ClipTimestampRange::builder()
                        .start_timestamp(DateTime::from_millis(start_ms))
                        .end_timestamp(DateTime::from_millis(end_ms))
                        .build()?,
                )
                .build()?,
        )
        .send()
        .await
        .with_context(|| format!("GetClip {stream}"))?;
    let bytes = out.payload.collect().await?.into_bytes();
    Ok((out.content_type, bytes))
}

/// GetMediaForFragmentList of `numbers`: the Matroska bytes.
pub async fn get_media(
    media: &aws_sdk_kinesisvideoarchivedmedia::Client,
    stream: &str,
    numbers: &[String],
) -> Result<Vec<u8>> {
    let out = media
        .get_media_for_fragment_list()
        .stream_name(stream)
        .set_fragments(Some(numbers.to_vec()))
        .send()
        .await
        .with_context(|| format!("GetMediaForFragmentList {stream}"))?;
    Ok(out.payload.collect().await?.into_bytes().to_vec())
}

/// Every fragment of a stream (ListFragments, all pages), sorted by producer timestamp.
pub async fn list_all_fragments(
    media: &aws_sdk_kinesisvideoarchivedmedia::Client,
    stream: &str,
) -> Result<Vec<aws_sdk_kinesisvideoarchivedmedia::types::Fragment>> {
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let page = media
            .list_fragments()
            .stream_name(stream)
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await
            .with_context(|| format!("ListFragments {stream}"))?;
        all.extend(page.fragments.unwrap_or_default());
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    all.sort_by_key(|f| f.producer_timestamp.and_then(|t| t.to_millis().ok()));
    Ok(all)
}

/// The agent run in the test's process (`runner::start`), stopped as systemd would.
pub struct InProcessAgent {
    pub running: kvs_edge_agent::runner::Running,
    stop: tokio::sync::watch::Sender<bool>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl InProcessAgent {
    pub async fn start(cfg: kvs_edge_config::AgentConfig) -> anyhow::Result<InProcessAgent> {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let running = kvs_edge_agent::runner::start(cfg, shutdown.clone()).await?;
        Ok(InProcessAgent {
            running,
            stop,
            shutdown,
        })
    }

    pub fn camera(&self, name: &str) -> Option<kvs_edge_agent::metrics::CameraMetrics> {
        self.running
            .cameras()
            .into_iter()
            .find(|c| c.camera == name)
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        tokio::time::timeout(
            Duration::from_secs(60),
            self.running.wait(self.shutdown, Duration::from_secs(20)),
        )
        .await
        .context("the agent did not stop within 60 s")?;
        Ok(())
    }
}

/// The MQTT tests' rig: mosquitto, kvs-local, the agent in-process with the one test
/// camera `cam` of `mqtt_agent_toml` streaming to `stream` (`camera_extra`: more settings for
/// its table, e.g. an `upload_policy`), and a watcher on every topic of the device
/// (`kvs-edge/garage-pi/#`); ready once the agent said it is online.
pub struct MqttRig {
    pub broker: Mosquitto,
    pub local: Local,
    pub watch: MqttWatch,
    pub agent: InProcessAgent,
    /// The agent's configuration (to start it again).
    pub cfg: kvs_edge_config::AgentConfig,
}

impl MqttRig {
    pub async fn start(stream: &str, camera_extra: &str) -> Result<MqttRig> {
        Self::start_with(|url, state, mqtt| {
            // Inside the camera's table, before [mqtt].
            let extra = format!("{camera_extra}\n{mqtt}");
            mqtt_agent_toml(url, state, stream, &extra)
        })
        .await
    }

    /// The rig with device `garage-pi` and the caller's `[[cameras]]` tables.
    pub async fn with_cameras(cameras: &str) -> Result<MqttRig> {
        Self::start_with(|url, state, mqtt| {
            format!(
                "device_id = \"garage-pi\"\n{}",
                agent_toml(url, &format!("{cameras}\n{mqtt}"), state)
            )
        })
        .await
    }

    /// The rig with an agent configuration of the caller's: `toml(kvs-local URL, state
    /// directory, [mqtt] table)`; its device id must be `garage-pi`.
    pub async fn start_with(toml: impl FnOnce(&str, &Path, &str) -> String) -> Result<MqttRig> {
        let broker = Mosquitto::start(None)?;
        // kvs-local's AWS IoT data plane publishes to the same broker.
        let local = Local::start_with(|c| c.iot_broker = Some(broker.port)).await?;
        let base = "kvs-edge/garage-pi";
        let mut watch = MqttWatch::subscribe(broker.port, &format!("{base}/#")).await?;
        let state = local.dir.path().join("state");
        let cfg = kvs_edge_config::AgentConfig::from_toml(
            "rig.toml",
            &toml(&local.url(), &state, &plain_mqtt(broker.port)),
        )?;
        let agent = InProcessAgent::start(cfg.clone()).await?;
        watch
            .wait_for(Duration::from_secs(60), |t, p| {
                t == format!("{base}/available") && p == "online"
            })
            .await?;
        Ok(MqttRig {
            broker,
            local,
            watch,
            agent,
            cfg,
        })
    }
}

/// mosquitto on a loopback port (free, or a given one to restart on), stopped by PID when
/// dropped. Readiness is its own "running" log line.
pub struct Mosquitto {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start(port: Option<u16>) -> Result<Mosquitto> {
        Mosquitto::start_with(port, "")
    }

    /// A TLS listener with the certificates of `certs::certificates(dir)`: the server
    /// certificate for 127.0.0.1, and client certificates signed by the test CA required.
    pub fn start_tls(certs: &Path) -> Result<Mosquitto> {
        let d = certs.display();
        Mosquitto::start_with(
            None,
            &format!(
                "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
                 require_certificate true\nuse_identity_as_username true\n"
            ),
        )
    }

    fn start_with(port: Option<u16>, listener_options: &str) -> Result<Mosquitto> {
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: as root, mosquitto would switch to its own user, which
                // cannot read the test's private files (only as root does it switch).
                "user root\nlistener {port} 127.0.0.1\n{listener_options}allow_anonymous true\n\
                 log_dest stderr\nlog_type all\n"
            ),
        )?;
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf);
        let child = start_until_ready(cmd, " running", Duration::from_secs(20))
            .context("starting mosquitto (scripts/install-deps installs it)")?;
        Ok(Mosquitto {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MQTT client subscribed to a topic filter, collecting (topic, payload, retained); it
/// also publishes (commands, shadow answers).
pub struct MqttWatch {
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, bool)>,
    client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl MqttWatch {
    /// Subscribes on the plain listener at `port`; returns once the broker acknowledged it.
    pub async fn subscribe(port: u16, topic_filter: &str) -> Result<MqttWatch> {
        let opts = rumqttc::MqttOptions::new(format!("watch-{}", now_ms()), "127.0.0.1", port);
        MqttWatch::connect(opts, topic_filter).await
    }

    /// Like `subscribe`, over TLS with the test CA and the device certificate in `certs`.
    pub async fn subscribe_tls(port: u16, certs: &Path, topic_filter: &str) -> Result<MqttWatch> {
        let tls = kvs_edge_agent::tls::client_config(
            Some(&certs.join("ca.pem")),
            Some((&certs.join("device.pem"), &certs.join("device.key"))),
        )?;
        let mut opts = rumqttc::MqttOptions::new(format!("watch-{}", now_ms()), "127.0.0.1", port);
        let mut tls = (*tls).clone();
        tls.alpn_protocols.clear();
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
        ));
        MqttWatch::connect(opts, topic_filter).await
    }

    async fn connect(mut opts: rumqttc::MqttOptions, topic_filter: &str) -> Result<MqttWatch> {
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
        client
            .subscribe(topic_filter, rumqttc::QoS::AtLeastOnce)
            .await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // Until the SUBACK, so that nothing published after this returns is missed.
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match events.poll().await? {
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => return Ok(()),
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.retain));
                    }
                    _ => {}
                }
            }
        })
        .await
        .context("no SUBACK in time")?
        .map_err(|e: rumqttc::ConnectionError| anyhow::anyhow!("MQTT: {e}"))?;
        let task = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = event
                    && tx
                        .send((p.topic.clone(), p.payload.to_vec(), p.retain))
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(MqttWatch { rx, client, task })
    }

    /// Publishes at QoS 1.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<()> {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
            .await?;
        Ok(())
    }

    /// The first message (topic, payload as text, retained) matching `pred`, within `within`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        pred: impl Fn(&str, &str) -> bool,
    ) -> Result<(String, String, bool)> {
        let (t, p, r) = self
            .wait_for_raw(within, |t, p| pred(t, &String::from_utf8_lossy(p)))
            .await?;
        Ok((t, String::from_utf8_lossy(&p).into_owned(), r))
    }

    /// The first message matching `pred`, with its payload as bytes.
    pub async fn wait_for_raw(
        &mut self,
        within: Duration,
        pred: impl Fn(&str, &[u8]) -> bool,
    ) -> Result<(String, Vec<u8>, bool)> {
        tokio::time::timeout(within, async {
            while let Some((t, p, r)) = self.rx.recv().await {
                if pred(&t, &p) {
                    return Ok((t, p, r));
                }
            }
            bail!("the subscription ended")
        })
        .await
        .context("no matching MQTT message in time")?
    }

    /// Publishes `payload` (not retained) on `topic` and waits for the JSON answer on `answer`.
    pub async fn ask(
        &mut self,
        topic: &str,
        payload: &serde_json::Value,
        answer: &str,
        within: Duration,
    ) -> Result<serde_json::Value> {
        self.publish(topic, payload.to_string(), false).await?;
        self.json_on(within, answer).await
    }

    /// The first message on `topic`, parsed as JSON.
    pub async fn json_on(&mut self, within: Duration, topic: &str) -> Result<serde_json::Value> {
        let (_, p, _) = self.wait_for(within, |t, _| t == topic).await?;
        serde_json::from_str(&p).with_context(|| format!("{topic}: not JSON: {p}"))
    }
}

impl Drop for MqttWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The published single-metric EventBridge sample, as alarm `name` on `stream` (its
/// StreamName dimension) entering ALARM at `at_ms`.
pub fn alarm_event(name: &str, stream: &str, at_ms: i64) -> serde_json::Value {
    let path = repo_root()
        .join("tests/fixtures/aws-events/eventbridge-cw-alarm-state-change-single-metric.json");
    let mut e: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("the fixture")).expect("JSON");
    let at = chrono::DateTime::from_timestamp_millis(at_ms).expect("a valid time");
    e["detail"]["alarmName"] = name.into();
    e["resources"] = serde_json::json!([format!(
        "arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}"
    )]);
    e["detail"]["state"]["timestamp"] = at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string().into();
    e["detail"]["configuration"]["metrics"][0]["metricStat"]["metric"] = serde_json::json!({
        "dimensions": {"StreamName": stream}, "name": "PutMedia.IncomingFrames",
        "namespace": "AWS/KinesisVideo"});
    e
}

/// Runs `kvs-edge-archiver --config <config> <args>` with kvs-local's keys (moto takes any)
/// and nothing else from the environment's AWS settings: its JSON lines and whether it
/// succeeded.
pub fn run_archiver(config: &Path, args: &[&str]) -> Result<(Vec<serde_json::Value>, bool)> {
    let out = archiver_configured(config)?.args(args).output()?;
    // Its log goes to a pipe here, as to journald or Lambda's log stream: no colour codes.
    ensure!(
        !out.stderr.contains(&0x1b),
        "the archiver wrote ANSI escape codes into a pipe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<Vec<serde_json::Value>, _>>()?;
    if !out.status.success() || lines.is_empty() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((lines, out.status.success()))
}

/// The archiver binary with kvs-local's keys (moto takes any) and no other AWS settings from
/// the environment (never instance metadata: it is not on loopback).
pub fn archiver_command() -> Result<Command> {
    let mut cmd = Command::new(archiver_binary()?);
    cmd.env("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL");
    Ok(cmd)
}

/// For benchmarks: the archiver under GNU time (`/usr/bin/time`), logging only warnings; its
/// wall time, peak RSS in MiB and standard output. A failed run is an error with its output.
pub fn run_archiver_timed(config: &Path, args: &[&str]) -> Result<(Duration, f64, String)> {
    let started = std::time::Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M"])
        .arg(archiver_binary()?)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .output()?;
    let took = started.elapsed();
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "archiver failed: {stdout}{stderr}");
    let rss_kib: f64 = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("maxrss_kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    Ok((took, rss_kib / 1024.0, stdout))
}

/// Writes `<dir>/<name>`, an archiver configuration: the `clips` bucket, KVS (and whatever
/// uses the default endpoint) at `kvs`, S3 at `s3` (path-style), then the `extra` tables.
pub fn write_archiver_config(
    dir: &Path,
    name: &str,
    kvs: &str,
    s3: &str,
    extra: &str,
) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "bucket = \"clips\"\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{kvs}\"\n\
             [s3]\nendpoint_url = \"{s3}\"\nforce_path_style = true\n{extra}\n"
        ),
    )?;
    Ok(path)
}

/// The `[transcode]` table handing clips to the MediaConvert at `url`.
pub fn mediaconvert_at(url: &str) -> String {
    format!(
        "[transcode]\nmode = \"mediaconvert\"\nrole_arn = \"arn:aws:iam::000000000000:role/MediaConvert\"\nendpoint_url = \"{url}\"\n"
    )
}

/// `archiver_command()` with `--config config`.
pub fn archiver_configured(config: &Path) -> Result<Command> {
    let mut cmd = archiver_command()?;
    cmd.arg("--config").arg(config);
    Ok(cmd)
}

/// A long-running archiver (the SQS consumer): its standard output line by line.
pub struct ArchiverProcess {
    child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl ArchiverProcess {
    pub fn spawn(config: &Path, args: &[&str]) -> Result<ArchiverProcess> {
        use std::io::BufRead;
        let mut child = archiver_configured(config)?
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(ArchiverProcess { child, lines })
    }

    /// The next output line as JSON, within `within`.
    pub fn next_json(&self, within: Duration) -> Result<serde_json::Value> {
        let line = self
            .lines
            .recv_timeout(within)
            .context("no output line in time")?;
        Ok(serde_json::from_str(&line)?)
    }

    /// SIGTERM, as systemd stops it; true when it exited cleanly.
    pub fn stop(mut self) -> Result<bool> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        Ok(self.child.wait()?.success())
    }
}

/// Creates `stream` in kvs-local and PutMedias `frames` of 25 fps test video (1 s
/// fragments) starting at `start_ms`; the number of fragments PERSISTED.
pub async fn ingest(
    local: &Local,
    stream: &str,
    frames: u32,
    (width, height): (u32, u32),
    start_ms: i64,
) -> Result<usize> {
    create_stream(&local.control(), stream, 24).await?;
    let video = Encoded::gstreamer(frames, 25, 25, width, height)?;
    let (body, _) = video.upload(start_ms, 1000)?;
    let acks = put_media(&local.url(), stream, vec![body], Duration::from_secs(60)).await?;
    Ok(acks_of(&acks, AckEvent::Persisted).len())
}

/// Shows the agent's logs in a test's output when `RUST_LOG` is set (e.g.
/// `RUST_LOG=kvs_edge_agent=debug cargo test … -- --nocapture`); a no-op otherwise.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("RUST_LOG")
        && let Ok(filter) = tracing_subscriber::EnvFilter::try_new(filter)
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// The agent binary built by `cargo test --workspace` (beside this test's executable).
pub fn agent_binary() -> Result<PathBuf> {
    workspace_binary("kvs-edge-agent")
}

/// The archiver binary built by `cargo test --workspace`.
pub fn archiver_binary() -> Result<PathBuf> {
    workspace_binary("kvs-edge-archiver")
}

fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .context("target dir")?
        .join(name);
    ensure!(
        bin.exists(),
        "{} is missing: build the workspace first (make test does)",
        bin.display()
    );
    Ok(bin)
}
