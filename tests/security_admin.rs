//! The admin endpoint, the CLI and the files on disk against a local or
//! browser-borne attacker, on the real binary (issue 11):
//!
//! - "Any web page can hold all mail": a cross-site form POST is refused
//!   and holds nothing; a Host naming another site (DNS rebinding) is
//!   refused; mutating requests need a token even without `token_file`
//!   (the gateway generates one, 0600, and the CLI uses it);
//! - "Admin API: no connection cap and no header-read timeout": a client
//!   that sends half a request line is cut off; past
//!   `admin.max_connections` only the health probes are served (a small
//!   reserve), past that a connection is closed at once;
//! - "Mail is world-readable on disk": the queue directory, sled files, a
//!   spool file and the tracking log have no group or other bits;
//! - "HELO text with CR/ESC/C1 bytes is printed raw": `postern queue` and
//!   `postern trace` print control characters escaped.
//!
//! HTTP is spoken over raw TCP, as a browser or curl would send it.

mod common;

use common::{body, closed_port, route, try_send, wait_until, Gateway, RawClient};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway whose mail waits: every message fails its first attempt (the
/// next hop is closed) and is retried only in an hour. `env` adds
/// environment overrides (the harness writes its own `[admin]`).
fn waiting_gateway(env: &[(&str, String)]) -> Gateway {
    let mut all = vec![("POSTERN__QUEUE__RETRY_INTERVALS", "[\"1h\"]".to_string())];
    all.extend(env.iter().cloned());
    let hop = route("*", format!("127.0.0.1:{}", closed_port()));
    Gateway::start_full("", "", &hop, &all)
}

/// Sends one raw request and returns the whole response (the server closes
/// after it: every request here says `Connection: close`).
async fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A request with `Host: host`, the extra header lines and a body.
fn request(method: &str, path: &str, host: &str, headers: &[&str], body: &str) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r
}

/// The messages `postern queue list --json <filter>` shows.
fn listed(gw: &Gateway, filter: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(filter);
    let out = gw.queue(&args);
    assert!(out.status.success(), "queue list: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until `n` messages wait deferred.
async fn wait_deferred(gw: &Gateway, n: usize) {
    wait_until(Duration::from_secs(20), "messages deferred", || {
        listed(gw, &["--state", "deferred"]).len() == n
    })
    .await;
}

/// Control characters (C0, DEL, C1) a terminal would act on; a line feed
/// only ends a line.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_form_post_holds_nothing() {
    // Finding: a cross-origin form POST /queue/hold answered 200 and held
    // every message. Before: 200 and the message held; after: 403/415 and
    // the message still deferred.
    let gw = waiting_gateway(&[]);
    try_send(gw.smtp, "s@example.test", "r@remote.test", &body("csrf"))
        .await
        .unwrap();
    wait_deferred(&gw, 1).await;
    let host = gw.admin.to_string();
    let form = "Content-Type: application/x-www-form-urlencoded";
    // What a browser sends for <form method=post action=http://127.0.0.1:PORT/queue/hold>
    // on another site; then the same without Origin (a form post still)
    // and a fetch marked cross-site.
    for (headers, status) in [
        (vec!["Origin: http://evil.example", form], "403"),
        (vec![form], "415"),
        (vec!["Content-Type: text/plain", "Origin: null"], "403"),
        (vec!["Sec-Fetch-Site: cross-site"], "403"),
    ] {
        let resp = http(
            gw.admin,
            &request("POST", "/queue/hold", &host, &headers, "a=b"),
        )
        .await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status}")),
            "{headers:?}: {resp}"
        );
        assert!(resp.contains("\"error\""), "{resp}");
    }
    assert!(listed(&gw, &["--state", "held"]).is_empty());
    assert_eq!(listed(&gw, &["--state", "deferred"]).len(), 1);
    // The CLI, a same-origin client, still holds it.
    let out = gw.queue(&["hold", "--all"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(listed(&gw, &["--state", "held"]).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_rebinding_host_is_refused() {
    // Finding: no Host check, so DNS rebinding could read /queue and
    // delete. Before: 200 for any Host; after: 403 unless the Host names
    // the endpoint itself; the probes stay open.
    let gw = waiting_gateway(&[]);
    let port = gw.admin.port();
    let evil = format!("evil.example:{port}");
    let resp = http(gw.admin, &request("GET", "/queue", &evil, &[], "")).await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("\"error\""), "{resp}");
    let resp = http(gw.admin, &request("GET", "/metrics", &evil, &[], "")).await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    // No Host at all.
    let resp = http(gw.admin, "GET /queue HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 4"), "{resp}");
    assert!(!resp.contains("[]"), "{resp}");
    // Our own names answer; so do the probes whatever the Host.
    for own in [format!("localhost:{port}"), gw.admin.to_string()] {
        let resp = http(gw.admin, &request("GET", "/queue", &own, &[], "")).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{own}: {resp}");
    }
    for probe in ["/healthz", "/readyz"] {
        let resp = http(gw.admin, &request("GET", probe, &evil, &[], "")).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{probe}: {resp}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutations_need_the_generated_token_and_the_cli_has_it() {
    // Finding: without token_file every mutating request was open.
    // Before: POST /queue/hold without a token answered 200 and no token
    // file existed; after: 401, a 0600 token file, and the CLI uses it.
    let gw = waiting_gateway(&[]);
    try_send(gw.smtp, "s@example.test", "r@remote.test", &body("token"))
        .await
        .unwrap();
    wait_deferred(&gw, 1).await;
    let file = gw.dir.path().join("queue").join("admin.token");
    let token = std::fs::read_to_string(&file).expect("generated admin token");
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    assert!(gw.log_text().contains("generated an admin token"));

    let host = gw.admin.to_string();
    let id = listed(&gw, &[])[0]["id"].as_str().unwrap().to_string();
    for (method, path) in [
        ("POST", "/queue/hold".to_string()),
        ("POST", format!("/queue/{id}/hold")),
        ("DELETE", format!("/queue/{id}")),
    ] {
        for auth in [vec![], vec!["Authorization: Bearer wrong"]] {
            let resp = http(gw.admin, &request(method, &path, &host, &auth, "")).await;
            assert!(resp.starts_with("HTTP/1.1 401"), "{method} {path}: {resp}");
        }
    }
    assert_eq!(listed(&gw, &["--state", "deferred"]).len(), 1);
    // Reads stay open on loopback; the token works over HTTP.
    let resp = http(gw.admin, &request("GET", "/queue", &host, &[], "")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let bearer = format!("Authorization: Bearer {token}");
    let resp = http(
        gw.admin,
        &request(
            "POST",
            &format!("/queue/{id}/hold"),
            &host,
            &[bearer.as_str()],
            "",
        ),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(listed(&gw, &["--state", "held"]).len(), 1);
    // The CLI finds the token beside the queue.
    let out = gw.queue(&["delete", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(listed(&gw, &[]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_header_client_is_cut_off() {
    // Finding: no header-read timeout. Before: a client sending half a
    // request line kept its connection forever; after: closed within
    // admin.header_timeout (1s here), an idle one too.
    let gw = waiting_gateway(&[("POSTERN__ADMIN__HEADER_TIMEOUT", "1s".into())]);
    let mut half = TcpStream::connect(gw.admin).await.unwrap();
    half.write_all(b"GET /que").await.unwrap();
    let mut idle = TcpStream::connect(gw.admin).await.unwrap();
    let start = Instant::now();
    for (name, s) in [("half a request line", &mut half), ("nothing", &mut idle)] {
        let mut buf = [0u8; 1024];
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue, // a 408 before the close
                Err(_) => break false,
            }
        };
        assert!(closed, "{name}: still open after {:?}", start.elapsed());
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // A prompt client is served as before.
    assert!(gw.admin_get("/healthz").starts_with("HTTP/1.1 200"));
}

/// Opens `n` connections that send nothing (each holds a slot until its
/// header timeout).
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// Opens `n` idle connections that the server keeps open (one it closes
/// at once, while a slot is still being freed, is replaced).
async fn open_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for _ in 0..20 {
        open.extend(idle_connections(addr, n - open.len()).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut kept = Vec::new();
        for mut s in open {
            if !closed_unanswered(&mut s, Duration::from_millis(1)).await {
                kept.push(s);
            }
        }
        open = kept;
        if open.len() == n {
            return open;
        }
    }
    panic!("the server kept {} of {n} connections open", open.len());
}

/// True when the server closes `s` (after at most `limit`) without
/// answering.
async fn closed_unanswered(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(limit, s.read(&mut buf)).await;
    matches!(r, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_connections_over_the_cap_leave_room_for_probes() {
    // Findings: no connection cap, and then a cap that slow clients could
    // fill so that health probes failed (an orchestrator restarts a healthy
    // gateway). Before: every connection was served, then with the cap a
    // probe over it was closed. After: with admin.max_connections = 2 held
    // by idle clients, /healthz is still answered from the probe reserve,
    // /queue there gets 503; past the reserve too a connection is closed at
    // once; a slot frees when a connection ends.
    let gw = waiting_gateway(&[("POSTERN__ADMIN__MAX_CONNECTIONS", "2".into())]);
    let held = idle_connections(gw.admin, 2).await;
    let probe = http(gw.admin, &request("GET", "/healthz", "x", &[], "")).await;
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
    let host = gw.admin.to_string();
    let listing = http(gw.admin, &request("GET", "/queue", &host, &[], "")).await;
    assert!(listing.starts_with("HTTP/1.1 503"), "{listing}");
    assert!(listing.contains("only /healthz and /readyz"), "{listing}");
    // The reserve (8) held too: closed at once. The probes above may still
    // hold their reserve permits for a moment after their close reached us,
    // so a reserve connection closed at once is opened again.
    let reserve = open_connections(gw.admin, 8).await;
    let mut over = TcpStream::connect(gw.admin).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let start = Instant::now();
    assert!(closed_unanswered(&mut over, Duration::from_secs(5)).await);
    assert!(start.elapsed() < Duration::from_secs(1));
    drop((held, reserve));
    let start = Instant::now();
    loop {
        let resp = http(gw.admin, &request("GET", "/queue", &host, &[], "")).await;
        if resp.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{resp}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file and directory under `dir` whose mode has group or other bits.
fn shared_entries(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push(format!("{} {mode:o}", p.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_spool_and_tracking_files_are_private() {
    // Finding: spool bodies (now body segments), sled files and the
    // tracking log were 0644.
    // Before: group/other read bits everywhere; after: 0600 files, 0700
    // directories.
    let gw = waiting_gateway(&[]);
    let line = format!("{}\r\n", "x".repeat(76));
    let big = format!(
        "Subject: big\r\nMessage-ID: <big@test>\r\n\r\n{}",
        line.repeat(100 * 1024 / line.len())
    );
    try_send(gw.smtp, "s@example.test", "r@remote.test", &big)
        .await
        .unwrap();
    let queue = gw.dir.path().join("queue");
    let bodies = queue.join("bodies");
    let tracking = queue.join("tracking.log");
    wait_until(
        Duration::from_secs(20),
        "a body segment and the log",
        || {
            std::fs::read_dir(&bodies).is_ok_and(|mut d| d.next().is_some())
                && std::fs::metadata(&tracking).is_ok_and(|m| m.len() > 0)
        },
    )
    .await;
    wait_deferred(&gw, 1).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&queue), 0o700);
    assert_eq!(mode(&tracking), 0o600);
    assert_eq!(mode(&bodies), 0o700);
    for f in std::fs::read_dir(&bodies).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
    let shared = shared_entries(&queue);
    assert!(shared.is_empty(), "readable by others: {shared:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_output_escapes_control_characters() {
    // Finding: HELO text with ESC/C1 bytes was printed raw by `postern
    // trace`/`queue list` (terminal escape injection). Before: the raw
    // bytes on stdout; after: `\x1b`, `\u{9b}` written out (and `\u001b`,
    // `\u009b` in JSON).
    let gw = waiting_gateway(&[]);
    let helo = "evil\x1b]0;pwned\x07\x1b[2J";
    let mut c = RawClient::connect(gw.smtp).await;
    // The listener takes such a name (one word, as RFC 5321 asks of no
    // more); what it stores must never reach a terminal raw.
    let ehlo = c.cmd(&format!("EHLO {helo}")).await;
    assert!(ehlo.starts_with("250"), "{ehlo:?}");
    // A C1 control (CSI) is valid in an SMTPUTF8 local part.
    let from = "a\u{9b}31m@example.test";
    let r = c
        .transaction(
            &format!("<{from}> SMTPUTF8"),
            &["<r@remote.test>"],
            b"Subject: esc\r\nMessage-ID: <esc@test>\r\n\r\nbody\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_deferred(&gw, 1).await;

    let text = |out: std::process::Output| {
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let list = text(gw.queue(&["list"]));
    assert!(raw_controls(&list).is_empty(), "{list:?}");
    assert!(list.contains(r"a\u{9b}31m@example.test"), "{list}");
    let json = text(gw.queue(&["list", "--json"]));
    assert!(raw_controls(&json).is_empty(), "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["from"], from, "JSON keeps the text itself");
    let id = v[0]["id"].as_str().unwrap().to_string();
    let show = text(gw.queue(&["show", &id]));
    assert!(raw_controls(&show).is_empty(), "{show:?}");
    assert!(show.contains(r"\u009b"), "{show}");

    wait_until(Duration::from_secs(10), "received traced", || {
        gw.trace(&[id.as_str()]).status.success()
    })
    .await;
    let trace = text(gw.trace(&[id.as_str()]));
    assert!(raw_controls(&trace).is_empty(), "{trace:?}");
    assert!(trace.contains(r"from=a\u{9b}31m@example.test"), "{trace}");
    let trace_json = text(gw.trace(&["--json", &id]));
    assert!(raw_controls(&trace_json).is_empty(), "{trace_json:?}");
    assert!(
        trace.contains(r"helo=evil\x1b]0;pwned\x07\x1b[2J"),
        "{trace}"
    );
    assert!(show.contains(r"\u001b"), "{show}");
    let first: serde_json::Value =
        serde_json::from_str(trace_json.lines().next().unwrap()).unwrap();
    assert_eq!(first["helo"], helo, "JSON keeps the text itself");
}
