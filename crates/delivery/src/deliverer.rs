//! [`Deliverer`]: delivers one message's pending recipients and reports an
//! outcome per recipient.
//!
//! Recipients are grouped by domain; each domain's next hops are tried in
//! order (every address of a host, then the next host) until one answers the
//! transaction. A connection-level failure moves on to the next address; an
//! answer from a server is final for this attempt. A global semaphore bounds
//! attempts in flight and a per-destination semaphore bounds the connections
//! to one domain. Used connections go back to the [`Pool`].

use crate::nexthop::{next_hops, HopLimits, Routes};
use crate::pool::Pool;
use crate::resolve::Resolver;
use crate::smtp::{self, ClientParams, Conn, Downgrade, Message};
use postern_core::config::{DeliveryConfig, Route};
use postern_core::{Address, Envelope, Outcome, Reason};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Concurrency limits.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryLimits {
    pub max_concurrency: usize,
    pub max_per_destination: usize,
}

pub struct Deliverer<R: Resolver> {
    routes: Routes,
    resolver: R,
    hop_limits: HopLimits,
    client: ClientParams,
    pool: Pool,
    limits: DeliveryLimits,
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

/// Observer of new outbound connections (metrics).
pub type ConnectHook = Arc<dyn Fn(bool) + Send + Sync>;

impl<R: Resolver> Deliverer<R> {
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
            limits: DeliveryLimits {
                max_concurrency: cfg.max_concurrency,
                max_per_destination: cfg.max_per_destination,
            },
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

    pub fn limits(&self) -> DeliveryLimits {
        self.limits
    }

    fn dest_slot(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = self.per_dest.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_per_destination)))
            .clone()
    }

    /// Closes idle connections past their timeout and forgets idle
    /// destinations. Call periodically.
    pub async fn housekeeping(&self) {
        for c in self.pool.expired() {
            c.quit(
                self.client
                    .command_timeout
                    .min(std::time::Duration::from_secs(5)),
            )
            .await;
        }
        let max = self.limits.max_per_destination;
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
                    let mut p = String::new();
                    if let Some(n) = &r.notify {
                        p.push_str(&format!(" NOTIFY={n}"));
                    }
                    if let Some(o) = &r.orcpt {
                        p.push_str(&format!(" ORCPT={o}"));
                    }
                    p
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
        let all = |r: Reason| {
            let o = if r.code >= 500 {
                Outcome::Permanent(r)
            } else {
                Outcome::Temporary(r)
            };
            vec![o; rcpts.len()]
        };
        let Ok(_global) = self.global.acquire().await else {
            return all(Reason::local(451, "4.3.0", "delivery is shutting down"));
        };
        let slot = self.dest_slot(domain);
        let Ok(_dest) = slot.acquire().await else {
            return all(Reason::local(451, "4.3.0", "delivery is shutting down"));
        };
        let hops = match next_hops(domain, &self.routes, &self.resolver, &self.hop_limits).await {
            Ok(h) => h,
            Err(r) => return all(r),
        };
        let msg = Message {
            sender: env.sender.as_ref(),
            recipients: rcpts,
            body,
            eight_bit: env.eight_bit,
            downgrade: &*self.downgrade,
            smtputf8: env.smtputf8,
            dsn_mail: {
                let mut p = String::new();
                if env.dsn_ret_full {
                    p.push_str(" RET=FULL");
                }
                if let Some(e) = &env.dsn_envid {
                    p.push_str(&format!(" ENVID={e}"));
                }
                p
            },
            dsn_rcpt,
        };
        let mut last = Reason::local(451, "4.4.1", format!("no next hop answered for {domain}"));
        for hop in &hops {
            for addr in &hop.addrs {
                let mut conn = match self.checkout(&hop.name, *addr).await {
                    Ok(c) => c,
                    Err(r) => {
                        last = r;
                        continue;
                    }
                };
                match smtp::transact(&mut conn, &msg, self.client.command_timeout).await {
                    Ok(outcomes) => {
                        if let Some(c) = self.pool.put(conn) {
                            c.quit(self.client.command_timeout).await;
                        }
                        return outcomes;
                    }
                    Err(r) => last = r,
                }
            }
        }
        all(last)
    }

    /// A pooled connection that still answers RSET, or a new one.
    async fn checkout(&self, host: &str, addr: std::net::SocketAddr) -> Result<Conn, Reason> {
        while let Some(mut c) = self.pool.take(addr) {
            // A connection used moments ago is alive; an older one must
            // prove it with RSET (the server may have timed it out).
            if c.idle_since.elapsed() < std::time::Duration::from_secs(2)
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

    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }
}
