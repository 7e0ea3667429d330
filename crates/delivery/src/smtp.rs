//! One outbound SMTP connection and transaction, over lettre's
//! connection-level API.
//!
//! [`connect`] opens a connection (greeting, EHLO) and upgrades it with
//! STARTTLS when offered and enabled (opportunistic: certificates are not
//! verified, as between MX hosts without DANE or MTA-STS; if the upgrade
//! fails the connection is reopened in plain text). [`transact`] runs MAIL,
//! RCPT per recipient and DATA, and classifies the result per recipient
//! where it happens: 2xx delivered, 4xx temporary, 5xx permanent. Commands are
//! written by Postern itself (lettre only frames and reads replies), so any
//! syntactically valid RFC 5321 path is sent as received.

use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::Error as SmtpError;
use postern_core::{Address, Outcome, Reason};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How to connect and how long to wait.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// Our EHLO name.
    pub helo: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub starttls: bool,
}

/// What the next hop offers, from our own EHLO (lettre's summary omits
/// PIPELINING, SIZE and DSN).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub dsn: bool,
    /// Declared SIZE limit, 0 when none.
    pub size: u64,
}

impl Extensions {
    /// Parses the lines of an EHLO reply (the first line is the greeting).
    pub fn parse<'a>(lines: impl Iterator<Item = &'a str>) -> Extensions {
        let mut e = Extensions::default();
        for line in lines.skip(1) {
            let mut words = line.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => e.pipelining = true,
                "8BITMIME" => e.eight_bit_mime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "STARTTLS" => e.starttls = true,
                "DSN" => e.dsn = true,
                "SIZE" => e.size = words.next().and_then(|n| n.parse().ok()).unwrap_or(0),
                _ => {}
            }
        }
        e
    }
}

/// An open connection to one next-hop address.
pub struct Conn {
    inner: AsyncSmtpConnection,
    /// Extensions the server offered (after STARTTLS, the second EHLO's).
    pub ext: Extensions,
    pub addr: SocketAddr,
    /// Host name the address belongs to, for SNI and DSNs.
    pub host: String,
    /// Transactions completed on this connection.
    pub uses: usize,
    /// When it was last returned to the pool.
    pub idle_since: Instant,
    /// False when the server may still be inside a transaction we could not
    /// reset: such a connection is closed, never pooled.
    clean: bool,
}

impl Conn {
    pub fn is_encrypted(&self) -> bool {
        self.inner.is_encrypted()
    }

    /// True when the connection can take another transaction.
    pub fn is_usable(&self) -> bool {
        self.clean && !self.inner.has_broken()
    }

    /// Checks a pooled connection is alive and resets its state.
    pub async fn reset(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.inner.command(Raw("RSET".into()))).await,
            Ok(Ok(_))
        )
    }

    pub async fn quit(mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.quit()).await;
    }
}

/// A command line written verbatim (lettre adds nothing).
struct Raw(String);

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// Turns a lettre error into a typed reason: code, enhanced status, text.
fn reason_of(e: &SmtpError, host: &str) -> Reason {
    let code = e
        .status()
        .and_then(|c| c.to_string().parse::<u16>().ok())
        .unwrap_or(451);
    let text = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    let (status, text) = split_status(&text, code);
    Reason {
        code,
        status,
        text,
        remote: Some(host.to_string()),
    }
}

/// Splits a leading enhanced status code off reply text, or derives one.
fn split_status(text: &str, code: u16) -> (String, String) {
    // `first` is cut off the front of `text` below: no leading whitespace.
    let text = text.trim_start();
    let first = text.split_whitespace().next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    let looks_like = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if looks_like {
        (first.to_string(), text[first.len()..].trim().to_string())
    } else {
        (format!("{}.0.0", code / 100), text.trim().to_string())
    }
}

fn outcome_of(e: &SmtpError, host: &str) -> Outcome {
    let r = reason_of(e, host);
    if e.is_permanent() {
        Outcome::Permanent(r)
    } else {
        Outcome::Temporary(Reason {
            code: if r.code >= 400 && r.code < 500 {
                r.code
            } else {
                451
            },
            status: if r.status.starts_with('4') {
                r.status
            } else {
                "4.4.2".into()
            },
            ..r
        })
    }
}

fn timed_out(what: &str, host: &str) -> Reason {
    Reason {
        code: 451,
        status: "4.4.2".into(),
        text: format!("timeout waiting for {what}"),
        remote: Some(host.to_string()),
    }
}

/// Opens a connection; `Err` is a temporary reason (try the next address).
pub async fn connect(host: &str, addr: SocketAddr, p: &ClientParams) -> Result<Conn, Reason> {
    let id = ClientId::Domain(p.helo.clone());
    let open = || async {
        let connect_failed = |e: String| Reason {
            code: 451,
            status: "4.4.1".into(),
            text: format!("cannot connect to {addr}: {e}"),
            remote: Some(host.to_string()),
        };
        let tcp = match tokio::time::timeout(p.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(connect_failed(e.to_string())),
            Err(_) => return Err(connect_failed("connect timeout".into())),
        };
        // Without this, Nagle holds the end-of-data dot behind the body
        // until the peer's delayed ACK: 40 ms per message.
        let _ = tcp.set_nodelay(true);
        let fut = AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &id);
        match tokio::time::timeout(p.command_timeout, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(connect_failed(e.to_string())),
            Err(_) => Err(timed_out("greeting", host)),
        }
    };
    let mut inner = open().await?;
    let mut ext = ehlo(&mut inner, &p.helo, host, p.command_timeout).await?;
    if p.starttls && ext.starttls {
        let upgraded = match TlsParameters::builder(host.to_string())
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true)
            .build_rustls()
        {
            Ok(tls) => matches!(
                tokio::time::timeout(p.command_timeout, inner.starttls(tls, &id)).await,
                Ok(Ok(()))
            ),
            Err(_) => false,
        };
        if !upgraded {
            tracing::info!(%host, %addr, "STARTTLS failed; retrying without TLS");
            inner = open().await?;
        }
        ext = ehlo(&mut inner, &p.helo, host, p.command_timeout).await?;
    }
    Ok(Conn {
        inner,
        ext,
        addr,
        host: host.to_string(),
        uses: 0,
        idle_since: Instant::now(),
        clean: true,
    })
}

/// Sends our own EHLO and parses the extensions offered.
async fn ehlo(
    inner: &mut AsyncSmtpConnection,
    helo: &str,
    host: &str,
    timeout: Duration,
) -> Result<Extensions, Reason> {
    match tokio::time::timeout(timeout, inner.command(Raw(format!("EHLO {helo}")))).await {
        Ok(Ok(r)) => Ok(Extensions::parse(r.message())),
        Ok(Err(e)) => Err(Reason {
            code: 451,
            status: "4.4.0".into(),
            ..reason_of(&e, host)
        }),
        Err(_) => Err(timed_out("EHLO reply", host)),
    }
}

/// Converts an 8-bit message to 7 bit (the conversion core's job; given
/// to delivery by the binary).
pub type Downgrade = dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync;

/// The message to send on a connection.
pub struct Message<'a> {
    pub sender: Option<&'a Address>,
    pub recipients: &'a [&'a Address],
    pub body: &'a [u8],
    pub eight_bit: bool,
    /// Used when the hop lacks 8BITMIME.
    pub downgrade: &'a Downgrade,
    /// The client declared SMTPUTF8 (UTF-8 headers may be present).
    pub smtputf8: bool,
    /// RFC 3461 MAIL parameters (RET, ENVID), sent to hops offering DSN.
    pub dsn_mail: String,
    /// RFC 3461 RCPT parameters (NOTIFY, ORCPT), one per recipient.
    pub dsn_rcpt: &'a [String],
}

/// Runs one transaction. `Ok` holds one outcome per recipient, in order.
/// `Err` means the connection failed before any recipient got an answer
/// that counts, so the caller may try another host. With PIPELINING
/// (RFC 2920) MAIL, every RCPT and DATA go in one write.
pub async fn transact(
    conn: &mut Conn,
    msg: &Message<'_>,
    timeout: Duration,
) -> Result<Vec<Outcome>, Reason> {
    let host = conn.host.clone();
    let n = msg.recipients.len();
    let perm = |code: u16, status: &str, text: String| {
        Outcome::Permanent(Reason {
            code,
            status: status.into(),
            text,
            remote: Some(host.clone()),
        })
    };
    let utf8 =
        msg.sender.is_some_and(|a| !a.is_ascii()) || msg.recipients.iter().any(|a| !a.is_ascii());
    if utf8 && !conn.ext.smtputf8 {
        // RFC 6531 3.2: an internationalised envelope cannot be downgraded.
        let text = "message needs SMTPUTF8 and the next hop does not offer it".to_string();
        return Ok(vec![perm(553, "5.6.7", text); n]);
    }
    let mut body = std::borrow::Cow::Borrowed(msg.body);
    let mut eight_bit = msg.eight_bit || !body.is_ascii();
    // UTF-8 header text (RFC 6532) may only go to an SMTPUTF8 hop; for any
    // other, the conversion encodes it as RFC 2047 words.
    let utf8_headers = msg.smtputf8 && !conn.ext.smtputf8 && !body.is_ascii();
    if eight_bit && (!conn.ext.eight_bit_mime || utf8_headers) {
        // RFC 6152: convert to 7 bit for a hop without 8BITMIME.
        match (msg.downgrade)(msg.body) {
            Ok(seven) => {
                body = std::borrow::Cow::Owned(seven);
                eight_bit = false;
            }
            Err(e) => {
                let text = format!("cannot convert to 7 bit for a hop without 8BITMIME: {e}");
                return Ok(vec![perm(554, "5.6.3", text); n]);
            }
        }
    }
    let mut mail = format!(
        "MAIL FROM:<{}>",
        msg.sender.map(|a| a.to_string()).unwrap_or_default()
    );
    if eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if (utf8 || msg.smtputf8) && conn.ext.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if conn.ext.size > 0 {
        mail.push_str(&format!(" SIZE={}", body.len()));
    }
    if conn.ext.dsn && !msg.dsn_mail.is_empty() {
        mail.push_str(&msg.dsn_mail);
    }
    let mut lines = vec![mail];
    lines.extend(msg.recipients.iter().enumerate().map(|(i, r)| {
        let params = msg
            .dsn_rcpt
            .get(i)
            .filter(|_| conn.ext.dsn)
            .map(|p| p.as_str())
            .unwrap_or("");
        format!("RCPT TO:<{r}>{params}")
    }));
    lines.push("DATA".into());
    // One reply per line, read in order; Err(reason) = connection failure.
    let mut replies = Vec::with_capacity(lines.len());
    if conn.ext.pipelining {
        let first =
            tokio::time::timeout(timeout, conn.inner.command(Raw(lines.join("\r\n")))).await;
        replies.push(reply_or_fail(first, &host)?);
        for _ in 1..lines.len() {
            let r = tokio::time::timeout(timeout, conn.inner.read_response()).await;
            replies.push(reply_or_fail(r, &host)?);
        }
    } else {
        let last = lines.len() - 1;
        for (i, line) in lines.into_iter().enumerate() {
            if i == last && !replies[1..].iter().any(|r| r.is_ok()) {
                break; // no recipient accepted: no DATA
            }
            let r = tokio::time::timeout(timeout, conn.inner.command(Raw(line))).await;
            let r = reply_or_fail(r, &host)?;
            let failed = r.is_err();
            replies.push(r);
            if failed && replies.len() == 1 {
                break; // MAIL refused: no point in RCPT or DATA
            }
        }
    }
    if let Err(e) = &replies[0] {
        let o = outcome_of(e, &host);
        if replies.len() > n + 1 && replies[n + 1].is_ok() {
            let _ = conn.inner.message(b"").await;
        }
        return Ok(vec![o; n]);
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..n)
        .map(|i| match replies.get(i + 1) {
            Some(Err(e)) => Some(outcome_of(e, &host)),
            _ => None,
        })
        .collect();
    let data_ok = matches!(replies.get(n + 1), Some(Ok(_)));
    if outcomes.iter().all(|o| o.is_some()) {
        if data_ok {
            // A server that said 354 with no recipients gets an empty message.
            let _ = conn.inner.message(b"").await;
        } else {
            // MAIL was accepted and no DATA followed: the transaction is
            // still open on the server, and the next one would be "nested".
            conn.clean = conn.reset(timeout).await;
        }
        return Ok(outcomes.into_iter().flatten().collect());
    }
    let final_outcome = match replies.get(n + 1) {
        Some(Ok(_)) => {
            // RFC 5321 4.5.3.2.6: allow 10 minutes for the final reply.
            match tokio::time::timeout(timeout.saturating_mul(2), conn.inner.message(&body)).await {
                Err(_) => return Err(timed_out("end of data reply", &host)),
                Ok(Err(e)) if e.status().is_none() => return Err(reason_of(&e, &host)),
                Ok(Err(e)) => outcome_of(&e, &host),
                Ok(Ok(resp)) => {
                    let text = resp.message().collect::<Vec<_>>().join(" ");
                    let (status, text) = split_status(&text, 250);
                    Outcome::Delivered(Reason {
                        code: 250,
                        status,
                        text,
                        remote: Some(host.clone()),
                    })
                }
            }
        }
        Some(Err(e)) => outcome_of(e, &host),
        None => Outcome::Temporary(Reason::local(451, "4.4.2", "no reply to DATA")),
    };
    conn.uses += 1;
    let wants_success = |i: usize| msg.dsn_rcpt.get(i).is_some_and(|p| p.contains("SUCCESS"));
    for (i, o) in outcomes.iter_mut().enumerate() {
        o.get_or_insert_with(|| match &final_outcome {
            Outcome::Delivered(r) if !conn.ext.dsn && wants_success(i) => {
                Outcome::Relayed(r.clone())
            }
            other => other.clone(),
        });
    }
    Ok(outcomes.into_iter().flatten().collect())
}

type Reply = Result<lettre::transport::smtp::response::Response, SmtpError>;

/// A reply (positive or negative), or the connection failure.
fn reply_or_fail(
    r: Result<Reply, tokio::time::error::Elapsed>,
    host: &str,
) -> Result<Reply, Reason> {
    match r {
        Err(_) => Err(timed_out("reply", host)),
        Ok(Err(e)) if e.status().is_none() => Err(reason_of(&e, host)),
        Ok(r) => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        let e = Extensions::parse(
            [
                "mx greets you",
                "PIPELINING",
                "SIZE 1000",
                "8bitmime",
                "DSN",
                "STARTTLS",
            ]
            .into_iter(),
        );
        assert!(e.pipelining && e.eight_bit_mime && e.dsn && e.starttls && !e.smtputf8);
        assert_eq!(e.size, 1000);
    }

    #[test]
    fn status_split() {
        assert_eq!(
            split_status("5.1.1 no such user", 550),
            ("5.1.1".to_string(), "no such user".to_string())
        );
        assert_eq!(
            split_status("mailbox full", 452),
            ("4.0.0".to_string(), "mailbox full".to_string())
        );
        assert_eq!(split_status("", 421).0, "4.0.0");
        // Leading whitespace from a remote server, ASCII or not.
        assert_eq!(
            split_status("  5.1.1 no user", 550),
            ("5.1.1".to_string(), "no user".to_string())
        );
        assert_eq!(split_status("\u{3000}\u{3000}5.1.1 x", 550).1, "x");
    }
}
