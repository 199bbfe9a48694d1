//! The `kvs-edge-agent` binary under a service manager's SIGTERM: it stops capture, sends
//! the fragment in progress, waits for the acks and exits 0, having lost nothing.
//! A bad configuration exits 2 with the field named.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(60);

fn number(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

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
        format!(
            r#"
            [aws]
            region = "us-east-1"
            endpoint_url = "{}"
            [credentials]
            kind = "static"
            access_key_id = "kvslocal"
            secret_access_key = "kvslocal-secret"
            [[cameras]]
            name = "cam"
            stream_name = "sigterm-cam"
            fragment_duration_ms = 1000
            source = {{ type = "test", width = 160, height = 120, fps = 25 }}
            create_stream = {{ retention_period_hours = 1 }}
            "#,
            server.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs-edge-agent"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "kvs_edge_agent=debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let lines = tokio::task::spawn_blocking(move || {
        let mut persisted = 0;
        let mut seen = Vec::new();
        while persisted < 2 {
            let line = rx
                .recv_timeout(BOUND)
                .unwrap_or_else(|_| panic!("no second PERSISTED: {seen:#?}"));
            persisted += usize::from(line.contains("PERSISTED"));
            seen.push(line);
        }
        // SIGTERM, as systemd stops a unit.
        assert!(
            Command::new("kill")
                .arg(child.id().to_string())
                .status()
                .unwrap()
                .success()
        );
        let status = child.wait().unwrap();
        seen.extend(rx.try_iter());
        (status, seen)
    })
    .await
    .unwrap();
    let (status, seen) = lines;
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status:?}\n{seen:#?}"
    );
    let made = seen
        .iter()
        .find(|l| l.contains("capture stopped"))
        .and_then(|l| number(l, "fragments"));
    let done = seen
        .iter()
        .find(|l| l.contains("uploader finished"))
        .expect("summary line");
    let persisted = number(done, "persisted");
    assert_eq!(
        persisted, made,
        "every fragment made was PERSISTED: {seen:#?}"
    );
    assert!(made.unwrap() >= 3, "the fragment in progress was sent too");
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
