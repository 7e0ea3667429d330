//! Running it as a service, against the real daemon: the queue CLI and API
//! (filters, summary, hold/retry --all, release, delete), the tracking log
//! and `postern trace`, the admin bearer token, `promtool check metrics` on
//! a live scrape, SIGHUP reload (a changed route takes effect; a broken
//! file never replaces a good one, not even across a gateway crash), and
//! SIGTERM with sessions open (nothing acknowledged is lost).

mod common;

use common::tools::{assert_success, stdout_ok, PROMTOOL};
use common::{body, closed_port, route, try_send, wait_until, Gateway, RawClient, Sink};
use std::time::Duration;

/// Routes all mail to 127.0.0.1:`port`.
fn next_hop(port: u16) -> String {
    route("*", format!("127.0.0.1:{port}"))
}

fn signal(gw: &Gateway, sig: i32) {
    // SAFETY: signalling our own child (the supervisor).
    unsafe { libc::kill(gw.child.id() as i32, sig) };
}

/// Queue IDs from `queue list` lines (first column).
fn ids(listing: &str) -> Vec<String> {
    listing
        .lines()
        .skip(1)
        .filter(|l| !l.contains("message(s)"))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// The IDs `queue list <filter>` shows.
fn listed(gw: &Gateway, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["list"];
    args.extend_from_slice(filter);
    ids(&stdout_ok(&gw.queue(&args)))
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_cli_and_trace_end_to_end() {
    let port = closed_port();
    // Retries an hour apart: only `queue retry` can make them go sooner.
    // (The interval comes from the environment, which overrides the file.)
    let gw = Gateway::start_full(
        "",
        "",
        &next_hop(port),
        &[("POSTERN__QUEUE__RETRY_INTERVALS", "[\"1h\"]".into())],
    );
    for (tag, to) in [
        ("ops-a1", "x@alpha.test"),
        ("ops-a2", "y@alpha.test"),
        ("ops-b1", "z@beta.test"),
        ("ops-g1", "w@gamma.test"),
    ] {
        try_send(gw.smtp, "s@example.test", to, &body(tag))
            .await
            .unwrap();
    }
    // All four fail their first attempt (nothing listens) and wait an hour.
    wait_until(Duration::from_secs(20), "four deferred", || {
        listed(&gw, &["--state", "deferred"]).len() == 4
    })
    .await;
    let alpha = filters_and_summary(&gw);
    let (beta, gamma) = hold_and_delete(&gw);

    // The next hop comes up; `retry --all` delivers now, not in an hour.
    let sink = Sink::start(&format!("127.0.0.1:{port}")).await;
    let retried = stdout_ok(&gw.queue(&["retry", "--all"]));
    assert!(retried.contains("2 message(s) retried"), "{retried}");
    wait_until(Duration::from_secs(15), "alpha delivered", || {
        sink.count() == 2
    })
    .await;
    stdout_ok(&gw.queue(&["release", &beta]));
    wait_until(Duration::from_secs(15), "beta delivered", || {
        sink.count() == 3
    })
    .await;

    traces_tell_each_life(&gw, &alpha[0], &gamma).await;

    // The same numbers in the metrics.
    let m = gw.admin_get("/metrics");
    assert!(
        m.contains("postern_recipients_delivered_total{class=\"internet\"} 3"),
        "{m}"
    );
    assert!(m.contains("postern_smtp_sessions_total{listener=\"smtp\"} 4"));
    assert!(m.contains("postern_messages_accepted_total 4"));
    assert!(m.contains("postern_delivery_connections_total{tls=\"no\"}"));
}

/// `queue list` filters and `queue summary` over the four deferred
/// messages; returns the IDs of the two for alpha.test.
fn filters_and_summary(gw: &Gateway) -> Vec<String> {
    let alpha = listed(gw, &["--domain", "alpha.test"]);
    assert_eq!(alpha.len(), 2);
    assert!(listed(gw, &["--older-than", "1h"]).is_empty());
    let bad = gw.queue(&["list", "--older-than", "soon"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("duration"));

    let summary = stdout_ok(&gw.queue(&["summary"]));
    assert!(summary.contains("4 message(s): deferred 4"), "{summary}");
    let alpha_row = summary.lines().find(|l| l.contains("alpha.test")).unwrap();
    let cols: Vec<&str> = alpha_row.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["2", "2"], "{summary}");
    alpha
}

/// Holds beta.test's message and deletes gamma.test's; returns their IDs.
fn hold_and_delete(gw: &Gateway) -> (String, String) {
    let held = stdout_ok(&gw.queue(&["hold", "--all", "--domain", "beta.test"]));
    assert!(held.contains("1 message(s) held"), "{held}");
    let beta = listed(gw, &["--state", "held"]);
    assert_eq!(beta.len(), 1);
    // A held message is not retried; a deleted one is gone.
    assert!(!gw.queue(&["retry", &beta[0]]).status.success());
    let gamma = listed(gw, &["--domain", "gamma.test"]);
    assert!(stdout_ok(&gw.queue(&["delete", &gamma[0]])).contains("deleted"));
    assert!(!gw.queue(&["show", &gamma[0]]).status.success());
    (beta[0].clone(), gamma[0].clone())
}

/// The tracking log tells each life, by queue ID (`a1`, delivered after a
/// retry; `gamma`, deleted) or by Message-ID (ops-b1, held and released).
async fn traces_tell_each_life(gw: &Gateway, a1: &str, gamma: &str) {
    let trace = |key: &str| stdout_ok(&gw.trace(&[key]));
    wait_until(Duration::from_secs(5), "delivered tracked", || {
        trace(a1).contains("delivered")
    })
    .await;
    let t = trace(a1);
    let events: Vec<&str> = t
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        events,
        [
            "received",
            "converted",
            "queued",
            "attempt",
            "deferred",
            "retried",
            "attempt",
            "delivered"
        ],
        "{t}"
    );
    assert!(
        t.contains("reply=250") && t.contains("hop=127.0.0.1"),
        "{t}"
    );
    // Lines reach the file within the tracking writer's flush period.
    wait_until(Duration::from_secs(5), "b1 delivered tracked", || {
        trace("<ops-b1@test>").contains("delivered")
    })
    .await;
    let by_mid = trace("<ops-b1@test>");
    for e in ["held", "by=admin", "released", "delivered"] {
        assert!(by_mid.contains(e), "{e} missing:\n{by_mid}");
    }
    let g = trace(gamma);
    assert!(g.contains("deleted"), "{g}");
    let json = stdout_ok(&gw.trace(&["--json", gamma]));
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], gamma);
        assert_eq!(v["from"], "s@example.test");
        assert_eq!(v["to"][0], "w@gamma.test");
    }
    assert!(!gw.trace(&["nosuchid"]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_guards_metrics_and_queue_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    // The harness writes its own [admin]; the token goes in by environment.
    let gw = Gateway::start_full(
        "",
        "",
        "",
        &[("POSTERN__ADMIN__TOKEN_FILE", token.display().to_string())],
    );
    assert!(gw.admin_get("/metrics").starts_with("HTTP/1.1 401"));
    assert!(gw.admin_get("/queue").starts_with("HTTP/1.1 401"));
    assert!(gw.admin_get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(gw.admin_get("/readyz").starts_with("HTTP/1.1 200"));
    // The CLI reads the token from the same configuration.
    let cfg = gw.config.display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["queue", "--config", &cfg, "list"])
        .env("POSTERN__ADMIN__TOKEN_FILE", token.display().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = gw.queue(&["list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bearer token required"));

    // Off loopback, a token is mandatory.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[admin]\nlisten = \"0.0.0.0:8025\"\n").unwrap();
    let out = gw.cli(&["check-config", "--config", &bad.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token_file is required"));
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_a_live_scrape() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &next_hop(sink.addr.port()));
    try_send(gw.smtp, "s@example.test", "r@example.test", &body("prom"))
        .await
        .unwrap();
    let _ = try_send(gw.smtp, "s@example.test", "bad@@x", &body("prom2")).await;
    wait_until(Duration::from_secs(10), "delivery", || sink.count() == 1).await;
    let scrape = gw.admin_get("/metrics");
    let text = scrape.split("\r\n\r\n").nth(1).unwrap().to_string();
    for name in [
        "postern_smtp_sessions_total",
        "postern_smtp_rejections_total{reason=\"bad_address\"}",
        "postern_messages_received_total",
        "postern_queue_messages",
        "postern_delivery_latency_seconds_bucket",
        "postern_message_size_bytes_bucket",
        "postern_build_info",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let mut child = PROMTOOL
        .command()
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_success(&out, "promtool check metrics");
}

/// The gateway process under the supervisor.
fn gateway_pid(gw: &Gateway) -> i32 {
    let sup = gw.child.id();
    let children =
        std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .find_map(|p| p.parse().ok())
        .expect("gateway child")
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_routes_and_never_takes_a_bad_file() {
    let a = Sink::start("127.0.0.1:0").await;
    let b = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &next_hop(a.addr.port()));
    let good_a = std::fs::read_to_string(&gw.config).unwrap();
    try_send(gw.smtp, "s@example.test", "r@example.test", &body("hup-1"))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "to a", || a.count() == 1).await;

    // Route to b, SIGHUP: new mail goes to b, without a restart.
    let good_b = good_a.replace(
        &format!("127.0.0.1:{}", a.addr.port()),
        &format!("127.0.0.1:{}", b.addr.port()),
    );
    std::fs::write(&gw.config, &good_b).unwrap();
    let before = gateway_pid(&gw);
    signal(&gw, libc::SIGHUP);
    gw.wait_log("configuration reloaded", Duration::from_secs(15));
    assert_eq!(
        gateway_pid(&gw),
        before,
        "reload must not restart the gateway"
    );
    try_send(gw.smtp, "s@example.test", "r@example.test", &body("hup-2"))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "to b", || b.count() == 1).await;

    // A broken file (syntax) and unusable ones (missing DKIM key, missing
    // TLS certificate) are refused; mail still goes to b.
    for (broken, says) in [
        (format!("{good_a}\n[server\n"), "line"),
        (
            format!(
                "{good_a}\n[[convert.dkim]]\ndomain = \"example.test\"\nselector = \"s\"\nkey_file = \"/nonexistent/key.pem\"\n"
            ),
            "key.pem",
        ),
        (
            format!(
                "{good_a}\n[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n"
            ),
            "TLS certificate",
        ),
    ] {
        std::fs::write(&gw.config, broken).unwrap();
        let refusals = gw.log_text().matches("reload refused").count();
        signal(&gw, libc::SIGHUP);
        wait_until(Duration::from_secs(15), "refusal logged", || {
            gw.log_text().matches("reload refused").count() > refusals
        })
        .await;
        assert!(gw.log_text().contains(says), "{}", gw.log_text());
    }
    // Even a gateway crash now restarts on the last good configuration.
    // SAFETY: killing the gateway child, not the supervisor.
    unsafe { libc::kill(gateway_pid(&gw), libc::SIGKILL) };
    gw.wait_log("gateway died; restarting", Duration::from_secs(10));
    let reply = loop {
        if let Ok(r) = try_send(gw.smtp, "s@example.test", "r@example.test", &body("hup-3")).await {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reply.starts_with("250"));
    wait_until(Duration::from_secs(10), "still to b", || b.count() == 2).await;
    assert_eq!(a.count(), 1);
    let m = gw.admin_get("/metrics");
    assert!(m.contains("postern_gateway_restarts_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_sessions_open_loses_nothing() {
    let port = closed_port();
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut gw = Gateway::start_in(dir.clone(), "", &next_hop(port));
    // Five idle sessions, five in the middle of DATA.
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut c = RawClient::connect(gw.smtp).await;
        assert!(c.cmd("EHLO idle.test").await.starts_with("250"));
        idle.push(c);
    }
    let mut busy = Vec::new();
    for i in 0..5 {
        let mut c = RawClient::connect(gw.smtp).await;
        assert!(c.cmd("EHLO busy.test").await.starts_with("250"));
        c.begin_data("<s@example.test>", &["<r@example.test>"])
            .await;
        c.send(format!("Message-ID: <term-{i}@test>\r\nSubject: half\r\n").as_bytes())
            .await;
        busy.push(c);
    }
    signal(&gw, libc::SIGTERM);
    // Idle sessions are told to go away at once.
    for c in &mut idle {
        let r = c.reply().await;
        assert!(r.starts_with("421 4.3.2"), "{r}");
    }
    // Busy ones finish their message, and it is accepted.
    for (i, c) in busy.iter_mut().enumerate() {
        c.send(format!("\r\nbody {i}\r\n.\r\n").as_bytes()).await;
        let r = c.reply().await;
        assert!(r.starts_with("250"), "{r}");
        let r = c.reply().await;
        assert!(r.starts_with("421 4.3.2"), "then closed: {r}");
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.child.wait();
        (s, gw)
    })
    .await
    .unwrap();
    assert!(status.0.unwrap().success(), "clean exit");
    gw = status.1;
    let log = gw.log_text();
    assert!(log.contains("sessions_left=0"), "{log}");
    drop(gw);
    // Restart on the same queue with the next hop up: all five arrive.
    let sink = Sink::start(&format!("127.0.0.1:{port}")).await;
    let gw = Gateway::start_in(dir, "", &next_hop(port));
    wait_until(Duration::from_secs(20), "five delivered", || {
        sink.count() == 5
    })
    .await;
    drop(gw);
}
