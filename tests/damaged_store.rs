//! Issue 14, a damaged store: parts of the queue directory are truncated,
//! corrupted or deleted between runs. The gateway never crash-loops: it
//! starts and says, naming files, what it could not read (bodies whose
//! records the store lost are saved as .eml files in `<queue>/lost`;
//! messages whose body segment is gone are quarantined), or — when the
//! store cannot be opened at all — exits 78 without being restarted, with
//! the recovery steps, and `postern queue salvage` gets the mail out of
//! the damaged directory.
//!
//! Before: a corrupted database header started an empty queue and deleted
//! the body segment of 30 acknowledged messages as "orphans"; a truncated
//! one lost 13 of 30 silently; an unopenable one was restarted for ever.

mod common;

use common::gateway::postern_command;
use common::{wait_until, Gateway};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: usize = 30;

fn config(dir: &Path, hop: std::net::SocketAddr) -> String {
    common::gateway::config_text(dir, "", "min_free_disk = \"0\"", &common::route("*", hop))
}

/// A closed port: the next hop is down.
fn down() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A queue directory holding N deferred messages, cleanly stopped.
async fn filled() -> (Arc<tempfile::TempDir>, String) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let text = config(dir.path(), down());
    let mut gw = Gateway::start_config(dir.clone(), &text);
    for i in 0..N {
        let r = common::try_send(
            gw.smtp,
            "s@example.test",
            "r@inside.test",
            &format!("Subject: m{i}\r\n\r\nbody {i}\r\n"),
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(gw.stop().success());
    (dir, text)
}

/// `key=value` from the "queue recovered" line.
fn recovered(gw: &Gateway, key: &str) -> usize {
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("queue recovered"))
        .unwrap_or("");
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn lost_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("queue/lost")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_database_keeps_what_it_can_and_saves_the_rest() {
    let (dir, text) = filled().await;
    let db = dir.path().join("queue/db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len * 2 / 5)
        .unwrap();
    let gw = Gateway::start_config(dir.clone(), &text);
    let (kept, saved) = (recovered(&gw, "messages"), recovered(&gw, "saved_bodies"));
    assert_eq!(
        kept + saved,
        N,
        "every message is either kept or saved: {kept} + {saved}"
    );
    assert_eq!(lost_files(dir.path()), saved);
    if saved > 0 {
        assert!(gw.log_text().contains("without a queue record were saved"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_database_header_loses_no_body() {
    let (dir, text) = filled().await;
    let db = dir.path().join("queue/db");
    let mut data = std::fs::read(&db).unwrap();
    for b in data.iter_mut().take(64) {
        *b ^= 0x5A;
    }
    std::fs::write(&db, &data).unwrap();
    let gw = Gateway::start_config(dir.clone(), &text);
    let (kept, saved) = (recovered(&gw, "messages"), recovered(&gw, "saved_bodies"));
    assert_eq!(kept + saved, N, "{kept} + {saved}");
    assert_eq!(lost_files(dir.path()), saved);
    // Each saved file is the message as received (our Received names the
    // recipient).
    if let Some(Ok(e)) = std::fs::read_dir(dir.path().join("queue/lost"))
        .unwrap()
        .next()
    {
        let text = std::fs::read_to_string(e.path()).unwrap();
        assert!(
            text.contains("for <r@inside.test>") && text.contains("Subject: m"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_body_segment_is_named_and_its_messages_quarantined() {
    let (dir, text) = filled().await;
    for e in std::fs::read_dir(dir.path().join("queue/bodies")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let gw = Gateway::start_config(dir.clone(), &text);
    let log = gw.log_text();
    assert!(
        log.contains(&format!(".seg is missing ({N} message bodies)")),
        "{log}"
    );
    wait_until(Duration::from_secs(20), "all quarantined", || {
        let out = gw.queue(&["list", "--json", "--state", "quarantine"]);
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).map_or(0, |v| v.len()) == N
    })
    .await;
    let restarts = gw.admin_get("/metrics");
    assert!(restarts.contains("postern_gateway_restarts_total 0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unopenable_store_stops_with_the_recovery_steps_and_salvage_gets_the_mail() {
    let (dir, text) = filled().await;
    let q = dir.path().join("queue");
    std::fs::remove_file(q.join("db")).unwrap();
    std::fs::create_dir(q.join("db")).unwrap();
    std::fs::write(dir.path().join("postern.toml"), &text).unwrap();
    let start = Instant::now();
    let out = postern_command()
        .args(["run", "--config"])
        .arg(dir.path().join("postern.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(
        !stderr.contains("gateway died; restarting"),
        "no restart loop: {stderr}"
    );
    assert!(stderr.contains("postern queue salvage"), "{stderr}");
    // The recovery the message names.
    let aside = dir.path().join("queue.damaged");
    std::fs::rename(&q, &aside).unwrap();
    let out_dir = dir.path().join("salvaged");
    let s = postern_command()
        .args(["queue", "salvage"])
        .arg(&aside)
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(s.status.success(), "{s:?}");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), N);
    let gw = Gateway::start_config(dir.clone(), &text);
    assert_eq!(recovered(&gw, "messages"), 0);
}
