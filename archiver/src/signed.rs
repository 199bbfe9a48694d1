//! SigV4-signed HTTP requests with the SDK's credentials, for the APIs the archiver calls
//! without the SDK: MediaConvert (the job JSON goes out as written) and CloudWatch's query
//! API (alarm tags; the SDK's current protocol is one the local stand-ins do not speak).

use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An answer: status, the `x-amzn-ErrorType` (without its suffix), the body.
pub struct Reply {
    pub status: u16,
    pub error_type: String,
    pub body: Bytes,
}

pub struct SignedClient {
    region: String,
    credentials: aws_credential_types::provider::SharedCredentialsProvider,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl SignedClient {
    pub fn new(sdk: &aws_config::SdkConfig) -> anyhow::Result<SignedClient> {
        let region = sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let credentials = sdk
            .credentials_provider()
            .context("no AWS credentials provider")?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .context("TLS roots")?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(SignedClient {
            region,
            credentials,
            http: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Signs (`service`) and sends one request; transport problems are `Err`, any HTTP
    /// status is a `Reply`.
    pub async fn send(
        &self,
        service: &str,
        method: &str,
        url: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Reply> {
        let creds = self
            .credentials
            .provide_credentials()
            .await
            .context("credentials")?;
        let identity = creds.into();
        let signing = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .context("signing parameters")?
            .into();
        let uri: http::Uri = url.parse().with_context(|| url.to_string())?;
        let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let headers = [("host", host.as_str()), ("content-type", content_type)];
        let signable = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .context("the request to sign")?;
        let (instructions, _) = sign(signable, &signing).context("signing")?.into_parts();
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let mut req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .with_context(|| format!("{method} {url}"))?;
        instructions.apply_to_request_http1x(&mut req);
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| anyhow!("{url}: no answer within 30 s"))?
            .with_context(|| url.to_string())?;
        let status = resp.status().as_u16();
        let error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{url}: reading the answer"))?
            .to_bytes();
        Ok(Reply {
            status,
            error_type,
            body,
        })
    }
}
