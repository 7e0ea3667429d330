//! The parsed view of one message: [`Message::parse`] finds the header
//! section and the body (RFC 5322 2.1) once, and [`Message::headers`] walks
//! the fields (name, colon, folded lines) within that section as it goes,
//! allocating nothing (a header section of millions of tiny lines costs no
//! memory before the size limits have had their say), so the stages a
//! message passes through
//! (Message-ID for tracking, the fault check, MIME inspection, the outbound
//! pipeline, inbound authentication) share one parse instead of splitting
//! the same bytes again. [`HeaderField`] is one located field.
//!
//! Lines end in CRLF; a bare CR or LF is an ordinary octet here (the
//! listener refuses messages that carry one). The header section ends at
//! the first empty line; a message without one is all header. Values are
//! unfolded on request, never stored. Works on bytes, never assumes UTF-8,
//! never fails and never panics.

use crate::content::{multipart_boundary, split_parts};

/// Longest Message-ID [`Message::message_id`] returns, in characters (the
/// RFC 5322 line limit), so one header cannot bloat a queue record.
const MAX_MESSAGE_ID: usize = 998;

/// One message parsed once: where its header section ends and where its
/// body begins. Borrows the message bytes.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The whole message, as given to [`Message::parse`].
    bytes: &'a [u8],
    /// Length of the header section: every field with its final CRLF (0
    /// when the message opens with the empty line).
    header_len: usize,
    /// Where the body begins: after the empty line, or at the end of the
    /// message when there is none.
    body_start: usize,
}

impl<'a> Message<'a> {
    /// Parses `bytes`: finds the end of the header section and the start
    /// of the body.
    pub fn parse(bytes: &'a [u8]) -> Message<'a> {
        let (header_len, body_start) = sections(bytes);
        Message {
            bytes,
            header_len,
            body_start,
        }
    }

    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The header section: every field with its folded lines and final
    /// CRLF, without the empty line that ends it.
    pub fn header_section(&self) -> &'a [u8] {
        &self.bytes[..self.header_len]
    }

    /// The body: what follows the empty line ("" when there is none).
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[self.body_start..]
    }

    /// The header fields in order, duplicates included, found as the
    /// iterator goes (no allocation).
    pub fn headers(&self) -> impl Iterator<Item = HeaderField<'a>> + '_ {
        Fields {
            section: self.header_section(),
            pos: 0,
        }
    }

    /// The value of the first field named `name` (ASCII case-insensitive),
    /// unfolded, or `None`. The name is matched as written before the colon:
    /// the obsolete form with white space before the colon (`Subject :`)
    /// does not match.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers().find(|f| f.is_named(name)).map(|f| f.value())
    }

    /// The Message-ID field's value, at most 998 characters (for the queue
    /// and tracking).
    pub fn message_id(&self) -> Option<String> {
        self.header("Message-ID")
            .map(|m| m.chars().take(MAX_MESSAGE_ID).collect())
    }

    /// The parts of a multipart message, split at the boundary its
    /// Content-Type names, each parsed; empty when it is not multipart.
    pub fn parts(&self) -> Vec<Message<'a>> {
        let Some(boundary) = multipart_boundary(self) else {
            return Vec::new();
        };
        split_parts(self.body(), boundary.as_bytes())
            .into_iter()
            .map(Message::parse)
            .collect()
    }
}

/// One header field of a [`Message`].
#[derive(Debug, Clone, Copy)]
pub struct HeaderField<'a> {
    /// The field's octets, folded lines and final CRLF included.
    raw: &'a [u8],
    /// Length of the first line, CRLF excluded.
    first_line: usize,
    /// The first colon in `raw`.
    colon: Option<usize>,
}

impl<'a> HeaderField<'a> {
    /// The whole field: name, colon, value, folded lines and final CRLF.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The field name without surrounding white space; "" when the field
    /// has no colon or the name is not UTF-8.
    pub fn name(&self) -> &'a str {
        let raw: &'a [u8] = self.raw;
        let colon = self.colon.unwrap_or(0);
        std::str::from_utf8(&raw[..colon]).unwrap_or("").trim()
    }

    /// The value after the colon, unfolded: each line trimmed, the lines
    /// joined with one space; "" when the field has no colon.
    pub fn value(&self) -> String {
        match self.colon {
            Some(c) => unfold(&self.raw[c + 1..]),
            None => String::new(),
        }
    }

    /// True when the first line names this field `name` before its colon.
    fn is_named(&self, name: &str) -> bool {
        self.colon
            .filter(|c| *c < self.first_line)
            .is_some_and(|c| self.raw[..c].eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// (header section length, body start): the header section ends with the
/// CRLF before the first empty line.
fn sections(msg: &[u8]) -> (usize, usize) {
    if msg.starts_with(b"\r\n") {
        return (0, 2);
    }
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i + 2, i + 4),
        None => (msg.len(), msg.len()),
    }
}

/// The fields of a header section, one at a time: each runs from a line
/// that does not begin with white space through the folded lines that
/// follow it.
struct Fields<'a> {
    /// The header section being walked.
    section: &'a [u8],
    /// Where the next field begins.
    pos: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = HeaderField<'a>;

    fn next(&mut self) -> Option<HeaderField<'a>> {
        let h = self.section;
        let start = self.pos;
        if start >= h.len() {
            return None;
        }
        let mut first_line_end = None;
        let mut i = start;
        loop {
            let (eol, end) = match h[i..].windows(2).position(|w| w == b"\r\n") {
                Some(p) => (i + p, i + p + 2),
                None => (h.len(), h.len()),
            };
            let first = *first_line_end.get_or_insert(eol);
            if !matches!(h.get(end), Some(b' ' | b'\t')) {
                self.pos = end;
                let raw = &h[start..end];
                return Some(HeaderField {
                    raw,
                    first_line: first - start,
                    colon: raw.iter().position(|b| *b == b':'),
                });
            }
            i = end;
        }
    }
}

/// A value as it follows the colon, unfolded.
fn unfold(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let mut value = lines.next().unwrap_or("").trim().to_string();
    // Every later line but the empty one after the final CRLF is folded.
    for line in lines.filter(|l| !l.is_empty()) {
        value.push(' ');
        value.push_str(line.trim());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        what: &'static str,
        msg: &'static [u8],
        header: &'static [u8],
        body: &'static [u8],
        names: &'static [&'static str],
        lookups: &'static [(&'static str, Option<&'static str>)],
    }

    const CASES: &[Case] = &[
        Case {
            what: "folded headers",
            msg: b"Subject: a\r\n b\r\n\tc\r\nFrom: x\r\n\r\nbody\r\n",
            header: b"Subject: a\r\n b\r\n\tc\r\nFrom: x\r\n",
            body: b"body\r\n",
            names: &["Subject", "From"],
            lookups: &[
                ("Subject", Some("a b c")),
                ("From", Some("x")),
                ("To", None),
            ],
        },
        Case {
            what: "empty body",
            msg: b"X: y\r\n\r\n",
            header: b"X: y\r\n",
            body: b"",
            names: &["X"],
            lookups: &[("X", Some("y"))],
        },
        Case {
            what: "no blank line: all header",
            msg: b"X: y\r\nZ: w",
            header: b"X: y\r\nZ: w",
            body: b"",
            names: &["X", "Z"],
            lookups: &[("Z", Some("w"))],
        },
        Case {
            what: "no header section",
            msg: b"\r\nbody",
            header: b"",
            body: b"body",
            names: &[],
            lookups: &[("X", None)],
        },
        Case {
            what: "empty message",
            msg: b"",
            header: b"",
            body: b"",
            names: &[],
            lookups: &[("X", None)],
        },
        Case {
            what: "bare LF is no line end",
            msg: b"A: 1\nB: 2\n\nbody",
            header: b"A: 1\nB: 2\n\nbody",
            body: b"",
            names: &["A"],
            lookups: &[("A", Some("1\nB: 2\n\nbody")), ("B", None)],
        },
        Case {
            what: "duplicate headers: the first is found, all are listed",
            msg: b"Received: one\r\nReceived: two\r\n\r\nb",
            header: b"Received: one\r\nReceived: two\r\n",
            body: b"b",
            names: &["Received", "Received"],
            lookups: &[("received", Some("one"))],
        },
        Case {
            what: "case-insensitive lookup; the name as written",
            msg: b"message-ID:  <a@b> \r\nSubject : x\r\n\r\n",
            header: b"message-ID:  <a@b> \r\nSubject : x\r\n",
            body: b"",
            names: &["message-ID", "Subject"],
            lookups: &[("Message-Id", Some("<a@b>")), ("Subject", None)],
        },
        Case {
            what: "no colon: listed without a name, never found",
            msg: b"From mbox line\r\n x: y\r\nX: 1\r\n\r\n",
            header: b"From mbox line\r\n x: y\r\nX: 1\r\n",
            body: b"",
            names: &["From mbox line\r\n x", "X"],
            lookups: &[("From mbox line", None), ("x", Some("1"))],
        },
        Case {
            what: "8-bit octets",
            msg: b"Subject: Gr\xc3\xbc\xff\r\n\r\n\xff",
            header: b"Subject: Gr\xc3\xbc\xff\r\n",
            body: b"\xff",
            names: &["Subject"],
            lookups: &[("subject", Some("Gr\u{fc}\u{fffd}"))],
        },
    ];

    #[test]
    fn view_table() {
        for c in CASES {
            let m = Message::parse(c.msg);
            assert_eq!(m.bytes(), c.msg, "{}", c.what);
            assert_eq!(m.header_section(), c.header, "{}", c.what);
            assert_eq!(m.body(), c.body, "{}", c.what);
            let names: Vec<&str> = m.headers().map(|f| f.name()).collect();
            assert_eq!(names, c.names, "{}", c.what);
            // Every octet of the header section is in exactly one field.
            let raw: Vec<u8> = m.headers().flat_map(|f| f.raw().iter().copied()).collect();
            assert_eq!(raw, c.header, "{}", c.what);
            for (name, want) in c.lookups {
                assert_eq!(m.header(name).as_deref(), *want, "{}: {name}", c.what);
            }
        }
    }

    #[test]
    fn split_and_get() {
        let m = Message::parse(b"Subject: a\r\n b\r\nFrom: x\r\n\r\nbody\r\n");
        assert_eq!(m.body(), b"body\r\n");
        assert_eq!(m.header("subject").as_deref(), Some("a b"));
        assert_eq!(m.header("To"), None);
        let m = Message::parse(b"A: 1\r\nB: 2\r\n  more\r\nC: 3\r\n");
        let f: Vec<&[u8]> = m.headers().map(|f| f.raw()).collect();
        assert_eq!(
            f,
            vec![&b"A: 1\r\n"[..], b"B: 2\r\n  more\r\n", b"C: 3\r\n"]
        );
        let b = m.headers().nth(1).map(|f| (f.name(), f.value()));
        assert_eq!(b, Some(("B", "2 more".to_string())));
    }

    #[test]
    fn message_id_is_bounded() {
        let long = format!("Message-ID: <{}@x>\r\n\r\n", "a".repeat(2000));
        let id = Message::parse(long.as_bytes()).message_id();
        assert_eq!(id.map(|i| i.chars().count()), Some(998));
        let m = Message::parse(b"Message-ID:\r\n <a@b>\r\n\r\n");
        assert_eq!(m.message_id().as_deref(), Some(" <a@b>"));
        assert_eq!(Message::parse(b"Subject: x\r\n\r\n").message_id(), None);
    }

    #[test]
    fn parts_of_a_multipart() {
        let m = Message::parse(b"Content-Type: multipart/mixed; boundary=z\r\n\r\npre\r\n--z\r\nA: 1\r\n\r\none\r\n--z\r\n\r\ntwo\r\n--z--\r\n");
        let parts = m.parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].header("a").as_deref(), Some("1"));
        assert_eq!(parts[0].body(), b"one");
        assert_eq!(parts[1].body(), b"two");
        assert!(Message::parse(b"Subject: x\r\n\r\nb").parts().is_empty());
    }
}
