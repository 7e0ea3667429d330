//! A whole SMTP session (sans-IO) on a client's bytes: no panic, bounded
//! buffers and messages, the same replies whatever the chunking.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_listener::fuzzing::fuzz_session(data));
