//! Building the conversion core's policies from configuration, and the
//! per-message request that goes with a message to content processing.
//!
//! [`Conversion::from_config`] loads DKIM keys and the canonical map (so
//! `check-config` reports a bad key file), [`Conversion::authenticator`]
//! builds the DNS client for SPF/DKIM/DMARC (inside a runtime). [`Meta`] is
//! what intake knows about a message that the content stage needs.

use crate::config::Config;
use postern_convert::{
    Authenticator, ContentLimits, DkimKey, DnsSettings, InboundPolicy, OutboundPolicy,
    QuarantineAction, ResolverError, TnefMode,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Everything content processing needs, built once per process.
pub struct Conversion {
    pub limits: ContentLimits,
    pub outbound: OutboundPolicy,
    pub inbound: Option<InboundPolicy>,
    /// DNS servers for the authentication checks (empty: system).
    pub nameservers: Vec<std::net::SocketAddr>,
    pub dns_timeout: std::time::Duration,
}

/// What intake tells content processing about one message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    /// From a trusted (internal) client: the outbound pipeline applies.
    pub outbound: bool,
    pub client_ip: String,
    pub helo: String,
    /// Envelope sender; empty for `<>`.
    pub mail_from: String,
    pub rcpt_domains: Vec<String>,
    /// Unique token (the queue id) for generated Message-IDs.
    pub token: String,
    pub now_ms: u64,
}

fn tnef_mode(s: &str) -> TnefMode {
    match s {
        "leave" => TnefMode::Leave,
        "strip" => TnefMode::Strip,
        _ => TnefMode::Convert,
    }
}

/// The time the authentication checks of one message may take:
/// `convert.auth_timeout`, but never more than half the worker's message
/// deadline, so a DNS outage ends in `temperror`, never in a killed worker
/// (a crash charged to a good message).
fn auth_budget(auth_timeout: Duration, message_deadline: Duration) -> Duration {
    auth_timeout.min(message_deadline / 2)
}

impl Conversion {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Conversion> {
        let c = &cfg.convert;
        let limits = ContentLimits {
            max_header_bytes: c.max_header_size.0 as usize,
            max_depth: c.max_mime_depth,
            max_parts: c.max_mime_parts,
        };
        let mut dkim = Vec::new();
        for k in &c.dkim {
            let pem = std::fs::read(&k.key_file).map_err(|e| {
                anyhow::anyhow!(
                    "convert.dkim ({}): cannot read {}: {e}",
                    k.domain,
                    k.key_file.display()
                )
            })?;
            dkim.push(
                DkimKey::from_pem(&k.domain, &k.selector, &k.algorithm, &pem, &k.headers)
                    .map_err(|e| anyhow::anyhow!("convert.dkim ({}): {e}", k.domain))?,
            );
        }
        let canonical = match &c.canonical_map {
            None => HashMap::new(),
            Some(path) => read_map(path)?,
        };
        let authserv_id = if c.authserv_id.is_empty() {
            cfg.server.hostname.clone()
        } else {
            c.authserv_id.clone()
        };
        Ok(Conversion {
            limits,
            outbound: OutboundPolicy {
                limits,
                tnef: Some(tnef_mode(&c.tnef)),
                tnef_by_domain: c
                    .domain
                    .iter()
                    .map(|d| (d.domain.to_ascii_lowercase(), tnef_mode(&d.tnef)))
                    .collect(),
                strip_internal_received: c.strip_internal_received,
                strip_headers: c
                    .strip_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                masquerade: c
                    .masquerade
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_ascii_lowercase()))
                    .collect(),
                canonical,
                disclaimer: Some(c.disclaimer.clone()).filter(|d| !d.trim().is_empty()),
                add_missing: c.add_missing_headers,
                hostname: cfg.server.hostname.clone(),
                dkim,
            },
            inbound: c.authenticate.then(|| InboundPolicy {
                authserv_id,
                dmarc_reject: c.dmarc_reject,
                quarantine: if c.dmarc_quarantine == "hold" {
                    QuarantineAction::Hold
                } else {
                    QuarantineAction::Header
                },
                timeout: auth_budget(c.auth_timeout.0, cfg.workers.message_deadline.0),
            }),
            nameservers: cfg.delivery.nameservers.clone(),
            dns_timeout: cfg.delivery.dns_timeout.0,
        })
    }

    /// The DNS client for SPF/DKIM/DMARC. Call inside a tokio runtime.
    pub fn authenticator(&self) -> Result<Authenticator, ResolverError> {
        Authenticator::new(&DnsSettings {
            nameservers: self.nameservers.clone(),
            timeout: self.dns_timeout,
        })
    }
}

/// Reads "from to" address pairs, one per line; `#` starts a comment.
fn read_map(path: &std::path::Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!("convert.canonical_map: cannot read {}: {e}", path.display())
    })?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), None) if a.contains('@') && b.contains('@') => {
                map.insert(a.to_ascii_lowercase(), b.to_string());
            }
            _ => {
                anyhow::bail!(
                    "{}:{}: expected \"internal@address public@address\"",
                    path.display(),
                    i + 1
                )
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::auth_budget;
    use std::time::Duration;

    #[test]
    fn authentication_ends_well_before_the_worker_deadline() {
        let s = Duration::from_secs;
        assert_eq!(auth_budget(s(10), s(30)), s(10));
        assert_eq!(auth_budget(s(10), s(2)), s(1));
        assert_eq!(auth_budget(s(60), s(30)), s(15));
    }
}
