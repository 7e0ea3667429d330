//! Outbound transport security: what TLS each next hop must offer and how
//! its certificate is checked.
//!
//! - [`TlsLevel`] and the `[outbound_tls]` / `[[tls_policy]]` settings
//!   ([`OutboundTlsConfig`], [`TlsPolicyEntry`]): a static level per
//!   destination, like Postfix's `smtp_tls_policy_maps`.
//! - `dane` (RFC 7672): usable TLSA records and the chain check.
//! - `sts` (RFC 8461): the MTA-STS policy file, its MX patterns, the HTTPS
//!   fetch and the cache that survives restarts ([`StsStore`]).
//! - [`Require`] is what one connection must achieve, worked out per hop by
//!   the deliverer; [`Checker`] holds the rustls client configuration (one,
//!   shared) and the WebPKI roots, and checks a chain after the handshake,
//!   before MAIL FROM.
//! - [`TlsFailure`] names a failure with its TLS-RPT result type (RFC 8460
//!   section 4.3); [`TlsEvent`] is one session's result, for reports and
//!   metrics.

pub(crate) mod dane;
pub(crate) mod sts;

use crate::config::split_host_port;
use postern_core::units::{ByteSize, HumanDuration};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use dane::Tlsa;
pub use sts::{StsMode, StsPolicy, StsStore};

/// How much transport security a destination gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsLevel {
    /// Never STARTTLS, even when offered.
    None,
    /// STARTTLS when offered, any certificate, plain text otherwise (and
    /// after a failed handshake). MTA-STS applies when enabled.
    May,
    /// STARTTLS required, any certificate.
    Encrypt,
    /// STARTTLS required with a WebPKI-valid certificate for the MX host
    /// name (or a `match` name).
    Verify,
    /// DANE where the MX host has DNSSEC-validated TLSA records; otherwise
    /// as `may` (with MTA-STS when enabled).
    Dane,
    /// DANE required: a host without validated TLSA records is not used.
    DaneOnly,
}

impl TlsLevel {
    /// The name used in configuration, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::May => "may",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Verify => "verify",
            TlsLevel::Dane => "dane",
            TlsLevel::DaneOnly => "dane-only",
        }
    }

    /// True for the levels that look up TLSA records.
    pub fn uses_dane(self) -> bool {
        matches!(self, TlsLevel::Dane | TlsLevel::DaneOnly)
    }
}

/// `[outbound_tls]`: outbound transport security for every destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundTlsConfig {
    /// The level of destinations without a `[[tls_policy]]` entry.
    pub level: TlsLevel,
    /// Honour MTA-STS (RFC 8461) for destinations at `may` and `dane`.
    pub mta_sts: bool,
    /// Extra trusted CA certificates (PEM) for `verify`, MTA-STS MX
    /// certificates and policy fetches, beside the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// DNSSEC trust anchor: DNSKEY records in zone-file form; none means
    /// the IANA root keys. Used when a level asks for DANE.
    pub trust_anchor: Option<PathBuf>,
    /// HTTPS port of `mta-sts.<domain>` (443; a lab may change it).
    pub mta_sts_port: u16,
    /// Longest one MTA-STS policy fetch may take (connect, TLS, response).
    pub mta_sts_timeout: HumanDuration,
    /// Largest MTA-STS policy accepted.
    pub mta_sts_max_size: ByteSize,
}

impl Default for OutboundTlsConfig {
    fn default() -> Self {
        OutboundTlsConfig {
            level: TlsLevel::May,
            mta_sts: true,
            ca_file: None,
            trust_anchor: None,
            mta_sts_port: 443,
            mta_sts_timeout: HumanDuration(Duration::from_secs(10)),
            mta_sts_max_size: ByteSize(64 * 1024),
        }
    }
}

/// `[[tls_policy]]`: the level of one destination.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPolicyEntry {
    /// Recipient domain; `.example.com` also covers every subdomain.
    pub domain: String,
    /// Its level.
    pub level: TlsLevel,
    /// For `verify`: names a certificate may carry instead of the MX host
    /// name (e.g. the partner's own domain).
    #[serde(default, rename = "match")]
    pub match_names: Vec<String>,
}

/// The static policy table.
#[derive(Debug, Clone, Default)]
pub(crate) struct PolicyTable {
    entries: Vec<TlsPolicyEntry>,
    default: Option<TlsLevel>,
}

impl PolicyTable {
    pub(crate) fn new(entries: &[TlsPolicyEntry], default: TlsLevel) -> PolicyTable {
        let entries = entries
            .iter()
            .map(|e| TlsPolicyEntry {
                domain: e.domain.to_ascii_lowercase(),
                ..e.clone()
            })
            .collect();
        PolicyTable {
            entries,
            default: Some(default),
        }
    }

    /// The entry for `domain`: an exact entry, else the longest `.suffix`
    /// entry covering it; `None` means the default level.
    pub(crate) fn lookup(&self, domain: &str) -> Option<&TlsPolicyEntry> {
        let domain = domain.to_ascii_lowercase();
        if let Some(e) = self.entries.iter().find(|e| e.domain == domain) {
            return Some(e);
        }
        self.entries
            .iter()
            .filter(|e| e.domain.starts_with('.') && domain.ends_with(e.domain.as_str()))
            .max_by_key(|e| e.domain.len())
    }

    /// The level of `domain`.
    pub(crate) fn level(&self, domain: &str) -> TlsLevel {
        self.lookup(domain)
            .map(|e| e.level)
            .or(self.default)
            .unwrap_or(TlsLevel::May)
    }

    /// True when some destination may need DANE (a validating resolver).
    pub(crate) fn needs_dane(&self) -> bool {
        self.default.is_some_and(TlsLevel::uses_dane)
            || self.entries.iter().any(|e| e.level.uses_dane())
    }
}

/// Checks a `[[tls_policy]]` table: domains and match names are host names.
pub fn validate_policies(entries: &[TlsPolicyEntry]) -> Result<(), String> {
    for e in entries {
        let d = e.domain.trim_start_matches('.');
        if split_host_port(d, 25).is_err() || d.contains(':') {
            return Err(format!("tls_policy domain {:?} is not a domain", e.domain));
        }
        for m in &e.match_names {
            if split_host_port(m, 25).is_err() || m.contains(':') {
                return Err(format!("tls_policy match name {m:?} is not a host name"));
            }
        }
        if !e.match_names.is_empty() && e.level != TlsLevel::Verify {
            return Err(format!(
                "tls_policy for {}: match names apply to level verify only",
                e.domain
            ));
        }
    }
    Ok(())
}

/// Why a connection did not meet its policy, with its TLS-RPT result type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The hop does not offer STARTTLS, or refused it.
    StartTlsNotSupported,
    /// The certificate does not name the host.
    CertificateHostMismatch,
    /// The certificate has expired (or is not yet valid).
    CertificateExpired,
    /// The certificate does not chain to a trusted root.
    CertificateNotTrusted,
    /// The handshake failed, or the chain matched no TLSA record.
    ValidationFailure,
    /// The TLSA records are unusable.
    TlsaInvalid,
    /// DNSSEC validation failed (bogus answers).
    DnssecInvalid,
    /// DANE was required and the host has no validated TLSA records.
    DaneRequired,
    /// The MTA-STS policy could not be fetched.
    StsPolicyFetchError,
    /// The MTA-STS policy could not be parsed.
    StsPolicyInvalid,
    /// The MTA-STS policy's host does not present a WebPKI certificate.
    StsWebpkiInvalid,
}

impl TlsFailure {
    /// The RFC 8460 `result-type`.
    pub fn result_type(&self) -> &'static str {
        match self {
            TlsFailure::StartTlsNotSupported => "starttls-not-supported",
            TlsFailure::CertificateHostMismatch => "certificate-host-mismatch",
            TlsFailure::CertificateExpired => "certificate-expired",
            TlsFailure::CertificateNotTrusted => "certificate-not-trusted",
            TlsFailure::ValidationFailure => "validation-failure",
            TlsFailure::TlsaInvalid => "tlsa-invalid",
            TlsFailure::DnssecInvalid => "dnssec-invalid",
            TlsFailure::DaneRequired => "dane-required",
            TlsFailure::StsPolicyFetchError => "sts-policy-fetch-error",
            TlsFailure::StsPolicyInvalid => "sts-policy-invalid",
            TlsFailure::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// Sorts a rustls certificate error.
    fn of_certificate(e: &rustls::Error) -> TlsFailure {
        match e {
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => TlsFailure::CertificateExpired,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => TlsFailure::CertificateHostMismatch,
            _ => TlsFailure::CertificateNotTrusted,
        }
    }
}

/// Which policy decided a connection's requirement: the TLS-RPT policy
/// type and what the report names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// No policy: `none`, `may`, or a static level.
    Static(TlsLevel),
    /// MTA-STS: the policy id, mode and text lines.
    Sts {
        /// The TXT record's id.
        id: String,
        /// enforce or testing.
        mode: StsMode,
        /// The policy's lines, for the report's `policy-string`.
        lines: Vec<String>,
    },
    /// DANE: the TLSA records in presentation form.
    Tlsa(Vec<String>),
}

impl PolicySource {
    /// The label used in metrics and tracking lines.
    pub fn label(&self) -> &'static str {
        match self {
            PolicySource::Static(l) => l.as_str(),
            PolicySource::Sts {
                mode: StsMode::Testing,
                ..
            } => "mta-sts-testing",
            PolicySource::Sts { .. } => "mta-sts",
            PolicySource::Tlsa(_) => "dane",
        }
    }
}

/// One outbound session's TLS result (or a failure before any session,
/// such as a policy fetch or a bogus TLSA answer): for TLS-RPT and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsEvent {
    /// The recipient domain the policy belongs to.
    pub domain: String,
    /// The MX host (or route host) connected to.
    pub mx_host: String,
    /// Its address, when a connection was made.
    pub ip: Option<std::net::IpAddr>,
    /// The policy that applied.
    pub policy: PolicySource,
    /// `None`: the policy was met (or nothing was required).
    pub failure: Option<TlsFailure>,
    /// The negotiated TLS version ("TLSv1.3"), when TLS was used.
    pub version: Option<&'static str>,
    /// Details for a failure (`additional-information`).
    pub detail: String,
}

/// What one connection must achieve.
#[derive(Debug, Clone)]
pub(crate) enum Require {
    /// No STARTTLS.
    Plain,
    /// STARTTLS when offered; plain text otherwise.
    May,
    /// STARTTLS, any certificate.
    Encrypt,
    /// STARTTLS and a WebPKI-valid certificate for one of `names`; when not
    /// `enforce` (MTA-STS testing), failures are reported only.
    Pki {
        /// Names the certificate may carry.
        names: Vec<String>,
        /// False for MTA-STS testing mode.
        enforce: bool,
    },
    /// STARTTLS and a chain matching the TLSA records.
    Dane {
        /// The usable records.
        tlsa: Arc<Vec<Tlsa>>,
        /// Reference names for DANE-TA.
        names: Vec<String>,
    },
}

impl Require {
    /// True when a connection without TLS must not be used.
    pub(crate) fn mandatory(&self) -> bool {
        match self {
            Require::Plain | Require::May => false,
            Require::Pki { enforce, .. } => *enforce,
            Require::Encrypt | Require::Dane { .. } => true,
        }
    }

    /// The requirement in words.
    pub(crate) fn describe(&self) -> String {
        match self {
            Require::Plain => "no TLS (STARTTLS is not used)".into(),
            Require::May => "TLS when offered, any certificate; plain text otherwise".into(),
            Require::Encrypt => "TLS required, any certificate".into(),
            Require::Pki {
                names,
                enforce: true,
            } => format!("TLS required with a WebPKI-valid certificate for {}", names.join(" or ")),
            Require::Pki { names, .. } => format!(
                "TLS when offered; a certificate not valid for {} is reported, not enforced (testing)",
                names.join(" or ")
            ),
            Require::Dane { tlsa, .. } => format!(
                "TLS required with a certificate matching {} TLSA record(s)",
                tlsa.len()
            ),
        }
    }

    /// Distinguishes pooled connections made under different requirements.
    pub(crate) fn tag(&self) -> String {
        match self {
            Require::Plain => "plain".into(),
            Require::May => "may".into(),
            Require::Encrypt => "encrypt".into(),
            Require::Pki { names, enforce } => format!("pki:{enforce}:{}", names.join(",")),
            Require::Dane { tlsa, names } => {
                let recs: Vec<String> = tlsa.iter().map(|t| t.to_string()).collect();
                format!("dane:{}:{}", names.join(","), recs.join(","))
            }
        }
    }
}

/// Accepts any certificate but still checks the handshake signatures, so
/// the server has proved it holds the key of the chain it sent; the chain
/// is checked after the handshake against the connection's [`Require`].
#[derive(Debug)]
struct AfterHandshake {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AfterHandshake {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Why the TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("outbound_tls.ca_file {path}: {why}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Rustls(String),
}

/// The TLS client side of delivery: one rustls configuration for every
/// STARTTLS and the WebPKI verifier for `verify` and MTA-STS.
#[derive(Debug, Clone)]
pub struct Checker {
    /// Handshakes that check signatures only (chains checked after).
    pub(crate) client: Arc<ClientConfig>,
    /// WebPKI: Mozilla's roots plus `ca_file`.
    pub(crate) pki: Arc<WebPkiServerVerifier>,
    /// For the MTA-STS policy fetch: verifies in the handshake.
    pub(crate) https: Arc<ClientConfig>,
    /// Signature algorithms, for DANE-TA paths.
    pub(crate) algs: WebPkiSupportedAlgorithms,
}

impl Checker {
    /// Builds the configurations; `ca_file` adds trusted roots.
    pub fn new(ca_file: Option<&std::path::Path>) -> Result<Checker, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let ca_err = |why: String| TlsSetupError::CaFile {
                path: path.to_path_buf(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let mut n = 0;
            for cert in rustls_pemfile_certs(&pem).map_err(ca_err)? {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
                n += 1;
            }
            if n == 0 {
                return Err(ca_err("no certificate in the file".into()));
            }
        }
        let roots = Arc::new(roots);
        let rustls_err = |e: rustls::Error| TlsSetupError::Rustls(e.to_string());
        let pki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
        let algs = provider.signature_verification_algorithms;
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AfterHandshake { algs }))
            .with_no_client_auth();
        let https = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)?
            .with_webpki_verifier(pki.clone())
            .with_no_client_auth();
        Ok(Checker {
            client: Arc::new(client),
            pki,
            https: Arc::new(https),
            algs,
        })
    }

    /// The client configuration that verifies WebPKI in the handshake
    /// (for HTTPS: MTA-STS policies, TLS reports).
    pub fn https_config(&self) -> Arc<ClientConfig> {
        self.https.clone()
    }

    /// WebPKI check of `chain` for any of `names`.
    pub(crate) fn verify_pki(
        &self,
        chain: &[CertificateDer<'_>],
        names: &[String],
    ) -> Result<(), (TlsFailure, String)> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err((TlsFailure::CertificateNotTrusted, "no certificate".into()));
        };
        let now = UnixTime::now();
        let mut last = (
            TlsFailure::CertificateHostMismatch,
            "no name to check".into(),
        );
        for name in names {
            let Ok(sn) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            match self.pki.verify_server_cert(leaf, rest, &sn, &[], now) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = (TlsFailure::of_certificate(&e), format!("{name}: {e}"));
                    // Only a name mismatch may succeed under another name.
                    if last.0 != TlsFailure::CertificateHostMismatch {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// DANE check of `chain` against `tlsa`.
    pub(crate) fn verify_dane(
        &self,
        tlsa: &[Tlsa],
        chain: &[CertificateDer<'_>],
        names: &[String],
    ) -> Result<(), (TlsFailure, String)> {
        dane::check(tlsa, chain, names, &self.algs, UnixTime::now())
            .map_err(|e| (TlsFailure::ValidationFailure, e.to_string()))
    }
}

/// The certificates of a PEM file (DER), or why it could not be read.
fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(domain: &str, level: TlsLevel) -> TlsPolicyEntry {
        TlsPolicyEntry {
            domain: domain.into(),
            level,
            match_names: Vec::new(),
        }
    }

    #[test]
    fn exact_entries_win_then_the_longest_suffix_then_the_default() {
        let t = PolicyTable::new(
            &[
                entry(".example", TlsLevel::Encrypt),
                entry(".b.example", TlsLevel::Verify),
                entry("Partner.Test", TlsLevel::DaneOnly),
                entry("b.example", TlsLevel::None),
            ],
            TlsLevel::May,
        );
        assert_eq!(t.level("partner.test"), TlsLevel::DaneOnly);
        assert_eq!(t.level("a.example"), TlsLevel::Encrypt);
        assert_eq!(t.level("x.b.example"), TlsLevel::Verify);
        assert_eq!(t.level("b.example"), TlsLevel::None);
        assert_eq!(t.level("example"), TlsLevel::May, "the suffix needs a dot");
        assert_eq!(t.level("other.test"), TlsLevel::May);
        assert!(t.needs_dane());
        assert!(!PolicyTable::new(&[], TlsLevel::Verify).needs_dane());
    }

    #[test]
    fn policy_tables_are_checked() {
        assert!(validate_policies(&[entry("ok.test", TlsLevel::Verify)]).is_ok());
        assert!(validate_policies(&[entry("bad host", TlsLevel::Verify)]).is_err());
        let mut m = entry("ok.test", TlsLevel::May);
        m.match_names = vec!["mx.ok.test".into()];
        assert!(validate_policies(&[m]).is_err(), "match names need verify");
    }

    #[test]
    fn requirements() {
        assert!(!Require::May.mandatory());
        assert!(Require::Encrypt.mandatory());
        let testing = Require::Pki {
            names: vec!["mx.test".into()],
            enforce: false,
        };
        assert!(!testing.mandatory());
        assert_ne!(testing.tag(), Require::May.tag());
        assert_eq!(
            TlsFailure::CertificateHostMismatch.result_type(),
            "certificate-host-mismatch"
        );
    }
}
