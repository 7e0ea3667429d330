//! DNS behind a small trait.
//!
//! [`Resolver`] answers the two questions delivery asks: the MX records of a
//! domain and the addresses of a host. [`DnsError`] separates "no such
//! records" (which can make a failure permanent) from everything else
//! (timeouts, SERVFAIL, malformed answers: temporary). [`HickoryResolver`]
//! uses hickory-resolver over UDP with TCP fallback for truncated answers, so
//! answers of any legal size work (the IMS died on one over 1,500 bytes).

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// Exchange host name without the trailing dot; "" or "." for null MX.
    pub exchange: String,
}

/// Why a lookup gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN).
    #[error("domain does not exist")]
    NxDomain,
    /// The name exists but has no records of the type asked for.
    #[error("no records of the requested type")]
    NoData,
    /// Anything else: timeout, SERVFAIL, refused, malformed answer.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
}

/// The DNS questions delivery asks.
pub trait Resolver: Send + Sync + 'static {
    fn mx(&self, domain: &str) -> impl Future<Output = Result<Vec<MxRecord>, DnsError>> + Send;
    fn addrs(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send;
}

/// hickory-resolver, on the system configuration or given nameservers.
pub struct HickoryResolver {
    inner: TokioResolver,
}

impl HickoryResolver {
    /// `nameservers` empty: the system resolver (/etc/resolv.conf).
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Self, DnsError> {
        Ok(HickoryResolver {
            inner: tokio_resolver(nameservers, timeout)?,
        })
    }
}

/// A hickory resolver on the given nameservers (UDP with TCP fallback) or
/// the system configuration. Call inside a tokio runtime.
pub fn tokio_resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
) -> Result<TokioResolver, DnsError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| DnsError::Temporary(format!("system resolver: {e}")))?
    } else {
        let servers = nameservers
            .iter()
            .map(|ns| {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 2;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    builder
        .build()
        .map_err(|e| DnsError::Temporary(format!("resolver: {e}")))
}

fn classify(e: NetError) -> DnsError {
    match &e {
        NetError::Dns(HickoryDnsError::NoRecordsFound(nr)) => match nr.response_code {
            ResponseCode::NXDomain => DnsError::NxDomain,
            ResponseCode::NoError => DnsError::NoData,
            rc => DnsError::Temporary(format!("server answered {rc}")),
        },
        NetError::Dns(HickoryDnsError::ResponseCode(rc)) => {
            DnsError::Temporary(format!("server answered {rc}"))
        }
        _ => DnsError::Temporary(e.to_string()),
    }
}

/// Fully qualifies a name so no search list applies.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl Resolver for HickoryResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsError> {
        let answer = self.inner.mx_lookup(fqdn(domain)).await.map_err(classify)?;
        Ok(answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some(MxRecord {
                    preference: mx.preference,
                    exchange: mx
                        .exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                }),
                _ => None,
            })
            .collect())
    }

    async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let answer = self.inner.lookup_ip(fqdn(host)).await.map_err(classify)?;
        Ok(answer.iter().collect())
    }
}
