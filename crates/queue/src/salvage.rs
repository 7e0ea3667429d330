//! Finding bodies in segment files without the records that point at them.
//!
//! Every body in a segment starts with a header (`PSTB`, the queue id, the
//! length, the CRC32): [`scan`] walks a segment from header to header, and
//! after damage (a torn or overwritten stretch) searches forward for the
//! next `PSTB` that starts a header whose body checks. Two uses:
//! - an open after a crash saves every intact body that no record refers
//!   to in `<queue>/lost/<id>.eml` before the segment may be deleted: mail
//!   is never removed because the store lost its record;
//! - `postern queue salvage DIR OUT` extracts every intact body of a queue
//!   directory that cannot be opened at all.
//!
//! Reads are bounded (a header's length is checked against the file's) and
//! a damaged segment never stops the scan of the others.

use crate::segments::{BODY_HEADER, DEAD, MAGIC};
use postern_core::QueueId;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One body found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The queue id in its header.
    pub id: QueueId,
    /// Offset of the body (after its header).
    pub off: u64,
    /// Its length.
    pub len: u64,
    /// Its CRC, as the header says.
    pub crc: u32,
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Bodies not marked dead (length within the file; the CRC is checked
    /// when the body is read).
    pub bodies: Vec<Found>,
    /// Bodies marked dead (delivered or deleted), passed over.
    pub dead: usize,
    /// Stretches skipped as damaged: (offset, length).
    pub damaged: Vec<(u64, u64)>,
}

/// Reads a header at `off`, if one is there and fits in the file; a dead
/// body's header (delivered or deleted) comes back with `dead` set.
fn header_at(f: &mut File, off: u64, file_len: u64) -> io::Result<Option<(Found, bool)>> {
    if off + BODY_HEADER > file_len {
        return Ok(None);
    }
    let mut h = [0u8; BODY_HEADER as usize];
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(&mut h)?;
    let dead = &h[..4] == DEAD;
    if &h[..4] != MAGIC && !dead {
        return Ok(None);
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(&h[4..16]);
    let len = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    let body = off + BODY_HEADER;
    if body.checked_add(len).is_none_or(|end| end > file_len) {
        return Ok(None);
    }
    Ok(Some((
        Found {
            id: QueueId(id),
            off: body,
            len,
            crc,
        },
        dead,
    )))
}

/// Whether the body of `found` has its CRC.
pub fn intact(f: &mut File, found: &Found) -> io::Result<Option<Vec<u8>>> {
    let len = usize::try_from(found.len).map_err(io::Error::other)?;
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(found.off))?;
    f.read_exact(&mut buf)?;
    Ok((crc32fast::hash(&buf) == found.crc).then_some(buf))
}

/// Walks one segment file. `check` says whether a candidate header found
/// by searching (after damage) is real: its body must pass its CRC.
pub fn scan(path: &Path) -> io::Result<Scanned> {
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let mut out = Scanned::default();
    let mut off = 0u64;
    while off < file_len {
        if let Some((found, dead)) = header_at(&mut f, off, file_len)? {
            off = found.off + found.len;
            match dead {
                true => out.dead += 1,
                false => out.bodies.push(found),
            }
            continue;
        }
        // Damage (or the zeroed tail of a torn write): search forward for
        // a header whose body checks.
        let start = off;
        let mut next = None;
        let mut at = off + 1;
        while let Some(cand) = find_magic(&mut f, at, file_len)? {
            if let Some((found, dead)) = header_at(&mut f, cand, file_len)? {
                if intact(&mut f, &found)?.is_some() {
                    next = Some((cand, found, dead));
                    break;
                }
            }
            at = cand + 1;
        }
        match next {
            Some((cand, found, dead)) => {
                out.damaged.push((start, cand - start));
                off = found.off + found.len;
                match dead {
                    true => out.dead += 1,
                    false => out.bodies.push(found),
                }
            }
            None => {
                // Zeros after the last body are not damage: a segment is
                // preallocated by nothing, but a torn append leaves them.
                if !all_zero(&mut f, start, file_len)? {
                    out.damaged.push((start, file_len - start));
                }
                break;
            }
        }
    }
    Ok(out)
}

/// The offset of the next `PSTB` at or after `from`.
fn find_magic(f: &mut File, from: u64, file_len: u64) -> io::Result<Option<u64>> {
    const CHUNK: usize = 64 << 10;
    let mut pos = from;
    let mut buf = vec![0u8; CHUNK + 3];
    while pos < file_len {
        let n = usize::try_from((file_len - pos).min(buf.len() as u64)).unwrap_or(CHUNK);
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut buf[..n])?;
        // "PST": the start of a live or a dead body's header.
        if let Some(i) = memchr::memmem::find(&buf[..n], &MAGIC[..3]) {
            return Ok(Some(pos + i as u64));
        }
        if n < 4 {
            break;
        }
        pos += (n - 3) as u64;
    }
    Ok(None)
}

fn all_zero(f: &mut File, from: u64, to: u64) -> io::Result<bool> {
    f.seek(SeekFrom::Start(from))?;
    let mut left = to - from;
    let mut buf = vec![0u8; 64 << 10];
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        f.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

/// The segment files of a body directory, in number order.
pub fn segment_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    v.sort();
    Ok(v)
}

/// What [`salvage`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Salvaged {
    /// Bodies written out.
    pub saved: usize,
    /// Bodies skipped: `keep` said they are still referenced.
    pub referenced: usize,
    /// Bodies whose CRC failed (not written).
    pub corrupt: usize,
    /// Damaged stretches, as "FILE at OFFSET (N bytes)".
    pub damaged: Vec<String>,
}

/// Writes every intact body of every segment in `bodies_dir` for which
/// `referenced(id)` is false to `out/<id>.eml` (existing files are kept).
pub fn salvage(
    bodies_dir: &Path,
    out: &Path,
    referenced: &mut dyn FnMut(&QueueId) -> bool,
) -> io::Result<Salvaged> {
    let mut s = Salvaged::default();
    for path in segment_files(bodies_dir)? {
        let scanned = scan(&path)?;
        for (at, len) in &scanned.damaged {
            s.damaged
                .push(format!("{} at {at} ({len} bytes)", path.display()));
        }
        let mut f = File::open(&path)?;
        for found in &scanned.bodies {
            if referenced(&found.id) {
                s.referenced += 1;
                continue;
            }
            match intact(&mut f, found)? {
                Some(body) => {
                    std::fs::create_dir_all(out)?;
                    let file = out.join(format!("{}.eml", found.id));
                    if !file.exists() {
                        std::fs::write(&file, &body)?;
                    }
                    s.saved += 1;
                }
                None => s.corrupt += 1,
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segments::Segments;
    use std::collections::HashMap;

    #[test]
    fn bodies_are_found_across_damage_and_saved_unless_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = dir.path().join("bodies");
        let (segs, _) = Segments::open(&bodies, 1 << 20, HashMap::new()).unwrap();
        let ids: Vec<QueueId> = (0..5u8).map(|i| QueueId([i + 1; 12])).collect();
        let mut at = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let body = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(100 * i));
            at.push(segs.append(*id, body.as_bytes()).unwrap());
        }
        segs.sync().unwrap();
        let file = segment_files(&bodies).unwrap().remove(0);
        assert_eq!(scan(&file).unwrap().bodies.len(), 5);
        // A released (delivered) body is passed over.
        let extra = QueueId([9; 12]);
        let gone = segs.append(extra, b"delivered\r\n").unwrap();
        segs.release(gone);
        let scanned = scan(&file).unwrap();
        assert_eq!((scanned.bodies.len(), scanned.dead), (5, 1));
        // Overwrite the middle of body 2 and its successor's header.
        let mut data = std::fs::read(&file).unwrap();
        let hit = at[2].off as usize + 10;
        let end = at[3].off as usize;
        data[hit..end].fill(0xAA);
        std::fs::write(&file, &data).unwrap();
        let scanned = scan(&file).unwrap();
        let found: Vec<QueueId> = scanned.bodies.iter().map(|f| f.id).collect();
        assert_eq!(found, vec![ids[0], ids[1], ids[2], ids[4]], "{scanned:?}");
        assert_eq!(scanned.damaged.len(), 1);
        let out = dir.path().join("lost");
        let s = salvage(&bodies, &out, &mut |id| *id == ids[0]).unwrap();
        assert_eq!((s.saved, s.referenced, s.corrupt), (2, 1, 1), "{s:?}");
        let saved = std::fs::read_to_string(out.join(format!("{}.eml", ids[4]))).unwrap();
        assert!(saved.starts_with("Subject: 4\r\n"));
        // A torn tail of zeros is not damage; a truncated body is skipped.
        let mut torn = std::fs::read(&file).unwrap();
        torn.truncate(at[4].off as usize + 5);
        std::fs::write(&file, &torn).unwrap();
        let scanned = scan(&file).unwrap();
        assert!(scanned.bodies.iter().all(|f| f.id != ids[4]));
        // Garbage files: errors or nothing, never a panic.
        std::fs::write(&file, b"PSTB\xff\xff").unwrap();
        assert!(scan(&file).unwrap().bodies.is_empty());
    }
}
