//! A real SMTP server on loopback that records what it receives.
//!
//! Replies to RCPT are scripted by the recipient's local part:
//! `reject*` → 550 5.1.1; `tempfail*` → 451 4.2.0 for the first attempt,
//! then accepted. It offers PIPELINING, 8BITMIME (unless started with
//! [`Sink::start_7bit`]) and SIZE, and un-stuffs dots like any server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One received message.
#[derive(Debug, Clone)]
pub struct SinkMsg {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// It came over TLS (after STARTTLS).
    pub tls: bool,
    /// The MAIL command line as sent (with its parameters).
    pub mail: String,
    /// The accepted RCPT command lines as sent.
    pub rcpts: Vec<String>,
}

/// The TLS server configuration a sink offers STARTTLS with (none: no
/// STARTTLS); shared so a test can change it while the sink runs.
type TlsSlot = Arc<Mutex<Option<Arc<rustls::ServerConfig>>>>;

/// A rustls server configuration from PEM files (chain first the leaf).
pub fn server_config(chain: &std::path::Path, key: &std::path::Path) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    pub msgs: Arc<Mutex<Vec<SinkMsg>>>,
    /// RCPT attempts seen per recipient.
    seen: Arc<Mutex<HashMap<String, u32>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
    /// Every session's task, for [`Sink::stop`].
    sessions: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// What STARTTLS offers (none: not offered).
    tls: TlsSlot,
}

impl Drop for Sink {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl Sink {
    /// Starts a sink on `bind` (e.g. "127.0.0.1:0").
    pub async fn start(bind: &str) -> Sink {
        Self::start_with(bind, true).await
    }

    /// A sink that does not offer 8BITMIME (a 7-bit hop).
    pub async fn start_7bit(bind: &str) -> Sink {
        Self::start_with(bind, false).await
    }

    /// A sink offering STARTTLS with the certificate chain and key given.
    pub async fn start_tls(bind: &str, chain: &std::path::Path, key: &std::path::Path) -> Sink {
        let s = Self::start_with(bind, true).await;
        s.set_tls(Some(server_config(chain, key)));
        s
    }

    /// Changes what STARTTLS offers from now on (`None`: no STARTTLS).
    pub fn set_tls(&self, config: Option<Arc<rustls::ServerConfig>>) {
        *self.tls.lock().unwrap() = config;
    }

    /// A sink that offers DSN (RFC 3461), so the parameters of MAIL and
    /// RCPT reach it (recorded in [`SinkMsg::mail`] and `rcpts`).
    pub async fn start_dsn(bind: &str) -> Sink {
        Self::start_full(bind, true, true).await
    }

    async fn start_with(bind: &str, eight_bit: bool) -> Sink {
        Self::start_full(bind, eight_bit, false).await
    }

    async fn start_full(bind: &str, eight_bit: bool, dsn: bool) -> Sink {
        let l = TcpListener::bind(bind).await.unwrap();
        let addr = l.local_addr().unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (m, s) = (msgs.clone(), seen.clone());
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let all = sessions.clone();
        let tls: TlsSlot = Arc::new(Mutex::new(None));
        let tls_now = tls.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let (m, s) = (m.clone(), s.clone());
                let offer = tls_now.lock().unwrap().clone();
                let t = tokio::spawn(async move {
                    let _ = session(sock, m, s, eight_bit, offer, dsn).await;
                });
                all.lock().unwrap().push(t.abort_handle());
            }
        });
        Sink {
            addr,
            msgs,
            seen,
            task: Arc::new(task),
            sessions,
            tls,
        }
    }

    /// Stops as a restarting server does: the listener closes and every
    /// open connection is dropped.
    pub fn stop(&self) {
        self.task.abort();
        for s in self.sessions.lock().unwrap().drain(..) {
            s.abort();
        }
    }

    /// [`Sink::stop`], then a new sink on the same address (once the old
    /// listener is gone), with nothing received yet.
    pub async fn restart(&self) -> Sink {
        self.stop();
        for _ in 0..100 {
            if let Ok(l) = std::net::TcpListener::bind(self.addr) {
                drop(l);
                return Self::start(&self.addr.to_string()).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{} still in use after the sink stopped", self.addr);
    }

    pub fn count(&self) -> usize {
        self.msgs.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<SinkMsg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Messages whose data contains `needle`.
    pub fn with(&self, needle: &str) -> Vec<SinkMsg> {
        self.all()
            .into_iter()
            .filter(|m| m.data.contains(needle))
            .collect()
    }
}

/// What a session reads from and writes to: TCP, or TLS after STARTTLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn session(
    sock: tokio::net::TcpStream,
    msgs: Arc<Mutex<Vec<SinkMsg>>>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    eight_bit: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
    offer_dsn: bool,
) -> std::io::Result<()> {
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(sock));
    let mut secure = false;
    io.write_all(b"220 sink.test ESMTP test sink\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::<String>::new());
    let (mut mail, mut rcpts) = (String::new(), Vec::<String>::new());
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let dsn = if offer_dsn { "250-DSN\r\n" } else { "" };
        let starttls = if tls.is_some() && !secure {
            "250-STARTTLS\r\n"
        } else {
            ""
        };
        let reply: String = if upper.starts_with("EHLO") && eight_bit {
            format!("250-sink.test\r\n{starttls}250-PIPELINING\r\n250-8BITMIME\r\n{dsn}250 SIZE 100000000\r\n")
        } else if upper.starts_with("EHLO") {
            format!("250-sink.test\r\n{starttls}250-PIPELINING\r\n250 SIZE 100000000\r\n")
        } else if upper == "STARTTLS" && !starttls.is_empty() {
            io.write_all(b"220 2.0.0 go ahead\r\n").await?;
            let Some(config) = tls.clone() else {
                return Ok(());
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            // Nothing may follow STARTTLS before the handshake.
            let plain = io.into_inner();
            let Ok(stream) = acceptor.accept(plain).await else {
                return Ok(());
            };
            io = BufReader::new(Box::new(stream));
            secure = true;
            from.clear();
            to.clear();
            continue;
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            "250 ok\r\n".into()
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            "250 reset\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = path(&cmd[10..]);
            mail = cmd.clone();
            to.clear();
            rcpts.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let before = to.len();
            let r = rcpt_reply(&seen, path(&cmd[8..]), &mut to);
            if to.len() > before {
                rcpts.push(cmd.clone());
            }
            r
        } else if upper == "DATA" {
            if to.is_empty() {
                "554 no valid recipients\r\n".into()
            } else {
                io.write_all(b"354 go ahead\r\n").await?;
                let Some(data) = receive_data(&mut io, eight_bit).await? else {
                    return Ok(());
                };
                msgs.lock().unwrap().push(SinkMsg {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                    tls: secure,
                    mail: std::mem::take(&mut mail),
                    rcpts: std::mem::take(&mut rcpts),
                });
                "250 2.0.0 stored\r\n".into()
            }
        } else if upper.starts_with("QUIT") {
            io.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.1 not here\r\n".into()
        };
        io.write_all(reply.as_bytes()).await?;
    }
}

/// The scripted reply to `RCPT TO:<rcpt>` (see the module header); an
/// accepted recipient joins `to`.
fn rcpt_reply(seen: &Mutex<HashMap<String, u32>>, rcpt: String, to: &mut Vec<String>) -> String {
    let n = {
        let mut s = seen.lock().unwrap();
        let n = s.entry(rcpt.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let local = rcpt.split('@').next().unwrap_or("").to_string();
    if local.starts_with("reject") {
        "550 5.1.1 no such user here\r\n".into()
    } else if local.starts_with("tempfail") && n == 1 {
        "451 4.2.0 try again later\r\n".into()
    } else {
        to.push(rcpt);
        "250 2.1.5 ok\r\n".into()
    }
}

/// The message after `354`, up to the lone dot, dots un-stuffed; `None`
/// when the client hangs up first. A 7-bit sink marks 8-bit lines.
async fn receive_data(
    r: &mut (impl tokio::io::AsyncBufRead + Unpin),
    eight_bit: bool,
) -> std::io::Result<Option<String>> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if line == ".\r\n" {
            return Ok(Some(data));
        }
        if !eight_bit && !line.is_ascii() {
            data.push_str("!!8-BIT DATA TO A 7-BIT SINK!!");
        }
        let l = line.strip_prefix('.').unwrap_or(&line);
        data.push_str(l);
    }
}

/// The address inside `<...>`, ignoring parameters.
fn path(s: &str) -> String {
    let s = s.trim();
    let inner = s.strip_prefix('<').unwrap_or(s);
    inner.split('>').next().unwrap_or("").to_string()
}
