//! `kvs-local`: run the local Kinesis Video Streams endpoint. A thin shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use kvs_local::sigv4::Credentials;
use kvs_local::{Config, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, Server};

/// A Kinesis Video Streams compatible server on loopback: control plane, PutMedia with acks,
/// ListFragments, GetMediaForFragmentList, GetClip, SigV4 checked on every request.
#[derive(Parser)]
#[command(name = "kvs-local", version)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the chosen URL is printed).
    #[arg(long, default_value = "127.0.0.1:4567")]
    listen: SocketAddr,
    /// Where streams and fragments are stored; they survive a restart.
    #[arg(long, default_value = "kvs-local-data")]
    data_dir: PathBuf,
    /// The access key requests must be signed with.
    #[arg(long, env = "KVS_LOCAL_ACCESS_KEY", default_value = DEFAULT_ACCESS_KEY)]
    access_key: String,
    /// The secret key requests must be signed with.
    #[arg(long, env = "KVS_LOCAL_SECRET_KEY", default_value = DEFAULT_SECRET_KEY, hide_default_value = true)]
    secret_key: String,
    /// A second listener serving only the admin API (`/_kvs-local/...`), which stays up
    /// while the main listener refuses connections under fault injection.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key); the URL becomes https://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The account id in stream ARNs.
    #[arg(long, default_value = "000000000000")]
    account_id: String,
    /// Longest fragment accepted before ERROR 4002 (the PutMedia reference: 10 s).
    #[arg(long, default_value_t = 10_000)]
    max_fragment_duration_ms: i64,
    /// PutMedia sessions without data for this long are closed (AWS: 30 s).
    #[arg(long, default_value_t = 30)]
    idle_timeout_secs: u64,
    /// PutMedia sessions older than this end with ERROR 4003 (AWS: about 45 min).
    #[arg(long, default_value_t = 2700)]
    max_connection_secs: u64,
    /// An S3 bucket to have from the start (repeatable); objects live under <data-dir>/s3/.
    #[arg(long = "bucket")]
    buckets: Vec<String>,
    /// Write MediaConvert job state changes here, as EventBridge events (one JSON file each).
    #[arg(long)]
    events_dir: Option<PathBuf>,
    /// A MediaConvert queue paused from the start (repeatable): its jobs stay SUBMITTED until
    /// UpdateQueue makes it ACTIVE.
    #[arg(long = "paused-queue")]
    paused_queues: Vec<String>,
    /// When PutMedia sends its 200: `head` (at once), `first-bytes` or `first-fragment`
    /// (strict: a client that waits for the answer before streaming hangs, as it may on AWS).
    #[arg(long, default_value = "head")]
    put_media_answer: kvs_local::AnswerAt,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kvs_local=info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut cfg = Config::new(args.listen, args.data_dir);
    cfg.admin_listen = args.admin_listen;
    cfg.credentials = vec![Credentials {
        access_key: args.access_key,
        secret_key: args.secret_key,
    }];
    cfg.account_id = args.account_id;
    cfg.tls = args.tls_cert.zip(args.tls_key);
    cfg.limits.max_fragment_duration_ms = args.max_fragment_duration_ms;
    cfg.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    cfg.max_connection = Duration::from_secs(args.max_connection_secs);
    cfg.buckets = args.buckets;
    cfg.events_dir = args.events_dir;
    cfg.paused_queues = args.paused_queues;
    cfg.put_media_answer = args.put_media_answer;
    let data_dir = cfg.data_dir.clone();
    let server = Server::start(cfg).await?;
    // One line on stdout, for scripts waiting for readiness.
    println!(
        "kvs-local listening on {} (data in {})",
        server.url(),
        data_dir.display()
    );
    if let Some(admin) = server.admin_addr() {
        println!("kvs-local admin API on http://{admin}/_kvs-local/");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    server.stop().await;
    Ok(())
}
