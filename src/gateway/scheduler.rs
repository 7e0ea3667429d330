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
//! (`d:<id>`) while it works (on each destination, then while its outcome is
//! recorded; not while it waits for a delivery slot, so waiting never counts
//! against `delivery_deadline`), so if the process dies the message is a
//! suspect. A message that has crashed before runs alone (the risk gate). A
//! panic while reading it back or delivering it is caught at its task
//! boundary (level 1): its
//! crash counter goes up and it is deferred, or quarantined at
//! `poison_threshold`; nothing else stops.
//! The DSN is queued (durably) before the original's record changes, so a
//! crash in between can duplicate a DSN but never lose one.
//!
//! No reflection: what a DSN may be is settled ([`DsnRule`]); here the
//! rule is applied. For an untrusted source the sender's domain must have
//! MX or address records (asked of the delivery resolver) and the DSN
//! returns headers only; otherwise — no such domain, no records, a null
//! MX, an IP literal — the DSN is withheld, with a log line and a
//! `dsn_withheld` tracking event saying why. A temporary DNS failure does
//! not withhold it: the DSN is queued and its own delivery retries (a
//! legitimate bounce is not lost to a DNS blip).

use crate::gateway::crash::fault::{self, Stage};
use crate::gateway::crash::gate::Gate;
use crate::gateway::crash::inflight::Inflight;
use crate::gateway::live::Live;
use crate::gateway::settle::{
    charge_crash, millis, retry_delay, settle, Crash, DsnRule, Next, Notice, Settlement,
};
use crate::ops::metrics::Metrics;
use crate::ops::tracking::Tracker;
use postern_convert::{build_dsn, DsnInput, DsnRecipient};
use postern_core::{Envelope, Outcome, QueueId, Reason, Recipient, RecipientStatus};
use postern_delivery::{Deliverer, DnsError, HickoryResolver, Resolver, TlsNote};
use postern_queue::{Queue, QueueError, Record, State};
use rand::Rng;
use std::collections::HashMap;
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
    /// Our authserv-id in Authentication-Results: an untrusted sender gets
    /// a DSN only when our own results say its SPF passed.
    pub authserv_id: String,
    /// Lower-case accepted domains: their recipients are the `internal`
    /// destination class, everything else `internet`.
    pub accepted_domains: Vec<String>,
    /// Crashes before a message is quarantined.
    pub poison_threshold: u32,
    /// In-flight deadline of one attempt (then the gateway counts as hung).
    pub delivery_deadline: Duration,
    /// `queue.delay_warning`: ages at which a waiting message's sender
    /// gets a delay notice, ascending.
    pub delay_warning: Vec<Duration>,
}

impl Policy {
    /// Delay before the next attempt after `attempts` attempts, with
    /// ±10 % jitter ([`retry_delay`]).
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        retry_delay(
            &self.retry_intervals,
            attempts,
            rand::rng().random_range(0.9..1.1),
        )
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
    /// Signalled each time a delivery task ends (its slot is free): the
    /// loop claims more at once instead of at its next tick, so a backlog
    /// drains at the rate deliveries finish, not `max_concurrency` per
    /// tick.
    pub slot_freed: Arc<tokio::sync::Notify>,
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
                    let freed = me.slot_freed.clone();
                    me.attempt(rec).await;
                    drop(permit);
                    freed.notify_one();
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
                _ = self.slot_freed.notified() => {}
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
        let env = rec.envelope.clone();
        let deliverer = self.deliverer.get();
        let inflight = self.inflight.clone();
        let task = tokio::spawn(async move {
            // In flight (`d:<id>`) only while a destination is worked on:
            // waiting for the delivery slots is not work, and the deliverer
            // bounds the work below the deadline.
            let key = format!("d:{id}");
            let working = |_domain: &str| {
                let guard = inflight.enter(key.clone(), deadline);
                fault::check(Stage::Delivery, &body);
                guard
            };
            let outcomes = deliverer.deliver(&env, &body, &working).await;
            // The body comes back for a DSN: no second read from the queue.
            (outcomes, body)
        });
        let joined = task.await;
        // Recording the outcome (settling, building a DSN) is work on the
        // message again.
        let _inflight = self.inflight.enter(format!("d:{id}"), deadline);
        let (outcomes, body) = match joined {
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
        // How each attempt's connection was secured, for its tracking line.
        let notes: HashMap<usize, TlsNote> = outcomes
            .iter()
            .filter_map(|(i, _, n)| n.clone().map(|n| (*i, n)))
            .collect();
        let outcomes = outcomes.into_iter().map(|(i, o, _)| (i, o)).collect();
        if let Err(e) = self.apply(rec, outcomes, &notes, &body).await {
            tracing::error!(%id, error = %e, "cannot record delivery outcome");
        }
    }

    fn quarantine(&self, rec: &Record, stage: &str, reason: &str) {
        let id = rec.envelope.id;
        tracing::error!(%id, stage, reason, "message quarantined");
        crate::run::eventlog::quarantined(&id.to_string(), stage, reason);
        self.tracker.event(
            "quarantined",
            &self.tracker.subject(&rec.envelope),
            serde_json::json!({ "stage": stage, "reason": reason }),
        );
        self.metrics
            .messages
            .quarantined
            .with_label_values(&[stage])
            .inc();
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
        self.metrics
            .process
            .crashes
            .with_label_values(&[stage, "1"])
            .inc();
        let policy = self.policy.get();
        let now = postern_core::now_ms();
        let due = now.saturating_add(millis(policy.retry_delay(rec.attempts + 1)));
        let last_error = format!("{stage} crash: {why}");
        let crash = Crash {
            stage,
            reason: why,
            last_error: &last_error,
        };
        let res = self.queue.update(id, &|r| {
            charge_crash(r, crash, policy.poison_threshold, now, Some(due));
            Ok(())
        });
        match res {
            Ok(r) if r.state == State::Quarantine => {
                self.metrics
                    .messages
                    .quarantined
                    .with_label_values(&[stage])
                    .inc();
                self.tracker.event(
                    "quarantined",
                    &self.tracker.subject(&r.envelope),
                    serde_json::json!({ "stage": stage, "reason": why, "crashes": r.crashes }),
                );
                tracing::error!(%id, stage, %why, crashes = r.crashes, "message quarantined");
                crate::run::eventlog::quarantined(&id.to_string(), stage, why);
            }
            Ok(r) => {
                self.tracker.event(
                    "deferred",
                    &self.tracker.subject(&r.envelope),
                    serde_json::json!({
                        "attempt": r.attempts,
                        "reason": &last_error,
                        "next_attempt": postern_core::date::rfc3339_ms(r.due_ms),
                    }),
                );
                tracing::error!(%id, stage, %why, crashes = r.crashes, "delivery crashed; deferred")
            }
            Err(e) => tracing::error!(%id, error = %e, "cannot record crash"),
        }
    }

    /// Settles one attempt ([`settle`]), then acts on the answer: metrics
    /// and tracking, the DSN (queued before the original changes), and the
    /// message removed or deferred.
    async fn apply(
        &self,
        rec: Record,
        outcomes: Vec<(usize, Outcome)>,
        notes: &HashMap<usize, TlsNote>,
        original: &[u8],
    ) -> Result<(), QueueError> {
        let now = postern_core::now_ms();
        let policy = self.policy.get();
        let id = rec.envelope.id;
        let delay = policy.retry_delay(rec.attempts + 1);
        let settled = settle(&rec, outcomes, now, policy.max_age, delay);
        let tracked = self.tracker.subject(&settled.envelope);
        self.record_attempts(&settled, rec.attempts + 1, now, &policy, &tracked, notes);
        let dsn = match settled.notices.is_empty() {
            true => None,
            false => {
                self.send_dsn(
                    &settled.envelope,
                    &settled.notices,
                    &settled.dsn_rule,
                    &policy,
                    original,
                    None,
                )
                .await
            }
        };
        for (rcpt, reason) in &settled.bounced {
            self.metrics
                .delivery
                .bounced
                .with_label_values(&[policy.class(&rcpt.domain)])
                .inc();
            self.tracker.event(
                "bounced",
                &tracked,
                serde_json::json!({
                    "rcpt": rcpt.to_string(), "reply": reply_text(reason),
                    "dsn": dsn.map(|d| d.to_string()),
                }),
            );
        }
        let Next::Defer {
            attempts,
            due_ms,
            last_error,
        } = settled.next
        else {
            tracing::info!(%id, "done; removed from queue");
            // One read per removed message, only where notices are kept.
            if !policy.delay_warning.is_empty() {
                crate::gateway::delay::forget(&self.queue, id);
            }
            return self.queue.remove(id);
        };
        let env = settled.envelope;
        let pending: Vec<String> = env.pending().map(|(_, r)| r.address.to_string()).collect();
        self.tracker.event(
            "deferred",
            &tracked,
            serde_json::json!({
                "pending": pending,
                "attempt": attempts,
                "reason": &last_error,
                "next_attempt": postern_core::date::rfc3339_ms(due_ms),
            }),
        );
        self.queue.update(id, &|r| {
            r.envelope = env.clone();
            r.attempts = attempts;
            r.state = State::Deferred;
            r.due_ms = due_ms;
            r.last_error = last_error.clone();
            Ok(())
        })?;
        self.delay_notice(&env, &settled.dsn_rule, &policy, original, now)
            .await;
        Ok(())
    }

    /// RFC 3464 `Action: delayed`: once per `queue.delay_warning` threshold
    /// a waiting message has passed, a notice to its sender about the
    /// pending recipients whose NOTIFY allows it (no NOTIFY, or one naming
    /// DELAY); never about a DSN (null sender).
    async fn delay_notice(
        &self,
        env: &Envelope,
        rule: &DsnRule,
        policy: &Policy,
        original: &[u8],
        now: u64,
    ) {
        if policy.delay_warning.is_empty() || env.sender.is_none() {
            return;
        }
        let age = Duration::from_millis(now.saturating_sub(env.received_ms));
        let sent = crate::gateway::delay::notices_sent(&self.queue, env.id);
        let Some(passed) = crate::gateway::delay::due(&policy.delay_warning, age, sent) else {
            return;
        };
        crate::gateway::delay::record(&self.queue, env.id, passed);
        let notices: Vec<Notice> = env
            .pending()
            .filter(|(_, r)| wants_delay_notice(r.notify.as_deref()))
            .map(|(_, r)| Notice {
                address: r.address.clone(),
                reason: match &r.status {
                    RecipientStatus::Pending { last: Some(reason) } => reason.clone(),
                    _ => Reason::local(451, "4.4.7", "delivery delayed"),
                },
                orcpt: r.orcpt.clone(),
            })
            .collect();
        if notices.is_empty() {
            return;
        }
        if self
            .send_dsn(env, &notices, rule, policy, original, Some("delayed"))
            .await
            .is_some()
        {
            self.metrics.process.delay_notices.inc();
            self.tracker.event(
                "delay_notice",
                &self.tracker.subject(env),
                serde_json::json!({ "threshold": passed, "age_s": age.as_secs() }),
            );
        }
    }

    /// Logs, counts and tracks each recipient attempted.
    fn record_attempts(
        &self,
        settled: &Settlement,
        attempt: u32,
        now: u64,
        policy: &Policy,
        tracked: &crate::ops::tracking::Subject,
        notes: &HashMap<usize, TlsNote>,
    ) {
        let env = &settled.envelope;
        for a in &settled.attempted {
            let Some(r) = env.recipients.get(a.index) else {
                continue;
            };
            let kind = outcome_kind(&a.outcome);
            let class = policy.class(&r.address.domain);
            let reason = a.outcome.reason();
            tracing::info!(id = %env.id, rcpt = %r.address, result = kind, %reason, "delivery attempt");
            let rcpt = r.address.to_string();
            let reply = reply_text(reason);
            let hop = &reason.remote;
            let mut fields = serde_json::json!({
                "rcpt": &rcpt, "attempt": attempt, "result": kind, "hop": hop, "reply": &reply,
            });
            if let Some(n) = notes.get(&a.index) {
                fields["tls_policy"] = n.policy.into();
                fields["tls"] = n.version.unwrap_or("none").into();
                fields["tls_result"] = n.result.into();
            }
            self.tracker.event("attempt", tracked, fields);
            match &a.outcome {
                Outcome::Relayed(_) => {
                    self.metrics
                        .delivery
                        .delivered
                        .with_label_values(&[class])
                        .inc();
                    self.tracker.event(
                        "delivered",
                        tracked,
                        serde_json::json!({
                            "rcpt": &rcpt, "hop": hop, "reply": &reply, "relayed": true,
                        }),
                    );
                }
                Outcome::Delivered(_) => {
                    let delay = now.saturating_sub(env.received_ms);
                    self.metrics
                        .delivery
                        .delivered
                        .with_label_values(&[class])
                        .inc();
                    self.metrics
                        .delivery
                        .delivery_latency
                        .with_label_values(&[class])
                        .observe(delay as f64 / 1000.0);
                    self.tracker.event(
                        "delivered",
                        tracked,
                        serde_json::json!({
                            "rcpt": &rcpt, "hop": hop, "reply": &reply, "delay_ms": delay,
                        }),
                    );
                }
                Outcome::Permanent(_) => {}
                Outcome::Temporary(_) => {
                    self.metrics
                        .delivery
                        .deferred
                        .with_label_values(&[class])
                        .inc();
                }
            }
        }
    }

    /// Queues a DSN to the original sender about `notices`, as `rule`
    /// allows; its queue ID. `action` is every recipient's action (`delayed`), or `None`: each
    /// one's is worked out from its reply code (relayed or failed).
    async fn send_dsn(
        &self,
        env: &Envelope,
        notices: &[Notice],
        rule: &DsnRule,
        policy: &Policy,
        original: &[u8],
        action: Option<&'static str>,
    ) -> Option<QueueId> {
        let hostname = policy.hostname.as_str();
        let Some(to) = env.sender.clone() else {
            tracing::info!(id = %env.id, "not bouncing a bounce");
            return None;
        };
        let deliverer = self.deliverer.get();
        let spf_pass =
            |sender: &str| postern_convert::spf_passed(original, &policy.authserv_id, sender);
        let return_full = match dsn_clearance(rule, deliverer.resolver(), &spf_pass).await {
            Ok(full) => full,
            Err(why) => {
                tracing::warn!(id = %env.id, sender = %to, reason = %why, "DSN withheld");
                self.tracker.event(
                    "dsn_withheld",
                    &self.tracker.subject(env),
                    serde_json::json!({ "sender": to.to_string(), "reason": &why }),
                );
                return None;
            }
        };
        let dsn_id = QueueId::generate();
        let now = postern_core::now_ms();
        let body = build_dsn(&DsnInput {
            reporting_mta: hostname,
            envelope: env,
            failed: notices
                .iter()
                .map(|n| DsnRecipient {
                    address: &n.address,
                    reason: &n.reason,
                    orcpt: n.orcpt.as_deref(),
                    action: action.unwrap_or(if n.reason.code < 300 {
                        "relayed"
                    } else {
                        "failed"
                    }),
                })
                .collect(),
            original,
            return_full,
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
            trusted: false,
        };
        let tracked = self.tracker.subject(&dsn_env);
        match self.queue.enqueue(dsn_env, &body).await {
            Ok(()) => {
                self.metrics.messages.dsn_sent.inc();
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

/// Whether a recipient's NOTIFY allows a delay notice: none given (the
/// default is ours to choose, and Postfix and Exchange send them), or one
/// naming DELAY (NEVER excludes it).
fn wants_delay_notice(notify: Option<&str>) -> bool {
    notify.is_none_or(|n| n.split(',').any(|k| k.trim().eq_ignore_ascii_case("DELAY")))
}

/// Whether a DSN may go under `rule`: `Ok(return the whole message)`, or
/// why not. For an untrusted source the sender must have passed SPF
/// (`spf_pass`, from what intake recorded) and its domain must resolve.
async fn dsn_clearance<R: Resolver>(
    rule: &DsnRule,
    resolver: &R,
    spf_pass: &(dyn Fn(&str) -> bool + Sync),
) -> Result<bool, String> {
    match rule {
        DsnRule::AsAsked { full } => Ok(*full),
        DsnRule::Never(why) => Err((*why).to_string()),
        DsnRule::IfSenderVerified { sender, domain } => {
            domain_resolves(resolver, domain).await?;
            if !spf_pass(sender) {
                return Err(format!(
                    "sender {sender} did not pass SPF (untrusted source: no DSN to a sender that may be forged)"
                ));
            }
            Ok(false)
        }
    }
}

/// `Ok` when `domain` has an MX record naming a host, or no MX and address
/// records (the implicit MX); else why not. A temporary DNS failure is a
/// "yes": the DSN is queued and its own delivery retries the lookup (a
/// legitimate bounce is not lost to a DNS blip).
async fn domain_resolves<R: Resolver>(resolver: &R, domain: &str) -> Result<(), String> {
    if domain.starts_with('[') {
        return Err(format!("sender domain {domain} is an IP literal"));
    }

    match resolver.mx(domain).await {
        Ok(mx) if mx.iter().any(|m| !matches!(m.exchange.as_str(), "" | ".")) => return Ok(()),
        Ok(mx) if !mx.is_empty() => {
            return Err(format!("sender domain {domain} accepts no mail (null MX)"))
        }
        Ok(_) | Err(DnsError::NoData) => {}
        Err(DnsError::NxDomain) => return Err(format!("sender domain {domain} does not exist")),
        Err(DnsError::Temporary(_)) => return Ok(()),
    }
    match resolver.addrs(domain).await {
        Ok(addrs) if !addrs.is_empty() => Ok(()),
        Ok(_) | Err(DnsError::NoData) | Err(DnsError::NxDomain) => Err(format!(
            "sender domain {domain} has no MX or address records"
        )),
        Err(DnsError::Temporary(_)) => Ok(()),
    }
}

/// A reply as the tracking log shows it: `code status text`.
fn reply_text(r: &Reason) -> String {
    format!("{} {} {}", r.code, r.status, r.text)
}

fn outcome_kind(o: &Outcome) -> &'static str {
    match o {
        Outcome::Delivered(_) => "delivered",
        Outcome::Relayed(_) => "relayed",
        Outcome::Temporary(_) => "deferred",
        Outcome::Permanent(_) => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_delivery::{MxRecord, TemporaryDns};
    use std::net::IpAddr;

    /// DNS from a table: `mx.test` has an MX, `a-only.test` only an
    /// address, `nullmx.test` a null MX, `empty.test` exists with no
    /// records, `down.test` times out; every other name does not exist.
    struct Table;

    impl Resolver for Table {
        async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsError> {
            let mx = |exchange: &str| MxRecord {
                preference: 10,
                exchange: exchange.to_string(),
                secure: false,
            };
            match domain {
                "mx.test" => Ok(vec![mx("mail.mx.test")]),
                "nullmx.test" => Ok(vec![mx("")]),
                "a-only.test" | "empty.test" => Err(DnsError::NoData),
                "down.test" => Err(DnsError::Temporary(TemporaryDns::Other("timed out".into()))),
                _ => Err(DnsError::NxDomain),
            }
        }

        async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
            match host {
                "a-only.test" => Ok(vec![IpAddr::from([192, 0, 2, 1])]),
                "empty.test" => Err(DnsError::NoData),
                _ => Err(DnsError::NxDomain),
            }
        }
    }

    /// Issue 11, reflection and loops: a trusted source's DSN goes as asked
    /// (RET=FULL included, as before); an untrusted source's only to a
    /// sender that passed SPF, at a domain that resolves, with headers only,
    /// never to an IP literal (a DNS failure queues it: its delivery
    /// retries).
    #[tokio::test]
    async fn dsn_clearance_table() {
        let untrusted = |d: &str| DsnRule::IfSenderVerified {
            sender: format!("s@{d}"),
            domain: d.into(),
        };
        // SPF passed for every sender but forger@ (at a domain that
        // resolves).
        let spf_pass = |sender: &str| !sender.starts_with("forger@");
        // (case, rule, Ok(return the whole message) or Err(part of the reason))
        let cases: [(&str, DsnRule, Result<bool, &str>); 11] = [
            (
                "trusted, RET=FULL",
                DsnRule::AsAsked { full: true },
                Ok(true),
            ),
            (
                "trusted, RET=HDRS",
                DsnRule::AsAsked { full: false },
                Ok(false),
            ),
            ("untrusted, MX", untrusted("mx.test"), Ok(false)),
            (
                "untrusted, address only",
                untrusted("a-only.test"),
                Ok(false),
            ),
            (
                "untrusted, SPF did not pass",
                DsnRule::IfSenderVerified {
                    sender: "forger@mx.test".into(),
                    domain: "mx.test".into(),
                },
                Err("forger@mx.test did not pass SPF"),
            ),
            (
                "untrusted, no such domain",
                untrusted("forged.test"),
                Err("forged.test does not exist"),
            ),
            (
                "untrusted, no records",
                untrusted("empty.test"),
                Err("empty.test has no MX or address records"),
            ),
            (
                "untrusted, null MX",
                untrusted("nullmx.test"),
                Err("accepts no mail (null MX)"),
            ),
            (
                "untrusted, DNS down: queued, delivery retries",
                untrusted("down.test"),
                Ok(false),
            ),
            (
                "untrusted, IP literal (never asked of DNS)",
                untrusted("[127.0.0.5]"),
                Err("is an IP literal"),
            ),
            (
                "settled never",
                DsnRule::Never("an IP-literal sender from an untrusted source"),
                Err("IP-literal sender"),
            ),
        ];
        for (name, rule, want) in cases {
            match (dsn_clearance(&rule, &Table, &spf_pass).await, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{name}: {got}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
