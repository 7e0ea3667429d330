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
//!
//! Loops: hops that are ourselves ([`Myself`]: our listening addresses and
//! host name) are never tried; a domain whose best hop is us fails with a
//! permanent 5.4.6 "loops back to myself" (`crate::myself`).
//!
//! Time: the caller is told when work on a destination starts (its slots
//! are held, waiting is over) and when it ends, through the guard its
//! `working` function returns; the work itself (DNS, connections, the
//! transaction) is bounded by `delivery.attempt_timeout` and ends as a
//! temporary 4.4.2 failure past it, so a tarpit next hop costs one
//! deferral, never a hung gateway.

use crate::config::{DeliveryConfig, Route};
use crate::myself::{before_myself, is_local, loop_reason, Myself};
use crate::nexthop::{next_hops, Hop, HopLimits, Routes};
use crate::pool::Pool;
use crate::resolve::{DnsError, Resolver, TemporaryDns};
use crate::smtp::{
    self, mail_dsn_params, notify_success, rcpt_dsn_params, untrusted_mail_params,
    untrusted_rcpt_params, ClientParams, Conn, Downgrade, Failed, Message,
};
use crate::tls::sts::{FetchParams, StsAnswer, StsCache};
use crate::tls::{
    Checker, OutboundTlsConfig, PolicySource, PolicyTable, Require, StsMode, StsStore, TlsEvent,
    TlsFailure, TlsLevel, TlsPolicyEntry,
};
use postern_core::{Address, Envelope, Outcome, Reason};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Observer of outbound connections (metrics, TLS reports).
pub type ConnectHook = Arc<dyn Fn(ConnEvent) + Send + Sync>;

/// What happened to an outbound connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// A new connection; `tls` when STARTTLS was negotiated.
    Opened {
        /// STARTTLS was negotiated.
        tls: bool,
    },
    /// A TLS policy result: a new connection's, or a failure before one
    /// (a policy fetch, a bogus TLSA answer, an MX not in the policy).
    Tls(TlsEvent),
    /// An idle connection taken from the pool broke before the message
    /// text was sent (the next hop had closed it); the transaction was run
    /// again on a new connection.
    FoundDead,
}

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
    /// Told of every new connection and every pooled one found dead.
    on_connect: Option<ConnectHook>,
    /// Our own endpoints: a next hop among them is a loop, never tried.
    myself: Myself,
    /// Longest one destination's work may take (`delivery.attempt_timeout`,
    /// kept below the in-flight deadline by the binary).
    attempt_timeout: Duration,
    /// Outbound TLS: policies, certificate checks, MTA-STS.
    tls: TlsSetup,
}

/// The outbound TLS settings a deliverer works with.
struct TlsSetup {
    /// Static levels per destination.
    table: PolicyTable,
    /// The TLS client configuration and roots (`None` only if rustls
    /// refused it: plain text then).
    checker: Option<Checker>,
    /// MTA-STS policies, when enabled.
    sts: Option<StsCache>,
}

/// How one attempt's connection was secured, for its tracking line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsNote {
    /// The policy that applied: none, may, encrypt, verify, mta-sts,
    /// mta-sts-testing, dane.
    pub policy: &'static str,
    /// The negotiated TLS version; `None` for plain text.
    pub version: Option<&'static str>,
    /// "ok", or the TLS-RPT result type of a failure that was noted but
    /// not enforced, or of the failure that stopped delivery.
    pub result: &'static str,
}

/// What applies to one next hop of a destination, and why: for
/// `postern tls-policy check`.
#[derive(Debug, Clone)]
pub struct HopPolicy {
    /// Host name (or address literal).
    pub host: String,
    /// Its addresses with the port.
    pub addrs: Vec<SocketAddr>,
    /// An MX host (or the implicit MX), not a static route.
    pub mx: bool,
    /// The MX answer was DNSSEC-validated.
    pub dnssec: bool,
    /// The TLSA records at `_<port>._tcp.<host>` ("secure", "insecure",
    /// "none", or the lookup's failure) and the records.
    pub tlsa_status: String,
    /// The records, presentation form.
    pub tlsa: Vec<String>,
    /// The policy that applies: none, may, encrypt, verify, mta-sts,
    /// mta-sts-testing, dane.
    pub policy: &'static str,
    /// What a connection must achieve, in words.
    pub requirement: String,
    /// Why the hop is not used, when it is not (a 4.7.5 reason).
    pub refused: Option<String>,
}

/// What applies to a destination: for `postern tls-policy check`.
#[derive(Debug, Clone)]
pub struct PolicyReport {
    /// The static level (a `[[tls_policy]]` entry or the default).
    pub level: TlsLevel,
    /// `match` names of a `verify` entry.
    pub match_names: Vec<String>,
    /// The MTA-STS answer, when MTA-STS applies to the destination.
    pub sts: Option<StsAnswer>,
    /// Each next hop in order.
    pub hops: Vec<HopPolicy>,
    /// Why there are no hops (no route, DNS failure...).
    pub error: Option<String>,
}

/// The TLS plan of one destination: its level and its MTA-STS policy.
struct DomainTls {
    level: TlsLevel,
    match_names: Vec<String>,
    sts: Option<StsAnswer>,
}

impl<R: Resolver> Deliverer<R> {
    /// A deliverer on `cfg` and `routes`, never delivering to `myself`
    /// (whose host name it says in EHLO), asking `resolver`, converting with
    /// `downgrade` for hops without 8BITMIME.
    pub fn new(
        cfg: &DeliveryConfig,
        routes: &[Route],
        myself: Myself,
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
                helo: myself.hostname.clone(),
                connect_timeout: cfg.connect_timeout.0,
                command_timeout: cfg.command_timeout.0,
                starttls: cfg.starttls,
                max_reply_size: usize::try_from(cfg.max_reply_size.0).unwrap_or(usize::MAX),
            },
            pool: Pool::new(cfg.idle_timeout.0, cfg.max_messages_per_connection),
            max_per_destination: cfg.max_per_destination,
            global: Semaphore::new(cfg.max_concurrency),
            per_dest: Mutex::new(HashMap::new()),
            downgrade,
            on_connect: None,
            myself,
            attempt_timeout: cfg.attempt_timeout.0,
            tls: TlsSetup {
                table: PolicyTable::new(&[], TlsLevel::May),
                checker: Checker::new(None).ok(),
                sts: None,
            },
        }
    }

    /// Applies the outbound TLS settings: the default level, the
    /// per-destination table, `checker` (roots), and MTA-STS with policies
    /// kept in `store` when enabled.
    pub fn with_tls(
        mut self,
        cfg: &OutboundTlsConfig,
        policies: &[TlsPolicyEntry],
        checker: Checker,
        store: Option<Arc<dyn StsStore>>,
    ) -> Self {
        self.tls = TlsSetup {
            table: PolicyTable::new(policies, cfg.level),
            checker: Some(checker),
            sts: cfg.mta_sts.then(|| {
                StsCache::new(
                    store,
                    FetchParams {
                        port: cfg.mta_sts_port,
                        timeout: cfg.mta_sts_timeout.0,
                        max_size: usize::try_from(cfg.mta_sts_max_size.0).unwrap_or(usize::MAX),
                    },
                )
            }),
        };
        self
    }

    /// True when a destination may need DANE: the resolver must validate.
    pub fn needs_dnssec(policies: &[TlsPolicyEntry], default: TlsLevel) -> bool {
        PolicyTable::new(policies, default).needs_dane()
    }

    /// The MTA-STS policy of `domain` as delivery would use it now
    /// (cache, TXT id, fetch): for `postern tls-policy check`.
    pub async fn mta_sts(&self, domain: &str) -> Option<StsAnswer> {
        let (sts, checker) = (self.tls.sts.as_ref()?, self.tls.checker.as_ref()?);
        Some(sts.policy(domain, &self.resolver, checker).await)
    }

    /// The static level of `domain` and its `match` names.
    pub fn static_level(&self, domain: &str) -> (TlsLevel, Vec<String>) {
        let names = self
            .tls
            .table
            .lookup(domain)
            .map(|e| e.match_names.clone())
            .unwrap_or_default();
        (self.tls.table.level(domain), names)
    }

    /// Works out what applies to `domain` now, as delivery would (routes,
    /// MX, static level, MTA-STS, TLSA), without connecting.
    pub async fn explain(&self, domain: &str) -> PolicyReport {
        let domain = domain.to_ascii_lowercase();
        let (level, match_names) = self.static_level(&domain);
        let hops = match next_hops(&domain, &self.routes, &self.resolver, &self.hop_limits).await {
            Ok(h) => h,
            Err(r) => {
                return PolicyReport {
                    level,
                    match_names,
                    sts: None,
                    hops: Vec::new(),
                    error: Some(r.to_string()),
                }
            }
        };
        let plan = self.tls_plan(&domain, &hops).await;
        let mut out = Vec::new();
        for hop in &hops {
            let port = hop.addrs.first().map_or(self.hop_limits.port, |a| a.port());
            let (tlsa_status, tlsa) = if hop.mx {
                match self.resolver.tlsa(&hop.name, port).await {
                    Ok(a) => (
                        if a.secure { "secure" } else { "insecure" }.to_string(),
                        a.records.iter().map(|t| t.to_string()).collect(),
                    ),
                    Err(DnsError::NoData) | Err(DnsError::NxDomain) => {
                        ("none".to_string(), Vec::new())
                    }
                    Err(e) => (e.to_string(), Vec::new()),
                }
            } else {
                ("not looked up (static route)".to_string(), Vec::new())
            };
            let (policy, requirement, refused) = match self.require_for(&domain, hop, &plan).await {
                Ok((req, source)) => (source.label(), req.describe(), None),
                Err(f) => ("refused", String::new(), Some(f.reason.to_string())),
            };
            out.push(HopPolicy {
                host: hop.name.clone(),
                addrs: hop.addrs.clone(),
                mx: hop.mx,
                dnssec: hop.secure,
                tlsa_status,
                tlsa,
                policy,
                requirement,
                refused,
            });
        }
        PolicyReport {
            level,
            match_names: plan.match_names,
            sts: plan.sts,
            hops: out,
            error: None,
        }
    }

    /// Fetches again cached MTA-STS policies past half their max_age.
    /// Call periodically; returns how many were refreshed.
    pub async fn refresh_policies(&self) -> usize {
        match (&self.tls.sts, &self.tls.checker) {
            (Some(sts), Some(checker)) => sts.refresh(&self.resolver, checker).await,
            _ => 0,
        }
    }

    /// Calls `hook` for every new connection and every pooled one found
    /// dead.
    pub fn on_connect(mut self, hook: ConnectHook) -> Self {
        self.on_connect = Some(hook);
        self
    }

    /// The resolver this deliverer asks, for other questions about mail
    /// routing (e.g. whether a DSN's recipient domain resolves at all).
    pub fn resolver(&self) -> &R {
        &self.resolver
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
    /// outcome) for each of them. Destinations are worked on one after the
    /// other; `working(domain)` is called once a destination's slots are
    /// held and its work starts, and what it returns is dropped when that
    /// work ends (the binary announces the delivery in flight with it, so
    /// waiting for a slot never counts against the in-flight deadline).
    pub async fn deliver<G: Send>(
        &self,
        env: &Envelope,
        body: &[u8],
        working: &(impl Fn(&str) -> G + Sync),
    ) -> Vec<(usize, Outcome, Option<TlsNote>)> {
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
                    if env.trusted {
                        rcpt_dsn_params(r.notify.as_deref(), r.orcpt.as_deref())
                    } else {
                        untrusted_rcpt_params(r.notify.as_deref(), r.orcpt.as_deref())
                    }
                })
                .collect();
            let success: Vec<bool> = idx
                .iter()
                .map(|i| notify_success(env.recipients[*i].notify.as_deref()))
                .collect();
            let msg = Message {
                sender: env.sender.as_ref(),
                recipients: &rcpts,
                body,
                eight_bit: env.eight_bit,
                smtputf8: env.smtputf8,
                dsn_mail: if env.trusted {
                    mail_dsn_params(env.dsn_ret_full, env.dsn_envid.as_deref())
                } else {
                    untrusted_mail_params(env.dsn_envid.as_deref())
                },
                dsn_rcpt: &dsn,
                notify_success: &success,
            };
            let (outcomes, note) = self.deliver_domain(domain, &msg, working).await;
            out.extend(
                idx.into_iter()
                    .zip(outcomes)
                    .map(|(i, o)| (i, o, note.clone())),
            );
        }
        out
    }

    /// One destination: its slots, then (announced through `working`) its
    /// hops and the transaction within `attempt_timeout`.
    async fn deliver_domain<G: Send>(
        &self,
        domain: &str,
        msg: &Message<'_>,
        working: &(impl Fn(&str) -> G + Sync),
    ) -> (Vec<Outcome>, Option<TlsNote>) {
        let n = msg.recipients.len();
        let shutting_down = || Reason::local(451, "4.3.0", "delivery is shutting down");
        let Ok(_global) = self.global.acquire().await else {
            return (for_all(shutting_down(), n), None);
        };
        let slot = self.dest_slot(domain);
        let Ok(_dest) = slot.acquire().await else {
            return (for_all(shutting_down(), n), None);
        };
        let _working = working(domain);
        let work = self.resolve_and_send(domain, msg);
        match tokio::time::timeout(self.attempt_timeout, work).await {
            Ok(done) => done,
            Err(_) => (
                for_all(attempt_timed_out(domain, self.attempt_timeout), n),
                None,
            ),
        }
    }

    /// The work on one destination: its hops (none that is us), its TLS
    /// plan, then the transaction on the first hop that answers.
    async fn resolve_and_send(
        &self,
        domain: &str,
        msg: &Message<'_>,
    ) -> (Vec<Outcome>, Option<TlsNote>) {
        let n = msg.recipients.len();
        let hops = match next_hops(domain, &self.routes, &self.resolver, &self.hop_limits).await {
            Ok(h) => h,
            Err(r) => return (for_all(r, n), None),
        };
        let Some(hops) = before_myself(hops, &self.myself, &is_local) else {
            tracing::warn!(%domain, "mail loops back to myself");
            return (for_all(loop_reason(domain), n), None);
        };
        let plan = self.tls_plan(domain, &hops).await;
        self.try_hops(domain, &hops, msg, &plan).await
    }

    /// The destination's static level and, when it may apply, its MTA-STS
    /// policy (only for MX hops: a static route is the operator's choice).
    async fn tls_plan(&self, domain: &str, hops: &[Hop]) -> DomainTls {
        let (level, match_names) = self.static_level(domain);
        let sts = match (&self.tls.sts, &self.tls.checker) {
            (Some(sts), Some(checker))
                if matches!(level, TlsLevel::May | TlsLevel::Dane) && hops.iter().any(|h| h.mx) =>
            {
                let answer = sts.policy(domain, &self.resolver, checker).await;
                if let Some((f, why)) = &answer.problem {
                    self.tls_event(
                        domain,
                        "",
                        None,
                        sts_source(&answer),
                        Some(f.clone()),
                        None,
                        why,
                    );
                }
                Some(answer)
            }
            _ => None,
        };
        DomainTls {
            level,
            match_names,
            sts,
        }
    }

    /// Tells the hook of a TLS result.
    #[allow(clippy::too_many_arguments)]
    fn tls_event(
        &self,
        domain: &str,
        mx_host: &str,
        ip: Option<std::net::IpAddr>,
        policy: PolicySource,
        failure: Option<TlsFailure>,
        version: Option<&'static str>,
        detail: &str,
    ) {
        if let Some(hook) = &self.on_connect {
            hook(ConnEvent::Tls(TlsEvent {
                domain: domain.to_string(),
                mx_host: mx_host.to_string(),
                ip,
                policy,
                failure,
                version,
                detail: detail.to_string(),
            }));
        }
    }

    /// What a connection to `hop` must achieve, and which policy says so;
    /// `Err` when the hop must not be used (DANE required and absent, a
    /// bogus TLSA answer, an MX host the enforced MTA-STS policy does not
    /// list).
    async fn require_for(
        &self,
        domain: &str,
        hop: &Hop,
        plan: &DomainTls,
    ) -> Result<(Require, PolicySource), Failed> {
        let level = plan.level;
        let names = || {
            let mut v = vec![hop.name.clone()];
            v.extend(plan.match_names.iter().cloned());
            v
        };
        let fail = |policy: &str, f: TlsFailure, why: String| Failed {
            reason: Reason::local(
                451,
                "4.7.5",
                format!(
                    "TLS policy {policy} for {domain}: {} {} ({why}); will retry",
                    hop.name,
                    f.result_type()
                ),
            ),
            tls: Some((f, why)),
        };
        match level {
            TlsLevel::None => return Ok((Require::Plain, PolicySource::Static(level))),
            TlsLevel::Encrypt => return Ok((Require::Encrypt, PolicySource::Static(level))),
            TlsLevel::Verify => {
                return Ok((
                    Require::Pki {
                        names: names(),
                        enforce: true,
                    },
                    PolicySource::Static(level),
                ))
            }
            TlsLevel::May | TlsLevel::Dane | TlsLevel::DaneOnly => {}
        }
        if level.uses_dane() {
            if hop.mx && hop.secure {
                let port = hop.addrs.first().map_or(self.hop_limits.port, |a| a.port());
                match self.resolver.tlsa(&hop.name, port).await {
                    Ok(a) if a.secure => {
                        let shown: Vec<String> = a.records.iter().map(|t| t.to_string()).collect();
                        let usable: Vec<_> =
                            a.records.into_iter().filter(|t| t.is_usable()).collect();
                        // RFC 7672 2.2: no usable record still means TLS,
                        // unauthenticated.
                        let require = if usable.is_empty() {
                            Require::Encrypt
                        } else {
                            Require::Dane {
                                tlsa: Arc::new(usable),
                                names: vec![hop.name.clone(), domain.to_string()],
                            }
                        };
                        return Ok((require, PolicySource::Tlsa(shown)));
                    }
                    Ok(_) | Err(DnsError::NoData) | Err(DnsError::NxDomain) => {}
                    Err(DnsError::Temporary(TemporaryDns::Bogus(e))) => {
                        return Err(fail(
                            "dane",
                            TlsFailure::DnssecInvalid,
                            format!("TLSA lookup: {e}"),
                        ))
                    }
                    Err(DnsError::Temporary(e)) => {
                        // RFC 7672 2.2: a failed TLSA lookup makes the host
                        // unusable, as if unreachable.
                        return Err(Failed::from(Reason::local(
                            451,
                            "4.4.3",
                            format!("TLSA lookup for {}: {e}", hop.name),
                        )));
                    }
                }
            }
            if level == TlsLevel::DaneOnly {
                let why = if hop.secure {
                    "no DNSSEC-validated TLSA records".to_string()
                } else {
                    "MX records are not DNSSEC-validated".to_string()
                };
                return Err(fail("dane-only", TlsFailure::DaneRequired, why));
            }
        }
        if let Some(answer) = &plan.sts {
            if let Some(entry) = answer
                .entry
                .as_ref()
                .filter(|e| e.policy.mode != StsMode::None)
            {
                let source = sts_source(answer);
                if !hop.mx {
                    return Ok((Require::May, PolicySource::Static(TlsLevel::May)));
                }
                let enforce = entry.policy.mode == StsMode::Enforce;
                if !entry.policy.allows(&hop.name) {
                    let why = format!("{} is not an MX host of the MTA-STS policy", hop.name);
                    if enforce {
                        return Err(fail("mta-sts", TlsFailure::ValidationFailure, why));
                    }
                    self.tls_event(
                        domain,
                        &hop.name,
                        None,
                        source.clone(),
                        Some(TlsFailure::ValidationFailure),
                        None,
                        &why,
                    );
                    return Ok((Require::May, source));
                }
                return Ok((
                    Require::Pki {
                        names: vec![hop.name.clone()],
                        enforce,
                    },
                    source,
                ));
            }
        }
        if !self.client.starttls {
            return Ok((Require::Plain, PolicySource::Static(TlsLevel::None)));
        }
        Ok((Require::May, PolicySource::Static(TlsLevel::May)))
    }

    /// Tries every address of every hop in order until one answers the
    /// transaction; the last failure otherwise. A pooled connection that
    /// breaks before the message text was sent (the next hop restarted and
    /// closed it) is not the hop's answer: the transaction is run again at
    /// once on a new connection, and the hop's other idle connections,
    /// dead the same way, are closed.
    async fn try_hops(
        &self,
        domain: &str,
        hops: &[Hop],
        msg: &Message<'_>,
        plan: &DomainTls,
    ) -> (Vec<Outcome>, Option<TlsNote>) {
        let timeout = self.client.command_timeout;
        let n = msg.recipients.len();
        let mut last = Reason::local(451, "4.4.1", format!("no next hop answered for {domain}"));
        let mut last_note = None;
        for hop in hops {
            let (require, source) = match self.require_for(domain, hop, plan).await {
                Ok(r) => r,
                Err(f) => {
                    tracing::info!(%domain, host = %hop.name, reason = %f.reason.text, "next hop skipped by TLS policy");
                    if let Some((failure, why)) = &f.tls {
                        let policy = if plan.level.uses_dane()
                            && !matches!(failure, TlsFailure::ValidationFailure)
                        {
                            PolicySource::Static(plan.level)
                        } else {
                            plan.sts
                                .as_ref()
                                .map_or(PolicySource::Static(plan.level), sts_source)
                        };
                        last_note = Some(TlsNote {
                            policy: policy.label(),
                            version: None,
                            result: failure.result_type(),
                        });
                        self.tls_event(
                            domain,
                            &hop.name,
                            None,
                            policy,
                            Some(failure.clone()),
                            None,
                            why,
                        );
                    }
                    last = f.reason;
                    continue;
                }
            };
            for addr in &hop.addrs {
                let mut pooled_ok = true;
                loop {
                    let checked = self
                        .checkout(domain, &hop.name, *addr, pooled_ok, &require, &source)
                        .await;
                    let mut conn = match checked {
                        Ok(c) => c,
                        // Only a loop (the hop is us) is permanent at
                        // connect: no other host is tried.
                        Err(f) if f.reason.code >= 500 => {
                            tracing::warn!(%domain, host = %hop.name, %addr, "{}", f.reason.text);
                            return (for_all(f.reason, n), None);
                        }
                        Err(f) => {
                            if let Some((failure, _)) = &f.tls {
                                last_note = Some(TlsNote {
                                    policy: source.label(),
                                    version: None,
                                    result: failure.result_type(),
                                });
                            }
                            last = f.reason;
                            break;
                        }
                    };
                    let reused = conn.uses > 0;
                    let note = TlsNote {
                        policy: source.label(),
                        version: conn.tls.version,
                        result: conn
                            .tls
                            .noted
                            .as_ref()
                            .map_or("ok", |(f, _)| f.result_type()),
                    };
                    match smtp::transact(&mut conn, msg, &*self.downgrade, timeout).await {
                        Ok(outcomes) => {
                            if let Some(c) = self.pool.put(conn) {
                                c.quit(timeout).await;
                            }
                            return (outcomes, Some(note));
                        }
                        Err(r) if reused && !conn.text_sent => {
                            tracing::info!(%domain, host = %hop.name, %addr, reason = %r.text,
                                "idle connection was dead; sending again on a new one");
                            if let Some(hook) = &self.on_connect {
                                hook(ConnEvent::FoundDead);
                            }
                            drop(self.pool.take_all(*addr));
                            pooled_ok = false;
                        }
                        Err(r) => {
                            last = r;
                            last_note = Some(note);
                            break;
                        }
                    }
                }
            }
        }
        (for_all(last, n), last_note)
    }

    /// A pooled connection that still answers RSET (when `pooled_ok`), or a
    /// new one.
    async fn checkout(
        &self,
        domain: &str,
        host: &str,
        addr: SocketAddr,
        pooled_ok: bool,
        require: &Require,
        source: &PolicySource,
    ) -> Result<Conn, Failed> {
        let tag = require.tag();
        while let Some(mut c) = self.pool.take(addr, &tag).filter(|_| pooled_ok) {
            // A connection used moments ago is alive; an older one must
            // prove it with RSET (the server may have timed it out).
            if c.idle_since.elapsed() < Duration::from_secs(2)
                || c.reset(self.client.command_timeout).await
            {
                return Ok(c);
            }
        }
        let (require, source) = match &self.tls.checker {
            Some(_) => (require, source),
            // Without a TLS client configuration (rustls refused it) only
            // plain text is possible.
            None => (&Require::Plain, &PolicySource::Static(TlsLevel::None)),
        };
        let checker = match &self.tls.checker {
            Some(c) => c,
            None => &Checker::new(None).map_err(|e| {
                Failed::from(Reason::local(451, "4.7.5", format!("TLS client: {e}")))
            })?,
        };
        let label = source.label();
        match smtp::connect(host, addr, &self.client, require, label, checker).await {
            Ok(conn) => {
                if let Some(hook) = &self.on_connect {
                    hook(ConnEvent::Opened {
                        tls: conn.is_encrypted(),
                    });
                }
                if !matches!(require, Require::Plain) {
                    let (failure, detail) = match &conn.tls.noted {
                        Some((f, why)) => (Some(f.clone()), why.as_str()),
                        None => (None, ""),
                    };
                    self.tls_event(
                        domain,
                        host,
                        Some(addr.ip()),
                        source.clone(),
                        failure,
                        conn.tls.version,
                        detail,
                    );
                }
                Ok(conn)
            }
            Err(f) => {
                if let Some((failure, why)) = &f.tls {
                    tracing::warn!(%domain, %host, %addr, policy = label, result = failure.result_type(), "{why}");
                    self.tls_event(
                        domain,
                        host,
                        Some(addr.ip()),
                        source.clone(),
                        Some(failure.clone()),
                        None,
                        why,
                    );
                }
                Err(f)
            }
        }
    }
}

/// The policy source of an MTA-STS answer (no policy: `may`).
fn sts_source(answer: &StsAnswer) -> PolicySource {
    match &answer.entry {
        Some(e) => PolicySource::Sts {
            id: e.id.clone(),
            mode: e.policy.mode,
            lines: e.policy.lines(),
        },
        None => PolicySource::Static(TlsLevel::May),
    }
}

/// The temporary failure of a destination whose work took longer than
/// `limit` (a tarpit or dead next hop, slow DNS).
fn attempt_timed_out(domain: &str, limit: Duration) -> Reason {
    Reason::local(
        451,
        "4.4.2",
        format!(
            "delivery to {domain} took longer than {} s; will retry",
            limit.as_secs()
        ),
    )
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
    use crate::resolve::{DnsError, MxRecord};
    use crate::smtp::DowngradeError;
    use postern_core::units::HumanDuration;
    use std::net::IpAddr;
    use tokio::net::TcpListener;

    /// No DNS: every test destination has a route.
    struct NoDns;

    impl Resolver for NoDns {
        async fn mx(&self, _: &str) -> Result<Vec<MxRecord>, DnsError> {
            Err(DnsError::NxDomain)
        }
        async fn addrs(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
            Err(DnsError::NxDomain)
        }
    }

    fn address(local: &str, domain: &str) -> Address {
        Address {
            local: local.into(),
            domain: domain.into(),
        }
    }

    /// A 7-bit message without DSN parameters.
    fn message<'a>(from: &'a Address, rcpts: &'a [&'a Address]) -> Message<'a> {
        Message {
            sender: Some(from),
            recipients: rcpts,
            body: b"hi\r\n",
            eight_bit: false,
            smtputf8: false,
            dsn_mail: String::new(),
            dsn_rcpt: &[],
            notify_success: &[],
        }
    }

    /// Issue 11: a route to our own listening address (the mail loop) fails
    /// every recipient with 5.4.6 and connects to nothing; a next hop that
    /// never greets (a tarpit) ends as a temporary failure once
    /// `attempt_timeout` is over, well before the command timeout. The
    /// caller hears of each destination's work, and only of work.
    #[tokio::test]
    async fn loops_fail_and_tarpits_time_out() {
        // Neither listener accepts: the kernel completes the handshake and
        // nothing is ever said.
        let ours = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tarpit = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ours_addr, tarpit_addr) = (ours.local_addr().unwrap(), tarpit.local_addr().unwrap());
        let cfg = DeliveryConfig {
            attempt_timeout: HumanDuration(Duration::from_millis(300)),
            starttls: false,
            ..DeliveryConfig::default()
        };
        let routes = [
            Route {
                domain: "self.test".into(),
                hosts: vec![ours_addr.to_string()],
            },
            Route {
                domain: "slow.test".into(),
                hosts: vec![tarpit_addr.to_string()],
            },
        ];
        let myself = Myself {
            listen: vec![ours_addr],
            hostname: "gw.test".into(),
            proxy: Vec::new(),
        };
        let downgrade: Arc<Downgrade> = Arc::new(|_: &[u8]| -> Result<Vec<u8>, DowngradeError> {
            Err(DowngradeError::new("not in this test"))
        });
        let d = Deliverer::new(&cfg, &routes, myself, NoDns, downgrade);
        let worked = Mutex::new(Vec::new());
        let working = |domain: &str| worked.lock().unwrap().push(domain.to_string());
        let from = address("s", "a.test");
        let (me, slow) = (address("u", "self.test"), address("u", "slow.test"));
        let (looped, _) = d
            .deliver_domain("self.test", &message(&from, &[&me]), &working)
            .await;
        assert_eq!(
            looped,
            vec![Outcome::Permanent(Reason::local(
                554,
                "5.4.6",
                "mail for self.test loops back to myself"
            ))]
        );
        let nobody = tokio::time::timeout(Duration::from_millis(50), ours.accept()).await;
        assert!(nobody.is_err(), "connected to ourselves");
        let started = std::time::Instant::now();
        let (slowed, _) = d
            .deliver_domain("slow.test", &message(&from, &[&slow]), &working)
            .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            slowed,
            vec![Outcome::Temporary(attempt_timed_out(
                "slow.test",
                Duration::from_millis(300)
            ))]
        );
        assert_eq!(*worked.lock().unwrap(), ["self.test", "slow.test"]);
        drop(tarpit);
    }

    #[test]
    fn one_failure_for_every_recipient() {
        let temp = Reason::local(451, "4.4.3", "MX lookup failed");
        assert_eq!(for_all(temp.clone(), 2), vec![Outcome::Temporary(temp); 2]);
        let perm = Reason::local(556, "5.1.10", "null MX");
        assert_eq!(for_all(perm.clone(), 1), vec![Outcome::Permanent(perm)]);
        assert!(for_all(Reason::local(451, "4.3.0", "x"), 0).is_empty());
        let slow = attempt_timed_out("d.test", Duration::from_secs(600));
        assert_eq!((slow.code, slow.status.as_str()), (451, "4.4.2"));
        assert_eq!(
            slow.text,
            "delivery to d.test took longer than 600 s; will retry"
        );
    }
}
