//! End-to-end relay through the real `postern` binary on loopback: routes,
//! MX delivery from a real DNS server (including answers that need TCP),
//! implicit and null MX, temporary and permanent failures with DSNs, and
//! partial recipient failure.

mod common;

use common::{body, closed_port, route, smtp_send, wait_until, DnsServer, Gateway, Sink, Zone};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Sinks on several loopback addresses sharing one port (the delivery port).
async fn sinks(ips: &[&str]) -> (u16, Vec<Sink>) {
    'retry: loop {
        let first = Sink::start(&format!("{}:0", ips[0])).await;
        let port = first.addr.port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match tokio::net::TcpListener::bind(format!("{ip}:{port}")).await {
                Ok(l) => drop(l),
                Err(_) => continue 'retry,
            }
            all.push(Sink::start(&format!("{ip}:{port}")).await);
        }
        return (port, all);
    }
}

fn delivery(port: u16, dns: &DnsServer) -> String {
    format!(
        "[delivery]\nport = {port}\nnameservers = [\"{}\"]\nstarttls = false\ndns_timeout = \"2s\"\n",
        dns.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_relay_to_a_route() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "",
        &format!(
            "[relay]\naccepted_domains = [\"example.test\"]\ntrusted_networks = []\n{}",
            route("example.test", sink.addr)
        ),
    );
    let reply = smtp_send(
        gw.smtp,
        "someone@internet.test",
        &["user@example.test"],
        &body("inbound"),
    )
    .await
    .unwrap();
    assert!(reply.contains("queued as"), "{reply}");
    wait_until(T, "delivery to the route", || sink.count() == 1).await;
    let m = &sink.all()[0];
    assert_eq!(m.from, "someone@internet.test");
    assert_eq!(m.to, vec!["user@example.test"]);
    // Inbound: our Authentication-Results on top, then our Received.
    assert!(
        m.data
            .starts_with("Authentication-Results: gw.example.test;"),
        "{}",
        m.data
    );
    assert!(m.data.contains("\r\nReceived: from "), "{}", m.data);
    assert!(m.data.contains("by gw.example.test (Postern)"));
    assert!(m.data.contains("Message-ID: <inbound@test>"));
    // The body arrives as the gateway got it: the test client (lettre)
    // adds one empty line before its terminator; the gateway's own delivery
    // (also lettre) used to add a second, one more per hop.
    assert!(
        m.data.ends_with("\r\nbody of inbound\r\n\r\n") && !m.data.ends_with("\r\n\r\n\r\n"),
        "{:?}",
        m.data
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_via_mx_large_answer_over_tcp_to_lowest_preference() {
    let (port, s) = sinks(&["127.0.0.2", "127.0.0.3"]).await;
    // Enough MX records that the answer is far over 4 KB: only TCP carries it.
    let mut zone = Zone::new()
        .mx("big.test", 5, "primary.big.test")
        .a("primary.big.test", "127.0.0.2");
    for i in 0..120 {
        let host = format!("backup-{i:03}-with-a-rather-long-label.big.test");
        zone = zone.mx("big.test", 50, &host).a(&host, "127.0.0.3");
    }
    let dns = DnsServer::start(zone).await;
    let gw = Gateway::start("", &delivery(port, &dns));
    smtp_send(
        gw.smtp,
        "internal@example.test",
        &["far@big.test"],
        &body("bigmx"),
    )
    .await
    .unwrap();
    wait_until(T, "MX delivery", || s[0].count() == 1).await;
    assert_eq!(s[1].count(), 0, "a backup MX was used");
    assert!(dns.truncated.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(dns.tcp_queries.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn implicit_mx_and_null_mx_bounce() {
    let (port, s) = sinks(&["127.0.0.4"]).await;
    let back = Sink::start("127.0.0.1:0").await;
    let zone = Zone::new()
        .exists("implicit.test")
        .a("implicit.test", "127.0.0.4")
        .mx("nullmx.test", 0, ".");
    let dns = DnsServer::start(zone).await;
    let gw = Gateway::start(
        "",
        &format!(
            "{}{}",
            delivery(port, &dns),
            route("example.test", back.addr)
        ),
    );
    smtp_send(
        gw.smtp,
        "me@example.test",
        &["you@implicit.test"],
        &body("implicit"),
    )
    .await
    .unwrap();
    wait_until(T, "implicit MX delivery", || s[0].count() == 1).await;
    smtp_send(
        gw.smtp,
        "me@example.test",
        &["you@nullmx.test"],
        &body("nullmx"),
    )
    .await
    .unwrap();
    wait_until(T, "null MX DSN", || back.count() == 1).await;
    let dsn = &back.all()[0];
    assert_eq!(dsn.from, "", "DSNs come from the null sender");
    assert_eq!(dsn.to, vec!["me@example.test"]);
    assert!(dsn.data.contains("report-type=delivery-status"));
    assert!(dsn
        .data
        .contains("Final-Recipient: rfc822; you@nullmx.test"));
    assert!(dsn.data.contains("Status: 5.1.10"), "{}", dsn.data);
    assert!(dsn.data.contains("Message-ID: <nullmx@test>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn temporary_failure_then_success() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &route("example.test", sink.addr));
    smtp_send(
        gw.smtp,
        "a@example.test",
        &["tempfail@example.test"],
        &body("retry"),
    )
    .await
    .unwrap();
    wait_until(T, "delivery after a retry", || sink.count() == 1).await;
    assert!(
        gw.log_text().contains("451 4.2.0"),
        "first attempt was deferred"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_failure_bounces_and_partial_rcpt_failure() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &route("*", sink.addr));
    smtp_send(
        gw.smtp,
        "author@example.test",
        &[
            "good@example.test",
            "reject-me@example.test",
            "good2@other.test",
        ],
        &body("partial"),
    )
    .await
    .unwrap();
    wait_until(T, "delivery and DSN", || sink.count() == 3).await;
    let delivered = sink.with("Message-ID: <partial@test>");
    let mut got: Vec<String> = delivered
        .iter()
        .filter(|m| !m.from.is_empty())
        .flat_map(|m| m.to.clone())
        .collect();
    got.sort();
    assert_eq!(got, vec!["good2@other.test", "good@example.test"]);
    let dsn: Vec<_> = sink
        .all()
        .into_iter()
        .filter(|m| m.from.is_empty())
        .collect();
    assert_eq!(dsn.len(), 1);
    assert_eq!(dsn[0].to, vec!["author@example.test"]);
    assert!(dsn[0]
        .data
        .contains("Final-Recipient: rfc822; reject-me@example.test"));
    assert!(dsn[0].data.contains("Status: 5.1.1"));
    assert!(dsn[0]
        .data
        .contains("Diagnostic-Code: smtp; 550 no such user here"));
    assert!(!dsn[0].data.contains("good@example.test\r\nAction"));
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_bounces_with_the_last_error() {
    let back = Sink::start("127.0.0.1:0").await;
    // other.test goes to a closed port: every attempt fails temporarily.
    let closed = format!("127.0.0.1:{}", closed_port());
    let gw = Gateway::start_with_queue(
        "",
        "max_age = \"2s\"",
        &format!(
            "{}{}",
            route("other.test", closed),
            route("example.test", back.addr)
        ),
    );
    smtp_send(
        gw.smtp,
        "me@example.test",
        &["far@other.test"],
        &body("expire"),
    )
    .await
    .unwrap();
    wait_until(T, "expiry DSN", || back.count() == 1).await;
    let dsn = &back.all()[0];
    assert_eq!(dsn.from, "");
    assert!(dsn.data.contains("Status: 4.4.7"), "{}", dsn.data);
    assert!(dsn.data.contains("delivery time expired: last error"));
    assert!(dsn.data.contains("cannot connect"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bounce_of_a_bounce_is_never_sent() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &route("*", sink.addr));
    let mut c = common::RawClient::connect(gw.smtp).await;
    c.cmd("EHLO t").await;
    let r = c
        .transaction(
            "<>",
            &["<reject@example.test>"],
            b"Subject: a bounce\r\n\r\nx\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    gw.wait_log("not bouncing a bounce", T);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_answer() {
    let gw = Gateway::start("", "");
    assert!(gw.admin_get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(gw.admin_get("/readyz").starts_with("HTTP/1.1 200"));
    let m = gw.admin_get("/metrics");
    assert!(m.contains("postern_queue_messages{state=\"due\"} 0"), "{m}");
    assert!(gw.admin_get("/nope").starts_with("HTTP/1.1 404"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dsn_parameters_are_honoured() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &route("*", sink.addr));
    let mut c = common::RawClient::connect(gw.smtp).await;
    assert!(c.cmd("EHLO t.test").await.contains("DSN"));
    let r = c
        .transaction(
            "<author@example.test> RET=FULL ENVID=QQ314159",
            &[
                "<reject-a@example.test> NOTIFY=FAILURE ORCPT=rfc822;first+40orig.test",
                "<reject-b@example.test> NOTIFY=NEVER",
                "<good@example.test> NOTIFY=SUCCESS",
            ],
            b"Subject: dsn params\r\n\r\nthe full body\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "the message and the DSN", || sink.count() == 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.count(), 2, "NOTIFY=NEVER still produced a DSN");
    let dsns: Vec<_> = sink
        .all()
        .into_iter()
        .filter(|m| m.from.is_empty())
        .collect();
    assert_eq!(dsns.len(), 1);
    let dsn = &dsns[0];
    // The sink offers no DSN, so Postern reports the success itself.
    assert!(
        dsn.data
            .contains("Final-Recipient: rfc822; good@example.test\r\nAction: relayed"),
        "{}",
        dsn.data
    );
    assert!(
        dsn.data.contains("Original-Envelope-Id: QQ314159"),
        "{}",
        dsn.data
    );
    assert!(dsn
        .data
        .contains("Original-Recipient: rfc822;first+40orig.test"));
    assert!(dsn
        .data
        .contains("Final-Recipient: rfc822; reject-a@example.test"));
    assert!(!dsn.data.contains("reject-b@example.test"));
    assert!(
        dsn.data.contains("Content-Type: message/rfc822") && dsn.data.contains("the full body")
    );
}
