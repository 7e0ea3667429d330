//! Splitting a message into its header block and body (RFC 5322 2.1).
//!
//! [`split`] finds the first empty line; a message without one is all
//! header. Works on bytes, never assumes UTF-8.

/// Returns (header block including its final CRLF, body).
pub fn split(msg: &[u8]) -> (&[u8], &[u8]) {
    if msg.starts_with(b"\r\n") {
        return (&msg[..0], &msg[2..]);
    }
    match msg.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&msg[..i + 2], &msg[i + 4..]),
        None => (msg, &msg[msg.len()..]),
    }
}

/// The value of the first header named `name` (case-insensitive),
/// unfolded, or `None`.
pub fn get(header_block: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(header_block);
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if !n.eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = v.trim().to_string();
        while let Some(next) = lines.peek() {
            if next.starts_with(' ') || next.starts_with('\t') {
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            } else {
                break;
            }
        }
        return Some(value);
    }
    None
}

/// The header fields of a block, each with its folded continuation lines
/// and final CRLF.
pub fn fields(header_block: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header_block.len() {
        let end = header_block[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| i + p + 2)
            .unwrap_or(header_block.len());
        let next_folds = matches!(header_block.get(end), Some(b' ') | Some(b'\t'));
        if !next_folds {
            if end > start {
                out.push(&header_block[start..end]);
            }
            start = end;
        }
        i = end;
    }
    out
}

/// The name of one header field ("" when it has no colon).
pub fn field_name(field: &[u8]) -> &str {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(0);
    std::str::from_utf8(&field[..colon]).unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_get() {
        let m = b"Subject: a\r\n b\r\nFrom: x\r\n\r\nbody\r\n";
        let (h, b) = split(m);
        assert_eq!(b, b"body\r\n");
        assert_eq!(get(h, "subject").as_deref(), Some("a b"));
        assert_eq!(get(h, "To"), None);
        assert_eq!(split(b"\r\nbody"), (&b""[..], &b"body"[..]));
        assert_eq!(split(b"X: y\r\n").1, b"");
        let f = fields(b"A: 1\r\nB: 2\r\n  more\r\nC: 3\r\n");
        assert_eq!(
            f,
            vec![&b"A: 1\r\n"[..], b"B: 2\r\n  more\r\n", b"C: 3\r\n"]
        );
        assert_eq!(field_name(f[1]), "B");
    }
}
