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
//!
//! Time: the checks of one message share one budget
//! ([`InboundPolicy::timeout`], `convert.auth_timeout`), well inside the
//! worker's message deadline, so a DNS server that never answers cannot get
//! a good message killed as a crash (and quarantined at the client's retry).
//! DKIM and both SPF checks run side by side; DMARC runs after them if time
//! is left. A check still running when the budget ends is reported as
//! `temperror (DNS timeout)`, and DMARC, which cannot be decided without
//! them, too; a temperror never refuses or holds a message.

use crate::{Authenticator, Message};
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DmarcOutput, DmarcResult,
    MessageAuthenticator, SpfOutput,
};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

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
    /// Time budget of all the DNS checks of one message
    /// (`convert.auth_timeout`): checks still running then are reported as
    /// `temperror` and the message goes on, so a silent DNS server cannot
    /// push it past the worker's message deadline.
    pub timeout: Duration,
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
    /// Some check ran out of the time budget and is reported as
    /// `temperror` (for a log line: DNS is slow or down).
    pub timed_out: bool,
}

/// The DNS-based verdicts on one message; `None` is a check that did not
/// finish within the time budget.
struct Checks<'x> {
    /// One result per DKIM signature (borrowing the parsed message).
    dkim: Option<Vec<DkimOutput<'x>>>,
    /// SPF for the HELO name.
    spf_helo: Option<SpfOutput>,
    /// SPF for MAIL FROM (the HELO result for the null sender).
    spf_mail: Option<SpfOutput>,
    /// DMARC on the two above (not asked when either is missing).
    dmarc: Option<DmarcOutput>,
}

impl Checks<'_> {
    /// True when some check did not finish in time.
    fn timed_out(&self) -> bool {
        self.dkim.is_none()
            || self.spf_helo.is_none()
            || self.spf_mail.is_none()
            || self.dmarc.is_none()
    }
}

/// The comment of a check that ran out of time.
const TIMEOUT: &str = "temperror (DNS timeout)";

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
    // A budget too large to add (only a misconfiguration) is no budget.
    let deadline = Instant::now()
        .checked_add(p.timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
    let checks = run_checks(auth.verifier(), &am, s, &p.authserv_id, deadline).await;
    let header = results_header(&checks, &am, s, &p.authserv_id);
    let mut out = Inbound {
        results: header
            .split_once(':')
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default(),
        timed_out: checks.timed_out(),
        ..Inbound::default()
    };
    let mut extra = "";
    match dmarc_action(checks.dmarc.as_ref(), p) {
        DmarcAction::Deliver => {}
        DmarcAction::Reject(text) => out.reject = Some(text),
        DmarcAction::Hold(reason) => out.hold = Some(reason),
        DmarcAction::Mark => extra = "X-Postern-DMARC: quarantine\r\n",
    }
    out.body = prepend(&format!("{header}{extra}"), &cleaned);
    out
}

/// `f`'s output, or `None` when `deadline` comes first.
async fn within<T>(deadline: Instant, f: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(deadline, f).await.ok()
}

/// Asks DNS, all before `deadline`: DKIM and SPF for HELO and MAIL FROM
/// side by side, then DMARC on those (only when both finished: without
/// them DMARC could fail a message that would have passed).
async fn run_checks<'x>(
    auth: &MessageAuthenticator,
    am: &'x AuthenticatedMessage<'x>,
    s: &Session<'_>,
    authserv_id: &str,
    deadline: Instant,
) -> Checks<'x> {
    let spf_mail = async {
        if s.mail_from.is_empty() {
            return None;
        }
        let params = SpfParameters::verify_mail_from(s.ip, s.helo, authserv_id, s.mail_from);
        Some(within(deadline, auth.verify_spf(params)).await)
    };
    let (dkim, spf_helo, spf_mail) = tokio::join!(
        within(deadline, auth.verify_dkim(am)),
        within(
            deadline,
            auth.verify_spf(SpfParameters::verify_ehlo(s.ip, s.helo, authserv_id))
        ),
        spf_mail,
    );
    // The null sender: MAIL FROM is checked as the HELO name.
    let spf_mail = spf_mail.unwrap_or_else(|| spf_helo.clone());
    let mail_from_domain = s
        .mail_from
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(s.helo);
    let dmarc = match (&dkim, &spf_mail) {
        (Some(dkim), Some(spf)) => {
            let params = DmarcParameters::new(am, dkim, mail_from_domain, spf);
            within(deadline, auth.verify_dmarc(params)).await
        }
        _ => None,
    };
    Checks {
        dkim,
        spf_helo,
        spf_mail,
        dmarc,
    }
}

/// The Authentication-Results header field (with CRLF) for the checks:
/// mail-auth writes each finished one, we write the timed-out ones.
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
    let ar = || AuthenticationResults::new(authserv_id);
    let mut out = String::new();
    match &c.dkim {
        Some(dkim) => out.push_str(&clauses_of(
            &ar().with_dkim_results(dkim, &header_from),
            authserv_id,
        )),
        None => out.push_str(&format!(";\r\n\tdkim={TIMEOUT}")),
    }
    match &c.spf_helo {
        Some(spf) => out.push_str(&clauses_of(
            &ar().with_spf_ehlo_result(spf, s.ip, s.helo),
            authserv_id,
        )),
        None => out.push_str(&format!(
            ";\r\n\tspf={TIMEOUT} smtp.helo={}",
            pvalue(s.helo)
        )),
    }
    match &c.spf_mail {
        Some(spf) => out.push_str(&clauses_of(
            &ar().with_spf_mailfrom_result(spf, s.ip, &mail_from, s.helo),
            authserv_id,
        )),
        None => out.push_str(&format!(
            ";\r\n\tspf={TIMEOUT} smtp.mailfrom={}",
            pvalue(&mail_from)
        )),
    }
    match &c.dmarc {
        Some(dmarc) => out.push_str(&clauses_of(&ar().with_dmarc_result(dmarc), authserv_id)),
        None => {
            out.push_str(&format!(";\r\n\tdmarc={TIMEOUT}"));
            if let Some((_, domain)) = header_from.rsplit_once('@') {
                out.push_str(&format!(" header.from={}", pvalue(domain)));
            }
        }
    }
    if out.is_empty() {
        out.push_str("; none");
    }
    format!("Authentication-Results: {authserv_id}{out}\r\n")
}

/// The clauses mail-auth wrote into `r` (its text is the authserv-id
/// followed by them).
fn clauses_of(r: &AuthenticationResults<'_>, authserv_id: &str) -> String {
    let text = r.to_string();
    text.strip_prefix(authserv_id).unwrap_or("").to_string()
}

/// `v` as an RFC 8601 property value: as it is when it is made of
/// address characters only, else a quoted string without control
/// characters (the HELO name and addresses come from the network).
fn pvalue(v: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._@+".contains(c);
    if !v.is_empty() && v.chars().all(plain) {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// What a DMARC result asks of us under policy `p`; nothing when DMARC
/// did not finish in time (a temperror never refuses or holds).
fn dmarc_action(dmarc: Option<&DmarcOutput>, p: &InboundPolicy) -> DmarcAction {
    let Some(dmarc) = dmarc else {
        return DmarcAction::Deliver;
    };
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

/// True when `message` carries our own Authentication-Results (authserv-id
/// `authserv_id`; intake removed any a client forged) saying SPF passed
/// for MAIL FROM `sender`: the client was a host the sender's domain
/// names as its own. A DSN to an untrusted sender goes only then (no
/// reflection to a forged sender).
pub fn spf_passed(message: &[u8], authserv_id: &str, sender: &str) -> bool {
    let msg = Message::parse(message);
    let passed = msg
        .headers()
        .filter(|f| f.name().eq_ignore_ascii_case("Authentication-Results"))
        .filter(|f| names_us(f.raw(), authserv_id))
        .any(|f| {
            let text = String::from_utf8_lossy(f.raw());
            let value = text.split_once(':').map(|(_, v)| v).unwrap_or("");
            without_comments(value).split(';').any(|clause| {
                let mut words = clause.split_whitespace();
                words.next() == Some("spf=pass")
                    && words.any(|w| {
                        w.strip_prefix("smtp.mailfrom=")
                            .is_some_and(|m| m.trim_matches('"').eq_ignore_ascii_case(sender))
                    })
            })
        });
    passed
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
    use std::net::SocketAddr;

    /// A nameserver that never answers: UDP questions are read and
    /// dropped, TCP connections accepted and held in silence. Its tasks
    /// end with the test's runtime.
    async fn silent_nameserver() -> SocketAddr {
        for _ in 0..100 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            let Ok(tcp) = tokio::net::TcpListener::bind(addr).await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while udp.recv_from(&mut buf).await.is_ok() {}
            });
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((conn, _)) = tcp.accept().await {
                    held.push(conn);
                }
            });
            return addr;
        }
        panic!("no free UDP and TCP port pair for a silent nameserver");
    }

    /// Issue 11, "a DNS outage quarantines legitimate mail": before, the
    /// checks ran until the resolver gave up on every question (far past
    /// the worker's 30 s deadline with a silent server); now they end at
    /// the budget with temperror and the message goes on, even under a
    /// policy that refuses and holds DMARC failures.
    #[tokio::test]
    async fn a_silent_nameserver_gives_temperror_within_the_budget() {
        let ns = silent_nameserver().await;
        let auth = Authenticator::new(&crate::DnsSettings {
            nameservers: vec![ns],
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let policy = InboundPolicy {
            authserv_id: "gw.test".into(),
            dmarc_reject: true,
            quarantine: QuarantineAction::Hold,
            timeout: Duration::from_millis(500),
        };
        // A signature whose body hash matches "hi\r\n", so verifying it
        // needs its key from DNS.
        let msg = b"DKIM-Signature: v=1; a=rsa-sha256; d=bank.test; s=sel; h=from:subject;\r\n bh=RHI91NDg1Go8f6isolS2HCe2tXiflhd+gsgHAECfFTU=; b=AAAA\r\nFrom: ceo@bank.test\r\nSubject: x\r\n\r\nhi\r\n";
        let session = Session {
            ip: "192.0.2.7".parse().unwrap(),
            helo: "client.test",
            mail_from: "ceo@bank.test",
        };
        let start = std::time::Instant::now();
        let parsed = Message::parse(msg);
        let run = authenticate(&parsed, &session, &policy, &auth);
        let out = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the checks end at their budget, not the resolver's");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(out.timed_out);
        assert_eq!((out.reject, out.hold), (None, None));
        for clause in [
            "dkim=temperror (DNS timeout)",
            "spf=temperror (DNS timeout) smtp.helo=client.test",
            "spf=temperror (DNS timeout) smtp.mailfrom=ceo@bank.test",
            "dmarc=temperror (DNS timeout) header.from=bank.test",
        ] {
            assert!(out.results.contains(clause), "{clause}: {}", out.results);
        }
        let body = String::from_utf8(out.body).unwrap();
        assert!(
            body.starts_with("Authentication-Results: gw.test;\r\n\tdkim=temperror"),
            "{body}"
        );
        assert!(body.ends_with("Subject: x\r\n\r\nhi\r\n"), "{body}");
    }

    #[test]
    fn property_values_from_the_network_are_quoted() {
        assert_eq!(pvalue("client.test"), "client.test");
        assert_eq!(pvalue("a+b@x.test"), "a+b@x.test");
        assert_eq!(pvalue("evil\r\n\tX: y"), "\"evilX: y\"");
        assert_eq!(pvalue("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(pvalue(""), "\"\"");
    }

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

    #[test]
    fn spf_pass_is_read_from_our_own_results_only() {
        let ours = "Authentication-Results: gw.example.test;\r\n\tdkim=none;\r\n\tspf=pass (gw.example.test: domain of s@sender.test designates 127.0.0.5 as permitted sender) smtp.mailfrom=s@sender.test;\r\n\tdmarc=none\r\n";
        let msg =
            |h: &str| format!("{h}Subject: x\r\n\r\nspf=pass smtp.mailfrom=s@sender.test\r\n");
        let cases = [
            (msg(ours), "s@sender.test", true, "our pass"),
            (msg(ours), "S@Sender.Test", true, "any case"),
            (msg(ours), "other@sender.test", false, "another sender"),
            (
                msg(&ours.replace("spf=pass", "spf=softfail")),
                "s@sender.test",
                false,
                "softfail",
            ),
            (
                msg(&ours.replace("gw.example.test;", "other.test;")),
                "s@sender.test",
                false,
                "not ours",
            ),
            (
                msg(
                    "Authentication-Results: gw.example.test; spf=pass smtp.helo=s@sender.test\r\n",
                ),
                "s@sender.test",
                false,
                "HELO only",
            ),
            (
                msg(""),
                "s@sender.test",
                false,
                "none (the body does not count)",
            ),
        ];
        for (m, sender, want, why) in cases {
            assert_eq!(
                spf_passed(m.as_bytes(), "gw.example.test", sender),
                want,
                "{why}"
            );
        }
    }
}
