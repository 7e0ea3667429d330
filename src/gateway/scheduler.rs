//! The delivery scheduler: takes due messages from the queue, delivers each
//! in its own task, and records the outcome.
//!
//! Loop: release expired leases, lease as many due messages as there are
//! free delivery slots (one range scan), spawn one task per message, sleep
//! until the next due time or until the queue signals new work. Per message:
//! deliver the pending recipients, mark each delivered / failed / pending,
//! generate a DSN (RFC 3464, from the null sender, never about a DSN) for
//! recipients that failed permanently or outlived `max_age`, then remove the
//! message or defer it by the next retry interval with ±10 % jitter.
//!
//! Crash isolation: each attempt is announced to the supervisor as in flight
//! (`d:<id>`), so if the process dies the message is a suspect. A message
//! that has crashed before runs alone (the risk gate). A panic while reading
//! it back or delivering it is caught at its task boundary (level 1): its
//! crash counter goes up and it is deferred, or quarantined at
//! `poison_threshold`; nothing else stops.
//! The DSN is queued (durably) before the original's record changes, so a
//! crash in between can duplicate a DSN but never lose one.

use crate::gateway::crash::fault::{self, Stage};
use crate::gateway::crash::gate::Gate;
use crate::gateway::crash::inflight::Inflight;
use crate::gateway::live::Live;
use crate::ops::metrics::Metrics;
use crate::ops::tracking::Tracker;
use postern_convert::{build_dsn, DsnInput, DsnRecipient};
use postern_core::{Address, Envelope, Outcome, QueueId, Reason, Recipient, RecipientStatus};
use postern_delivery::{Deliverer, HickoryResolver};
use postern_queue::{Queue, QueueError, Record, State};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Retry and expiry policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub retry_intervals: Vec<Duration>,
    pub max_age: Duration,
    pub lease: Duration,
    pub hostname: String,
    /// Lower-case accepted domains: their recipients are the `internal`
    /// destination class, everything else `internet`.
    pub accepted_domains: Vec<String>,
    /// Crashes before a message is quarantined.
    pub poison_threshold: u32,
    /// In-flight deadline of one attempt (then the gateway counts as hung).
    pub delivery_deadline: Duration,
}

impl Policy {
    /// Delay before the next attempt after `attempts` attempts, jittered.
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let i = (attempts as usize)
            .saturating_sub(1)
            .min(self.retry_intervals.len().saturating_sub(1));
        let base = self
            .retry_intervals
            .get(i)
            .copied()
            .unwrap_or(Duration::from_secs(60));
        base.mul_f64(rand::rng().random_range(0.9..1.1))
    }

    /// The destination class of a recipient domain (a metric label).
    pub fn class(&self, domain: &str) -> &'static str {
        if self
            .accepted_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
        {
            "internal"
        } else {
            "internet"
        }
    }
}

/// The resolver delivery uses: hickory, counted.
pub type Dns = crate::gateway::dns::Counted<HickoryResolver>;

pub struct Scheduler {
    pub queue: Queue,
    /// Replaced by a configuration reload (routes, DNS, timeouts).
    pub deliverer: Live<Deliverer<Dns>>,
    pub metrics: Arc<Metrics>,
    pub tracker: Arc<Tracker>,
    pub policy: Live<Policy>,
    /// Delivery tasks in flight; a permit per leased message.
    pub slots: Arc<Semaphore>,
    /// Lets crash suspects run alone.
    pub gate: Arc<Gate>,
    /// In-flight reports to the supervisor.
    pub inflight: Arc<Inflight>,
}

impl Scheduler {
    /// Runs until shutdown. Errors are queue failures (the supervisor
    /// restarts the loop).
    pub async fn run(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), QueueError> {
        let mut last_housekeeping = std::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let now = postern_core::now_ms();
            self.queue.expire_leases(now)?;
            let free = self.slots.available_permits();
            let claimed = if free > 0 {
                self.queue
                    .claim_due(now, free, self.policy.get().lease.as_millis() as u64)?
            } else {
                Vec::new()
            };
            let busy = !claimed.is_empty();
            for rec in claimed {
                let Ok(permit) = self.slots.clone().acquire_owned().await else {
                    return Ok(());
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.attempt(rec).await;
                    drop(permit);
                });
            }
            if last_housekeeping.elapsed() > Duration::from_secs(1) {
                self.deliverer.get().housekeeping().await;
                last_housekeeping = std::time::Instant::now();
            }
            if busy && self.slots.available_permits() > 0 {
                continue;
            }
            let wait = match self.queue.next_due_ms() {
                Some(due) if self.slots.available_permits() > 0 => {
                    Duration::from_millis(due.saturating_sub(postern_core::now_ms()))
                }
                _ => Duration::from_secs(1),
            }
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
            tokio::select! {
                _ = self.queue.wait_for_work() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One delivery attempt of one leased message; never panics outward.
    async fn attempt(self: Arc<Self>, rec: Record) {
        let id = rec.envelope.id;
        let deadline = self.policy.get().delivery_deadline;
        let _pass = self.gate.enter(rec.crashes > 0).await;
        let reading = self.inflight.enter(format!("q:{id}"), deadline);
        let body = match self.queue.body(id) {
            Ok(b) => b,
            Err(e) => {
                self.quarantine(&rec, "queue", &e.to_string());
                return;
            }
        };
        if let Err(p) = std::panic::catch_unwind(|| fault::check(Stage::Queue, &body)) {
            let why = format!("panic: {}", postern_supervisor::panic_message(&*p));
            self.crashed(rec, "queue", &why);
            return;
        }
        drop(reading);
        let _inflight = self.inflight.enter(format!("d:{id}"), deadline);
        let env = rec.envelope.clone();
        let deliverer = self.deliverer.get();
        let task = tokio::spawn(async move {
            fault::check(Stage::Delivery, &body);
            let outcomes = deliverer.deliver(&env, &body).await;
            // The body comes back for a DSN: no second read from the queue.
            (outcomes, body)
        });
        let (outcomes, body) = match task.await {
            Ok(o) => o,
            Err(j) => {
                let why = if j.is_panic() {
                    format!(
                        "panic: {}",
                        postern_supervisor::panic_message(&*j.into_panic())
                    )
                } else {
                    "delivery task cancelled".to_string()
                };
                self.crashed(rec, "delivery", &why);
                return;
            }
        };
        if let Err(e) = self.apply(rec, outcomes, &body).await {
            tracing::error!(%id, error = %e, "cannot record delivery outcome");
        }
    }

    fn quarantine(&self, rec: &Record, stage: &str, reason: &str) {
        let id = rec.envelope.id;
        tracing::error!(%id, stage, reason, "message quarantined");
        self.tracker.event(
            "quarantined",
            &self.tracker.subject(&rec.envelope),
            serde_json::json!({ "stage": stage, "reason": reason }),
        );
        self.metrics.quarantined.with_label_values(&[stage]).inc();
        let info = postern_queue::QuarantineInfo {
            stage: stage.to_string(),
            reason: reason.to_string(),
            at_ms: postern_core::now_ms(),
        };
        if let Err(e) = self.queue.quarantine(id, info) {
            tracing::error!(%id, error = %e, "cannot quarantine");
        }
    }

    /// A caught crash (level 1): charge the message; defer it, or
    /// quarantine it at the threshold.
    fn crashed(&self, rec: Record, stage: &str, why: &str) {
        let id = rec.envelope.id;
        self.metrics.crashes.with_label_values(&[stage, "1"]).inc();
        let due = postern_core::now_ms()
            + self.policy.get().retry_delay(rec.attempts + 1).as_millis() as u64;
        let threshold = self.policy.get().poison_threshold;
        let res = self.queue.update(id, &|r| {
            r.crashes += 1;
            r.last_error = Some(format!("{stage} crash: {why}"));
            if r.crashes >= threshold {
                r.state = State::Quarantine;
                r.quarantine = Some(postern_queue::QuarantineInfo {
                    stage: stage.to_string(),
                    reason: why.to_string(),
                    at_ms: postern_core::now_ms(),
                });
            } else {
                r.attempts += 1;
                r.state = State::Deferred;
                r.due_ms = due;
            }
            Ok(())
        });
        match res {
            Ok(r) if r.state == State::Quarantine => {
                self.metrics.quarantined.with_label_values(&[stage]).inc();
                self.tracker.event(
                    "quarantined",
                    &self.tracker.subject(&r.envelope),
                    serde_json::json!({ "stage": stage, "reason": why, "crashes": r.crashes }),
                );
                tracing::error!(%id, stage, %why, crashes = r.crashes, "message quarantined");
            }
            Ok(r) => {
                self.tracker.event(
                    "deferred",
                    &self.tracker.subject(&r.envelope),
                    serde_json::json!({
                        "attempt": r.attempts,
                        "reason": format!("{stage} crash: {why}"),
                        "next_attempt": crate::ops::tracking::rfc3339(r.due_ms),
                    }),
                );
                tracing::error!(%id, stage, %why, crashes = r.crashes, "delivery crashed; deferred")
            }
            Err(e) => tracing::error!(%id, error = %e, "cannot record crash"),
        }
    }

    /// Records outcomes, sends DSNs, removes or defers the message.
    async fn apply(
        &self,
        rec: Record,
        outcomes: Vec<(usize, Outcome)>,
        original: &[u8],
    ) -> Result<(), QueueError> {
        let now = postern_core::now_ms();
        let policy = self.policy.get();
        let mut env = rec.envelope;
        let id = env.id;
        let attempt = rec.attempts + 1;
        let tracked = self.tracker.subject(&env);
        let mut bounced: Vec<(String, String)> = Vec::new();
        // (address, reason, ORCPT) for the DSN: failures the sender wants to
        // hear of, and successes relayed to hops without DSN (NOTIFY=SUCCESS).
        let mut failed: Vec<(Address, Reason, Option<String>)> = Vec::new();
        let mut last_temp = None;
        for (i, outcome) in outcomes {
            let Some(r) = env.recipients.get_mut(i) else {
                continue;
            };
            let kind = outcome_kind(&outcome);
            let class = policy.class(&r.address.domain);
            let reason = outcome.reason();
            tracing::info!(%id, rcpt = %r.address, result = kind, %reason, "delivery attempt");
            let rcpt = r.address.to_string();
            let reply = format!("{} {} {}", reason.code, reason.status, reason.text);
            let hop = reason.remote.clone();
            self.tracker.event(
                "attempt",
                &tracked,
                serde_json::json!({
                    "rcpt": &rcpt, "attempt": attempt, "result": kind, "hop": &hop, "reply": &reply,
                }),
            );
            r.status = match outcome {
                Outcome::Relayed(reason) => {
                    self.metrics.delivered.with_label_values(&[class]).inc();
                    self.tracker.event(
                        "delivered",
                        &tracked,
                        serde_json::json!({
                            "rcpt": &rcpt, "hop": &hop, "reply": &reply, "relayed": true,
                        }),
                    );
                    failed.push((r.address.clone(), reason.clone(), r.orcpt.clone()));
                    RecipientStatus::Delivered(reason)
                }
                Outcome::Delivered(reason) => {
                    let delay = now.saturating_sub(env.received_ms);
                    self.metrics.delivered.with_label_values(&[class]).inc();
                    self.metrics
                        .delivery_latency
                        .with_label_values(&[class])
                        .observe(delay as f64 / 1000.0);
                    self.tracker.event(
                        "delivered",
                        &tracked,
                        serde_json::json!({
                            "rcpt": &rcpt, "hop": &hop, "reply": &reply, "delay_ms": delay,
                        }),
                    );
                    RecipientStatus::Delivered(reason)
                }
                Outcome::Permanent(reason) => {
                    self.metrics.bounced.with_label_values(&[class]).inc();
                    bounced.push((rcpt, reply));
                    if r.wants_failure_dsn() {
                        failed.push((r.address.clone(), reason.clone(), r.orcpt.clone()));
                    }
                    RecipientStatus::Failed(reason)
                }
                Outcome::Temporary(reason) => {
                    self.metrics.deferred.with_label_values(&[class]).inc();
                    last_temp = Some(reason.to_string());
                    RecipientStatus::Pending { last: Some(reason) }
                }
            };
        }
        // Expiry: everything still pending past max_age fails.
        let expired = now.saturating_sub(env.received_ms) >= policy.max_age.as_millis() as u64;
        if expired {
            for r in env.recipients.iter_mut().filter(|r| r.is_pending()) {
                let last = match &r.status {
                    RecipientStatus::Pending { last: Some(l) } => format!(": last error {l}"),
                    _ => String::new(),
                };
                let reason = Reason::local(550, "4.4.7", format!("delivery time expired{last}"));
                self.metrics
                    .bounced
                    .with_label_values(&[policy.class(&r.address.domain)])
                    .inc();
                bounced.push((r.address.to_string(), reason.to_string()));
                if r.wants_failure_dsn() {
                    failed.push((r.address.clone(), reason.clone(), r.orcpt.clone()));
                }
                r.status = RecipientStatus::Failed(reason);
            }
        }
        let dsn = match failed.is_empty() {
            true => None,
            false => {
                self.send_dsn(&env, &failed, &policy.hostname, original)
                    .await
            }
        };
        for (rcpt, reply) in bounced {
            self.tracker.event(
                "bounced",
                &tracked,
                serde_json::json!({
                    "rcpt": rcpt, "reply": reply, "dsn": dsn.map(|d| d.to_string()),
                }),
            );
        }
        if env.pending().next().is_none() {
            tracing::info!(%id, "done; removed from queue");
            return self.queue.remove(id);
        }
        let attempts = attempt;
        let due = now + policy.retry_delay(attempts).as_millis() as u64;
        let pending: Vec<String> = env.pending().map(|(_, r)| r.address.to_string()).collect();
        self.tracker.event(
            "deferred",
            &tracked,
            serde_json::json!({
                "pending": pending,
                "attempt": attempts,
                "reason": &last_temp,
                "next_attempt": crate::ops::tracking::rfc3339(due),
            }),
        );
        self.queue.update(id, &|r| {
            r.envelope = env.clone();
            r.attempts = attempts;
            r.state = State::Deferred;
            r.due_ms = due;
            r.last_error = last_temp.clone();
            Ok(())
        })?;
        Ok(())
    }

    /// Queues a DSN to the original sender about `failed`; its queue ID.
    async fn send_dsn(
        &self,
        env: &Envelope,
        failed: &[(Address, Reason, Option<String>)],
        hostname: &str,
        original: &[u8],
    ) -> Option<QueueId> {
        let Some(to) = env.sender.clone() else {
            tracing::info!(id = %env.id, "not bouncing a bounce");
            return None;
        };
        let dsn_id = QueueId::generate();
        let now = postern_core::now_ms();
        let body = build_dsn(&DsnInput {
            reporting_mta: hostname,
            envelope: env,
            failed: failed
                .iter()
                .map(|(a, r, o)| DsnRecipient {
                    address: a,
                    reason: r,
                    orcpt: o.as_deref(),
                    action: if r.code < 300 { "relayed" } else { "failed" },
                })
                .collect(),
            original,
            now_ms: now,
            token: dsn_id.to_string(),
        });
        let dsn_env = Envelope {
            id: dsn_id,
            sender: None,
            recipients: vec![Recipient::new(to)],
            client: "127.0.0.1".into(),
            helo: hostname.to_string(),
            received_ms: now,
            size: body.len() as u64,
            eight_bit: !body.is_ascii(),
            message_id: None,
            smtputf8: false,
            dsn_ret_full: false,
            dsn_envid: None,
        };
        let tracked = self.tracker.subject(&dsn_env);
        match self.queue.enqueue(dsn_env, &body).await {
            Ok(()) => {
                self.metrics.dsn_sent.inc();
                self.tracker.event(
                    "queued",
                    &tracked,
                    serde_json::json!({ "size": body.len(), "dsn_for": env.id.to_string() }),
                );
                tracing::info!(id = %env.id, dsn = %dsn_id, "DSN queued");
                Some(dsn_id)
            }
            Err(e) => {
                tracing::error!(id = %env.id, error = %e, "cannot queue DSN");
                None
            }
        }
    }
}

fn outcome_kind(o: &Outcome) -> &'static str {
    match o {
        Outcome::Delivered(_) => "delivered",
        Outcome::Relayed(_) => "relayed",
        Outcome::Temporary(_) => "deferred",
        Outcome::Permanent(_) => "failed",
    }
}
