//! `kvs-edge-archiver`: a thin shell over the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kvs_edge_config::archiver::ArchiverConfig;

/// Turns CloudWatch alarms into archived clips of Kinesis Video Streams.
#[derive(Parser)]
#[command(name = "kvs-edge-archiver", version)]
struct Args {
    /// The archiver configuration (TOML); built-in defaults when absent.
    #[arg(long, short, env = "KVS_EDGE_ARCHIVER_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Handles one event delivery (a file, or - for standard input).
    HandleEvent {
        input: String,
        /// Touch nothing; print the decision as JSON (one line per record).
        #[arg(long)]
        dry_run: bool,
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
    let args = Args::parse();
    let cfg = match config(args.config.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvs-edge-archiver: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match args.command {
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
            if !dry_run {
                eprintln!(
                    "kvs-edge-archiver: only --dry-run is available yet (clipping arrives with the archiver issue)"
                );
                return ExitCode::FAILURE;
            }
            for d in decisions {
                println!("{}", d.json());
            }
            ExitCode::SUCCESS
        }
    }
}
