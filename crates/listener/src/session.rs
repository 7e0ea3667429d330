//! The SMTP session state machine, owning its decoders (as Stalwart's
//! smtp-proto does).
//!
//! [`Session::ingest`] (in `input`) takes the bytes the client sent and runs
//! them through the decoder the session is in: the line codec between
//! commands, the DATA receiver that the `Data` state owns, or the BDAT chunk
//! being read. It returns what the I/O loop must do next ([`Step`]): read
//! more, hand a message to the sink, verify credentials, start TLS or close;
//! the replies to write are taken with [`Session::take_replies`].
//!
//! [`Session`] owns a `State` enum whose variants own their data; each verb
//! has a handler that returns an `Action` (a reply, and what comes next).
//! Nothing here touches a socket, so every rule (ordering, relay control,
//! limits, error counting, the BDAT rules) is tested directly below. Other
//! entry points: [`Session::greeting`], [`Session::delivered`] and
//! [`Session::verified`] (the answers to a [`Step`]).
//!
//! Rules for an untrusted Internet: message data is stored under the
//! process's data budget (452 4.3.1 when it is spent; the share is held until
//! the sink has answered), a message with more Received fields than
//! `max_hops` is a loop (554 5.4.6), IP-literal senders need a trusted or
//! authenticated client (550 5.7.1), commands that carry no mail (repeated
//! greetings and empty BDAT chunks included) count against `max_noops`, and
//! an AUTH attempt counts as a failure from its check until its verdict, on
//! one of a capped number of concurrent verifications.

mod input;

pub use input::Step;

use crate::auth::{Attempt, VerifyPermit};
use crate::budget::Reservation;
use crate::codec::LineCodec;
use crate::command::{self, Command};
use crate::data::{DataError, DataReceiver};
use crate::{ReceivedMessage, Reply, SessionConfig};
use postern_core::{Address, Envelope, QueueId, Recipient};
use std::net::IpAddr;
use std::sync::Arc;

/// A transaction being built between MAIL and the end of DATA or BDAT LAST.
#[derive(Debug)]
struct Transaction {
    /// The reverse path; `None` is the null sender `<>`.
    sender: Option<Address>,
    /// Accepted RCPTs with their DSN parameters.
    recipients: Vec<Recipient>,
    /// RFC 3461 RET=FULL.
    ret_full: bool,
    /// RFC 3461 ENVID.
    envid: Option<String>,
    /// The client declared BODY=8BITMIME.
    eight_bit: bool,
    /// The client declared SMTPUTF8 (RFC 6531).
    smtputf8: bool,
    /// The size the client declared (SIZE=), a hint for the buffer.
    declared_size: Option<u64>,
    /// Message data received by BDAT so far; `None` until the first
    /// accepted chunk (and then DATA is refused).
    bdat: Option<BdatBody>,
}

/// Message data received by BDAT chunks (RFC 3030), stored as sent: BDAT
/// has no dot-stuffing.
#[derive(Debug)]
struct BdatBody {
    /// The accepted chunks' octets, in order.
    data: Vec<u8>,
    /// Octets of the accepted chunks so far, stored or not: what the size
    /// limit is checked against.
    octets: u64,
    /// The chunks passed the size limit: the rest is discarded (memory
    /// stays bounded) and LAST is answered 552.
    too_big: bool,
    /// The memory budget of every session together was spent: the rest is
    /// discarded and LAST is answered 452.
    no_storage: bool,
    /// `data`'s octets, reserved against the process's data budget.
    budget: Reservation,
}

impl BdatBody {
    fn new(budget: Reservation) -> BdatBody {
        BdatBody {
            data: Vec::new(),
            octets: 0,
            too_big: false,
            no_storage: false,
            budget,
        }
    }

    /// Keeps a chunk's octets unless the message is already refused, or
    /// the budget has no room for them.
    fn push(&mut self, octets: &[u8]) {
        self.octets = self.octets.saturating_add(octets.len() as u64);
        if self.too_big || self.no_storage {
            return;
        }
        if !self.budget.grow(octets.len()) {
            self.no_storage = true;
            self.data = Vec::new();
            self.budget.release();
            return;
        }
        self.data.extend_from_slice(octets);
    }

    /// The verdict at LAST: the body with its reservation, or why the
    /// message is refused.
    fn finish(self, max_text_line: usize) -> Result<(Vec<u8>, Reservation), DataError> {
        if self.too_big {
            return Err(DataError::TooBig);
        }
        if self.no_storage {
            return Err(DataError::NoStorage);
        }
        crate::data::check_strict(&self.data, max_text_line)?;
        Ok((self.data, self.budget))
    }
}

/// Where the session stands; each variant owns what it needs.
#[derive(Debug)]
enum State {
    /// Connected, no EHLO/HELO yet.
    Fresh,
    /// Greeted; no transaction.
    Ready { helo: String, esmtp: bool },
    /// MAIL accepted; collecting RCPTs (and BDAT chunks).
    Mail {
        helo: String,
        esmtp: bool,
        tx: Transaction,
    },
    /// DATA accepted: input goes to `rx` until `<CRLF>.<CRLF>`.
    Data {
        helo: String,
        esmtp: bool,
        tx: Transaction,
        rx: DataReceiver,
    },
}

/// What a handler decided: a reply, and what the session does next.
#[derive(Debug)]
enum Action {
    Reply(Reply),
    /// Send the reply (354); the session is in `State::Data` with its
    /// receiver.
    StartData(Reply),
    /// Send the reply (220) and start the TLS handshake; anything the client
    /// pipelined after STARTTLS is discarded.
    StartTls(Reply),
    /// Check these credentials (slowly, off the loop, holding `permit`),
    /// then call [`Session::verified`].
    Authenticate {
        user: String,
        pass: String,
        permit: VerifyPermit,
    },
    /// Read this BDAT chunk's octets as message data.
    Bdat(Chunk),
    /// Send the reply and close the connection.
    Close(Reply),
}

/// A BDAT chunk being read. Its octets are message data whatever the state,
/// even when the chunk is refused, so they are never taken for commands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    /// Octets announced by the BDAT command (the 250 reply names them).
    size: u64,
    /// Octets still to come; the chunk ends at 0.
    remaining: u64,
    /// BDAT ... LAST: the message ends with this chunk.
    last: bool,
    /// The reply refusing the chunk (no transaction, no recipients), sent
    /// once its octets have been read and dropped.
    refused: Option<Reply>,
}

/// One client connection's protocol state and decoders.
pub struct Session {
    /// Limits and identity of the listener the session belongs to.
    cfg: Arc<SessionConfig>,
    /// The client's address: relay decisions, the AUTH limiter, Received.
    peer: IpAddr,
    /// Where the protocol stands; the DATA receiver lives in `State::Data`.
    state: State,
    /// Error replies so far, against `max_errors`.
    errors: u32,
    /// The negotiated TLS version and cipher, once the session is encrypted.
    tls: Option<String>,
    /// Commands that carry no mail seen (NOOP, RSET, VRFY, HELP, a repeated
    /// EHLO/HELO, BDAT 0 without LAST), against `max_noops`.
    noops: u32,
    /// The authenticated user, after a successful AUTH.
    user: Option<String>,
    /// The AUTH attempt being verified: it counts as a failure until
    /// [`Session::verified`] settles it.
    attempt: Option<Attempt>,
    /// The reservation of the message handed to the sink, released once
    /// the sink has answered ([`Session::delivered`]).
    delivering: Option<Reservation>,
    /// A SASL exchange in progress: the next line is its response.
    sasl: Option<Sasl>,
    /// Frames command lines; kept for the whole session so the rest of an
    /// over-long line is skipped even when it arrives in later reads.
    codec: LineCodec,
    /// The BDAT chunk being read, in any state (see [`Chunk`]).
    chunk: Option<Chunk>,
    /// Replies not yet taken by the loop: everything answered while the
    /// buffered input lasts goes out in one write (pipelining).
    replies: Vec<Reply>,
    /// DATA or a BDAT chunk began or ended since the loop last asked: the
    /// phase deadline starts over.
    phase_changed: bool,
    /// QUIT, or too many errors: nothing more is read; the loop writes the
    /// replies and closes.
    closed: bool,
}

/// Where a SASL exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sasl {
    Plain,
    LoginUser,
    LoginPass(String),
}

impl Session {
    /// A session on a new plaintext connection from `peer`.
    pub fn new(cfg: Arc<SessionConfig>, peer: IpAddr) -> Session {
        let codec = LineCodec::new(cfg.max_command_line);
        Session {
            cfg,
            peer,
            state: State::Fresh,
            errors: 0,
            tls: None,
            noops: 0,
            user: None,
            attempt: None,
            delivering: None,
            sasl: None,
            codec,
            chunk: None,
            replies: Vec::new(),
            phase_changed: false,
            closed: false,
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

    /// The 220 greeting.
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, vec![format!("{} ESMTP Postern", self.cfg.hostname)])
    }

    /// Between MAIL FROM and the end of the message.
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Mail { .. } | State::Data { .. })
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
    fn line_too_long(&mut self) -> Action {
        self.finish(Action::Reply(Reply::new(500, "5.5.2", "line too long")))
    }

    /// Handles one command line (or SASL response line).
    fn command(&mut self, line: &[u8]) -> Action {
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
        if let Some(close) = self.count_noop(&cmd) {
            return close;
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

    /// In `trusted_networks`, or authenticated.
    fn trusted_client(&self) -> bool {
        self.cfg.relay.is_trusted(self.peer) || self.user.is_some()
    }

    /// Commands that carry no mail count against `max_noops`, so a client
    /// that sends no mail cannot hold the session; past the limit it is
    /// closed. They are NOOP, RSET, VRFY, HELP, and for untrusted,
    /// unauthenticated clients every EHLO or HELO after the session's first
    /// greeting and BDAT 0 without LAST (an empty chunk). The count is never
    /// reset within a session.
    fn count_noop(&mut self, cmd: &Command) -> Option<Action> {
        let counted = match cmd {
            Command::Noop | Command::Rset | Command::Vrfy | Command::Help => true,
            // Repeated greetings and empty chunks are a keep-alive only
            // for clients we do not trust.
            Command::Ehlo(_) | Command::Helo(_) => {
                !matches!(self.state, State::Fresh) && !self.trusted_client()
            }
            Command::Bdat { size: 0, last } => !last && !self.trusted_client(),
            _ => false,
        };
        if !counted {
            return None;
        }
        self.noops += 1;
        (self.noops > self.cfg.max_noops).then(|| {
            Action::Close(Reply::new(
                421,
                "4.7.0",
                "too many commands without mail, closing",
            ))
        })
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
        if sender.as_ref().is_some_and(is_ip_literal)
            && self.user.is_none()
            && !self.cfg.relay.is_trusted(self.peer)
        {
            // A DSN to an address the client chose (an internal host, or
            // ourselves) would be reflection, or a loop.
            return Action::Reply(Reply::new(
                550,
                "5.7.1",
                "IP-literal senders are not accepted from this client",
            ));
        }
        // Draining: a session opened before finishes the transaction it
        // was in, but starts no other; the client goes to another server.
        if self.cfg.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Action::Close(Reply::new(
                421,
                "4.3.2",
                "this server is draining; please try another server",
            ));
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
                declared_size: size,
                ret_full: false,
                envid: None,
                bdat: None,
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
        match &self.state {
            State::Mail { tx, .. } if tx.bdat.is_some() => {
                return Action::Reply(Reply::new(503, "5.5.1", "DATA not allowed after BDAT"));
            }
            State::Mail { tx, .. } if tx.recipients.is_empty() => {
                return Action::Reply(Reply::new(554, "5.5.1", "no valid recipients"));
            }
            State::Mail { .. } => {}
            _ => return Action::Reply(Reply::new(503, "5.5.1", "need MAIL and RCPT before DATA")),
        }
        let hint = match &self.state {
            State::Mail { tx, .. } => tx.declared_size.unwrap_or(0),
            _ => 0,
        };
        let rx = DataReceiver::with_hint(
            usize::try_from(self.cfg.max_message_size).unwrap_or(usize::MAX),
            self.cfg.max_text_line,
            self.reservation(),
            usize::try_from(hint).unwrap_or(usize::MAX),
        );
        if let State::Mail { helo, esmtp, tx } = std::mem::replace(&mut self.state, State::Fresh) {
            self.state = State::Data {
                helo,
                esmtp,
                tx,
                rx,
            };
        }
        Action::StartData(Reply::plain(
            354,
            vec!["end data with <CR><LF>.<CR><LF>".into()],
        ))
    }

    /// An empty reservation against the process's data budget, for the
    /// body of a message about to be received.
    /// A reservation against the data budget: an untrusted client's is
    /// also held to its share (keyed as the per-IP limits are).
    fn reservation(&self) -> Reservation {
        let (budget, limit) = (&self.cfg.data_budget, self.cfg.max_data_in_memory);
        match self.trusted_client() {
            true => Reservation::new(budget, limit),
            false => Reservation::for_client(budget, limit, crate::limits::client_key(self.peer)),
        }
    }

    fn bdat(&mut self, size: u64, last: bool) -> Action {
        // A refused chunk is still read (and dropped), so its octets are
        // never taken for commands; the refusal is the chunk's reply.
        let cfg = &self.cfg;
        let refused = match &mut self.state {
            State::Mail { tx, .. } if tx.recipients.is_empty() => {
                Some(Reply::new(554, "5.5.1", "no valid recipients"))
            }
            State::Mail { tx, .. } => {
                let body = tx.bdat.get_or_insert_with(|| {
                    BdatBody::new(Reservation::new(&cfg.data_budget, cfg.max_data_in_memory))
                });
                if size > cfg.max_message_size.saturating_sub(body.octets) {
                    body.too_big = true;
                }
                None
            }
            _ => Some(Reply::new(503, "5.5.1", "need MAIL and RCPT before BDAT")),
        };
        Action::Bdat(Chunk {
            size,
            remaining: size,
            last,
            refused,
        })
    }

    /// Octets of an accepted BDAT chunk.
    fn bdat_chunk(&mut self, octets: &[u8]) {
        if let State::Mail {
            tx: Transaction {
                bdat: Some(body), ..
            },
            ..
        } = &mut self.state
        {
            body.push(octets);
        }
    }

    /// The chunk is complete: its refusal, or 250 for a middle chunk; for
    /// the LAST one, the message (or the refusal), as at the end of DATA.
    fn bdat_end(&mut self, chunk: Chunk) -> Result<ReceivedMessage, Action> {
        if let Some(r) = chunk.refused {
            return Err(self.finish(Action::Reply(r)));
        }
        if !chunk.last {
            return Err(Action::Reply(Reply::new(
                250,
                "2.0.0",
                format!("{} octets received", chunk.size),
            )));
        }
        let State::Mail {
            helo,
            esmtp,
            mut tx,
        } = std::mem::replace(&mut self.state, State::Fresh)
        else {
            return Err(Action::Reply(Reply::new(503, "5.5.1", "no transaction")));
        };
        let body = match tx.bdat.take() {
            Some(body) => body,
            None => BdatBody::new(self.reservation()),
        };
        let verdict = body.finish(self.cfg.max_text_line);
        self.complete(helo, esmtp, tx, verdict)
    }

    /// The message data is complete (DATA's terminator, or BDAT LAST) with
    /// this verdict (the body with its reservation, held until the sink has
    /// answered). Returns the message for the sink, or the reply refusing
    /// it: a data error, or more Received fields than `max_hops` (a mail
    /// loop, counted in what the client sent, before our own Received). The
    /// session is ready for the next transaction either way.
    fn complete(
        &mut self,
        helo: String,
        esmtp: bool,
        tx: Transaction,
        verdict: Result<(Vec<u8>, Reservation), DataError>,
    ) -> Result<ReceivedMessage, Action> {
        self.state = State::Ready {
            helo: helo.clone(),
            esmtp,
        };
        let reply = match verdict {
            Ok((body, held)) => match hop_refusal(&body, self.cfg.max_hops) {
                None => {
                    self.delivering = Some(held);
                    return Ok(self.message(helo, esmtp, tx, body));
                }
                Some(reply) => reply,
            },
            Err(e) => data_refusal(e, self.cfg.max_text_line),
        };
        Err(self.finish(Action::Reply(reply)))
    }

    /// The accepted message: envelope, and the body behind our Received
    /// header.
    fn message(
        &self,
        helo: String,
        esmtp: bool,
        tx: Transaction,
        mut body: Vec<u8>,
    ) -> ReceivedMessage {
        let id = QueueId::generate();
        let now = postern_core::now_ms();
        let trace = received_header(
            &self.cfg.hostname,
            &helo,
            self.peer,
            esmtp,
            self.tls.as_deref(),
            id,
            &tx,
        );
        let trace_len = trace.len();
        // The header goes in front of the received buffer: no second copy
        // of the body.
        body.splice(0..0, trace);
        let envelope = Envelope {
            id,
            sender: tx.sender,
            recipients: tx.recipients,
            client: self.peer.to_string(),
            helo,
            received_ms: now,
            size: body.len() as u64,
            eight_bit: tx.eight_bit,
            message_id: None,
            smtputf8: tx.smtputf8,
            dsn_ret_full: tx.ret_full,
            dsn_envid: tx.envid,
            trusted: self.cfg.relay.is_trusted(self.peer) || self.user.is_some(),
        };
        ReceivedMessage {
            envelope,
            body,
            trace_len,
        }
    }

    fn rset(&mut self) -> Action {
        self.reset();
        Action::Reply(Reply::new(250, "2.0.0", "reset"))
    }

    /// Drops any transaction (with its BDAT data), keeping the greeting.
    fn reset(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Fresh) {
            State::Fresh => State::Fresh,
            State::Ready { helo, esmtp }
            | State::Mail { helo, esmtp, .. }
            | State::Data { helo, esmtp, .. } => State::Ready { helo, esmtp },
        };
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

    /// Credentials to verify: the failure limit is checked and the attempt
    /// counted as a failure in one step (so parallel attempts cannot all
    /// pass the check), then one of the concurrent verifications is taken
    /// (over the cap: 454, and the attempt is not counted).
    fn check(&mut self, user: String, pass: String) -> Action {
        let now = std::time::Instant::now();
        let limiter = &self.cfg.auth_limiter;
        let Some(attempt) = limiter.begin(self.peer, &user, now) else {
            return Action::Reply(Reply::new(
                454,
                "4.7.0",
                "too many failed attempts, try again later",
            ));
        };
        let Some(permit) = limiter.try_verify(self.cfg.max_auth_verifies) else {
            return Action::Reply(Reply::new(
                454,
                "4.7.0",
                "temporary authentication failure, try again later",
            ));
        };
        self.attempt = Some(attempt);
        Action::Authenticate { user, pass, permit }
    }

    /// The result of an [`Action::Authenticate`]; settles the attempt.
    fn auth_done(&mut self, user: String, ok: bool) -> Action {
        let attempt = self.attempt.take();
        if ok {
            tracing::info!(peer = %self.peer, %user, "authenticated");
            self.user = Some(user);
            return Action::Reply(Reply::new(235, "2.7.0", "authentication succeeded"));
        }
        if let Some(attempt) = attempt {
            attempt.failed(std::time::Instant::now());
        }
        self.finish(Action::Reply(Reply::new(
            535,
            "5.7.8",
            "authentication credentials invalid",
        )))
    }
}

/// The reply refusing message data that failed a check.
fn data_refusal(e: DataError, max_text_line: usize) -> Reply {
    match e {
        DataError::BareLineEnding => Reply::new(
            550,
            "5.6.0",
            "bare CR or LF in message data: lines must end with CRLF",
        ),
        DataError::LineTooLong => Reply::new(
            550,
            "5.6.0",
            format!("line longer than {max_text_line} octets"),
        ),
        DataError::Nul => Reply::new(550, "5.6.0", "NUL octet in message data"),
        DataError::TooBig => Reply::new(
            552,
            "5.3.4",
            "message size exceeds fixed maximum message size",
        ),
        DataError::NoStorage => {
            Reply::new(452, "4.3.1", "insufficient system storage, try again later")
        }
    }
}

/// The reply refusing a message whose header section (what the client
/// sent) counts more than `max_hops` hops (0: no limit): Received fields
/// plus those outbound hygiene removed on an earlier pass
/// ([`postern_core::hops`]). It has been relayed that often, most likely
/// in a loop (Postfix's hopcount_limit).
fn hop_refusal(message: &[u8], max_hops: usize) -> Option<Reply> {
    if max_hops == 0 {
        return None;
    }
    let hops = postern_core::hops::count(message);
    (hops > max_hops).then(|| {
        Reply::new(
            554,
            "5.4.6",
            format!("too many hops ({hops}, limit {max_hops}): mail loop?"),
        )
    })
}

/// True when an address's domain is an address literal (`[192.0.2.1]`,
/// `[IPv6:...]`): the parser keeps literals bracketed.
fn is_ip_literal(a: &Address) -> bool {
    a.domain.starts_with('[')
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
    let date = postern_core::date::rfc5322(std::time::SystemTime::now());
    format!(
        "Received: from {helo} ([{peer}])\r\n\tby {hostname} (Postern) with {with} id {id}{for_clause};\r\n\t{date}\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Arc<SessionConfig> {
        crate::config::test_config()
    }

    fn code(a: Action) -> u16 {
        match a {
            Action::Reply(r) | Action::StartData(r) | Action::Close(r) | Action::StartTls(r) => {
                r.code
            }
            Action::Authenticate { .. } | Action::Bdat(_) => 0,
        }
    }

    /// The codes of the replies waiting for the loop.
    fn codes(s: &mut Session) -> Vec<u16> {
        s.take_replies().map(|r| r.code).collect()
    }

    #[test]
    fn a_draining_server_finishes_the_transaction_but_starts_no_other() {
        let c = cfg();
        let mut s = Session::new(c.clone(), "127.0.0.1".parse().unwrap());
        s.command(b"EHLO c.test");
        assert_eq!(code(s.command(b"MAIL FROM:<a@b.test>")), 250);
        c.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        // The transaction under way goes on.
        assert_eq!(code(s.command(b"RCPT TO:<x@example.test>")), 250);
        s.command(b"RSET");
        let Action::Close(r) = s.command(b"MAIL FROM:<a@b.test>") else {
            panic!("a new transaction while draining must be refused and closed")
        };
        assert_eq!((r.code, r.status), (421, Some("4.3.2")));
    }

    #[test]
    fn refused_bdat_chunk_is_consumed_and_sizes_cannot_wrap() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        s.command(b"EHLO c.test");
        // No transaction: the chunk is still read (its octets are not
        // commands), then refused.
        let Action::Bdat(chunk @ Chunk { size: 10, .. }) = s.command(b"BDAT 10") else {
            panic!("chunk must be read")
        };
        s.bdat_chunk(b"RSET\r\nQUIT");
        let Err(Action::Reply(r)) = s.bdat_end(chunk) else {
            panic!("refusal expected")
        };
        assert_eq!(r.code, 503);
        // A size that would wrap the running total is too big, not small.
        s.command(b"MAIL FROM:<a@b.test>");
        s.command(b"RCPT TO:<x@example.test>");
        let Action::Bdat(chunk) = s.command(b"BDAT 1") else {
            panic!()
        };
        s.bdat_chunk(b"x");
        let _ = s.bdat_end(chunk);
        let Action::Bdat(chunk) = s.command(b"BDAT 18446744073709551615 LAST") else {
            panic!()
        };
        s.bdat_chunk(b"more");
        let Err(Action::Reply(r)) = s.bdat_end(chunk) else {
            panic!("refusal expected")
        };
        assert_eq!(r.code, 552);
    }

    #[test]
    fn refused_chunk_octets_never_become_commands() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        let input = b"EHLO c.test\r\nBDAT 10\r\nRSET\r\nQUIT";
        let (used, step) = s.ingest(input);
        assert_eq!(used, input.len());
        assert!(matches!(step, Step::Read));
        assert_eq!(codes(&mut s), [250, 503]);
        assert!(!s.reading_message(), "the chunk ended");
        assert!(matches!(s.ingest(b"NOOP\r\n"), (6, Step::Read)));
        assert_eq!(codes(&mut s), [250]);
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
    fn noop_limit_closes_the_session() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        for _ in 0..5 {
            assert_eq!(code(s.command(b"NOOP")), 250);
        }
        assert!(matches!(s.command(b"RSET"), Action::Close(r) if r.code == 421));
    }

    #[test]
    fn data_refusals() {
        for (e, want, status) in [
            (DataError::BareLineEnding, 550, "5.6.0"),
            (DataError::LineTooLong, 550, "5.6.0"),
            (DataError::Nul, 550, "5.6.0"),
            (DataError::TooBig, 552, "5.3.4"),
        ] {
            let r = data_refusal(e, 1000);
            assert_eq!((r.code, r.status), (want, Some(status)), "{e:?}");
        }
        let r = data_refusal(DataError::LineTooLong, 998);
        assert_eq!(r.lines, ["line longer than 998 octets"]);
    }

    #[test]
    fn data_produces_envelope_with_received() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        s.command(b"EHLO c.test");
        s.command(b"MAIL FROM:<>");
        s.command(b"RCPT TO:<x@example.test>");
        assert_eq!(code(s.command(b"DATA")), 354);
        let (_, Step::Deliver(msg)) = s.ingest(b"Subject: t\r\n\r\nhi\r\n.\r\n") else {
            panic!("message expected")
        };
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
        // A bare LF: the message is refused, the session goes on.
        assert!(matches!(s.ingest(b"x\ny\r\n.\r\n"), (8, Step::Read)));
        assert_eq!(codes(&mut s), [550]);
        assert_eq!(code(s.command(b"MAIL FROM:<a@b.test>")), 250);
    }

    #[test]
    fn pipelined_transaction_waits_for_the_sink() {
        let mut s = Session::new(cfg(), "192.0.2.1".parse().unwrap());
        let input: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n\
            DATA\r\nSubject: t\r\n\r\n..hi\r\n.\r\nQUIT\r\nNOOP\r\n";
        let (used, step) = s.ingest(input);
        let Step::Deliver(msg) = step else {
            panic!("the message goes to the sink first")
        };
        assert_eq!(codes(&mut s), [250, 250, 250, 354]);
        assert_eq!(&msg.body[msg.trace_len..], b"Subject: t\r\n\r\n.hi\r\n");
        // The sink's answer is sent as is, then the rest is read.
        s.delivered(Reply::new(250, "2.0.0", "queued"));
        let (rest, step) = s.ingest(&input[used..]);
        assert!(matches!(step, Step::Close));
        assert_eq!(&input[used..used + rest], b"QUIT\r\n", "nothing after QUIT");
        assert_eq!(codes(&mut s), [250, 221]);
        assert!(matches!(s.ingest(b"NOOP\r\n"), (0, Step::Close)));
    }

    #[test]
    fn data_and_bdat_chunks_change_the_phase() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        s.ingest(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n");
        assert_eq!(codes(&mut s), [250, 250, 250]);
        assert!(!s.take_phase_change());
        // A chunk split across reads, then BDAT 0 LAST (no phase of its own).
        assert!(matches!(s.ingest(b"BDAT 5\r\nab"), (10, Step::Read)));
        assert!(s.reading_message() && s.take_phase_change());
        assert!(!s.take_phase_change(), "taken");
        let (used, step) = s.ingest(b"cdeBDAT 0 LAST\r\n");
        assert_eq!(used, 16);
        let Step::Deliver(msg) = step else {
            panic!("message expected")
        };
        assert_eq!(&msg.body[msg.trace_len..], b"abcde");
        assert_eq!(codes(&mut s), [250]);
        assert!(!s.reading_message() && s.take_phase_change());
        // DATA starts a phase and its terminator ends it.
        s.delivered(Reply::new(250, "2.0.0", "queued"));
        s.ingest(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
        assert!(s.reading_message() && s.take_phase_change());
        assert!(matches!(s.ingest(b".\r\n"), (3, Step::Deliver(_))));
        assert!(!s.reading_message() && s.take_phase_change());
    }

    #[test]
    fn ehlo_ends_a_bdat_transaction_with_its_chunks() {
        let mut s = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        s.ingest(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n");
        s.ingest(b"BDAT 5\r\nold\r\nEHLO c.test\r\n");
        s.ingest(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n");
        // The chunk went with its transaction: DATA is allowed again, and
        // none of the old octets reach the new message.
        let (_, Step::Deliver(msg)) = s.ingest(b"DATA\r\nnew\r\n.\r\n") else {
            panic!("message expected")
        };
        assert_eq!(&msg.body[msg.trace_len..], b"new\r\n");
        assert_eq!(codes(&mut s), [250, 250, 250, 250, 250, 250, 250, 354]);
    }

    #[test]
    fn auth_asks_the_loop_to_verify() {
        let dir = std::env::temp_dir().join(format!("postern-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join("users");
        std::fs::write(&users, "# nobody yet\n").unwrap();
        let config = Arc::new(SessionConfig {
            users: Some(Arc::new(crate::auth::UserDb::load(&users).unwrap())),
            ..(*cfg()).clone()
        });
        let mut s = Session::encrypted(config, "192.0.2.1".parse().unwrap(), "TLSv1_3".into());
        // PLAIN with "\0alice\0pw".
        let input = b"EHLO c.test\r\nAUTH PLAIN AGFsaWNlAHB3\r\nNOOP\r\n";
        let (used, step) = s.ingest(input);
        let Step::Verify { user, pass, .. } = step else {
            panic!("credentials to verify")
        };
        assert_eq!((user.as_str(), pass.as_str()), ("alice", "pw"));
        s.verified(user, false);
        assert!(matches!(s.ingest(&input[used..]), (6, Step::Read)));
        assert_eq!(codes(&mut s), [250, 535, 250]);
    }

    /// A configuration offering AUTH (an empty users file named after the
    /// test) with a limiter of its own.
    fn auth_config(test: &str, max_failures: u32, max_auth_verifies: usize) -> Arc<SessionConfig> {
        let dir = std::env::temp_dir().join(format!("postern-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let users = dir.join(format!("users-{test}"));
        std::fs::write(&users, "# nobody yet\n").unwrap();
        Arc::new(SessionConfig {
            users: Some(Arc::new(crate::auth::UserDb::load(&users).unwrap())),
            auth_limiter: crate::AuthLimiter::new(max_failures),
            max_auth_verifies,
            ..(*cfg()).clone()
        })
    }

    /// An encrypted session from `peer` after EHLO and AUTH PLAIN for
    /// alice, and what it asks the loop to do.
    fn auth_from(config: &Arc<SessionConfig>, peer: &str) -> (Session, Step) {
        let mut s = Session::encrypted(config.clone(), peer.parse().unwrap(), "TLSv1_3".into());
        let (_, step) = s.ingest(b"EHLO c.test\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
        (s, step)
    }

    /// The last reply waiting for the loop.
    fn last_reply(s: &mut Session) -> Reply {
        s.take_replies().next_back().expect("a reply")
    }

    // Finding "AUTH: the failure limit is checked before the slow Argon2
    // verify and recorded after it, so parallel attempts bypass it": before,
    // all five attempts were verified.
    #[test]
    fn parallel_auth_attempts_cannot_pass_the_failure_limit() {
        let config = auth_config("parallel", 2, 10);
        let mut verifying = Vec::new();
        for _ in 0..5 {
            let (mut s, step) = auth_from(&config, "192.0.2.1");
            match step {
                Step::Verify { user, .. } => verifying.push((s, user)),
                Step::Read => assert_eq!(
                    last_reply(&mut s),
                    Reply::new(454, "4.7.0", "too many failed attempts, try again later")
                ),
                _ => panic!("verify or refuse"),
            }
        }
        assert_eq!(verifying.len(), 2, "only as many as the limit are checked");
        for (mut s, user) in verifying {
            s.verified(user, false);
            assert_eq!(codes(&mut s), [250, 535]);
        }
        let (mut s, step) = auth_from(&config, "192.0.2.1");
        assert!(matches!(step, Step::Read), "both failures were recorded");
        assert_eq!(last_reply(&mut s).code, 454);
    }

    #[test]
    fn successful_or_abandoned_attempts_stop_counting() {
        let config = auth_config("settled", 1, 10);
        let (mut a, step) = auth_from(&config, "192.0.2.1");
        let Step::Verify { user, .. } = step else {
            panic!("first attempt")
        };
        // While alice's password is being checked, her next attempt waits.
        let (_, step) = auth_from(&config, "192.0.2.9");
        assert!(matches!(step, Step::Read));
        a.verified(user, true);
        assert_eq!(codes(&mut a), [250, 235]);
        let (b, step) = auth_from(&config, "192.0.2.9");
        assert!(
            matches!(step, Step::Verify { .. }),
            "a success is no failure"
        );
        // A session that ends before the verdict gives its place back.
        drop((b, step));
        let (_, step) = auth_from(&config, "192.0.2.9");
        assert!(matches!(step, Step::Verify { .. }));
    }

    // Finding "hundreds of concurrent verifies at 19 MiB each can exhaust
    // memory": over the cap the client hears 454 and nothing runs; before,
    // every attempt started a verification.
    #[test]
    fn concurrent_verifications_are_capped() {
        let config = auth_config("cap", 100, 1);
        let (mut a, step) = auth_from(&config, "192.0.2.1");
        let Step::Verify { user, permit, .. } = step else {
            panic!("first verification")
        };
        let (mut b, step) = auth_from(&config, "192.0.2.2");
        assert!(matches!(step, Step::Read), "no second verification");
        assert_eq!(
            last_reply(&mut b),
            Reply::new(
                454,
                "4.7.0",
                "temporary authentication failure, try again later"
            )
        );
        // The check ends (the permit goes with the Argon2 run): the next
        // attempt may start, and the refused one was not a failure.
        drop(permit);
        a.verified(user, false);
        let (_, step) = auth_from(&config, "192.0.2.2");
        assert!(matches!(step, Step::Verify { .. }));
    }

    // Finding "EHLO and BDAT 0 keep a session alive past the NOOP cap":
    // before, both were answered 250 forever.
    #[test]
    fn repeated_greetings_and_empty_chunks_count_as_noops() {
        // A trusted client may greet again as often as it likes.
        let mut t = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        for _ in 0..10 {
            assert_eq!(code(t.command(b"EHLO c.test")), 250);
        }
        // Untrusted: max_noops is 5; the first greeting is free.
        let mut s = Session::new(cfg(), "192.0.2.1".parse().unwrap());
        assert_eq!(code(s.command(b"EHLO c.test")), 250);
        for _ in 0..5 {
            assert_eq!(code(s.command(b"HELO c.test")), 250);
        }
        assert!(matches!(s.command(b"EHLO c.test"), Action::Close(r) if r.code == 421));
        let mut b = Session::new(cfg(), "192.0.2.1".parse().unwrap());
        b.ingest(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n");
        for _ in 0..5 {
            assert!(matches!(b.ingest(b"BDAT 0\r\n"), (8, Step::Read)));
        }
        assert_eq!(codes(&mut b), [250; 8]);
        assert!(matches!(b.ingest(b"BDAT 0\r\n"), (8, Step::Close)));
        assert_eq!(codes(&mut b), [421]);
        // BDAT 0 LAST ends a message: it is not counted.
        let mut c = Session::new(cfg(), "127.0.0.1".parse().unwrap());
        c.ingest(b"EHLO c.test\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n");
        c.ingest(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nBDAT 1\r\nx");
        assert!(matches!(
            c.ingest(b"BDAT 0 LAST\r\n"),
            (13, Step::Deliver(_))
        ));
    }

    // Finding "reflection": a DSN to an IP literal the client chose.
    // Before, every MAIL below was answered 250.
    #[test]
    fn ip_literal_senders_need_a_trusted_or_authenticated_client() {
        let config = Arc::new(SessionConfig {
            max_errors: 100,
            ..(*cfg()).clone()
        });
        let mut s = Session::new(config.clone(), "192.0.2.1".parse().unwrap());
        s.command(b"EHLO c.test");
        for sender in ["<x@[127.0.0.1]>", "<x@[IPv6:::1]>", "<victim@[192.0.2.5]>"] {
            let Action::Reply(r) = s.command(format!("MAIL FROM:{sender}").as_bytes()) else {
                panic!("{sender}: a reply")
            };
            assert_eq!(
                r,
                Reply::new(
                    550,
                    "5.7.1",
                    "IP-literal senders are not accepted from this client"
                ),
                "{sender}"
            );
        }
        assert_eq!(code(s.command(b"MAIL FROM:<x@b.test>")), 250);
        // Trusted networks and authenticated sessions keep them.
        let mut t = Session::new(config.clone(), "127.0.0.1".parse().unwrap());
        t.command(b"EHLO c.test");
        assert_eq!(code(t.command(b"MAIL FROM:<x@[127.0.0.1]>")), 250);
        let mut u = Session::new(config, "192.0.2.1".parse().unwrap());
        u.user = Some("alice".into());
        u.command(b"EHLO c.test");
        assert_eq!(code(u.command(b"MAIL FROM:<x@[IPv6:::1]>")), 250);
    }

    #[test]
    fn hops_are_counted_in_the_header_section() {
        let header = b"Received: a\r\nreceived : b\r\n\tcontinued\r\nRECEIVED:c\r\n\
            Received-SPF: pass\r\nX-Received: d\r\nReceivedx: e\r\nSubject: s\r\n\r\n\
            Received: in the body\r\n";
        assert_eq!(hop_refusal(header, 3), None);
        assert_eq!(hop_refusal(header, 0), None, "0: no limit");
        assert_eq!(
            hop_refusal(header, 2),
            Some(Reply::new(
                554,
                "5.4.6",
                "too many hops (3, limit 2): mail loop?"
            ))
        );
        // Hops removed by hygiene on an earlier pass count too.
        let carried = b"Received: a\r\nX-Postern-Hops: 2\r\n\r\nbody\r\n";
        assert_eq!(hop_refusal(carried, 3), None);
        assert!(hop_refusal(carried, 2).is_some());
    }

    // Finding "mail loop": no hop-count limit. Before, both messages were
    // handed to the sink.
    #[test]
    fn too_many_received_fields_are_a_loop() {
        let config = Arc::new(SessionConfig {
            max_hops: 3,
            ..(*cfg()).clone()
        });
        let hops =
            |n: usize| "Received: from x by y; now\r\n".repeat(n) + "Subject: s\r\n\r\nhi\r\n";
        let mut s = Session::new(config, "127.0.0.1".parse().unwrap());
        s.ingest(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
        let (_, step) = s.ingest(format!("{}.\r\n", hops(4)).as_bytes());
        assert!(matches!(step, Step::Read), "not handed to the sink");
        assert_eq!(last_reply(&mut s).status, Some("5.4.6"));
        s.ingest(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n");
        let (_, Step::Deliver(msg)) = s.ingest(format!("{}.\r\n", hops(3)).as_bytes()) else {
            panic!("three hops are allowed")
        };
        assert_eq!(
            postern_core::hops::count(&msg.body),
            4,
            "ours is added after the count"
        );
        s.delivered(Reply::new(250, "2.0.0", "queued"));
        // BDAT likewise.
        let text = hops(4);
        let input = format!(
            "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nBDAT {} LAST\r\n{text}",
            text.len()
        );
        assert!(matches!(s.ingest(input.as_bytes()), (_, Step::Read)));
        assert_eq!(
            last_reply(&mut s),
            Reply::new(554, "5.4.6", "too many hops (4, limit 3): mail loop?")
        );
    }

    // Finding "DATA flood": total in-memory DATA was unbounded across
    // sessions. Before, every message below was handed to the sink.
    #[test]
    fn data_budget_is_shared_and_released() {
        let config = Arc::new(SessionConfig {
            max_data_in_memory: 100,
            data_budget: crate::DataBudget::new(),
            max_errors: 100,
            ..(*cfg()).clone()
        });
        let budget = config.data_budget.clone();
        let start: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n";
        let sixty = [&[b'x'; 58][..], &b"\r\n"[..]].concat();
        let mut a = Session::new(config.clone(), "127.0.0.1".parse().unwrap());
        let mut b = Session::new(config.clone(), "127.0.0.1".parse().unwrap());
        a.ingest(&[start, &b"DATA\r\n"[..]].concat());
        b.ingest(&[start, &b"DATA\r\n"[..]].concat());
        assert!(matches!(a.ingest(&sixty), (60, Step::Read)));
        assert_eq!(budget.in_use(), 60);
        // b's 60 octets do not fit beside a's: the rest of its message is
        // read and dropped, and its end answered 452.
        let (_, step) = b.ingest(&[&sixty[..], &b".\r\n"[..]].concat());
        assert!(matches!(step, Step::Read), "not handed to the sink");
        assert_eq!(codes(&mut b), [250, 250, 250, 354, 452]);
        assert_eq!(budget.in_use(), 60, "b's part released at once");
        // a's message fits; it stays counted until the sink has answered.
        let (_, Step::Deliver(msg)) = a.ingest(b".\r\n") else {
            panic!("a's message fits")
        };
        drop(msg);
        assert_eq!(budget.in_use(), 60);
        a.delivered(Reply::new(250, "2.0.0", "queued"));
        assert_eq!(budget.in_use(), 0);
        // BDAT likewise; a session that ends mid-message releases its part.
        b.ingest(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nBDAT 80\r\n");
        assert!(matches!(b.ingest(&[b'y'; 80]), (80, Step::Read)));
        assert_eq!(budget.in_use(), 80);
        let mut c = Session::new(config, "127.0.0.1".parse().unwrap());
        c.ingest(start);
        let chunk = [&b"BDAT 30 LAST\r\n"[..], &[b'z'; 30][..]].concat();
        assert!(matches!(c.ingest(&chunk), (_, Step::Read)));
        assert_eq!(codes(&mut c), [250, 250, 250, 452]);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        c.ingest(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\n");
        assert!(matches!(c.ingest(&chunk), (_, Step::Deliver(_))));
    }
}
