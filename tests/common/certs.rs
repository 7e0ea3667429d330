//! Keys and certificates made with the openssl command line: self-signed
//! TLS certificates, and DKIM signing keys with their DNS `p=` values.
//!
//! Also compiled into `benches/tls_load.rs` (with `tools.rs` beside it).

use super::tools::{self, OPENSSL};
use std::path::{Path, PathBuf};

/// Writes a self-signed RSA-2048 certificate for `cn` (valid two days) to
/// `dir/cert.pem` and its key to `dir/key.pem`.
pub fn self_signed(dir: &Path, cn: &str) {
    self_signed_at(&dir.join("key.pem"), &dir.join("cert.pem"), cn);
}

/// Writes a self-signed RSA-2048 certificate for `cn` (valid two days) to
/// `cert` and its key to `key`. Both are written beside the target and
/// renamed into place, so a watcher never sees half a file or a key that
/// does not match the certificate for long.
pub fn self_signed_at(key: &Path, cert: &Path, cn: &str) {
    let (key_tmp, cert_tmp) = (tmp(key), tmp(cert));
    tools::run_ok(
        OPENSSL
            .command()
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", &format!("/CN={cn}")])
            .arg("-keyout")
            .arg(&key_tmp)
            .arg("-out")
            .arg(&cert_tmp),
        "openssl req (self-signed certificate)",
    );
    std::fs::rename(&key_tmp, key).unwrap();
    std::fs::rename(&cert_tmp, cert).unwrap();
}

fn tmp(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A DKIM signing key made with openssl.
pub struct DkimKeyFile {
    /// The private key, PEM.
    pub pem: PathBuf,
    /// The public key as the `p=` value of the selector's TXT record.
    pub p: String,
}

/// An RSA-2048 DKIM key written to `dir/name`; `p=` is the base64
/// SubjectPublicKeyInfo (RFC 6376).
pub fn dkim_rsa(dir: &Path, name: &str) -> DkimKeyFile {
    let pem = dir.join(name);
    tools::run_ok(
        OPENSSL
            .command()
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .arg("-out")
            .arg(&pem),
        "openssl genpkey (RSA)",
    );
    let p = public_base64(&pem);
    DkimKeyFile { pem, p }
}

/// An Ed25519 DKIM key written to `dir/name`; `p=` is the base64 of the raw
/// 32-byte public key (RFC 8463).
pub fn dkim_ed25519(dir: &Path, name: &str) -> DkimKeyFile {
    let pem = dir.join(name);
    tools::run_ok(
        OPENSSL
            .command()
            .args(["genpkey", "-algorithm", "ED25519", "-out"])
            .arg(&pem),
        "openssl genpkey (Ed25519)",
    );
    // The SubjectPublicKeyInfo is a fixed 12-byte prefix and the raw key;
    // 12 bytes are exactly 16 base64 characters, so the key's base64 is
    // what follows them.
    const PREFIX: &str = "MCowBQYDK2VwAyEA";
    let spki = public_base64(&pem);
    assert!(
        spki.starts_with(PREFIX) && spki.len() == PREFIX.len() + 44,
        "not an Ed25519 public key: {spki}"
    );
    DkimKeyFile {
        pem,
        p: spki[PREFIX.len()..].to_string(),
    }
}

/// The base64 of the DER SubjectPublicKeyInfo of the key in `pem`: the body
/// of the public key's PEM, on one line.
fn public_base64(pem: &Path) -> String {
    let out = tools::run_ok(
        OPENSSL.command().args(["pkey", "-pubout", "-in"]).arg(pem),
        "openssl pkey -pubout",
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect()
}
