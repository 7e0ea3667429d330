//! Mail addresses and SMTP paths (RFC 5321 section 4.1.2).
//!
//! Entry points: [`Address::parse`] for `local@domain`, [`parse_path`] for the
//! `<...>` argument of MAIL FROM / RCPT TO. Failure modes are typed
//! ([`AddressError`]) so the listener can answer with the right reply. The
//! domain is stored lower-cased; the local part is kept as written, because
//! only the receiving system may interpret it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest local part RFC 5321 4.5.3.1.1 allows.
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain RFC 5321 4.5.3.1.2 allows.
pub const MAX_DOMAIN: usize = 255;
/// Longest path RFC 5321 4.5.3.1.3 allows, including the angle brackets.
pub const MAX_PATH: usize = 256;

/// Why an address or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path is not enclosed in `<` and `>`.
    #[error("path must be enclosed in <>")]
    NotBracketed,
    /// The path is longer than [`MAX_PATH`].
    #[error("path too long")]
    TooLong,
    /// The path has a source route (`<@a,@b:user@c>`).
    #[error("source routes are not accepted")]
    SourceRoute,
    /// There is no `@domain` (or the path is `<>` where that is refused).
    #[error("address has no @domain")]
    NoDomain,
    /// The local part is empty, too long or malformed.
    #[error("invalid local part")]
    BadLocalPart,
    /// The domain is empty, too long or malformed.
    #[error("invalid domain")]
    BadDomain,
}

/// A mailbox: `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    /// Local part exactly as received (may be a quoted string).
    pub local: String,
    /// Domain, lower-cased; may be an address literal `[192.0.2.1]`.
    pub domain: String,
}

impl Address {
    /// Parses `local@domain` (no angle brackets).
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        let at = s.rfind('@').ok_or(AddressError::NoDomain)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if !valid_local(local) {
            return Err(AddressError::BadLocalPart);
        }
        if !valid_domain(domain) {
            return Err(AddressError::BadDomain);
        }
        Ok(Address {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        })
    }

    /// True when the local part or domain needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Parses an SMTP path `<local@domain>`; `<>` yields `None` (the null
/// reverse-path) when `allow_null` is set.
pub fn parse_path(s: &str, allow_null: bool) -> Result<Option<Address>, AddressError> {
    if s.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    let inner = s
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .ok_or(AddressError::NotBracketed)?;
    if inner.is_empty() {
        return if allow_null {
            Ok(None)
        } else {
            Err(AddressError::NoDomain)
        };
    }
    if inner.starts_with('@') {
        return Err(AddressError::SourceRoute);
    }
    Address::parse(inner).map(Some)
}

fn valid_local(local: &str) -> bool {
    if local.is_empty() || local.len() > MAX_LOCAL_PART {
        return false;
    }
    if let Some(q) = local.strip_prefix('"') {
        let Some(body) = q.strip_suffix('"') else {
            return false;
        };
        let mut escaped = false;
        for c in body.chars() {
            match (escaped, c) {
                (true, ' '..='~') => escaped = false,
                (true, _) => return false,
                (false, '\\') => escaped = true,
                (false, '"') => return false,
                (false, c) if (c as u32) < 0x20 || c == '\x7f' => return false,
                _ => {}
            }
        }
        return !escaped;
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

fn atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn valid_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > MAX_DOMAIN {
        return false;
    }
    if let Some(lit) = domain.strip_prefix('[') {
        let Some(lit) = lit.strip_suffix(']') else {
            return false;
        };
        let lit = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return lit.parse::<std::net::IpAddr>().is_ok();
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let a = parse_path("<Joe@Example.TEST>", false).unwrap().unwrap();
        assert_eq!(a.local, "Joe");
        assert_eq!(a.domain, "example.test");
        assert_eq!(parse_path("<>", true), Ok(None));
        assert_eq!(parse_path("<>", false), Err(AddressError::NoDomain));
        assert_eq!(
            parse_path("joe@example.test", false),
            Err(AddressError::NotBracketed)
        );
        assert_eq!(
            parse_path("<@a,@b:joe@c.test>", false),
            Err(AddressError::SourceRoute)
        );
        assert!(parse_path("<\"a b\"@x.test>", false).is_ok());
        assert!(parse_path("<a..b@x.test>", false).is_err());
        assert!(parse_path("<a@x..test>", false).is_err());
        assert!(parse_path("<a@[127.0.0.1]>", false).is_ok());
        assert!(parse_path("<a@[300.0.0.1]>", false).is_err());
        assert!(parse_path(&format!("<{}@x.test>", "a".repeat(65)), false).is_err());
    }
}
