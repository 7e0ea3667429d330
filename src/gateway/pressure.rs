//! Back pressure, as Exchange does it: when the queue grows past
//! `queue.max_messages`, free disk under the queue falls below
//! `queue.min_free_disk`, or resident memory passes `queue.max_memory`, new
//! mail from untrusted clients is refused with `452 4.3.1` (level 1); at the
//! hard marks (twice the messages, half the disk, 1.5 times the memory)
//! everyone is (level 2). Checked every second; mail is accepted again as
//! soon as the measure falls back. Exposed as `postern_back_pressure` and in
//! `/readyz`.
//!
//! A write that failed for want of space (whatever `min_free_disk` says)
//! is level 2 too, until space returns: [`NO_SPACE_CLEAR`] free under the
//! queue, or [`NO_SPACE_RETRY`] since the failure (the next write then
//! tells again). `postern_queue_storage_full` shows it.

use crate::config::QueueConfig;
use crate::ops::metrics::Metrics;
use postern_queue::Queue;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Free bytes on the file system holding `path`.
#[cfg(unix)]
pub fn free_disk(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct for a valid C path.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return None;
        }
        (s.f_bavail as u64).checked_mul(s.f_frsize as u64)
    }
}

#[cfg(not(unix))]
pub fn free_disk(_path: &std::path::Path) -> Option<u64> {
    None
}

/// Resident memory of this process, from /proc (Linux).
#[cfg(unix)]
fn rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions. (Pages are 16 or 64 KiB on
    // some arm64 kernels.)
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.checked_mul(u64::try_from(page).ok().filter(|p| *p > 0)?)
}

#[cfg(not(unix))]
fn rss() -> Option<u64> {
    None
}

/// The level for the given measures.
pub fn level(messages: u64, free: Option<u64>, mem: Option<u64>, q: &QueueConfig) -> u8 {
    let mut l = 0;
    if q.max_messages > 0 {
        if messages >= q.max_messages.saturating_mul(2) {
            l = 2;
        } else if messages >= q.max_messages {
            l = l.max(1);
        }
    }
    if let Some(f) = free {
        if f < q.min_free_disk.0 / 2 {
            l = 2;
        } else if f < q.min_free_disk.0 {
            l = l.max(1);
        }
    }
    if let (Some(m), true) = (mem, q.max_memory.0 > 0) {
        if m > q.max_memory.0 + q.max_memory.0 / 2 {
            l = 2;
        } else if m > q.max_memory.0 {
            l = l.max(1);
        }
    }
    l
}

/// Free space under the queue at which a want of space is over.
pub const NO_SPACE_CLEAR: u64 = 64 << 20;
/// Time after a write failed for want of space when writes are tried
/// again even without that much free space.
pub const NO_SPACE_RETRY: Duration = Duration::from_secs(30);

/// Whether the queue still wants space: it failed a write for want of it
/// and neither [`NO_SPACE_CLEAR`] is free nor [`NO_SPACE_RETRY`] passed.
fn still_full(since_ms: Option<u64>, now_ms: u64, free: Option<u64>) -> bool {
    let Some(t) = since_ms else {
        return false;
    };
    let waited = now_ms.saturating_sub(t) >= NO_SPACE_RETRY.as_millis() as u64;
    !(waited || free.is_some_and(|f| f >= NO_SPACE_CLEAR))
}

/// Updates `state` every second until the process ends. When space has
/// returned after a write failed for want of it, the queue is probed: a
/// store that still fails (sled keeps its first I/O error) cannot recover
/// in this process, and `reopen` is told (the gateway then stops in order
/// and exits for the supervisor to start it again on a reopened store).
pub async fn watch(
    queue: Queue,
    q: QueueConfig,
    state: Arc<AtomicU8>,
    metrics: Arc<Metrics>,
    reopen: Arc<tokio::sync::Notify>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let c = queue.counts();
        let messages = (c.ready_or_deferred + c.leased + c.held) as u64;
        let free = free_disk(&q.path);
        let since = queue.no_space_since();
        let full = still_full(since, postern_core::now_ms(), free);
        let mut broken = false;
        if since.is_some() && !full {
            match queue.probe().await {
                Ok(()) => {
                    queue.clear_no_space();
                    tracing::warn!(free, "the queue's file system has space again");
                }
                Err(e) => {
                    tracing::error!(free, error = %e,
                        "space has returned but the queue store still fails; restarting the gateway to reopen it");
                    broken = true;
                    reopen.notify_one();
                }
            }
        }
        let full = full || broken;
        metrics.process.storage_full.set(i64::from(full));
        let new = if full {
            2
        } else {
            level(messages, free, rss(), &q)
        };
        let old = state.swap(new, Ordering::Relaxed);
        if old != new {
            tracing::warn!(level = new, messages, "back pressure changed");
        }
        metrics.process.back_pressure.set(i64::from(new));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::units::ByteSize;

    #[test]
    fn marks() {
        let q = QueueConfig {
            max_messages: 100,
            min_free_disk: ByteSize(1000),
            max_memory: ByteSize(0),
            ..Default::default()
        };
        assert_eq!(level(10, Some(5000), Some(1 << 40), &q), 0);
        assert_eq!(level(100, Some(5000), None, &q), 1);
        assert_eq!(level(200, Some(5000), None, &q), 2);
        assert_eq!(level(0, Some(999), None, &q), 1);
        assert_eq!(level(0, Some(400), None, &q), 2);
        let m = QueueConfig {
            max_memory: ByteSize(100),
            ..q
        };
        assert_eq!(level(0, None, Some(120), &m), 1);
        assert_eq!(level(0, None, Some(200), &m), 2);
    }

    #[test]
    fn a_want_of_space_lasts_until_space_returns() {
        let t = 1_000_000;
        assert!(!still_full(None, t, Some(0)));
        assert!(still_full(Some(t), t + 1000, Some(1 << 20)));
        assert!(still_full(Some(t), t + 1000, None));
        assert!(!still_full(Some(t), t + 1000, Some(NO_SPACE_CLEAR)));
        assert!(!still_full(Some(t), t + 30_000, Some(0)));
    }
}
