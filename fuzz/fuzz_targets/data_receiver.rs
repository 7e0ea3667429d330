//! The DATA receiver (dot-unstuffing, terminator, limits) on arbitrary
//! bytes: bounded, and the same in any chunking.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_listener::fuzzing::fuzz_data_receiver(data));
