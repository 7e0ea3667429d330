//! The supervisor side: how the process is started, kept alive and stopped.
//!
//! [`supervise`] is `postern run` and the Windows service (level 3 of the
//! blast-radius ladder: binds the sockets, restarts the gateway, names the
//! suspects of a death); [`eventlog`] writes the Windows event log; [`listen`] binds the listening sockets (for the supervisor, or an
//! unsupervised gateway); [`handoff`] owns every environment variable and
//! pipe message the supervisor and the gateway share; [`signals`] turns
//! process signals into events; [`notify`] speaks systemd's sd_notify;
//! `winservice` is the Windows service. May use [`crate::config`] and the
//! gateway's assembly (to validate a configuration before a reload), never
//! the mail flow.

pub mod eventlog;
pub mod handoff;
pub mod listen;
#[cfg(unix)]
pub mod notify;
pub mod signals;
pub mod supervise;
#[cfg(windows)]
pub mod winservice;
