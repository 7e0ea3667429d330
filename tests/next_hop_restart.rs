//! Issue 14, faults of the next hop: when the internal host restarts, the
//! idle connections in our pool are dead. A message sent over one of them
//! fails before its text is sent; it must go again at once on a new
//! connection, not wait a retry interval (10 minutes here). Before: 16 of
//! 500 messages after a next-hop restart were deferred ("451 4.0.0
//! incomplete response"); after: none, and the metric counts the dead
//! connections found.

mod common;

use common::{route, wait_until, Gateway, Sink};
use std::time::Duration;

/// The value of the counter line `name <value>`, if there is one.
fn metric(gw: &Gateway, name: &str) -> Option<u64> {
    let text = gw.admin_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn batch(gw: &Gateway, tag: &str, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let addr = gw.smtp;
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            common::send_subject(addr, "", &format!("{tag} {i}")).await
        }));
    }
    for t in tasks {
        let reply = t.await.unwrap();
        assert!(reply.starts_with("250"), "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_next_hop_restart_costs_no_retry_interval() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start_full(
        "",
        "",
        &route("inside.test", sink.addr),
        &[
            ("POSTERN__QUEUE__RETRY_INTERVALS", "[\"10m\"]".into()),
            ("POSTERN__DELIVERY__IDLE_TIMEOUT", "\"60s\"".into()),
        ],
    );
    batch(&gw, "first", 20).await;
    wait_until(Duration::from_secs(20), "first batch", || {
        sink.count() == 20
    })
    .await;
    // The next hop restarts: every pooled connection is now dead.
    let again = sink.restart().await;
    batch(&gw, "second", 20).await;
    wait_until(
        Duration::from_secs(20),
        "second batch without a retry",
        || again.count() == 20,
    )
    .await;
    assert_eq!(
        metric(&gw, "postern_recipients_deferred_total{class=\"internal\"}"),
        Some(0),
        "a message waited for a retry"
    );
    let dead = metric(&gw, "postern_delivery_dead_connections_total").unwrap_or(0);
    assert!(dead >= 1, "no dead pooled connection was found: {dead}");
}
