//! Shared by the binary tests: run `kvs-edge-agent` as a child process against a config,
//! follow its log until N fragments are PERSISTED, stop it with SIGTERM, collect its log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
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

/// Blocking: call from `spawn_blocking` when a server runs on the test's runtime.
pub fn run_agent(
    config: &Path,
    env: &[(&str, &str)],
    persisted: usize,
) -> (ExitStatus, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs-edge-agent"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "kvs_edge_agent=debug")
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

pub fn agent_toml(endpoint: &str, stream: &str) -> String {
    format!(
        r#"
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
        "#
    )
}
