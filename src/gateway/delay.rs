//! Delay notices (RFC 3464 `Action: delayed`): how many of the
//! `queue.delay_warning` thresholds a message's sender has been told about,
//! kept in the queue's state tree (`delay/<id>`) so a restart or a transfer
//! to a peer sends none twice. [`due`] says whether another is owed.

use postern_core::QueueId;
use postern_queue::Queue;
use std::time::Duration;

fn key(id: QueueId) -> String {
    format!("delay/{id}")
}

/// Notices already sent for `id` (0 when none, or unreadable).
pub fn notices_sent(queue: &Queue, id: QueueId) -> u32 {
    queue
        .state_get(&key(id))
        .ok()
        .flatten()
        .and_then(|b| b.try_into().ok().map(u32::from_le_bytes))
        .unwrap_or(0)
}

/// Records that `n` notices have been sent for `id`.
pub fn record(queue: &Queue, id: QueueId, n: u32) {
    if let Err(e) = queue.state_put(&key(id), &n.to_le_bytes()) {
        tracing::warn!(%id, error = %e, "cannot record the delay notice");
    }
}

/// Forgets `id` (it left the queue).
pub fn forget(queue: &Queue, id: QueueId) {
    if queue.state_get(&key(id)).ok().flatten().is_some() {
        let _ = queue.state_remove(&key(id));
    }
}

/// The number of thresholds a message of `age` has passed, when it is more
/// than `sent` (a notice is owed for the last one passed); thresholds are
/// ascending.
pub fn due(thresholds: &[Duration], age: Duration, sent: u32) -> Option<u32> {
    let passed = thresholds.iter().take_while(|t| age >= **t).count() as u32;
    (passed > sent).then_some(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notice_per_threshold_passed() {
        let h = |n: u64| Duration::from_secs(3600 * n);
        let t = [h(4), h(24)];
        assert_eq!(due(&t, h(1), 0), None);
        assert_eq!(due(&t, h(5), 0), Some(1));
        assert_eq!(due(&t, h(5), 1), None, "already told");
        assert_eq!(due(&t, h(30), 1), Some(2));
        assert_eq!(due(&t, h(30), 0), Some(2), "one notice for both, not two");
        assert_eq!(due(&[], h(100), 0), None, "off");
    }
}
