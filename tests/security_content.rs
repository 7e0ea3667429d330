//! Issue 11 against the real binary: what an untrusted client can no longer
//! do through content checks and DSNs.
//!
//! - A DNS outage: inbound SPF/DKIM/DMARC against a nameserver that never
//!   answers ends at `convert.auth_timeout` with `temperror` in
//!   Authentication-Results and the message accepted; before, the checks
//!   ran into the worker's 30 s deadline, the message got `451 4.3.0` and
//!   was quarantined at the client's retry.
//! - Reflection: an untrusted client's NOTIFY=SUCCESS no longer makes us
//!   send its message (RET=FULL) to the address of its choosing; a trusted
//!   client still gets its "relayed" DSN as before.
//! - A failure DSN for an untrusted source returns the headers only (not
//!   the body, whatever RET says), and only to a sender that passed SPF
//!   and whose domain resolves.

mod common;

use common::{route, wait_until, DnsServer, Gateway, RawClient, Sink, Zone, RELAY};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The default `convert.auth_timeout`.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// A nameserver that never answers: UDP questions are read and dropped,
/// TCP connections (same port) accepted and held in silence. Its tasks end
/// with the test's runtime.
async fn silent_nameserver() -> SocketAddr {
    for _ in 0..100 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while udp.recv_from(&mut buf).await.is_ok() {}
        });
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = tcp.accept().await {
                held.push(conn);
            }
        });
        return addr;
    }
    panic!("no free UDP and TCP port pair for a silent nameserver");
}

/// `[delivery]` asking `dns`, without STARTTLS to the test sinks.
fn delivery(dns: SocketAddr) -> String {
    format!("[delivery]\nnameservers = [\"{dns}\"]\nstarttls = false\n")
}

/// One transaction from `src` (127.0.0.1 is trusted under [`RELAY`],
/// 127.0.0.5 is not); returns the reply to the end of DATA.
async fn send_from(gw: &Gateway, src: &str, mail: &str, rcpt: &str, data: &str) -> String {
    let mut c = RawClient::connect_from(gw.smtp, Some(src)).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(ehlo.starts_with("250"), "{ehlo}");
    c.transaction(mail, &[rcpt], format!("{data}.\r\n").as_bytes())
        .await
}

/// Finding "a DNS outage quarantines legitimate mail". Before: the checks
/// ran until the worker's 30 s deadline, the reply was `451 4.3.0` (this
/// test timed out waiting for it) and the retry went to quarantine. After:
/// `250` within `auth_timeout` and a few seconds, the delivered message
/// says `temperror`, nothing is quarantined.
#[tokio::test(flavor = "multi_thread")]
async fn dns_outage_gives_temperror_and_the_mail_is_accepted() {
    let dns = silent_nameserver().await;
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}{}{}",
            delivery(dns),
            route("example.test", sink.addr)
        ),
    );
    let data = "From: Pal <pal@friendly.test>\r\nSubject: during the outage\r\n\
                Message-ID: <outage@test>\r\n\r\nstill wanted\r\n";
    let start = Instant::now();
    let r = send_from(
        &gw,
        "127.0.0.5",
        "<pal@friendly.test>",
        "<user@example.test>",
        data,
    )
    .await;
    let took = start.elapsed();
    assert!(r.starts_with("250"), "{r}\n{}", gw.log_text());
    assert!(
        took < AUTH_TIMEOUT + Duration::from_secs(8),
        "250 after {took:?}"
    );
    wait_until(T, "delivery to the sink", || sink.count() == 1).await;
    let m = &sink.all()[0];
    assert!(
        m.data
            .starts_with("Authentication-Results: gw.example.test;"),
        "{}",
        m.data
    );
    for verdict in [
        "spf=temperror (DNS timeout)",
        "dmarc=temperror (DNS timeout)",
    ] {
        assert!(m.data.contains(verdict), "{verdict}: {}", m.data);
    }
    assert!(m.data.contains("still wanted"));
    let out = gw.queue(&["list", "--state", "quarantine"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listing.contains("0 message(s)"), "{listing}");
    assert!(!gw.log_text().contains("content processing failed"));
}

/// Finding "reflection and SSRF" (success DSNs and RET=FULL). Before: the
/// untrusted client's message came back verbatim in a "relayed" DSN to the
/// victim's route. After: no DSN for it; the same transaction from the
/// trusted 127.0.0.1 still gets its "relayed" DSN with the whole message.
#[tokio::test(flavor = "multi_thread")]
async fn no_success_dsn_for_an_untrusted_client() {
    let dns = DnsServer::start(Zone::new()).await;
    let sink = Sink::start("127.0.0.1:0").await;
    let victim = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}{}{}{}",
            delivery(dns.addr),
            route("example.test", sink.addr),
            route("victim.test", victim.addr)
        ),
    );
    let mail = "<victim@victim.test> RET=FULL";
    let rcpt = "<user@example.test> NOTIFY=SUCCESS";
    let data = |tag: &str| {
        format!("From: <victim@victim.test>\r\nSubject: {tag}\r\n\r\nreflected body {tag}\r\n")
    };

    let r = send_from(&gw, "127.0.0.5", mail, rcpt, &data("untrusted")).await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "delivery to the sink", || sink.count() == 1).await;
    // The DSN would be queued before the message is removed.
    gw.wait_log("done; removed from queue", T);
    assert!(!gw.log_text().contains("DSN queued"), "{}", gw.log_text());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(victim.count(), 0, "reflected: {:?}", victim.all());

    let r = send_from(&gw, "127.0.0.1", mail, rcpt, &data("trusted")).await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "the relayed DSN", || victim.count() == 1).await;
    let dsn = &victim.all()[0];
    assert_eq!(dsn.from, "");
    assert_eq!(dsn.to, vec!["victim@victim.test"]);
    assert!(
        dsn.data
            .contains("Final-Recipient: rfc822; user@example.test\r\nAction: relayed"),
        "{}",
        dsn.data
    );
    assert!(
        dsn.data.contains("Content-Type: message/rfc822")
            && dsn.data.contains("reflected body trusted"),
        "{}",
        dsn.data
    );
    assert!(!dsn.data.contains("reflected body untrusted"));
}

/// Finding "a failure DSN does the same" (reflection through bounces).
/// Before: RET=FULL from an untrusted client returned the whole message to
/// any sender. After: the DSN carries the headers only
/// (text/rfc822-headers), and a sender whose domain does not resolve, or
/// that did not pass SPF (any address a client can forge), gets none at
/// all.
#[tokio::test(flavor = "multi_thread")]
async fn failure_dsn_for_an_untrusted_source_returns_headers_only() {
    let dns = DnsServer::start(
        Zone::new()
            .a("remote.test", "127.0.0.1")
            .txt("remote.test", "v=spf1 ip4:127.0.0.5 -all")
            .a("victim.test", "127.0.0.1")
            .txt("victim.test", "v=spf1 ip4:192.0.2.1 -all"),
    )
    .await;
    let sink = Sink::start("127.0.0.1:0").await;
    let back = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}{}{}{}{}{}",
            delivery(dns.addr),
            route("example.test", sink.addr),
            route("remote.test", back.addr),
            route("forged.test", back.addr),
            route("victim.test", back.addr)
        ),
    );
    let data = |from: &str| {
        format!(
            "From: <{from}>\r\nSubject: bounce me\r\nMessage-ID: <hdrs-{from}>\r\n\r\n\
             secret body text\r\n"
        )
    };

    // A sender domain that does not exist: no DSN, and the log says why.
    let r = send_from(
        &gw,
        "127.0.0.5",
        "<someone@forged.test> RET=FULL",
        "<reject-me@example.test>",
        &data("someone@forged.test"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    gw.wait_log("DSN withheld", T);
    assert!(
        gw.log_text().contains("forged.test does not exist"),
        "{}",
        gw.log_text()
    );

    // A sender domain that resolves, but its SPF does not name the client:
    // the sender may be forged (a victim of backscatter): no DSN either.
    let r = send_from(
        &gw,
        "127.0.0.5",
        "<someone@victim.test>",
        "<reject-me@example.test>",
        &data("someone@victim.test"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    gw.wait_log("someone@victim.test did not pass SPF", T);

    let r = send_from(
        &gw,
        "127.0.0.5",
        "<author@remote.test> RET=FULL",
        "<reject-me@example.test>",
        &data("author@remote.test"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "the failure DSN", || back.count() == 1).await;
    let dsn = &back.all()[0];
    assert_eq!(dsn.from, "");
    assert_eq!(dsn.to, vec!["author@remote.test"]);
    assert!(dsn.data.contains("Action: failed"), "{}", dsn.data);
    assert!(
        dsn.data.contains("Content-Type: text/rfc822-headers"),
        "{}",
        dsn.data
    );
    assert!(!dsn.data.contains("message/rfc822"), "{}", dsn.data);
    assert!(dsn.data.contains("Subject: bounce me"), "{}", dsn.data);
    assert!(!dsn.data.contains("secret body text"), "{}", dsn.data);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(back.count(), 1, "{:?}", back.all());
}

/// Finding "deadlines include waiting" at intake, under a DNS outage with
/// more inbound messages than content workers. Before: the receive stage's
/// in-flight deadline (message_deadline + 5 s) ran while a message waited
/// for a free worker; with one worker and every message spending its whole
/// authentication budget (here 2 s), the sixth waited past 9 s and the
/// supervisor killed the gateway, dropping every session and charging the
/// messages in flight. After: the deadline starts when a worker takes the
/// message; all get 250 and the gateway is never restarted.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_with_more_messages_than_workers_kills_nothing() {
    let dns = silent_nameserver().await;
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}{}{}[workers]\nprocesses = 1\nmessage_deadline = \"4s\"\n",
            delivery(dns),
            route("example.test", sink.addr)
        ),
    );
    let sends = (0..7).map(|i| {
        let gw = &gw;
        async move {
            let data = format!(
                "From: Pal <pal@friendly.test>\r\nSubject: queued {i}\r\n\
                 Message-ID: <queued-{i}@test>\r\n\r\nwanted\r\n"
            );
            send_from(
                gw,
                "127.0.0.5",
                "<pal@friendly.test>",
                "<user@example.test>",
                &data,
            )
            .await
        }
    });
    let replies = futures_util::future::join_all(sends).await;
    for r in &replies {
        assert!(r.starts_with("250"), "{r}\n{}", gw.log_text());
    }
    wait_until(T, "all delivered", || sink.count() == 7).await;
    let log = gw.log_text();
    assert!(!log.contains("gateway died"), "{log}");
    assert!(!log.contains("content processing failed"), "{log}");
}
