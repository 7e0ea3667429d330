//! Content processing, in a worker process or in the gateway.
//!
//! [`run_content`] is the work itself: the bounded MIME inspection, then for
//! inbound mail SPF/DKIM/DMARC with an Authentication-Results header (within
//! `convert.auth_timeout`: a silent DNS server gives `temperror`, never a
//! worker killed at its deadline), for outbound mail the conversion
//! pipeline (TNEF, hygiene, rewriting, disclaimer, DKIM signing). [`Verdict`] is its answer, with a compact wire
//! form for the worker pipe; requests carry a [`Meta`] before the message.
//! [`ContentProcessor`] is what the gateway calls: a pool of `postern
//! worker` processes (level 2 of the blast-radius ladder: a worker that
//! aborts, overflows its stack, runs out of memory or overruns the deadline
//! is killed and replaced, and only its message is charged), or the same
//! function in-process when `workers.processes = 0`.

use crate::content::conversion::{Conversion, Meta};
use crate::gateway::crash::fault::{self, Stage};
use futures_util::FutureExt;
use postern_convert::{authenticate, Authenticator, Message, Session};
use postern_supervisor::pool::{CallError, ProcessPool};
use std::panic::AssertUnwindSafe;

/// The answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept; `Some` carries a rewritten message.
    Accept(Option<Vec<u8>>),
    /// Accept the rewritten message, with notes for the tracking log (e.g.
    /// why a winmail.dat was kept beside what was extracted from it).
    Noted { body: Vec<u8>, notes: Vec<String> },
    /// Accept, but keep it held for an administrator (with the message).
    Hold { body: Vec<u8>, reason: String },
    /// Refuse with this SMTP reply.
    Reject {
        code: u16,
        status: String,
        text: String,
    },
    /// Processing crashed; the reason names how.
    Crash(String),
}

/// The content work for one message.
pub async fn run_content(
    msg: &Message<'_>,
    meta: &Meta,
    conv: &Conversion,
    auth: Option<&Authenticator>,
) -> Verdict {
    fault::check(Stage::Content, msg.bytes());
    let reject = |e: postern_convert::ContentError| {
        let (code, status, text) = e.reply();
        Verdict::Reject {
            code,
            status: status.to_string(),
            text,
        }
    };
    if meta.outbound {
        // The pipeline inspects the message itself (limits first).
        return match postern_convert::convert_outbound(
            msg,
            &meta.rcpt_domains,
            &conv.outbound,
            meta.now_ms,
            &meta.token,
        ) {
            Ok(out) => {
                let mut notes: Vec<String> = out
                    .tnef_errors
                    .iter()
                    .map(|e| format!("TNEF part left as it was: {e}"))
                    .collect();
                notes.extend(
                    out.tnef_kept
                        .iter()
                        .map(|k| format!("winmail.dat kept beside what was extracted: {k}")),
                );
                // Unchanged content is not sent back over the pipe.
                if !notes.is_empty() {
                    Verdict::Noted {
                        body: out.body,
                        notes,
                    }
                } else if out.body == msg.bytes() {
                    Verdict::Accept(None)
                } else {
                    Verdict::Accept(Some(out.body))
                }
            }
            Err(e) => reject(e),
        };
    }
    if let Err(e) = postern_convert::inspect(msg, &conv.limits) {
        return reject(e);
    }
    let (Some(policy), Some(auth)) = (&conv.inbound, auth) else {
        return Verdict::Accept(None);
    };
    let Ok(ip) = meta.client_ip.parse() else {
        return Verdict::Accept(None);
    };
    let session = Session {
        ip,
        helo: &meta.helo,
        mail_from: &meta.mail_from,
    };
    let r = authenticate(msg, &session, policy, auth).await;
    if r.timed_out {
        // DNS is slow or down: the header says temperror, the mail goes on.
        tracing::warn!(
            client = %meta.client_ip,
            "authentication checks ran out of convert.auth_timeout: temperror"
        );
    }
    if let Some(text) = r.reject {
        return Verdict::Reject {
            code: 550,
            status: "5.7.1".into(),
            text,
        };
    }
    match r.hold {
        Some(reason) => Verdict::Hold {
            body: r.body,
            reason,
        },
        None => Verdict::Accept(Some(r.body)),
    }
}

/// Request wire form: meta length (u32 LE), meta JSON, message. This is the
/// part before the message, which is sent after it as it is.
pub fn request_head(meta: &Meta) -> Vec<u8> {
    let m = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + m.len());
    out.extend_from_slice(&(m.len() as u32).to_le_bytes());
    out.extend_from_slice(&m);
    out
}

/// The whole request (head and message), for tests.
#[cfg(test)]
pub fn encode_request(meta: &Meta, msg: &[u8]) -> Vec<u8> {
    let mut out = request_head(meta);
    out.extend_from_slice(msg);
    out
}

pub fn decode_request(raw: &[u8]) -> Option<(Meta, &[u8])> {
    let len = u32::from_le_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let meta = serde_json::from_slice(raw.get(4..4 + len)?).ok()?;
    Some((meta, raw.get(4 + len..)?))
}

/// Verdict wire form: one tag byte, then the payload.
pub fn encode(v: &Verdict) -> Vec<u8> {
    let tagged = |tag: u8, payload: &[u8]| {
        let mut out = Vec::with_capacity(payload.len() + 1);
        out.push(tag);
        out.extend_from_slice(payload);
        out
    };
    match v {
        Verdict::Accept(None) => vec![0],
        Verdict::Accept(Some(body)) => tagged(1, body),
        Verdict::Reject { code, status, text } => {
            tagged(2, format!("{code} {status} {text}").as_bytes())
        }
        Verdict::Crash(reason) => tagged(3, reason.as_bytes()),
        Verdict::Hold { body, reason } => {
            let mut p = (reason.len() as u32).to_le_bytes().to_vec();
            p.extend_from_slice(reason.as_bytes());
            p.extend_from_slice(body);
            tagged(4, &p)
        }
        Verdict::Noted { body, notes } => {
            let joined = notes.join("\n");
            let mut p = (joined.len() as u32).to_le_bytes().to_vec();
            p.extend_from_slice(joined.as_bytes());
            p.extend_from_slice(body);
            tagged(5, &p)
        }
    }
}

pub fn decode(raw: &[u8]) -> Verdict {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match raw.split_first() {
        Some((0, [])) => Verdict::Accept(None),
        Some((1, body)) => Verdict::Accept(Some(body.to_vec())),
        Some((2, rest)) => {
            let t = text(rest);
            let mut it = t.splitn(3, ' ');
            // Only a refusal code: a worker must never make us say 2xx.
            let code = it
                .next()
                .and_then(|c| c.parse().ok())
                .filter(|c| (400..=599).contains(c))
                .unwrap_or(554);
            let status = it.next().unwrap_or("5.6.0").to_string();
            Verdict::Reject {
                code,
                status,
                text: it.next().unwrap_or("content refused").to_string(),
            }
        }
        Some((3, reason)) => Verdict::Crash(text(reason)),
        Some((4, rest)) if rest.len() >= 4 => {
            let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            match (rest.get(4..4 + n), rest.get(4 + n..)) {
                (Some(r), Some(body)) => Verdict::Hold {
                    body: body.to_vec(),
                    reason: text(r),
                },
                _ => Verdict::Crash("worker answered a malformed hold".into()),
            }
        }
        Some((5, rest)) if rest.len() >= 4 => {
            let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            match (rest.get(4..4 + n), rest.get(4 + n..)) {
                (Some(notes), Some(body)) => Verdict::Noted {
                    body: body.to_vec(),
                    notes: text(notes).lines().map(str::to_string).collect(),
                },
                _ => Verdict::Crash("worker answered malformed notes".into()),
            }
        }
        _ => Verdict::Crash("worker answered an unknown verdict".into()),
    }
}

/// Where content processing runs.
pub enum ContentProcessor {
    InProcess {
        conv: std::sync::Arc<Conversion>,
        auth: Option<Box<Authenticator>>,
    },
    Workers(Box<ProcessPool>),
}

impl ContentProcessor {
    /// Runs the content stage for `msg`. `working()` is called when the
    /// work starts (a worker is free) and its guard is held until the
    /// verdict: waiting for a worker never counts toward a deadline.
    pub async fn process<G>(
        &self,
        msg: &Message<'_>,
        meta: &Meta,
        working: impl FnOnce() -> G,
    ) -> Verdict {
        match self {
            ContentProcessor::InProcess { conv, auth } => {
                let _working = working();
                let run = run_content(msg, meta, conv, auth.as_deref());
                AssertUnwindSafe(run)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|p| {
                        Verdict::Crash(format!("panic: {}", postern_supervisor::panic_message(&*p)))
                    })
            }
            ContentProcessor::Workers(pool) => {
                // A worker that reports a crash exits; never reuse it.
                let keep = |answer: &[u8]| answer.first() != Some(&3);
                let head = request_head(meta);
                match pool
                    .call_working(&[&head, msg.bytes()], keep, working)
                    .await
                {
                    Ok(raw) => decode(&raw),
                    Err(CallError::Deadline(d)) => {
                        Verdict::Crash(format!("deadline {d:?} exceeded"))
                    }
                    Err(e) => Verdict::Crash(e.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        for v in [
            Verdict::Accept(None),
            Verdict::Accept(Some(b"new".to_vec())),
            Verdict::Reject {
                code: 554,
                status: "5.6.0".into(),
                text: "too deep here".into(),
            },
            Verdict::Crash("panic: x".into()),
            Verdict::Hold {
                body: b"held body".to_vec(),
                reason: "DMARC".into(),
            },
            Verdict::Noted {
                body: b"converted".to_vec(),
                notes: vec!["one".into(), "two: x".into()],
            },
        ] {
            assert_eq!(decode(&encode(&v)), v);
        }
        assert!(matches!(decode(&[9]), Verdict::Crash(_)));
        assert!(matches!(decode(&[]), Verdict::Crash(_)));
        assert!(matches!(decode(&[4, 200, 0, 0, 0, 1]), Verdict::Crash(_)));
        let meta = Meta {
            outbound: true,
            token: "t".into(),
            ..Default::default()
        };
        let req = encode_request(&meta, b"body");
        let (m, b) = decode_request(&req).unwrap();
        assert!(m.outbound && b == b"body");
        assert!(decode_request(&[9, 0, 0, 0, 1]).is_none());
    }
}
