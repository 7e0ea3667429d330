//! Group commit: one fsync for every writer waiting at once.
//!
//! [`Committer::flush`] queues a request and waits. A dedicated thread takes
//! the first request, then every other already waiting, calls sled's flush
//! once and answers them all. sled's flush ends in `sync_file_range`, which
//! does not flush the device cache or file metadata, so the thread then calls
//! `fdatasync` on sled's log file itself: that is the fsync behind a 250.
//! Under load many sessions share one fsync; with one writer it costs what a
//! plain flush costs. Failures come back as [`StorageError`]s, one shared
//! by every writer of the batch.
//!
//! Body segments are synced first, so a durable record never points at
//! bytes that are not; segments emptied before the flush are deleted after
//! it. With no writer for a second, the thread still runs a cycle when a
//! segment waits to be deleted, so a queue that drains gives its space back.

use crate::error::StorageError;
use crate::segments::Segments;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::oneshot;

/// Where the commit thread answers one flush request.
type Waiter = oneshot::Sender<Result<(), StorageError>>;

/// The commit thread has ended (it could not start, or the queue is
/// closing): nothing can be flushed any more.
#[derive(Debug, thiserror::Error)]
#[error("commit thread is gone")]
struct CommitGone;

fn gone<T>(_: T) -> StorageError {
    StorageError::new(CommitGone)
}

/// Owner of the commit thread. Dropping it stops and joins the thread, so
/// the database is closed (and its lock released) when the queue is dropped.
pub(crate) struct Committer {
    /// Requests to the commit thread; dropping it ends the thread's loop.
    tx: Option<mpsc::Sender<Waiter>>,
    /// The thread, joined on drop.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    /// `log` is sled's log file (`<queue>/db`), fsynced after each flush.
    pub(crate) fn start(db: sled::Db, log: &std::path::Path, segments: Arc<Segments>) -> Committer {
        // Write access: Windows' FlushFileBuffers refuses a read-only handle.
        let log = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(log)
            .map_err(|e| tracing::error!(error = %e, "cannot open the queue log for fsync"))
            .ok();
        let (tx, rx) = mpsc::channel::<Waiter>();
        let spawned = std::thread::Builder::new()
            .name("queue-commit".into())
            .spawn(move || loop {
                let mut batch = match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(first) => vec![first],
                    Err(mpsc::RecvTimeoutError::Timeout) if segments.has_doomed() => Vec::new(),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                batch.extend(rx.try_iter());
                let doomed = segments.take_doomed();
                let mut result = segments
                    .sync()
                    .map_err(|e| StorageError::with_context("body segment fsync", e));
                if result.is_ok() {
                    result = db.flush().map(|_| ()).map_err(StorageError::new);
                }
                if let (Ok(()), Some(f)) = (&result, &log) {
                    result = f
                        .sync_data()
                        .map_err(|e| StorageError::with_context("fsync", e));
                }
                if result.is_ok() {
                    segments.delete(doomed);
                } else {
                    segments.restore(doomed);
                }
                for w in batch {
                    let _ = w.send(result.clone());
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the commit thread; flushes will fail");
                None
            }
        };
        Committer {
            tx: Some(tx),
            thread,
        }
    }

    /// Returns once everything written before the call is on disk.
    pub(crate) async fn flush(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| gone(()))?
            .send(tx)
            .map_err(gone)?;
        rx.await.map_err(gone)?
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
