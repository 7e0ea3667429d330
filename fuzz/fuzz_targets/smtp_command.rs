//! The command line parser and the line codec on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    postern_listener::fuzzing::fuzz_command(data);
    postern_listener::fuzzing::fuzz_line_codec(data);
});
