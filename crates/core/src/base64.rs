//! Base64 (RFC 4648, standard alphabet), shared by the SASL decoder in the
//! listener and the transfer encodings of the conversion core.
//!
//! The coding itself is the `base64` crate's. What stays ours is the
//! tolerance mail needs, which no engine setting gives: decoding ignores
//! whitespace (CR, LF, space, tab) and `=` wherever they stand, takes
//! missing padding and stray trailing bits, ignores a lone last symbol that
//! carries less than a byte, and fails, never panics, on any other byte.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use std::borrow::Cow;

/// The standard alphabet, decoding without padding and with any trailing
/// bits (`=` has been removed before it sees the text).
static LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Bytes decoding skips.
fn skipped(c: u8) -> bool {
    matches!(c, b'=' | b'\r' | b'\n' | b' ' | b'\t')
}

/// Base64 without line breaks, padded.
pub fn base64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Decodes base64, ignoring whitespace and `=`; `None` on any other stray
/// byte.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let symbols: Cow<'_, [u8]> = if text.iter().any(|&c| skipped(c)) {
        Cow::Owned(text.iter().copied().filter(|&c| !skipped(c)).collect())
    } else {
        Cow::Borrowed(text)
    };
    // Four symbols make three bytes; one symbol alone is six bits, less
    // than a byte: it adds nothing, but it must still be a symbol.
    let whole = if symbols.len() % 4 == 1 {
        symbols.len() - 1
    } else {
        symbols.len()
    };
    let (body, lone) = symbols.split_at(whole);
    if !lone
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/'))
    {
        return None;
    }
    LENIENT.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for n in 0..100 {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            assert_eq!(base64_decode(base64(&data).as_bytes()).unwrap(), data);
        }
        assert_eq!(base64(b"Man"), "TWFu");
        assert!(base64_decode(b"*").is_none());
    }

    #[test]
    fn padding_and_whitespace_tolerance() {
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        assert_eq!(base64(b""), "");
        let man = Some(b"Man".to_vec());
        assert_eq!(base64_decode(b"TWFu"), man);
        assert_eq!(base64_decode(b"TW\r\nFu\r\n"), man);
        assert_eq!(base64_decode(b" T W\tF u "), man);
        assert_eq!(base64_decode(b"TWE"), Some(b"Ma".to_vec()));
        assert_eq!(base64_decode(b"TWE="), Some(b"Ma".to_vec()));
        assert_eq!(base64_decode(b"TQ"), Some(b"M".to_vec()));
        assert_eq!(base64_decode(b"TQ=="), Some(b"M".to_vec()));
        // Trailing bits that a strict decoder refuses are ignored.
        assert_eq!(base64_decode(b"TR=="), Some(b"M".to_vec()));
        // `=` is skipped wherever it stands: the symbols run on.
        assert_eq!(base64_decode(b"QQ==QQ=="), base64_decode(b"QQQQ"));
        assert_eq!(base64_decode(b"QQQQ"), Some(vec![0x41, 0x04, 0x10]));
        // A lone last symbol adds no byte but must be a symbol.
        assert_eq!(base64_decode(b"Q"), Some(Vec::new()));
        assert_eq!(base64_decode(b"TWFuQ"), man);
        assert!(base64_decode(b"TWFu*").is_none());
        assert!(base64_decode(b"TW-u").is_none());
        assert!(base64_decode("TWFu\u{e9}".as_bytes()).is_none());
        assert_eq!(base64_decode(b""), Some(Vec::new()));
        assert_eq!(base64_decode(b"="), Some(Vec::new()));
        assert_eq!(base64_decode(b"\r\n"), Some(Vec::new()));
    }
}
