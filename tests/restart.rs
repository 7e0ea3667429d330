//! The promise at the level of the whole gateway process: a gateway killed
//! while clients send (SIGKILL natively; `taskkill /F`, that is
//! TerminateProcess, for the Windows build under Wine) is restarted by the
//! supervisor, which kept the listening sockets: no connection is refused
//! meanwhile, and every message acknowledged with 250 is delivered.

mod common;

use common::{route, send_until_accepted, start_prober, wait_until, Gateway, Sink};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESSAGES: usize = 120;

fn message(i: usize) -> String {
    format!("Message-ID: <kill-{i}@restart>\r\nSubject: kill {i}\r\n\r\nkeep me\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_while_clients_send_loses_nothing() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &route("*", sink.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let refused = start_prober(gw.smtp, stop.clone());
    let addr = gw.smtp;
    let senders: Vec<_> = (0..4)
        .map(|c| {
            tokio::spawn(async move {
                for i in (c..MESSAGES).step_by(4) {
                    send_until_accepted(addr, message(i)).await;
                }
            })
        })
        .collect();
    // Two deaths while the clients send.
    let first = gw.gateway_pid();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = gw.gateway_pid();
        gw.kill_gateway();
        let killed_at = Instant::now();
        wait_until(Duration::from_secs(120), "a new gateway", || {
            gw.gateway_pid() != before
        })
        .await;
        eprintln!("round {round}: a new gateway in {:?}", killed_at.elapsed());
    }
    assert_ne!(gw.gateway_pid(), first);
    for s in senders {
        s.await.unwrap();
    }
    // Every message got its 250 at some point; each is delivered (at least
    // once: a client whose connection died after the store sends again).
    wait_until(Duration::from_secs(120), "every message delivered", || {
        (0..MESSAGES).all(|i| !sink.with(&format!("<kill-{i}@restart>")).is_empty())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        0,
        "a connection was refused"
    );
    let log = gw.log_text();
    assert_eq!(log.matches("gateway died; restarting").count(), 2, "{log}");
    // The cause of the last death is a metrics label: SIGKILL natively;
    // Wine reports a process ended by TerminateProcess as status 0.
    let cause = match common::gateway::wine_exe() {
        Some(_) => "exit 0",
        None => "SIGKILL",
    };
    let metrics = gw.admin_get("/metrics");
    let label = format!("postern_gateway_last_death{{cause=\"{cause}\"}} 1");
    assert!(metrics.contains(&label), "no {label} in:\n{metrics}");
}
