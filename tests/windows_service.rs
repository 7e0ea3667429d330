//! The Windows service under Wine (issue 12): `postern service install`,
//! start through the Service Control Manager, a poison message among good
//! ones, stop, `uninstall`. The service stays up (the gateway dies under it
//! and the supervisor restarts it), the poison message is quarantined with
//! its death named as Windows names it, the good mail flows, and the event
//! source wrote the events.
//!
//! Needs the Windows build with `fault-injection` under Wine: run with
//! `POSTERN_TEST_WINE_EXE=<dir>/postern.exe cargo test --all-features
//! --test windows_service -- --ignored` (what `.ci/run` does). It uses a
//! Wine prefix of its own: the process that starts a prefix's service
//! manager lends it its stderr, where Wine's `ReportEventW` writes each
//! event (`WINEDEBUG=+eventlog`), so the test can read what was logged.

mod common;

use common::gateway::{wine_exe, wine_program};
use common::{closed_port, route, send_until_accepted, wait_until, Sink};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);

/// `wine64 <args>` in `prefix`, run in `dir`, its output appended to `log`.
fn wine(prefix: &Path, dir: &Path, log: &Path, args: &[&str]) -> bool {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(wine_program())
        .args(args)
        .current_dir(dir)
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all,+eventlog")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .is_ok_and(|s| s.success())
}

/// `GET <path>` on the admin endpoint; the body.
fn admin_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn good(i: usize) -> String {
    format!("Message-ID: <svc-{i}@wine>\r\nSubject: good {i}\r\n\r\nfine\r\n")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Windows build under Wine (POSTERN_TEST_WINE_EXE); .ci/run runs it"]
async fn the_service_survives_a_poison_message_and_writes_events() {
    let exe = wine_exe().expect("POSTERN_TEST_WINE_EXE names the Windows build");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The service runs the .exe in place; the ProcessPrng stand-in sits
    // beside it.
    for f in ["postern.exe", "bcryptprimitives.dll"] {
        std::fs::copy(exe.with_file_name(f), d.join(f)).unwrap();
    }
    let sink = Sink::start("127.0.0.1:0").await;
    let (smtp, admin) = (
        format!("127.0.0.1:{}", closed_port()),
        format!("127.0.0.1:{}", closed_port()),
    );
    std::fs::write(
        d.join("postern.toml"),
        format!(
            "[server]\nhostname = \"win.example.test\"\nlisten = [\"{smtp}\"]\n\
             [queue]\npath = \"queue\"\nretry_intervals = [\"1s\"]\n\
             [admin]\nlisten = \"{admin}\"\n\
             [workers]\nprocesses = 1\npoison_threshold = 2\ndelivery_deadline = \"5s\"\n{}",
            route("*", sink.addr)
        ),
    )
    .unwrap();
    // Faults on: the service gets no environment from us, so the switch is
    // a file in its working directory (the configuration's).
    std::fs::write(d.join("postern-faults-on"), "on").unwrap();
    let (prefix, log) = (d.join("prefix"), d.join("wine.log"));
    let events = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wine(
            &prefix,
            d,
            &log,
            &[
                "postern.exe",
                "service",
                "install",
                "--config",
                "postern.toml"
            ]
        ),
        "install: {}",
        events()
    );
    // Wine ends its service manager, and every service with it, as soon as
    // no ordinary process is left in the prefix (between two gateways a
    // service can be alone): one ordinary process stays while the test
    // runs (`hash-password` waiting on its stdin). Windows has no such rule.
    let mut keeper = Command::new(wine_program())
        .args(["postern.exe", "hash-password"])
        .current_dir(d)
        .env("WINEPREFIX", &prefix)
        .env("WINEDEBUG", "-all")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wine(&prefix, d, &log, &["sc", "start", "postern"]),
        "{}",
        events()
    );
    let smtp_addr: std::net::SocketAddr = smtp.parse().unwrap();
    let service_log =
        || std::fs::read_to_string(d.join("queue").join("postern.log")).unwrap_or_default();
    for _ in 0..(LONG.as_secs() * 5) {
        if service_log().contains("postern ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        service_log().contains("postern ready"),
        "the service's gateway never got ready:\n{}\n{}",
        service_log(),
        events()
    );

    let send = async |data: String| {
        let sent = tokio::time::timeout(LONG, send_until_accepted(smtp_addr, data)).await;
        assert!(sent.is_ok(), "not accepted:\n{}", service_log());
    };
    for i in 0..10 {
        send(good(i)).await;
    }
    let poison = "Message-ID: <poison@wine>\r\nX-Postern-Fault: delivery=abort\r\n\
                  Subject: poison\r\n\r\nbad\r\n";
    send(poison.to_string()).await;
    for i in 10..20 {
        send(good(i)).await;
    }
    wait_until(LONG, "the poison message quarantined", || {
        admin_get(&admin, "/queue?state=quarantine").contains("<poison@wine>")
    })
    .await;
    wait_until(LONG, "every good message delivered", || {
        (0..20).all(|i| !sink.with(&format!("<svc-{i}@wine>")).is_empty())
    })
    .await;
    let listing = admin_get(&admin, "/queue?state=quarantine");
    assert!(
        listing.contains("0xC0000409 (fail-fast/abort)"),
        "{listing}"
    );
    assert!(sink.with("<poison@wine>").is_empty(), "poison delivered");
    // The service stayed up: the SCM still says RUNNING.
    let query = d.join("query.log");
    // Wine's `sc` now and then fails to reach its service manager (seen
    // once in CI, passing on the rerun): asked again until it answers.
    wait_until(LONG, "sc query to say RUNNING", || {
        wine(&prefix, d, &query, &["sc", "query", "postern"])
            && std::fs::read_to_string(&query).is_ok_and(|s| s.contains("RUNNING"))
    })
    .await;

    assert!(
        wine(&prefix, d, &log, &["sc", "stop", "postern"]),
        "{}",
        events()
    );
    wait_until(LONG, "the stop event", || {
        events().contains("postern: the service stopped")
    })
    .await;
    assert!(
        wine(&prefix, d, &log, &["postern.exe", "service", "uninstall"]),
        "{}",
        events()
    );
    let text = events();
    for event in [
        "postern: the service started",
        "postern: the gateway process died and was restarted: ended with 0xC0000409 (fail-fast/abort)",
        "quarantined at the delivery stage",
        "postern: the service stopped",
    ] {
        assert!(
            text.lines().any(|l| l.contains("ReportEventW") && l.contains(event)),
            "no event {event:?}:\n{text}"
        );
    }
    let _ = keeper.kill();
    let _ = keeper.wait();
    let server = wine_program().replace("wine64", "wineserver");
    let _ = Command::new(server)
        .arg("-k")
        .env("WINEPREFIX", &prefix)
        .status();
}
