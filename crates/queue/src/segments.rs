//! Message bodies in append-only segment files, group-committed.
//!
//! Bodies used to live inside sled (small ones) or in one fsynced file each
//! (large ones). sled rewrites whole pages as they change, so 4 KB bodies
//! cost about three times their size on disk and were never given back;
//! one file per large body costs two fsyncs each. Here every body is
//! appended to the active segment (`bodies/<n>.seg`) under a short lock and
//! made durable by the commit thread's one `fdatasync` per batch, together
//! with the records that point at it ([`Segments::sync`] runs before sled's
//! flush, so a durable record never points at bytes that are not).
//!
//! Each segment counts its live bodies. When the last one is removed the
//! segment is *doomed*: it is deleted after the next flush, once the removals
//! that emptied it are durable too, so a crash can never leave a record
//! whose body file is gone. A queue that drains to zero therefore gives all
//! its space back; one that holds a steady backlog keeps about one segment
//! more than its live bodies (see `max_segment`).
//!
//! On disk each body is `PSTB ++ queue id (12) ++ length (u64 LE) ++ CRC32
//! (u32 LE) ++ bytes`; the record's body entry holds segment, offset,
//! length and CRC, and a read checks both length and CRC. The header is not
//! needed to read a body: it lets an operator (or a future salvage tool) find
//! bodies in a segment whose records were lost.

use postern_core::QueueId;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Magic at the start of each body in a segment.
pub(crate) const MAGIC: &[u8; 4] = b"PSTB";
/// The magic of a body whose record is gone on purpose (delivered,
/// deleted): written over `MAGIC` when the body is released, so that a
/// scan for bodies without records (after damage) passes over it.
pub(crate) const DEAD: &[u8; 4] = b"PSTD";
/// Sealed segment files kept open for marking released bodies.
const OPEN_FILES: usize = 64;
/// Length of a body's header in a segment.
pub(crate) const BODY_HEADER: u64 = 4 + 12 + 8 + 4;

/// Where one body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    /// Segment number.
    pub seg: u32,
    /// Offset of the body's first byte (after its header).
    pub off: u64,
    /// Length of the body.
    pub len: u64,
    /// CRC32 of the body.
    pub crc: u32,
}

/// Live bodies of one segment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Live {
    /// Bodies whose entries exist.
    pub bodies: u64,
    /// Their bytes (headers included).
    pub bytes: u64,
}

/// The segment being appended to.
struct Active {
    seg: u32,
    file: Arc<File>,
    len: u64,
}

struct State {
    active: Option<Active>,
    /// Segments written since the last sync, sealed meanwhile (the active
    /// one is synced as well).
    unsynced: Vec<Arc<File>>,
    live: HashMap<u32, Live>,
    /// Emptied segments, deleted after the next flush.
    doomed: Vec<u32>,
    next: u32,
    /// Sealed segments opened to mark released bodies dead (at most
    /// [`OPEN_FILES`]).
    open: HashMap<u32, Arc<File>>,
}

/// The segment directory.
pub(crate) struct Segments {
    dir: PathBuf,
    /// A segment is sealed once it reaches this size.
    max_segment: u64,
    state: Mutex<State>,
}

/// What [`Segments::take_doomed`] handed out, for [`Segments::delete`].
pub(crate) struct Doomed(Vec<u32>);

impl Segments {
    /// Opens the directory (created if missing). `live` is what the bodies
    /// tree says each segment holds; any segment file not in it holds no
    /// live body and is removed (its bodies' records never became durable,
    /// or it emptied just before a crash). Returns the segments and how
    /// many files were removed.
    pub(crate) fn open(
        dir: &Path,
        max_segment: u64,
        live: HashMap<u32, Live>,
    ) -> io::Result<(Segments, usize)> {
        fs::create_dir_all(dir)?;
        let mut removed = 0;
        let mut next = 1;
        for e in fs::read_dir(dir)? {
            let e = e?;
            let Some(n) = e.file_name().to_str().and_then(parse_name) else {
                continue;
            };
            next = next.max(n.saturating_add(1));
            if !live.contains_key(&n) {
                fs::remove_file(e.path())?;
                removed += 1;
            }
        }
        if let Some(max) = live.keys().max() {
            next = next.max(max.saturating_add(1));
        }
        let state = State {
            active: None,
            unsynced: Vec::new(),
            live,
            doomed: Vec::new(),
            next,
            open: HashMap::new(),
        };
        Ok((
            Segments {
                dir: dir.to_path_buf(),
                max_segment,
                state: Mutex::new(state),
            },
            removed,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, seg: u32) -> PathBuf {
        self.dir.join(format!("{seg:08}.seg"))
    }

    /// Appends a body to the active segment (not yet durable: the next
    /// [`Segments::sync`] makes it so).
    pub(crate) fn append(&self, id: QueueId, body: &[u8]) -> io::Result<Location> {
        let crc = crc32fast::hash(body);
        let mut header = [0u8; BODY_HEADER as usize];
        header[..4].copy_from_slice(MAGIC);
        header[4..16].copy_from_slice(&id.0);
        header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        header[24..28].copy_from_slice(&crc.to_le_bytes());
        let total = BODY_HEADER + body.len() as u64;
        let mut st = self.lock();
        let roll = st
            .active
            .as_ref()
            .is_none_or(|a| a.len > 0 && a.len + total > self.max_segment);
        if roll {
            let seg = st.next;
            let mut opts = fs::OpenOptions::new();
            opts.read(true).write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let file = Arc::new(opts.open(self.path(seg))?);
            // The new file's directory entry must be durable before any
            // record points into it.
            sync_dir(&self.dir)?;
            st.next = seg.saturating_add(1);
            if let Some(old) = st.active.replace(Active { seg, file, len: 0 }) {
                st.unsynced.push(old.file);
                if st.live.get(&old.seg).is_none_or(|l| l.bodies == 0) {
                    st.live.remove(&old.seg);
                    st.doomed.push(old.seg);
                }
            }
        }
        let Some(active) = st.active.as_mut() else {
            return Err(io::Error::other("no active segment"));
        };
        let start = active.len;
        write_all_at(&active.file, &header, start)?;
        write_all_at(&active.file, body, start + BODY_HEADER)?;
        active.len += total;
        let seg = active.seg;
        let live = st.live.entry(seg).or_default();
        live.bodies += 1;
        live.bytes += total;
        Ok(Location {
            seg,
            off: start + BODY_HEADER,
            len: body.len() as u64,
            crc,
        })
    }

    /// Makes every appended byte durable (called by the commit thread
    /// before it flushes the records).
    pub(crate) fn sync(&self) -> io::Result<()> {
        let (files, active) = {
            let mut st = self.lock();
            let files = std::mem::take(&mut st.unsynced);
            (files, st.active.as_ref().map(|a| a.file.clone()))
        };
        for f in files.iter().chain(active.iter()) {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Reads a body and checks its length and CRC.
    pub(crate) fn read(&self, at: Location) -> Result<Vec<u8>, ReadError> {
        let f = File::open(self.path(at.seg)).map_err(ReadError::Io)?;
        let len = usize::try_from(at.len).map_err(|_| ReadError::Mismatch)?;
        let end = f.metadata().map_err(ReadError::Io)?.len();
        if at.off.saturating_add(at.len) > end {
            return Err(ReadError::Mismatch);
        }
        let mut buf = vec![0u8; len];
        read_exact_at(&f, &mut buf, at.off).map_err(ReadError::Io)?;
        if crc32fast::hash(&buf) != at.crc {
            return Err(ReadError::Mismatch);
        }
        Ok(buf)
    }

    /// A body's entry is gone: one live body fewer in its segment. A
    /// sealed segment left empty is doomed.
    pub(crate) fn release(&self, at: Location) {
        let mut st = self.lock();
        self.mark_dead(&mut st, at);
        let active = st.active.as_ref().map(|a| a.seg);
        let Some(live) = st.live.get_mut(&at.seg) else {
            return;
        };
        live.bodies = live.bodies.saturating_sub(1);
        live.bytes = live.bytes.saturating_sub(BODY_HEADER + at.len);
        if live.bodies == 0 && active != Some(at.seg) {
            st.live.remove(&at.seg);
            st.doomed.push(at.seg);
        }
    }

    /// Writes [`DEAD`] over the body's magic. Best effort: a failure (or a
    /// power cut before the page reaches the disk) only means a later
    /// salvage saves a body that was delivered.
    fn mark_dead(&self, st: &mut State, at: Location) {
        let Some(header) = at.off.checked_sub(BODY_HEADER) else {
            return;
        };
        let file = match &st.active {
            Some(a) if a.seg == at.seg => Some(a.file.clone()),
            _ => match st.open.get(&at.seg) {
                Some(f) => Some(f.clone()),
                None => {
                    let f = fs::OpenOptions::new().write(true).open(self.path(at.seg));
                    match f {
                        Ok(f) => {
                            if st.open.len() >= OPEN_FILES {
                                st.open.clear();
                            }
                            let f = Arc::new(f);
                            st.open.insert(at.seg, f.clone());
                            Some(f)
                        }
                        Err(_) => None,
                    }
                }
            },
        };
        if let Some(f) = file {
            let _ = write_all_at(&f, DEAD, header);
        }
    }

    /// Segments to delete once the flush that follows is done.
    pub(crate) fn take_doomed(&self) -> Doomed {
        Doomed(std::mem::take(&mut self.lock().doomed))
    }

    /// Whether a segment waits to be deleted.
    pub(crate) fn has_doomed(&self) -> bool {
        !self.lock().doomed.is_empty()
    }

    /// Deletes segments taken before a successful flush; a failure to
    /// delete is logged (the space stays taken, nothing else is wrong).
    pub(crate) fn delete(&self, doomed: Doomed) {
        {
            let mut st = self.lock();
            for seg in &doomed.0 {
                st.open.remove(seg);
            }
        }
        for seg in doomed.0 {
            if let Err(e) = fs::remove_file(self.path(seg)) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(segment = seg, error = %e, "cannot delete an emptied body segment");
                }
            }
        }
    }

    /// Gives back segments taken for a flush that failed: they are deleted
    /// after a later one.
    pub(crate) fn restore(&self, doomed: Doomed) {
        self.lock().doomed.extend(doomed.0);
    }

    /// Live bodies per segment (for the clean-close snapshot and figures).
    pub(crate) fn live(&self) -> HashMap<u32, Live> {
        self.lock().live.clone()
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The segment could not be opened or read.
    Io(io::Error),
    /// Out of the file's bounds, or the CRC differs.
    Mismatch,
}

fn parse_name(name: &str) -> Option<u32> {
    let n = name.strip_suffix(".seg")?;
    if n.len() != 8 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Makes a directory's entries durable (a no-op where directories cannot
/// be opened as files, i.e. Windows, whose metadata is journalled).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(unix)]
fn write_all_at(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, off)
}

#[cfg(unix)]
fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
}

#[cfg(windows)]
fn write_all_at(f: &File, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_write(buf, off) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(windows)]
fn read_exact_at(f: &File, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, off) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> QueueId {
        QueueId([n; 12])
    }

    #[test]
    fn bodies_round_trip_roll_and_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let (s, removed) = Segments::open(dir.path(), 100, HashMap::new()).unwrap();
        assert_eq!(removed, 0);
        let a = s.append(id(1), b"first body").unwrap();
        let b = s.append(id(2), &[7u8; 90]).unwrap(); // rolls: 38 + 118 > 100
        assert_ne!(a.seg, b.seg);
        s.sync().unwrap();
        assert_eq!(s.read(a).unwrap(), b"first body");
        assert_eq!(s.read(b).unwrap(), vec![7u8; 90]);
        // A wrong CRC or a range past the end is a mismatch, not a panic.
        let bad = Location {
            crc: a.crc ^ 1,
            ..a
        };
        assert!(matches!(s.read(bad), Err(ReadError::Mismatch)));
        let far = Location { off: 1 << 40, ..a };
        assert!(matches!(s.read(far), Err(ReadError::Mismatch)));
        // The sealed segment empties: deleted only after the next flush.
        s.release(a);
        let doomed = s.take_doomed();
        assert!(s.path(a.seg).exists());
        s.delete(doomed);
        assert!(!s.path(a.seg).exists());
        // The active one is never doomed while it is active.
        s.release(b);
        assert!(!s.has_doomed());
        assert!(s.path(b.seg).exists());
        // Reopened with nothing live, every file goes; numbers go on rising.
        drop(s);
        let (s, removed) = Segments::open(dir.path(), 100, HashMap::new()).unwrap();
        assert_eq!(removed, 1);
        let c = s.append(id(3), b"x").unwrap();
        assert!(c.seg > b.seg);
    }

    #[test]
    fn names_parse_strictly() {
        assert_eq!(parse_name("00000012.seg"), Some(12));
        assert_eq!(parse_name("12.seg"), None);
        assert_eq!(parse_name("0000001a.seg"), None);
        assert_eq!(parse_name("00000012.tmp"), None);
    }
}
