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

use crate::config::Config;
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
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The queue directory cannot be opened (damaged beyond what recovery
/// reads, unreadable, locked): the gateway exits with
/// [`QueueUnopenable::EXIT`] and the supervisor does not restart it, since
/// a restart would fail the same way. The text says what an operator does.
#[derive(Debug)]
pub struct QueueUnopenable {
    /// The queue directory.
    pub path: std::path::PathBuf,
    /// Why, with its causes.
    pub cause: String,
}

impl QueueUnopenable {
    /// EX_CONFIG (sysexits.h): a restart will not help.
    pub const EXIT: u8 = 78;
}

impl std::fmt::Display for QueueUnopenable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.path.display();
        write!(
            f,
            "cannot open the queue at {p}: {}. Not restarting. If the directory is damaged: stop \
             Postern, move it aside (mv {p} {p}.damaged), start Postern (an empty queue is created), \
             then save the mail of the old one with `postern queue salvage {p}.damaged OUTDIR` and \
             resend it (README: \"A damaged queue directory\")",
            self.cause
        )
    }
}

impl std::error::Error for QueueUnopenable {}

/// The TLS side's background work: MTA-STS policies fetched again before
/// they lapse (every 10 minutes, those past half their max_age), and the
/// TLS-RPT reporter (counts saved every 30 s, reports sent when a period
/// ends). Ends when `stop` says so.
fn start_tls_tasks(
    scheduler: &Arc<Scheduler>,
    reporter: Arc<crate::ops::tlsrpt::Reporter>,
    checker: postern_delivery::Checker,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let refresher = scheduler.clone();
    let mut refresh_stop = stop.clone();
    let refresh = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                _ = refresh_stop.changed() => return,
            }
            let n = refresher.deliverer.get().refresh_policies().await;
            if n > 0 {
                tracing::info!(policies = n, "MTA-STS policies refreshed");
            }
        }
    });
    let holder = scheduler.clone();
    let resolver = move || holder.deliverer.get();
    let report_stop = stop.clone();
    tokio::spawn(async move {
        reporter
            .run(
                move || Arc::new(ResolverOf(resolver())),
                checker,
                report_stop,
            )
            .await;
        refresh.abort();
    })
}

/// The resolver of a (reloadable) deliverer, for the TLS reporter.
struct ResolverOf(Arc<postern_delivery::Deliverer<crate::gateway::scheduler::Dns>>);

impl postern_delivery::Resolver for ResolverOf {
    async fn mx(
        &self,
        domain: &str,
    ) -> Result<Vec<postern_delivery::MxRecord>, postern_delivery::DnsError> {
        self.0.resolver().mx(domain).await
    }
    async fn addrs(&self, host: &str) -> Result<Vec<std::net::IpAddr>, postern_delivery::DnsError> {
        self.0.resolver().addrs(host).await
    }
    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, postern_delivery::DnsError> {
        self.0.resolver().txt(name).await
    }
}

/// `fleet.drain_on_stop`: new connections get 421 and `/readyz` 503 while
/// delivery goes on, until nothing waits or `limit` has passed.
async fn drain_before_stop(common: &Common, limit: Duration) {
    common
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    common.metrics.process.draining.set(1);
    let end = std::time::Instant::now() + limit;
    let mut last_said = std::time::Instant::now() - Duration::from_secs(10);
    loop {
        let c = common.queue.counts();
        let left = c.ready_or_deferred + c.leased;
        if left == 0 || std::time::Instant::now() >= end {
            tracing::info!(left, "drain before stop done");
            return;
        }
        if last_said.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                waiting = c.ready_or_deferred,
                delivering = c.leased,
                "draining before stop"
            );
            last_said = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The daemon's transfer manager: a deliverer whose only route is the
/// peer, built per transfer from the running configuration.
fn transfers(
    cfg: &Config,
    common: &Common,
    conversion: Arc<Conversion>,
) -> Arc<crate::gateway::transfer::Transfers> {
    let base = cfg.clone();
    let metrics = common.metrics.clone();
    let make = Box::new(move |to: &str| peer_deliverer(&base, &conversion, &metrics, to));
    Arc::new(crate::gateway::transfer::Transfers::new(
        common.queue.clone(),
        common.tracker.clone(),
        common.metrics.clone(),
        cfg.server.hostname.clone(),
        make,
    ))
}

/// A deliverer that sends everything to `to` (`host[:port]`): the
/// configuration's delivery settings, one `*` route, opportunistic TLS.
pub fn peer_deliverer(
    cfg: &Config,
    conversion: &Conversion,
    metrics: &Arc<crate::ops::metrics::Metrics>,
    to: &str,
) -> anyhow::Result<postern_delivery::Deliverer<crate::gateway::scheduler::Dns>> {
    let (host, port) =
        postern_delivery::split_host_port(to, 25).map_err(|e| anyhow::anyhow!("--to {to}: {e}"))?;
    // Every address of the peer name but our own (a Service name may
    // still list this node while it leaves): each one a host of the route.
    use std::net::ToSocketAddrs;
    let our_ports: Vec<u16> = cfg.server.listen.iter().map(|a| a.port()).collect();
    let is_us = |a: &std::net::SocketAddr| {
        our_ports.contains(&a.port()) && std::net::UdpSocket::bind((a.ip(), 0)).is_ok()
    };
    let addrs: Vec<std::net::SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--to {to}: {e}"))?
        .filter(|a| !is_us(a))
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("--to {to}: no address but this gateway's own");
    }
    let mut c = cfg.clone();
    c.routes = vec![postern_delivery::Route {
        domain: "*".into(),
        hosts: addrs.iter().map(|a| a.to_string()).collect(),
    }];
    c.tls_policies = Vec::new();
    c.outbound_tls.mta_sts = false;
    c.outbound_tls.level = postern_delivery::TlsLevel::May;
    assemble::deliverer(&c, conversion, metrics, &assemble::TlsWiring::default())
}

/// File in the queue directory holding the admin endpoint's bound address.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// Runs until `signals` asks to stop (SIGTERM/SIGINT, or the Windows SCM
/// through a channel); SIGHUP (or ParamChange) reloads.
pub async fn run_until(loaded: Loaded, mut signals: Signals) -> anyhow::Result<()> {
    let cfg = loaded.config;
    let common = Common::open(&cfg).await?;
    let released = crate::gateway::transfer::release_interrupted(&common.queue);
    if released > 0 {
        tracing::warn!(
            released,
            "messages held by an interrupted queue transfer wait again"
        );
    }
    let admin_token = crate::config::admin_token(&cfg)?;
    // Built once: its limits serve the delivery-time downgrade, its policy
    // the intake (and in-process content processing).
    let conversion = Arc::new(Conversion::from_config(&cfg)?);
    let reporter = Arc::new(crate::ops::tlsrpt::Reporter::new(
        cfg.tls_report.clone(),
        cfg.server.hostname.clone(),
        common.queue.clone(),
        common.metrics.delivery.tls_reports.clone(),
    ));
    let tls_wiring = assemble::TlsWiring {
        store: Some(Arc::new(crate::gateway::dns::QueueStsStore(
            common.queue.clone(),
        ))),
        reporter: reporter.enabled().then(|| reporter.clone()),
    };
    let deliverer = assemble::deliverer(&cfg, &conversion, &common.metrics, &tls_wiring)?;
    let transfers = transfers(&cfg, &common, conversion.clone());
    let front = Front::build(&cfg, &common, conversion, loaded.path.as_deref()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (smtp_l, smtps_l, submission_l, admin_l) = listeners(&cfg)?;
    let configs = (front.smtp.subscribe(), front.submission.subscribe());
    let smtp = start_smtp(
        (smtp_l, smtps_l, submission_l),
        configs,
        &front.intake,
        &stop_rx,
    )?;
    let slots = Arc::new(Semaphore::new(cfg.delivery.max_concurrency));
    let scheduler = Arc::new(Scheduler {
        queue: common.queue.clone(),
        deliverer: Live::new(deliverer),
        metrics: common.metrics.clone(),
        tracker: common.tracker.clone(),
        policy: Live::new(assemble::policy(&cfg)),
        slots: slots.clone(),
        slot_freed: Arc::new(tokio::sync::Notify::new()),
        gate: common.gate.clone(),
        inflight: common.inflight.clone(),
    });
    let sched_task = start_scheduler(&scheduler, &common.metrics, &stop_rx);
    let explainer = scheduler.clone();
    let explain: crate::ops::admin::Explain = Arc::new(move |domain: String| {
        let deliverer = explainer.deliverer.get();
        Box::pin(async move {
            let report = deliverer.explain(&domain).await;
            crate::cli::tls_policy::report_json(&domain, &report)
        })
    });
    let admin_state = AdminState {
        metrics: common.metrics.clone(),
        queue: common.queue.clone(),
        pressure: common.pressure.clone(),
        tracker: common.tracker.clone(),
        token: admin_token,
        explain: Some(explain),
        draining: common.draining.clone(),
        transfer: Some(transfers),
    };
    let admin_addr = start_admin(admin_l, admin_state, &cfg.queue.path, &stop_rx)?;
    let report_checker = postern_delivery::Checker::new(cfg.outbound_tls.ca_file.as_deref())
        .context("outbound TLS")?;
    let tls_tasks = start_tls_tasks(&scheduler, reporter, report_checker, &stop_rx);
    tracing::info!(
        config = %loaded.source,
        smtp = %smtp.bound[0].join(","),
        smtps = %smtp.bound[1].join(","),
        submission = %smtp.bound[2].join(","),
        admin = %admin_addr,
        hostname = %cfg.server.hostname,
        pid = std::process::id(),
        "postern ready"
    );
    let drain_on_stop = cfg.fleet.drain_on_stop.0;
    let stop = Drain {
        timeout: cfg.server.shutdown_timeout.0,
        max_concurrency: cfg.delivery.max_concurrency,
        slots,
    };
    let reloader = Reloader {
        path: loaded.path.clone(),
        running: std::sync::Mutex::new(cfg),
        metrics: common.metrics.clone(),
        pressure: common.pressure.clone(),
        draining: common.draining.clone(),
        auth_limiter: front.auth_limiter,
        data_budget: front.data_budget,
        smtp: front.smtp,
        submission: front.submission,
        intake: front.intake,
        scheduler,
        tls: tls_wiring,
    };
    let reopen = tokio::select! {
        _ = reload_until_stop(&mut signals, &reloader) => false,
        _ = common.reopen.notified() => true,
    };
    drop(reloader);
    if !reopen && !drain_on_stop.is_zero() {
        drain_before_stop(&common, drain_on_stop).await;
    }
    let _ = stop_tx.send(true);
    stop.drain(smtp.tasks, sched_task, &common.metrics).await;
    // The report counts are saved on the way out.
    let _ = tokio::time::timeout(Duration::from_secs(5), tls_tasks).await;
    if reopen {
        // Everything acknowledged is in the store's durable part; what was
        // in progress got 4xx. A non-zero exit: the supervisor (or the
        // service manager) starts the gateway again, on a reopened store.
        // At once, without destructors: a stuck store could hold its
        // commit thread, which dropping the queue would wait for.
        tracing::error!(
            "the queue store failed and must be reopened; exiting (status 75) to be restarted"
        );
        // The tracking writer flushes every 10 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::process::exit(75);
    }
    // Flushed with a snapshot of the counters: the next start need not
    // walk the queue.
    common.queue.close().await.context("final queue flush")?;
    tracing::info!("queue flushed; bye");
    Ok(())
}

/// What every part of the gateway shares.
struct Common {
    /// The registry every part counts into.
    metrics: Arc<Metrics>,
    /// The durable queue.
    queue: Queue,
    /// The message tracking log.
    tracker: Arc<Tracker>,
    /// Reports to the supervisor of what is in flight.
    inflight: Arc<Inflight>,
    /// Lets crash suspects run alone, at intake and at delivery.
    gate: Arc<Gate>,
    /// The back-pressure level, set by the watcher, read by sessions.
    pressure: Arc<AtomicU8>,
    /// Drain mode (`postern drain`), read by sessions and `/readyz`.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Told by the watcher when the queue store fails for good: the
    /// gateway stops in order and exits to be started on a reopened store.
    reopen: Arc<tokio::sync::Notify>,
}

impl Common {
    /// Metrics, the queue (suspects charged), the tracking log and the
    /// back-pressure watcher.
    async fn open(cfg: &Config) -> anyhow::Result<Common> {
        let metrics = Arc::new(Metrics::new().context("metrics registry")?);
        let inflight = Arc::new(Inflight::from_env());
        let queue = open_queue(cfg, &metrics, &inflight).await?;
        let dropped = metrics.process.tracking_dropped.clone();
        let tracker = Tracker::start(&cfg.tracking, &cfg.queue.path, dropped)
            .context("cannot open the tracking log")?;
        let pressure = Arc::new(AtomicU8::new(0));
        let reopen = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(crate::gateway::pressure::watch(
            queue.clone(),
            cfg.queue.clone(),
            pressure.clone(),
            metrics.clone(),
            reopen.clone(),
        ));
        Ok(Common {
            metrics,
            queue,
            tracker: Arc::new(tracker),
            inflight,
            gate: Arc::new(Gate::default()),
            pressure,
            draining: Arc::default(),
            reopen,
        })
    }
}

/// The receiving side: the intake and the session settings its listeners
/// take (replaced by a reload through the senders).
struct Front {
    /// Where every listener hands its messages.
    intake: Arc<Intake>,
    /// Failed AUTH attempts, kept across reloads.
    auth_limiter: Arc<postern_listener::AuthLimiter>,
    /// Message data held by every session, kept across reloads.
    data_budget: Arc<postern_listener::DataBudget>,
    /// Session settings of the smtp and smtps listeners.
    smtp: watch::Sender<Arc<postern_listener::SessionConfig>>,
    /// Session settings of the submission listeners.
    submission: watch::Sender<Arc<postern_listener::SessionConfig>>,
}

impl Front {
    async fn build(
        cfg: &Config,
        c: &Common,
        conversion: Arc<Conversion>,
        path: Option<&std::path::Path>,
    ) -> anyhow::Result<Front> {
        let auth_limiter = postern_listener::AuthLimiter::new(cfg.auth.max_failures);
        let data_budget = postern_listener::DataBudget::new();
        let (smtp_cfg, sub_cfg) = assemble::session_configs(
            cfg,
            c.pressure.clone(),
            c.draining.clone(),
            auth_limiter.clone(),
            data_budget.clone(),
        )?;
        let content = Arc::new(assemble::content(cfg, &conversion, path, &c.metrics).await?);
        let intake = Arc::new(Intake {
            queue: c.queue.clone(),
            metrics: c.metrics.clone(),
            tracker: c.tracker.clone(),
            gate: c.gate.clone(),
            inflight: c.inflight.clone(),
            reopen: c.reopen.clone(),
            policy: Live::new(assemble::intake_policy(cfg, conversion, content)),
        });
        Ok(Front {
            intake,
            auth_limiter,
            data_budget,
            smtp: watch::channel(smtp_cfg).0,
            submission: watch::channel(sub_cfg).0,
        })
    }
}

/// Opens the queue, charges the suspects of a previous death (before any
/// work), and tells the supervisor they are charged.
async fn open_queue(cfg: &Config, metrics: &Metrics, inflight: &Inflight) -> anyhow::Result<Queue> {
    let qopts = QueueOptions {
        path: cfg.queue.path.clone(),
        cache_bytes: cfg.queue.cache_size.0,
        segment_size: postern_queue::DEFAULT_SEGMENT_SIZE,
    };
    let tracking = cfg.tracking.file(&cfg.queue.path);
    let (queue, recovery) = tokio::task::spawn_blocking(move || {
        crate::gateway::private::tighten(&qopts.path, &tracking);
        Queue::open(&qopts)
    })
    .await
    .context("queue open task")?
    .map_err(|e| QueueUnopenable {
        path: cfg.queue.path.clone(),
        cause: crate::error_text(&anyhow::Error::new(e)),
    })?;
    if let Some(n) = crate::run::handoff::restarts_from_env() {
        metrics.process.gateway_restarts.inc_by(n);
    }
    if let Some(death) = crate::run::handoff::last_death_from_env() {
        let cause = postern_supervisor::exit::cause_label(&death);
        metrics
            .process
            .gateway_last_death
            .with_label_values(&[&cause])
            .set(1);
    }
    let threshold = cfg.workers.poison_threshold;
    let charged =
        crate::gateway::crash::suspects::charge_from_env(&queue, threshold, metrics).await;
    inflight.ready();
    tracing::info!(
        suspects = charged,
        messages = recovery.messages,
        orphans = recovery.orphans,
        corrupt = recovery.corrupt,
        walked = recovery.walked,
        saved_bodies = recovery.saved_bodies,
        "queue recovered"
    );
    report_damage(&recovery, &cfg.queue.path);
    Ok(queue)
}

/// Says, naming files, what recovery found damaged or without a record.
fn report_damage(r: &postern_queue::Recovery, queue: &std::path::Path) {
    if r.saved_bodies > 0 {
        tracing::error!(
            bodies = r.saved_bodies,
            dir = %queue.join("lost").display(),
            "message bodies without a queue record were saved as .eml files: messages being received when the \
             gateway stopped (never acknowledged), or records the store lost. Resend those that were \
             acknowledged (their headers say to whom), then delete them (README: \"A damaged queue directory\")"
        );
    }
    for d in &r.damaged {
        tracing::error!(stretch = %d, "damaged stretch in a body segment skipped");
    }
    for m in &r.missing {
        tracing::error!(segment = %m,
            "body segment missing or truncated: its messages are quarantined when delivery reads them");
    }
    if r.corrupt > 0 {
        tracing::error!(records = r.corrupt,
            "queue records that failed their checks were moved aside (postern queue list --state quarantine)");
    }
}

/// The SMTP listeners' tasks and the addresses they serve.
struct Smtp {
    /// One task per listener; each ends once its sessions have ended.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Bound addresses of the smtp, smtps and submission listeners.
    bound: [Vec<String>; 3],
}

/// Starts one [`postern_listener::serve`] task per listening socket.
fn start_smtp(
    (smtp, smtps, submission): (Vec<TcpListener>, Vec<TcpListener>, Vec<TcpListener>),
    (smtp_rx, sub_rx): (SessionConfigs, SessionConfigs),
    intake: &Arc<Intake>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Smtp> {
    let mut out = Smtp {
        tasks: Vec::new(),
        bound: Default::default(),
    };
    let all = smtp
        .into_iter()
        .map(|l| (l, false, false))
        .chain(smtps.into_iter().map(|l| (l, true, false)))
        .chain(submission.into_iter().map(|l| (l, false, true)));
    for (l, implicit, submission) in all {
        let kind = match (implicit, submission) {
            (true, _) => 1,
            (_, true) => 2,
            _ => 0,
        };
        out.bound[kind].push(l.local_addr()?.to_string());
        let c = if submission {
            sub_rx.clone()
        } else {
            smtp_rx.clone()
        };
        let (s, r) = (intake.clone(), stop_rx.clone());
        out.tasks.push(tokio::spawn(async move {
            if let Err(e) = postern_listener::serve(l, c, s, r, implicit).await {
                tracing::error!(error = %e, "SMTP listener stopped");
            }
        }));
    }
    Ok(out)
}

/// The session settings of one kind of listener, as reloads replace them.
type SessionConfigs = watch::Receiver<Arc<postern_listener::SessionConfig>>;

/// Starts the admin endpoint; records its address for the CLI.
fn start_admin(
    listener: TcpListener,
    state: AdminState,
    queue_dir: &std::path::Path,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<std::net::SocketAddr> {
    let addr = listener.local_addr()?;
    // The CLI finds us through the configuration; with port 0 it needs the
    // real address, so it is written beside the queue.
    if let Err(e) = std::fs::write(queue_dir.join(ADMIN_ADDR_FILE), addr.to_string()) {
        tracing::warn!(error = %e, "cannot record the admin address for the CLI");
    }
    tokio::spawn(admin::serve(listener, Arc::new(state), stop_rx.clone()));
    Ok(addr)
}

/// Runs the scheduler under supervision: a failed loop (a queue error) is
/// restarted with backoff and counted as a crash.
fn start_scheduler(
    scheduler: &Arc<Scheduler>,
    metrics: &Arc<Metrics>,
    stop_rx: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (sched, m, rx) = (scheduler.clone(), metrics.clone(), stop_rx.clone());
    tokio::spawn(async move {
        postern_supervisor::supervise(
            "scheduler",
            postern_supervisor::Backoff::default(),
            move || sched.clone().run(rx.clone()),
            move |_, _, _| {
                m.process
                    .crashes
                    .with_label_values(&["scheduler", "1"])
                    .inc()
            },
        )
        .await
    })
}

/// Reloads on every SIGHUP (ParamChange) until a stop signal.
async fn reload_until_stop(signals: &mut Signals, reloader: &Reloader) {
    while signals.next().await == Sig::Reload {
        match reloader.reload().await {
            Ok(restart) if restart.is_empty() => tracing::info!("configuration reloaded"),
            Ok(restart) => tracing::warn!(
                needs_restart = %restart.join(", "),
                "configuration reloaded; some changes take effect only after a restart"
            ),
            Err(e) => tracing::error!(
                error = %crate::error_text(&e).trim_end(),
                "configuration reload failed; the running configuration stays"
            ),
        }
    }
}

/// What shutdown waits for, and how long.
struct Drain {
    /// `server.shutdown_timeout`: the whole drain's bound.
    timeout: Duration,
    /// All delivery slots free = no delivery in flight.
    max_concurrency: usize,
    /// The scheduler's delivery slots.
    slots: Arc<Semaphore>,
}

impl Drain {
    /// Stop was signalled: listeners stop accepting, idle sessions get 421
    /// now and busy ones at the end of their transaction, deliveries in
    /// flight finish — all within the timeout. Waits on the listener tasks
    /// (each ends when its last session has) and the delivery slots.
    async fn drain(
        self,
        listeners: Vec<tokio::task::JoinHandle<()>>,
        scheduler: tokio::task::JoinHandle<()>,
        metrics: &Metrics,
    ) {
        tracing::info!(shutdown_timeout = ?self.timeout, "shutting down");
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sessions = futures_util::future::join_all(listeners);
        let sessions_ended = tokio::time::timeout_at(deadline, sessions).await.is_ok();
        let _ = tokio::time::timeout_at(deadline, scheduler).await;
        let all = u32::try_from(self.max_concurrency).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout_at(deadline, self.slots.acquire_many(all))
            .await
            .is_ok();
        tracing::info!(
            sessions_ended,
            sessions_left = metrics.smtp.sessions_active.get(),
            deliveries_finished = drained,
            "drained"
        );
    }
}

/// SMTP, implicit-TLS SMTP, submission and admin listeners.
type Listeners = (
    Vec<TcpListener>,
    Vec<TcpListener>,
    Vec<TcpListener>,
    TcpListener,
);

/// The listeners: inherited from `postern run`, or bound here.
fn listeners(cfg: &crate::config::Config) -> anyhow::Result<Listeners> {
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
