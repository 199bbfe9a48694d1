//! Where the agent's AWS credentials come from, behind one `CredentialSource` used both by
//! the AWS SDK client and by our PutMedia signing:
//! - `default`: the AWS SDK's default chain (environment, profiles, web identity, ECS, IMDS);
//! - `environment`: only the `AWS_*` variables;
//! - `static`: keys from the config;
//! - `iot`: the AWS IoT credential provider. The device's X.509 certificate (mutual TLS)
//!   buys temporary credentials for a role alias, with the thing name in
//!   `x-amzn-iot-thingname`, kept apart from any stream name.
//!
//! Credentials are cached until five minutes before they expire and dropped on a 403.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError as ProviderError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_smithy_types::date_time::{DateTime, Format};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use kvs_edge_config::agent::CredentialsConfig;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::Mutex;

use crate::net::{self, Target};
use crate::tls;

/// Refresh this long before the credentials expire.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Error)]
pub enum CredentialsError {
    #[error("credentials ({source_kind}): {reason}")]
    Unavailable {
        source_kind: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Credentials for every AWS call the agent makes.
pub struct CredentialSource {
    kind: &'static str,
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<Credentials>>,
    /// When the credentials in use expire (ms since the epoch; 0: never or not known yet).
    expires_ms: std::sync::atomic::AtomicI64,
}

impl CredentialSource {
    pub async fn from_config(
        cfg: &CredentialsConfig,
        region: Option<&str>,
    ) -> Result<CredentialSource, CredentialsError> {
        let (kind, provider) = match cfg {
            CredentialsConfig::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => (
                "static",
                SharedCredentialsProvider::new(Credentials::new(
                    access_key_id,
                    secret_access_key,
                    session_token.clone(),
                    None,
                    "agent.toml",
                )),
            ),
            CredentialsConfig::Environment => (
                "environment",
                SharedCredentialsProvider::new(EnvironmentVariableCredentialsProvider::new()),
            ),
            CredentialsConfig::Chain => {
                let mut chain = DefaultCredentialsChain::builder();
                if let Some(r) = region {
                    chain = chain.region(aws_config::Region::new(r.to_string()));
                }
                (
                    "default chain",
                    SharedCredentialsProvider::new(chain.build().await),
                )
            }
            CredentialsConfig::Iot {
                endpoint,
                role_alias,
                thing_name,
                cert_path,
                key_path,
                ca_path,
            } => {
                let url = if endpoint.starts_with("https://") {
                    endpoint.clone()
                } else {
                    format!("https://{endpoint}")
                };
                let target = Target::parse(&url).ok_or_else(|| CredentialsError::Unavailable {
                    source_kind: "iot",
                    reason: format!("endpoint {endpoint:?} is not a host name or https:// URL"),
                })?;
                let tls = tls::client_config(ca_path.as_deref(), Some((cert_path, key_path)))?;
                let iot = IotProvider {
                    target,
                    role_alias: role_alias.clone(),
                    thing_name: thing_name.clone(),
                    tls,
                };
                ("iot", SharedCredentialsProvider::new(iot))
            }
        };
        Ok(CredentialSource {
            kind,
            provider,
            cached: Mutex::new(None),
            expires_ms: Default::default(),
        })
    }

    /// The provider, for the AWS SDK client.
    pub fn provider(&self) -> SharedCredentialsProvider {
        self.provider.clone()
    }

    /// Current credentials: cached until `REFRESH_MARGIN` before expiry.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.expiry()
                .is_none_or(|e| e > SystemTime::now() + REFRESH_MARGIN)
        {
            return Ok(c.clone());
        }
        let fresh = self.provider.provide_credentials().await.map_err(|e| {
            CredentialsError::Unavailable {
                source_kind: self.kind,
                reason: error_chain(&e),
            }
        })?;
        let expires_ms = fresh
            .expiry()
            .and_then(|e| e.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        self.expires_ms
            .store(expires_ms, std::sync::atomic::Ordering::Relaxed);
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    /// Where the credentials come from (`static`, `default chain`, `iot`, …).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Seconds until the credentials in use expire (negative: expired); `None` when they do
    /// not expire or none were fetched yet. For health reporting.
    pub fn expires_in_secs(&self) -> Option<i64> {
        match self.expires_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            ms => Some((ms - crate::timeline::WallMs::now().0) / 1000),
        }
    }

    /// Forgets the cached credentials (after a 403): the next `get` asks the provider again.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

/// The AWS IoT credential provider client.
#[derive(Debug)]
pub struct IotProvider {
    target: Target,
    role_alias: String,
    thing_name: String,
    tls: Arc<rustls::ClientConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IotCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

#[derive(Deserialize)]
struct IotAnswer {
    credentials: IotCredentials,
}

impl IotProvider {
    /// One request to `GET /role-aliases/<alias>/credentials`.
    pub async fn fetch(&self) -> Result<Credentials, String> {
        let what = format!(
            "IoT credential provider https://{}/role-aliases/{}/credentials for thing {}",
            self.target.authority(),
            self.role_alias,
            self.thing_name
        );
        let mut sender = net::connect::<Empty<Bytes>>(
            &self.target,
            Some(self.tls.clone()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| format!("{what}: {e}"))?;
        let req = http::Request::get(format!("/role-aliases/{}/credentials", self.role_alias))
            .header("host", self.target.authority())
            .header("x-amzn-iot-thingname", &self.thing_name)
            .header("accept", "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{what}: {e}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .map_err(|_| format!("{what}: no answer within 10 s"))?
            .map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .map_err(|_| format!("{what}: the answer did not finish"))?
            .map_err(|e| format!("{what}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(format!("{what}: HTTP {status}: {text}"));
        }
        let answer: IotAnswer =
            serde_json::from_slice(&body).map_err(|e| format!("{what}: unreadable answer: {e}"))?;
        let c = answer.credentials;
        let expiry = DateTime::from_str(&c.expiration, Format::DateTime)
            .ok()
            .and_then(|d| SystemTime::try_from(d).ok())
            .ok_or_else(|| format!("{what}: unreadable expiration {:?}", c.expiration))?;
        Ok(Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            Some(expiry),
            "aws-iot",
        ))
    }
}

impl ProvideCredentials for IotProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.fetch().await.map_err(ProviderError::provider_error)
        })
    }
}
