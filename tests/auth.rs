//! SMTP AUTH on the real binary: PLAIN and LOGIN with swaks over STARTTLS,
//! authenticated relay from an untrusted address, no AUTH before TLS, the
//! submission port requiring AUTH, and failure rate limiting.

mod common;

use common::{
    route, swaks, users_and_certificate, wait_until, Gateway, RawClient, Sink, SwaksRun, RELAY,
};
use std::time::Duration;

fn setup(dir: &std::path::Path) {
    users_and_certificate(dir);
}

/// A certificate and a users file (alice, "s3cret pass") in a new
/// directory, a sink, and a gateway with STARTTLS, AUTH (at most 3
/// failures) and a submission listener, routing all mail to the sink.
async fn start() -> (tempfile::TempDir, Sink, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let sink = Sink::start("127.0.0.1:0").await;
    let d = dir.path().display();
    let gw = Gateway::start(
        "greeting_delay = \"0s\"\nsubmission_listen = [\"127.0.0.1:0\"]",
        &format!(
            "{RELAY}\
             [tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\n\
             [auth]\nusers_file = \"{d}/users\"\nmax_failures = 3\n\
             {}",
            route("*", sink.addr)
        ),
    );
    (dir, sink, gw)
}

/// alice relays to friend@elsewhere.test from the untrusted 127.0.0.13,
/// with AUTH `mech` and password `pass` over STARTTLS.
async fn swaks_auth(addr: std::net::SocketAddr, mech: &str, pass: &str) -> SwaksRun {
    swaks(
        addr,
        &[
            "--local-interface",
            "127.0.0.13",
            "--from",
            "alice@example.test",
            "--to",
            "friend@elsewhere.test",
            "--tls",
            "--auth",
            mech,
            "--auth-user",
            "alice",
            "--auth-password",
            pass,
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_and_login_allow_relay_for_authenticated_users() {
    let (_dir, sink, gw) = start().await;
    let addr = gw.smtp;
    for mech in ["PLAIN", "LOGIN"] {
        let SwaksRun { ok, text } = swaks_auth(addr, mech, "s3cret pass").await;
        assert!(
            ok && text.contains("235 2.7.0") && text.contains("queued as"),
            "{mech}: {text}"
        );
    }
    wait_until(Duration::from_secs(30), "relayed", || sink.count() == 2).await;
    // Without AUTH, the same relay from that address is refused.
    let mut c = RawClient::connect_from(addr, Some("127.0.0.13")).await;
    let ehlo = c.cmd("EHLO x.test").await;
    assert!(!ehlo.contains("AUTH"), "AUTH offered before TLS: {ehlo}");
    assert!(c
        .cmd("AUTH PLAIN AGFsaWNlAHMzY3JldCBwYXNz")
        .await
        .starts_with("538"));
    c.cmd("MAIL FROM:<alice@example.test>").await;
    assert!(c
        .cmd("RCPT TO:<friend@elsewhere.test>")
        .await
        .starts_with("554 5.7.1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_are_limited_and_submission_needs_auth() {
    let (_dir, sink, gw) = start().await;
    let addr = gw.smtp;
    for _ in 0..3 {
        let SwaksRun { ok, text } = swaks_auth(addr, "PLAIN", "wrong").await;
        assert!(!ok && text.contains("535 5.7.8"), "{text}");
    }
    // Past the limit even the right password is not checked.
    let SwaksRun { ok, text } = swaks_auth(addr, "PLAIN", "s3cret pass").await;
    assert!(!ok && text.contains("454 4.7.0"), "{text}");
    // Submission: MAIL without AUTH is refused, even from a trusted address.
    let sub = gw.submission.expect("submission listener");
    let mut c = RawClient::connect(sub).await;
    c.cmd("EHLO inside.test").await;
    assert!(c
        .cmd("MAIL FROM:<a@example.test>")
        .await
        .starts_with("530 5.7.0"));
    assert_eq!(sink.count(), 0);
}
