//! The memory budget for message data: how many octets of DATA and BDAT
//! buffers every session of the process holds together.
//!
//! One [`DataBudget`] is shared by every listener (and kept across reloads),
//! so a flood of sessions each streaming a large message cannot exhaust
//! memory however they are spread. A session reserves the octets it stores
//! through a [`Reservation`] as its buffer grows; a reservation that would
//! take the total past the limit fails, and the session then reads the rest
//! of that message without storing it and answers `452 4.3.1` at its end.
//! Reservations are released when dropped (the message was answered, the
//! transaction abandoned, the session ended in any way, panics included).
//!
//! One client must not take the whole budget and leave every other sender
//! with 452: an untrusted client (IPv6 by /64) may hold at most
//! [`CLIENT_SHARE`] of it (`1/4`); trusted clients and authenticated
//! sessions are held to the total only.
//!
//! The budget counts octets stored, not allocator capacity: a growing
//! buffer may briefly hold up to twice what it has reserved.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The part of the limit one untrusted client may hold: `limit / CLIENT_SHARE`.
pub const CLIENT_SHARE: u64 = 4;

/// Octets of message data held in memory by every session of the process.
#[derive(Debug, Default)]
pub struct DataBudget {
    /// Octets reserved by the live [`Reservation`]s; an atomic because
    /// sessions on every runtime thread reserve and release concurrently.
    used: AtomicU64,
    /// Octets held per untrusted client key (IPv6 by /64); entries at 0 are
    /// removed.
    clients: Mutex<HashMap<IpAddr, u64>>,
}

impl DataBudget {
    /// An empty budget, to be shared by every listener of the process.
    pub fn new() -> Arc<DataBudget> {
        Arc::new(DataBudget::default())
    }

    /// Octets reserved now, by every session together.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Adds `n` octets unless the total would pass `limit` (0: no limit).
    fn take(&self, n: u64, limit: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|t| limit == 0 || *t <= limit)
            })
            .is_ok()
    }

    /// Adds `n` octets to `client`'s share unless it would pass `share`.
    fn take_share(&self, client: IpAddr, n: u64, share: u64) -> bool {
        let Ok(mut clients) = self.clients.lock() else {
            return false;
        };
        let held = clients.entry(client).or_insert(0);
        match held.checked_add(n).filter(|t| *t <= share) {
            Some(total) => {
                *held = total;
                true
            }
            None => {
                if *held == 0 {
                    clients.remove(&client);
                }
                false
            }
        }
    }

    /// Gives back `n` octets of `client`'s share.
    fn give_share(&self, client: IpAddr, n: u64) {
        if let Ok(mut clients) = self.clients.lock() {
            if let Some(held) = clients.get_mut(&client) {
                *held = held.saturating_sub(n);
                if *held == 0 {
                    clients.remove(&client);
                }
            }
        }
    }

    /// Gives back `n` octets taken before.
    fn give(&self, n: u64) {
        // Never below zero, even if the bookkeeping were wrong.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

/// The octets one message being received holds against a [`DataBudget`];
/// released when dropped.
#[derive(Debug)]
pub struct Reservation {
    /// The budget shared by every session.
    budget: Arc<DataBudget>,
    /// The most the budget may hold in total when this reservation grows
    /// (`server.max_data_in_memory` of the session's configuration); 0 for
    /// no limit.
    limit: u64,
    /// Octets this reservation holds now.
    held: u64,
    /// The untrusted client's key whose share this counts against, if any.
    client: Option<IpAddr>,
}

impl Reservation {
    /// An empty reservation against `budget`, which it will not grow past
    /// `limit` octets in total (0: no limit).
    pub fn new(budget: &Arc<DataBudget>, limit: u64) -> Reservation {
        Reservation {
            budget: budget.clone(),
            limit,
            held: 0,
            client: None,
        }
    }

    /// A reservation of an untrusted client (its key: IPv6 by /64), held
    /// to its share of `limit` as well (no share when `limit` is 0).
    pub fn for_client(budget: &Arc<DataBudget>, limit: u64, client: IpAddr) -> Reservation {
        Reservation {
            budget: budget.clone(),
            limit,
            held: 0,
            client: (limit > 0).then_some(client),
        }
    }

    /// Reserves `n` more octets; `false` (and nothing more reserved) when
    /// the budget would pass its limit.
    pub fn grow(&mut self, n: usize) -> bool {
        let n = n as u64;
        if n == 0 {
            return true;
        }
        if !self.budget.take(n, self.limit) {
            return false;
        }
        if let Some(client) = self.client {
            if !self.budget.take_share(client, n, self.limit / CLIENT_SHARE) {
                self.budget.give(n);
                return false;
            }
        }
        self.held += n;
        true
    }

    /// Octets held now.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Gives back what is held beyond `n` octets (a receiver that reserved
    /// ahead, at the end of its message).
    pub fn shrink_to(&mut self, n: u64) {
        let extra = self.held.saturating_sub(n);
        if extra == 0 {
            return;
        }
        self.held -= extra;
        self.budget.give(extra);
        if let Some(client) = self.client {
            self.budget.give_share(client, extra);
        }
    }

    /// Gives back everything held; the reservation may grow again.
    pub fn release(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.budget.give(held);
        if let Some(client) = self.client {
            self.budget.give_share(client, held);
        }
    }

    /// A reservation against a budget of its own with no limit, for tests of
    /// the decoders that own one.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn unlimited() -> Reservation {
        Reservation::new(&DataBudget::new(), 0)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Finding "DATA flood": the total in memory is bounded across sessions.
    #[test]
    fn reservations_share_one_limit_and_release_on_drop() {
        let budget = DataBudget::new();
        let mut a = Reservation::new(&budget, 100);
        let mut b = Reservation::new(&budget, 100);
        assert!(a.grow(60));
        assert!(b.grow(40), "exactly the limit fits");
        assert!(!b.grow(1), "one octet past the limit");
        assert_eq!(budget.in_use(), 100, "a failed reservation takes nothing");
        a.shrink_to(10);
        assert_eq!((a.held(), budget.in_use()), (10, 50));
        a.shrink_to(20);
        assert_eq!(a.held(), 10, "shrinking never grows");
        a.release();
        assert_eq!(budget.in_use(), 40);
        assert!(a.grow(60));
        drop(a);
        drop(b);
        assert_eq!(budget.in_use(), 0, "dropping releases everything");
    }

    // Finding "DATA flood", one client's share: before, one client's
    // sessions could hold the whole budget and every other sender got 452.
    #[test]
    fn an_untrusted_client_holds_at_most_its_share() {
        let budget = DataBudget::new();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut a = Reservation::for_client(&budget, 400, ip("192.0.2.1"));
        let mut b = Reservation::for_client(&budget, 400, ip("192.0.2.1"));
        assert!(a.grow(60));
        assert!(b.grow(40), "the share (100) across the client's sessions");
        assert!(!b.grow(1), "past the share");
        assert_eq!(budget.in_use(), 100, "a refused share takes nothing");
        let mut other = Reservation::for_client(&budget, 400, ip("192.0.2.2"));
        assert!(other.grow(100), "another client has its own share");
        let mut trusted = Reservation::new(&budget, 400);
        assert!(trusted.grow(200), "a trusted one only the total");
        assert!(!trusted.grow(1), "the total");
        drop(a);
        assert!(b.grow(60), "a share frees with its sessions");
        drop((b, other, trusted));
        assert_eq!(budget.in_use(), 0);
        assert!(budget.clients.lock().unwrap().is_empty(), "no entry left");
        let mut unlimited = Reservation::for_client(&budget, 0, ip("192.0.2.1"));
        assert!(unlimited.grow(1 << 20), "no limit, no share");
    }

    #[test]
    fn zero_is_no_limit_and_totals_cannot_wrap() {
        let budget = DataBudget::new();
        let mut r = Reservation::new(&budget, 0);
        assert!(r.grow(1 << 30));
        assert!(r.grow(0));
        drop(r);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.take(u64::MAX, 0));
        assert!(
            !budget.take(1, 0),
            "a total that would wrap is refused, limit or not"
        );
    }

    #[test]
    fn a_panic_releases_the_reservation() {
        let budget = DataBudget::new();
        let b = budget.clone();
        let result = std::panic::catch_unwind(move || {
            let mut r = Reservation::new(&b, 1000);
            assert!(r.grow(500));
            panic!("session panicked");
        });
        assert!(result.is_err());
        assert_eq!(budget.in_use(), 0);
    }
}
