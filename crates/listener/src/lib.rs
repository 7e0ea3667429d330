//! Postern's SMTP server.
//!
//! Layers, from the bytes up (all private; what callers need is re-exported
//! here):
//! - `codec`: sans-IO framing of command lines (`Ok(None)` = need more bytes);
//! - `data`: the sans-IO DATA receiver (dot-unstuffing, strict CRLF, limits);
//! - `command`: parsing one command line into a typed command;
//! - `session`: the session state machine. It owns its decoders (the line
//!   codec, the DATA receiver inside its `Data` state, the BDAT chunk being
//!   read); `Session::ingest` takes buffered bytes and says what the loop must
//!   do next (hand a message to the sink, verify credentials, start TLS,
//!   close). Per-verb handlers return replies; no socket in sight, so every
//!   verb is testable without one;
//! - `timing`: pure decisions of the session loop (which timeout applies, the
//!   phase deadline, when shutdown closes a session);
//! - `server`: [`serve`], the accept loop and the session loop, the one place
//!   that reads and writes sockets (read → ingest → write);
//! - `auth`, `tls`, `limits`: AUTH users, failure limits and the cap on
//!   concurrent password checks, the TLS certificate, per-client-IP
//!   admission (IPv6 by /64);
//! - `budget`: the memory budget for message data shared by every session
//!   of the process ([`DataBudget`]); a message that does not fit is read,
//!   discarded and answered `452 4.3.1`.
//!
//! The listener hands each complete message to a [`MessageSink`] (the queue, in
//! the gateway) and relays its reply; it never answers 250 by itself.
//!
//! Public API: [`serve`] runs a listener with a [`SessionConfig`] (filled with
//! [`UserDb`], [`AuthLimiter`], [`DataBudget`] and [`TlsConfig`]) and a
//! [`MessageSink`] that takes [`ReceivedMessage`]s and answers with a
//! [`Reply`]; [`hash_password`] writes users-file entries. Errors:
//! [`ListenerError`], [`AuthError`], [`TlsError`], each keeping its cause as
//! its `source()`. No rustls type appears in this API.

#![warn(missing_docs)]

mod auth;
mod budget;
mod codec;
mod command;
mod config;
mod data;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod limits;
#[cfg(test)]
mod properties;
mod reply;
mod server;
mod session;
mod timing;
mod tls;

pub use auth::{hash_password, AuthError, AuthLimiter, UserDb};
pub use budget::DataBudget;
pub use config::SessionConfig;
pub use reply::Reply;
pub use server::{serve, ListenerError};
pub use tls::{TlsConfig, TlsError};

use postern_core::Envelope;
use std::future::Future;

/// A complete message handed to the sink.
#[derive(Debug)]
pub struct ReceivedMessage {
    /// Sender, recipients, client, HELO and DSN parameters: what the queue
    /// stores beside the body and delivery works from.
    pub envelope: Envelope,
    /// The message with our Received header prepended, CRLF line endings.
    pub body: Vec<u8>,
    /// Length of that Received header: `body[trace_len..]` is what the
    /// client sent.
    pub trace_len: usize,
}

/// Where complete messages go. The reply it returns is sent to the client
/// verbatim, so `250` must mean the message is durably stored.
pub trait MessageSink: Send + Sync + 'static {
    /// Takes one complete message and answers for it: `250` only once it is
    /// durably stored, a 4xx or 5xx reply otherwise. The session waits for
    /// the answer before it reads on.
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

/// An error and its causes on one line, `error: cause: cause` (as anyhow's
/// `{:#}` renders a chain), for log lines.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
