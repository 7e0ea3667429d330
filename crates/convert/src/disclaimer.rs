//! Disclaimer text appended to outbound messages: to a text/plain body as
//! plain text, to a text/html body before `</body>` (or at the end), and in
//! a multipart message to the first text/plain and first text/html leaf of
//! the top level or of a multipart/alternative inside it. Bodies in base64
//! or quoted-printable are decoded, extended and re-encoded the same way.
//! Runs before DKIM signing, so our own signatures stay valid. [`append`]
//! is the entry point; a message it cannot place the text in (no text
//! part, undecodable base64) comes back unchanged.

use crate::content::{multipart_boundary, Multipart};
use crate::encode::{base64_decode, base64_lines, quoted_printable, quoted_printable_decode};
use crate::Message;

/// Returns the message with the disclaimer added where it fits; unchanged
/// if there is no text part.
pub(crate) fn append(msg: &[u8], text: &str) -> Vec<u8> {
    let mut done = (false, false); // (plain, html)
    entity(&Message::parse(msg), text, 0, &mut done)
}

fn entity(e: &Message<'_>, text: &str, depth: usize, done: &mut (bool, bool)) -> Vec<u8> {
    if let Some(boundary) = multipart_boundary(e) {
        // Not really multipart (no delimiter): left exactly as it is.
        let Some(m) = Multipart::split(e.body(), boundary.as_bytes()).filter(|_| depth < 2) else {
            return e.bytes().to_vec();
        };
        let parts: Vec<Vec<u8>> = m
            .parts
            .iter()
            .map(|p| entity(&Message::parse(p), text, depth + 1, done))
            .collect();
        let mut out = e.header_section().to_vec();
        out.extend_from_slice(b"\r\n");
        m.write(&boundary, &parts, &mut out);
        return out;
    }
    leaf(e, text, done).unwrap_or_else(|| e.bytes().to_vec())
}

/// A text leaf with the disclaimer added; `None` when this leaf takes none
/// (not text, an attachment, its kind already done, undecodable base64).
fn leaf(e: &Message<'_>, text: &str, done: &mut (bool, bool)) -> Option<Vec<u8>> {
    let ct = e
        .header("Content-Type")
        .unwrap_or_else(|| "text/plain".into())
        .to_ascii_lowercase();
    let is_plain = ct.trim_start().starts_with("text/plain");
    let is_html = ct.trim_start().starts_with("text/html");
    let disposition = e.header("Content-Disposition").unwrap_or_default();
    let wanted = (is_plain && !done.0) || (is_html && !done.1);
    if disposition.to_ascii_lowercase().contains("attachment") || !wanted {
        return None;
    }
    let cte = e
        .header("Content-Transfer-Encoding")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let decoded = match cte.as_str() {
        "base64" => base64_decode(e.body())?,
        "quoted-printable" => quoted_printable_decode(e.body()),
        _ => e.body().to_vec(),
    };
    let extended = if is_plain {
        done.0 = true;
        plain_with(decoded, text)
    } else {
        done.1 = true;
        html_with(&decoded, text)
    };
    let reencoded = match cte.as_str() {
        "base64" => base64_lines(&extended),
        "quoted-printable" => quoted_printable(&extended),
        _ => extended,
    };
    let mut out = e.header_section().to_vec();
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&reencoded);
    Some(out)
}

/// A plain-text body with the disclaimer after a signature separator.
fn plain_with(mut d: Vec<u8>, text: &str) -> Vec<u8> {
    if !d.ends_with(b"\r\n") && !d.is_empty() {
        d.extend_from_slice(b"\r\n");
    }
    d.extend_from_slice(b"-- \r\n");
    d.extend_from_slice(text.replace("\r\n", "\n").replace('\n', "\r\n").as_bytes());
    d.extend_from_slice(b"\r\n");
    d
}

/// An HTML body with the disclaimer before `</body>`, or at the end.
fn html_with(decoded: &[u8], text: &str) -> Vec<u8> {
    let html = format!("<hr><p>{}</p>", escape(text));
    let s = String::from_utf8_lossy(decoded).into_owned();
    match s.to_ascii_lowercase().rfind("</body>") {
        Some(i) => format!("{}{}{}", &s[..i], html, &s[i..]).into_bytes(),
        None => format!("{s}{html}\r\n").into_bytes(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "<br>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_text_outside_the_parts_is_kept() {
        // No delimiter at all: the body stays exactly as it was.
        let bare = "Content-Type: multipart/mixed; boundary=x\r\n\r\nGrüße\r\n";
        assert_eq!(append(bare.as_bytes(), "C."), bare.as_bytes());
        // Preamble and epilogue survive the rebuild.
        let m = b"Content-Type: multipart/mixed; boundary=x\r\n\r\nThis is MIME.\r\n--x\r\nContent-Type: text/plain\r\n\r\nHi\r\n--x--\r\nafter\r\n";
        let out = String::from_utf8(append(m, "C.")).unwrap();
        assert!(out.contains("\r\n\r\nThis is MIME.\r\n--x\r\n"), "{out}");
        assert!(
            out.ends_with("Hi\r\n-- \r\nC.\r\n\r\n--x--\r\nafter\r\n"),
            "{out:?}"
        );
    }

    #[test]
    fn plain_html_and_alternative() {
        let out = append(b"Subject: x\r\n\r\nHello\r\n", "Confidential.");
        assert!(out.ends_with(b"Hello\r\n-- \r\nConfidential.\r\n"));
        let alt = b"Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nHi\r\n--a\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGh0bWw+PGJvZHk+SGk8L2JvZHk+PC9odG1sPg==\r\n--a--\r\n";
        let out = String::from_utf8(append(alt, "Be <nice>")).unwrap();
        assert!(out.contains("Hi\r\n-- \r\nBe <nice>\r\n"));
        let parts = Message::parse(out.as_bytes()).parts();
        let html = base64_decode(parts[1].body()).unwrap();
        assert_eq!(
            String::from_utf8(html).unwrap(),
            "<html><body>Hi<hr><p>Be &lt;nice&gt;</p></body></html>"
        );
        let att = b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nfile\r\n";
        assert_eq!(append(att, "x"), att.to_vec());
    }
}
