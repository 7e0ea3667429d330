//! STARTTLS and implicit TLS on the real binary: swaks over STARTTLS and
//! TLS-on-connect, TLS versions offered (1.2 and 1.3, never 1.1), the
//! STARTTLS command-injection defence, and certificate reload without a
//! restart.

mod common;

use common::{certs, read_some, route, swaks, tools, wait_until, Gateway, Sink};
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A certificate for `cn` in a new directory, a sink, and a gateway with
/// STARTTLS and implicit TLS on that certificate, routing all mail to the
/// sink.
async fn start(cn: &str) -> (tempfile::TempDir, Sink, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    certs::self_signed(dir.path(), cn);
    let sink = Sink::start("127.0.0.1:0").await;
    let d = dir.path().display();
    let gw = Gateway::start(
        "",
        &format!(
            "[tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\nimplicit_listen = [\"127.0.0.1:0\"]\n\
             {}",
            route("*", sink.addr)
        ),
    );
    (dir, sink, gw)
}

/// swaks from a@example.test to b@example.test with `extra` arguments; it
/// must succeed. Returns its transcript.
async fn swaks_ok(addr: std::net::SocketAddr, extra: &[&str]) -> String {
    let mut args = vec!["--from", "a@example.test", "--to", "b@example.test"];
    args.extend_from_slice(extra);
    let run = swaks(addr, &args).await;
    assert!(run.ok, "{}", run.text);
    run.text
}

fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    tools::OPENSSL.require();
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
    let (_dir, sink, gw) = start("gw.example.test").await;
    let smtp = gw.smtp;
    let text = swaks_ok(smtp, &["--tls", "--header", "Subject: starttls"]).await;
    assert!(
        text.contains("STARTTLS") && text.contains("queued as"),
        "{text}"
    );
    let smtps = gw.smtps.expect("implicit TLS listener");
    let text = swaks_ok(smtps, &["--tlsc", "--header", "Subject: implicit"]).await;
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
    let (dir, _sink, gw) = start("first.example.test").await;
    let smtp = gw.smtp;
    let (_, t) = tokio::task::spawn_blocking(move || s_client(smtp, &[]))
        .await
        .unwrap();
    assert!(
        t.contains("CN=first.example.test") || t.contains("CN = first.example.test"),
        "{t}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    certs::self_signed(dir.path(), "second.example.test");
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
    let (_dir, _sink, gw) = start("gw.example.test").await;
    let mut s = tokio::net::TcpStream::connect(gw.smtp).await.unwrap();
    assert!(read_some(&mut s).await.starts_with("220"));
    s.write_all(b"EHLO attacker.test\r\n").await.unwrap();
    assert!(read_some(&mut s).await.contains("STARTTLS"));
    // The injection: a command smuggled after STARTTLS in the same packet.
    s.write_all(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await
        .unwrap();
    let r = read_some(&mut s).await;
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
    let r = read_some(&mut tls).await;
    assert!(r.starts_with("503"), "state survived STARTTLS: {r}");
}
