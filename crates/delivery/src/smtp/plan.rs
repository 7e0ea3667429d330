//! The SMTP transaction plan: what to send to one hop, decided from what the
//! hop offers and what the message needs, before a byte is written.
//!
//! - [`Extensions`]: what the hop offers, parsed from its EHLO reply.
//! - [`body_form`]: whether the message goes as it is, must be converted to
//!   7 bit first (RFC 6152; also for UTF-8 header text, RFC 6532, to a hop
//!   without SMTPUTF8), or cannot go at all: an internationalised envelope
//!   cannot be downgraded (553 5.6.7, RFC 6531 3.2). A failed conversion is
//!   554 5.6.3 ([`downgrade_failed`]).
//! - [`Plan::new`]: the commands (MAIL FROM with BODY=8BITMIME, SMTPUTF8,
//!   SIZE= and the DSN parameters as the hop allows; one RCPT TO per
//!   recipient, with its DSN parameters when the hop offers DSN; DATA),
//!   whether to pipeline them (RFC 2920), and which recipients are owed a
//!   "relayed" DSN; [`Plan::next_lockstep`] says what to send next without
//!   PIPELINING.
//! - [`mail_dsn_params`], [`rcpt_dsn_params`]: the RFC 3461 parameters;
//!   [`notify_success`] reads NOTIFY as the keyword list it is (NEVER wins,
//!   and nothing else, ORCPT included, can ask for a success notice).
//!
//! No size limit is enforced here: SIZE= declares the size and the hop
//! decides (a refusal comes back as the reply to MAIL). Pure: no I/O, table
//! tests below.

use super::reply::Reply;
use super::DowngradeError;
use postern_core::{Address, Reason};

/// What the next hop offers, from our own EHLO (lettre's summary omits
/// PIPELINING, SIZE and DSN).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// RFC 2920: all commands may go in one write.
    pub(crate) pipelining: bool,
    /// RFC 6152: 8-bit bodies are accepted.
    pub(crate) eight_bit_mime: bool,
    /// RFC 6531: UTF-8 addresses and header text are accepted.
    pub(crate) smtputf8: bool,
    /// RFC 3207: the connection can be upgraded to TLS.
    pub(crate) starttls: bool,
    /// RFC 3461: NOTIFY, ORCPT, RET and ENVID are accepted.
    pub(crate) dsn: bool,
    /// Declared SIZE limit (RFC 1870), 0 when none; any SIZE makes us
    /// declare the message size.
    pub(crate) size: u64,
}

impl Extensions {
    /// Parses the lines of an EHLO reply (the first line is the greeting).
    pub(crate) fn parse<'a>(lines: impl Iterator<Item = &'a str>) -> Extensions {
        let mut e = Extensions::default();
        for line in lines.skip(1) {
            let mut words = line.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => e.pipelining = true,
                "8BITMIME" => e.eight_bit_mime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "STARTTLS" => e.starttls = true,
                "DSN" => e.dsn = true,
                "SIZE" => e.size = words.next().and_then(|n| n.parse().ok()).unwrap_or(0),
                _ => {}
            }
        }
        e
    }
}

/// The message to send on a connection.
pub(crate) struct Message<'a> {
    /// Reverse path; `None` is the null sender `<>`.
    pub(crate) sender: Option<&'a Address>,
    /// The recipients (of one domain), in the order outcomes come back.
    pub(crate) recipients: &'a [&'a Address],
    /// The message as stored.
    pub(crate) body: &'a [u8],
    /// The client declared BODY=8BITMIME.
    pub(crate) eight_bit: bool,
    /// The client declared SMTPUTF8 (UTF-8 headers may be present).
    pub(crate) smtputf8: bool,
    /// RFC 3461 MAIL parameters (RET, ENVID), sent to hops offering DSN.
    pub(crate) dsn_mail: String,
    /// RFC 3461 RCPT parameters (NOTIFY, ORCPT), one per recipient.
    pub(crate) dsn_rcpt: &'a [String],
    /// Per recipient: NOTIFY asks for a success notice
    /// ([`notify_success`]); missing entries ask for none.
    pub(crate) notify_success: &'a [bool],
}

/// How the message body can go to one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyForm {
    /// As it is; `eight_bit` declares BODY=8BITMIME.
    AsIs {
        /// The body is (or was declared) 8-bit and the hop takes it.
        eight_bit: bool,
    },
    /// Converted to 7 bit first, then sent without BODY=.
    SevenBit,
    /// Not at all: every recipient fails with this permanent reason.
    Refuse(Reason),
}

/// True when the envelope needs SMTPUTF8 (a UTF-8 sender or recipient).
fn utf8_envelope(msg: &Message<'_>) -> bool {
    msg.sender.is_some_and(|a| !a.is_ascii()) || msg.recipients.iter().any(|a| !a.is_ascii())
}

/// Decides the body's form for a hop offering `ext`.
pub(crate) fn body_form(ext: &Extensions, msg: &Message<'_>, host: &str) -> BodyForm {
    if utf8_envelope(msg) && !ext.smtputf8 {
        // RFC 6531 3.2: an internationalised envelope cannot be downgraded.
        return BodyForm::Refuse(Reason {
            code: 553,
            status: "5.6.7".into(),
            text: "message needs SMTPUTF8 and the next hop does not offer it".into(),
            remote: Some(host.to_string()),
        });
    }
    let ascii = msg.body.is_ascii();
    let eight_bit = msg.eight_bit || !ascii;
    // UTF-8 header text (RFC 6532) may only go to an SMTPUTF8 hop; for any
    // other, the conversion encodes it as RFC 2047 words.
    let utf8_headers = msg.smtputf8 && !ext.smtputf8 && !ascii;
    if eight_bit && (!ext.eight_bit_mime || utf8_headers) {
        BodyForm::SevenBit
    } else {
        BodyForm::AsIs { eight_bit }
    }
}

/// The permanent reason for every recipient when the 7-bit conversion a hop
/// needs failed.
pub(crate) fn downgrade_failed(e: &DowngradeError, host: &str) -> Reason {
    Reason {
        code: 554,
        status: "5.6.3".into(),
        text: format!("cannot convert to 7 bit for a hop without 8BITMIME: {e}"),
        remote: Some(host.to_string()),
    }
}

/// The commands of one transaction on one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// MAIL FROM, one RCPT TO per recipient, DATA: one reply each, in order.
    pub(crate) lines: Vec<String>,
    /// Send every line in one write (RFC 2920) rather than one at a time.
    pub(crate) pipelining: bool,
    /// Per recipient: an acceptance is reported as relayed (the hop lacks DSN
    /// and the recipient asked NOTIFY=SUCCESS, RFC 3461 4.2). Its length is
    /// the number of recipients.
    pub(crate) relayed: Vec<bool>,
}

impl Plan {
    /// Plans the commands for a hop offering `ext`, with the body in its
    /// final form: `eight_bit` declares BODY=8BITMIME, `size` is its length.
    pub(crate) fn new(ext: &Extensions, msg: &Message<'_>, eight_bit: bool, size: usize) -> Plan {
        let mut mail = format!(
            "MAIL FROM:<{}>",
            msg.sender.map(|a| a.to_string()).unwrap_or_default()
        );
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if (utf8_envelope(msg) || msg.smtputf8) && ext.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if ext.size > 0 {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if ext.dsn && !msg.dsn_mail.is_empty() {
            mail.push_str(&msg.dsn_mail);
        }
        let mut lines = vec![mail];
        lines.extend(msg.recipients.iter().enumerate().map(|(i, r)| {
            let params = msg
                .dsn_rcpt
                .get(i)
                .filter(|_| ext.dsn)
                .map(|p| p.as_str())
                .unwrap_or("");
            format!("RCPT TO:<{r}>{params}")
        }));
        lines.push("DATA".into());
        let relayed = (0..msg.recipients.len())
            .map(|i| !ext.dsn && msg.notify_success.get(i).copied().unwrap_or(false))
            .collect();
        Plan {
            lines,
            pipelining: ext.pipelining,
            relayed,
        }
    }

    /// Without PIPELINING: the line to send after `replies`, or `None` when
    /// the transaction needs no more. It stops after a refused MAIL, and
    /// sends no DATA when no recipient was accepted.
    pub(crate) fn next_lockstep(&self, replies: &[Reply]) -> Option<&str> {
        let next = self.lines.get(replies.len())?.as_str();
        let mail_refused = replies.first().is_some_and(|r| !r.is_positive());
        let is_data = replies.len() + 1 == self.lines.len();
        let none_accepted = !replies.iter().skip(1).any(Reply::is_positive);
        if mail_refused || (is_data && none_accepted) {
            None
        } else {
            Some(next)
        }
    }
}

/// RFC 3461 MAIL parameters (RET=FULL, ENVID), each with a leading space.
pub(crate) fn mail_dsn_params(ret_full: bool, envid: Option<&str>) -> String {
    let mut p = String::new();
    if ret_full {
        p.push_str(" RET=FULL");
    }
    if let Some(e) = envid {
        p.push_str(&format!(" ENVID={e}"));
    }
    p
}

/// True when a recipient's NOTIFY (RFC 3461 4.1: `NEVER`, or a
/// comma-separated list of SUCCESS, FAILURE and DELAY; `None` is the
/// default, failures and delays) asks for a success notice. NEVER wins over
/// anything written next to it.
pub(crate) fn notify_success(notify: Option<&str>) -> bool {
    let Some(list) = notify else {
        return false;
    };
    let keywords = || list.split(',').map(str::trim);
    keywords().any(|k| k.eq_ignore_ascii_case("SUCCESS"))
        && !keywords().any(|k| k.eq_ignore_ascii_case("NEVER"))
}

/// RFC 3461 RCPT parameters (NOTIFY, ORCPT) of one recipient, each with a
/// leading space.
pub(crate) fn rcpt_dsn_params(notify: Option<&str>, orcpt: Option<&str>) -> String {
    let mut p = String::new();
    if let Some(n) = notify {
        p.push_str(&format!(" NOTIFY={n}"));
    }
    p.push_str(&orcpt_param(orcpt));
    p
}

/// The DSN parameters passed on for a message from an untrusted source:
/// no success notice (a next hop offering DSN would otherwise send one to a
/// sender the client chose) and no RET=FULL (see [`untrusted_mail_params`]).
/// `NOTIFY=SUCCESS` alone becomes `NOTIFY=NEVER`.
pub(crate) fn untrusted_rcpt_params(notify: Option<&str>, orcpt: Option<&str>) -> String {
    let mut p = String::new();
    if let Some(n) = notify {
        let kept: Vec<&str> = n
            .split(',')
            .map(str::trim)
            .filter(|k| !k.eq_ignore_ascii_case("SUCCESS"))
            .collect();
        let kept = if kept.is_empty() {
            "NEVER".to_string()
        } else {
            kept.join(",")
        };
        p.push_str(&format!(" NOTIFY={kept}"));
    }
    p.push_str(&orcpt_param(orcpt));
    p
}

/// `RET=HDRS` in place of `RET=FULL` for an untrusted source: a bounce from
/// a later hop returns headers only.
pub(crate) fn untrusted_mail_params(envid: Option<&str>) -> String {
    mail_dsn_params(false, envid)
}

/// ` ORCPT=...` when there is one.
fn orcpt_param(orcpt: Option<&str>) -> String {
    let mut p = String::new();
    if let Some(o) = orcpt {
        p.push_str(&format!(" ORCPT={o}"));
    }
    p
}

#[cfg(test)]
mod untrusted_tests {
    use super::*;

    #[test]
    fn untrusted_sources_ask_no_success_notice_and_no_full_return() {
        let cases = [
            (Some("SUCCESS"), None, " NOTIFY=NEVER"),
            (Some("SUCCESS,FAILURE"), None, " NOTIFY=FAILURE"),
            (
                Some("FAILURE,DELAY"),
                Some("rfc822;a@b"),
                " NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@b",
            ),
            (Some("NEVER"), None, " NOTIFY=NEVER"),
            (None, None, ""),
        ];
        for (notify, orcpt, want) in cases {
            assert_eq!(untrusted_rcpt_params(notify, orcpt), want, "{notify:?}");
        }
        assert_eq!(untrusted_mail_params(Some("x1")), " ENVID=x1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(local: &str, domain: &str) -> Address {
        Address {
            local: local.into(),
            domain: domain.into(),
        }
    }

    /// Extensions from comma-separated EHLO keywords.
    fn ext(caps: &str) -> Extensions {
        Extensions::parse(std::iter::once("hop.test greets you").chain(caps.split(',')))
    }

    /// A message with no flags and no DSN parameters.
    fn msg<'a>(
        sender: Option<&'a Address>,
        recipients: &'a [&'a Address],
        body: &'a [u8],
    ) -> Message<'a> {
        Message {
            sender,
            recipients,
            body,
            eight_bit: false,
            smtputf8: false,
            dsn_mail: String::new(),
            dsn_rcpt: &[],
            notify_success: &[],
        }
    }

    /// A message asking for RET=FULL, ENVID and per-recipient DSNs (the
    /// first recipient a success notice).
    fn dsn_msg<'a>(
        sender: &'a Address,
        recipients: &'a [&'a Address],
        dsn_rcpt: &'a [String],
    ) -> Message<'a> {
        Message {
            dsn_mail: " RET=FULL ENVID=e1".into(),
            dsn_rcpt,
            notify_success: &[true, false],
            ..msg(Some(sender), recipients, b"hi\r\n")
        }
    }

    #[test]
    fn extensions() {
        let e = Extensions::parse(
            [
                "mx greets you",
                "PIPELINING",
                "SIZE 1000",
                "8bitmime",
                "DSN",
                "STARTTLS",
            ]
            .into_iter(),
        );
        assert!(e.pipelining && e.eight_bit_mime && e.dsn && e.starttls && !e.smtputf8);
        assert_eq!(e.size, 1000);
        // The greeting line is not a keyword; a SIZE without a number is 0.
        let e = Extensions::parse(["PIPELINING", "SIZE", "  smtputf8"].into_iter());
        assert!(!e.pipelining && e.smtputf8);
        assert_eq!(e.size, 0);
    }

    #[test]
    fn body_form_by_hop_and_message() {
        let (s, t, intl) = (a("s", "a.test"), a("t", "b.test"), a("jörg", "b.test"));
        let ascii: &[u8] = b"Subject: hi\r\n\r\nhi\r\n";
        let eight: &[u8] = "Subject: hi\r\n\r\nGr\u{fc}\u{df}e\r\n".as_bytes();
        let (plain, utf8) = ([&t], [&intl]);
        let refused = BodyForm::Refuse(Reason {
            code: 553,
            status: "5.6.7".into(),
            text: "message needs SMTPUTF8 and the next hop does not offer it".into(),
            remote: Some("hop.test".into()),
        });
        let as_is = |eight_bit| BodyForm::AsIs { eight_bit };
        let cases = vec![
            (
                "7-bit, bare hop",
                ext(""),
                msg(Some(&s), &plain, ascii),
                as_is(false),
            ),
            (
                "null sender",
                ext(""),
                msg(None, &plain, ascii),
                as_is(false),
            ),
            (
                "8-bit, 8BITMIME hop",
                ext("8BITMIME"),
                msg(Some(&s), &plain, eight),
                as_is(true),
            ),
            (
                "declared 8-bit, 7-bit body, 8BITMIME hop",
                ext("8BITMIME"),
                Message {
                    eight_bit: true,
                    ..msg(Some(&s), &plain, ascii)
                },
                as_is(true),
            ),
            (
                "8-bit, bare hop",
                ext(""),
                msg(Some(&s), &plain, eight),
                BodyForm::SevenBit,
            ),
            (
                "declared 8-bit, bare hop",
                ext(""),
                Message {
                    eight_bit: true,
                    ..msg(Some(&s), &plain, ascii)
                },
                BodyForm::SevenBit,
            ),
            (
                "UTF-8 headers, 8BITMIME hop without SMTPUTF8",
                ext("8BITMIME"),
                Message {
                    smtputf8: true,
                    ..msg(Some(&s), &plain, eight)
                },
                BodyForm::SevenBit,
            ),
            (
                "UTF-8 headers, SMTPUTF8 hop",
                ext("8BITMIME,SMTPUTF8"),
                Message {
                    smtputf8: true,
                    ..msg(Some(&s), &plain, eight)
                },
                as_is(true),
            ),
            (
                "SMTPUTF8 declared, 7-bit body, bare hop",
                ext(""),
                Message {
                    smtputf8: true,
                    ..msg(Some(&s), &plain, ascii)
                },
                as_is(false),
            ),
            (
                "UTF-8 recipient, no SMTPUTF8",
                ext("8BITMIME"),
                msg(Some(&s), &utf8, ascii),
                refused.clone(),
            ),
            (
                "UTF-8 sender, no SMTPUTF8",
                ext("8BITMIME"),
                msg(Some(&intl), &plain, eight),
                refused,
            ),
            (
                "UTF-8 sender, SMTPUTF8 hop",
                ext("SMTPUTF8"),
                msg(Some(&intl), &plain, ascii),
                as_is(false),
            ),
        ];
        for (name, hop, m, want) in cases {
            assert_eq!(body_form(&hop, &m, "hop.test"), want, "{name}");
        }
    }

    #[test]
    fn commands_by_hop() {
        let (s, t, u, intl) = (
            a("s", "a.test"),
            a("t", "b.test"),
            a("u", "b.test"),
            a("jörg", "b.test"),
        );
        let (two, utf8) = ([&t, &u], [&intl]);
        let dsn = [
            " NOTIFY=SUCCESS ORCPT=rfc822;t@b.test".to_string(),
            " NOTIFY=FAILURE".to_string(),
        ];
        let full = "PIPELINING,8BITMIME,SMTPUTF8,SIZE 1000,DSN";
        let cases = vec![
            (
                "bare hop",
                ext(""),
                msg(Some(&s), &two, b"hi\r\n"),
                false,
                vec![
                    "MAIL FROM:<s@a.test>",
                    "RCPT TO:<t@b.test>",
                    "RCPT TO:<u@b.test>",
                    "DATA",
                ],
                vec![false, false],
            ),
            (
                "every extension",
                ext(full),
                Message {
                    smtputf8: true,
                    ..dsn_msg(&s, &two, &dsn)
                },
                true,
                vec![
                    "MAIL FROM:<s@a.test> BODY=8BITMIME SMTPUTF8 SIZE=123 RET=FULL ENVID=e1",
                    "RCPT TO:<t@b.test> NOTIFY=SUCCESS ORCPT=rfc822;t@b.test",
                    "RCPT TO:<u@b.test> NOTIFY=FAILURE",
                    "DATA",
                ],
                vec![false, false],
            ),
            (
                "DSN asked of a hop without DSN: nothing sent, success relayed",
                ext("PIPELINING"),
                dsn_msg(&s, &two, &dsn),
                false,
                vec![
                    "MAIL FROM:<s@a.test>",
                    "RCPT TO:<t@b.test>",
                    "RCPT TO:<u@b.test>",
                    "DATA",
                ],
                vec![true, false],
            ),
            (
                "null sender, SIZE",
                ext("SIZE 1000"),
                msg(None, &utf8[..0], b"hi\r\n"),
                false,
                vec!["MAIL FROM:<> SIZE=123", "DATA"],
                vec![],
            ),
            (
                "SMTPUTF8 declared, hop without it (body converted)",
                ext("8BITMIME"),
                Message {
                    smtputf8: true,
                    ..msg(Some(&s), &two[..1], b"hi\r\n")
                },
                false,
                vec!["MAIL FROM:<s@a.test>", "RCPT TO:<t@b.test>", "DATA"],
                vec![false],
            ),
            (
                "UTF-8 recipient, SMTPUTF8 hop",
                ext("SMTPUTF8"),
                msg(Some(&s), &utf8, b"hi\r\n"),
                false,
                vec![
                    "MAIL FROM:<s@a.test> SMTPUTF8",
                    "RCPT TO:<jörg@b.test>",
                    "DATA",
                ],
                vec![false],
            ),
        ];
        for (name, hop, m, eight_bit, lines, relayed) in cases {
            let plan = Plan::new(&hop, &m, eight_bit, 123);
            assert_eq!(plan.lines, lines, "{name}");
            assert_eq!(plan.relayed, relayed, "{name}");
            assert_eq!(plan.pipelining, hop.pipelining, "{name}");
        }
    }

    #[test]
    fn lockstep_stops_where_the_replies_say() {
        let (s, t, u) = (a("s", "a.test"), a("t", "b.test"), a("u", "b.test"));
        let two = [&t, &u];
        let plan = Plan::new(&ext(""), &msg(Some(&s), &two, b"hi\r\n"), false, 4);
        let r = |code| Reply {
            code,
            text: String::new(),
        };
        let cases = vec![
            (vec![], Some("MAIL FROM:<s@a.test>")),
            (vec![r(250)], Some("RCPT TO:<t@b.test>")),
            (vec![r(550)], None),
            (vec![r(421)], None),
            (vec![r(250), r(550)], Some("RCPT TO:<u@b.test>")),
            (vec![r(250), r(550), r(450)], None),
            (vec![r(250), r(550), r(251)], Some("DATA")),
            (vec![r(250), r(250), r(250)], Some("DATA")),
            (vec![r(250), r(250), r(250), r(354)], None),
        ];
        for (replies, want) in cases {
            assert_eq!(plan.next_lockstep(&replies), want, "{replies:?}");
        }
        // No recipients at all: no DATA either.
        let none = Plan::new(&ext(""), &msg(Some(&s), &two[..0], b""), false, 0);
        assert_eq!(none.next_lockstep(&[r(250)]), None);
    }

    /// Issue 11: `NOTIFY=NEVER` with an ORCPT naming "SUCCESS" asked for a
    /// relayed notice (a substring check over both parameters); NOTIFY is a
    /// keyword list now, and only NOTIFY counts.
    #[test]
    fn success_notice_only_when_notify_lists_success() {
        let cases = [
            (None, false),
            (Some("SUCCESS"), true),
            (Some("success"), true),
            (Some("FAILURE,SUCCESS"), true),
            (Some("DELAY, SUCCESS"), true),
            (Some("FAILURE,DELAY"), false),
            (Some("NEVER"), false),
            // Not valid RFC 3461, but NEVER must still win.
            (Some("NEVER,SUCCESS"), false),
            (Some("SUCCESS,NEVER"), false),
            // Keywords, not substrings.
            (Some("SUCCESSFUL"), false),
            (Some("NOSUCCESS"), false),
            (Some(""), false),
        ];
        for (notify, want) in cases {
            assert_eq!(notify_success(notify), want, "{notify:?}");
        }
        // The plan asks for a relayed notice from the flag alone: an ORCPT
        // of "SUCCESS" next to NOTIFY=NEVER asks for nothing.
        let (s, t) = (a("s", "a.test"), a("t", "b.test"));
        let one = [&t];
        let params = [rcpt_dsn_params(
            Some("NEVER"),
            Some("rfc822;SUCCESS@x.test"),
        )];
        let flags = [notify_success(Some("NEVER"))];
        let m = Message {
            dsn_rcpt: &params,
            notify_success: &flags,
            ..msg(Some(&s), &one, b"hi\r\n")
        };
        assert_eq!(Plan::new(&ext(""), &m, false, 4).relayed, vec![false]);
        let flags = [notify_success(Some("SUCCESS"))];
        let m = Message {
            notify_success: &flags,
            ..m
        };
        assert_eq!(Plan::new(&ext(""), &m, false, 4).relayed, vec![true]);
    }

    #[test]
    fn dsn_parameters() {
        assert_eq!(mail_dsn_params(false, None), "");
        assert_eq!(mail_dsn_params(true, None), " RET=FULL");
        assert_eq!(mail_dsn_params(false, Some("e")), " ENVID=e");
        assert_eq!(
            mail_dsn_params(true, Some("id+2Bx")),
            " RET=FULL ENVID=id+2Bx"
        );
        assert_eq!(rcpt_dsn_params(None, None), "");
        assert_eq!(
            rcpt_dsn_params(Some("SUCCESS,DELAY"), None),
            " NOTIFY=SUCCESS,DELAY"
        );
        assert_eq!(
            rcpt_dsn_params(Some("NEVER"), Some("rfc822;t@b.test")),
            " NOTIFY=NEVER ORCPT=rfc822;t@b.test"
        );
    }

    #[test]
    fn failed_conversion_is_permanent() {
        let r = downgrade_failed(&DowngradeError::new("MIME nesting too deep"), "hop.test");
        assert_eq!(
            r,
            Reason {
                code: 554,
                status: "5.6.3".into(),
                text: "cannot convert to 7 bit for a hop without 8BITMIME: MIME nesting too deep"
                    .into(),
                remote: Some("hop.test".into()),
            }
        );
    }
}
