//! The stored record format.
//!
//! Every value written is `version (1 byte) ++ crc32 of payload (4 bytes LE)
//! ++ payload`. Message records carry [`Record`] in bincode (version 2,
//! varints, a third of the JSON's size: sled rewrites records as they
//! change, so their size is most of the database's) or, written by earlier
//! versions and still read, JSON (version 1); body entries say where the
//! body is. [`decode`] checks version and checksum and returns a
//! [`Corruption`] on failure, which recovery uses to quarantine the record
//! instead of dying. Decoding is bounded: a record longer than
//! [`MAX_RECORD`] is refused, whatever its length fields say.

use crate::segments::Location;
use postern_core::Envelope;
use serde::{Deserialize, Serialize};

/// Format version of frames other than records, and of JSON records.
pub(crate) const VERSION: u8 = 1;
/// Format version of bincode records.
pub(crate) const RECORD_BIN: u8 = 2;
/// The longest record decoded (a million recipients' worth of text would
/// not fit; the listener's recipient limit keeps real ones far below).
pub(crate) const MAX_RECORD: u64 = 16 << 20;
const HEADER: usize = 5;

/// Why a stored value cannot be trusted. Its text says what was found; the
/// underlying error (JSON, file system), if any, is its source.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Corruption(#[from] Found);

/// What the checks found (private, so it may change freely).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Found {
    #[error("record too short ({0} bytes)")]
    TooShort(usize),
    #[error("unknown record version {0}")]
    UnknownVersion(u8),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown body storage tag")]
    UnknownBodyTag,
    #[error("undecodable record: {0}")]
    Undecodable(#[source] serde_json::Error),
    #[error("undecodable record: {0}")]
    UndecodableBinary(#[source] bincode::Error),
    #[error("key and id differ")]
    KeyMismatch,
    #[error("spool file: {0}")]
    SpoolFile(#[source] std::io::Error),
    #[error("spool file length or checksum mismatch")]
    SpoolMismatch,
    #[error("body segment {0}: {1}")]
    SegmentFile(u32, #[source] std::io::Error),
    #[error("body in segment {0} is out of bounds or fails its checksum")]
    SegmentMismatch(u32),
}

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Due for its first attempt.
    Ready,
    /// Waiting for a retry.
    Deferred,
    /// Being delivered; the lease ends at `lease_until_ms`.
    Leased,
    /// Stopped by an administrator.
    Held,
    /// Set aside after crashes or a decode failure.
    Quarantine,
}

impl State {
    /// The lower-case name used by the CLI, the admin API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Deferred => "deferred",
            State::Leased => "leased",
            State::Held => "held",
            State::Quarantine => "quarantine",
        }
    }

    /// Parses a state name, case-insensitively; also accepts "active"
    /// (ready), "hold" and "quarantined".
    pub fn parse(s: &str) -> Option<State> {
        Some(match s.to_ascii_lowercase().as_str() {
            "ready" | "active" => State::Ready,
            "deferred" => State::Deferred,
            "leased" => State::Leased,
            "held" | "hold" => State::Held,
            "quarantine" | "quarantined" => State::Quarantine,
            _ => return None,
        })
    }
}

/// Why and when a message was quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineInfo {
    /// Stage that failed: receive, content, delivery, queue, decode.
    pub stage: String,
    /// Panic message, signal, deadline or decode error.
    pub reason: String,
    /// When it was quarantined (ms since the epoch).
    pub at_ms: u64,
}

/// One queued message's metadata (the body is stored separately).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The SMTP transaction, with each recipient's status.
    pub envelope: Envelope,
    /// Where the message stands.
    pub state: State,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the message is next due (ms since the epoch).
    pub due_ms: u64,
    /// End of the current lease, when `Leased`.
    pub lease_until_ms: u64,
    /// Crashes charged to this message.
    pub crashes: u32,
    /// Last temporary failure, for `queue list`.
    pub last_error: Option<String>,
    /// Why and when, when `Quarantine`.
    pub quarantine: Option<QuarantineInfo>,
}

impl Record {
    /// A new message, `Ready` and due at `due_ms`.
    pub fn new(envelope: Envelope, due_ms: u64) -> Record {
        Record {
            envelope,
            state: State::Ready,
            attempts: 0,
            due_ms,
            lease_until_ms: 0,
            crashes: 0,
            last_error: None,
            quarantine: None,
        }
    }
}

/// Frames a payload with version and checksum.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.push(VERSION);
    v.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Checks version and checksum; returns the payload.
pub(crate) fn unframe(raw: &[u8]) -> Result<&[u8], Corruption> {
    unframe_as(raw, VERSION)
}

/// [`unframe`] for a frame of version `version`.
fn unframe_as(raw: &[u8], version: u8) -> Result<&[u8], Corruption> {
    if raw.len() < HEADER {
        return Err(Found::TooShort(raw.len()).into());
    }
    if raw[0] != version {
        return Err(Found::UnknownVersion(raw[0]).into());
    }
    let stored = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let payload = &raw[HEADER..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(Found::Checksum { stored, computed }.into());
    }
    Ok(payload)
}

/// Where a body's bytes are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoredBody<'a> {
    /// In sled itself.
    Inline(&'a [u8]),
    /// In the spool directory; length and CRC32 of the file (written by
    /// versions before body segments; still read).
    External { len: u64, crc: u32 },
    /// In a body segment.
    Segment(Location),
}

/// A body stored in sled itself (how versions before body segments stored
/// small bodies; kept to test that such queues are still read).
#[cfg(test)]
pub(crate) fn frame_inline(body: &[u8]) -> Vec<u8> {
    // frame(&[0] ++ body), built in one buffer without a copy in between.
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[0]);
    crc.update(body);
    let mut v = Vec::with_capacity(HEADER + 1 + body.len());
    v.push(VERSION);
    v.extend_from_slice(&crc.finalize().to_le_bytes());
    v.push(0);
    v.extend_from_slice(body);
    v
}

/// A reference to a body in the spool (written by versions before body
/// segments; kept to test that such queues are still read).
#[cfg(test)]
pub(crate) fn frame_external(body: &[u8]) -> Vec<u8> {
    let mut p = vec![1];
    p.extend_from_slice(&(body.len() as u64).to_le_bytes());
    p.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    frame(&p)
}

/// A reference to a body in a segment: tag 2, segment (u32), offset, length
/// (u64 each) and CRC32, little-endian.
pub(crate) fn frame_segment(at: Location) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + 4 + 8 + 8 + 4);
    p.push(2);
    p.extend_from_slice(&at.seg.to_le_bytes());
    p.extend_from_slice(&at.off.to_le_bytes());
    p.extend_from_slice(&at.len.to_le_bytes());
    p.extend_from_slice(&at.crc.to_le_bytes());
    frame(&p)
}

/// Checks a stored body's frame and says where its bytes are.
pub(crate) fn unframe_body(raw: &[u8]) -> Result<StoredBody<'_>, Corruption> {
    let p = unframe(raw)?;
    match p.split_first() {
        Some((0, body)) => Ok(StoredBody::Inline(body)),
        Some((1, rest)) => {
            // Exactly 12 bytes: length (8) and CRC32 (4), little-endian.
            let len: Option<[u8; 8]> = rest.get(..8).and_then(|b| b.try_into().ok());
            let crc: Option<[u8; 4]> = rest.get(8..).and_then(|b| b.try_into().ok());
            match (len, crc) {
                (Some(len), Some(crc)) => Ok(StoredBody::External {
                    len: u64::from_le_bytes(len),
                    crc: u32::from_le_bytes(crc),
                }),
                _ => Err(Found::UnknownBodyTag.into()),
            }
        }
        Some((2, rest)) if rest.len() == 24 => {
            let u32_at = |i: usize| rest.get(i..i + 4).and_then(|b| b.try_into().ok());
            let u64_at = |i: usize| rest.get(i..i + 8).and_then(|b| b.try_into().ok());
            match (u32_at(0), u64_at(4), u64_at(12), u32_at(20)) {
                (Some(seg), Some(off), Some(len), Some(crc)) => Ok(StoredBody::Segment(Location {
                    seg: u32::from_le_bytes(seg),
                    off: u64::from_le_bytes(off),
                    len: u64::from_le_bytes(len),
                    crc: u32::from_le_bytes(crc),
                })),
                _ => Err(Found::UnknownBodyTag.into()),
            }
        }
        _ => Err(Found::UnknownBodyTag.into()),
    }
}

fn bincode_options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new().with_limit(MAX_RECORD)
}

/// An envelope for the crate's tests: a fresh id, received at
/// `received_ms`, for the recipients `to`.
#[cfg(test)]
pub(crate) fn test_envelope(received_ms: u64, to: &[&str]) -> Envelope {
    use postern_core::{Address, Recipient};
    let to = to
        .iter()
        .map(|t| Recipient::new(Address::parse(t).unwrap()))
        .collect();
    Envelope::new(None, to, "127.0.0.1", "x", received_ms, 2)
}

/// A record, framed for storage.
pub(crate) fn encode(r: &Record) -> Vec<u8> {
    use bincode::Options;
    // Serialising plain data cannot fail (nor reach the limit: the
    // listener bounds recipients and the lengths of every text).
    let payload = bincode_options().serialize(r).unwrap_or_default();
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.push(RECORD_BIN);
    v.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    v.extend_from_slice(&payload);
    v
}

/// Checks and decodes a stored record (bincode, or JSON of version 1).
pub fn decode(raw: &[u8]) -> Result<Record, Corruption> {
    use bincode::Options;
    if raw.first() == Some(&RECORD_BIN) {
        let payload = unframe_as(raw, RECORD_BIN)?;
        return bincode_options()
            .deserialize(payload)
            .map_err(|e| Found::UndecodableBinary(e).into());
    }
    let payload = unframe(raw)?;
    serde_json::from_slice(payload).map_err(|e| Found::Undecodable(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record::new(test_envelope(1, &["a@b.test"]), 5)
    }

    /// The reason's text, as recovery logs it.
    fn why(raw: &[u8]) -> String {
        decode(raw).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_and_corruption() {
        let r = rec();
        let mut raw = encode(&r);
        assert_eq!(decode(&raw).unwrap(), r);
        let last = raw.len() - 2;
        raw[last] ^= 0x40;
        assert!(why(&raw).contains("checksum"));
        assert!(why(&[9, 0, 0, 0, 0]).contains("version"));
        assert!(why(&[1]).contains("short"));
        assert!(why(&frame(b"{not json")).contains("undecodable"));
        // Records written as JSON (version 1) are still read.
        let json = frame(&serde_json::to_vec(&r).unwrap());
        assert_eq!(decode(&json).unwrap(), r);
        assert!(encode(&r).len() * 2 < json.len(), "bincode is the smaller");
        // A length field claiming more than the limit is refused, not
        // allocated.
        let mut huge = vec![RECORD_BIN, 0, 0, 0, 0];
        let payload = [12u8, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        huge[1..5].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        huge.extend_from_slice(&payload);
        assert!(why(&huge).contains("undecodable"));
        // The JSON error is kept as the source, not only as text.
        let e = decode(&frame(b"{not json")).unwrap_err();
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn bodies_inline_and_external() {
        let body = b"hello";
        assert_eq!(
            unframe_body(&frame_inline(body)).unwrap(),
            StoredBody::Inline(body)
        );
        assert_eq!(
            unframe_body(&frame_external(body)).unwrap(),
            StoredBody::External {
                len: 5,
                crc: crc32fast::hash(body)
            }
        );
        let at = Location {
            seg: 7,
            off: 1 << 33,
            len: 5,
            crc: 9,
        };
        assert_eq!(
            unframe_body(&frame_segment(at)).unwrap(),
            StoredBody::Segment(at)
        );
        assert!(unframe_body(&frame_segment(at)[..20]).is_err());
        let bad = unframe_body(&frame(&[1, 2, 3])).unwrap_err();
        assert_eq!(bad.to_string(), "unknown body storage tag");
        assert!(unframe_body(&frame(&[7])).is_err());
    }
}
