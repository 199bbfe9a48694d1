//! The agent against an HTTPS endpoint, as with real AWS: kvs-local serves TLS with a
//! certificate from a CA the test makes (openssl); the agent trusts it only through
//! `SSL_CERT_FILE`, for both the AWS SDK (control plane) and our PutMedia client.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_https_trusting_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    common::certificates(dir.path());
    let mut cfg = kvs_local::Config::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    cfg.tls = Some((dir.path().join("server.pem"), dir.path().join("server.key")));
    let server = kvs_local::Server::start(cfg).await.unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        common::agent_toml(&server.url(), "tls-cam", dir.path()),
    )
    .unwrap();
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
    common::certificates(dir.path());
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
        timecodes: Default::default(),
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
