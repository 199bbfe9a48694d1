//! PutMedia: one long-lived chunked POST per session. The body is parsed as it arrives
//! (`ingest`), and acks stream back on the response *while the upload is still running*:
//! BUFFERING when a fragment starts, RECEIVED when it is complete, PERSISTED once it is
//! fsynced, IDLE while no data flows, ERROR (then the session ends) on a rule violation.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

use crate::error::ApiError;
use crate::ingest::{ErrorId, Event, Ingest, IngestError, TimecodeType};
use crate::server::{AnswerAt, Body, State, error_response};
use crate::sigv4;

/// What the ack writer sends: an ack line, or an abort of the connection (fault injection).
enum Out {
    Ack(Bytes),
    Abort,
}

/// Queues acks for the response, each delayed by the `ack_delay_ms` fault in force.
struct Acks {
    tx: mpsc::Sender<(Instant, Out)>,
    state: Arc<State>,
}

impl Acks {
    async fn send(&self, ack: Value) {
        let mut line = ack.to_string().into_bytes();
        line.push(b'\n');
        let _ = self
            .tx
            .send((
                Instant::now() + Duration::from_millis(self.state.faults.get().ack_delay_ms),
                Out::Ack(line.into()),
            ))
            .await;
    }

    async fn abort(&self) {
        let _ = self.tx.send((Instant::now(), Out::Abort)).await;
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(crate) async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    match start(&state, &req) {
        Ok((name, mode, retention, acks_wanted)) => {
            let (out_tx, out_rx) = mpsc::channel::<Result<Bytes, io::Error>>(64);
            let (ack_tx, ack_rx) = mpsc::channel(256);
            tokio::spawn(write_acks(ack_rx, out_tx));
            let acks = Acks {
                tx: ack_tx,
                state: state.clone(),
            };
            let mut body = req.into_body();
            let (answer_tx, answer_rx) = oneshot::channel();
            let answer = Answer {
                at: state.cfg.put_media_answer,
                tx: Some(answer_tx),
            };
            tokio::spawn(async move {
                session(
                    state.clone(),
                    &name,
                    &mut body,
                    mode,
                    retention,
                    acks_wanted,
                    acks,
                    answer,
                )
                .await;
                state.store.end_put_media(&name);
                linger(&mut body).await;
            });
            // Strict modes hold the 200 back until the body has started (or a whole fragment
            // has arrived); the session answers earlier if it ends first.
            let _ = answer_rx.await;
            let mut resp = Response::new(Body::Channel(out_rx));
            *resp.status_mut() = StatusCode::OK;
            resp.headers_mut()
                .insert("content-type", "application/json".parse().expect("static"));
            resp
        }
        Err(e) => error_response(&e),
    }
}

type Start = (String, TimecodeType, u32, bool);

/// Releases the response head when the configured point of the upload is reached.
struct Answer {
    at: AnswerAt,
    tx: Option<oneshot::Sender<()>>,
}

impl Answer {
    /// The upload reached `point`: answer if that is when this server answers.
    fn reached(&mut self, point: AnswerAt) {
        if self.at == AnswerAt::Head || self.at == point {
            self.now();
        }
    }

    fn now(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

/// Everything that can fail before streaming starts, answered as an HTTP error.
fn start(state: &State, req: &Request<Incoming>) -> Result<Start, ApiError> {
    let request = sigv4::Request {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        headers: req.headers(),
    };
    sigv4::verify(
        &request,
        sigv4::Payload::Streaming,
        &state.cfg.credentials,
        "kinesisvideo",
        Utc::now(),
    )
    .map_err(|e| ApiError::new(403, e.error_type(), e.to_string()))?;
    state.faults.check("PutMedia", state.now_ms())?;
    let name = header(req, "x-amzn-stream-name");
    let arn = header(req, "x-amzn-stream-arn");
    if name.is_none() && arn.is_none() {
        return Err(ApiError::invalid(
            "x-amzn-stream-name or x-amzn-stream-arn is required",
        ));
    }
    let producer_start_ms = match header(req, "x-amzn-producer-start-timestamp") {
        Some(v) => Some(
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| (s * 1000.0).round() as i64)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "x-amzn-producer-start-timestamp {v:?} is not epoch seconds"
                    ))
                })?,
        ),
        None => None,
    };
    let mode = match header(req, "x-amzn-fragment-timecode-type") {
        Some("ABSOLUTE") => TimecodeType::Absolute,
        Some("RELATIVE") => TimecodeType::Relative {
            producer_start_ms: producer_start_ms.ok_or_else(|| {
                ApiError::invalid("RELATIVE timecodes need x-amzn-producer-start-timestamp")
            })?,
        },
        other => {
            return Err(ApiError::invalid(format!(
                "x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE, got {other:?}"
            )));
        }
    };
    let acks_wanted = header(req, "x-amzn-fragment-acknowledgment-required") != Some("0");
    let session = state.store.begin_put_media(name, arn)?;
    Ok((session.name, mode, session.retention_hours, acks_wanted))
}

/// After a session ends while the client is still sending, read and discard its body for a
/// moment before the connection closes: closing a socket with unread data resets it, and a
/// reset can destroy the last acks (an ERROR among them) before the client reads them.
async fn linger(body: &mut Incoming) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

async fn write_acks(
    mut rx: mpsc::Receiver<(Instant, Out)>,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
) {
    while let Some((due, out)) = rx.recv().await {
        sleep_until(due).await;
        let item = match out {
            Out::Ack(line) => Ok(line),
            Out::Abort => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped (fault injection)",
            )),
        };
        let abort = item.is_err();
        if tx.send(item).await.is_err() || abort {
            break;
        }
    }
}

fn ack(event: &str, timecode_ms: i64, number: &str) -> Value {
    json!({ "EventType": event, "FragmentTimecode": timecode_ms, "FragmentNumber": number })
}

fn error_ack(e: &IngestError, number: Option<&str>) -> Value {
    let mut v = json!({ "EventType": "ERROR", "ErrorId": e.id as u32, "ErrorCode": e.id.code() });
    if let Some(tc) = e.timecode_ms {
        v["FragmentTimecode"] = json!(tc);
    }
    if let Some(n) = number {
        v["FragmentNumber"] = json!(n);
    }
    v
}

#[allow(clippy::too_many_arguments)]
async fn session(
    state: Arc<State>,
    name: &str,
    body: &mut Incoming,
    mode: TimecodeType,
    retention_hours: u32,
    acks_wanted: bool,
    acks: Acks,
    mut answer: Answer,
) {
    answer.reached(AnswerAt::Head);
    let cfg = &state.cfg;
    // Fragments must follow one another within a session only (PutMedia reference, 4004:
    // "within a PutMedia call, you cannot send fragments out of order"); a later session may
    // send older producer timestamps, and reads deduplicate them.
    let mut ingest = Ingest::new(mode, cfg.limits.clone());
    let started = Instant::now();
    let mut last_data = Instant::now();
    let mut last_idle_ack = last_data;
    let mut received: u64 = 0;
    let mut fragments: u32 = 0;
    let mut number: Option<String> = None;
    let mut events = Vec::new();
    info!(stream = name, "PutMedia session started");
    let outcome: Result<(), IngestError> = 'session: loop {
        // Faults apply to running sessions too: read them afresh for every chunk.
        let faults = state.faults.get();
        let idle_deadline = last_data.max(last_idle_ack) + cfg.idle_ack_interval;
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = sleep_until(idle_deadline) => {
                if last_data.elapsed() >= cfg.idle_timeout {
                    info!(stream = name, "PutMedia session idle for {:?}: closing", cfg.idle_timeout);
                    break Ok(());
                }
                if acks_wanted {
                    acks.send(json!({ "EventType": "IDLE" })).await;
                }
                last_idle_ack = Instant::now();
                continue;
            }
        };
        if started.elapsed() > cfg.max_connection {
            break Err(IngestError {
                id: ErrorId::MaxConnectionDurationReached,
                timecode_ms: None,
                detail: format!("the connection is older than {:?}", cfg.max_connection),
            });
        }
        let end = match frame {
            None => true,
            Some(Err(e)) => {
                warn!(stream = name, "PutMedia body error: {e}");
                break Ok(());
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                last_data = Instant::now();
                received += data.len() as u64;
                answer.reached(AnswerAt::FirstBytes);
                if let Err(e) = ingest.push(&data, &mut events) {
                    break Err(e);
                }
                if faults
                    .drop_put_media_after_bytes
                    .is_some_and(|n| received >= n)
                {
                    info!(
                        stream = name,
                        "dropping the PutMedia connection after {received} bytes (fault injection)"
                    );
                    acks.abort().await;
                    return;
                }
                false
            }
        };
        if end && let Err(e) = ingest.finish(&mut events) {
            break Err(e);
        }
        for event in events.drain(..) {
            match event {
                Event::FragmentStarted { timecode_ms } => {
                    let n = match state.store.next_fragment_number(name) {
                        Ok(n) => n,
                        Err(e) => break 'session Err(internal(e)),
                    };
                    if acks_wanted {
                        acks.send(ack("BUFFERING", timecode_ms, &n)).await;
                    }
                    number = Some(n);
                }
                Event::FragmentComplete(fragment) => {
                    answer.reached(AnswerAt::FirstFragment);
                    let n = number.take().unwrap_or_default();
                    if let Some(f) = state.faults.put_media_error(fragments) {
                        let id = ErrorId::from_id(f.error_id).unwrap_or(ErrorId::InternalError);
                        let ack = if f.without_fragment {
                            json!({ "EventType": "ERROR", "FragmentTimecode": -1, "FragmentNumber": "",
                                    "ErrorId": id as u32, "ErrorCode": id.code() })
                        } else {
                            let e = IngestError {
                                id,
                                timecode_ms: Some(fragment.timecode_ms),
                                detail: "injected fault".into(),
                            };
                            error_ack(&e, Some(&n))
                        };
                        info!(
                            stream = name,
                            "answering a fragment with ERROR {} (fault injection)", id as u32
                        );
                        acks.send(ack).await;
                        return;
                    }
                    if acks_wanted {
                        acks.send(ack("RECEIVED", fragment.timecode_ms, &n)).await;
                    }
                    // No archive (retention 0): the fragment is RECEIVED, never PERSISTED.
                    if retention_hours > 0 {
                        let server_ms = state.now_ms();
                        let (st, stream, num, timecode_ms) = (
                            state.clone(),
                            name.to_string(),
                            n.clone(),
                            fragment.timecode_ms,
                        );
                        let stored = tokio::task::spawn_blocking(move || {
                            st.store.persist(&stream, &num, &fragment, server_ms)
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Err(ApiError::internal(format!("storing panicked: {e}")))
                        });
                        if let Err(e) = stored {
                            warn!(stream = name, "storing fragment {n}: {e}");
                            let e = IngestError {
                                id: ErrorId::ArchivalError,
                                timecode_ms: Some(timecode_ms),
                                detail: e.message,
                            };
                            break 'session Err(e);
                        }
                        if acks_wanted {
                            acks.send(ack("PERSISTED", timecode_ms, &n)).await;
                        }
                    }
                    fragments += 1;
                }
            }
        }
        if end {
            break Ok(());
        }
    };
    match outcome {
        Ok(()) => info!(
            stream = name,
            fragments,
            bytes = received,
            "PutMedia session ended"
        ),
        Err(e) => {
            warn!(
                stream = name,
                fragments,
                bytes = received,
                "PutMedia session failed: {e}"
            );
            acks.send(error_ack(&e, number.as_deref())).await;
        }
    }
}

fn internal(e: ApiError) -> IngestError {
    IngestError {
        id: ErrorId::InternalError,
        timecode_ms: None,
        detail: e.message,
    }
}
