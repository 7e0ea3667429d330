//! Inbound authentication (Internet → internal): SPF for HELO and MAIL FROM
//! (RFC 7208), DKIM verification (RFC 6376) and DMARC evaluation (RFC 7489),
//! all with mail-auth, summarised in an `Authentication-Results` header
//! (RFC 8601) under our authserv-id. Any incoming `Authentication-Results`
//! claiming our authserv-id is removed first, so nobody can forge our
//! verdict. DNS goes through the [`MessageAuthenticator`] the caller builds
//! (the worker points it at the configured nameservers).
//!
//! Policy: a DMARC failure under `p=reject` is refused at the end of DATA
//! (`550 5.7.1`, no backscatter) when `dmarc_reject` is set; under
//! `p=quarantine` the message is held or marked, as configured.

use crate::headers;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, DmarcResult, MessageAuthenticator};
use std::net::IpAddr;

/// What to do with DMARC failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineAction {
    /// Add `X-Postern-DMARC: quarantine` and deliver.
    Header,
    /// Keep the message in the held state for an administrator.
    Hold,
}

#[derive(Debug, Clone)]
pub struct InboundPolicy {
    pub authserv_id: String,
    pub dmarc_reject: bool,
    pub quarantine: QuarantineAction,
}

/// The SMTP facts the checks need.
#[derive(Debug, Clone)]
pub struct Session<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    /// MAIL FROM address; empty for the null sender.
    pub mail_from: &'a str,
}

/// The outcome of the inbound checks.
#[derive(Debug, Default)]
pub struct Inbound {
    /// The message with forged results removed and ours added.
    pub body: Vec<u8>,
    /// Refuse with 550 5.7.1 and this text.
    pub reject: Option<String>,
    /// Hold for an administrator, with this reason.
    pub hold: Option<String>,
    /// The Authentication-Results value, for logs and tests.
    pub results: String,
}

/// Removes `Authentication-Results` fields whose authserv-id is ours.
pub fn strip_forged_results(msg: &[u8], authserv_id: &str) -> Vec<u8> {
    let (hdrs, body) = headers::split(msg);
    let mut out = Vec::with_capacity(msg.len());
    for f in headers::fields(hdrs) {
        if headers::field_name(f).eq_ignore_ascii_case("Authentication-Results") {
            let text = String::from_utf8_lossy(f);
            let value = text.split_once(':').map(|(_, v)| v).unwrap_or("");
            // The authserv-id is the first word that is not a comment
            // (RFC 8601 allows CFWS before it), possibly quoted.
            let id = without_comments(value);
            let id = id
                .split([';', ' ', '\t', '\r', '\n'])
                .find(|w| !w.is_empty())
                .unwrap_or("")
                .trim_matches('"');
            if id.eq_ignore_ascii_case(authserv_id) {
                continue;
            }
        }
        out.extend_from_slice(f);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Runs SPF, DKIM and DMARC; see the module docs.
pub async fn authenticate(
    msg: &[u8],
    s: &Session<'_>,
    p: &InboundPolicy,
    auth: &MessageAuthenticator,
) -> Inbound {
    let cleaned = strip_forged_results(msg, &p.authserv_id);
    let mut out = Inbound::default();
    let Some(am) = AuthenticatedMessage::parse(&cleaned) else {
        out.results = format!("{}; none (message could not be parsed)", p.authserv_id);
        out.body = prepend(
            &format!("Authentication-Results: {}\r\n", out.results),
            &cleaned,
        );
        return out;
    };
    let dkim = auth.verify_dkim(&am).await;
    let spf_helo = auth
        .verify_spf(SpfParameters::verify_ehlo(s.ip, s.helo, &p.authserv_id))
        .await;
    let spf_mail = if s.mail_from.is_empty() {
        spf_helo.clone()
    } else {
        auth.verify_spf(SpfParameters::verify_mail_from(
            s.ip,
            s.helo,
            &p.authserv_id,
            s.mail_from,
        ))
        .await
    };
    let mail_from_domain = s
        .mail_from
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(s.helo);
    let dmarc = auth
        .verify_dmarc(DmarcParameters::new(
            &am,
            &dkim,
            mail_from_domain,
            &spf_mail,
        ))
        .await;
    let header_from = am.from.first().cloned().unwrap_or_default();
    let mail_from = if s.mail_from.is_empty() {
        format!("postmaster@{}", s.helo)
    } else {
        s.mail_from.to_string()
    };
    let ar = AuthenticationResults::new(&p.authserv_id)
        .with_dkim_results(&dkim, &header_from)
        .with_spf_ehlo_result(&spf_helo, s.ip, s.helo)
        .with_spf_mailfrom_result(&spf_mail, s.ip, &mail_from, s.helo)
        .with_dmarc_result(&dmarc);
    let header = ar.to_header();
    out.results = header
        .split_once(':')
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    // DMARC fails when the author domain publishes a policy and neither an
    // aligned SPF nor an aligned DKIM pass exists, with no temporary error
    // that could have hidden one (RFC 7489 4.2, 6.6.2).
    let settled = |r: &DmarcResult| !matches!(r, DmarcResult::Pass | DmarcResult::TempError(_));
    let failed = dmarc.policy() != Policy::Unspecified
        && settled(dmarc.dkim_result())
        && settled(dmarc.spf_result());
    let mut extra = String::new();
    if failed {
        match dmarc.policy() {
            Policy::Reject if p.dmarc_reject => {
                out.reject = Some(format!(
                    "DMARC policy of {} rejects this message",
                    dmarc.domain()
                ));
            }
            Policy::Reject | Policy::Quarantine => match p.quarantine {
                QuarantineAction::Hold => {
                    out.hold = Some(format!(
                        "DMARC {:?} policy of {}",
                        dmarc.policy(),
                        dmarc.domain()
                    ));
                }
                QuarantineAction::Header => {
                    extra = "X-Postern-DMARC: quarantine\r\n".to_string();
                }
            },
            _ => {}
        }
    }
    out.body = prepend(&format!("{header}{extra}"), &cleaned);
    out
}

/// `text` with parenthesised comments (nesting and `\` escapes included)
/// removed.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut depth, mut escaped) = (0u32, false);
    for c in text.chars() {
        match (depth, c) {
            _ if escaped => escaped = false,
            (d, '\\') if d > 0 => escaped = true,
            (_, '(') => depth += 1,
            (d, ')') if d > 0 => depth -= 1,
            (0, c) => out.push(c),
            _ => {}
        }
    }
    out
}

fn prepend(h: &str, msg: &[u8]) -> Vec<u8> {
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(msg);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_are_removed() {
        let m = b"Authentication-Results: gw.example.test; dkim=pass\r\nAuthentication-Results: other.test; spf=fail\r\nAUTHENTICATION-RESULTS:  GW.example.test ;\r\n dmarc=pass\r\nAuthentication-Results: (x (y)) \"gw.example.test\"; dmarc=pass\r\nSubject: x\r\n\r\nb\r\n";
        let out = String::from_utf8(strip_forged_results(m, "gw.example.test")).unwrap();
        assert_eq!(
            out,
            "Authentication-Results: other.test; spf=fail\r\nSubject: x\r\n\r\nb\r\n"
        );
    }
}
