//! The message tracking log: one JSON line per message event, in the spirit
//! of Exchange's message tracking and Postfix's per-queue-ID log lines.
//!
//! Every line has `ts` (RFC 3339, UTC, ms), `event`, `id`, `message_id`,
//! `from` and `to`, then event fields (`rcpt`, `hop`, `reply`, `attempt`,
//! `next_attempt`, `stage`, `reason`, `size`, `client`, `dsn`, `by`).
//! Events: received, converted, rejected, queued, quarantined, attempt,
//! delivered, deferred, bounced, dsn, held, released, retried, deleted.
//!
//! Writing never blocks a session or a delivery: lines go through a bounded
//! channel to one writer thread. Under load it takes them in batches every
//! 10 ms (so no sender has to wake it) and flushes at least every 50 ms (a
//! crash loses at most that); when traffic pauses it flushes and waits on
//! the channel. It rotates the file at `max_size` (`tracking.log.1` newest …
//! `.keep` oldest). A full channel drops the line and counts it
//! (`postern_tracking_dropped_total`). [`read_events`] is the reading side
//! used by `postern trace`.

use crate::config::TrackingConfig;
use postern_core::Envelope;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

/// Lines that may wait for the writer before new ones are dropped.
const CHANNEL_LINES: usize = 65_536;

/// The tracking log handle. Cheap to share; a disabled one does nothing.
pub struct Tracker {
    tx: Option<SyncSender<String>>,
    dropped: prometheus::IntCounter,
}

impl Tracker {
    /// Starts the writer for `cfg` (file in `queue_dir` by default).
    pub fn start(
        cfg: &TrackingConfig,
        queue_dir: &Path,
        dropped: prometheus::IntCounter,
    ) -> std::io::Result<Tracker> {
        let sink = match cfg.destination.as_str() {
            "off" => return Ok(Tracker { tx: None, dropped }),
            "stdout" => Sink::Stdout(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )),
            _ => {
                let path = cfg.file(queue_dir);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let file = open_append(&path)?;
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                Sink::File(RotatingFile {
                    path,
                    out: std::io::BufWriter::with_capacity(64 * 1024, file),
                    size,
                    max_size: cfg.max_size.0.max(4096),
                    keep: cfg.keep,
                })
            }
        };
        let (tx, rx) = sync_channel(CHANNEL_LINES);
        std::thread::Builder::new()
            .name("tracking".into())
            .spawn(move || writer(rx, sink))?;
        Ok(Tracker {
            tx: Some(tx),
            dropped,
        })
    }

    /// The common fields of `env`'s lines, rendered once for all its events
    /// (nothing when tracking is off).
    pub fn subject(&self, env: &Envelope) -> Subject {
        match self.tx {
            Some(_) => Subject::of(env),
            None => Subject(String::new()),
        }
    }

    /// Records one event; `fields` is a JSON object of extras.
    pub fn event(&self, event: &str, subject: &Subject, fields: serde_json::Value) {
        let Some(tx) = &self.tx else { return };
        let line = format_line(postern_core::now_ms(), event, subject, &fields);
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// `"id":…,"message_id":…,"from":…,"to":[…]` of one message, as JSON text.
pub struct Subject(String);

impl Subject {
    pub fn of(env: &Envelope) -> Subject {
        use serde_json::Value;
        let s = |v: &str| Value::String(v.to_string()).to_string();
        let to: Vec<String> = env
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        Subject(format!(
            "\"id\":\"{}\",\"message_id\":{},\"from\":{},\"to\":{}",
            env.id,
            env.message_id.as_deref().map(s).unwrap_or("null".into()),
            s(&env
                .sender
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default()),
            Value::from(to),
        ))
    }
}

/// One line, fields in a fixed order (common ones first), newline-terminated.
pub fn format_line(ms: u64, event: &str, subject: &Subject, fields: &serde_json::Value) -> String {
    let s = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    let mut line = format!(
        "{{\"ts\":\"{}\",\"event\":{},{}",
        postern_core::date::rfc3339_ms(ms),
        s(event),
        subject.0
    );
    if let Some(obj) = fields.as_object() {
        for (k, v) in obj {
            line.push(',');
            line.push_str(&s(k));
            line.push(':');
            line.push_str(&v.to_string());
        }
    }
    line.push_str("}\n");
    line
}

enum Sink {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(RotatingFile),
}

struct RotatingFile {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    size: u64,
    max_size: u64,
    keep: usize,
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The `n`th rotated file (`n` ≥ 1).
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RotatingFile {
    fn write(&mut self, line: &str) -> std::io::Result<()> {
        if self.size + line.len() as u64 > self.max_size && self.size > 0 {
            // A failed rotation is tried again after another max_size bytes,
            // not on every line (each try would shift the old files again).
            let rotated = self.rotate();
            self.size = 0;
            rotated?;
        }
        self.out.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.keep == 0 {
            let f = std::fs::File::create(&self.path)?;
            self.out = std::io::BufWriter::with_capacity(64 * 1024, f);
        } else {
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            self.out = std::io::BufWriter::with_capacity(64 * 1024, open_append(&self.path)?);
        }
        self.size = 0;
        Ok(())
    }
}

/// How long a written line may wait in the buffer under load. When quiet,
/// a line is flushed at once (nothing else was written in the last period).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl Sink {
    fn write(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(line.as_bytes()),
            Sink::File(f) => f.write(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(f) => f.out.flush(),
        }
    }
}

/// While lines keep coming, the writer sleeps this long between batches
/// instead of waiting on the channel: a sender then never has to wake it
/// (a futex wake per line cost more than writing the line).
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

fn writer(rx: Receiver<String>, mut sink: Sink) {
    use std::sync::mpsc::TryRecvError;
    let mut failing = false;
    // Written but not yet flushed, and when the last flush was.
    let mut pending = false;
    let mut last_flush = std::time::Instant::now();
    // Nothing came during the last pause: wait on the channel.
    let mut idle = true;
    loop {
        let mut res = Ok(());
        let mut lines = 0usize;
        if idle {
            match rx.recv() {
                Ok(l) => {
                    res = sink.write(&l);
                    lines += 1;
                }
                Err(_) => return,
            }
        } else {
            std::thread::sleep(BATCH_PAUSE);
        }
        let mut gone = false;
        loop {
            match rx.try_recv() {
                Ok(l) => {
                    res = res.and_then(|_| sink.write(&l));
                    lines += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        pending |= lines > 0;
        idle = lines == 0;
        // Flushed when traffic pauses, and at least every FLUSH_EVERY.
        if pending && (idle || gone || last_flush.elapsed() >= FLUSH_EVERY) {
            res = res.and_then(|_| sink.flush());
            pending = false;
            last_flush = std::time::Instant::now();
        }
        // Report a failing disk once, not once per line.
        match res {
            Err(e) if !failing => {
                tracing::error!(error = %e, "tracking log write failed");
                failing = true;
            }
            Ok(()) => failing = false,
            Err(_) => {}
        }
        if gone {
            return;
        }
    }
}

/// Every event line about `key` (a queue ID or a Message-ID, with or
/// without angle brackets), oldest file first.
pub fn read_events(path: &Path, keep: usize, key: &str) -> std::io::Result<Vec<serde_json::Value>> {
    let bare = key.trim().trim_start_matches('<').trim_end_matches('>');
    let mut files: Vec<PathBuf> = (1..=keep).rev().map(|n| rotated(path, n)).collect();
    files.push(path.to_path_buf());
    let mut out = Vec::new();
    let mut found_any_file = false;
    for f in files {
        // Bytes, not a String: one damaged line must not hide the others.
        let raw = match std::fs::read(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        found_any_file = true;
        let text = String::from_utf8_lossy(&raw);
        for line in text.lines() {
            // Cheap filter before parsing; lines that do not parse are skipped.
            if !line.contains(bare) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let mid = v["message_id"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches('<')
                .trim_end_matches('>');
            if v["id"].as_str() == Some(bare) || mid == bare {
                out.push(v);
            }
        }
    }
    if !found_any_file {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no tracking log at {}", path.display()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::{Address, QueueId, Recipient};

    fn env() -> Envelope {
        Envelope {
            id: QueueId::generate(),
            sender: Address::parse("a@x.test").ok(),
            recipients: vec![Recipient::new(Address::parse("b@y.test").unwrap())],
            client: "127.0.0.1".into(),
            helo: "h".into(),
            received_ms: 0,
            size: 1,
            eight_bit: false,
            message_id: Some("<m1@x.test>".into()),
            smtputf8: false,
            dsn_ret_full: false,
            dsn_envid: None,
            trusted: false,
        }
    }

    #[test]
    fn lines_are_json_with_common_fields_first() {
        let e = env();
        let l = format_line(
            0,
            "delivered",
            &Subject::of(&e),
            &serde_json::json!({"rcpt": "b@y.test"}),
        );
        assert!(l.starts_with("{\"ts\":\"1970-01-01T00:00:00.000Z\",\"event\":\"delivered\""));
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["message_id"], "<m1@x.test>");
        assert_eq!(v["to"][0], "b@y.test");
        assert_eq!(v["rcpt"], "b@y.test");
    }

    #[test]
    fn rotation_and_reading_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let e = env();
        let mut f = RotatingFile {
            path: path.clone(),
            out: std::io::BufWriter::new(open_append(&path).unwrap()),
            size: 0,
            max_size: 600,
            keep: 2,
        };
        for i in 0..10 {
            let l = format_line(
                i,
                "attempt",
                &Subject::of(&e),
                &serde_json::json!({ "n": i }),
            );
            f.write(&l).unwrap();
        }
        f.out.flush().unwrap();
        assert!(rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        let by_id = read_events(&path, 2, &e.id.to_string()).unwrap();
        let by_mid = read_events(&path, 2, "m1@x.test").unwrap();
        assert_eq!(by_id.len(), by_mid.len());
        // Oldest surviving first, in order.
        let ns: Vec<u64> = by_id.iter().filter_map(|v| v["n"].as_u64()).collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]) && *ns.last().unwrap() == 9);
        assert!(read_events(&dir.path().join("none"), 2, "x").is_err());
    }
}
