//! The AWS Lambda Runtime API on loopback, as the Lambda service offers it to a custom
//! runtime (`GET …/runtime/invocation/next`, `POST …/invocation/<id>/response|error`), so that
//! the archiver binary runs as a function would: handed events, answering each.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, mpsc};

/// What the function answered: (request id, `response` or `error`, body).
pub type Answer = (String, String, serde_json::Value);

pub struct LambdaApi {
    pub addr: std::net::SocketAddr,
    answers: mpsc::UnboundedReceiver<Answer>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    events: Mutex<VecDeque<(String, Bytes)>>,
    arrived: Notify,
}

impl LambdaApi {
    /// Serves `events` in order (ids `req-1`, `req-2`, …); `next` waits once they are out.
    pub async fn start(events: Vec<serde_json::Value>) -> Result<LambdaApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            events: Mutex::new(
                events
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| (format!("req-{}", i + 1), Bytes::from(e.to_string())))
                    .collect(),
            ),
            arrived: Notify::new(),
        });
        let (tx, answers) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (shared, tx) = (shared.clone(), tx.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (shared, tx) = (shared.clone(), tx.clone());
                        async move { Ok::<_, Infallible>(serve(req, &shared, &tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(LambdaApi {
            addr,
            answers,
            task,
        })
    }

    /// Runs `function` (the archiver binary, or an unpacked `bootstrap`) against this API
    /// with the environment Lambda gives a function, takes `n` answers, then stops it.
    pub async fn run_function(
        &mut self,
        mut function: std::process::Command,
        n: usize,
    ) -> Result<Vec<Answer>> {
        let mut child = function
            .env("AWS_LAMBDA_RUNTIME_API", self.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "kvs-edge-archiver")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/kvs-edge-archiver")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the function")?;
        let mut answers = Vec::new();
        let mut taken = Ok(());
        while answers.len() < n {
            match self.answer(std::time::Duration::from_secs(60)).await {
                Ok(a) => answers.push(a),
                Err(e) => {
                    taken = Err(e);
                    break;
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        taken.map(|()| answers)
    }

    /// The next answer, within `within`.
    pub async fn answer(&mut self, within: std::time::Duration) -> Result<Answer> {
        tokio::time::timeout(within, self.answers.recv())
            .await
            .context("no answer from the function in time")?
            .context("the runtime API stopped")
    }
}

async fn serve(
    req: Request<hyper::body::Incoming>,
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Answer>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/2018-06-01/runtime/invocation/next" {
        loop {
            let notified = shared.arrived.notified();
            let next = shared.events.lock().unwrap().pop_front();
            if let Some((id, body)) = next {
                let deadline = chrono::Utc::now().timestamp_millis() + 900_000;
                return Response::builder()
                    .header("Lambda-Runtime-Aws-Request-Id", id)
                    .header("Lambda-Runtime-Deadline-Ms", deadline.to_string())
                    .header(
                        "Lambda-Runtime-Invoked-Function-Arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:kvs-edge-archiver",
                    )
                    .header(
                        "Lambda-Runtime-Trace-Id",
                        "Root=1-00000000-000000000000000000000000",
                    )
                    .body(Full::new(body))
                    .unwrap();
            }
            notified.await;
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    match parts.as_slice() {
        [
            "",
            "2018-06-01",
            "runtime",
            "invocation",
            id,
            kind @ ("response" | "error"),
        ] => {
            let _ = tx.send((id.to_string(), kind.to_string(), value));
        }
        ["", "2018-06-01", "runtime", "init", "error"] => {
            let _ = tx.send(("init".into(), "error".into(), value));
        }
        _ => {}
    }
    Response::builder()
        .status(202)
        .body(Full::new(Bytes::from_static(b"{\"status\":\"OK\"}")))
        .unwrap()
}

impl Drop for LambdaApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}
