//! Large message bodies as one file each, as versions before body segments
//! wrote them (bodies over 64 KiB in `spool/<queue id>`, the `bodies` tree
//! holding their length and CRC32). Such a queue is still read: its bodies
//! are read, checked and removed from here, and recovery removes a file
//! without a record. New bodies go to segments.

use postern_core::QueueId;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The spool directory.
pub(crate) struct Spool {
    /// `<queue>/spool`.
    dir: PathBuf,
}

impl Spool {
    /// Opens the directory, creating it if needed.
    pub(crate) fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: QueueId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Writes the body as an old version did (tests of reading such a
    /// queue), and makes it durable: file data, then the directory
    /// entry. On Unix the file is created 0600 whatever the umask: a body is
    /// somebody's mail, readable by the gateway's user only.
    #[cfg(test)]
    pub(crate) fn write_durable(&self, id: QueueId, body: &[u8]) -> io::Result<()> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        use std::io::Write;
        let mut f = opts.open(self.path(id))?;
        f.write_all(body)?;
        f.sync_all()?;
        fs::File::open(&self.dir)?.sync_all()
    }

    /// The body file's bytes, unchecked (the caller checks length and CRC).
    pub(crate) fn read(&self, id: QueueId) -> io::Result<Vec<u8>> {
        fs::read(self.path(id))
    }

    /// Removes a body file; a missing file is not an error.
    pub(crate) fn remove(&self, id: QueueId) {
        let _ = fs::remove_file(self.path(id));
    }

    /// Ids of every body file (names that are not ids are ignored).
    pub(crate) fn ids(&self) -> io::Result<Vec<QueueId>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            if let Some(id) = e?.file_name().to_str().and_then(QueueId::parse) {
                out.push(id);
            }
        }
        Ok(out)
    }
}
