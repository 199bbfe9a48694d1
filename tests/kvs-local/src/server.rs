//! The HTTP server: accepts connections (or refuses them under fault injection), routes each
//! request to its operation, verifies SigV4 in front of every operation, answers errors in
//! the rest-json shape and logs one line per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::faults::{FaultState, Faults};
use crate::ingest::Limits;
use crate::sigv4::{self, Credentials};
use crate::store::Store;
use crate::{archived, control, putmedia};

/// The well-known test credentials kvs-local accepts by default.
pub const DEFAULT_ACCESS_KEY: &str = "kvslocal";
pub const DEFAULT_SECRET_KEY: &str = "kvslocal-secret";

#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port (see `Server::addr`).
    pub listen: SocketAddr,
    /// An optional second listener for the admin API only, unaffected by `refuse_connections`.
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub credentials: Vec<Credentials>,
    pub account_id: String,
    pub limits: Limits,
    /// PutMedia: an IDLE ack after this long without data.
    pub idle_ack_interval: Duration,
    /// PutMedia: the service closes a session that sends no data for this long (30 s in AWS).
    pub idle_timeout: Duration,
    /// PutMedia: sessions older than this end with error 4003 (about 45 min in AWS).
    pub max_connection: Duration,
    /// Serve HTTPS with this certificate chain and key (PEM files); plain HTTP when absent.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// S3 buckets that exist from the start (the S3 API is always served).
    pub buckets: Vec<String>,
    /// MediaConvert job state changes are written here as EventBridge events.
    pub events_dir: Option<PathBuf>,
    /// MediaConvert queues paused from the start (their jobs stay SUBMITTED).
    pub paused_queues: Vec<String>,
    /// When PutMedia sends its response head (strict modes hold it back, as the service
    /// may: it "starts reading the payload and first sends an HTTP 200").
    pub put_media_answer: AnswerAt,
    /// AWS IoT's data plane (HTTPS Publish, GetRetainedMessage) bridged to the MQTT broker
    /// on this loopback port; absent = those calls answer 503.
    pub iot_broker: Option<u16>,
}

/// When PutMedia answers its 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerAt {
    /// As soon as the request head is checked.
    #[default]
    Head,
    /// Once the first body bytes have arrived.
    FirstBytes,
    /// Once the first whole fragment has arrived.
    FirstFragment,
}

impl std::str::FromStr for AnswerAt {
    type Err = String;
    fn from_str(s: &str) -> Result<AnswerAt, String> {
        match s {
            "head" => Ok(AnswerAt::Head),
            "first-bytes" => Ok(AnswerAt::FirstBytes),
            "first-fragment" => Ok(AnswerAt::FirstFragment),
            other => Err(format!(
                "{other:?}: expected head, first-bytes or first-fragment"
            )),
        }
    }
}

impl Config {
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen,
            admin_listen: None,
            data_dir: data_dir.into(),
            credentials: vec![Credentials {
                access_key: DEFAULT_ACCESS_KEY.into(),
                secret_key: DEFAULT_SECRET_KEY.into(),
            }],
            account_id: "000000000000".into(),
            limits: Limits::default(),
            idle_ack_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connection: Duration::from_secs(45 * 60),
            tls: None,
            buckets: Vec::new(),
            events_dir: None,
            paused_queues: Vec::new(),
            put_media_answer: AnswerAt::Head,
            iot_broker: None,
        }
    }
}

pub(crate) struct State {
    pub cfg: Config,
    pub store: Store,
    pub faults: FaultState,
    /// This server's own URL: what GetDataEndpoint returns.
    pub url: String,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub s3: s3s::service::S3Service,
    pub jobs: crate::mediaconvert::Jobs,
}

impl State {
    /// The data clock: wall time shifted by the `clock_offset_ms` fault.
    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.faults.get().clock_offset_ms
    }
}

/// A running kvs-local. Dropping it (or `stop`) ends the server and its connections.
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Server {
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let admin = match cfg.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the admin listener {a}"))?,
            ),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let store = Store::open(&cfg.data_dir, &cfg.account_id)
            .map_err(|e| anyhow::anyhow!("opening the data dir {}: {e}", cfg.data_dir.display()))?;
        let tls = cfg
            .tls
            .as_ref()
            .map(|(cert, key)| tls_acceptor(cert, key))
            .transpose()?;
        let s3 = crate::s3::service(&cfg.data_dir, &cfg.credentials[0], &cfg.buckets)?;
        let state = Arc::new(State {
            s3,
            jobs: crate::mediaconvert::Jobs::new(cfg.paused_queues.clone()),
            url: format!("{}://{addr}", if tls.is_some() { "https" } else { "http" }),
            tls,
            cfg,
            store,
            faults: FaultState::default(),
        });
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(
            Some(listener),
            addr,
            state.clone(),
            shutdown.subscribe(),
            false,
        ));
        if let Some(admin) = admin {
            let admin_addr = admin.local_addr()?;
            tasks.spawn(accept_loop(
                Some(admin),
                admin_addr,
                state.clone(),
                shutdown.subscribe(),
                true,
            ));
        }
        Ok(Server {
            addr,
            admin_addr,
            state,
            shutdown,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// `http://127.0.0.1:PORT`: the endpoint URL for SDK clients.
    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    pub fn faults(&self) -> Faults {
        self.state.faults.get()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.faults.set(faults);
    }

    pub async fn stop(mut self) {
        self.shutdown.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    admin_only: bool,
) {
    let mut refuse = state.faults.refuse_watch();
    let mut connections = JoinSet::new();
    loop {
        let refusing = !admin_only && *refuse.borrow_and_update();
        if refusing && listener.is_some() {
            info!("refusing connections on {addr} and closing open ones (fault injection)");
            listener = None;
            // Like a network outage: established connections (a PutMedia upload) die too.
            connections.abort_all();
        }
        if !refusing && listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    info!("accepting connections on {addr} again");
                    listener = Some(l);
                }
                Err(e) => {
                    warn!("re-binding {addr}: {e}; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.changed() => break,
                    }
                }
            }
        }
        tokio::select! {
            accepted = async { listener.as_ref().expect("bound").accept().await }, if listener.is_some() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                connections.spawn(async move {
                    match state.tls.clone() {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, state, admin_only).await;
                            }
                        }
                        None => serve(stream, state, admin_only).await,
                    }
                });
            }
            _ = refuse.changed() => {}
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn serve<I>(io: I, state: Arc<State>, admin_only: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(state, req, admin_only).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Response bodies: whole buffers for JSON and media, a channel for PutMedia's ack stream.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Result<Bytes, std::io::Error>>),
    S3(Pin<Box<s3s::Body>>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
            Body::S3(b) => b
                .as_mut()
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(std::io::Error::other))),
        }
    }
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Body::Full(Some(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        content_type.parse().expect("valid content type"),
    );
    resp
}

pub(crate) fn json<T: Serialize>(value: &T) -> Response<Body> {
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(value).expect("serializable"),
    )
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    let body = serde_json::json!({ "message": e.message });
    let mut resp = respond(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        body.to_string(),
    );
    if let Ok(v) = e.error_type.parse() {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    resp
}

/// Parses a JSON request body, naming the offending field on error.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

/// Maps a request path to its operation name.
fn operation(path: &str) -> Option<&'static str> {
    Some(match path {
        "/createStream" => "CreateStream",
        "/describeStream" => "DescribeStream",
        "/listStreams" => "ListStreams",
        "/deleteStream" => "DeleteStream",
        "/tagStream" => "TagStream",
        "/untagStream" => "UntagStream",
        "/listTagsForStream" => "ListTagsForStream",
        "/updateDataRetention" => "UpdateDataRetention",
        "/getDataEndpoint" => "GetDataEndpoint",
        "/putMedia" => "PutMedia",
        "/listFragments" => "ListFragments",
        "/getClip" => "GetClip",
        "/getMediaForFragmentList" => "GetMediaForFragmentList",
        _ => return None,
    })
}

const MAX_JSON_BODY: usize = 1024 * 1024;

async fn route(state: Arc<State>, req: Request<Incoming>, admin_only: bool) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (op, resp) = if path.starts_with("/_kvs-local/") {
        ("admin", admin(&state, req).await)
    } else if admin_only {
        ("-", error_response(&ApiError::unknown_operation(&path)))
    } else if crate::s3::is_s3(&req) {
        let resp = match hyper::service::Service::call(&state.s3, req).await {
            Ok(r) => r.map(|b| Body::S3(Box::pin(b))),
            Err(e) => error_response(&ApiError::new(500, "InternalError", format!("S3: {e:?}"))),
        };
        ("S3", resp)
    } else if path.starts_with("/2017-08-29/") {
        ("MediaConvert", mediaconvert(&state, req).await)
    } else if crate::iotdata::is_iot_data(&path) {
        ("IoTData", crate::iotdata::handle(&state, req).await)
    } else {
        match operation(&path) {
            Some(op) if method == hyper::Method::POST => (op, dispatch(&state, op, req).await),
            Some(op) => (
                op,
                error_response(&ApiError::new(
                    405,
                    "MethodNotAllowed",
                    format!("{op} takes POST"),
                )),
            ),
            None => ("-", error_response(&ApiError::unknown_operation(&path))),
        }
    };
    let error = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    info!(
        "{method} {path} {op} -> {} {error} ({} ms)",
        resp.status().as_u16(),
        started.elapsed().as_millis()
    );
    resp
}

/// A JSON request's parts and body (at most `MAX_JSON_BODY`), its SigV4 signature for
/// `service` verified; otherwise the error response.
pub(crate) async fn signed_json(
    state: &State,
    req: Request<Incoming>,
    service: &str,
) -> Result<(http::request::Parts, Bytes, sigv4::Scope), Response<Body>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_JSON_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(error_response(&ApiError::invalid(format!(
                "reading the request body: {e}"
            ))));
        }
    };
    let request = sigv4::Request {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
    };
    match sigv4::verify(
        &request,
        sigv4::Payload::Known(&body),
        &state.cfg.credentials,
        service,
        Utc::now(),
    ) {
        Ok(scope) => Ok((parts, body, scope)),
        Err(e) => Err(error_response(&ApiError::new(
            403,
            e.error_type(),
            e.to_string(),
        ))),
    }
}

/// The MediaConvert subset (see `mediaconvert`): SigV4 for the `mediaconvert` service.
async fn mediaconvert(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body, scope) = match signed_json(state, req, "mediaconvert").await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let path = parts.uri.path();
    let op = match (parts.method.as_str(), path) {
        ("POST", "/2017-08-29/endpoints") => "DescribeEndpoints",
        ("POST", "/2017-08-29/jobs") => "CreateJob",
        ("GET", "/2017-08-29/jobs") => "ListJobs",
        ("GET", p) if p.starts_with("/2017-08-29/jobs/") => "GetJob",
        ("GET", p) if p.starts_with("/2017-08-29/queues/") => "GetQueue",
        ("PUT", p) if p.starts_with("/2017-08-29/queues/") => "UpdateQueue",
        _ => "-",
    };
    // Injected faults as MediaConvert answers them: throttling is 429 TooManyRequestsException.
    if let Err(e) = state.faults.check(op, state.now_ms()) {
        let e = if e.error_type == "ClientLimitExceededException" {
            ApiError::new(429, "TooManyRequestsException", e.message)
        } else {
            e
        };
        return error_response(&e);
    }
    let (account, region) = (&state.cfg.account_id, &scope.region);
    let result = match (parts.method.as_str(), path) {
        ("GET", p) if p.starts_with("/2017-08-29/queues/") => {
            Ok(state
                .jobs
                .queue(&p["/2017-08-29/queues/".len()..], account, region))
        }
        ("PUT", p) if p.starts_with("/2017-08-29/queues/") => serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(400, "BadRequestException", format!("invalid JSON: {e}")))
            .and_then(|request: serde_json::Value| {
                state.jobs.update_queue(
                    &p["/2017-08-29/queues/".len()..],
                    &request,
                    account,
                    region,
                )
            }),
        ("POST", "/2017-08-29/endpoints") => {
            Ok(serde_json::json!({ "endpoints": [{ "url": state.url }] }))
        }
        ("POST", "/2017-08-29/jobs") => serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(400, "BadRequestException", format!("invalid JSON: {e}")))
            .and_then(|request| {
                state.jobs.create(
                    request,
                    state.cfg.data_dir.join("s3"),
                    &state.cfg.account_id,
                    &scope.region,
                    state.cfg.events_dir.clone(),
                )
            })
            .map(|job| serde_json::json!({ "job": job })),
        ("GET", "/2017-08-29/jobs") => {
            let status = parts
                .uri
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("status=")));
            Ok(state.jobs.list(status))
        }
        ("GET", p) if p.starts_with("/2017-08-29/jobs/") => state
            .jobs
            .get(&p["/2017-08-29/jobs/".len()..])
            .map(|job| serde_json::json!({ "job": job })),
        _ => Err(ApiError::unknown_operation(path)),
    };
    match result {
        Ok(v) => {
            let mut resp = json(&v);
            if parts.method == hyper::Method::POST && path == "/2017-08-29/jobs" {
                *resp.status_mut() = StatusCode::CREATED;
            }
            resp
        }
        Err(e) => error_response(&e),
    }
}

async fn dispatch(state: &Arc<State>, op: &'static str, req: Request<Incoming>) -> Response<Body> {
    if op == "PutMedia" {
        return putmedia::handle(state.clone(), req).await;
    }
    let (_, body, scope) = match signed_json(state, req, "kinesisvideo").await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(e) = state.faults.check(op, state.now_ms()) {
        return error_response(&e);
    }
    let result = match op {
        "ListFragments" | "GetClip" | "GetMediaForFragmentList" => {
            let state = state.clone();
            tokio::task::spawn_blocking(move || archived::handle(&state, op, &body))
                .await
                .unwrap_or_else(|e| Err(ApiError::internal(format!("handler panicked: {e}"))))
        }
        _ => control::handle(state, op, &body, &scope.region),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

async fn admin(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (method.as_str(), path.as_str()) {
        ("GET", "/_kvs-local/health") => {
            json(&serde_json::json!({ "status": "ok", "streams": state.store.list().len() }))
        }
        ("GET", "/_kvs-local/faults") => json(&state.faults.get()),
        ("DELETE", "/_kvs-local/faults") => {
            state.faults.set(Faults::default());
            json(&state.faults.get())
        }
        ("PUT", "/_kvs-local/faults") => {
            let body = match Limited::new(req.into_body(), MAX_JSON_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error_response(&ApiError::invalid(format!(
                        "reading the request body: {e}"
                    )));
                }
            };
            match parse::<Faults>(&body) {
                Ok(f) => {
                    info!("faults set: {}", String::from_utf8_lossy(&body));
                    state.faults.set(f);
                    json(&state.faults.get())
                }
                Err(e) => error_response(&e),
            }
        }
        _ => error_response(&ApiError::unknown_operation(&path)),
    }
}

/// JSON timestamps in the rest-json protocol: epoch seconds with fractional milliseconds.
pub(crate) fn epoch_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

pub(crate) fn ms_from_epoch_seconds(field: &str, v: &serde_json::Value) -> Result<i64, ApiError> {
    v.as_f64()
        .filter(|s| s.is_finite())
        .map(|s| (s * 1000.0).round() as i64)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{field} must be a timestamp in epoch seconds, got {v}"
            ))
        })
}
