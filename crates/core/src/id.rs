//! Queue identifiers.
//!
//! A [`QueueId`] is 12 bytes: 6 bytes of milliseconds since the epoch, then 6
//! random bytes. It sorts by arrival time, is unique without coordination,
//! prints as 24 lower-case hex digits, and parses back with [`QueueId::parse`]
//! (which fails, never panics, on bad input).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A message's identity in the queue, logs, Received headers and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(pub [u8; 12]);

impl QueueId {
    /// A fresh id for a message arriving now.
    pub fn generate() -> QueueId {
        let ms = crate::now_ms().to_be_bytes();
        let random: [u8; 6] = rand::random();
        let mut b = [0u8; 12];
        b[..6].copy_from_slice(&ms[2..]);
        b[6..].copy_from_slice(&random);
        QueueId(b)
    }

    /// Parses the 24-hex-digit form.
    pub fn parse(s: &str) -> Option<QueueId> {
        let s = s.as_bytes();
        if s.len() != 24 {
            return None;
        }
        let mut b = [0u8; 12];
        for (i, pair) in s.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            b[i] = (hi * 16 + lo) as u8;
        }
        Some(QueueId(b))
    }

    /// Builds an id from raw key bytes read back from storage.
    pub fn from_slice(b: &[u8]) -> Option<QueueId> {
        <[u8; 12]>::try_from(b).ok().map(QueueId)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = QueueId::generate();
        assert_eq!(QueueId::parse(&id.to_string()), Some(id));
        assert_eq!(QueueId::parse("zz"), None);
        assert_eq!(QueueId::parse("zzzzzzzzzzzzzzzzzzzzzzzz"), None);
    }
}
