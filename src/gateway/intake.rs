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
}

/// How the receive stage ended.
enum Staged {
    Accept(Option<Vec<u8>>),
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

/// The Message-ID header of a message (bounded), for the queue and tracking.
fn message_id(msg: &[u8]) -> Option<String> {
    let (hdrs, _) = postern_convert::headers::split(msg);
    postern_convert::headers::get(hdrs, "Message-ID").map(|m| m.chars().take(998).collect())
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
        body: &[u8],
        meta: &Meta,
        hash: u64,
        alone: bool,
    ) -> Staged {
        let _pass = self.gate.enter(alone).await;
        let _inflight = self
            .inflight
            .enter(format!("r:{hash:016x}"), p.receive_deadline);
        let received = std::panic::catch_unwind(|| fault::check(Stage::Receive, body));
        if let Err(p) = received {
            return Staged::Crashed {
                stage: "receive",
                level: "1",
                reason: format!("panic: {}", postern_supervisor::panic_message(&*p)),
            };
        }
        match AssertUnwindSafe(p.content.process(body, meta))
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
            Ok(Verdict::Accept(new)) => Staged::Accept(new),
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
                self.metrics.accepted.inc();
                self.metrics.quarantined.with_label_values(&[stage]).inc();
                tracing::error!(%id, stage, %reason, crashes, "message quarantined at receive");
                Reply::new(250, "2.0.0", format!("queued as {id} (quarantined)"))
            }
            Err(e) => {
                tracing::error!(%id, error = %e, "cannot store quarantined message");
                self.queue_failed(&env)
            }
        }
    }
}

impl Intake {
    /// Counts and tracks a refusal at the end of DATA; returns the reply.
    fn refuse(&self, env: &Subject, reply: Reply) -> Reply {
        self.metrics
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
    fn queue_failed(&self, env: &Subject) -> Reply {
        self.refuse(
            env,
            Reply::new(451, "4.3.0", "queue write failed, try again later"),
        )
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
        let id = msg.envelope.id;
        msg.envelope.message_id = message_id(&msg.body);
        let p = self.policy.get();
        self.metrics.received.inc();
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
        let mut hold = None;
        let body = match self
            .run_stages(&p, &msg.body, &meta, hash, crashes > 0)
            .await
        {
            Staged::Accept(new) => new,
            Staged::Hold { body, reason } => {
                hold = Some(reason);
                Some(body)
            }
            Staged::Reject { code, status, text } => {
                let _ = self.queue.clear_suspect(hash);
                tracing::info!(%id, code, %text, "refused by content processing");
                return self.refuse(
                    &received,
                    Reply::new(code, static_status(&status, code), text),
                );
            }
            Staged::Crashed {
                stage,
                level,
                reason,
            } => {
                self.metrics
                    .crashes
                    .with_label_values(&[stage, level])
                    .inc();
                let n = self
                    .queue
                    .charge_suspect(hash, &format!("{stage}: {reason}"))
                    .unwrap_or(p.poison_threshold);
                tracing::error!(%id, stage, level, %reason, crashes = n, "receive-time crash");
                if n >= p.poison_threshold {
                    return self.quarantine(msg, hash, stage, reason, n).await;
                }
                return self.refuse(
                    &received,
                    Reply::new(
                        451,
                        "4.3.0",
                        "content processing failed; please try again later",
                    ),
                );
            }
        };
        let mut envelope = msg.envelope;
        if meta.outbound {
            // Masquerading and the canonical map apply to the envelope too.
            if let Some(s) = &envelope.sender {
                let rewritten = postern_convert::outbound::rewrite_address(
                    &s.to_string(),
                    &p.conversion.outbound,
                );
                if let Some(a) = rewritten.and_then(|r| postern_core::Address::parse(&r).ok()) {
                    envelope.sender = Some(a);
                }
            }
        }
        // Conversion may have added the Message-ID.
        if let (Some(new), None) = (&body, &envelope.message_id) {
            envelope.message_id = message_id(new);
        }
        let tracked = self.tracker.subject(&envelope);
        if let Some(new) = &body {
            self.tracker.event(
                "converted",
                &tracked,
                serde_json::json!({
                    "direction": if meta.outbound { "outbound" } else { "inbound" },
                    "size_before": msg.body.len(),
                    "size_after": new.len(),
                }),
            );
        }
        let body = body.unwrap_or(msg.body);
        envelope.size = body.len() as u64;
        let size = body.len();
        let rcpts = envelope.recipients.len();
        // A policy hold is stored held: the scheduler never sees it waiting.
        let stored = match hold {
            Some(_) => self.queue.enqueue_held(envelope, &body).await,
            None => self.queue.enqueue(envelope, &body).await,
        };
        match stored {
            Ok(()) => {
                self.tracker
                    .event("queued", &tracked, serde_json::json!({ "size": size }));
                if crashes > 0 {
                    let _ = self.queue.clear_suspect(hash);
                }
                if let Some(reason) = hold {
                    tracing::warn!(%id, %reason, "held by policy");
                    self.tracker.event(
                        "held",
                        &tracked,
                        serde_json::json!({ "by": "policy", "reason": reason }),
                    );
                }
                self.metrics.accepted.inc();
                self.metrics.message_size.observe(size as f64);
                tracing::info!(%id, rcpts, size, "queued");
                Reply::new(250, "2.0.0", format!("queued as {id}"))
            }
            Err(e) => {
                tracing::error!(%id, error = %e, "queue write failed; message refused");
                self.queue_failed(&tracked)
            }
        }
    }

    fn session_panicked(&self, panic: &str) {
        self.metrics
            .crashes
            .with_label_values(&["receive", "1"])
            .inc();
        tracing::error!(%panic, "session panicked");
    }

    fn session_opened(&self, listener: &'static str) {
        self.metrics.sessions.with_label_values(&[listener]).inc();
        self.metrics.sessions_active.inc();
    }

    fn session_closed(&self) {
        self.metrics.sessions_active.dec();
    }

    fn refused(&self, reply: &Reply) {
        self.metrics
            .smtp_rejections
            .with_label_values(&[reply.reason()])
            .inc();
    }

    fn tls_established(&self, version: &'static str) {
        self.metrics
            .tls_sessions
            .with_label_values(&[version])
            .inc();
    }
}
