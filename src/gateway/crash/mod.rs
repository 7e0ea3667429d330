//! Crash bookkeeping: what makes one poison message cost only itself.
//!
//! [`inflight`] tells the supervisor which message is in which stage (so a
//! death names its suspects); [`suspects`] charges them in the next gateway
//! before any work; [`gate`] lets a message that crashed before run alone;
//! [`fault`] injects crashes for the tests (feature `fault-injection`).
//! Knows the queue and the pipe to the supervisor, nothing of SMTP.

pub mod fault;
pub mod gate;
pub mod inflight;
pub mod suspects;
