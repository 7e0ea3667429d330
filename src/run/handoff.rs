//! Everything the supervisor (`postern run`) and the gateway it starts
//! share, in one place: the environment variables that carry state into a
//! new gateway, and the lines the gateway writes on the in-flight pipe.
//!
//! Environment (set by the supervisor, read by the gateway):
//! - [`LISTEN_ENV`]: the inherited listening sockets, `smtp=3,4;smtps=;submission=;admin=5`;
//! - [`INFLIGHT_FD_ENV`]: the write end of the in-flight pipe;
//! - [`RESTARTS_ENV`]: how many times the gateway was restarted;
//! - [`SUSPECTS_ENV`] and [`DEATH_ENV`]: the keys in flight at the last
//!   death (space-separated) and how it died.
//!
//! Pipe lines (gateway → supervisor, each one `write`, atomic on a pipe):
//! [`enter_line`] `E <key> <deadline-ms>`, [`leave_line`] `L <key>`,
//! [`READY_LINE`] `R` (the suspects are charged). The supervisor crate's
//! `child::Inflight` parses them. Keys: `q:<queue id>` (read back),
//! `d:<queue id>` (delivering), `r:<content hash>` (receiving).
//!
//! Failure modes: a malformed [`LISTEN_ENV`] is a start-up error naming
//! what is wrong; the other variables fall back to "none".

use crate::run::listen::Sockets;
use std::time::Duration;

/// Inherited listening sockets, by kind.
#[cfg_attr(not(unix), allow(dead_code))]
pub const LISTEN_ENV: &str = "POSTERN_LISTEN_FDS";
/// The file descriptor of the in-flight pipe's write end.
#[cfg_attr(not(unix), allow(dead_code))]
pub const INFLIGHT_FD_ENV: &str = "POSTERN_INFLIGHT_FD";
/// How many times the supervisor restarted the gateway.
pub const RESTARTS_ENV: &str = "POSTERN_GATEWAY_RESTARTS";
/// The in-flight keys at the last death, space-separated.
pub const SUSPECTS_ENV: &str = "POSTERN_SUSPECTS";
/// How the last gateway died (signal, exit code, hang).
pub const DEATH_ENV: &str = "POSTERN_LAST_DEATH";

/// The line that says the previous death's suspects are charged.
pub const READY_LINE: &str = "R\n";

/// `key` enters a stage that must end within `deadline`.
pub fn enter_line(key: &str, deadline: Duration) -> String {
    format!("E {key} {}\n", deadline.as_millis())
}

/// `key` left its stage.
pub fn leave_line(key: &str) -> String {
    format!("L {key}\n")
}

/// The suspects and the cause of death this gateway was started with.
pub fn suspects_from_env() -> Option<(String, String)> {
    let list = std::env::var(SUSPECTS_ENV).ok()?;
    let death = std::env::var(DEATH_ENV).unwrap_or_else(|_| "gateway died".into());
    Some((list, death))
}

/// How many times this gateway's predecessors were restarted (0 if unset).
pub fn restarts_from_env() -> Option<u64> {
    std::env::var(RESTARTS_ENV).ok()?.parse().ok()
}

/// The value of [`LISTEN_ENV`] for these raw descriptors.
#[cfg(unix)]
pub fn listen_value(smtp: &[i32], smtps: &[i32], submission: &[i32], admin: i32) -> String {
    let list = |fds: &[i32]| {
        fds.iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "smtp={};smtps={};submission={};admin={admin}",
        list(smtp),
        list(smtps),
        list(submission)
    )
}

/// The listening sockets named in [`LISTEN_ENV`], if it is set.
#[cfg(unix)]
pub fn inherited_sockets() -> anyhow::Result<Option<Sockets>> {
    use anyhow::Context;
    use std::os::fd::FromRawFd;
    let Ok(v) = std::env::var(LISTEN_ENV) else {
        return Ok(None);
    };
    let (mut smtp, mut smtps, mut submission, mut admin) =
        (Vec::new(), Vec::new(), Vec::new(), None);
    for (name, fd) in parse_listen_value(&v)? {
        postern_supervisor::child::set_cloexec(fd)?;
        // SAFETY: the supervisor handed us this listening socket, and
        // nothing else in this process owns the descriptor.
        let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        match name {
            "smtp" => smtp.push(l),
            "smtps" => smtps.push(l),
            "submission" => submission.push(l),
            _ => admin = Some(l),
        }
    }
    Ok(Some(Sockets {
        smtp,
        smtps,
        submission,
        admin: admin.context("no admin listener passed")?,
    }))
}

/// Without a supervisor there is nothing to inherit.
#[cfg(not(unix))]
pub fn inherited_sockets() -> anyhow::Result<Option<Sockets>> {
    Ok(None)
}

/// `(kind, fd)` pairs of a [`LISTEN_ENV`] value.
#[cfg_attr(not(unix), allow(dead_code))]
fn parse_listen_value(v: &str) -> anyhow::Result<Vec<(&'static str, i32)>> {
    let mut out = Vec::new();
    for part in v.split(';') {
        let (name, fds) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("malformed listener list {v:?}"))?;
        let kind = match name {
            "smtp" => "smtp",
            "smtps" => "smtps",
            "submission" => "submission",
            "admin" => "admin",
            _ => anyhow::bail!("unknown listener kind {name}"),
        };
        for fd in fds.split(',').filter(|f| !f.is_empty()) {
            let fd = fd
                .parse()
                .map_err(|_| anyhow::anyhow!("malformed listener fd {fd:?}"))?;
            out.push((kind, fd));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_lines() {
        assert_eq!(enter_line("d:1", Duration::from_secs(2)), "E d:1 2000\n");
        assert_eq!(leave_line("r:00ff"), "L r:00ff\n");
    }

    #[cfg(unix)]
    #[test]
    fn listen_value_round_trips() {
        let v = listen_value(&[3, 4], &[], &[7], 5);
        assert_eq!(v, "smtp=3,4;smtps=;submission=7;admin=5");
        let parsed = parse_listen_value(&v).expect("parses");
        assert_eq!(
            parsed,
            vec![("smtp", 3), ("smtp", 4), ("submission", 7), ("admin", 5)]
        );
    }

    #[test]
    fn malformed_listen_values_are_errors() {
        for bad in ["smtp", "smtp=x", "pop3=3", "smtp=3;admin"] {
            assert!(parse_listen_value(bad).is_err(), "{bad}");
        }
    }
}
