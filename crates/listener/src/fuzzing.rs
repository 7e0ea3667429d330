//! Entry points for fuzzing (the `fuzzing` feature; the crate's own
//! property tests use them too): the sans-IO line codec, the DATA
//! receiver, the command parser and the session, each run on arbitrary
//! bytes in one piece and in other chunkings, with the invariants checked
//! by assertions (a fuzzer reports a failed one as a crash): no panic,
//! buffers bounded by the limits, the same result whatever the chunking.

use crate::budget::Reservation;
use crate::codec::{Frame, LineCodec};
use crate::data::{DataError, DataReceiver};
use crate::session::{Session, Step};
use crate::{Reply, SessionConfig};
use std::sync::Arc;

/// Runs the line codec over `data` in chunks; returns the lines and errors.
pub fn lines(data: &[u8], chunk: usize) -> Vec<Result<Vec<u8>, ()>> {
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

/// Runs the DATA receiver (limits: 1,000 bytes, lines of 100) over
/// `data` in reads of `chunk` bytes: bytes used, whether the terminator
/// came, and the message.
pub fn data_phase(data: &[u8], chunk: usize) -> (usize, bool, Result<Vec<u8>, DataError>) {
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

/// What a session answered to `data` fed in reads of `chunk` bytes, as the
/// server loop feeds it: the replies, what the client sent of each message,
/// and how the session ended (`None`: it wants to read more).
pub fn session_run(data: &[u8], chunk: usize) -> (Vec<Reply>, Vec<Vec<u8>>, Option<bool>) {
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

/// The line codec on `data`: the same lines in any chunking.
pub fn fuzz_line_codec(data: &[u8]) {
    let whole = lines(data, data.len());
    for chunk in [1, 7, 63] {
        assert_eq!(lines(data, chunk), whole);
    }
}

/// The DATA receiver on `data`: bounded, and the same in any chunking.
pub fn fuzz_data_receiver(data: &[u8]) {
    let whole = data_phase(data, data.len());
    if let (_, _, Ok(body)) = &whole {
        assert!(body.len() <= 1000, "body past the size limit");
    }
    for chunk in [1, 3, 64] {
        assert_eq!(data_phase(data, chunk), whole);
    }
}

/// The command parser on one line: a command or a reply, never a panic.
pub fn fuzz_command(line: &[u8]) {
    let _ = crate::command::parse(line);
}

/// A whole session on a client's bytes: bounded, and the same replies
/// and messages in any chunking.
pub fn fuzz_session(data: &[u8]) {
    let whole = session_run(data, data.len());
    for body in &whole.1 {
        assert!(body.len() <= 1000, "message past the size limit");
    }
    for chunk in [1, 5, 64] {
        assert!(session_run(data, chunk) == whole, "{data:?} in {chunk}");
    }
}
