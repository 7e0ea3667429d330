//! STARTTLS and implicit TLS on the real binary: swaks over STARTTLS and
//! TLS-on-connect, TLS versions offered (1.2 and 1.3, never 1.1), the
//! STARTTLS command-injection defence, and certificate reload without a
//! restart.

mod common;

use common::{wait_until, Gateway, Sink};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn make_cert(dir: &std::path::Path, cn: &str) {
    let d = dir.display();
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "openssl req -x509 -newkey rsa:2048 -nodes -keyout {d}/key.tmp -out {d}/cert.tmp -days 2 -subj /CN={cn} 2>/dev/null && mv {d}/key.tmp {d}/key.pem && mv {d}/cert.tmp {d}/cert.pem"
            ),
        ])
        .status()
        .expect("openssl");
    assert!(out.success());
}

fn start(dir: &std::path::Path, sink: &Sink) -> Gateway {
    let d = dir.display();
    Gateway::start(
        "",
        &format!(
            "[tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\nimplicit_listen = [\"127.0.0.1:0\"]\n\
             [[route]]\ndomain = \"*\"\nhosts = [\"{}\"]\n",
            sink.addr
        ),
    )
}

fn swaks(addr: std::net::SocketAddr, extra: &[&str]) -> String {
    let out = Command::new("swaks")
        .args([
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--from", "a@example.test", "--to", "b@example.test"])
        .args(extra)
        .output()
        .expect("swaks");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text
}

fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo QUIT | timeout 10 openssl s_client -connect {addr} -starttls smtp {} 2>&1",
                args.join(" ")
            ),
        ])
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // s_client prints the server's certificate only after a handshake.
    (text.contains("BEGIN CERTIFICATE"), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_and_implicit_tls_with_swaks_and_openssl() {
    let dir = tempfile::tempdir().unwrap();
    make_cert(dir.path(), "gw.example.test");
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = start(dir.path(), &sink);
    let smtp = gw.smtp;
    let text = tokio::task::spawn_blocking(move || {
        swaks(smtp, &["--tls", "--header", "Subject: starttls"])
    })
    .await
    .unwrap();
    assert!(
        text.contains("STARTTLS") && text.contains("queued as"),
        "{text}"
    );
    let smtps = gw.smtps.expect("implicit TLS listener");
    let text = tokio::task::spawn_blocking(move || {
        swaks(smtps, &["--tlsc", "--header", "Subject: implicit"])
    })
    .await
    .unwrap();
    assert!(text.contains("queued as"), "{text}");
    wait_until(Duration::from_secs(30), "both delivered", || {
        sink.count() == 2
    })
    .await;
    for m in sink.all() {
        assert!(
            m.data.contains("with ESMTPS (using TLSv1_3 with cipher"),
            "{}",
            m.data
        );
    }
    let (ok12, t12) = s_client(smtp, &["-tls1_2"]);
    assert!(ok12 && t12.contains("TLSv1.2"), "{t12}");
    let (ok13, t13) = s_client(smtp, &["-tls1_3"]);
    assert!(ok13 && t13.contains("TLSv1.3"), "{t13}");
    let (ok11, t11) = s_client(smtp, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!ok11, "TLS 1.1 was accepted: {t11}");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_is_reloaded_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    make_cert(dir.path(), "first.example.test");
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = start(dir.path(), &sink);
    let smtp = gw.smtp;
    let (_, t) = tokio::task::spawn_blocking(move || s_client(smtp, &[]))
        .await
        .unwrap();
    assert!(
        t.contains("CN=first.example.test") || t.contains("CN = first.example.test"),
        "{t}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    make_cert(dir.path(), "second.example.test");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The first handshake after the change notices it; the next one shows it.
    let _ = tokio::task::spawn_blocking(move || s_client(smtp, &[])).await;
    let (_, t) = tokio::task::spawn_blocking(move || s_client(smtp, &[]))
        .await
        .unwrap();
    assert!(t.contains("second.example.test"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    make_cert(dir.path(), "gw.example.test");
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = start(dir.path(), &sink);
    let mut s = tokio::net::TcpStream::connect(gw.smtp).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut read = async |s: &mut tokio::net::TcpStream| {
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(read(&mut s).await.starts_with("220"));
    s.write_all(b"EHLO attacker.test\r\n").await.unwrap();
    assert!(read(&mut s).await.contains("STARTTLS"));
    // The injection: a command smuggled after STARTTLS in the same packet.
    s.write_all(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await
        .unwrap();
    let r = read(&mut s).await;
    assert!(r.starts_with("220 2.0.0"), "{r}");
    assert!(
        !r.contains("250"),
        "the injected command was answered in plaintext: {r}"
    );
    let connector = common::tls_client::connector();
    let name = rustls_pki_types::ServerName::try_from("gw.example.test").unwrap();
    let mut tls = connector.connect(name, s).await.unwrap();
    // If the injected MAIL had been kept, RCPT would be accepted now.
    tls.write_all(b"RCPT TO:<b@example.test>\r\n")
        .await
        .unwrap();
    let mut b = vec![0u8; 4096];
    let n = tls.read(&mut b).await.unwrap();
    let r = String::from_utf8_lossy(&b[..n]).into_owned();
    assert!(r.starts_with("503"), "state survived STARTTLS: {r}");
}
