//! Postern's durable queue on sled.
//!
//! The queue is the truth: a message exists once its record and body are in
//! sled *and flushed to disk*; only then may the listener answer 250.
//!
//! Entry point: [`Queue::open`], which recovers the store and returns the
//! [`Queue`] with its state transitions (enqueue, claim with a lease,
//! complete, reschedule, hold, release, quarantine, delete). Inside, private
//! modules each do one job:
//!
//! - `record`: the versioned, checksummed record format; a record that fails
//!   to decode is moved aside to quarantine, never fatal.
//! - `keys`: big-endian `due ++ id` keys so due work is one range scan.
//! - `commit`: group commit, one fsync for every enqueue waiting at once.
//! - `segments`: bodies in append-only segment files, synced by the group
//!   commit and deleted once empty.
//! - `tally`: counters by state, minute and domain ([`Shape`]), kept by
//!   every transition, so counting never walks the queue.
//! - `spool`: one file per large body, as versions before segments wrote
//!   them (read and removed only).
//! - `store`: [`Queue`] itself, its state transitions and recovery.
//! - `error`: [`QueueError`] and the opaque [`StorageError`] that carries a
//!   storage failure with its cause.
//!
//! States ([`State`]): `Ready` and `Deferred` messages sit in the due index;
//! `Leased` ones are being delivered (a lease that outlives its process is
//! void: recovery makes every leased message due again); `Held` waits for an
//! administrator; `Quarantine` keeps a message that crashed or could not be
//! decoded, with the reason ([`Corruption`] says why a stored value could not
//! be trusted). No sled type appears in this crate's API.

#![warn(missing_docs)]

mod commit;
mod error;
mod keys;
mod record;
pub mod salvage;
mod segments;
mod spool;
mod store;
mod tally;

pub use error::{QueueError, StorageError};
pub use record::{decode as decode_record, Corruption, QuarantineInfo, Record, State};
pub use store::{Queue, QueueOptions, Recovery, StateCounts, DEFAULT_SEGMENT_SIZE};
pub use tally::{Minutes, Shape, StateShape};
