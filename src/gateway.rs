//! Wiring: opens the queue, charges the suspects of a previous death, takes
//! the listeners (inherited from the supervisor, or bound here), starts the
//! content workers, the intake, the admin endpoint and the delivery
//! scheduler under supervision, and waits for a signal.
//!
//! Start-up failures (queue cannot open, address in use) are fatal with a
//! clear message; everything after start-up is contained per task.
//! Shutdown (SIGTERM, SIGINT): stop accepting, give sessions and deliveries
//! a few seconds, flush the queue.

use crate::admin::{self, AdminState};
use crate::config::Loaded;
use crate::content::ContentProcessor;
use crate::conversion::Conversion;
use crate::gate::Gate;
use crate::inflight::Inflight;
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::scheduler::{Policy, Scheduler};
use anyhow::Context;
use postern_core::RelayPolicy;
use postern_delivery::{Deliverer, HickoryResolver};
use postern_listener::SessionConfig;
use postern_queue::{Queue, QueueOptions};
use postern_supervisor::pool::{PoolConfig, ProcessPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// File in the queue directory holding the admin endpoint's bound address.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

pub async fn run(loaded: Loaded) -> anyhow::Result<()> {
    let cfg = loaded.config;
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    let qopts = QueueOptions {
        path: cfg.queue.path.clone(),
        cache_bytes: cfg.queue.cache_size.0,
    };
    let (queue, recovery) = tokio::task::spawn_blocking(move || Queue::open(&qopts))
        .await
        .context("queue open task")?
        .with_context(|| format!("cannot open the queue at {}", cfg.queue.path.display()))?;
    let inflight = Arc::new(Inflight::from_env());
    let threshold = cfg.workers.poison_threshold;
    if let Some(n) = std::env::var("POSTERN_GATEWAY_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        metrics.gateway_restarts.inc_by(n);
    }
    let charged = crate::suspects::charge_from_env(&queue, threshold, &metrics).await;
    inflight.ready();
    tracing::info!(
        suspects = charged,
        messages = recovery.messages,
        orphans = recovery.orphans,
        corrupt = recovery.corrupt,
        "queue recovered"
    );

    let resolver = HickoryResolver::new(&cfg.delivery.nameservers, cfg.delivery.dns_timeout.0)
        .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?;
    let hostname = cfg.server.hostname.clone();
    // Built once: its limits serve the delivery-time downgrade, its policy
    // the intake (and in-process content processing).
    let conversion = Arc::new(Conversion::from_config(&cfg).map_err(|e| anyhow::anyhow!(e))?);
    let limits = conversion.limits;
    let downgrade: Arc<postern_delivery::smtp::Downgrade> = Arc::new(move |body: &[u8]| {
        postern_convert::downgrade::to_seven_bit(body, &limits).map_err(|e| e.reply().2)
    });
    let deliverer = Arc::new(Deliverer::new(
        &cfg.delivery,
        &cfg.routes,
        hostname.clone(),
        resolver,
        downgrade,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

    let pressure = Arc::new(std::sync::atomic::AtomicU8::new(0));
    tokio::spawn(crate::pressure::watch(
        queue.clone(),
        cfg.queue.clone(),
        pressure.clone(),
        metrics.clone(),
    ));
    let session_cfg = Arc::new(SessionConfig {
        hostname: hostname.clone(),
        relay: RelayPolicy {
            accepted_domains: cfg
                .relay
                .accepted_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            trusted_networks: cfg.relay.trusted_networks.clone(),
        },
        max_message_size: cfg.server.max_message_size.0,
        max_recipients: cfg.server.max_recipients,
        max_errors: cfg.server.max_errors,
        max_command_line: cfg.server.max_command_line,
        max_text_line: cfg.server.max_text_line,
        command_timeout: cfg.server.command_timeout.0,
        data_timeout: cfg.server.data_timeout.0,
        max_connections: cfg.server.max_connections,
        data_total_timeout: cfg.server.data_total_timeout.0,
        max_connections_per_ip: cfg.server.max_connections_per_ip,
        max_connection_rate_per_ip: cfg.server.max_connection_rate_per_ip,
        greeting_delay: cfg.server.greeting_delay.0,
        max_noops: cfg.server.max_noops,
        pressure: pressure.clone(),
        users: match &cfg.auth.users_file {
            Some(f) => Some(Arc::new(
                postern_listener::auth::UserDb::load(f)
                    .map_err(|e| anyhow::anyhow!("auth.users_file: {e}"))?,
            )),
            None => None,
        },
        auth_limiter: postern_listener::auth::AuthLimiter::new(cfg.auth.max_failures),
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
                Some(postern_listener::tls::TlsConfig::load(c, k).context("TLS certificate")?)
            }
            _ => None,
        },
    });
    let content =
        Arc::new(start_content(&cfg, &conversion, loaded.path.as_deref(), &metrics).await?);
    let gate = Arc::new(Gate::default());
    let sink = Arc::new(Intake {
        queue: queue.clone(),
        metrics: metrics.clone(),
        content,
        gate: gate.clone(),
        inflight: inflight.clone(),
        poison_threshold: threshold,
        relay: session_cfg.relay.clone(),
        conversion,
        receive_deadline: cfg.workers.message_deadline.0 + Duration::from_secs(5),
    });
    let (smtp_listeners, smtps_listeners, submission_listeners, admin_l) = listeners(&cfg).await?;
    let submission_cfg = Arc::new(SessionConfig {
        require_auth: true,
        ..(*session_cfg).clone()
    });
    let mut bound = Vec::new();
    let mut bound_tls = Vec::new();
    let mut bound_sub = Vec::new();
    let all = smtp_listeners
        .into_iter()
        .map(|l| (l, false, false))
        .chain(smtps_listeners.into_iter().map(|l| (l, true, false)))
        .chain(submission_listeners.into_iter().map(|l| (l, false, true)));
    for (l, implicit, submission) in all {
        let addr = l.local_addr()?.to_string();
        match (implicit, submission) {
            (true, _) => bound_tls.push(addr),
            (_, true) => bound_sub.push(addr),
            _ => bound.push(addr),
        }
        let c = if submission {
            submission_cfg.clone()
        } else {
            session_cfg.clone()
        };
        let (s, r) = (sink.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = postern_listener::serve(l, c, s, r, implicit).await {
                tracing::error!(error = %e, "SMTP listener stopped");
            }
        });
    }
    let admin_addr = admin_l.local_addr()?;
    // The CLI finds us through the configuration; with port 0 it needs the
    // real address, so it is written beside the queue.
    if let Err(e) = std::fs::write(cfg.queue.path.join(ADMIN_ADDR_FILE), admin_addr.to_string()) {
        tracing::warn!(error = %e, "cannot record the admin address for the CLI");
    }
    let st = Arc::new(AdminState {
        metrics: metrics.clone(),
        queue: queue.clone(),
        pressure: pressure.clone(),
    });
    tokio::spawn(admin::serve(admin_l, st, stop_rx.clone()));

    let scheduler = Arc::new(Scheduler {
        queue: queue.clone(),
        deliverer,
        metrics: metrics.clone(),
        policy: Policy {
            retry_intervals: cfg.queue.retry_intervals.iter().map(|d| d.0).collect(),
            max_age: cfg.queue.max_age.0,
            lease: cfg.queue.lease.0,
            hostname: hostname.clone(),
        },
        slots: Arc::new(Semaphore::new(cfg.delivery.max_concurrency)),
        gate,
        inflight,
        poison_threshold: threshold,
        delivery_deadline: cfg.workers.delivery_deadline.0,
    });
    let sched_rx = stop_rx.clone();
    let m = metrics.clone();
    let sched_task = tokio::spawn(async move {
        postern_supervisor::supervise(
            "scheduler",
            postern_supervisor::Backoff::default(),
            move || scheduler.clone().run(sched_rx.clone()),
            move |_, _, _| m.crashes.with_label_values(&["scheduler", "1"]).inc(),
        )
        .await
    });

    tracing::info!(
        config = %loaded.source,
        smtp = %bound.join(","),
        smtps = %bound_tls.join(","),
        submission = %bound_sub.join(","),
        admin = %admin_addr,
        hostname = %hostname,
        "postern ready"
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), sched_task).await;
    queue.flush().await.context("final queue flush")?;
    tracing::info!("queue flushed; bye");
    Ok(())
}

/// The SMTP, implicit-TLS SMTP and admin listeners: inherited from
/// `postern run`, or bound.
type Listeners = (
    Vec<TcpListener>,
    Vec<TcpListener>,
    Vec<TcpListener>,
    TcpListener,
);

async fn listeners(cfg: &postern_core::config::Config) -> anyhow::Result<Listeners> {
    #[cfg(unix)]
    if let Some(inh) = crate::supervise::inherited_from_env()? {
        let conv = |v: Vec<std::net::TcpListener>| -> std::io::Result<Vec<TcpListener>> {
            v.into_iter().map(TcpListener::from_std).collect()
        };
        return Ok((
            conv(inh.smtp)?,
            conv(inh.smtps)?,
            conv(inh.submission)?,
            TcpListener::from_std(inh.admin)?,
        ));
    }
    let mut smtp = Vec::new();
    for addr in &cfg.server.listen {
        smtp.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for SMTP on {addr}"))?,
        );
    }
    let mut smtps = Vec::new();
    for addr in &cfg.tls.implicit_listen {
        smtps.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for implicit TLS on {addr}"))?,
        );
    }
    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("cannot listen for admin HTTP on {}", cfg.admin.listen))?;
    let mut submission = Vec::new();
    for addr in &cfg.server.submission_listen {
        submission.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for submission on {addr}"))?,
        );
    }
    Ok((smtp, smtps, submission, admin))
}

/// Content workers (`workers.processes > 0`) or in-process processing.
async fn start_content(
    cfg: &postern_core::config::Config,
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
        Arc::new(move |_reason: &str| m.worker_restarts.with_label_values(&["content"]).inc()),
    );
    pool.prestart()
        .await
        .map_err(|e| anyhow::anyhow!("content workers: {e}"))?;
    Ok(ContentProcessor::Workers(Box::new(pool)))
}

pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
