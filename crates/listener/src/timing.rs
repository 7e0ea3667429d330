//! When the session loop stops waiting for its client, and when shutdown
//! closes a session: pure decisions, tested by the tables below.
//!
//! - [`Timeouts::for_phase`]: the RFC 5321 4.5.3.2 timeouts that apply, a
//!   limit per read and one for the whole phase (a command line, a DATA
//!   phase, a BDAT chunk);
//! - [`PhaseDeadline`]: the deadline of the phase in progress, so a client
//!   trickling a byte at a time cannot hold a session past the phase limit;
//! - [`closes_for_shutdown`]: shutdown closes a session only when it is idle,
//!   never in the middle of a command or a transaction.
//!
//! The loop in [`crate::server`] measures time and acts; nothing here does.

use crate::SessionConfig;
use std::time::{Duration, Instant};

/// The timeouts of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for one read, and for a whole command line, while
    /// commands are expected.
    pub command: Duration,
    /// Longest wait for one read while message data (DATA or a BDAT chunk)
    /// is expected.
    pub data: Duration,
    /// Longest a whole DATA phase or BDAT chunk may take.
    pub data_total: Duration,
}

impl Timeouts {
    /// The timeouts configured for a listener.
    pub fn of(cfg: &SessionConfig) -> Timeouts {
        Timeouts {
            command: cfg.command_timeout,
            data: cfg.data_timeout,
            data_total: cfg.data_total_timeout,
        }
    }

    /// `(per read, whole phase)` while message data (`reading_message`) or
    /// commands are expected.
    pub fn for_phase(&self, reading_message: bool) -> (Duration, Duration) {
        if reading_message {
            (self.data, self.data_total)
        } else {
            (self.command, self.command)
        }
    }
}

/// When the phase in progress must be complete.
#[derive(Debug, Default)]
pub struct PhaseDeadline {
    /// Set by the first wait with something pending; cleared when nothing is
    /// pending or a phase begins or ends.
    at: Option<Instant>,
}

impl PhaseDeadline {
    /// DATA or a BDAT chunk began or ended: the next wait starts a deadline
    /// for the new phase.
    pub fn reset(&mut self) {
        self.at = None;
    }

    /// How long the next read may wait at `now`. `pending`: part of a command
    /// line is buffered, or message data is being read; with nothing pending
    /// the session is between commands and only `per_read` applies.
    pub fn next_wait(
        &mut self,
        per_read: Duration,
        phase: Duration,
        pending: bool,
        now: Instant,
    ) -> Duration {
        if !pending {
            self.at = None;
        } else if self.at.is_none() {
            self.at = now.checked_add(phase);
        }
        match self.at {
            Some(d) => per_read.min(d.saturating_duration_since(now)),
            None => per_read,
        }
    }
}

/// True when shutdown closes the session now: it is idle (between commands,
/// nothing buffered, no transaction) and shutdown was asked for, or its
/// sender is gone (then nobody could stop the session later). A busy session
/// is closed when it next becomes idle.
pub fn closes_for_shutdown(idle: bool, stop_requested: bool, sender_gone: bool) -> bool {
    idle && (stop_requested || sender_gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            command: s(300),
            data: s(180),
            data_total: s(600),
        }
    }

    #[test]
    fn which_timeouts_apply_in_which_phase() {
        for (reading_message, want) in [(false, (s(300), s(300))), (true, (s(180), s(600)))] {
            assert_eq!(
                timeouts().for_phase(reading_message),
                want,
                "{reading_message}"
            );
        }
        assert_eq!(Timeouts::of(&crate::config::test_config()), timeouts());
    }

    #[test]
    fn phase_deadline_bounds_a_trickling_client() {
        let t0 = Instant::now();
        // (seconds since t0, pending, reset first, expected wait)
        let table = [
            (0, false, false, 180), // idle: per read only, no deadline
            (10, true, false, 180), // phase starts: deadline t0 + 10 + 600
            (400, true, false, 180),
            (500, true, false, 110), // 110 s of the phase left
            (609, true, false, 1),
            (700, true, false, 0),  // past the deadline: no wait at all
            (700, true, true, 180), // a new phase: a new deadline (t0 + 1300)
            (1250, true, false, 50),
            (1260, false, false, 180), // idle again: the deadline is gone
            (1270, true, false, 180),  // and a later phase starts afresh
        ];
        let mut d = PhaseDeadline::default();
        for (at, pending, reset, want) in table {
            if reset {
                d.reset();
            }
            let wait = d.next_wait(s(180), s(600), pending, t0 + s(at));
            assert_eq!(wait, s(want), "at {at} s");
        }
    }

    #[test]
    fn a_phase_limit_past_the_clock_leaves_the_per_read_limit() {
        let mut d = PhaseDeadline::default();
        let wait = d.next_wait(s(5), Duration::MAX, true, Instant::now());
        assert_eq!(wait, s(5));
    }

    #[test]
    fn shutdown_closes_only_idle_sessions() {
        // (idle, stop requested, sender gone, closes)
        let table = [
            (false, false, false, false),
            (false, true, false, false),
            (false, false, true, false),
            (false, true, true, false),
            (true, false, false, false),
            (true, true, false, true),
            (true, false, true, true),
            (true, true, true, true),
        ];
        for (idle, stop, gone, want) in table {
            assert_eq!(
                closes_for_shutdown(idle, stop, gone),
                want,
                "{idle} {stop} {gone}"
            );
        }
    }
}
