//! One outbound SMTP connection and transaction: the thin I/O shell over
//! lettre's connection-level API.
//!
//! [`connect`] opens a connection (greeting, EHLO) and, unless the
//! connection's [`Require`] is plain text, upgrades it with STARTTLS done
//! here (`upgrade`): the command, then a tokio-rustls handshake over the
//! stream taken back from lettre's slot (bytes the server sent after its 220
//! are dropped with lettre's buffer), then the chain checked against the
//! requirement (WebPKI or DANE, `crate::tls`) before anything else is sent.
//! A requirement that is not met is a [`Failed`] with its TLS failure
//! (451 4.7.5); under `may` a failed upgrade reopens the connection in plain
//! text. [`transact`] carries one
//! transaction's bytes and decides nothing itself: [`plan`] says whether and
//! in what form the message can go (converting it to 7 bit through the
//! binary's [`Downgrade`] when needed) and which commands to send, all in one
//! write with PIPELINING or one at a time; [`reply`] says what the replies
//! mean per recipient and how to leave the connection (send the body, an
//! empty message, or RSET). Commands are written by Postern itself (lettre
//! only frames and reads replies), so any syntactically valid RFC 5321 path
//! is sent as received. lettre reads from a [`bounded`] stream: before each
//! step the shell says how many replies it awaits, and a next hop that sends
//! more than `delivery.max_reply_size` octets per reply (an endless line)
//! fails the read instead of growing our memory.
//!
//! Failure modes: `Err(Reason)` (temporary) when the connection failed,
//! timed out or sent an over-long reply before an answer that counts; the
//! caller tries the next address. The one permanent `Err` is a next hop
//! that answers EHLO with our own host name: a loop (5.4.6).

mod bounded;
mod plan;
mod reply;

pub(crate) use plan::{
    mail_dsn_params, notify_success, rcpt_dsn_params, untrusted_mail_params, untrusted_rcpt_params,
    Message,
};

use crate::myself::{greeted_as_me, greeted_reason};
use crate::tls::{Checker, Require, TlsFailure};
use bounded::{Bounded, ReplyBudget, Wire};
// The stream type is public but deprecated; it is the one way to put
// TLS done by us under lettre's connection.
#[allow(deprecated)]
use lettre::transport::smtp::client::{AsyncNetworkStream, AsyncSmtpConnection};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::Error as SmtpError;
use plan::{BodyForm, Extensions, Plan};
use postern_core::{Outcome, Reason};
use reply::{Cleanup, Next, Reply};
use rustls::pki_types::{CertificateDer, ServerName};
use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;

/// How to connect and how long to wait.
#[derive(Debug, Clone)]
pub(crate) struct ClientParams {
    /// Our EHLO name.
    pub(crate) helo: String,
    /// TCP connect timeout.
    pub(crate) connect_timeout: Duration,
    /// Reply timeout per command (twice that for the end of data).
    pub(crate) command_timeout: Duration,
    /// Upgrade with STARTTLS when the hop offers it.
    pub(crate) starttls: bool,
    /// Octets a next hop may send per awaited reply
    /// (`delivery.max_reply_size`).
    pub(crate) max_reply_size: usize,
}

/// Replies awaited by the STARTTLS step: the reply to STARTTLS, the TLS
/// handshake's server flight (rustls bounds each of its messages at 64 KiB)
/// and the reply to the EHLO that follows, in units of
/// `delivery.max_reply_size`.
const STARTTLS_REPLIES: usize = 4;

/// Converts an 8-bit message to 7 bit for a hop without 8BITMIME (the
/// conversion core's job; given to delivery by the binary).
pub type Downgrade = dyn Fn(&[u8]) -> Result<Vec<u8>, DowngradeError> + Send + Sync;

/// Why a message could not be converted to 7 bit. Its text ends every
/// recipient's permanent 5.6.3 reason.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct DowngradeError {
    /// Why, in words.
    reason: String,
    /// The conversion's own error, when it has one.
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DowngradeError {
    /// A failure explained by `reason` alone.
    pub fn new(reason: impl Into<String>) -> Self {
        DowngradeError {
            reason: reason.into(),
            source: None,
        }
    }

    /// A failure explained by `reason`, caused by `source`.
    pub fn with_source(
        reason: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        DowngradeError {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }
}

/// An open connection to one next-hop address.
pub(crate) struct Conn {
    inner: AsyncSmtpConnection,
    /// What the next hop may send for the replies of the current step; set
    /// before each command, spent by the stream lettre reads from.
    budget: Arc<ReplyBudget>,
    /// Extensions the server offered (after STARTTLS, the second EHLO's):
    /// what the plan is made from.
    ext: Extensions,
    /// The address connected to: the pool's key.
    pub(crate) addr: SocketAddr,
    /// Host name the address belongs to, for SNI and DSNs.
    pub(crate) host: String,
    /// Transactions completed on this connection (the pool closes it at its
    /// limit).
    pub(crate) uses: usize,
    /// When it was last returned to the pool.
    pub(crate) idle_since: Instant,
    /// False when the server may still be inside a transaction we could not
    /// reset: such a connection is closed, never pooled.
    clean: bool,
    /// True once the current transaction's message text was (being)
    /// written: from then on a failure may follow the next hop's
    /// acceptance, so the message is not sent again at once.
    pub(crate) text_sent: bool,
    /// What TLS the connection got.
    pub(crate) tls: TlsState,
    /// The requirement it was made under ([`Require::tag`]): the pool only
    /// hands it to deliveries with the same one.
    pub(crate) tag: String,
}

impl Conn {
    /// True when STARTTLS was negotiated.
    pub(crate) fn is_encrypted(&self) -> bool {
        self.tls.version.is_some()
    }

    /// True when the connection can take another transaction.
    pub(crate) fn is_usable(&self) -> bool {
        self.clean && !self.inner.has_broken() && !self.budget.is_over()
    }

    /// Checks a pooled connection is alive and resets its state.
    pub(crate) async fn reset(&mut self, timeout: Duration) -> bool {
        self.budget.expect(1);
        matches!(
            tokio::time::timeout(timeout, self.inner.command(Raw("RSET"))).await,
            Ok(Ok(_))
        )
    }

    /// Says QUIT (waiting at most `timeout` for the reply) and closes.
    pub(crate) async fn quit(mut self, timeout: Duration) {
        self.budget.expect(1);
        let _ = tokio::time::timeout(timeout, self.inner.quit()).await;
    }

    /// Ends a DATA nobody is left for with an empty message (waiting at
    /// most `timeout`); false when no reply came back, so the connection
    /// may be out of step.
    async fn empty_message(&mut self, timeout: Duration) -> bool {
        self.budget.expect(1);
        match tokio::time::timeout(timeout, self.inner.message(b"")).await {
            Ok(Ok(_)) => true,
            // A refusal is a reply too: the server is back between
            // transactions.
            Ok(Err(e)) => negative(&e).is_some(),
            Err(_) => false,
        }
    }
}

/// A command line written verbatim (lettre adds nothing).
struct Raw<'a>(&'a str);

impl fmt::Display for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// Why [`connect`] gave no connection: the reason for the recipients and,
/// when the TLS policy was not met, which failure it was (for TLS-RPT and
/// metrics).
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub(crate) reason: Reason,
    pub(crate) tls: Option<(TlsFailure, String)>,
}

impl From<Reason> for Failed {
    fn from(reason: Reason) -> Failed {
        Failed { reason, tls: None }
    }
}

/// The temporary 4.7.5 reason of a connection that did not meet its TLS
/// policy (RFC 3463 4.7.5: cryptographic failure), naming the failure.
fn policy_failed(host: &str, addr: SocketAddr, policy: &str, f: TlsFailure, why: String) -> Failed {
    let text = format!(
        "TLS policy {policy} not met by {host} [{}]: {} ({why}); will retry",
        addr.ip(),
        f.result_type()
    );
    let mut reason = Reason::local(451, "4.7.5", text);
    // The host answered (its greeting and EHLO): the tracking line's hop.
    reason.remote = Some(host.to_string());
    Failed {
        reason,
        tls: Some((f, why)),
    }
}

/// What TLS a new connection got.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsState {
    /// The negotiated version ("TLSv1.3"); `None`: plain text.
    pub(crate) version: Option<&'static str>,
    /// A failure that was reported but not enforced (MTA-STS testing, or a
    /// failed opportunistic handshake).
    pub(crate) noted: Option<(TlsFailure, String)>,
}

/// Opens a connection meeting `require` (checked with `checker`; `policy`
/// names it in reasons). `Err` is a temporary reason (try the next address).
pub(crate) async fn connect(
    host: &str,
    addr: SocketAddr,
    p: &ClientParams,
    require: &Require,
    policy: &str,
    checker: &Checker,
) -> Result<Conn, Failed> {
    let id = ClientId::Domain(p.helo.clone());
    let (mut inner, mut budget, mut slot) = open(host, addr, p, &id).await?;
    let mut ext = ehlo(&mut inner, &budget, &p.helo, host, p.command_timeout).await?;
    let mut state = TlsState::default();
    let fail = |f: TlsFailure, why: String| policy_failed(host, addr, policy, f, why);
    if !matches!(require, Require::Plain) {
        if !ext.starttls {
            let why = "STARTTLS not offered".to_string();
            if require.mandatory() {
                quit_now(inner, &budget, p.command_timeout).await;
                return Err(fail(TlsFailure::StartTlsNotSupported, why));
            }
            if matches!(require, Require::Pki { .. }) {
                state.noted = Some((TlsFailure::StartTlsNotSupported, why));
            }
        } else {
            match upgrade(&mut inner, &budget, &slot, host, p, checker).await {
                Ok((version, chain)) => {
                    state.version = Some(version);
                    if let Err((f, why)) = check_chain(require, checker, &chain) {
                        if require.mandatory() {
                            quit_now(inner, &budget, p.command_timeout).await;
                            return Err(fail(f, why));
                        }
                        state.noted = Some((f, why));
                    }
                }
                Err((f, why)) => {
                    if budget.is_over() {
                        return Err(reply::over_long(host).into());
                    }
                    if require.mandatory() {
                        return Err(fail(f, why));
                    }
                    tracing::info!(%host, %addr, error = %why, "STARTTLS failed; retrying without TLS");
                    if matches!(require, Require::Pki { .. }) {
                        state.noted = Some((f, why));
                    }
                    (inner, budget, slot) = open(host, addr, p, &id).await?;
                }
            }
            ext = ehlo(&mut inner, &budget, &p.helo, host, p.command_timeout).await?;
        }
    }
    drop(slot);
    Ok(Conn {
        inner,
        budget,
        ext,
        addr,
        host: host.to_string(),
        uses: 0,
        idle_since: Instant::now(),
        clean: true,
        text_sent: false,
        tls: state,
        tag: require.tag(),
    })
}

/// Checks the chain the server sent against `require`.
fn check_chain(
    require: &Require,
    checker: &Checker,
    chain: &[CertificateDer<'static>],
) -> Result<(), (TlsFailure, String)> {
    match require {
        Require::Plain | Require::May | Require::Encrypt => Ok(()),
        Require::Pki { names, .. } => checker.verify_pki(chain, names),
        Require::Dane { tlsa, names } => checker.verify_dane(tlsa, chain, names),
    }
}

/// QUIT on a connection we will not use (its policy was not met).
async fn quit_now(mut inner: AsyncSmtpConnection, budget: &ReplyBudget, timeout: Duration) {
    budget.expect(1);
    let _ = tokio::time::timeout(timeout.min(Duration::from_secs(5)), inner.quit()).await;
}

/// The slot a plain connection's stream sits in until STARTTLS takes it.
type Slot = Arc<std::sync::Mutex<Option<Bounded>>>;

/// TCP connect, the greeting and lettre's own EHLO, over a [`Bounded`]
/// stream; the connection, its reply budget and the stream's slot.
async fn open(
    host: &str,
    addr: SocketAddr,
    p: &ClientParams,
    id: &ClientId,
) -> Result<(AsyncSmtpConnection, Arc<ReplyBudget>, Slot), Reason> {
    let tcp = match tokio::time::timeout(p.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(reply::connect_failed(host, addr, &e.to_string())),
        Err(_) => return Err(reply::connect_failed(host, addr, "connect timeout")),
    };
    // Without this, Nagle holds the end-of-data dot behind the body
    // until the peer's delayed ACK: 40 ms per message.
    let _ = tcp.set_nodelay(true);
    let budget = ReplyBudget::new(p.max_reply_size);
    // The greeting and the reply to lettre's EHLO.
    budget.expect(2);
    let (wire, slot) = Wire::plain(Bounded::new(tcp, budget.clone()));
    let greeting = AsyncSmtpConnection::connect_with_transport(Box::new(wire), id);
    match tokio::time::timeout(p.command_timeout, greeting).await {
        Ok(Ok(c)) => Ok((c, budget, slot)),
        Ok(Err(_)) if budget.is_over() => Err(reply::over_long(host)),
        Ok(Err(e)) => Err(reply::connect_failed(host, addr, &e.to_string())),
        Err(_) => Err(reply::timed_out("greeting", host)),
    }
}

/// STARTTLS, done by Postern itself: the command, then the handshake over
/// the stream taken back from lettre (any bytes the server sent after its
/// 220 are dropped with lettre's buffer: no STARTTLS command injection),
/// checking only the handshake signatures. The TLS version and the chain
/// (DER, leaf first) for the policy check; `Err` when it failed (the
/// connection is then of no further use).
async fn upgrade(
    inner: &mut AsyncSmtpConnection,
    budget: &ReplyBudget,
    slot: &Slot,
    host: &str,
    p: &ClientParams,
    checker: &Checker,
) -> Result<(&'static str, Vec<CertificateDer<'static>>), (TlsFailure, String)> {
    budget.expect(1);
    match tokio::time::timeout(p.command_timeout, inner.command(Raw("STARTTLS"))).await {
        Ok(Ok(r)) if r.code().to_string() == "220" => {}
        Ok(Ok(r)) => {
            let text = r.first_line().unwrap_or("").to_string();
            return Err((
                TlsFailure::StartTlsNotSupported,
                format!("STARTTLS answered {text}"),
            ));
        }
        Ok(Err(e)) => {
            return Err((
                TlsFailure::StartTlsNotSupported,
                format!("STARTTLS refused: {}", error_text(&e)),
            ))
        }
        Err(_) => {
            return Err((
                TlsFailure::StartTlsNotSupported,
                "no reply to STARTTLS".into(),
            ))
        }
    }
    let Some(wire) = Wire::take(slot) else {
        return Err((TlsFailure::ValidationFailure, "stream already taken".into()));
    };
    // The handshake's server flight, bounded on the wire like replies.
    budget.expect(STARTTLS_REPLIES);
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        (
            TlsFailure::ValidationFailure,
            format!("host name {host:?}: {e}"),
        )
    })?;
    let connector = tokio_rustls::TlsConnector::from(checker.client.clone());
    let tls = match tokio::time::timeout(p.command_timeout, connector.connect(name, wire)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err((TlsFailure::ValidationFailure, format!("TLS handshake: {e}"))),
        Err(_) => {
            return Err((
                TlsFailure::ValidationFailure,
                "TLS handshake timed out".into(),
            ))
        }
    };
    let session = tls.get_ref().1;
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let chain = session
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    #[allow(deprecated)]
    inner.set_stream(AsyncNetworkStream::use_existing_tokio1(Box::new(
        Wire::Tls(Box::new(tls)),
    )));
    Ok((version, chain))
}

/// Sends our own EHLO and parses the extensions offered. A next hop that
/// replies with our own host name is us (NAT, port redirection): a
/// permanent 5.4.6 loop.
async fn ehlo(
    inner: &mut AsyncSmtpConnection,
    budget: &ReplyBudget,
    helo: &str,
    host: &str,
    timeout: Duration,
) -> Result<Extensions, Reason> {
    let line = format!("EHLO {helo}");
    budget.expect(1);
    match tokio::time::timeout(timeout, inner.command(Raw(&line))).await {
        Ok(Ok(r)) if r.first_line().is_some_and(|l| greeted_as_me(l, helo)) => {
            Err(greeted_reason(host, helo))
        }
        Ok(Ok(r)) => Ok(Extensions::parse(r.message())),
        Ok(Err(_)) if budget.is_over() => Err(reply::over_long(host)),
        Ok(Err(e)) => Err(reply::ehlo_refused(reason_of(&e, host))),
        Err(_) => Err(reply::timed_out("EHLO reply", host)),
    }
}

/// The bytes to hand lettre's `message`, which dot-stuffs them and then
/// sends CRLF . CRLF: a body's own final CRLF is that first CRLF (passing it
/// too would add an empty line to every message at every hop). A body
/// without one gets it from lettre, as SMTP requires.
fn data_text(body: &[u8]) -> &[u8] {
    body.strip_suffix(b"\r\n").unwrap_or(body)
}

/// The DATA text of a body that is UTF-8 (nearly all mail), dot-stuffed
/// (RFC 5321 4.5.2) and terminated, written out as it is formatted. lettre's
/// `message` stuffs byte by byte into a new buffer: 14 % of the gateway's
/// CPU at 100 KB a message. Here `memmem` finds each line that starts with
/// a dot and the rest is copied in runs. Bodies that are not UTF-8 go
/// through `message` (its `command` takes text).
struct DataText<'a>(&'a str);

impl std::fmt::Display for DataText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        if text.starts_with('.') {
            f.write_str(".")?;
        }
        let mut start = 0;
        for at in memchr::memmem::find_iter(text.as_bytes(), b"\r\n.") {
            // CR LF are ASCII: `at + 2` is a character boundary.
            f.write_str(&text[start..at + 2])?;
            f.write_str(".")?;
            start = at + 2;
        }
        f.write_str(&text[start..])?;
        if !text.is_empty() && !text.ends_with("\r\n") {
            f.write_str("\r\n")?;
        }
        f.write_str(".\r\n")
    }
}

/// Runs one transaction. `Ok` holds one outcome per recipient, in order.
/// `Err` means the connection failed before any recipient got an answer
/// that counts, so the caller may try another host.
pub(crate) async fn transact(
    conn: &mut Conn,
    msg: &Message<'_>,
    downgrade: &Downgrade,
    timeout: Duration,
) -> Result<Vec<Outcome>, Reason> {
    let host = conn.host.clone();
    let n = msg.recipients.len();
    conn.text_sent = false;
    let (body, eight_bit) = match plan::body_form(&conn.ext, msg, &host) {
        BodyForm::AsIs { eight_bit } => (Cow::Borrowed(msg.body), eight_bit),
        // RFC 6152: convert to 7 bit for a hop without 8BITMIME.
        BodyForm::SevenBit => match downgrade(msg.body) {
            Ok(seven) => (Cow::Owned(seven), false),
            Err(e) => {
                return Ok(vec![
                    Outcome::Permanent(plan::downgrade_failed(&e, &host));
                    n
                ])
            }
        },
        BodyForm::Refuse(r) => return Ok(vec![Outcome::Permanent(r); n]),
    };
    let planned = Plan::new(&conn.ext, msg, eight_bit, body.len());
    let replies = if planned.pipelining {
        pipelined(conn, &planned, timeout).await?
    } else {
        lockstep(conn, &planned, timeout).await?
    };
    match reply::settle(&planned, &replies, &host) {
        Next::Done {
            outcomes,
            cleanup,
            completed,
        } => {
            match cleanup {
                Cleanup::Nothing => {}
                Cleanup::EmptyMessage => conn.clean = conn.empty_message(timeout).await,
                Cleanup::Reset => conn.clean = conn.reset(timeout).await,
            }
            if completed {
                conn.uses += 1;
            }
            Ok(outcomes)
        }
        Next::SendBody(pending) => {
            // RFC 5321 4.5.3.2.6: allow 10 minutes for the final reply.
            conn.budget.expect(1);
            conn.text_sent = true;
            let end = async {
                match std::str::from_utf8(&body) {
                    // One write of the stuffed text and its terminator,
                    // then the reply: lettre's `command` does exactly that.
                    Ok(text) => conn.inner.command(DataText(text)).await,
                    Err(_) => conn.inner.message(data_text(&body)).await,
                }
            };
            let last = read(
                tokio::time::timeout(timeout.saturating_mul(2), end).await,
                "end of data reply",
                &host,
                &conn.budget,
            )?;
            conn.uses += 1;
            Ok(pending.finish(&last, &host))
        }
    }
}

/// With PIPELINING (RFC 2920): every command in one write, then one reply
/// per command, in order.
async fn pipelined(
    conn: &mut Conn,
    planned: &Plan,
    timeout: Duration,
) -> Result<Vec<Reply>, Reason> {
    let batch = planned.lines.join("\r\n");
    let mut replies = Vec::with_capacity(planned.lines.len());
    // One reply at a time: each gets its own budget.
    conn.budget.expect(1);
    let first = tokio::time::timeout(timeout, conn.inner.command(Raw(&batch))).await;
    replies.push(read(first, "reply", &conn.host, &conn.budget)?);
    for _ in 1..planned.lines.len() {
        conn.budget.expect(1);
        let next = tokio::time::timeout(timeout, conn.inner.read_response()).await;
        replies.push(read(next, "reply", &conn.host, &conn.budget)?);
    }
    Ok(replies)
}

/// Without PIPELINING: one command, one reply, for as long as the plan
/// wants more.
async fn lockstep(
    conn: &mut Conn,
    planned: &Plan,
    timeout: Duration,
) -> Result<Vec<Reply>, Reason> {
    let mut replies = Vec::with_capacity(planned.lines.len());
    while let Some(line) = planned.next_lockstep(&replies) {
        conn.budget.expect(1);
        let r = tokio::time::timeout(timeout, conn.inner.command(Raw(line))).await;
        replies.push(read(r, "reply", &conn.host, &conn.budget)?);
    }
    Ok(replies)
}

/// One reply (positive or negative), or the failure that kept it from us;
/// `what` names the reply for a timeout, `budget` tells an over-long reply
/// from other failed reads.
fn read(
    r: Result<Result<Response, SmtpError>, Elapsed>,
    what: &str,
    host: &str,
    budget: &ReplyBudget,
) -> Result<Reply, Reason> {
    match r {
        Err(_) => Err(reply::timed_out(what, host)),
        Ok(Err(_)) if budget.is_over() => Err(reply::over_long(host)),
        Ok(Ok(resp)) => Ok(Reply {
            code: u16::from(resp.code()),
            text: resp.message().collect::<Vec<_>>().join(" "),
        }),
        Ok(Err(e)) => negative(&e).ok_or_else(|| reply::broken(&error_text(&e), host)),
    }
}

/// A negative reply, as lettre reports it (an error with the reply code);
/// `None` when no reply was read at all.
fn negative(e: &SmtpError) -> Option<Reply> {
    e.status().map(|code| Reply {
        code: u16::from(code),
        text: error_text(e),
    })
}

/// The text of a lettre error: the reply text for a negative reply, else
/// the underlying cause.
fn error_text(e: &SmtpError) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// A lettre error as a reason: the reply when there was one, else a broken
/// connection.
fn reason_of(e: &SmtpError, host: &str) -> Reason {
    match negative(e) {
        Some(r) => reply::reason(&r, host),
        None => reply::broken(&error_text(e), host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_text_is_stuffed_and_terminated_once() {
        let cases: [(&str, &str); 6] = [
            ("a\r\nb\r\n", "a\r\nb\r\n.\r\n"),
            (".top\r\n..two\r\n.\r\n", "..top\r\n...two\r\n..\r\n.\r\n"),
            ("no end", "no end\r\n.\r\n"),
            ("", ".\r\n"),
            ("x\r\n.", "x\r\n..\r\n.\r\n"),
            ("Grüße\r\n.é\r\n", "Grüße\r\n..é\r\n.\r\n"),
        ];
        for (body, wire) in cases {
            assert_eq!(DataText(body).to_string(), wire, "{body:?}");
            // The same bytes lettre's own codec sends for the body.
            let mut lettre = String::new();
            let mut line_start = true;
            for c in data_text(body.as_bytes()).iter().map(|b| *b as char) {
                if line_start && c == '.' {
                    lettre.push('.');
                }
                line_start = c == '\n';
                lettre.push(c);
            }
            let lettre_bytes: Vec<u8> = lettre.chars().map(|c| c as u8).collect();
            let mut expected = lettre_bytes;
            expected.extend_from_slice(b"\r\n.\r\n");
            if body.is_empty() {
                expected = b".\r\n".to_vec(); // no empty line for an empty body
            }
            assert_eq!(DataText(body).to_string().as_bytes(), expected, "{body:?}");
        }
    }

    #[test]
    fn the_body_s_final_crlf_is_the_terminator_s_first() {
        assert_eq!(data_text(b"a\r\nb\r\n"), b"a\r\nb");
        assert_eq!(
            data_text(b"a\r\n.\r\n"),
            b"a\r\n.",
            "a last line '.' is still stuffed"
        );
        assert_eq!(data_text(b"no end"), b"no end");
        assert_eq!(data_text(b"\r\n"), b"");
    }
    use postern_core::Address;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    const T: Duration = Duration::from_secs(5);

    fn address(local: &str, domain: &str) -> Address {
        Address {
            local: local.into(),
            domain: domain.into(),
        }
    }

    fn remote(code: u16, status: &str, text: &str) -> Reason {
        Reason {
            code,
            status: status.into(),
            text: text.into(),
            remote: Some("hop.test".into()),
        }
    }

    fn params() -> ClientParams {
        ClientParams {
            helo: "client.test".into(),
            connect_timeout: T,
            command_timeout: T,
            starttls: false,
            max_reply_size: 64 * 1024,
        }
    }

    /// A connection without STARTTLS.
    async fn plain_connect(addr: SocketAddr, p: &ClientParams) -> Result<Conn, Failed> {
        let checker = Checker::new(None).unwrap();
        connect("hop.test", addr, p, &Require::Plain, "none", &checker).await
    }

    fn no_downgrade(_: &[u8]) -> Result<Vec<u8>, DowngradeError> {
        Err(DowngradeError::new("not expected in this test"))
    }

    fn seven(_: &[u8]) -> Result<Vec<u8>, DowngradeError> {
        Ok(b"converted\r\n".to_vec())
    }

    /// A next hop on loopback. It greets, answers EHLO with `ehlo` and every
    /// other command line with `answer(line)` (the end of a message with
    /// `answer("<end of data>")`), and returns the lines it got, EHLO aside.
    async fn next_hop(
        ehlo: &'static str,
        answer: fn(&str) -> &'static str,
    ) -> (SocketAddr, JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hop = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            write.write_all(b"220 hop.test ESMTP\r\n").await.unwrap();
            let mut seen = Vec::new();
            let mut line = String::new();
            while read.read_line(&mut line).await.unwrap() > 0 {
                let cmd = line.trim_end().to_string();
                line.clear();
                if cmd.starts_with("EHLO") {
                    write.write_all(ehlo.as_bytes()).await.unwrap();
                    continue;
                }
                let quit = cmd == "QUIT";
                let reply = if quit { "221 bye\r\n" } else { answer(&cmd) };
                write.write_all(reply.as_bytes()).await.unwrap();
                let data = cmd == "DATA" && reply.starts_with("354");
                seen.push(cmd);
                if quit {
                    break;
                }
                if data {
                    while read.read_line(&mut line).await.unwrap() > 0 && line != ".\r\n" {
                        line.clear();
                    }
                    line.clear();
                    seen.push("<end of data>".to_string());
                    let last = answer("<end of data>");
                    write.write_all(last.as_bytes()).await.unwrap();
                }
            }
            seen
        });
        (addr, hop)
    }

    /// A 7-bit message from `from` to `rcpts` without DSN parameters.
    fn plain_message<'a>(
        from: &'a Address,
        rcpts: &'a [&'a Address],
        body: &'a [u8],
    ) -> Message<'a> {
        Message {
            sender: Some(from),
            recipients: rcpts,
            body,
            eight_bit: false,
            smtputf8: false,
            dsn_mail: String::new(),
            dsn_rcpt: &[],
            notify_success: &[],
        }
    }

    /// Issue 11, hostile next hop: `220-` and then bytes without a line
    /// feed. The read fails once the budget is spent (before: lettre's
    /// read_line grew without end) and the hop is a temporary failure.
    #[tokio::test]
    async fn an_endless_reply_line_is_a_temporary_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hop = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let x = [b'x'; 16 * 1024];
            if s.write_all(b"220-").await.is_err() {
                return;
            }
            // 16 MiB at most (far more than the budget), or until the
            // client hangs up.
            for _ in 0..1024 {
                if s.write_all(&x).await.is_err() {
                    return;
                }
            }
        });
        let p = ClientParams {
            max_reply_size: 4096,
            ..params()
        };
        let Err(Failed { reason: r, .. }) = plain_connect(addr, &p).await else {
            panic!("connected to a hop that never ends its greeting");
        };
        assert_eq!(r, reply::over_long("hop.test"));
        hop.await.unwrap();
    }

    #[tokio::test]
    async fn pipelined_transaction_settles_per_recipient() {
        let (addr, hop) = next_hop(
            "250-hop.test\r\n250-PIPELINING\r\n250 DSN\r\n",
            |cmd: &str| -> &'static str {
                if cmd.starts_with("RCPT TO:<bad@") {
                    "550-5.1.1 no such\r\n550 5.1.1 user here\r\n"
                } else if cmd == "DATA" {
                    "354 go ahead\r\n"
                } else if cmd == "<end of data>" {
                    "250 2.0.0 queued as 7\r\n"
                } else {
                    "250 ok\r\n"
                }
            },
        )
        .await;
        let mut conn = plain_connect(addr, &params()).await.unwrap();
        let from = address("s", "a.test");
        let (good, bad) = (address("good", "b.test"), address("bad", "b.test"));
        let rcpts = [&good, &bad];
        let dsn = [" NOTIFY=SUCCESS".to_string(), String::new()];
        let msg = Message {
            dsn_mail: " RET=HDRS".into(),
            dsn_rcpt: &dsn,
            ..plain_message(&from, &rcpts, b"Subject: t\r\n\r\nhi\r\n")
        };
        let out = transact(&mut conn, &msg, &no_downgrade, T).await.unwrap();
        assert_eq!(
            out,
            vec![
                Outcome::Delivered(remote(250, "2.0.0", "queued as 7")),
                // Continuation lines arrive joined, the repeated code once.
                Outcome::Permanent(remote(550, "5.1.1", "no such user here")),
            ]
        );
        assert_eq!(conn.uses, 1);
        assert!(conn.is_usable());
        conn.quit(T).await;
        assert_eq!(
            hop.await.unwrap(),
            [
                "MAIL FROM:<s@a.test> RET=HDRS",
                "RCPT TO:<good@b.test> NOTIFY=SUCCESS",
                "RCPT TO:<bad@b.test>",
                "DATA",
                "<end of data>",
                "QUIT",
            ]
        );
    }

    #[tokio::test]
    async fn lockstep_sends_no_data_when_no_recipient_is_accepted() {
        let (addr, hop) = next_hop(
            "250-hop.test\r\n250 SIZE 1000\r\n",
            |cmd: &str| -> &'static str {
                if cmd.starts_with("RCPT") {
                    "450 4.2.1 try later\r\n"
                } else {
                    "250 ok\r\n"
                }
            },
        )
        .await;
        let mut conn = plain_connect(addr, &params()).await.unwrap();
        let (from, to) = (address("s", "a.test"), address("t", "b.test"));
        let rcpts = [&to];
        let msg = plain_message(&from, &rcpts, b"hi\r\n");
        let out = transact(&mut conn, &msg, &no_downgrade, T).await.unwrap();
        assert_eq!(
            out,
            vec![Outcome::Temporary(remote(450, "4.2.1", "try later"))]
        );
        assert_eq!(conn.uses, 0);
        assert!(conn.is_usable(), "the RSET was answered");
        conn.quit(T).await;
        assert_eq!(
            hop.await.unwrap(),
            [
                "MAIL FROM:<s@a.test> SIZE=4",
                "RCPT TO:<t@b.test>",
                "RSET",
                "QUIT"
            ]
        );
    }

    #[tokio::test]
    async fn conversion_and_refusals_before_any_command() {
        let (addr, hop) = next_hop(
            "250-hop.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
            |cmd: &str| -> &'static str {
                if cmd == "DATA" {
                    "354 go ahead\r\n"
                } else {
                    "250 ok\r\n"
                }
            },
        )
        .await;
        let mut conn = plain_connect(addr, &params()).await.unwrap();
        let (from, to) = (address("s", "a.test"), address("t", "b.test"));
        let rcpts = [&to];
        let msg = plain_message(&from, &rcpts, "Gr\u{fc}\u{df}e\r\n".as_bytes());
        // No 8BITMIME: converted, and SIZE is the converted size.
        let out = transact(&mut conn, &msg, &seven, T).await.unwrap();
        assert_eq!(out, vec![Outcome::Delivered(remote(250, "2.0.0", "ok"))]);
        // A failed conversion: 5.6.3, nothing sent.
        let out = transact(&mut conn, &msg, &no_downgrade, T).await.unwrap();
        let text = "cannot convert to 7 bit for a hop without 8BITMIME: not expected in this test";
        assert_eq!(out, vec![Outcome::Permanent(remote(554, "5.6.3", text))]);
        // A UTF-8 recipient and no SMTPUTF8: 5.6.7, nothing sent.
        let intl = address("j\u{f6}rg", "b.test");
        let utf8 = [&intl];
        let msg = Message {
            recipients: &utf8,
            ..msg
        };
        let out = transact(&mut conn, &msg, &seven, T).await.unwrap();
        let text = "message needs SMTPUTF8 and the next hop does not offer it";
        assert_eq!(out, vec![Outcome::Permanent(remote(553, "5.6.7", text))]);
        conn.quit(T).await;
        assert_eq!(
            hop.await.unwrap(),
            [
                "MAIL FROM:<s@a.test> SIZE=11",
                "RCPT TO:<t@b.test>",
                "DATA",
                "<end of data>",
                "QUIT"
            ]
        );
    }
}
