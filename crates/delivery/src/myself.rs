//! Loop detection: a next hop that is ourselves ("mail for X loops back to
//! myself", as Postfix says).
//!
//! [`Myself`] is what the gateway knows of itself: every address it accepts
//! SMTP on and its host name. [`before_myself`] takes a domain's hops in the
//! order they would be tried and keeps those ranked better than the first
//! hop that is us: as Postfix does for a backup MX, the MX host that is us
//! and every MX host of its preference or worse are dropped (a route host
//! that is us, and every route host after it). When nothing is left, the
//! domain's mail could only come back to us: [`loop_reason`], a permanent
//! 5.4.6 for its recipients. A hop is us when one of its addresses reaches
//! one of our listening sockets ([`is_listen_addr`]: same port, and the same
//! IP, or a wildcard listen IP and an address of this machine) or, for an MX
//! target, its name is our host name, or its IP is one of our
//! [`Myself::proxy`] addresses (we receive mail there through a proxy or
//! NAT, on whatever port: Postfix's proxy_interfaces).
//!
//! Port redirection or NAT hairpinning that nobody configured is caught
//! after connecting: a next hop whose EHLO reply names it as our own host
//! name is us ([`greeted_as_me`], Postfix's "replied to HELO/EHLO with my
//! own hostname"), and its recipients fail with 5.4.6 as well.
//!
//! The decision is pure, with "is this address on this machine?" passed in;
//! [`is_local`] answers it in production by asking the kernel's routing.

use crate::nexthop::Hop;
use postern_core::Reason;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Our own SMTP endpoints: a next hop among them is a mail loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Myself {
    /// Every address we accept SMTP on (`server.listen`,
    /// `server.submission_listen`, `tls.implicit_listen`). A wildcard IP
    /// (`0.0.0.0`, `::`) stands for every address of this machine (`::` for
    /// IPv4 too, as a dual-stack socket accepts both); port 0 matches
    /// nothing.
    pub listen: Vec<SocketAddr>,
    /// Our host name (`server.hostname`), also what we say in EHLO: an MX
    /// target of that name is us, whatever its addresses.
    pub hostname: String,
    /// Addresses we receive mail on by way of a proxy, a load balancer or
    /// NAT (`server.proxy_addresses`): a next hop at one of them is us,
    /// whatever the port.
    pub proxy: Vec<IpAddr>,
}

impl Myself {
    /// True when `hop` is us: an MX target named as we are, or an address
    /// that reaches one of our listening sockets.
    fn is_me(&self, hop: &Hop, is_local: &dyn Fn(IpAddr) -> bool) -> bool {
        (hop.mx && same_host(&hop.name, &self.hostname))
            || hop.addrs.iter().any(|a| {
                is_listen_addr(*a, &self.listen, is_local)
                    || self.proxy.contains(&a.ip().to_canonical())
            })
    }
}

/// The hops to try: those ranked better than the first hop that is us (all
/// of them when none is). `None` when that leaves nothing: every way to the
/// domain leads back to us.
pub(crate) fn before_myself(
    hops: Vec<Hop>,
    me: &Myself,
    is_local: &dyn Fn(IpAddr) -> bool,
) -> Option<Vec<Hop>> {
    let Some(mine) = hops.iter().find(|h| me.is_me(h, is_local)).map(|h| h.rank) else {
        return Some(hops);
    };
    let kept: Vec<Hop> = hops.into_iter().filter(|h| h.rank < mine).collect();
    (!kept.is_empty()).then_some(kept)
}

/// The permanent failure of every recipient of `domain` when its mail would
/// come back to us (RFC 3463 5.4.6: routing loop detected).
pub(crate) fn loop_reason(domain: &str) -> Reason {
    Reason::local(
        554,
        "5.4.6",
        format!("mail for {domain} loops back to myself"),
    )
}

/// True when a next hop's EHLO reply (its first line, without the code)
/// names the host as `hostname`: we are talking to ourselves.
pub(crate) fn greeted_as_me(first_line: &str, hostname: &str) -> bool {
    first_line
        .split_whitespace()
        .next()
        .is_some_and(|name| same_host(name, hostname))
}

/// The permanent failure of every recipient when the next hop `host`
/// answered EHLO with our own host name (RFC 3463 5.4.6).
pub(crate) fn greeted_reason(host: &str, hostname: &str) -> Reason {
    Reason {
        remote: Some(host.to_string()),
        ..Reason::local(
            554,
            "5.4.6",
            format!(
                "mail loops back to myself: {host} replied to EHLO with my own hostname {hostname}"
            ),
        )
    }
}

/// True when a connection to `addr` would reach one of the sockets
/// listening on `listen`: the same port (never 0), and the same IP, or a
/// wildcard listen IP of a family that takes `addr` and an `addr` that is
/// on this machine (`is_local`). An IPv4-mapped IPv6 address counts as the
/// IPv4 address, and the unspecified address as loopback (connecting to
/// `0.0.0.0` reaches this machine).
pub(crate) fn is_listen_addr(
    addr: SocketAddr,
    listen: &[SocketAddr],
    is_local: &dyn Fn(IpAddr) -> bool,
) -> bool {
    let ip = reached(addr.ip());
    listen.iter().any(|l| {
        let ours = l.ip().to_canonical();
        l.port() != 0
            && l.port() == addr.port()
            && (ours == ip || (wildcard_takes(ours, ip) && is_local(ip)))
    })
}

/// The address a connection to `ip` reaches.
fn reached(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// True when `listen` is a wildcard IP whose socket takes connections to
/// addresses of `ip`'s family.
fn wildcard_takes(listen: IpAddr, ip: IpAddr) -> bool {
    match listen {
        IpAddr::V4(l) => l.is_unspecified() && ip.is_ipv4(),
        IpAddr::V6(l) => l.is_unspecified(),
    }
}

/// Host names equal but for case and a trailing dot; an empty name is
/// nobody's.
fn same_host(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('.'), b.trim_end_matches('.'));
    !a.is_empty() && a.eq_ignore_ascii_case(b)
}

/// True when `ip` is an address of this machine. Loopback addresses are.
/// Otherwise the kernel's routing says: a UDP socket "connected" to `ip`
/// (nothing is sent) gets `ip` itself as its source address only when `ip`
/// is ours. Binding a socket to `ip` would be cheaper still, but succeeds
/// for any address where `ip_nonlocal_bind` or similar is set (high
/// availability set-ups), which would make every next hop look like us.
pub(crate) fn is_local(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    let any = match ip {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let Ok(socket) = UdpSocket::bind(any) else {
        return false;
    };
    // The discard port: any port does, nothing is sent.
    socket.connect(SocketAddr::new(ip, 9)).is_ok()
        && socket.local_addr().is_ok_and(|a| a.ip() == ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// This machine, for the tables: loopback and 192.0.2.7.
    fn local(a: IpAddr) -> bool {
        a.is_loopback() || a == ip("192.0.2.7")
    }

    fn me() -> Myself {
        Myself {
            listen: vec![sa("127.0.0.1:2525"), sa("0.0.0.0:25"), sa("[::]:587")],
            hostname: "gw.example.test".into(),
            proxy: vec![ip("203.0.113.25")],
        }
    }

    fn hop(name: &str, addrs: &[&str], rank: u32, mx: bool) -> Hop {
        Hop {
            name: name.into(),
            addrs: addrs.iter().copied().map(sa).collect(),
            rank,
            mx,
            secure: false,
        }
    }

    #[test]
    fn listening_addresses() {
        let cases = [
            ("127.0.0.1:2525", true, "the listening socket itself"),
            (
                "127.0.0.1:2526",
                false,
                "another port on the same IP (a sink)",
            ),
            (
                "127.0.0.2:2525",
                false,
                "a listen IP that is not a wildcard",
            ),
            ("[::ffff:127.0.0.1]:2525", true, "IPv4-mapped"),
            ("192.0.2.7:25", true, "a local address, IPv4 wildcard"),
            ("198.51.100.1:25", false, "a remote address, IPv4 wildcard"),
            ("127.0.0.5:25", true, "loopback, IPv4 wildcard"),
            ("[::1]:25", false, "IPv6, IPv4 wildcard"),
            ("[::1]:587", true, "IPv6, IPv6 wildcard"),
            ("127.0.0.1:587", true, "IPv4, IPv6 wildcard (dual stack)"),
            ("198.51.100.1:587", false, "remote, IPv6 wildcard"),
            ("0.0.0.0:2525", true, "the unspecified address is loopback"),
            ("[::]:25", false, "IPv6 unspecified is ::1, IPv4 wildcard"),
        ];
        for (addr, want, why) in cases {
            assert_eq!(
                is_listen_addr(sa(addr), &me().listen, &local),
                want,
                "{addr}: {why}"
            );
        }
        // Port 0 (any port) is nobody's port.
        let any_port = [sa("127.0.0.1:0")];
        assert!(!is_listen_addr(sa("127.0.0.1:0"), &any_port, &local));
        assert!(!is_listen_addr(sa("127.0.0.1:25"), &any_port, &local));
        // Nothing listening: nothing is us.
        assert!(!is_listen_addr(sa("127.0.0.1:25"), &[], &local));
    }

    /// (case, hops, what is left: `None` = a loop).
    type Case = (&'static str, Vec<Hop>, Option<Vec<Hop>>);

    #[test]
    fn hops_cut_before_myself() {
        let ext = |rank| hop("mx1.other.test", &["198.51.100.1:25"], rank, true);
        let us = |rank| hop("mx2.other.test", &["192.0.2.7:25"], rank, true);
        let cases: Vec<Case> = vec![
            ("nothing of ours", vec![ext(10)], Some(vec![ext(10)])),
            (
                "a route to ourselves",
                vec![hop("127.0.0.1", &["127.0.0.1:2525"], 0, false)],
                None,
            ),
            (
                "a route with us second: the first host only",
                vec![
                    hop("127.0.0.9", &["127.0.0.9:2526"], 0, false),
                    hop("127.0.0.1", &["127.0.0.1:2525"], 1, false),
                ],
                Some(vec![hop("127.0.0.9", &["127.0.0.9:2526"], 0, false)]),
            ),
            (
                "a route to the sink's port on our IP",
                vec![hop("127.0.0.1", &["127.0.0.1:2526"], 0, false)],
                Some(vec![hop("127.0.0.1", &["127.0.0.1:2526"], 0, false)]),
            ),
            ("our MX is the best", vec![us(10), ext(20)], None),
            (
                "we are the backup MX",
                vec![ext(10), us(20)],
                Some(vec![ext(10)]),
            ),
            ("an MX of our preference", vec![ext(10), us(10)], None),
            (
                "an MX of our preference, us first",
                vec![us(10), ext(10)],
                None,
            ),
            (
                "one of an MX host's addresses is ours",
                vec![hop(
                    "mx.other.test",
                    &["198.51.100.1:25", "192.0.2.7:25"],
                    10,
                    true,
                )],
                None,
            ),
            (
                "an MX target named as we are (case, trailing dot)",
                vec![hop("GW.Example.Test.", &["198.51.100.9:25"], 5, true)],
                None,
            ),
            (
                "a route host named as we are is judged by its address",
                vec![hop("gw.example.test", &["198.51.100.9:2526"], 0, false)],
                Some(vec![hop(
                    "gw.example.test",
                    &["198.51.100.9:2526"],
                    0,
                    false,
                )]),
            ),
            (
                "an address literal of ours",
                vec![hop("192.0.2.7", &["192.0.2.7:25"], 0, false)],
                None,
            ),
            (
                "an MX at our address behind NAT, on any port",
                vec![us(5), ext(10)]
                    .into_iter()
                    .map(|mut h| {
                        if h.rank == 5 {
                            h.addrs = vec![sa("203.0.113.25:25")];
                        }
                        h
                    })
                    .collect(),
                None,
            ),
            (
                "a route to our NAT address on another port",
                vec![hop(
                    "203.0.113.25",
                    &["[::ffff:203.0.113.25]:2525"],
                    0,
                    false,
                )],
                None,
            ),
        ];
        for (name, hops, want) in cases {
            assert_eq!(before_myself(hops, &me(), &local), want, "{name}");
        }
        // Without a host name, only addresses count.
        let nameless = Myself {
            hostname: String::new(),
            ..me()
        };
        let unnamed = vec![hop("", &["198.51.100.9:25"], 0, true)];
        assert_eq!(
            before_myself(unnamed.clone(), &nameless, &local),
            Some(unnamed)
        );
    }

    #[test]
    fn a_next_hop_greeting_with_our_name_is_us() {
        assert!(greeted_as_me(
            "gw.example.test Postern ESMTP",
            "gw.example.test"
        ));
        assert!(greeted_as_me("GW.example.test.", "gw.example.test"));
        assert!(!greeted_as_me("sink.test ESMTP", "gw.example.test"));
        assert!(!greeted_as_me("", "gw.example.test"));
        assert!(!greeted_as_me("gw.example.test", ""), "nameless: nobody");
        let r = greeted_reason("mx.other.test", "gw.example.test");
        assert_eq!((r.code, r.status.as_str()), (554, "5.4.6"));
        assert_eq!(r.remote.as_deref(), Some("mx.other.test"));
    }

    #[test]
    fn loop_reason_is_permanent_5_4_6() {
        let r = loop_reason("example.test");
        assert_eq!((r.code, r.status.as_str()), (554, "5.4.6"));
        assert_eq!(r.text, "mail for example.test loops back to myself");
        assert_eq!(r.remote, None);
    }

    #[test]
    fn this_machine() {
        assert!(is_local(ip("127.0.0.1")));
        assert!(is_local(ip("127.0.0.5")));
        assert!(!is_local(ip("0.0.0.0")));
        assert!(!is_local(ip("224.0.0.1")));
        // TEST-NET-1 is nobody's: unroutable here, or routed elsewhere.
        assert!(!is_local(ip("192.0.2.1")));
    }
}
