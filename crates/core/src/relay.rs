//! Relay policy: who may send mail where.
//!
//! [`RelayPolicy::may_relay`] is the single decision the listener asks at RCPT
//! time: a recipient in an accepted domain is accepted from anyone; any other
//! recipient only from a trusted network. There is no other path to relay,
//! so Postern is never an open relay by configuration mistake of omission.
//! [`RecipientList`] answers the other RCPT question: is this user known in a
//! domain we receive for? A malformed list is a [`RecipientListError`].

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

/// A line of a recipients file that is neither `user@domain` nor `@domain`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: expected user@domain or @domain")]
pub struct RecipientListError {
    /// The line's number, counted from 1.
    pub line: usize,
}

/// Valid internal recipients, for the domains listed: `user@domain` lines,
/// or `@domain` to accept every local part there. Domains without entries
/// are not checked.
#[derive(Debug, Clone, Default)]
pub struct RecipientList {
    /// `user@domain` entries, lower-case.
    exact: std::collections::HashSet<String>,
    /// Domains listed as `@domain`: every local part is valid there.
    catch_all: std::collections::HashSet<String>,
    /// Domains the list speaks for.
    domains: std::collections::HashSet<String>,
}

impl RecipientList {
    /// Parses the file text; `#` starts a comment.
    pub fn parse(text: &str) -> Result<RecipientList, RecipientListError> {
        let mut l = RecipientList::default();
        for (i, line) in text.lines().enumerate() {
            let line = line
                .split('#')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if line.is_empty() {
                continue;
            }
            if let Some(domain) = line.strip_prefix('@') {
                l.domains.insert(domain.to_string());
                l.catch_all.insert(domain.to_string());
            } else if let Some((_, domain)) = line
                .rsplit_once('@')
                .filter(|(u, d)| !u.is_empty() && !d.is_empty())
            {
                l.domains.insert(domain.to_string());
                l.exact.insert(line.clone());
            } else {
                return Err(RecipientListError { line: i + 1 });
            }
        }
        Ok(l)
    }

    /// False only for an unknown user in a domain the list covers.
    pub fn accepts(&self, local: &str, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        !self.domains.contains(&domain)
            || self.catch_all.contains(&domain)
            || self
                .exact
                .contains(&format!("{}@{domain}", local.to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn recipient_list() {
        let l = super::RecipientList::parse("# staff\nAlice@Example.test\n@sales.example.test\n")
            .unwrap();
        assert!(l.accepts("alice", "example.test"));
        assert!(l.accepts("ALICE", "EXAMPLE.TEST"));
        assert!(!l.accepts("mallory", "example.test"));
        assert!(l.accepts("anyone", "sales.example.test"));
        assert!(l.accepts("anyone", "unlisted.test"));
        assert_eq!(
            super::RecipientList::parse("# ok\n@x.test\nnonsense")
                .unwrap_err()
                .to_string(),
            "line 3: expected user@domain or @domain"
        );
        assert!(super::RecipientList::parse("nonsense").is_err());
    }

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
