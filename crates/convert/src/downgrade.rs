//! 8BITMIME downgrade (RFC 6152: a relay must convert, not send 8-bit data
//! to a hop that does not accept it).
//!
//! [`to_seven_bit`] rewrites every leaf part whose body has 8-bit octets as
//! quoted-printable (text) or base64 (anything else), replacing its
//! Content-Transfer-Encoding, and encodes 8-bit header text as RFC 2047
//! encoded-words. Multiparts are rebuilt part by part. Depth is bounded by
//! the limits, which are checked first, so the recursion here is bounded.
//! Over-long lines (RFC 5322: 998 octets) are repaired the same way:
//! re-encoded rather than cut. A message that is already 7-bit with short
//! lines is returned unchanged. It takes bytes, not a [`Message`]: delivery
//! calls it on a body just read from the queue, and the outbound pipeline on
//! bytes it has just rebuilt.

use crate::content::{multipart_boundary, Multipart};
use crate::encode::{base64_lines, encoded_words, quoted_printable};
use crate::{ContentError, ContentLimits, Message};

/// RFC 5322 2.1.1: at most 998 octets per line, CRLF excluded.
const MAX_LINE: usize = 998;

/// True when some line is longer than 998 octets.
pub(crate) fn has_long_line(data: &[u8]) -> bool {
    data.split(|b| *b == b'\n').any(|l| l.len() > MAX_LINE + 1)
}

/// Returns the message with no 8-bit octet and no over-long line left
/// (parts with either are re-encoded; nothing is cut). Refuses what
/// [`crate::inspect`] refuses.
pub fn to_seven_bit(msg: &[u8], lim: &ContentLimits) -> Result<Vec<u8>, ContentError> {
    if msg.is_ascii() && !has_long_line(msg) {
        return Ok(msg.to_vec());
    }
    let view = Message::parse(msg);
    crate::inspect(&view, lim)?;
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 4);
    entity(&view, 0, lim, &mut out)?;
    Ok(out)
}

fn entity(
    e: &Message<'_>,
    depth: usize,
    lim: &ContentLimits,
    out: &mut Vec<u8>,
) -> Result<(), ContentError> {
    if depth > lim.max_depth {
        return Err(ContentError::TooDeep {
            limit: lim.max_depth,
        });
    }
    let body = e.body();
    // A multipart without any delimiter is converted as a leaf: its body
    // is kept (encoded), never dropped.
    if let Some((boundary, m)) =
        multipart_boundary(e).and_then(|b| Multipart::split(body, b.as_bytes()).map(|m| (b, m)))
    {
        return multipart(e, &boundary, m, depth, lim, out);
    }
    if body.is_ascii() && !has_long_line(body) {
        write_headers(e, None, out);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        return Ok(());
    }
    let is_text = e
        .header("Content-Type")
        .map(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/"))
        .unwrap_or(true);
    let (cte, encoded) = if is_text {
        ("quoted-printable", quoted_printable(body))
    } else {
        ("base64", base64_lines(body))
    };
    write_headers(e, Some(cte), out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&encoded);
    Ok(())
}

/// A multipart entity rebuilt with each part converted.
fn multipart(
    e: &Message<'_>,
    boundary: &str,
    mut m: Multipart<'_>,
    depth: usize,
    lim: &ContentLimits,
    out: &mut Vec<u8>,
) -> Result<(), ContentError> {
    // Preamble and epilogue are for readers without MIME, and ignored by
    // everyone else: kept when they are 7-bit, else left out.
    for text in [&mut m.preamble, &mut m.epilogue] {
        if !text.is_ascii() || has_long_line(text) {
            *text = &[];
        }
    }
    write_headers(e, None, out);
    out.extend_from_slice(b"\r\n");
    let mut parts = Vec::with_capacity(m.parts.len());
    for part in &m.parts {
        let mut p = Vec::with_capacity(part.len());
        entity(&Message::parse(part), depth + 1, lim, &mut p)?;
        parts.push(p);
    }
    m.write(boundary, &parts, out);
    Ok(())
}

/// Copies a header block, replacing Content-Transfer-Encoding when `cte`
/// is given and encoding 8-bit values as RFC 2047 words.
fn write_headers(e: &Message<'_>, cte: Option<&str>, out: &mut Vec<u8>) {
    for field in e.headers() {
        let name = field.name();
        if cte.is_some() && name.eq_ignore_ascii_case("Content-Transfer-Encoding") {
            continue;
        }
        if field.raw().is_ascii() {
            out.extend_from_slice(field.raw());
            continue;
        }
        let text = String::from_utf8_lossy(field.raw());
        let value = text[name.len() + 1..].replace("\r\n", "");
        write_seven_bit_field(name, value.trim(), out);
    }
    if let Some(cte) = cte {
        out.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes());
    }
}

/// One 8-bit field written 7-bit: MIME parameters in RFC 2231 form, the
/// display name of an address field as encoded-words, anything else as
/// encoded-words.
fn write_seven_bit_field(name: &str, value: &str, out: &mut Vec<u8>) {
    let address_ascii = value.find('<').filter(|lt| value[*lt..].is_ascii());
    let structured = ["content-type", "content-disposition"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n));
    if structured {
        out.extend_from_slice(
            format!("{name}: {}\r\n", crate::encode::seven_bit_params(value)).as_bytes(),
        );
        return;
    }
    match (address_ascii, is_address_field(name)) {
        (Some(lt), true) => {
            // Encode the display name only; the address stays as it is.
            let phrase = value[..lt].trim().trim_matches('"');
            out.extend_from_slice(
                format!("{name}: {} {}\r\n", encoded_words(phrase), &value[lt..]).as_bytes(),
            );
        }
        // Anything else (an 8-bit address too: no 7-bit form exists) is
        // carried as encoded-words so no 8-bit octet reaches the hop.
        _ => out.extend_from_slice(format!("{name}: {}\r\n", encoded_words(value)).as_bytes()),
    }
}

fn is_address_field(name: &str) -> bool {
    ["from", "to", "cc", "bcc", "reply-to", "sender"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{base64_decode, quoted_printable_decode};

    #[test]
    fn text_and_binary_parts() {
        let msg = "From: Jürgen <j@x.test>\r\nSubject: Grüße\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n\u{0}\u{ff}bin\r\n--b--\r\n";
        let out = to_seven_bit(msg.as_bytes(), &ContentLimits::default()).unwrap();
        assert!(out.is_ascii(), "{}", String::from_utf8_lossy(&out));
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.contains("Subject: =?UTF-8?B?R3LDvMOfZQ==?="));
        assert!(s.contains("From: =?UTF-8?B?SsO8cmdlbg==?= <j@x.test>"));
        assert!(s.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe"));
        assert!(!s.contains("8bit"));
        let parts = crate::content::split_parts(Message::parse(&out).body(), b"b");
        assert_eq!(parts.len(), 2);
        let body = Message::parse(parts[0]).body();
        assert_eq!(quoted_printable_decode(body), "Grüße".as_bytes());
        let bin = Message::parse(parts[1]).body();
        assert_eq!(base64_decode(bin).unwrap(), "\u{0}\u{ff}bin".as_bytes());
    }

    #[test]
    fn long_lines_are_reencoded_not_cut() {
        let long = "x".repeat(2500);
        let msg = format!("Subject: long\r\nContent-Type: text/plain\r\n\r\n{long}\r\nshort\r\n");
        let out = to_seven_bit(msg.as_bytes(), &ContentLimits::default()).unwrap();
        assert!(!has_long_line(&out));
        let m = Message::parse(&out);
        assert_eq!(
            m.header("Content-Transfer-Encoding").as_deref(),
            Some("quoted-printable")
        );
        assert_eq!(
            quoted_printable_decode(m.body()),
            format!("{long}\r\nshort\r\n").as_bytes()
        );
    }

    #[test]
    fn seven_bit_unchanged() {
        let m = b"Subject: hi\r\n\r\nplain\r\n";
        assert_eq!(to_seven_bit(m, &ContentLimits::default()).unwrap(), m);
    }
}
