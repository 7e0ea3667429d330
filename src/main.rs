//! `postern`: the SMTP gateway binary.
//!
//! Commands: `run` (the default: run the gateway in the foreground) and
//! `check-config` (validate a configuration and print every error with its
//! line and column). Without `--config`, `./config/postern.toml` is used if it
//! exists, else the embedded default configuration.

mod admin;
mod config;
mod gateway;
mod metrics;
mod scheduler;
mod sink;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "postern", version, about = "Postern SMTP gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground (the default).
    Run(ConfigArg),
    /// Validate the configuration and print any errors.
    CheckConfig(ConfigArg),
}

#[derive(Args, Default)]
struct ConfigArg {
    /// Configuration file (default: ./config/postern.toml, else built-in).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(ConfigArg::default())) {
        Command::CheckConfig(a) => match config::load(a.config.as_deref()) {
            Ok(loaded) => {
                println!("{}: configuration OK", loaded.source);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run(a) => {
            init_logging();
            let loaded = match config::load(a.config.as_deref()) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(gateway::run(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("fatal: {e:#}");
                    eprintln!("postern: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Human-readable logs on stderr; `POSTERN_LOG` = error|warn|info|debug|trace.
fn init_logging() {
    let level = std::env::var("POSTERN_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
