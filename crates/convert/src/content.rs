//! Content inspection: the MIME structure of a message, walked within
//! explicit limits.
//!
//! [`inspect`] checks the header section of a parsed [`Message`] and, for
//! multipart messages, every part's headers, iteratively (an explicit stack,
//! never recursion), and refuses messages past the limits in
//! [`ContentLimits`] with a typed [`ContentError`] that maps to a clear SMTP
//! reply. This is the work that runs inside content worker processes; it
//! must never panic on any input. The multipart splitting the other stages
//! share (`Multipart`, `multipart_boundary`) lives here too.
//!
//! Our own code rather than a MIME crate: every limit is checked before the
//! work it bounds, the walk never recurses, and it reads only the few
//! header fields the stages need.

use crate::dkim::DkimError;
use crate::Message;

/// Limits on what a message may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentLimits {
    /// Octets in one header block.
    pub max_header_bytes: usize,
    /// Nesting depth of multiparts.
    pub max_depth: usize,
    /// MIME parts in the whole message.
    pub max_parts: usize,
}

impl Default for ContentLimits {
    fn default() -> Self {
        ContentLimits {
            max_header_bytes: 256 * 1024,
            max_depth: 20,
            max_parts: 1000,
        }
    }
}

/// Why content was refused; [`ContentError::reply`] is the SMTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A header section (of the message or of a part) over the limit.
    #[error("header block larger than {limit} octets")]
    HeaderTooLarge {
        /// [`ContentLimits::max_header_bytes`].
        limit: usize,
    },
    /// Multiparts nested deeper than the limit.
    #[error("MIME nesting deeper than {limit} levels")]
    TooDeep {
        /// [`ContentLimits::max_depth`].
        limit: usize,
    },
    /// More MIME parts than the limit.
    #[error("more than {limit} MIME parts")]
    TooManyParts {
        /// [`ContentLimits::max_parts`].
        limit: usize,
    },
    /// A header line that is neither a field nor a continuation.
    #[error("malformed header field at line {line}")]
    MalformedHeader {
        /// The line, counted from 1 in its header section.
        line: usize,
    },
    /// DKIM signing failed (a temporary failure: the key was loaded).
    #[error("conversion failed: {0}")]
    Signing(#[from] DkimError),
}

impl ContentError {
    /// SMTP reply code, enhanced status and text for this refusal.
    pub fn reply(&self) -> (u16, &'static str, String) {
        let (code, status) = match self {
            ContentError::HeaderTooLarge { .. } => (552, "5.3.4"),
            ContentError::TooDeep { .. }
            | ContentError::TooManyParts { .. }
            | ContentError::MalformedHeader { .. } => (554, "5.6.0"),
            ContentError::Signing(_) => (451, "4.3.0"),
        };
        (code, status, self.to_string())
    }
}

/// What inspection found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentReport {
    /// Parts counted, the top level included.
    pub parts: usize,
    /// Deepest multipart nesting seen.
    pub depth: usize,
    /// Raw 8-bit octets in any header block.
    pub eight_bit_headers: bool,
    /// Raw 8-bit octets in any body.
    pub eight_bit_body: bool,
}

/// Walks the message; see the module docs.
pub fn inspect(msg: &Message<'_>, lim: &ContentLimits) -> Result<ContentReport, ContentError> {
    let mut report = ContentReport::default();
    // Parts still to walk: (entity bytes, depth).
    let mut stack: Vec<(&[u8], usize)> = Vec::new();
    entity(msg, 0, lim, &mut report, &mut stack)?;
    while let Some((part, depth)) = stack.pop() {
        entity(&Message::parse(part), depth, lim, &mut report, &mut stack)?;
    }
    Ok(report)
}

/// Checks one entity against the limits and pushes its parts.
fn entity<'a>(
    e: &Message<'a>,
    depth: usize,
    lim: &ContentLimits,
    report: &mut ContentReport,
    stack: &mut Vec<(&'a [u8], usize)>,
) -> Result<(), ContentError> {
    report.parts += 1;
    if report.parts > lim.max_parts {
        return Err(ContentError::TooManyParts {
            limit: lim.max_parts,
        });
    }
    report.depth = report.depth.max(depth);
    let hdrs = e.header_section();
    if hdrs.len() > lim.max_header_bytes {
        return Err(ContentError::HeaderTooLarge {
            limit: lim.max_header_bytes,
        });
    }
    check_header_lines(hdrs)?;
    report.eight_bit_headers |= !hdrs.is_ascii();
    let Some(boundary) = multipart_boundary(e) else {
        report.eight_bit_body |= !e.body().is_ascii();
        return Ok(());
    };
    if depth + 1 > lim.max_depth {
        return Err(ContentError::TooDeep {
            limit: lim.max_depth,
        });
    }
    for part in split_parts(e.body(), boundary.as_bytes()) {
        stack.push((part, depth + 1));
    }
    Ok(())
}

fn check_header_lines(hdrs: &[u8]) -> Result<(), ContentError> {
    for (i, line) in hdrs.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if folded && i == 0 {
            // A continuation with nothing to continue.
            return Err(ContentError::MalformedHeader { line: 1 });
        }
        if line.is_empty() || folded {
            continue;
        }
        let colon = line.iter().position(|b| *b == b':');
        let name_ok = colon.is_some_and(|c| {
            c > 0
                && line[..c]
                    .iter()
                    .all(|b| (33..=126).contains(b) && *b != b':')
        });
        // "From " mbox separators appear in the wild; tolerate them.
        let mbox_from = i == 0 && line.starts_with(b"From ");
        if !(name_ok || mbox_from) {
            return Err(ContentError::MalformedHeader { line: i + 1 });
        }
    }
    Ok(())
}

/// The boundary of a multipart entity, if it is one.
pub(crate) fn multipart_boundary(e: &Message<'_>) -> Option<String> {
    let ct = e.header("Content-Type")?;
    let lower = ct.to_ascii_lowercase();
    if !lower.trim_start().starts_with("multipart/") {
        return None;
    }
    let idx = lower.find("boundary=")?;
    let raw = &ct[idx + 9..];
    let b = if let Some(q) = raw.strip_prefix('"') {
        q.split('"').next().unwrap_or("")
    } else {
        raw.split([';', ' ', '\t']).next().unwrap_or("")
    };
    // RFC 2046 5.1.1: 1 to 70 characters from a 7-bit set.
    let valid = !b.is_empty() && b.len() <= 70 && b.bytes().all(|c| (32..127).contains(&c));
    valid.then(|| b.to_string())
}

/// A multipart body taken apart: what precedes the first delimiter, the
/// parts, and what follows the close delimiter (RFC 2046 5.1.1).
pub(crate) struct Multipart<'a> {
    /// Text before the first delimiter (for readers without MIME).
    pub(crate) preamble: &'a [u8],
    /// Each part, without the CRLF that belongs to the next delimiter.
    pub(crate) parts: Vec<&'a [u8]>,
    /// Text after the close delimiter.
    pub(crate) epilogue: &'a [u8],
}

impl<'a> Multipart<'a> {
    /// Splits `body` at `--boundary` lines; `None` when there is none (the
    /// body is then not a multipart at all, and must be kept as it is).
    pub(crate) fn split(body: &'a [u8], boundary: &[u8]) -> Option<Multipart<'a>> {
        let mut parts = Vec::new();
        let mut start: Option<usize> = None;
        let mut preamble: &[u8] = &[];
        let mut pos = 0;
        while pos <= body.len() {
            let end = body[pos..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map(|i| pos + i)
                .unwrap_or(body.len());
            let line = &body[pos..end];
            if let Some(rest) = line
                .strip_prefix(b"--")
                .and_then(|l| l.strip_prefix(boundary))
            {
                let closing = rest.starts_with(b"--");
                if rest.iter().all(|b| *b == b' ' || *b == b'\t') || closing {
                    // The CRLF before the delimiter belongs to the delimiter.
                    let before = pos.saturating_sub(2);
                    match start {
                        Some(s) => parts.push(&body[s..before.max(s)]),
                        None => preamble = &body[..before.min(pos)],
                    }
                    let next = (end + 2).min(body.len());
                    if closing {
                        return Some(Multipart {
                            preamble,
                            parts,
                            epilogue: &body[next..],
                        });
                    }
                    start = Some(next);
                }
            }
            pos = end + 2;
        }
        let s = start?;
        parts.push(&body[s.min(body.len())..]);
        Some(Multipart {
            preamble,
            parts,
            epilogue: &[],
        })
    }

    /// Writes the multipart back with `parts` (already converted) in place
    /// of the originals, preamble and epilogue kept.
    pub(crate) fn write<P: AsRef<[u8]>>(&self, boundary: &str, parts: &[P], out: &mut Vec<u8>) {
        if !self.preamble.is_empty() {
            out.extend_from_slice(self.preamble);
            out.extend_from_slice(b"\r\n");
        }
        for p in parts {
            let p = p.as_ref();
            out.extend_from_slice(b"--");
            out.extend_from_slice(boundary.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(p);
            // The CRLF that belongs to the next delimiter.
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"--\r\n");
        out.extend_from_slice(self.epilogue);
    }
}

/// The parts between `--boundary` delimiter lines, up to `--boundary--`.
pub(crate) fn split_parts<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    Multipart::split(body, boundary)
        .map(|m| m.parts)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: &[u8], lim: &ContentLimits) -> Result<ContentReport, ContentError> {
        inspect(&Message::parse(m), lim)
    }

    fn nested(depth: usize) -> Vec<u8> {
        let mut m = b"Subject: leaf\r\n\r\nleaf\r\n".to_vec();
        for d in 0..depth {
            let b = format!("b{d}");
            let mut outer =
                format!("Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\n")
                    .into_bytes();
            outer.extend_from_slice(&m);
            outer.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
            m = outer;
        }
        m
    }

    #[test]
    fn walks_multipart() {
        let m = b"Content-Type: multipart/mixed; boundary=XX\r\n\r\npre\r\n--XX\r\nContent-Type: text/plain\r\n\r\none\r\n--XX\r\n\r\ntw\xc3\xb6\r\n--XX--\r\nepilogue\r\n";
        let r = check(m, &ContentLimits::default()).unwrap();
        assert_eq!(r.parts, 3);
        assert_eq!(r.depth, 1);
        assert!(r.eight_bit_body && !r.eight_bit_headers);
        let parts = split_parts(&m[48..], b"XX");
        assert_eq!(parts[0], b"Content-Type: text/plain\r\n\r\none");
    }

    #[test]
    fn limits_hold() {
        let lim = ContentLimits {
            max_depth: 5,
            ..Default::default()
        };
        assert_eq!(check(&nested(5), &lim).unwrap().depth, 5);
        assert!(matches!(
            check(&nested(6), &lim),
            Err(ContentError::TooDeep { limit: 5 })
        ));
        // Deep nesting far past any limit: bounded work, no stack overflow.
        assert!(check(&nested(5000), &ContentLimits::default()).is_err());
        let many = format!(
            "Content-Type: multipart/mixed; boundary=z\r\n\r\n{}--z--\r\n",
            "--z\r\n\r\nx\r\n".repeat(50)
        );
        let lim = ContentLimits {
            max_parts: 10,
            ..Default::default()
        };
        assert!(matches!(
            check(many.as_bytes(), &lim),
            Err(ContentError::TooManyParts { limit: 10 })
        ));
        let big = format!("X-Big: {}\r\n\r\nb", "a".repeat(300_000));
        assert!(matches!(
            check(big.as_bytes(), &ContentLimits::default()),
            Err(ContentError::HeaderTooLarge { .. })
        ));
        assert!(matches!(
            check(
                b"Subject: x\r\nno colon here\r\n\r\nb",
                &ContentLimits::default()
            ),
            Err(ContentError::MalformedHeader { line: 2 })
        ));
    }

    #[test]
    fn replies() {
        let e = ContentError::TooDeep { limit: 5 };
        assert_eq!(
            e.reply(),
            (
                554,
                "5.6.0",
                "MIME nesting deeper than 5 levels".to_string()
            )
        );
        let e = ContentError::HeaderTooLarge { limit: 9 };
        assert_eq!(e.reply().0, 552);
        assert_eq!(e.reply().1, "5.3.4");
        let e = ContentError::Signing(DkimError::Ed25519NotPkcs8);
        assert_eq!(e.reply().0, 451);
        assert!(e.reply().2.starts_with("conversion failed: "));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for len in 0..2000 {
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(b"\r\n-:; =\"abXYboundary\t"[(seed % 21) as usize]);
            }
            let _ = check(&v, &ContentLimits::default());
        }
    }
}
