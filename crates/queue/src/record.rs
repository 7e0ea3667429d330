//! The stored record format.
//!
//! Every value written is `version (1 byte) ++ crc32 of payload (4 bytes LE)
//! ++ payload`. Message records carry JSON of [`Record`]; bodies carry the raw
//! message. [`decode`] checks version and checksum and returns a reason on
//! failure, which recovery uses to quarantine the record instead of dying.

use postern_core::Envelope;
use serde::{Deserialize, Serialize};

/// Current format version.
pub const VERSION: u8 = 1;
const HEADER: usize = 5;

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub fn name(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Deferred => "deferred",
            State::Leased => "leased",
            State::Held => "held",
            State::Quarantine => "quarantine",
        }
    }

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
    pub at_ms: u64,
}

/// One queued message's metadata (the body is stored separately).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub envelope: Envelope,
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
    pub quarantine: Option<QuarantineInfo>,
}

impl Record {
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
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + payload.len());
    v.push(VERSION);
    v.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Checks version and checksum; returns the payload.
pub fn unframe(raw: &[u8]) -> Result<&[u8], String> {
    if raw.len() < HEADER {
        return Err(format!("record too short ({} bytes)", raw.len()));
    }
    if raw[0] != VERSION {
        return Err(format!("unknown record version {}", raw[0]));
    }
    let want = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let payload = &raw[HEADER..];
    let got = crc32fast::hash(payload);
    if want != got {
        return Err(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        ));
    }
    Ok(payload)
}

/// Where a body's bytes are.
#[derive(Debug, PartialEq, Eq)]
pub enum StoredBody<'a> {
    Inline(&'a [u8]),
    /// In the spool directory; length and CRC32 of the file.
    External {
        len: u64,
        crc: u32,
    },
}

/// A body stored in sled itself.
pub fn frame_inline(body: &[u8]) -> Vec<u8> {
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

/// A reference to a body in the spool.
pub fn frame_external(body: &[u8]) -> Vec<u8> {
    let mut p = vec![1];
    p.extend_from_slice(&(body.len() as u64).to_le_bytes());
    p.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    frame(&p)
}

pub fn unframe_body(raw: &[u8]) -> Result<StoredBody<'_>, String> {
    let p = unframe(raw)?;
    match p.split_first() {
        Some((0, body)) => Ok(StoredBody::Inline(body)),
        Some((1, rest)) if rest.len() == 12 => {
            let len = u64::from_le_bytes(rest[..8].try_into().map_err(|_| "bad length")?);
            let crc = u32::from_le_bytes(rest[8..].try_into().map_err(|_| "bad crc")?);
            Ok(StoredBody::External { len, crc })
        }
        _ => Err("unknown body storage tag".into()),
    }
}

pub fn encode(r: &Record) -> Vec<u8> {
    // Serialising plain data to JSON cannot fail.
    frame(&serde_json::to_vec(r).unwrap_or_default())
}

pub fn decode(raw: &[u8]) -> Result<Record, String> {
    let payload = unframe(raw)?;
    serde_json::from_slice(payload).map_err(|e| format!("undecodable record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_core::{Address, QueueId, Recipient};

    fn rec() -> Record {
        Record::new(
            Envelope {
                id: QueueId::generate(),
                sender: None,
                recipients: vec![Recipient::new(Address::parse("a@b.test").unwrap())],
                client: "127.0.0.1".into(),
                helo: "x".into(),
                received_ms: 1,
                size: 2,
                eight_bit: false,
                message_id: None,
                smtputf8: false,
                dsn_ret_full: false,
                dsn_envid: None,
            },
            5,
        )
    }

    #[test]
    fn round_trip_and_corruption() {
        let r = rec();
        let mut raw = encode(&r);
        assert_eq!(decode(&raw), Ok(r));
        let last = raw.len() - 2;
        raw[last] ^= 0x40;
        assert!(decode(&raw).unwrap_err().contains("checksum"));
        assert!(decode(&[9, 0, 0, 0, 0]).unwrap_err().contains("version"));
        assert!(decode(&[1]).unwrap_err().contains("short"));
        assert!(decode(&frame(b"{not json"))
            .unwrap_err()
            .contains("undecodable"));
    }
}
