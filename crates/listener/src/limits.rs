//! Per-client-IP admission: concurrent sessions and connection rate.
//!
//! [`IpLimiter::admit`] either refuses (with the reply to send) or returns a
//! [`Slot`] that counts the session as active until dropped. Rates are
//! counted in fixed one-minute windows. Trusted networks are exempt (the
//! caller decides). The table forgets idle addresses, so it stays small.

use crate::Reply;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// What is counted for one client address.
#[derive(Debug, Default)]
struct PerIp {
    /// Sessions from this address now open (against `max_active`).
    active: usize,
    /// Start of the current one-minute rate window.
    window_start: Option<Instant>,
    /// Connection attempts in that window (against `max_per_minute`).
    in_window: u32,
}

/// Concurrency and rate limits per client address, shared by every session
/// of one listener.
#[derive(Debug, Default)]
pub struct IpLimiter {
    /// Concurrent sessions per address; 0 means no limit.
    max_active: usize,
    /// Connections per address per minute; 0 means no limit.
    max_per_minute: u32,
    /// The counts per address; a mutex because sessions end on any thread.
    table: Mutex<HashMap<IpAddr, PerIp>>,
}

/// An admitted session; dropping it frees the slot.
pub struct Slot {
    /// Where the session is counted, to uncount it on drop.
    limiter: Arc<IpLimiter>,
    /// The client address it is counted under.
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.limiter.lock();
        if let Some(e) = t.get_mut(&self.ip) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

impl IpLimiter {
    /// A limiter with the given caps (0: no limit).
    pub fn new(max_active: usize, max_per_minute: u32) -> Arc<IpLimiter> {
        Arc::new(IpLimiter {
            max_active,
            max_per_minute,
            table: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, PerIp>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a session from `ip` at `now`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Slot, Reply> {
        let mut t = self.lock();
        if t.len() > 10_000 {
            t.retain(|_, e| e.active > 0 || e.window_start.is_some_and(|s| now - s < WINDOW));
        }
        let e = t.entry(ip).or_default();
        if e.window_start
            .is_none_or(|s| now.duration_since(s) >= WINDOW)
        {
            e.window_start = Some(now);
            e.in_window = 0;
        }
        // Every attempt counts toward the rate, refused ones too (as
        // Postfix's anvil counts connections).
        e.in_window = e.in_window.saturating_add(1);
        if self.max_per_minute > 0 && e.in_window > self.max_per_minute {
            return Err(Reply::new(
                421,
                "4.7.0",
                "too many connections from your address, slow down",
            ));
        }
        if self.max_active > 0 && e.active >= self.max_active {
            return Err(Reply::new(
                421,
                "4.7.0",
                "too many concurrent sessions from your address",
            ));
        }
        e.active += 1;
        Ok(Slot {
            limiter: self.clone(),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_and_rate() {
        let l = IpLimiter::new(2, 4);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let a = l.admit(ip, now).unwrap();
        let _b = l.admit(ip, now).unwrap();
        assert!(l.admit(ip, now).is_err(), "third concurrent session");
        drop(a);
        let _c = l.admit(ip, now).unwrap();
        assert!(l.admit(ip, now).is_err(), "fourth in the minute");
        // Another address is unaffected; a new window resets the rate.
        assert!(l.admit("192.0.2.2".parse().unwrap(), now).is_ok());
        drop(_b);
        assert!(l.admit(ip, now + WINDOW).is_ok());
    }
}
