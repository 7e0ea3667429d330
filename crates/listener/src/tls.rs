//! TLS for the listener: STARTTLS and implicit TLS with tokio-rustls.
//!
//! [`TlsConfig::load`] builds a rustls server configuration (TLS 1.2 and 1.3
//! only, ring provider) whose certificate comes from a [`ReloadingCert`]:
//! the PEM files are re-read when their modification time changes (checked
//! at most every few seconds, at handshake time), so a renewed certificate
//! is picked up without a restart; a file that fails to load keeps the
//! previous certificate in service and is logged. [`describe`] renders the
//! negotiated version and cipher for the Received header.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_rustls::TlsAcceptor;

/// How often the files are checked for changes.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("{0}")]
    Key(String),
}

fn load_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::Read {
            path: p.display().to_string(),
            error: e.to_string(),
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Key(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError::Key(format!("{}: no certificate", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::Key(format!("{}: {e}", key.display())))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::Key(format!("unsupported key: {e}")))?;
    Ok(CertifiedKey::new(chain, signing))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The key in service and where it came from.
#[derive(Debug)]
struct InService {
    key: Arc<CertifiedKey>,
    cert_mtime: Option<SystemTime>,
    key_mtime: Option<SystemTime>,
    checked: Instant,
}

/// A certificate that follows its files.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<InService>,
}

impl ReloadingCert {
    pub fn new(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
        let ck = load_key(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new(InService {
                key: Arc::new(ck),
                cert_mtime: mtime(cert),
                key_mtime: mtime(key),
                checked: Instant::now(),
            }),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.checked.elapsed() >= CHECK_EVERY {
            st.checked = Instant::now();
            let (mc, mk) = (mtime(&self.cert), mtime(&self.key));
            if mc != st.cert_mtime || mk != st.key_mtime {
                match load_key(&self.cert, &self.key) {
                    Ok(ck) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        st.key = Arc::new(ck);
                        st.cert_mtime = mc;
                        st.key_mtime = mk;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate reload failed; keeping the old one")
                    }
                }
            }
        }
        st.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The acceptor the listener uses for STARTTLS and implicit TLS.
#[derive(Clone)]
pub struct TlsConfig {
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig")
    }
}

impl TlsConfig {
    /// TLS 1.2 and 1.3 with the ring provider, certificate from files.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        let resolver = Arc::new(ReloadingCert::new(cert, key)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Key(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        Ok(TlsConfig {
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
        })
    }
}

/// "TLSv1_3 with cipher TLS13_AES_256_GCM_SHA384", for Received headers.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "TLS".into());
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_else(|| "unknown".into());
    format!("{version} with cipher {cipher}")
}
