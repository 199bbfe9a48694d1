//! Both services under systemd's notification protocol, as `Type=notify` with `WatchdogSec=`
//! runs them: the test plays systemd's side (a datagram socket in `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`, `CREDENTIALS_DIRECTORY` as `LoadCredential=` makes it).
//! - The agent: READY=1 once the camera captures, WATCHDOG=1 and STATUS= while the pipeline
//!   moves, a stalled uploader stops the pings (and says so in STATUS=), SIGTERM sends
//!   STOPPING=1.
//! - The SQS consumer (against moto): READY=1 once the queue answered, STATUS= with what
//!   became of the messages, WATCHDOG=1 while it polls, STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvs_edge_tests::*;

/// Datagrams from the agent, as they arrive.
fn listen(socket: UnixDatagram) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The first datagram satisfying `pred` within `within`; the ones before it.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    within: Duration,
    pred: impl Fn(&str) -> bool,
) -> anyhow::Result<(String, Vec<String>)> {
    let deadline = Instant::now() + within;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if pred(&m) => return Ok((m, before)),
            Ok(m) => before.push(m),
            Err(_) => anyhow::bail!("not within {within:?}; got {before:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_status_and_a_stalled_uploader_stops_the_pings() -> anyhow::Result<()> {
    let local = Local::start().await?;
    let dir = local.dir.path();
    // The secret key arrives as a systemd credential, not in the file.
    let creds = dir.join("credentials");
    std::fs::create_dir(&creds)?;
    std::fs::write(creds.join("aws-secret-access-key"), DEFAULT_SECRET_KEY)?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            device_id = "sd-test"
            state_dir = "{state}"
            [aws]
            region = "us-east-1"
            endpoint_url = "{url}"
            [credentials]
            kind = "static"
            access_key_id = "{key}"
            secret_access_key = "credential:aws-secret-access-key"
            [upload]
            max_in_flight = 2
            ack_timeout_secs = 300
            [watchdog]
            stall_secs = 2
            [[cameras]]
            name = "front"
            stream_name = "sd-cam"
            fragment_duration_ms = 1000
            source = {{ type = "test", width = 320, height = 240, fps = 25 }}
            create_stream = {{ retention_period = 24 }}
            "#,
            state = dir.join("state").display(),
            url = local.url(),
            key = DEFAULT_ACCESS_KEY,
        ),
    )?;
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    let messages = listen(socket);
    let mut agent = std::process::Command::new(agent_binary()?)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;

    let result = (|| -> anyhow::Result<()> {
        let (ready, before) = wait_for(&messages, Duration::from_secs(60), |m| {
            m.lines().any(|l| l == "READY=1")
        })?;
        assert!(before.is_empty(), "READY=1 comes first: {before:?}");
        assert!(ready.contains("STATUS=started, 1 cameras"), "{ready}");
        // Pings with a health line, once fragments flow (the uploader has sent some).
        let (ping, _) = wait_for(&messages, Duration::from_secs(30), |m| {
            m.lines().any(|l| l == "WATCHDOG=1") && m.contains("front") && m.contains("fps")
        })?;
        assert!(!ping.contains("STALLED"), "{ping}");

        // The server stops acknowledging: the uploader fills its two in-flight slots and
        // then has pending fragments and nothing to do (its own ack timeout is 300 s).
        local.server.set_faults(serde_json::from_value(
            serde_json::json!({"ack_delay_ms": 600_000}),
        )?);
        let (stalled, _) = wait_for(&messages, Duration::from_secs(30), |m| {
            m.contains("STALLED: front uploader")
        })?;
        assert!(
            !stalled.contains("WATCHDOG=1"),
            "no ping with a stall: {stalled}"
        );
        // Status lines keep coming (every 200 ms), none with a ping: five periods' worth.
        let mut seen = 0;
        while seen < 5 {
            let m = messages.recv_timeout(Duration::from_secs(5))?;
            assert!(!m.contains("WATCHDOG=1"), "pinged while stalled: {m}");
            assert!(m.contains("STALLED: front uploader"), "{m}");
            seen += 1;
        }
        Ok(())
    })();

    // SIGTERM, as systemd stops it: STOPPING=1.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let stopping = wait_for(&messages, Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    let _ = agent.kill();
    agent.wait()?;
    result?;
    stopping?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_consumer_is_ready_once_the_queue_answers_and_reports_its_counts()
-> anyhow::Result<()> {
    let local = Local::start().await?;
    let moto = tokio::task::spawn_blocking(Moto::start).await??;
    let sqs = sqs_client(&moto.url);
    let queue = create_queue(&sqs, "alarms").await?;
    let dlq = create_queue(&sqs, "alarms-dlq").await?;
    let dir = local.dir.path();
    let config = dir.join("archiver.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [aws]
            region = "us-east-1"
            endpoint_url = "{kvs}"
            [sqs]
            endpoint_url = "{moto}"
            queue_url = "{queue}"
            dlq_url = "{dlq}"
            "#,
            kvs = local.url(),
            moto = moto.url,
        ),
    )?;
    let socket_path = dir.join("notify.sock");
    let messages = listen(UnixDatagram::bind(&socket_path)?);
    let mut consumer = archiver_configured(&config)?
        .arg("sqs")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = async {
        let (ready, _) = wait_for(&messages, Duration::from_secs(60), |m| {
            m.lines().any(|l| l == "READY=1")
        })?;
        assert!(ready.contains("STATUS=consuming"), "{ready}");
        wait_for(&messages, Duration::from_secs(10), |m| {
            m.contains("WATCHDOG=1") && m.contains("STATUS=0 done")
        })?;
        // A malformed message goes to the dead-letter queue; the status counts it.
        sqs.send_message()
            .queue_url(&queue)
            .message_body("{not json")
            .send()
            .await?;
        wait_for(&messages, Duration::from_secs(60), |m| {
            m.contains("1 dead-lettered") && m.contains("WATCHDOG=1")
        })?;
        anyhow::Ok(())
    }
    .await;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(consumer.id() as i32, libc::SIGTERM) };
    let stopping = wait_for(&messages, Duration::from_secs(30), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    let status = consumer.wait()?;
    result?;
    stopping?;
    assert!(status.success(), "a clean stop: {status}");
    Ok(())
}
