//! Content work: parsing and converting untrusted message content, the
//! stage that runs in `postern worker` processes (level 2 of the ladder).
//!
//! [`processor`] is the work and the pool the gateway calls; [`conversion`]
//! builds the conversion core's policies from the configuration and the
//! per-message meta; [`worker`] is the worker process's main loop. Uses the
//! `postern-convert` crate for the conversion itself and the
//! `postern-supervisor` crate for the process pool.

pub mod conversion;
pub mod processor;
pub mod worker;
