//! The command-line clients: what an operator types besides `postern run`.
//!
//! [`queue`] is a client of the running daemon's admin endpoint (list,
//! summary, show, hold, release, retry, delete); [`trace`] reads the
//! tracking log directly and works without the daemon. They use the
//! operations side ([`crate::ops`]) for the wire types and the log format,
//! never the gateway's internals.

pub mod queue;
pub mod trace;
