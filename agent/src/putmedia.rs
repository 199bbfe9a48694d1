//! Our PutMedia client (no AWS SDK has PutMedia). A session is one long-lived chunked
//! `POST /putMedia`: the Matroska stream goes up while fragment acks come back on the same
//! connection. Protocol parts are pure (`AckParser`, `signed_request`); `Session` is the I/O.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::net::{self, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AckEvent {
    Buffering,
    Received,
    Persisted,
    Error,
    Idle,
}

/// One acknowledgement. `FragmentNumber` stays a string: it is ~47 decimal digits.
///
/// The real service has been seen to send error acks with `"FragmentTimecode": -1` and an
/// empty `FragmentNumber`: both become `None` here, so nothing downstream mistakes them for
/// a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub event_type: AckEvent,
    pub fragment_timecode: Option<i64>,
    pub fragment_number: Option<String>,
    pub error_id: Option<u32>,
    pub error_code: Option<String>,
}

/// An ack as it arrives: the number may be a string (as the service sends it) or a JSON
/// number (as the API reference's example shows it).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireAck {
    event_type: AckEvent,
    fragment_timecode: Option<i64>,
    fragment_number: Option<serde_json::Value>,
    error_id: Option<u32>,
    error_code: Option<String>,
}

impl From<WireAck> for Ack {
    fn from(w: WireAck) -> Ack {
        let fragment_number = match w.fragment_number {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
        .filter(|n| !n.is_empty());
        Ack {
            event_type: w.event_type,
            fragment_timecode: w.fragment_timecode.filter(|t| *t >= 0),
            fragment_number,
            error_id: w.error_id,
            error_code: w.error_code.filter(|c| !c.is_empty()),
        }
    }
}

#[derive(Debug, Error)]
pub enum PutMediaError {
    #[error("connecting to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("PutMedia to stream {stream} answered HTTP {status} {error_type}: {message}")]
    Http {
        stream: String,
        status: u16,
        error_type: String,
        message: String,
    },
    #[error("endpoint {0:?} is not a usable http:// or https:// URL")]
    Endpoint(String),
    #[error("signing the PutMedia request: {0}")]
    Signing(String),
    #[error("unreadable ack {line:?}: {reason}")]
    BadAck { line: String, reason: String },
    #[error("the PutMedia connection closed: {0}")]
    Closed(String),
}

/// Splits the ack stream into JSON objects. Acks may arrive split across chunks or several
/// in one chunk; they are separated by newlines, never by chunk edges.
#[derive(Default)]
pub struct AckParser {
    buf: Vec<u8>,
}

impl AckParser {
    pub fn push(&mut self, data: &[u8]) -> Vec<Result<Ack, PutMediaError>> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if let Some(ack) = parse_line(&line) {
                out.push(ack);
            }
        }
        out
    }

    /// The end of the stream: a last ack without a trailing newline still counts.
    pub fn finish(&mut self) -> Option<Result<Ack, PutMediaError>> {
        let line = std::mem::take(&mut self.buf);
        parse_line(&line)
    }
}

fn parse_line(line: &[u8]) -> Option<Result<Ack, PutMediaError>> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(
        serde_json::from_str::<WireAck>(text)
            .map(Ack::from)
            .map_err(|e| PutMediaError::BadAck {
                line: text.chars().take(200).collect(),
                reason: e.to_string(),
            }),
    )
}

/// How a PutMedia body's Cluster timecodes count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timecodes {
    /// Milliseconds since the epoch (the agent's fragments).
    #[default]
    Absolute,
    /// Milliseconds since `producer_start` (recorded files, the official producers' default).
    Relative,
}

/// What a session needs to know.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// The data endpoint from GetDataEndpoint(PUT_MEDIA), e.g. `http://127.0.0.1:4567`.
    pub endpoint: String,
    pub stream_name: String,
    pub region: String,
    pub credentials: Credentials,
    /// `x-amzn-producer-start-timestamp`.
    pub producer_start: SystemTime,
    /// `x-amzn-fragment-timecode-type`: how the body's Cluster timecodes count.
    pub timecodes: Timecodes,
    pub user_agent: String,
    /// TLS settings for https endpoints; `None` = the system's trust roots.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

fn parse_endpoint(url: &str) -> Result<Target, PutMediaError> {
    Target::parse(url).ok_or_else(|| PutMediaError::Endpoint(url.into()))
}

fn epoch_seconds(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

const PATH: &str = "/putMedia";

/// Builds the signed PutMedia request head. The body is not hashed: like the production C
/// producer, it is signed with the SHA-256 of the empty payload. The request line is in
/// origin form (`POST /putMedia HTTP/1.1`), as the official producer sends it.
pub fn signed_request(
    params: &SessionParams,
    now: SystemTime,
) -> Result<http::Request<()>, PutMediaError> {
    let ep = parse_endpoint(&params.endpoint)?;
    let host = ep.authority();
    let uri = format!("{}://{host}{PATH}", ep.scheme());
    let headers = [
        ("host", host.clone()),
        ("x-amzn-stream-name", params.stream_name.clone()),
        (
            "x-amzn-fragment-timecode-type",
            match params.timecodes {
                Timecodes::Absolute => "ABSOLUTE",
                Timecodes::Relative => "RELATIVE",
            }
            .to_string(),
        ),
        (
            "x-amzn-producer-start-timestamp",
            epoch_seconds(params.producer_start),
        ),
        ("x-amzn-fragment-acknowledgment-required", "1".to_string()),
        ("user-agent", params.user_agent.clone()),
    ];
    let identity = params.credentials.clone().into();
    let signing = v4::SigningParams::builder()
        .identity(&identity)
        .region(&params.region)
        .name("kinesisvideo")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| PutMediaError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        uri.as_str(),
        headers.iter().map(|(k, v)| (*k, v.as_str())),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| PutMediaError::Signing(e.to_string()))?;
    let (instructions, _) = sign(signable, &signing)
        .map_err(|e| PutMediaError::Signing(e.to_string()))?
        .into_parts();
    let mut builder = http::Request::builder().method("POST").uri(PATH);
    for (k, v) in &headers {
        builder = builder.header(*k, v);
    }
    let mut req = builder
        .body(())
        .map_err(|e| PutMediaError::Signing(e.to_string()))?;
    instructions.apply_to_request_http1x(&mut req);
    Ok(req)
}

/// The upload side of a session: a bounded channel into the chunked request body.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// An open PutMedia session: the upload half sends Matroska bytes, the ack half receives
/// acks; they can be used concurrently.
pub struct Session {
    pub upload: Upload,
    pub acks: Acks,
}

pub struct Upload {
    body: Option<mpsc::Sender<Bytes>>,
}

/// The response side: first the response head (200, or an HTTP error with the service's
/// error type), then the acks.
pub struct Acks {
    head: Option<oneshot::Receiver<Result<(), PutMediaError>>>,
    rx: mpsc::Receiver<Result<Ack, PutMediaError>>,
}

impl Session {
    /// Connects and sends the signed request head; the body can be sent at once. Like the
    /// official producer (curl), nothing waits for the response head: the service "starts
    /// reading the payload and first sends" its 200, and may do so only once a fragment has
    /// arrived. The head is read concurrently; an HTTP error (403, 404, throttling …) comes
    /// out of `Acks::next` (or `Acks::accepted`) with the service's error type.
    pub async fn open(
        params: &SessionParams,
        connect_timeout: Duration,
    ) -> Result<Session, PutMediaError> {
        let ep = parse_endpoint(&params.endpoint)?;
        let mut sender = net::connect(&ep, params.tls.clone(), connect_timeout)
            .await
            .map_err(|reason| PutMediaError::Connect {
                endpoint: params.endpoint.clone(),
                reason,
            })?;
        let (body_tx, body_rx) = mpsc::channel(16);
        let (parts, ()) = signed_request(params, SystemTime::now())?.into_parts();
        let req = http::Request::from_parts(parts, ChannelBody(body_rx));
        let (head_tx, head_rx) = oneshot::channel();
        let (acks_tx, acks_rx) = mpsc::channel(256);
        let stream = params.stream_name.clone();
        tokio::spawn(async move {
            // Polling the response future does not hold the body back: the connection task
            // writes the head and streams the body meanwhile.
            match sender.send_request(req).await {
                Err(e) => {
                    let _ = head_tx.send(Err(PutMediaError::Closed(e.to_string())));
                }
                Ok(resp) if !resp.status().is_success() => {
                    let _ = head_tx.send(Err(http_error(&stream, resp, connect_timeout).await));
                }
                Ok(resp) => {
                    let _ = head_tx.send(Ok(()));
                    read_acks(resp.into_body(), acks_tx).await;
                }
            }
        });
        Ok(Session {
            upload: Upload {
                body: Some(body_tx),
            },
            acks: Acks {
                head: Some(head_rx),
                rx: acks_rx,
            },
        })
    }

    pub async fn send(&self, data: Bytes) -> Result<(), PutMediaError> {
        self.upload.send(data).await
    }

    pub fn finish_upload(&mut self) {
        self.upload.finish();
    }

    pub async fn next_ack(&mut self) -> Option<Result<Ack, PutMediaError>> {
        self.acks.next().await
    }
}

/// An error answer: status, the `x-amzn-ErrorType` (without its `:…` suffix) and the body.
async fn http_error(stream: &str, resp: http::Response<Incoming>, wait: Duration) -> PutMediaError {
    let status = resp.status();
    let error_type = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(':').next().unwrap_or(s).to_string())
        .unwrap_or_default();
    let body = tokio::time::timeout(wait, resp.into_body().collect()).await;
    let message = match body {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes())
            .chars()
            .take(500)
            .collect(),
        _ => String::new(),
    };
    PutMediaError::Http {
        stream: stream.to_string(),
        status: status.as_u16(),
        error_type,
        message,
    }
}

impl Upload {
    /// Queues bytes for upload (back-pressure: waits while the connection is slower).
    /// Cancel-safe: if the future is dropped, nothing was queued.
    pub async fn send(&self, data: Bytes) -> Result<(), PutMediaError> {
        let body = self
            .body
            .as_ref()
            .ok_or_else(|| PutMediaError::Closed("the upload was finished".into()))?;
        body.send(data)
            .await
            .map_err(|_| PutMediaError::Closed("the connection dropped the request body".into()))
    }

    /// Ends the upload (the final chunk); acks keep arriving until the service closes.
    pub fn finish(&mut self) {
        self.body = None;
    }
}

impl Acks {
    /// Waits for the response head: `Ok` once the service answered 200, its HTTP error
    /// otherwise. Never wait for this before sending the first fragment: a service may
    /// hold its answer back until then.
    pub async fn accepted(&mut self) -> Result<(), PutMediaError> {
        match self.head.take() {
            None => Ok(()),
            Some(head) => head.await.unwrap_or_else(|_| {
                Err(PutMediaError::Closed(
                    "the connection closed before the response head".into(),
                ))
            }),
        }
    }

    /// The next ack; `None` once the service has closed the response. An HTTP error
    /// answer is the first (and last) item.
    pub async fn next(&mut self) -> Option<Result<Ack, PutMediaError>> {
        if let Err(e) = self.accepted().await {
            return Some(Err(e));
        }
        self.rx.recv().await
    }
}

async fn read_acks(mut body: Incoming, tx: mpsc::Sender<Result<Ack, PutMediaError>>) {
    let mut parser = AckParser::default();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    for ack in parser.push(&data) {
                        if tx.send(ack).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(PutMediaError::Closed(e.to_string()))).await;
                return;
            }
            None => {
                if let Some(ack) = parser.finish() {
                    let _ = tx.send(ack).await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_and_batched_acks() {
        let mut p = AckParser::default();
        let a = br#"{"EventType":"BUFFERING","FragmentTimecode":1595833960258,"FragmentNumber":"91343852333181457151482848337893124909386799"}"#;
        assert!(p.push(&a[..30]).is_empty());
        let mut rest = a[30..].to_vec();
        rest.extend_from_slice(
            b"\n{\"EventType\":\"IDLE\"}\n{\"EventType\":\"ERROR\",\"ErrorId\":4004,",
        );
        let acks: Vec<Ack> = p.push(&rest).into_iter().map(Result::unwrap).collect();
        assert_eq!(acks.len(), 2);
        assert_eq!(acks[0].event_type, AckEvent::Buffering);
        assert_eq!(
            acks[0].fragment_number.as_deref(),
            Some("91343852333181457151482848337893124909386799")
        );
        assert_eq!(acks[1].event_type, AckEvent::Idle);
        let last: Vec<_> = p
            .push(b"\"ErrorCode\":\"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS\"}")
            .into_iter()
            .collect();
        assert!(last.is_empty());
        let err = p.finish().unwrap().unwrap();
        assert_eq!(
            (err.event_type, err.error_id),
            (AckEvent::Error, Some(4004))
        );
    }

    #[test]
    fn bad_ack_is_an_error_naming_the_line() {
        let mut p = AckParser::default();
        let out = p.push(b"{\"EventType\":\"EXPLODED\"}\n");
        assert!(
            matches!(&out[0], Err(PutMediaError::BadAck { line, .. }) if line.contains("EXPLODED"))
        );
    }

    #[test]
    fn signs_with_the_empty_payload_hash() {
        let params = SessionParams {
            endpoint: "http://127.0.0.1:4567".into(),
            stream_name: "cam-1".into(),
            region: "us-east-1".into(),
            credentials: Credentials::new("AKID", "SECRET", None, None, "test"),
            producer_start: UNIX_EPOCH + Duration::from_millis(1_595_833_960_258),
            timecodes: Timecodes::Absolute,
            user_agent: "kvs-edge-test".into(),
            tls: None,
        };
        let req = signed_request(&params, UNIX_EPOCH + Duration::from_secs(1_700_000_000)).unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(auth.starts_with(
            "AWS4-HMAC-SHA256 Credential=AKID/20231114/us-east-1/kinesisvideo/aws4_request"
        ));
        assert!(auth.contains("x-amzn-stream-name"));
        assert_eq!(
            req.headers()["x-amzn-producer-start-timestamp"],
            "1595833960.258"
        );
        assert!(req.headers().get("x-amz-content-sha256").is_none());
        assert_eq!(
            req.uri(),
            "/putMedia",
            "origin form, as the official producer sends it"
        );
        assert_eq!(req.headers()["host"], "127.0.0.1:4567");
    }

    #[test]
    fn error_acks_without_a_fragment_name_none() {
        // As the real service sends them: no usable timecode, an empty number.
        let mut p = AckParser::default();
        let out = p.push(
            b"{\"EventType\":\"ERROR\",\"FragmentTimecode\":-1,\"FragmentNumber\":\"\",\"ErrorId\":5000,\"ErrorCode\":\"INTERNAL_ERROR\"}\n\
              {\"EventType\":\"PERSISTED\",\"FragmentTimecode\":12,\"FragmentNumber\":913438523331814571}\n",
        );
        let acks: Vec<Ack> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(acks[0].fragment_timecode, None);
        assert_eq!(acks[0].fragment_number, None);
        assert_eq!(acks[0].error_id, Some(5000));
        assert_eq!(
            acks[1].fragment_number.as_deref(),
            Some("913438523331814571"),
            "a number as the API reference's example writes it"
        );
    }
}
