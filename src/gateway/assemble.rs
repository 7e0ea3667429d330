//! Building the gateway's parts from a configuration. Used at start and by a
//! reload ([`crate::gateway::reload`]), so both build exactly the same things and a
//! part that cannot be built (a missing key file, an unreadable users file)
//! fails the same way: at start it is fatal, at reload the old part stays.

use crate::config::Config;
use crate::content::conversion::Conversion;
use crate::content::processor::ContentProcessor;
use crate::gateway::intake::IntakePolicy;
use crate::gateway::scheduler::{Dns, Policy};
use crate::ops::metrics::Metrics;
use anyhow::Context;
use postern_core::RelayPolicy;
use postern_delivery::{ConnEvent, Deliverer, HickoryResolver};
use postern_listener::SessionConfig;
use postern_supervisor::pool::{PoolConfig, ProcessPool};
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;

/// Everything `check-config` and a reload check before a configuration is
/// used: the conversion policy (DKIM keys, maps), session settings (TLS
/// certificate, users and recipients files) and the deliverer (routes,
/// DNS servers). Needs a tokio runtime (the resolver is built).
pub fn validate(cfg: &Config) -> anyhow::Result<()> {
    let conversion = Conversion::from_config(cfg)?;
    let limiter = postern_listener::AuthLimiter::new(cfg.auth.max_failures);
    let budget = postern_listener::DataBudget::new();
    session_configs(
        cfg,
        Arc::new(AtomicU8::new(0)),
        Arc::default(),
        limiter,
        budget,
    )?;
    let metrics = Arc::new(Metrics::new()?);
    deliverer(cfg, &conversion, &metrics, &TlsWiring::default())?;
    Ok(())
}

/// The relay policy (accepted domains lower-cased).
pub fn relay_policy(cfg: &Config) -> RelayPolicy {
    RelayPolicy {
        accepted_domains: cfg
            .relay
            .accepted_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        trusted_networks: cfg.relay.trusted_networks.clone(),
    }
}

/// Session settings for the SMTP listeners and for submission. The
/// back-pressure flag, the AUTH failure table and the memory budget for
/// message data are shared state that a reload keeps.
pub fn session_configs(
    cfg: &Config,
    pressure: Arc<AtomicU8>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    auth_limiter: Arc<postern_listener::AuthLimiter>,
    data_budget: Arc<postern_listener::DataBudget>,
) -> anyhow::Result<(Arc<SessionConfig>, Arc<SessionConfig>)> {
    let s = &cfg.server;
    let smtp = SessionConfig {
        hostname: s.hostname.clone(),
        relay: relay_policy(cfg),
        max_message_size: s.max_message_size.0,
        max_recipients: s.max_recipients,
        max_errors: s.max_errors,
        max_command_line: s.max_command_line,
        max_text_line: s.max_text_line,
        command_timeout: s.command_timeout.0,
        data_timeout: s.data_timeout.0,
        max_connections: s.max_connections,
        data_total_timeout: s.data_total_timeout.0,
        max_connections_per_ip: s.max_connections_per_ip,
        max_connection_rate_per_ip: s.max_connection_rate_per_ip,
        greeting_delay: s.greeting_delay.0,
        max_noops: s.max_noops,
        max_data_in_memory: s.max_data_in_memory.0,
        data_budget,
        max_hops: s.max_hops,
        max_auth_verifies: cfg.auth.max_concurrent_verifies,
        pressure,
        draining,
        users: match &cfg.auth.users_file {
            Some(f) => Some(Arc::new(
                postern_listener::UserDb::load(f).context("auth.users_file")?,
            )),
            None => None,
        },
        auth_limiter,
        require_auth: false,
        recipients: match &cfg.relay.recipients_file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("relay.recipients_file {}", f.display()))?;
                Some(Arc::new(
                    postern_core::relay::RecipientList::parse(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
                ))
            }
            None => None,
        },
        tls: match (&cfg.tls.cert_file, &cfg.tls.key_file) {
            (Some(c), Some(k)) => {
                Some(postern_listener::TlsConfig::load(c, k).context("TLS certificate")?)
            }
            _ => None,
        },
    };
    let submission = SessionConfig {
        require_auth: true,
        ..smtp.clone()
    };
    Ok((Arc::new(smtp), Arc::new(submission)))
}

/// The deliverer: routes, DNS (counted), SMTP client settings, and the
/// 8-bit downgrade with the conversion limits.
pub fn deliverer(
    cfg: &Config,
    conversion: &Conversion,
    metrics: &Arc<Metrics>,
    tls: &TlsWiring,
) -> anyhow::Result<Deliverer<Dns>> {
    let dns_config = postern_delivery::DnsConfig {
        nameservers: cfg.delivery.nameservers.clone(),
        timeout: cfg.delivery.dns_timeout.0,
    };
    let mut resolver = HickoryResolver::new(&dns_config).context("DNS resolver")?;
    if Deliverer::<Dns>::needs_dnssec(&cfg.tls_policies, cfg.outbound_tls.level) {
        let anchor = match &cfg.outbound_tls.trust_anchor {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("outbound_tls.trust_anchor {}", p.display()))?,
            ),
            None => None,
        };
        resolver = resolver
            .validating(&dns_config, anchor.as_deref())
            .context("DNSSEC-validating resolver")?;
    }
    let checker = postern_delivery::Checker::new(cfg.outbound_tls.ca_file.as_deref())
        .context("outbound TLS")?;
    let dns = crate::gateway::dns::Counted {
        inner: resolver,
        lookups: metrics.delivery.dns_lookups.clone(),
    };
    let limits = conversion.limits;
    let downgrade: Arc<postern_delivery::Downgrade> = Arc::new(move |body: &[u8]| {
        postern_convert::to_seven_bit(body, &limits)
            .map_err(|e| postern_delivery::DowngradeError::with_source(e.reply().2, e))
    });
    let connections = metrics.delivery.delivery_connections.clone();
    let dead = metrics.delivery.dead_connections.clone();
    // Loop detection: every address we take SMTP on, and our name.
    let myself = postern_delivery::Myself {
        listen: [
            &cfg.server.listen,
            &cfg.server.submission_listen,
            &cfg.tls.implicit_listen,
        ]
        .into_iter()
        .flatten()
        .copied()
        .collect(),
        hostname: cfg.server.hostname.clone(),
        proxy: cfg
            .server
            .proxy_addresses
            .iter()
            .map(|ip| ip.to_canonical())
            .collect(),
    };
    // One destination's work ends (deferred) before its in-flight deadline:
    // a slow next hop is never taken for a hung gateway.
    let mut delivery = cfg.delivery.clone();
    delivery.attempt_timeout.0 = delivery
        .attempt_timeout
        .0
        .min(cfg.workers.delivery_deadline.0.saturating_mul(4) / 5);
    let tls_results = metrics.delivery.tls_results.clone();
    let reporter = tls.reporter.clone();
    let deliverer = Deliverer::new(&delivery, &cfg.routes, myself, dns, downgrade).with_tls(
        &cfg.outbound_tls,
        &cfg.tls_policies,
        checker,
        tls.store.clone(),
    );
    Ok(deliverer.on_connect(Arc::new(move |event| match event {
        ConnEvent::Opened { tls } => connections
            .with_label_values(&[if tls { "yes" } else { "no" }])
            .inc(),
        ConnEvent::FoundDead => dead.inc(),
        ConnEvent::Tls(e) => {
            let result = e.failure.as_ref().map_or("ok", |f| f.result_type());
            tls_results
                .with_label_values(&[e.policy.label(), result])
                .inc();
            if let Some(r) = &reporter {
                r.record(&e);
            }
        }
    })))
}

/// What the deliverer's TLS side shares with the rest of the gateway: the
/// MTA-STS policy store (the queue's) and the TLS-RPT counter.
#[derive(Clone, Default)]
pub struct TlsWiring {
    /// Where MTA-STS policies are kept across restarts.
    pub store: Option<Arc<dyn postern_delivery::StsStore>>,
    /// Counts sessions for TLS-RPT.
    pub reporter: Option<Arc<crate::ops::tlsrpt::Reporter>>,
}

/// Retry, expiry and classification policy of the scheduler.
pub fn policy(cfg: &Config) -> Policy {
    Policy {
        retry_intervals: cfg.queue.retry_intervals.iter().map(|d| d.0).collect(),
        max_age: cfg.queue.max_age.0,
        lease: cfg.queue.lease.0,
        hostname: cfg.server.hostname.clone(),
        authserv_id: if cfg.convert.authserv_id.is_empty() {
            cfg.server.hostname.clone()
        } else {
            cfg.convert.authserv_id.clone()
        },
        accepted_domains: relay_policy(cfg).accepted_domains,
        poison_threshold: cfg.workers.poison_threshold,
        delivery_deadline: cfg.workers.delivery_deadline.0,
        delay_warning: {
            let mut v: Vec<Duration> = cfg.queue.delay_warning.iter().map(|d| d.0).collect();
            v.sort();
            v
        },
    }
}

/// The intake's reloadable policy.
pub fn intake_policy(
    cfg: &Config,
    conversion: Arc<Conversion>,
    content: Arc<ContentProcessor>,
) -> IntakePolicy {
    IntakePolicy {
        content,
        poison_threshold: cfg.workers.poison_threshold,
        relay: relay_policy(cfg),
        conversion,
        receive_deadline: cfg.workers.message_deadline.0 + Duration::from_secs(5),
        write_timeout: cfg.queue.write_timeout.0,
        fleet_peers: cfg.fleet.peers.clone(),
    }
}

/// Content workers (`workers.processes > 0`) or in-process processing.
pub async fn content(
    cfg: &Config,
    conv: &Arc<Conversion>,
    config_path: Option<&std::path::Path>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<ContentProcessor> {
    let w = &cfg.workers;
    if w.processes == 0 {
        let auth = match conv.inbound.is_some() {
            true => Some(
                conv.authenticator()
                    .map_err(|e| anyhow::anyhow!("DNS for authentication: {e}"))?,
            ),
            false => None,
        };
        return Ok(ContentProcessor::InProcess {
            conv: conv.clone(),
            auth: auth.map(Box::new),
        });
    }
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let m = metrics.clone();
    let mut args = vec![
        "worker".to_string(),
        format!("--memory={}", w.memory_limit.0),
        format!("--deadline-ms={}", w.message_deadline.0.as_millis()),
    ];
    if let Some(p) = config_path {
        args.push(format!("--config={}", p.display()));
    }
    let pool = ProcessPool::new(
        PoolConfig {
            program: exe,
            args,
            env: vec![],
            size: w.processes,
            deadline: w.message_deadline.0,
            backoff: postern_supervisor::Backoff::default(),
            max_frame: cfg.server.max_message_size.0.saturating_mul(2) + 1024,
        },
        Arc::new(move |reason: &str| {
            m.process
                .worker_restarts
                .with_label_values(&["content"])
                .inc();
            let cause = postern_supervisor::exit::cause_label(reason);
            m.process.worker_deaths.with_label_values(&[&cause]).inc();
            crate::run::eventlog::worker_crashed(reason);
        }),
    );
    pool.prestart()
        .await
        .map_err(|e| anyhow::anyhow!("content workers: {e}"))?;
    Ok(ContentProcessor::Workers(Box::new(pool)))
}
