//! The queue over the admin HTTP endpoint, as JSON.
//!
//! `GET /queue` lists messages and `GET /queue/summary` counts them (by
//! state; pending recipients by domain and age, like qshape), both taking
//! the filters `?state=S&domain=D&older_than=1h`; `GET /queue/ID` shows one;
//! `POST /queue/ID/release` (held or quarantined → due now, crash count
//! reset), `POST /queue/ID/hold`, `POST /queue/ID/retry` (deliver now),
//! `DELETE /queue/ID`; `POST /queue/hold` and `POST /queue/retry` act on
//! every waiting message matching the filters. Errors come back as
//! `{"error": "..."}` with 400/404/409.

use crate::ops::tracking::Tracker;
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

/// Which messages a list, summary or bulk action applies to
/// (`?state=S&domain=D&older_than=1h`).
#[derive(Debug, Default)]
pub struct Filter {
    pub state: Option<State>,
    /// A recipient domain (any recipient of the message).
    pub domain: Option<String>,
    pub older_than_ms: Option<u64>,
}

impl Filter {
    pub fn parse(query: Option<&str>) -> anyhow::Result<Filter> {
        let mut f = Filter::default();
        for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v).ok_or_else(|| anyhow::anyhow!("bad encoding in {k}"))?;
            let v = v.as_str();
            match k {
                _ if v.is_empty() => {}
                "state" => {
                    let state = State::parse(v);
                    f.state = Some(state.ok_or_else(|| anyhow::anyhow!("unknown state {v:?}"))?);
                }
                "domain" => f.domain = Some(v.trim_end_matches('.').to_ascii_lowercase()),
                "older_than" => {
                    let d = postern_core::units::parse_duration(v)?;
                    f.older_than_ms = Some(d.as_millis() as u64);
                }
                _ => anyhow::bail!("unknown filter {k:?}"),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, r: &Record, now_ms: u64) -> bool {
        let e = &r.envelope;
        self.state.is_none_or(|s| s == r.state)
            && self.domain.as_ref().is_none_or(|d| {
                e.recipients
                    .iter()
                    .any(|r| r.address.domain.eq_ignore_ascii_case(d))
            })
            && self
                .older_than_ms
                .is_none_or(|ms| now_ms.saturating_sub(e.received_ms) >= ms)
    }
}

/// Decodes `%XX` escapes (and `+` as space); `None` on a broken escape or
/// invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Age buckets of the summary, in minutes (qshape's): a message falls in
/// the first bucket whose bound exceeds its age; the last one is open.
pub const AGE_BUCKETS_MIN: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// One row of `queue summary`: pending recipients of one domain by age.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct DomainRow {
    pub domain: String,
    pub total: u64,
    /// Counts per [`AGE_BUCKETS_MIN`] bucket, plus one for older.
    pub ages: Vec<u64>,
}

/// `queue summary`: messages by state, pending recipients by domain and age.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct QueueSummary {
    pub states: std::collections::BTreeMap<String, u64>,
    pub messages: u64,
    pub domains: Vec<DomainRow>,
}

fn summarize(records: &[Record], now_ms: u64) -> QueueSummary {
    let mut sum = QueueSummary::default();
    let mut rows: std::collections::HashMap<String, DomainRow> = Default::default();
    for r in records {
        sum.messages += 1;
        *sum.states.entry(r.state.name().to_string()).or_default() += 1;
        let age_min = now_ms.saturating_sub(r.envelope.received_ms) / 60_000;
        let bucket = AGE_BUCKETS_MIN
            .iter()
            .position(|b| age_min < *b)
            .unwrap_or(AGE_BUCKETS_MIN.len());
        for (_, rcpt) in r.envelope.pending() {
            let d = rcpt.address.domain.to_ascii_lowercase();
            let row = rows.entry(d.clone()).or_insert_with(|| DomainRow {
                domain: d,
                total: 0,
                ages: vec![0; AGE_BUCKETS_MIN.len() + 1],
            });
            row.total += 1;
            row.ages[bucket] += 1;
        }
    }
    sum.domains = rows.into_values().collect();
    sum.domains
        .sort_by(|a, b| b.total.cmp(&a.total).then(a.domain.cmp(&b.domain)));
    sum
}

/// Routes one queue request; `None` when the path is not a queue path.
/// Actions are recorded in the tracking log with `"by": "admin"`.
pub fn handle(
    queue: &Queue,
    tracker: &Tracker,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Option<Answer> {
    let rest = path.strip_prefix("/queue")?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let filter = match Filter::parse(query) {
        Ok(f) => f,
        Err(e) => return Some(error(400, e.to_string())),
    };
    let act = |id: &str, name: &'static str, f: &dyn Fn(QueueId) -> Result<Record, QueueError>| {
        with_id(id, |id| {
            let r = f(id)?;
            tracker.event(
                name,
                &tracker.subject(&r.envelope),
                serde_json::json!({ "by": "admin" }),
            );
            Ok(json(&Summary::of(&r)))
        })
    };
    Some(match (method, parts.as_slice()) {
        ("GET", []) => matching(queue, &filter).map_or_else(from_queue_error, |rs| {
            json(&rs.iter().map(Summary::of).collect::<Vec<_>>())
        }),
        ("GET", ["summary"]) => matching(queue, &filter).map_or_else(from_queue_error, |rs| {
            json(&summarize(&rs, postern_core::now_ms()))
        }),
        ("POST", ["hold"]) => bulk(queue, tracker, &filter, "held", &|id| queue.hold(id)),
        ("POST", ["retry"]) => bulk(queue, tracker, &filter, "retried", &|id| queue.retry(id)),
        ("GET", [id]) => with_id(id, |id| queue.get(id).map(|r| json(&r))),
        ("POST", [id, "release"]) => act(id, "released", &|id| queue.release(id)),
        ("POST", [id, "hold"]) => act(id, "held", &|id| queue.hold(id)),
        ("POST", [id, "retry"]) => act(id, "retried", &|id| queue.retry(id)),
        ("DELETE", [id]) => with_id(id, |id| {
            let r = queue.get(id)?;
            queue.remove(id)?;
            tracker.event(
                "deleted",
                &tracker.subject(&r.envelope),
                serde_json::json!({ "by": "admin" }),
            );
            Ok((
                200,
                serde_json::json!({ "deleted": id.to_string() }).to_string(),
            ))
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

fn matching(queue: &Queue, f: &Filter) -> Result<Vec<Record>, QueueError> {
    let now = postern_core::now_ms();
    let mut v = queue.list(f.state)?;
    v.retain(|r| f.matches(r, now));
    Ok(v)
}

/// Applies `action` to every waiting (ready or deferred) message that
/// matches; messages that changed state meanwhile are skipped.
fn bulk(
    queue: &Queue,
    tracker: &Tracker,
    f: &Filter,
    name: &str,
    action: &dyn Fn(QueueId) -> Result<Record, QueueError>,
) -> Answer {
    let records = match matching(queue, f) {
        Ok(v) => v,
        Err(e) => return from_queue_error(e),
    };
    let mut ids = Vec::new();
    for r in records
        .iter()
        .filter(|r| matches!(r.state, State::Ready | State::Deferred))
    {
        if let Ok(done) = action(r.envelope.id) {
            tracker.event(
                name,
                &tracker.subject(&done.envelope),
                serde_json::json!({ "by": "admin" }),
            );
            ids.push(done.envelope.id.to_string());
        }
    }
    (
        200,
        serde_json::json!({ "action": name, "count": ids.len(), "ids": ids }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_nonsense() {
        let f = Filter::parse(Some("state=deferred&domain=Example.TEST.&older_than=1h")).unwrap();
        assert_eq!(f.state, Some(State::Deferred));
        assert_eq!(f.domain.as_deref(), Some("example.test"));
        assert_eq!(f.older_than_ms, Some(3_600_000));
        assert!(Filter::parse(Some("state=lost")).is_err());
        assert!(Filter::parse(Some("older_than=soon")).is_err());
        assert!(Filter::parse(Some("colour=red")).is_err());
        assert!(Filter::parse(Some("state=&domain="))
            .unwrap()
            .state
            .is_none());
    }
}
