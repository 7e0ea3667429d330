//! Issue 15: outbound transport security against real things on loopback:
//! a DNS server serving a root zone signed by the test (its key is
//! Postern's trust anchor), an HTTPS server publishing MTA-STS policies
//! under a test CA, and sinks offering STARTTLS with certificates that
//! match the expectations or do not.
//!
//! - DANE: DANE-EE and DANE-TA records that match and that do not, a bogus
//!   signature (deferred), an unsigned delegation (falls back to
//!   opportunistic TLS, or is refused by `dane-only`); static `verify` and
//!   `none` levels beside them.
//! - MTA-STS enforce: a plain-text-only hop and a certificate for another
//!   name are deferred, then the message goes once the hop is fixed; an MX
//!   host the policy does not list is deferred; the cached policy still
//!   applies after a restart with the policy server gone.
//! - MTA-STS testing: delivered in spite of an untrusted certificate, and
//!   the failure reported in a TLS-RPT report that an independent JSON
//!   schema check (Python's jsonschema, tests/data/tlsrpt.schema.json from
//!   RFC 8460 section 4.4) accepts.

mod common;

use common::certs::{cert_der, cert_spki, sha256, TestCa};
use common::dns::TestKey;
use common::https::PolicyServer;
use common::sink::server_config;
use common::tools::{self, Package};
use common::{route, wait_until, DnsServer, Gateway, RawClient, Sink, Zone, RELAY};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Sends one message from s@example.test to `rcpt`; the final reply.
async fn send(gw: &Gateway, rcpt: &str, subject: &str) -> String {
    let mut c = RawClient::connect(gw.smtp).await;
    let r = c.cmd("EHLO client.test").await;
    assert!(r.starts_with("250"), "{r}");
    let data = format!("Subject: {subject}\r\n\r\n{subject}\r\n.\r\n");
    c.transaction("<s@example.test>", &[&format!("<{rcpt}>")], data.as_bytes())
        .await
}

/// The tracking log's `attempt` lines for recipient `rcpt`.
fn attempts(gw: &Gateway, rcpt: &str) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(gw.dir.path().join("queue/tracking.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "attempt" && v["rcpt"] == rcpt)
        .collect()
}

/// Waits for an attempt line for `rcpt` whose `tls_result` is `result`;
/// returns it.
async fn attempt_with(gw: &Gateway, rcpt: &str, result: &str) -> serde_json::Value {
    wait_until(
        Duration::from_secs(20),
        &format!("{rcpt}: attempt with {result}"),
        || attempts(gw, rcpt).iter().any(|a| a["tls_result"] == result),
    )
    .await;
    attempts(gw, rcpt)
        .into_iter()
        .rfind(|a| a["tls_result"] == result)
        .unwrap()
}

/// The queue's `last_error` of the message to `rcpt`, once it has one (the
/// attempt line is written before the record is updated).
async fn queue_reason(gw: &Gateway, rcpt: &str) -> String {
    for _ in 0..100 {
        let r = queue_reason_now(gw, rcpt);
        if !r.is_empty() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    queue_reason_now(gw, rcpt)
}

fn queue_reason_now(gw: &Gateway, rcpt: &str) -> String {
    let out = gw.queue(&["list", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    list.into_iter()
        .find(|v| v["to"].to_string().contains(rcpt))
        .map(|v| v["last_error"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| format!("no queued message for {rcpt} in {text}"))
}

/// The value of counter `name` with the labels given (in any order).
fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> u64 {
    gw.admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.trim().parse().ok())
        .unwrap_or(0)
}

fn delivery(dns: SocketAddr, port: u16) -> String {
    format!("{RELAY}[delivery]\nport = {port}\nnameservers = [\"{dns}\"]\ndns_timeout = \"2s\"\n")
}

/// Writes the trust anchor of `key` beside the test's other files.
fn anchor_file(dir: &Path, key: &TestKey) -> std::path::PathBuf {
    let p = dir.join("anchor.txt");
    std::fs::write(&p, key.trust_anchor()).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn dane_ee_and_ta_match_and_mismatch_bogus_defers_and_insecure_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca", "Postern Test CA");
    let other = TestCa::new(dir.path(), "other", "Other CA");
    let domains = [
        "ee",
        "ta",
        "eebad",
        "tabad",
        "bogus",
        "plain",
        "plainonly",
        "verify",
        "none",
    ];
    let mx: Vec<String> = domains.iter().map(|d| format!("mx.{d}.test")).collect();
    let names: Vec<&str> = mx.iter().map(String::as_str).collect();
    let cert = ca.issue("mx", &names);
    let sink = Sink::start_tls("127.0.0.1:0", &cert.chain, &cert.key).await;
    let port = sink.addr.port();
    let spki = sha256(&cert_spki(&cert.leaf));
    let key = TestKey::generate();
    let mut zone = Zone::new();
    for d in domains {
        zone = zone
            .mx(&format!("{d}.test"), 10, &format!("mx.{d}.test"))
            .a(&format!("mx.{d}.test"), "127.0.0.1");
    }
    let bogus_tlsa = format!("_{port}._tcp.mx.bogus.test");
    let zone = zone
        .tlsa("mx.ee.test", port, 3, 1, 1, &spki)
        .tlsa("mx.ta.test", port, 2, 0, 1, &sha256(&cert_der(&ca.cert)))
        .tlsa("mx.eebad.test", port, 3, 1, 1, &[7u8; 32])
        .tlsa(
            "mx.tabad.test",
            port,
            2,
            0,
            1,
            &sha256(&cert_der(&other.cert)),
        )
        .tlsa("mx.bogus.test", port, 3, 1, 1, &spki)
        .sign(&key, &["plain.test", "plainonly.test"], &[&bogus_tlsa]);
    let dns = DnsServer::start(zone).await;
    let anchor = anchor_file(dir.path(), &key);
    let gw = Gateway::start(
        "",
        &format!(
            "{}[outbound_tls]\nlevel = \"dane\"\nmta_sts = false\ntrust_anchor = \"{}\"\nca_file = \"{}\"\n\
             [[tls_policy]]\ndomain = \"plainonly.test\"\nlevel = \"dane-only\"\n\
             [[tls_policy]]\ndomain = \"verify.test\"\nlevel = \"verify\"\n\
             [[tls_policy]]\ndomain = \"none.test\"\nlevel = \"none\"\n",
            delivery(dns.addr, port),
            anchor.display(),
            ca.cert.display()
        ),
    );
    for d in domains {
        let r = send(&gw, &format!("u@{d}.test"), &format!("to {d}")).await;
        assert!(r.starts_with("250"), "{d}: {r}");
    }
    // Matching DANE-EE and DANE-TA records: delivered over TLS, DANE.
    for d in ["ee", "ta"] {
        let a = attempt_with(&gw, &format!("u@{d}.test"), "ok").await;
        assert_eq!(a["tls_policy"], "dane", "{d}: {a}");
        assert_eq!(a["result"], "delivered", "{d}: {a}");
        assert!(a["tls"].as_str().unwrap().starts_with("TLSv1."), "{a}");
    }
    // Records that match nothing: deferred before MAIL FROM, 4.7.5.
    for d in ["eebad", "tabad"] {
        let rcpt = format!("u@{d}.test");
        let a = attempt_with(&gw, &rcpt, "validation-failure").await;
        assert_eq!(a["tls_policy"], "dane", "{a}");
        assert_eq!(a["result"], "deferred", "{a}");
        let why = queue_reason(&gw, &rcpt).await;
        assert!(
            why.contains("4.7.5") && why.contains("validation-failure"),
            "{d}: {why}"
        );
    }
    // A bad signature on the TLSA records: bogus, a temporary failure.
    let a = attempt_with(&gw, "u@bogus.test", "dnssec-invalid").await;
    assert_eq!(a["result"], "deferred", "{a}");
    // The unsigned delegation: no DANE, opportunistic TLS as before...
    let a = attempt_with(&gw, "u@plain.test", "ok").await;
    assert_eq!(
        (a["tls_policy"].as_str(), a["result"].as_str()),
        (Some("may"), Some("delivered")),
        "{a}"
    );
    // ...unless the destination requires DANE.
    let a = attempt_with(&gw, "u@plainonly.test", "dane-required").await;
    assert_eq!(a["result"], "deferred", "{a}");
    assert!(queue_reason(&gw, "u@plainonly.test")
        .await
        .contains("dane-required"));
    // Static levels: verify (the test CA from ca_file), none (no TLS).
    let a = attempt_with(&gw, "u@verify.test", "ok").await;
    assert_eq!(a["tls_policy"], "verify", "{a}");
    let a = attempt_with(&gw, "u@none.test", "ok").await;
    assert_eq!(
        (a["tls_policy"].as_str(), a["tls"].as_str()),
        (Some("none"), Some("none")),
        "{a}"
    );
    wait_until(Duration::from_secs(10), "five delivered", || {
        sink.count() == 5
    })
    .await;
    let over_tls: Vec<bool> = sink.all().iter().map(|m| m.tls).collect();
    assert_eq!(over_tls.iter().filter(|t| **t).count(), 4, "{over_tls:?}");
    assert!(
        metric(
            &gw,
            "postern_delivery_tls_total",
            &[("policy", "dane"), ("result", "ok")]
        ) >= 2
    );
    assert!(
        metric(
            &gw,
            "postern_delivery_tls_total",
            &[("policy", "dane"), ("result", "validation-failure")]
        ) >= 2
    );
    assert!(
        metric(
            &gw,
            "postern_dns_lookups_total",
            &[("type", "tlsa"), ("result", "bogus")]
        ) >= 1
    );
    // What the operator's check says about them.
    let check = gw.with_config("tls-policy", &["check", "ee.test", "--json"]);
    let text = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["level"], "dane", "{v}");
    assert_eq!(v["mx"][0]["host"], "mx.ee.test", "{v}");
    assert_eq!(v["mx"][0]["dnssec"], "secure", "{v}");
    assert_eq!(v["mx"][0]["policy"], "dane", "{v}");
    assert!(
        v["mx"][0]["tlsa"][0]
            .as_str()
            .unwrap()
            .starts_with("3 1 1 "),
        "{v}"
    );
    for d in ["ee.test", "eebad.test", "plainonly.test"] {
        let out = gw.with_config("tls-policy", &["check", d]);
        println!(
            "$ postern tls-policy check {d}\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let plain = gw.with_config("tls-policy", &["check", "plain.test"]);
    let text = String::from_utf8_lossy(&plain.stdout).to_string();
    println!("$ postern tls-policy check plain.test\n{text}");
    assert!(text.contains("insecure") && text.contains("may"), "{text}");
}

/// The MTA-STS policy text for `mx` in `mode`.
fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn mta_sts_enforce_defers_until_the_hop_is_fixed_and_the_cache_survives_a_restart() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ca = TestCa::new(dir.path(), "ca", "Postern Test CA");
    let web = ca.issue(
        "web",
        &[
            "mta-sts.sts.test",
            "mta-sts.badmx.test",
            "mta-sts.nopolicy.test",
        ],
    );
    let right = ca.issue("right", &["mx.sts.test"]);
    let wrong = ca.issue("wrong", &["wrong.test"]);
    let server = PolicyServer::start(server_config(&web.chain, &web.key)).await;
    server.set("mta-sts.sts.test", Some(&policy("enforce", "mx.sts.test")));
    server.set(
        "mta-sts.badmx.test",
        Some(&policy("enforce", "*.elsewhere.test")),
    );
    // A hop that offers no STARTTLS at first.
    let sink = Sink::start("127.0.0.1:0").await;
    let port = sink.addr.port();
    let zone = Zone::new()
        .mx("sts.test", 10, "mx.sts.test")
        .a("mx.sts.test", "127.0.0.1")
        .txt("_mta-sts.sts.test", "v=STSv1; id=20261201")
        .a("mta-sts.sts.test", "127.0.0.1")
        .mx("badmx.test", 10, "mx.badmx.test")
        .a("mx.badmx.test", "127.0.0.1")
        .txt("_mta-sts.badmx.test", "v=STSv1; id=1")
        .a("mta-sts.badmx.test", "127.0.0.1")
        // A TXT record but no policy file (404): no policy, as opportunistic.
        .mx("nopolicy.test", 10, "mx.nopolicy.test")
        .a("mx.nopolicy.test", "127.0.0.1")
        .txt("_mta-sts.nopolicy.test", "v=STSv1; id=1")
        .a("mta-sts.nopolicy.test", "127.0.0.1");
    let dns = DnsServer::start(zone).await;
    let extra = format!(
        "{}[outbound_tls]\nca_file = \"{}\"\nmta_sts_port = {}\n",
        delivery(dns.addr, port),
        ca.cert.display(),
        server.addr.port()
    );
    let mut gw = Gateway::start_in(dir.clone(), "", &extra);
    assert!(send(&gw, "u@sts.test", "first").await.starts_with("250"));
    assert!(send(&gw, "u@badmx.test", "elsewhere")
        .await
        .starts_with("250"));
    assert!(send(&gw, "u@nopolicy.test", "no policy file")
        .await
        .starts_with("250"));
    wait_until(
        Duration::from_secs(20),
        "delivered without a policy",
        || sink.with("no policy file").len() == 1,
    )
    .await;
    let a = attempt_with(&gw, "u@nopolicy.test", "ok").await;
    assert_eq!(a["tls_policy"], "may", "{a}");
    let fetch_errors = [("policy", "may"), ("result", "sts-policy-fetch-error")];
    assert!(
        metric(&gw, "postern_delivery_tls_total", &fetch_errors) >= 1,
        "{}",
        gw.admin_get("/metrics")
            .lines()
            .filter(|l| l.contains("tls_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Plain text only: deferred, never sent without TLS.
    let a = attempt_with(&gw, "u@sts.test", "starttls-not-supported").await;
    assert_eq!(
        (a["tls_policy"].as_str(), a["result"].as_str()),
        (Some("mta-sts"), Some("deferred")),
        "{a}"
    );
    let why = queue_reason(&gw, "u@sts.test").await;
    assert!(
        why.starts_with("451 4.7.5") && why.contains("STARTTLS not offered"),
        "{why}"
    );
    println!("attempt line: {a}\nqueue reason: {why}");
    // The MX host is not in its domain's policy: deferred.
    let a = attempt_with(&gw, "u@badmx.test", "validation-failure").await;
    assert_eq!(a["result"], "deferred", "{a}");
    assert!(queue_reason(&gw, "u@badmx.test")
        .await
        .contains("not an MX host of the MTA-STS policy"));
    // A certificate for another name: still deferred.
    sink.set_tls(Some(server_config(&wrong.chain, &wrong.key)));
    attempt_with(&gw, "u@sts.test", "certificate-host-mismatch").await;
    assert_eq!(sink.with("first").len(), 0, "sent in spite of the policy");
    // Fixed: delivered over TLS at the next retry.
    sink.set_tls(Some(server_config(&right.chain, &right.key)));
    wait_until(Duration::from_secs(20), "delivered once fixed", || {
        sink.with("first").len() == 1
    })
    .await;
    assert!(sink.with("first")[0].tls);
    let a = attempt_with(&gw, "u@sts.test", "ok").await;
    assert_eq!(a["result"], "delivered", "{a}");
    assert!(
        metric(
            &gw,
            "postern_delivery_tls_total",
            &[("policy", "mta-sts"), ("result", "starttls-not-supported")]
        ) >= 1
    );
    let fetched = server.hits();
    assert!(fetched >= 1);
    // The policy is kept in the queue's store: after a restart, with the
    // policy server gone and the hop back to plain text, it still applies.
    assert!(gw.stop().success());
    drop(server);
    sink.set_tls(None);
    gw = Gateway::start_in(dir.clone(), "", &extra);
    assert!(send(&gw, "v@sts.test", "after restart")
        .await
        .starts_with("250"));
    let a = attempt_with(&gw, "v@sts.test", "starttls-not-supported").await;
    assert_eq!(a["tls_policy"], "mta-sts", "{a}");
    assert_eq!(sink.with("after restart").len(), 0);
    // The operator's view: the policy, its id and mode.
    let text = gw.with_config("tls-policy", &["check", "sts.test"]);
    println!(
        "$ postern tls-policy check sts.test\n{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let check = gw.with_config("tls-policy", &["check", "sts.test", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap_or_default();
    assert_eq!(v["mta_sts"]["mode"], "enforce", "{v}");
    assert_eq!(v["mta_sts"]["id"], "20261201", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mta_sts_testing_delivers_and_the_tls_report_passes_a_schema_check() {
    tools::require_python_module("jsonschema", Package::Debian("python3-jsonschema"));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ca = TestCa::new(dir.path(), "ca", "Postern Test CA");
    let stranger = TestCa::new(dir.path(), "stranger", "Unknown CA");
    let web = ca.issue("web", &["mta-sts.testing.test"]);
    let untrusted = stranger.issue("mx", &["mx.testing.test"]);
    let server = PolicyServer::start(server_config(&web.chain, &web.key)).await;
    server.set(
        "mta-sts.testing.test",
        Some(&policy("testing", "mx.testing.test")),
    );
    let sink = Sink::start_tls("127.0.0.1:0", &untrusted.chain, &untrusted.key).await;
    let reports = Sink::start("127.0.0.1:0").await;
    let zone = Zone::new()
        .mx("testing.test", 10, "mx.testing.test")
        .a("mx.testing.test", "127.0.0.1")
        .txt("_mta-sts.testing.test", "v=STSv1; id=7")
        .a("mta-sts.testing.test", "127.0.0.1")
        .txt(
            "_smtp._tls.testing.test",
            &format!(
                "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://mta-sts.testing.test:{}/tlsrpt",
                server.addr.port()
            ),
        );
    let dns = DnsServer::start(zone).await;
    let gw = Gateway::start_in(
        dir.clone(),
        "",
        &format!(
            "{}[outbound_tls]\nca_file = \"{}\"\nmta_sts_port = {}\n\
             [tls_report]\norganization = \"Postern Test\"\ncontact = \"mailto:postmaster@example.test\"\ninterval = \"4s\"\n{}",
            delivery(dns.addr, sink.addr.port()),
            ca.cert.display(),
            server.addr.port(),
            route("reports.test", reports.addr)
        ),
    );
    assert!(send(&gw, "u@testing.test", "testing mode")
        .await
        .starts_with("250"));
    // Testing mode: the untrusted certificate is reported, not enforced.
    wait_until(Duration::from_secs(20), "delivered in testing mode", || {
        sink.count() == 1
    })
    .await;
    let a = attempt_with(&gw, "u@testing.test", "certificate-not-trusted").await;
    assert_eq!(
        (a["tls_policy"].as_str(), a["result"].as_str()),
        (Some("mta-sts-testing"), Some("delivered")),
        "{a}"
    );
    // The period ends within 4 s; the report comes by mail through our
    // own queue.
    wait_until(Duration::from_secs(30), "TLS report mailed", || {
        reports.count() >= 1
    })
    .await;
    let mail = &reports.all()[0];
    assert_eq!(mail.to, ["tlsrpt@reports.test"]);
    assert!(
        mail.data.contains("report-type=\"tlsrpt\""),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("TLS-Report-Domain: testing.test"));
    let gz = attachment(&mail.data);
    let gz_path = dir.path().join("report.json.gz");
    std::fs::write(&gz_path, gz).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tlsrpt.schema.json");
    let check = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import gzip, json, sys, jsonschema\n\
             report = json.loads(gzip.open(sys.argv[1]).read())\n\
             jsonschema.validate(report, json.load(open(sys.argv[2])))\n\
             print(json.dumps(report))",
        )
        .arg(&gz_path)
        .arg(&schema)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "schema check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let p = &report["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts", "{report}");
    assert_eq!(p["policy"]["policy-domain"], "testing.test");
    assert_eq!(p["policy"]["mx-host"][0], "mx.testing.test");
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{report}");
    let f = &p["failure-details"][0];
    assert_eq!(f["result-type"], "certificate-not-trusted", "{report}");
    assert_eq!(f["receiving-mx-hostname"], "mx.testing.test");
    assert_eq!(f["receiving-ip"], "127.0.0.1");
    assert_eq!(report["organization-name"], "Postern Test");
    assert!(metric(&gw, "postern_tls_reports_total", &[("result", "sent")]) >= 1);
    // The same report was POSTed to the https: address, gzipped.
    let posted = server.posted();
    assert_eq!(
        posted.len(),
        1,
        "{:?}",
        posted.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    assert_eq!(posted[0].0, "/tlsrpt");
    assert_eq!(posted[0].1, "application/tlsrpt+gzip");
    assert_eq!(posted[0].2[..2], [0x1f, 0x8b], "not gzip");
}

/// The decoded `application/tlsrpt+gzip` part of a report mail.
fn attachment(mail: &str) -> Vec<u8> {
    let at = mail
        .find("application/tlsrpt+gzip")
        .expect("no report part");
    let rest = &mail[at..];
    let body = &rest[rest.find("\r\n\r\n").expect("part header") + 4..];
    let b64: String = body
        .lines()
        .take_while(|l| !l.starts_with("--"))
        .map(str::trim)
        .collect();
    postern_core::base64::base64_decode(b64.as_bytes()).expect("base64")
}
