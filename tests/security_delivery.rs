//! Issue 11, the delivery side, against the real binary: a route to our own
//! listening socket is a loop (5.4.6, no copies to ourselves); a next hop
//! that never ends its reply line costs one deferral, not the gateway's
//! memory; NOTIFY=NEVER wins over an ORCPT naming SUCCESS; and a tarpit
//! next hop, or waiting behind one, is a deferral, never a hung gateway.

mod common;

use common::{
    closed_port, memory, route, wait_until, DnsServer, Gateway, RawClient, Sink, Zone, RELAY,
};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(30);

/// The value of the counter line `name <value>`, if there is one.
fn metric(gw: &Gateway, name: &str) -> Option<u64> {
    let text = gw.admin_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// After time for any copy to come round again (2 s), the gateway has
/// received at most `max` messages: nothing looped.
async fn no_copy_came_round(gw: &Gateway, max: u64) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = metric(gw, "postern_messages_received_total");
    assert!(
        received.is_some_and(|n| n <= max),
        "the gateway received {received:?} messages"
    );
}

/// The supervisor never restarted the gateway: nothing crashed or hung.
fn never_restarted(gw: &Gateway) {
    let restarts = metric(gw, "postern_gateway_restarts_total");
    assert_eq!(restarts, Some(0), "the gateway was restarted");
    let log = gw.log_text();
    assert!(
        !log.contains("gateway died") && !log.contains("passed its deadline"),
        "{log}"
    );
}

/// Sends one message from the trusted client to `rcpt` (with its RCPT
/// parameters) and checks the bounce the sender domain (routed to
/// `senders`) gets: from `<>`, 5.4.6, saying `why`. Returns it.
async fn bounce_of(gw: &Gateway, senders: &Sink, rcpt: &str, why: &str) -> common::sink::SinkMsg {
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO client.test").await;
    let r = c
        .transaction(
            "<s@sender.test>",
            &[rcpt],
            b"Subject: round and round\r\n\r\nloop\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "the 5.4.6 bounce", || senders.count() >= 1).await;
    let dsn = senders.all()[0].clone();
    assert!(dsn.from.is_empty(), "a DSN comes from <>: {}", dsn.from);
    assert!(dsn.data.contains("Status: 5.4.6"), "{}", dsn.data);
    assert!(dsn.data.contains(why), "{why}: {}", dsn.data);
    dsn
}

/// Finding "mail loop from one message": `delivery.port` equal to the
/// listening port and a route to our own address. Before: the gateway
/// delivered to itself, accepted its own copy and delivered it again,
/// without end (13,543 messages in 13 s). After: the recipient fails with
/// 5.4.6 "mail for example.test loops back to myself", the sender gets the
/// DSN, and the gateway received the one message only.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_to_ourselves_bounces_with_5_4_6() {
    let senders = Sink::start("127.0.0.1:0").await;
    let port = closed_port();
    let extra = format!(
        "{RELAY}[delivery]\nport = {port}\nstarttls = false\n{}{}",
        route("example.test", format!("127.0.0.1:{port}")),
        route("sender.test", senders.addr),
    );
    let gw = Gateway::start_full(
        "",
        "",
        &extra,
        &[("POSTERN__SERVER__LISTEN", format!("[\"127.0.0.1:{port}\"]"))],
    );
    assert_eq!(gw.smtp.port(), port, "the gateway must listen on the route");
    bounce_of(
        &gw,
        &senders,
        "<user@example.test> NOTIFY=SUCCESS,FAILURE",
        "mail for example.test loops back to myself",
    )
    .await;
    no_copy_came_round(&gw, 2).await;
    assert_eq!(senders.count(), 1, "one message, one bounce");
    never_restarted(&gw);
}

/// One connection of the hostile next hop: `220-`, then `x` without a line
/// feed until the gateway hangs up, or `end` once far more than any reply
/// budget was sent (so the gateway, not the hop, ends a bounded read; 10 s
/// more at most); the octets written.
async fn endless_greeting(mut s: TcpStream, end: Instant) -> u64 {
    const FAR_MORE: u64 = 4 << 20;
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0u64;
    if s.write_all(b"220-").await.is_err() {
        return 0;
    }
    let hard_end = end + Duration::from_secs(10);
    while Instant::now() < hard_end && (Instant::now() < end || sent < FAR_MORE) {
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len() as u64,
            Ok(Err(_)) => break,
            // The gateway stopped reading: a hang-up is on its way.
            Err(_) => {}
        }
    }
    sent
}

/// Finding "a hostile next hop kills the gateway": a next hop that answers
/// `220-` and then streams bytes without a line feed for 5 s. Before: lettre
/// read the line without bound; the gateway grew to 2.2 GiB and died (and
/// was restarted). After: the read fails once `delivery.max_reply_size` is
/// spent, the message is deferred with "next hop sent an over-long reply",
/// the gateway's memory stays flat and it is never restarted.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_reply_line_is_a_deferral_not_a_crash() {
    let hop = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop_addr = hop.local_addr().unwrap();
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}[delivery]\nstarttls = false\n{}",
            route("example.test", hop_addr)
        ),
    );
    let pgid = gw.child.id();
    let before = memory::rss_tree_kib(pgid);
    assert!(before > 1000, "cannot measure memory ({before} KiB)");
    // The hop: accepts for 5 s from its first connection, streaming to each
    // in turn; then hands the listener back, so later attempts wait in its
    // backlog and the deferral reason stays the last one recorded.
    let streamer = tokio::spawn(async move {
        let mut window_end: Option<Instant> = None;
        let (mut conns, mut sent) = (0u32, 0u64);
        loop {
            let limit = match window_end {
                Some(end) => end.saturating_duration_since(Instant::now()),
                None => T,
            };
            let Ok(Ok((s, _))) = tokio::time::timeout(limit, hop.accept()).await else {
                break;
            };
            conns += 1;
            let end = *window_end.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
            sent += endless_greeting(s, end).await;
        }
        (hop, conns, sent)
    });
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO client.test").await;
    let r = c
        .transaction(
            "<s@sender.test>",
            &["<user@example.test>"],
            b"Subject: endless\r\n\r\nhi\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let mut peak = before;
    let started = Instant::now();
    while !streamer.is_finished() && started.elapsed() < Duration::from_secs(40) {
        peak = peak.max(memory::rss_tree_kib(pgid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_hop, conns, sent) = streamer.await.unwrap();
    eprintln!(
        "{conns} connection(s), {sent} octets streamed; tree RSS {before} KiB, peak {peak} KiB"
    );
    assert!(conns >= 1, "the gateway never tried the hostile next hop");
    assert!(
        peak < before + 200 * 1024,
        "memory grew from {before} KiB to {peak} KiB"
    );
    gw.wait_log("next hop sent an over-long reply", T);
    let deferred = gw.log_text().lines().any(|l| {
        l.contains("delivery attempt")
            && l.contains("deferred")
            && l.contains("451 4.5.0 next hop sent an over-long reply")
    });
    assert!(deferred, "{}", gw.log_text());
    wait_until(T, "the reason in the queue", || {
        let list = gw.queue(&["list", "--json"]);
        String::from_utf8_lossy(&list.stdout).contains("next hop sent an over-long reply")
    })
    .await;
    never_restarted(&gw);
    // Still serving.
    let mut c = RawClient::connect(gw.smtp).await;
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
}

/// Finding "`NOTIFY=NEVER` is ignored when ORCPT contains SUCCESS": the
/// relayed decision was a substring check over both parameters. Before: a
/// "relayed" DSN for a recipient that asked for none. After: NOTIFY is read
/// as a keyword list; only the control message (NOTIFY=SUCCESS) gets one.
/// The sink offers no DSN, so Postern itself would report the success.
#[tokio::test(flavor = "multi_thread")]
async fn notify_never_wins_over_an_orcpt_naming_success() {
    let sink = Sink::start("127.0.0.1:0").await;
    let senders = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}{}{}",
            route("example.test", sink.addr),
            route("sender.test", senders.addr)
        ),
    );
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO client.test").await;
    let r = c
        .transaction(
            "<s@sender.test>",
            &["<never@example.test> NOTIFY=NEVER ORCPT=rfc822;SUCCESS@x.test"],
            b"Subject: never\r\n\r\nno notice, please\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "the first delivery", || sink.count() == 1).await;
    let r = c
        .transaction(
            "<s@sender.test>",
            &["<control@example.test> NOTIFY=SUCCESS"],
            b"Subject: control\r\n\r\na notice, please\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "the control's relayed notice", || senders.count() >= 1).await;
    // Time for a notice about the first message, queued before the
    // control was even sent, to arrive too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dsns = senders.all();
    assert_eq!(dsns.len(), 1, "{dsns:#?}");
    assert!(
        dsns[0].data.contains("control@example.test")
            && !dsns[0].data.contains("never@example.test"),
        "{}",
        dsns[0].data
    );
}

/// Finding "stage deadlines include waiting time": three messages to a
/// tarpit next hop (it never greets) with one connection per destination
/// and a 4 s in-flight deadline. Before: the first attempt waited for the
/// greeting for the 5-minute command timeout and the later ones waited for
/// the slot, all in flight: the supervisor took the gateway for hung and
/// killed it. After: each attempt's work ends at `delivery.attempt_timeout`
/// (kept under the deadline) as a deferral, waiting is not in flight, and
/// the gateway is never restarted.
#[tokio::test(flavor = "multi_thread")]
async fn a_tarpit_next_hop_is_a_deferral_not_a_hang() {
    // Never accepts: connections complete in the backlog, no greeting.
    let tarpit = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}[delivery]\nstarttls = false\nmax_per_destination = 1\n\
             [workers]\ndelivery_deadline = \"4s\"\n{}",
            route("example.test", tarpit.local_addr().unwrap())
        ),
    );
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO client.test").await;
    for i in 0..3 {
        let rcpt = format!("<user{i}@example.test>");
        let r = c
            .transaction(
                "<s@sender.test>",
                &[rcpt.as_str()],
                b"Subject: tarpit\r\n\r\nhi\r\n.\r\n",
            )
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    // One after the other: about 3.2 s each, the last one waited ~6.4 s.
    wait_until(Duration::from_secs(40), "three timed-out attempts", || {
        let log = gw.log_text();
        (0..3).all(|i| {
            log.lines().any(|l| {
                l.contains("delivery attempt")
                    && l.contains(&format!("user{i}@example.test"))
                    && l.contains("took longer than")
            })
        })
    })
    .await;
    never_restarted(&gw);
    drop(tarpit);
}

/// Finding "mail loop": outbound hygiene removes every Received field but
/// ours, so a loop through an internal relay (the gateway routes to a
/// relay that sends the message back to it as a trusted client) never
/// grew its hop count. Before: every round trip arrived with the same two
/// Received fields and the loop never ended (the test saw 20 rounds).
/// After: hygiene carries the hops it removed in `X-Postern-Hops`, the count
/// grows by two each round, and the gateway refuses the message with 554
/// 5.4.6 once it passes `server.max_hops`.
#[tokio::test(flavor = "multi_thread")]
async fn a_loop_through_an_internal_relay_reaches_the_hop_limit() {
    let relay = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "max_hops = 8",
        &format!(
            "{RELAY}[delivery]\nstarttls = false\n{}",
            route("*", relay.addr)
        ),
    );
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO relay.internal.test").await;
    let first = b"Subject: round trip\r\n\r\nloop\r\n.\r\n";
    let r = c
        .transaction("<s@example.test>", &["<u@other.test>"], first)
        .await;
    assert!(r.starts_with("250"), "{r}");
    // The relay: each copy the gateway delivers goes back to it, with the
    // relay's own Received on top, from the trusted address.
    let mut last = String::new();
    for round in 1..=20 {
        wait_until(T, "the gateway's copy at the relay", || {
            relay.count() >= round
        })
        .await;
        let copy = relay.all()[round - 1].data.clone();
        let back = format!(
            "Received: from gw.example.test by relay.internal.test; Tue, 1 Dec 2026 00:00:00 +0000\r\n{copy}.\r\n"
        );
        last = c
            .transaction("<s@example.test>", &["<u@other.test>"], back.as_bytes())
            .await;
        if !last.starts_with("250") {
            // Counts 2, 4, 6, 8 pass; the fifth (10) is refused.
            assert!(round <= 5, "refused only after {round} rounds");
            break;
        }
    }
    assert!(last.starts_with("554 5.4.6 too many hops"), "{last}");
    // Nothing more comes round.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let copies = relay.count();
    assert!(copies <= 5, "{copies} copies");
    let carried = relay.all()[copies - 1].data.clone();
    assert!(carried.contains("X-Postern-Hops: "), "{carried}");
    never_restarted(&gw);
}

/// A port redirect on loopback (what NAT or `iptables REDIRECT` does in
/// front of a gateway): every connection to `front` is passed to `to`.
async fn redirect(front: std::net::SocketAddr, to: std::net::SocketAddr) {
    let l = TcpListener::bind(front).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
}

/// Finding "mail loop", through a port redirect: loop detection compared
/// listening ports, so a next hop at another port that leads back to us
/// (NAT, REDIRECT :25 → :2525) was not us. Before: the gateway delivered
/// to itself through the redirect, round after round, until the hop limit
/// refused a copy. After: the next hop answers EHLO with our own hostname,
/// so its recipients fail at once with 5.4.6 and no message goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_next_hop_answering_with_our_hostname_is_a_loop() {
    let senders = Sink::start("127.0.0.1:0").await;
    // The gateway's own port is known only once it runs: the redirect's
    // port is chosen first, and it starts after the gateway.
    let front: std::net::SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}[delivery]\nstarttls = false\n{}{}",
            route("example.test", front),
            route("sender.test", senders.addr)
        ),
    );
    redirect(front, gw.smtp).await;
    bounce_of(
        &gw,
        &senders,
        "<user@example.test>",
        "replied to EHLO with my own hostname gw.example.test",
    )
    .await;
    no_copy_came_round(&gw, 2).await;
    never_restarted(&gw);
}

/// `server.proxy_addresses`: an address we receive mail on through a proxy
/// or NAT is us on any port. Before the key existed, a route to it was
/// tried like any host (here a port nobody answers: deferred, retried for
/// days). After: its recipients fail with 5.4.6 without a connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_next_hop_at_a_proxy_address_is_a_loop() {
    let senders = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "proxy_addresses = [\"127.0.0.9\"]",
        &format!(
            "{RELAY}[delivery]\nstarttls = false\n{}{}",
            route("example.test", format!("127.0.0.9:{}", closed_port())),
            route("sender.test", senders.addr)
        ),
    );
    bounce_of(
        &gw,
        &senders,
        "<user@example.test>",
        "mail for example.test loops back to myself",
    )
    .await;
    never_restarted(&gw);
}

/// Finding "mail loop", through DNS and address literals: nothing detected
/// delivery to ourselves. Before: mail for a domain whose MX is our own
/// address, and mail to `user@[127.0.0.1]`, were delivered to ourselves,
/// round after round. After: both fail with 5.4.6 at the first attempt and
/// the sender gets one bounce each.
#[tokio::test(flavor = "multi_thread")]
async fn an_mx_or_address_literal_that_is_us_bounces_with_5_4_6() {
    let senders = Sink::start("127.0.0.1:0").await;
    let dns = DnsServer::start(
        Zone::new()
            .mx("loop.test", 10, "mx.loop.test")
            .a("mx.loop.test", "127.0.0.1"),
    )
    .await;
    let port = closed_port();
    let extra = format!(
        "{RELAY}[delivery]\nport = {port}\nstarttls = false\nnameservers = [\"{}\"]\n{}",
        dns.addr,
        route("sender.test", senders.addr),
    );
    let gw = Gateway::start_full(
        "",
        "",
        &extra,
        &[("POSTERN__SERVER__LISTEN", format!("[\"127.0.0.1:{port}\"]"))],
    );
    let mut c = RawClient::connect(gw.smtp).await;
    c.cmd("EHLO client.test").await;
    for rcpt in ["<user@loop.test>", "<user@[127.0.0.1]>"] {
        let r = c
            .transaction(
                "<s@sender.test>",
                &[rcpt],
                b"Subject: via DNS\r\n\r\nloop\r\n.\r\n",
            )
            .await;
        assert!(r.starts_with("250"), "{rcpt}: {r}");
    }
    wait_until(T, "two 5.4.6 bounces", || senders.count() >= 2).await;
    let dsns: Vec<String> = senders.all().into_iter().map(|m| m.data).collect();
    for domain in ["loop.test", "[127.0.0.1]"] {
        let text = format!("mail for {domain} loops back to myself");
        assert!(dsns.iter().any(|d| d.contains(&text)), "{text}: {dsns:#?}");
    }
    no_copy_came_round(&gw, 4).await;
    assert_eq!(senders.count(), 2, "one bounce per message");
    never_restarted(&gw);
}
