//! Delivery status notifications (RFC 3464, RFC 3462 multipart/report).
//!
//! [`build_dsn`] returns a complete message: a human-readable part, the
//! `message/delivery-status` part with per-message and per-recipient fields,
//! and the original headers as `text/rfc822-headers` (the whole message as
//! `message/rfc822` when the caller asks for it: RET=FULL from a trusted
//! source, never for an untrusted one, whose DSN must not carry a body of
//! its choosing to an address of its choosing). The caller sends it from
//! the null sender to the original sender, and never for a message that
//! was itself sent from the null sender (no DSN about a DSN). Values that came from the
//! network lose their CR and LF, so they cannot inject header lines.

use crate::Message;
use postern_core::{Address, Envelope, Reason};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

/// One recipient the DSN reports on.
pub struct DsnRecipient<'a> {
    /// The recipient (Final-Recipient).
    pub address: &'a Address,
    /// Why delivery failed, or the success relayed: code, status, text and
    /// the remote MTA if one answered.
    pub reason: &'a Reason,
    /// RFC 3461 ORCPT given at RCPT, for Original-Recipient.
    pub orcpt: Option<&'a str>,
    /// "failed", or "relayed" (success reported to a NOTIFY=SUCCESS sender).
    pub action: &'a str,
}

/// Everything a DSN needs; time is passed in, not read.
pub struct DsnInput<'a> {
    /// Our host name (Reporting-MTA, From).
    pub reporting_mta: &'a str,
    /// The original envelope: sender (the DSN's recipient), queue id,
    /// arrival time, ENVID and RET.
    pub envelope: &'a Envelope,
    /// The recipients reported on.
    pub failed: Vec<DsnRecipient<'a>>,
    /// The original message (its headers are returned, or all of it under
    /// `return_full`).
    pub original: &'a [u8],
    /// Return the whole message (`message/rfc822`), not only its headers.
    /// The caller decides: the envelope's RET=FULL, honoured only for a
    /// trusted source.
    pub return_full: bool,
    /// Now, ms since the epoch (Date header).
    pub now_ms: u64,
    /// Unique token for the MIME boundary and Message-ID.
    pub token: String,
}

fn rfc5322_date(ms: u64) -> String {
    postern_core::date::rfc5322(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Drops CR/LF so values from the network cannot inject header lines.
fn clean(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// Builds the DSN message (CRLF line endings).
pub fn build_dsn(input: &DsnInput<'_>) -> Vec<u8> {
    let boundary = format!("=_postern_{}", input.token);
    let mut m = String::new();
    write_notice(&mut m, input, &boundary);
    write_status(&mut m, input, &boundary);
    // The whole message when the caller allows it; otherwise its headers.
    let part_type = if input.return_full {
        "message/rfc822"
    } else {
        "text/rfc822-headers"
    };
    let _ = write!(m, "\r\n--{boundary}\r\nContent-Type: {part_type}\r\n\r\n");
    let mut out = m.into_bytes();
    let returned = if input.return_full {
        input.original
    } else {
        Message::parse(input.original).header_section()
    };
    out.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The DSN's header and its human-readable part, one line per recipient.
fn write_notice(m: &mut String, input: &DsnInput<'_>, boundary: &str) {
    let to = input
        .envelope
        .sender
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{token}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n\
         This is the delivery status of your message.\r\n\
         \r\n",
        host = input.reporting_mta,
        subject = if input.failed.iter().all(|f| f.action == "relayed") {
            "Delivery Status Notification (relayed)"
        } else if input.failed.iter().all(|f| f.action == "delayed") {
            "Delayed Mail (still being retried)"
        } else {
            "Undelivered Mail Returned to Sender"
        },
        to = clean(&to),
        date = rfc5322_date(input.now_ms),
        token = input.token,
    );
    for f in &input.failed {
        let _ = write!(
            m,
            "<{}>: {}\r\n",
            clean(&f.address.to_string()),
            clean(&f.reason.to_string())
        );
    }
}

/// The `message/delivery-status` part: per-message fields, then a block of
/// per-recipient fields for each recipient.
fn write_status(m: &mut String, input: &DsnInput<'_>, boundary: &str) {
    let env = input.envelope;
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Postern-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        host = input.reporting_mta,
        id = env.id,
        arrival = rfc5322_date(env.received_ms),
    );
    if let Some(envid) = &env.dsn_envid {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", clean(envid));
    }
    for f in &input.failed {
        write_recipient(m, f);
    }
}

/// One recipient's fields (RFC 3464 2.3).
fn write_recipient(m: &mut String, f: &DsnRecipient<'_>) {
    let r = f.reason;
    m.push_str("\r\n");
    if let Some(o) = f.orcpt {
        let _ = write!(m, "Original-Recipient: {}\r\n", clean(o));
    }
    let _ = write!(
        m,
        "Final-Recipient: rfc822; {addr}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n",
        action = f.action,
        addr = clean(&f.address.to_string()),
        status = clean(&r.status),
    );
    match &r.remote {
        Some(remote) => {
            let _ = write!(
                m,
                "Remote-MTA: dns; {}\r\nDiagnostic-Code: smtp; {} {}\r\n",
                clean(remote),
                r.code,
                clean(&r.text)
            );
        }
        None => {
            let _ = write!(m, "Diagnostic-Code: X-Postern; {}\r\n", clean(&r.text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::{QueueId, Recipient};

    /// A message from s@o.test to `rcpt`, received from `client`.
    fn envelope(rcpt: &Address, client: &str, ret_full: bool) -> Envelope {
        Envelope {
            id: QueueId([1; 12]),
            sender: Some(Address::parse("s@o.test").unwrap()),
            recipients: vec![Recipient::new(rcpt.clone())],
            client: client.into(),
            helo: "h".into(),
            received_ms: 0,
            size: 0,
            eight_bit: false,
            message_id: None,
            smtputf8: false,
            dsn_ret_full: ret_full,
            dsn_envid: None,
            trusted: false,
        }
    }

    #[test]
    fn dsn_has_the_rfc3464_parts() {
        let rcpt = Address::parse("u@d.test").unwrap();
        let env = envelope(&rcpt, "127.0.0.1", false);
        let reason = Reason {
            code: 550,
            status: "5.1.1".into(),
            text: "no such user\r\nInjected: yes".into(),
            remote: Some("mx.d.test".into()),
        };
        let dsn = build_dsn(&DsnInput {
            reporting_mta: "gw.test",
            envelope: &env,
            failed: vec![DsnRecipient {
                address: &rcpt,
                reason: &reason,
                orcpt: None,
                action: "failed",
            }],
            original: b"Subject: hello\r\nMessage-ID: <x@y>\r\n\r\nsecret body\r\n",
            return_full: false,
            now_ms: 0,
            token: "abc".into(),
        });
        let s = String::from_utf8(dsn).unwrap();
        assert!(s.contains("To: <s@o.test>\r\n"));
        assert!(s.contains("multipart/report; report-type=delivery-status"));
        assert!(
            s.contains("Final-Recipient: rfc822; u@d.test\r\nAction: failed\r\nStatus: 5.1.1\r\n")
        );
        assert!(s.contains("Diagnostic-Code: smtp; 550 no such userInjected: yes\r\n"));
        assert!(!s.contains("\r\nInjected: yes"));
        assert!(s.contains("Subject: hello\r\n"));
        assert!(!s.contains("secret body"));
        assert!(s.ends_with("--=_postern_abc--\r\n"));
        assert!(!s.replace("\r\n", "").contains('\n'));
    }

    /// Issue 11, reflection: the envelope's RET=FULL alone does not return
    /// the body; only the caller's `return_full` (a trusted source) does.
    #[test]
    fn the_body_comes_back_only_when_the_caller_says_so() {
        let rcpt = Address::parse("u@d.test").unwrap();
        let mut env = envelope(&rcpt, "192.0.2.5", true);
        let reason = Reason::local(550, "5.1.1", "no such user");
        let dsn = |env: &Envelope, return_full: bool| {
            let out = build_dsn(&DsnInput {
                reporting_mta: "gw.test",
                envelope: env,
                failed: vec![DsnRecipient {
                    address: &rcpt,
                    reason: &reason,
                    orcpt: None,
                    action: "failed",
                }],
                original: b"Subject: hello\r\n\r\nsecret body\r\n",
                return_full,
                now_ms: 0,
                token: "t".into(),
            });
            String::from_utf8(out).unwrap()
        };
        let headers = dsn(&env, false);
        assert!(headers.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(headers.contains("Subject: hello\r\n"));
        assert!(!headers.contains("secret body"), "{headers}");
        env.trusted = true;
        let full = dsn(&env, true);
        assert!(full.contains("Content-Type: message/rfc822\r\n"));
        assert!(full.contains("secret body"), "{full}");
    }
}
