//! The SMTP front of the real binary, spoken to with raw bytes: relay
//! control, SMTP smuggling sequences, pipelining, limits and error caps.

mod common;

use common::{read_some, route, swaks, wait_until, Gateway, RawClient, Sink, RELAY};
use std::time::Duration;

fn routed(sink: &Sink, server: &str) -> Gateway {
    Gateway::start(server, &format!("{RELAY}{}", route("*", sink.addr)))
}

#[tokio::test(flavor = "multi_thread")]
async fn open_relay_refused_for_untrusted_clients() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "");
    // 127.0.0.5 is loopback but not in trusted_networks.
    let mut c = RawClient::connect_from(gw.smtp, Some("127.0.0.5")).await;
    assert!(c.cmd("EHLO outsider.test").await.starts_with("250"));
    assert!(c
        .cmd("MAIL FROM:<spam@outsider.test>")
        .await
        .starts_with("250"));
    for rcpt in [
        "<victim@elsewhere.test>",
        "<victim@EXAMPLE.test.elsewhere.test>",
        "<victim@sub.example.test>",
        "<@example.test:victim@elsewhere.test>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert!(
            r.starts_with("554 5.7.1") || r.starts_with("501"),
            "{rcpt}: {r}"
        );
    }
    // Our own domain is accepted from anyone, in any case.
    assert!(c
        .cmd("RCPT TO:<user@Example.TEST>")
        .await
        .starts_with("250"));
    // The trusted client may relay.
    let mut t = RawClient::connect_from(gw.smtp, Some("127.0.0.1")).await;
    t.cmd("EHLO inside.test").await;
    t.cmd("MAIL FROM:<me@example.test>").await;
    assert!(t
        .cmd("RCPT TO:<you@elsewhere.test>")
        .await
        .starts_with("250"));
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_sequences_are_rejected() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "");
    for (name, seq) in [
        ("LF.LF", &b"\n.\n"[..]),
        ("LF.CRLF", b"\n.\r\n"),
        ("CR.CR", b"\r.\r"),
        ("CRLF.LF", b"\r\n.\n"),
        ("CRLF.CR", b"\r\n.\r"),
    ] {
        let mut c = RawClient::connect(gw.smtp).await;
        c.cmd("EHLO smuggler.test").await;
        c.begin_data("<a@example.test>", &["<b@example.test>"])
            .await;
        let mut data = b"Subject: outer\r\n\r\nouter".to_vec();
        data.extend_from_slice(seq);
        data.extend_from_slice(
            b"MAIL FROM:<smuggled@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n",
        );
        c.send(&data).await;
        let r = c.reply().await;
        assert!(r.starts_with("550 5.6.0"), "{name}: {r}");
        // The session goes on: a clean message is still accepted.
        let clean = format!("Subject: clean {name}\r\n\r\nok\r\n.\r\n");
        let r = c
            .transaction("<a@example.test>", &["<b@example.test>"], clean.as_bytes())
            .await;
        assert!(r.starts_with("250"), "{name}: {r}");
    }
    wait_until(Duration::from_secs(30), "clean messages", || {
        sink.count() == 5
    })
    .await;
    assert!(sink.with("smuggled").is_empty());
    assert!(sink.with("outer").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_transaction_gets_all_replies() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "");
    let mut c = RawClient::connect(gw.smtp).await;
    let ehlo = c.cmd("EHLO p.test").await;
    for ext in ["PIPELINING", "8BITMIME", "SIZE", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.contains(ext), "{ehlo}");
    }
    c.send(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
        .await;
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    c.send(b"Subject: piped\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 queued as"));
    assert!(c.reply().await.starts_with("221"));
    wait_until(Duration::from_secs(30), "delivery", || sink.count() == 1).await;
    assert!(sink.all()[0].data.contains("\r\n.leading dot\r\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_replies() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(
        &sink,
        "max_message_size = 2000\nmax_recipients = 2\nmax_errors = 7\ncommand_timeout = \"2s\"",
    );
    let mut c = RawClient::connect(gw.smtp).await;
    assert!(c.cmd("MAIL FROM:<a@example.test>").await.starts_with("503"));
    c.cmd("EHLO l.test").await;
    assert!(c
        .cmd(&format!("NOOP {}", "x".repeat(600)))
        .await
        .starts_with("500 5.5.2"));
    assert!(c
        .cmd("MAIL FROM:<a@example.test> SIZE=5000")
        .await
        .starts_with("552 5.3.4"));
    c.cmd("MAIL FROM:<a@example.test>").await;
    c.cmd("RCPT TO:<1@example.test>").await;
    c.cmd("RCPT TO:<2@example.test>").await;
    assert!(c
        .cmd("RCPT TO:<3@example.test>")
        .await
        .starts_with("452 4.5.3"));
    assert!(c.cmd("VRFY x").await.starts_with("252"));
    assert!(c.cmd("HELP").await.starts_with("214"));
    c.cmd("DATA").await;
    c.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y\r\n".repeat(1000)).as_bytes())
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    c.cmd("MAIL FROM:<a@example.test>").await;
    c.cmd("RCPT TO:<1@example.test>").await;
    c.cmd("DATA").await;
    c.send(format!("Subject: long\r\n\r\n{}\r\n.\r\n", "z".repeat(1200)).as_bytes())
        .await;
    assert!(c.reply().await.starts_with("550 5.6.0"));
    // Seventh error: 421 and the connection closes.
    assert!(c.cmd("BOGUS").await.starts_with("421 4.7.0"));
    assert_eq!(c.reply().await, "");
    // Idle past the command timeout: 421 4.4.2.
    let mut idle = RawClient::connect(gw.smtp).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(idle.reply().await.starts_with("421 4.4.2"));
    assert_eq!(sink.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_limit() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "max_connections = 2");
    let _a = RawClient::connect(gw.smtp).await;
    let _b = RawClient::connect(gw.smtp).await;
    let mut s = tokio::net::TcpStream::connect(gw.smtp).await.unwrap();
    assert!(read_some(&mut s).await.starts_with("421 4.3.2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_sends_through_the_gateway() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "");
    let run = swaks(
        gw.smtp,
        &[
            "--from",
            "swaks@example.test",
            "--to",
            "user@example.test,other@example.test",
            "--pipeline",
            "--header",
            "Subject: via swaks",
            "--body",
            "hello from swaks",
        ],
    )
    .await;
    let text = run.text;
    assert!(run.ok, "{text}");
    assert!(text.contains("queued as"), "{text}");
    wait_until(Duration::from_secs(30), "swaks delivery", || {
        sink.count() == 1
    })
    .await;
    let m = &sink.all()[0];
    assert_eq!(m.to.len(), 2);
    assert!(m.data.contains("Subject: via swaks") && m.data.contains("hello from swaks"));
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_relay_tricks_are_refused_for_untrusted_clients() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "max_errors = 100");
    let mut c = RawClient::connect_from(gw.smtp, Some("127.0.0.6")).await;
    c.cmd("EHLO outsider.test").await;
    c.cmd("MAIL FROM:<spam@outsider.test>").await;
    let tricks = [
        ("percent hack", "<victim%elsewhere.test@example.test>"),
        ("bang path", "<elsewhere.test!victim@example.test>"),
        (
            "bang path, second form",
            "<victim!elsewhere.test@example.test>",
        ),
        ("source route", "<@example.test:victim@elsewhere.test>"),
        (
            "source route, two hops",
            "<@example.test,@relay.test:victim@elsewhere.test>",
        ),
        (
            "quoted local part with @",
            "<\"victim@elsewhere.test\"@example.test>",
        ),
        ("trailing dot", "<victim@elsewhere.test.>"),
        ("trailing dot on ours", "<victim@example.test.>"),
        ("IP literal", "<victim@[127.0.0.1]>"),
        ("IPv6 literal", "<victim@[IPv6:::1]>"),
        (
            "accepted domain as a suffix",
            "<victim@example.test.elsewhere.test>",
        ),
        ("accepted domain as a prefix", "<victim@evil-example.test>"),
        ("subdomain of ours", "<victim@relay.example.test>"),
        ("percent-encoded dot", "<victim@example%2etest>"),
        ("unbracketed", "victim@elsewhere.test"),
        ("double at", "<victim@elsewhere.test@example.test>"),
    ];
    for (name, rcpt) in tricks {
        let r = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert!(r.starts_with('5'), "{name} ({rcpt}) was accepted: {r}");
    }
    // Mixed case of our own domain is still ours.
    assert!(c
        .cmd("RCPT TO:<User@EXAMPLE.Test>")
        .await
        .starts_with("250"));
}

#[tokio::test(flavor = "multi_thread")]
async fn smtputf8_nul_and_recipient_validation() {
    let sink = Sink::start("127.0.0.1:0").await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("recipients");
    std::fs::write(&list, "alice@example.test\njörg@example.test\n").unwrap();
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}recipients_file = \"{}\"\n{}",
            list.display(),
            route("*", sink.addr)
        ),
    );
    let mut c = RawClient::connect(gw.smtp).await;
    assert!(c.cmd("EHLO t.test").await.contains("SMTPUTF8"));
    assert!(c
        .cmd("MAIL FROM:<jörg@example.test>")
        .await
        .starts_with("553 5.6.7"));
    assert!(c
        .cmd("MAIL FROM:<jörg@example.test> SMTPUTF8")
        .await
        .starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<jörg@example.test>")
        .await
        .starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<mallory@example.test>")
        .await
        .starts_with("550 5.1.1"));
    assert!(c
        .cmd("RCPT TO:<Alice@example.test>")
        .await
        .starts_with("250"));
    assert!(c.cmd("RSET").await.starts_with("250"));
    c.cmd("MAIL FROM:<a@example.test>").await;
    assert!(c
        .cmd("RCPT TO:<jörg@example.test>")
        .await
        .starts_with("553 5.6.7"));
    c.cmd("RCPT TO:<alice@example.test>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: nul\r\n\r\nbefore\0after\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("550 5.6.0"));
    assert_eq!(sink.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunking_bdat_with_strict_line_endings() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "");
    let mut c = RawClient::connect(gw.smtp).await;
    assert!(c.cmd("EHLO t.test").await.contains("CHUNKING"));
    c.cmd("MAIL FROM:<a@example.test>").await;
    c.cmd("RCPT TO:<b@example.test>").await;
    let part1 = b"Subject: chunked\r\n\r\nfirst ";
    let part2 = b"half, .dot\r\nsecond line\r\n";
    // Pipelined: two chunks and the LAST in one write.
    let mut w = format!("BDAT {}\r\n", part1.len()).into_bytes();
    w.extend_from_slice(part1);
    w.extend_from_slice(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
    w.extend_from_slice(part2);
    c.send(&w).await;
    assert!(c
        .reply()
        .await
        .starts_with(&format!("250 2.0.0 {} octets", part1.len())));
    assert!(c.reply().await.contains("queued as"));
    wait_until(Duration::from_secs(30), "delivery", || sink.count() == 1).await;
    // A dot at the start of a line is data in BDAT: no stuffing.
    assert!(sink.all()[0]
        .data
        .contains("first half, .dot\r\nsecond line\r\n"));
    // Smuggling through BDAT: bare LF inside a chunk is refused.
    c.cmd("MAIL FROM:<a@example.test>").await;
    c.cmd("RCPT TO:<b@example.test>").await;
    let evil = b"Subject: x\r\n\r\nx\n.\nMAIL FROM:<e@evil.test>\r\n";
    let mut w = format!("BDAT {} LAST\r\n", evil.len()).into_bytes();
    w.extend_from_slice(evil);
    c.send(&w).await;
    assert!(c.reply().await.starts_with("550 5.6.0"));
    // DATA after BDAT in one transaction is refused; BDAT 0 LAST ends it.
    c.cmd("MAIL FROM:<a@example.test>").await;
    c.cmd("RCPT TO:<b@example.test>").await;
    c.send(b"BDAT 14\r\nSubject: y\r\n\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("503"));
    assert!(c.cmd("BDAT 0 LAST").await.contains("queued as"));
    wait_until(Duration::from_secs(30), "second delivery", || {
        sink.count() == 2
    })
    .await;
}

/// EHLO in the middle of a BDAT transaction ends it, chunks and all: octets
/// of an abandoned transaction never reach the next message. (Before the
/// session owned its BDAT state, they were prepended to it.)
#[tokio::test(flavor = "multi_thread")]
async fn bdat_chunks_of_an_abandoned_transaction_are_dropped() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "");
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO t.test").await;
    c.cmd("MAIL FROM:<a@example.test>").await;
    c.cmd("RCPT TO:<b@example.test>").await;
    c.send(b"BDAT 14\r\nX-Stale: old\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.cmd("EHLO t.test").await.starts_with("250"));
    c.cmd("MAIL FROM:<a@example.test>").await;
    c.cmd("RCPT TO:<b@example.test>").await;
    let fresh = b"Subject: fresh\r\n\r\nnew body\r\n";
    let mut w = format!("BDAT {} LAST\r\n", fresh.len()).into_bytes();
    w.extend_from_slice(fresh);
    c.send(&w).await;
    let r = c.reply().await;
    assert!(r.contains("queued as"), "{r}");
    wait_until(Duration::from_secs(30), "delivery", || sink.count() == 1).await;
    let data = &sink.all()[0].data;
    assert!(data.contains("Subject: fresh\r\n"), "{data}");
    assert!(data.contains("\r\n\r\nnew body\r\n"), "{data}");
    assert!(!data.contains("X-Stale"), "{data}");
}

/// A header section of millions of tiny lines is refused for its size
/// (552 5.3.4) by the content worker: finding the header fields costs no
/// memory before the limit is checked, so the worker (256 MiB address
/// space) neither dies nor blames the message for a crash.
#[tokio::test(flavor = "multi_thread")]
async fn a_header_of_millions_of_lines_is_refused_for_its_size() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = routed(&sink, "");
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO t.test").await;
    c.begin_data("<a@example.test>", &["<b@example.test>"])
        .await;
    // 24 MiB of 4-octet header lines: 6.3 million fields.
    let mut data = b"a:\r\n".repeat(6 * 1024 * 1024);
    data.extend_from_slice(b"\r\nbody\r\n.\r\n");
    c.send(&data).await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert_eq!(sink.count(), 0);
}
