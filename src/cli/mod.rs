//! The command-line clients: what an operator types besides `postern run`.
//!
//! Here: `check-config`, `hash-password`, `health` and the dispatch of
//! `queue`, each returning the process exit code (0 success, 1 failure).
//! [`queue`] is a client of the running daemon's admin endpoint (list,
//! summary, show, hold, release, retry, delete); [`trace`] reads the
//! tracking log directly and works without the daemon. They use the
//! operations side ([`crate::ops`]) for the wire types and the log format,
//! never the gateway's internals.

pub mod queue;
pub mod trace;

use crate::block_on;
use std::path::Path;
use std::process::ExitCode;

/// `postern check-config`: loads the file and builds every part from it
/// (DKIM keys, maps, TLS certificate, users and recipients files, routes),
/// so what passes here also starts. Exit 1 with every error otherwise.
pub fn check_config(path: Option<&Path>) -> ExitCode {
    match crate::config::load(path) {
        Ok(loaded) => block_on(async move {
            crate::gateway::assemble::validate(&loaded.config)
                .map_err(|e| anyhow::anyhow!("{}: {}", loaded.source, crate::error_text(&e)))?;
            println!("{}: configuration OK", loaded.source);
            Ok(())
        }),
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `postern queue ...` against the running daemon.
pub fn queue_command(path: Option<&Path>, cmd: queue::QueueCmd) -> ExitCode {
    match admin_target(path) {
        Ok((admin, token)) => block_on(async move { queue::run(admin, token, cmd).await }),
        Err(e) => {
            eprintln!("{}", crate::error_text(&e).trim_end());
            ExitCode::from(1)
        }
    }
}

/// `postern health [--ready]`: exit 0 when the daemon answers.
pub fn health(path: Option<&Path>, ready: bool) -> ExitCode {
    match admin_target(path) {
        Ok((admin, token)) => block_on(async move {
            let path = if ready { "/readyz" } else { "/healthz" };
            queue::check(admin, token, path).await
        }),
        Err(e) => {
            eprintln!("{}", crate::error_text(&e).trim_end());
            ExitCode::from(1)
        }
    }
}

/// `postern hash-password`: a password on standard input, its Argon2id
/// hash for the users file on standard output.
pub fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return ExitCode::from(1);
    }
    match postern_listener::hash_password(line.trim_end_matches(['\r', '\n'])) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postern: {}", crate::error_text(&anyhow::Error::new(e)));
            ExitCode::from(1)
        }
    }
}

/// The running daemon's admin address and token, from the configuration
/// (port 0: the address the daemon wrote beside its queue).
fn admin_target(path: Option<&Path>) -> anyhow::Result<(std::net::SocketAddr, Option<String>)> {
    let loaded = crate::config::load(path)?;
    let cfg = &loaded.config;
    let token = crate::config::admin_token(cfg)?;
    let mut admin = cfg.admin.listen;
    if admin.ip().is_unspecified() {
        // Listening everywhere: talk to it over loopback.
        admin.set_ip(match admin {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    if admin.port() == 0 {
        let file = cfg.queue.path.join(crate::gateway::wiring::ADMIN_ADDR_FILE);
        admin = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!("admin port is 0 and {} names no address", file.display())
            })?;
    }
    Ok((admin, token))
}
