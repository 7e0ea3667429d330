//! Sans-IO framing of SMTP command lines.
//!
//! [`LineCodec::decode`] looks at buffered bytes and returns the next line
//! (without its line ending), `Ok(None)` when more bytes are needed, or
//! [`LineError::TooLong`] once the line passes the limit; after that error the
//! codec discards input up to the next line end, so one over-long line costs
//! one reply, not the session. Commands may end in CRLF or a lone LF (the CR
//! is stripped); the strict CRLF rule that defeats smuggling applies to DATA,
//! which [`crate::data`] handles.

/// A framing failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// The line exceeded the limit; bytes until its end will be discarded.
    TooLong,
}

/// Stateful line splitter for the command phase.
#[derive(Debug)]
pub struct LineCodec {
    /// Longest line accepted, line ending included.
    max: usize,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
}

/// What [`LineCodec::decode`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole line: it is `buf[..text_len]`; drop `consumed` bytes.
    Line { consumed: usize, text_len: usize },
    /// Part of an over-long line, swallowed; drop this many bytes.
    Skipped(usize),
}

impl LineCodec {
    /// A codec accepting lines of at most `max` octets, line ending included.
    pub fn new(max: usize) -> LineCodec {
        LineCodec {
            max,
            discarding: false,
        }
    }

    /// Finds the next frame in `buf`. On `Err`, the caller drops the returned
    /// count of bytes and answers "line too long".
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<Frame>, (LineError, usize)> {
        if buf.is_empty() {
            return Ok(None);
        }
        let nl = buf.iter().position(|b| *b == b'\n');
        if self.discarding {
            return match nl {
                Some(i) => {
                    self.discarding = false;
                    Err((LineError::TooLong, i + 1))
                }
                None => Ok(Some(Frame::Skipped(buf.len()))),
            };
        }
        match nl {
            Some(i) if i + 1 > self.max => Err((LineError::TooLong, i + 1)),
            Some(i) => {
                let text_len = if i > 0 && buf[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                Ok(Some(Frame::Line {
                    consumed: i + 1,
                    text_len,
                }))
            }
            None if buf.len() >= self.max => {
                self.discarding = true;
                Ok(Some(Frame::Skipped(buf.len())))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let mut c = LineCodec::new(16);
        assert_eq!(c.decode(b"NOOP"), Ok(None));
        assert_eq!(
            c.decode(b"NOOP\r\nQUIT\r\n"),
            Ok(Some(Frame::Line {
                consumed: 6,
                text_len: 4
            }))
        );
        assert_eq!(
            c.decode(b"QUIT\n"),
            Ok(Some(Frame::Line {
                consumed: 5,
                text_len: 4
            }))
        );
    }

    #[test]
    fn too_long_costs_one_reply() {
        let mut c = LineCodec::new(8);
        // Complete long line: error and skip it.
        assert_eq!(
            c.decode(b"0123456789\r\nNOOP\r\n"),
            Err((LineError::TooLong, 12))
        );
        // Long line arriving in pieces: swallow, then error at its end.
        assert_eq!(c.decode(b"0123456789"), Ok(Some(Frame::Skipped(10))));
        assert_eq!(c.decode(b"abc\r\nNOOP\r\n"), Err((LineError::TooLong, 5)));
        assert_eq!(
            c.decode(b"NOOP\r\n"),
            Ok(Some(Frame::Line {
                consumed: 6,
                text_len: 4
            }))
        );
    }
}
