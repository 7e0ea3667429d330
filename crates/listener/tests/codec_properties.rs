//! Property test of the sans-IO command codec, the DATA receiver and the
//! session on arbitrary bytes: no panic, memory bounded by the limits, and
//! feeding the same input in any chunking gives the same result.

use postern_listener::codec::{Frame, LineCodec};
use postern_listener::data::DataReceiver;

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

/// Runs the line codec over `data` in chunks; returns the lines and errors.
fn lines(data: &[u8], chunk: usize) -> Vec<Result<Vec<u8>, ()>> {
    let mut codec = LineCodec::new(64);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&buf) {
                Ok(None) => {
                    // What stays buffered is one incomplete line, under the limit.
                    assert!(
                        buf.len() < 64,
                        "the codec let its buffer grow past the limit"
                    );
                    break;
                }
                Ok(Some(Frame::Skipped(n))) => {
                    buf.drain(..n);
                }
                Ok(Some(Frame::Line { consumed, text_len })) => {
                    out.push(Ok(buf[..text_len].to_vec()));
                    buf.drain(..consumed);
                }
                Err((_, n)) => {
                    out.push(Err(()));
                    buf.drain(..n);
                }
            }
        }
    }
    out
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

fn data_phase(
    data: &[u8],
    chunk: usize,
) -> (
    usize,
    bool,
    Result<Vec<u8>, postern_listener::data::DataError>,
) {
    let mut rx = DataReceiver::new(1000, 100);
    let mut used = 0;
    for piece in data.chunks(chunk.max(1)) {
        let (n, done) = rx.ingest(piece);
        used += n;
        if done {
            return (used, true, rx.finish());
        }
    }
    (used, false, rx.finish())
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
