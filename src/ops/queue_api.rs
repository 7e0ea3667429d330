//! The queue over the admin HTTP endpoint, as JSON.
//!
//! `GET /queue` lists messages one page at a time, in queue-id order:
//! `?limit=N` (default [`DEFAULT_PAGE`]) and `?after=ID`, the last id of the
//! previous page (a page shorter than its limit is the last). `GET
//! /queue/summary` counts them (by state; pending recipients by domain and
//! age, like qshape) from the queue's counters, never a walk, in
//! O(domains × distinct minutes of receipt), ages to the minute. Both take
//! the filters `?state=S&domain=D&older_than=1h` (in the summary, a domain
//! filter counts that domain's pending recipients and the messages that
//! have one); `GET /queue/ID` shows one;
//! `POST /queue/ID/release` (held or quarantined → due now, crash count
//! reset), `POST /queue/ID/hold`, `POST /queue/ID/retry` (deliver now),
//! `DELETE /queue/ID`; `POST /queue/hold` and `POST /queue/retry` act on
//! every waiting message matching the filters. Errors come back as
//! `{"error": "..."}` with 400/404/409.

use crate::ops::tracking::Tracker;
use postern_core::QueueId;
use postern_queue::{QuarantineInfo, Queue, QueueError, Record, Shape, State};
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
    /// Listing only: the page's length.
    pub limit: Option<usize>,
    /// Listing only: the page starts after this id.
    pub after: Option<QueueId>,
}

/// Messages in one `GET /queue` page unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 1000;

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
                "limit" => match v.parse::<usize>() {
                    Ok(n) if n > 0 => f.limit = Some(n),
                    _ => anyhow::bail!("limit must be a positive number, not {v:?}"),
                },
                "after" => {
                    let id = QueueId::parse(v);
                    f.after = Some(id.ok_or_else(|| anyhow::anyhow!("{v:?} is not a queue id"))?);
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
pub fn percent_decode(s: &str) -> Option<String> {
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

/// The summary from the queue's counters: O(states × domains × minutes).
fn summarize(shape: &Shape, f: &Filter, now_ms: u64) -> QueueSummary {
    let now_min = now_ms / 60_000;
    let old_enough = |minute: u64| {
        f.older_than_ms
            .is_none_or(|ms| now_min.saturating_sub(minute).saturating_mul(60_000) >= ms)
    };
    let sum_of = |m: &postern_queue::Minutes| -> u64 {
        m.iter()
            .filter(|(minute, _)| old_enough(**minute))
            .map(|(_, n)| n)
            .sum()
    };
    let mut sum = QueueSummary::default();
    let mut rows: std::collections::BTreeMap<&str, DomainRow> = Default::default();
    for (name, st) in &shape.states {
        if f.state.is_some_and(|s| s.name() != name) {
            continue;
        }
        let messages = match &f.domain {
            None => sum_of(&st.messages),
            Some(d) => st.domain_messages.get(d).map_or(0, sum_of),
        };
        if messages > 0 {
            *sum.states.entry(name.clone()).or_default() += messages;
            sum.messages += messages;
        }
        for (d, minutes) in &st.domain_recipients {
            if f.domain.as_ref().is_some_and(|want| want != d) {
                continue;
            }
            for (&minute, &n) in minutes.iter().filter(|(m, _)| old_enough(**m)) {
                let age_min = now_min.saturating_sub(minute);
                let bucket = AGE_BUCKETS_MIN
                    .iter()
                    .position(|b| age_min < *b)
                    .unwrap_or(AGE_BUCKETS_MIN.len());
                let row = rows.entry(d).or_insert_with(|| DomainRow {
                    domain: d.clone(),
                    total: 0,
                    ages: vec![0; AGE_BUCKETS_MIN.len() + 1],
                });
                row.total += n;
                row.ages[bucket] += n;
            }
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
        ("GET", []) => {
            let now = postern_core::now_ms();
            let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
            queue
                .page(filter.after, limit, &|r| filter.matches(r, now))
                .map_or_else(from_queue_error, |(rs, _)| {
                    json(&rs.iter().map(Summary::of).collect::<Vec<_>>())
                })
        }
        ("GET", ["summary"]) => json(&summarize(&queue.shape(), &filter, postern_core::now_ms())),
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

/// Ids listed in a bulk action's answer; the count is always whole.
const BULK_IDS_SHOWN: usize = 1000;

/// Applies `action` to every waiting (ready or deferred) message that
/// matches, a page at a time (memory stays one page, whatever the queue's
/// length); messages that changed state meanwhile are skipped. The answer
/// has the count and the first [`BULK_IDS_SHOWN`] ids.
fn bulk(
    queue: &Queue,
    tracker: &Tracker,
    f: &Filter,
    name: &str,
    action: &dyn Fn(QueueId) -> Result<Record, QueueError>,
) -> Answer {
    let now = postern_core::now_ms();
    let keep = |r: &Record| matches!(r.state, State::Ready | State::Deferred) && f.matches(r, now);
    let mut ids = Vec::new();
    let mut count = 0usize;
    let mut after = None;
    loop {
        let (page, next) = match queue.page(after, DEFAULT_PAGE, &keep) {
            Ok(p) => p,
            Err(e) => return from_queue_error(e),
        };
        for r in &page {
            if let Ok(done) = action(r.envelope.id) {
                tracker.event(
                    name,
                    &tracker.subject(&done.envelope),
                    serde_json::json!({ "by": "admin" }),
                );
                count += 1;
                if ids.len() < BULK_IDS_SHOWN {
                    ids.push(done.envelope.id.to_string());
                }
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    (
        200,
        serde_json::json!({ "action": name, "count": count, "ids": ids }).to_string(),
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
        let page = Filter::parse(Some("limit=5&after=0123456789abcdef01234567")).unwrap();
        assert_eq!(page.limit, Some(5));
        assert!(page.after.is_some());
        assert!(Filter::parse(Some("limit=0")).is_err());
        assert!(Filter::parse(Some("limit=many")).is_err());
        assert!(Filter::parse(Some("after=nope")).is_err());
        assert!(Filter::parse(Some("state=&domain="))
            .unwrap()
            .state
            .is_none());
    }
}
