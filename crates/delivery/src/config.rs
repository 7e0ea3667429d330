//! The delivery settings: `[delivery]` and `[[route]]` of the
//! configuration file, owned here because this crate is what reads them
//! (the binary's schema embeds them). [`split_host_port`] is how a route's
//! host is read, for delivery and for the binary's validation alike; a host
//! it cannot read is a [`HostPortError`].

use postern_core::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// `[delivery]`: outbound SMTP and DNS.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Remote SMTP port for MX and implicit-MX hosts.
    pub port: u16,
    /// DNS servers (ip:port); empty means the system resolver.
    pub nameservers: Vec<SocketAddr>,
    /// MX hosts tried per destination per attempt.
    pub max_mx_hosts: usize,
    /// Addresses tried per MX host.
    pub max_addresses_per_host: usize,
    /// Delivery attempts in flight in total.
    pub max_concurrency: usize,
    /// Connections in flight per destination (next hop).
    pub max_per_destination: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// How long an idle outbound connection is kept for reuse.
    pub idle_timeout: HumanDuration,
    /// TCP connect timeout.
    pub connect_timeout: HumanDuration,
    /// Per-command reply timeout (RFC 5321 4.5.3.2: 5 minutes).
    pub command_timeout: HumanDuration,
    /// DNS query timeout.
    pub dns_timeout: HumanDuration,
    /// Try STARTTLS when offered (opportunistic, unauthenticated).
    pub starttls: bool,
    /// Octets a next hop may send for one reply, counted on the wire (a
    /// line without end, or endless continuation lines, are cut off here and
    /// the message deferred: "next hop sent an over-long reply"). The
    /// STARTTLS step, which includes the TLS handshake, may take four times
    /// this. At least 32 KiB.
    pub max_reply_size: ByteSize,
    /// Longest the work on one destination of one message may take (DNS,
    /// connecting, every next hop tried, the transaction); past it the
    /// recipients are deferred (451 4.4.2). Waiting for a delivery slot does
    /// not count. Kept below `workers.delivery_deadline` (at most 4/5 of
    /// it), so a slow next hop is never taken for a hung gateway.
    pub attempt_timeout: HumanDuration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let s = |n: u64| HumanDuration(Duration::from_secs(n));
        DeliveryConfig {
            port: 25,
            nameservers: Vec::new(),
            max_mx_hosts: 5,
            max_addresses_per_host: 2,
            max_concurrency: 200,
            max_per_destination: 20,
            max_messages_per_connection: 100,
            idle_timeout: s(10),
            connect_timeout: s(30),
            command_timeout: s(300),
            dns_timeout: s(5),
            starttls: true,
            max_reply_size: ByteSize(64 * 1024),
            attempt_timeout: s(10 * 60),
        }
    }
}

/// `[[route]]`: a static next hop, winning over MX.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Recipient domain, or `"*"` for everything without a more exact route.
    pub domain: String,
    /// Next hops in order, `host`, `host:port`, `ip:port` or `[ipv6]:port`.
    pub hosts: Vec<String>,
}

/// Why a route host was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    /// What follows the last `:` is not a port number.
    #[error("invalid port in {input:?}")]
    Port {
        /// The host as written.
        input: String,
        /// Why the port did not parse.
        source: std::num::ParseIntError,
    },
    /// The host is neither an IP address nor a domain name.
    #[error("invalid host {input:?}")]
    Host {
        /// The host as written.
        input: String,
    },
}

/// Splits a route host into name and port (default `default_port`).
pub fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), HostPortError> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = s
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        return Ok((ip.to_string(), default_port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|source| HostPortError::Port {
                input: s.to_string(),
                source,
            })?,
        ),
        None => (s, default_port),
    };
    let ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok {
        Ok((host.to_ascii_lowercase(), port))
    } else {
        Err(HostPortError::Host {
            input: s.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:2526", 25),
            Ok(("127.0.0.1".into(), 2526))
        );
        assert_eq!(
            split_host_port("mx.Example.test", 25),
            Ok(("mx.example.test".into(), 25))
        );
        assert_eq!(split_host_port("[::1]:26", 25), Ok(("::1".into(), 26)));
        assert!(split_host_port("bad host:x", 25).is_err());
    }
}
