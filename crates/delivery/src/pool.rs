//! Idle outbound connections kept per next-hop address for reuse.
//!
//! [`Pool::take`] hands out the most recently used idle connection to an
//! address (the caller checks it with RSET before use); [`Pool::put`] returns
//! a connection that can take more transactions; [`Pool::expired`] removes
//! connections idle past the timeout so the caller can close them politely.
//! Bounded by construction: a connection is only pooled after a transaction,
//! and transactions are bounded by the delivery concurrency limits.

use crate::smtp::Conn;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle connections by next-hop address.
pub(crate) struct Pool {
    /// Idle connections by address, most recently returned last.
    idle: Mutex<HashMap<(SocketAddr, String), Vec<Conn>>>,
    /// How long an idle connection is kept.
    idle_timeout: Duration,
    /// Transactions per connection before it is closed.
    max_uses: usize,
}

impl Pool {
    /// An empty pool.
    pub(crate) fn new(idle_timeout: Duration, max_uses: usize) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
            max_uses,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, String), Vec<Conn>>> {
        // A panic elsewhere cannot leave the map inconsistent: recover it.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned connection to `addr`, made under the TLS
    /// requirement `tag`, that is not past its idle timeout (older ones are
    /// dropped).
    pub(crate) fn take(&self, addr: SocketAddr, tag: &str) -> Option<Conn> {
        let mut idle = self.lock();
        let list = idle.get_mut(&(addr, tag.to_string()))?;
        while let Some(c) = list.pop() {
            if c.idle_since.elapsed() < self.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    /// Removes every idle connection to `addr` (found dead: the next hop
    /// restarted).
    pub(crate) fn take_all(&self, addr: SocketAddr) -> Vec<Conn> {
        let mut idle = self.lock();
        let keys: Vec<(SocketAddr, String)> =
            idle.keys().filter(|k| k.0 == addr).cloned().collect();
        keys.iter()
            .flat_map(|k| idle.remove(k).unwrap_or_default())
            .collect()
    }

    /// Keeps `conn` for reuse, or hands it back when it should be closed.
    pub(crate) fn put(&self, mut conn: Conn) -> Option<Conn> {
        if conn.uses >= self.max_uses || !conn.is_usable() {
            return Some(conn);
        }
        conn.idle_since = Instant::now();
        self.lock()
            .entry((conn.addr, conn.tag.clone()))
            .or_default()
            .push(conn);
        None
    }

    /// Removes and returns connections idle too long.
    pub(crate) fn expired(&self) -> Vec<Conn> {
        let mut out = Vec::new();
        let mut idle = self.lock();
        for list in idle.values_mut() {
            let (old, keep): (Vec<Conn>, Vec<Conn>) = list
                .drain(..)
                .partition(|c| c.idle_since.elapsed() >= self.idle_timeout);
            *list = keep;
            out.extend(old);
        }
        idle.retain(|_, l| !l.is_empty());
        out
    }
}
