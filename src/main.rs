//! `postern`: the SMTP gateway binary.
//!
//! Commands: `run` (the default): on Unix a small supervisor that holds the
//! listening sockets and runs the gateway as a child process, restarting it
//! if it dies (`--no-supervisor` runs the gateway in this process);
//! `check-config` validates a configuration and prints every error with its
//! line and column; `queue` lists and acts on queued and quarantined
//! messages through the running daemon; `trace` prints a message's life
//! from the tracking log. `gateway` and `worker` are the
//! internal child processes. Without `--config`, `./config/postern.toml` is
//! used if it exists, else the embedded default configuration. Files the
//! process creates are private (umask 077, see `private_files`).

mod cli;
mod config;
mod content;
mod gateway;
mod ops;
mod run;

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
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Run the gateway in this process, without the restarting supervisor.
        #[arg(long)]
        no_supervisor: bool,
    },
    /// Validate the configuration and print any errors.
    CheckConfig(ConfigArg),
    /// Read a password on standard input; print its Argon2id hash for the
    /// users file (`user:HASH`).
    HashPassword,
    /// Inspect and act on the queue of the running daemon.
    Queue {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: cli::queue::QueueCmd,
    },
    /// Exit 0 when the running daemon answers /healthz (or /readyz with
    /// --ready): for container health checks and scripts.
    Health {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        ready: bool,
    },
    /// Stop taking new mail (new connections get 421 4.3.2, /readyz 503)
    /// while delivery goes on; with --wait, until nothing waits. Exit 3
    /// when --timeout passes first.
    Drain {
        #[command(flatten)]
        config: ConfigArg,
        /// Wait until no message waits or is being delivered.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m")]
        timeout: String,
        /// Then hand every waiting message to this peer gateway
        /// (HOST[:PORT]), as `postern queue transfer --to` does: what a
        /// Kubernetes preStop hook runs.
        #[arg(long)]
        transfer_to: Option<String>,
        /// Before the transfer, wait this long (for load balancers and
        /// Service endpoints to drop this node, so the peer name no longer
        /// leads back here).
        #[arg(long, default_value = "0s")]
        settle: String,
        /// One JSON object per progress line.
        #[arg(long)]
        json: bool,
    },
    /// Take new mail again after `drain`.
    Undrain {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Show the outbound TLS policy of a destination (static level,
    /// MTA-STS, DANE) and why.
    TlsPolicy {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        cmd: cli::tls_policy::TlsPolicyCmd,
    },
    /// Print a message's life from the tracking log, by queue ID or Message-ID.
    Trace {
        #[command(flatten)]
        config: ConfigArg,
        /// Queue ID or Message-ID (angle brackets optional).
        key: String,
        /// Print the JSON lines as they are.
        #[arg(long)]
        json: bool,
    },
    /// Windows: install, remove or run (as the SCM does) the Windows service.
    #[cfg(windows)]
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// Internal: the gateway process started by `run`.
    #[command(hide = true)]
    Gateway(ConfigArg),
    /// Internal: a content worker process started by the gateway.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        memory: u64,
        #[arg(long)]
        deadline_ms: u64,
    },
}

#[cfg(windows)]
#[derive(Subcommand)]
enum ServiceCmd {
    /// Register the service (auto start, restart on failure).
    Install(ConfigArg),
    /// Stop and remove the service.
    Uninstall,
    /// Run under the Service Control Manager (what `install` registers).
    Run(ConfigArg),
}

#[derive(Args, Default)]
struct ConfigArg {
    /// Configuration file (default: ./config/postern.toml, else built-in).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    private_files();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run {
        config: ConfigArg::default(),
        no_supervisor: false,
    });
    match command {
        Command::CheckConfig(a) => cli::check_config(a.config.as_deref()),
        Command::Worker {
            config,
            memory,
            deadline_ms,
        } => content::worker::main(
            config,
            memory,
            std::time::Duration::from_millis(deadline_ms),
        ),
        Command::Queue { config, cmd } => cli::queue_command(config.config.as_deref(), cmd),
        Command::Health { config, ready } => cli::health(config.config.as_deref(), ready),
        Command::Drain {
            config,
            wait,
            timeout,
            transfer_to,
            settle,
            json,
        } => cli::drain_command(
            config.config.as_deref(),
            cli::DrainArgs {
                on: true,
                wait,
                timeout,
                transfer_to,
                settle,
                json,
            },
        ),
        Command::Undrain { config, json } => cli::drain_command(
            config.config.as_deref(),
            cli::DrainArgs {
                on: false,
                wait: false,
                timeout: "0s".into(),
                transfer_to: None,
                settle: "0s".into(),
                json,
            },
        ),
        Command::TlsPolicy { config, cmd } => {
            cli::tls_policy_command(config.config.as_deref(), cmd)
        }
        Command::Trace { config, key, json } => match config::load(config.config.as_deref()) {
            Ok(loaded) => cli::trace::run(&loaded.config, &key, json),
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(1)
            }
        },
        Command::HashPassword => cli::hash_password(),
        #[cfg(windows)]
        Command::Service { cmd } => {
            let r = match cmd {
                ServiceCmd::Install(a) => run::winservice::install(a.config),
                ServiceCmd::Uninstall => run::winservice::uninstall(),
                ServiceCmd::Run(a) => run::winservice::run(a.config),
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("postern: {}", error_text(&e));
                    ExitCode::from(1)
                }
            }
        }
        Command::Gateway(a) => serve(a.config, false),
        Command::Run {
            config,
            no_supervisor,
        } => serve(config.config, !no_supervisor),
    }
}

/// Makes every file and directory this process (and its children: the
/// gateway, the workers) creates private to its user: umask 077, so the
/// queue (sled files), spool files, tracking log, running-configuration
/// snapshot, admin.addr and admin.token are 0600 and directories 0700.
/// Mail is somebody's; no other local user may read it.
#[cfg(unix)]
fn private_files() {
    // SAFETY: umask only replaces the process's file-creation mask; it
    // cannot fail, takes no pointers, and runs first, before any thread.
    unsafe {
        libc::umask(0o077);
    }
}

/// Windows: files take the ACL of their directory.
#[cfg(not(unix))]
fn private_files() {}

/// Raises the soft limit of open files to the hard limit, as servers do:
/// every SMTP session, outbound connection, worker pipe and queue segment
/// is a descriptor, and distributions start services at 1,024. Said in the
/// log either way (the gateway inherits the raised limit from the
/// supervisor and finds nothing to raise).
#[cfg(unix)]
fn raise_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    if before >= lim.rlim_max {
        tracing::info!(limit = before, "open-file limit (soft = hard)");
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::info!(
            from = before,
            to = lim.rlim_max,
            "raised the open-file limit to the hard limit"
        );
    } else {
        let e = std::io::Error::last_os_error();
        tracing::warn!(limit = before, error = %e, "could not raise the open-file limit");
    }
}

/// Windows has no per-process descriptor limit to raise.
#[cfg(not(unix))]
fn raise_file_limit() {}

/// Loads the configuration and runs the supervisor or the gateway.
fn serve(path: Option<PathBuf>, supervised: bool) -> ExitCode {
    block_on(async move {
        // Handlers first: from here on SIGHUP is a reload request, never
        // the default action (which would end the process).
        let mut signals = run::signals::Signals::new();
        // Windows, under the supervisor: its requests come on stdin.
        if let Some(rx) = run::handoff::control_channel() {
            signals = signals.with_channel(rx);
        }
        let loaded = config::load(path.as_deref())
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        // A gateway under a supervisor that logs to a file writes there too.
        let log_dir = std::env::var_os(run::handoff::LOG_DIR_ENV).map(PathBuf::from);
        init_logging(&loaded.config.log, log_dir.as_deref());
        raise_file_limit();
        if supervised {
            return run::supervise::run(loaded, signals, None).await;
        }
        gateway::wiring::run_until(loaded, signals).await
    })
}

/// [`block_on`] for work that chooses its own exit code.
pub(crate) fn block_on_code<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
) -> ExitCode {
    let code = std::sync::Mutex::new(ExitCode::SUCCESS);
    let done = block_on(async {
        let c = f.await?;
        *code.lock().unwrap_or_else(|p| p.into_inner()) = c;
        Ok(())
    });
    if done != ExitCode::SUCCESS {
        return done;
    }
    code.into_inner().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> ExitCode {
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
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = error_text(&e);
            tracing::error!("fatal: {text}");
            eprintln!("postern: {text}");
            match e.downcast_ref::<gateway::wiring::QueueUnopenable>() {
                Some(_) => ExitCode::from(gateway::wiring::QueueUnopenable::EXIT),
                None => ExitCode::from(1),
            }
        }
    }
}

/// An error and its causes on one line, `error: cause: cause`, each cause
/// once. Our crates' errors name their cause in their own text (so a log
/// line with `%e` says everything) and also return it as their source (so
/// the chain is kept); a cause whose text already ends the line is not
/// repeated.
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if text.ends_with(c.as_str()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

/// Logs on stderr (or `[log] file`; `default_dir/postern.log` when a
/// service has no stderr), human-readable or JSON (`[log] format`); the
/// level is `[log] level` unless `POSTERN_LOG` = error|..|trace is set.
fn init_logging(cfg: &crate::config::LogConfig, default_dir: Option<&std::path::Path>) {
    let level = std::env::var("POSTERN_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .or_else(|| cfg.level.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    let file = cfg
        .file
        .clone()
        .or_else(|| default_dir.map(|d| d.join("postern.log")));
    let writer = match file {
        Some(path) => {
            let opened = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                });
            match opened {
                Ok(f) => {
                    tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f))
                }
                Err(e) => {
                    eprintln!(
                        "postern: cannot open log file {}: {e}; logging to stderr",
                        path.display()
                    );
                    tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
                }
            }
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let ansi = cfg.file.is_none()
        && default_dir.is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer);
    if cfg.format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.with_ansi(ansi).init();
    }
}

#[cfg(test)]
mod error_text_tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("storage error: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_named_in_the_text_are_not_repeated() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Outer(io)).context("cannot open the queue at /q");
        assert_eq!(
            error_text(&e),
            "cannot open the queue at /q: storage error: disk on fire"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&plain), "outer: inner");
    }
}
