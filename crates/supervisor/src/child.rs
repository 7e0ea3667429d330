//! One supervised child process that reports its work in flight.
//!
//! The child writes lines to a pipe: `R` (ready: it has accounted for the
//! suspects it was given), `E <key> <deadline-ms>` before it starts an item
//! that could kill it, `L <key>` when the item is done. [`run_child`] keeps
//! the table, kills the child when an item passes its deadline (a hang), and
//! returns, when the child ends, how it ended and which keys were in flight:
//! the suspects. Keys are opaque here.
//!
//! The platform layer is small: how the reports arrive and how a
//! [`Control`] request reaches the child. On Unix the reports come on an
//! inherited pipe ([`InflightPipe`], fd numbers passed in the environment
//! the caller sets up) and requests are signals (SIGHUP, SIGTERM). On
//! Windows the child's stdout carries the reports and its stdin the
//! supervisor's lines: first whatever the caller hands over at spawn
//! ([`Handover`]: the listening sockets, duplicated for the child's
//! process id), then `HUP` and `TERM`. The watch loop ([`watch_child`]:
//! deadlines, stop, grace, forwarding) is one for both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the child was doing, by key: deadline.
#[derive(Debug, Default)]
pub struct Inflight {
    /// Key → deadline of each item the child has started and not finished.
    items: HashMap<String, Instant>,
    /// The child said `R`.
    pub ready: bool,
}

impl Inflight {
    /// Applies one line from the child; ignores anything malformed.
    pub fn apply(&mut self, line: &str, now: Instant) {
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some("R"), None, None) => self.ready = true,
            (Some("E"), Some(key), Some(ms)) => {
                let ms: u64 = ms.parse().unwrap_or(u64::MAX / 4);
                self.items
                    .insert(key.to_string(), now + Duration::from_millis(ms));
            }
            (Some("L"), Some(key), None) => {
                self.items.remove(key);
            }
            _ => {}
        }
    }

    /// A key whose deadline has passed, if any.
    pub fn overdue(&self, now: Instant) -> Option<&str> {
        self.items
            .iter()
            .find(|(_, d)| **d <= now)
            .map(|(k, _)| k.as_str())
    }

    /// The keys in flight, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.items.keys().cloned().collect();
        k.sort();
        k
    }
}

/// How a child run ended.
#[derive(Debug, Clone)]
pub struct ChildEnd {
    /// Exited with status 0.
    pub clean: bool,
    /// The exit status, when it exited (rather than being killed).
    pub code: Option<i32>,
    /// How it ended, in words ("exited with status 1", "hang: ...; killed
    /// by signal 9 (SIGKILL)").
    pub reason: String,
    /// Keys in flight at the end.
    pub suspects: Vec<String>,
    /// The child said `R` during this run.
    pub was_ready: bool,
    /// How long the child ran (for restart backoff: see
    /// [`Restarts`](crate::Restarts)).
    pub ran_for: Duration,
}

/// A request from the supervisor to its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Reload the configuration (SIGHUP; `HUP` on Windows).
    Reload,
    /// Stop: finish what is in progress and exit (SIGTERM; `TERM`).
    Stop,
}

/// The line a [`Control`] request is on the child's stdin (Windows).
pub fn control_line(c: Control) -> &'static str {
    match c {
        Control::Reload => "HUP\n",
        Control::Stop => "TERM\n",
    }
}

/// The [`Control`] request a stdin line asks for (Windows), if any.
pub fn parse_control(line: &str) -> Option<Control> {
    match line.trim() {
        "HUP" => Some(Control::Reload),
        "TERM" => Some(Control::Stop),
        _ => None,
    }
}

/// The platform half of a watched child: reports in, requests out.
trait ChildIo {
    /// Applies every report available now to `table`.
    fn drain(&mut self, table: &mut Inflight);
    /// Passes `c` on to the child.
    fn send(&mut self, child: &tokio::process::Child, c: Control);
}

/// Waits for `child` to end, draining its reports into `table` every
/// tick. Kills it when an item overruns its deadline, forwards requests
/// from `forward`, and once `stop` changes asks it to stop, then kills it
/// after `grace`. Returns how it ended, and why it was killed if it was.
async fn watch_child(
    child: &mut tokio::process::Child,
    io: &mut impl ChildIo,
    table: &mut Inflight,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
    forward: &mut tokio::sync::mpsc::UnboundedReceiver<Control>,
) -> std::io::Result<(std::process::ExitStatus, Option<String>)> {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut killed: Option<String> = None;
    let status = loop {
        tokio::select! {
            _ = tick.tick() => {
                io.drain(table);
                if killed.is_none() {
                    if let Some(key) = table.overdue(Instant::now()) {
                        let why = format!("hang: {key} passed its deadline");
                        tracing::error!(%why, "killing the gateway");
                        let _ = child.start_kill();
                        killed = Some(why);
                    }
                }
            }
            Some(c) = forward.recv() => io.send(child, c),
            _ = stop.changed() => {
                io.send(child, Control::Stop);
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(s) => break s?,
                    Err(_) => { let _ = child.start_kill(); }
                }
            }
            s = child.wait() => break s?,
        }
    };
    Ok((status, killed))
}

/// How a watched run ended, from its status and the final table.
fn child_end(
    status: std::process::ExitStatus,
    killed: Option<String>,
    table: &Inflight,
    started: Instant,
) -> ChildEnd {
    let reason = match &killed {
        Some(k) => format!("{k}; {}", crate::exit::describe(&status)),
        None => crate::exit::describe(&status),
    };
    ChildEnd {
        clean: status.success(),
        code: if killed.is_none() {
            status.code()
        } else {
            None
        },
        reason,
        suspects: table.keys(),
        was_ready: table.ready,
        ran_for: started.elapsed(),
    }
}

#[cfg(unix)]
pub use unix::{run_child, InflightPipe};
#[cfg(windows)]
pub use windows::{run_child, Handover};

#[cfg(unix)]
mod unix {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use tokio::sync::watch;

    /// Non-blocking bulk reader of the in-flight pipe.
    struct PipeReader {
        file: std::fs::File,
        /// Bytes of an unfinished line.
        partial: Vec<u8>,
    }

    impl PipeReader {
        fn new(fd: OwnedFd) -> std::io::Result<PipeReader> {
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                if flags < 0
                    || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(PipeReader {
                file: std::fs::File::from(fd),
                partial: Vec::new(),
            })
        }

        /// Applies every complete line available now.
        fn drain(&mut self, table: &mut Inflight) {
            let mut buf = [0u8; 65536];
            loop {
                match self.file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // WouldBlock: nothing more for now
                }
            }
            let now = Instant::now();
            let mut start = 0;
            while let Some(i) = self.partial[start..].iter().position(|b| *b == b'\n') {
                let line = String::from_utf8_lossy(&self.partial[start..start + i]).into_owned();
                table.apply(&line, now);
                start += i + 1;
            }
            self.partial.drain(..start);
        }
    }

    /// A pipe whose write end the child inherits.
    pub struct InflightPipe {
        /// Our end: [`run_child`] reads the child's reports from it.
        pub read: OwnedFd,
        /// The child's end, inherited across exec.
        pub write: OwnedFd,
    }

    impl InflightPipe {
        /// Both ends close-on-exec; the caller clears the flag on the
        /// write end in the child only (see [`clear_cloexec`]).
        pub fn new() -> std::io::Result<InflightPipe> {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two descriptors into `fds`.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: both descriptors were just created and are owned here.
            Ok(unsafe {
                InflightPipe {
                    read: OwnedFd::from_raw_fd(fds[0]),
                    write: OwnedFd::from_raw_fd(fds[1]),
                }
            })
        }
    }

    /// Clears close-on-exec on `fd`. Async-signal-safe: for `pre_exec`.
    pub fn clear_cloexec(fd: RawFd) -> std::io::Result<()> {
        // SAFETY: fcntl on a descriptor number; no memory is touched.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets close-on-exec on an inherited descriptor, so it does not leak
    /// further into grandchildren (content workers).
    pub fn set_cloexec(fd: RawFd) -> std::io::Result<()> {
        // SAFETY: fcntl on a descriptor number; no memory is touched.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    impl ChildIo for PipeReader {
        fn drain(&mut self, table: &mut Inflight) {
            PipeReader::drain(self, table);
        }

        fn send(&mut self, child: &tokio::process::Child, c: Control) {
            let sig = match c {
                Control::Reload => libc::SIGHUP,
                Control::Stop => libc::SIGTERM,
            };
            if let Some(pid) = child.id() {
                // SAFETY: sending a signal to our own child.
                unsafe { libc::kill(pid as i32, sig) };
            }
        }
    }

    /// Runs `cmd` (already configured, with `pipe.write` inherited) until it
    /// ends; kills it when an in-flight item overruns or `stop` turns true
    /// (then with SIGTERM, and SIGKILL after `grace`). Requests sent on
    /// `forward` are passed on as signals (SIGHUP for a reload).
    pub async fn run_child(
        mut cmd: tokio::process::Command,
        pipe: InflightPipe,
        stop: watch::Receiver<bool>,
        grace: Duration,
        forward: &mut tokio::sync::mpsc::UnboundedReceiver<Control>,
    ) -> std::io::Result<ChildEnd> {
        let started = Instant::now();
        let write_fd = pipe.write.as_raw_fd();
        // SAFETY: the closure only calls fcntl (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || clear_cloexec(write_fd));
        }
        // A reload asked for before this child existed is moot: it reads
        // the current configuration anyway.
        while forward.try_recv().is_ok() {}
        let mut child = cmd.spawn()?;
        // Our copy of the write end: EOF arrives when the child's closes.
        drop(pipe.write);
        // The child writes a few lines per message; waking for each would
        // cost a context switch per line. Instead the pipe is made large and
        // drained in bulk every tick (and once more at the end).
        #[cfg(target_os = "linux")]
        // SAFETY: fcntl on our own pipe descriptor.
        unsafe {
            libc::fcntl(pipe.read.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        }
        let mut reader = PipeReader::new(pipe.read)?;
        let mut table = Inflight::default();
        let (status, killed) =
            watch_child(&mut child, &mut reader, &mut table, stop, grace, forward).await?;
        // What the child wrote just before it ended (grandchildren do not
        // hold the pipe: the gateway marks it close-on-exec).
        reader.drain(&mut table);
        Ok(child_end(status, killed, &table, started))
    }
}

#[cfg(windows)]
mod windows {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::sync::{mpsc, watch};

    /// What the supervisor writes on the child's stdin once it exists (it
    /// may depend on the child's process id and handle: sockets duplicated
    /// for it, the job it is put in); `Err` kills the child and fails the
    /// run.
    pub type Handover = Box<dyn FnOnce(&tokio::process::Child) -> std::io::Result<Vec<u8>> + Send>;

    /// The child's stdio: its report lines, read by a task, and a writer
    /// task for its stdin.
    struct Stdio {
        reports: mpsc::UnboundedReceiver<String>,
        requests: mpsc::UnboundedSender<Vec<u8>>,
    }

    impl ChildIo for Stdio {
        fn drain(&mut self, table: &mut Inflight) {
            let now = Instant::now();
            while let Ok(line) = self.reports.try_recv() {
                table.apply(&line, now);
            }
        }

        fn send(&mut self, _child: &tokio::process::Child, c: Control) {
            let _ = self.requests.send(control_line(c).as_bytes().to_vec());
        }
    }

    /// Runs `cmd` until it ends, with its stdin and stdout as the control
    /// and report channels: `handover` is written first, then requests
    /// from `forward` (and `TERM` once `stop` turns true; killed after
    /// `grace`). Kills the child when an in-flight item overruns.
    pub async fn run_child(
        mut cmd: tokio::process::Command,
        handover: Handover,
        stop: watch::Receiver<bool>,
        grace: Duration,
        forward: &mut mpsc::UnboundedReceiver<Control>,
    ) -> std::io::Result<ChildEnd> {
        let started = Instant::now();
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        while forward.try_recv().is_ok() {}
        let mut child = cmd.spawn()?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(std::io::Error::other("child without stdio pipes"));
        };
        let first = match handover(&child) {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(e);
            }
        };
        let (req_tx, mut req_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let _ = req_tx.send(first);
        tokio::spawn(async move {
            while let Some(bytes) = req_rx.recv().await {
                if stdin.write_all(&bytes).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let (rep_tx, reports) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if rep_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut io = Stdio {
            reports,
            requests: req_tx,
        };
        let mut table = Inflight::default();
        let (status, killed) =
            watch_child(&mut child, &mut io, &mut table, stop, grace, forward).await?;
        // The reader ends at the pipe's EOF: what the child wrote last.
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        io.drain(&mut table);
        Ok(child_end(status, killed, &table, started))
    }
}

#[cfg(unix)]
pub use unix::{clear_cloexec, set_cloexec};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_round_trip() {
        for c in [Control::Reload, Control::Stop] {
            assert_eq!(parse_control(control_line(c)), Some(c));
        }
        assert_eq!(parse_control("E d:1 5"), None);
    }

    #[test]
    fn table() {
        let now = Instant::now();
        let mut t = Inflight::default();
        t.apply("R", now);
        t.apply("E d:1 1000", now);
        t.apply("E r:2 10", now);
        t.apply("garbage line", now);
        t.apply("L r:2", now);
        assert!(t.ready);
        assert_eq!(t.keys(), vec!["d:1"]);
        assert_eq!(t.overdue(now), None);
        assert_eq!(t.overdue(now + Duration::from_secs(2)), Some("d:1"));
    }
}
