//! The listening sockets of one configuration: SMTP, implicit-TLS SMTP,
//! submission and admin. Bound here once, by the supervisor (which hands
//! them to the gateway by inheritance) or by an unsupervised gateway.

use crate::config::Config;
use anyhow::Context;
use std::net::{SocketAddr, TcpListener};

pub struct Sockets {
    pub smtp: Vec<TcpListener>,
    pub smtps: Vec<TcpListener>,
    pub submission: Vec<TcpListener>,
    pub admin: TcpListener,
}

fn bind_all(addrs: &[SocketAddr], what: &str) -> anyhow::Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|a| TcpListener::bind(a).with_context(|| format!("cannot listen for {what} on {a}")))
        .collect()
}

/// Binds every listener `cfg` names; the first failure is the error.
pub fn bind(cfg: &Config) -> anyhow::Result<Sockets> {
    Ok(Sockets {
        smtp: bind_all(&cfg.server.listen, "SMTP")?,
        smtps: bind_all(&cfg.tls.implicit_listen, "implicit TLS")?,
        submission: bind_all(&cfg.server.submission_listen, "submission")?,
        admin: bind_all(&[cfg.admin.listen], "admin HTTP")?
            .pop()
            .context("no admin listener")?,
    })
}
