//! The outbound conversion pipeline (internal → Internet), applied in this
//! order: TNEF to MIME (per destination), header hygiene (internal Received
//! headers and configured header prefixes removed), address rewriting in
//! From/Sender/Reply-To (masquerading and a canonical map), missing `Date`
//! and `Message-ID` added, the disclaimer, over-long lines re-encoded
//! (quoted-printable, never cut), then — when the sender domain has
//! a DKIM key — an 8BITMIME downgrade (so no later hop can break the
//! signature by converting) and DKIM signing, always last.

use crate::dkim::{key_for, DkimKey};
use crate::headers;
use crate::tnef::{self, TnefMode};
use crate::{ContentError, ContentLimits};
use std::collections::HashMap;

/// Outbound policy, built once from configuration.
#[derive(Debug, Default)]
pub struct OutboundPolicy {
    pub limits: ContentLimits,
    pub tnef: Option<TnefMode>,
    /// Per destination domain TNEF handling, overriding `tnef`.
    pub tnef_by_domain: HashMap<String, TnefMode>,
    /// Remove Received headers added by internal hosts (all but ours).
    pub strip_internal_received: bool,
    /// Header name prefixes to remove, lower-case.
    pub strip_headers: Vec<String>,
    /// Internal domain → public domain.
    pub masquerade: HashMap<String, String>,
    /// Full address → full address (lower-case keys).
    pub canonical: HashMap<String, String>,
    pub disclaimer: Option<String>,
    pub add_missing: bool,
    /// Our host name, for generated Message-IDs.
    pub hostname: String,
    pub dkim: Vec<DkimKey>,
}

/// The result of the pipeline.
#[derive(Debug, Default)]
pub struct Outbound {
    pub body: Vec<u8>,
    /// `d=` of the signature added, if any.
    pub signed_by: Option<String>,
    /// TNEF parts that could not be read (left as they were).
    pub tnef_errors: Vec<String>,
}

/// Rewrites an address per the canonical map, then masquerading.
pub fn rewrite_address(addr: &str, p: &OutboundPolicy) -> Option<String> {
    if let Some(c) = p.canonical.get(&addr.to_ascii_lowercase()) {
        return Some(c.clone());
    }
    let (local, domain) = addr.rsplit_once('@')?;
    p.masquerade
        .get(&domain.to_ascii_lowercase())
        .map(|public| format!("{local}@{public}"))
}

/// Runs the pipeline; `now_ms` and `token` make Date and Message-ID.
pub fn process(
    msg: &[u8],
    rcpt_domains: &[String],
    p: &OutboundPolicy,
    now_ms: u64,
    token: &str,
) -> Result<Outbound, ContentError> {
    crate::inspect(msg, &p.limits)?;
    let mut out = Outbound::default();
    let mode = rcpt_domains
        .iter()
        .find_map(|d| p.tnef_by_domain.get(&d.to_ascii_lowercase()).copied())
        .or(p.tnef)
        .unwrap_or(TnefMode::Leave);
    let (converted, errors) = tnef::convert_message(msg, mode);
    out.tnef_errors = errors.iter().map(|e| e.to_string()).collect();
    let msg = converted.as_deref().unwrap_or(msg);
    let (hdrs, body) = headers::split(msg);
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut seen_received = false;
    let (mut has_date, mut has_msgid) = (false, false);
    for f in headers::fields(hdrs) {
        let name = headers::field_name(f).to_ascii_lowercase();
        if name == "received" {
            // The first Received is ours (the listener put it on top).
            if seen_received && p.strip_internal_received {
                continue;
            }
            seen_received = true;
        }
        if p.strip_headers
            .iter()
            .any(|pre| name.starts_with(pre.as_str()))
        {
            continue;
        }
        has_date |= name == "date";
        has_msgid |= name == "message-id";
        if matches!(name.as_str(), "from" | "sender" | "reply-to") {
            fields.push(rewrite_field(f, p));
        } else {
            fields.push(f.to_vec());
        }
    }
    if p.add_missing && !has_date {
        let date = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms),
        );
        fields.push(format!("Date: {}\r\n", date.replace("GMT", "+0000")).into_bytes());
    }
    if p.add_missing && !has_msgid {
        fields.push(format!("Message-ID: <{token}@{}>\r\n", p.hostname).into_bytes());
    }
    let mut rebuilt: Vec<u8> = fields.concat();
    rebuilt.extend_from_slice(b"\r\n");
    rebuilt.extend_from_slice(body);
    if let Some(text) = &p.disclaimer {
        rebuilt = crate::disclaimer::append(&rebuilt, text);
    }
    if crate::downgrade::has_long_line(&rebuilt) {
        // Repair: lines over 998 octets are re-encoded, never cut.
        rebuilt = crate::downgrade::to_seven_bit(&rebuilt, &p.limits)?;
    }
    // From the header section only: a body line "From: ..." must never
    // choose the signing key.
    let from_domain = headers::get(headers::split(&rebuilt).0, "From").and_then(|f| domain_of(&f));
    if let Some(key) = from_domain.as_deref().and_then(|d| key_for(&p.dkim, d)) {
        let seven = crate::downgrade::to_seven_bit(&rebuilt, &p.limits)?;
        let sig = key.sign(&seven).map_err(ContentError::Conversion)?;
        let mut signed = sig.into_bytes();
        signed.extend_from_slice(&seven);
        out.signed_by = Some(key.domain.clone());
        out.body = signed;
    } else {
        out.body = rebuilt;
    }
    Ok(out)
}

/// The domain of the (first) address in a header value.
pub fn domain_of(value: &str) -> Option<String> {
    let addr = match (value.find('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.trim(),
    };
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim().to_ascii_lowercase())
}

fn rewrite_field(f: &[u8], p: &OutboundPolicy) -> Vec<u8> {
    let text = String::from_utf8_lossy(f);
    let is_sep = |c: char| c == '<' || c == '>' || c == ',' || c.is_whitespace() || c == ':';
    // One pass over the tokens, each rewritten in place: an address that
    // merely contains another one (bjdoe@ vs jdoe@) is never touched.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_ref();
    while !rest.is_empty() {
        let end = rest.find(is_sep).unwrap_or(rest.len());
        let (token, after) = rest.split_at(end);
        match token
            .contains('@')
            .then(|| rewrite_address(token, p))
            .flatten()
        {
            Some(new) => out.push_str(&new),
            None => out.push_str(token),
        }
        let sep_len = after.chars().next().map_or(0, char::len_utf8);
        out.push_str(&after[..sep_len]);
        rest = &after[sep_len..];
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutboundPolicy {
        OutboundPolicy {
            strip_internal_received: true,
            strip_headers: vec!["x-ms-exchange-organization-".into()],
            masquerade: [("corp.example.test".to_string(), "example.test".to_string())].into(),
            canonical: [(
                "jdoe@corp.example.test".to_string(),
                "john.doe@example.test".to_string(),
            )]
            .into(),
            add_missing: true,
            hostname: "gw.example.test".into(),
            ..Default::default()
        }
    }

    #[test]
    fn hygiene_rewriting_and_missing_headers() {
        let msg = b"Received: from mail by gw.example.test (Postern)\r\nReceived: from exch01.corp.example.test\r\n\tby exch02\r\nX-MS-Exchange-Organization-SCL: -1\r\nFrom: Jane <jane@corp.example.test>\r\nReply-To: jdoe@corp.example.test\r\nTo: x@else.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let out = process(msg, &["else.test".into()], &policy(), 0, "tok").unwrap();
        let s = String::from_utf8(out.body).unwrap();
        assert!(s.starts_with("Received: from mail by gw.example.test (Postern)\r\n"));
        assert!(!s.contains("exch01"), "{s}");
        assert!(!s.contains("X-MS-Exchange"));
        assert!(s.contains("From: Jane <jane@example.test>\r\n"));
        assert!(s.contains("Reply-To: john.doe@example.test\r\n"));
        assert!(s.contains("Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
        assert!(s.contains("Message-ID: <tok@gw.example.test>\r\n"));
        assert!(s.ends_with("\r\n\r\nbody\r\n"));
        assert!(out.signed_by.is_none());
    }

    #[test]
    fn rewriting_never_touches_an_address_containing_another() {
        let msg = b"From: a@x.test\r\nReply-To: jdoe@corp.example.test, bjdoe@corp.example.test\r\n\r\nFrom: body@signed.test\r\n";
        let s = String::from_utf8(process(msg, &[], &policy(), 0, "t").unwrap().body).unwrap();
        assert!(
            s.contains("Reply-To: john.doe@example.test, bjdoe@example.test\r\n"),
            "{s}"
        );
    }

    #[test]
    fn existing_date_and_id_are_kept() {
        let msg = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <a@b>\r\nFrom: a@x.test\r\n\r\nb\r\n";
        let s = String::from_utf8(process(msg, &[], &policy(), 0, "t").unwrap().body).unwrap();
        assert_eq!(s.matches("Date:").count(), 1);
        assert_eq!(s.matches("Message-ID:").count(), 1);
    }
}
