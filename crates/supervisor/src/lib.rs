//! Generic worker lifecycle. Knows nothing about mail.
//!
//! - [`supervise`] (here): restart a long-lived task on panic or error;
//! - [`pool`]: a pool of worker processes spoken to over pipes, each request
//!   with a deadline; a worker that dies or overruns is killed and replaced,
//!   with backoff, and only that request fails;
//! - [`child`]: run one supervised child process that reports what it is
//!   working on ("in flight") over a pipe, kill it when an item overruns its
//!   deadline, and report what was in flight when it died;
//! - [`exit`]: describe how a process ended (Unix signals, Windows
//!   exception statuses by name);
//! - [`job`]: Windows Job Objects (kill on close, memory and CPU limits).
//!
//! [`supervise`] runs a long-lived task built by a factory; when the task
//! panics or returns an error it is restarted after a delay that doubles
//! with every failure that comes soon after a start (a worker that dies
//! before doing useful work is throttled, as Postfix's master throttles a
//! service whose child dies before its first job) and resets once a run has
//! lasted [`Backoff::healthy_after`]. A clean `Ok(())` ends supervision.
//! Restarts are reported through a callback so the caller can count them.
//! [`Restarts`] is that timing on its own, for a supervisor with a loop of
//! its own (the gateway's, around a child process); [`pool`] throttles
//! early worker deaths with the same [`Backoff::delay`].

#![warn(missing_docs)]

pub mod child;
pub mod exit;
pub mod job;
pub mod pool;

use std::future::Future;
use std::time::{Duration, Instant};

/// Restart timing. The first restart waits `initial`; each further restart
/// after a run shorter than `healthy_after` waits twice as long as the one
/// before, up to `max`; a run of at least `healthy_after` starts over at
/// `initial`. [`Backoff::delay`] is the rule, [`Restarts`] applies it run
/// after run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait before the first restart, and before the first after a healthy
    /// run.
    pub initial: Duration,
    /// Longest wait.
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

impl Backoff {
    /// The wait owed after `failures` quick failures in a row: none for 0,
    /// `initial` for 1, twice as long for each one more, at most `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let Some(doublings) = failures.checked_sub(1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// True when a run that lasted `ran_for` counts as healthy.
    pub fn is_healthy(&self, ran_for: Duration) -> bool {
        ran_for >= self.healthy_after
    }
}

/// The restart delays of one supervised task or child process, from how
/// long each of its runs lasted: [`Backoff`] applied over time.
#[derive(Debug, Clone)]
pub struct Restarts {
    /// The timing rule.
    backoff: Backoff,
    /// Quick failures in a row, the last one included.
    streak: u32,
    /// Runs recorded so far, i.e. restarts owed.
    count: u64,
}

impl Restarts {
    /// No run recorded yet.
    pub fn new(backoff: Backoff) -> Restarts {
        Restarts {
            backoff,
            streak: 0,
            count: 0,
        }
    }

    /// Records a run that ended after `ran_for`; returns how long to wait
    /// before the next start.
    pub fn after_run(&mut self, ran_for: Duration) -> Duration {
        if self.backoff.is_healthy(ran_for) {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.backoff.delay(self.streak)
    }

    /// Runs recorded so far: how many restarts there have been.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Why a run ended badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The task panicked; the panic message.
    #[error("panicked: {0}")]
    Panic(String),
    /// The task returned an error; its text.
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
/// panic or error after the delay [`Restarts`] gives. `on_restart(name,
/// failure, delay)` is called before each restart.
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
    let mut restarts = Restarts::new(backoff);
    loop {
        let started = Instant::now();
        let failure = match tokio::spawn(make()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => Failure::Error(e.to_string()),
            Err(j) if j.is_panic() => Failure::Panic(panic_message(&*j.into_panic())),
            Err(_) => return, // cancelled: the runtime is shutting down
        };
        let delay = restarts.after_run(started.elapsed());
        tracing::error!(worker = name, %failure, ?delay, "worker died; restarting");
        on_restart(name, &failure, delay);
        tokio::time::sleep(delay).await;
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The gateway supervisor's timing (`postern run` on Unix).
    const GATEWAY: Backoff = Backoff {
        initial: Duration::from_millis(250),
        max: Duration::from_secs(30),
        healthy_after: Duration::from_secs(10),
    };

    #[test]
    fn delay_doubles_from_initial_up_to_max() {
        let b = GATEWAY;
        let want = [0, 250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000];
        for (n, w) in want.iter().enumerate() {
            assert_eq!(b.delay(n as u32), ms(*w), "after {n} failures");
        }
        assert_eq!(b.delay(33), b.max);
        assert_eq!(b.delay(u32::MAX), b.max);
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            healthy_after: Duration::ZERO,
        };
        assert_eq!(huge.delay(5), Duration::MAX, "saturates, never panics");
        assert!(b.is_healthy(Duration::from_secs(10)));
        assert!(!b.is_healthy(ms(9_999)));
    }

    #[test]
    fn restarts_back_off_while_quick_and_reset_after_a_long_run() {
        let mut r = Restarts::new(GATEWAY);
        let quick = Duration::from_secs(1);
        let long = Duration::from_secs(11);
        assert_eq!(r.after_run(quick), ms(250), "first restart");
        assert_eq!(r.after_run(quick), ms(500));
        assert_eq!(r.after_run(quick), ms(1000));
        assert_eq!(r.after_run(long), ms(250), "a long run starts over");
        assert_eq!(r.after_run(quick), ms(500));
        assert_eq!(r.count(), 5);
        // A long first run waits `initial` too.
        assert_eq!(Restarts::new(GATEWAY).after_run(long), ms(250));
        // Capped at max, however many quick failures follow.
        let mut r = Restarts::new(GATEWAY);
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            last = r.after_run(quick);
        }
        assert_eq!(last, Duration::from_secs(30));
    }

    /// The schedule the gateway supervisor computed by hand before it used
    /// [`Restarts`]: the same delays for any run lengths (away from the
    /// boundary itself, which the hand-written code excluded: `> 10 s`).
    #[test]
    fn restarts_match_the_hand_written_gateway_schedule() {
        let mut delay = ms(250);
        let mut restarts = 0u64;
        let mut r = Restarts::new(GATEWAY);
        let mut seed = 7u64;
        for _ in 0..200 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            // Runs from 0 to 20 s, never exactly 10 s.
            let ran_for = ms((seed >> 33) % 20_000) + Duration::from_micros(1);
            restarts += 1;
            delay = if ran_for > Duration::from_secs(10) {
                ms(250)
            } else if restarts == 1 {
                delay
            } else {
                (delay * 2).min(Duration::from_secs(30))
            };
            assert_eq!(r.after_run(ran_for), delay, "run {restarts}: {ran_for:?}");
            assert_eq!(r.count(), restarts);
        }
    }
}
