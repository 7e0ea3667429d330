//! A pool of worker processes, spoken to over their stdin and stdout.
//!
//! Entry point: [`ProcessPool::call`] sends one request (a length-prefixed
//! frame) to an idle worker and waits for its answer until the deadline. A
//! worker that closes its pipe (it aborted, overflowed its stack, ran out of
//! memory, was killed by a resource limit) or overruns the deadline is killed
//! and reaped, and the call fails with the reason ([`CallError`]); the next
//! call starts a replacement. A worker that dies before answering even one
//! request makes the next start wait, doubling up to the backoff maximum
//! (Postfix's master throttles such a service the same way), so a broken
//! worker binary cannot turn into a fork storm. Frames are
//! `u64 length (big-endian) ++ bytes` both ways, at most `max_frame` long.

use crate::Backoff;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

/// How to start workers and how long to wait for them.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The worker executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it (on top of ours).
    pub env: Vec<(String, String)>,
    /// Worker processes (and concurrent calls).
    pub size: usize,
    /// Per-request deadline.
    pub deadline: Duration,
    /// Restart delays for workers that die before their first answer
    /// ([`Backoff::delay`] of the number of such deaths in a row).
    pub backoff: Backoff,
    /// Largest frame accepted from a worker.
    pub max_frame: u64,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The worker died while holding the request.
    #[error("worker {0}")]
    Died(String),
    /// The worker overran the deadline and was killed.
    #[error("worker overran the {0:?} deadline and was killed")]
    Deadline(Duration),
    /// No worker could be started: the operating system refused.
    #[error("cannot start a worker: {0}")]
    Spawn(#[source] std::io::Error),
    /// No worker could be started: its pipes were missing, or the pool is
    /// closed.
    #[error("cannot start a worker: {0}")]
    Unavailable(&'static str),
    /// The worker answered something that is not a frame.
    #[error("worker broke the protocol: {0}")]
    Protocol(String),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Requests answered; 0 means it has not proved it works.
    served: u64,
}

/// Called with the reason each time a worker is replaced.
pub type RestartHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Worker processes and the calls made to them; see the module docs.
pub struct ProcessPool {
    /// How workers start, and the limits of a call.
    cfg: PoolConfig,
    /// Idle workers.
    idle: Mutex<Vec<Worker>>,
    /// Bounds concurrent calls to the number of workers.
    slots: Semaphore,
    /// Workers that died in a row before answering anything.
    early_deaths: AtomicU32,
    /// Workers replaced so far.
    restarts: AtomicU64,
    /// Told the reason each time a worker is replaced.
    on_restart: RestartHook,
}

impl ProcessPool {
    /// A pool with no worker started yet (see [`prestart`](Self::prestart)).
    pub fn new(cfg: PoolConfig, on_restart: RestartHook) -> ProcessPool {
        ProcessPool {
            slots: Semaphore::new(cfg.size.max(1)),
            cfg,
            idle: Mutex::new(Vec::new()),
            early_deaths: AtomicU32::new(0),
            restarts: AtomicU64::new(0),
            on_restart,
        }
    }

    /// Workers replaced so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts every worker now, so start-up failures show at once.
    pub async fn prestart(&self) -> Result<(), CallError> {
        for _ in 0..self.cfg.size {
            let w = self.spawn()?;
            self.lock().push(w);
        }
        Ok(())
    }

    fn spawn(&self) -> Result<Worker, CallError> {
        let mut cmd = Command::new(&self.cfg.program);
        cmd.args(&self.cfg.args)
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(CallError::Spawn)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(CallError::Unavailable("worker pipes missing"));
        };
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            served: 0,
        })
    }

    /// Delay owed before starting another worker after early deaths.
    fn throttle_delay(&self) -> Duration {
        self.cfg
            .backoff
            .delay(self.early_deaths.load(Ordering::Relaxed))
    }

    /// Sends `req` to a worker and returns its answer.
    pub async fn call(&self, req: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call_checked(req, |_| true).await
    }

    /// Like [`call`](Self::call) for a request in parts, sent as one frame
    /// without joining them (a gathered write: a message body is not
    /// copied to be framed).
    pub async fn call_parts(&self, req: &[&[u8]]) -> Result<Vec<u8>, CallError> {
        self.call_working(req, |_| true, || ()).await
    }

    /// Like [`call`](Self::call); `keep(answer)` false retires the worker
    /// after this answer (it reported a state that cannot be trusted, such
    /// as a caught panic), so the next request never meets a dying worker.
    pub async fn call_checked(
        &self,
        req: &[u8],
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, CallError> {
        self.call_working(&[req], keep, || ()).await
    }

    /// Like [`call_checked`](Self::call_checked); `working()` is called once
    /// a worker is ready to take the request (the wait for a free worker
    /// and any restart throttling are over), and what it returns is held
    /// until the answer: a caller's deadline guard then measures the work,
    /// not the wait. The request is the concatenation of `req`'s parts.
    pub async fn call_working<G>(
        &self,
        req: &[&[u8]],
        keep: impl Fn(&[u8]) -> bool,
        working: impl FnOnce() -> G,
    ) -> Result<Vec<u8>, CallError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| CallError::Unavailable("pool closed"))?;
        let idle = self.lock().pop();
        let mut w = match idle {
            Some(w) => w,
            None => {
                let delay = self.throttle_delay();
                if !delay.is_zero() {
                    tracing::warn!(
                        ?delay,
                        "worker keeps dying before its first job; throttling"
                    );
                    tokio::time::sleep(delay).await;
                }
                self.spawn()?
            }
        };
        let _working = working();
        match tokio::time::timeout(self.cfg.deadline, exchange(&mut w, req, self.cfg.max_frame))
            .await
        {
            Ok(Ok(resp)) => {
                w.served += 1;
                self.early_deaths.store(0, Ordering::Relaxed);
                if keep(&resp) {
                    self.lock().push(w);
                } else {
                    self.retire(w, "reported a crash").await;
                }
                Ok(resp)
            }
            Ok(Err(ExchangeError::Protocol(p))) => {
                self.retire(w, "broke the protocol").await;
                Err(CallError::Protocol(p))
            }
            Ok(Err(ExchangeError::Closed)) => {
                let why = self.retire(w, "died").await;
                Err(CallError::Died(why))
            }
            Err(_) => {
                self.retire(w, "overran its deadline").await;
                Err(CallError::Deadline(self.cfg.deadline))
            }
        }
    }

    /// Kills and reaps a worker; returns how it ended.
    async fn retire(&self, mut w: Worker, what: &str) -> String {
        let _ = w.child.start_kill();
        let status = match tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await {
            Ok(Ok(s)) => crate::exit::describe(&s),
            Ok(Err(e)) => format!("could not be reaped: {e}"),
            Err(_) => "did not exit after SIGKILL".to_string(),
        };
        if w.served == 0 {
            self.early_deaths.fetch_add(1, Ordering::Relaxed);
        }
        self.restarts.fetch_add(1, Ordering::Relaxed);
        let reason = format!("{status} ({what})");
        tracing::error!(reason = %reason, served = w.served, "content worker replaced");
        (self.on_restart)(&reason);
        status
    }
}

enum ExchangeError {
    Closed,
    Protocol(String),
}

async fn exchange(w: &mut Worker, req: &[&[u8]], max: u64) -> Result<Vec<u8>, ExchangeError> {
    let io = |_| ExchangeError::Closed;
    // One gathered write per request: the length, then the parts as they
    // are (no copy of the message to frame it).
    let len = req
        .iter()
        .map(|p| p.len() as u64)
        .sum::<u64>()
        .to_be_bytes();
    let mut parts: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(req.len() + 1);
    parts.push(std::io::IoSlice::new(&len));
    parts.extend(req.iter().map(|p| std::io::IoSlice::new(p)));
    let mut rest = &mut parts[..];
    while !rest.is_empty() {
        let n = w.stdin.write_vectored(rest).await.map_err(io)?;
        if n == 0 {
            return Err(ExchangeError::Closed);
        }
        std::io::IoSlice::advance_slices(&mut rest, n);
    }
    w.stdin.flush().await.map_err(io)?;
    let len = w.stdout.read_u64().await.map_err(io)?;
    if len > max {
        return Err(ExchangeError::Protocol(format!("frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    w.stdout.read_exact(&mut buf).await.map_err(io)?;
    Ok(buf)
}

/// The worker side: reads one request frame from `r`; `Ok(None)` at end of
/// input.
pub fn read_frame(r: &mut impl std::io::Read, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 8];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u64::from_be_bytes(len);
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// The worker side: writes one answer frame.
pub fn write_frame(w: &mut impl std::io::Write, data: &[u8]) -> std::io::Result<()> {
    w.write_all(&(data.len() as u64).to_be_bytes())?;
    w.write_all(data)?;
    w.flush()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A shell worker: echoes frames back, and dies on request "die".
    fn pool(script: &str, deadline_ms: u64) -> ProcessPool {
        ProcessPool::new(
            PoolConfig {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                env: vec![],
                size: 1,
                deadline: Duration::from_millis(deadline_ms),
                backoff: Backoff {
                    initial: Duration::from_millis(10),
                    max: Duration::from_millis(40),
                    healthy_after: Duration::from_secs(1),
                },
                max_frame: 1 << 20,
            },
            Arc::new(|_| {}),
        )
    }

    #[tokio::test]
    async fn echo_die_and_deadline() {
        // `cat` echoes the frame back unchanged: a valid answer.
        let p = pool("exec cat", 2000);
        assert_eq!(p.call(b"hello").await.unwrap(), b"hello");
        let parts: [&[u8]; 3] = [b"he", b"", b"llo"];
        assert_eq!(p.call_parts(&parts).await.unwrap(), b"hello");
        assert_eq!(p.call(b"again").await.unwrap(), b"again");
        assert_eq!(p.restarts(), 0);
        // A worker that dies at once: the call fails with its exit reason.
        let p = pool("exit 3", 2000);
        assert!(
            matches!(p.call(b"x").await, Err(CallError::Died(why)) if why == "exited with status 3")
        );
        // The next start is throttled, and fails the same way.
        assert!(p.throttle_delay() > Duration::ZERO);
        assert!(matches!(p.call(b"x").await, Err(CallError::Died(_))));
        assert_eq!(p.restarts(), 2);
        // A worker that never answers is killed at the deadline.
        let p = pool("sleep 30", 200);
        assert!(matches!(
            p.call(b"x").await,
            Err(CallError::Deadline(d)) if d == Duration::from_millis(200)
        ));
    }
}
