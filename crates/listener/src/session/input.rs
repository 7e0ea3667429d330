//! The session's input side: [`Session::ingest`] runs buffered bytes through
//! the decoder the session is in and says what the I/O loop must do next.
//!
//! Three decoders, chosen by the session's state: a BDAT chunk being read
//! (its octets are message data, even when the chunk is refused), the DATA
//! receiver owned by `State::Data` (only `<CRLF>.<CRLF>` ends it, so the
//! smuggling sequences stay inside the message), or the line codec between
//! commands (an over-long line costs one reply). Every complete command
//! already buffered is answered before the loop writes (pipelining); the
//! session stops early only where the loop must act: a message for the sink,
//! credentials to verify, STARTTLS (whatever follows it in the buffer is the
//! loop's to discard) or close. Nothing here does I/O.

use super::{Action, Chunk, Session, State};
use crate::auth::VerifyPermit;
use crate::codec::Frame;
use crate::{ReceivedMessage, Reply};

/// What the I/O loop must do after [`Session::ingest`]; the replies to write
/// first are in [`Session::take_replies`].
pub enum Step {
    /// Everything buffered that could be used is used: read more.
    Read,
    /// Hand the message to the sink and give its reply to
    /// [`Session::delivered`], then ingest the rest.
    Deliver(Box<ReceivedMessage>),
    /// Check the credentials (slowly, off the loop) and give the answer to
    /// [`Session::verified`], then ingest the rest.
    Verify {
        /// The user named in the AUTH exchange.
        user: String,
        /// The password offered.
        pass: String,
        /// One of the verifications allowed at once: to be held until the
        /// check (the Argon2 run) has ended.
        permit: VerifyPermit,
    },
    /// Write the replies, then start the TLS handshake. Whatever the client
    /// pipelined after STARTTLS is dropped, never replayed inside TLS (the
    /// STARTTLS command-injection defence).
    StartTls,
    /// Write the replies and close the connection.
    Close,
}

impl Session {
    /// Consumes bytes from the front of `input`; returns how many were used
    /// and what the loop must do next. Bytes not used stay the caller's, to
    /// be passed again (with more appended) at the next call.
    pub fn ingest(&mut self, input: &[u8]) -> (usize, Step) {
        let mut pos = 0;
        loop {
            if self.closed {
                return (pos, Step::Close);
            }
            if pos == input.len() {
                return (pos, Step::Read);
            }
            let rest = &input[pos..];
            let (used, step) = if let Some(chunk) = self.chunk.take() {
                self.read_chunk(chunk, rest)
            } else if let State::Data { rx, .. } = &mut self.state {
                let (used, done) = rx.ingest(rest);
                (used, if done { self.data_end() } else { None })
            } else {
                self.read_command(rest)
            };
            pos += used;
            if let Some(step) = step {
                return (pos, step);
            }
        }
    }

    /// The replies produced since the last call, in order, for the loop to
    /// write.
    pub fn take_replies(&mut self) -> std::vec::Drain<'_, Reply> {
        self.replies.drain(..)
    }

    /// The sink's answer to a [`Step::Deliver`]: sent as it is (it is not a
    /// client error, so it never counts against `max_errors`). The message's
    /// octets leave the data budget now.
    pub fn delivered(&mut self, reply: Reply) {
        self.delivering = None;
        self.replies.push(reply);
    }

    /// The answer to a [`Step::Verify`]: `ok` when the password matched.
    pub fn verified(&mut self, user: String, ok: bool) {
        let action = self.auth_done(user, ok);
        self.settle(action);
    }

    /// True while message data (DATA, or a BDAT chunk) is being read: the
    /// data timeouts apply.
    pub fn reading_message(&self) -> bool {
        self.chunk.is_some() || matches!(self.state, State::Data { .. })
    }

    /// True when DATA or a BDAT chunk began or ended since the last call:
    /// the loop starts a new phase deadline.
    pub fn take_phase_change(&mut self) -> bool {
        std::mem::take(&mut self.phase_changed)
    }

    /// One command line (or SASL response) from the codec, and its action.
    fn read_command(&mut self, input: &[u8]) -> (usize, Option<Step>) {
        let (used, action) = match self.codec.decode(input) {
            Ok(None) => return (0, Some(Step::Read)),
            Ok(Some(Frame::Skipped(n))) => return (n, None),
            Ok(Some(Frame::Line { consumed, text_len })) => {
                (consumed, self.command(&input[..text_len]))
            }
            Err((_, n)) => (n, self.line_too_long()),
        };
        (used, self.act(action))
    }

    /// Carries out a command's action: replies are queued, a phase may
    /// begin, or the loop is asked to act.
    fn act(&mut self, action: Action) -> Option<Step> {
        match action {
            Action::Reply(r) => self.replies.push(r),
            Action::StartData(r) => {
                self.replies.push(r);
                self.phase_changed = true;
            }
            Action::Close(r) => {
                self.replies.push(r);
                self.closed = true;
            }
            Action::StartTls(r) => {
                self.replies.push(r);
                return Some(Step::StartTls);
            }
            Action::Bdat(chunk) if chunk.size == 0 => return self.end_chunk(chunk),
            Action::Bdat(chunk) => {
                self.chunk = Some(chunk);
                self.phase_changed = true;
            }
            Action::Authenticate { user, pass, permit } => {
                return Some(Step::Verify { user, pass, permit })
            }
        }
        None
    }

    /// Queues the reply of an action that ends a step (the end of a message
    /// or chunk, an AUTH verdict); `Close` ends the session.
    fn settle(&mut self, action: Action) {
        match action {
            Action::Close(r) => {
                self.replies.push(r);
                self.closed = true;
            }
            Action::Reply(r) | Action::StartData(r) | Action::StartTls(r) => self.replies.push(r),
            Action::Authenticate { .. } | Action::Bdat(_) => {}
        }
    }

    /// Octets of the chunk being read; at its end, its reply or the message.
    fn read_chunk(&mut self, mut chunk: Chunk, input: &[u8]) -> (usize, Option<Step>) {
        let n = chunk.remaining.min(input.len() as u64) as usize;
        chunk.remaining -= n as u64;
        if chunk.refused.is_none() {
            self.bdat_chunk(&input[..n]);
        }
        if chunk.remaining > 0 {
            self.chunk = Some(chunk);
            return (n, None);
        }
        self.phase_changed = true;
        (n, self.end_chunk(chunk))
    }

    /// A BDAT chunk is complete.
    fn end_chunk(&mut self, chunk: Chunk) -> Option<Step> {
        let result = self.bdat_end(chunk);
        self.deliver_or_settle(result)
    }

    /// DATA's terminator arrived.
    fn data_end(&mut self) -> Option<Step> {
        self.phase_changed = true;
        let result = match std::mem::replace(&mut self.state, State::Fresh) {
            State::Data {
                helo,
                esmtp,
                tx,
                rx,
            } => self.complete(helo, esmtp, tx, rx.finish()),
            other => {
                self.state = other;
                Err(Action::Reply(Reply::new(
                    503,
                    "5.5.1",
                    "no DATA in progress",
                )))
            }
        };
        self.deliver_or_settle(result)
    }

    /// A finished message goes to the sink; a refusal is queued.
    fn deliver_or_settle(&mut self, result: Result<ReceivedMessage, Action>) -> Option<Step> {
        match result {
            Ok(msg) => Some(Step::Deliver(Box::new(msg))),
            Err(action) => {
                self.settle(action);
                None
            }
        }
    }
}
