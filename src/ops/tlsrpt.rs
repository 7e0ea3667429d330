//! TLS-RPT (RFC 8460): counting outbound TLS sessions per policy domain and
//! sending each period's aggregate report to the domains that ask for one.
//!
//! [`Reporter::record`] takes every [`TlsEvent`] delivery reports (a
//! session that met its policy, or a failure) and adds it to the current
//! period's counts: per policy domain, per policy (type, strings, MX
//! hosts), successes, failures, and failure details by result type,
//! receiving MX host and IP. The counts are written to the queue's state
//! tree every 30 s and when a period closes, so a restart loses at most 30 s
//! of counts. When the period ends (`tls_report.interval`, one day, aligned
//! to UTC midnight), [`Reporter::run`] looks up `_smtp._tls.<domain>` for
//! each counted domain and sends the report, JSON in the RFC's field names,
//! gzip-compressed: by mail through our own queue (`mailto:`, a
//! multipart/report with `report-type="tlsrpt"`) or by HTTPS POST
//! (`https:`, `application/tlsrpt+gzip`). Domains without the record get
//! nothing. Off unless `tls_report.organization` and `contact` are set.

use crate::config::TlsReportConfig;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use postern_core::{Address, Envelope, Recipient};
use postern_delivery::{Checker, PolicySource, Resolver, TlsEvent};
use postern_queue::Queue;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// State-tree key of the period being counted.
const CURRENT: &str = "tlsrpt/current";
/// State-tree prefix of closed periods not yet sent.
const CLOSED: &str = "tlsrpt/closed/";
/// Failure details kept per policy (the rest are summed only).
const MAX_DETAILS: usize = 100;

/// One policy's counts within a domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PolicyCounts {
    /// sts, tlsa or no-policy-found.
    policy_type: String,
    /// The policy's text (STS lines, TLSA records).
    policy_string: Vec<String>,
    /// MX hosts the policy names.
    mx_host: Vec<String>,
    success: u64,
    failure: u64,
    details: Vec<Detail>,
}

/// Failures of one kind at one MX host and address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Detail {
    result_type: String,
    receiving_mx_hostname: String,
    receiving_ip: Option<String>,
    additional_information: String,
    count: u64,
}

/// The counts of one reporting period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Period {
    /// Unix seconds, inclusive.
    start: u64,
    /// Unix seconds, exclusive.
    end: u64,
    /// Policy domain → its policies.
    domains: BTreeMap<String, Vec<PolicyCounts>>,
}

impl Period {
    fn starting(now: u64, interval: u64) -> Period {
        let start = now - now % interval.max(1);
        Period {
            start,
            end: start + interval.max(1),
            domains: BTreeMap::new(),
        }
    }

    fn add(&mut self, e: &TlsEvent, max_domains: usize) {
        let domain = e.domain.to_ascii_lowercase();
        if !self.domains.contains_key(&domain) && self.domains.len() >= max_domains {
            return;
        }
        let (policy_type, policy_string, mx_host) = match &e.policy {
            PolicySource::Sts { lines, .. } => (
                "sts",
                lines.clone(),
                lines
                    .iter()
                    .filter_map(|l| l.strip_prefix("mx: ").map(str::to_string))
                    .collect(),
            ),
            PolicySource::Tlsa(records) => ("tlsa", records.clone(), vec![e.mx_host.clone()]),
            PolicySource::Static(_) => ("no-policy-found", Vec::new(), Vec::new()),
        };
        let policies = self.domains.entry(domain).or_default();
        let i = match policies.iter().position(|p| {
            p.policy_type == policy_type && p.policy_string == policy_string && p.mx_host == mx_host
        }) {
            Some(i) => i,
            None => {
                policies.push(PolicyCounts {
                    policy_type: policy_type.to_string(),
                    policy_string,
                    mx_host,
                    ..PolicyCounts::default()
                });
                policies.len() - 1
            }
        };
        let p = &mut policies[i];
        let Some(f) = &e.failure else {
            p.success += 1;
            return;
        };
        p.failure += 1;
        let ip = e.ip.map(|ip| ip.to_string());
        let rt = f.result_type();
        if let Some(d) = p.details.iter_mut().find(|d| {
            d.result_type == rt && d.receiving_mx_hostname == e.mx_host && d.receiving_ip == ip
        }) {
            d.count += 1;
        } else if p.details.len() < MAX_DETAILS {
            p.details.push(Detail {
                result_type: rt.to_string(),
                receiving_mx_hostname: e.mx_host.clone(),
                receiving_ip: ip,
                additional_information: e.detail.chars().take(200).collect(),
                count: 1,
            });
        }
    }
}

/// "2026-12-01T00:00:00Z"
fn rfc3339(secs: u64) -> String {
    let ms = postern_core::date::rfc3339_ms(secs.saturating_mul(1000));
    ms.replace(".000Z", "Z")
}

/// The RFC 8460 section 4.4 JSON of one domain's policies in a period.
fn report_json(
    org: &str,
    contact: &str,
    submitter: &str,
    domain: &str,
    period: &Period,
    policies: &[PolicyCounts],
) -> serde_json::Value {
    let policies: Vec<serde_json::Value> = policies
        .iter()
        .map(|p| {
            let mut policy = serde_json::json!({
                "policy-type": p.policy_type,
                "policy-domain": domain,
            });
            if !p.policy_string.is_empty() {
                policy["policy-string"] = serde_json::json!(p.policy_string);
            }
            if !p.mx_host.is_empty() {
                policy["mx-host"] = serde_json::json!(p.mx_host);
            }
            let mut v = serde_json::json!({
                "policy": policy,
                "summary": {
                    "total-successful-session-count": p.success,
                    "total-failure-session-count": p.failure,
                },
            });
            if !p.details.is_empty() {
                let details: Vec<serde_json::Value> = p
                    .details
                    .iter()
                    .map(|d| {
                        let mut f = serde_json::json!({
                            "result-type": d.result_type,
                            "failed-session-count": d.count,
                        });
                        if !d.receiving_mx_hostname.is_empty() {
                            f["receiving-mx-hostname"] = d.receiving_mx_hostname.clone().into();
                        }
                        if let Some(ip) = &d.receiving_ip {
                            f["receiving-ip"] = ip.clone().into();
                        }
                        if !d.additional_information.is_empty() {
                            f["additional-information"] = d.additional_information.clone().into();
                        }
                        f
                    })
                    .collect();
                v["failure-details"] = details.into();
            }
            v
        })
        .collect();
    serde_json::json!({
        "organization-name": org,
        "date-range": {
            "start-datetime": rfc3339(period.start),
            "end-datetime": rfc3339(period.end.saturating_sub(1)),
        },
        "contact-info": contact,
        "report-id": report_id(period, domain, submitter),
        "policies": policies,
    })
}

fn report_id(period: &Period, domain: &str, submitter: &str) -> String {
    format!("{}.{}.{domain}@{submitter}", period.start, period.end)
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

/// The `rua` addresses of a `v=TLSRPTv1` TXT record (section 3).
fn rua(records: &[Vec<u8>]) -> Vec<String> {
    let mut out = Vec::new();
    for r in records {
        let Ok(text) = std::str::from_utf8(r) else {
            continue;
        };
        if !text.trim_start().starts_with("v=TLSRPTv1") {
            continue;
        }
        for kv in text.split(';') {
            if let Some(("rua", v)) = kv.trim().split_once('=').map(|(k, v)| (k.trim(), v)) {
                out.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|u| u.starts_with("mailto:") || u.starts_with("https://"))
                        .map(str::to_string),
                );
            }
        }
    }
    out
}

/// The report mail (RFC 8460 section 5.3).
fn report_mail(
    from: &str,
    to: &[String],
    submitter: &str,
    domain: &str,
    period: &Period,
    gz: &[u8],
) -> Vec<u8> {
    let id = report_id(period, domain, submitter);
    let boundary = format!("tlsrpt-{}", period.start);
    let filename = format!(
        "{submitter}!{domain}!{}!{}.json.gz",
        period.start, period.end
    );
    let mut b64 = String::new();
    let encoded = postern_core::base64::base64(gz);
    for chunk in encoded.as_bytes().chunks(76) {
        b64.push_str(&String::from_utf8_lossy(chunk));
        b64.push_str("\r\n");
    }
    format!(
        "From: <{from}>\r\nTo: {to}\r\nSubject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{id}>\r\n\
         Date: {date}\r\nMessage-ID: <{id}>\r\nTLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {submitter}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is an aggregate TLS report from {submitter} for {domain}.\r\n\r\n\
         --{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n{b64}\r\n--{boundary}--\r\n",
        to = to
            .iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(", "),
        date = postern_core::date::rfc5322(SystemTime::now()),
    )
    .into_bytes()
}

fn now_secs() -> u64 {
    postern_core::now_ms() / 1000
}

/// Counts TLS sessions and sends the reports.
pub struct Reporter {
    cfg: TlsReportConfig,
    /// Our host name: the report's submitter.
    submitter: String,
    queue: Queue,
    period: Mutex<Period>,
    /// Reports sent, by result.
    sent: prometheus::IntCounterVec,
}

impl Reporter {
    /// A reporter continuing the period saved in `queue` (if any).
    pub fn new(
        cfg: TlsReportConfig,
        submitter: String,
        queue: Queue,
        sent: prometheus::IntCounterVec,
    ) -> Reporter {
        let interval = cfg.interval.0.as_secs().max(1);
        let saved = queue
            .state_get(CURRENT)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Period>(&b).ok());
        let period = saved.unwrap_or_else(|| Period::starting(now_secs(), interval));
        Reporter {
            cfg,
            submitter,
            queue,
            period: Mutex::new(period),
            sent,
        }
    }

    /// True when reports are configured.
    pub fn enabled(&self) -> bool {
        self.cfg.enabled()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Period> {
        self.period.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one session result.
    pub fn record(&self, e: &TlsEvent) {
        if !self.enabled() || e.domain.is_empty() {
            return;
        }
        self.lock().add(e, self.cfg.max_domains);
    }

    /// Saves the current period; closes it (to be sent) once it is over.
    fn save(&self) {
        let interval = self.cfg.interval.0.as_secs().max(1);
        let now = now_secs();
        let (current, closed) = {
            let mut p = self.lock();
            let closed = if now >= p.end {
                let next = Period::starting(now, interval);
                Some(std::mem::replace(&mut *p, next))
            } else {
                None
            };
            (p.clone(), closed)
        };
        if let Some(c) = closed.filter(|c| !c.domains.is_empty()) {
            if let Ok(bytes) = serde_json::to_vec(&c) {
                if let Err(e) = self
                    .queue
                    .state_put(&format!("{CLOSED}{:020}", c.start), &bytes)
                {
                    tracing::warn!(error = %e, "cannot save TLS report counts");
                }
            }
        }
        if let Ok(bytes) = serde_json::to_vec(&current) {
            if let Err(e) = self.queue.state_put(CURRENT, &bytes) {
                tracing::warn!(error = %e, "cannot save TLS report counts");
            }
        }
    }

    /// Saves the counts every 30 s and sends each period's reports when it
    /// ends, until `stop`; `txt` looks up `_smtp._tls` records, `checker`
    /// verifies HTTPS report servers.
    pub async fn run<R: Resolver>(
        self: Arc<Self>,
        resolver: impl Fn() -> Arc<R> + Send + Sync,
        checker: Checker,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if !self.enabled() {
            return;
        }
        loop {
            let end = self.lock().end;
            let wait = end.saturating_sub(now_secs()).clamp(0, 30);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait).max(Duration::from_millis(200))) => {}
                _ = stop.changed() => {
                    self.save();
                    return;
                }
            }
            self.save();
            self.send_closed(&*resolver(), &checker).await;
        }
    }

    /// Sends every closed period's reports, then forgets the period.
    async fn send_closed<R: Resolver>(&self, resolver: &R, checker: &Checker) {
        let keys = self.queue.state_keys(CLOSED).unwrap_or_default();
        for key in keys {
            let Some(period) = self
                .queue
                .state_get(&key)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<Period>(&b).ok())
            else {
                let _ = self.queue.state_remove(&key);
                continue;
            };
            for (domain, policies) in &period.domains {
                let records = match resolver.txt(&format!("_smtp._tls.{domain}")).await {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                let targets = rua(&records);
                if targets.is_empty() {
                    continue;
                }
                let result = self
                    .send_one(domain, &period, policies, &targets, resolver, checker)
                    .await;
                let label = if result.is_ok() { "sent" } else { "failed" };
                self.sent.with_label_values(&[label]).inc();
                match result {
                    Ok(()) => tracing::info!(%domain, to = %targets.join(","), "TLS report sent"),
                    Err(e) => tracing::warn!(%domain, error = %e, "TLS report not sent"),
                }
            }
            let _ = self.queue.state_remove(&key);
        }
    }

    async fn send_one<R: Resolver>(
        &self,
        domain: &str,
        period: &Period,
        policies: &[PolicyCounts],
        targets: &[String],
        resolver: &R,
        checker: &Checker,
    ) -> anyhow::Result<()> {
        let json = report_json(
            &self.cfg.organization,
            &self.cfg.contact,
            &self.submitter,
            domain,
            period,
            policies,
        );
        let gz = gzip(json.to_string().as_bytes())?;
        let mut mail_to = Vec::new();
        let mut errors = Vec::new();
        for t in targets {
            if let Some(addr) = t.strip_prefix("mailto:") {
                // A mailto URI may carry ?query parts; the address is before.
                let addr = addr.split('?').next().unwrap_or("");
                mail_to.push(addr.to_string());
            } else if let Err(e) = post(t, &gz, resolver, checker).await {
                errors.push(format!("{t}: {e}"));
            }
        }
        if !mail_to.is_empty() {
            let from = if self.cfg.from.is_empty() {
                format!("noreply-smtp-tls-reporting@{}", self.submitter)
            } else {
                self.cfg.from.clone()
            };
            let body = report_mail(&from, &mail_to, &self.submitter, domain, period, &gz);
            let recipients: Vec<Recipient> = mail_to
                .iter()
                .filter_map(|a| Address::parse(a).ok())
                .map(Recipient::new)
                .collect();
            if recipients.is_empty() {
                errors.push("no valid mailto address".into());
            } else {
                let sender = Address::parse(&from).ok();
                let env = Envelope::new(
                    sender,
                    recipients,
                    "127.0.0.1",
                    &self.submitter,
                    postern_core::now_ms(),
                    body.len() as u64,
                );
                self.queue.enqueue(env, &body).await?;
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(errors.join("; ")))
        }
    }
}

/// POSTs a gzipped report to an `https:` URL (section 5.4), its host
/// resolved by delivery's resolver.
async fn post<R: Resolver>(
    url: &str,
    gz: &[u8],
    resolver: &R,
    checker: &Checker,
) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("not https"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = postern_delivery::split_host_port(authority, 443)?;
    let work = async {
        let ip = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip,
            Err(_) => *resolver
                .addrs(&host)
                .await?
                .first()
                .ok_or_else(|| anyhow::anyhow!("{host} has no address"))?,
        };
        let tcp = tokio::net::TcpStream::connect((ip, port)).await?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())?;
        let tls = tokio_rustls::TlsConnector::from(checker.https_config())
            .connect(name, tcp)
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(Full::new(Bytes::copy_from_slice(gz)))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("HTTP status {status}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_delivery::{StsMode, TlsFailure, TlsLevel};

    fn event(policy: PolicySource, failure: Option<TlsFailure>) -> TlsEvent {
        TlsEvent {
            domain: "Example.Test".into(),
            mx_host: "mx.example.test".into(),
            ip: Some("192.0.2.1".parse().unwrap()),
            policy,
            failure,
            version: Some("TLSv1.3"),
            detail: "details".into(),
        }
    }

    #[test]
    fn sessions_are_counted_per_policy_and_failures_per_kind() {
        let sts = PolicySource::Sts {
            id: "1".into(),
            mode: StsMode::Enforce,
            lines: vec![
                "version: STSv1".into(),
                "mode: enforce".into(),
                "mx: mx.example.test".into(),
                "max_age: 86400".into(),
            ],
        };
        let mut p = Period::starting(86_400 * 3 + 5, 86_400);
        assert_eq!((p.start, p.end), (86_400 * 3, 86_400 * 4));
        p.add(&event(sts.clone(), None), 10);
        p.add(&event(sts.clone(), None), 10);
        p.add(
            &event(sts.clone(), Some(TlsFailure::CertificateHostMismatch)),
            10,
        );
        p.add(&event(sts, Some(TlsFailure::CertificateHostMismatch)), 10);
        p.add(&event(PolicySource::Static(TlsLevel::May), None), 10);
        let d = &p.domains["example.test"];
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].success, d[0].failure), (2, 2));
        assert_eq!(d[0].mx_host, ["mx.example.test"]);
        assert_eq!(d[0].details.len(), 1);
        assert_eq!(d[0].details[0].count, 2);
        assert_eq!(d[1].policy_type, "no-policy-found");
        let json = report_json("Org", "mailto:c@o.test", "gw.test", "example.test", &p, d);
        assert_eq!(json["date-range"]["start-datetime"], "1970-01-04T00:00:00Z");
        assert_eq!(json["date-range"]["end-datetime"], "1970-01-04T23:59:59Z");
        assert_eq!(json["policies"][0]["policy"]["policy-type"], "sts");
        assert_eq!(
            json["policies"][0]["failure-details"][0]["result-type"],
            "certificate-host-mismatch"
        );
        assert_eq!(
            json["policies"][0]["summary"]["total-failure-session-count"],
            2
        );
        // The domain limit holds.
        let mut q = Period::starting(0, 60);
        q.add(&event(PolicySource::Tlsa(vec!["3 1 1 ab".into()]), None), 0);
        assert!(q.domains.is_empty());
    }

    #[test]
    fn rua_takes_mailto_and_https_of_tlsrptv1_records_only() {
        let r = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            rua(&[
                r("v=TLSRPTv1; rua=mailto:a@x.test,https://r.x.test/v1"),
                r("v=spf1 -all"),
                r("v=TLSRPTv1;rua=ftp://no"),
            ]),
            ["mailto:a@x.test", "https://r.x.test/v1"]
        );
    }
}
