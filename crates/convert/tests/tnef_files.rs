//! Real TNEF files (`tests/data/tnef`, origins in its ORIGIN.md): what
//! Postern extracts is compared, byte for byte, with what Debian's `tnef`
//! tool extracts from the same file, and every converted message keeps
//! the original `winmail.dat` exactly when something in it could not be
//! converted faithfully.
//!
//! Run with `--nocapture` for the comparison table.

use postern_convert::{rtf, tnef, Message};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tnef");

/// What the `tnef` tool extracted: files by name, and the saved body.
struct Extracted {
    files: BTreeMap<String, Vec<u8>>,
    body: Option<(String, Vec<u8>)>,
    ok: bool,
}

fn tnef_tool(file: &Path) -> Extracted {
    let out = std::env::temp_dir().join(format!(
        "postern-tnef-{}-{}",
        std::process::id(),
        file.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let run = Command::new("tnef")
        .arg("--directory")
        .arg(&out)
        .args(["--save-body=zz-body", "--number-backups"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs `tnef` (Debian package tnef; .ci/run installs it): {e}")
        });
    let mut files = BTreeMap::new();
    let mut body = None;
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(e.path()).unwrap();
        if let Some(ext) = name.strip_prefix("zz-body.") {
            body = Some((ext.to_string(), data));
        } else {
            files.insert(name, data);
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    Extracted {
        files,
        body,
        ok: run.status.success(),
    }
}

/// A message carrying `stream` as winmail.dat.
fn message_with(stream: &[u8]) -> Vec<u8> {
    let b64 = postern_convert::encode::base64_lines(stream);
    let mut m = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: application/ms-tnef; name=\"winmail.dat\"\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    m.extend_from_slice(&b64);
    m.extend_from_slice(b"--B--\r\n");
    m
}

fn files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tnef" || e == "dat"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_attachment_and_rtf_body_equals_what_the_tnef_tool_extracts() {
    println!(
        "| file | attachments (ours / tnef) | bytes equal | RTF body | kept winmail.dat because |"
    );
    println!("|---|---|---|---|---|");
    let mut failures = Vec::new();
    for path in files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        let ours = tnef::read(&data, 0).unwrap();
        let tool = tnef_tool(&path);
        // Our bytes for each attachment, as the tool writes them: an OLE
        // or embedded-message object keeps its 16-byte interface id there
        // (we strip it: the rest is the object itself).
        let mut equal = 0;
        let mut compared = 0;
        let mut tool_files: Vec<&Vec<u8>> = tool.files.values().collect();
        for a in &ours.attachments {
            let Some(d) = &a.data else { continue };
            compared += 1;
            let found = tool_files
                .iter()
                .position(|t| *t == d || (t.len() == d.len() + 16 && t[16..] == d[..]));
            match found {
                Some(i) => {
                    tool_files.remove(i);
                    equal += 1;
                }
                None if !tool.ok => {} // the tool died before writing it
                None => failures.push(format!("{name}: attachment {:?} differs", a.name)),
            }
        }
        if tool.ok && !tool_files.is_empty() {
            failures.push(format!(
                "{name}: {} file(s) only the tool extracted",
                tool_files.len()
            ));
        }
        // The RTF body: our decompression equals the tool's.
        let rtf_cell = match (&ours.rtf, &tool.body) {
            (Some(c), Some((ext, body))) if ext == "rtf" => {
                let d = rtf::decompress(c, 64 << 20).expect("RTF decompresses");
                if &d != body {
                    failures.push(format!("{name}: RTF body differs"));
                }
                let kind = match rtf::de_encapsulate(&d) {
                    rtf::Body::Html(_) => "HTML in RTF",
                    rtf::Body::Text(_) => "text in RTF",
                    rtf::Body::Native => "native RTF",
                };
                format!("{} bytes equal, {kind}", d.len())
            }
            (None, Some((ext, body))) if ext == "html" => {
                // PR_HTML: the same bytes.
                if ours.html.as_ref() != Some(body) {
                    failures.push(format!("{name}: HTML body differs"));
                }
                format!("HTML, {} bytes equal", body.len())
            }
            (None, Some((ext, _))) => format!("none (tool: {ext})"),
            (Some(_), other) => {
                failures.push(format!(
                    "{name}: tool saved {:?} not RTF",
                    other.as_ref().map(|o| &o.0)
                ));
                "?".into()
            }
            (None, None) => "none".into(),
        };
        // Converting a message that carries the file.
        let msg = message_with(&data);
        let out = tnef::convert_message(&Message::parse(&msg), tnef::TnefMode::Convert);
        let kept = if out.kept.is_empty() {
            "—".to_string()
        } else {
            out.kept.join("; ")
        };
        let converted = out.converted.expect("a TNEF part is converted");
        let text = String::from_utf8_lossy(&converted);
        assert_eq!(
            text.contains("application/ms-tnef"),
            !out.kept.is_empty(),
            "{name}: winmail.dat kept exactly when something was not converted: {kept}"
        );
        println!(
            "| {name} | {} / {}{} | {equal} of {compared} | {rtf_cell} | {kept} |",
            ours.attachments.len(),
            tool.files.len(),
            if tool.ok { "" } else { " (tool crashed)" }
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The converted message of one fixture, as text.
fn converted(file: &str) -> (String, Vec<String>) {
    let data = std::fs::read(Path::new(DIR).join(file)).unwrap();
    let msg = message_with(&data);
    let out = tnef::convert_message(&Message::parse(&msg), tnef::TnefMode::Convert);
    let bytes = out.converted.expect("converted");
    (
        String::from_utf8(bytes).expect("converted messages are ASCII"),
        out.kept,
    )
}

/// The decoded bodies of the parts of `msg` whose header contains `needle`.
fn decoded_parts(msg: &str, needle: &str) -> Vec<Vec<u8>> {
    msg.split("\r\n--")
        .filter(|p| p.contains(needle))
        .filter_map(|p| p.split_once("\r\n\r\n"))
        .map(|(_, b)| {
            let b64: String = b.lines().take_while(|l| !l.is_empty()).collect();
            postern_convert::encode::base64_decode(b64.as_bytes()).unwrap_or_default()
        })
        .collect()
}

#[test]
fn bodies_become_html_text_or_body_rtf_and_nothing_is_dropped() {
    // HTML that Outlook wrapped in compressed RTF: a text/html part.
    let (m, kept) = converted("multi-value-attribute.tnef");
    assert!(kept.is_empty(), "{kept:?}");
    let html = decoded_parts(&m, "text/html");
    assert_eq!(html.len(), 1, "{m}");
    let html = String::from_utf8(html[0].clone()).unwrap();
    assert!(html.contains("<html") && html.contains("</html>"), "{html}");
    assert!(
        !html.contains("\\htmlrtf") && !html.contains("\\fonttbl"),
        "{html}"
    );
    assert!(m.contains("208225__5_seconds__Voice_Mail.mp3"));
    // Plain text wrapped in RTF: text/plain.
    let (m, _) = converted("long-filename.tnef");
    let text = decoded_parts(&m, "text/plain; charset=utf-8");
    assert_eq!(text.len(), 1, "{m}");
    assert!(!String::from_utf8_lossy(&text[0]).contains("\\par"));
    // Native RTF: attached whole as body.rtf, byte for byte.
    let (m, kept) = converted("rtf.tnef");
    assert!(kept.is_empty(), "{kept:?}");
    let rtf_part = decoded_parts(&m, "application/rtf");
    assert_eq!(rtf_part.len(), 1, "{m}");
    assert!(rtf_part[0].starts_with(b"{\\rtf1"));
    // HTML stored as PR_HTML, with inline images keeping their Content-ID.
    let (m, _) = converted("unicode-mapi-attr-name.tnef");
    assert_eq!(decoded_parts(&m, "text/html").len(), 1, "{m}");
    assert!(m.contains("Content-ID: <image001.png@"), "{m}");
    // An embedded message becomes message/rfc822 with its subject; being a
    // task (not a note), the original winmail.dat stays too.
    let (m, kept) = converted("christmas-embedded-task.tnef");
    assert!(m.contains("Content-Type: message/rfc822"), "{m}");
    assert!(m.contains("Subject: Build a train table"), "{m}");
    assert!(kept.iter().any(|k| k.contains("IPM.Task")), "{kept:?}");
    assert!(m.contains("application/ms-tnef"));
    // A truncated stream: what was read is extracted, the original stays.
    let (m, kept) = converted("mimekit-truncated.tnef");
    assert!(kept.iter().any(|k| k.contains("damaged")), "{kept:?}");
    assert!(m.contains("application/ms-tnef") && m.contains("image001.jpg"));
}
