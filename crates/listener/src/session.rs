//! The SMTP session state machine.
//!
//! [`Session`] owns a [`State`] enum whose variants own their data; each verb
//! has a handler that returns an [`Action`] (a reply, and what the loop must
//! do next). Nothing here touches a socket, so every rule (ordering, relay
//! control, limits, error counting) is tested directly below. Entry points:
//! [`Session::greeting`], [`Session::command`], [`Session::data_done`].

use crate::command::{self, Command};
use crate::data::DataError;
use crate::Reply;
use postern_core::{Address, Envelope, QueueId, Recipient, RelayPolicy};
use std::net::IpAddr;
use std::sync::Arc;

/// Limits and identity for every session of one listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name in the greeting, EHLO and Received.
    pub hostname: String,
    pub relay: RelayPolicy,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Errors before "421 too many errors" and close.
    pub max_errors: u32,
    pub max_command_line: usize,
    pub max_text_line: usize,
    pub command_timeout: std::time::Duration,
    pub data_timeout: std::time::Duration,
    pub max_connections: usize,
    /// STARTTLS and implicit TLS; `None` when no certificate is configured.
    pub tls: Option<crate::tls::TlsConfig>,
    pub data_total_timeout: std::time::Duration,
    pub max_connections_per_ip: usize,
    pub max_connection_rate_per_ip: u32,
    pub greeting_delay: std::time::Duration,
    pub max_noops: u32,
    /// Back pressure set by the gateway: 0 none, 1 refuse untrusted
    /// clients, 2 refuse everyone (452 4.3.1 at MAIL).
    pub pressure: Arc<std::sync::atomic::AtomicU8>,
    /// Users for AUTH; AUTH is offered on encrypted sessions when set.
    pub users: Option<Arc<crate::auth::UserDb>>,
    /// Failed AUTH attempts per client and per user.
    pub auth_limiter: Arc<crate::auth::AuthLimiter>,
    /// Submission port: MAIL needs AUTH first.
    pub require_auth: bool,
    /// Valid recipients of accepted domains, when configured.
    pub recipients: Option<Arc<postern_core::relay::RecipientList>>,
}

/// A complete message handed to the sink.
#[derive(Debug)]
pub struct ReceivedMessage {
    pub envelope: Envelope,
    /// The message with our Received header prepended, CRLF line endings.
    pub body: Vec<u8>,
    /// Length of that Received header: `body[trace_len..]` is what the
    /// client sent.
    pub trace_len: usize,
}

/// A transaction being built between MAIL and the end of DATA.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub sender: Option<Address>,
    pub recipients: Vec<Recipient>,
    /// RFC 3461 RET=FULL.
    pub ret_full: bool,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    pub eight_bit: bool,
    /// The client declared SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
}

/// Where the session stands; each variant owns what it needs.
#[derive(Debug, Clone)]
pub enum State {
    /// Connected, no EHLO/HELO yet.
    Fresh,
    /// Greeted; no transaction.
    Ready { helo: String, esmtp: bool },
    /// MAIL accepted; collecting RCPTs.
    Mail {
        helo: String,
        esmtp: bool,
        tx: Transaction,
    },
    /// DATA accepted; the loop is feeding the DATA receiver.
    Data {
        helo: String,
        esmtp: bool,
        tx: Transaction,
    },
}

/// What the loop does after a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reply(Reply),
    /// Send the reply (354) and switch to the DATA receiver.
    StartData(Reply),
    /// Send the reply (220) and start the TLS handshake; anything the client
    /// pipelined after STARTTLS is discarded.
    StartTls(Reply),
    /// Check these credentials (slowly, off the loop), then call
    /// [`Session::auth_done`].
    Authenticate {
        user: String,
        pass: String,
    },
    /// Read exactly `size` octets of message data, give them to
    /// [`Session::bdat_chunk`], then call [`Session::bdat_end`].
    Bdat {
        size: u64,
        last: bool,
    },
    /// Send the reply and close the connection.
    Close(Reply),
}

/// One client connection's protocol state.
pub struct Session {
    cfg: Arc<SessionConfig>,
    peer: IpAddr,
    state: State,
    errors: u32,
    /// The negotiated TLS version and cipher, once the session is encrypted.
    tls: Option<String>,
    /// NOOP/RSET/VRFY/HELP seen, against `max_noops`.
    noops: u32,
    /// The authenticated user, after a successful AUTH.
    user: Option<String>,
    /// A SASL exchange in progress: the next line is its response.
    sasl: Option<Sasl>,
    /// Message data received by BDAT so far; `None` outside BDAT.
    bdat: Option<Vec<u8>>,
    /// The BDAT message passed the size limit: the rest is discarded.
    bdat_too_big: bool,
    /// The current BDAT chunk was refused (its reply, sent when it ends).
    bdat_refused: Option<Reply>,
}

/// Where a SASL exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sasl {
    Plain,
    LoginUser,
    LoginPass(String),
}

impl Session {
    pub fn new(cfg: Arc<SessionConfig>, peer: IpAddr) -> Session {
        Session {
            cfg,
            peer,
            state: State::Fresh,
            errors: 0,
            tls: None,
            noops: 0,
            user: None,
            sasl: None,
            bdat: None,
            bdat_too_big: false,
            bdat_refused: None,
        }
    }

    fn bdat(&mut self, size: u64, last: bool) -> Action {
        // A refused chunk is still read (and dropped), so its octets are
        // never taken for commands; the refusal is the chunk's reply.
        let refusal = match &self.state {
            State::Mail { tx, .. } if tx.recipients.is_empty() => {
                Some(Reply::new(554, "5.5.1", "no valid recipients"))
            }
            State::Mail { .. } => None,
            _ => Some(Reply::new(503, "5.5.1", "need MAIL and RCPT before BDAT")),
        };
        if refusal.is_some() {
            self.bdat_refused = refusal;
            return Action::Bdat { size, last };
        }
        let so_far = self.bdat.get_or_insert_with(Vec::new).len() as u64;
        if size > self.cfg.max_message_size.saturating_sub(so_far) {
            self.bdat_too_big = true;
        }
        Action::Bdat { size, last }
    }

    /// Octets of the current BDAT chunk.
    pub fn bdat_chunk(&mut self, data: &[u8]) {
        if self.bdat_too_big || self.bdat_refused.is_some() {
            return;
        }
        if let Some(b) = &mut self.bdat {
            b.extend_from_slice(data);
        }
    }

    /// The chunk is complete: 250 for a middle chunk; for the LAST one, the
    /// message (or the refusal), as at the end of DATA.
    pub fn bdat_end(&mut self, size: u64, last: bool) -> Result<Option<ReceivedMessage>, Action> {
        if let Some(r) = self.bdat_refused.take() {
            return Err(self.finish(Action::Reply(r)));
        }
        if !last {
            return Err(Action::Reply(Reply::new(
                250,
                "2.0.0",
                format!("{size} octets received"),
            )));
        }
        let body = self.bdat.take().unwrap_or_default();
        let too_big = std::mem::take(&mut self.bdat_too_big);
        let State::Mail { helo, esmtp, tx } = std::mem::replace(&mut self.state, State::Fresh)
        else {
            return Err(Action::Reply(Reply::new(503, "5.5.1", "no transaction")));
        };
        self.state = State::Data { helo, esmtp, tx };
        let result = if too_big {
            Err(DataError::TooBig)
        } else {
            crate::data::check_strict(&body, self.cfg.max_text_line).map(|_| body)
        };
        self.data_done(result).map(Some)
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// A SASL response line.
    fn sasl_line(&mut self, step: Sasl, line: &[u8]) -> Action {
        let text = String::from_utf8_lossy(line).trim().to_string();
        if text == "*" {
            return Action::Reply(Reply::new(501, "5.7.0", "authentication cancelled"));
        }
        let Some(data) = crate::auth::b64(&text) else {
            return Action::Reply(Reply::new(501, "5.5.2", "cannot decode the response"));
        };
        match step {
            Sasl::Plain => match crate::auth::parse_plain(&data) {
                Some((user, pass)) => self.check(user, pass),
                None => Action::Reply(Reply::new(501, "5.5.2", "malformed PLAIN response")),
            },
            Sasl::LoginUser => {
                self.sasl = Some(Sasl::LoginPass(String::from_utf8_lossy(&data).into_owned()));
                Action::Reply(Reply::plain(334, vec!["UGFzc3dvcmQ6".into()]))
            }
            Sasl::LoginPass(user) => self.check(user, String::from_utf8_lossy(&data).into_owned()),
        }
    }

    fn check(&mut self, user: String, pass: String) -> Action {
        let now = std::time::Instant::now();
        if self.cfg.auth_limiter.blocked(self.peer, Some(&user), now) {
            return Action::Reply(Reply::new(
                454,
                "4.7.0",
                "too many failed attempts, try again later",
            ));
        }
        Action::Authenticate { user, pass }
    }

    /// The result of an [`Action::Authenticate`].
    pub fn auth_done(&mut self, user: String, ok: bool) -> Action {
        if ok {
            tracing::info!(peer = %self.peer, %user, "authenticated");
            self.user = Some(user);
            return Action::Reply(Reply::new(235, "2.7.0", "authentication succeeded"));
        }
        self.cfg
            .auth_limiter
            .failed(self.peer, &user, std::time::Instant::now());
        self.finish(Action::Reply(Reply::new(
            535,
            "5.7.8",
            "authentication credentials invalid",
        )))
    }

    fn auth(&mut self, mechanism: String, initial: Option<String>) -> Action {
        if self.cfg.users.is_none() {
            return Action::Reply(Reply::new(502, "5.5.1", "AUTH not available"));
        }
        if self.tls.is_none() {
            return Action::Reply(Reply::new(
                538,
                "5.7.11",
                "encryption required for authentication",
            ));
        }
        if self.user.is_some() {
            return Action::Reply(Reply::new(503, "5.5.1", "already authenticated"));
        }
        if !matches!(self.state, State::Ready { .. }) {
            return Action::Reply(Reply::new(
                503,
                "5.5.1",
                "send EHLO first; no AUTH in a transaction",
            ));
        }
        match (mechanism.as_str(), initial) {
            ("PLAIN", Some(i)) => self.sasl_line(Sasl::Plain, i.as_bytes()),
            ("PLAIN", None) => {
                self.sasl = Some(Sasl::Plain);
                Action::Reply(Reply::plain(334, vec![String::new()]))
            }
            ("LOGIN", Some(i)) => self.sasl_line(Sasl::LoginUser, i.as_bytes()),
            ("LOGIN", None) => {
                self.sasl = Some(Sasl::LoginUser);
                Action::Reply(Reply::plain(334, vec!["VXNlcm5hbWU6".into()]))
            }
            _ => Action::Reply(Reply::new(504, "5.5.4", "mechanism not supported")),
        }
    }

    /// A session on an encrypted connection (after STARTTLS, or implicit
    /// TLS): it starts fresh, as RFC 3207 requires.
    pub fn encrypted(cfg: Arc<SessionConfig>, peer: IpAddr, tls: String) -> Session {
        Session {
            tls: Some(tls),
            ..Session::new(cfg, peer)
        }
    }

    pub fn greeting(&self) -> Reply {
        Reply::plain(220, vec![format!("{} ESMTP Postern", self.cfg.hostname)])
    }

    /// Between MAIL FROM and the end of the message.
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Mail { .. } | State::Data { .. })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Counts an error reply; past the limit the session is closed.
    fn finish(&mut self, action: Action) -> Action {
        let reply = match &action {
            Action::Reply(r) => r,
            _ => return action,
        };
        if reply.is_error() {
            self.errors += 1;
            if self.errors >= self.cfg.max_errors {
                return Action::Close(Reply::new(421, "4.7.0", "too many errors, closing"));
            }
        }
        action
    }

    /// A command line that was too long to parse.
    pub fn line_too_long(&mut self) -> Action {
        self.finish(Action::Reply(Reply::new(500, "5.5.2", "line too long")))
    }

    /// Handles one command line (or SASL response line).
    pub fn command(&mut self, line: &[u8]) -> Action {
        if let Some(step) = self.sasl.take() {
            let action = self.sasl_line(step, line);
            return self.finish(action);
        }
        let action = match command::parse(line) {
            Ok(cmd) => self.dispatch(cmd),
            Err(reply) => Action::Reply(reply),
        };
        self.finish(action)
    }

    fn dispatch(&mut self, cmd: Command) -> Action {
        if matches!(
            cmd,
            Command::Noop | Command::Rset | Command::Vrfy | Command::Help
        ) {
            self.noops += 1;
            if self.noops > self.cfg.max_noops {
                return Action::Close(Reply::new(
                    421,
                    "4.7.0",
                    "too many commands without mail, closing",
                ));
            }
        }
        match cmd {
            Command::Ehlo(h) => self.ehlo(h, true),
            Command::Helo(h) => self.ehlo(h, false),
            Command::Mail {
                sender,
                size,
                eight_bit,
                smtputf8,
                ret_full,
                envid,
            } => {
                let action = self.mail(sender, size, eight_bit, smtputf8);
                if let State::Mail { tx, .. } = &mut self.state {
                    tx.ret_full = ret_full.unwrap_or(false);
                    tx.envid = envid;
                }
                action
            }
            Command::Rcpt {
                address,
                notify,
                orcpt,
            } => {
                let action = self.rcpt(address);
                if let (Action::Reply(r), State::Mail { tx, .. }) = (&action, &mut self.state) {
                    if r.code == 250 {
                        if let Some(last) = tx.recipients.last_mut() {
                            last.notify = notify;
                            last.orcpt = orcpt;
                        }
                    }
                }
                action
            }
            Command::Data => self.data(),
            Command::Rset => self.rset(),
            Command::Noop => Action::Reply(Reply::new(250, "2.0.0", "OK")),
            Command::Quit => Action::Close(Reply::new(221, "2.0.0", "bye")),
            Command::Vrfy => Action::Reply(Reply::new(
                252,
                "2.5.0",
                "cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => Action::Reply(Reply::new(
                214,
                "2.0.0",
                "EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            )),
            Command::StartTls => self.starttls(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::NotImplemented(v) => {
                Action::Reply(Reply::new(502, "5.5.1", format!("{v} not implemented")))
            }
        }
    }

    fn starttls(&mut self) -> Action {
        if self.tls.is_some() {
            return Action::Reply(Reply::new(503, "5.5.1", "already encrypted"));
        }
        if self.cfg.tls.is_none() {
            return Action::Reply(Reply::new(454, "4.7.0", "TLS not available"));
        }
        if matches!(self.state, State::Mail { .. } | State::Data { .. }) {
            return Action::Reply(Reply::new(
                503,
                "5.5.1",
                "STARTTLS not allowed in a transaction",
            ));
        }
        Action::StartTls(Reply::new(220, "2.0.0", "ready to start TLS"))
    }

    fn ehlo(&mut self, helo: String, esmtp: bool) -> Action {
        let reply = if esmtp {
            let mut lines = vec![
                format!("{} greets {}", self.cfg.hostname, helo),
                "PIPELINING".into(),
                format!("SIZE {}", self.cfg.max_message_size),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
                "SMTPUTF8".into(),
                "CHUNKING".into(),
                "DSN".into(),
            ];
            if self.cfg.tls.is_some() && self.tls.is_none() {
                lines.push("STARTTLS".into());
            }
            if self.cfg.users.is_some() && self.tls.is_some() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
            lines.push("HELP".into());
            Reply::plain(250, lines)
        } else {
            Reply::plain(250, vec![self.cfg.hostname.clone()])
        };
        self.state = State::Ready { helo, esmtp };
        Action::Reply(reply)
    }

    fn mail(
        &mut self,
        sender: Option<Address>,
        size: Option<u64>,
        eight_bit: bool,
        smtputf8: bool,
    ) -> Action {
        if !smtputf8 && sender.as_ref().is_some_and(|a| !a.is_ascii()) {
            return Action::Reply(Reply::new(553, "5.6.7", "non-ASCII address needs SMTPUTF8"));
        }
        let (helo, esmtp) = match &self.state {
            State::Fresh => return Action::Reply(Reply::new(503, "5.5.1", "send EHLO/HELO first")),
            State::Mail { .. } | State::Data { .. } => {
                return Action::Reply(Reply::new(503, "5.5.1", "nested MAIL command"))
            }
            State::Ready { helo, esmtp } => (helo.clone(), *esmtp),
        };
        if self.cfg.require_auth && self.user.is_none() {
            return Action::Reply(Reply::new(530, "5.7.0", "authentication required"));
        }
        let pressure = self.cfg.pressure.load(std::sync::atomic::Ordering::Relaxed);
        if pressure >= 2 || (pressure == 1 && !self.cfg.relay.is_trusted(self.peer)) {
            return Action::Reply(Reply::new(
                452,
                "4.3.1",
                "insufficient system resources, try again later",
            ));
        }
        if size.is_some_and(|s| s > self.cfg.max_message_size) {
            return Action::Reply(Reply::new(
                552,
                "5.3.4",
                "message size exceeds fixed maximum message size",
            ));
        }
        self.state = State::Mail {
            helo,
            esmtp,
            tx: Transaction {
                sender,
                recipients: Vec::new(),
                eight_bit,
                smtputf8,
                ret_full: false,
                envid: None,
            },
        };
        Action::Reply(Reply::new(250, "2.1.0", "sender OK"))
    }

    fn rcpt(&mut self, rcpt: Address) -> Action {
        let State::Mail { tx, .. } = &mut self.state else {
            return Action::Reply(Reply::new(503, "5.5.1", "need MAIL before RCPT"));
        };
        if !tx.smtputf8 && !rcpt.is_ascii() {
            return Action::Reply(Reply::new(553, "5.6.7", "non-ASCII address needs SMTPUTF8"));
        }
        if let Some(list) = &self.cfg.recipients {
            if self.cfg.relay.is_accepted(&rcpt.domain) && !list.accepts(&rcpt.local, &rcpt.domain)
            {
                return Action::Reply(Reply::new(550, "5.1.1", "no such user here"));
            }
        }
        if tx.recipients.len() >= self.cfg.max_recipients {
            return Action::Reply(Reply::new(452, "4.5.3", "too many recipients"));
        }
        let authenticated = self.user.is_some();
        if !authenticated && !self.cfg.relay.may_relay(self.peer, &rcpt.domain) {
            return Action::Reply(Reply::new(554, "5.7.1", "relay denied"));
        }
        if routing_in_local_part(&rcpt.local)
            && !authenticated
            && !self.cfg.relay.is_trusted(self.peer)
        {
            // The % hack, bang paths and quoted "user@other" local parts ask
            // the receiving host to relay; Postfix refuses them the same way
            // (allow_untrusted_routing = no).
            return Action::Reply(Reply::new(
                554,
                "5.7.1",
                "relay denied: sender-specified routing in the local part",
            ));
        }
        tx.recipients.push(Recipient::new(rcpt));
        Action::Reply(Reply::new(250, "2.1.5", "recipient OK"))
    }

    fn data(&mut self) -> Action {
        if self.bdat.is_some() {
            return Action::Reply(Reply::new(503, "5.5.1", "DATA not allowed after BDAT"));
        }
        match &self.state {
            State::Mail { tx, .. } if tx.recipients.is_empty() => {
                return Action::Reply(Reply::new(554, "5.5.1", "no valid recipients"));
            }
            State::Mail { .. } => {}
            _ => return Action::Reply(Reply::new(503, "5.5.1", "need MAIL and RCPT before DATA")),
        }
        if let State::Mail { helo, esmtp, tx } = std::mem::replace(&mut self.state, State::Fresh) {
            self.state = State::Data { helo, esmtp, tx };
        }
        Action::StartData(Reply::plain(
            354,
            vec!["end data with <CR><LF>.<CR><LF>".into()],
        ))
    }

    fn rset(&mut self) -> Action {
        self.reset();
        Action::Reply(Reply::new(250, "2.0.0", "reset"))
    }

    /// Drops any transaction, keeping the greeting.
    fn reset(&mut self) {
        self.bdat = None;
        self.bdat_too_big = false;
        self.state = match std::mem::replace(&mut self.state, State::Fresh) {
            State::Fresh => State::Fresh,
            State::Ready { helo, esmtp }
            | State::Mail { helo, esmtp, .. }
            | State::Data { helo, esmtp, .. } => State::Ready { helo, esmtp },
        };
    }

    /// The DATA receiver finished. Returns the message for the sink, or the
    /// reply refusing it. The session is ready for the next transaction
    /// either way.
    pub fn data_done(
        &mut self,
        result: Result<Vec<u8>, DataError>,
    ) -> Result<ReceivedMessage, Action> {
        let State::Data { helo, esmtp, tx } = std::mem::replace(&mut self.state, State::Fresh)
        else {
            return Err(Action::Reply(Reply::new(
                503,
                "5.5.1",
                "no DATA in progress",
            )));
        };
        self.state = State::Ready {
            helo: helo.clone(),
            esmtp,
        };
        let body = match result {
            Ok(body) => body,
            Err(e) => {
                let reply = match e {
                    DataError::BareLineEnding => Reply::new(
                        550,
                        "5.6.0",
                        "bare CR or LF in message data: lines must end with CRLF",
                    ),
                    DataError::LineTooLong => Reply::new(
                        550,
                        "5.6.0",
                        format!("line longer than {} octets", self.cfg.max_text_line),
                    ),
                    DataError::Nul => Reply::new(550, "5.6.0", "NUL octet in message data"),
                    DataError::TooBig => Reply::new(
                        552,
                        "5.3.4",
                        "message size exceeds fixed maximum message size",
                    ),
                };
                return Err(self.finish(Action::Reply(reply)));
            }
        };
        let id = QueueId::generate();
        let now = postern_core::now_ms();
        let out = received_header(
            &self.cfg.hostname,
            &helo,
            self.peer,
            esmtp,
            self.tls.as_deref(),
            id,
            &tx,
        );
        let trace_len = out.len();
        // The header goes in front of the received buffer: no second copy
        // of the body.
        let mut body = body;
        body.splice(0..0, out);
        let out = body;
        let envelope = Envelope {
            id,
            sender: tx.sender,
            recipients: tx.recipients,
            client: self.peer.to_string(),
            helo,
            received_ms: now,
            size: out.len() as u64,
            eight_bit: tx.eight_bit,
            message_id: None,
            smtputf8: tx.smtputf8,
            dsn_ret_full: tx.ret_full,
            dsn_envid: tx.envid,
        };
        Ok(ReceivedMessage {
            envelope,
            body: out,
            trace_len,
        })
    }
}

/// True when a local part carries routing: `%`, `!` or an `@`.
fn routing_in_local_part(local: &str) -> bool {
    local.contains(['%', '!', '@'])
}

/// RFC 5321 section 4.4 trace header, folded after the `by` clause.
fn received_header(
    hostname: &str,
    helo: &str,
    peer: IpAddr,
    esmtp: bool,
    tls: Option<&str>,
    id: QueueId,
    tx: &Transaction,
) -> Vec<u8> {
    let with = match (esmtp, tls) {
        (true, Some(t)) => format!("ESMTPS (using {t})"),
        (false, Some(t)) => format!("SMTPS (using {t})"),
        (true, None) => "ESMTP".into(),
        (false, None) => "SMTP".into(),
    };
    let helo: String = helo.chars().filter(|c| c.is_ascii_graphic()).collect();
    let for_clause = match tx.recipients.as_slice() {
        [one] => format!("\r\n\tfor <{}>", one.address),
        _ => String::new(),
    };
    let date = httpdate::fmt_http_date(std::time::SystemTime::now()).replace("GMT", "+0000");
    format!(
        "Received: from {helo} ([{peer}])\r\n\tby {hostname} (Postern) with {with} id {id}{for_clause};\r\n\t{date}\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            hostname: "gw.example.test".into(),
            relay: RelayPolicy {
                accepted_domains: vec!["example.test".into()],
                trusted_networks: vec!["127.0.0.1/32".parse().unwrap()],
            },
            max_message_size: 1000,
            max_recipients: 2,
            max_errors: 3,
            max_command_line: 512,
            max_text_line: 1000,
            command_timeout: std::time::Duration::from_secs(300),
            data_timeout: std::time::Duration::from_secs(180),
            max_connections: 10,
            tls: None,
            data_total_timeout: std::time::Duration::from_secs(600),
            max_connections_per_ip: 10,
            max_connection_rate_per_ip: 100,
            greeting_delay: std::time::Duration::ZERO,
            max_noops: 5,
            pressure: Arc::new(std::sync::atomic::AtomicU8::new(0)),
            users: None,
            auth_limiter: crate::auth::AuthLimiter::new(5),
            require_auth: false,
            recipients: None,
        })
    }

    fn code(a: Action) -> u16 {
        match a {
            Action::Reply(r) | Action::StartData(r) | Action::Close(r) | Action::StartTls(r) => {
                r.code
            }
            Action::Authenticate { .. } | Action::Bdat { .. } => 0,
        }
    }

    #[test]
    fn refused_bdat_chunk_is_consumed_and_sizes_cannot_wrap() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        s.command(b"EHLO c.test");
        // No transaction: the chunk is still read (its octets are not
        // commands), then refused.
        let Action::Bdat { size: 10, .. } = s.command(b"BDAT 10") else {
            panic!("chunk must be read")
        };
        s.bdat_chunk(b"RSET\r\nQUIT");
        let Err(Action::Reply(r)) = s.bdat_end(10, false) else {
            panic!("refusal expected")
        };
        assert_eq!(r.code, 503);
        // A size that would wrap the running total is too big, not small.
        s.command(b"MAIL FROM:<a@b.test>");
        s.command(b"RCPT TO:<x@example.test>");
        let Action::Bdat { .. } = s.command(b"BDAT 1") else {
            panic!()
        };
        s.bdat_chunk(b"x");
        let _ = s.bdat_end(1, false);
        let Action::Bdat { .. } = s.command(b"BDAT 18446744073709551615 LAST") else {
            panic!()
        };
        s.bdat_chunk(b"more");
        let Err(Action::Reply(r)) = s.bdat_end(u64::MAX, true) else {
            panic!("refusal expected")
        };
        assert_eq!(r.code, 552);
    }

    #[test]
    fn ordering_is_enforced() {
        let mut s = Session::new(cfg(), "192.0.2.1".parse().unwrap());
        assert_eq!(code(s.command(b"MAIL FROM:<a@b.test>")), 503);
        assert_eq!(code(s.command(b"EHLO c.test")), 250);
        assert_eq!(code(s.command(b"RCPT TO:<x@example.test>")), 503);
        assert_eq!(code(s.command(b"MAIL FROM:<a@b.test>")), 250);
    }

    #[test]
    fn relay_control() {
        let mut s = Session::new(cfg(), "192.0.2.1".parse().unwrap());
        s.command(b"EHLO c.test");
        s.command(b"MAIL FROM:<a@b.test>");
        assert_eq!(code(s.command(b"RCPT TO:<x@example.test>")), 250);
        assert_eq!(code(s.command(b"RCPT TO:<x@elsewhere.test>")), 554);
        let mut t = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        t.command(b"EHLO c.test");
        t.command(b"MAIL FROM:<a@b.test>");
        assert_eq!(code(t.command(b"RCPT TO:<x@elsewhere.test>")), 250);
    }

    #[test]
    fn limits_and_error_cap() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        s.command(b"EHLO c.test");
        assert_eq!(code(s.command(b"MAIL FROM:<a@b.test> SIZE=5000")), 552);
        s.command(b"MAIL FROM:<a@b.test>");
        s.command(b"RCPT TO:<1@example.test>");
        s.command(b"RCPT TO:<2@example.test>");
        assert_eq!(code(s.command(b"RCPT TO:<3@example.test>")), 452);
        // The third error closes the session.
        assert!(matches!(s.command(b"BOGUS"), Action::Close(r) if r.code == 421));
    }

    #[test]
    fn data_produces_envelope_with_received() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        s.command(b"EHLO c.test");
        s.command(b"MAIL FROM:<>");
        s.command(b"RCPT TO:<x@example.test>");
        assert_eq!(code(s.command(b"DATA")), 354);
        let msg = s
            .data_done(Ok(b"Subject: t\r\n\r\nhi\r\n".to_vec()))
            .unwrap();
        assert!(msg.envelope.sender.is_none());
        assert_eq!(msg.envelope.recipients.len(), 1);
        assert!(msg.body.starts_with(b"Received: from c.test ([127.0.0.1])"));
        assert!(msg.body.ends_with(b"\r\n\r\nhi\r\n"));
        // Back to Ready: a new transaction may start.
        assert_eq!(code(s.command(b"MAIL FROM:<a@b.test>")), 250);
    }

    #[test]
    fn bad_data_is_refused_and_session_continues() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        s.command(b"EHLO c.test");
        s.command(b"MAIL FROM:<a@b.test>");
        s.command(b"RCPT TO:<x@example.test>");
        s.command(b"DATA");
        let err = s.data_done(Err(DataError::BareLineEnding)).unwrap_err();
        assert_eq!(code(err), 550);
        assert_eq!(code(s.command(b"MAIL FROM:<a@b.test>")), 250);
    }
}
