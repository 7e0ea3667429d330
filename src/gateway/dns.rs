//! [`Counted`]: a delivery [`Resolver`] that counts its lookups by type and
//! result (`postern_dns_lookups_total`), around the real one.

use postern_delivery::{DnsError, MxRecord, Resolver};
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
}
