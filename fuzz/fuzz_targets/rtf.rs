//! Compressed RTF (LZFu) and the de-encapsulation of HTML and text.
#![no_main]
use postern_convert::rtf;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(out) = rtf::decompress(data, 1 << 20) {
        assert!(out.len() <= (1 << 20) + 17);
        let _ = rtf::de_encapsulate(&out);
    }
    let _ = rtf::de_encapsulate(data);
});
