//! Postern's SMTP server.
//!
//! Layers, from the bytes up:
//! - [`codec`]: sans-IO framing of command lines (`Ok(None)` = need more bytes);
//! - [`data`]: the sans-IO DATA receiver (dot-unstuffing, strict CRLF, limits);
//! - [`command`]: parsing one command line into a [`command::Command`];
//! - [`session`]: the session state enum and per-verb handlers that *return*
//!   replies; no socket in sight, so every verb is testable without one;
//! - [`server`]: the accept loop and the one place that reads and writes sockets.
//!
//! The listener hands each complete message to a [`MessageSink`] (the queue, in
//! the gateway) and relays its reply; it never answers 250 by itself.

pub mod auth;
pub mod codec;
pub mod command;
pub mod data;
pub mod limits;
pub mod reply;
pub mod server;
pub mod session;
pub mod tls;

pub use reply::Reply;
pub use server::{serve, ListenerError};
pub use session::{ReceivedMessage, SessionConfig};

use std::future::Future;

/// Where complete messages go. The reply it returns is sent to the client
/// verbatim, so `250` must mean the message is durably stored.
pub trait MessageSink: Send + Sync + 'static {
    fn accept(&self, msg: ReceivedMessage) -> impl Future<Output = Reply> + Send;

    /// A session task panicked (it was answered 451 4.3.0 and closed).
    fn session_panicked(&self, _panic: &str) {}

    /// A session started on a listener (`smtp`, `smtps`, `submission`).
    fn session_opened(&self, _listener: &'static str) {}

    /// A session opened with [`MessageSink::session_opened`] ended.
    fn session_closed(&self) {}

    /// A 4xx or 5xx reply is going to a client ([`Reply::reason`] names it).
    fn refused(&self, _reply: &Reply) {}

    /// A client negotiated TLS (`"TLSv1_3"`, ...).
    fn tls_established(&self, _version: &'static str) {}
}
