//! What SMTP replies mean: reply classification, pure.
//!
//! [`classify`] turns one [`Reply`] into an [`Outcome`]: 2xx and 3xx
//! delivered, 4xx temporary (code and enhanced status kept in the 4 class),
//! 5xx permanent; the enhanced status code (RFC 3463) is split off the text
//! ([`split_status`]) or derived from the reply code. [`settle`] applies it
//! to a whole transaction's replies: a refused MAIL answers for every
//! recipient, each RCPT reply for its recipient, and DATA (or the reply to
//! the end of data, [`Pending::finish`]) for every recipient still standing;
//! it also says how to leave the connection ([`Cleanup`]). Failures that are
//! not replies (a timeout, a broken or refused connection, a refused EHLO)
//! become temporary reasons here too ([`timed_out`], [`broken`],
//! [`connect_failed`], [`ehlo_refused`], [`over_long`]).

use super::plan::Plan;
use postern_core::{Outcome, Reason};
use std::net::SocketAddr;

/// One SMTP reply as the shell read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The three-digit reply code.
    pub(crate) code: u16,
    /// The text of its lines joined with spaces (for a negative reply,
    /// lettre keeps only the first of an enhanced status code repeated on
    /// continuation lines).
    pub(crate) text: String,
}

impl Reply {
    /// 2xx or 3xx: the command was accepted.
    pub(crate) fn is_positive(&self) -> bool {
        self.code < 400
    }
}

/// Splits a leading enhanced status code off reply text, or derives one
/// from the reply code (`x.0.0`).
pub(crate) fn split_status(text: &str, code: u16) -> (String, String) {
    // `first` is cut off the front of `text` below: no leading whitespace.
    let text = text.trim_start();
    let first = text.split_whitespace().next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    let looks_like = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if looks_like {
        (first.to_string(), text[first.len()..].trim().to_string())
    } else {
        (format!("{}.0.0", code / 100), text.trim().to_string())
    }
}

/// A reason with `code`, the enhanced status and text from `text`, from
/// `host`.
fn reason_as(code: u16, text: &str, host: &str) -> Reason {
    let (status, text) = split_status(text, code);
    Reason {
        code,
        status,
        text,
        remote: Some(host.to_string()),
    }
}

/// The reply as a reason, as the server gave it.
pub(crate) fn reason(reply: &Reply, host: &str) -> Reason {
    reason_as(reply.code, &reply.text, host)
}

/// What one reply means for the recipients it answers.
pub(crate) fn classify(reply: &Reply, host: &str) -> Outcome {
    if reply.is_positive() {
        // Only the reply to the end of data gets here positive; it is
        // recorded as 250 whatever its code.
        return Outcome::Delivered(reason_as(250, &reply.text, host));
    }
    let r = reason(reply, host);
    if reply.code >= 500 {
        return Outcome::Permanent(r);
    }
    Outcome::Temporary(Reason {
        code: if (400..500).contains(&r.code) {
            r.code
        } else {
            451
        },
        status: if r.status.starts_with('4') {
            r.status
        } else {
            "4.4.2".into()
        },
        ..r
    })
}

/// A connection that broke (or a reply that could not be parsed): `cause`
/// is the error text.
pub(crate) fn broken(cause: &str, host: &str) -> Reason {
    reason_as(451, cause, host)
}

/// No reply within the timeout; `what` names the reply waited for.
pub(crate) fn timed_out(what: &str, host: &str) -> Reason {
    Reason {
        code: 451,
        status: "4.4.2".into(),
        text: format!("timeout waiting for {what}"),
        remote: Some(host.to_string()),
    }
}

/// No connection (or no greeting): try the next address.
pub(crate) fn connect_failed(host: &str, addr: SocketAddr, cause: &str) -> Reason {
    Reason {
        code: 451,
        status: "4.4.1".into(),
        text: format!("cannot connect to {addr}: {cause}"),
        remote: Some(host.to_string()),
    }
}

/// EHLO refused or unanswered (`r` says how): a temporary 4.4.0, whatever
/// the server's code.
pub(crate) fn ehlo_refused(r: Reason) -> Reason {
    Reason {
        code: 451,
        status: "4.4.0".into(),
        ..r
    }
}

/// The next hop sent more for a reply than `delivery.max_reply_size`
/// allows (an endless line, say): the connection is dropped and the
/// message deferred.
pub(crate) fn over_long(host: &str) -> Reason {
    Reason {
        code: 451,
        status: "4.5.0".into(),
        text: "next hop sent an over-long reply".into(),
        remote: Some(host.to_string()),
    }
}

/// How to leave the connection when a transaction ends without a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cleanup {
    /// Nothing to do.
    Nothing,
    /// The server said 354 to a pipelined DATA although nobody is left to
    /// deliver to: end its data with an empty message.
    EmptyMessage,
    /// MAIL was accepted and no DATA followed: the transaction is still open
    /// on the server (the next one would be "nested"), so RSET; a failed
    /// RSET keeps the connection out of the pool.
    Reset,
}

/// What the replies to MAIL, RCPT and DATA leave the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// The transaction is over.
    Done {
        /// One outcome per recipient, in order.
        outcomes: Vec<Outcome>,
        /// How to leave the connection.
        cleanup: Cleanup,
        /// Recipients were accepted: it counts as a use of the connection.
        completed: bool,
    },
    /// DATA was accepted for at least one recipient: send the body, then
    /// [`Pending::finish`] with the reply to the end of data.
    SendBody(Pending),
}

/// The recipients' verdicts so far, waiting for the reply to the end of
/// data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Per recipient: its refusal, or `None` when its RCPT was accepted.
    rcpts: Vec<Option<Outcome>>,
    /// Per recipient: an acceptance is reported as relayed (see [`Plan`]).
    relayed: Vec<bool>,
}

impl Pending {
    /// Settles every accepted recipient with the reply to the end of data.
    pub(crate) fn finish(self, last: &Reply, host: &str) -> Vec<Outcome> {
        self.finish_with(&classify(last, host))
    }

    fn finish_with(self, last: &Outcome) -> Vec<Outcome> {
        self.rcpts
            .into_iter()
            .zip(self.relayed)
            .map(|(o, relayed)| {
                o.unwrap_or_else(|| match last {
                    Outcome::Delivered(r) if relayed => Outcome::Relayed(r.clone()),
                    other => other.clone(),
                })
            })
            .collect()
    }
}

/// Settles the replies to MAIL, RCPT... and DATA, in order (fewer when the
/// plan stopped early), for the recipients of `plan`.
pub(crate) fn settle(plan: &Plan, replies: &[Reply], host: &str) -> Next {
    let n = plan.relayed.len();
    let data = replies.get(n + 1);
    let data_ok = data.is_some_and(Reply::is_positive);
    if let Some(mail) = replies.first().filter(|r| !r.is_positive()) {
        return Next::Done {
            outcomes: vec![classify(mail, host); n],
            cleanup: if data_ok {
                Cleanup::EmptyMessage
            } else {
                Cleanup::Nothing
            },
            completed: false,
        };
    }
    let rcpts: Vec<Option<Outcome>> = (0..n)
        .map(|i| {
            let refused = replies.get(i + 1).filter(|r| !r.is_positive());
            refused.map(|r| classify(r, host))
        })
        .collect();
    if rcpts.iter().all(Option::is_some) {
        return Next::Done {
            outcomes: rcpts.into_iter().flatten().collect(),
            cleanup: if data_ok {
                Cleanup::EmptyMessage
            } else {
                Cleanup::Reset
            },
            completed: false,
        };
    }
    let pending = Pending {
        rcpts,
        relayed: plan.relayed.clone(),
    };
    let last = match data {
        Some(r) if r.is_positive() => return Next::SendBody(pending),
        Some(r) => classify(r, host),
        None => Outcome::Temporary(Reason::local(451, "4.4.2", "no reply to DATA")),
    };
    Next::Done {
        outcomes: pending.finish_with(&last),
        cleanup: Cleanup::Nothing,
        completed: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::Outcome::{Delivered, Permanent, Relayed, Temporary};

    const HOST: &str = "mx.test";

    fn r(code: u16, text: &str) -> Reply {
        Reply {
            code,
            text: text.to_string(),
        }
    }

    fn remote(code: u16, status: &str, text: &str) -> Reason {
        Reason {
            code,
            status: status.to_string(),
            text: text.to_string(),
            remote: Some(HOST.to_string()),
        }
    }

    /// A plan for as many recipients as `relayed` has flags.
    fn plan(relayed: &[bool]) -> Plan {
        let mut lines = vec!["MAIL FROM:<s@a.test>".to_string()];
        lines.extend(relayed.iter().map(|_| "RCPT TO:<t@b.test>".to_string()));
        lines.push("DATA".to_string());
        Plan {
            lines,
            pipelining: true,
            relayed: relayed.to_vec(),
        }
    }

    #[test]
    fn status_split() {
        assert_eq!(
            split_status("5.1.1 no such user", 550),
            ("5.1.1".to_string(), "no such user".to_string())
        );
        assert_eq!(
            split_status("mailbox full", 452),
            ("4.0.0".to_string(), "mailbox full".to_string())
        );
        assert_eq!(split_status("", 421).0, "4.0.0");
        // Leading whitespace from a remote server, ASCII or not.
        assert_eq!(
            split_status("  5.1.1 no user", 550),
            ("5.1.1".to_string(), "no user".to_string())
        );
        assert_eq!(split_status("\u{3000}\u{3000}5.1.1 x", 550).1, "x");
    }

    #[test]
    fn classify_replies() {
        let cases = [
            // 2xx: delivered, recorded as 250.
            (
                250,
                "2.0.0 ok: queued as 1",
                Delivered(remote(250, "2.0.0", "ok: queued as 1")),
            ),
            (250, "queued", Delivered(remote(250, "2.0.0", "queued"))),
            (
                251,
                "2.1.5 will forward",
                Delivered(remote(250, "2.1.5", "will forward")),
            ),
            // Multi-line text arrives joined: a code counts only at the start.
            (
                250,
                "first line 2.0.0 second line",
                Delivered(remote(250, "2.0.0", "first line 2.0.0 second line")),
            ),
            // 5xx: permanent.
            (
                550,
                "5.1.1 no such user",
                Permanent(remote(550, "5.1.1", "no such user")),
            ),
            (
                554,
                "transaction failed",
                Permanent(remote(554, "5.0.0", "transaction failed")),
            ),
            (
                550,
                "   5.7.1  leading and inner spaces  ",
                Permanent(remote(550, "5.7.1", "leading and inner spaces")),
            ),
            (
                550,
                "\u{3000}5.7.1 ideographic space",
                Permanent(remote(550, "5.7.1", "ideographic space")),
            ),
            (550, "5.1.1", Permanent(remote(550, "5.1.1", ""))),
            (550, "", Permanent(remote(550, "5.0.0", ""))),
            (
                550,
                "5.1.1\tno\tsuch user",
                Permanent(remote(550, "5.1.1", "no\tsuch user")),
            ),
            // Not enhanced codes: derived from the reply code, text kept.
            (
                550,
                "5.1 two parts",
                Permanent(remote(550, "5.0.0", "5.1 two parts")),
            ),
            (
                550,
                "5.1234.1 part too long",
                Permanent(remote(550, "5.0.0", "5.1234.1 part too long")),
            ),
            (
                550,
                "3.1.1 bad class",
                Permanent(remote(550, "5.0.0", "3.1.1 bad class")),
            ),
            (
                550,
                "5.a.1 letters",
                Permanent(remote(550, "5.0.0", "5.a.1 letters")),
            ),
            (
                550,
                "5..1 empty part",
                Permanent(remote(550, "5.0.0", "5..1 empty part")),
            ),
            // The class is not checked against the reply code.
            (
                550,
                "2.0.0 class not checked",
                Permanent(remote(550, "2.0.0", "class not checked")),
            ),
            // 4xx: temporary, with the enhanced status kept in the 4 class.
            (
                452,
                "4.2.2 mailbox full",
                Temporary(remote(452, "4.2.2", "mailbox full")),
            ),
            (
                421,
                "service closing",
                Temporary(remote(421, "4.0.0", "service closing")),
            ),
            (
                452,
                "5.2.2 wrong class",
                Temporary(remote(452, "4.4.2", "wrong class")),
            ),
            (450, "", Temporary(remote(450, "4.0.0", ""))),
            (
                451,
                "\u{dc}n\u{ef}code 4.3.0 text",
                Temporary(remote(451, "4.0.0", "\u{dc}n\u{ef}code 4.3.0 text")),
            ),
        ];
        for (code, text, want) in cases {
            assert_eq!(classify(&r(code, text), HOST), want, "{code} {text:?}");
        }
    }

    #[test]
    fn failures_that_are_not_replies() {
        assert_eq!(
            broken("connection reset", HOST),
            remote(451, "4.0.0", "connection reset")
        );
        assert_eq!(
            timed_out("reply", HOST),
            remote(451, "4.4.2", "timeout waiting for reply")
        );
        assert_eq!(
            connect_failed(HOST, "127.0.0.1:25".parse().unwrap(), "refused"),
            remote(451, "4.4.1", "cannot connect to 127.0.0.1:25: refused")
        );
        assert_eq!(
            ehlo_refused(reason(&r(550, "5.7.1 go away"), HOST)),
            remote(451, "4.4.0", "go away")
        );
        assert_eq!(
            over_long(HOST),
            remote(451, "4.5.0", "next hop sent an over-long reply")
        );
    }

    #[test]
    fn settle_without_a_body() {
        let (none, one, two) = (plan(&[]), plan(&[false]), plan(&[false, true]));
        let busy = Temporary(remote(451, "4.3.0", "try later"));
        let gone = Permanent(remote(550, "5.1.1", "no such user"));
        let done = |outcomes: Vec<Outcome>, cleanup: Cleanup, completed: bool| Next::Done {
            outcomes,
            cleanup,
            completed,
        };
        let cases = vec![
            (
                "MAIL refused, pipelined DATA accepted anyway",
                &two,
                vec![
                    r(451, "4.3.0 try later"),
                    r(250, "ok"),
                    r(250, "ok"),
                    r(354, "go"),
                ],
                done(vec![busy.clone(); 2], Cleanup::EmptyMessage, false),
            ),
            (
                "MAIL refused, pipelined DATA refused",
                &one,
                vec![
                    r(451, "4.3.0 try later"),
                    r(503, "5.5.1 no"),
                    r(503, "5.5.1 no"),
                ],
                done(vec![busy.clone()], Cleanup::Nothing, false),
            ),
            (
                "MAIL refused, one at a time",
                &two,
                vec![r(451, "4.3.0 try later")],
                done(vec![busy.clone(); 2], Cleanup::Nothing, false),
            ),
            (
                "every RCPT refused, DATA refused",
                &one,
                vec![
                    r(250, "ok"),
                    r(550, "5.1.1 no such user"),
                    r(554, "5.5.1 no rcpt"),
                ],
                done(vec![gone.clone()], Cleanup::Reset, false),
            ),
            (
                "every RCPT refused, DATA accepted anyway",
                &one,
                vec![r(250, "ok"), r(550, "5.1.1 no such user"), r(354, "go")],
                done(vec![gone.clone()], Cleanup::EmptyMessage, false),
            ),
            (
                "every RCPT refused, one at a time (no DATA sent)",
                &one,
                vec![r(250, "ok"), r(550, "5.1.1 no such user")],
                done(vec![gone.clone()], Cleanup::Reset, false),
            ),
            (
                "no recipients",
                &none,
                vec![r(250, "ok")],
                done(vec![], Cleanup::Reset, false),
            ),
            (
                "DATA refused after an accepted RCPT",
                &two,
                vec![
                    r(250, "ok"),
                    r(250, "ok"),
                    r(550, "5.1.1 no such user"),
                    r(452, "4.3.1 insufficient storage"),
                ],
                done(
                    vec![
                        Temporary(remote(452, "4.3.1", "insufficient storage")),
                        gone.clone(),
                    ],
                    Cleanup::Nothing,
                    true,
                ),
            ),
            (
                "no reply to DATA",
                &one,
                vec![r(250, "ok"), r(250, "ok")],
                done(
                    vec![Temporary(Reason::local(451, "4.4.2", "no reply to DATA"))],
                    Cleanup::Nothing,
                    true,
                ),
            ),
        ];
        for (name, p, replies, want) in cases {
            assert_eq!(settle(p, &replies, HOST), want, "{name}");
        }
    }

    #[test]
    fn settle_with_a_body() {
        let two = plan(&[false, true]);
        let replies = [r(250, "ok"), r(250, "ok"), r(250, "ok"), r(354, "go ahead")];
        let pending = match settle(&two, &replies, HOST) {
            Next::SendBody(p) => p,
            other => panic!("DATA was accepted: {other:?}"),
        };
        let queued = remote(250, "2.0.0", "queued as 1");
        assert_eq!(
            pending.clone().finish(&r(250, "2.0.0 queued as 1"), HOST),
            vec![Delivered(queued.clone()), Relayed(queued)]
        );
        let spam = Permanent(remote(554, "5.7.1", "looks like spam"));
        assert_eq!(
            pending.finish(&r(554, "5.7.1 looks like spam"), HOST),
            vec![spam.clone(), spam]
        );

        // A refused recipient keeps its own outcome.
        let replies = [
            r(250, "ok"),
            r(550, "5.1.1 no such user"),
            r(250, "ok"),
            r(354, "go"),
        ];
        let pending = match settle(&two, &replies, HOST) {
            Next::SendBody(p) => p,
            other => panic!("DATA was accepted: {other:?}"),
        };
        assert_eq!(
            pending.finish(&r(451, "4.3.0 try again"), HOST),
            vec![
                Permanent(remote(550, "5.1.1", "no such user")),
                Temporary(remote(451, "4.3.0", "try again")),
            ]
        );
    }
}
