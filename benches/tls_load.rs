//! The cost of TLS: the release `postern` binary relaying to a counting
//! sink, loaded with N messages over C sessions (one message per session,
//! as smtp-source does), once in plain text and once with STARTTLS on every
//! session (TLS 1.3, RSA-2048 certificate). Prints accepted/s for both and
//! the ratio, plus resident memory per idle session.
//!
//! Run: `cargo bench --bench tls_load -- [MESSAGES] [SESSIONS]`
//! (defaults 2000 and 10; needs `openssl`, Debian package openssl, and a
//! release build, which `cargo bench` makes).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "../tests/common/certs.rs"]
#[allow(dead_code)]
mod certs;
#[path = "../tests/common/memory.rs"]
mod memory;
#[path = "support.rs"]
mod support;
#[path = "../tests/common/tls_client.rs"]
mod tls_client;
use support::expect;
#[path = "../tests/common/tools.rs"]
#[allow(dead_code)]
mod tools;

async fn transaction<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: S,
    msg: &[u8],
) -> Result<(), String> {
    let mut s = BufReader::new(s);
    s.get_mut()
        .write_all(b"EHLO load.test\r\n")
        .await
        .map_err(|e| e.to_string())?;
    expect(&mut s, "250").await?;
    s.get_mut()
        .write_all(b"MAIL FROM:<load@example.test>\r\nRCPT TO:<sink@example.test>\r\nDATA\r\n")
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
    s.get_mut()
        .write_all(b"QUIT\r\n")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn session(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    msg: Arc<Vec<u8>>,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut r = BufReader::new(tcp);
    expect(&mut r, "220").await?;
    match tls {
        None => transaction(r.into_inner(), &msg).await,
        Some(c) => {
            r.get_mut()
                .write_all(b"EHLO load.test\r\n")
                .await
                .map_err(|e| e.to_string())?;
            expect(&mut r, "250").await?;
            r.get_mut()
                .write_all(b"STARTTLS\r\n")
                .await
                .map_err(|e| e.to_string())?;
            expect(&mut r, "220").await?;
            let name = rustls_pki_types::ServerName::try_from("gw.example.test")
                .map_err(|e| e.to_string())?;
            let t = c
                .connect(name, r.into_inner())
                .await
                .map_err(|e| e.to_string())?;
            transaction(t, &msg).await
        }
    }
}

async fn load(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    n: usize,
    c: usize,
) -> f64 {
    let body = format!("{}\r\n", "x".repeat(75)).repeat(52);
    let msg = Arc::new(format!("Subject: load\r\n\r\n{body}.\r\n").into_bytes());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (next, msg, tls) = (next.clone(), msg.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < n {
                if let Err(e) = session(addr, tls.clone(), msg.clone()).await {
                    eprintln!("session failed: {e}");
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A sink that accepts everything (pipelining-aware, counts nothing).
async fn sink() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("sink");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 sink\r\n").await;
                let mut data = false;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let reply: &[u8] = if data {
                        if line == ".\r\n" {
                            data = false;
                            b"250 ok\r\n"
                        } else {
                            continue;
                        }
                    } else if line.starts_with("EHLO") {
                        b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                    } else if line.starts_with("DATA") {
                        data = true;
                        b"354 go\r\n"
                    } else if line.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
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
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    certs::self_signed(dir.path(), "gw.example.test");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sink_addr = rt.block_on(sink());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(20040);
    let admin = port + 1;
    let cfg = format!(
        "[server]\nhostname = \"gw.example.test\"\nlisten = [\"127.0.0.1:{port}\"]\nmax_connections = 5000\n\
         [queue]\npath = \"{d}/queue\"\n[delivery]\nstarttls = false\n\
         [tls]\ncert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\n\
         [[route]]\ndomain = \"*\"\nhosts = [\"{sink_addr}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    );
    std::fs::write(dir.path().join("postern.toml"), cfg).expect("config");
    let mut child: Child = {
        use std::os::unix::process::CommandExt;
        Command::new(root.join("target/release/postern"))
            .args(["run", "--config"])
            .arg(dir.path().join("postern.toml"))
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
    let connector = tls_client::connector();
    let plain = rt.block_on(load(addr, None, n, c));
    let tls = rt.block_on(load(addr, Some(connector), n, c));
    let idle_before = memory::rss_tree_kib(child.id());
    let conns: Vec<std::net::TcpStream> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let idle_after = memory::rss_tree_kib(child.id());
    println!("messages={n} sessions={c} (one message per session), 4 KB");
    println!("plain    {plain:8.0} accepted/s");
    println!("starttls {tls:8.0} accepted/s (TLS 1.3)");
    println!(
        "TLS cost: {:.1} % of plaintext throughput",
        (1.0 - tls / plain) * 100.0
    );
    println!(
        "idle sessions: {} open, {:.1} KiB each (process tree RSS {idle_before} -> {idle_after} KiB)",
        conns.len(),
        idle_after.saturating_sub(idle_before) as f64 / conns.len().max(1) as f64
    );
    drop(conns);
    // SAFETY: signalling our own child's process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let _ = child.wait();
}
