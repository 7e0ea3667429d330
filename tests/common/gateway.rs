//! The real `postern` binary, started for one test.
//!
//! [`Gateway::start`] writes a configuration (listeners on port 0, the queue
//! in a temporary directory, fast retries) with the test's extra TOML, starts
//! `postern run`, and reads its log until the "postern ready" line names the
//! bound addresses. The log is kept for assertions. Dropping kills it.
//!
//! With `POSTERN_TEST_WINE_EXE` naming the Windows build (`postern.exe`,
//! with the `bcryptprimitives.dll` stand-in beside it), every gateway is
//! that build run under Wine (`POSTERN_TEST_WINE`, default
//! `/usr/lib/wine/wine64`) instead of the native binary: the same tests
//! then check the Windows supervisor (see README, "Windows").

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Gateway {
    pub smtp: SocketAddr,
    /// The implicit-TLS listener, when one is configured.
    pub smtps: Option<SocketAddr>,
    /// The submission listener, when one is configured.
    pub submission: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub dir: Arc<tempfile::TempDir>,
    pub config: PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `[[route]]` sending mail for `domain` (`"*"` for all) to `hosts`.
pub fn route(domain: &str, hosts: impl std::fmt::Display) -> String {
    format!("[[route]]\ndomain = \"{domain}\"\nhosts = [\"{hosts}\"]\n")
}

/// A `[relay]` section: example.test is ours, only 127.0.0.1 may relay
/// (other loopback addresses, 127.0.0.5 and up, are untrusted clients).
/// More `[relay]` keys may follow it.
pub const RELAY: &str =
    "[relay]\naccepted_domains = [\"example.test\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n";

/// The test configuration; `extra` is appended (routes, nameservers...).
pub fn config_text(dir: &std::path::Path, server: &str, queue: &str, extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "gw.example.test"
listen = ["127.0.0.1:0"]
{server}

[queue]
path = "{q}"
retry_intervals = ["1s"]
cache_size = "16MiB"
{queue}

[admin]
listen = "127.0.0.1:0"

{extra}
"#,
        q = dir.join("queue").display()
    )
}

impl Gateway {
    /// Starts postern with `[server]` additions and extra sections.
    pub fn start(server: &str, extra: &str) -> Gateway {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, server, extra)
    }

    /// Starts postern with `[queue]` additions too.
    pub fn start_with_queue(server: &str, queue: &str, extra: &str) -> Gateway {
        Self::start_full(server, queue, extra, &[])
    }

    /// Everything: `[server]` and `[queue]` additions, extra sections, and
    /// environment variables for the process.
    pub fn start_full(server: &str, queue: &str, extra: &str, env: &[(&str, String)]) -> Gateway {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let text = config_text(dir.path(), server, queue, extra);
        Self::spawn_env(dir, &text, env)
    }

    /// Starts postern on an existing directory (restarts keep the queue).
    pub fn start_in(dir: Arc<tempfile::TempDir>, server: &str, extra: &str) -> Gateway {
        let text = config_text(dir.path(), server, "", extra);
        Self::spawn(dir, &text)
    }

    fn spawn(dir: Arc<tempfile::TempDir>, text: &str) -> Gateway {
        Self::spawn_env(dir, text, &[])
    }

    fn spawn_env(dir: Arc<tempfile::TempDir>, text: &str, env: &[(&str, String)]) -> Gateway {
        Self::spawn_limited(dir, text, env, None)
    }

    /// Starts postern on a whole configuration text of the test's own.
    pub fn start_config(dir: Arc<tempfile::TempDir>, text: &str) -> Gateway {
        Self::spawn(dir, text)
    }

    /// Starts postern with extra sections and its open-file limit (soft,
    /// hard) set before it runs.
    pub fn start_with_nofile(extra: &str, nofile: (u64, u64)) -> Gateway {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let text = config_text(dir.path(), "", "", extra);
        Self::spawn_limited(dir, &text, &[], Some(nofile))
    }

    fn spawn_limited(
        dir: Arc<tempfile::TempDir>,
        text: &str,
        env: &[(&str, String)],
        nofile: Option<(u64, u64)>,
    ) -> Gateway {
        let config = dir.path().join("postern.toml");
        std::fs::write(&config, text).unwrap();
        let mut cmd = postern_command();
        if let Some((soft, hard)) = nofile {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit is async-signal-safe and reads a struct
            // copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd
            .process_group(0)
            .args(["run", "--config"])
            .arg(&config)
            .env("POSTERN_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start postern");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("postern ready") {
                    let _ = tx.send(line.clone());
                }
                l.lock().unwrap().push(line);
            }
        });
        // Wine starts a process in seconds, not milliseconds.
        let limit = Duration::from_secs(if wine_exe().is_some() { 120 } else { 30 });
        let ready = match rx.recv_timeout(limit) {
            Ok(line) => line,
            Err(_) => panic!("postern did not start:\n{}", log.lock().unwrap().join("\n")),
        };
        let field = |name: &str| -> SocketAddr {
            let start = ready.find(&format!("{name}=")).unwrap() + name.len() + 1;
            let rest = &ready[start..];
            let end = rest.find([' ', ',']).unwrap_or(rest.len());
            rest[..end].parse().unwrap()
        };
        let optional = |name: &str| -> Option<SocketAddr> {
            let key = format!("{name}=");
            ready
                .find(&key)
                .map(|i| &ready[i + key.len()..])
                .and_then(|r| r.split([' ', ',']).next())
                .and_then(|a| a.parse().ok())
        };
        let smtps = optional("smtps");
        let submission = optional("submission");
        Gateway {
            smtp: field("smtp"),
            smtps,
            submission,
            admin: field("admin"),
            child,
            log,
            dir,
            config,
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGKILL to the supervisor, the gateway and its workers at once (the
    /// process group): no chance to flush anything, as in a power cut.
    /// Stops the gateway as an operator does (SIGTERM to the supervisor)
    /// and waits for it to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Fetches an admin path over plain HTTP/1.1 (naming the endpoint in
    /// Host, as the admin endpoint requires).
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Runs `postern <args> --config <this config>`-style CLI commands;
    /// `args` go before the subcommand's own arguments as given.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(args)
            .output()
            .expect("run postern CLI")
    }

    /// `postern queue --config <this config> <args>`.
    pub fn queue(&self, args: &[&str]) -> std::process::Output {
        self.with_config("queue", args)
    }

    /// `postern trace --config <this config> <args>`.
    pub fn trace(&self, args: &[&str]) -> std::process::Output {
        self.with_config("trace", args)
    }

    /// `postern <subcommand> --config <this config> <args>`.
    pub fn with_config(&self, subcommand: &str, args: &[&str]) -> std::process::Output {
        let cfg = self.config.display().to_string();
        let mut all = vec![subcommand, "--config", &cfg];
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// The process id of the newest gateway child, from its "postern ready"
    /// line (a Windows process id under Wine).
    pub fn gateway_pid(&self) -> Option<u32> {
        let log = self.log_text();
        let line = log.lines().rev().find(|l| l.contains("postern ready"))?;
        let rest = &line[line.find(" pid=")? + 5..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// Kills the gateway child as the system would kill a crashed process:
    /// SIGKILL natively, `taskkill /F` (TerminateProcess) under Wine.
    pub fn kill_gateway(&self) {
        let pid = self.gateway_pid().expect("a gateway pid in the log");
        match wine_exe() {
            Some(_) => {
                let out = Command::new(wine_program())
                    .args(["taskkill", "/F", "/PID", &pid.to_string()])
                    .env("WINEDEBUG", "-all")
                    .output()
                    .expect("run taskkill");
                assert!(out.status.success(), "taskkill: {out:?}");
            }
            // SAFETY: signalling a process of our own test.
            None => assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0),
        }
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log_text().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The Windows build to run under Wine instead of the native binary, if
/// `POSTERN_TEST_WINE_EXE` names one.
pub fn wine_exe() -> Option<PathBuf> {
    std::env::var_os("POSTERN_TEST_WINE_EXE").map(PathBuf::from)
}

/// The Wine loader: `POSTERN_TEST_WINE`, default `/usr/lib/wine/wine64`.
pub fn wine_program() -> String {
    std::env::var("POSTERN_TEST_WINE").unwrap_or_else(|_| "/usr/lib/wine/wine64".to_string())
}

/// `postern` as the tests run the gateway: the native binary, or the
/// Windows build under Wine.
/// The postern binary under test (the Windows build under Wine when set).
pub fn postern_command() -> Command {
    match wine_exe() {
        Some(exe) => {
            let mut c = Command::new(wine_program());
            c.arg(exe).env("WINEDEBUG", "-all");
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_postern")),
    }
}

/// A self-signed certificate (`cert.pem`, `key.pem`) and a users file
/// (`users`: alice with the password "s3cret pass", hashed by the real
/// `postern hash-password`) in `dir`, for the AUTH tests.
pub fn users_and_certificate(dir: &std::path::Path) {
    super::certs::self_signed(dir, "gw.example.test");
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"s3cret pass\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    std::fs::write(dir.join("users"), format!("# test users\nalice:{hash}")).unwrap();
}
