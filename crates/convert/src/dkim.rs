//! DKIM signing (RFC 6376) with keys from PEM files: RSA-SHA256 (PKCS#1 or
//! PKCS#8) and Ed25519-SHA256 (RFC 8463, PKCS#8). Signing is mail-auth's;
//! this module loads keys ([`DkimKey::from_pem`]), picks the key for a sender
//! domain, and returns the `DKIM-Signature` header to prepend
//! ([`DkimKey::sign`]). Always the last change to a message. A key that
//! cannot be loaded or a signature that cannot be made is a [`DkimError`]
//! keeping the library's error as its source.
//!
//! RSA signatures are made with ring ([`RingRsa`], a mail-auth signing key):
//! about a third of the cost of the pure-Rust `rsa` crate's (README
//! "Benchmark"). A key ring refuses (it signs with 2048 to 8192 bits only)
//! falls back to mail-auth's own RSA key. Keys are parsed once, when the
//! configuration is loaded.

use mail_auth::common::crypto::{Algorithm, CryptoError, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
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
    Rsa(DkimSigner<RingRsa, Done>),
    /// A key ring refuses (e.g. 1024 bits).
    RsaFallback(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// An RSA-SHA256 key signing with ring.
struct RingRsa {
    pair: ring::signature::RsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl RingRsa {
    fn from_der(der: &PrivateKeyDer<'_>) -> Option<RingRsa> {
        let pair = match der {
            PrivateKeyDer::Pkcs1(k) => ring::signature::RsaKeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => {
                ring::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
            }
            _ => return None,
        };
        Some(RingRsa {
            pair: pair.ok()?,
            rng: ring::rand::SystemRandom::new(),
        })
    }
}

impl SigningKey for RingRsa {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(256);
        input.write(&mut data);
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &self.rng,
                &data,
                &mut signature,
            )
            .map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))?;
        Ok(signature)
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
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
            "rsa-sha256" => match RingRsa::from_der(&der) {
                Some(k) => Signer::Rsa(
                    DkimSigner::from_key(k)
                        .domain(&domain)
                        .selector(selector)
                        .headers(hs),
                ),
                None => {
                    let k = RsaKey::<Sha256>::from_key_der(der)
                        .map_err(|e| DkimError::BadRsaKey(Box::new(e)))?;
                    Signer::RsaFallback(
                        DkimSigner::from_key(k)
                            .domain(&domain)
                            .selector(selector)
                            .headers(hs),
                    )
                }
            },
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
            Signer::RsaFallback(s) => s.sign(msg),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1024-bit key, made for this test only (`openssl genrsa
    /// -traditional 1024`): ring signs with 2048 bits and more only.
    const SMALL_RSA: &str = "-----BEGIN RSA PRIVATE KEY-----\n\
MIICWwIBAAKBgQC/j2QaD/gK9VVx6f1vPs4vRVh6OY/pWEGc7NAMIWl6U4GaGN+i\n\
DgilX85c3tfiCYR7G/r53VGMA3v+9QyJfGylbA1FN2S0gUUymuH4LoFI5CVFp6gC\n\
t3q1rOz/ZjwxTRBK4kR/YuKT9c93yfCaOAOg+77JbGS1DTmNCu+4YXUj4wIDAQAB\n\
AoGAN01GMN/7U+6PxFsw9zTCgZMbf+2uRkdcadlUFqxurwn8mGgl57r1dAi8osMS\n\
wAbPYFsrkYb7S9iVq31DKU3qbzZD8Jmt/is2R/IE+Dbs7KgkrefCA+d4i7Y/D7by\n\
WGcl6mUJIAXsi6CTnjG8+fdQTvR5Q1HYZpDUQ7iKYRHxHQECQQD9ZcjI14GbmGnB\n\
nd87KQisgnhliOovyLneyEz4BKfONrGaas84/3tU/GD65mDWRIjh3rI9jHdOtNu7\n\
ucITZyCRAkEAwYcHIE8tJNR3xNlyF4mP7O274QbMoUoGbfvqh01NnZ1JB/Aie8RV\n\
ZIrMQ3gK/qvZlDCFAoWk/lhAIMyeIoK3MwJAAo1H3F3vPDXour5wRRRAthwKQluC\n\
oECRPqEdxVGmrvj2COwSciyAfXadM2mmiAHgrwWjHeOQQAaqP9W7Ep7zQQJAQGys\n\
AaR5+c3FRUHCCnXf9Na7edDipDrZYxm+3GXula67linpwNv+NWdDUp6OwnMBDqUM\n\
UmedIpLMXl7fsctkIwJAHyj4o8GQQ49dVQohbSlyIOGcSzkZQCR4XT7cWVgGDjD0\n\
sLgAXupqXbjSQCCfr/8NyElIIQLDKpGrBvJeLswTtw==\n\
-----END RSA PRIVATE KEY-----";

    #[test]
    fn a_key_ring_refuses_signs_through_the_fallback() {
        let k = DkimKey::from_pem("example.test", "s", "rsa-sha256", SMALL_RSA.as_bytes(), &[])
            .unwrap();
        assert!(matches!(k.signer, Signer::RsaFallback(_)));
        let h = k
            .sign(b"From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n")
            .unwrap();
        assert!(
            h.starts_with("DKIM-Signature:") && h.contains("a=rsa-sha256"),
            "{h}"
        );
        assert!(matches!(
            DkimKey::from_pem("example.test", "s", "rsa-sha256", b"junk", &[]),
            Err(DkimError::NotPem(_))
        ));
    }
}
