//! `postern trace ID|MESSAGE-ID`: a message's life from the tracking log,
//! one line per event, oldest first (rotated files included). Works without
//! the daemon: it reads the file named by `[tracking]`. Lines carry text
//! clients chose (HELO, addresses, Message-ID, remote replies): they are
//! printed through [`super::escape_controls`] (or, as JSON, through
//! [`super::escape_json_controls`]).

use crate::config::Config;
use std::process::ExitCode;

pub fn run(cfg: &Config, key: &str, json: bool) -> ExitCode {
    if cfg.tracking.destination != "file" {
        eprintln!(
            "tracking.destination is {:?}: there is no tracking file to read",
            cfg.tracking.destination
        );
        return ExitCode::from(1);
    }
    let path = cfg.tracking.file(&cfg.queue.path);
    let events = match crate::ops::tracking::read_events(&path, cfg.tracking.keep, key) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    if events.is_empty() {
        eprintln!("no events for {key} in {}", path.display());
        return ExitCode::from(1);
    }
    for v in &events {
        if json {
            println!("{}", super::escape_json_controls(&v.to_string()));
        } else {
            println!("{}", super::escape_controls(&human(v)));
        }
    }
    ExitCode::SUCCESS
}

/// `ts  event  id  key=value ...` with the common fields left out after the
/// first line's sender and recipients.
fn human(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut line = format!("{}  {:<11} {}", s("ts"), s("event"), s("id"));
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            if matches!(k.as_str(), "ts" | "event" | "id" | "message_id" | "to") {
                continue;
            }
            if k == "from" && !matches!(v["event"].as_str(), Some("received" | "queued")) {
                continue;
            }
            let shown = match val {
                serde_json::Value::String(x) => x.clone(),
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            line.push_str(&format!("  {k}={shown}"));
        }
    }
    if matches!(v["event"].as_str(), Some("received" | "queued")) {
        line.push_str(&format!("  to={}", v["to"]));
        if let Some(m) = v["message_id"].as_str() {
            line.push_str(&format!("  message_id={m}"));
        }
    }
    line
}
