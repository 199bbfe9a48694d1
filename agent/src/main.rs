//! `kvs-edge-agent --config agent.toml`: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kvs_edge_agent::{runner, systemd};
use kvs_edge_config::AgentConfig;
use tokio::sync::watch;

/// Streams cameras into Amazon Kinesis Video Streams (or kvs-local) without losing video.
#[derive(Parser)]
#[command(name = "kvs-edge-agent", version)]
struct Args {
    /// The agent configuration (TOML).
    #[arg(long, short, env = "KVS_EDGE_AGENT_CONFIG")]
    config: PathBuf,
    /// After SIGTERM, how long to keep sending what was captured before exiting.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Validate the configuration, print what would run (secrets redacted) and exit.
    #[arg(long)]
    check: bool,
    /// Write CAMERA's recording of --start..--end from the journal to --output (Matroska,
    /// plays in any player) and exit; works while the agent runs.
    #[arg(long, value_name = "CAMERA", requires_all = ["start", "end", "output"])]
    export: Option<String>,
    /// The window's start: RFC 3339 (2026-12-03T10:00:00Z) or milliseconds since the epoch.
    #[arg(long, value_parser = parse_time, requires = "export")]
    start: Option<i64>,
    /// The window's end, like --start.
    #[arg(long, value_parser = parse_time, requires = "export")]
    end: Option<i64>,
    /// Where the export goes (`<name>-2.mkv` … follow where the camera's tracks change).
    #[arg(long, requires = "export")]
    output: Option<PathBuf>,
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{text:?}: not RFC 3339 (2026-12-03T10:00:00Z) nor epoch ms: {e}"))
}

fn load(path: &PathBuf) -> Result<AgentConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cfg =
        AgentConfig::from_toml(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    // StateDirectory= with several directories gives them colon-separated: the first.
    let systemd = std::env::var("STATE_DIRECTORY")
        .ok()
        .and_then(|v| v.split(':').next().map(PathBuf::from));
    if let Some(file) = cfg.use_state_directory(systemd) {
        tracing::info!(
            "state in {} (systemd's STATE_DIRECTORY), not {} (the configuration's state_dir)",
            cfg.state_dir.display(),
            file.display()
        );
    }
    Ok(cfg)
}

/// Caps glibc's per-thread malloc arenas: with a GStreamer pipeline per camera the agent
/// has many threads, and each arena holds on to freed fragment buffers. (Together with
/// copying fragments less, this took the 16-camera benchmark from 141 to 73 MiB RSS.)
fn limit_malloc_arenas() {
    // SAFETY: mallopt only adjusts allocator tuning; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// `--man-page`: the manual page (roff), made from the command line's own definition, for
/// the Debian package (`scripts/package-deb`).
fn man_page() -> ExitCode {
    use clap::CommandFactory;
    match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvs-edge-agent: writing the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--man-page") {
        return man_page();
    }
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(agent_main())
}

async fn agent_main() -> ExitCode {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    // Take over SIGTERM first: a stop during start-up is an orderly stop too.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kvs-edge-agent: installing the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvs-edge-agent: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(camera), Some(start), Some(end), Some(output)) =
        (&args.export, args.start, args.end, &args.output)
    {
        return match kvs_edge_agent::export::export(&cfg, camera, start, end, output) {
            Ok(files) => {
                for (path, fragments) in files {
                    println!("{}\t{fragments} fragments", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kvs-edge-agent: export: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check {
        // What would run: the file, with the remote configuration accepted last over it.
        let (cfg, version, note) = kvs_edge_agent::persisted::effective(cfg);
        if let Some(note) = note {
            println!("# {note}");
        }
        match cfg.effective_toml() {
            Ok(toml) => println!("# configuration version {version} (secrets redacted)\n{toml}"),
            Err(e) => {
                eprintln!("kvs-edge-agent: printing the configuration: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let stall_after = cfg.stall_after();
    let (stop, shutdown) = watch::channel(false);
    let running = match runner::start(cfg, shutdown.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvs-edge-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.send_replace(true);
    });
    // Under systemd: READY=1 once the first camera captures, then STATUS= (and WATCHDOG=1
    // while every stage makes progress).
    if systemd::under_systemd() {
        let registry = running.registry.clone();
        let watchdog = systemd::watchdog_interval();
        let period = watchdog.map_or(Duration::from_secs(10), |w| w / 2);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            systemd::ready_when_capturing(&registry).await;
            systemd::supervise(registry, watchdog.is_some(), period, stall_after, shutdown).await;
        });
    }
    running
        .wait(shutdown, Duration::from_secs(args.shutdown_grace_secs))
        .await;
    ExitCode::SUCCESS
}
