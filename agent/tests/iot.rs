//! The AWS IoT credential provider, against a local HTTPS endpoint the test starts that
//! behaves like AWS IoT's: mutual TLS with the device certificate, `GET
//! /role-aliases/<alias>/credentials`, the thing name in `x-amzn-iot-thingname`. Then the
//! agent binary streams to kvs-local with nothing but those temporary credentials.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_smithy_types::date_time::{DateTime, Format};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kvs_edge_agent::credentials::CredentialSource;
use kvs_edge_config::agent::CredentialsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const ROLE_ALIAS: &str = "kvs-edge-role";
const THING: &str = "garage-pi";
const ISSUED_KEY: &str = "ASIAIOTTESTKEY";
const ISSUED_SECRET: &str = "iot-issued-secret";

/// A stand-in for the IoT credential provider endpoint.
struct IotEndpoint {
    url: String,
    requests: Arc<AtomicUsize>,
    things: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IotEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_iot(dir: &Path, lifetime: Duration) -> IotEndpoint {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let things = Arc::new(Mutex::new(Vec::new()));
    let (r, t) = (requests.clone(), things.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, r, t) = (acceptor.clone(), r.clone(), t.clone());
            tokio::spawn(async move {
                // No client certificate from the test CA: the handshake fails here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (r, t) = (r.clone(), t.clone());
                    async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        let thing = req
                            .headers()
                            .get("x-amzn-iot-thingname")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        t.lock().unwrap().push(thing.to_string());
                        let resp = if req.uri().path()
                            == format!("/role-aliases/{ROLE_ALIAS}/credentials")
                            && thing == THING
                        {
                            let expiration = DateTime::from(SystemTime::now() + lifetime)
                                .fmt(Format::DateTime)
                                .unwrap();
                            let body = serde_json::json!({"credentials": {
                                "accessKeyId": ISSUED_KEY, "secretAccessKey": ISSUED_SECRET,
                                "sessionToken": "iot-session-token", "expiration": expiration}});
                            hyper::Response::new(Full::new(Bytes::from(body.to_string())))
                        } else {
                            let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                                br#"{"message":"Access Denied"}"#,
                            )));
                            *r.status_mut() = hyper::StatusCode::FORBIDDEN;
                            r
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    IotEndpoint {
        url,
        requests,
        things,
        task,
    }
}

fn iot_config(dir: &Path, endpoint: &str, role_alias: &str) -> CredentialsConfig {
    CredentialsConfig::Iot {
        endpoint: endpoint.to_string(),
        role_alias: role_alias.to_string(),
        thing_name: THING.to_string(),
        cert_path: dir.join("device.pem"),
        key_path: dir.join("device.key"),
        ca_path: Some(dir.join("ca.pem")),
    }
}

#[tokio::test]
async fn fetches_caches_and_refreshes_temporary_credentials_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    common::certificates(dir.path());
    let iot = start_iot(dir.path(), Duration::from_secs(3600)).await;
    let source = CredentialSource::from_config(&iot_config(dir.path(), &iot.url, ROLE_ALIAS), None)
        .await
        .unwrap();

    let creds = source.get().await.unwrap();
    assert_eq!(
        (creds.access_key_id(), creds.secret_access_key()),
        (ISSUED_KEY, ISSUED_SECRET)
    );
    assert_eq!(creds.session_token(), Some("iot-session-token"));
    let left = creds
        .expiry()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "{left:?}"
    );
    assert_eq!(
        *iot.things.lock().unwrap(),
        [THING],
        "the thing name, not a stream name, is sent"
    );
    // Health reporting (stats, Prometheus) shows how long they last.
    let reported = source.expires_in_secs().unwrap();
    assert!((3500..=3600).contains(&reported), "{reported}");

    source.get().await.unwrap();
    assert_eq!(iot.requests.load(Ordering::SeqCst), 1, "cached while valid");
    source.invalidate().await;
    source.get().await.unwrap();
    assert_eq!(
        iot.requests.load(Ordering::SeqCst),
        2,
        "asked again after a 403"
    );
}

#[tokio::test]
async fn credentials_close_to_expiry_are_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    common::certificates(dir.path());
    // Issued for 2 minutes: inside the 5-minute refresh margin, so never served from cache.
    let iot = start_iot(dir.path(), Duration::from_secs(120)).await;
    let source = CredentialSource::from_config(&iot_config(dir.path(), &iot.url, ROLE_ALIAS), None)
        .await
        .unwrap();
    source.get().await.unwrap();
    source.get().await.unwrap();
    assert_eq!(iot.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refusals_name_the_endpoint_alias_and_thing() {
    let dir = tempfile::tempdir().unwrap();
    common::certificates(dir.path());
    let iot = start_iot(dir.path(), Duration::from_secs(3600)).await;
    let source =
        CredentialSource::from_config(&iot_config(dir.path(), &iot.url, "no-such-alias"), None)
            .await
            .unwrap();
    let err = source.get().await.unwrap_err().to_string();
    assert!(
        err.contains("HTTP 403") && err.contains("no-such-alias") && err.contains(THING),
        "{err}"
    );
    assert!(
        err.contains(iot.url.trim_start_matches("https://")),
        "{err}"
    );

    // A device certificate the endpoint does not trust (self-signed): refused at the handshake.
    let other = tempfile::tempdir().unwrap();
    common::certificates(other.path());
    let mut cfg = iot_config(dir.path(), &iot.url, ROLE_ALIAS);
    if let CredentialsConfig::Iot {
        cert_path,
        key_path,
        ..
    } = &mut cfg
    {
        *cert_path = other.path().join("device.pem");
        *key_path = other.path().join("device.key");
    }
    let source = CredentialSource::from_config(&cfg, None).await.unwrap();
    let err = source.get().await.unwrap_err().to_string();
    assert!(
        err.contains("IoT credential provider") && err.contains(THING),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_streams_with_iot_credentials_only() {
    let dir = tempfile::tempdir().unwrap();
    common::certificates(dir.path());
    let iot = start_iot(dir.path(), Duration::from_secs(3600)).await;
    // kvs-local accepts only the key pair the IoT endpoint hands out.
    let mut cfg = kvs_local::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    cfg.credentials = vec![kvs_local::sigv4::Credentials {
        access_key: ISSUED_KEY.into(),
        secret_key: ISSUED_SECRET.into(),
    }];
    let server = kvs_local::Server::start(cfg).await.unwrap();
    let toml = common::agent_toml(&server.url(), "iot-cam", dir.path()).replace(
        "[credentials]\n        kind = \"static\"\n        access_key_id = \"kvslocal\"\n        secret_access_key = \"kvslocal-secret\"",
        &format!(
            "[credentials]\nkind = \"iot\"\nendpoint = \"{}\"\nrole_alias = \"{ROLE_ALIAS}\"\nthing_name = \"{THING}\"\ncert_path = \"{}\"\nkey_path = \"{}\"\nca_path = \"{}\"",
            iot.url,
            dir.path().join("device.pem").display(),
            dir.path().join("device.key").display(),
            dir.path().join("ca.pem").display()
        ),
    );
    assert!(toml.contains("kind = \"iot\""), "{toml}");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, toml).unwrap();
    let (status, seen) = tokio::task::spawn_blocking(move || common::run_agent(&config, &[], 2))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{seen:#?}");
    common::assert_nothing_lost(&seen);
    assert!(iot.requests.load(Ordering::SeqCst) >= 1);
    server.stop().await;
}
