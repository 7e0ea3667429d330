//! The worker pipe's frame reader on arbitrary bytes: frames within the
//! limit, an error past it, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(frame)) = postern_supervisor::pool::read_frame(&mut r, 1 << 16) {
        assert!(frame.len() <= 1 << 16);
    }
});
