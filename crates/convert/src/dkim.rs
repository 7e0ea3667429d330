//! DKIM signing (RFC 6376) with keys from PEM files: RSA-SHA256 (PKCS#1 or
//! PKCS#8) and Ed25519-SHA256 (RFC 8463, PKCS#8). Signing is mail-auth's;
//! this module loads keys, picks the key for a sender domain, and returns the
//! `DKIM-Signature` header to prepend. Always the last change to a message.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// Headers signed by default (RFC 6376 5.4.1 recommendations).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
];

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One signing identity: domain, selector, key.
pub struct DkimKey {
    pub domain: String,
    pub selector: String,
    signer: Signer,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DkimKey({}, {})", self.domain, self.selector)
    }
}

impl DkimKey {
    /// Loads a key; `algorithm` is "rsa-sha256" or "ed25519-sha256".
    pub fn from_pem(
        domain: &str,
        selector: &str,
        algorithm: &str,
        pem: &[u8],
        headers: &[String],
    ) -> Result<DkimKey, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PEM private key: {e}"))?;
        let domain = domain.to_ascii_lowercase();
        let hs: Vec<String> = if headers.is_empty() {
            DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()
        } else {
            headers.to_vec()
        };
        let signer = match algorithm {
            "rsa-sha256" => {
                let k =
                    RsaKey::<Sha256>::from_key_der(der).map_err(|e| format!("bad RSA key: {e}"))?;
                Signer::Rsa(
                    DkimSigner::from_key(k)
                        .domain(&domain)
                        .selector(selector)
                        .headers(hs),
                )
            }
            "ed25519-sha256" => {
                let PrivateKeyDer::Pkcs8(p) = der else {
                    return Err("an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)".into());
                };
                let k = Ed25519Key::from_pkcs8_der(p.secret_pkcs8_der())
                    .map_err(|e| format!("bad Ed25519 key: {e}"))?;
                Signer::Ed25519(
                    DkimSigner::from_key(k)
                        .domain(&domain)
                        .selector(selector)
                        .headers(hs),
                )
            }
            other => return Err(format!("unknown DKIM algorithm {other:?}")),
        };
        Ok(DkimKey {
            domain,
            selector: selector.to_string(),
            signer,
        })
    }

    /// The `DKIM-Signature` header field (with CRLF) for `msg`.
    pub fn sign(&self, msg: &[u8]) -> Result<String, String> {
        let sig = match &self.signer {
            Signer::Rsa(s) => s.sign(msg),
            Signer::Ed25519(s) => s.sign(msg),
        };
        sig.map(|s| s.to_header())
            .map_err(|e| format!("DKIM signing failed: {e}"))
    }
}

/// The key for `domain`: an exact match first, then a parent domain.
pub fn key_for<'a>(keys: &'a [DkimKey], domain: &str) -> Option<&'a DkimKey> {
    let domain = domain.to_ascii_lowercase();
    keys.iter().find(|k| k.domain == domain).or_else(|| {
        keys.iter()
            .find(|k| domain.ends_with(&format!(".{}", k.domain)))
    })
}
