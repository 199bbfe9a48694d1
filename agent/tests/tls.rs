//! The agent against an HTTPS endpoint, as with real AWS: kvs-local serves TLS with a
//! certificate from a CA the test makes (openssl); the agent trusts it only through
//! `SSL_CERT_FILE`, for both the AWS SDK (control plane) and our PutMedia client.

mod common;

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 (X.509 v3 with extensions: rustls needs them).
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=kvs-edge test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_https_trusting_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let mut cfg = kvs_local::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    cfg.tls = Some((dir.path().join("server.pem"), dir.path().join("server.key")));
    let server = kvs_local::Server::start(cfg).await.unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, common::agent_toml(&server.url(), "tls-cam")).unwrap();
    let ca = dir.path().join("ca.pem").display().to_string();
    let (status, seen) = tokio::task::spawn_blocking(move || {
        common::run_agent(&config, &[("SSL_CERT_FILE", &ca)], 2)
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}\n{seen:#?}");
    common::assert_nothing_lost(&seen);
    assert!(
        seen.iter().any(|l| l.contains("url=\"https://127.0.0.1")),
        "the data endpoint was https"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let mut cfg = kvs_local::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    cfg.tls = Some((dir.path().join("server.pem"), dir.path().join("server.key")));
    let server = kvs_local::Server::start(cfg).await.unwrap();
    // Trust roots that do not include the test CA: the PutMedia client must refuse.
    let tls = kvs_edge_agent::tls::client_config(None, None).ok();
    let params = kvs_edge_agent::putmedia::SessionParams {
        endpoint: server.url(),
        stream_name: "x".into(),
        region: "us-east-1".into(),
        credentials: aws_credential_types::Credentials::new(
            "kvslocal",
            "kvslocal-secret",
            None,
            None,
            "t",
        ),
        producer_start: std::time::SystemTime::now(),
        user_agent: "t".into(),
        tls,
    };
    let err = kvs_edge_agent::putmedia::Session::open(&params, common::BOUND)
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("TLS") && text.contains(&server.url()),
        "{text}"
    );
    server.stop().await;
}
