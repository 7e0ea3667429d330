//! Errors at the queue boundary.
//!
//! [`QueueError`] is what every [`Queue`](crate::Queue) operation returns.
//! A failure of the storage underneath (sled, the spool files, fsync) is a
//! [`StorageError`]: opaque, so no sled type can be named from outside, yet
//! it keeps the original error as its cause. Inside the crate, sled results
//! become [`QueueError`]s through [`SledResult::storage`], the one place a
//! sled error is converted.

use crate::record::{Corruption, State};
use postern_core::QueueId;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Everything that can go wrong at the queue boundary.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database or the file system failed.
    #[error("queue storage error: {0}")]
    Storage(#[source] StorageError),
    /// A flush to disk failed: what was written may not be durable.
    #[error("queue flush failed: {0}")]
    Flush(#[source] StorageError),
    /// A stored value failed its checks.
    #[error("record {id} is corrupt: {reason}")]
    Corrupt {
        /// The queue id (or the suspect key) of the value.
        id: String,
        /// What the checks found.
        #[source]
        reason: Corruption,
    },
    /// No message with this id is queued.
    #[error("no message {0} in the queue")]
    NotFound(QueueId),
    /// The message's state does not allow the action asked for.
    #[error("message {id} is {state:?}; cannot {action}")]
    WrongState {
        /// The message.
        id: QueueId,
        /// The state it is in.
        state: State,
        /// The action refused, e.g. "release".
        action: &'static str,
    },
}

impl QueueError {
    /// True when the storage failed for want of space (ENOSPC, EDQUOT):
    /// a condition that passes when space returns, answered with 452 4.3.1.
    pub fn is_no_space(&self) -> bool {
        match self {
            QueueError::Storage(e) | QueueError::Flush(e) => e.is_no_space(),
            _ => false,
        }
    }
}

/// True for an I/O error that means the file system is full.
pub(crate) fn io_no_space(e: &std::io::Error) -> bool {
    // ENOSPC and EDQUOT on Linux; ERROR_DISK_FULL and
    // ERROR_HANDLE_DISK_FULL on Windows.
    #[cfg(unix)]
    let codes: &[i32] = &[28, 122];
    #[cfg(not(unix))]
    let codes: &[i32] = &[112, 39];
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

impl From<std::io::Error> for QueueError {
    fn from(e: std::io::Error) -> Self {
        QueueError::Storage(StorageError::new(e))
    }
}

/// A storage failure with its cause. Its text is the cause's text (after
/// what was being done, when the cause alone does not say); the cause itself
/// stays private so that no storage library's type is part of this API.
/// Cheap to clone: one flush failure is answered to every waiting writer.
#[derive(Debug, Clone)]
pub struct StorageError {
    /// What was being done ("fsync", "spool task"), when the cause alone
    /// does not say.
    context: Option<&'static str>,
    /// The original error.
    cause: Arc<dyn Error + Send + Sync>,
}

impl StorageError {
    /// Wraps `cause`.
    pub(crate) fn new(cause: impl Error + Send + Sync + 'static) -> StorageError {
        StorageError {
            context: None,
            cause: Arc::new(cause),
        }
    }

    /// Wraps `cause`, prefixed with what was being done.
    pub(crate) fn with_context(
        context: &'static str,
        cause: impl Error + Send + Sync + 'static,
    ) -> StorageError {
        StorageError {
            context: Some(context),
            cause: Arc::new(cause),
        }
    }
}

impl StorageError {
    /// True when the cause, or any error it wraps, is an I/O error of a
    /// full file system.
    pub fn is_no_space(&self) -> bool {
        let mut e: Option<&(dyn Error + 'static)> = Some(&*self.cause);
        while let Some(cur) = e {
            if let Some(io) = cur.downcast_ref::<std::io::Error>() {
                if io_no_space(io) {
                    return true;
                }
            }
            if let Some(sled::Error::Io(io)) = cur.downcast_ref::<sled::Error>() {
                if io_no_space(io) {
                    return true;
                }
            }
            e = cur.source();
        }
        false
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.context {
            write!(f, "{c}: ")?;
        }
        fmt::Display::fmt(&self.cause, f)
    }
}

impl Error for StorageError {
    /// Transparent: the cause's text is this error's text, so the chain
    /// continues with the cause's own source.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.source()
    }
}

/// Turns a sled result into a queue result.
pub(crate) trait SledResult<T> {
    /// The sled error, if any, as [`QueueError::Storage`].
    fn storage(self) -> Result<T, QueueError>;
}

impl<T> SledResult<T> for Result<T, sled::Error> {
    fn storage(self) -> Result<T, QueueError> {
        self.map_err(|e| QueueError::Storage(StorageError::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_read_as_their_cause_and_keep_it() {
        let io = std::io::Error::other("disk on fire");
        let e = QueueError::from(io);
        assert_eq!(e.to_string(), "queue storage error: disk on fire");
        let inner = e.source().map(|s| s.to_string());
        assert_eq!(inner.as_deref(), Some("disk on fire"));
        let fsync = StorageError::with_context("fsync", std::io::Error::other("EIO"));
        assert_eq!(
            QueueError::Flush(fsync).to_string(),
            "queue flush failed: fsync: EIO"
        );
        let r: Result<(), sled::Error> = Err(sled::Error::Unsupported("nope".into()));
        assert!(matches!(r.storage(), Err(QueueError::Storage(_))));
    }

    #[test]
    fn a_full_disk_is_told_apart() {
        let full = std::io::Error::from_raw_os_error(28);
        assert!(QueueError::from(full).is_no_space());
        let sled_full: Result<(), sled::Error> =
            Err(sled::Error::Io(std::io::Error::from_raw_os_error(28)));
        assert!(sled_full.storage().unwrap_err().is_no_space());
        let flush = StorageError::with_context("fsync", std::io::Error::from_raw_os_error(28));
        assert!(QueueError::Flush(flush).is_no_space());
        assert!(!QueueError::from(std::io::Error::other("EIO")).is_no_space());
    }
}
