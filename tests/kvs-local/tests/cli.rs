//! The `kvs-local` binary: starts on the given address, announces its URL on stdout, serves
//! the admin API, refuses unsigned API calls, and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

struct Running {
    child: Child,
    url: String,
}

/// Starts the binary on a free port and waits for its readiness line.
fn start(data_dir: &std::path::Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvs-local"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kvs-local starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("readiness line within the deadline");
    let url = line
        .split_whitespace()
        .nth(3)
        .expect("kvs-local listening on URL …")
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Running { child, url }
}

fn request(url: &str, method: &str, path: &str) -> String {
    request_with(url, method, path, "")
}

fn request_with(url: &str, method: &str, path: &str, body: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let len = body.len();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn stop(mut r: Running) {
    let status = Command::new("kill")
        .arg(r.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(r.child.wait());
    });
    let exit = rx
        .recv_timeout(WAIT)
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
}

#[test]
fn serves_health_and_faults_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path());
    let health = request(&r.url, "GET", "/_kvs-local/health");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("\"status\":\"ok\""),
        "{health}"
    );
    let faults = request(&r.url, "GET", "/_kvs-local/faults");
    assert!(faults.contains("\"refuse_connections\":false"), "{faults}");
    let set = request_with(
        &r.url,
        "PUT",
        "/_kvs-local/faults",
        r#"{"ack_delay_ms": 250}"#,
    );
    assert!(
        set.starts_with("HTTP/1.1 200") && set.contains("\"ack_delay_ms\":250"),
        "{set}"
    );
    assert!(request(&r.url, "GET", "/_kvs-local/faults").contains("\"ack_delay_ms\":250"));
    let typo = request_with(&r.url, "PUT", "/_kvs-local/faults", r#"{"ack_delay": 250}"#);
    assert!(
        typo.starts_with("HTTP/1.1 400") && typo.contains("unknown field `ack_delay`"),
        "{typo}"
    );
    let cleared = request(&r.url, "DELETE", "/_kvs-local/faults");
    assert!(cleared.contains("\"ack_delay_ms\":0"), "{cleared}");
    // Unsigned requests to the API are refused like AWS refuses them.
    let unsigned = request(&r.url, "POST", "/listStreams");
    assert!(unsigned.starts_with("HTTP/1.1 403"), "{unsigned}");
    assert!(
        unsigned
            .to_ascii_lowercase()
            .contains("x-amzn-errortype: missingauthenticationtokenexception"),
        "{unsigned}"
    );
    stop(r);
    assert!(
        dir.path().join("streams").is_dir(),
        "the data dir was created"
    );
}
