//! MTA-STS (RFC 8461): the policy file, MX patterns, the HTTPS fetch and
//! the policy cache.
//!
//! [`StsPolicy::parse`] reads the policy text (section 3.2);
//! [`StsPolicy::allows`] matches an MX host against its `mx` patterns
//! (`*.` stands for exactly one leftmost label). [`StsCache`] answers "what
//! policy applies to this domain": the `_mta-sts` TXT id, a cached policy
//! while the id is unchanged and the policy unexpired, otherwise a fetch
//! from `https://mta-sts.<domain>/.well-known/mta-sts.txt` (WebPKI-verified,
//! no redirects, size and time capped). A failed fetch keeps using an
//! unexpired cached policy (section 5.1). Policies are written to an
//! [`StsStore`] (the queue's database) so they survive restarts, and
//! [`StsCache::refresh`] fetches again those past half their `max_age`.

use super::{Checker, TlsFailure};
use crate::resolve::Resolver;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest `max_age` a policy may have (section 3.2: one year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// A policy's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    /// Deliver only to matching MX hosts with valid certificates.
    Enforce,
    /// Report failures, deliver anyway.
    Testing,
    /// No policy (a domain withdrawing it).
    None,
}

impl StsMode {
    /// The mode's name in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// A parsed MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    /// The policy's mode.
    pub mode: StsMode,
    /// MX patterns, lower case.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached.
    pub max_age: u64,
}

/// Why a policy text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MTA-STS policy: {0}")]
pub struct PolicyError(String);

impl StsPolicy {
    /// Parses a policy file (RFC 8461 section 3.2). Unknown keys are
    /// ignored; version, mode and max_age are required, and `mx` unless
    /// the mode is `none`.
    pub fn parse(text: &str) -> Result<StsPolicy, PolicyError> {
        let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(PolicyError(format!("line without a colon: {line:?}")));
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => StsMode::Enforce,
                        "testing" => StsMode::Testing,
                        "none" => StsMode::None,
                        _ => return Err(PolicyError(format!("unknown mode {value:?}"))),
                    })
                }
                "max_age" => {
                    let n: u64 = value
                        .parse()
                        .map_err(|_| PolicyError(format!("max_age {value:?} is not a number")))?;
                    max_age = Some(n.min(MAX_AGE_LIMIT));
                }
                "mx" => {
                    let p = value.to_ascii_lowercase();
                    let name = p.strip_prefix("*.").unwrap_or(&p);
                    if name.is_empty() || name.contains('*') || name.contains(' ') {
                        return Err(PolicyError(format!("bad mx pattern {value:?}")));
                    }
                    mx.push(p.trim_end_matches('.').to_string());
                }
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err(PolicyError("version is not STSv1".into()));
        }
        let mode = mode.ok_or_else(|| PolicyError("no mode".into()))?;
        let max_age = max_age.ok_or_else(|| PolicyError("no max_age".into()))?;
        if mx.is_empty() && mode != StsMode::None {
            return Err(PolicyError("no mx pattern".into()));
        }
        Ok(StsPolicy { mode, mx, max_age })
    }

    /// Does `host` match one of the `mx` patterns?
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
            None => *p == host,
        })
    }

    /// The policy's lines as TLS-RPT's `policy-string` has them.
    pub fn lines(&self) -> Vec<String> {
        let mut v = vec![
            "version: STSv1".to_string(),
            format!("mode: {}", self.mode.as_str()),
        ];
        v.extend(self.mx.iter().map(|m| format!("mx: {m}")));
        v.push(format!("max_age: {}", self.max_age));
        v
    }
}

/// Where fetched policies are kept across restarts (the queue's database in
/// the binary): opaque bytes per domain.
pub trait StsStore: Send + Sync {
    /// The stored entry of `domain`.
    fn load(&self, domain: &str) -> Option<Vec<u8>>;
    /// Stores (replaces) the entry of `domain`.
    fn save(&self, domain: &str, entry: &[u8]);
    /// Every stored domain.
    fn domains(&self) -> Vec<String>;
}

/// A cached policy: the TXT id it was fetched under and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsEntry {
    /// The `id=` of the TXT record at fetch time.
    pub id: String,
    /// The policy.
    pub policy: StsPolicy,
    /// Unix seconds of the fetch.
    pub fetched: u64,
}

impl StsEntry {
    /// Unix seconds when the entry expires.
    pub fn expires(&self) -> u64 {
        self.fetched.saturating_add(self.policy.max_age)
    }
}

/// What the cache says about a domain.
#[derive(Debug, Clone)]
pub struct StsAnswer {
    /// The policy in force, if any.
    pub entry: Option<Arc<StsEntry>>,
    /// A failure to report (a fetch that failed, a policy that did not
    /// parse), even when a cached policy still applies.
    pub problem: Option<(TlsFailure, String)>,
    /// Where the policy came from: "cache", "fetched", "none".
    pub source: &'static str,
}

/// Fetch settings.
#[derive(Debug, Clone)]
pub(crate) struct FetchParams {
    pub(crate) port: u16,
    pub(crate) timeout: Duration,
    pub(crate) max_size: usize,
}

/// How long a failed fetch is not tried again for the same policy id (each
/// delivery to the domain would otherwise wait for it).
const FETCH_BACKOFF: Duration = Duration::from_secs(300);

/// A fetch that failed: the policy id it was for, when, and why.
type FailedFetch = (String, std::time::Instant, (TlsFailure, String));

/// Policies in memory, backed by an [`StsStore`].
pub struct StsCache {
    mem: Mutex<HashMap<String, Arc<StsEntry>>>,
    /// Domain → the last failed fetch.
    failed: Mutex<HashMap<String, FailedFetch>>,
    store: Option<Arc<dyn StsStore>>,
    fetch: FetchParams,
}

fn now_secs() -> u64 {
    postern_core::now_ms() / 1000
}

/// The `id` of the one valid `v=STSv1` TXT record, if exactly one
/// (section 3.1: several mean no policy).
pub(crate) fn txt_id(records: &[Vec<u8>]) -> Option<String> {
    let ids: Vec<String> = records
        .iter()
        .filter_map(|r| std::str::from_utf8(r).ok())
        .filter(|t| t.trim_start().starts_with("v=STSv1"))
        .filter_map(|t| {
            t.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                let v = v.trim();
                (k.trim() == "id"
                    && !v.is_empty()
                    && v.len() <= 32
                    && v.bytes().all(|b| b.is_ascii_alphanumeric()))
                .then(|| v.to_string())
            })
        })
        .collect();
    match ids.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

impl StsCache {
    pub(crate) fn new(store: Option<Arc<dyn StsStore>>, fetch: FetchParams) -> StsCache {
        let mut mem = HashMap::new();
        if let Some(s) = &store {
            let now = now_secs();
            for d in s.domains() {
                let Some(bytes) = s.load(&d) else { continue };
                match serde_json::from_slice::<StsEntry>(&bytes) {
                    Ok(e) if e.expires() > now => {
                        mem.insert(d, Arc::new(e));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(domain = %d, error = %e, "unreadable cached MTA-STS policy")
                    }
                }
            }
        }
        StsCache {
            mem: Mutex::new(mem),
            failed: Mutex::new(HashMap::new()),
            store,
            fetch,
        }
    }

    fn cached(&self, domain: &str) -> Option<Arc<StsEntry>> {
        let now = now_secs();
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .filter(|e| e.expires() > now)
            .cloned()
    }

    fn keep(&self, domain: &str, entry: StsEntry) -> Arc<StsEntry> {
        if let (Some(s), Ok(bytes)) = (&self.store, serde_json::to_vec(&entry)) {
            s.save(domain, &bytes);
        }
        let e = Arc::new(entry);
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_string(), e.clone());
        e
    }

    /// The policy of `domain`: TXT id, cache, fetch.
    pub(crate) async fn policy<R: Resolver>(
        &self,
        domain: &str,
        resolver: &R,
        checker: &Checker,
    ) -> StsAnswer {
        let domain = domain.to_ascii_lowercase();
        let cached = self.cached(&domain);
        let id = match resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => txt_id(&records),
            Err(_) => None,
        };
        let Some(id) = id else {
            // No (usable) record: an unexpired cached policy still applies.
            return StsAnswer {
                source: if cached.is_some() { "cache" } else { "none" },
                entry: cached,
                problem: None,
            };
        };
        if let Some(c) = &cached {
            if c.id == id {
                return StsAnswer {
                    entry: cached,
                    problem: None,
                    source: "cache",
                };
            }
        }
        let recent_failure = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&domain)
            .filter(|(fid, at, _)| *fid == id && at.elapsed() < FETCH_BACKOFF)
            .map(|(_, _, why)| why.clone());
        if let Some(problem) = recent_failure {
            return StsAnswer {
                source: if cached.is_some() { "cache" } else { "none" },
                entry: cached,
                problem: Some(problem),
            };
        }
        match self.fetch_policy(&domain, resolver, checker).await {
            Ok(policy) => {
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&domain);
                let e = self.keep(
                    &domain,
                    StsEntry {
                        id,
                        policy,
                        fetched: now_secs(),
                    },
                );
                StsAnswer {
                    entry: Some(e),
                    problem: None,
                    source: "fetched",
                }
            }
            Err(problem) => {
                tracing::info!(%domain, error = %problem.1, "MTA-STS policy fetch failed");
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        domain.clone(),
                        (id, std::time::Instant::now(), problem.clone()),
                    );
                StsAnswer {
                    source: if cached.is_some() { "cache" } else { "none" },
                    entry: cached,
                    problem: Some(problem),
                }
            }
        }
    }

    /// Fetches again every cached policy past half its `max_age`, so a
    /// policy never lapses while its domain keeps it (section 5.1).
    pub(crate) async fn refresh<R: Resolver>(&self, resolver: &R, checker: &Checker) -> usize {
        let now = now_secs();
        let due: Vec<(String, Arc<StsEntry>)> = self
            .mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| now >= e.fetched.saturating_add(e.policy.max_age / 2))
            .map(|(d, e)| (d.clone(), e.clone()))
            .collect();
        let mut n = 0;
        for (domain, old) in due {
            let id = match resolver.txt(&format!("_mta-sts.{domain}")).await {
                Ok(records) => txt_id(&records).unwrap_or_else(|| old.id.clone()),
                Err(_) => old.id.clone(),
            };
            if let Ok(policy) = self.fetch_policy(&domain, resolver, checker).await {
                self.keep(
                    &domain,
                    StsEntry {
                        id,
                        policy,
                        fetched: now_secs(),
                    },
                );
                n += 1;
            }
        }
        n
    }

    /// GET the policy over HTTPS, within the time and size limits.
    async fn fetch_policy<R: Resolver>(
        &self,
        domain: &str,
        resolver: &R,
        checker: &Checker,
    ) -> Result<StsPolicy, (TlsFailure, String)> {
        let host = format!("mta-sts.{domain}");
        let work = fetch_text(&host, resolver, checker, &self.fetch);
        let text = match tokio::time::timeout(self.fetch.timeout, work).await {
            Ok(r) => r?,
            Err(_) => {
                return Err((
                    TlsFailure::StsPolicyFetchError,
                    format!("https://{host}: no answer within {:?}", self.fetch.timeout),
                ))
            }
        };
        StsPolicy::parse(&text).map_err(|e| (TlsFailure::StsPolicyInvalid, e.to_string()))
    }
}

/// The policy file's text from `host`.
async fn fetch_text<R: Resolver>(
    host: &str,
    resolver: &R,
    checker: &Checker,
    p: &FetchParams,
) -> Result<String, (TlsFailure, String)> {
    let fetch_err = |why: String| {
        (
            TlsFailure::StsPolicyFetchError,
            format!("https://{host}: {why}"),
        )
    };
    let addrs = resolver
        .addrs(host)
        .await
        .map_err(|e| fetch_err(e.to_string()))?;
    let mut last = fetch_err("no address".into());
    for ip in addrs.into_iter().take(2) {
        let addr = SocketAddr::new(ip, p.port);
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => {
                last = fetch_err(format!("{addr}: {e}"));
                continue;
            }
        };
        let name = ServerName::try_from(host.to_string()).map_err(|e| fetch_err(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(checker.https.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| (TlsFailure::StsWebpkiInvalid, format!("https://{host}: {e}")))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fetch_err(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get("/.well-known/mta-sts.txt")
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "postern")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fetch_err(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| fetch_err(e.to_string()))?;
        // No redirects (section 3.3): anything but 200 is a failure.
        if resp.status() != hyper::StatusCode::OK {
            return Err(fetch_err(format!("HTTP status {}", resp.status())));
        }
        let ctype = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !ctype.starts_with("text/plain") {
            return Err(fetch_err(format!(
                "content type {ctype:?} is not text/plain"
            )));
        }
        let body = Limited::new(resp.into_body(), p.max_size)
            .collect()
            .await
            .map_err(|e| fetch_err(format!("body: {e}")))?
            .to_bytes();
        return String::from_utf8(body.to_vec())
            .map_err(|_| (TlsFailure::StsPolicyInvalid, "policy is not UTF-8".into()));
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_the_rfc_shows_them() {
        let p = StsPolicy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.example.com."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("example.net"), "* is one label, not none");
        assert!(!p.allows("a.b.example.net"), "* is one label, not two");
        assert!(!p.allows("mail.example.org"));
        assert_eq!(p.lines()[1], "mode: enforce");
        // Unknown keys are ignored; an over-long max_age is capped.
        let p = StsPolicy::parse(
            "version: STSv1\nmode: testing\nmx: a.test\nmax_age: 99999999999\nextra: 1\n",
        )
        .unwrap();
        assert_eq!((p.mode, p.max_age), (StsMode::Testing, MAX_AGE_LIMIT));
        assert!(StsPolicy::parse("version: STSv1\nmode: none\nmax_age: 1\n").is_ok());
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            "",
            "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.test\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
            "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n",
            "<html>not a policy</html>",
        ] {
            assert!(StsPolicy::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exactly_one_txt_record_gives_an_id() {
        let r = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            txt_id(&[r("v=STSv1; id=20260101T000000")]),
            Some("20260101T000000".into())
        );
        assert_eq!(
            txt_id(&[r("v=spf1 -all"), r("v=STSv1;id=abc")]),
            Some("abc".into())
        );
        assert_eq!(txt_id(&[r("v=STSv1; id=a"), r("v=STSv1; id=b")]), None);
        assert_eq!(txt_id(&[r("v=STSv1; id=bad-id!")]), None);
        assert_eq!(txt_id(&[]), None);
    }
}
