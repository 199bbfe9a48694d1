//! `kvs-edge-archiver`: a thin shell over the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kvs_edge_archiver::clip::Archiver;
use kvs_edge_archiver::decide::Decision;
use kvs_edge_archiver::sqs::Consumer;
use kvs_edge_archiver::store::error_chain;
use kvs_edge_config::archiver::ArchiverConfig;

/// Turns CloudWatch alarms into archived clips of Kinesis Video Streams.
#[derive(Parser)]
#[command(name = "kvs-edge-archiver", version)]
struct Args {
    /// The archiver configuration (TOML); built-in defaults when absent.
    #[arg(long, short, env = "KVS_EDGE_ARCHIVER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Without one: Lambda when `AWS_LAMBDA_RUNTIME_API` is set (the binary is the
    /// function's `bootstrap`).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serves AWS Lambda invocations (the Runtime API at `AWS_LAMBDA_RUNTIME_API`).
    Lambda,
    /// Handles one event delivery (a file, or - for standard input): clips into S3, one JSON
    /// line per stream on standard output.
    HandleEvent {
        input: String,
        /// Touch nothing; print the decision as JSON (one line per record).
        #[arg(long)]
        dry_run: bool,
    },
    /// Consumes the SQS queue an EventBridge rule feeds, until SIGTERM; one JSON line per
    /// message handled.
    Sqs {
        /// Overrides `[sqs] queue_url`.
        #[arg(long)]
        queue_url: Option<String>,
    },
    /// Replays stored clips through the MediaConvert hand-off (a new job each, from
    /// `--template` or the configured one), with a completion report in `--report`. The
    /// input is one of --prefix, --inventory or --list; by default the configured bucket is
    /// listed. Rerunning with the same report resumes: what succeeded is skipped.
    Replay(ReplayArgs),
    /// Stores the clip of an explicit window (RFC 3339 times).
    Clip {
        #[arg(long)]
        stream: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
        /// Names the clip (the `{alarm}` of the key template).
        #[arg(long, default_value = "manual")]
        name: String,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// List clips under this prefix (default: the key template's fixed start).
    #[arg(long, conflicts_with_all = ["inventory", "list"])]
    prefix: Option<String>,
    /// The bucket to list (default: the configured bucket).
    #[arg(long, conflicts_with_all = ["inventory", "list"])]
    bucket: Option<String>,
    /// An S3 Inventory report's manifest.json (s3://bucket/key or a file); CSV inventories.
    #[arg(long, conflicts_with = "list")]
    inventory: Option<String>,
    /// A CSV of bucket,key[,version] rows, keys URL-encoded (s3://…, a file, or -).
    #[arg(long)]
    list: Option<String>,
    /// Only clips of this stream (repeatable).
    #[arg(long = "stream")]
    streams: Vec<String>,
    /// Only clips whose window starts at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only clips whose window starts before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Only keys matching this glob (`*` matches anything, `/` included).
    #[arg(long = "match")]
    pattern: Option<String>,
    /// Skip clips whose transcoding completed (their <clip>.transcode.json says COMPLETE).
    #[arg(long)]
    untranscoded: bool,
    /// The MediaConvert job template (default: [transcode] template, else the built-in one).
    #[arg(long)]
    template: Option<PathBuf>,
    /// Tasks at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Tasks started per second, at most (MediaConvert's CreateJob quota is per account);
    /// 0: no cap.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Attempts per MediaConvert call when throttled or failing with 5xx.
    #[arg(long, default_value_t = 8)]
    attempts: u32,
    /// The report directory: report.csv (one row per task) and summary.json.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Names the run (default: new, or the report's when resuming).
    #[arg(long)]
    run_id: Option<String>,
    /// Touch nothing; one JSON line per task that would run.
    #[arg(long)]
    dry_run: bool,
    /// Seconds between progress lines when standard error is not a terminal.
    #[arg(long, default_value_t = 10)]
    progress_every: u64,
}

/// The configuration: the file, else `KVS_EDGE_ARCHIVER_CONFIG_TOML` (the TOML itself, as a
/// CloudFormation template sets it on the Lambda function), else the defaults.
fn config(path: Option<&PathBuf>) -> Result<ArchiverConfig, String> {
    let Some(path) = path else {
        return match std::env::var("KVS_EDGE_ARCHIVER_CONFIG_TOML") {
            Ok(text) if !text.trim().is_empty() => {
                ArchiverConfig::from_toml("$KVS_EDGE_ARCHIVER_CONFIG_TOML", &text)
                    .map_err(|e| e.to_string())
            }
            _ => Ok(ArchiverConfig::default()),
        };
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    ArchiverConfig::from_toml(&path.display().to_string(), &text).map_err(|e| e.to_string())
}

fn read_input(input: &str) -> Result<Vec<u8>, String> {
    if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("standard input: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(input).map_err(|e| format!("{input}: {e}"))
    }
}

/// `--man-page`: the manual page (roff), made from the command line's own definition, for
/// the Debian package (`scripts/package-deb`).
fn man_page() -> ExitCode {
    use clap::CommandFactory;
    match clap_mangen::Man::new(Args::command()).render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvs-edge-archiver: writing the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--man-page") {
        return man_page();
    }
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| "info".into());
    // Colour only on a terminal: journald, Lambda's log stream and files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let cfg = match config(args.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvs-edge-archiver: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let command = match args.command {
        Some(c) => c,
        None if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => Command::Lambda,
        None => {
            eprintln!("kvs-edge-archiver: a command is needed (see --help)");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Lambda => with_archiver(cfg, |archiver| async move {
            match kvs_edge_archiver::lambda::run(archiver).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kvs-edge-archiver: Lambda runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::HandleEvent { input, dry_run } => {
            let bytes = match read_input(&input) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("kvs-edge-archiver: {e}");
                    return ExitCode::from(2);
                }
            };
            let decisions = match kvs_edge_archiver::decisions(&cfg, &bytes) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("kvs-edge-archiver: {input}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if dry_run {
                for d in decisions {
                    println!("{}", d.json());
                }
                return ExitCode::SUCCESS;
            }
            run(cfg, decisions)
        }
        Command::Sqs { queue_url } => {
            let Some(queue_url) = queue_url.or_else(|| cfg.sqs.queue_url.clone()) else {
                eprintln!("kvs-edge-archiver: no queue: set [sqs] queue_url or --queue-url");
                return ExitCode::from(2);
            };
            consume(cfg, queue_url)
        }
        Command::Replay(r) => replay(cfg, r),
        Command::Clip {
            stream,
            start,
            end,
            name,
        } => {
            let time = |what: &str, s: &str| {
                kvs_edge_archiver::event::parse_time(s)
                    .ok_or_else(|| format!("--{what} {s:?} is not an RFC 3339 time"))
            };
            let (start, end) = match (time("start", &start), time("end", &end)) {
                (Ok(s), Ok(e)) if s < e => (s, e),
                (Ok(_), Ok(_)) => {
                    eprintln!("kvs-edge-archiver: --start must be before --end");
                    return ExitCode::from(2);
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("kvs-edge-archiver: {e}");
                    return ExitCode::from(2);
                }
            };
            run(cfg, vec![Decision::manual(&name, &stream, start, end)])
        }
    }
}

/// Builds the runtime and the archiver's clients (exit status 2 when they cannot be made),
/// then runs `work` with them.
fn with_archiver<F, Fut>(cfg: ArchiverConfig, work: F) -> ExitCode
where
    F: FnOnce(Archiver) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        match Archiver::new(cfg).await {
            Ok(archiver) => work(archiver).await,
            Err(e) => {
                eprintln!("kvs-edge-archiver: {}", error_chain(e.as_ref()));
                ExitCode::from(2)
            }
        }
    })
}

/// Turns true on SIGTERM or SIGINT.
fn stop_on_signals() -> Result<tokio::sync::watch::Receiver<bool>, String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.send_replace(true);
    });
    Ok(shutdown)
}

fn replay(mut cfg: ArchiverConfig, r: ReplayArgs) -> ExitCode {
    use kvs_edge_archiver::replay::{self, Input, Options};
    use kvs_edge_archiver::selection::Filter;
    let time = |what: &str, s: &Option<String>| match s {
        None => Ok(None),
        Some(s) => kvs_edge_archiver::event::parse_time(s)
            .map(Some)
            .ok_or_else(|| format!("--{what} {s:?} is not an RFC 3339 time")),
    };
    let (since, until) = match (time("since", &r.since), time("until", &r.until)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("kvs-edge-archiver: {e}");
            return ExitCode::from(2);
        }
    };
    let template = match &r.template {
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|text| {
                    kvs_edge_archiver::transcode::Template::parse(
                        &path.display().to_string(),
                        &text,
                    )
                    .map_err(|e| e.to_string())
                });
            match t {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("kvs-edge-archiver: --template {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let template_name = r
        .template
        .as_ref()
        .or(cfg.transcode.template.as_ref())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in".into());
    // Replay is the MediaConvert hand-off, whatever the live clips do.
    cfg.transcode.mode = kvs_edge_config::archiver::TranscodeMode::Mediaconvert;
    let filter = Filter {
        key_template: cfg.key_template.clone(),
        streams: r.streams,
        since,
        until,
        pattern: r.pattern,
        outputs: Some(cfg.transcode.output_prefix.clone()),
    };
    let input = match (r.inventory, r.list) {
        (Some(m), _) => Input::Inventory(m),
        (_, Some(l)) => Input::List(l),
        (None, None) => Input::Prefix {
            bucket: r.bucket.unwrap_or_else(|| cfg.bucket.clone()),
            prefix: r.prefix,
        },
    };
    let opts = Options {
        concurrency: r.concurrency,
        rate: r.rate,
        only_untranscoded: r.untranscoded,
        dry_run: r.dry_run,
        run: r.run_id,
        report: r.report,
        progress_every: std::time::Duration::from_secs(r.progress_every.max(1)),
        template: template_name,
    };
    with_archiver(cfg, |mut archiver| async move {
        let stop = match stop_on_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kvs-edge-archiver: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(t) = template {
            archiver.use_template(t);
        }
        archiver.set_retries(r.attempts, std::time::Duration::from_millis(250));
        // What every task needs is checked once, before the first: a missing role or an
        // unreachable endpoint is one clear error, not a report full of failed tasks.
        if !opts.dry_run {
            match archiver.check_transcoding().await {
                Ok(endpoint) => tracing::info!(endpoint, "MediaConvert answers"),
                Err(e) => {
                    eprintln!("kvs-edge-archiver: replay: {}", error_chain(e.as_ref()));
                    return ExitCode::from(2);
                }
            }
        }
        match replay::run(std::sync::Arc::new(archiver), input, filter, opts, stop).await {
            Ok(outcome) => {
                if !outcome.summary["report"].is_null() {
                    println!("{}", outcome.summary);
                }
                if outcome.interrupted {
                    ExitCode::from(130)
                } else if outcome.failed() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("kvs-edge-archiver: replay: {}", error_chain(e.as_ref()));
                ExitCode::from(2)
            }
        }
    })
}

/// Under systemd (`Type=notify`): READY=1 once the queue answered a first ReceiveMessage,
/// then STATUS= with the counts, and WATCHDOG=1 while the consumer polls (a long poll
/// lasts 20 s) or has messages in hand; STOPPING=1 on shutdown.
async fn notify_systemd(
    stats: std::sync::Arc<kvs_edge_archiver::sqs::ConsumerStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use sd_notify::NotifyState;
    use std::sync::atomic::Ordering;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let polls = || stats.polls.load(Ordering::Relaxed);
    while polls() == 0 {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("consuming")]);
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(std::time::Duration::from_secs(10), |w| w / 2);
    // Two long polls and a retry pause without a poll, and nothing in hand: stuck.
    let stuck_after = std::time::Duration::from_secs(60);
    let (mut seen, mut moved) = (polls(), tokio::time::Instant::now());
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => {
                let line = format!("stopping: {}", stats.line());
                let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(&line)]);
                return;
            }
        }
        let now = polls();
        if now != seen || stats.in_hand.load(Ordering::Relaxed) > 0 {
            (seen, moved) = (now, tokio::time::Instant::now());
        }
        let line = stats.line();
        let _ = if moved.elapsed() >= stuck_after {
            let line = format!(
                "STALLED: no poll for {} s; {line}",
                moved.elapsed().as_secs()
            );
            sd_notify::notify(&[NotifyState::Status(&line)])
        } else if watchdog.is_some() {
            sd_notify::notify(&[NotifyState::Watchdog, NotifyState::Status(&line)])
        } else {
            sd_notify::notify(&[NotifyState::Status(&line)])
        };
    }
}

fn consume(cfg: ArchiverConfig, queue_url: String) -> ExitCode {
    with_archiver(cfg, |archiver| async move {
        let shutdown = match stop_on_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kvs-edge-archiver: {e}");
                return ExitCode::FAILURE;
            }
        };
        let consumer = std::sync::Arc::new(Consumer {
            sqs: archiver.sqs_client(),
            settings: archiver.cfg.sqs.clone(),
            archiver: std::sync::Arc::new(archiver),
            queue_url,
            stats: Default::default(),
        });
        let notify = tokio::spawn(notify_systemd(consumer.stats.clone(), shutdown.clone()));
        consumer.run(shutdown).await;
        // STOPPING=1 goes out before the process ends (the runtime would drop the task).
        let _ = notify.await;
        ExitCode::SUCCESS
    })
}

/// Carries out the decisions; exit status 1 when a clip or a job submission failed.
fn run(cfg: ArchiverConfig, decisions: Vec<Decision>) -> ExitCode {
    with_archiver(cfg, |archiver| async move {
        let mut failed = false;
        for d in decisions {
            let (outcomes, f) = archiver.carry_out(d).await;
            failed |= f;
            for o in outcomes {
                println!("{o}");
            }
        }
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}
