//! DKIM signing (RFC 6376) with keys from PEM files: RSA-SHA256 (PKCS#1 or
//! PKCS#8) and Ed25519-SHA256 (RFC 8463, PKCS#8). Signing is mail-auth's;
//! this module loads keys ([`DkimKey::from_pem`]), picks the key for a sender
//! domain, and returns the `DKIM-Signature` header to prepend
//! ([`DkimKey::sign`]). Always the last change to a message. A key that
//! cannot be loaded or a signature that cannot be made is a [`DkimError`]
//! keeping the library's error as its source.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// Headers signed by default (RFC 6376 5.4.1 recommendations).
const DEFAULT_HEADERS: &[&str] = &[
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

/// Why a key could not be loaded or a message not signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file holds no PEM private key.
    #[error("not a PEM private key: {0}")]
    NotPem(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The PEM key is not a usable RSA key.
    #[error("bad RSA key: {0}")]
    BadRsaKey(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An Ed25519 key in another form than PKCS#8.
    #[error("an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)")]
    Ed25519NotPkcs8,
    /// The PEM key is not a usable Ed25519 key.
    #[error("bad Ed25519 key: {0}")]
    BadEd25519Key(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An algorithm other than rsa-sha256 and ed25519-sha256.
    #[error("unknown DKIM algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// Signing itself failed.
    #[error("DKIM signing failed: {0}")]
    Signing(#[source] Box<dyn std::error::Error + Send + Sync>),
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One signing identity: domain, selector, key.
pub struct DkimKey {
    /// The signing domain (`d=`), lower-case; also the sender domain (or
    /// parent domain) the key is chosen for.
    pub domain: String,
    /// The selector (`s=`) naming the public key in DNS.
    pub selector: String,
    /// The loaded key, ready to sign.
    signer: Signer,
}

impl std::fmt::Debug for DkimKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DkimKey({}, {})", self.domain, self.selector)
    }
}

impl DkimKey {
    /// Loads a key; `algorithm` is "rsa-sha256" or "ed25519-sha256";
    /// `headers` empty signs the default set.
    pub fn from_pem(
        domain: &str,
        selector: &str,
        algorithm: &str,
        pem: &[u8],
        headers: &[String],
    ) -> Result<DkimKey, DkimError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| DkimError::NotPem(Box::new(e)))?;
        let domain = domain.to_ascii_lowercase();
        let hs: Vec<String> = if headers.is_empty() {
            DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()
        } else {
            headers.to_vec()
        };
        let signer = match algorithm {
            "rsa-sha256" => {
                let k = RsaKey::<Sha256>::from_key_der(der)
                    .map_err(|e| DkimError::BadRsaKey(Box::new(e)))?;
                Signer::Rsa(
                    DkimSigner::from_key(k)
                        .domain(&domain)
                        .selector(selector)
                        .headers(hs),
                )
            }
            "ed25519-sha256" => {
                let PrivateKeyDer::Pkcs8(p) = der else {
                    return Err(DkimError::Ed25519NotPkcs8);
                };
                let k = Ed25519Key::from_pkcs8_der(p.secret_pkcs8_der())
                    .map_err(|e| DkimError::BadEd25519Key(Box::new(e)))?;
                Signer::Ed25519(
                    DkimSigner::from_key(k)
                        .domain(&domain)
                        .selector(selector)
                        .headers(hs),
                )
            }
            other => return Err(DkimError::UnknownAlgorithm(other.to_string())),
        };
        Ok(DkimKey {
            domain,
            selector: selector.to_string(),
            signer,
        })
    }

    /// The `DKIM-Signature` header field (with CRLF) for `msg`.
    pub fn sign(&self, msg: &[u8]) -> Result<String, DkimError> {
        let sig = match &self.signer {
            Signer::Rsa(s) => s.sign(msg),
            Signer::Ed25519(s) => s.sign(msg),
        };
        sig.map(|s| s.to_header())
            .map_err(|e| DkimError::Signing(Box::new(e)))
    }
}

/// The key for `domain`: an exact match first, then a parent domain.
pub(crate) fn key_for<'a>(keys: &'a [DkimKey], domain: &str) -> Option<&'a DkimKey> {
    let domain = domain.to_ascii_lowercase();
    keys.iter().find(|k| k.domain == domain).or_else(|| {
        keys.iter()
            .find(|k| domain.ends_with(&format!(".{}", k.domain)))
    })
}
