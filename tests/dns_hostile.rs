//! The seed's own bug, KB 884874: hostile or broken DNS answers for one
//! destination must cost that destination a temporary or permanent failure
//! with a clear reason, never the gateway, never a stall of other mail.

mod common;

use common::{smtp_send, wait_until, DnsServer, Gateway, Hostile, Sink, Zone};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn hostile_answers_fail_one_destination_only() {
    let sink = Sink::start("127.0.0.1:0").await;
    let port = sink.addr.port();
    let mut zone = Zone::new()
        .mx("good.test", 10, "mx.good.test")
        .a("mx.good.test", "127.0.0.1")
        .hostile("servfail.test", Hostile::Servfail)
        .hostile("silent.test", Hostile::Silent)
        .hostile("loop.test", Hostile::PointerLoop)
        .hostile("counts.test", Hostile::WrongCounts)
        .hostile("garbage.test", Hostile::Garbage)
        .cname("cnameloop.test", "cnameloop2.test")
        .cname("cnameloop2.test", "cnameloop.test")
        .exists("empty.test")
        .mx("badmx.test", 10, "mx.badmx.test")
        .hostile("mx.badmx.test", Hostile::PointerLoop)
        // An answer near the 64 KiB message limit: only TCP carries it.
        .mx("huge.test", 1, "mx.good.test");
    for i in 0..900 {
        zone = zone.mx(
            "huge.test",
            100,
            &format!("backup-{i:04}-padding-padding-padding.huge.test"),
        );
    }
    let dns = DnsServer::start(zone).await;
    let gw = Gateway::start(
        "",
        &format!(
            "[delivery]\nport = {port}\nnameservers = [\"{}\"]\nstarttls = false\ndns_timeout = \"2s\"\n",
            dns.addr
        ),
    );
    let hostile = [
        "servfail.test",
        "silent.test",
        "loop.test",
        "counts.test",
        "garbage.test",
        "cnameloop.test",
        "empty.test",
        "badmx.test",
    ];
    for d in hostile {
        smtp_send(
            gw.smtp,
            "me@example.test",
            &[&format!("u@{d}")],
            &common::body(d),
        )
        .await
        .unwrap();
    }
    // Mail for good destinations is not held up by the broken ones.
    let start = Instant::now();
    smtp_send(
        gw.smtp,
        "me@example.test",
        &["u@good.test"],
        &common::body("good"),
    )
    .await
    .unwrap();
    smtp_send(
        gw.smtp,
        "me@example.test",
        &["u@huge.test"],
        &common::body("huge"),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(20), "good and huge delivered", || {
        !sink.with("<good@test>").is_empty() && !sink.with("<huge@test>").is_empty()
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "good mail stalled: {:?}",
        start.elapsed()
    );

    // Every hostile destination ends with a clear reason: deferred with a DNS
    // error, or bounced (a DSN to me@example.test would go via MX too; the
    // queue record or the log says why).
    wait_until(
        Duration::from_secs(30),
        "a verdict for every hostile domain",
        || {
            let log = gw.log_text();
            hostile.iter().all(|d| {
                log.lines()
                    .any(|l| l.contains("delivery attempt") && l.contains(&format!("u@{d}")))
            })
        },
    )
    .await;
    let log = gw.log_text();
    for d in hostile {
        let line = log
            .lines()
            .find(|l| l.contains("delivery attempt") && l.contains(&format!("u@{d}")))
            .unwrap();
        eprintln!("{d}: {}", &line[line.find("result").unwrap_or(0)..]);
        assert!(
            line.contains("deferred") || line.contains("failed"),
            "{d}: {line}"
        );
        assert!(
            line.contains("MX")
                || line.contains("DNS")
                || line.contains("address")
                || line.contains("no usable"),
            "{d}: reason is not clear: {line}"
        );
    }
    assert!(log.contains("u@empty.test") && log.contains("has no MX and no address records"));
    // Still the first gateway process: nothing crashed.
    assert!(!log.contains("gateway died"), "{log}");
    let metrics = gw.admin_get("/metrics");
    assert!(
        metrics.contains("postern_gateway_restarts_total 0"),
        "{metrics}"
    );
}
