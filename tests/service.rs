//! Service integration: systemd readiness and watchdog notifications from
//! `postern run`, over a real datagram socket, and the unit file verified by
//! `systemd-analyze verify` (CI installs systemd).

mod common;

use common::tools::{output_text, SYSTEMD_ANALYZE};
use common::Gateway;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn ready_and_watchdog_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _gw = Gateway::start_full(
        "",
        "",
        "",
        &[
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
    );
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if seen.iter().any(|m| m == "READY=1")
            && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2
        {
            return;
        }
    }
    panic!("notifications seen: {seen:?}");
}

#[test]
fn systemd_unit_verifies() {
    let out = SYSTEMD_ANALYZE
        .command()
        .arg("--version")
        .output()
        .expect("systemd-analyze");
    assert!(out.status.success());
    // Point the unit at the test binary so ExecStart= resolves.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/postern.service"
    ))
    .unwrap();
    let unit = unit.replace("/usr/local/bin/postern", env!("CARGO_BIN_EXE_postern"));
    let path = dir.path().join("postern.service");
    std::fs::write(&path, unit).unwrap();
    let out = SYSTEMD_ANALYZE
        .command()
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(
        out.status.success() && !text.contains("postern.service:"),
        "{text}"
    );
}
