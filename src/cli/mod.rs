//! The command-line clients: what an operator types besides `postern run`.
//!
//! Here: `check-config`, `hash-password`, `health` and the dispatch of
//! `queue` and `tls-policy`, each returning the process exit code (0
//! success, 1 failure). [`tls_policy`] explains a destination's outbound TLS.
//! [`queue`] is a client of the running daemon's admin endpoint (list,
//! summary, show, hold, release, retry, delete); [`trace`] reads the
//! tracking log directly and works without the daemon. They use the
//! operations side ([`crate::ops`]) for the wire types and the log format,
//! never the gateway's internals. Text from the queue or the tracking log
//! may come from clients: it is printed through [`escape_controls`] (or
//! [`escape_json_controls`] as JSON), never raw to the terminal.

pub mod fleet;
pub mod queue;
pub mod tls_policy;
pub mod trace;

use crate::block_on;
use std::borrow::Cow;
use std::path::Path;
use std::process::ExitCode;

/// Whether printing `c` could drive a terminal: a C0 control (ESC, CR, LF,
/// tab and the rest), DEL or a C1 control (CSI, OSC...).
fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}')
}

/// `text` fit for a terminal: every control character written out, C0 and
/// DEL as `\xNN`, C1 as `\u{NN}`, so text a client chose (HELO, addresses,
/// Message-ID, subject, reasons, remote replies) cannot move the cursor,
/// recolour, retitle or rewrite the operator's terminal. Every
/// human-readable line the CLI prints goes through it.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    use std::fmt::Write;
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c as u32 {
            n @ (0..=0x1f | 0x7f) => {
                let _ = write!(out, "\\x{n:02x}");
            }
            n @ 0x80..=0x9f => {
                let _ = write!(out, "\\u{{{n:x}}}");
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text with DEL and C1 controls written as `\u00NN`: serde_json
/// escapes C0 controls itself but leaves these as they are. In JSON text a
/// control character can only be inside a string, where the escape means
/// the same, so the output is the same JSON. Every JSON the CLI prints goes
/// through it.
pub fn escape_json_controls(json: &str) -> Cow<'_, str> {
    use std::fmt::Write;
    let raw = |c: char| matches!(c, '\x7f'..='\u{9f}');
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

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

/// The options of `postern drain` and `undrain`.
pub struct DrainArgs {
    /// Drain (true) or undrain.
    pub on: bool,
    /// Wait until nothing waits.
    pub wait: bool,
    /// How long `wait` waits.
    pub timeout: String,
    /// Then transfer the queue to this peer.
    pub transfer_to: Option<String>,
    /// Wait before the transfer.
    pub settle: String,
    /// JSON progress lines.
    pub json: bool,
}

/// `postern drain` (on) and `postern undrain` (off) on the running daemon.
pub fn drain_command(path: Option<&Path>, a: DrainArgs) -> ExitCode {
    let parse = |what: &str, v: &str| {
        postern_core::units::parse_duration(v).map_err(|e| eprintln!("{what}: {e}"))
    };
    let (Ok(timeout), Ok(settle)) = (parse("--timeout", &a.timeout), parse("--settle", &a.settle))
    else {
        return ExitCode::from(1);
    };
    let concurrency = crate::config::load(path)
        .map(|l| l.config.fleet.transfer_concurrency)
        .unwrap_or(8);
    match admin_target(path) {
        Ok((admin, token)) => crate::block_on_code(async move {
            let code = fleet::drain(admin, token.clone(), a.on, a.wait, timeout, a.json).await?;
            let Some(to) = a.transfer_to.filter(|_| a.on) else {
                return Ok(code);
            };
            tokio::time::sleep(settle).await;
            let req = crate::gateway::transfer::Request {
                to,
                domain: None,
                state: None,
                quarantine: false,
                concurrency,
            };
            fleet::transfer_via_daemon(admin, token, &req, a.json).await
        }),
        Err(e) => {
            eprintln!("{}", escape_controls(crate::error_text(&e).trim_end()));
            ExitCode::from(1)
        }
    }
}

/// `postern tls-policy ...`.
pub fn tls_policy_command(path: Option<&Path>, cmd: tls_policy::TlsPolicyCmd) -> ExitCode {
    match crate::config::load(path) {
        Ok(loaded) => {
            let daemon = admin_target(path).ok();
            block_on(async move { tls_policy::run(&loaded.config, daemon, cmd).await })
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `postern queue ...` against the running daemon.
pub fn queue_command(path: Option<&Path>, cmd: queue::QueueCmd) -> ExitCode {
    if let queue::QueueCmd::Salvage {
        queue_dir,
        out_dir,
        json,
    } = &cmd
    {
        return salvage(queue_dir, out_dir, *json);
    }
    if let queue::QueueCmd::Transfer {
        to,
        domain,
        state,
        quarantine,
        queue_dir,
        concurrency,
        json,
    } = cmd
    {
        let loaded = match crate::config::load(path) {
            Ok(l) => l,
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(1);
            }
        };
        let req = crate::gateway::transfer::Request {
            to,
            domain,
            state,
            quarantine,
            concurrency: concurrency.unwrap_or(loaded.config.fleet.transfer_concurrency),
        };
        return match queue_dir {
            Some(dir) => crate::block_on_code(async move {
                fleet::transfer_offline(&loaded.config, &dir, &req, json).await
            }),
            None => match admin_target(path) {
                Ok((admin, token)) => crate::block_on_code(async move {
                    fleet::transfer_via_daemon(admin, token, &req, json).await
                }),
                Err(e) => {
                    eprintln!("{}", escape_controls(crate::error_text(&e).trim_end()));
                    ExitCode::from(1)
                }
            },
        };
    }
    match admin_target(path) {
        Ok((admin, token)) => block_on(async move { queue::run(admin, token, cmd).await }),
        Err(e) => {
            eprintln!("{}", escape_controls(crate::error_text(&e).trim_end()));
            ExitCode::from(1)
        }
    }
}

/// `postern queue salvage DIR OUT`: every intact body in DIR's segments,
/// written to OUT (no record is read: the store may be unreadable).
fn salvage(queue_dir: &Path, out_dir: &Path, json: bool) -> ExitCode {
    let bodies = queue_dir.join("bodies");
    if !bodies.is_dir() {
        eprintln!(
            "{} has no bodies/ directory: not a Postern queue (or nothing to salvage)",
            queue_dir.display()
        );
        return ExitCode::from(1);
    }
    match postern_queue::salvage::salvage(&bodies, out_dir, &mut |_| false) {
        Ok(s) => {
            if json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                println!(
                    "{} message(s) saved in {}; {} failed their CRC; {} damaged stretch(es)",
                    s.saved,
                    out_dir.display(),
                    s.corrupt,
                    s.damaged.len()
                );
                for d in &s.damaged {
                    println!("  damaged: {}", escape_controls(d));
                }
            }
            if s.damaged.is_empty() && s.corrupt == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("salvage failed: {e}");
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
            eprintln!("{}", escape_controls(crate::error_text(&e).trim_end()));
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
/// (port 0: the address the daemon wrote beside its queue; no
/// `token_file`: the token the daemon generated beside its queue, if this
/// user can read it).
fn admin_target(path: Option<&Path>) -> anyhow::Result<(std::net::SocketAddr, Option<String>)> {
    let loaded = crate::config::load(path)?;
    let cfg = &loaded.config;
    let token = crate::config::admin_client_token(cfg)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_for_the_terminal() {
        assert!(matches!(
            escape_controls("mx.example.test <a@b> ü"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("a\x1b[2Jb\r\n\t\0\x7fc"),
            r"a\x1b[2Jb\x0d\x0a\x09\x00\x7fc"
        );
        assert_eq!(
            escape_controls("x\u{9b}31m\u{85}y\u{a0}"),
            "x\\u{9b}31m\\u{85}y\u{a0}"
        );
        // Already escaped text stays as it is.
        assert_eq!(escape_controls(r"\x1b"), r"\x1b");
    }

    #[test]
    fn json_keeps_its_meaning_without_raw_controls() {
        let v = serde_json::json!({ "helo": "a\x1b[31m\u{9b}2J\x7f", "n": 1 });
        let text = serde_json::to_string_pretty(&v).unwrap();
        let safe = escape_json_controls(&text);
        assert!(!safe.chars().any(is_control_but_layout), "{safe}");
        assert!(safe.contains(r"\u001b") && safe.contains(r"\u009b") && safe.contains(r"\u007f"));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
        assert!(matches!(
            escape_json_controls("{\n  \"a\": 1\n}"),
            Cow::Borrowed(_)
        ));
    }

    /// A control that is not JSON layout (newline, indentation).
    fn is_control_but_layout(c: char) -> bool {
        is_control(c) && !matches!(c, '\n' | '\t' | '\r')
    }
}
