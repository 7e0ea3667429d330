//! Intake: what happens to a message between the end of DATA and `250`.
//!
//! 1. The content hash is looked up among crash suspects: content that has
//!    already crashed a stage `poison_threshold` times goes straight to
//!    quarantine, unprocessed (and is answered 250: it is stored, an
//!    administrator can inspect and release it, and the sender is not
//!    bounced for our bug). Content that crashed fewer times runs alone
//!    (the risk [`Gate`]) so the next crash names it exactly.
//! 2. The receive stage runs under an in-flight record (level 3) and a panic
//!    guard (level 1); content processing runs in a worker (level 2).
//! 3. A crash charges the content hash: below the threshold the client gets
//!    `451 4.3.0` and will retry; at the threshold the message is stored in
//!    quarantine with the reason. A content refusal gets its 5xx.
//! 4. Otherwise the message is queued durably, then `250`.

use crate::content::conversion::Meta;
use crate::content::processor::{ContentProcessor, Verdict};
use crate::gateway::crash::fault::{self, Stage};
use crate::gateway::crash::gate::Gate;
use crate::gateway::crash::inflight::{content_hash, Inflight};
use crate::gateway::live::Live;
use crate::ops::metrics::Metrics;
use crate::ops::tracking::{Subject, Tracker};
use futures_util::FutureExt;
use postern_convert::Message;
use postern_listener::{MessageSink, ReceivedMessage, Reply};
use postern_queue::{QuarantineInfo, Queue};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

pub struct Intake {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub tracker: Arc<Tracker>,
    pub gate: Arc<Gate>,
    pub inflight: Arc<Inflight>,
    /// Told when a queue write passes its deadline: the gateway stops in
    /// order and is restarted.
    pub reopen: Arc<tokio::sync::Notify>,
    /// What a configuration reload may replace.
    pub policy: Live<IntakePolicy>,
}

/// The reloadable part of the intake.
pub struct IntakePolicy {
    pub content: Arc<ContentProcessor>,
    pub poison_threshold: u32,
    /// Decides inbound (untrusted client) from outbound (trusted).
    pub relay: postern_core::RelayPolicy,
    /// For envelope rewriting of outbound mail.
    pub conversion: Arc<crate::content::conversion::Conversion>,
    /// In-flight deadline for the receive stage (after it the supervisor
    /// declares the gateway hung).
    pub receive_deadline: Duration,
    /// `queue.write_timeout`: the deadline of the queue write.
    pub write_timeout: Duration,
    /// `fleet.peers`: clients whose transferred messages keep their
    /// history.
    pub fleet_peers: Vec<ipnet::IpNet>,
}

/// How the receive stage ended.
enum Staged {
    Accept(Option<Vec<u8>>, Vec<String>),
    Hold {
        body: Vec<u8>,
        reason: String,
    },
    Reject {
        code: u16,
        status: String,
        text: String,
    },
    Crashed {
        stage: &'static str,
        level: &'static str,
        reason: String,
    },
}

/// Masquerading and the canonical map apply to the envelope sender of
/// outbound mail too.
fn rewrite_sender(envelope: &mut postern_core::Envelope, p: &IntakePolicy) {
    let Some(s) = &envelope.sender else {
        return;
    };
    let rewritten = postern_convert::rewrite_address(&s.to_string(), &p.conversion.outbound);
    if let Some(a) = rewritten.and_then(|r| postern_core::Address::parse(&r).ok()) {
        envelope.sender = Some(a);
    }
}

/// Enhanced status codes a content refusal may carry.
fn static_status(s: &str, code: u16) -> &'static str {
    match s {
        "5.3.4" => "5.3.4",
        "5.6.3" => "5.6.3",
        "5.7.1" => "5.7.1",
        "5.6.7" => "5.6.7",
        _ if code < 500 => "4.3.0",
        _ => "5.6.0",
    }
}

impl Intake {
    async fn run_stages(
        &self,
        p: &IntakePolicy,
        msg: &Message<'_>,
        meta: &Meta,
        hash: u64,
        alone: bool,
    ) -> Staged {
        let _pass = self.gate.enter(alone).await;
        let key = format!("r:{hash:016x}");
        let received = {
            let _inflight = self.inflight.enter(key.clone(), p.receive_deadline);
            std::panic::catch_unwind(|| fault::check(Stage::Receive, msg.bytes()))
        };
        if let Err(p) = received {
            return Staged::Crashed {
                stage: "receive",
                level: "1",
                reason: format!("panic: {}", postern_supervisor::panic_message(&*p)),
            };
        }
        // In flight again once a content worker takes the message: waiting
        // for a free worker (many messages during a DNS outage) is not a
        // hang and must not make the supervisor kill the gateway.
        let working = || self.inflight.enter(key.clone(), p.receive_deadline);
        match AssertUnwindSafe(p.content.process(msg, meta, working))
            .catch_unwind()
            .await
        {
            Ok(Verdict::Crash(reason)) => Staged::Crashed {
                stage: "content",
                level: if matches!(*p.content, ContentProcessor::Workers(_)) {
                    "2"
                } else {
                    "1"
                },
                reason,
            },
            Ok(Verdict::Accept(new)) => Staged::Accept(new, Vec::new()),
            Ok(Verdict::Noted { body, notes }) => Staged::Accept(Some(body), notes),
            Ok(Verdict::Hold { body, reason }) => Staged::Hold { body, reason },
            Ok(Verdict::Reject { code, status, text }) => Staged::Reject { code, status, text },
            Err(p) => Staged::Crashed {
                stage: "content",
                level: "1",
                reason: format!("panic: {}", postern_supervisor::panic_message(&*p)),
            },
        }
    }

    /// Stores the message in quarantine; only then is its suspect record
    /// (content `hash`) cleared — if storing fails, the count must survive
    /// the client's retry.
    async fn quarantine(
        &self,
        msg: ReceivedMessage,
        hash: u64,
        stage: &str,
        reason: String,
        crashes: u32,
    ) -> Reply {
        let id = msg.envelope.id;
        let info = QuarantineInfo {
            stage: stage.to_string(),
            reason: reason.clone(),
            at_ms: postern_core::now_ms(),
        };
        let event = serde_json::json!({"stage": stage, "reason": &reason, "crashes": crashes});
        let env = self.tracker.subject(&msg.envelope);
        match self
            .queue
            .enqueue_quarantined(msg.envelope, &msg.body, info, crashes)
            .await
        {
            Ok(()) => {
                let _ = self.queue.clear_suspect(hash);
                self.tracker.event("quarantined", &env, event);
                crate::run::eventlog::quarantined(&id.to_string(), stage, &reason);
                self.metrics.messages.accepted.inc();
                self.metrics
                    .messages
                    .quarantined
                    .with_label_values(&[stage])
                    .inc();
                tracing::error!(%id, stage, %reason, crashes, "message quarantined at receive");
                Reply::new(250, "2.0.0", format!("queued as {id} (quarantined)"))
            }
            Err(e) => {
                tracing::error!(%id, error = %e, "cannot store quarantined message");
                self.queue_failed(&env, &e)
            }
        }
    }
}

/// What the content stage made of a message that is to be queued.
struct Converted {
    /// The converted message, when conversion changed it.
    body: Option<Vec<u8>>,
    /// What conversion could not do faithfully (for the tracking log).
    notes: Vec<String>,
    /// A policy hold (DMARC quarantine): stored held, with this reason.
    hold: Option<String>,
    /// Outbound mail (trusted client): the envelope is rewritten too.
    outbound: bool,
    /// The content had crashed before: its suspect record is cleared once
    /// it is stored.
    was_suspect: bool,
    /// The content hash (the suspect record's key).
    hash: u64,
}

impl Intake {
    /// A crash in the receive or content stage: the content hash is
    /// charged; below the threshold the client hears 451 and retries, at
    /// the threshold the message is stored in quarantine.
    async fn crashed(
        &self,
        p: &IntakePolicy,
        msg: ReceivedMessage,
        hash: u64,
        (stage, level): (&'static str, &'static str),
        reason: String,
        received: &Subject,
    ) -> Reply {
        self.metrics
            .process
            .crashes
            .with_label_values(&[stage, level])
            .inc();
        let n = self
            .queue
            .charge_suspect(hash, &format!("{stage}: {reason}"))
            .unwrap_or(p.poison_threshold);
        let id = msg.envelope.id;
        tracing::error!(%id, stage, level, %reason, crashes = n, "receive-time crash");
        if n >= p.poison_threshold {
            return self.quarantine(msg, hash, stage, reason, n).await;
        }
        let reply = Reply::new(
            451,
            "4.3.0",
            "content processing failed; please try again later",
        );
        self.refuse(received, reply)
    }

    /// Queues the (converted) message durably; `250` only once it is on
    /// disk. This is the one place a message is acknowledged.
    async fn store(&self, p: &IntakePolicy, msg: ReceivedMessage, c: Converted) -> Reply {
        let mut envelope = msg.envelope;
        if c.outbound {
            rewrite_sender(&mut envelope, p);
        }
        // Conversion may have added the Message-ID.
        if let (Some(new), None) = (&c.body, &envelope.message_id) {
            envelope.message_id = Message::parse(new).message_id();
        }
        let tracked = self.tracker.subject(&envelope);
        if let Some(new) = &c.body {
            self.tracker.event(
                "converted",
                &tracked,
                serde_json::json!({
                    "direction": if c.outbound { "outbound" } else { "inbound" },
                    "size_before": msg.body.len(),
                    "size_after": new.len(),
                    "notes": &c.notes,
                }),
            );
        }
        let body = c.body.unwrap_or(msg.body);
        envelope.size = body.len() as u64;
        let (id, size, rcpts) = (envelope.id, body.len(), envelope.recipients.len());
        // A policy hold is stored held: the scheduler never sees it waiting.
        let write = async {
            fault::stall(Stage::Store, &body).await;
            match c.hold {
                Some(_) => self.queue.enqueue_held(envelope, &body).await,
                None => self.queue.enqueue(envelope, &body).await,
            }
        };
        // Like every stage, the write has a deadline: stuck storage (a hung
        // fsync, a dead NFS server) is a 4xx and a restart, never a client
        // waiting for ever at the end of DATA.
        let Ok(stored) = tokio::time::timeout(p.write_timeout, write).await else {
            tracing::error!(%id, timeout = ?p.write_timeout,
                "queue write passed queue.write_timeout; message refused, restarting the gateway");
            self.reopen.notify_one();
            return self.refuse(
                &tracked,
                Reply::new(451, "4.3.0", "queue write timed out, try again later"),
            );
        };
        if let Err(e) = stored {
            tracing::error!(%id, error = %e, "queue write failed; message refused");
            return self.queue_failed(&tracked, &e);
        }
        self.tracker
            .event("queued", &tracked, serde_json::json!({ "size": size }));
        if c.was_suspect {
            let _ = self.queue.clear_suspect(c.hash);
        }
        if let Some(reason) = c.hold {
            tracing::warn!(%id, %reason, "held by policy");
            self.tracker.event(
                "held",
                &tracked,
                serde_json::json!({ "by": "policy", "reason": reason }),
            );
        }
        self.metrics.messages.accepted.inc();
        self.metrics.messages.message_size.observe(size as f64);
        tracing::info!(%id, rcpts, size, "queued");
        Reply::new(250, "2.0.0", format!("queued as {id}"))
    }

    /// Queues a message a peer gateway handed over, as it came (it was
    /// converted there), with its arrival time, attempts, delay notices and
    /// trust, so its life continues here.
    async fn store_transferred(
        &self,
        msg: ReceivedMessage,
        h: crate::gateway::transfer::History,
    ) -> Reply {
        let mut envelope = msg.envelope;
        envelope.message_id = Message::parse(&msg.body).message_id();
        envelope.received_ms = h.received_ms;
        envelope.trusted = h.trusted;
        envelope.size = msg.body.len() as u64;
        let id = envelope.id;
        let tracked = self.tracker.subject(&envelope);
        self.metrics.messages.received.inc();
        // Written before the message, so the 250 never precedes it.
        if h.delayed > 0 {
            crate::gateway::delay::record(&self.queue, id, h.delayed);
        }
        // Held or quarantined there: held here, never delivered unreviewed.
        let stored = if h.held {
            self.queue.enqueue_held(envelope, &msg.body).await
        } else {
            self.queue
                .enqueue_transferred(envelope, &msg.body, h.attempts)
                .await
        };
        if let Err(e) = stored {
            crate::gateway::delay::forget(&self.queue, id);
            tracing::error!(%id, error = %e, "queue write failed; transferred message refused");
            return self.queue_failed(&tracked, &e);
        }
        if h.held {
            self.tracker.event(
                "held",
                &tracked,
                serde_json::json!({ "by": "policy", "reason": format!("held or quarantined at {}", h.from) }),
            );
        }
        self.metrics.process.transfers_received.inc();
        self.tracker.event(
            "queued",
            &tracked,
            serde_json::json!({
                "size": msg.body.len(), "transferred_from": h.from, "original_id": h.id,
                "attempts": h.attempts,
            }),
        );
        tracing::info!(%id, from = %h.from, original = %h.id, attempts = h.attempts, "taken over from a peer");
        Reply::new(250, "2.0.0", format!("queued as {id}"))
    }

    /// Counts and tracks a refusal at the end of DATA; returns the reply.
    fn refuse(&self, env: &Subject, reply: Reply) -> Reply {
        self.metrics
            .messages
            .rejected
            .with_label_values(&[reply.reason()])
            .inc();
        let text = reply.lines.join(" ");
        self.tracker.event(
            "rejected",
            env,
            serde_json::json!({
                "reply": format!("{} {} {}", reply.code, reply.status.unwrap_or(""), text),
            }),
        );
        reply
    }

    /// The message could not be stored: the client must try again.
    /// The refusal of a message the queue could not store: 452 4.3.1 when
    /// the disk is full (RFC 3463: mail system full; back pressure now
    /// refuses new transactions until space returns), else 451 4.3.0.
    fn queue_failed(&self, env: &Subject, e: &postern_queue::QueueError) -> Reply {
        let reply = if e.is_no_space() {
            Reply::new(452, "4.3.1", "insufficient system storage, try again later")
        } else {
            Reply::new(451, "4.3.0", "queue write failed, try again later")
        };
        self.refuse(env, reply)
    }

    /// What content processing needs to know about the transaction.
    fn meta(&self, p: &IntakePolicy, msg: &ReceivedMessage) -> Meta {
        let e = &msg.envelope;
        let outbound = e
            .client
            .parse()
            .map(|ip| p.relay.is_trusted(ip))
            .unwrap_or(false);
        let mut rcpt_domains: Vec<String> = e
            .recipients
            .iter()
            .map(|r| r.address.domain.clone())
            .collect();
        rcpt_domains.sort_unstable();
        rcpt_domains.dedup();
        Meta {
            outbound,
            client_ip: e.client.clone(),
            helo: e.helo.clone(),
            mail_from: e.sender.as_ref().map(|a| a.to_string()).unwrap_or_default(),
            rcpt_domains,
            token: e.id.to_string(),
            now_ms: postern_core::now_ms(),
        }
    }
}

impl MessageSink for Intake {
    async fn accept(&self, mut msg: ReceivedMessage) -> Reply {
        let p = self.policy.get();
        // A message handed over by a peer gateway carries its history in
        // a field right below our trace: honoured from fleet peers only,
        // removed from every message.
        if let Some(history) = crate::gateway::transfer::take_history(&mut msg.body, msg.trace_len)
        {
            let from_peer = msg
                .envelope
                .client
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| {
                    let ip = ip.to_canonical();
                    p.fleet_peers.iter().any(|n| n.contains(&ip))
                });
            match history {
                Some(h) if from_peer => return self.store_transferred(msg, h).await,
                _ => tracing::warn!(client = %msg.envelope.client,
                    "a transfer history field from a client outside fleet.peers (or unreadable) was removed"),
            }
        }
        // Parsed once: the Message-ID, the fault check and the content
        // stage all take this view.
        let view = Message::parse(&msg.body);
        msg.envelope.message_id = view.message_id();
        self.metrics.messages.received.inc();
        let received = self.tracker.subject(&msg.envelope);
        self.tracker.event(
            "received",
            &received,
            serde_json::json!({
                "client": &msg.envelope.client,
                "helo": &msg.envelope.helo,
                "size": msg.body.len(),
            }),
        );
        let hash = content_hash(msg.body.get(msg.trace_len..).unwrap_or(&msg.body));
        let (crashes, last) = self
            .queue
            .suspect(hash)
            .ok()
            .flatten()
            .unwrap_or((0, String::new()));
        if crashes >= p.poison_threshold {
            let stage = last.split(':').next().unwrap_or("receive").to_string();
            return self.quarantine(msg, hash, &stage, last, crashes).await;
        }
        let meta = self.meta(&p, &msg);
        let staged = self.run_stages(&p, &view, &meta, hash, crashes > 0).await;
        let (body, hold, notes) = match staged {
            Staged::Accept(new, notes) => (new, None, notes),
            Staged::Hold { body, reason } => (Some(body), Some(reason), Vec::new()),
            Staged::Reject { code, status, text } => {
                let _ = self.queue.clear_suspect(hash);
                tracing::info!(id = %msg.envelope.id, code, %text, "refused by content processing");
                let reply = Reply::new(code, static_status(&status, code), text);
                return self.refuse(&received, reply);
            }
            Staged::Crashed {
                stage,
                level,
                reason,
            } => {
                return self
                    .crashed(&p, msg, hash, (stage, level), reason, &received)
                    .await
            }
        };
        let converted = Converted {
            body,
            notes,
            hold,
            outbound: meta.outbound,
            was_suspect: crashes > 0,
            hash,
        };
        self.store(&p, msg, converted).await
    }

    fn session_panicked(&self, panic: &str) {
        self.metrics
            .process
            .crashes
            .with_label_values(&["receive", "1"])
            .inc();
        tracing::error!(%panic, "session panicked");
    }

    fn session_opened(&self, listener: &'static str) {
        self.metrics
            .smtp
            .sessions
            .with_label_values(&[listener])
            .inc();
        self.metrics.smtp.sessions_active.inc();
    }

    fn session_closed(&self) {
        self.metrics.smtp.sessions_active.dec();
    }

    fn refused(&self, reply: &Reply) {
        self.metrics
            .smtp
            .smtp_rejections
            .with_label_values(&[reply.reason()])
            .inc();
    }

    fn tls_established(&self, version: &'static str) {
        self.metrics
            .smtp
            .tls_sessions
            .with_label_values(&[version])
            .inc();
    }
}
