//! Inbound authentication (Internet → internal): SPF for HELO and MAIL FROM
//! (RFC 7208), DKIM verification (RFC 6376) and DMARC evaluation (RFC 7489),
//! all with mail-auth, summarised in an `Authentication-Results` header
//! (RFC 8601) under our authserv-id. Any incoming `Authentication-Results`
//! claiming our authserv-id is removed first, so nobody can forge our
//! verdict. DNS goes through the [`Authenticator`] the caller builds (the
//! worker points it at the configured nameservers). [`authenticate`] is the
//! entry point; it never fails: a message mail-auth cannot parse gets
//! `none` as its result.
//!
//! Policy: a DMARC failure under `p=reject` is refused at the end of DATA
//! (`550 5.7.1`, no backscatter) when `dmarc_reject` is set; under
//! `p=quarantine` the message is held or marked, as configured.

use crate::{Authenticator, Message};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DmarcOutput, DmarcResult,
    MessageAuthenticator, SpfOutput,
};
use std::net::IpAddr;

/// What to do with DMARC failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineAction {
    /// Add `X-Postern-DMARC: quarantine` and deliver.
    Header,
    /// Keep the message in the held state for an administrator.
    Hold,
}

/// Inbound policy, built once from configuration.
#[derive(Debug, Clone)]
pub struct InboundPolicy {
    /// Our authserv-id (RFC 8601): names our verdicts, and the forged
    /// ones we remove.
    pub authserv_id: String,
    /// Refuse messages that fail DMARC under `p=reject`.
    pub dmarc_reject: bool,
    /// What to do with the other DMARC failures under `p=reject` or
    /// `p=quarantine`.
    pub quarantine: QuarantineAction,
}

/// The SMTP facts the checks need.
#[derive(Debug, Clone)]
pub struct Session<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// The HELO/EHLO name.
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

/// The DNS-based verdicts on one message.
struct Checks<'x> {
    /// One result per DKIM signature (borrowing the parsed message).
    dkim: Vec<DkimOutput<'x>>,
    /// SPF for the HELO name.
    spf_helo: SpfOutput,
    /// SPF for MAIL FROM (the HELO result for the null sender).
    spf_mail: SpfOutput,
    /// DMARC on the two above.
    dmarc: DmarcOutput,
}

/// What DMARC asks of us under our policy.
enum DmarcAction {
    /// Nothing: it passed, or its policy asks for nothing.
    Deliver,
    /// Refuse with this text.
    Reject(String),
    /// Hold with this reason.
    Hold(String),
    /// Deliver with `X-Postern-DMARC: quarantine`.
    Mark,
}

/// Runs SPF, DKIM and DMARC; see the module docs.
pub async fn authenticate(
    msg: &Message<'_>,
    s: &Session<'_>,
    p: &InboundPolicy,
    auth: &Authenticator,
) -> Inbound {
    let cleaned = strip_forged_results(msg, &p.authserv_id);
    let Some(am) = AuthenticatedMessage::parse(&cleaned) else {
        let results = format!("{}; none (message could not be parsed)", p.authserv_id);
        return Inbound {
            body: prepend(&format!("Authentication-Results: {results}\r\n"), &cleaned),
            results,
            ..Inbound::default()
        };
    };
    let checks = run_checks(auth.verifier(), &am, s, &p.authserv_id).await;
    let header = results_header(&checks, &am, s, &p.authserv_id);
    let mut out = Inbound {
        results: header
            .split_once(':')
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default(),
        ..Inbound::default()
    };
    let mut extra = "";
    match dmarc_action(&checks.dmarc, p) {
        DmarcAction::Deliver => {}
        DmarcAction::Reject(text) => out.reject = Some(text),
        DmarcAction::Hold(reason) => out.hold = Some(reason),
        DmarcAction::Mark => extra = "X-Postern-DMARC: quarantine\r\n",
    }
    out.body = prepend(&format!("{header}{extra}"), &cleaned);
    out
}

/// Asks DNS: DKIM, SPF for HELO and MAIL FROM, then DMARC on those.
async fn run_checks<'x>(
    auth: &MessageAuthenticator,
    am: &'x AuthenticatedMessage<'x>,
    s: &Session<'_>,
    authserv_id: &str,
) -> Checks<'x> {
    let dkim = auth.verify_dkim(am).await;
    let spf_helo = auth
        .verify_spf(SpfParameters::verify_ehlo(s.ip, s.helo, authserv_id))
        .await;
    let spf_mail = if s.mail_from.is_empty() {
        spf_helo.clone()
    } else {
        auth.verify_spf(SpfParameters::verify_mail_from(
            s.ip,
            s.helo,
            authserv_id,
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
        .verify_dmarc(DmarcParameters::new(am, &dkim, mail_from_domain, &spf_mail))
        .await;
    Checks {
        dkim,
        spf_helo,
        spf_mail,
        dmarc,
    }
}

/// The Authentication-Results header field (with CRLF) for the checks.
fn results_header(
    c: &Checks<'_>,
    am: &AuthenticatedMessage<'_>,
    s: &Session<'_>,
    authserv_id: &str,
) -> String {
    let header_from = am.from.first().cloned().unwrap_or_default();
    let mail_from = if s.mail_from.is_empty() {
        format!("postmaster@{}", s.helo)
    } else {
        s.mail_from.to_string()
    };
    AuthenticationResults::new(authserv_id)
        .with_dkim_results(&c.dkim, &header_from)
        .with_spf_ehlo_result(&c.spf_helo, s.ip, s.helo)
        .with_spf_mailfrom_result(&c.spf_mail, s.ip, &mail_from, s.helo)
        .with_dmarc_result(&c.dmarc)
        .to_header()
}

/// What a DMARC result asks of us under policy `p`.
fn dmarc_action(dmarc: &DmarcOutput, p: &InboundPolicy) -> DmarcAction {
    // DMARC fails when the author domain publishes a policy and neither an
    // aligned SPF nor an aligned DKIM pass exists, with no temporary error
    // that could have hidden one (RFC 7489 4.2, 6.6.2).
    let settled = |r: &DmarcResult| !matches!(r, DmarcResult::Pass | DmarcResult::TempError(_));
    let failed = dmarc.policy() != Policy::Unspecified
        && settled(dmarc.dkim_result())
        && settled(dmarc.spf_result());
    if !failed {
        return DmarcAction::Deliver;
    }
    match dmarc.policy() {
        Policy::Reject if p.dmarc_reject => DmarcAction::Reject(format!(
            "DMARC policy of {} rejects this message",
            dmarc.domain()
        )),
        Policy::Reject | Policy::Quarantine => match p.quarantine {
            QuarantineAction::Hold => DmarcAction::Hold(format!(
                "DMARC {:?} policy of {}",
                dmarc.policy(),
                dmarc.domain()
            )),
            QuarantineAction::Header => DmarcAction::Mark,
        },
        _ => DmarcAction::Deliver,
    }
}

/// Removes `Authentication-Results` fields whose authserv-id is ours.
fn strip_forged_results(msg: &Message<'_>, authserv_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.bytes().len());
    for f in msg.headers() {
        if f.name().eq_ignore_ascii_case("Authentication-Results") && names_us(f.raw(), authserv_id)
        {
            continue;
        }
        out.extend_from_slice(f.raw());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(msg.body());
    out
}

/// True when an Authentication-Results field carries `authserv_id`.
fn names_us(field: &[u8], authserv_id: &str) -> bool {
    let text = String::from_utf8_lossy(field);
    let value = text.split_once(':').map(|(_, v)| v).unwrap_or("");
    // The authserv-id is the first word that is not a comment
    // (RFC 8601 allows CFWS before it), possibly quoted.
    let id = without_comments(value);
    let id = id
        .split([';', ' ', '\t', '\r', '\n'])
        .find(|w| !w.is_empty())
        .unwrap_or("")
        .trim_matches('"');
    id.eq_ignore_ascii_case(authserv_id)
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
        let out = strip_forged_results(&Message::parse(m), "gw.example.test");
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "Authentication-Results: other.test; spf=fail\r\nSubject: x\r\n\r\nb\r\n"
        );
    }
}
