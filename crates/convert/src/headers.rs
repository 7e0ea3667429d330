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
    }
}
