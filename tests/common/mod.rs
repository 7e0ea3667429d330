//! Test support: real peers on loopback for the real `postern` binary.
//!
//! - [`Sink`]: an SMTP server recording what it receives, with scripted
//!   per-recipient replies (temporary or permanent failures);
//! - [`DnsServer`]: a DNS server (UDP and TCP) answering from a test zone,
//!   truncating UDP answers over 512 bytes so resolvers must retry on TCP;
//! - [`Gateway`]: the `postern` binary started on `127.0.0.1:0` with a
//!   generated configuration, its log captured, killed on drop; [`route`]
//!   and [`RELAY`] for the configuration sections most tests add;
//! - [`smtp_send`], [`try_send`] and [`RawClient`]: clients (lettre, and raw
//!   bytes for protocol abuse tests);
//! - [`tools`]: the external tools the tests run, each with the package that
//!   installs it (a missing one fails naming the package); [`swaks()`]; keys
//!   and certificates made with openssl in [`certs`];
//! - [`memory`]: the resident memory of the gateway's process tree.
//!
//! Every test binary compiles all of it and uses a part, hence the
//! `allow(dead_code)` here and the `allow(unused_imports)` on re-exports.
#![allow(dead_code)]

pub mod certs;
pub mod dns;
pub mod gateway;
pub mod https;
pub mod memory;
pub mod sink;
pub mod swaks;
pub mod tls_client;
pub mod tools;

#[allow(unused_imports)]
pub use dns::{DnsServer, Hostile, Zone};
#[allow(unused_imports)]
pub use gateway::{route, users_and_certificate, Gateway, RELAY};
#[allow(unused_imports)]
pub use sink::Sink;
#[allow(unused_imports)]
pub use swaks::{swaks, SwaksRun};

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until `f` is true, panicking with `what` after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A TCP connection to `addr`, from a chosen loopback source address
/// (e.g. 127.0.0.5) when `src` is given.
pub async fn connect_tcp(addr: SocketAddr, src: Option<&str>) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(src) = src {
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    }
    sock.connect(addr).await.unwrap()
}

/// What one read returns within 15 seconds, as text; empty on a timeout,
/// an error or end of stream.
pub async fn read_some<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut b = [0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(15), s.read(&mut b)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&b[..n]).into_owned(),
        _ => String::new(),
    }
}

/// Sends one message with lettre; returns the server's final reply text.
pub async fn smtp_send(
    addr: SocketAddr,
    from: &str,
    to: &[&str],
    body: &str,
) -> Result<String, String> {
    use lettre::address::Envelope;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
    let t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .timeout(Some(Duration::from_secs(20)))
        .build();
    let env = Envelope::new(
        Some(from.parse().map_err(|e| format!("{e}"))?),
        to.iter().map(|a| a.parse().unwrap()).collect(),
    )
    .map_err(|e| e.to_string())?;
    t.send_raw(&env, body.as_bytes())
        .await
        .map(|r| r.message().collect::<Vec<_>>().join(" "))
        .map_err(|e| e.to_string())
}

/// Sends one message over a fresh connection without panicking on network
/// errors: returns the final reply, or a description of what failed
/// (refused, reset, 4xx...), so callers can retry like a real client.
pub async fn try_send(
    addr: SocketAddr,
    from: &str,
    to: &str,
    data: &str,
) -> Result<String, String> {
    let io = |e: std::io::Error| e.to_string();
    let t = Duration::from_secs(30);
    let mut s = tokio::time::timeout(t, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(io)?;
    let mut buf = Vec::new();
    let read_reply = async |s: &mut TcpStream, buf: &mut Vec<u8>| -> Result<String, String> {
        loop {
            if let Some(end) = complete_reply(buf) {
                let r: Vec<u8> = buf.drain(..end).collect();
                return Ok(String::from_utf8_lossy(&r).into_owned());
            }
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(t, s.read(&mut tmp))
                .await
                .map_err(|_| "reply timeout".to_string())?
                .map_err(io)?;
            if n == 0 {
                return Err("connection closed".into());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    };
    let greeting = read_reply(&mut s, &mut buf).await?;
    if !greeting.starts_with("220") {
        return Err(greeting);
    }
    for cmd in [
        "EHLO t.test".to_string(),
        format!("MAIL FROM:<{from}>"),
        format!("RCPT TO:<{to}>"),
        "DATA".into(),
    ] {
        s.write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .map_err(io)?;
        let r = read_reply(&mut s, &mut buf).await?;
        if !(r.starts_with('2') || r.starts_with('3')) {
            return Err(r);
        }
    }
    s.write_all(data.as_bytes()).await.map_err(io)?;
    s.write_all(b".\r\n").await.map_err(io)?;
    let r = read_reply(&mut s, &mut buf).await?;
    let _ = s.write_all(b"QUIT\r\n").await;
    if r.starts_with("250") {
        Ok(r)
    } else {
        Err(r)
    }
}

/// A message body with a Message-ID the tests can look for.
pub fn body(tag: &str) -> String {
    format!(
        "From: <sender@example.test>\r\nTo: <rcpt@example.test>\r\nSubject: test {tag}\r\nMessage-ID: <{tag}@test>\r\n\r\nbody of {tag}\r\n"
    )
}

/// A raw SMTP client for protocol tests: writes bytes, reads replies.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        Self::connect_from(addr, None).await
    }

    /// Connects; `Err` holds the greeting when it is not 220 (a 421 from
    /// a draining or full gateway). A refused connection panics.
    pub async fn try_connect(addr: SocketAddr) -> Result<RawClient, String> {
        let stream = connect_tcp(addr, None).await;
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
        };
        let greeting = c.reply().await;
        if greeting.starts_with("220") {
            Ok(c)
        } else {
            Err(greeting)
        }
    }

    /// Connects from a chosen loopback source address (e.g. 127.0.0.5).
    pub async fn connect_from(addr: SocketAddr, src: Option<&str>) -> RawClient {
        let stream = connect_tcp(addr, src).await;
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
        };
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220"), "{greeting}");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one complete (possibly multi-line) reply.
    pub async fn reply(&mut self) -> String {
        loop {
            if let Some(end) = complete_reply(&self.buf) {
                let r: Vec<u8> = self.buf.drain(..end).collect();
                return String::from_utf8_lossy(&r).into_owned();
            }
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut tmp))
                .await
                .expect("reply timeout")
                .unwrap();
            if n == 0 {
                return String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Sends a command and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// `MAIL FROM:{mail}`, `RCPT TO:{rcpt}` for each of `rcpts`, then
    /// `DATA`, asserting 250 for each and 354 for DATA. Paths are given with
    /// their brackets and any parameters: `"<a@example.test> BODY=8BITMIME"`.
    pub async fn begin_data(&mut self, mail: &str, rcpts: &[&str]) {
        let r = self.cmd(&format!("MAIL FROM:{mail}")).await;
        assert!(r.starts_with("250"), "MAIL FROM:{mail}: {r}");
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:{rcpt}")).await;
            assert!(r.starts_with("250"), "RCPT TO:{rcpt}: {r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "DATA: {r}");
    }

    /// One transaction: [`RawClient::begin_data`], then `data` (which must
    /// end with the terminating `.` line); returns the final reply.
    pub async fn transaction(&mut self, mail: &str, rcpts: &[&str], data: &[u8]) -> String {
        self.begin_data(mail, rcpts).await;
        self.send(data).await;
        self.reply().await
    }
}

/// One message from s@example.test to r@inside.test over a new
/// connection (EHLO, then the transaction): `headers` (each line ending in
/// CRLF) and `Subject: <subject>` above a one-line body. The final reply.
pub async fn send_subject(addr: SocketAddr, headers: &str, subject: &str) -> String {
    let mut c = RawClient::connect(addr).await;
    let r = c.cmd("EHLO client.test").await;
    assert!(r.starts_with("250"), "{r}");
    let data = format!("{headers}Subject: {subject}\r\n\r\n{subject}\r\n.\r\n");
    c.transaction("<s@example.test>", &["<r@inside.test>"], data.as_bytes())
        .await
}

/// Length of the first complete reply in `buf`, if any.
pub fn complete_reply(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(i) = buf[start..].windows(2).position(|w| w == b"\r\n") {
        let line = &buf[start..start + i];
        start += i + 2;
        if line.len() < 4 || line[3] == b' ' {
            return Some(start);
        }
    }
    None
}

/// Sends `data` from `sender@example.test` to `user@example.test` until a
/// 250, retrying on 4xx and on dropped connections, as a real client
/// would. Returns the 250 reply; panics on a 5xx (bound it with a timeout).
pub async fn send_until_accepted(addr: SocketAddr, data: String) -> String {
    loop {
        match try_send(addr, "sender@example.test", "user@example.test", &data).await {
            Ok(r) => return r,
            Err(e) if e.starts_with('5') => panic!("permanent refusal: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Connects to `addr` every 50 ms until `stop`; counts the connections
/// refused (a listener that was not there).
pub fn start_prober(
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::Ordering;
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = refused.clone();
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            match TcpStream::connect(addr).await {
                Ok(s) => drop(s),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    r.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    refused
}
