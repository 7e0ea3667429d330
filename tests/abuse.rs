//! Abuse resistance on the real binary: early talkers, per-IP limits, the
//! NOOP cap, slowloris, back pressure, and 2,000 idle sessions at once.

mod common;

use common::{wait_until, Gateway, RawClient, Sink};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn read_some(s: &mut tokio::net::TcpStream) -> String {
    let mut b = vec![0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(15), s.read(&mut b)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&b[..n]).into_owned(),
        _ => String::new(),
    }
}

async fn connect_from(addr: std::net::SocketAddr, src: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(addr).await.unwrap()
}

fn untrusted(server: &str) -> Gateway {
    Gateway::start(
        server,
        "[relay]\naccepted_domains = [\"example.test\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n",
    )
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
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start_with_queue(
        "greeting_delay = \"0s\"",
        "max_messages = 1\nmin_free_disk = \"1\"",
        &format!(
            "[relay]\naccepted_domains = [\"example.test\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n\
             [[route]]\ndomain = \"*\"\nhosts = [\"{closed}\"]\n"
        ),
    );
    let mut t = RawClient::connect(gw.smtp).await;
    t.cmd("EHLO inside.test").await;
    t.cmd("MAIL FROM:<a@example.test>").await;
    t.cmd("RCPT TO:<b@example.test>").await;
    t.cmd("DATA").await;
    t.send(b"Subject: fills the queue\r\n\r\nx\r\n.\r\n").await;
    assert!(t.reply().await.starts_with("250"));
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
    let cfg = gw.config.display().to_string();
    let list = gw.cli(&["queue", "--config", &cfg, "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let id = rows[0]["id"].as_str().unwrap().to_string();
    assert!(gw
        .cli(&["queue", "--config", &cfg, "delete", &id])
        .status
        .success());
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
    let gw = Gateway::start(
        "max_connections = 3000",
        &format!("[[route]]\ndomain = \"*\"\nhosts = [\"{}\"]\n", sink.addr),
    );
    let pid = gw.child.id();
    let rss = |pid: u32| -> u64 {
        // The supervisor leads its own process group: sum the whole tree.
        let script = format!(
            "for p in $(pgrep -g {pid}); do awk '/VmRSS/ {{print $2}}' /proc/$p/status; done | awk '{{s+=$1}} END {{print s}}'"
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let before = rss(pid);
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
    let after = rss(pid);
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
