//! Postern's outbound delivery: from a message's pending recipients to a
//! typed outcome per recipient (delivered, relayed, temporary, permanent).
//!
//! The whole public API:
//! - [`Deliverer`] ties it together: per recipient domain, the next hops, a
//!   pooled or new connection and one SMTP transaction, under a global and a
//!   per-destination concurrency limit and a time limit per destination; it
//!   tells its caller when work on a destination starts and ends (the
//!   in-flight record); [`ConnectHook`] observes new connections and dead pooled ones
//!   (metrics).
//! - [`Myself`] is our own SMTP endpoints (listening addresses, host name):
//!   a next hop that is us is a mail loop, failed with 5.4.6.
//! - [`Resolver`] is the DNS it asks ([`MxRecord`], [`DnsError`],
//!   [`TemporaryDns`], [`ResolverFailure`]); [`HickoryResolver`], built from
//!   a [`DnsConfig`] (or failing with a [`ResolverBuildError`]), is the
//!   production one.
//! - [`DeliveryConfig`] and [`Route`] are the `[delivery]` and `[[route]]`
//!   settings (the binary's configuration schema embeds them);
//!   [`split_host_port`] reads a route's host ([`HostPortError`]).
//! - [`Downgrade`] is the 8-bit to 7-bit conversion the binary provides for
//!   hops without 8BITMIME; it fails with a [`DowngradeError`].
//! - Outbound TLS: [`OutboundTlsConfig`], [`TlsPolicyEntry`] and
//!   [`TlsLevel`] are the `[outbound_tls]` and `[[tls_policy]]` settings;
//!   [`Checker`] holds the TLS client configuration and roots; MTA-STS
//!   policies ([`StsPolicy`], [`StsMode`], cached as [`StsEntry`] in an
//!   [`StsStore`]); DANE records ([`Tlsa`], [`TlsaAnswer`]); each session's
//!   result is a [`TlsEvent`] ([`TlsFailure`], [`PolicySource`]) through
//!   [`ConnectHook`], and each attempt's a [`TlsNote`];
//!   [`Deliverer::explain`] tells what applies to a destination
//!   ([`PolicyReport`], [`HopPolicy`]).
//!
//! Inside, private: `nexthop` (static routes, address literals, MX order,
//! implicit and null MX), `myself` (loop detection, pure and table-tested),
//! `smtp` (the I/O shell over lettre, reading replies through a bounded
//! stream, `smtp::bounded`) with its pure halves `smtp::plan` (the
//! transaction plan) and `smtp::reply` (reply classification), both
//! table-tested, `pool` (idle connections, kept apart by TLS requirement)
//! and `tls` (levels, `tls::dane`, `tls::sts`, the certificate checks). No hickory or lettre type
//! appears in the public API.

#![warn(missing_docs)]

mod config;
mod deliverer;
mod myself;
mod nexthop;
mod pool;
mod resolve;
mod smtp;
mod tls;

pub use config::{split_host_port, DeliveryConfig, HostPortError, Route};
pub use deliverer::{ConnEvent, ConnectHook, Deliverer, HopPolicy, PolicyReport, TlsNote};
pub use myself::Myself;
pub use resolve::{
    DnsConfig, DnsError, HickoryResolver, MxRecord, Resolver, ResolverBuildError, ResolverFailure,
    TemporaryDns, TlsaAnswer,
};
pub use smtp::{Downgrade, DowngradeError};
pub use tls::sts::{StsAnswer, StsEntry};
pub use tls::{
    validate_policies, Checker, OutboundTlsConfig, PolicySource, StsMode, StsPolicy, StsStore,
    TlsEvent, TlsFailure, TlsLevel, TlsPolicyEntry, TlsSetupError, Tlsa,
};
