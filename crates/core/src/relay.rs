//! Relay policy: who may send mail where.
//!
//! [`RelayPolicy::may_relay`] is the single decision the listener asks at RCPT
//! time: a recipient in an accepted domain is accepted from anyone; any other
//! recipient only from a trusted network. There is no other path to relay,
//! so Postern is never an open relay by configuration mistake of omission.

use ipnet::IpNet;
use std::net::IpAddr;

/// Accepted domains and trusted client networks.
#[derive(Debug, Clone, Default)]
pub struct RelayPolicy {
    /// Domains we receive mail for from anyone, lower-case, exact match.
    pub accepted_domains: Vec<String>,
    /// Client networks allowed to relay to any domain.
    pub trusted_networks: Vec<IpNet>,
}

impl RelayPolicy {
    /// True when `domain` is one of ours.
    pub fn is_accepted(&self, domain: &str) -> bool {
        self.accepted_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// True when `client` may relay anywhere.
    pub fn is_trusted(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
            v4 => v4,
        };
        self.trusted_networks.iter().any(|n| n.contains(&client))
    }

    /// The relay decision for one recipient domain from one client.
    pub fn may_relay(&self, client: IpAddr, domain: &str) -> bool {
        self.is_accepted(domain) || self.is_trusted(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let p = RelayPolicy {
            accepted_domains: vec!["example.test".into()],
            trusted_networks: vec!["127.0.0.1/32".parse().unwrap()],
        };
        let outside: IpAddr = "192.0.2.9".parse().unwrap();
        let inside: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.may_relay(outside, "EXAMPLE.test"));
        assert!(!p.may_relay(outside, "other.test"));
        assert!(!p.may_relay(outside, "sub.example.test"));
        assert!(p.may_relay(inside, "other.test"));
        assert!(p.may_relay("::ffff:127.0.0.1".parse().unwrap(), "other.test"));
    }
}
