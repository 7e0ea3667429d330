//! `250` means on disk: kill -9 the real gateway while a thousand messages
//! sit in its queue (and more are arriving), restart it, and every message
//! that was acknowledged is delivered.

mod common;

use common::{closed_port, route, wait_until, Gateway, RawClient, Sink};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Sends `n` messages on one connection; records the tags acknowledged.
/// Stops at the first failure (a batch cut off by the kill may panic on a
/// reset connection; its acknowledged tags are already recorded).
async fn send_batch(
    addr: std::net::SocketAddr,
    prefix: String,
    n: usize,
    acked: Arc<Mutex<Vec<String>>>,
) {
    let mut c = RawClient::connect(addr).await;
    if !c.cmd("EHLO loader.test").await.starts_with("250") {
        return;
    }
    for i in 0..n {
        let tag = format!("{prefix}-{i}");
        c.send(
            b"MAIL FROM:<load@example.test>
RCPT TO:<user@example.test>
DATA
",
        )
        .await;
        let replies = [c.reply().await, c.reply().await, c.reply().await];
        if !replies[2].starts_with("354") {
            return;
        }
        c.send(
            format!("Message-ID: <{tag}@load>\r\nSubject: {tag}\r\n\r\nbody {tag}\r\n.\r\n")
                .as_bytes(),
        )
        .await;
        let r = c.reply().await;
        if r.starts_with("250") {
            acked.lock().unwrap().push(tag);
        } else {
            return;
        }
    }
}

/// `batches` concurrent [`send_batch`]es of `n` messages each, the tags of
/// batch `b` prefixed `{prefix}{b}`.
fn spawn_batches(
    addr: std::net::SocketAddr,
    prefix: &str,
    batches: usize,
    n: usize,
    acked: &Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..batches)
        .map(|b| tokio::spawn(send_batch(addr, format!("{prefix}{b}"), n, acked.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_a_full_queue_loses_no_acknowledged_message() {
    // Reserve a port for the next hop, but leave it closed for now.
    let port = closed_port();
    let extra = route("*", format!("127.0.0.1:{port}"));
    let mut gw = Gateway::start("", &extra);
    let acked = Arc::new(Mutex::new(Vec::new()));
    for t in spawn_batches(gw.smtp, "q", 10, 100, &acked) {
        t.await.unwrap();
    }
    assert_eq!(acked.lock().unwrap().len(), 1000, "all 1000 accepted");
    // More arriving while the gateway dies: whatever got 250 must survive.
    let late = spawn_batches(gw.smtp, "late", 4, 200, &acked);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.kill9();
    for t in late {
        let _ = t.await;
    }
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(acked.len() >= 1000);

    let sink = Sink::start(&format!("127.0.0.1:{port}")).await;
    let gw2 = Gateway::start_in(gw.dir.clone(), "", &extra);
    gw2.wait_log("queue recovered", Duration::from_secs(10));
    let want = acked.len();
    let delivered = || -> HashSet<String> {
        sink.all()
            .iter()
            .filter_map(|m| {
                let s = m.data.find("Message-ID: <")? + 13;
                let e = m.data[s..].find('@')? + s;
                Some(m.data[s..e].to_string())
            })
            .collect()
    };
    wait_until(
        Duration::from_secs(120),
        "every acknowledged message",
        || delivered().is_superset(&acked),
    )
    .await;
    eprintln!(
        "acknowledged {want}, delivered {} distinct, {} deliveries in all",
        delivered().len(),
        sink.count()
    );
}
