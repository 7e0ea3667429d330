//! Hop counting: how often a message has been relayed, for loop detection.
//!
//! Every relay adds a `Received` field (RFC 5321 section 4.4), so their
//! number is the hop count (Postfix's hopcount_limit counts them). Outbound
//! hygiene removes the Received fields of internal hosts, which would let a
//! loop through an internal relay never grow; so hygiene writes the number
//! it removed, plus any number carried before, into one [`HOPS_FIELD`].
//! [`count`] adds that carried number to the Received fields it sees. A
//! sender can raise the count of its own message only (a loop refusal of
//! that message), never lower another's.

/// The header field that carries hops removed by outbound hygiene.
pub const HOPS_FIELD: &str = "X-Postern-Hops";

/// Carried counts above this are read as this (a forged huge number must
/// not overflow anything; any limit is far below it).
pub const MAX_CARRIED: usize = 10_000;

/// The hop count of a message: its Received fields plus the largest count
/// carried in [`HOPS_FIELD`] fields, read from the header section of
/// `message` (up to the first empty line; continuation lines are not
/// fields).
pub fn count(message: &[u8]) -> usize {
    let mut received = 0;
    let mut carried = 0;
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if field_value(line, b"received").is_some() {
            received += 1;
        } else if let Some(value) = field_value(line, HOPS_FIELD.as_bytes()) {
            carried = carried.max(parse_carried(value));
        }
    }
    received + carried
}

/// The number in a [`HOPS_FIELD`] value (white space around it allowed);
/// 0 when it is not a number, at most [`MAX_CARRIED`].
pub fn parse_carried(value: &[u8]) -> usize {
    let text = String::from_utf8_lossy(value);
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    // All digits: only an overflow fails, and that is over the cap.
    digits
        .parse::<usize>()
        .unwrap_or(MAX_CARRIED)
        .min(MAX_CARRIED)
}

/// The value of a header line when the field is named `name` (any case;
/// white space allowed before the colon, RFC 5322 obsolete syntax).
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let head = line.get(..name.len())?;
    if !head.eq_ignore_ascii_case(name) {
        return None;
    }
    let rest = line.get(name.len()..)?;
    let colon = rest.iter().position(|b| !matches!(b, b' ' | b'\t'))?;
    (rest[colon] == b':').then(|| &rest[colon + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_fields_and_the_carried_count() {
        let cases: [(&str, usize, &str); 9] = [
            ("Subject: x\r\n\r\nReceived: body\r\n", 0, "none"),
            ("Received: a\r\nReceived: b\r\n\r\n", 2, "two fields"),
            ("Received: a\r\n b continued\r\n\r\n", 1, "folded"),
            (
                "received : a\r\nReceivedX: b\r\n\r\n",
                1,
                "case, space, not a prefix",
            ),
            ("Received: a\r\nX-Postern-Hops: 7\r\n\r\n", 8, "carried"),
            (
                "x-postern-hops:3\r\nX-Postern-Hops: 9\r\n\r\n",
                9,
                "largest carried",
            ),
            ("X-Postern-Hops: nine\r\n\r\n", 0, "not a number"),
            (
                "X-Postern-Hops: 99999999999999999999999\r\n\r\n",
                MAX_CARRIED,
                "capped",
            ),
            (
                "Received: a\nX-Postern-Hops: 2\n\nReceived: b\n",
                3,
                "bare LF",
            ),
        ];
        for (text, want, why) in cases {
            assert_eq!(count(text.as_bytes()), want, "{why}");
        }
    }
}
