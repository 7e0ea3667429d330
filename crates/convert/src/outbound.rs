//! The outbound conversion pipeline (internal → Internet), applied in this
//! order: TNEF to MIME (per destination), header hygiene (internal Received
//! headers and configured header prefixes removed), address rewriting in
//! From/Sender/Reply-To (masquerading and a canonical map), missing `Date`
//! and `Message-ID` added, the disclaimer, over-long lines re-encoded
//! (quoted-printable, never cut), then — when the sender domain has
//! a DKIM key — an 8BITMIME downgrade (so no later hop can break the
//! signature by converting) and DKIM signing, always last.
//!
//! [`convert_outbound`] is the entry point; it takes the parsed [`Message`]
//! and parses again only bytes it has changed. It refuses what
//! [`crate::inspect`] refuses, and fails (temporarily) when signing fails.
//! [`rewrite_address`] applies the same rewriting to an envelope address.

use crate::dkim::{key_for, DkimKey};
use crate::tnef::{self, TnefError, TnefMode};
use crate::{ContentError, ContentLimits, Message};
use postern_core::hops::{self, HOPS_FIELD};
use std::collections::HashMap;

/// Outbound policy, built once from configuration.
#[derive(Debug, Default)]
pub struct OutboundPolicy {
    /// Limits the message is inspected against first.
    pub limits: ContentLimits,
    /// TNEF handling for every destination (`None`: leave TNEF alone).
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
    /// Text appended to the first text/plain and text/html part.
    pub disclaimer: Option<String>,
    /// Add a `Date` and a `Message-ID` when the message has none.
    pub add_missing: bool,
    /// Our host name, for generated Message-IDs.
    pub hostname: String,
    /// Signing keys; the key for the From domain (or a parent) signs.
    pub dkim: Vec<DkimKey>,
}

/// The result of the pipeline.
#[derive(Debug, Default)]
pub struct Outbound {
    /// The converted message.
    pub body: Vec<u8>,
    /// `d=` of the signature added, if any.
    pub signed_by: Option<String>,
    /// TNEF parts that could not be read (left as they were).
    pub tnef_errors: Vec<TnefError>,
    /// Why TNEF parts were kept beside what was extracted from them.
    pub tnef_kept: Vec<String>,
}

/// Rewrites an address per the canonical map, then masquerading; `None`
/// when neither applies.
pub fn rewrite_address(addr: &str, p: &OutboundPolicy) -> Option<String> {
    if let Some(c) = p.canonical.get(&addr.to_ascii_lowercase()) {
        return Some(c.clone());
    }
    let (local, domain) = addr.rsplit_once('@')?;
    p.masquerade
        .get(&domain.to_ascii_lowercase())
        .map(|public| format!("{local}@{public}"))
}

/// Runs the pipeline on `msg` for recipients in `rcpt_domains`; `now_ms`
/// and `token` make Date and Message-ID.
pub fn convert_outbound(
    msg: &Message<'_>,
    rcpt_domains: &[String],
    p: &OutboundPolicy,
    now_ms: u64,
    token: &str,
) -> Result<Outbound, ContentError> {
    crate::inspect(msg, &p.limits)?;
    let mode = rcpt_domains
        .iter()
        .find_map(|d| p.tnef_by_domain.get(&d.to_ascii_lowercase()).copied())
        .or(p.tnef)
        .unwrap_or(TnefMode::Leave);
    let tnef = tnef::convert_message(msg, mode);
    let mut rebuilt = match &tnef.converted {
        Some(bytes) => rebuild(&Message::parse(bytes), p, now_ms, token),
        None => rebuild(msg, p, now_ms, token),
    };
    if let Some(text) = &p.disclaimer {
        rebuilt = crate::disclaimer::append(&rebuilt, text);
    }
    if crate::downgrade::has_long_line(&rebuilt) {
        // Repair: lines over 998 octets are re-encoded, never cut.
        rebuilt = crate::to_seven_bit(&rebuilt, &p.limits)?;
    }
    let (body, signed_by) = sign(rebuilt, p)?;
    Ok(Outbound {
        body,
        signed_by,
        tnef_errors: tnef.errors,
        tnef_kept: tnef.kept,
    })
}

/// The message with header hygiene and rewriting applied and missing
/// headers added. Hops that hygiene removes (internal Received fields) are
/// not forgotten: their number, plus any carried before, goes on in one
/// [`HOPS_FIELD`], so a loop through an internal relay still reaches the
/// hop limit ([`postern_core::hops`]).
fn rebuild(msg: &Message<'_>, p: &OutboundPolicy, now_ms: u64, token: &str) -> Vec<u8> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut seen_received = false;
    let (mut has_date, mut has_msgid) = (false, false);
    let (mut removed, mut carried) = (0usize, None::<usize>);
    for f in msg.headers() {
        let name = f.name().to_ascii_lowercase();
        if name == "received" {
            // The first Received is ours (the listener put it on top).
            if seen_received && p.strip_internal_received {
                removed += 1;
                continue;
            }
            seen_received = true;
        }
        if name.eq_ignore_ascii_case(HOPS_FIELD) {
            let value = f.raw().splitn(2, |b| *b == b':').nth(1).unwrap_or(b"");
            carried = Some(carried.unwrap_or(0).max(hops::parse_carried(value)));
            continue;
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
            fields.push(rewrite_field(f.raw(), p));
        } else {
            fields.push(f.raw().to_vec());
        }
    }
    if removed > 0 || carried.is_some() {
        let total = (removed + carried.unwrap_or(0)).min(hops::MAX_CARRIED);
        // After ours: the top Received stays the first field.
        let at = usize::from(seen_received).min(fields.len());
        fields.insert(at, format!("{HOPS_FIELD}: {total}\r\n").into_bytes());
    }
    add_missing(&mut fields, has_date, has_msgid, p, now_ms, token);
    let mut rebuilt: Vec<u8> = fields.concat();
    rebuilt.extend_from_slice(b"\r\n");
    rebuilt.extend_from_slice(msg.body());
    rebuilt
}

/// Appends the Date and Message-ID fields a message lacks, if so configured.
fn add_missing(
    fields: &mut Vec<Vec<u8>>,
    has_date: bool,
    has_msgid: bool,
    p: &OutboundPolicy,
    now_ms: u64,
    token: &str,
) {
    if p.add_missing && !has_date {
        let date = postern_core::date::rfc5322(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms),
        );
        fields.push(format!("Date: {date}\r\n").into_bytes());
    }
    if p.add_missing && !has_msgid {
        fields.push(format!("Message-ID: <{token}@{}>\r\n", p.hostname).into_bytes());
    }
}

/// Signs the message when its From domain has a key (after an 8BITMIME
/// downgrade); returns the message and the `d=` of the signature.
fn sign(rebuilt: Vec<u8>, p: &OutboundPolicy) -> Result<(Vec<u8>, Option<String>), ContentError> {
    // From the header section only: a body line "From: ..." must never
    // choose the signing key.
    let from_domain = Message::parse(&rebuilt)
        .header("From")
        .and_then(|f| domain_of(&f));
    let Some(key) = from_domain.as_deref().and_then(|d| key_for(&p.dkim, d)) else {
        return Ok((rebuilt, None));
    };
    let seven = crate::to_seven_bit(&rebuilt, &p.limits)?;
    let mut signed = key.sign(&seven)?.into_bytes();
    signed.extend_from_slice(&seven);
    Ok((signed, Some(key.domain.clone())))
}

/// The domain of the (first) address in a header value.
fn domain_of(value: &str) -> Option<String> {
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

    fn process(
        msg: &[u8],
        rcpt_domains: &[String],
        p: &OutboundPolicy,
        now_ms: u64,
        token: &str,
    ) -> Result<Outbound, ContentError> {
        convert_outbound(&Message::parse(msg), rcpt_domains, p, now_ms, token)
    }

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

    // Finding "mail loop" through an internal relay: hygiene removed every
    // Received but ours, so the hop count never grew. Before: no count
    // carried; after: the removed fields plus the carried count, one field,
    // right after our Received.
    #[test]
    fn removed_hops_are_carried_on() {
        let msg = b"Received: ours\r\nReceived: relay1\r\nX-Postern-Hops: 5\r\nReceived: relay2\r\nx-postern-hops: 2\r\nFrom: a@x.test\r\n\r\nb\r\n";
        let s = String::from_utf8(process(msg, &[], &policy(), 0, "t").unwrap().body).unwrap();
        assert!(
            s.starts_with("Received: ours\r\nX-Postern-Hops: 7\r\nFrom:"),
            "{s}"
        );
        assert_eq!(postern_core::hops::count(s.as_bytes()), 8, "{s}");
        // Nothing removed and nothing carried: no field.
        let plain = b"Received: ours\r\nFrom: a@x.test\r\n\r\nb\r\n";
        let s = String::from_utf8(process(plain, &[], &policy(), 0, "t").unwrap().body).unwrap();
        assert!(!s.contains("X-Postern-Hops"), "{s}");
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
