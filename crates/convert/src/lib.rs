//! Postern's conversion core: pure functions from bytes and policy to bytes
//! and a verdict. No I/O, no clocks it cannot be given, no panics on input.
//!
//! Now: [`dsn`] builds RFC 3464 delivery status notifications, and
//! [`headers`] splits a message into header block and body.

pub mod dsn;
pub mod headers;

pub use dsn::{build_dsn, DsnInput, DsnRecipient};
