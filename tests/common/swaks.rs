//! swaks, the real SMTP client the gateway is checked against.

use super::tools::{Package, SWAKS};
use std::net::SocketAddr;

/// What one swaks run did.
#[derive(Debug)]
pub struct SwaksRun {
    /// swaks exited 0: every reply it needed was positive.
    pub ok: bool,
    /// Its transcript (standard output).
    pub text: String,
}

/// Runs `swaks --server <addr ip> --port <addr port> <args>` to completion.
///
/// Panics naming the package to install when swaks is missing, or when it
/// was asked for TLS and cannot do it ("requires Net::SSLeay": Debian's
/// swaks only recommends libnet-ssleay-perl).
pub async fn swaks(addr: SocketAddr, args: &[&str]) -> SwaksRun {
    let mut cmd = SWAKS.command();
    cmd.args([
        "--server",
        &addr.ip().to_string(),
        "--port",
        &addr.port().to_string(),
    ])
    .args(args);
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run swaks: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr);
    if text.contains("requires Net::SSLeay") || errors.contains("requires Net::SSLeay") {
        panic!(
            "swaks cannot do TLS without Net::SSLeay: install {} (.ci/run installs it)\n{text}{errors}",
            Package::Debian("libnet-ssleay-perl")
        );
    }
    SwaksRun {
        ok: out.status.success(),
        text,
    }
}
