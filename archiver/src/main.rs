//! `kvs-edge-archiver`: a thin shell over the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kvs_edge_archiver::clip::Archiver;
use kvs_edge_archiver::decide::Decision;
use kvs_edge_archiver::sqs::Consumer;
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

fn config(path: Option<&PathBuf>) -> Result<ArchiverConfig, String> {
    let Some(path) = path else {
        return Ok(ArchiverConfig::default());
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

fn main() -> ExitCode {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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
        Command::Lambda => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async {
                let archiver = match Archiver::new(cfg).await {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("kvs-edge-archiver: {e}");
                        return ExitCode::from(2);
                    }
                };
                match kvs_edge_archiver::lambda::run(archiver).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("kvs-edge-archiver: Lambda runtime: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
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

fn consume(cfg: ArchiverConfig, queue_url: String) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("kvs-edge-archiver: installing the SIGTERM handler: {e}");
                    return ExitCode::FAILURE;
                }
            };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stop.send_replace(true);
        });
        let archiver = match Archiver::new(cfg).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("kvs-edge-archiver: {e}");
                return ExitCode::from(2);
            }
        };
        let consumer = std::sync::Arc::new(Consumer {
            sqs: archiver.sqs_client(),
            settings: archiver.cfg.sqs.clone(),
            archiver: std::sync::Arc::new(archiver),
            queue_url,
        });
        consumer.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

/// Carries out the decisions; exit status 1 when a clip or a job submission failed.
fn run(cfg: ArchiverConfig, decisions: Vec<Decision>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let archiver = match Archiver::new(cfg).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("kvs-edge-archiver: {e}");
                return ExitCode::from(2);
            }
        };
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
