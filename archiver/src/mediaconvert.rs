//! Our own MediaConvert client: the job JSON goes out exactly as the template made it, which
//! the SDK's typed CreateJob cannot do. REST-JSON under `/2017-08-29/`, SigV4 (`mediaconvert`)
//! with the SDK's credentials, DescribeEndpoints once (cached), retries with backoff for
//! throttling and server errors, and `ClientRequestToken` so a retried CreateJob is one job.

use std::time::Duration;

use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::Mutex;
use tracing::warn;

use crate::signed::SignedClient;

#[derive(Debug, Error)]
pub enum McError {
    #[error("MediaConvert {op}: {status} {kind}: {message}")]
    Api {
        op: &'static str,
        status: u16,
        kind: String,
        message: String,
    },
    #[error("MediaConvert {0}: {1}")]
    Transport(&'static str, String),
}

impl McError {
    /// Throttling and server errors are worth another try.
    pub fn retryable(&self) -> bool {
        match self {
            McError::Api { status, .. } => *status == 429 || *status >= 500,
            McError::Transport(..) => true,
        }
    }
}

pub struct MediaConvert {
    /// Where DescribeEndpoints is asked (the regional endpoint, or a configured one).
    base: String,
    client: SignedClient,
    endpoint: Mutex<Option<String>>,
    /// Attempts per call, and the first retry's delay (doubling, with jitter, up to 20 s).
    attempts: u32,
    first_delay: Duration,
}

impl MediaConvert {
    pub fn new(
        sdk: &aws_config::SdkConfig,
        endpoint_url: Option<&str>,
    ) -> anyhow::Result<MediaConvert> {
        let client = SignedClient::new(sdk)?;
        let base = endpoint_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://mediaconvert.{}.amazonaws.com", client.region()));
        Ok(MediaConvert {
            base: base.trim_end_matches('/').to_string(),
            client,
            endpoint: Mutex::new(None),
            attempts: 5,
            first_delay: Duration::from_millis(200),
        })
    }

    pub fn set_retries(&mut self, attempts: u32, first_delay: Duration) {
        self.attempts = attempts.max(1);
        self.first_delay = first_delay;
    }

    async fn call_once(
        &self,
        op: &'static str,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> Result<Value, McError> {
        let reply = self
            .client
            .send("mediaconvert", method, url, "application/json", body)
            .await
            .map_err(|e| McError::Transport(op, crate::store::error_chain(e.as_ref())))?;
        let value: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        if (200..300).contains(&reply.status) {
            return Ok(value);
        }
        Err(McError::Api {
            op,
            status: reply.status,
            kind: reply.error_type,
            message: value["message"]
                .as_str()
                .or(value["Message"].as_str())
                .unwrap_or("")
                .to_string(),
        })
    }

    /// A call, retried with backoff while the error is retryable.
    async fn call(
        &self,
        op: &'static str,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> Result<Value, McError> {
        let mut backoff = crate::retry::Backoff::new(self.first_delay, Duration::from_secs(20));
        let mut attempt = 1;
        loop {
            match self.call_once(op, method, url, body).await {
                Err(e) if e.retryable() && attempt < self.attempts => {
                    let wait = backoff.next_delay();
                    warn!("{e}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The account's MediaConvert endpoint (DescribeEndpoints, asked once).
    pub async fn endpoint(&self) -> Result<String, McError> {
        let mut cached = self.endpoint.lock().await;
        if let Some(e) = cached.as_ref() {
            return Ok(e.clone());
        }
        let url = format!("{}/2017-08-29/endpoints", self.base);
        let out = self
            .call("DescribeEndpoints", "POST", &url, br#"{"Mode":"DEFAULT"}"#)
            .await?;
        let endpoint = out["endpoints"][0]["url"]
            .as_str()
            .ok_or_else(|| {
                McError::Transport("DescribeEndpoints", "no endpoint in the answer".into())
            })?
            .trim_end_matches('/')
            .to_string();
        *cached = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// CreateJob with `request` as it is (in wire names, plus the idempotency token); the
    /// job, in wire names (`id`, `arn`, `status`).
    pub async fn create_job(&self, request: &Value, token: &str) -> Result<Value, McError> {
        let mut request = crate::transcode::to_wire(request);
        request["clientRequestToken"] = json!(token);
        let url = format!("{}/2017-08-29/jobs", self.endpoint().await?);
        let out = self
            .call("CreateJob", "POST", &url, request.to_string().as_bytes())
            .await?;
        Ok(out["job"].clone())
    }
}
