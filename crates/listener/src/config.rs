//! What every session of one listener shares: identity, limits, timeouts,
//! TLS, AUTH users and the back-pressure flag ([`SessionConfig`]).
//!
//! The gateway builds one per listener kind (SMTP, submission) and replaces
//! it on reload; each session keeps the one it started with, and the
//! connection caps are read once, when [`crate::serve`] starts.

use crate::auth::{AuthLimiter, UserDb};
use crate::budget::DataBudget;
use crate::tls::TlsConfig;
use postern_core::relay::RecipientList;
use postern_core::RelayPolicy;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;

/// Limits and identity for every session of one listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name in the greeting, EHLO and Received.
    pub hostname: String,
    /// Accepted domains and trusted networks: where a client may relay, and
    /// who is exempt from per-IP limits and the greeting delay.
    pub relay: RelayPolicy,
    /// Largest message in octets: announced as SIZE, checked at MAIL SIZE=,
    /// in DATA and across BDAT chunks (552 5.3.4 past it).
    pub max_message_size: u64,
    /// Most RCPTs per transaction; more are answered 452 4.5.3.
    pub max_recipients: usize,
    /// Errors before "421 too many errors" and close.
    pub max_errors: u32,
    /// Longest command line, line ending included; a longer one costs one
    /// 500 reply and is skipped, so buffered input stays bounded.
    pub max_command_line: usize,
    /// Longest message text line, CRLF included (RFC 5321 4.5.3.1.6); a
    /// longer one refuses the message.
    pub max_text_line: usize,
    /// Longest wait for one read and for a whole command line while commands
    /// are expected; also bounds the TLS handshake.
    pub command_timeout: Duration,
    /// Longest wait for one read of message data (DATA or a BDAT chunk).
    pub data_timeout: Duration,
    /// Concurrent sessions on the listener; over it a client gets 421 4.3.2.
    /// Read once when [`crate::serve`] starts (a reload does not change it).
    pub max_connections: usize,
    /// STARTTLS and implicit TLS; `None` when no certificate is configured.
    pub tls: Option<TlsConfig>,
    /// Longest a whole DATA phase or BDAT chunk may take, so a client that
    /// trickles bytes cannot hold a session. Timeouts: RFC 5321 4.5.3.2.
    pub data_total_timeout: Duration,
    /// Concurrent sessions per client IP, 0 for no limit (trusted networks
    /// exempt). Read once when [`crate::serve`] starts.
    pub max_connections_per_ip: usize,
    /// New connections per client IP per minute, 0 for no limit (trusted
    /// networks exempt). Read once when [`crate::serve`] starts.
    pub max_connection_rate_per_ip: u32,
    /// How long an untrusted client must wait for the greeting (zero: no
    /// wait); one that talks first is refused 554, as spam bots do.
    pub greeting_delay: Duration,
    /// NOOP, RSET, VRFY and HELP allowed per session before 421, so a client
    /// cannot hold a session without sending mail; a repeated EHLO/HELO and
    /// `BDAT 0` without LAST count too.
    pub max_noops: u32,
    /// Octets of message data that every session of the process may hold
    /// in memory together, 0 for no limit: past it a message is read to its
    /// end without being stored and answered 452 4.3.1.
    pub max_data_in_memory: u64,
    /// What the sessions hold against `max_data_in_memory`; one shared by
    /// every listener (and kept across reloads), so a flood of sessions
    /// cannot exhaust memory however it is spread.
    pub data_budget: Arc<DataBudget>,
    /// Most Received header fields a message may arrive with (0: no
    /// limit); more is a mail loop, refused 554 5.4.6.
    pub max_hops: usize,
    /// Password verifications (19 MiB Argon2 runs) in progress at once,
    /// counted in `auth_limiter`; over it AUTH gets 454 4.7.0.
    pub max_auth_verifies: usize,
    /// Back pressure set by the gateway: 0 none, 1 refuse untrusted
    /// clients, 2 refuse everyone (452 4.3.1 at MAIL).
    pub pressure: Arc<AtomicU8>,
    /// Drain mode, set by the operator (`postern drain`): new connections
    /// are answered 421 4.3.2 and closed, so clients and load balancers
    /// move on; sessions already open finish.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Users for AUTH; AUTH is offered on encrypted sessions when set.
    pub users: Option<Arc<UserDb>>,
    /// Failed AUTH attempts per client and per user, shared by every
    /// session (and kept across reloads) so guessing cannot spread out.
    pub auth_limiter: Arc<AuthLimiter>,
    /// Submission port: MAIL needs AUTH first.
    pub require_auth: bool,
    /// Valid recipients of accepted domains, when configured (550 5.1.1
    /// for others).
    pub recipients: Option<Arc<RecipientList>>,
}

/// The configuration the unit tests share: trusted 127.0.0.1, small limits.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn test_config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "gw.example.test".into(),
        relay: RelayPolicy {
            accepted_domains: vec!["example.test".into()],
            trusted_networks: vec!["127.0.0.1/32".parse().unwrap()],
        },
        max_message_size: 1000,
        max_recipients: 2,
        max_errors: 3,
        max_command_line: 512,
        max_text_line: 1000,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        max_connections: 10,
        tls: None,
        data_total_timeout: Duration::from_secs(600),
        max_connections_per_ip: 10,
        max_connection_rate_per_ip: 100,
        greeting_delay: Duration::ZERO,
        max_noops: 5,
        max_data_in_memory: 1 << 20,
        data_budget: DataBudget::new(),
        max_hops: 50,
        max_auth_verifies: 4,
        pressure: Arc::new(AtomicU8::new(0)),
        draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        users: None,
        auth_limiter: AuthLimiter::new(5),
        require_auth: false,
        recipients: None,
    })
}
