//! Wiring: opens the queue, charges the suspects of a previous death, takes
//! the listeners (inherited from the supervisor, or bound here), starts the
//! content workers, the intake, the admin endpoint and the delivery
//! scheduler under supervision, and waits for a signal.
//!
//! Start-up failures (queue cannot open, address in use) are fatal with a
//! clear message; everything after start-up is contained per task.
//! SIGHUP reloads the configuration ([`crate::gateway::reload`]). Shutdown (SIGTERM,
//! SIGINT): stop accepting, close idle sessions with 421, let transactions
//! and deliveries in flight finish within `server.shutdown_timeout`, flush
//! the queue. Nothing acknowledged is at risk at any point: a delivery cut
//! short is simply due again at the next start.

use crate::config::Loaded;
use crate::content::conversion::Conversion;
use crate::gateway::assemble;
use crate::gateway::crash::gate::Gate;
use crate::gateway::crash::inflight::Inflight;
use crate::gateway::intake::Intake;
use crate::gateway::live::Live;
use crate::gateway::reload::Reloader;
use crate::gateway::scheduler::Scheduler;
use crate::ops::admin::{self, AdminState};
use crate::ops::metrics::Metrics;
use crate::ops::tracking::Tracker;
use crate::run::signals::{Sig, Signals};
use anyhow::Context;
use postern_queue::{Queue, QueueOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// File in the queue directory holding the admin endpoint's bound address.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// Runs until `signals` asks to stop (SIGTERM/SIGINT, or the Windows SCM
/// through a channel); SIGHUP (or ParamChange) reloads.
pub async fn run_until(loaded: Loaded, mut signals: Signals) -> anyhow::Result<()> {
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
    if let Some(n) = crate::run::handoff::restarts_from_env() {
        metrics.gateway_restarts.inc_by(n);
    }
    let charged =
        crate::gateway::crash::suspects::charge_from_env(&queue, threshold, &metrics).await;
    inflight.ready();
    tracing::info!(
        suspects = charged,
        messages = recovery.messages,
        orphans = recovery.orphans,
        corrupt = recovery.corrupt,
        "queue recovered"
    );
    let tracker = Arc::new(
        Tracker::start(
            &cfg.tracking,
            &cfg.queue.path,
            metrics.tracking_dropped.clone(),
        )
        .context("cannot open the tracking log")?,
    );
    let admin_token = crate::config::admin_token(&cfg).map_err(|e| anyhow::anyhow!(e))?;

    // Built once: its limits serve the delivery-time downgrade, its policy
    // the intake (and in-process content processing).
    let conversion = Arc::new(Conversion::from_config(&cfg).map_err(|e| anyhow::anyhow!(e))?);
    let deliverer = assemble::deliverer(&cfg, &conversion, &metrics)?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let pressure = Arc::new(std::sync::atomic::AtomicU8::new(0));
    tokio::spawn(crate::gateway::pressure::watch(
        queue.clone(),
        cfg.queue.clone(),
        pressure.clone(),
        metrics.clone(),
    ));
    let auth_limiter = postern_listener::auth::AuthLimiter::new(cfg.auth.max_failures);
    let (smtp_cfg, sub_cfg) =
        assemble::session_configs(&cfg, pressure.clone(), auth_limiter.clone())?;
    let (smtp_tx, smtp_rx) = watch::channel(smtp_cfg);
    let (sub_tx, sub_rx) = watch::channel(sub_cfg);
    let content =
        Arc::new(assemble::content(&cfg, &conversion, loaded.path.as_deref(), &metrics).await?);
    let gate = Arc::new(Gate::default());
    let intake = Arc::new(Intake {
        queue: queue.clone(),
        metrics: metrics.clone(),
        tracker: tracker.clone(),
        gate: gate.clone(),
        inflight: inflight.clone(),
        policy: Live::new(assemble::intake_policy(&cfg, conversion, content)),
    });
    let (smtp_listeners, smtps_listeners, submission_listeners, admin_l) = listeners(&cfg)?;
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
            sub_rx.clone()
        } else {
            smtp_rx.clone()
        };
        let (s, r) = (intake.clone(), stop_rx.clone());
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
        tracker: tracker.clone(),
        token: admin_token,
    });
    tokio::spawn(admin::serve(admin_l, st, stop_rx.clone()));

    let slots = Arc::new(Semaphore::new(cfg.delivery.max_concurrency));
    let scheduler = Arc::new(Scheduler {
        queue: queue.clone(),
        deliverer: Live::new(deliverer),
        metrics: metrics.clone(),
        tracker: tracker.clone(),
        policy: Live::new(assemble::policy(&cfg)),
        slots: slots.clone(),
        gate,
        inflight,
    });
    let sched_rx = stop_rx.clone();
    let m = metrics.clone();
    let sched = scheduler.clone();
    let sched_task = tokio::spawn(async move {
        postern_supervisor::supervise(
            "scheduler",
            postern_supervisor::Backoff::default(),
            move || sched.clone().run(sched_rx.clone()),
            move |_, _, _| m.crashes.with_label_values(&["scheduler", "1"]).inc(),
        )
        .await
    });

    let hostname = cfg.server.hostname.clone();
    let shutdown_timeout = cfg.server.shutdown_timeout.0;
    let max_concurrency = cfg.delivery.max_concurrency;
    let reloader = Reloader {
        path: loaded.path.clone(),
        running: std::sync::Mutex::new(cfg),
        metrics: metrics.clone(),
        pressure,
        auth_limiter,
        smtp: smtp_tx,
        submission: sub_tx,
        intake,
        scheduler,
    };
    tracing::info!(
        config = %loaded.source,
        smtp = %bound.join(","),
        smtps = %bound_tls.join(","),
        submission = %bound_sub.join(","),
        admin = %admin_addr,
        hostname = %hostname,
        "postern ready"
    );
    while signals.next().await == Sig::Reload {
        match reloader.reload().await {
            Ok(restart) if restart.is_empty() => tracing::info!("configuration reloaded"),
            Ok(restart) => tracing::warn!(
                needs_restart = %restart.join(", "),
                "configuration reloaded; some changes take effect only after a restart"
            ),
            Err(e) => tracing::error!(
                error = %e.trim_end(),
                "configuration reload failed; the running configuration stays"
            ),
        }
    }
    drop(reloader);

    // Stop: no new connections or claims; idle sessions get 421 now, busy
    // ones at the end of their transaction; deliveries in flight finish.
    tracing::info!(?shutdown_timeout, "shutting down");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    while metrics.sessions_active.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tokio::time::timeout_at(deadline, sched_task).await;
    let drained = tokio::time::timeout_at(deadline, slots.acquire_many(max_concurrency as u32))
        .await
        .is_ok();
    tracing::info!(
        sessions_left = metrics.sessions_active.get(),
        deliveries_finished = drained,
        "drained"
    );
    queue.flush().await.context("final queue flush")?;
    tracing::info!("queue flushed; bye");
    Ok(())
}

/// SMTP, implicit-TLS SMTP, submission and admin listeners.
type Listeners = (
    Vec<TcpListener>,
    Vec<TcpListener>,
    Vec<TcpListener>,
    TcpListener,
);

/// The listeners: inherited from `postern run`, or bound here.
fn listeners(cfg: &postern_core::config::Config) -> anyhow::Result<Listeners> {
    let s = match crate::run::handoff::inherited_sockets()? {
        Some(s) => s,
        None => crate::run::listen::bind(cfg)?,
    };
    let conv = |v: Vec<std::net::TcpListener>| -> std::io::Result<Vec<TcpListener>> {
        v.into_iter().map(tokio_listener).collect()
    };
    Ok((
        conv(s.smtp)?,
        conv(s.smtps)?,
        conv(s.submission)?,
        tokio_listener(s.admin)?,
    ))
}

fn tokio_listener(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}
