//! An HTTPS server on loopback serving an MTA-STS policy file
//! (`/.well-known/mta-sts.txt`), for delivery's policy fetch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A POSTed body: path, content type, bytes.
pub type Posted = (String, String, Vec<u8>);

pub struct PolicyServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Bodies POSTed (TLS-RPT reports), with their path and content type.
    posted: Arc<Mutex<Vec<Posted>>>,
    policy: Arc<Mutex<std::collections::HashMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyServer {
    /// Serves policies (none yet: 404) over TLS with `config`, on
    /// 127.0.0.1.
    pub async fn start(config: Arc<rustls::ServerConfig>) -> PolicyServer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let policy = Arc::new(Mutex::new(
            std::collections::HashMap::<String, String>::new(),
        ));
        let posted = Arc::new(Mutex::new(Vec::new()));
        let (h, p, got) = (hits.clone(), policy.clone(), posted.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let (h, p, acceptor, got) = (h.clone(), p.clone(), acceptor.clone(), got.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let mut body = head.split_off(end);
                    let head = String::from_utf8_lossy(&head).to_string();
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    if let Some(path) = head.strip_prefix("POST ").and_then(|r| r.split(' ').next())
                    {
                        let len: usize = header("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        while body.len() < len {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => body.extend_from_slice(&buf[..n]),
                            }
                        }
                        let ctype = header("content-type").unwrap_or_default();
                        got.lock().unwrap().push((path.to_string(), ctype, body));
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        let _ = s.shutdown().await;
                        return;
                    }
                    let wanted = head.starts_with("GET /.well-known/mta-sts.txt ");
                    let host = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("host")
                                .then(|| v.trim().to_ascii_lowercase())
                        })
                        .unwrap_or_default();
                    let body = p.lock().unwrap().get(&host).cloned();
                    let resp = match body.filter(|_| wanted) {
                        Some(b) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                            b.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                    };
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        PolicyServer {
            addr,
            hits,
            posted,
            policy,
            task,
        }
    }

    /// Serves `policy` for `host` (mta-sts.<domain>) from now on (None:
    /// 404).
    pub fn set(&self, host: &str, policy: Option<&str>) {
        let mut p = self.policy.lock().unwrap();
        match policy {
            Some(text) => p.insert(host.to_string(), text.to_string()),
            None => p.remove(host),
        };
    }

    /// What was POSTed: (path, content type, body).
    pub fn posted(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
