//! `postern run` on Unix: the supervisor process (level 3 of the ladder).
//!
//! It binds the SMTP and admin sockets itself and hands them to the gateway
//! child by inheritance, so while a child restarts the kernel's listen
//! backlog holds new connections: none is refused. It restarts a child that
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
use crate::run::handoff::{
    listen_value, DEATH_ENV, INFLIGHT_FD_ENV, LISTEN_ENV, RESTARTS_ENV, SUSPECTS_ENV,
};
use anyhow::Context;
use postern_supervisor::child::{clear_cloexec, run_child, InflightPipe};
use postern_supervisor::{Backoff, Restarts};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// What every gateway child inherits: the listening sockets and limits.
struct Inherit {
    /// The sockets themselves: kept open here for the whole run, so the
    /// kernel's backlog holds connections while a child restarts.
    _sockets: crate::run::listen::Sockets,
    /// Their descriptors, cleared of close-on-exec in the child.
    fds: Vec<RawFd>,
    /// The value of [`LISTEN_ENV`] naming them by kind.
    listen_env: String,
    /// RLIMIT_AS of the gateway (0 = none).
    memory: u64,
    /// Where the gateway reads its configuration: the validated snapshot.
    config: Option<PathBuf>,
}

impl Inherit {
    fn bind(cfg: &crate::config::Config, config: Option<PathBuf>) -> anyhow::Result<Inherit> {
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
            config,
        })
    }

    /// The command that starts one gateway child.
    fn command(
        &self,
        exe: &std::path::Path,
        pipe: &InflightPipe,
        restarts: u64,
        last: &LastDeath,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("gateway");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.env(LISTEN_ENV, &self.listen_env)
            .env(INFLIGHT_FD_ENV, pipe.write.as_raw_fd().to_string())
            .env(RESTARTS_ENV, restarts.to_string())
            .stdin(std::process::Stdio::null());
        if last.suspects.is_empty() {
            cmd.env_remove(SUSPECTS_ENV);
        } else {
            cmd.env(SUSPECTS_ENV, last.suspects.join(" "))
                .env(DEATH_ENV, &last.death);
        }
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
    fn update(&mut self, end: &postern_supervisor::child::ChildEnd) {
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
pub async fn run(loaded: Loaded, signals: crate::run::signals::Signals) -> anyhow::Result<()> {
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
    let inherit = Inherit::bind(cfg, snapshot.as_ref().map(|s| s.running.clone()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (fwd_tx, mut fwd_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(forward_signals(signals, snapshot, fwd_tx, stop_tx));
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
    crate::run::notify::ready();

    let mut last = LastDeath::default();
    let mut restarts = Restarts::new(GATEWAY_BACKOFF);
    loop {
        let pipe = InflightPipe::new().context("cannot create the in-flight pipe")?;
        let cmd = inherit.command(&exe, &pipe, restarts.count(), &last);
        let end = run_child(cmd, pipe, stop_rx.clone(), grace, &mut fwd_rx).await?;
        if end.clean || *stop_rx.borrow() {
            tracing::info!(reason = %end.reason, "gateway stopped; supervisor exits");
            return Ok(());
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
        let mut stop = stop_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// SIGHUP: validate and snapshot the configuration, then forward the
/// reload to the gateway; SIGTERM/SIGINT: tell systemd and stop.
async fn forward_signals(
    mut signals: crate::run::signals::Signals,
    snapshot: Option<Snapshot>,
    fwd_tx: tokio::sync::mpsc::UnboundedSender<i32>,
    stop_tx: watch::Sender<bool>,
) {
    while signals.next().await == crate::run::signals::Sig::Reload {
        let Some(snap) = &snapshot else {
            // Embedded default: nothing can have changed.
            let _ = fwd_tx.send(libc::SIGHUP);
            continue;
        };
        match snap.refresh() {
            Ok(()) => {
                tracing::info!(config = %snap.source.display(), "configuration valid; reloading the gateway");
                let _ = fwd_tx.send(libc::SIGHUP);
            }
            Err(e) => tracing::error!(
                error = %crate::error_text(&e),
                "configuration reload refused; the running configuration stays"
            ),
        }
    }
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
