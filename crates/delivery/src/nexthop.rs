//! Next-hop resolution: from a recipient domain to an ordered list of hops.
//!
//! [`next_hops`] applies, in order: a static route for the exact domain, the
//! `"*"` smart-host route, an address literal, then DNS: MX records sorted by
//! preference with random order inside one preference and at most
//! `max_mx_hosts` of them; null MX (RFC 7505) is a permanent failure; no MX
//! means the domain itself is the implicit MX (RFC 5321 5.1). Failures come
//! back as a ready [`Reason`] with a temporary or permanent verdict. Each
//! [`Hop`] carries its rank (MX preference, or place in the route) and
//! whether it is an MX target, for loop detection (`crate::myself`).

use crate::config::{split_host_port, Route};
use crate::resolve::{DnsError, MxRecord, Resolver};
use postern_core::Reason;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// One host to try, with its addresses in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hop {
    /// Host name (for TLS SNI, logs and DSNs) or the IP literal.
    pub(crate) name: String,
    /// Its addresses with the port, in the order to try them.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Hops of one rank are equals (MX hosts of one preference); hops come
    /// in rank order. The MX preference, a route host's place in its route,
    /// 0 for an address literal or the implicit MX.
    pub(crate) rank: u32,
    /// The host is an MX target (or the implicit MX): our own host name
    /// here means the mail would come back to us.
    pub(crate) mx: bool,
    /// The host came from a DNSSEC-validated MX answer: DANE applies.
    pub(crate) secure: bool,
}

/// Static routes by domain, `"*"` for the smart host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Routes {
    /// Lower-cased domain (or `"*"`) to its hosts and ports, in route order.
    by_domain: HashMap<String, Vec<(String, u16)>>,
}

impl Routes {
    /// Builds the table; invalid hosts are skipped (config validation
    /// reports them before we get here).
    pub(crate) fn new(routes: &[Route], default_port: u16) -> Routes {
        let mut by_domain = HashMap::new();
        for r in routes {
            let hosts = r
                .hosts
                .iter()
                .filter_map(|h| split_host_port(h, default_port).ok())
                .collect();
            by_domain.insert(r.domain.to_ascii_lowercase(), hosts);
        }
        Routes { by_domain }
    }

    /// The route for `domain`, exact match first, then `"*"`.
    pub(crate) fn lookup(&self, domain: &str) -> Option<&[(String, u16)]> {
        self.by_domain
            .get(domain)
            .or_else(|| self.by_domain.get("*"))
            .map(|v| v.as_slice())
    }
}

/// What next-hop resolution needs from configuration.
#[derive(Debug, Clone)]
pub(crate) struct HopLimits {
    /// SMTP port of MX hosts, the implicit MX and address literals.
    pub(crate) port: u16,
    /// MX hosts tried per destination per attempt.
    pub(crate) max_mx_hosts: usize,
    /// Addresses tried per host (at least one).
    pub(crate) max_addresses_per_host: usize,
}

fn temp(text: String) -> Reason {
    Reason::local(451, "4.4.3", text)
}

fn perm(code: u16, status: &str, text: String) -> Reason {
    Reason::local(code, status, text)
}

/// Resolves the hops for `domain`. `Err` carries the failure for every
/// recipient of the domain: permanent when its code is 5xx.
pub(crate) async fn next_hops<R: Resolver>(
    domain: &str,
    routes: &Routes,
    resolver: &R,
    lim: &HopLimits,
) -> Result<Vec<Hop>, Reason> {
    if let Some(hosts) = routes.lookup(domain) {
        return route_hops(domain, hosts, resolver, lim).await;
    }
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return literal_hop(domain, lit, lim.port);
    }
    let mx = match resolver.mx(domain).await {
        Ok(mx) => mx,
        Err(DnsError::NxDomain) => {
            return Err(perm(
                550,
                "5.1.2",
                format!("domain {domain} does not exist"),
            ))
        }
        Err(DnsError::NoData) => Vec::new(),
        Err(DnsError::Temporary(e)) => return Err(temp(format!("MX lookup for {domain}: {e}"))),
    };
    if mx
        .iter()
        .any(|m| m.exchange.is_empty() || m.exchange == ".")
    {
        return Err(perm(
            556,
            "5.1.10",
            format!("{domain} does not accept mail (null MX)"),
        ));
    }
    if mx.is_empty() {
        return implicit_mx(domain, resolver, lim).await;
    }
    mx_hops(domain, mx, resolver, lim).await
}

/// The hops of a static route: every host that resolves, in route order.
async fn route_hops<R: Resolver>(
    domain: &str,
    hosts: &[(String, u16)],
    resolver: &R,
    lim: &HopLimits,
) -> Result<Vec<Hop>, Reason> {
    let mut hops = Vec::new();
    let mut last = None;
    for (rank, (host, port)) in (0u32..).zip(hosts) {
        match host_addrs(host, *port, resolver, lim).await {
            Ok(h) => hops.push(Hop { rank, ..h }),
            Err(e) => last = Some(e),
        }
    }
    match (hops.is_empty(), last) {
        (true, Some(e)) => Err(temp(format!("route for {domain}: {e}"))),
        (true, None) => Err(temp(format!("route for {domain} has no hosts"))),
        (false, _) => Ok(hops),
    }
}

/// An address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`): one hop, no
/// DNS.
fn literal_hop(domain: &str, lit: &str, port: u16) -> Result<Vec<Hop>, Reason> {
    let ip: IpAddr = lit
        .trim_start_matches("IPv6:")
        .parse()
        .map_err(|_| perm(550, "5.1.2", format!("bad address literal {domain}")))?;
    Ok(vec![Hop {
        name: ip.to_string(),
        addrs: vec![SocketAddr::new(ip, port)],
        rank: 0,
        mx: false,
        secure: false,
    }])
}

/// No MX records: the domain itself is the implicit MX (RFC 5321 5.1).
async fn implicit_mx<R: Resolver>(
    domain: &str,
    resolver: &R,
    lim: &HopLimits,
) -> Result<Vec<Hop>, Reason> {
    match host_addrs(domain, lim.port, resolver, lim).await {
        Ok(h) => Ok(vec![Hop { mx: true, ..h }]),
        Err(DnsError::NxDomain) | Err(DnsError::NoData) => Err(perm(
            550,
            "5.1.2",
            format!("{domain} has no MX and no address records"),
        )),
        Err(DnsError::Temporary(e)) => Err(temp(format!("address lookup for {domain}: {e}"))),
    }
}

/// The MX hosts in [`order_mx`] order, each with its addresses; hosts
/// without addresses are skipped, and none left is a temporary failure.
async fn mx_hops<R: Resolver>(
    domain: &str,
    mx: Vec<MxRecord>,
    resolver: &R,
    lim: &HopLimits,
) -> Result<Vec<Hop>, Reason> {
    // The best preference of each host (a host listed twice counts once).
    let mut prefs: HashMap<String, u16> = HashMap::new();
    for m in &mx {
        let p = prefs.entry(m.exchange.clone()).or_insert(m.preference);
        *p = (*p).min(m.preference);
    }
    let secure = mx.iter().all(|m| m.secure);
    let mut hops = Vec::new();
    let mut last = None;
    for host in order_mx(mx, lim.max_mx_hosts) {
        let rank = prefs.get(&host).copied().map_or(0, u32::from);
        match host_addrs(&host, lim.port, resolver, lim).await {
            Ok(h) => hops.push(Hop {
                rank,
                mx: true,
                secure,
                ..h
            }),
            Err(e) => last = Some(format!("{host}: {e}")),
        }
    }
    if hops.is_empty() {
        return Err(temp(format!(
            "no usable MX host for {domain}: {}",
            last.unwrap_or_default()
        )));
    }
    Ok(hops)
}

/// Preference order, shuffled within one preference, at most `max` hosts,
/// each host once.
pub(crate) fn order_mx(mut mx: Vec<MxRecord>, max: usize) -> Vec<String> {
    let mut rng = rand::rng();
    mx.shuffle(&mut rng);
    mx.sort_by_key(|m| m.preference); // stable: keeps the shuffle within a preference
    let mut out: Vec<String> = Vec::new();
    for m in mx {
        if !out.contains(&m.exchange) {
            out.push(m.exchange);
        }
        if out.len() >= max {
            break;
        }
    }
    out
}

/// The addresses of one host (an IP address is its own), at most
/// `max_addresses_per_host` of them; none is [`DnsError::NoData`].
async fn host_addrs<R: Resolver>(
    host: &str,
    port: u16,
    resolver: &R,
    lim: &HopLimits,
) -> Result<Hop, DnsError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Hop {
            name: host.to_string(),
            addrs: vec![SocketAddr::new(ip, port)],
            rank: 0,
            mx: false,
            secure: false,
        });
    }
    let mut ips = resolver.addrs(host).await?;
    ips.truncate(lim.max_addresses_per_host.max(1));
    if ips.is_empty() {
        return Err(DnsError::NoData);
    }
    Ok(Hop {
        name: host.to_string(),
        addrs: ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
        rank: 0,
        mx: false,
        secure: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::TemporaryDns;
    use std::collections::HashMap;

    /// A resolver answering from a fixed table: the test double.
    #[derive(Default)]
    struct Table {
        mx: HashMap<String, Result<Vec<MxRecord>, DnsError>>,
        a: HashMap<String, Vec<IpAddr>>,
    }

    impl Resolver for Table {
        async fn mx(&self, d: &str) -> Result<Vec<MxRecord>, DnsError> {
            self.mx.get(d).cloned().unwrap_or(Err(DnsError::NxDomain))
        }
        async fn addrs(&self, h: &str) -> Result<Vec<IpAddr>, DnsError> {
            self.a.get(h).cloned().ok_or(DnsError::NxDomain)
        }
    }

    fn lim() -> HopLimits {
        HopLimits {
            port: 25,
            max_mx_hosts: 2,
            max_addresses_per_host: 2,
        }
    }

    fn mx(p: u16, e: &str) -> MxRecord {
        MxRecord {
            secure: false,
            preference: p,
            exchange: e.into(),
        }
    }

    #[tokio::test]
    async fn mx_order_limit_and_routes() {
        let mut t = Table::default();
        t.mx.insert(
            "d.test".into(),
            Ok(vec![mx(20, "b.test"), mx(10, "a.test"), mx(30, "c.test")]),
        );
        for h in ["a.test", "b.test", "c.test"] {
            t.a.insert(h.into(), vec!["127.0.0.1".parse().unwrap()]);
        }
        let hops = next_hops("d.test", &Routes::default(), &t, &lim())
            .await
            .unwrap();
        let names: Vec<_> = hops.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a.test", "b.test"]);
        // Ranked by preference, known as MX targets (loop detection).
        let ranks: Vec<_> = hops.iter().map(|h| (h.rank, h.mx)).collect();
        assert_eq!(ranks, [(10, true), (20, true)]);
        let routes = Routes::new(
            &[Route {
                domain: "d.test".into(),
                hosts: vec!["127.0.0.9:2526".into()],
            }],
            25,
        );
        let hops = next_hops("d.test", &routes, &t, &lim()).await.unwrap();
        assert_eq!(hops[0].addrs, vec!["127.0.0.9:2526".parse().unwrap()]);
        assert_eq!((hops[0].rank, hops[0].mx), (0, false));
    }

    #[tokio::test]
    async fn null_implicit_and_missing() {
        let mut t = Table::default();
        t.mx.insert("null.test".into(), Ok(vec![mx(0, "")]));
        t.mx.insert("implicit.test".into(), Err(DnsError::NoData));
        t.a.insert("implicit.test".into(), vec!["127.0.0.2".parse().unwrap()]);
        t.mx.insert(
            "flaky.test".into(),
            Err(DnsError::Temporary(TemporaryDns::Other("timeout".into()))),
        );
        let r = next_hops("null.test", &Routes::default(), &t, &lim())
            .await
            .unwrap_err();
        assert_eq!((r.code, r.status.as_str()), (556, "5.1.10"));
        let h = next_hops("implicit.test", &Routes::default(), &t, &lim())
            .await
            .unwrap();
        assert_eq!(h[0].addrs[0], "127.0.0.2:25".parse().unwrap());
        let r = next_hops("gone.test", &Routes::default(), &t, &lim())
            .await
            .unwrap_err();
        assert_eq!(r.code, 550);
        let r = next_hops("flaky.test", &Routes::default(), &t, &lim())
            .await
            .unwrap_err();
        assert_eq!(r.code, 451);
    }

    #[tokio::test]
    async fn address_literals_need_no_dns() {
        let t = Table::default();
        let routes = Routes::default();
        let cases: [(&str, Result<&str, u16>); 4] = [
            ("[127.0.0.3]", Ok("127.0.0.3:25")),
            ("[IPv6:::1]", Ok("[::1]:25")),
            ("[not.an.ip]", Err(550)),
            ("[IPv6:nonsense]", Err(550)),
        ];
        for (domain, want) in cases {
            let got = next_hops(domain, &routes, &t, &lim()).await;
            match want {
                Ok(addr) => {
                    let hops = got.unwrap();
                    assert_eq!(hops.len(), 1, "{domain}");
                    assert_eq!(hops[0].addrs, vec![addr.parse().unwrap()], "{domain}");
                }
                Err(code) => assert_eq!(got.unwrap_err().code, code, "{domain}"),
            }
        }
    }

    #[test]
    fn shuffle_stays_within_preference() {
        for _ in 0..50 {
            let o = order_mx(vec![mx(5, "x"), mx(1, "a"), mx(1, "b"), mx(5, "y")], 10);
            assert!(o[..2].contains(&"a".to_string()) && o[..2].contains(&"b".to_string()));
        }
    }
}
