//! TLS for the listener: STARTTLS and implicit TLS with tokio-rustls.
//!
//! [`TlsConfig::load`] builds a rustls server configuration (TLS 1.2 and 1.3
//! only, ring provider) whose certificate comes from a `ReloadingCert`: the
//! PEM files are re-read when their modification time changes (checked at
//! most every few seconds, at handshake time), so a renewed certificate is
//! picked up without a restart; a file that fails to load keeps the previous
//! certificate in service and is logged. Load failures are [`TlsError`]s
//! that keep their cause. The rustls types stay inside this crate:
//! [`TlsConfig`] keeps its acceptor private and offers the server loop
//! `accept`, and `describe` / `version_name` render the negotiated version
//! and cipher for the Received header and the sink.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

/// How often the files are checked for changes.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Why TLS could not be set up. The message names this layer; the cause is
/// the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid PEM, or holds no usable certificate or key.
    #[error("{}", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// The certificate file holds no certificate.
    #[error("{}: no certificate", .path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The private key is of a type the TLS library cannot sign with.
    #[error("unsupported key")]
    UnsupportedKey(#[source] Box<dyn Error + Send + Sync>),
    /// The TLS library refused the configuration.
    #[error(transparent)]
    Config(Box<dyn Error + Send + Sync>),
}

fn load_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_path_buf(),
            source: Box::new(e),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        source: Box::new(e),
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError::UnsupportedKey(Box::new(e)))?;
    Ok(CertifiedKey::new(chain, signing))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The key in service and where it came from.
#[derive(Debug)]
struct InService {
    /// The chain and signing key handed to every handshake.
    key: Arc<CertifiedKey>,
    /// The certificate file's modification time when `key` was loaded.
    cert_mtime: Option<SystemTime>,
    /// The key file's modification time when `key` was loaded.
    key_mtime: Option<SystemTime>,
    /// When the files were last looked at (at most every [`CHECK_EVERY`]).
    checked: Instant,
}

/// A certificate that follows its files.
#[derive(Debug)]
struct ReloadingCert {
    /// The certificate chain file (PEM).
    cert: PathBuf,
    /// The private key file (PEM).
    key: PathBuf,
    /// What is in service; a mutex because handshakes run concurrently.
    state: Mutex<InService>,
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
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
                    Err(e) => tracing::error!(
                        error = %crate::error_chain(&e),
                        "TLS certificate reload failed; keeping the old one"
                    ),
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

/// The TLS server side of a listener, for STARTTLS and implicit TLS.
#[derive(Clone)]
pub struct TlsConfig {
    /// The rustls acceptor (its certificate follows the files); private so
    /// that no rustls type is part of this crate's API.
    acceptor: TlsAcceptor,
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
            .map_err(|e| TlsError::Config(Box::new(e)))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        Ok(TlsConfig {
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
        })
    }

    /// The server side of a TLS handshake on `io`.
    pub(crate) fn accept<IO>(&self, io: IO) -> tokio_rustls::Accept<IO>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor.accept(io)
    }
}

/// The negotiated protocol version (`"TLSv1_3"`, ...), for the sink's count.
pub(crate) fn version_name(conn: &rustls::ServerConnection) -> &'static str {
    conn.protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
}

/// "TLSv1_3 with cipher TLS13_AES_256_GCM_SHA384", for Received headers.
pub(crate) fn describe(conn: &rustls::ServerConnection) -> String {
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
