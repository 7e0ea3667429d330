//! The seed's own bug, KB 884874: hostile or broken DNS answers for one
//! destination must cost that destination a temporary or permanent failure
//! with a clear reason, never the gateway, never a stall of other mail.

mod common;

use common::{smtp_send, wait_until, DnsServer, Gateway, Hostile, Sink, Zone};
use std::time::{Duration, Instant};

/// Destinations whose DNS misbehaves, one way each.
const HOSTILE: [&str; 8] = [
    "servfail.test",
    "silent.test",
    "loop.test",
    "counts.test",
    "garbage.test",
    "cnameloop.test",
    "empty.test",
    "badmx.test",
];

/// good.test, and huge.test whose answer only TCP carries, lead to
/// 127.0.0.1; every name in [`HOSTILE`] misbehaves.
fn zone() -> Zone {
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
    zone
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_answers_fail_one_destination_only() {
    let sink = Sink::start("127.0.0.1:0").await;
    let port = sink.addr.port();
    let dns = DnsServer::start(zone()).await;
    let gw = Gateway::start(
        "",
        &format!(
            "[delivery]\nport = {port}\nnameservers = [\"{}\"]\nstarttls = false\ndns_timeout = \"2s\"\n",
            dns.addr
        ),
    );
    for d in HOSTILE {
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
    for tag in ["good", "huge"] {
        smtp_send(
            gw.smtp,
            "me@example.test",
            &[&format!("u@{tag}.test")],
            &common::body(tag),
        )
        .await
        .unwrap();
    }
    wait_until(Duration::from_secs(20), "good and huge delivered", || {
        !sink.with("<good@test>").is_empty() && !sink.with("<huge@test>").is_empty()
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "good mail stalled: {:?}",
        start.elapsed()
    );

    let log = clear_verdicts(&gw).await;
    // Still the first gateway process: nothing crashed.
    assert!(!log.contains("gateway died"), "{log}");
    let metrics = gw.admin_get("/metrics");
    assert!(
        metrics.contains("postern_gateway_restarts_total 0"),
        "{metrics}"
    );
}

/// Waits until every hostile destination ends with a clear reason: deferred
/// with a DNS error, or bounced (a DSN to me@example.test would go via MX
/// too; the queue record or the log says why). Returns the log.
async fn clear_verdicts(gw: &Gateway) -> String {
    let attempt =
        |l: &str, d: &str| l.contains("delivery attempt") && l.contains(&format!("u@{d}"));
    wait_until(
        Duration::from_secs(30),
        "a verdict for every hostile domain",
        || {
            let log = gw.log_text();
            HOSTILE.iter().all(|&d| log.lines().any(|l| attempt(l, d)))
        },
    )
    .await;
    let log = gw.log_text();
    for d in HOSTILE {
        let line = log.lines().find(|&l| attempt(l, d)).unwrap();
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
    log
}
