//! Our own MediaConvert client: the job JSON goes out exactly as the template made it, which
//! the SDK's typed CreateJob cannot do. REST-JSON under `/2017-08-29/`, SigV4 (`mediaconvert`)
//! with the SDK's credentials, DescribeEndpoints once (cached), retries with backoff for
//! throttling and server errors, and `ClientRequestToken` so a retried CreateJob is one job.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::Mutex;
use tracing::warn;

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
    region: String,
    credentials: aws_credential_types::provider::SharedCredentialsProvider,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: Mutex<Option<String>>,
}

impl MediaConvert {
    pub fn new(
        sdk: &aws_config::SdkConfig,
        endpoint_url: Option<&str>,
    ) -> Result<MediaConvert, String> {
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let base = endpoint_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://mediaconvert.{region}.amazonaws.com"));
        let credentials = sdk
            .credentials_provider()
            .ok_or("no AWS credentials provider")?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(MediaConvert {
            base: base.trim_end_matches('/').to_string(),
            region,
            credentials,
            http: Client::builder(TokioExecutor::new()).build(https),
            endpoint: Mutex::new(None),
        })
    }

    async fn call_once(
        &self,
        op: &'static str,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> Result<Value, McError> {
        let transport = |e: String| McError::Transport(op, e);
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| transport(format!("credentials: {e}")))?;
        let identity = creds.into();
        let signing = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("mediaconvert")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| transport(e.to_string()))?
            .into();
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| transport(e.to_string()))?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let headers = [
            ("host", host.as_str()),
            ("content-type", "application/json"),
        ];
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| transport(e.to_string()))?;
        let (instructions, _) = sign(signable, &signing)
            .map_err(|e| transport(e.to_string()))?
            .into_parts();
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let mut req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| transport(e.to_string()))?;
        instructions.apply_to_request_http1x(&mut req);
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| transport("no answer within 30 s".into()))?
            .map_err(|e| transport(crate::store::error_chain(&e)))?;
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(McError::Api {
            op,
            status,
            kind,
            message: value["message"]
                .as_str()
                .or(value["Message"].as_str())
                .unwrap_or("")
                .to_string(),
        })
    }

    /// A call, retried with backoff while the error is retryable (5 attempts).
    async fn call(
        &self,
        op: &'static str,
        method: &str,
        url: &str,
        body: &[u8],
    ) -> Result<Value, McError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match self.call_once(op, method, url, body).await {
                Err(e) if e.retryable() && attempt < 5 => {
                    warn!("{e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
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
        let endpoint = out["Endpoints"][0]["Url"]
            .as_str()
            .ok_or_else(|| {
                McError::Transport("DescribeEndpoints", "no endpoint in the answer".into())
            })?
            .trim_end_matches('/')
            .to_string();
        *cached = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// CreateJob with `request` as it is (plus the idempotency token); the job.
    pub async fn create_job(&self, request: &Value, token: &str) -> Result<Value, McError> {
        let mut request = request.clone();
        request["ClientRequestToken"] = json!(token);
        let url = format!("{}/2017-08-29/jobs", self.endpoint().await?);
        let out = self
            .call("CreateJob", "POST", &url, request.to_string().as_bytes())
            .await?;
        Ok(out["Job"].clone())
    }

    pub async fn get_job(&self, id: &str) -> Result<Value, McError> {
        let url = format!("{}/2017-08-29/jobs/{id}", self.endpoint().await?);
        Ok(self.call("GetJob", "GET", &url, b"").await?["Job"].clone())
    }
}
