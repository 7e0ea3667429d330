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
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::transport::smtp::Error as SmtpError;
use postern_core::{Address, Outcome, Reason};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How to connect and how long to wait.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// Our EHLO name.
    pub helo: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub starttls: bool,
}

/// An open connection to one next-hop address.
pub struct Conn {
    inner: AsyncSmtpConnection,
    pub addr: SocketAddr,
    /// Host name the address belongs to, for SNI and DSNs.
    pub host: String,
    /// Transactions completed on this connection.
    pub uses: usize,
    /// When it was last returned to the pool.
    pub idle_since: Instant,
}

impl Conn {
    pub fn is_encrypted(&self) -> bool {
        self.inner.is_encrypted()
    }

    /// True when the connection can take another transaction.
    pub fn is_usable(&self) -> bool {
        !self.inner.has_broken()
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
        let fut =
            AsyncSmtpConnection::connect_tokio1(addr, Some(p.connect_timeout), &id, None, None);
        match tokio::time::timeout(p.connect_timeout + p.command_timeout, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(Reason {
                code: 451,
                status: "4.4.1".into(),
                text: format!("cannot connect to {addr}: {e}"),
                remote: Some(host.to_string()),
            }),
            Err(_) => Err(timed_out("greeting", host)),
        }
    };
    let mut inner = open().await?;
    if p.starttls && inner.server_info().supports_feature(Extension::StartTls) {
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
    }
    Ok(Conn {
        inner,
        addr,
        host: host.to_string(),
        uses: 0,
        idle_since: Instant::now(),
    })
}

/// The message to send on a connection.
pub struct Message<'a> {
    pub sender: Option<&'a Address>,
    pub recipients: &'a [&'a Address],
    pub body: &'a [u8],
    pub eight_bit: bool,
}

/// Runs one transaction. `Ok` holds one outcome per recipient, in order.
/// `Err` means the connection failed before any recipient got an answer
/// that counts, so the caller may try another host.
pub async fn transact(
    conn: &mut Conn,
    msg: &Message<'_>,
    timeout: Duration,
) -> Result<Vec<Outcome>, Reason> {
    let host = conn.host.clone();
    let eight_bit = msg.eight_bit || !msg.body.is_ascii();
    let info = conn.inner.server_info();
    if eight_bit && !info.supports_feature(Extension::EightBitMime) {
        // Downgrade belongs to the conversion core; until it runs here,
        // refuse rather than send 8-bit data to a 7-bit hop (RFC 6152).
        let r = Reason {
            code: 554,
            status: "5.6.3".into(),
            text: "8-bit message and the next hop does not offer 8BITMIME".into(),
            remote: Some(host),
        };
        return Ok(vec![Outcome::Permanent(r); msg.recipients.len()]);
    }
    let mut mail = format!(
        "MAIL FROM:<{}>",
        msg.sender.map(|a| a.to_string()).unwrap_or_default()
    );
    if eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    let n = msg.recipients.len();
    match tokio::time::timeout(timeout, conn.inner.command(Raw(mail))).await {
        Err(_) => return Err(timed_out("MAIL reply", &host)),
        Ok(Err(e)) if e.status().is_none() => return Err(reason_of(&e, &host)),
        Ok(Err(e)) => return Ok(vec![outcome_of(&e, &host); n]),
        Ok(Ok(_)) => {}
    }
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    for (i, rcpt) in msg.recipients.iter().enumerate() {
        match tokio::time::timeout(
            timeout,
            conn.inner.command(Raw(format!("RCPT TO:<{rcpt}>"))),
        )
        .await
        {
            Err(_) => return Err(timed_out("RCPT reply", &host)),
            Ok(Err(e)) if e.status().is_none() => return Err(reason_of(&e, &host)),
            Ok(Err(e)) => outcomes[i] = Some(outcome_of(&e, &host)),
            Ok(Ok(_)) => {}
        }
    }
    if outcomes.iter().all(|o| o.is_some()) {
        let _ = conn.reset(timeout).await;
        return Ok(outcomes.into_iter().flatten().collect());
    }
    let data_result =
        match tokio::time::timeout(timeout, conn.inner.command(Raw("DATA".into()))).await {
            Err(_) => return Err(timed_out("DATA reply", &host)),
            Ok(Err(e)) if e.status().is_none() => return Err(reason_of(&e, &host)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => {
                // RFC 5321 4.5.3.2.6: allow 10 minutes for the final reply.
                match tokio::time::timeout(timeout * 2, conn.inner.message(msg.body)).await {
                    Err(_) => return Err(timed_out("end of data reply", &host)),
                    Ok(Err(e)) if e.status().is_none() => return Err(reason_of(&e, &host)),
                    Ok(r) => r,
                }
            }
        };
    let final_outcome = match data_result {
        Ok(resp) => {
            let text = resp.message().collect::<Vec<_>>().join(" ");
            let (status, text) = split_status(&text, 250);
            Outcome::Delivered(Reason {
                code: 250,
                status,
                text,
                remote: Some(host.clone()),
            })
        }
        Err(e) => outcome_of(&e, &host),
    };
    conn.uses += 1;
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| final_outcome.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
