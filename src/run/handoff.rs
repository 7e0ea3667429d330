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
//! Windows has no descriptor inheritance to speak of: with [`CONTROL_ENV`]
//! `=stdio` the gateway's stdin carries the supervisor's lines — first one
//! [`socket_line`] `S <kind> <hex>` per listening socket (its
//! `WSAPROTOCOL_INFOW`, from `WSADuplicateSocketW` for the gateway's
//! process id; the gateway rebuilds it with `WSASocketW`), then [`GO_LINE`]
//! `G`, then `HUP` (reload) and `TERM` (stop) — and its stdout carries the
//! in-flight lines above. [`LOG_DIR_ENV`] names the directory of the log
//! file when the supervisor logs to one (the Windows service), so the
//! gateway writes to the same file.
//!
//! Failure modes: a malformed [`LISTEN_ENV`] or socket line is a start-up
//! error naming what is wrong; the other variables fall back to "none".

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

/// Windows: `stdio` when the gateway's stdin and stdout are its channels
/// to the supervisor.
#[cfg_attr(not(windows), allow(dead_code))]
pub const CONTROL_ENV: &str = "POSTERN_CONTROL";
/// The directory whose `postern.log` the gateway appends to (the
/// supervisor's own log, when it has one).
pub const LOG_DIR_ENV: &str = "POSTERN_LOG_DIR";
/// Windows: the line after the socket lines.
#[cfg_attr(not(windows), allow(dead_code))]
pub const GO_LINE: &str = "G\n";

/// Windows: the line handing over one listening socket of `kind`, as its
/// protocol information `info` (hex).
#[cfg_attr(not(windows), allow(dead_code))]
pub fn socket_line(kind: &str, info: &[u8]) -> String {
    let hex: String = info.iter().map(|b| format!("{b:02x}")).collect();
    format!("S {kind} {hex}\n")
}

/// One line of the Windows hand-over: a socket (kind and protocol
/// information), or `None` for [`GO_LINE`].
#[cfg_attr(not(windows), allow(dead_code))]
pub fn parse_socket_line(line: &str) -> anyhow::Result<Option<(&'static str, Vec<u8>)>> {
    let line = line.trim_end();
    if line == GO_LINE.trim_end() {
        return Ok(None);
    }
    let mut words = line.split(' ');
    let (Some("S"), Some(kind), Some(hex), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        anyhow::bail!("malformed hand-over line {line:?}");
    };
    let kind = listener_kind(kind)?;
    let malformed = || anyhow::anyhow!("malformed socket information for {kind}");
    if hex.len() % 2 != 0 {
        return Err(malformed());
    }
    // Byte pairs, not string slices: a non-ASCII character is an error,
    // never a slice through it.
    let bytes = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(malformed)?;
    Ok(Some((kind, bytes)))
}

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

/// How the previous gateway died, if this one is a restart.
pub fn last_death_from_env() -> Option<String> {
    std::env::var(DEATH_ENV).ok().filter(|d| !d.is_empty())
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

/// Windows: the listening sockets the supervisor handed over on stdin
/// (when [`CONTROL_ENV`] says so); then the rest of stdin becomes the
/// control channel ([`control_channel`]).
#[cfg(windows)]
pub fn inherited_sockets() -> anyhow::Result<Option<Sockets>> {
    if std::env::var(CONTROL_ENV).as_deref() != Ok("stdio") {
        return Ok(None);
    }
    let mut stdin = std::io::stdin().lock();
    let (mut smtp, mut smtps, mut submission, mut admin) =
        (Vec::new(), Vec::new(), Vec::new(), None);
    loop {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stdin, &mut line)? == 0 {
            anyhow::bail!("the supervisor closed the hand-over before its end");
        }
        let Some((kind, info)) = parse_socket_line(&line)? else {
            break;
        };
        let l = winsock::listener_from(&info)?;
        match kind {
            "smtp" => smtp.push(l),
            "smtps" => smtps.push(l),
            "submission" => submission.push(l),
            _ => admin = Some(l),
        }
    }
    drop(stdin);
    winsock::read_controls();
    Ok(Some(Sockets {
        smtp,
        smtps,
        submission,
        admin: admin.ok_or_else(|| anyhow::anyhow!("no admin listener passed"))?,
    }))
}

/// Where the Windows gateway's stdin lines go after the hand-over.
#[cfg(windows)]
static CONTROL_TX: std::sync::OnceLock<
    tokio::sync::mpsc::UnboundedSender<crate::run::signals::Sig>,
> = std::sync::OnceLock::new();

/// Windows, under the supervisor: the requests (`HUP`, `TERM`) it will send
/// on stdin, for [`crate::run::signals::Signals::with_channel`]. `None`
/// elsewhere.
pub fn control_channel() -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::run::signals::Sig>> {
    #[cfg(windows)]
    if std::env::var(CONTROL_ENV).as_deref() == Ok("stdio") {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = CONTROL_TX.set(tx);
        return Some(rx);
    }
    None
}

#[cfg(not(any(unix, windows)))]
pub fn inherited_sockets() -> anyhow::Result<Option<Sockets>> {
    Ok(None)
}

/// Windows sockets handed from one process to another.
#[cfg(windows)]
pub mod winsock {
    use super::{socket_line, CONTROL_TX, GO_LINE};
    use crate::run::listen::Sockets;
    use crate::run::signals::Sig;
    use postern_supervisor::child::{parse_control, Control};
    use std::os::windows::io::{AsRawSocket, FromRawSocket, RawSocket};
    use windows_sys::Win32::Networking::WinSock::{
        WSADuplicateSocketW, WSASocketW, WSAStartup, FROM_PROTOCOL_INFO, INVALID_SOCKET, SOCKET,
        WSADATA, WSAPROTOCOL_INFOW, WSA_FLAG_NO_HANDLE_INHERIT, WSA_FLAG_OVERLAPPED,
    };

    /// The hand-over for process `pid`: every socket of `s`, duplicated
    /// for it, then [`GO_LINE`].
    pub fn handover(s: &Sockets, pid: u32) -> std::io::Result<Vec<u8>> {
        let mut out = String::new();
        let kinds = [
            ("smtp", &s.smtp),
            ("smtps", &s.smtps),
            ("submission", &s.submission),
        ];
        for (kind, list) in kinds {
            for l in list.iter() {
                out.push_str(&socket_line(kind, &duplicate(l.as_raw_socket(), pid)?));
            }
        }
        out.push_str(&socket_line(
            "admin",
            &duplicate(s.admin.as_raw_socket(), pid)?,
        ));
        out.push_str(GO_LINE);
        Ok(out.into_bytes())
    }

    /// The protocol information that lets process `pid` open `socket`.
    fn duplicate(socket: RawSocket, pid: u32) -> std::io::Result<Vec<u8>> {
        // SAFETY: a zeroed WSAPROTOCOL_INFOW is plain data, filled by the
        // call for a socket we own.
        let mut info: WSAPROTOCOL_INFOW = unsafe { std::mem::zeroed() };
        if unsafe { WSADuplicateSocketW(socket as SOCKET, pid, &mut info) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: viewing a plain-data struct as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&info as *const WSAPROTOCOL_INFOW).cast::<u8>(),
                std::mem::size_of::<WSAPROTOCOL_INFOW>(),
            )
        };
        Ok(bytes.to_vec())
    }

    /// A listener from the protocol information the supervisor sent.
    pub fn listener_from(info: &[u8]) -> anyhow::Result<std::net::TcpListener> {
        anyhow::ensure!(
            info.len() == std::mem::size_of::<WSAPROTOCOL_INFOW>(),
            "socket information of {} bytes, not {}",
            info.len(),
            std::mem::size_of::<WSAPROTOCOL_INFOW>()
        );
        // SAFETY: WSAStartup may be called any number of times (counted);
        // the struct is filled by it.
        let mut data: WSADATA = unsafe { std::mem::zeroed() };
        unsafe { WSAStartup(0x0202, &mut data) };
        // SAFETY: the size was checked; a WSAPROTOCOL_INFOW is plain data
        // and any byte pattern is a value of it.
        let proto: WSAPROTOCOL_INFOW =
            unsafe { std::ptr::read_unaligned(info.as_ptr().cast::<WSAPROTOCOL_INFOW>()) };
        // SAFETY: the protocol information describes a socket duplicated
        // for this process.
        let s = unsafe {
            WSASocketW(
                FROM_PROTOCOL_INFO,
                FROM_PROTOCOL_INFO,
                FROM_PROTOCOL_INFO,
                &proto,
                0,
                WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT,
            )
        };
        if s == INVALID_SOCKET {
            return Err(anyhow::anyhow!(
                "WSASocketW: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a fresh socket this process owns.
        Ok(unsafe { std::net::TcpListener::from_raw_socket(s as RawSocket) })
    }

    /// Turns the rest of stdin into requests on the control channel; the
    /// end of stdin (the supervisor is gone) is a stop.
    pub fn read_controls() {
        let Some(tx) = CONTROL_TX.get().cloned() else {
            return;
        };
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::stdin().lock()) {
                let Ok(line) = line else { break };
                let sig = match parse_control(&line) {
                    Some(Control::Reload) => Sig::Reload,
                    Some(Control::Stop) => Sig::Stop,
                    None => continue,
                };
                if tx.send(sig).is_err() {
                    return;
                }
            }
            let _ = tx.send(Sig::Stop);
        });
    }
}

/// The listener kind `name` names (`smtp`, `smtps`, `submission`,
/// `admin`), as the one static string of that kind.
fn listener_kind(name: &str) -> anyhow::Result<&'static str> {
    ["smtp", "smtps", "submission", "admin"]
        .into_iter()
        .find(|k| *k == name)
        .ok_or_else(|| anyhow::anyhow!("unknown listener kind {name}"))
}

/// `(kind, fd)` pairs of a [`LISTEN_ENV`] value.
#[cfg_attr(not(unix), allow(dead_code))]
fn parse_listen_value(v: &str) -> anyhow::Result<Vec<(&'static str, i32)>> {
    let mut out = Vec::new();
    for part in v.split(';') {
        let (name, fds) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("malformed listener list {v:?}"))?;
        let kind = listener_kind(name)?;
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
    fn socket_lines_round_trip() {
        let line = socket_line("submission", &[0, 1, 0xfe, 0xff]);
        assert_eq!(line, "S submission 0001feff\n");
        assert_eq!(
            parse_socket_line(&line).unwrap(),
            Some(("submission", vec![0, 1, 0xfe, 0xff]))
        );
        assert_eq!(parse_socket_line(GO_LINE).unwrap(), None);
        for bad in [
            "S pop3 00",
            "S smtp 0",
            "S smtp zz",
            "X smtp 00",
            "S smtp 00 extra",
            "",
        ] {
            assert!(parse_socket_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_listen_values_are_errors() {
        for bad in ["smtp", "smtp=x", "pop3=3", "smtp=3;admin"] {
            assert!(parse_listen_value(bad).is_err(), "{bad}");
        }
    }
}
