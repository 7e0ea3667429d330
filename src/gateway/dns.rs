//! [`Counted`]: a delivery [`Resolver`] that counts its lookups by type and
//! result (`postern_dns_lookups_total`), around the real one.

use postern_delivery::{DnsError, MxRecord, Resolver, TlsaAnswer};
use prometheus::IntCounterVec;
use std::net::IpAddr;

pub struct Counted<R> {
    pub inner: R,
    pub lookups: IntCounterVec,
}

impl<R> Counted<R> {
    fn count<T>(&self, kind: &str, r: &Result<T, DnsError>) {
        let result = match r {
            Ok(_) => "ok",
            Err(DnsError::NxDomain) => "nxdomain",
            Err(DnsError::NoData) => "nodata",
            Err(DnsError::Temporary(postern_delivery::TemporaryDns::Bogus(_))) => "bogus",
            Err(DnsError::Temporary(_)) => "error",
        };
        self.lookups.with_label_values(&[kind, result]).inc();
    }
}

impl<R: Resolver> Resolver for Counted<R> {
    async fn mx(&self, domain: &str) -> Result<Vec<MxRecord>, DnsError> {
        let r = self.inner.mx(domain).await;
        self.count("mx", &r);
        r
    }

    async fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let r = self.inner.addrs(host).await;
        self.count("address", &r);
        r
    }

    async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        let r = self.inner.txt(name).await;
        self.count("txt", &r);
        r
    }

    async fn tlsa(&self, host: &str, port: u16) -> Result<TlsaAnswer, DnsError> {
        let r = self.inner.tlsa(host, port).await;
        self.count("tlsa", &r);
        r
    }
}

/// MTA-STS policies kept in the queue's state tree (`mta-sts/<domain>`), so
/// they survive restarts.
pub struct QueueStsStore(pub postern_queue::Queue);

const STS_PREFIX: &str = "mta-sts/";

impl postern_delivery::StsStore for QueueStsStore {
    fn load(&self, domain: &str) -> Option<Vec<u8>> {
        self.0
            .state_get(&format!("{STS_PREFIX}{domain}"))
            .ok()
            .flatten()
    }

    fn save(&self, domain: &str, entry: &[u8]) {
        if let Err(e) = self.0.state_put(&format!("{STS_PREFIX}{domain}"), entry) {
            tracing::warn!(%domain, error = %e, "cannot keep the MTA-STS policy");
        }
    }

    fn domains(&self) -> Vec<String> {
        self.0
            .state_keys(STS_PREFIX)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|k| k.strip_prefix(STS_PREFIX).map(str::to_string))
            .collect()
    }
}
