//! Issue 14: the queue write at the end of DATA has a deadline like every
//! other stage. Before, a write that never finished (the disk-full run of
//! the issue) left the client without a reply and the gateway without a
//! restart. After: past `queue.write_timeout` the client hears 451 4.3.0,
//! the gateway stops in order and exits (status 75), the supervisor starts
//! it again, and mail flows; the message whose write hung is not blamed
//! (nothing is quarantined).

#![cfg(feature = "fault-injection")]

mod common;

use common::{route, wait_until, Gateway, Sink};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_write_that_hangs_is_a_4xx_and_a_restart_not_a_silent_client() {
    let sink = Sink::start("127.0.0.1:0").await;
    let faults = tempfile::NamedTempFile::new().unwrap();
    let gw = Gateway::start_full(
        "",
        "write_timeout = \"2s\"",
        &route("*", sink.addr),
        &[("POSTERN_FAULTS_FILE", faults.path().display().to_string())],
    );
    let before = gw.gateway_pid();
    let start = Instant::now();
    let r = common::send_subject(gw.smtp, "X-Postern-Fault: store=stall\r\n", "stalled").await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // The gateway restarts by itself and takes mail again.
    wait_until(Duration::from_secs(30), "a new gateway", || {
        gw.gateway_pid().is_some() && gw.gateway_pid() != before
    })
    .await;
    drop(faults);
    let r = common::send_until_accepted(
        gw.smtp,
        "Subject: after\r\nMessage-ID: <after@test>\r\n\r\nafter\r\n".into(),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let log = gw.log_text();
    assert!(
        log.contains("queue write passed queue.write_timeout"),
        "{log}"
    );
    assert!(log.contains("exiting (status 75)"), "{log}");
    let q = gw.queue(&["list", "--json", "--state", "quarantine"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&q.stdout).unwrap();
    assert!(listed.is_empty(), "nothing is blamed: {listed:?}");
    wait_until(
        Duration::from_secs(20),
        "delivered after the restart",
        || !sink.with("after").is_empty(),
    )
    .await;
}
