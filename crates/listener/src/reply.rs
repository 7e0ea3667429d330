//! SMTP replies (RFC 5321 section 4.2) with enhanced status codes (RFC 3463).
//!
//! A [`Reply`] is data; [`Reply::write_to`] renders it, multi-line when it has
//! several lines (CR and LF in the text are dropped, so a reply never breaks
//! the framing). [`Reply::reason`] names why an error reply was sent, for
//! metrics. Handlers build replies; only the server loop writes them.

use std::fmt::Write as _;

/// One SMTP reply: code, optional enhanced status, one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code: what the client acts on.
    pub code: u16,
    /// The RFC 3463 enhanced status (`"5.7.1"`), repeated on every line;
    /// `None` for replies that carry none (greeting, EHLO). Static, so never
    /// text echoed from a peer: [`Reply::reason`] classifies by it.
    pub status: Option<&'static str>,
    /// The text, one entry per line; more than one makes a multi-line reply.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO).
    pub fn plain(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            status: None,
            lines,
        }
    }

    /// 4xx or 5xx.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Every value [`Reply::reason`] can return.
    pub const REASONS: [&'static str; 15] = [
        "policy",
        "unknown_recipient",
        "bad_address",
        "too_big",
        "too_many_recipients",
        "back_pressure",
        "connection_limit",
        "rate_limit",
        "auth",
        "timeout",
        "internal_error",
        "content",
        "protocol",
        "other_temporary",
        "other_permanent",
    ];

    /// A short, fixed name for why an error reply was sent (a metric label):
    /// decided by our own enhanced status code, never by the text.
    pub fn reason(&self) -> &'static str {
        match (self.code, self.status.unwrap_or("")) {
            (_, "5.7.1") => "policy",
            (_, "5.1.1") => "unknown_recipient",
            (_, "5.1.3" | "5.1.7" | "5.1.8" | "5.6.7") => "bad_address",
            (_, "5.3.4" | "5.2.3") => "too_big",
            (_, "4.5.3" | "5.5.3") => "too_many_recipients",
            (_, "4.3.1") => "back_pressure",
            (_, "4.3.2") => "connection_limit",
            (421, "4.7.0") => "rate_limit",
            (_, "4.7.0" | "5.7.0" | "5.7.8" | "5.7.9" | "5.7.11") => "auth",
            (_, "4.4.2") => "timeout",
            (_, "4.3.0") => "internal_error",
            (_, s) if s.starts_with("5.6.") => "content",
            (_, s) if s.starts_with("5.5.") => "protocol",
            (c, _) if c < 500 => "other_temporary",
            _ => "other_permanent",
        }
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(s, "{}{}", self.code, sep);
            if let Some(st) = self.status {
                let _ = write!(s, "{st} ");
            }
            // Never let reply text break the framing.
            s.extend(line.chars().filter(|c| *c != '\r' && *c != '\n'));
            s.push_str("\r\n");
        }
        if self.lines.is_empty() {
            let _ = write!(s, "{}\r\n", self.code);
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        assert_eq!(
            Reply::new(250, "2.0.0", "OK").to_bytes(),
            b"250 2.0.0 OK\r\n"
        );
        let r = Reply::plain(250, vec!["a".into(), "b\r\nX".into()]);
        assert_eq!(r.to_bytes(), b"250-a\r\n250 bX\r\n");
    }
}
