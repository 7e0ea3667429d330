//! Postern's conversion core: pure functions from bytes and policy to bytes
//! and a verdict. No I/O, no clocks it cannot be given, no panics on input.
//!
//! Now: [`content`] walks a message's MIME structure within limits (the
//! work content workers do), [`dsn`] builds RFC 3464 delivery status
//! notifications, and [`headers`] splits a message into header block and body.

pub mod auth;
pub mod content;
pub mod disclaimer;
pub mod dkim;
pub mod downgrade;
pub mod dsn;
pub mod encode;
pub mod headers;
pub mod outbound;
pub mod tnef;

pub use content::{inspect, ContentError, ContentLimits, ContentReport};

pub use dsn::{build_dsn, DsnInput, DsnRecipient};
