//! The DNS client of inbound authentication. [`Authenticator`] wraps
//! mail-auth's verifier on a hickory resolver built from our own
//! [`DnsSettings`] (the configured nameservers over UDP with TCP fallback
//! for truncated answers, or the system resolver), so no mail-auth or
//! hickory type crosses this crate's boundary. [`Authenticator::verify_dkim`]
//! checks DKIM signatures on their own (tests and benchmarks verify what the
//! outbound pipeline signed). A resolver that cannot be built (an unreadable
//! /etc/resolv.conf) is a [`ResolverError`].
//!
//! The resolver comes from `postern-dns`, as delivery's does, so both sides
//! of the gateway ask DNS the same way.

use crate::Message;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};

/// Where the authentication checks send their DNS queries: the same
/// settings, and the same resolver options, as delivery's.
pub use postern_dns::DnsConfig as DnsSettings;

/// Why the DNS client could not be built (the system configuration could
/// not be read, or the resolver not built). Opaque; its cause is its source.
#[derive(Debug, thiserror::Error)]
#[error("temporary DNS failure: {0}")]
pub struct ResolverError(#[source] postern_dns::BuildError);

/// mail-auth's SPF, DKIM and DMARC verifier on our resolver. Build it once
/// per process, inside a tokio runtime; clones share the resolver.
#[derive(Clone)]
pub struct Authenticator {
    /// The verifier, owning the resolver it queries.
    inner: MessageAuthenticator,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

/// The verdict on one DKIM signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimCheck {
    /// The signature verified (`dkim=pass`).
    pub pass: bool,
    /// mail-auth's result in words (e.g. `Pass`, `Fail(...)`), for messages.
    pub result: String,
}

impl Authenticator {
    /// The verifier on the resolver `dns` describes. Call inside a tokio
    /// runtime.
    pub fn new(dns: &DnsSettings) -> Result<Authenticator, ResolverError> {
        Ok(Authenticator {
            inner: MessageAuthenticator(postern_dns::build(dns).map_err(ResolverError)?),
        })
    }

    /// Verifies every DKIM signature of `msg`: one [`DkimCheck`] per
    /// signature, none when it is unsigned or cannot be parsed.
    pub async fn verify_dkim(&self, msg: &Message<'_>) -> Vec<DkimCheck> {
        let Some(am) = AuthenticatedMessage::parse(msg.bytes()) else {
            return Vec::new();
        };
        let outputs = self.inner.verify_dkim(&am).await;
        outputs
            .iter()
            .map(|o| DkimCheck {
                pass: *o.result() == DkimResult::Pass,
                result: format!("{:?}", o.result()),
            })
            .collect()
    }

    /// mail-auth's verifier, for the inbound checks.
    pub(crate) fn verifier(&self) -> &MessageAuthenticator {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    #[tokio::test]
    async fn builds_on_given_nameservers_and_finds_no_signature() {
        let dns = DnsSettings {
            nameservers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            timeout: Duration::from_secs(1),
        };
        let auth = Authenticator::new(&dns).unwrap();
        let unsigned = Message::parse(b"From: a@b.test\r\nSubject: x\r\n\r\nbody\r\n");
        assert!(auth.verify_dkim(&unsigned).await.is_empty());
    }
}
