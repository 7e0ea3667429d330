//! The one place Postern configures a DNS resolver.
//!
//! Delivery (MX and address lookups) and inbound authentication (SPF, DKIM,
//! DMARC through mail-auth) must ask DNS the same way: the configured
//! nameservers, each over UDP with TCP fallback for truncated answers (so an
//! answer of any legal size works: the IMS died on one over 1,500 bytes),
//! or the system configuration; no hosts file, no search list (every name
//! is fully qualified), two attempts per question. [`build`] makes that
//! resolver from a [`DnsConfig`].
//!
//! This is an adapter crate: its API names hickory's resolver on purpose,
//! and only `postern-delivery` and `postern-convert` depend on it, each
//! keeping hickory out of its own public API. A resolver that cannot be
//! built (an unreadable /etc/resolv.conf) is a [`BuildError`] that keeps
//! hickory's error as its source.

#![warn(missing_docs)]

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::dnssec::TrustAnchors;
pub use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where DNS questions go and how long each may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Nameservers (ip:port), each asked over UDP with TCP fallback for
    /// truncated answers; empty: the system configuration (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// How long one query waits for an answer (two attempts per question).
    pub timeout: Duration,
}

/// Why [`build`] could not make a resolver.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The system configuration (/etc/resolv.conf) could not be read.
    #[error("system resolver: {0}")]
    SystemConfig(#[source] NetError),
    /// The resolver could not be built from its configuration.
    #[error("resolver: {0}")]
    Build(#[source] NetError),
    /// The DNSSEC trust anchor could not be read.
    #[error("DNSSEC trust anchor: {0}")]
    TrustAnchor(String),
}

/// The resolver `config` describes. Call inside a tokio runtime.
pub fn build(config: &DnsConfig) -> Result<TokioResolver, BuildError> {
    build_with(config, None)
}

/// A DNSSEC-validating resolver on `config`: answers carry their proof
/// (secure, insecure), bogus ones fail. `anchor` is the trust anchor as
/// DNSKEY records in zone-file form; `None` means the IANA root keys.
pub fn build_validating(
    config: &DnsConfig,
    anchor: Option<&str>,
) -> Result<TokioResolver, BuildError> {
    let anchors = match anchor {
        Some(text) => text
            .parse::<TrustAnchors>()
            .map_err(|e| BuildError::TrustAnchor(e.to_string()))?,
        None => TrustAnchors::default(),
    };
    build_with(config, Some(Arc::new(anchors)))
}

fn build_with(
    config: &DnsConfig,
    anchors: Option<Arc<TrustAnchors>>,
) -> Result<TokioResolver, BuildError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder(provider).map_err(BuildError::SystemConfig)?
    } else {
        let servers = config.nameservers.iter().map(name_server).collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let opts = builder.options_mut();
    opts.timeout = config.timeout;
    opts.attempts = 2;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    if let Some(a) = anchors {
        builder = builder.with_trust_anchor(a);
    }
    builder.build().map_err(BuildError::Build)
}

/// One configured nameserver: UDP, and TCP for truncated answers, on its
/// own port; negative answers from it are trusted.
fn name_server(ns: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = ns.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = ns.port();
    NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builds_on_given_nameservers() {
        let config = DnsConfig {
            nameservers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            timeout: Duration::from_secs(1),
        };
        assert!(build(&config).is_ok());
        assert!(build_validating(&config, None).is_ok());
        assert!(matches!(
            build_validating(&config, Some(". 3600 IN DNSKEY not a key")),
            Err(BuildError::TrustAnchor(_))
        ));
    }
}
