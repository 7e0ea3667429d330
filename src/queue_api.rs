//! The queue over the admin HTTP endpoint, as JSON.
//!
//! `GET /queue[?state=S]` lists messages; `GET /queue/ID` shows one;
//! `POST /queue/ID/release` (held or quarantined → due now, crash count
//! reset), `POST /queue/ID/hold`, `DELETE /queue/ID`. Errors come back as
//! `{"error": "..."}` with 400/404/409.

use postern_core::QueueId;
use postern_queue::{QuarantineInfo, Queue, QueueError, Record, State};
use serde::Serialize;

/// One line of `queue list`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Summary {
    pub id: String,
    pub state: String,
    pub from: String,
    pub to: Vec<String>,
    pub message_id: Option<String>,
    pub size: u64,
    pub age_secs: u64,
    pub attempts: u32,
    pub crashes: u32,
    pub last_error: Option<String>,
    pub quarantine: Option<QuarantineInfo>,
}

impl Summary {
    pub fn of(r: &Record) -> Summary {
        let e = &r.envelope;
        Summary {
            id: e.id.to_string(),
            state: r.state.name().to_string(),
            from: e.sender.as_ref().map(|a| a.to_string()).unwrap_or_default(),
            to: e.recipients.iter().map(|r| r.address.to_string()).collect(),
            message_id: e.message_id.clone(),
            size: e.size,
            age_secs: postern_core::now_ms().saturating_sub(e.received_ms) / 1000,
            attempts: r.attempts,
            crashes: r.crashes,
            last_error: r.last_error.clone(),
            quarantine: r.quarantine.clone(),
        }
    }
}

/// An API answer: status code and JSON body.
pub type Answer = (u16, String);

fn error(code: u16, msg: impl std::fmt::Display) -> Answer {
    (
        code,
        serde_json::json!({ "error": msg.to_string() }).to_string(),
    )
}

fn from_queue_error(e: QueueError) -> Answer {
    match e {
        QueueError::NotFound(_) => error(404, e),
        QueueError::WrongState { .. } => error(409, e),
        e => error(500, e),
    }
}

fn json<T: Serialize>(v: &T) -> Answer {
    match serde_json::to_string_pretty(v) {
        Ok(s) => (200, s),
        Err(e) => error(500, e),
    }
}

/// Routes one queue request; `None` when the path is not a queue path.
pub fn handle(queue: &Queue, method: &str, path: &str, query: Option<&str>) -> Option<Answer> {
    let rest = path.strip_prefix("/queue")?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    Some(match (method, parts.as_slice()) {
        ("GET", []) => list(queue, query),
        ("GET", [id]) => with_id(id, |id| queue.get(id).map(|r| json(&r))),
        ("POST", [id, "release"]) => {
            with_id(id, |id| queue.release(id).map(|r| json(&Summary::of(&r))))
        }
        ("POST", [id, "hold"]) => with_id(id, |id| queue.hold(id).map(|r| json(&Summary::of(&r)))),
        ("DELETE", [id]) => with_id(id, |id| {
            queue.get(id)?;
            queue.remove(id).map(|_| {
                (
                    200,
                    serde_json::json!({ "deleted": id.to_string() }).to_string(),
                )
            })
        }),
        _ => error(404, "no such queue operation"),
    })
}

fn with_id(id: &str, f: impl FnOnce(QueueId) -> Result<Answer, QueueError>) -> Answer {
    match QueueId::parse(id) {
        Some(id) => f(id).unwrap_or_else(from_queue_error),
        None => error(400, format!("{id:?} is not a queue id")),
    }
}

fn list(queue: &Queue, query: Option<&str>) -> Answer {
    let state = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("state="));
    let state = match state {
        None | Some("") => None,
        Some(s) => match State::parse(s) {
            Some(st) => Some(st),
            None => return error(400, format!("unknown state {s:?}")),
        },
    };
    match queue.list(state) {
        Ok(records) => json(&records.iter().map(Summary::of).collect::<Vec<_>>()),
        Err(e) => from_queue_error(e),
    }
}
