//! Settling a delivery attempt: the decisions, as pure functions of their
//! inputs (no queue, no clock, no randomness, no I/O).
//!
//! [`settle`] turns one attempt's per-recipient outcomes into the
//! recipients' new statuses, what the sender must be told (a DSN for
//! permanent failures it asked to hear of, for expiry, and for "relayed"
//! successes), and what happens to the message next: removed when nothing
//! is pending, else deferred to `now + retry delay`. [`dsn_rule`] decides
//! what that DSN may be, so nobody can aim our DSNs at a third party
//! (reflection): a trusted source (trusted network or authenticated) gets
//! them as asked; an untrusted one no success DSNs, failure DSNs with the
//! headers only (RET=FULL ignored), only to a sender domain that resolves
//! (the scheduler asks DNS) and never to an IP literal. [`charge_crash`] is
//! what a crash does to a record: one more crash, quarantined at the poison
//! threshold, else deferred (or left where it is, for a crash found after
//! a death). [`retry_delay`] is the retry schedule. The scheduler
//! ([`crate::gateway::scheduler`]) and the suspect charging
//! ([`crate::gateway::crash::suspects`]) act on these answers.

use postern_core::{Address, Envelope, Outcome, Reason, RecipientStatus};
use postern_queue::{QuarantineInfo, Record, State};
use std::time::Duration;

/// How one recipient fared in this attempt (for logs, metrics, tracking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    /// Index of the recipient in the envelope.
    pub index: usize,
    /// The outcome as the next hop (or our own check) decided it.
    pub outcome: Outcome,
}

/// A recipient the sender is told about in a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The recipient.
    pub address: Address,
    /// Why: a 5xx for failures, 2xx for "relayed".
    pub reason: Reason,
    /// RFC 3461 ORCPT, echoed in the DSN.
    pub orcpt: Option<String>,
}

/// What happens to the message after this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Every recipient is settled: remove the message.
    Remove,
    /// Some recipients are pending: try again at `due_ms`.
    Defer {
        /// Attempts made, this one included.
        attempts: u32,
        /// When the next attempt is due (ms since the epoch).
        due_ms: u64,
        /// The last temporary failure of this attempt, for `queue list`.
        last_error: Option<String>,
    },
}

/// What the DSN about a message may be, by where the message came from
/// ([`dsn_rule`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsnRule {
    /// A trusted source (trusted network or authenticated session): as the
    /// sender asked, to any sender.
    AsAsked {
        /// Return the whole message (RET=FULL); else its headers.
        full: bool,
    },
    /// An untrusted source: the headers only, and only to a sender that
    /// passed SPF at intake (our own Authentication-Results says so) and
    /// whose domain resolves (MX or address records).
    IfSenderVerified {
        /// The sender's address, as SPF checked it.
        sender: String,
        /// The sender's domain.
        domain: String,
    },
    /// An untrusted source with a sender we never notify; why.
    Never(&'static str),
}

/// The whole answer of [`settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The envelope with every recipient's new status.
    pub envelope: Envelope,
    /// Each recipient attempted, in the order the outcomes came.
    pub attempted: Vec<Attempted>,
    /// Recipients that failed for good in this settlement (attempted or
    /// expired), with the reply text: `(recipient, reply)`.
    pub bounced: Vec<(Address, Reason)>,
    /// What the DSN to the sender must list; empty = no DSN.
    pub notices: Vec<Notice>,
    /// Whether and how that DSN may go ([`dsn_rule`]).
    pub dsn_rule: DsnRule,
    /// Remove or defer.
    pub next: Next,
}

/// Settles one attempt of `rec`.
///
/// `outcomes` are `(recipient index, outcome)` (indexes out of range are
/// ignored); `now_ms` is the time of settlement; `max_age` is the queue
/// lifetime (pending recipients of an older message fail with `4.4.7`);
/// `retry_delay` is the (already jittered) delay before the next attempt.
pub fn settle(
    rec: &Record,
    outcomes: Vec<(usize, Outcome)>,
    now_ms: u64,
    max_age: Duration,
    retry_delay: Duration,
) -> Settlement {
    let mut envelope = rec.envelope.clone();
    let mut attempted = Vec::with_capacity(outcomes.len());
    let mut bounced = Vec::new();
    let mut notices = Vec::new();
    let mut last_error = None;
    // Success DSNs only for trusted sources: from anyone else, NOTIFY=SUCCESS
    // would make us send a message of their choosing to an address of
    // their choosing.
    let success_dsn = rec.envelope.trusted;
    for (index, outcome) in outcomes {
        let Some(r) = envelope.recipients.get_mut(index) else {
            continue;
        };
        let notice = |reason: &Reason| Notice {
            address: r.address.clone(),
            reason: reason.clone(),
            orcpt: r.orcpt.clone(),
        };
        r.status = match &outcome {
            Outcome::Relayed(reason) => {
                if success_dsn {
                    notices.push(notice(reason));
                }
                RecipientStatus::Delivered(reason.clone())
            }
            Outcome::Delivered(reason) => RecipientStatus::Delivered(reason.clone()),
            Outcome::Permanent(reason) => {
                if r.wants_failure_dsn() {
                    notices.push(notice(reason));
                }
                bounced.push((r.address.clone(), reason.clone()));
                RecipientStatus::Failed(reason.clone())
            }
            Outcome::Temporary(reason) => {
                last_error = Some(reason.to_string());
                RecipientStatus::Pending {
                    last: Some(reason.clone()),
                }
            }
        };
        attempted.push(Attempted { index, outcome });
    }
    let age = now_ms.saturating_sub(envelope.received_ms);
    if u128::from(age) >= max_age.as_millis() {
        expire(&mut envelope, &mut bounced, &mut notices);
    }
    let next = if envelope.pending().next().is_none() {
        Next::Remove
    } else {
        Next::Defer {
            attempts: rec.attempts + 1,
            due_ms: now_ms.saturating_add(millis(retry_delay)),
            last_error,
        }
    };
    Settlement {
        dsn_rule: dsn_rule(&envelope),
        envelope,
        attempted,
        bounced,
        notices,
        next,
    }
}

/// What a DSN about `envelope` may be: as asked for a trusted source; for
/// an untrusted one never to an IP literal (any address the client picks,
/// internal ones included), else the headers only and only to a sender
/// that passed SPF and whose domain resolves.
pub fn dsn_rule(envelope: &Envelope) -> DsnRule {
    if envelope.trusted {
        return DsnRule::AsAsked {
            full: envelope.dsn_ret_full,
        };
    }
    match &envelope.sender {
        None => DsnRule::Never("the null sender (no DSN about a DSN)"),
        Some(s) if s.domain.starts_with('[') => {
            DsnRule::Never("an IP-literal sender from an untrusted source")
        }
        Some(s) => DsnRule::IfSenderVerified {
            sender: s.to_string(),
            domain: s.domain.clone(),
        },
    }
}

/// Every pending recipient of an expired message fails with `4.4.7`.
fn expire(
    envelope: &mut Envelope,
    bounced: &mut Vec<(Address, Reason)>,
    notices: &mut Vec<Notice>,
) {
    for r in envelope.recipients.iter_mut().filter(|r| r.is_pending()) {
        let last = match &r.status {
            RecipientStatus::Pending { last: Some(l) } => format!(": last error {l}"),
            _ => String::new(),
        };
        let reason = Reason::local(550, "4.4.7", format!("delivery time expired{last}"));
        bounced.push((r.address.clone(), reason.clone()));
        if r.wants_failure_dsn() {
            notices.push(Notice {
                address: r.address.clone(),
                reason: reason.clone(),
                orcpt: r.orcpt.clone(),
            });
        }
        r.status = RecipientStatus::Failed(reason);
    }
}

/// One crash charged to a message.
#[derive(Debug, Clone, Copy)]
pub struct Crash<'a> {
    /// The stage it crashed in (`delivery`, `queue`, ...).
    pub stage: &'a str,
    /// Why: the panic message, signal or deadline; the quarantine reason.
    pub reason: &'a str,
    /// What `queue list` shows as the last error.
    pub last_error: &'a str,
}

/// Charges `crash` to `rec`: quarantined once it reaches `threshold`
/// crashes; otherwise deferred to `defer_to` when given (a crash caught in a
/// running attempt counts as an attempt) or left as it is (a suspect of a
/// death, which runs alone next time).
pub fn charge_crash(
    rec: &mut Record,
    crash: Crash<'_>,
    threshold: u32,
    now_ms: u64,
    defer_to: Option<u64>,
) {
    let Crash {
        stage,
        reason,
        last_error,
    } = crash;
    rec.crashes += 1;
    rec.last_error = Some(last_error.to_string());
    if rec.crashes >= threshold {
        rec.state = State::Quarantine;
        rec.quarantine = Some(QuarantineInfo {
            stage: stage.to_string(),
            reason: reason.to_string(),
            at_ms: now_ms,
        });
    } else if let Some(due) = defer_to {
        rec.attempts += 1;
        rec.state = State::Deferred;
        rec.due_ms = due;
    }
}

/// The retry schedule: the delay before the next attempt after `attempts`
/// attempts is the `attempts`-th interval (the last one repeats; 60 s when
/// none is configured), times `jitter` (the caller draws it, e.g. from
/// 0.9..1.1, so attempts of many messages do not line up).
pub fn retry_delay(intervals: &[Duration], attempts: u32, jitter: f64) -> Duration {
    let i = usize::try_from(attempts)
        .unwrap_or(usize::MAX)
        .saturating_sub(1)
        .min(intervals.len().saturating_sub(1));
    let base = intervals.get(i).copied().unwrap_or(Duration::from_secs(60));
    base.mul_f64(jitter)
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::Recipient;

    const HOUR: u64 = 3_600_000;

    fn addr(s: &str) -> Address {
        Address::parse(s).expect("test address")
    }

    fn record(rcpts: &[&str], sender: Option<&str>, received_ms: u64) -> Record {
        let rcpts = rcpts.iter().map(|r| Recipient::new(addr(r))).collect();
        let envelope = Envelope::new(
            sender.map(addr),
            rcpts,
            "192.0.2.1",
            "client.test",
            received_ms,
            10,
        );
        Record::new(envelope, received_ms)
    }

    fn remote(code: u16, status: &str) -> Reason {
        Reason {
            code,
            status: status.into(),
            text: "text".into(),
            remote: Some("mx.test".into()),
        }
    }

    fn defer_due(s: &Settlement) -> Option<u64> {
        match s.next {
            Next::Defer { due_ms, .. } => Some(due_ms),
            Next::Remove => None,
        }
    }

    /// One row: outcomes for recipients a and b, the message's age in
    /// hours, whether it came from a trusted source, and what must come of
    /// it.
    struct Case {
        name: &'static str,
        outcomes: [Outcome; 2],
        age_hours: u64,
        trusted: bool,
        removed: bool,
        bounced: usize,
        notices: usize,
        pending: usize,
    }

    #[test]
    fn settlement_table() {
        use Outcome::*;
        let ok = || Delivered(remote(250, "2.0.0"));
        let tmp = || Temporary(remote(451, "4.3.0"));
        let perm = || Permanent(remote(550, "5.1.1"));
        // A trusted source (trusted network or authenticated): as before
        // issue 11.
        let case = |name, outcomes, age_hours, removed, bounced, notices, pending| Case {
            name,
            outcomes,
            age_hours,
            trusted: true,
            removed,
            bounced,
            notices,
            pending,
        };
        // An untrusted source (issue 11, reflection): no success notices.
        let untrusted = |name, outcomes, age_hours, removed, bounced, notices, pending| Case {
            trusted: false,
            ..case(
                name, outcomes, age_hours, removed, bounced, notices, pending,
            )
        };
        let cases = [
            case("all delivered", [ok(), ok()], 0, true, 0, 0, 0),
            case("one temporary", [ok(), tmp()], 0, false, 0, 0, 1),
            case("one permanent", [perm(), ok()], 0, true, 1, 1, 0),
            case(
                "permanent and temporary",
                [perm(), tmp()],
                0,
                false,
                1,
                1,
                1,
            ),
            case(
                "relayed: success notice",
                [Relayed(remote(250, "2.0.0")), ok()],
                0,
                true,
                0,
                1,
                0,
            ),
            case(
                "temporary past max_age: expired",
                [tmp(), ok()],
                200,
                true,
                1,
                1,
                0,
            ),
            case(
                "both temporary past max_age",
                [tmp(), tmp()],
                200,
                true,
                2,
                2,
                0,
            ),
            case("young and temporary", [tmp(), tmp()], 1, false, 0, 0, 2),
            untrusted(
                "untrusted relayed: no success notice",
                [Relayed(remote(250, "2.0.0")), ok()],
                0,
                true,
                0,
                0,
                0,
            ),
            untrusted(
                "untrusted relayed and permanent: the failure only",
                [Relayed(remote(250, "2.0.0")), perm()],
                0,
                true,
                1,
                1,
                0,
            ),
            untrusted(
                "untrusted both temporary past max_age",
                [tmp(), tmp()],
                200,
                true,
                2,
                2,
                0,
            ),
        ];
        for c in cases {
            let now = 1_000 * HOUR;
            let mut rec = record(
                &["a@x.test", "b@y.test"],
                Some("s@z.test"),
                now - c.age_hours * HOUR,
            );
            rec.envelope.trusted = c.trusted;
            let outcomes = c.outcomes.into_iter().enumerate().collect();
            let s = settle(
                &rec,
                outcomes,
                now,
                Duration::from_secs(5 * 24 * 3600),
                Duration::from_secs(60),
            );
            let name = c.name;
            assert_eq!(
                s.next == Next::Remove,
                c.removed,
                "{name}: next {:?}",
                s.next
            );
            assert_eq!(s.bounced.len(), c.bounced, "{name}: bounced");
            assert_eq!(s.notices.len(), c.notices, "{name}: notices");
            assert_eq!(s.envelope.pending().count(), c.pending, "{name}: pending");
            assert_eq!(s.attempted.len(), 2, "{name}: attempted");
            if !c.removed {
                assert_eq!(defer_due(&s), Some(now + 60_000), "{name}: due");
            }
        }
    }

    /// Issue 11, reflection: RET=FULL and any sender for trusted sources
    /// (as before); for untrusted ones headers only, only to a domain that
    /// resolves, never to an IP literal.
    #[test]
    fn dsn_rule_table() {
        let resolves = |d: &str| DsnRule::IfSenderVerified {
            sender: format!("s@{d}"),
            domain: d.into(),
        };
        // (trusted, RET=FULL, sender, rule)
        let cases = [
            (
                true,
                true,
                Some("s@z.test"),
                DsnRule::AsAsked { full: true },
            ),
            (
                true,
                false,
                Some("s@z.test"),
                DsnRule::AsAsked { full: false },
            ),
            (
                true,
                true,
                Some("s@[192.0.2.9]"),
                DsnRule::AsAsked { full: true },
            ),
            (false, true, Some("s@z.test"), resolves("z.test")),
            (false, false, Some("s@Z.Test"), resolves("z.test")),
            (
                false,
                true,
                Some("victim@[127.0.0.5]"),
                DsnRule::Never("an IP-literal sender from an untrusted source"),
            ),
            (
                false,
                false,
                Some("victim@[IPv6:::1]"),
                DsnRule::Never("an IP-literal sender from an untrusted source"),
            ),
            (
                false,
                true,
                None,
                DsnRule::Never("the null sender (no DSN about a DSN)"),
            ),
        ];
        for (trusted, full, sender, want) in cases {
            let mut rec = record(&["a@x.test"], sender, 0);
            rec.envelope.trusted = trusted;
            rec.envelope.dsn_ret_full = full;
            assert_eq!(dsn_rule(&rec.envelope), want, "{trusted} {full} {sender:?}");
            // settle hands the same rule to the scheduler.
            let s = settle(
                &rec,
                vec![(0, Outcome::Permanent(remote(550, "5.1.1")))],
                HOUR,
                Duration::from_secs(3600 * 24),
                Duration::ZERO,
            );
            assert_eq!(s.dsn_rule, want);
        }
    }

    #[test]
    fn expiry_names_the_last_error_and_4_4_7() {
        let now = 100 * HOUR;
        let mut rec = record(&["a@x.test"], Some("s@z.test"), 0);
        rec.envelope.recipients[0].status = RecipientStatus::Pending {
            last: Some(remote(451, "4.3.0")),
        };
        // Nothing attempted this time (e.g. no route): expiry alone.
        let s = settle(
            &rec,
            Vec::new(),
            now,
            Duration::from_secs(3600),
            Duration::ZERO,
        );
        assert_eq!(s.next, Next::Remove);
        let (who, why) = &s.bounced[0];
        assert_eq!(who.to_string(), "a@x.test");
        assert_eq!(why.status, "4.4.7");
        assert!(
            why.text.contains("last error 451 4.3.0 text"),
            "{}",
            why.text
        );
    }

    #[test]
    fn notify_never_gets_no_notice_but_still_bounces() {
        let rec = {
            let mut r = record(&["a@x.test"], Some("s@z.test"), 0);
            r.envelope.recipients[0].notify = Some("NEVER".into());
            r
        };
        let s = settle(
            &rec,
            vec![(0, Outcome::Permanent(remote(550, "5.1.1")))],
            HOUR,
            Duration::from_secs(3600 * 24),
            Duration::ZERO,
        );
        assert!(s.notices.is_empty());
        assert_eq!(s.bounced.len(), 1);
    }

    #[test]
    fn unknown_indexes_are_ignored_and_attempts_count() {
        let mut rec = record(&["a@x.test"], None, 0);
        rec.attempts = 3;
        let s = settle(
            &rec,
            vec![
                (7, Outcome::Delivered(remote(250, "2.0.0"))),
                (0, Outcome::Temporary(remote(421, "4.4.2"))),
            ],
            HOUR,
            Duration::from_secs(3600 * 24),
            Duration::from_secs(10),
        );
        assert_eq!(s.attempted.len(), 1);
        match s.next {
            Next::Defer {
                attempts,
                last_error,
                ..
            } => {
                assert_eq!(attempts, 4);
                assert_eq!(last_error.as_deref(), Some("421 4.4.2 text (from mx.test)"));
            }
            Next::Remove => panic!("still pending"),
        }
    }

    #[test]
    fn retry_schedule_table() {
        let m = |n: u64| Duration::from_secs(60 * n);
        let intervals = [m(1), m(5), m(30)];
        // (attempts made, jitter, expected delay)
        let cases = [
            (0, 1.0, m(1)),
            (1, 1.0, m(1)),
            (2, 1.0, m(5)),
            (3, 1.0, m(30)),
            (4, 1.0, m(30)),
            (u32::MAX, 1.0, m(30)),
            (2, 0.9, Duration::from_secs(270)),
            (2, 1.1, Duration::from_secs(330)),
        ];
        for (attempts, jitter, want) in cases {
            let got = retry_delay(&intervals, attempts, jitter);
            let diff = got.abs_diff(want);
            assert!(
                diff < Duration::from_millis(1),
                "{attempts} {jitter}: {got:?}"
            );
        }
        assert_eq!(retry_delay(&[], 3, 1.0), Duration::from_secs(60));
    }

    #[test]
    fn crash_charging_table() {
        // (crashes before, threshold, defer_to, expected state, attempts after)
        let cases = [
            (0, 2, Some(500), State::Deferred, 1),
            (1, 2, Some(500), State::Quarantine, 0),
            (0, 1, Some(500), State::Quarantine, 0),
            (0, 2, None, State::Ready, 0),
            (4, 2, None, State::Quarantine, 0),
        ];
        for (before, threshold, defer_to, state, attempts) in cases {
            let mut rec = record(&["a@x.test"], None, 0);
            rec.crashes = before;
            let crash = Crash {
                stage: "delivery",
                reason: "panic: boom",
                last_error: "delivery crash: panic: boom",
            };
            charge_crash(&mut rec, crash, threshold, 42, defer_to);
            assert_eq!(rec.crashes, before + 1);
            assert_eq!(rec.state, state, "{before}/{threshold}/{defer_to:?}");
            assert_eq!(rec.attempts, attempts);
            assert_eq!(
                rec.last_error.as_deref(),
                Some("delivery crash: panic: boom")
            );
            match state {
                State::Quarantine => {
                    let q = rec.quarantine.as_ref().expect("quarantine info");
                    assert_eq!(
                        (q.stage.as_str(), q.reason.as_str(), q.at_ms),
                        ("delivery", "panic: boom", 42)
                    );
                }
                State::Deferred => assert_eq!(rec.due_ms, 500),
                _ => assert!(rec.quarantine.is_none()),
            }
        }
    }
}
