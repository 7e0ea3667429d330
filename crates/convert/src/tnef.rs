//! TNEF (`application/ms-tnef`, `winmail.dat`) to ordinary MIME.
//!
//! [`parse`] reads a TNEF stream (MS-OXTNEF: signature, legacy key, then
//! attributes of level, id, length, data and a 16-bit checksum) with a
//! bounds-checked cursor and returns the plain-text body and attachments
//! (file name from the attachment's MAPI `PR_ATTACH_LONG_FILENAME` when
//! present, else its 8.3 title; data from `attAttachData` or
//! `PR_ATTACH_DATA_BIN`). Truncated or malformed input is a [`TnefError`],
//! never a panic. The outbound pipeline replaces every TNEF part of a
//! message with the files it carries (or removes it, or leaves it, per
//! [`TnefMode`]). [`build`] writes a stream, for tests and fixtures.
//!
//! Our own code rather than a crate: the reader must be bounded and never
//! panic on hostile input, and it needs only the few attributes above.

use crate::content::{multipart_boundary, Multipart};
use crate::encode::base64_lines;
use crate::Message;

const SIGNATURE: u32 = 0x223E_9F78;
const ATT_BODY: u32 = 0x0002_800C;
const ATT_ATTACH_DATA: u32 = 0x0006_800F;
const ATT_ATTACH_TITLE: u32 = 0x0001_8010;
const ATT_ATTACH_REND_DATA: u32 = 0x0006_9002;
const ATT_ATTACHMENT: u32 = 0x0006_9005;
const PR_ATTACH_LONG_FILENAME: u16 = 0x3707;
const PR_ATTACH_DATA_BIN: u16 = 0x3701;
/// Attachments per stream, and MAPI properties per attribute, at most.
const MAX_ITEMS: usize = 10_000;

/// What to do with TNEF parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TnefMode {
    /// Replace each TNEF part with its body text and files as MIME parts.
    Convert,
    /// Keep TNEF parts as they are.
    Leave,
    /// Remove TNEF parts.
    Strip,
}

/// Why a stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TnefError {
    /// The stream does not open with the TNEF signature.
    #[error("not a TNEF stream (bad signature)")]
    NotTnef,
    /// The stream ends inside an attribute.
    #[error("TNEF stream truncated at offset {at}")]
    Truncated {
        /// Offset of the read that ran past the end.
        at: usize,
    },
    /// An attribute's checksum does not match its data.
    #[error("TNEF attribute {attribute:#010x} has a bad checksum")]
    BadChecksum {
        /// The attribute id.
        attribute: u32,
    },
    /// More attachments or MAPI properties than we read.
    #[error("TNEF stream has too many items")]
    TooMany,
}

/// One file carried in the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TnefAttachment {
    /// The file name as the sender gave it ("" when none was given).
    pub name: String,
    /// The file's content.
    pub data: Vec<u8>,
}

/// The content of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tnef {
    /// The plain-text message body, when the stream carries one.
    pub body: Option<String>,
    /// The files, in stream order.
    pub attachments: Vec<TnefAttachment>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TnefError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or(TnefError::Truncated { at: self.pos })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, TnefError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TnefError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, TnefError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
}

/// Reads a TNEF stream.
pub fn parse(data: &[u8]) -> Result<Tnef, TnefError> {
    let mut c = Cursor { b: data, pos: 0 };
    if c.u32().map_err(|_| TnefError::NotTnef)? != SIGNATURE {
        return Err(TnefError::NotTnef);
    }
    c.u16()?; // legacy key
    let mut out = Tnef::default();
    let mut current: Option<TnefAttachment> = None;
    while !c.done() {
        let _level = c.u8()?;
        let id = c.u32()?;
        let len = c.u32()? as usize;
        let value = c.take(len)?;
        let sum = c.u16()?;
        let computed = value
            .iter()
            .fold(0u16, |a, b| a.wrapping_add(u16::from(*b)));
        if sum != computed {
            return Err(TnefError::BadChecksum { attribute: id });
        }
        match id {
            ATT_BODY => out.body = Some(text8(value)),
            ATT_ATTACH_REND_DATA => {
                if out.attachments.len() >= MAX_ITEMS {
                    return Err(TnefError::TooMany);
                }
                out.attachments.extend(current.take());
                current = Some(TnefAttachment::default());
            }
            ATT_ATTACH_TITLE => {
                let a = current.get_or_insert_with(TnefAttachment::default);
                if a.name.is_empty() {
                    a.name = text8(value);
                }
            }
            ATT_ATTACH_DATA => {
                current.get_or_insert_with(TnefAttachment::default).data = value.to_vec();
            }
            ATT_ATTACHMENT => {
                let a = current.get_or_insert_with(TnefAttachment::default);
                mapi_props(value, a)?;
            }
            _ => {}
        }
    }
    out.attachments.extend(current.take());
    Ok(out)
}

/// A NUL-terminated 8-bit string (Windows code pages read as Latin-1).
fn text8(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    match std::str::from_utf8(&b[..end]) {
        Ok(s) => s.to_string(),
        Err(_) => b[..end].iter().map(|c| *c as char).collect(),
    }
}

/// Reads MAPI properties; keeps the long file name and attached data.
fn mapi_props(b: &[u8], a: &mut TnefAttachment) -> Result<(), TnefError> {
    let mut c = Cursor { b, pos: 0 };
    let count = c.u32()? as usize;
    if count > MAX_ITEMS {
        return Err(TnefError::TooMany);
    }
    for _ in 0..count {
        let ptype = c.u16()?;
        let pid = c.u16()?;
        if pid >= 0x8000 {
            c.take(16)?; // GUID
            if c.u32()? == 0 {
                c.u32()?;
            } else {
                let n = c.u32()? as usize;
                c.take(pad4(n))?;
            }
        }
        let multi = ptype & 0x1000 != 0;
        let base = ptype & !0x1000;
        let fixed = match base {
            0x0002 | 0x0003 | 0x0004 | 0x000A | 0x000B => Some(4),
            0x0005 | 0x0006 | 0x0007 | 0x0014 | 0x0040 => Some(8),
            0x0048 => Some(16),
            _ => None,
        };
        match fixed {
            Some(size) => {
                let n = if multi { c.u32()? as usize } else { 1 };
                let total = n.checked_mul(size).ok_or(TnefError::TooMany)?;
                c.take(total)?;
            }
            None => {
                let n = c.u32()? as usize;
                if n > MAX_ITEMS {
                    return Err(TnefError::TooMany);
                }
                for _ in 0..n {
                    let len = c.u32()? as usize;
                    let v = c.take(len)?;
                    c.take(pad4(len) - len)?;
                    match (pid, base) {
                        (PR_ATTACH_LONG_FILENAME, 0x001E) => a.name = text8(v),
                        (PR_ATTACH_LONG_FILENAME, 0x001F) => a.name = utf16(v),
                        (PR_ATTACH_DATA_BIN, 0x0102) if a.data.is_empty() => a.data = v.to_vec(),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(())
}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn utf16(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    let s = String::from_utf16_lossy(&units);
    s.trim_end_matches('\0').to_string()
}

/// A file name safe to put in a header and on a recipient's disk.
fn safe_name(name: &str, index: usize) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control() && *c != '"')
        .take(200)
        .collect();
    let clean = clean.trim().trim_start_matches('.').to_string();
    if clean.is_empty() {
        format!("attachment-{index}.bin")
    } else {
        clean
    }
}

/// MIME parts for what a TNEF stream carried.
fn parts_for(t: &Tnef) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    if let Some(body) = t.body.as_ref().filter(|b| !b.trim().is_empty()) {
        let body = body.replace("\r\n", "\n").replace('\n', "\r\n");
        let mut p =
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                .to_vec();
        p.extend_from_slice(&base64_lines(body.as_bytes()));
        parts.push(p);
    }
    for (i, a) in t.attachments.iter().enumerate() {
        let name = safe_name(&a.name, i + 1);
        let mut p = format!(
            "Content-Type: application/octet-stream; {}\r\nContent-Disposition: attachment; {}\r\nContent-Transfer-Encoding: base64\r\n\r\n",
            crate::encode::rfc2231_param("name", &name),
            crate::encode::rfc2231_param("filename", &name)
        )
        .into_bytes();
        p.extend_from_slice(&base64_lines(&a.data));
        parts.push(p);
    }
    parts
}

/// Is this entity a TNEF attachment?
fn is_tnef(e: &Message<'_>) -> bool {
    let ct = e
        .header("Content-Type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let cd = e
        .header("Content-Disposition")
        .unwrap_or_default()
        .to_ascii_lowercase();
    ct.contains("application/ms-tnef") || ct.contains("winmail.dat") || cd.contains("winmail.dat")
}

fn decode_body(e: &Message<'_>) -> Vec<u8> {
    let cte = e
        .header("Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    match cte.trim() {
        "base64" => crate::encode::base64_decode(e.body()).unwrap_or_default(),
        "quoted-printable" => crate::encode::quoted_printable_decode(e.body()),
        _ => e.body().to_vec(),
    }
}

/// Rewrites TNEF parts of a multipart message's top level (where Outlook
/// puts them). Returns `None` when there was nothing to change. Parts that
/// fail to parse are left as they are (with the error in the result).
pub(crate) fn convert_message(
    msg: &Message<'_>,
    mode: TnefMode,
) -> (Option<Vec<u8>>, Vec<TnefError>) {
    if mode == TnefMode::Leave {
        return (None, vec![]);
    }
    let Some(boundary) = multipart_boundary(msg) else {
        return (None, vec![]);
    };
    let Some(m) = Multipart::split(msg.body(), boundary.as_bytes()) else {
        return (None, Vec::new());
    };
    let mut errors = Vec::new();
    let mut new_parts: Vec<Vec<u8>> = Vec::new();
    let mut changed = false;
    for part in &m.parts {
        let p = Message::parse(part);
        if !is_tnef(&p) {
            new_parts.push(part.to_vec());
            continue;
        }
        if mode == TnefMode::Strip {
            changed = true;
            continue;
        }
        match parse(&decode_body(&p)) {
            Ok(t) => {
                changed = true;
                // A part ends where its delimiter's CRLF begins.
                new_parts.extend(parts_for(&t).into_iter().map(|mut p| {
                    if p.ends_with(b"\r\n") {
                        p.truncate(p.len() - 2);
                    }
                    p
                }));
            }
            Err(e) => {
                errors.push(e);
                new_parts.push(part.to_vec());
            }
        }
    }
    if !changed {
        return (None, errors);
    }
    let mut out = msg.header_section().to_vec();
    out.extend_from_slice(b"\r\n");
    m.write(&boundary, &new_parts, &mut out);
    (Some(out), errors)
}

/// Builds a TNEF stream (for tests and fixtures): a body and attachments,
/// each with an 8.3 title and, when `long_names`, a MAPI long file name.
pub fn build(body: Option<&str>, files: &[(&str, &[u8])], long_names: bool) -> Vec<u8> {
    fn attr(out: &mut Vec<u8>, level: u8, id: u32, data: &[u8]) {
        out.push(level);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        let sum = data.iter().fold(0u16, |a, b| a.wrapping_add(u16::from(*b)));
        out.extend_from_slice(&sum.to_le_bytes());
    }
    let mut out = SIGNATURE.to_le_bytes().to_vec();
    out.extend_from_slice(&0x1234u16.to_le_bytes());
    attr(&mut out, 1, 0x0008_9006, &0x0001_0000u32.to_le_bytes());
    if let Some(b) = body {
        let mut v = b.as_bytes().to_vec();
        v.push(0);
        attr(&mut out, 1, ATT_BODY, &v);
    }
    for (name, data) in files {
        attr(
            &mut out,
            2,
            ATT_ATTACH_REND_DATA,
            &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0],
        );
        let short: String = name.chars().take(8).collect();
        let mut t = short.into_bytes();
        t.push(0);
        attr(&mut out, 2, ATT_ATTACH_TITLE, &t);
        attr(&mut out, 2, ATT_ATTACH_DATA, data);
        if long_names {
            let mut props = 1u32.to_le_bytes().to_vec();
            props.extend_from_slice(&0x001Fu16.to_le_bytes());
            props.extend_from_slice(&PR_ATTACH_LONG_FILENAME.to_le_bytes());
            props.extend_from_slice(&1u32.to_le_bytes());
            let mut u: Vec<u8> = name.encode_utf16().flat_map(|c| c.to_le_bytes()).collect();
            u.extend_from_slice(&[0, 0]);
            props.extend_from_slice(&(u.len() as u32).to_le_bytes());
            let padded = pad4(u.len());
            u.resize(padded, 0);
            props.extend_from_slice(&u);
            attr(&mut out, 2, ATT_ATTACHMENT, &props);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_several_attachments_with_long_names() {
        let s = build(
            Some("Hello body"),
            &[("quarterly report 2026.xlsx", b"PK\x03\x04data")],
            true,
        );
        let t = parse(&s).unwrap();
        assert_eq!(t.body.as_deref(), Some("Hello body"));
        assert_eq!(t.attachments.len(), 1);
        assert_eq!(t.attachments[0].name, "quarterly report 2026.xlsx");
        assert_eq!(t.attachments[0].data, b"PK\x03\x04data");
        let files: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| (format!("file-{i}.txt"), vec![i as u8; 1000 * i]))
            .collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let t = parse(&build(None, &refs, false)).unwrap();
        assert_eq!(t.attachments.len(), 5);
        assert_eq!(t.attachments[3].name, "file-3.t"); // 8.3 title only
        assert_eq!(t.attachments[4].data.len(), 4000);
        assert!(t.body.is_none());
    }

    #[test]
    fn missing_and_hostile_names() {
        assert_eq!(safe_name("", 3), "attachment-3.bin");
        assert_eq!(safe_name("..\\..\\windows\\evil.exe", 1), "evil.exe");
        assert_eq!(safe_name("a\"b\u{0}c", 1), "abc");
        let long = "x".repeat(500);
        assert_eq!(safe_name(&long, 1).len(), 200);
        let t = parse(&build(None, &[("", b"abc")], false)).unwrap();
        assert_eq!(t.attachments[0].name, "");
    }

    #[test]
    fn truncated_and_garbage_input() {
        let s = build(Some("b"), &[("a.txt", b"0123456789")], true);
        // Every prefix: an error or (at an attribute boundary) fewer items,
        // never a panic.
        for cut in 0..s.len() {
            if let Ok(t) = parse(&s[..cut]) {
                assert!(t.attachments.len() <= 1);
            }
        }
        assert!(matches!(
            parse(&s[..s.len() - 1]),
            Err(TnefError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&s[..s.len() - 5]),
            Err(TnefError::Truncated { .. })
        ));
        assert_eq!(parse(b"garbage!"), Err(TnefError::NotTnef));
        let mut bad = s.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(parse(&bad), Err(TnefError::BadChecksum { .. })));
        // Pseudo-random bytes after a valid signature: errors, never panics.
        let mut seed = 42u64;
        for len in 0..3000 {
            let mut v = SIGNATURE.to_le_bytes().to_vec();
            for _ in 0..len % 300 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                v.push((seed >> 33) as u8);
            }
            let _ = parse(&v);
        }
    }

    #[test]
    fn message_conversion_modes() {
        let tnef = build(
            Some("Plain body"),
            &[("Bericht für Q1.pdf", b"%PDF-1.4")],
            true,
        );
        let msg = format!(
            "From: a@x.test\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: application/ms-tnef; name=\"winmail.dat\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--B--\r\n",
            String::from_utf8(base64_lines(&tnef)).unwrap()
        );
        let view = Message::parse(msg.as_bytes());
        let (out, errs) = convert_message(&view, TnefMode::Convert);
        assert!(errs.is_empty());
        let out = String::from_utf8(out.unwrap()).unwrap();
        assert!(!out.contains("ms-tnef"));
        assert!(
            out.contains("filename*=UTF-8''Bericht%20f%C3%BCr%20Q1.pdf"),
            "{out}"
        );
        assert!(out.contains("see attached"));
        let (stripped, _) = convert_message(&view, TnefMode::Strip);
        let stripped = String::from_utf8(stripped.unwrap()).unwrap();
        assert!(!stripped.contains("ms-tnef") && !stripped.contains("Bericht"));
        assert_eq!(convert_message(&view, TnefMode::Leave).0, None);
        let plain = Message::parse(b"Subject: x\r\n\r\nno mime\r\n");
        assert_eq!(convert_message(&plain, TnefMode::Convert).0, None);
    }
}
