//! Compressed RTF and the bodies Outlook encapsulates in RTF.
//!
//! Outlook sends the body of a TNEF message as `PR_RTF_COMPRESSED`: RTF
//! compressed with the LZ77 variant of MS-OXRTFCP ("LZFu", checked by a
//! CRC-32 of the compressed bytes) or stored ("MELA"). [`decompress`] reads
//! that. When the message was written in HTML or plain text, the RTF is
//! only a wrapper (MS-OXRTFEX): `\fromhtml1` carries the original HTML in
//! `{\*\htmltag …}` groups and in text outside `\htmlrtf` spans,
//! `\fromtext` carries plain text. [`de_encapsulate`] recovers either as
//! UTF-8, or says the RTF is native (the caller then attaches it whole).
//!
//! Both read hostile input: every read is bounded, output is at most a
//! fixed multiple of the input, group nesting is capped, and nothing
//! panics. Our own code: no maintained crate does MS-OXRTFEX, and the
//! decompressor is forty lines.

/// Why compressed RTF could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtfError {
    /// Fewer bytes than the header or the stored size says.
    #[error("compressed RTF truncated")]
    Truncated,
    /// Neither "LZFu" nor "MELA".
    #[error("compressed RTF of unknown type {0:#010x}")]
    UnknownType(u32),
    /// The CRC of the compressed bytes does not match the header's.
    #[error("compressed RTF fails its CRC (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// The decompressed text would be larger than allowed.
    #[error("decompressed RTF larger than {0} bytes")]
    TooLarge(usize),
}

const LZFU: u32 = 0x7546_5A4C;
const MELA: u32 = 0x414C_454D;

/// The dictionary's initial content (MS-OXRTFCP 2.1.2.1).
const PREBUF: &[u8] = b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern \\fscript \\fdecor MS Sans SerifSymbolArialTimes New RomanCourier{\\colortbl\\red0\\green0\\blue0\r\n\\par \\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx";

/// CRC-32 as MS-OXRTFCP computes it: the reflected 0xEDB88320 polynomial,
/// starting from 0, without the final inversion.
fn crc(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    data.iter().fold(0u32, |c, b| {
        TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

fn le32(b: &[u8], at: usize) -> Result<u32, RtfError> {
    let s = b.get(at..at + 4).ok_or(RtfError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decompresses a `PR_RTF_COMPRESSED` value; at most `max` bytes of RTF.
pub fn decompress(data: &[u8], max: usize) -> Result<Vec<u8>, RtfError> {
    let comp_size = le32(data, 0)? as usize;
    let raw_size = le32(data, 4)? as usize;
    let kind = le32(data, 8)?;
    let stored_crc = le32(data, 12)?;
    // COMPSIZE counts the bytes after itself.
    let end = comp_size
        .checked_add(4)
        .filter(|e| *e <= data.len() && *e >= 16)
        .ok_or(RtfError::Truncated)?;
    let body = &data[16..end];
    if raw_size > max {
        return Err(RtfError::TooLarge(max));
    }
    match kind {
        MELA => {
            let raw = body.get(..raw_size).ok_or(RtfError::Truncated)?;
            Ok(raw.to_vec())
        }
        LZFU => {
            let computed = crc(body);
            if computed != stored_crc {
                return Err(RtfError::BadCrc {
                    stored: stored_crc,
                    computed,
                });
            }
            lzfu(body, raw_size, max)
        }
        other => Err(RtfError::UnknownType(other)),
    }
}

/// The LZFu decoder: a control byte, then for each of its bits (least
/// significant first) a literal byte (0) or a big-endian reference (1) of a
/// 12-bit dictionary offset and a 4-bit length (+2). A reference to the
/// write position ends the stream.
fn lzfu(body: &[u8], raw_size: usize, max: usize) -> Result<Vec<u8>, RtfError> {
    let mut dict = [0u8; 4096];
    dict[..PREBUF.len()].copy_from_slice(PREBUF);
    let mut write = PREBUF.len();
    // Each input byte yields at most 17 / 2 output bytes: the allocation
    // follows the input, whatever the header claims.
    let mut out = Vec::with_capacity(raw_size.min(body.len().saturating_mul(9)));
    let mut i = 0;
    while i < body.len() {
        let control = body[i];
        i += 1;
        for bit in 0..8 {
            if i >= body.len() {
                return Ok(out);
            }
            if control & (1 << bit) == 0 {
                let b = body[i];
                i += 1;
                out.push(b);
                dict[write] = b;
                write = (write + 1) % 4096;
            } else {
                let hi = *body.get(i).ok_or(RtfError::Truncated)?;
                let lo = *body.get(i + 1).ok_or(RtfError::Truncated)?;
                i += 2;
                let v = (usize::from(hi) << 8) | usize::from(lo);
                let mut read = v >> 4;
                let len = (v & 0xF) + 2;
                if read == write {
                    return Ok(out);
                }
                for _ in 0..len {
                    let b = dict[read];
                    read = (read + 1) % 4096;
                    out.push(b);
                    dict[write] = b;
                    write = (write + 1) % 4096;
                }
            }
            if out.len() > max {
                return Err(RtfError::TooLarge(max));
            }
        }
    }
    Ok(out)
}

/// Compresses `rtf` as stored ("MELA") or, with `lz`, as LZFu using only
/// literals and references to repeated runs: for tests and fixtures.
pub fn compress(rtf: &[u8], lz: bool) -> Vec<u8> {
    let mut body = Vec::new();
    if lz {
        // Literal runs of eight, each behind a zero control byte, then the
        // end reference: a valid (if unambitious) LZFu stream.
        let write = PREBUF.len() + rtf.len();
        for chunk in rtf.chunks(8) {
            body.push(0u8);
            body.extend_from_slice(chunk);
        }
        let end = ((write % 4096) << 4) as u16;
        if rtf.len().is_multiple_of(8) {
            body.push(1);
        } else {
            // The end reference takes the next bit of the last control.
            let last_control = body.len() - 1 - rtf.len() % 8;
            body[last_control] |= 1 << (rtf.len() % 8);
        }
        body.extend_from_slice(&end.to_be_bytes());
    } else {
        body.extend_from_slice(rtf);
    }
    let mut out = ((body.len() + 12) as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&(rtf.len() as u32).to_le_bytes());
    out.extend_from_slice(&if lz { LZFU } else { MELA }.to_le_bytes());
    out.extend_from_slice(&if lz { crc(&body) } else { 0 }.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// What an RTF body turned out to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// HTML encapsulated with `\fromhtml1`, as UTF-8.
    Html(String),
    /// Plain text encapsulated with `\fromtext`, as UTF-8.
    Text(String),
    /// RTF written as RTF (or too malformed to read): keep it whole.
    Native,
}

/// One lexical item of RTF.
#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Open,
    Close,
    /// `\word` with its optional numeric parameter.
    Word(&'a [u8], Option<i32>),
    /// `\'hh`: one byte in the document's code page.
    Hex(u8),
    /// `\*`: the next word names a destination to skip unless known.
    Star,
    /// A control symbol other than the above (`\{`, `\~`, `\\`…).
    Symbol(u8),
    /// One byte of text.
    Text(u8),
}

struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let c = *self.b.get(self.pos)?;
            self.pos += 1;
            return Some(match c {
                b'{' => Token::Open,
                b'}' => Token::Close,
                b'\r' | b'\n' => continue,
                b'\\' => self.control(),
                other => Token::Text(other),
            });
        }
    }

    fn control(&mut self) -> Token<'a> {
        let Some(&c) = self.b.get(self.pos) else {
            return Token::Symbol(b'\\');
        };
        if !c.is_ascii_alphabetic() {
            self.pos += 1;
            return match c {
                b'\'' => {
                    let hex = self.b.get(self.pos..self.pos + 2);
                    match hex
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(v) => {
                            self.pos += 2;
                            Token::Hex(v)
                        }
                        None => Token::Symbol(b'\''),
                    }
                }
                b'*' => Token::Star,
                // A backslash before a line end is \par.
                b'\r' | b'\n' => Token::Word(b"par", None),
                other => Token::Symbol(other),
            };
        }
        let start = self.pos;
        while self.pos < self.b.len()
            && self.pos - start < 32
            && self.b[self.pos].is_ascii_alphabetic()
        {
            self.pos += 1;
        }
        let word = &self.b[start..self.pos];
        let mut param = None;
        let num_start = self.pos;
        if self.b.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let digits = self.pos;
        while self.pos < self.b.len() && self.pos - digits < 10 && self.b[self.pos].is_ascii_digit()
        {
            self.pos += 1;
        }
        if self.pos > digits {
            param = std::str::from_utf8(&self.b[num_start..self.pos])
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .map(|v| v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32);
        } else {
            self.pos = num_start;
        }
        // One space ends the word and belongs to it.
        if self.b.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
        Token::Word(word, param)
    }
}

/// Destinations whose text is never part of the body.
const SKIPPED: &[&[u8]] = &[
    b"fonttbl",
    b"colortbl",
    b"stylesheet",
    b"info",
    b"pict",
    b"object",
    b"header",
    b"headerl",
    b"headerr",
    b"headerf",
    b"footer",
    b"footerl",
    b"footerr",
    b"footerf",
    b"ftnsep",
    b"listtable",
    b"listoverridetable",
    b"rsidtbl",
    b"generator",
    b"xmlnstbl",
    b"fldinst",
    b"themedata",
    b"colorschememapping",
    b"latentstyles",
    b"datastore",
    b"filetbl",
    b"revtbl",
    b"pntext",
    b"pntxta",
    b"pntxtb",
];

/// Groups deeper than this: the RTF is treated as native.
const MAX_DEPTH: usize = 1000;

#[derive(Clone, Copy)]
struct State {
    /// Inside a destination whose text is dropped.
    skip: bool,
    /// Inside `{\*\htmltag …}`: HTML written as it is.
    tag: bool,
    /// Inside `\htmlrtf` … `\htmlrtf0`: RTF-only rendering, dropped.
    rtf_only: bool,
    /// Fallback characters after `\u` (`\ucN`).
    uc: u32,
}

/// The body an RTF document encapsulates, or [`Body::Native`].
pub fn de_encapsulate(rtf: &[u8]) -> Body {
    let Some(mode) = encapsulation(rtf) else {
        return Body::Native;
    };
    let mut lex = Lexer { b: rtf, pos: 0 };
    let mut out = Out::new(codepage(rtf));
    let mut st = State {
        skip: false,
        tag: false,
        rtf_only: false,
        uc: 1,
    };
    let mut stack: Vec<State> = Vec::new();
    // True right after `{` (a destination word may follow), and after `\*`.
    let mut group_start = false;
    let mut starred = false;
    // Fallback characters still to drop after a \u.
    let mut fallback = 0u32;
    while let Some(t) = lex.next() {
        let first = std::mem::take(&mut group_start);
        let star = std::mem::take(&mut starred);
        if fallback > 0 {
            match t {
                Token::Text(_) | Token::Hex(_) | Token::Symbol(_) => {
                    fallback -= 1;
                    continue;
                }
                Token::Word(..) => fallback -= 1,
                _ => fallback = 0,
            }
            if let Token::Word(..) = t {
                continue;
            }
        }
        let emit = !st.skip && (st.tag || !st.rtf_only);
        match t {
            Token::Open => {
                if stack.len() >= MAX_DEPTH {
                    return Body::Native;
                }
                stack.push(st);
                group_start = true;
            }
            Token::Close => match stack.pop() {
                Some(s) => st = s,
                None => break, // the document's closing brace
            },
            Token::Star => {
                group_start = first;
                starred = true;
            }
            Token::Word(w, p) => {
                if first && star {
                    // A starred destination: HTML tags are the body, any
                    // other is dropped.
                    if w == b"htmltag" && mode == Mode::Html {
                        st.tag = true;
                    } else {
                        st.skip = true;
                    }
                    continue;
                }
                if first && SKIPPED.contains(&w) {
                    st.skip = true;
                    continue;
                }
                match w {
                    b"htmlrtf" => st.rtf_only = p != Some(0),
                    b"uc" => st.uc = p.unwrap_or(1).max(0) as u32,
                    b"u" => {
                        if emit {
                            let v = p.unwrap_or(0);
                            let v = if v < 0 { v + 65536 } else { v } as u32;
                            out.char(char::from_u32(v).unwrap_or('\u{FFFD}'));
                        }
                        fallback = st.uc;
                    }
                    _ if emit => {
                        if let Some(s) = word_text(w) {
                            out.str(s);
                        }
                    }
                    _ => {}
                }
            }
            Token::Hex(b) | Token::Text(b) => {
                if emit {
                    out.byte(b);
                }
            }
            Token::Symbol(c) => {
                if emit {
                    match c {
                        b'~' => out.char('\u{A0}'),
                        b'_' => out.char('\u{2011}'),
                        b'-' => {}
                        other => out.byte(other),
                    }
                }
            }
        }
    }
    let text = out.finish();
    match mode {
        Mode::Html => Body::Html(text),
        Mode::Text => Body::Text(text),
    }
}

/// The text a control word stands for.
fn word_text(w: &[u8]) -> Option<&'static str> {
    Some(match w {
        b"par" | b"line" | b"sect" | b"row" => "\r\n",
        b"tab" | b"cell" => "\t",
        b"lquote" => "\u{2018}",
        b"rquote" => "\u{2019}",
        b"ldblquote" => "\u{201C}",
        b"rdblquote" => "\u{201D}",
        b"bullet" => "\u{2022}",
        b"endash" => "\u{2013}",
        b"emdash" => "\u{2014}",
        b"enspace" => "\u{2002}",
        b"emspace" => "\u{2003}",
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Html,
    Text,
}

/// `\fromhtml1` or `\fromtext` among the header's words (before the first
/// group inside the document).
fn encapsulation(rtf: &[u8]) -> Option<Mode> {
    let mut lex = Lexer { b: rtf, pos: 0 };
    if lex.next() != Some(Token::Open) {
        return None;
    }
    for _ in 0..64 {
        match lex.next()? {
            Token::Word(b"fromhtml", Some(1)) => return Some(Mode::Html),
            Token::Word(b"fromtext", _) => return Some(Mode::Text),
            Token::Word(..) => {}
            _ => return None,
        }
    }
    None
}

/// The `\ansicpgN` of the header (Windows-1252 when absent).
fn codepage(rtf: &[u8]) -> &'static encoding_rs::Encoding {
    let mut lex = Lexer { b: rtf, pos: 0 };
    for _ in 0..64 {
        match lex.next() {
            Some(Token::Word(b"ansicpg", Some(cp))) => return encoding_for(cp),
            Some(Token::Open) | Some(Token::Word(..)) => {}
            _ => break,
        }
    }
    encoding_rs::WINDOWS_1252
}

/// The encoding of a Windows code page number.
pub(crate) fn encoding_for(cp: i32) -> &'static encoding_rs::Encoding {
    use encoding_rs as e;
    match cp {
        65001 => e::UTF_8,
        932 => e::SHIFT_JIS,
        936 => e::GBK,
        54936 => e::GB18030,
        949 => e::EUC_KR,
        950 => e::BIG5,
        874 => e::WINDOWS_874,
        20866 => e::KOI8_R,
        21866 => e::KOI8_U,
        1250..=1258 | 28591..=28606 => {
            let label = if cp < 2000 {
                format!("windows-{cp}")
            } else {
                format!("iso-8859-{}", cp - 28590)
            };
            e::Encoding::for_label(label.as_bytes()).unwrap_or(e::WINDOWS_1252)
        }
        _ => e::WINDOWS_1252,
    }
}

/// Text being collected: bytes in the document's code page, decoded a run
/// at a time, and characters given by `\u`.
struct Out {
    enc: &'static encoding_rs::Encoding,
    bytes: Vec<u8>,
    text: String,
}

impl Out {
    fn new(enc: &'static encoding_rs::Encoding) -> Out {
        Out {
            enc,
            bytes: Vec::new(),
            text: String::new(),
        }
    }
    fn flush(&mut self) {
        if !self.bytes.is_empty() {
            let (s, _, _) = self.enc.decode(&self.bytes);
            self.text.push_str(&s);
            self.bytes.clear();
        }
    }
    fn byte(&mut self, b: u8) {
        self.bytes.push(b);
    }
    fn char(&mut self, c: char) {
        self.flush();
        self.text.push(c);
    }
    fn str(&mut self, s: &str) {
        self.flush();
        self.text.push_str(s);
    }
    fn finish(mut self) -> String {
        self.flush();
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prebuf_is_the_spec_s_207_bytes() {
        assert_eq!(PREBUF.len(), 207);
    }

    #[test]
    fn the_spec_s_examples_decompress() {
        // MS-OXRTFCP 3.1.1 (simple) and 3.1.2 (crossing the dictionary's
        // write position).
        let simple: [u8; 49] = [
            0x2d, 0x00, 0x00, 0x00, 0x2b, 0x00, 0x00, 0x00, 0x4c, 0x5a, 0x46, 0x75, 0xf1, 0xc5,
            0xc7, 0xa7, 0x03, 0x00, 0x0a, 0x00, 0x72, 0x63, 0x70, 0x67, 0x31, 0x32, 0x35, 0x42,
            0x32, 0x0a, 0xf3, 0x20, 0x68, 0x65, 0x6c, 0x09, 0x00, 0x20, 0x62, 0x77, 0x05, 0xb0,
            0x6c, 0x64, 0x7d, 0x0a, 0x80, 0x0f, 0xa0,
        ];
        let out = decompress(&simple, 1 << 20).unwrap();
        assert_eq!(out, b"{\\rtf1\\ansi\\ansicpg1252\\pard hello world}\r\n");
        let crossing: [u8; 30] = [
            0x1a, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x4c, 0x5a, 0x46, 0x75, 0xe2, 0xd4,
            0x4b, 0x51, 0x41, 0x00, 0x04, 0x20, 0x57, 0x58, 0x59, 0x5a, 0x0d, 0x6e, 0x7d, 0x01,
            0x0e, 0xb0,
        ];
        let out = decompress(&crossing, 1 << 20).unwrap();
        assert_eq!(out, b"{\\rtf1 WXYZWXYZWXYZWXYZWXYZ}");
    }

    #[test]
    fn round_trips_and_damage() {
        let rtf = b"{\\rtf1\\ansi\\fromtext hello\\par world}".as_slice();
        for lz in [false, true] {
            let c = compress(rtf, lz);
            assert_eq!(decompress(&c, 1 << 20).unwrap(), rtf, "lz={lz}");
            for cut in 0..c.len() {
                let _ = decompress(&c[..cut], 1 << 20);
            }
        }
        let mut c = compress(rtf, true);
        let last = c.len() - 3;
        c[last] ^= 1;
        assert!(matches!(
            decompress(&c, 1 << 20),
            Err(RtfError::BadCrc { .. })
        ));
        assert_eq!(
            decompress(&compress(rtf, true), 10),
            Err(RtfError::TooLarge(10))
        );
        let mut odd = compress(rtf, false);
        odd[8] = b'X';
        assert!(matches!(
            decompress(&odd, 1 << 20),
            Err(RtfError::UnknownType(_))
        ));
        // A length-16 copy from the dictionary repeatedly: bounded by max.
        let group = [[0xffu8].as_slice(), &[0x00, 0x0f].repeat(8)].concat();
        let bomb_body = group.repeat(10_000);
        let mut bomb = [vec![0u8; 16], bomb_body].concat();
        let len = bomb.len();
        bomb[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
        bomb[4..8].copy_from_slice(&1000u32.to_le_bytes());
        bomb[8..12].copy_from_slice(&LZFU.to_le_bytes());
        let sum = crc(&bomb[16..]);
        bomb[12..16].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(decompress(&bomb, 1000), Err(RtfError::TooLarge(1000)));
    }

    #[test]
    fn html_is_recovered_from_its_wrapper() {
        // Shaped like what Outlook writes (MS-OXRTFEX 3.1).
        let rtf = br#"{\rtf1\ansi\ansicpg1252\fromhtml1 \deff0{\fonttbl
{\f0\fswiss Arial;}
{\f1\fmodern Courier New;}}
{\colortbl\red0\green0\blue0;\red0\green0\blue255;}
\uc1\pard\plain\deftab360 \f0\fs24
{\*\htmltag19 <html>}
{\*\htmltag2 \par }
{\*\htmltag34 <head><meta charset="windows-1252">}
{\*\htmltag41 <title>T\'e9st</title>}
{\*\htmltag1 \par }
{\*\htmltag50 <body>}\htmlrtf {\htmlrtf0
{\*\htmltag64 <p>}\htmlrtf {\htmlrtf0 Caf\'e9 \u8364?5 \{x\} & more\htmlrtf\par\htmlrtf0
{\*\htmltag72 </p>}
{\*\htmltag0 \par }\htmlrtf }\htmlrtf0
{\*\htmltag58 </body>}
{\*\htmltag27 </html>}}"#;
        let Body::Html(h) = de_encapsulate(rtf) else {
            panic!("not HTML");
        };
        assert!(h.starts_with("<html>\r\n<head>"), "{h}");
        assert!(h.contains("<title>Tést</title>"), "{h}");
        assert!(h.contains("<p>Café €5 {x} & more</p>"), "{h}");
        assert!(!h.contains("Arial") && !h.contains("htmlrtf"), "{h}");
        assert!(h.trim_end().ends_with("</html>"), "{h}");
    }

    #[test]
    fn text_native_and_hostile_rtf() {
        let t = br"{\rtf1\ansi\ansicpg1251\fromtext {\fonttbl{\f0 Arial;}}\f0 \'cf\'f0\'e8\'e2\'e5\'f2\par line two\tab x}";
        assert_eq!(
            de_encapsulate(t),
            Body::Text("Привет\r\nline two\tx".to_string())
        );
        assert_eq!(
            de_encapsulate(br"{\rtf1\ansi\deff0 {\fonttbl}Native \b bold\b0}"),
            Body::Native
        );
        assert_eq!(de_encapsulate(b""), Body::Native);
        let deep = [b"{\\rtf1\\fromtext ".as_slice(), &[b'{'; 5000]].concat();
        assert_eq!(de_encapsulate(&deep), Body::Native);
        let mut seed = 7u64;
        for len in 0..2000 {
            let mut v = b"{\\rtf1\\fromhtml1 ".to_vec();
            for _ in 0..len % 400 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let pick = b"{}\\*'u-0123456789abcdefhtmltag \r\n";
                v.push(pick[(seed >> 33) as usize % pick.len()]);
            }
            let _ = de_encapsulate(&v);
        }
    }
}
