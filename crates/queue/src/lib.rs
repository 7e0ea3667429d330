//! Postern's durable queue on sled.
//!
//! The queue is the truth: a message exists once its record and body are in
//! sled *and flushed to disk*; only then may the listener answer 250.
//!
//! - [`record`]: the versioned, checksummed record format; a record that fails
//!   to decode is moved aside to quarantine, never fatal.
//! - [`keys`]: big-endian `due ++ id` keys so due work is one range scan.
//! - [`commit`]: group commit, one fsync for every enqueue waiting at once.
//! - [`spool`]: bodies too large for sled's fsynced log, as fsynced files.
//! - [`store`]: [`Queue`], the state transitions (enqueue, claim with a lease,
//!   complete, reschedule, hold, release, quarantine, delete) and recovery.
//!
//! States ([`State`]): `Ready` and `Deferred` messages sit in the due index;
//! `Leased` ones are being delivered (a lease that outlives its process is
//! void: recovery makes every leased message due again); `Held` waits for an
//! administrator; `Quarantine` keeps a message that crashed or could not be
//! decoded, with the reason. No sled type appears in this crate's API.

pub mod commit;
pub mod keys;
pub mod record;
pub mod spool;
pub mod store;

pub use record::{QuarantineInfo, Record, State};
pub use store::{Queue, QueueOptions, Recovery, StateCounts};

use postern_core::QueueId;

/// Everything that can go wrong at the queue boundary.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage error: {0}")]
    Storage(String),
    #[error("queue flush failed: {0}")]
    Flush(String),
    #[error("record {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("no message {0} in the queue")]
    NotFound(QueueId),
    #[error("message {id} is {state:?}; cannot {action}")]
    WrongState {
        id: QueueId,
        state: State,
        action: &'static str,
    },
}

impl From<std::io::Error> for QueueError {
    fn from(e: std::io::Error) -> Self {
        QueueError::Storage(e.to_string())
    }
}

impl From<sled::Error> for QueueError {
    fn from(e: sled::Error) -> Self {
        QueueError::Storage(e.to_string())
    }
}
