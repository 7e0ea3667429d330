//! Transfer encodings: quoted-printable and base64 (RFC 2045), and (inside
//! the crate) RFC 2047 encoded-words and RFC 2231 parameters for header
//! text. Pure functions over bytes; CRLF line endings in and out. Public so
//! tests and fixtures can build and decode MIME bodies.

pub use postern_core::base64::{base64, base64_decode};

/// Base64 in lines of 76 characters, each ending in CRLF (a MIME body).
pub fn base64_lines(data: &[u8]) -> Vec<u8> {
    let flat = base64(data);
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 76 * 2 + 2);
    for line in flat.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Quoted-printable (RFC 2045 6.7): CRLF stays a hard line break (a lone CR
/// or LF is encoded, so the bytes survive exactly), lines are soft-broken
/// at 76 characters, trailing whitespace is encoded.
pub fn quoted_printable(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8);
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        lines.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    lines.push(rest);
    for (i, line) in lines.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let mut col = 0;
        for (j, &b) in line.iter().enumerate() {
            let last = j + 1 == line.len();
            let plain = (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let width = if plain { 1 } else { 3 };
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if plain {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            col += width;
        }
    }
    out
}

/// Decodes quoted-printable (soft breaks removed, `=XX` decoded).
pub fn quoted_printable_decode(data: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'=' {
            if data[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if let (Some(h), Some(l)) = (
                data.get(i + 1).and_then(|c| hex(*c)),
                data.get(i + 2).and_then(|c| hex(*c)),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

/// An RFC 2047 encoded-word sequence for UTF-8 text (B encoding), split so
/// that no word exceeds 75 characters and no UTF-8 sequence is split.
pub(crate) fn encoded_words(text: &str) -> String {
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if (chunk.len() + c.len_utf8()).div_ceil(3) * 4 > 75 - 12 {
            words.push(format!("=?UTF-8?B?{}?=", base64(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", base64(chunk.as_bytes())));
    }
    words.join("\r\n ")
}

/// A MIME parameter `key="value"`, or RFC 2231 `key*=UTF-8''%XX..` when
/// the value is not ASCII (file names, in Content-Type and -Disposition).
pub(crate) fn rfc2231_param(key: &str, value: &str) -> String {
    if value.is_ascii() {
        return format!("{key}=\"{}\"", value.replace(['"', '\\'], "_"));
    }
    let mut enc = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{key}*=UTF-8''{enc}")
}

/// A structured Content-Type or Content-Disposition value made 7-bit: the
/// type and ASCII parameters as they are, 8-bit parameter values in RFC
/// 2231 form (an encoded-word is not allowed there and would hide the type).
pub(crate) fn seven_bit_params(value: &str) -> String {
    let mut pieces = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                pieces.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&value[start..]);
    let mut out: Vec<String> = Vec::with_capacity(pieces.len());
    for (n, piece) in pieces.iter().map(|p| p.trim()).enumerate() {
        match piece.split_once('=') {
            Some((k, v)) if n > 0 && !piece.is_ascii() => {
                // A parameter name is an ASCII token; anything else in it is noise.
                let key: String = k.chars().filter(char::is_ascii_graphic).collect();
                let key = key.trim_end_matches('*');
                out.push(rfc2231_param(key, v.trim().trim_matches('"')))
            }
            _ if piece.is_ascii() => out.push(piece.to_string()),
            // An 8-bit type or a bare 8-bit word: nothing 7-bit can say it.
            _ => out.push(piece.chars().filter(char::is_ascii).collect()),
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for n in 0..300 {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(base64_decode(base64(&data).as_bytes()).unwrap(), data);
            assert_eq!(base64_decode(&base64_lines(&data)).unwrap(), data);
        }
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert!(base64_decode(b"*").is_none());
    }

    #[test]
    fn qp_round_trip_and_shape() {
        let text = "Grüße aus Köln, a line that is certainly going to be much longer than seventy-six characters = fine \r\nend \r\n".as_bytes();
        let enc = quoted_printable(text);
        assert!(enc.is_ascii());
        for line in enc.split(|b| *b == b'\n') {
            assert!(line.len() <= 77, "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(quoted_printable_decode(&enc), text);
        assert!(String::from_utf8_lossy(&enc).contains("end=20\r\n"));
    }

    #[test]
    fn structured_values_keep_their_type() {
        assert_eq!(
            seven_bit_params("application/pdf; name=\"Bericht für.pdf\""),
            "application/pdf; name*=UTF-8''Bericht%20f%C3%BCr.pdf"
        );
        assert_eq!(
            seven_bit_params("attachment; filename=\"a;ü\"; size=3"),
            "attachment; filename*=UTF-8''a%3B%C3%BC; size=3"
        );
    }

    #[test]
    fn words() {
        let w = encoded_words("Grüße");
        assert_eq!(w, "=?UTF-8?B?R3LDvMOfZQ==?=");
        let long = encoded_words(&"ü".repeat(100));
        assert!(long.split("\r\n ").all(|w| w.len() <= 75));
    }
}
