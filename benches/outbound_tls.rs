//! The cost of outbound TLS policy: the release `postern` binary relaying
//! N messages (4 KB, over S inbound sessions) to MX hosts found in a test
//! DNS server, delivered to one in-process sink offering STARTTLS with a
//! certificate from a test CA (P-256). One gateway per policy, same load:
//!
//! - `none`      no STARTTLS (the plain-text floor)
//! - `may`       opportunistic STARTTLS, no certificate check (the default)
//! - `verify`    a `[[tls_policy]]` verify entry: WebPKI check of the chain
//! - `mta-sts`   an enforced MTA-STS policy (TXT lookup, cached policy,
//!   WebPKI check)
//! - `dane`      DANE-EE (3 1 1) with a DNSSEC-validating resolver on a
//!   signed test root zone
//!
//! Each runs twice: with connection reuse (the default, up to 100 messages
//! per connection) and with one message per connection (a handshake and a
//! check for every message, the worst case). Prints delivered/s and
//! Postern's CPU per message (user + system time of its process tree, from
//! /proc), and each policy's ratio to `may`.
//!
//! Run: `cargo bench --bench outbound_tls -- [MESSAGES] [SESSIONS]`
//! (defaults 2000 and 10; needs `openssl`, Debian package openssl).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};

#[path = "../tests/common/certs.rs"]
#[allow(dead_code)]
mod certs;
#[path = "../tests/common/dns.rs"]
#[allow(dead_code)]
mod dns;
#[path = "../tests/common/https.rs"]
#[allow(dead_code)]
mod https;
#[path = "../tests/common/sink.rs"]
#[allow(dead_code)]
mod sink;
#[path = "support.rs"]
mod support;
use support::expect;
#[path = "../tests/common/tools.rs"]
#[allow(dead_code)]
mod tools;

/// User + system clock ticks of every process in process group `pgid`.
fn cpu_ticks(pgid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            // After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12).
            if f.get(2)?.parse::<u32>().ok()? != pgid {
                return None;
            }
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// One inbound session sending messages to `rcpt` while `next` says so.
async fn session(
    addr: SocketAddr,
    rcpt: &str,
    msg: &[u8],
    next: &AtomicUsize,
    n: usize,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut s = BufReader::new(tcp);
    expect(&mut s, "220").await?;
    s.get_mut()
        .write_all(b"EHLO load.test\r\n")
        .await
        .map_err(|e| e.to_string())?;
    expect(&mut s, "250").await?;
    while next.fetch_add(1, Ordering::SeqCst) < n {
        let cmds = format!("MAIL FROM:<load@example.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
        s.get_mut()
            .write_all(cmds.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        expect(&mut s, "250").await?;
        expect(&mut s, "250").await?;
        expect(&mut s, "354").await?;
        s.get_mut()
            .write_all(msg)
            .await
            .map_err(|e| e.to_string())?;
        expect(&mut s, "250").await?;
    }
    let _ = s.get_mut().write_all(b"QUIT\r\n").await;
    Ok(())
}

struct Lab {
    dir: tempfile::TempDir,
    dns: SocketAddr,
    sink: sink::Sink,
    web_port: u16,
    _web: https::PolicyServer,
    _dns: dns::DnsServer,
}

async fn lab() -> Lab {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certs::TestCa::new(dir.path(), "ca", "Postern Bench CA");
    let mx = ca.issue(
        "mx",
        &[
            "mx.none.test",
            "mx.may.test",
            "mx.verify.test",
            "mx.sts.test",
            "mx.dane.test",
        ],
    );
    let web = ca.issue("web", &["mta-sts.sts.test"]);
    std::fs::copy(&ca.cert, dir.path().join("ca.pem")).expect("ca");
    let sink = sink::Sink::start_tls("127.0.0.1:0", &mx.chain, &mx.key).await;
    let port = sink.addr.port();
    let policy_server = https::PolicyServer::start(sink::server_config(&web.chain, &web.key)).await;
    policy_server.set(
        "mta-sts.sts.test",
        Some("version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n"),
    );
    let key = dns::TestKey::generate();
    let mut zone = dns::Zone::new();
    for d in ["none", "may", "verify", "sts", "dane"] {
        zone = zone
            .mx(&format!("{d}.test"), 10, &format!("mx.{d}.test"))
            .a(&format!("mx.{d}.test"), "127.0.0.1");
    }
    let zone = zone
        .txt("_mta-sts.sts.test", "v=STSv1; id=1")
        .a("mta-sts.sts.test", "127.0.0.1")
        .tlsa(
            "mx.dane.test",
            port,
            3,
            1,
            1,
            &certs::sha256(&certs::cert_spki(&mx.leaf)),
        )
        .sign(&key, &[], &[]);
    std::fs::write(dir.path().join("anchor.txt"), key.trust_anchor()).expect("anchor");
    let dns_server = dns::DnsServer::start(zone).await;
    Lab {
        dns: dns_server.addr,
        web_port: policy_server.addr.port(),
        dir,
        sink,
        _web: policy_server,
        _dns: dns_server,
    }
}

/// Runs one gateway for `policy`: (delivered/s, CPU ms per message).
fn run(
    rt: &tokio::runtime::Runtime,
    lab: &Lab,
    policy: &str,
    per_conn: usize,
    n: usize,
    c: usize,
) -> (f64, f64) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = lab.dir.path().join(format!("{policy}-{per_conn}"));
    std::fs::create_dir_all(&d).expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let tls = match policy {
        "none" => "[outbound_tls]\nlevel = \"none\"\nmta_sts = false\n".to_string(),
        "may" => "[outbound_tls]\nmta_sts = false\n".to_string(),
        "verify" => format!(
            "[outbound_tls]\nmta_sts = false\nca_file = \"{}\"\n[[tls_policy]]\ndomain = \"verify.test\"\nlevel = \"verify\"\n",
            lab.dir.path().join("ca.pem").display()
        ),
        "mta-sts" => format!(
            "[outbound_tls]\nca_file = \"{}\"\nmta_sts_port = {}\n",
            lab.dir.path().join("ca.pem").display(),
            lab.web_port
        ),
        _ => format!(
            "[outbound_tls]\nlevel = \"dane\"\nmta_sts = false\ntrust_anchor = \"{}\"\n",
            lab.dir.path().join("anchor.txt").display()
        ),
    };
    let domain = if policy == "mta-sts" { "sts" } else { policy };
    let cfg = format!(
        "[server]\nhostname = \"gw.example.test\"\nlisten = [\"127.0.0.1:{port}\"]\nmax_connections = 5000\n\
         [relay]\ntrusted_networks = [\"127.0.0.1/32\"]\n\
         [queue]\npath = \"{}/queue\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [delivery]\nport = {}\nnameservers = [\"{}\"]\nmax_messages_per_connection = {per_conn}\n{tls}",
        d.display(),
        lab.sink.addr.port(),
        lab.dns
    );
    std::fs::write(d.join("postern.toml"), cfg).expect("config");
    let mut child: Child = {
        use std::os::unix::process::CommandExt;
        Command::new(root.join("target/release/postern"))
            .args(["run", "--config"])
            .arg(d.join("postern.toml"))
            .env("POSTERN_LOG", "warn")
            .process_group(0)
            .stderr(Stdio::null())
            .spawn()
            .expect("postern")
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before_sink = lab.sink.count();
    let cpu0 = cpu_ticks(child.id());
    let start = Instant::now();
    let rcpt = format!("u@{domain}.test");
    rt.block_on(async {
        let body = format!("{}\r\n", "x".repeat(75)).repeat(52);
        let msg = Arc::new(format!("Subject: load\r\n\r\n{body}.\r\n").into_bytes());
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..c {
            let (next, msg, rcpt) = (next.clone(), msg.clone(), rcpt.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = session(addr, &rcpt, &msg, &next, n).await {
                    eprintln!("session failed: {e}");
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while lab.sink.count() < before_sink + n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks(child.id());
    let delivered = lab.sink.count() - before_sink;
    if delivered < n {
        eprintln!("{policy}: only {delivered} of {n} delivered");
    }
    let tls_seen = lab.sink.all()[before_sink..]
        .iter()
        .filter(|m| m.tls)
        .count();
    if policy != "none" && tls_seen < delivered {
        eprintln!(
            "{policy}: {} of {delivered} without TLS",
            delivered - tls_seen
        );
    }
    // SAFETY: signalling our own child's process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let _ = child.wait();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ms = (cpu1.saturating_sub(cpu0)) as f64 * 1000.0 / hz / delivered.max(1) as f64;
    (delivered as f64 / secs, ms)
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with('-')).collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let c: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("cargo")
        .args(["build", "--release", "-q"])
        .current_dir(root)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("release build failed");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lab = rt.block_on(lab());
    println!("messages={n} inbound sessions={c}, 4 KB, sink STARTTLS with a P-256 certificate");
    for per_conn in [100, 1] {
        println!(
            "\n{} (delivery.max_messages_per_connection = {per_conn})",
            if per_conn == 1 {
                "one message per outbound connection"
            } else {
                "connection reuse"
            }
        );
        println!(
            "{:<8} {:>12} {:>14} {:>12}",
            "policy", "delivered/s", "CPU ms/msg", "CPU vs may"
        );
        let mut results = Vec::new();
        for policy in ["none", "may", "verify", "mta-sts", "dane"] {
            results.push((policy, run(&rt, &lab, policy, per_conn, n, c)));
        }
        let may = results
            .iter()
            .find(|r| r.0 == "may")
            .map_or(1.0, |r| r.1 .1);
        for (policy, (rate, ms)) in results {
            println!("{policy:<8} {rate:>12.0} {ms:>14.3} {:>11.2}x", ms / may);
        }
    }
}
