//! DNS behind a small trait.
//!
//! [`Resolver`] answers the two questions delivery asks: the MX records of a
//! domain and the addresses of a host. [`DnsError`] separates "no such
//! records" (which can make a failure permanent) from everything else
//! (timeouts, SERVFAIL, malformed answers: temporary, [`TemporaryDns`], with
//! the resolver's own error kept as its source).
//!
//! [`HickoryResolver`] is the production implementation, built from a
//! [`DnsConfig`] by `postern-dns` (the resolver inbound authentication uses
//! too): hickory-resolver over UDP with TCP fallback for truncated answers, so answers of any legal size work (the IMS died on one over
//! 1,500 bytes). Building it fails with a [`ResolverBuildError`] when the
//! system configuration cannot be read. No hickory type leaves this file:
//! its errors travel inside the opaque [`ResolverFailure`].

use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
pub use postern_dns::DnsConfig;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    /// Lower preferences are tried first (RFC 5321 5.1).
    pub preference: u16,
    /// Exchange host name without the trailing dot; "" or "." for null MX.
    pub exchange: String,
    /// The MX answer was DNSSEC-validated (only a validating resolver says
    /// so): DANE applies to its hosts (RFC 7672 section 2.2.1).
    pub secure: bool,
}

/// The TLSA records at `_<port>._tcp.<host>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsaAnswer {
    /// The records, usable or not.
    pub records: Vec<crate::tls::Tlsa>,
    /// Every record was DNSSEC-validated.
    pub secure: bool,
}

/// Why a lookup gave no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN).
    #[error("domain does not exist")]
    NxDomain,
    /// The name exists but has no records of the type asked for.
    #[error("no records of the requested type")]
    NoData,
    /// Anything else: timeout, SERVFAIL, refused, malformed answer.
    #[error("temporary DNS failure: {0}")]
    Temporary(#[source] TemporaryDns),
}

/// What a temporary DNS failure was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TemporaryDns {
    /// The server answered with an error response code.
    #[error("server answered {code}")]
    Answered {
        /// The response code as the resolver names it (SERVFAIL, REFUSED...).
        code: String,
        /// The resolver's error that carried the answer.
        source: ResolverFailure,
    },
    /// The lookup itself failed: timeout, network error, malformed answer.
    #[error(transparent)]
    Lookup(ResolverFailure),
    /// DNSSEC validation failed: the answer is bogus (a bad or missing
    /// signature where one must be).
    #[error("DNSSEC validation failed (bogus answer): {0}")]
    Bogus(ResolverFailure),
    /// A failure described in words by a [`Resolver`] other than
    /// [`HickoryResolver`] (a wrapper or a test double).
    #[error("{0}")]
    Other(String),
}

/// The resolver library's own error, kept as a source. Opaque: its type is
/// not part of this crate's API; its text and source chain are.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct ResolverFailure(Arc<NetError>);

/// Why [`HickoryResolver::new`] could not build a resolver: the system
/// configuration (/etc/resolv.conf) could not be read, or the resolver not
/// built from its configuration. Opaque; its cause is its source.
#[derive(Debug, thiserror::Error)]
#[error("temporary DNS failure: {0}")]
pub struct ResolverBuildError(#[source] postern_dns::BuildError);

/// The DNS questions delivery asks: [`HickoryResolver`] in production, a
/// table in tests.
pub trait Resolver: Send + Sync + 'static {
    /// The MX records of `domain`, in no particular order.
    fn mx(&self, domain: &str) -> impl Future<Output = Result<Vec<MxRecord>, DnsError>> + Send;
    /// The addresses of `host`, in the order to try them.
    fn addrs(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send;
    /// The TXT records of `name` (MTA-STS, TLS-RPT), each as its strings
    /// joined. None by default.
    fn txt(&self, name: &str) -> impl Future<Output = Result<Vec<Vec<u8>>, DnsError>> + Send {
        let _ = name;
        async { Err(DnsError::NoData) }
    }
    /// The TLSA records for SMTP at `host` (`_<port>._tcp.<host>`) and
    /// whether they validated. None by default.
    fn tlsa(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<TlsaAnswer, DnsError>> + Send {
        let _ = (host, port);
        async { Err(DnsError::NoData) }
    }
}

/// The production [`Resolver`]: hickory-resolver on a [`DnsConfig`], with
/// no hosts file, no search list (names are fully qualified) and two
/// attempts per question.
pub struct HickoryResolver {
    inner: TokioResolver,
    /// DNSSEC-validating, for MX, addresses and TLSA when DANE is in use.
    validating: Option<TokioResolver>,
}

impl HickoryResolver {
    /// Builds the resolver. Call inside a tokio runtime.
    pub fn new(config: &DnsConfig) -> Result<Self, ResolverBuildError> {
        let inner = postern_dns::build(config).map_err(ResolverBuildError)?;
        Ok(HickoryResolver {
            inner,
            validating: None,
        })
    }

    /// Validates MX, address and TLSA answers with DNSSEC from now on
    /// (DANE), trusting `anchor` (DNSKEY records in zone-file form) or the
    /// IANA root keys. TXT lookups stay unvalidated.
    pub fn validating(
        mut self,
        config: &DnsConfig,
        anchor: Option<&str>,
    ) -> Result<Self, ResolverBuildError> {
        self.validating =
            Some(postern_dns::build_validating(config, anchor).map_err(ResolverBuildError)?);
        Ok(self)
    }

    /// The resolver for MX, address and TLSA questions.
    fn routing(&self) -> &TokioResolver {
        self.validating.as_ref().unwrap_or(&self.inner)
    }
}

/// Sorts a hickory error into ours, keeping it as the source.
fn classify(e: NetError) -> DnsError {
    let answered = match &e {
        NetError::Dns(HickoryDnsError::NoRecordsFound(nr)) => match nr.response_code {
            ResponseCode::NXDomain => return DnsError::NxDomain,
            ResponseCode::NoError => return DnsError::NoData,
            rc => Some(rc.to_string()),
        },
        NetError::Dns(HickoryDnsError::ResponseCode(rc)) => Some(rc.to_string()),
        NetError::Dns(HickoryDnsError::DnssecBogus) => {
            return DnsError::Temporary(TemporaryDns::Bogus(ResolverFailure(Arc::new(e))))
        }
        NetError::Dns(HickoryDnsError::Nsec { proof, .. }) if proof.is_bogus() => {
            return DnsError::Temporary(TemporaryDns::Bogus(ResolverFailure(Arc::new(e))))
        }
        _ => None,
    };
    let source = ResolverFailure(Arc::new(e));
    DnsError::Temporary(match answered {
        Some(code) => TemporaryDns::Answered { code, source },
        None => TemporaryDns::Lookup(source),
    })
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
        let answer = self
            .routing()
            .mx_lookup(fqdn(domain))
            .await
            .map_err(classify)?;
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
                    secure: r.proof.is_secure(),
                }),
                _ => None,
            })
            .collect())
    }

    async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let answer = self
            .routing()
            .lookup_ip(fqdn(host))
            .await
            .map_err(classify)?;
        Ok(answer.iter().collect())
    }

    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        let answer = self.inner.txt_lookup(fqdn(name)).await.map_err(classify)?;
        Ok(answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
                _ => None,
            })
            .collect())
    }

    async fn tlsa(&self, host: &str, port: u16) -> Result<TlsaAnswer, DnsError> {
        let Some(v) = &self.validating else {
            return Err(DnsError::NoData);
        };
        let name = fqdn(&format!("_{port}._tcp.{host}"));
        let answer = v.tlsa_lookup(name).await.map_err(classify)?;
        let mut secure = true;
        let records = answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TLSA(t) => {
                    secure &= r.proof.is_secure();
                    Some(crate::tls::Tlsa {
                        usage: t.cert_usage.into(),
                        selector: t.selector.into(),
                        matching: t.matching.into(),
                        data: t.cert_data.clone(),
                    })
                }
                _ => None,
            })
            .collect::<Vec<_>>();
        Ok(TlsaAnswer {
            secure: secure && !records.is_empty(),
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn failures_keep_the_resolver_error_and_their_text() {
        let e = classify(NetError::Timeout);
        assert!(matches!(e, DnsError::Temporary(TemporaryDns::Lookup(_))));
        assert_eq!(
            e.to_string(),
            format!("temporary DNS failure: {}", NetError::Timeout)
        );
        assert!(e.source().is_some());

        let servfail = NetError::Dns(HickoryDnsError::ResponseCode(ResponseCode::ServFail));
        let e = classify(servfail);
        assert_eq!(
            e.to_string(),
            format!(
                "temporary DNS failure: server answered {}",
                ResponseCode::ServFail
            )
        );
        let DnsError::Temporary(t) = &e else {
            panic!("SERVFAIL is temporary: {e:?}");
        };
        assert!(matches!(t, TemporaryDns::Answered { .. }));
        assert!(t.source().is_some());
    }

    #[test]
    fn names_are_fully_qualified() {
        assert_eq!(fqdn("example.test"), "example.test.");
        assert_eq!(fqdn("example.test."), "example.test.");
    }
}
