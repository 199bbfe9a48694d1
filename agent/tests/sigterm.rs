//! The `kvs-edge-agent` binary under a service manager's SIGTERM: it stops capture, sends
//! the fragment in progress, waits for the acks and exits 0, having lost nothing.
//! A bad configuration exits 2 with the field named.

mod common;

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_the_last_fragment_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = kvs_local::Server::start(kvs_local::Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
    ))
    .await
    .unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        common::agent_toml(&server.url(), "sigterm-cam", dir.path()),
    )
    .unwrap();
    let (status, seen) = tokio::task::spawn_blocking(move || common::run_agent(&config, &[], 2))
        .await
        .unwrap();
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status:?}\n{seen:#?}"
    );
    let made = common::assert_nothing_lost(&seen);
    assert!(made >= 3, "the fragment in progress was sent too");
    server.stop().await;
}

#[test]
fn a_bad_config_exits_2_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[aws]\nregion = \"us-east-1\"\n[[cameras]]\nname = \"c\"\nstream_name = \"bad name\"\nsource = { type = \"test\" }\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvs-edge-agent"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cameras[0].stream_name"), "{err}");
}
