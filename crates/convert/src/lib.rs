//! Postern's conversion core: functions from a message and policy to bytes
//! and a verdict. No I/O but the DNS queries of inbound authentication, no
//! clocks it cannot be given, no panics on input.
//!
//! A message is parsed once into a [`Message`] view (header section, body,
//! header fields located) and every stage takes that view:
//! - [`inspect`] walks the MIME structure within [`ContentLimits`] (the work
//!   content workers do), refusing with a typed [`ContentError`];
//! - [`convert_outbound`] runs the outbound pipeline under an
//!   [`OutboundPolicy`]: TNEF, header hygiene, [`rewrite_address`], the
//!   disclaimer, repair, DKIM signing with a [`DkimKey`];
//! - [`authenticate`] runs SPF, DKIM and DMARC on inbound mail through an
//!   [`Authenticator`] built from [`DnsSettings`].
//!
//! Besides: [`to_seven_bit`] is the 8BITMIME downgrade delivery applies for
//! a 7-bit hop, [`build_dsn`] builds RFC 3464 delivery status notifications,
//! and [`encode`], [`tnef`] and [`rtf`] are the codecs, public for tests,
//! fixtures and fuzzing.
//! No mail-auth or hickory type appears in this API: the crate owns its
//! boundary types and its errors.

#![warn(missing_docs)]

mod auth;
mod authenticator;
mod content;
mod disclaimer;
mod dkim;
mod downgrade;
mod dsn;
pub mod encode;
mod message;
mod outbound;
pub mod rtf;
pub mod tnef;

pub use auth::{authenticate, spf_passed, Inbound, InboundPolicy, QuarantineAction, Session};
pub use authenticator::{Authenticator, DkimCheck, DnsSettings, ResolverError};
pub use content::{inspect, ContentError, ContentLimits, ContentReport};
pub use dkim::{DkimError, DkimKey};
pub use downgrade::to_seven_bit;
pub use dsn::{build_dsn, DsnInput, DsnRecipient};
pub use message::{HeaderField, Message};
pub use outbound::{convert_outbound, rewrite_address, Outbound, OutboundPolicy};
pub use tnef::TnefMode;
