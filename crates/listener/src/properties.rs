//! Property tests of the sans-IO command codec, the DATA receiver and the
//! session on arbitrary bytes: no panic, memory bounded by the limits, and
//! feeding the same input in any chunking gives the same result. (Moved here
//! from `tests/codec_properties.rs` when the codec and the receiver became
//! private to the crate.)

use crate::budget::Reservation;
use crate::codec::{Frame, LineCodec};
use crate::data::{DataError, DataReceiver};
use crate::session::{Session, Step};
use crate::{Reply, SessionConfig};
use std::sync::Arc;

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

fn data_phase(data: &[u8], chunk: usize) -> (usize, bool, Result<Vec<u8>, DataError>) {
    let mut rx = DataReceiver::new(1000, 100, Reservation::unlimited());
    let mut used = 0;
    for piece in data.chunks(chunk.max(1)) {
        let (n, done) = rx.ingest(piece);
        used += n;
        if done {
            return (used, true, rx.finish().map(|(body, _)| body));
        }
    }
    (used, false, rx.finish().map(|(body, _)| body))
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

/// What a session answered to `data` fed in reads of `chunk` bytes, as the
/// server loop feeds it: the replies, what the client sent of each message,
/// and how the session ended (`None`: it wants to read more).
fn session_run(data: &[u8], chunk: usize) -> (Vec<Reply>, Vec<Vec<u8>>, Option<bool>) {
    let cfg = Arc::new(SessionConfig {
        max_errors: 1000,
        max_noops: 1000,
        max_command_line: 64,
        ..(*crate::config::test_config()).clone()
    });
    let mut s = Session::new(cfg, "192.0.2.1".parse().unwrap());
    let (mut replies, mut messages) = (Vec::new(), Vec::new());
    let mut buf = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        let mut pos = 0;
        loop {
            let (used, step) = s.ingest(&buf[pos..]);
            pos += used;
            replies.extend(s.take_replies());
            match step {
                Step::Read => break,
                Step::Deliver(msg) => {
                    messages.push(msg.body[msg.trace_len..].to_vec());
                    s.delivered(Reply::new(250, "2.0.0", "queued"));
                }
                Step::Verify { user, .. } => s.verified(user, false),
                Step::StartTls => return (replies, messages, Some(true)),
                Step::Close => return (replies, messages, Some(false)),
            }
        }
        buf.drain(..pos);
        assert!(
            buf.len() < 64,
            "the session let its buffer grow past the limit"
        );
    }
    (replies, messages, None)
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
