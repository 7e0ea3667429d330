//! Postern's outbound delivery.
//!
//! - [`resolve`]: the [`Resolver`] trait (MX and address lookups) and
//!   [`HickoryResolver`], its production implementation;
//! - [`nexthop`]: from a recipient domain to an ordered list of hops: static
//!   routes first, then MX (preference order, random within a preference,
//!   at most `max_mx_hosts`), implicit MX, null MX;
//! - [`smtp`]: one SMTP transaction on a lettre connection, with a typed
//!   [`Outcome`](postern_core::Outcome) per recipient;
//! - [`pool`]: idle connections kept per next-hop address for reuse;
//! - [`deliverer`]: [`Deliverer`], which ties them together with a global and
//!   a per-destination concurrency limit.
//!
//! No hickory or lettre type appears in this crate's public API.

pub mod deliverer;
pub mod nexthop;
pub mod pool;
pub mod resolve;
pub mod smtp;

pub use deliverer::{Deliverer, DeliveryLimits};
pub use nexthop::{Hop, Routes};
pub use resolve::{DnsError, HickoryResolver, MxRecord, Resolver};
