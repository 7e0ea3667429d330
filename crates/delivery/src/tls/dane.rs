//! DANE for SMTP (RFC 7672): which TLSA records are usable and whether a
//! next hop's certificate chain matches them.
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable for SMTP (section 3.1.3: the
//! PKIX usages are not); selectors Cert(0) and SPKI(1), matching Full(0),
//! SHA2-256(1) and SHA2-512(2). [`check`] runs after STARTTLS and before
//! MAIL FROM:
//! - DANE-EE: the leaf certificate (or its public key) matches a record.
//!   No name check and no expiry check (section 3.1.1).
//! - DANE-TA: a certificate the server sent matches a record; it is then
//!   the trust anchor, the leaf must chain to it (with the server's other
//!   certificates as intermediates), be within its validity and carry one of
//!   the reference names (the MX host name, section 3.2.2).
//!
//! Pure: no I/O. The chain comes from rustls (DER, leaf first).

use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;
use std::fmt;

/// One TLSA record (RFC 6698 section 2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Tlsa {
    /// Certificate usage: 2 DANE-TA, 3 DANE-EE (0 and 1 are unusable here).
    pub usage: u8,
    /// Selector: 0 whole certificate, 1 SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 exact, 1 SHA2-256, 2 SHA2-512.
    pub matching: u8,
    /// The association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// True for the records RFC 7672 lets SMTP use.
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }

    /// Does `cert` (DER) match this record's selector and matching type?
    fn matches(&self, cert: &[u8]) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.to_vec(),
            1 => match spki_of(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected).as_ref() == self.data,
            2 => ring::digest::digest(&ring::digest::SHA512, &selected).as_ref() == self.data,
            _ => false,
        }
    }
}

impl fmt::Display for Tlsa {
    /// Presentation form, as in a zone file and TLS-RPT `policy-string`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The SubjectPublicKeyInfo of a DER certificate, as DER.
fn spki_of(cert: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(ee.subject_public_key_info().as_ref().to_vec())
}

/// Why a chain did not satisfy a TLSA set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaneMismatch {
    /// No record matched any certificate the server sent.
    #[error("no TLSA record matches the certificate chain")]
    NoMatch,
    /// A DANE-TA record matched, but the leaf does not chain to it, or is
    /// not valid now.
    #[error("certificate does not chain to the DANE-TA trust anchor: {0}")]
    Chain(String),
    /// A DANE-TA record matched, but the leaf does not name the host.
    #[error("certificate is not valid for {0} (DANE-TA)")]
    Name(String),
    /// The server sent no certificate.
    #[error("no certificate was presented")]
    Empty,
}

/// Checks `chain` (DER, leaf first) against the usable records of `tlsa`;
/// DANE-TA also checks the path and that the leaf names one of `names`.
pub fn check(
    tlsa: &[Tlsa],
    chain: &[CertificateDer<'_>],
    names: &[String],
    algs: &WebPkiSupportedAlgorithms,
    now: UnixTime,
) -> Result<(), DaneMismatch> {
    let Some(leaf) = chain.first() else {
        return Err(DaneMismatch::Empty);
    };
    let usable = tlsa.iter().filter(|t| t.is_usable());
    if usable
        .clone()
        .any(|t| t.usage == 3 && t.matches(leaf.as_ref()))
    {
        return Ok(());
    }
    let mut last = DaneMismatch::NoMatch;
    for ta in chain {
        if !usable
            .clone()
            .any(|t| t.usage == 2 && t.matches(ta.as_ref()))
        {
            continue;
        }
        match check_ta(leaf, ta, &chain[1..], names, algs, now) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The DANE-TA path and name check with `ta` as the only trust anchor.
fn check_ta(
    leaf: &CertificateDer<'_>,
    ta: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[String],
    algs: &WebPkiSupportedAlgorithms,
    now: UnixTime,
) -> Result<(), DaneMismatch> {
    let anchor = webpki::anchor_from_trusted_cert(ta)
        .map_err(|e| DaneMismatch::Chain(format!("{e:?}")))?
        .to_owned();
    let roots = RootCertStore {
        roots: vec![anchor],
    };
    let parsed =
        ParsedCertificate::try_from(leaf).map_err(|e| DaneMismatch::Chain(e.to_string()))?;
    // A leaf that is itself the anchor (a self-signed DANE-TA) needs no path.
    if leaf.as_ref() != ta.as_ref() {
        verify_server_cert_signed_by_trust_anchor(&parsed, &roots, intermediates, now, algs.all)
            .map_err(|e| DaneMismatch::Chain(e.to_string()))?;
    }
    let named = names.iter().any(|n| {
        ServerName::try_from(n.as_str())
            .map(|sn| verify_server_name(&parsed, &sn).is_ok())
            .unwrap_or(false)
    });
    if named {
        Ok(())
    } else {
        Err(DaneMismatch::Name(
            names.first().cloned().unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: data.to_vec(),
        }
    }

    #[test]
    fn only_dane_usages_with_known_selectors_and_matching_types_are_usable() {
        assert!(rec(3, 1, 1, b"x").is_usable());
        assert!(rec(2, 0, 2, b"x").is_usable());
        assert!(rec(2, 0, 0, b"x").is_usable());
        assert!(!rec(1, 1, 1, b"x").is_usable(), "PKIX-EE");
        assert!(!rec(0, 0, 1, b"x").is_usable(), "PKIX-TA");
        assert!(!rec(3, 2, 1, b"x").is_usable(), "selector 2");
        assert!(!rec(3, 1, 3, b"x").is_usable(), "matching 3");
    }

    #[test]
    fn presentation_form() {
        assert_eq!(rec(3, 1, 1, &[0xab, 0x01]).to_string(), "3 1 1 ab01");
    }

    #[test]
    fn full_certificate_matching_and_no_certificate() {
        let cert = b"not really DER";
        let sha = ring::digest::digest(&ring::digest::SHA256, cert);
        assert!(rec(3, 0, 1, sha.as_ref()).matches(cert));
        assert!(rec(3, 0, 0, cert).matches(cert));
        assert!(!rec(3, 0, 2, sha.as_ref()).matches(cert));
        // Selector 1 needs a parsable certificate.
        assert!(!rec(3, 1, 0, cert).matches(cert));
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        assert_eq!(
            check(&[rec(3, 0, 0, cert)], &[], &[], &algs, UnixTime::now()),
            Err(DaneMismatch::Empty)
        );
        let chain = [CertificateDer::from(&cert[..])];
        assert_eq!(
            check(&[rec(3, 0, 0, cert)], &chain, &[], &algs, UnixTime::now()),
            Ok(())
        );
        assert_eq!(
            check(&[rec(1, 0, 0, cert)], &chain, &[], &algs, UnixTime::now()),
            Err(DaneMismatch::NoMatch),
            "PKIX-EE is not used"
        );
    }
}
