//! TNEF streams: the reader, and the conversion of a message carrying one
//! (bodies, RTF, attachments, embedded messages).
#![no_main]
use postern_convert::{encode, tnef, Message};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tnef::read(data, 0);
    let mut msg = b"From: a@x.test\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: application/ms-tnef\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    msg.extend_from_slice(&encode::base64_lines(data));
    msg.extend_from_slice(b"--B--\r\n");
    let _ = tnef::convert_message(&Message::parse(&msg), tnef::TnefMode::Convert);
});
