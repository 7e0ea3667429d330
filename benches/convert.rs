//! Criterion benchmarks of the conversion core, one core, no I/O:
//! parse (MIME inspection) and the outbound pipeline without signing
//! (parse, hygiene, rewriting, repair, disclaimer) on a 4 KB text message, a
//! 100 KB message with an attachment, a 1 MB multipart message and a TNEF
//! message, reported as bytes per second; then DKIM signing (RSA-SHA256 2048
//! and Ed25519) and verification per message.
//!
//! Run: `cargo bench --bench convert` (needs `openssl` for the keys).

#[path = "../tests/common/certs.rs"]
#[allow(dead_code)]
mod certs;
#[path = "../tests/common/dns.rs"]
#[allow(dead_code)]
mod dns;
#[path = "../tests/common/tools.rs"]
#[allow(dead_code)]
mod tools;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use postern_convert::encode::base64_lines;
use postern_convert::tnef;
use postern_convert::{
    convert_outbound, inspect, Authenticator, ContentLimits, DkimKey, DnsSettings, Message,
    OutboundPolicy, TnefMode,
};
use std::time::Duration;

fn text(n: usize) -> String {
    let line = "The quick brown fox jumps over the lazy dog near the riverbank today.\r\n";
    line.repeat(n / line.len() + 1)[..n].to_string()
}

fn headers(subject: &str) -> String {
    format!(
        "Received: from client by gw.example.test (Postern);\r\n\tThu, 1 Jan 2026 00:00:00 +0000\r\n\
         Received: from exch01.corp.example.test by exch02\r\nX-MS-Exchange-Organization-SCL: -1\r\n\
         From: Ann <ann@corp.example.test>\r\nTo: partner@far.test\r\nSubject: {subject}\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <x@corp.example.test>\r\nMIME-Version: 1.0\r\n"
    )
}

fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let small = format!(
        "{}Content-Type: text/plain\r\n\r\n{}",
        headers("4 KB"),
        text(3600)
    );
    let attach = |name: &str, size: usize| {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        format!(
            "--b\r\nContent-Type: application/octet-stream; name=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
            String::from_utf8(base64_lines(&data)).unwrap_or_default()
        )
    };
    let mixed = |parts: String| {
        format!(
            "{}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{}\r\n{parts}--b--\r\n",
            headers("mixed"),
            text(2000)
        )
    };
    let hundred = mixed(attach("file.bin", 72 * 1024));
    let mut many = String::new();
    for i in 0..10 {
        many.push_str(&attach(&format!("part{i}.bin"), 74 * 1024));
    }
    let mega = mixed(many);
    let t = tnef::build(
        Some("Body text"),
        &[("Report.xlsx", &vec![7u8; 70 * 1024])],
        true,
    );
    let tnef_msg = format!(
        "{}Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n\
         --b\r\nContent-Type: application/ms-tnef\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--b--\r\n",
        headers("tnef"),
        String::from_utf8(base64_lines(&t)).unwrap_or_default()
    );
    vec![
        ("4KB-text", small.into_bytes()),
        ("100KB-attachment", hundred.into_bytes()),
        ("1MB-multipart", mega.into_bytes()),
        ("TNEF-100KB", tnef_msg.into_bytes()),
    ]
}

fn policy() -> OutboundPolicy {
    OutboundPolicy {
        tnef: Some(TnefMode::Convert),
        strip_internal_received: true,
        strip_headers: vec!["x-ms-exchange-organization-".into()],
        masquerade: [("corp.example.test".to_string(), "example.test".to_string())].into(),
        add_missing: true,
        hostname: "gw.example.test".into(),
        disclaimer: Some("Confidential.".into()),
        ..Default::default()
    }
}

fn conversion(c: &mut Criterion) {
    let lim = ContentLimits::default();
    let p = policy();
    let mut g = c.benchmark_group("convert");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (name, msg) in messages() {
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| inspect(&Message::parse(black_box(&msg)), &lim))
        });
        g.bench_function(format!("outbound/{name}"), |b| {
            b.iter(|| {
                convert_outbound(
                    &Message::parse(black_box(&msg)),
                    &["far.test".into()],
                    &p,
                    0,
                    "t",
                )
            })
        });
    }
    g.finish();
}

fn dkim(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rsa = certs::dkim_rsa(dir.path(), "rsa.pem");
    let ed = certs::dkim_ed25519(dir.path(), "ed.pem");
    let (rsa_p, ed_p) = (rsa.p.clone(), ed.p.clone());
    let read = |f: &std::path::Path| std::fs::read(f).unwrap_or_default();
    let keys = [
        (
            "rsa-sha256",
            DkimKey::from_pem("example.test", "r", "rsa-sha256", &read(&rsa.pem), &[]),
        ),
        (
            "ed25519-sha256",
            DkimKey::from_pem("example.test", "e", "ed25519-sha256", &read(&ed.pem), &[]),
        ),
    ];
    let msg = messages().remove(0).1;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let zone = dns::Zone::new()
        .txt(
            "r._domainkey.example.test",
            &format!("v=DKIM1; k=rsa; p={rsa_p}"),
        )
        .txt(
            "e._domainkey.example.test",
            &format!("v=DKIM1; k=ed25519; p={ed_p}"),
        );
    let server = rt.block_on(dns::DnsServer::start(zone));
    let auth = rt.block_on(async {
        Authenticator::new(&DnsSettings {
            nameservers: vec![server.addr],
            timeout: Duration::from_secs(2),
        })
    });
    let Ok(auth) = auth else {
        return;
    };
    let mut g = c.benchmark_group("dkim");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (alg, key) in keys {
        let Ok(key) = key else {
            eprintln!("cannot load the {alg} key; skipped");
            continue;
        };
        g.bench_function(format!("sign/{alg}/4KB"), |b| {
            b.iter(|| key.sign(black_box(&msg)))
        });
        let mut signed = key.sign(&msg).unwrap_or_default().into_bytes();
        signed.extend_from_slice(&msg);
        g.bench_function(format!("verify/{alg}/4KB"), |b| {
            b.iter(|| {
                rt.block_on(auth.verify_dkim(&Message::parse(&signed)))
                    .len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, conversion, dkim);
criterion_main!(benches);
