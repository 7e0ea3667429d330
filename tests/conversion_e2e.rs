//! The conversion core through the real binary: DKIM signing (RSA-SHA256 and
//! Ed25519) checked by mail-auth's verifier and by dkimpy, inbound SPF/DKIM/
//! DMARC with Authentication-Results and DMARC p=reject refusal, forged
//! results removed, and TNEF converted to MIME attachments.

mod common;

use common::tools::{self, Package, PYTHON3};
use common::{certs, route, wait_until, DnsServer, Gateway, RawClient, Sink, Zone, RELAY};
use postern_convert::{Authenticator, DnsSettings, Message};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

async fn send(addr: std::net::SocketAddr, src: &str, from: &str, to: &str, data: &[u8]) -> String {
    let mut c = RawClient::connect_from(addr, Some(src)).await;
    c.cmd("EHLO client.test").await;
    let mail = format!("<{from}> BODY=8BITMIME");
    let rcpt = format!("<{to}>");
    c.transaction(&mail, &[&rcpt], &[data, b".\r\n".as_slice()].concat())
        .await
}

/// dkimpy (with PyNaCl for Ed25519) verifies `data`, its DNS answered from
/// `zone` (name, TXT value pairs).
fn dkimpy_verifies(data: &[u8], zone: &[(&str, &str)]) -> bool {
    tools::require_python_module("dkim", Package::PyPI("dkimpy"));
    tools::require_python_module("nacl", Package::PyPI("pynacl"));
    let script = r#"
import sys, dkim
args = sys.argv[1:]
zone = {args[i].encode(): args[i + 1].encode() for i in range(0, len(args), 2)}
def dnsfunc(name, timeout=5):
    return zone.get(name.rstrip(b'.'), b'')
msg = sys.stdin.buffer.read()
sys.exit(0 if dkim.verify(msg, dnsfunc=dnsfunc) else 1)
"#;
    let mut child = PYTHON3
        .command()
        .args(["-c", script])
        .args(zone.iter().flat_map(|(name, value)| [*name, *value]))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), data).unwrap();
    child.wait().unwrap().success()
}

#[tokio::test(flavor = "multi_thread")]
async fn dkim_signatures_verify_with_mail_auth_and_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = certs::dkim_rsa(dir.path(), "rsa.pem");
    let ed = certs::dkim_ed25519(dir.path(), "ed.pem");
    let (rsa_pem, ed_pem) = (rsa.pem.display(), ed.pem.display());
    let rsa_txt = format!("v=DKIM1; k=rsa; p={}", rsa.p);
    let ed_txt = format!("v=DKIM1; k=ed25519; p={}", ed.p);
    let dns = DnsServer::start(
        Zone::new()
            .txt("s1._domainkey.example.test", &rsa_txt)
            .txt("s2._domainkey.ed.example.test", &ed_txt),
    )
    .await;
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "",
        &format!(
            "[delivery]\nnameservers = [\"{dns}\"]\nstarttls = false\n\
             {route}\
             [convert]\ndisclaimer = \"This message is confidential.\"\n\
             [[convert.dkim]]\ndomain = \"example.test\"\nselector = \"s1\"\nkey_file = \"{rsa_pem}\"\n\
             [[convert.dkim]]\ndomain = \"ed.example.test\"\nselector = \"s2\"\nkey_file = \"{ed_pem}\"\nalgorithm = \"ed25519-sha256\"\n",
            dns = dns.addr,
            route = route("*", sink.addr)
        ),
    );
    let rsa_msg = "From: Ann <ann@example.test>\r\nTo: x@far.test\r\nSubject: Grüße signed\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHällo, signed with RSA\r\n";
    let ed_msg =
        "From: bob@ed.example.test\r\nTo: x@far.test\r\nSubject: ed\r\n\r\nsigned with Ed25519\r\n";
    for (from, m) in [
        ("ann@example.test", rsa_msg),
        ("bob@ed.example.test", ed_msg),
    ] {
        let r = send(gw.smtp, "127.0.0.1", from, "x@far.test", m.as_bytes()).await;
        assert!(r.starts_with("250"), "{r}");
    }
    wait_until(T, "both delivered", || sink.count() == 2).await;
    let auth = Authenticator::new(&DnsSettings {
        nameservers: vec![dns.addr],
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    for m in sink.all() {
        let data = m.data.as_bytes();
        assert!(m.data.starts_with("DKIM-Signature:"), "{}", m.data);
        assert!(data.is_ascii(), "signed messages are 7-bit");
        assert!(m.data.contains("This message is confidential."));
        let results = auth.verify_dkim(&Message::parse(data)).await;
        assert!(!results.is_empty());
        assert!(results.iter().all(|r| r.pass), "{results:?}");
        // An independent verifier: dkimpy, with DNS answered from our zone.
        let zone = [
            ("s1._domainkey.example.test", rsa_txt.as_str()),
            ("s2._domainkey.ed.example.test", ed_txt.as_str()),
        ];
        let status = dkimpy_verifies(data, &zone);
        assert!(status, "dkimpy rejected:\n{}", m.data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inbound_authentication_and_dmarc_reject() {
    let dns = DnsServer::start(
        Zone::new()
            .txt("bank.test", "v=spf1 -all")
            .txt("_dmarc.bank.test", "v=DMARC1; p=reject")
            .txt("friendly.test", "v=spf1 ip4:127.0.0.5 -all"),
    )
    .await;
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start(
        "",
        &format!(
            "{RELAY}\
             [delivery]\nnameservers = [\"{}\"]\nstarttls = false\n\
             {}\
             [convert]\ndmarc_reject = true\n",
            dns.addr,
            route("example.test", sink.addr)
        ),
    );
    let spoof = b"From: CEO <ceo@bank.test>\r\nSubject: wire money\r\n\r\nnow\r\n";
    let r = send(
        gw.smtp,
        "127.0.0.5",
        "ceo@bank.test",
        "user@example.test",
        spoof,
    )
    .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let forged = b"Authentication-Results: gw.example.test; dkim=pass; spf=pass; dmarc=pass\r\nFrom: pal@friendly.test\r\nSubject: hi\r\n\r\nhello\r\n";
    let r = send(
        gw.smtp,
        "127.0.0.5",
        "pal@friendly.test",
        "user@example.test",
        forged,
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "delivery", || sink.count() == 1).await;
    let m = &sink.all()[0];
    assert_eq!(
        m.data
            .matches("Authentication-Results: gw.example.test")
            .count(),
        1,
        "{}",
        m.data
    );
    assert!(m.data.contains("spf=pass"), "{}", m.data);
    assert!(
        !m.data.contains("dkim=pass"),
        "the forged verdict survived: {}",
        m.data
    );
}

/// Relays outbound (a trusted client) a message whose `headers` are
/// followed by a multipart/mixed body of `before` (whole parts, each
/// opening with its delimiter) and `stream` as winmail.dat; what the next
/// hop got.
async fn relay_winmail(
    gw: &Gateway,
    sink: &Sink,
    stream: &[u8],
    headers: &str,
    before: &str,
) -> String {
    let b64 = String::from_utf8(postern_convert::encode::base64_lines(stream)).unwrap();
    let msg = format!(
        "From: a@example.test\r\nTo: b@far.test\r\n{headers}MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n{before}\
         --outer\r\nContent-Type: application/ms-tnef; name=\"winmail.dat\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}--outer--\r\n"
    );
    let r = send(
        gw.smtp,
        "127.0.0.1",
        "a@example.test",
        "b@far.test",
        msg.as_bytes(),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    wait_until(T, "delivery", || sink.count() == 1).await;
    sink.all()[0].data.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn tnef_becomes_mime_attachments_outbound() {
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &route("*", sink.addr));
    let tnef = postern_convert::tnef::build(
        Some("The plain text body"),
        &[
            ("Quarterly results 2026.xlsx", b"PK\x03\x04sheet"),
            ("notes.txt", b"remember"),
        ],
        true,
    );
    let got = relay_winmail(
        &gw,
        &sink,
        &tnef,
        "Subject: report\r\n",
        "--outer\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n",
    )
    .await;
    assert!(!got.contains("ms-tnef"), "{got}");
    let parts = Message::parse(got.as_bytes()).parts();
    assert_eq!(parts.len(), 4, "text, TNEF body text, two files: {got}");
    let names: Vec<String> = parts
        .iter()
        .filter_map(|p| p.header("Content-Disposition"))
        .collect();
    assert_eq!(
        names,
        vec![
            "attachment; filename=\"Quarterly results 2026.xlsx\"".to_string(),
            "attachment; filename=\"notes.txt\"".to_string()
        ]
    );
    let data = postern_convert::encode::base64_decode(parts[2].body()).unwrap();
    assert_eq!(data, b"PK\x03\x04sheet");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tnef_item_not_converted_faithfully_keeps_its_winmail_dat_and_says_why() {
    // A real stream (crates/convert/tests/data/tnef, see its ORIGIN.md):
    // an embedded Outlook task. The task becomes message/rfc822, but a
    // task's own properties have no MIME form: the original stays beside
    // it, and the tracking log's `converted` line says why.
    let sink = Sink::start("127.0.0.1:0").await;
    let gw = Gateway::start("", &route("*", sink.addr));
    let tnef = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/convert/tests/data/tnef/christmas-embedded-task.tnef"
    ))
    .unwrap();
    let got = relay_winmail(
        &gw,
        &sink,
        &tnef,
        "Subject: task\r\nMessage-ID: <tnef-kept@test>\r\n",
        "",
    )
    .await;
    assert!(got.contains("Content-Type: message/rfc822"), "{got}");
    assert!(got.contains("Subject: Build a train table"), "{got}");
    assert!(
        got.contains("application/ms-tnef"),
        "the original is kept: {got}"
    );
    let trace = || {
        let out = gw.trace(&["--json", "<tnef-kept@test>"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(Duration::from_secs(5), "converted line", || {
        trace().contains("delivered")
    })
    .await;
    let line = trace()
        .lines()
        .find(|l| l.contains("\"converted\""))
        .map(str::to_string)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let notes = v["notes"].as_array().expect("notes").clone();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap_or("").contains("IPM.Task")),
        "{line}"
    );
}
