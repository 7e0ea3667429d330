//! `postern tls-policy check DOMAIN`: what outbound TLS applies to a
//! destination and why, worked out the way delivery does (routes, MX with
//! its DNSSEC status, the static level, the MTA-STS policy, the TLSA
//! records of each MX host), without connecting to it. The running daemon
//! answers it (`GET /tls-policy/<domain>` on the admin endpoint, with its
//! MTA-STS cache); when none answers, the command works it out itself (the
//! policy is then fetched, not cached) and says so (`"source": "local"`).
//! Human text, or one JSON object with `--json`. Exit 0 when the answer
//! was worked out, 1 when the configuration could not be loaded or used.

use super::{escape_controls, escape_json_controls};
use crate::config::Config;
use clap::Subcommand;
use postern_delivery::{PolicyReport, StsAnswer};

/// `postern tls-policy ...`
#[derive(Subcommand)]
pub enum TlsPolicyCmd {
    /// Print the TLS policy that applies to DOMAIN and why.
    Check {
        /// The recipient domain.
        domain: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command on `cfg`; `daemon` is the running daemon's admin
/// endpoint and token, when the configuration names one.
pub async fn run(
    cfg: &Config,
    daemon: Option<(std::net::SocketAddr, Option<String>)>,
    cmd: TlsPolicyCmd,
) -> anyhow::Result<()> {
    let TlsPolicyCmd::Check { domain, json } = cmd;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let from_daemon = match daemon {
        Some((admin, token)) => {
            let path = format!("/tls-policy/{domain}");
            match super::queue::request(admin, token.as_deref(), "GET", &path).await {
                Ok(answer) => {
                    let body = super::queue::answered(answer)?;
                    Some(serde_json::from_str::<serde_json::Value>(&body)?)
                }
                // Not running: work it out here.
                Err(_) => None,
            }
        }
        None => None,
    };
    let mut value = match from_daemon {
        Some(mut v) => {
            v["source"] = "daemon".into();
            v
        }
        None => {
            let conversion = crate::content::conversion::Conversion::from_config(cfg)?;
            let metrics = std::sync::Arc::new(crate::ops::metrics::Metrics::new()?);
            let deliverer = crate::gateway::assemble::deliverer(
                cfg,
                &conversion,
                &metrics,
                &crate::gateway::assemble::TlsWiring::default(),
            )?;
            let mut v = report_json(&domain, &deliverer.explain(&domain).await);
            v["source"] = "local".into();
            v
        }
    };
    if json {
        println!("{}", escape_json_controls(&value.to_string()));
    } else {
        // Line by line: the line ends are ours, the rest may come from DNS.
        for line in to_text(&mut value).lines() {
            println!("{}", escape_controls(line));
        }
    }
    Ok(())
}

fn sts_json(a: &StsAnswer) -> serde_json::Value {
    let mut v = match &a.entry {
        Some(e) => serde_json::json!({
            "id": e.id,
            "mode": e.policy.mode.as_str(),
            "mx": e.policy.mx,
            "max_age": e.policy.max_age,
        }),
        None => serde_json::json!({ "mode": null }),
    };
    v["source"] = a.source.into();
    if let Some((f, why)) = &a.problem {
        v["problem"] = format!("{}: {why}", f.result_type()).into();
    }
    v
}

/// The JSON answer for `domain` (also the admin endpoint's).
pub fn report_json(domain: &str, r: &PolicyReport) -> serde_json::Value {
    serde_json::json!({
        "domain": domain,
        "level": r.level.as_str(),
        "match": r.match_names,
        "mta_sts": r.sts.as_ref().map(sts_json),
        "error": r.error,
        "mx": r.hops.iter().map(|h| serde_json::json!({
            "host": h.host,
            "addresses": h.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "mx": h.mx,
            "dnssec": if h.dnssec { "secure" } else { "insecure" },
            "tlsa_status": h.tlsa_status,
            "tlsa": h.tlsa,
            "policy": h.policy,
            "requirement": h.requirement,
            "refused": h.refused,
        })).collect::<Vec<_>>(),
    })
}

fn to_text(v: &mut serde_json::Value) -> String {
    use std::fmt::Write;
    let t = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: level {} (worked out by the {})",
        t(&v["domain"]),
        t(&v["level"]),
        if v["source"] == "daemon" {
            "running daemon"
        } else {
            "command: no daemon answered, MTA-STS policy fetched now"
        }
    );
    if let Some(m) = v["match"].as_array().filter(|m| !m.is_empty()) {
        let names: Vec<String> = m.iter().map(t).collect();
        let _ = writeln!(out, "  match names: {}", names.join(", "));
    }
    let sts = &v["mta_sts"];
    if sts.is_null() {
        let _ = writeln!(
            out,
            "  MTA-STS: not consulted (disabled, a static level or a route)"
        );
    } else if sts["mode"].is_null() {
        let _ = writeln!(out, "  MTA-STS: no policy");
    } else {
        let mx: Vec<String> = sts["mx"]
            .as_array()
            .map(|a| a.iter().map(t).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  MTA-STS: id {} mode {} mx {} max_age {} (from {})",
            t(&sts["id"]),
            t(&sts["mode"]),
            mx.join(" "),
            t(&sts["max_age"]),
            t(&sts["source"])
        );
    }
    if !sts.is_null() && !sts["problem"].is_null() {
        let _ = writeln!(out, "    problem: {}", t(&sts["problem"]));
    }
    if !v["error"].is_null() {
        let _ = writeln!(out, "  no next hop: {}", t(&v["error"]));
    }
    for h in v["mx"].as_array().cloned().unwrap_or_default() {
        let addrs: Vec<String> = h["addresses"]
            .as_array()
            .map(|a| a.iter().map(t).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} [{}] {}, MX answer {}",
            t(&h["host"]),
            addrs.join(" "),
            if h["mx"] == true { "MX host" } else { "route" },
            t(&h["dnssec"])
        );
        let _ = writeln!(out, "    TLSA: {}", t(&h["tlsa_status"]));
        for r in h["tlsa"].as_array().cloned().unwrap_or_default() {
            let _ = writeln!(out, "      {}", t(&r));
        }
        if h["refused"].is_null() {
            let _ = writeln!(
                out,
                "    policy {}: {}",
                t(&h["policy"]),
                t(&h["requirement"])
            );
        } else {
            let _ = writeln!(out, "    not used: {}", t(&h["refused"]));
        }
    }
    out
}
