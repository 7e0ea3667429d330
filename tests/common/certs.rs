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

/// A test certificate authority (P-256), for WebPKI checks (`verify`,
/// MTA-STS) and DANE-TA.
pub struct TestCa {
    pub cert: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

/// A certificate issued by a [`TestCa`].
pub struct Issued {
    /// The leaf alone, PEM.
    pub leaf: PathBuf,
    /// Leaf then CA, PEM: what a server sends.
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA named `cn`, files under `dir/<stem>`.
    pub fn new(dir: &Path, stem: &str, cn: &str) -> TestCa {
        let dir = dir.join(stem);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        tools::run_ok(
            OPENSSL
                .command()
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl req (test CA)",
        );
        TestCa { cert, key, dir }
    }

    /// A server certificate for `names` (subjectAltName DNS entries).
    pub fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        let (key, csr, leaf, chain, ext) = (
            self.dir.join(format!("{stem}.key")),
            self.dir.join(format!("{stem}.csr")),
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.chain.pem")),
            self.dir.join(format!("{stem}.ext")),
        );
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .unwrap();
        tools::run_ok(
            OPENSSL
                .command()
                .args([
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-subj", &format!("/CN={}", names[0])])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
            "openssl req (server key)",
        );
        tools::run_ok(
            OPENSSL
                .command()
                .args(["x509", "-req", "-days", "2", "-set_serial"])
                .arg(format!("{}", rand_serial()))
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&self.cert)
                .arg("-CAkey")
                .arg(&self.key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&leaf),
            "openssl x509 (issue)",
        );
        let mut both = std::fs::read(&leaf).unwrap();
        both.extend(std::fs::read(&self.cert).unwrap());
        std::fs::write(&chain, both).unwrap();
        Issued { leaf, chain, key }
    }
}

fn rand_serial() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    n % 1_000_000_000_000 + 1000
}

/// The DER of the certificate in `pem`.
pub fn cert_der(pem: &Path) -> Vec<u8> {
    tools::run_ok(
        OPENSSL
            .command()
            .args(["x509", "-outform", "DER", "-in"])
            .arg(pem),
        "openssl x509 -outform DER",
    )
    .stdout
}

/// The DER SubjectPublicKeyInfo of the certificate in `pem`.
pub fn cert_spki(pem: &Path) -> Vec<u8> {
    let out = tools::run_ok(
        OPENSSL
            .command()
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(pem),
        "openssl x509 -pubkey",
    );
    let b64: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    postern_core::base64::base64_decode(b64.as_bytes()).unwrap()
}

/// SHA2-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}
