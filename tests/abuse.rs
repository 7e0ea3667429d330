//! Abuse resistance on the real binary: early talkers, per-IP limits, the
//! NOOP cap, slowloris, back pressure, and 2,000 idle sessions at once.

mod common;

use common::{
    closed_port, connect_tcp, memory, read_some, route, wait_until, Gateway, RawClient, Sink, RELAY,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect_from(addr: std::net::SocketAddr, src: &str) -> tokio::net::TcpStream {
    connect_tcp(addr, Some(src)).await
}

fn untrusted(server: &str) -> Gateway {
    Gateway::start(server, RELAY)
}

#[tokio::test(flavor = "multi_thread")]
async fn early_talker_is_refused() {
    let gw = untrusted("greeting_delay = \"1s\"");
    let mut s = connect_from(gw.smtp, "127.0.0.7").await;
    s.write_all(b"EHLO impatient.test\r\n").await.unwrap();
    let r = read_some(&mut s).await;
    assert!(r.starts_with("554 5.5.1"), "{r}");
    // A patient client gets the greeting after the delay.
    let mut p = connect_from(gw.smtp, "127.0.0.7").await;
    let start = Instant::now();
    assert!(read_some(&mut p).await.starts_with("220"));
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread")]
async fn per_ip_concurrency_and_rate() {
    let gw = untrusted(
        "greeting_delay = \"0s\"\nmax_connections_per_ip = 2\nmax_connection_rate_per_ip = 4",
    );
    let mut a = connect_from(gw.smtp, "127.0.0.8").await;
    let mut b = connect_from(gw.smtp, "127.0.0.8").await;
    assert!(read_some(&mut a).await.starts_with("220"));
    assert!(read_some(&mut b).await.starts_with("220"));
    let mut c = connect_from(gw.smtp, "127.0.0.8").await;
    assert!(read_some(&mut c).await.starts_with("421 4.7.0"));
    // Another address is not affected.
    let mut d = connect_from(gw.smtp, "127.0.0.9").await;
    assert!(read_some(&mut d).await.starts_with("220"));
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The fourth connection this minute is admitted, the fifth refused.
    let mut e = connect_from(gw.smtp, "127.0.0.8").await;
    assert!(read_some(&mut e).await.starts_with("220"));
    let mut f = connect_from(gw.smtp, "127.0.0.8").await;
    let r = read_some(&mut f).await;
    assert!(r.starts_with("421 4.7.0") && r.contains("slow down"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn noop_cap_and_slowloris() {
    let gw = untrusted(
        "greeting_delay = \"0s\"\nmax_noops = 3\ncommand_timeout = \"3s\"\ndata_total_timeout = \"3s\"",
    );
    let mut c = RawClient::connect_from(gw.smtp, Some("127.0.0.10")).await;
    c.cmd("EHLO x.test").await;
    for _ in 0..3 {
        assert!(c.cmd("NOOP").await.starts_with("250"));
    }
    assert!(c.cmd("RSET").await.starts_with("421 4.7.0"));
    // A byte every second keeps every read alive, but the line must be
    // complete within command_timeout.
    let mut s = connect_from(gw.smtp, "127.0.0.10").await;
    assert!(read_some(&mut s).await.starts_with("220"));
    let start = Instant::now();
    let mut closed = String::new();
    for b in b"EHLO slow.loris.example.test".iter().cycle().take(20) {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            closed = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    assert!(closed.starts_with("421 4.4.2"), "{closed:?}");
    assert!(start.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread")]
async fn back_pressure_refuses_untrusted_first_and_recovers() {
    // One queued message is the mark; the next hop is closed, so it stays.
    let closed = format!("127.0.0.1:{}", closed_port());
    let gw = Gateway::start_with_queue(
        "greeting_delay = \"0s\"",
        "max_messages = 1\nmin_free_disk = \"1\"",
        &format!("{RELAY}{}", route("*", closed)),
    );
    let mut t = RawClient::connect(gw.smtp).await;
    t.cmd("EHLO inside.test").await;
    let r = t
        .transaction(
            "<a@example.test>",
            &["<b@example.test>"],
            b"Subject: fills the queue\r\n\r\nx\r\n.\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(Duration::from_secs(10), "back pressure", || {
        gw.admin_get("/metrics").contains("postern_back_pressure 1")
    })
    .await;
    assert!(gw.admin_get("/readyz").starts_with("HTTP/1.1 503"));
    let mut u = RawClient::connect_from(gw.smtp, Some("127.0.0.11")).await;
    u.cmd("EHLO outside.test").await;
    assert!(u
        .cmd("MAIL FROM:<x@outside.test>")
        .await
        .starts_with("452 4.3.1"));
    // Trusted clients are refused last.
    assert!(t.cmd("MAIL FROM:<a@example.test>").await.starts_with("250"));
    t.cmd("RSET").await;
    // Draining the queue ends it.
    let list = gw.queue(&["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let id = rows[0]["id"].as_str().unwrap().to_string();
    assert!(gw.queue(&["delete", &id]).status.success());
    wait_until(Duration::from_secs(10), "pressure released", || {
        gw.admin_get("/metrics").contains("postern_back_pressure 0")
    })
    .await;
    assert!(u.cmd("MAIL FROM:<x@outside.test>").await.starts_with("250"));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_idle_sessions() {
    // Room for 2,000 sockets here and in the gateway (which inherits it).
    let lim = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: raising our own file limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("max_connections = 3000", &route("*", sink.addr));
    let pid = gw.child.id();
    // The supervisor leads its own process group: sum the whole tree.
    let before = memory::rss_tree_kib(pid);
    assert!(
        before > 1000,
        "cannot measure the gateway's memory ({before} KiB)"
    );
    let mut conns = Vec::new();
    for _ in 0..2000 {
        let mut s = tokio::net::TcpStream::connect(gw.smtp).await.unwrap();
        let mut b = [0u8; 64];
        let n = s.read(&mut b).await.unwrap();
        assert!(b[..n].starts_with(b"220"));
        conns.push(s);
    }
    let after = memory::rss_tree_kib(pid);
    eprintln!(
        "2000 idle sessions: tree RSS {before} KiB -> {after} KiB ({:.1} KiB per session)",
        (after.saturating_sub(before)) as f64 / 2000.0
    );
    // Still serving: a message goes through while they idle.
    let r = common::smtp_send(
        gw.smtp,
        "a@example.test",
        &["b@example.test"],
        &common::body("busy"),
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    wait_until(Duration::from_secs(30), "delivery", || sink.count() == 1).await;
    assert!(
        after < before + 2000 * 64,
        "more than 64 KiB per idle session"
    );
}
