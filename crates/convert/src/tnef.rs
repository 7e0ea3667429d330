//! TNEF (`application/ms-tnef`, `winmail.dat`) to ordinary MIME.
//!
//! [`parse`] reads a TNEF stream (MS-OXTNEF: signature, legacy key, then
//! attributes of level, id, length, data and a 16-bit checksum) with a
//! bounds-checked cursor, and the MAPI property lists inside it, into a
//! [`Tnef`]: the message class and subject, the bodies (`attBody` or
//! `PR_BODY`, `PR_BODY_HTML`, compressed RTF), and the attachments (file
//! name from `PR_ATTACH_LONG_FILENAME`, else the 8.3 title; data from
//! `attAttachData`, `PR_ATTACH_DATA_BIN` or the embedded object
//! `PR_ATTACH_DATA_OBJ`, whose embedded messages are TNEF streams again).
//! Truncated or malformed input is a [`TnefError`], never a panic.
//!
//! [`convert_message`] replaces every TNEF part of a message with what it
//! carries: the body as `text/plain` and/or `text/html` (HTML and text
//! that Outlook wrapped in RTF are unwrapped by [`crate::rtf`]; native RTF
//! is attached as `body.rtf`), each file as a part with its name, MIME type
//! and Content-ID, an embedded message as `message/rfc822`. The rule above
//! all: when anything in the stream cannot be converted faithfully (an
//! unreadable RTF body, an attachment in a form we do not read, a meeting
//! request or other non-note item) the original `winmail.dat` stays beside
//! what was extracted, and why is reported to the caller (the tracking
//! log). [`build`] writes a stream, for tests and fixtures.
//!
//! Our own code rather than a crate: the reader must be bounded and never
//! panic on hostile input.

use crate::content::{multipart_boundary, Multipart};
use crate::encode::base64_lines;
use crate::rtf;
use crate::Message;

const SIGNATURE: u32 = 0x223E_9F78;
const ATT_FROM: u32 = 0x0000_8000;
const ATT_SUBJECT: u32 = 0x0001_8004;
const ATT_DATE_SENT: u32 = 0x0003_8005;
const ATT_MESSAGE_CLASS: u32 = 0x0007_8008;
const ATT_BODY: u32 = 0x0002_800C;
const ATT_ATTACH_DATA: u32 = 0x0006_800F;
const ATT_ATTACH_TITLE: u32 = 0x0001_8010;
const ATT_ATTACH_REND_DATA: u32 = 0x0006_9002;
const ATT_MAPI_PROPS: u32 = 0x0006_9003;
const ATT_OEM_CODEPAGE: u32 = 0x0006_9007;
const ATT_ATTACHMENT: u32 = 0x0006_9005;

const PR_TRANSPORT_MESSAGE_HEADERS: u16 = 0x007D;
const PR_SUBJECT: u16 = 0x0037;
const PR_BODY: u16 = 0x1000;
const PR_RTF_COMPRESSED: u16 = 0x1009;
const PR_BODY_HTML: u16 = 0x1013;
const PR_SENDER_NAME: u16 = 0x0C1A;
const PR_SENDER_EMAIL_ADDRESS: u16 = 0x0C1F;
const PR_INTERNET_CPID: u16 = 0x3FDE;
const PR_ATTACH_DATA: u16 = 0x3701;
const PR_ATTACH_METHOD: u16 = 0x3705;
const PR_ATTACH_LONG_FILENAME: u16 = 0x3707;
const PR_ATTACH_MIME_TAG: u16 = 0x370E;
const PR_ATTACH_CONTENT_ID: u16 = 0x3712;
const PR_DISPLAY_NAME: u16 = 0x3001;

const PT_LONG: u16 = 0x0003;
const PT_OBJECT: u16 = 0x000D;
const PT_STRING8: u16 = 0x001E;
const PT_UNICODE: u16 = 0x001F;
const PT_BINARY: u16 = 0x0102;

/// `ATTACH_EMBEDDED_MSG`: the data object is a message (a TNEF stream).
const ATTACH_EMBEDDED_MSG: u32 = 5;
/// `ATTACH_OLE`: the data is an OLE object.
const ATTACH_OLE: u32 = 6;
/// IID_IMessage, as stored at the start of an embedded message's data.
const IID_IMESSAGE: [u8; 16] = [
    0x07, 0x03, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46,
];
/// Attachments per stream, and MAPI properties per attribute, at most.
const MAX_ITEMS: usize = 10_000;
/// Embedded messages inside embedded messages, at most.
const MAX_NESTING: usize = 8;
/// Decompressed RTF body, at most.
const MAX_RTF: usize = 64 << 20;

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

/// One file (or embedded item) carried in the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TnefAttachment {
    /// The file name as the sender gave it ("" when none was given).
    pub name: String,
    /// The display name (used when there is no file name).
    pub display: String,
    /// The file's content; `None` when the stream carried none we read.
    pub data: Option<Vec<u8>>,
    /// `PR_ATTACH_METHOD` (0 when absent).
    pub method: u32,
    /// The MIME type the sender gave (`PR_ATTACH_MIME_TAG`).
    pub mime: Option<String>,
    /// `PR_ATTACH_CONTENT_ID`, for HTML bodies that refer to it.
    pub content_id: Option<String>,
    /// An embedded message (method 5), read from its own TNEF stream.
    pub message: Option<Box<Tnef>>,
    /// Why an embedded object could not be read.
    pub problem: Option<String>,
}

/// The content of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tnef {
    /// `attMessageClass` ("" when absent: a note).
    pub class: String,
    /// The subject (`attSubject` or `PR_SUBJECT`).
    pub subject: Option<String>,
    /// `attDateSent`: year, month, day, hour, minute, second.
    pub sent: Option<[u16; 6]>,
    /// Sender's name and address, for a rebuilt embedded message.
    pub sender: (Option<String>, Option<String>),
    /// The original Internet header (`PR_TRANSPORT_MESSAGE_HEADERS`).
    pub headers: Option<String>,
    /// The plain-text message body (`attBody` or `PR_BODY`).
    pub body: Option<String>,
    /// The HTML body (`PR_BODY_HTML`), bytes in `cpid`'s encoding.
    pub html: Option<Vec<u8>>,
    /// The body as compressed RTF (`PR_RTF_COMPRESSED`), as stored.
    pub rtf: Option<Vec<u8>>,
    /// `PR_INTERNET_CPID`: the code page of the HTML body.
    pub cpid: Option<i32>,
    /// The files, in stream order.
    pub attachments: Vec<TnefAttachment>,
    /// Where reading stopped early: what was read before is kept.
    pub damaged: Option<TnefError>,
    /// `attBody` as stored, in the code page of `attOemCodepage`.
    body8: Option<Vec<u8>>,
    /// `attOemCodepage`.
    codepage: Option<i32>,
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

/// Reads a TNEF stream; any damage is an error.
pub fn parse(data: &[u8]) -> Result<Tnef, TnefError> {
    let t = read(data, 0)?;
    match t.damaged {
        Some(e) => Err(e),
        None => Ok(t),
    }
}

/// Reads a TNEF stream as far as it is intact: damage after the signature
/// (a truncated or corrupt attribute, trailing junk) ends the reading and
/// is noted in [`Tnef::damaged`].
pub fn read(data: &[u8], depth: usize) -> Result<Tnef, TnefError> {
    let mut c = Cursor { b: data, pos: 0 };
    if c.u32().map_err(|_| TnefError::NotTnef)? != SIGNATURE {
        return Err(TnefError::NotTnef);
    }
    let mut out = Tnef::default();
    if let Err(e) = attributes(&mut c, &mut out, depth) {
        out.damaged = Some(e);
    }
    if let Some(b) = out.body8.take().filter(|_| out.body.is_none()) {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        let cp = out.codepage.or(out.cpid).unwrap_or(1252);
        let text = crate::rtf::encoding_for(cp)
            .decode(&b[..end])
            .0
            .into_owned();
        out.body = Some(text);
    }
    Ok(out)
}

fn attributes(c: &mut Cursor<'_>, out: &mut Tnef, depth: usize) -> Result<(), TnefError> {
    c.u16()?; // legacy key
    let mut current: Option<TnefAttachment> = None;
    let r = attribute_loop(c, out, &mut current, depth);
    out.attachments.extend(current.take());
    r
}

fn attribute_loop(
    c: &mut Cursor<'_>,
    out: &mut Tnef,
    current: &mut Option<TnefAttachment>,
    depth: usize,
) -> Result<(), TnefError> {
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
            ATT_MESSAGE_CLASS => out.class = text8(value),
            ATT_SUBJECT => out.subject = Some(text8(value)),
            ATT_FROM => triple_sender(value, out),
            ATT_DATE_SENT if value.len() >= 12 => {
                let mut d = [0u16; 6];
                for (i, v) in d.iter_mut().enumerate() {
                    *v = u16::from_le_bytes([value[2 * i], value[2 * i + 1]]);
                }
                out.sent = Some(d);
            }
            ATT_BODY => out.body8 = Some(value.to_vec()),
            ATT_OEM_CODEPAGE if value.len() >= 4 => {
                out.codepage = Some(i32::from_le_bytes([value[0], value[1], value[2], value[3]]));
            }
            ATT_MAPI_PROPS => message_props(&props(value)?, out),
            ATT_ATTACH_REND_DATA => {
                if out.attachments.len() >= MAX_ITEMS {
                    return Err(TnefError::TooMany);
                }
                out.attachments.extend(current.take());
                *current = Some(TnefAttachment::default());
            }
            ATT_ATTACH_TITLE => {
                let a = current.get_or_insert_with(TnefAttachment::default);
                if a.name.is_empty() {
                    a.name = text8(value);
                }
            }
            ATT_ATTACH_DATA => {
                current.get_or_insert_with(TnefAttachment::default).data = Some(value.to_vec());
            }
            ATT_ATTACHMENT => {
                let a = current.get_or_insert_with(TnefAttachment::default);
                attachment_props(&props(value)?, a, depth);
            }
            _ => {}
        }
    }
    Ok(())
}

/// `attFrom`: a TRP structure (id, size, name length, address length), the
/// name, then the address (`SMTP:user@host` for Internet mail).
fn triple_sender(v: &[u8], out: &mut Tnef) {
    let mut c = Cursor { b: v, pos: 0 };
    let read = |c: &mut Cursor<'_>| -> Result<(String, String), TnefError> {
        c.u16()?;
        c.u16()?;
        let name_len = usize::from(c.u16()?);
        let addr_len = usize::from(c.u16()?);
        let name = text8(c.take(name_len)?);
        let addr = text8(c.take(addr_len)?);
        Ok((name, addr))
    };
    if let Ok((name, addr)) = read(&mut c) {
        if out.sender.0.is_none() && !name.is_empty() {
            out.sender.0 = Some(name);
        }
        if let Some(a) = addr.strip_prefix("SMTP:").filter(|a| a.contains('@')) {
            out.sender.1.get_or_insert_with(|| a.to_string());
        }
    }
}

/// A NUL-terminated 8-bit string (Windows code pages read as Latin-1).
fn text8(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    match std::str::from_utf8(&b[..end]) {
        Ok(s) => s.to_string(),
        Err(_) => b[..end].iter().map(|c| *c as char).collect(),
    }
}

/// One MAPI property: its id, type and values (for fixed-size types each
/// value's bytes, for the others each value without its padding).
struct Prop<'a> {
    id: u16,
    ptype: u16,
    values: Vec<&'a [u8]>,
}

impl Prop<'_> {
    fn first(&self) -> Option<&[u8]> {
        self.values.first().copied()
    }
    /// A string value, 8-bit or UTF-16.
    fn text(&self) -> Option<String> {
        let v = self.first()?;
        match self.ptype {
            PT_STRING8 => Some(text8(v)),
            PT_UNICODE => Some(utf16(v)),
            _ => None,
        }
    }
    fn long(&self) -> Option<u32> {
        let v = self.first().filter(|_| self.ptype == PT_LONG)?;
        Some(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
    }
}

/// Reads a MAPI property list (`attMAPIProps`, `attAttachment`).
fn props(b: &[u8]) -> Result<Vec<Prop<'_>>, TnefError> {
    let mut c = Cursor { b, pos: 0 };
    let count = c.u32()? as usize;
    if count > MAX_ITEMS {
        return Err(TnefError::TooMany);
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let ptype = c.u16()?;
        let id = c.u16()?;
        if id >= 0x8000 {
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
        let mut values = Vec::new();
        match fixed {
            Some(size) => {
                let n = if multi { c.u32()? as usize } else { 1 };
                if n > MAX_ITEMS {
                    return Err(TnefError::TooMany);
                }
                for _ in 0..n {
                    values.push(c.take(size)?);
                }
            }
            None => {
                let n = c.u32()? as usize;
                if n > MAX_ITEMS {
                    return Err(TnefError::TooMany);
                }
                for _ in 0..n {
                    let len = c.u32()? as usize;
                    values.push(c.take(len)?);
                    c.take(pad4(len) - len)?;
                }
            }
        }
        out.push(Prop {
            id,
            ptype: base,
            values,
        });
    }
    Ok(out)
}

/// The message-level properties we convert.
fn message_props(props: &[Prop<'_>], t: &mut Tnef) {
    for p in props {
        match p.id {
            PR_BODY => t.body = p.text(),
            PR_BODY_HTML => match p.ptype {
                PT_BINARY | PT_STRING8 => t.html = p.first().map(<[u8]>::to_vec),
                _ => t.html = p.text().map(String::into_bytes),
            },
            PR_RTF_COMPRESSED if p.ptype == PT_BINARY => t.rtf = p.first().map(<[u8]>::to_vec),
            PR_TRANSPORT_MESSAGE_HEADERS => t.headers = p.text(),
            PR_SUBJECT if t.subject.is_none() => t.subject = p.text(),
            PR_SENDER_NAME => t.sender.0 = p.text(),
            PR_SENDER_EMAIL_ADDRESS => {
                if let Some(a) = p.text().filter(|a| a.contains('@')) {
                    t.sender.1 = Some(a);
                }
            }
            PR_INTERNET_CPID => t.cpid = p.long().map(|v| v as i32),
            _ => {}
        }
    }
    // An HTML body in UTF-16 was turned into UTF-8 above.
    if props
        .iter()
        .any(|p| p.id == PR_BODY_HTML && p.ptype == PT_UNICODE)
    {
        t.cpid = Some(65001);
    }
}

/// The attachment properties we convert; an embedded message is read as
/// the TNEF stream it is.
fn attachment_props(props: &[Prop<'_>], a: &mut TnefAttachment, depth: usize) {
    for p in props {
        match p.id {
            PR_ATTACH_LONG_FILENAME => {
                if let Some(n) = p.text().filter(|n| !n.is_empty()) {
                    a.name = n;
                }
            }
            PR_DISPLAY_NAME => a.display = p.text().unwrap_or_default(),
            PR_ATTACH_METHOD => a.method = p.long().unwrap_or(0),
            PR_ATTACH_MIME_TAG => a.mime = p.text().filter(|m| !m.is_empty()),
            PR_ATTACH_CONTENT_ID => a.content_id = p.text().filter(|m| !m.is_empty()),
            PR_ATTACH_DATA if p.ptype == PT_BINARY && a.data.is_none() => {
                a.data = p.first().map(<[u8]>::to_vec);
            }
            PR_ATTACH_DATA if p.ptype == PT_OBJECT => {
                let v = p.first().unwrap_or_default();
                let (iid, object) = v.split_at(v.len().min(16));
                if iid == IID_IMESSAGE {
                    if depth >= MAX_NESTING {
                        a.problem = Some("embedded messages nested too deep".into());
                    } else {
                        match read(object, depth + 1) {
                            Ok(m) => {
                                if let Some(e) = &m.damaged {
                                    a.problem = Some(format!("embedded message: {e}"));
                                }
                                a.message = Some(Box::new(m));
                            }
                            Err(e) => a.problem = Some(format!("embedded message: {e}")),
                        }
                    }
                }
                // The object is the attachment; an `attAttachData` beside
                // it is only a placeholder (Outlook writes a few bytes).
                a.data = Some(object.to_vec());
            }
            _ => {}
        }
    }
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

/// A MIME type the sender gave, when it is one (`type/subtype` of token
/// characters); else `application/octet-stream`.
fn safe_type(mime: Option<&str>) -> String {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match mime.map(str::trim).and_then(|m| m.split_once('/')) {
        Some((t, s)) if token(t) && token(s) => format!("{t}/{s}").to_ascii_lowercase(),
        _ => "application/octet-stream".to_string(),
    }
}

/// Is this a note (ordinary mail), whose properties we convert? Meeting
/// requests, contacts, tasks and reports carry more than a body and files.
fn is_note(class: &str) -> bool {
    let c = class.trim().to_ascii_lowercase();
    c.is_empty()
        || c == "ipm"
        || c == "ipm.microsoft mail.note"
        || c == "ipm.note"
        || c.starts_with("ipm.note.")
}

/// A text part: UTF-8, base64.
fn text_part(subtype: &str, text: &str) -> Vec<u8> {
    let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let mut p = format!(
        "Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    p.extend_from_slice(&base64_lines(text.as_bytes()));
    p
}

/// A file part.
fn file_part(mime: &str, name: &str, content_id: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut p = format!(
        "Content-Type: {mime}; {}\r\nContent-Disposition: attachment; {}\r\n",
        crate::encode::rfc2231_param("name", name),
        crate::encode::rfc2231_param("filename", name)
    );
    if let Some(cid) = content_id.filter(|c| c.bytes().all(|b| b.is_ascii_graphic())) {
        let cid = cid.trim_start_matches('<').trim_end_matches('>');
        p.push_str(&format!("Content-ID: <{cid}>\r\n"));
    }
    p.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    let mut p = p.into_bytes();
    p.extend_from_slice(&base64_lines(data));
    p
}

/// A boundary that none of `parts` contains (they are ours: base64 and
/// generated headers; the hash makes even a crafted header miss it).
fn boundary_for(parts: &[Vec<u8>], depth: usize) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flatten() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("=_tnef{depth}_{h:016x}")
}

/// `parts` as one multipart entity of `subtype`.
fn multipart(subtype: &str, parts: &[Vec<u8>], depth: usize) -> Vec<u8> {
    let b = boundary_for(parts, depth);
    let mut out =
        format!("Content-Type: multipart/{subtype}; boundary=\"{b}\"\r\n\r\n").into_bytes();
    for p in parts {
        out.extend_from_slice(format!("--{b}\r\n").as_bytes());
        out.extend_from_slice(p);
        if !p.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    out
}

/// The body parts of a stream: text and/or HTML (as alternatives), native
/// RTF as `body.rtf`. What cannot be read is said in `kept`.
fn body_parts(t: &Tnef, depth: usize, kept: &mut Vec<String>) -> Vec<Vec<u8>> {
    let mut plain = t.body.clone().filter(|b| !b.trim().is_empty());
    let mut html = t.html.as_ref().map(|h| {
        let enc = crate::rtf::encoding_for(t.cpid.unwrap_or(65001));
        enc.decode(h).0.into_owned()
    });
    let mut native = None;
    if let Some(c) = &t.rtf {
        match rtf::decompress(c, MAX_RTF) {
            Ok(r) => match rtf::de_encapsulate(&r) {
                rtf::Body::Html(h) => {
                    html.get_or_insert(h);
                }
                rtf::Body::Text(s) => {
                    plain.get_or_insert(s);
                }
                rtf::Body::Native => native = Some(r),
            },
            Err(e) => kept.push(format!("RTF body not converted: {e}")),
        }
    }
    let mut parts = Vec::new();
    match (plain, html) {
        (Some(p), Some(h)) => parts.push(multipart(
            "alternative",
            &[text_part("plain", &p), text_part("html", &h)],
            depth,
        )),
        (Some(p), None) => parts.push(text_part("plain", &p)),
        (None, Some(h)) => parts.push(text_part("html", &h)),
        (None, None) => {}
    }
    if let Some(r) = native {
        parts.push(file_part("application/rtf", "body.rtf", None, &r));
    }
    parts
}

/// Every part a stream converts to: its body, then its attachments.
fn message_parts(t: &Tnef, depth: usize, kept: &mut Vec<String>) -> Vec<Vec<u8>> {
    if !is_note(&t.class) {
        kept.push(format!(
            "a {} item: its properties are not converted",
            t.class.trim()
        ));
    }
    let mut parts = body_parts(t, depth, kept);
    for (i, a) in t.attachments.iter().enumerate() {
        let given = if a.name.is_empty() {
            &a.display
        } else {
            &a.name
        };
        if let Some(m) = &a.message {
            // Outlook titles every embedded item "Untitled Attachment";
            // its display name or subject says what it is.
            let subject = m.subject.clone().unwrap_or_default();
            let name = [&a.display, &subject, &a.name]
                .into_iter()
                .find(|n| !n.trim().is_empty())
                .map_or("message", |n| n.as_str());
            let name = safe_name(&format!("{}.eml", name.trim_end_matches(".msg")), i + 1);
            let inner = rebuild_message(m, depth + 1, kept);
            let cte = if inner.is_ascii() { "7bit" } else { "8bit" };
            let mut p = format!(
                "Content-Type: message/rfc822\r\nContent-Disposition: attachment; {}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n",
                crate::encode::rfc2231_param("filename", &name)
            )
            .into_bytes();
            p.extend_from_slice(&inner);
            parts.push(p);
            continue;
        }
        let name = safe_name(given, i + 1);
        if let Some(problem) = &a.problem {
            kept.push(format!("attachment {name:?}: {problem}"));
        }
        match &a.data {
            Some(d) => {
                if a.method == ATTACH_OLE {
                    kept.push(format!(
                        "attachment {name:?}: an OLE object, attached as its raw data"
                    ));
                }
                let mime = safe_type(a.mime.as_deref());
                parts.push(file_part(&mime, &name, a.content_id.as_deref(), d));
            }
            None if a.method == ATTACH_EMBEDDED_MSG || a.method == ATTACH_OLE || a.method != 0 => {
                kept.push(format!(
                    "attachment {name:?}: no data in a form we read (method {})",
                    a.method
                ));
            }
            None => kept.push(format!("attachment {name:?}: no data")),
        }
    }
    parts
}

/// Header fields of the original message that describe its old MIME
/// structure (ours replaces it).
fn is_structure_field(line: &str) -> bool {
    let name = line
        .split(':')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        name.as_str(),
        "content-type" | "content-transfer-encoding" | "mime-version" | "content-disposition"
    )
}

/// An embedded message as an RFC 5322 message: its original header when
/// the stream kept it (less the MIME structure fields), else one made from
/// its sender, subject and date; then its converted content.
fn rebuild_message(m: &Tnef, depth: usize, kept: &mut Vec<String>) -> Vec<u8> {
    let mut head = String::new();
    match m.headers.as_deref().filter(|h| !h.trim().is_empty()) {
        Some(h) => {
            let mut skip = false;
            for line in h.lines() {
                if line.starts_with([' ', '\t']) {
                    if !skip {
                        head.push_str(line);
                        head.push_str("\r\n");
                    }
                    continue;
                }
                if line.trim().is_empty() {
                    break;
                }
                skip = is_structure_field(line);
                if !skip {
                    head.push_str(line);
                    head.push_str("\r\n");
                }
            }
        }
        None => {
            let (name, addr) = &m.sender;
            let addr = addr.as_deref().filter(|a| {
                a.contains('@')
                    && a.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
            });
            match (name.as_deref().filter(|n| !n.trim().is_empty()), addr) {
                (Some(n), Some(a)) => head.push_str(&format!("From: {} <{a}>\r\n", phrase(n))),
                (None, Some(a)) => head.push_str(&format!("From: <{a}>\r\n")),
                // A name without an address: an empty group (RFC 6854).
                (Some(n), None) => head.push_str(&format!("From: {}:;\r\n", phrase(n))),
                (None, None) => {}
            }
            if let Some(s) = &m.subject {
                head.push_str(&format!("Subject: {}\r\n", unstructured(s)));
            }
            if let Some([y, mo, d, h, mi, s]) = m.sent {
                const MONTHS: [&str; 12] = [
                    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                    "Dec",
                ];
                if let Some(name) = MONTHS.get(usize::from(mo).wrapping_sub(1)) {
                    head.push_str(&format!(
                        "Date: {d} {name} {y} {h:02}:{mi:02}:{s:02} -0000\r\n"
                    ));
                }
            }
        }
    }
    head.push_str("MIME-Version: 1.0\r\n");
    let parts = message_parts(m, depth, kept);
    let mut out = head.into_bytes();
    match parts.len() {
        0 => out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n\r\n"),
        1 => out.extend_from_slice(&parts[0]),
        _ => out.extend_from_slice(&multipart("mixed", &parts, depth)),
    }
    out
}

/// Header text as it is when it is printable ASCII, else encoded words.
fn unstructured(s: &str) -> String {
    let s = s.trim();
    if s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        s.to_string()
    } else {
        crate::encode::encoded_words(s)
    }
}

/// A display name: quoted when it needs to be, encoded words when not
/// ASCII.
fn phrase(s: &str) -> String {
    let s = s.trim();
    if !s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        crate::encode::encoded_words(s)
    } else if s.bytes().all(|b| b == b' ' || b.is_ascii_alphanumeric()) {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
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

/// What [`convert_message`] did.
#[derive(Debug, Default)]
pub struct TnefOutcome {
    /// The rewritten message; `None` when nothing changed.
    pub converted: Option<Vec<u8>>,
    /// TNEF parts that could not be read (left as they were).
    pub errors: Vec<TnefError>,
    /// Why original TNEF parts were kept beside what was extracted.
    pub kept: Vec<String>,
}

/// Rewrites TNEF parts of a multipart message's top level (where Outlook
/// puts them). Parts that fail to parse are left as they are (with the
/// error in the outcome); parts not converted faithfully stay beside what
/// was extracted from them (with the reasons).
pub fn convert_message(msg: &Message<'_>, mode: TnefMode) -> TnefOutcome {
    let mut out = TnefOutcome::default();
    if mode == TnefMode::Leave {
        return out;
    }
    let Some(boundary) = multipart_boundary(msg) else {
        return out;
    };
    let Some(m) = Multipart::split(msg.body(), boundary.as_bytes()) else {
        return out;
    };
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
        match read(&decode_body(&p), 0) {
            Ok(t) => {
                changed = true;
                let mut kept = Vec::new();
                if let Some(e) = &t.damaged {
                    kept.push(format!(
                        "the stream is damaged ({e}); what came before was extracted"
                    ));
                }
                // A part ends where its delimiter's CRLF begins.
                new_parts.extend(message_parts(&t, 0, &mut kept).into_iter().map(|mut p| {
                    if p.ends_with(b"\r\n") {
                        p.truncate(p.len() - 2);
                    }
                    p
                }));
                if !kept.is_empty() {
                    new_parts.push(part.to_vec());
                    out.kept.extend(kept);
                }
            }
            Err(e) => {
                out.errors.push(e);
                new_parts.push(part.to_vec());
            }
        }
    }
    if changed {
        let mut bytes = msg.header_section().to_vec();
        bytes.extend_from_slice(b"\r\n");
        m.write(&boundary, &new_parts, &mut bytes);
        out.converted = Some(bytes);
    }
    out
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
        assert_eq!(
            t.attachments[0].data.as_deref(),
            Some(&b"PK\x03\x04data"[..])
        );
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
        assert_eq!(t.attachments[4].data.as_ref().map(Vec::len), Some(4000));
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
        let o = convert_message(&view, TnefMode::Convert);
        assert!(o.errors.is_empty() && o.kept.is_empty(), "{o:?}");
        let out = String::from_utf8(o.converted.unwrap()).unwrap();
        assert!(!out.contains("ms-tnef"));
        assert!(
            out.contains("filename*=UTF-8''Bericht%20f%C3%BCr%20Q1.pdf"),
            "{out}"
        );
        assert!(out.contains("see attached"));
        let stripped = convert_message(&view, TnefMode::Strip).converted;
        let stripped = String::from_utf8(stripped.unwrap()).unwrap();
        assert!(!stripped.contains("ms-tnef") && !stripped.contains("Bericht"));
        assert_eq!(convert_message(&view, TnefMode::Leave).converted, None);
        let plain = Message::parse(b"Subject: x\r\n\r\nno mime\r\n");
        assert_eq!(convert_message(&plain, TnefMode::Convert).converted, None);
    }
}
