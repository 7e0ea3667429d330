//! Postern's shared domain types.
//!
//! Everything the other crates agree on lives here and nothing else: mail
//! addresses and SMTP paths ([`address`]), queue identifiers ([`id`]), the
//! envelope a message travels with ([`envelope`]), the typed outcome of a
//! delivery attempt per recipient ([`outcome`]), relay policy ([`relay`]),
//! human units for durations and sizes ([`units`]), base64 ([`base64`]) and
//! the date formats of mail headers and logs ([`date`]), and hop counting
//! for loop detection ([`hops`]). The configuration
//! schema is not here: it lives with the binary that reads it (and the
//! delivery crate owns its own sections). This crate does no I/O and depends on no other Postern
//! crate. Every fallible parse returns a typed error ([`AddressError`],
//! [`units::UnitError`], [`relay::RecipientListError`]), never a bare
//! string.

#![warn(missing_docs)]

pub mod address;
pub mod base64;
pub mod date;
pub mod envelope;
pub mod hops;
pub mod id;
pub mod outcome;
pub mod relay;
pub mod units;

pub use address::{Address, AddressError};
pub use envelope::{Envelope, Recipient, RecipientStatus};
pub use id::QueueId;
pub use outcome::{Outcome, Reason};
pub use relay::RelayPolicy;

/// Milliseconds since the Unix epoch, the one clock unit stored anywhere.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
