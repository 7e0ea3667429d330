//! One supervised child process that reports its work in flight.
//!
//! The child writes lines to a pipe: `R` (ready: it has accounted for the
//! suspects it was given), `E <key> <deadline-ms>` before it starts an item
//! that could kill it, `L <key>` when the item is done. [`run_child`] keeps
//! the table, kills the child when an item passes its deadline (a hang), and
//! returns, when the child ends, how it ended and which keys were in flight:
//! the suspects. Keys are opaque here. Unix only: the pipe and any listening
//! sockets are inherited by the child (fd numbers are passed in the
//! environment the caller sets up).

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

#[cfg(unix)]
pub use unix::{run_child, InflightPipe};

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

    /// Runs `cmd` (already configured, with `pipe.write` inherited) until it
    /// ends; kills it when an in-flight item overruns or `stop` turns true
    /// (then with SIGTERM, and SIGKILL after `grace`). Signal numbers sent
    /// on `forward` are passed on to the child (SIGHUP for a reload).
    pub async fn run_child(
        mut cmd: tokio::process::Command,
        pipe: InflightPipe,
        stop: watch::Receiver<bool>,
        grace: Duration,
        forward: &mut tokio::sync::mpsc::UnboundedReceiver<i32>,
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
        let reason = match killed {
            Some(k) => format!("{k}; {}", crate::exit::describe(&status)),
            None => crate::exit::describe(&status),
        };
        Ok(ChildEnd {
            clean: status.success(),
            reason,
            suspects: table.keys(),
            was_ready: table.ready,
            ran_for: started.elapsed(),
        })
    }

    /// Waits for `child` to end, draining its reports into `table` every
    /// tick. Kills it when an item overruns its deadline, forwards signals
    /// from `forward`, and once `stop` changes sends SIGTERM, then SIGKILL
    /// after `grace`. Returns how it ended, and why it was killed if it was.
    async fn watch_child(
        child: &mut tokio::process::Child,
        reader: &mut PipeReader,
        table: &mut Inflight,
        mut stop: watch::Receiver<bool>,
        grace: Duration,
        forward: &mut tokio::sync::mpsc::UnboundedReceiver<i32>,
    ) -> std::io::Result<(std::process::ExitStatus, Option<String>)> {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut killed: Option<String> = None;
        let status = loop {
            tokio::select! {
                _ = tick.tick() => {
                    reader.drain(table);
                    if killed.is_none() {
                        if let Some(key) = table.overdue(Instant::now()) {
                            let why = format!("hang: {key} passed its deadline");
                            tracing::error!(%why, "killing the gateway");
                            let _ = child.start_kill();
                            killed = Some(why);
                        }
                    }
                }
                Some(sig) = forward.recv() => {
                    if let Some(pid) = child.id() {
                        // SAFETY: sending a signal to our own child.
                        unsafe { libc::kill(pid as i32, sig) };
                    }
                }
                _ = stop.changed() => {
                    if let Some(pid) = child.id() {
                        // SAFETY: sending a signal to our own child.
                        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                    }
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
}

#[cfg(unix)]
pub use unix::{clear_cloexec, set_cloexec};

#[cfg(test)]
mod tests {
    use super::*;

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
