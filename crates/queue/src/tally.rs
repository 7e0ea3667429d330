//! Counters of what the queue holds, kept up to date by every transition.
//!
//! Counting by walking the queue costs a second per 100,000 messages, and
//! back pressure, metrics and `queue summary` ask all the time. So every
//! transition moves its message between buckets here, under the same lock
//! that orders the transition: messages by (live) state and minute of
//! receipt, and, per state, pending recipients by domain and minute. The
//! figures of `summary` (qshape's age buckets) are then sums over minutes,
//! in O(domains × distinct minutes), whatever the queue's length.
//!
//! The tally is derived, like the indexes: a full recovery rebuilds it from
//! the records, and a clean close stores it beside the queue so the next
//! open need not walk.

use crate::record::{Record, State};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Minute of receipt → count.
pub type Minutes = BTreeMap<u64, u64>;

/// The messages in one state.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateShape {
    /// Messages by minute of receipt (ms since the epoch / 60,000).
    pub messages: Minutes,
    /// Per recipient domain (lower case): messages with a pending recipient
    /// there, by minute of receipt.
    pub domain_messages: BTreeMap<String, Minutes>,
    /// Per recipient domain: pending recipients, by minute of receipt.
    pub domain_recipients: BTreeMap<String, Minutes>,
}

/// The queue's counters: per live state (Leased while being delivered).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Indexed by [`State::name`].
    pub states: BTreeMap<String, StateShape>,
    /// Stored values that failed to decode (kept aside, not in a state).
    pub corrupt: u64,
}

fn bump(m: &mut Minutes, minute: u64, add: bool, n: u64) {
    if add {
        *m.entry(minute).or_default() += n;
    } else if let Some(v) = m.get_mut(&minute) {
        *v = v.saturating_sub(n);
        if *v == 0 {
            m.remove(&minute);
        }
    }
}

impl Shape {
    /// Counts `r` in (or out of, when `add` is false) state `live`.
    pub(crate) fn apply(&mut self, r: &Record, live: State, add: bool) {
        let minute = r.envelope.received_ms / 60_000;
        let s = self.states.entry(live.name().to_string()).or_default();
        bump(&mut s.messages, minute, add, 1);
        let mut domains: BTreeMap<String, u64> = BTreeMap::new();
        for (_, rcpt) in r.envelope.pending() {
            *domains
                .entry(rcpt.address.domain.to_ascii_lowercase())
                .or_default() += 1;
        }
        for (d, n) in domains {
            let m = s.domain_messages.entry(d.clone()).or_default();
            bump(m, minute, add, 1);
            if m.is_empty() {
                s.domain_messages.remove(&d);
            }
            let m = s.domain_recipients.entry(d.clone()).or_default();
            bump(m, minute, add, n);
            if m.is_empty() {
                s.domain_recipients.remove(&d);
            }
        }
        if s.messages.is_empty() {
            self.states.remove(live.name());
        }
    }

    /// Moves `r` from state `from` to `to` (both live states).
    pub(crate) fn moved(&mut self, r_old: &Record, from: State, r_new: &Record, to: State) {
        self.apply(r_old, from, false);
        self.apply(r_new, to, true);
    }

    /// Messages in `state`.
    pub fn count(&self, state: State) -> u64 {
        self.states
            .get(state.name())
            .map_or(0, |s| s.messages.values().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(received_ms: u64, to: &[&str]) -> Record {
        Record::new(crate::record::test_envelope(received_ms, to), 0)
    }

    #[test]
    fn moves_keep_the_counts_and_leave_no_empty_buckets() {
        let mut s = Shape::default();
        let a = rec(120_000, &["x@A.test", "y@a.test", "z@b.test"]);
        let b = rec(600_000, &["w@b.test"]);
        s.apply(&a, State::Ready, true);
        s.apply(&b, State::Ready, true);
        assert_eq!(s.count(State::Ready), 2);
        let ready = &s.states["ready"];
        assert_eq!(ready.domain_recipients["a.test"][&2], 2);
        assert_eq!(ready.domain_messages["a.test"][&2], 1);
        assert_eq!(ready.domain_messages["b.test"].values().sum::<u64>(), 2);
        s.moved(&a, State::Ready, &a, State::Leased);
        assert_eq!((s.count(State::Ready), s.count(State::Leased)), (1, 1));
        s.apply(&a, State::Leased, false);
        s.apply(&b, State::Ready, false);
        assert_eq!(s, Shape::default());
    }
}
