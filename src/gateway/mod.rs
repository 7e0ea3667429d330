//! The gateway process: everything between the listening socket and the
//! next hop.
//!
//! [`wiring`] starts the parts and stops them; [`assemble`] builds them from
//! a configuration and [`reload`] swaps them ([`live`] holds what a reload
//! may replace); [`intake`] is where a message goes from the end of DATA to
//! `250` (the one place that answers it); [`scheduler`] takes due messages
//! from the queue and delivers them; [`settle`] decides, as pure functions,
//! what an attempt or a crash does to a message (statuses, retry schedule,
//! expiry, DSNs, quarantine); [`pressure`] is back pressure; [`dns`] counts lookups;
//! [`private`] makes files an older version left readable private.
//! [`crash`] is the crash bookkeeping of the blast-radius ladder. Content
//! work runs through [`crate::content`]; metrics and the tracking log are in
//! [`crate::ops`].

pub mod assemble;
pub mod crash;
pub mod delay;
pub mod dns;
pub mod intake;
pub mod live;
pub mod pressure;
pub mod private;
pub mod reload;
pub mod scheduler;
pub mod settle;
pub mod transfer;
pub mod wiring;
