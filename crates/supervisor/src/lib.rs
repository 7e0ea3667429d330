//! Generic worker lifecycle. Knows nothing about mail.
//!
//! - [`supervise`] (here): restart a long-lived task on panic or error;
//! - [`pool`]: a pool of worker processes spoken to over pipes, each request
//!   with a deadline; a worker that dies or overruns is killed and replaced,
//!   with backoff, and only that request fails;
//! - [`child`]: run one supervised child process that reports what it is
//!   working on ("in flight") over a pipe, kill it when an item overruns its
//!   deadline, and report what was in flight when it died;
//! - [`exit`]: describe how a process ended.
//!
//! [`supervise`] runs a long-lived task built by a factory; when the task
//! panics or returns an error it is restarted after a delay that doubles
//! with every failure that comes soon after a start (a worker that dies
//! before doing useful work is throttled, as Postfix's master throttles a
//! service whose child dies before its first job) and resets once a run has
//! lasted [`Backoff::healthy_after`]. A clean `Ok(())` ends supervision.
//! Restarts are reported through a callback so the caller can count them.

pub mod child;
pub mod exit;
pub mod pool;

use std::future::Future;
use std::time::{Duration, Instant};

/// Restart timing.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long counts as healthy and resets the delay.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(10),
        }
    }
}

/// Why a run ended badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("panicked: {0}")]
    Panic(String),
    #[error("failed: {0}")]
    Error(String),
}

/// Text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// Runs `make()` as a task until it returns `Ok(())`, restarting it on
/// panic or error. `on_restart(name, failure, delay)` is called before each
/// restart.
pub async fn supervise<F, Fut, E>(
    name: &str,
    backoff: Backoff,
    mut make: F,
    mut on_restart: impl FnMut(&str, &Failure, Duration),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut delay = backoff.initial;
    loop {
        let started = Instant::now();
        let failure = match tokio::spawn(make()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => Failure::Error(e.to_string()),
            Err(j) if j.is_panic() => Failure::Panic(panic_message(&*j.into_panic())),
            Err(_) => return, // cancelled: the runtime is shutting down
        };
        if started.elapsed() >= backoff.healthy_after {
            delay = backoff.initial;
        }
        tracing::error!(worker = name, %failure, ?delay, "worker died; restarting");
        on_restart(name, &failure, delay);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn restarts_after_panic_and_error_then_stops_on_ok() {
        let runs = Arc::new(AtomicU32::new(0));
        let mut restarts = Vec::new();
        let r = runs.clone();
        supervise(
            "t",
            Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(4),
                healthy_after: Duration::from_secs(60),
            },
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0 => panic!("boom"),
                        1 => Err("bad".to_string()),
                        _ => Ok(()),
                    }
                }
            },
            |_, f, d| restarts.push((f.clone(), d)),
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(restarts[0].0, Failure::Panic("boom".into()));
        assert_eq!(restarts[1].0, Failure::Error("bad".into()));
        assert!(
            restarts[1].1 > restarts[0].1,
            "delay doubles on fast failures"
        );
    }
}
