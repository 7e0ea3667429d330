//! Operations: what an administrator sees of a running gateway.
//!
//! [`admin`] is the admin HTTP endpoint (health, readiness, metrics, the
//! queue API in [`queue_api`]); [`metrics`] is the Prometheus registry;
//! [`tracking`] is the message tracking log; [`tlsrpt`] counts outbound TLS
//! sessions and sends TLS-RPT reports. The gateway reports into these;
//! they never drive mail.

pub mod admin;
pub mod metrics;
pub mod queue_api;
pub mod tlsrpt;
pub mod tracking;
