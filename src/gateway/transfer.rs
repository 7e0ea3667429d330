//! Queue hand-over to a peer gateway (`postern queue transfer --to PEER`):
//! what a fleet does with the queue of a node that leaves.
//!
//! Sending side ([`transfer`]): every waiting message (ready, deferred,
//! held; quarantined only when asked), optionally filtered by recipient
//! domain, is first held (the scheduler cannot start it meanwhile), then
//! relayed to the peer over SMTP with its envelope as it stands: the
//! pending recipients, the DSN parameters (RET, ENVID, NOTIFY, ORCPT),
//! BODY and SMTPUTF8, all sent whatever the original client's trust. Its
//! history travels in one header field at the top of the message,
//! [`HEADER`]: the original queue id, arrival time, attempts made, delay
//! notices sent, and whether the original client was trusted. A message
//! leaves this queue only after the peer's 250 for every pending recipient;
//! otherwise it is released again (or stays held, if it was). A process
//! killed mid-transfer loses nothing: the message is still here, held, and
//! the next transfer (which takes held messages) sends it again, so at
//! most the message in flight is duplicated.
//!
//! Receiving side ([`take_history`], called by the intake): the field is
//! honoured only from a client in `fleet.peers`; it is removed from the
//! message in every case (a client outside the fleet cannot forge a
//! history), and a transferred message skips content processing (it was
//! converted at the first gateway) and is queued with its arrival time and
//! attempt count, so `queue.max_age` and the retry schedule continue.
//!
//! [`Transfers`] runs one transfer at a time in the daemon for the admin
//! API (`POST /queue/transfer`, progress at `GET /queue/transfer`); the
//! CLI also runs [`transfer`] itself on a queue directory no daemon holds
//! (a leftover volume).

use crate::ops::metrics::Metrics;
use crate::ops::tracking::Tracker;
use futures_util::StreamExt;
use postern_core::{Envelope, Outcome, QueueId};
use postern_delivery::{Deliverer, Resolver};
use postern_queue::{Queue, Record, State};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The header field that carries a transferred message's history.
pub const HEADER: &str = "X-Postern-Transfer";

/// A message's history as the field carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The queue id at the first gateway.
    pub id: String,
    /// When the first gateway accepted it (ms since the epoch).
    pub received_ms: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Delay notices already sent (thresholds passed).
    pub delayed: u32,
    /// The original client was trusted (success DSNs, whole returns).
    pub trusted: bool,
    /// It was held (by an operator or a policy) or quarantined: the peer
    /// keeps it held, never delivers it unreviewed.
    pub held: bool,
    /// The gateway it came from.
    pub from: String,
}

impl History {
    /// The header line (with CRLF).
    pub fn line(&self) -> String {
        format!(
            "{HEADER}: v=1; from={}; id={}; received={}; attempts={}; delayed={}; trusted={}; held={}\r\n",
            self.from,
            self.id,
            self.received_ms,
            self.attempts,
            self.delayed,
            u8::from(self.trusted),
            u8::from(self.held)
        )
    }

    /// Parses the field's value; `None` when it is not version 1 or a
    /// value is missing or malformed.
    pub fn parse(value: &str) -> Option<History> {
        let mut h = History {
            id: String::new(),
            received_ms: 0,
            attempts: 0,
            delayed: 0,
            trusted: false,
            held: false,
            from: String::new(),
        };
        let mut version = false;
        for kv in value.split(';') {
            let (k, v) = kv.trim().split_once('=')?;
            let v = v.trim();
            match k.trim() {
                "v" => version = v == "1",
                "from" => h.from = v.to_string(),
                "id" => h.id = v.to_string(),
                "received" => h.received_ms = v.parse().ok()?,
                "attempts" => h.attempts = v.parse().ok()?,
                "delayed" => h.delayed = v.parse().ok()?,
                "trusted" => h.trusted = v == "1",
                "held" => h.held = v == "1",
                _ => {}
            }
        }
        (version && h.received_ms > 0).then_some(h)
    }
}

/// Removes the history field if `body[at..]` starts with it (right after
/// the trace fields this gateway added) and returns it parsed (`None` when
/// absent or unreadable; the field is removed either way).
pub fn take_history(body: &mut Vec<u8>, at: usize) -> Option<Option<History>> {
    let rest = body.get(at..)?;
    let name = HEADER.as_bytes();
    if rest.len() <= name.len()
        || !rest[..name.len()].eq_ignore_ascii_case(name)
        || rest[name.len()] != b':'
    {
        return None;
    }
    // The field with its folded continuation lines (to the end of the
    // message if no line end follows).
    let mut end = 0;
    loop {
        match memchr_crlf(&rest[end..]) {
            Some(line_end) => end += line_end + 2,
            None => {
                end = rest.len();
                break;
            }
        }
        if !matches!(rest.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    let value =
        String::from_utf8_lossy(rest.get(name.len() + 1..end).unwrap_or(&[])).replace("\r\n", "");
    body.drain(at..at + end);
    Some(History::parse(&value))
}

fn memchr_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// State-tree prefix marking messages a transfer held (they were waiting):
/// an interrupted transfer's holds are released at the next start.
const HELD_BY_TRANSFER: &str = "transfer/";

/// Releases the messages an interrupted transfer had held (the process
/// died mid-transfer): they wait again. Returns how many.
pub fn release_interrupted(queue: &Queue) -> usize {
    let mut n = 0;
    for key in queue.state_keys(HELD_BY_TRANSFER).unwrap_or_default() {
        if let Some(id) = key.strip_prefix(HELD_BY_TRANSFER).and_then(QueueId::parse) {
            if queue.release(id).is_ok() {
                n += 1;
            }
        }
        let _ = queue.state_remove(&key);
    }
    n
}

fn held_key(id: QueueId) -> String {
    format!("{HELD_BY_TRANSFER}{id}")
}

/// What to transfer and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The peer, `host[:port]`.
    pub to: String,
    /// Only messages with a pending recipient in this domain.
    pub domain: Option<String>,
    /// Only this state (ready, deferred, held, quarantine).
    pub state: Option<String>,
    /// Quarantined messages too.
    pub quarantine: bool,
    /// Messages relayed at once.
    pub concurrency: usize,
}

/// How a transfer goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// The peer.
    pub to: String,
    /// Still running.
    pub running: bool,
    /// Messages found to transfer.
    pub found: usize,
    /// Offered to the peer.
    pub sent: usize,
    /// Accepted by the peer and removed here.
    pub accepted: usize,
    /// Not accepted; still here.
    pub failed: usize,
    /// The last failures (at most 10).
    pub errors: Vec<String>,
    /// Wall time so far, ms.
    pub elapsed_ms: u64,
}

/// The states a transfer takes.
fn wanted(r: &Record, req: &Request) -> bool {
    let state_ok = match req.state.as_deref() {
        Some(s) => r.state.name() == s,
        None => {
            matches!(r.state, State::Ready | State::Deferred | State::Held)
                || (req.quarantine && r.state == State::Quarantine)
        }
    };
    let domain_ok = req.domain.as_deref().is_none_or(|d| {
        r.envelope
            .pending()
            .any(|(_, rc)| rc.address.domain.eq_ignore_ascii_case(d))
    });
    state_ok && domain_ok && r.state != State::Leased
}

/// Relays every message `req` selects to the peer through `deliverer`
/// (whose only route is the peer); `hostname` names us in the history;
/// `report` hears the progress after each message. Messages being delivered
/// while the transfer runs are taken on a later pass once they settle
/// (five passes at most).
pub async fn transfer<R: Resolver>(
    queue: &Queue,
    deliverer: &Deliverer<R>,
    req: &Request,
    hostname: &str,
    tracker: Option<&Tracker>,
    metrics: Option<&Metrics>,
    report: &(dyn Fn(&Progress) + Sync),
) -> Progress {
    let started = std::time::Instant::now();
    let progress = Mutex::new(Progress {
        to: req.to.clone(),
        running: true,
        ..Progress::default()
    });
    let mut tried: std::collections::HashSet<QueueId> = std::collections::HashSet::new();
    // Messages being delivered now are taken once they settle: passes go
    // on while some are, for at most two minutes.
    let deadline = started + std::time::Duration::from_secs(120);
    loop {
        let ids: Vec<QueueId> = match queue.page(None, usize::MAX, &|r| wanted(r, req)) {
            Ok((page, _)) => page
                .into_iter()
                .map(|r| r.envelope.id)
                .filter(|id| !tried.contains(id))
                .collect(),
            Err(e) => {
                lock(&progress)
                    .errors
                    .push(format!("listing the queue: {e}"));
                break;
            }
        };
        if ids.is_empty() {
            if queue.counts().leased == 0 || std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        lock(&progress).found += ids.len();
        tried.extend(ids.iter().copied());
        futures_util::stream::iter(ids)
            .for_each_concurrent(req.concurrency.max(1), |id| {
                let progress = &progress;
                async move {
                    let result = one(queue, deliverer, id, hostname, tracker, metrics).await;
                    let snapshot = {
                        let mut p = lock(progress);
                        match result {
                            Some(Ok(())) => {
                                p.sent += 1;
                                p.accepted += 1;
                            }
                            Some(Err(why)) => {
                                p.sent += 1;
                                p.failed += 1;
                                if p.errors.len() >= 10 {
                                    p.errors.remove(0);
                                }
                                p.errors.push(format!("{id}: {why}"));
                            }
                            // Gone or being delivered meanwhile.
                            None => {}
                        }
                        p.elapsed_ms = started.elapsed().as_millis() as u64;
                        p.clone()
                    };
                    report(&snapshot);
                }
            })
            .await;
    }
    let mut p = lock(&progress).clone();
    p.running = false;
    p.elapsed_ms = started.elapsed().as_millis() as u64;
    report(&p);
    p
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Transfers one message: `None` when it could not be taken (gone, or
/// being delivered), `Some(Err)` when the peer did not take it (it stays).
async fn one<R: Resolver>(
    queue: &Queue,
    deliverer: &Deliverer<R>,
    id: QueueId,
    hostname: &str,
    tracker: Option<&Tracker>,
    metrics: Option<&Metrics>,
) -> Option<Result<(), String>> {
    let rec = queue.get(id).ok()?;
    let by_transfer = queue.state_get(&held_key(id)).ok().flatten().is_some();
    // Held by an earlier, interrupted transfer: it was waiting.
    let was = if by_transfer {
        State::Deferred
    } else {
        rec.state
    };
    match rec.state {
        State::Ready | State::Deferred => {
            queue.state_put(&held_key(id), b"").ok()?;
            if queue.hold(id).is_err() {
                let _ = queue.state_remove(&held_key(id));
                return None;
            }
        }
        State::Held | State::Quarantine => {}
        State::Leased => return None,
    }
    let restore = |queue: &Queue| {
        if matches!(was, State::Ready | State::Deferred) {
            let _ = queue.release(id);
        }
        let _ = queue.state_remove(&held_key(id));
    };
    let body = match queue.body(id) {
        Ok(b) => b,
        Err(e) => {
            restore(queue);
            return Some(Err(format!("reading the body: {e}")));
        }
    };
    let env = &rec.envelope;
    let history = History {
        id: id.to_string(),
        received_ms: env.received_ms,
        attempts: rec.attempts,
        delayed: crate::gateway::delay::notices_sent(queue, id),
        trusted: env.trusted,
        held: matches!(was, State::Held | State::Quarantine),
        from: hostname.to_string(),
    };
    let mut text = history.line().into_bytes();
    text.extend_from_slice(&body);
    // The peer is trusted with every parameter, whoever the sender was.
    let sending = Envelope {
        trusted: true,
        ..env.clone()
    };
    if let Some(m) = metrics {
        m.process.transfers.with_label_values(&["sent"]).inc();
    }
    let outcomes = deliverer.deliver(&sending, &text, &|_| ()).await;
    let refused: Vec<String> = outcomes
        .iter()
        .filter(|(_, o, _)| !matches!(o, Outcome::Delivered(_) | Outcome::Relayed(_)))
        .map(|(_, o, _)| o.reason().to_string())
        .collect();
    let reply = outcomes
        .first()
        .map(|(_, o, _)| o.reason().to_string())
        .unwrap_or_default();
    if !refused.is_empty() || outcomes.is_empty() {
        // Recipients the peer took are done here (one transaction per
        // domain: some may have gone): never sent twice.
        let taken: Vec<(usize, postern_core::Reason)> = outcomes
            .iter()
            .filter_map(|(i, o, _)| match o {
                Outcome::Delivered(r) | Outcome::Relayed(r) => Some((*i, r.clone())),
                _ => None,
            })
            .collect();
        if !taken.is_empty() {
            let _ = queue.update(id, &|r| {
                for (i, reason) in &taken {
                    if let Some(rc) = r.envelope.recipients.get_mut(*i) {
                        rc.status = postern_core::RecipientStatus::Delivered(reason.clone());
                    }
                }
                Ok(())
            });
        }
        restore(queue);
        if let Some(m) = metrics {
            m.process.transfers.with_label_values(&["failed"]).inc();
        }
        let why = refused
            .first()
            .cloned()
            .unwrap_or_else(|| "no recipient pending".into());
        tracing::warn!(%id, reason = %why, "transfer refused; the message stays");
        return Some(Err(why));
    }
    // Durably gone before the next one goes (one group commit shared by
    // the transfers in flight): a kill now duplicates at most those.
    let removed = match queue.remove(id) {
        Ok(()) => queue.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::error!(%id, error = %e, "transferred, but cannot remove it here: it may be sent twice");
    }
    crate::gateway::delay::forget(queue, id);
    let _ = queue.state_remove(&held_key(id));
    if let Some(m) = metrics {
        m.process.transfers.with_label_values(&["accepted"]).inc();
    }
    if let Some(t) = tracker {
        t.event(
            "transferred",
            &t.subject(env),
            serde_json::json!({ "hop": env_hop(&outcomes), "reply": reply }),
        );
    }
    Some(Ok(()))
}

fn env_hop(outcomes: &[(usize, Outcome, Option<postern_delivery::TlsNote>)]) -> Option<String> {
    outcomes
        .first()
        .and_then(|(_, o, _)| o.reason().remote.clone())
}

/// Builds a deliverer whose only route is the peer given.
pub type MakePeer =
    Box<dyn Fn(&str) -> anyhow::Result<Deliverer<crate::gateway::scheduler::Dns>> + Send + Sync>;

/// The daemon's one transfer at a time, for the admin API.
pub struct Transfers {
    queue: Queue,
    tracker: Arc<Tracker>,
    metrics: Arc<Metrics>,
    /// Builds the deliverer to a peer.
    make: MakePeer,
    hostname: String,
    state: Arc<Mutex<Option<Progress>>>,
}

impl Transfers {
    /// The transfer manager; `make` builds a deliverer whose only route is
    /// the peer given.
    pub fn new(
        queue: Queue,
        tracker: Arc<Tracker>,
        metrics: Arc<Metrics>,
        hostname: String,
        make: MakePeer,
    ) -> Transfers {
        Transfers {
            queue,
            tracker,
            metrics,
            make,
            hostname,
            state: Arc::new(Mutex::new(None)),
        }
    }

    /// `POST /queue/transfer?to=HOST:PORT[&domain=D][&state=S][&quarantine=1]`
    /// starts one (409 while one runs); `GET` says how the last goes.
    pub fn api(self: &Arc<Self>, method: &str, query: Option<&str>) -> (u16, String) {
        let err = |code: u16, e: String| (code, serde_json::json!({ "error": e }).to_string());
        match method {
            "GET" => match &*lock(&self.state) {
                Some(p) => (200, serde_json::to_string(p).unwrap_or_default()),
                None => err(404, "no transfer has run".into()),
            },
            "POST" => {
                let q: std::collections::HashMap<String, String> = query
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| {
                        Some((k.to_string(), crate::ops::queue_api::percent_decode(v)?))
                    })
                    .collect();
                let Some(to) = q.get("to").cloned().filter(|t| !t.is_empty()) else {
                    return err(400, "to=HOST[:PORT] is required".into());
                };
                let deliverer = match (self.make)(&to) {
                    Ok(d) => d,
                    Err(e) => return err(400, format!("{e:#}")),
                };
                let req = Request {
                    to: to.clone(),
                    domain: q.get("domain").cloned(),
                    state: q.get("state").cloned(),
                    quarantine: q.get("quarantine").is_some_and(|v| v == "1" || v == "true"),
                    concurrency: q
                        .get("concurrency")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(8),
                };
                {
                    // Checked and claimed under one lock: one at a time.
                    let mut state = lock(&self.state);
                    if state.as_ref().is_some_and(|p| p.running) {
                        return err(409, "a transfer is already running".into());
                    }
                    *state = Some(Progress {
                        to,
                        running: true,
                        ..Progress::default()
                    });
                }
                let me = self.clone();
                tokio::spawn(async move {
                    let state = me.state.clone();
                    let report = move |p: &Progress| *lock(&state) = Some(p.clone());
                    let done = transfer(
                        &me.queue,
                        &deliverer,
                        &req,
                        &me.hostname,
                        Some(&me.tracker),
                        Some(&me.metrics),
                        &report,
                    )
                    .await;
                    tracing::info!(to = %done.to, accepted = done.accepted, failed = done.failed,
                        "queue transfer finished");
                });
                (202, serde_json::json!({ "started": true }).to_string())
            }
            _ => err(405, "GET or POST".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_round_trips_and_only_its_own_field_is_taken() {
        let h = History {
            id: "01abc".into(),
            received_ms: 1_764_000_000_000,
            attempts: 3,
            delayed: 1,
            trusted: false,
            held: true,
            from: "gw-a.test".into(),
        };
        let line = h.line();
        let value = line.split_once(": ").unwrap().1.trim_end();
        assert_eq!(History::parse(value), Some(h.clone()));
        let trace = b"Received: from x by y; date\r\n".to_vec();
        let mut body = trace.clone();
        body.extend_from_slice(line.as_bytes());
        body.extend_from_slice(b"Subject: s\r\n\r\nbody\r\n");
        assert_eq!(take_history(&mut body, trace.len()), Some(Some(h)));
        assert_eq!(
            body,
            [trace.clone(), b"Subject: s\r\n\r\nbody\r\n".to_vec()].concat()
        );
        // Not at the top: left alone.
        assert_eq!(take_history(&mut body, trace.len()), None);
        // Malformed: removed, not honoured.
        let mut bad = [
            trace.clone(),
            format!("{HEADER}: v=2; received=x\r\n\tmore\r\nS: 1\r\n").into_bytes(),
        ]
        .concat();
        assert_eq!(take_history(&mut bad, trace.len()), Some(None));
        assert_eq!(bad, [trace.clone(), b"S: 1\r\n".to_vec()].concat());
        // A field without a line end (the whole message) is removed too.
        let mut bare = [trace.clone(), format!("{HEADER}: v=1").into_bytes()].concat();
        assert_eq!(take_history(&mut bare, trace.len()), Some(None));
        assert_eq!(bare, trace);
    }
}
