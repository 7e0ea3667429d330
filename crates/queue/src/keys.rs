//! Key layouts.
//!
//! Due index keys are `due_ms (8 bytes, big-endian) ++ queue id (12 bytes)`,
//! so lexicographic order is time order and "everything due by now" is one
//! range scan from the start to `due_key(now, MAX)`.

use postern_core::QueueId;

/// Length of a due index key.
pub(crate) const DUE_KEY_LEN: usize = 20;

/// The due index key of message `id`, due at `due_ms`.
pub(crate) fn due_key(due_ms: u64, id: &QueueId) -> [u8; DUE_KEY_LEN] {
    let mut k = [0u8; DUE_KEY_LEN];
    k[..8].copy_from_slice(&due_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

/// Splits a due key; `None` for a key of the wrong shape.
pub(crate) fn split_due_key(k: &[u8]) -> Option<(u64, QueueId)> {
    if k.len() != DUE_KEY_LEN {
        return None;
    }
    let ms = u64::from_be_bytes(k[..8].try_into().ok()?);
    Some((ms, QueueId::from_slice(&k[8..])?))
}

/// The upper bound of a scan for everything due at or before `now_ms`.
pub(crate) fn due_upper(now_ms: u64) -> [u8; DUE_KEY_LEN] {
    due_key(now_ms, &QueueId([0xff; 12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_time_order() {
        let a = due_key(1, &QueueId([9; 12]));
        let b = due_key(2, &QueueId([0; 12]));
        assert!(a < b);
        assert_eq!(split_due_key(&a), Some((1, QueueId([9; 12]))));
        assert_eq!(split_due_key(&a[..5]), None);
        assert!(b <= due_upper(2) && b > due_upper(1));
    }
}
