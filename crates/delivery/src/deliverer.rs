//! [`Deliverer`]: delivers one message's pending recipients and reports an
//! outcome per recipient.
//!
//! Recipients are grouped by domain; each domain's next hops are tried in
//! order (every address of a host, then the next host) until one answers the
//! transaction. A connection-level failure moves on to the next address; an
//! answer from a server is final for this attempt. A global semaphore bounds
//! attempts in flight and a per-destination semaphore bounds the connections
//! to one domain. Used connections go back to the [`Pool`]. A failure before
//! any server answered (no route, DNS, every address unreachable, shutdown)
//! is one reason for every recipient of the domain: permanent when 5xx.

use crate::config::{DeliveryConfig, Route};
use crate::nexthop::{next_hops, Hop, HopLimits, Routes};
use crate::pool::Pool;
use crate::resolve::Resolver;
use crate::smtp::{self, mail_dsn_params, rcpt_dsn_params, ClientParams, Conn, Downgrade, Message};
use postern_core::{Address, Envelope, Outcome, Reason};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Observer of new outbound connections (metrics): called with `true` when
/// STARTTLS was negotiated.
pub type ConnectHook = Arc<dyn Fn(bool) + Send + Sync>;

/// Delivers messages to their next hops: routes and DNS (through `R`),
/// pooled SMTP connections, a global and a per-destination concurrency
/// limit.
pub struct Deliverer<R: Resolver> {
    /// Static routes, tried before DNS.
    routes: Routes,
    /// MX and address lookups.
    resolver: R,
    /// Port, MX hosts and addresses per host to try.
    hop_limits: HopLimits,
    /// EHLO name, timeouts, STARTTLS.
    client: ClientParams,
    /// Idle connections kept for reuse.
    pool: Pool,
    /// Permits of each destination's semaphore; a destination whose
    /// semaphore has them all (and no holder) is forgotten.
    max_per_destination: usize,
    /// Bounds delivery attempts in flight across all destinations.
    global: Semaphore,
    /// Bounds connections per destination domain; entries are created on
    /// demand and dropped by [`Deliverer::housekeeping`] when idle.
    per_dest: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// 8-bit to 7-bit conversion for hops without 8BITMIME.
    downgrade: Arc<Downgrade>,
    /// Told of every new connection: true when STARTTLS was negotiated.
    on_connect: Option<ConnectHook>,
}

impl<R: Resolver> Deliverer<R> {
    /// A deliverer on `cfg` and `routes`, saying `helo` in EHLO, asking
    /// `resolver`, converting with `downgrade` for hops without 8BITMIME.
    pub fn new(
        cfg: &DeliveryConfig,
        routes: &[Route],
        helo: String,
        resolver: R,
        downgrade: Arc<Downgrade>,
    ) -> Self {
        Deliverer {
            routes: Routes::new(routes, cfg.port),
            resolver,
            hop_limits: HopLimits {
                port: cfg.port,
                max_mx_hosts: cfg.max_mx_hosts,
                max_addresses_per_host: cfg.max_addresses_per_host,
            },
            client: ClientParams {
                helo,
                connect_timeout: cfg.connect_timeout.0,
                command_timeout: cfg.command_timeout.0,
                starttls: cfg.starttls,
            },
            pool: Pool::new(cfg.idle_timeout.0, cfg.max_messages_per_connection),
            max_per_destination: cfg.max_per_destination,
            global: Semaphore::new(cfg.max_concurrency),
            per_dest: Mutex::new(HashMap::new()),
            downgrade,
            on_connect: None,
        }
    }

    /// Calls `hook` with the TLS state of every new connection.
    pub fn on_connect(mut self, hook: ConnectHook) -> Self {
        self.on_connect = Some(hook);
        self
    }

    fn dest_slot(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = self.per_dest.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_destination)))
            .clone()
    }

    /// Closes idle connections past their timeout and forgets idle
    /// destinations. Call periodically.
    pub async fn housekeeping(&self) {
        for c in self.pool.expired() {
            c.quit(self.client.command_timeout.min(Duration::from_secs(5)))
                .await;
        }
        let max = self.max_per_destination;
        self.per_dest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < max);
    }

    /// Delivers the pending recipients of `env`; returns (recipient index,
    /// outcome) for each of them.
    pub async fn deliver(&self, env: &Envelope, body: &[u8]) -> Vec<(usize, Outcome)> {
        let mut by_domain: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in env.pending() {
            by_domain
                .entry(r.address.domain.as_str())
                .or_default()
                .push(i);
        }
        let mut out = Vec::new();
        for (domain, idx) in by_domain {
            let rcpts: Vec<&Address> = idx.iter().map(|i| &env.recipients[*i].address).collect();
            let dsn: Vec<String> = idx
                .iter()
                .map(|i| {
                    let r = &env.recipients[*i];
                    rcpt_dsn_params(r.notify.as_deref(), r.orcpt.as_deref())
                })
                .collect();
            let outcomes = self.deliver_domain(domain, env, &rcpts, &dsn, body).await;
            out.extend(idx.into_iter().zip(outcomes));
        }
        out
    }

    async fn deliver_domain(
        &self,
        domain: &str,
        env: &Envelope,
        rcpts: &[&Address],
        dsn_rcpt: &[String],
        body: &[u8],
    ) -> Vec<Outcome> {
        let shutting_down = || Reason::local(451, "4.3.0", "delivery is shutting down");
        let Ok(_global) = self.global.acquire().await else {
            return for_all(shutting_down(), rcpts.len());
        };
        let slot = self.dest_slot(domain);
        let Ok(_dest) = slot.acquire().await else {
            return for_all(shutting_down(), rcpts.len());
        };
        let hops = match next_hops(domain, &self.routes, &self.resolver, &self.hop_limits).await {
            Ok(h) => h,
            Err(r) => return for_all(r, rcpts.len()),
        };
        let msg = Message {
            sender: env.sender.as_ref(),
            recipients: rcpts,
            body,
            eight_bit: env.eight_bit,
            smtputf8: env.smtputf8,
            dsn_mail: mail_dsn_params(env.dsn_ret_full, env.dsn_envid.as_deref()),
            dsn_rcpt,
        };
        self.try_hops(domain, &hops, &msg).await
    }

    /// Tries every address of every hop in order until one answers the
    /// transaction; the last failure otherwise.
    async fn try_hops(&self, domain: &str, hops: &[Hop], msg: &Message<'_>) -> Vec<Outcome> {
        let timeout = self.client.command_timeout;
        let mut last = Reason::local(451, "4.4.1", format!("no next hop answered for {domain}"));
        for hop in hops {
            for addr in &hop.addrs {
                let mut conn = match self.checkout(&hop.name, *addr).await {
                    Ok(c) => c,
                    Err(r) => {
                        last = r;
                        continue;
                    }
                };
                match smtp::transact(&mut conn, msg, &*self.downgrade, timeout).await {
                    Ok(outcomes) => {
                        if let Some(c) = self.pool.put(conn) {
                            c.quit(timeout).await;
                        }
                        return outcomes;
                    }
                    Err(r) => last = r,
                }
            }
        }
        for_all(last, msg.recipients.len())
    }

    /// A pooled connection that still answers RSET, or a new one.
    async fn checkout(&self, host: &str, addr: SocketAddr) -> Result<Conn, Reason> {
        while let Some(mut c) = self.pool.take(addr) {
            // A connection used moments ago is alive; an older one must
            // prove it with RSET (the server may have timed it out).
            if c.idle_since.elapsed() < Duration::from_secs(2)
                || c.reset(self.client.command_timeout).await
            {
                return Ok(c);
            }
        }
        let conn = smtp::connect(host, addr, &self.client).await?;
        if let Some(hook) = &self.on_connect {
            hook(conn.is_encrypted());
        }
        Ok(conn)
    }
}

/// One failure for every recipient: permanent when its code is 5xx.
fn for_all(r: Reason, n: usize) -> Vec<Outcome> {
    let o = if r.code >= 500 {
        Outcome::Permanent(r)
    } else {
        Outcome::Temporary(r)
    };
    vec![o; n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_for_every_recipient() {
        let temp = Reason::local(451, "4.4.3", "MX lookup failed");
        assert_eq!(for_all(temp.clone(), 2), vec![Outcome::Temporary(temp); 2]);
        let perm = Reason::local(556, "5.1.10", "null MX");
        assert_eq!(for_all(perm.clone(), 1), vec![Outcome::Permanent(perm)]);
        assert!(for_all(Reason::local(451, "4.3.0", "x"), 0).is_empty());
    }
}
