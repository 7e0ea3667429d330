//! Per-client-IP admission: concurrent sessions and connection rate.
//!
//! [`IpLimiter::admit`] either refuses (with the reply to send) or returns a
//! [`Slot`] that counts the session as active until dropped. Rates are
//! counted in fixed one-minute windows. Trusted networks are exempt (the
//! caller decides). The table forgets idle addresses, so it stays small.
//!
//! Clients are counted by [`client_key`]: an IPv4 address as it is, an IPv6
//! address by its /64 (one subscriber's network: a client holding a /64
//! must not fill every slot by changing its address).

use crate::Reply;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
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

/// What a client is counted under: an IPv4 address as it is (an
/// IPv4-mapped IPv6 address as that IPv4 address), an IPv6 address by its
/// /64 prefix.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// An admitted session; dropping it frees the slot.
pub struct Slot {
    /// Where the session is counted, to uncount it on drop.
    limiter: Arc<IpLimiter>,
    /// The key ([`client_key`]) it is counted under.
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

    /// Admits a session from `ip` at `now`, or says why not. IPv6 clients
    /// are counted by their /64 ([`client_key`]).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Slot, Reply> {
        let ip = client_key(ip);
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

    // Finding "per-IP caps key on full IPv6 addresses": one /64 is one
    // client, however many addresses it uses; another /64 is another.
    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let l = IpLimiter::new(2, 100);
        let now = Instant::now();
        let a = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _x = l.admit(a("2001:db8:1:2::1"), now).unwrap();
        let _y = l.admit(a("2001:db8:1:2:ffff::9"), now).unwrap();
        assert!(
            l.admit(a("2001:db8:1:2:abcd:1:2:3"), now).is_err(),
            "a third address in the same /64"
        );
        assert!(l.admit(a("2001:db8:1:3::1"), now).is_ok(), "next /64");
        // IPv4 stays per address, also when it arrives IPv4-mapped.
        let _p = l.admit(a("192.0.2.7"), now).unwrap();
        let _q = l.admit(a("::ffff:192.0.2.7"), now).unwrap();
        assert!(l.admit(a("192.0.2.7"), now).is_err());
        assert!(l.admit(a("192.0.2.8"), now).is_ok());
        // Rates too: the window is the /64's.
        let r = IpLimiter::new(0, 2);
        assert!(r.admit(a("2001:db8::1"), now).is_ok());
        assert!(r.admit(a("2001:db8::2"), now).is_ok());
        assert!(r.admit(a("2001:db8::3"), now).is_err());
    }

    #[test]
    fn client_keys() {
        let k = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(k("192.0.2.1"), "192.0.2.1");
        assert_eq!(k("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(k("2001:db8:a:b:c:d:e:f"), "2001:db8:a:b::");
        assert_eq!(k("::1"), "::");
    }
}
