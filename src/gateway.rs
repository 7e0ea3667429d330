//! Wiring: opens the queue, binds the listeners and the admin endpoint,
//! starts the delivery scheduler under supervision, and waits for a signal.
//!
//! Start-up failures (queue cannot open, address in use) are fatal with a
//! clear message; everything after start-up is contained per task.
//! Shutdown (SIGTERM, SIGINT): stop accepting, give sessions and deliveries
//! a few seconds, flush the queue.

use crate::admin::{self, AdminState};
use crate::config::Loaded;
use crate::metrics::Metrics;
use crate::scheduler::{Policy, Scheduler};
use crate::sink::QueueSink;
use anyhow::Context;
use postern_core::RelayPolicy;
use postern_delivery::{Deliverer, HickoryResolver};
use postern_listener::SessionConfig;
use postern_queue::{Queue, QueueOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

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
    tracing::info!(
        messages = recovery.messages,
        orphans = recovery.orphans,
        corrupt = recovery.corrupt,
        "queue recovered"
    );

    let resolver = HickoryResolver::new(&cfg.delivery.nameservers, cfg.delivery.dns_timeout.0)
        .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?;
    let hostname = cfg.server.hostname.clone();
    let deliverer = Arc::new(Deliverer::new(
        &cfg.delivery,
        &cfg.routes,
        hostname.clone(),
        resolver,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

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
    });
    let sink = Arc::new(QueueSink {
        queue: queue.clone(),
        metrics: metrics.clone(),
    });
    let mut bound = Vec::new();
    for addr in &cfg.server.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for SMTP on {addr}"))?;
        bound.push(l.local_addr()?.to_string());
        let (c, s, r) = (session_cfg.clone(), sink.clone(), stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = postern_listener::serve(l, c, s, r).await {
                tracing::error!(error = %e, "SMTP listener stopped");
            }
        });
    }
    let admin_l = TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("cannot listen for admin HTTP on {}", cfg.admin.listen))?;
    let admin_addr = admin_l.local_addr()?;
    let st = Arc::new(AdminState {
        metrics: metrics.clone(),
        queue: queue.clone(),
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

async fn wait_for_signal() {
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
