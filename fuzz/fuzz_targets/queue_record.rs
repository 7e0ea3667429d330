//! The queue record decoder (bincode and JSON framings, CRC checked) on
//! arbitrary stored bytes: an error, never a panic or a huge allocation.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = postern_queue::decode_record(data);
});
