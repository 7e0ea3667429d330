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
}
