//! Shared by the binary tests: run `kvs-edge-agent` as a child process against a config,
//! follow its log until N fragments are PERSISTED, stop it with SIGTERM, collect its log.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BOUND: Duration = Duration::from_secs(60);

pub fn number(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Starts the agent binary with debug logs and only the environment the test gives (no
/// inherited AWS settings, and never instance metadata: 169.254.169.254 is not loopback).
/// Its stderr lines arrive on the receiver.
pub fn spawn_agent(config: &Path, env: &[(&str, &str)]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs-edge-agent"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "kvs_edge_agent=debug")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/kvs-edge-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kvs-edge-test")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Blocking: call from `spawn_blocking` when a server runs on the test's runtime.
pub fn run_agent(
    config: &Path,
    env: &[(&str, &str)],
    persisted: usize,
) -> (ExitStatus, Vec<String>) {
    let (mut child, rx) = spawn_agent(config, env);
    let mut seen = Vec::new();
    let mut count = 0;
    while count < persisted {
        match rx.recv_timeout(BOUND) {
            Ok(line) => {
                count += usize::from(line.contains("PERSISTED"));
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("only {count} PERSISTED within {BOUND:?}: {seen:#?}");
            }
        }
    }
    // SIGTERM, as systemd stops a unit.
    assert!(
        Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .expect("kill")
            .success()
    );
    let status = child.wait().expect("wait");
    seen.extend(rx.try_iter());
    (status, seen)
}

/// Checks the agent's own summary: every fragment it made was PERSISTED.
pub fn assert_nothing_lost(seen: &[String]) -> u64 {
    let made = seen
        .iter()
        .find(|l| l.contains("capture stopped"))
        .and_then(|l| number(l, "fragments"));
    let done = seen
        .iter()
        .find(|l| l.contains("uploader finished"))
        .expect("summary line");
    assert_eq!(
        number(done, "persisted"),
        made,
        "every fragment made was PERSISTED: {seen:#?}"
    );
    made.expect("count")
}

pub fn agent_toml(endpoint: &str, stream: &str, state: &Path) -> String {
    format!(
        r#"
        state_dir = "{}"
        [aws]
        region = "us-east-1"
        endpoint_url = "{endpoint}"
        [credentials]
        kind = "static"
        access_key_id = "kvslocal"
        secret_access_key = "kvslocal-secret"
        [[cameras]]
        name = "cam"
        stream_name = "{stream}"
        fragment_duration_ms = 1000
        source = {{ type = "test", width = 160, height = 120, fps = 25 }}
        create_stream = {{ retention_period_hours = 1 }}
        "#,
        state.join("agent-state").display()
    )
}

#[path = "../../../tests/src/certs.rs"]
mod certs;
#[allow(unused_imports)] // only the TLS tests use it
pub use certs::certificates;
