//! Issue 14, resource exhaustion: the gateway raises its soft open-file
//! limit to the hard limit at start (and says so), and with a descriptor
//! limit far below `max_connections` the listener keeps working: while
//! out of descriptors it waits (connections stay in the backlog) without
//! spinning, and it serves again once connections end.
//!
//! The limits are set on the gateway's process before it runs.

mod common;

use common::{route, wait_until, Gateway, Sink};
use std::time::Duration;
use tokio::net::TcpStream;

/// CPU time (user + system) of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn descriptors_run_out_and_the_listener_waits_without_spinning() {
    let sink = Sink::start("127.0.0.1:0").await;
    // 1. A low soft limit under a higher hard one is raised, and logged.
    let hard = 4096;
    {
        let gw = Gateway::start_with_nofile(&route("inside.test", sink.addr), (256, hard));
        let log = gw.log_text();
        assert!(
            log.contains("raised the open-file limit to the hard limit")
                && log.contains(&format!("to={hard}")),
            "{log}"
        );
        assert!(common::send_subject(gw.smtp, "", "raised")
            .await
            .starts_with("250"));
    }
    // 2. A hard limit far below max_connections (1,000 by default).
    let gw = Gateway::start_with_nofile(&route("inside.test", sink.addr), (160, 160));
    let pid = gw.gateway_pid().expect("gateway pid");
    // Far more idle clients than descriptors: the gateway runs out.
    // (Once the listen backlog is full too, a connect waits: stop there.)
    let mut idle = Vec::new();
    for _ in 0..300 {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(gw.smtp)).await {
            Ok(Ok(s)) => idle.push(s),
            _ => break,
        }
    }
    assert!(idle.len() > 160, "only {} connections", idle.len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(pid) - before;
    // Spinning on accept would burn ~300 ticks (3 s of a core) here.
    assert!(
        used < 60,
        "the gateway used {used} ticks in 3 s while out of descriptors"
    );
    let log = gw.log_text();
    assert!(
        log.contains("accept failed; waiting 50 ms between tries"),
        "{log}"
    );
    assert!(
        log.matches("accept failed").count() <= 2,
        "the warning is not repeated every try"
    );
    // Clients go away: the gateway serves again, by itself.
    drop(idle);
    let sent = tokio::time::timeout(
        Duration::from_secs(60),
        common::send_subject(gw.smtp, "", "after"),
    )
    .await
    .expect("served once descriptors are free");
    assert!(sent.starts_with("250"), "{sent}");
    wait_until(Duration::from_secs(20), "delivered", || {
        !sink.with("after").is_empty()
    })
    .await;
    let restarts = gw.admin_get("/metrics");
    assert!(
        restarts.contains("postern_gateway_restarts_total 0"),
        "the gateway was restarted"
    );
}
