//! Property tests of the sans-IO command codec, the DATA receiver and the
//! session on arbitrary bytes: no panic, memory bounded by the limits, and
//! feeding the same input in any chunking gives the same result. (Moved here
//! from `tests/codec_properties.rs` when the codec and the receiver became
//! private to the crate.)

use crate::fuzzing::{data_phase, lines, session_run};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const ALPHABET: &[u8] = b"\r\n.\0 :<>@MAILRCPTDATAQUIT\x80\xff";

fn input(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize])
        .collect()
}

#[test]
fn line_codec_is_chunking_independent_and_bounded() {
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let len = (rng.next() % 400) as usize;
        let data = input(&mut rng, len);
        let whole = lines(&data, data.len());
        for chunk in [1, 2, 7, 63] {
            assert_eq!(lines(&data, chunk), whole);
        }
    }
}

#[test]
fn data_receiver_is_chunking_independent_and_bounded() {
    let mut rng = Rng(11);
    for _ in 0..2000 {
        let len = (rng.next() % 3000) as usize;
        let mut data = input(&mut rng, len);
        if rng.next().is_multiple_of(2) {
            data.extend_from_slice(b"\r\n.\r\n");
        }
        let whole = data_phase(&data, data.len());
        if let (_, _, Ok(body)) = &whole {
            assert!(body.len() <= 1000, "body past the size limit");
        }
        for chunk in [1, 3, 64] {
            assert_eq!(data_phase(&data, chunk), whole);
        }
    }
}

/// Pieces a client session is made of: commands, message lines, the DATA
/// terminator, smuggling attempts, BDAT chunk headers.
const PIECES: [&[u8]; 14] = [
    b"EHLO c.test\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"RCPT TO:<x@example.test>\r\n",
    b"DATA\r\n",
    b".\r\n",
    b"Subject: s\r\n\r\nbody\r\n",
    b"..stuffed\r\n",
    b"x\n.\nMAIL FROM:<e@evil.test>\r\n",
    b"BDAT 7\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"STARTTLS\r\n",
];

/// A client's bytes: pieces, with random bytes between some of them.
fn client_input(rng: &mut Rng) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..rng.next() % 40 {
        data.extend_from_slice(PIECES[(rng.next() % PIECES.len() as u64) as usize]);
        if rng.next().is_multiple_of(4) {
            let len = (rng.next() % 20) as usize;
            data.extend(input(rng, len));
        }
    }
    data
}

#[test]
fn session_is_chunking_independent_and_bounded() {
    let mut rng = Rng(13);
    for _ in 0..500 {
        let data = client_input(&mut rng);
        let whole = session_run(&data, data.len());
        for body in &whole.1 {
            assert!(body.len() <= 1000, "message past the size limit");
        }
        for chunk in [1, 5, 64] {
            assert!(session_run(&data, chunk) == whole, "{data:?} in {chunk}");
        }
    }
}

/// Found by fuzzing (fuzz/corpus/data_receiver/crash-9380d91e…): a line
/// over the length limit with a NUL in it was refused as `Nul` when it came
/// in one read and as `LineTooLong` byte by byte.
#[test]
fn a_long_line_with_a_nul_is_refused_the_same_in_any_chunking() {
    let mut input = vec![0xFFu8; 44];
    input.extend([6u8; 60]);
    input.extend([0xFF; 5]);
    input.extend([b'.', 171, 106, 44, 0]);
    crate::fuzzing::fuzz_data_receiver(&input);
    let (_, _, whole) = data_phase(&input, input.len());
    assert_eq!(whole, Err(crate::data::DataError::LineTooLong));
}
