//! Sans-IO DATA receiver (RFC 5321 section 4.1.4 and 4.5.2).
//!
//! [`DataReceiver::ingest`] consumes bytes, un-stuffs leading dots and appends
//! the message to its body, until the one sequence that ends DATA:
//! `<CRLF>.<CRLF>`. Any bare CR or bare LF anywhere is recorded as
//! [`DataError::BareLineEnding`] and never ends the message, so the
//! `<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR>.<CR>` and `<CR><LF>.<LF>` smuggling
//! sequences stay inside the (then rejected) message instead of starting a
//! second transaction. Over-long lines and over-size bodies are recorded and
//! the rest discarded, so memory stays bounded; the verdict is given when the
//! terminator arrives, because only then can the client hear a reply. The
//! body's octets are reserved against the process's data budget as they are
//! stored (a [`Reservation`] the receiver owns); when the budget is spent the
//! rest is discarded the same way and the verdict is
//! [`DataError::NoStorage`].

use crate::budget::Reservation;

/// The largest buffer a SIZE= declaration makes the receiver start with (a
/// client may declare what it likes; past this the buffer grows as data
/// arrives).
pub const HINT_MAX: usize = 4 << 20;

/// How far ahead of the body the receiver reserves memory budget.
const RESERVE_STEP: u64 = 64 * 1024;

/// Why a received message must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnding,
    /// A text line longer than the limit (CRLF included).
    LineTooLong,
    /// The message exceeded the size limit.
    TooBig,
    /// A NUL octet (RFC 5321 forbids it; some parsers stop there).
    Nul,
    /// The memory budget for message data of every session together was
    /// spent: the message was not stored (a temporary failure).
    NoStorage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// A line that began with '.'.
    Dot,
    /// ".<CR>" at the start of a line.
    DotCr,
    /// Inside a line.
    Text,
    /// Saw CR inside a line.
    Cr,
}

/// Incremental DATA parser. One per transaction: the session's `Data` state
/// owns it.
#[derive(Debug)]
pub struct DataReceiver {
    /// Where in a line the last byte left us: only `<CRLF>.<CRLF>` ends DATA.
    state: State,
    /// The un-stuffed message, CRLF line endings.
    body: Vec<u8>,
    /// Octets in the current line so far (CRLF included at its end).
    line_len: usize,
    /// Body size limit; past it nothing more is stored.
    max_size: usize,
    /// Text line limit, CRLF included.
    max_line: usize,
    /// First problem seen, if any.
    error: Option<DataError>,
    /// The octets of `body`, reserved against the process's data budget;
    /// handed on with the body, so they stay counted until the message is
    /// answered.
    budget: Reservation,
}

impl DataReceiver {
    /// [`DataReceiver::with_hint`] without a declared size (tests).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn new(max_size: usize, max_line: usize, budget: Reservation) -> DataReceiver {
        DataReceiver::with_hint(max_size, max_line, budget, 0)
    }

    /// A receiver for one message of at most `max_size` octets whose lines
    /// are at most `max_line` octets, CRLF included, storing the body under
    /// `budget`. The client declared it `hint` octets long (MAIL's SIZE=; 0
    /// if not): the buffer starts that large (up to `max_size` and
    /// [`HINT_MAX`]) instead of doubling its way there.
    pub fn with_hint(
        max_size: usize,
        max_line: usize,
        budget: Reservation,
        hint: usize,
    ) -> DataReceiver {
        let capacity = hint.clamp(8192, HINT_MAX).min(max_size);
        DataReceiver {
            state: State::LineStart,
            body: Vec::with_capacity(capacity),
            line_len: 0,
            max_size,
            max_line,
            error: None,
            budget,
        }
    }

    /// Records the first problem; the message is refused whatever follows,
    /// so nothing more is kept and its octets are released at once.
    fn flag(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
            self.body = Vec::new();
            self.budget.release();
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        // The first problem in byte order, as if the run came a byte at a
        // time (a NUL, then the line's length, then the message's size,
        // for each byte): the same refusal however the client's writes
        // were cut (found by fuzzing: a long line with a NUL in it was
        // `Nul` in one read and `LineTooLong` in many).
        let nul = memchr::memchr(0, bytes).map(|at| (at, 0));
        let long = (self.line_len + bytes.len() > self.max_line)
            .then(|| (self.max_line.saturating_sub(self.line_len), 1));
        let big = (self.body.len() + bytes.len() > self.max_size)
            .then(|| (self.max_size.saturating_sub(self.body.len()), 2));
        self.line_len += bytes.len();
        if let Some((_, which)) = [nul, long, big].into_iter().flatten().min() {
            self.flag(match which {
                0 => DataError::Nul,
                1 => DataError::LineTooLong,
                _ => DataError::TooBig,
            });
            return;
        }
        let needed = (self.body.len() + bytes.len()) as u64;
        if needed > self.budget.held() && !self.reserve(needed) {
            self.flag(DataError::NoStorage);
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    /// Grows the reservation to at least `needed` octets, a
    /// [`RESERVE_STEP`] ahead when the budget allows (one shared-counter
    /// update per step, not per line); exactly when it is tight.
    fn reserve(&mut self, needed: u64) -> bool {
        let held = self.budget.held();
        let ahead = needed
            .saturating_add(RESERVE_STEP)
            .min(self.max_size as u64)
            .max(needed);
        self.budget.grow((ahead - held) as usize) || self.budget.grow((needed - held) as usize)
    }

    fn end_line(&mut self) {
        self.push(b"\r\n");
        self.line_len = 0;
        self.state = State::LineStart;
    }

    /// Consumes bytes from `input`. Returns how many were used and, once the
    /// terminator has been seen, `true`; bytes after the terminator are left
    /// for the command phase (pipelining).
    pub fn ingest(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Text => {
                    // Fast path: copy the run of ordinary bytes at once.
                    let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    if run > 0 {
                        self.push(&input[i..i + run]);
                        i += run;
                        continue;
                    }
                    self.text_byte(b);
                }
                State::LineStart => match b {
                    b'.' => self.state = State::Dot,
                    _ => {
                        self.state = State::Text;
                        self.text_byte(b);
                    }
                },
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    _ => {
                        // Dot-stuffed line: the leading dot is dropped.
                        self.state = State::Text;
                        self.text_byte(b);
                    }
                },
                State::DotCr => {
                    if b == b'\n' {
                        return (i + 1, true);
                    }
                    self.flag(DataError::BareLineEnding);
                    self.state = State::Text;
                    self.text_byte(b);
                }
                State::Cr => match b {
                    b'\n' => self.end_line(),
                    _ => {
                        self.flag(DataError::BareLineEnding);
                        self.state = State::Text;
                        self.text_byte(b);
                    }
                },
            }
            i += 1;
        }
        (i, false)
    }

    /// One byte in the Text state (also used by the other states).
    fn text_byte(&mut self, b: u8) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.flag(DataError::BareLineEnding);
                self.push(b"\n");
            }
            _ => self.push(&[b]),
        }
    }

    /// The verdict, once `ingest` has returned `true`: the body with its
    /// reservation (to be held until the message is answered), or why the
    /// message is refused.
    pub fn finish(mut self) -> Result<(Vec<u8>, Reservation), DataError> {
        match self.error {
            Some(e) => Err(e),
            None => {
                // What was reserved ahead goes back: the body holds exactly
                // its length from here on.
                self.budget.shrink_to(self.body.len() as u64);
                Ok((self.body, self.budget))
            }
        }
    }
}

/// The same strictness for a message that arrived by BDAT (RFC 3030): every
/// line ends in CRLF, no NUL, no line over `max_line` octets (CRLF included).
pub fn check_strict(body: &[u8], max_line: usize) -> Result<(), DataError> {
    let mut line = 0usize;
    for (i, &b) in body.iter().enumerate() {
        line += 1;
        match b {
            0 => return Err(DataError::Nul),
            b'\r' if body.get(i + 1) != Some(&b'\n') => return Err(DataError::BareLineEnding),
            b'\n' if i == 0 || body[i - 1] != b'\r' => return Err(DataError::BareLineEnding),
            b'\n' => {
                if line > max_line {
                    return Err(DataError::LineTooLong);
                }
                line = 0;
            }
            _ => {}
        }
    }
    if line > max_line {
        return Err(DataError::LineTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::DataBudget;

    /// A receiver with a budget of its own and no memory limit.
    fn receiver(max_size: usize, max_line: usize) -> DataReceiver {
        DataReceiver::new(max_size, max_line, Reservation::unlimited())
    }

    /// The verdict without the reservation.
    fn body(d: DataReceiver) -> Result<Vec<u8>, DataError> {
        d.finish().map(|(body, _)| body)
    }

    fn run(input: &[u8]) -> (usize, bool, Result<Vec<u8>, DataError>) {
        let mut d = receiver(1 << 20, 1000);
        let (n, done) = d.ingest(input);
        (n, done, body(d))
    }

    #[test]
    fn plain_message_and_unstuffing() {
        let (n, done, body) = run(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
        assert!(done);
        assert_eq!(n, 24);
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\n.dot\r\n");
    }

    #[test]
    fn empty_message() {
        let (n, done, body) = run(b".\r\n");
        assert!(done && n == 3);
        assert_eq!(body.unwrap(), b"");
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let input = b"a\r\n..b\r\n.c\r\n\r\n.\r\n";
        let mut d = receiver(1 << 20, 1000);
        let mut done = false;
        for (i, b) in input.iter().enumerate() {
            let (n, d2) = d.ingest(std::slice::from_ref(b));
            assert_eq!(n, 1);
            done = d2;
            if done {
                assert_eq!(i, input.len() - 1);
            }
        }
        assert!(done);
        assert_eq!(body(d).unwrap(), b"a\r\n.b\r\nc\r\n\r\n");
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for seq in [
            &b"x\n.\nMAIL FROM:<a@b.c>\r\n"[..],
            b"x\n.\r\nMAIL FROM:<a@b.c>\r\n",
            b"x\r.\rMAIL FROM:<a@b.c>\r\n",
            b"x\r\n.\nMAIL FROM:<a@b.c>\r\n",
            b"x\r\n.\rMAIL FROM:<a@b.c>\r\n",
        ] {
            let mut d = receiver(1 << 20, 1000);
            let (n, done) = d.ingest(seq);
            assert!(!done, "{seq:?} ended DATA");
            assert_eq!(n, seq.len());
            let (_, done) = d.ingest(b"\r\n.\r\n");
            assert!(done);
            assert_eq!(body(d), Err(DataError::BareLineEnding), "{seq:?}");
        }
    }

    #[test]
    fn strict_check_for_bdat() {
        assert_eq!(check_strict(b"a\r\nb\r\n", 1000), Ok(()));
        for bad in [&b"a\nb"[..], b"a\rb", b"a\r\n.\n", b"\n", b"x\r"] {
            assert_eq!(
                check_strict(bad, 1000),
                Err(DataError::BareLineEnding),
                "{bad:?}"
            );
        }
        assert_eq!(check_strict(b"a\0\r\n", 1000), Err(DataError::Nul));
        assert_eq!(check_strict(b"abcd\r\n", 5), Err(DataError::LineTooLong));
    }

    #[test]
    fn nul_is_refused() {
        let mut d = receiver(1 << 20, 1000);
        let (_, done) = d.ingest(b"a\0b\r\n.\r\n");
        assert!(done);
        assert_eq!(body(d), Err(DataError::Nul));
    }

    #[test]
    fn limits() {
        let mut d = receiver(10, 1000);
        let (_, done) = d.ingest(b"0123456789abcdef\r\n.\r\n");
        assert!(done);
        assert_eq!(body(d), Err(DataError::TooBig));
        let mut d = receiver(1 << 20, 8);
        let (_, done) = d.ingest(b"0123456\r\n01234567\r\n.\r\n");
        assert!(done);
        assert_eq!(body(d), Err(DataError::LineTooLong));
    }

    // Finding "DATA flood": once the shared budget is spent, the rest of the
    // message is read but not stored, the end is still found, and what was
    // held is released at once.
    #[test]
    fn spent_budget_discards_the_rest_and_releases() {
        let budget = DataBudget::new();
        let mut d = DataReceiver::new(1 << 20, 1000, Reservation::new(&budget, 20));
        let (_, done) = d.ingest(b"0123456789\r\n");
        assert!(!done);
        assert_eq!(budget.in_use(), 12);
        let (n, done) = d.ingest(b"0123456789\r\nmore\r\n.\r\nQUIT\r\n");
        assert!(done, "the terminator is still found");
        assert_eq!(n, 21, "bytes after the terminator are left");
        assert_eq!(budget.in_use(), 0, "released when the budget ran out");
        assert_eq!(body(d), Err(DataError::NoStorage));
        // A message that fits keeps its reservation until the body is
        // answered (the reservation dropped).
        let mut d = DataReceiver::new(1 << 20, 1000, Reservation::new(&budget, 20));
        let (_, done) = d.ingest(b"abc\r\n.\r\n");
        assert!(done);
        let (kept, held) = d.finish().unwrap();
        assert_eq!(kept, b"abc\r\n");
        assert_eq!(budget.in_use(), 5);
        drop(held);
        assert_eq!(budget.in_use(), 0);
    }
}
