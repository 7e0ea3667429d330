//! Content processing, in a worker process or in the gateway.
//!
//! [`run_content`] is the work itself (today: the bounded MIME inspection of
//! `postern_convert`; the conversion core grows here). [`Verdict`] is its
//! answer, with a compact wire form for the worker pipe ([`encode`] /
//! [`decode`]). [`ContentProcessor`] is what the gateway calls: a pool of
//! `postern worker` processes (level 2 of the blast-radius ladder: a worker
//! that aborts, overflows its stack, runs out of memory or overruns the
//! deadline is killed and replaced, and only its message is charged), or the
//! same function in-process when `workers.processes = 0`.

use crate::fault::{self, Stage};
use postern_convert::{inspect, ContentLimits};
use postern_supervisor::pool::{CallError, ProcessPool};

/// The answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept; `Some` carries a rewritten message.
    Accept(Option<Vec<u8>>),
    /// Refuse with this SMTP reply.
    Reject {
        code: u16,
        status: String,
        text: String,
    },
    /// Processing crashed; the reason names how.
    Crash(String),
}

/// The content work: inspect (and later convert) one message.
pub fn run_content(msg: &[u8], limits: &ContentLimits) -> Verdict {
    fault::check(Stage::Content, msg);
    match inspect(msg, limits) {
        Ok(_report) => Verdict::Accept(None),
        Err(e) => {
            let (code, status, text) = e.reply();
            Verdict::Reject {
                code,
                status: status.to_string(),
                text,
            }
        }
    }
}

/// Wire form: one tag byte, then the payload.
pub fn encode(v: &Verdict) -> Vec<u8> {
    match v {
        Verdict::Accept(None) => vec![0],
        Verdict::Accept(Some(body)) => {
            let mut out = Vec::with_capacity(body.len() + 1);
            out.push(1);
            out.extend_from_slice(body);
            out
        }
        Verdict::Reject { code, status, text } => {
            let mut out = vec![2];
            out.extend_from_slice(format!("{code} {status} {text}").as_bytes());
            out
        }
        Verdict::Crash(reason) => {
            let mut out = vec![3];
            out.extend_from_slice(reason.as_bytes());
            out
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
            let code = it.next().and_then(|c| c.parse().ok()).unwrap_or(554);
            let status = it.next().unwrap_or("5.6.0").to_string();
            Verdict::Reject {
                code,
                status,
                text: it.next().unwrap_or("content refused").to_string(),
            }
        }
        Some((3, reason)) => Verdict::Crash(text(reason)),
        _ => Verdict::Crash("worker answered an unknown verdict".into()),
    }
}

/// Where content processing runs.
pub enum ContentProcessor {
    InProcess(ContentLimits),
    Workers(Box<ProcessPool>),
}

impl ContentProcessor {
    pub async fn process(&self, msg: &[u8]) -> Verdict {
        match self {
            ContentProcessor::InProcess(limits) => {
                let r = std::panic::catch_unwind(|| run_content(msg, limits));
                r.unwrap_or_else(|p| {
                    Verdict::Crash(format!("panic: {}", postern_supervisor::panic_message(&*p)))
                })
            }
            ContentProcessor::Workers(pool) => match pool.call(msg).await {
                Ok(raw) => decode(&raw),
                Err(CallError::Deadline(d)) => Verdict::Crash(format!("deadline {d:?} exceeded")),
                Err(e) => Verdict::Crash(e.to_string()),
            },
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
        ] {
            assert_eq!(decode(&encode(&v)), v);
        }
        assert!(matches!(decode(&[9]), Verdict::Crash(_)));
        assert!(matches!(decode(&[]), Verdict::Crash(_)));
    }
}
