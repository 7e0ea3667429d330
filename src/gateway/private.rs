//! Files mail lives in are private to the gateway's user.
//!
//! New files are created private (umask 077, set first thing in `main`).
//! Files an older version created readable by others (0644 spool bodies,
//! sled files, tracking logs) are made private when the gateway opens its
//! queue ([`tighten`]): directories 0700, files 0600. Symbolic links are
//! not followed, and nothing outside the queue directory and the tracking
//! log (with its rotated copies) is touched.

use std::path::Path;
#[cfg(unix)]
use std::path::PathBuf;

/// Removes group and other permissions from everything under `queue_dir`
/// and from `tracking` and its rotated copies (`<file>.1`, …); returns
/// how many entries were changed. A missing path is not an error (a first
/// start); any other failure is logged and skipped: it must not keep the
/// gateway from starting.
#[cfg(unix)]
pub fn tighten(queue_dir: &Path, tracking: &Path) -> usize {
    let mut changed = 0;
    let mut todo: Vec<PathBuf> = vec![queue_dir.to_path_buf()];
    if !tracking.starts_with(queue_dir) {
        todo.extend(rotated(tracking));
    }
    while let Some(path) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => todo.extend(entries.flatten().map(|e| e.path())),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot list"),
            }
        }
        if make_private(&path, &meta) {
            changed += 1;
        }
    }
    if changed > 0 {
        tracing::info!(
            changed,
            queue = %queue_dir.display(),
            "files readable by other users made private (0600 files, 0700 directories)"
        );
    }
    changed
}

/// Windows: files take the ACL of their directory.
#[cfg(not(unix))]
pub fn tighten(_queue_dir: &Path, _tracking: &Path) -> usize {
    0
}

/// The tracking file and its rotated copies that exist.
#[cfg(unix)]
fn rotated(tracking: &Path) -> Vec<PathBuf> {
    let mut out = vec![tracking.to_path_buf()];
    for n in 1.. {
        let mut name = tracking.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let p = PathBuf::from(name);
        if std::fs::symlink_metadata(&p).is_err() {
            break;
        }
        out.push(p);
    }
    out
}

/// Clears the group and other bits of a file or directory that has any
/// (never a symbolic link); true when it changed something.
#[cfg(unix)]
fn make_private(path: &Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    if meta.file_type().is_symlink() {
        return false;
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 == 0 {
        return false;
    }
    let private = mode & 0o7700;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot make private");
            false
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn set(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    // Finding "mail is world-readable on disk", for files an older version
    // left: umask 077 only covers new files. Before: they stayed 0644;
    // after: 0600 and 0700, links untouched, the rest outside left alone.
    #[test]
    fn files_left_readable_are_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("queue");
        let spool = queue.join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        std::fs::write(spool.join("body"), "mail").unwrap();
        std::fs::write(queue.join("db"), "sled").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "not ours").unwrap();
        std::os::unix::fs::symlink(&outside, queue.join("link")).unwrap();
        let log = dir.path().join("tracking.log");
        std::fs::write(&log, "{}").unwrap();
        std::fs::write(dir.path().join("tracking.log.1"), "{}").unwrap();
        for p in [&queue, &spool] {
            set(p, 0o755);
        }
        for p in [
            spool.join("body"),
            queue.join("db"),
            outside.clone(),
            log.clone(),
        ] {
            set(&p, 0o644);
        }
        set(&dir.path().join("tracking.log.1"), 0o640);
        assert_eq!(tighten(&queue, &log), 6);
        assert_eq!(mode(&queue), 0o700);
        assert_eq!(mode(&spool), 0o700);
        assert_eq!(mode(&spool.join("body")), 0o600);
        assert_eq!(mode(&queue.join("db")), 0o600);
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(&dir.path().join("tracking.log.1")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is not ours");
        assert_eq!(tighten(&queue, &log), 0, "nothing left to change");
        assert_eq!(tighten(&dir.path().join("missing"), &log), 0);
    }
}
