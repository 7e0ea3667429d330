//! Issue 16: a fleet of gateways on loopback, each with its own queue and
//! ports, and a next hop that is down.
//!
//! - 1,000 messages queued on A; A drained (421 to new connections,
//!   /readyz 503) and its queue transferred to B; the hop comes up: every
//!   message delivered exactly once, by B, none left on A, DSN parameters
//!   carried.
//! - A killed with SIGKILL in the middle of a transfer to C and restarted:
//!   the transfer run again, nothing lost, at most the messages in flight
//!   duplicated.
//! - A message near `max_age` transferred with its arrival time expires
//!   at B on time, with one failure DSN; the delay notice A sent is not
//!   sent again by B.
//! - Drain under live load: every client either gets its 250 or a 421
//!   greeting; none is refused a connection.

mod common;

use common::{wait_until, Gateway, RawClient, Sink};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A port nothing listens on (yet): the next hop that is down.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway of the fleet: trusts 127.0.0.1 as client and as peer; mail
/// for inside.test goes to `hop`, DSNs for example.test to `senders`.
fn config(dir: &std::path::Path, hop: u16, senders: SocketAddr, queue: &str) -> String {
    format!(
        r#"
[server]
hostname = "gw-{name}.example.test"
listen = ["127.0.0.1:0"]

[relay]
accepted_domains = ["example.test"]
trusted_networks = ["127.0.0.1/32"]

[queue]
path = "{q}"
cache_size = "16MiB"
{queue}

[admin]
listen = "127.0.0.1:0"

[delivery]
connect_timeout = "2s"

[fleet]
peers = ["127.0.0.1/32"]

[[route]]
domain = "inside.test"
hosts = ["127.0.0.1:{hop}"]

[[route]]
domain = "example.test"
hosts = ["{senders}"]
"#,
        name = dir.file_name().unwrap().to_string_lossy(),
        q = dir.join("queue").display()
    )
}

fn start(dir: &Arc<tempfile::TempDir>, text: &str) -> Gateway {
    Gateway::start_config(dir.clone(), text)
}

/// The source A, which keeps its queue (retry in 10 minutes), and the peer
/// B, which retries every second: each with its directory.
fn source_and_peer(
    hop: u16,
    senders: SocketAddr,
) -> (
    (Arc<tempfile::TempDir>, Gateway),
    (Arc<tempfile::TempDir>, Gateway),
) {
    let one = |retry: &str| {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let queue = format!("retry_intervals = [\"{retry}\"]");
        let gw = start(&dir, &config(dir.path(), hop, senders, &queue));
        (dir, gw)
    };
    (one("10m"), one("1s"))
}

/// The admin endpoint's view of the drain state and the queue.
fn drain_state(gw: &Gateway) -> serde_json::Value {
    serde_json::from_str(&admin_json(gw, "/drain")).unwrap_or_default()
}

/// The JSON body of an admin GET.
fn admin_json(gw: &Gateway, path: &str) -> String {
    let text = gw.admin_get(path);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn metric(gw: &Gateway, name: &str) -> u64 {
    gw.admin_get("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `n` messages to r@inside.test over `sessions` connections, each
/// with a subject `tag i`.
async fn load(addr: SocketAddr, tag: &str, n: usize, sessions: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (next, tag) = (next.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut c = RawClient::connect(addr).await;
            let r = c.cmd("EHLO client.test").await;
            assert!(r.starts_with("250"), "{r}");
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let data = format!("Subject: {tag} {i}\r\n\r\n{tag} {i}\r\n.\r\n");
                let r = c
                    .transaction("<s@example.test>", &["<r@inside.test>"], data.as_bytes())
                    .await;
                assert!(r.starts_with("250"), "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits until every message of `gw` has had its first attempt (none ready
/// or being delivered) and `n` wait.
async fn settled(gw: &Gateway, n: u64) {
    wait_until(Duration::from_secs(60), "first attempts made", || {
        let v = drain_state(gw);
        v["delivering"] == 0 && v["waiting"].as_u64() == Some(n)
    })
    .await;
}

fn stdout(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The distinct subjects the sink received with `tag`, and the total.
fn received(sink: &Sink, tag: &str) -> (HashSet<String>, usize) {
    let all: Vec<String> = sink
        .all()
        .iter()
        .filter_map(|m| {
            m.data
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .filter(|s| s.starts_with(tag))
        .collect();
    (all.iter().cloned().collect(), all.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_node_hands_its_queue_to_a_peer_and_every_message_arrives_once() {
    let hop = free_port();
    let senders = Sink::start("127.0.0.1:0").await;
    // A retries in 10 minutes (so its queue stays put); B every second.
    let ((da, a), (_db, b)) = source_and_peer(hop, senders.addr);
    load(a.smtp, "fleet", 1000, 10).await;
    // One message with every DSN parameter.
    let mut c = RawClient::connect(a.smtp).await;
    c.cmd("EHLO client.test").await;
    let r = c
        .transaction(
            "<s@example.test> RET=FULL ENVID=fleet-envid",
            &["<dsn@inside.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;dsn@inside.test"],
            b"Subject: fleet-dsn\r\n\r\nparameters\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    settled(&a, 1001).await;

    // Drain A: new connections get 421, the load balancer's check 503.
    let out = a.with_config("drain", &[]);
    assert!(out.status.success(), "{}", stdout(&out));
    let greeting = RawClient::try_connect(a.smtp)
        .await
        .err()
        .unwrap_or_default();
    assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
    assert!(a.admin_get("/readyz").starts_with("HTTP/1.1 503"));
    assert_eq!(metric(&a, "postern_draining"), 1);

    // Hand A's queue to B.
    let started = Instant::now();
    let out = a.queue(&["transfer", "--to", &b.smtp.to_string()]);
    let secs = started.elapsed().as_secs_f64();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1001 accepted, 0 failed"), "{text}");
    println!(
        "transfer of 1001 messages A -> B: {secs:.2} s, {:.0} msg/s",
        1001.0 / secs
    );
    let left = drain_state(&a);
    assert_eq!(
        (left["waiting"].as_u64(), left["held"].as_u64()),
        (Some(0), Some(0)),
        "{left}"
    );
    assert_eq!(
        metric(&a, "postern_transfers_total{result=\"accepted\"}"),
        1001
    );
    assert_eq!(metric(&b, "postern_transfers_received_total"), 1001);

    // The hop comes up: B delivers each message once.
    let sink = Sink::start_dsn(&format!("127.0.0.1:{hop}")).await;
    wait_until(Duration::from_secs(120), "1001 delivered", || {
        sink.count() >= 1001
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (distinct, total) = received(&sink, "fleet");
    assert_eq!(
        (distinct.len(), total),
        (1001, 1001),
        "duplicates or losses"
    );
    // Delivered by B, with the DSN parameters the client gave A.
    let dsn = sink.with("fleet-dsn");
    assert_eq!(dsn.len(), 1);
    assert!(dsn[0].data.contains("by gw-"), "{}", dsn[0].data);
    assert!(
        !dsn[0].data.contains("X-Postern-Transfer"),
        "the history field leaked"
    );
    assert!(
        dsn[0].mail.contains("RET=FULL") && dsn[0].mail.contains("ENVID=fleet-envid"),
        "{}",
        dsn[0].mail
    );
    let rcpt = dsn[0].rcpts.join(" ");
    assert!(
        rcpt.contains("NOTIFY=FAILURE,DELAY") && rcpt.contains("ORCPT=rfc822;dsn@inside.test"),
        "{rcpt}"
    );
    // Tracking on A says where each went.
    let trace = std::fs::read_to_string(da.path().join("queue/tracking.log")).unwrap();
    assert_eq!(trace.matches("\"event\":\"transferred\"").count(), 1001);
    // Undrain: A greets again.
    assert!(a.with_config("undrain", &[]).status.success());
    assert!(RawClient::try_connect(a.smtp).await.is_ok());
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_cut_by_sigkill_loses_nothing() {
    let hop = free_port();
    let senders = Sink::start("127.0.0.1:0").await;
    let (da, dc) = (
        Arc::new(tempfile::tempdir().unwrap()),
        Arc::new(tempfile::tempdir().unwrap()),
    );
    let text_a = config(da.path(), hop, senders.addr, "retry_intervals = [\"10m\"]");
    let mut a = start(&da, &text_a);
    let c = start(
        &dc,
        &config(dc.path(), hop, senders.addr, "retry_intervals = [\"1s\"]"),
    );
    load(a.smtp, "cut", 400, 8).await;
    settled(&a, 400).await;
    // The transfer runs in A's daemon; A dies in the middle of it.
    let to = c.smtp.to_string();
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["queue", "--config"])
        .arg(&a.config)
        .args(["transfer", "--to", &to])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "transfer under way", || {
        metric(&c, "postern_transfers_received_total") >= 50
    })
    .await;
    a.kill9();
    let _ = cli.wait();
    let moved = metric(&c, "postern_transfers_received_total");
    assert!(
        moved < 400,
        "the transfer finished before the kill: {moved}"
    );
    // Restarted on its queue: the rest (held ones included) goes again,
    // this time as a Kubernetes preStop hook does it: drain, then transfer.
    let a = start(&da, &text_a);
    let out = a.with_config("drain", &["--settle", "1s", "--transfer-to", &to]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("0 failed"), "{}", stdout(&out));
    let left = drain_state(&a);
    assert_eq!(
        (left["waiting"].as_u64(), left["held"].as_u64()),
        (Some(0), Some(0)),
        "{left}"
    );
    let sink = Sink::start(&format!("127.0.0.1:{hop}")).await;
    wait_until(Duration::from_secs(120), "400 delivered", || {
        received(&sink, "cut").0.len() >= 400
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (distinct, total) = received(&sink, "cut");
    assert_eq!(distinct.len(), 400, "a message was lost");
    // At most the messages in flight at the kill (8 at once) twice.
    assert!(total - 400 <= 8, "{} duplicates", total - 400);
    println!(
        "killed after {moved} of 400; delivered 400, duplicates {}",
        total - 400
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn arrival_time_travels_so_max_age_and_delay_notices_continue_at_the_peer() {
    let hop = free_port();
    let senders = Sink::start("127.0.0.1:0").await;
    let (da, db) = (
        Arc::new(tempfile::tempdir().unwrap()),
        Arc::new(tempfile::tempdir().unwrap()),
    );
    let queue = "retry_intervals = [\"1s\"]\nmax_age = \"16s\"\ndelay_warning = [\"3s\"]";
    let a = start(&da, &config(da.path(), hop, senders.addr, queue));
    let b = start(&db, &config(db.path(), hop, senders.addr, queue));
    let sent = Instant::now();
    let mut c = RawClient::connect(a.smtp).await;
    c.cmd("EHLO client.test").await;
    let r = c
        .transaction(
            "<s@example.test> ENVID=old-one",
            &["<late@inside.test>"],
            b"Subject: old one\r\n\r\nnear max_age\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    // A tells the sender it is delayed (past 3 s), then hands it over.
    wait_until(Duration::from_secs(15), "delay notice from A", || {
        senders.with("Action: delayed").len() == 1
    })
    .await;
    let out = a.queue(&["transfer", "--to", &b.smtp.to_string()]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 accepted"), "{}", stdout(&out));
    // B expires it 16 s after it reached A, not 16 s after it reached B.
    wait_until(Duration::from_secs(40), "failure DSN", || {
        senders.with("Action: failed").len() == 1
    })
    .await;
    let age = sent.elapsed();
    assert!(
        age >= Duration::from_secs(15) && age < Duration::from_secs(24),
        "expired {age:?} after arrival"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dsns = senders.all();
    assert_eq!(
        dsns.len(),
        2,
        "one delay notice and one failure, nothing more"
    );
    let failure = senders.with("Action: failed");
    assert!(
        failure[0].data.contains("Original-Envelope-Id: old-one"),
        "{}",
        failure[0].data
    );
    assert!(failure[0].data.contains("4.4.7"), "{}", failure[0].data);
    assert_eq!(
        metric(&b, "postern_delay_notices_total"),
        0,
        "B sent the notice again"
    );
    assert_eq!(metric(&a, "postern_delay_notices_total"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_under_live_load_refuses_no_connection() {
    let hop = Sink::start("127.0.0.1:0").await;
    let senders = Sink::start("127.0.0.1:0").await;
    let da = Arc::new(tempfile::tempdir().unwrap());
    let a = start(&da, &config(da.path(), hop.addr.port(), senders.addr, ""));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for k in 0..4 {
        let (stop, addr) = (stop.clone(), a.smtp);
        clients.push(tokio::spawn(async move {
            let (mut ok, mut told, mut i) = (0, 0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                // A refused connection panics in connect.
                let mut c = match RawClient::try_connect(addr).await {
                    Ok(c) => c,
                    Err(greeting) => {
                        assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
                        told += 1;
                        continue;
                    }
                };
                // A session opened before the drain finishes the
                // transaction it is in; a new one gets 421 and the close.
                let r = c.cmd("EHLO client.test").await;
                assert!(r.starts_with("250"), "{r}");
                let r = c.cmd("MAIL FROM:<s@example.test>").await;
                if r.starts_with("421 4.3.2") {
                    told += 1;
                    continue;
                }
                assert!(r.starts_with("250"), "{r}");
                let r = c.cmd("RCPT TO:<r@inside.test>").await;
                assert!(r.starts_with("250"), "{r}");
                let r = c.cmd("DATA").await;
                assert!(r.starts_with("354"), "{r}");
                let data = format!("Subject: live {k} {i}\r\n\r\nx\r\n.\r\n");
                c.send(data.as_bytes()).await;
                let r = c.reply().await;
                assert!(r.starts_with("250"), "{r}");
                ok += 1;
            }
            (ok, told)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.admin_get("/readyz").starts_with("HTTP/1.1 200"));
    assert!(a.with_config("drain", &[]).status.success());
    let check = a.admin_get("/readyz");
    assert!(
        check.starts_with("HTTP/1.1 503") && check.contains("draining"),
        "{check}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut told) = (0, 0);
    for c in clients {
        let (o, t) = c.await.unwrap();
        ok += o;
        told += t;
    }
    assert!(ok > 0 && told > 0, "ok {ok}, told {told}");
    // What was accepted is still delivered while draining.
    wait_until(Duration::from_secs(20), "accepted mail delivered", || {
        received(&hop, "live").1 >= ok
    })
    .await;
    let out = a.with_config("drain", &["--wait", "--timeout", "20s"]);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leftover_volume_is_handed_over_without_a_daemon() {
    let hop = free_port();
    let senders = Sink::start("127.0.0.1:0").await;
    let ((da, mut a), (_db, b)) = source_and_peer(hop, senders.addr);
    load(a.smtp, "volume", 50, 5).await;
    settled(&a, 50).await;
    // The pod is gone; its volume is left. No daemon holds the queue.
    assert!(a.stop().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["queue", "--config"])
        .arg(&a.config)
        .args(["transfer", "--queue-dir"])
        .arg(da.path().join("queue"))
        .args(["--to", &b.smtp.to_string(), "--json"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap_or_default();
    assert_eq!(
        (last["accepted"].as_u64(), last["failed"].as_u64()),
        (Some(50), Some(0)),
        "{text}"
    );
    assert_eq!(metric(&b, "postern_transfers_received_total"), 50);
    let sink = Sink::start(&format!("127.0.0.1:{hop}")).await;
    wait_until(Duration::from_secs(60), "50 delivered", || {
        received(&sink, "volume").0.len() == 50
    })
    .await;
    // The volume's queue is empty now: a gateway started on it has nothing.
    let a = start(
        &da,
        &config(da.path(), hop, senders.addr, "retry_intervals = [\"10m\"]"),
    );
    let left = drain_state(&a);
    assert_eq!(
        (left["waiting"].as_u64(), left["held"].as_u64()),
        (Some(0), Some(0)),
        "{left}"
    );
}
