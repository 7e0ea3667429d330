//! `postern run` (and the Windows service): the supervisor process (level 3
//! of the ladder), one implementation for Unix and Windows.
//!
//! It binds the SMTP and admin sockets itself and hands them to the gateway
//! child, so while a child restarts the kernel's listen backlog holds new
//! connections: none is refused. The platform layer is [`Inherit`]: on Unix
//! the sockets and the in-flight pipe are inherited descriptors and the
//! gateway gets RLIMIT_AS and `PR_SET_PDEATHSIG`; on Windows the sockets are
//! duplicated for the child's process id (`WSADuplicateSocketW`) and sent
//! on its stdin, its stdout carries the in-flight lines, and it runs in a
//! Job Object (kill on close: it cannot outlive us; a per-process memory
//! limit of `gateway_memory_limit`). It restarts a child that
//! dies within about a second (250 ms, doubling while the child keeps dying
//! within 10 s of its start, up to 30 s: a child that cannot start is
//! throttled, not spun). It reads the child's in-flight reports, kills a
//! child whose in-flight item overruns its deadline (a hang), and passes the
//! keys in flight at a death to the next child as suspects, together with
//! the cause of death, until a child confirms it has charged them.
//! SIGTERM/SIGINT are forwarded; a child that exits 0 ends the supervisor.
//! SIGHUP: the configuration file is validated first (as `check-config`
//! does); only a valid one is copied to `<queue>/running-config.toml`, which
//! is what the gateway reads, and the gateway is told to reload.

use crate::config::Loaded;
use crate::gateway::wiring::QueueUnopenable;
use crate::run::handoff::{DEATH_ENV, LOG_DIR_ENV, RESTARTS_ENV, SUSPECTS_ENV};
use anyhow::Context;
use postern_supervisor::child::{ChildEnd, Control};
use postern_supervisor::{Backoff, Restarts};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[cfg(unix)]
use unix::Inherit;
#[cfg(windows)]
use windows::Inherit;

/// What every gateway child is started with, whatever the platform.
struct Start {
    /// Where the gateway reads its configuration: the validated snapshot.
    config: Option<PathBuf>,
    /// The directory of the supervisor's log file, if it logs to one.
    log_dir: Option<PathBuf>,
}

impl Start {
    /// `postern gateway [--config <snapshot>]` with the environment every
    /// platform passes: restarts, suspects and cause of the last death, the
    /// log directory.
    fn command(
        &self,
        exe: &std::path::Path,
        restarts: u64,
        last: &LastDeath,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("gateway");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.env(RESTARTS_ENV, restarts.to_string());
        match &self.log_dir {
            Some(dir) => cmd.env(LOG_DIR_ENV, dir),
            None => cmd.env_remove(LOG_DIR_ENV),
        };
        if last.suspects.is_empty() {
            cmd.env_remove(SUSPECTS_ENV);
        } else {
            cmd.env(SUSPECTS_ENV, last.suspects.join(" "));
        }
        match last.death.is_empty() {
            true => cmd.env_remove(DEATH_ENV),
            false => cmd.env(DEATH_ENV, &last.death),
        };
        cmd
    }
}

#[cfg(unix)]
mod unix {
    use super::{LastDeath, Start};
    use crate::run::handoff::{listen_value, INFLIGHT_FD_ENV, LISTEN_ENV};
    use postern_supervisor::child::{clear_cloexec, run_child, ChildEnd, Control, InflightPipe};
    use std::os::fd::{AsRawFd, RawFd};
    use std::time::Duration;
    use tokio::sync::{mpsc, watch};

    /// What every gateway child inherits: the listening sockets and limits.
    pub(super) struct Inherit {
        /// The sockets themselves: kept open here for the whole run, so the
        /// kernel's backlog holds connections while a child restarts.
        _sockets: crate::run::listen::Sockets,
        /// Their descriptors, cleared of close-on-exec in the child.
        fds: Vec<RawFd>,
        /// The value of [`LISTEN_ENV`] naming them by kind.
        listen_env: String,
        /// RLIMIT_AS of the gateway (0 = none).
        memory: u64,
        /// The platform-independent part of the command.
        start: Start,
    }

    impl Inherit {
        pub(super) fn bind(cfg: &crate::config::Config, start: Start) -> anyhow::Result<Inherit> {
            let sockets = crate::run::listen::bind(cfg)?;
            let fds_of =
                |v: &[std::net::TcpListener]| v.iter().map(|l| l.as_raw_fd()).collect::<Vec<_>>();
            let (smtp, smtps, sub) = (
                fds_of(&sockets.smtp),
                fds_of(&sockets.smtps),
                fds_of(&sockets.submission),
            );
            let admin = sockets.admin.as_raw_fd();
            let listen_env = listen_value(&smtp, &smtps, &sub, admin);
            let mut fds = smtp;
            fds.extend(&smtps);
            fds.extend(&sub);
            fds.push(admin);
            Ok(Inherit {
                _sockets: sockets,
                fds,
                listen_env,
                memory: cfg.workers.gateway_memory_limit.0,
                start,
            })
        }

        /// Starts one gateway child and watches it until it ends.
        pub(super) async fn run_gateway(
            &self,
            exe: &std::path::Path,
            restarts: u64,
            last: &LastDeath,
            stop: watch::Receiver<bool>,
            grace: Duration,
            forward: &mut mpsc::UnboundedReceiver<Control>,
        ) -> anyhow::Result<ChildEnd> {
            let pipe = InflightPipe::new()
                .map_err(|e| anyhow::anyhow!("cannot create the in-flight pipe: {e}"))?;
            let cmd = self.command(exe, &pipe, restarts, last);
            Ok(run_child(cmd, pipe, stop, grace, forward).await?)
        }

        /// The command that starts one gateway child.
        fn command(
            &self,
            exe: &std::path::Path,
            pipe: &InflightPipe,
            restarts: u64,
            last: &LastDeath,
        ) -> tokio::process::Command {
            let mut cmd = self.start.command(exe, restarts, last);
            cmd.env(LISTEN_ENV, &self.listen_env)
                .env(INFLIGHT_FD_ENV, pipe.write.as_raw_fd().to_string())
                .stdin(std::process::Stdio::null());
            let (fds, memory) = (self.fds.clone(), self.memory);
            // SAFETY: the closure only calls prctl, signal, fcntl and setrlimit,
            // all async-signal-safe.
            unsafe {
                cmd.pre_exec(move || child_setup(&fds, memory));
            }
            cmd
        }
    }

    /// In the child, between fork and exec.
    fn child_setup(fds: &[RawFd], memory: u64) -> std::io::Result<()> {
        // SAFETY: prctl, signal and setrlimit with valid arguments; called
        // between fork and exec, where only async-signal-safe calls are allowed
        // (these are).
        unsafe {
            // If the supervisor dies, so does the gateway: no orphan keeps the
            // queue locked.
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // A SIGHUP before the gateway installs its handler must not kill it
            // (the default action); its handler replaces this.
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
        for fd in fds {
            clear_cloexec(*fd)?;
        }
        if memory > 0 {
            let lim = libc::rlimit {
                rlim_cur: memory as libc::rlim_t,
                rlim_max: memory as libc::rlim_t,
            };
            // SAFETY: setrlimit with a valid, initialised struct.
            unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
        }
        Ok(())
    }
}

#[cfg(windows)]
mod windows {
    use super::{LastDeath, Start};
    use crate::run::handoff::CONTROL_ENV;
    use postern_supervisor::child::{run_child, ChildEnd, Control};
    use postern_supervisor::job::{Job, JobLimits};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::{mpsc, watch};

    /// What every gateway child gets: the listening sockets (duplicated for
    /// it) and a job of its own.
    pub(super) struct Inherit {
        /// Kept open here for the whole run, so the backlog holds
        /// connections while a child restarts.
        sockets: Arc<crate::run::listen::Sockets>,
        /// Each gateway's job: kill on close (the gateway and its workers
        /// cannot outlive us, nor a dead gateway's workers it) and
        /// `gateway_memory_limit` per process.
        limits: JobLimits,
        /// The platform-independent part of the command.
        start: Start,
    }

    impl Inherit {
        pub(super) fn bind(cfg: &crate::config::Config, start: Start) -> anyhow::Result<Inherit> {
            let sockets = Arc::new(crate::run::listen::bind(cfg)?);
            let limits = JobLimits {
                kill_on_close: true,
                process_memory: cfg.workers.gateway_memory_limit.0,
                process_time: None,
            };
            Ok(Inherit {
                sockets,
                limits,
                start,
            })
        }

        /// Starts one gateway child, puts it in the job, hands it the
        /// sockets, and watches it until it ends.
        pub(super) async fn run_gateway(
            &self,
            exe: &std::path::Path,
            restarts: u64,
            last: &LastDeath,
            stop: watch::Receiver<bool>,
            grace: Duration,
            forward: &mut mpsc::UnboundedReceiver<Control>,
        ) -> anyhow::Result<ChildEnd> {
            let mut cmd = self.start.command(exe, restarts, last);
            cmd.env(CONTROL_ENV, "stdio");
            let job = Arc::new(
                Job::new(&self.limits)
                    .map_err(|e| anyhow::anyhow!("cannot create the gateway's job object: {e}"))?,
            );
            match job.limits() {
                Ok(kept) if kept != self.limits => {
                    tracing::warn!(?kept, wanted = ?self.limits, "the system keeps other job limits than set")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the gateway job's limits back"),
            }
            let (sockets, held) = (self.sockets.clone(), job.clone());
            let handover = Box::new(move |child: &tokio::process::Child| {
                let pid = child
                    .id()
                    .ok_or_else(|| std::io::Error::other("the gateway ended at once"))?;
                if let Some(h) = child.raw_handle() {
                    // SAFETY: the child's process handle, alive while
                    // `child` is (for this whole call).
                    let h = unsafe { std::os::windows::io::BorrowedHandle::borrow_raw(h) };
                    if let Err(e) = held.assign(h) {
                        // Without the job the gateway still runs; it only
                        // lacks its memory limit and kill-on-close.
                        tracing::warn!(error = %e, "cannot put the gateway in its job object");
                    }
                }
                crate::run::handoff::winsock::handover(&sockets, pid)
            });
            let end = run_child(cmd, handover, stop, grace, forward).await?;
            // Closing the job kills whatever the dead gateway left (its
            // workers).
            drop(job);
            Ok(end)
        }
    }
}

/// What the next gateway must charge: the keys in flight at the last death
/// and how it died.
#[derive(Default)]
struct LastDeath {
    suspects: Vec<String>,
    death: String,
}

impl LastDeath {
    /// A child ended: if it had charged the previous suspects, its own keys
    /// in flight replace them; if it died before, they are kept too.
    fn update(&mut self, end: &ChildEnd) {
        if end.was_ready {
            self.suspects = end.suspects.clone();
        } else {
            for s in &end.suspects {
                if !self.suspects.contains(s) {
                    self.suspects.push(s.clone());
                }
            }
        }
        self.death = end.reason.clone();
    }
}

/// Restarts of the gateway: 250 ms, doubling while it dies within 10 s of
/// its start (one that cannot start is throttled, not spun), up to 30 s.
const GATEWAY_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(250),
    max: Duration::from_secs(30),
    healthy_after: Duration::from_secs(10),
};

/// Runs the supervisor until a stop signal or a clean gateway exit.
/// `log_dir`: the directory of the supervisor's own log file, if it logs to
/// one (the gateway then writes to the same file).
pub async fn run(
    loaded: Loaded,
    signals: crate::run::signals::Signals,
    log_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cfg = &loaded.config;
    let grace = cfg.server.shutdown_timeout.0 + Duration::from_secs(10);
    let exe = std::env::current_exe().context("cannot find our own executable")?;
    // The gateway runs on a snapshot of the last configuration that passed
    // validation, so a broken file never reaches it: not on SIGHUP, and not
    // when it restarts after a crash.
    // (`loaded.path`: the file actually read, `--config` or the default one.)
    let snapshot = match &loaded.path {
        Some(path) => Some(Snapshot::create(path, &cfg.queue.path)?),
        None => None,
    };
    let start = Start {
        config: snapshot.as_ref().map(|s| s.running.clone()),
        log_dir,
    };
    let inherit = Inherit::bind(cfg, start)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (fwd_tx, mut fwd_rx) = mpsc::unbounded_channel();
    tokio::spawn(forward_signals(signals, snapshot, fwd_tx, stop_tx));
    #[cfg(unix)]
    if let Some(every) = crate::run::notify::watchdog_interval() {
        // The supervisor answers systemd's watchdog; the gateway's own
        // health is the supervisor's business (it restarts it).
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                crate::run::notify::watchdog();
            }
        });
    }
    // Readiness: the listening sockets are bound; connections queue in the
    // backlog until the gateway takes them.
    #[cfg(unix)]
    crate::run::notify::ready();

    let mut last = LastDeath::default();
    let mut restarts = Restarts::new(GATEWAY_BACKOFF);
    loop {
        let end = inherit
            .run_gateway(
                &exe,
                restarts.count(),
                &last,
                stop_rx.clone(),
                grace,
                &mut fwd_rx,
            )
            .await?;
        if stopping(&stop_rx, end.clean).await {
            tracing::info!(reason = %end.reason, "gateway stopped; supervisor exits");
            return Ok(());
        }
        if end.code == Some(i32::from(QueueUnopenable::EXIT)) {
            // It said why (its last log lines); starting it again would
            // fail the same way: no crash loop.
            return Err(QueueUnopenable {
                path: cfg.queue.path.clone(),
                cause: "the gateway could not open it (see the error above)".into(),
            }
            .into());
        }
        last.update(&end);
        let delay = restarts.after_run(end.ran_for);
        tracing::error!(
            reason = %end.reason,
            suspects = ?last.suspects,
            ?delay,
            restarts = restarts.count(),
            "gateway died; restarting"
        );
        crate::run::eventlog::gateway_restarted(&end.reason, &last.suspects);
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// True when the supervisor is stopping: a stop was asked for. A gateway
/// that exited cleanly (status 0) was most likely asked too (a terminal's
/// Ctrl-C reaches both processes, and the supervisor may see it a moment
/// later): up to a second is given for the request to arrive. A clean exit
/// nobody asked for (a stray SIGTERM to the gateway alone; Wine reports 0
/// for a process killed from outside) is a death like any other: the
/// gateway is restarted.
async fn stopping(stop: &watch::Receiver<bool>, clean: bool) -> bool {
    if *stop.borrow() {
        return true;
    }
    if !clean {
        return false;
    }
    let mut stop = stop.clone();
    let asked = tokio::time::timeout(Duration::from_secs(1), stop.wait_for(|s| *s)).await;
    matches!(asked, Ok(Ok(_)))
}

/// A reload (SIGHUP, the service's ParamChange): validate and snapshot the
/// configuration, then forward the reload to the gateway; a stop
/// (SIGTERM/SIGINT, the service's Stop): tell systemd and stop.
async fn forward_signals(
    mut signals: crate::run::signals::Signals,
    snapshot: Option<Snapshot>,
    fwd_tx: mpsc::UnboundedSender<Control>,
    stop_tx: watch::Sender<bool>,
) {
    while signals.next().await == crate::run::signals::Sig::Reload {
        let Some(snap) = &snapshot else {
            // Embedded default: nothing can have changed.
            let _ = fwd_tx.send(Control::Reload);
            continue;
        };
        match snap.refresh() {
            Ok(()) => {
                tracing::info!(config = %snap.source.display(), "configuration valid; reloading the gateway");
                crate::run::eventlog::reloaded(&snap.source.display().to_string());
                let _ = fwd_tx.send(Control::Reload);
            }
            Err(e) => {
                let why = crate::error_text(&e);
                tracing::error!(error = %why, "configuration reload refused; the running configuration stays");
                crate::run::eventlog::reload_refused(&why);
            }
        }
    }
    #[cfg(unix)]
    crate::run::notify::stopping();
    let _ = stop_tx.send(true);
}

/// The configuration file and its last valid copy, which the gateway reads.
struct Snapshot {
    source: PathBuf,
    running: PathBuf,
}

impl Snapshot {
    fn create(source: &std::path::Path, queue_dir: &std::path::Path) -> anyhow::Result<Snapshot> {
        std::fs::create_dir_all(queue_dir)
            .with_context(|| format!("cannot create {}", queue_dir.display()))?;
        let s = Snapshot {
            source: source.to_path_buf(),
            running: queue_dir.join("running-config.toml"),
        };
        s.refresh()?;
        Ok(s)
    }

    /// Validates the source file as `check-config` does (DKIM keys, maps,
    /// TLS certificate, users and recipients files, routes); when valid,
    /// replaces the running copy atomically.
    fn refresh(&self) -> anyhow::Result<()> {
        // Read once: the text validated is the text written (an editor
        // half-way through saving cannot slip a different one in).
        let text = std::fs::read_to_string(&self.source)
            .with_context(|| format!("{}: cannot read", self.source.display()))?;
        let loaded = crate::config::load_text(Some(self.source.clone()), &text)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        crate::gateway::assemble::validate(&loaded.config)
            .with_context(|| format!("{}", self.source.display()))?;
        let tmp = self.running.with_extension("toml.new");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.running))
            .with_context(|| format!("cannot write {}", self.running.display()))
    }
}
