//! Issue 14, a full disk: the queue on a small tmpfs (mounted by the test:
//! CI runs as root), back pressure off (`min_free_disk = "0"`), the next
//! hop down, 62 KB messages from four clients until the disk is full.
//! Every message gets a reply in time: 250 (and is delivered later) or a
//! 4xx; none is acknowledged and lost; `/readyz` and the metrics show the
//! storage trouble; once the filesystem is enlarged and the hop is back,
//! everything acknowledged is delivered and new mail is accepted again,
//! without anyone restarting anything by hand.

mod common;

use common::{route, wait_until, Gateway, RawClient, Sink};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (CI runs as root): {out:?}"
        );
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// What happened to one message.
#[derive(Debug, Clone)]
enum Fate {
    Accepted,
    Refused(String),
    NoReply,
}

async fn send_one(addr: std::net::SocketAddr, tag: &str, body: &str) -> Fate {
    let attempt = async {
        let mut c = RawClient::connect(addr).await;
        let r = c.cmd("EHLO client.test").await;
        if !r.starts_with("250") {
            return Fate::Refused(r);
        }
        let r = c.cmd("MAIL FROM:<s@example.test>").await;
        if !r.starts_with("250") {
            return Fate::Refused(r);
        }
        let r = c.cmd("RCPT TO:<r@inside.test>").await;
        if !r.starts_with("250") {
            return Fate::Refused(r);
        }
        let r = c.cmd("DATA").await;
        if !r.starts_with("354") {
            return Fate::Refused(r);
        }
        let data =
            format!("Subject: {tag}\r\nMessage-ID: <{tag}@disk.test>\r\n\r\n{body}\r\n.\r\n");
        c.send(data.as_bytes()).await;
        let r = c.reply().await;
        if r.starts_with("250") {
            Fate::Accepted
        } else {
            Fate::Refused(r)
        }
    };
    // Every stage of the gateway has a deadline; 60 s is far past them.
    match tokio::time::timeout(Duration::from_secs(60), attempt).await {
        Ok(f) => f,
        Err(_) => Fate::NoReply,
    }
}

fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    gw.admin_get("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_with_4xx_loses_nothing_and_recovers_by_itself() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mnt = Tmpfs::mount(&dir.path().join("disk"), "24m");
    // The next hop: a port nobody listens on yet.
    let hop = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hop_addr = hop.local_addr().unwrap();
    drop(hop);
    // The queue on the small filesystem; the tracking log off (it would
    // compete for the space).
    let text = common::gateway::config_text(
        &mnt.0,
        "",
        "min_free_disk = \"0\"",
        &format!(
            "[tracking]\ndestination = \"off\"\n{}",
            route("inside.test", hop_addr)
        ),
    );
    let gw = Gateway::start_config(dir.clone(), &text);
    let body: String = (0..68)
        .map(|i| format!("{i:04} {}\r\n", "x".repeat(900)))
        .collect();
    let fates: Arc<Mutex<Vec<(String, Fate)>>> = Arc::new(Mutex::new(Vec::new()));
    let refused_in_a_row = Arc::new(Mutex::new(0u32));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (fates, row, body, addr) = (
            fates.clone(),
            refused_in_a_row.clone(),
            body.clone(),
            gw.smtp,
        );
        clients.push(tokio::spawn(async move {
            for i in 0..600 {
                if *row.lock().unwrap() >= 40 {
                    break;
                }
                let tag = format!("m{c}-{i}");
                let fate = send_one(addr, &tag, &body).await;
                match &fate {
                    Fate::Accepted => *row.lock().unwrap() = 0,
                    _ => *row.lock().unwrap() += 1,
                }
                fates.lock().unwrap().push((tag, fate));
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let fates = fates.lock().unwrap().clone();
    let accepted: BTreeSet<String> = fates
        .iter()
        .filter(|(_, f)| matches!(f, Fate::Accepted))
        .map(|(t, _)| t.clone())
        .collect();
    let no_reply: Vec<&(String, Fate)> = fates
        .iter()
        .filter(|(_, f)| matches!(f, Fate::NoReply))
        .collect();
    let refusals: Vec<&String> = fates
        .iter()
        .filter_map(|(_, f)| match f {
            Fate::Refused(r) => Some(r),
            _ => None,
        })
        .collect();
    eprintln!(
        "first refusals: {:?}",
        refusals.iter().take(3).collect::<Vec<_>>()
    );
    eprintln!(
        "accepted {}, refused {}, no reply {}",
        accepted.len(),
        refusals.len(),
        no_reply.len()
    );
    assert!(
        no_reply.is_empty(),
        "transactions without a reply: {no_reply:?}"
    );
    assert!(
        accepted.len() > 50,
        "the disk filled too early: {}",
        accepted.len()
    );
    assert!(!refusals.is_empty(), "the disk never filled");
    for r in &refusals {
        assert!(
            r.starts_with("452 4.3.1") || r.starts_with("451"),
            "not a 4xx: {r}"
        );
    }
    assert!(
        refusals.iter().any(|r| r.starts_with("452 4.3.1")),
        "a full disk is 452 4.3.1: {refusals:?}"
    );
    // The trouble shows (the watcher looks every second).
    wait_until(Duration::from_secs(5), "/readyz 503", || {
        gw.admin_get("/readyz").starts_with("HTTP/1.1 503")
    })
    .await;
    assert_eq!(metric(&gw, "postern_queue_storage_full"), Some(1.0));
    assert_eq!(metric(&gw, "postern_back_pressure"), Some(2.0));
    // Space returns, the hop comes back: all acknowledged mail arrives.
    mnt.resize("512m");
    let sink = Sink::start(&hop_addr.to_string()).await;
    let start = Instant::now();
    let delivered = || -> BTreeSet<String> {
        sink.all()
            .iter()
            .filter_map(|m| {
                m.data
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: "))
                    .map(str::to_string)
            })
            .collect()
    };
    while !accepted.is_subset(&delivered()) {
        if start.elapsed() > Duration::from_secs(120) {
            let got = delivered();
            let lost: Vec<&String> = accepted.difference(&got).collect();
            let log = gw.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{} of {} acknowledged messages delivered; missing {:?}\nqueue: {}\nlog tail:\n{}",
                accepted.len() - lost.len(),
                accepted.len(),
                &lost[..lost.len().min(10)],
                String::from_utf8_lossy(&gw.queue(&["summary"]).stdout),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "delivered {} in {:?} after space returned",
        accepted.len(),
        start.elapsed()
    );
    // And new mail is taken again.
    let again = send_one(gw.smtp, "after", &body).await;
    assert!(matches!(again, Fate::Accepted), "{again:?}");
    wait_until(Duration::from_secs(30), "the new message delivered", || {
        !sink.with("Subject: after").is_empty()
    })
    .await;
    let ready = gw.admin_get("/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}
