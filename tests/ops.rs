//! Running it as a service, against the real daemon: the queue CLI and API
//! (filters, summary, hold/retry --all, release, delete), the tracking log
//! and `postern trace`, the admin bearer token, `promtool check metrics` on
//! a live scrape, SIGHUP reload (a changed route takes effect; a broken
//! file never replaces a good one, not even across a gateway crash), and
//! SIGTERM with sessions open (nothing acknowledged is lost).

mod common;

use common::{body, try_send, wait_until, Gateway, RawClient, Sink};
use std::time::Duration;

fn route(port: u16) -> String {
    format!("[[route]]\ndomain = \"*\"\nhosts = [\"127.0.0.1:{port}\"]\n")
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
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

#[tokio::test(flavor = "multi_thread")]
async fn queue_cli_and_trace_end_to_end() {
    let port = closed_port();
    // Retries an hour apart: only `queue retry` can make them go sooner.
    // (The interval comes from the environment, which overrides the file.)
    let gw = Gateway::start_full(
        "",
        "",
        &route(port),
        &[("POSTERN__QUEUE__RETRY_INTERVALS", "[\"1h\"]".into())],
    );
    let cfg = gw.config.display().to_string();
    let q = |args: &[&str]| {
        let mut a = vec!["queue", "--config", &cfg];
        a.extend_from_slice(args);
        gw.cli(&a)
    };
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
        ids(&stdout(&q(&["list", "--state", "deferred"]))).len() == 4
    })
    .await;
    let alpha = ids(&stdout(&q(&["list", "--domain", "alpha.test"])));
    assert_eq!(alpha.len(), 2);
    assert!(ids(&stdout(&q(&["list", "--older-than", "1h"]))).is_empty());
    let bad = q(&["list", "--older-than", "soon"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("duration"));

    let summary = stdout(&q(&["summary"]));
    assert!(summary.contains("4 message(s): deferred 4"), "{summary}");
    let alpha_row = summary.lines().find(|l| l.contains("alpha.test")).unwrap();
    let cols: Vec<&str> = alpha_row.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["2", "2"], "{summary}");

    let held = stdout(&q(&["hold", "--all", "--domain", "beta.test"]));
    assert!(held.contains("1 message(s) held"), "{held}");
    let beta = ids(&stdout(&q(&["list", "--state", "held"])));
    assert_eq!(beta.len(), 1);
    // A held message is not retried; a deleted one is gone.
    assert!(!q(&["retry", &beta[0]]).status.success());
    let gamma = ids(&stdout(&q(&["list", "--domain", "gamma.test"])));
    assert!(stdout(&q(&["delete", &gamma[0]])).contains("deleted"));
    assert!(!q(&["show", &gamma[0]]).status.success());

    // The next hop comes up; `retry --all` delivers now, not in an hour.
    let sink = Sink::start(&format!("127.0.0.1:{port}")).await;
    let retried = stdout(&q(&["retry", "--all"]));
    assert!(retried.contains("2 message(s) retried"), "{retried}");
    wait_until(Duration::from_secs(15), "alpha delivered", || {
        sink.count() == 2
    })
    .await;
    stdout(&q(&["release", &beta[0]]));
    wait_until(Duration::from_secs(15), "beta delivered", || {
        sink.count() == 3
    })
    .await;

    // The tracking log tells each life, by queue ID or by Message-ID.
    let trace = |key: &str| stdout(&gw.cli(&["trace", "--config", &cfg, key]));
    let a1 = alpha[0].clone();
    wait_until(Duration::from_secs(5), "delivered tracked", || {
        trace(&a1).contains("delivered")
    })
    .await;
    let t = trace(&a1);
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
    let by_mid = stdout(&gw.cli(&["trace", "--config", &cfg, "<ops-b1@test>"]));
    for e in ["held", "by=admin", "released", "delivered"] {
        assert!(by_mid.contains(e), "{e} missing:\n{by_mid}");
    }
    let g = trace(&gamma[0]);
    assert!(g.contains("deleted"), "{g}");
    let json = stdout(&gw.cli(&["trace", "--config", &cfg, "--json", &gamma[0]]));
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], gamma[0].as_str());
        assert_eq!(v["from"], "s@example.test");
        assert_eq!(v["to"][0], "w@gamma.test");
    }
    assert!(!gw
        .cli(&["trace", "--config", &cfg, "nosuchid"])
        .status
        .success());

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
    let out = gw.cli(&["queue", "--config", &cfg, "list"]);
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
    let gw = Gateway::start("", &route(sink.addr.port()));
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
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    let gw = Gateway::start("", &route(a.addr.port()));
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
    let mut gw = Gateway::start_in(dir.clone(), "", &route(port));
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
        assert!(c.cmd("MAIL FROM:<s@example.test>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<r@example.test>").await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
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
    let gw = Gateway::start_in(dir, "", &route(port));
    wait_until(Duration::from_secs(20), "five delivered", || {
        sink.count() == 5
    })
    .await;
    drop(gw);
}
