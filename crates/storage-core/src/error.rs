//! The error type shared by every backend, wrapper and the conformance suite.

use std::time::Duration;

use crate::BlockHash;

/// Result alias used throughout olocus-storage.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A boxed error from an engine (RocksDB, SQLite, an object store, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a storage operation.
///
/// Callers should branch on [`StorageError::kind`] rather than on variants: new
/// variants may be added, but the set of kinds changes only with a major version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Stored or received bytes are damaged: a checksum, hash or decode failed.
    /// Never retried; the data must be repaired from another copy.
    #[error("corrupted data ({context})")]
    Corrupted {
        /// Where the damage was found (backend, key, offset, ...).
        context: String,
        /// The low-level decode error, if there was one.
        #[source]
        source: Option<BoxError>,
    },

    /// A different block already occupies this chain index; nothing was written.
    #[error("index {index} is already occupied by block {existing}; refused block {attempted}")]
    IndexConflict {
        /// The contested chain index.
        index: u64,
        /// The block already stored at that index.
        existing: BlockHash,
        /// The block that was refused.
        attempted: BlockHash,
    },

    /// A referenced block does not exist (e.g. `set_chain_head` to an unknown hash).
    #[error("block {hash} not found")]
    BlockNotFound {
        /// The missing block.
        hash: BlockHash,
    },

    /// The caller passed something invalid; nothing was changed.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A signature, hash link or chain invariant does not hold.
    #[error("verification failed at index {index}: {reason}")]
    Verification {
        /// Chain index of the offending block.
        index: u64,
        /// What does not hold.
        reason: String,
    },

    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Configuration(String),

    /// The backend does not support this operation.
    #[error("{backend} does not support {operation}")]
    Unsupported {
        /// The backend's name.
        backend: String,
        /// The refused operation.
        operation: String,
    },

    /// The store was opened read-only and refused a write; nothing was changed.
    #[error("{backend} store is open read-only: {operation} refused")]
    ReadOnly {
        /// The backend's name.
        backend: String,
        /// The refused operation.
        operation: String,
    },

    /// The store to open does not exist (opened without creating it).
    #[error("no {backend} store at {location}")]
    StoreNotFound {
        /// The backend's name.
        backend: String,
        /// Where it was looked for (a path, a URL, a bucket and prefix).
        location: String,
    },

    /// Another handle or process holds the store open for writing, and this
    /// backend allows one writer at a time. Opening read-only works beside it;
    /// opening for writing works once the holder closes.
    #[error("{backend} store at {location} is locked by another writer{}", holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    StoreLocked {
        /// The backend's name.
        backend: String,
        /// The store's path.
        location: String,
        /// Who holds it, if the backend can tell (a process id).
        holder: Option<String>,
        /// The engine's own error, if it reported the lock.
        #[source]
        source: Option<BoxError>,
    },

    /// The store was closed; open it again to continue.
    #[error("{backend} store is closed")]
    Closed {
        /// The backend's name.
        backend: String,
    },

    /// A replicated write reached fewer copies than its consistency level needs.
    #[error("insufficient replicas: {successful} of {required} required copies acknowledged")]
    InsufficientReplicas {
        /// Copies needed for the consistency level.
        required: usize,
        /// Copies that acknowledged.
        successful: usize,
    },

    /// An operation did not finish in time. Transient.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        operation: String,
        /// How long it was given.
        after: Duration,
    },

    /// An I/O error, with what was being done and to which path.
    #[error("i/o error while {context}")]
    Io {
        /// What was being done (and on which path).
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Encoding a value failed (a bug or an unsupported payload).
    #[error("encoding failed: {0}")]
    Encoding(String),

    /// An engine-specific failure that fits no other kind. The engine's own error
    /// is kept as the [source](std::error::Error::source), so it can be walked
    /// and downcast (to `rusqlite::Error`, `rocksdb::Error`, ...).
    #[error("{name} backend error while {context}")]
    Backend {
        /// The backend's name.
        name: String,
        /// What was being done (and on what), e.g. `"committing a batch"`.
        context: String,
        /// Whether and when retrying may succeed.
        status: ErrorStatus,
        /// The engine's error, if there was one.
        #[source]
        source: Option<BoxError>,
    },
}

/// Whether retrying a failed call may succeed, for [`StorageError::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorStatus {
    /// Retrying will not help: bad input, damage, a refused or unsupported call.
    Permanent,
    /// Retrying the same call soon may succeed: a lock held, a busy engine, a
    /// reset connection, a deadline that passed.
    Temporary,
    /// The condition was temporary, but the backend's own retries are exhausted
    /// (an object store that kept failing, a compare-and-swap that kept losing).
    /// Worth trying again later (a queued repair, a health check), not in a
    /// tight loop.
    Persistent,
}

/// The semantic kind of a [`StorageError`], stable across variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`StorageError::Corrupted`].
    Corrupted,
    /// See [`StorageError::IndexConflict`].
    IndexConflict,
    /// See [`StorageError::BlockNotFound`] and [`StorageError::StoreNotFound`].
    NotFound,
    /// See [`StorageError::InvalidInput`].
    InvalidInput,
    /// See [`StorageError::Verification`].
    Verification,
    /// See [`StorageError::Configuration`].
    Configuration,
    /// See [`StorageError::Unsupported`].
    Unsupported,
    /// See [`StorageError::Closed`].
    Closed,
    /// See [`StorageError::ReadOnly`].
    ReadOnly,
    /// See [`StorageError::StoreLocked`].
    Locked,
    /// See [`StorageError::InsufficientReplicas`].
    InsufficientReplicas,
    /// See [`StorageError::Timeout`].
    Timeout,
    /// See [`StorageError::Io`].
    Io,
    /// See [`StorageError::Encoding`].
    Encoding,
    /// See [`StorageError::Backend`].
    Backend,
}

/// An error's message and every cause below it, on one line, joined by `": "`:
/// what to print for a person. A cause that only repeats what is already said
/// (SQLite's error code restating its message, for one) is left out; the
/// causes stay walkable through [`std::error::Error::source`].
///
/// ```
/// let io = std::io::Error::other("disk full");
/// let e = storage_core::StorageError::io("writing segment 7", io);
/// assert_eq!(storage_core::error_report(&e), "i/o error while writing segment 7: disk full");
/// ```
pub fn error_report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut said = e.to_string();
    let mut last = said.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // A cause that is a short label ("Error code 14: ") before words the
        // message above it already holds is a restatement.
        let gist = text.rsplit(": ").next().unwrap_or(&text);
        let label = text.len() - gist.len();
        let restated =
            said.contains(&text) || (label <= 20 && gist.len() >= 12 && last.contains(gist));
        if !text.is_empty() && !restated {
            said.push_str(": ");
            said.push_str(&text);
        }
        last = text;
        cause = c.source();
    }
    said
}

impl StorageError {
    /// The semantic kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Corrupted { .. } => ErrorKind::Corrupted,
            Self::IndexConflict { .. } => ErrorKind::IndexConflict,
            Self::BlockNotFound { .. } => ErrorKind::NotFound,
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::Verification { .. } => ErrorKind::Verification,
            Self::Configuration(_) => ErrorKind::Configuration,
            Self::Unsupported { .. } => ErrorKind::Unsupported,
            Self::Closed { .. } => ErrorKind::Closed,
            Self::ReadOnly { .. } => ErrorKind::ReadOnly,
            Self::StoreNotFound { .. } => ErrorKind::NotFound,
            Self::StoreLocked { .. } => ErrorKind::Locked,
            Self::InsufficientReplicas { .. } => ErrorKind::InsufficientReplicas,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Io { .. } => ErrorKind::Io,
            Self::Encoding(_) => ErrorKind::Encoding,
            Self::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// Whether and when retrying may succeed.
    ///
    /// The replication layer queues repairs for copies that failed with anything
    /// but [`ErrorStatus::Permanent`]; permanent failures (conflicts, damage, bad
    /// input) are reported at once.
    pub fn status(&self) -> ErrorStatus {
        match self {
            Self::Timeout { .. } | Self::InsufficientReplicas { .. } => ErrorStatus::Temporary,
            // The holder keeps it until it closes: not worth a tight retry.
            Self::StoreLocked { .. } => ErrorStatus::Persistent,
            Self::Backend { status, .. } => *status,
            Self::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::NotConnected
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                ErrorStatus::Temporary
            }
            _ => ErrorStatus::Permanent,
        }
    }

    /// Whether retrying the same call soon may succeed
    /// ([`ErrorStatus::Temporary`]). False once a backend's own retries are
    /// exhausted ([`ErrorStatus::Persistent`]).
    pub fn is_transient(&self) -> bool {
        self.status() == ErrorStatus::Temporary
    }

    /// A [`StorageError::Corrupted`] with context and no source.
    pub fn corrupted(context: impl Into<String>) -> Self {
        Self::Corrupted {
            context: context.into(),
            source: None,
        }
    }

    /// A [`StorageError::Corrupted`] with context and the decode error behind it.
    pub fn corrupted_by(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Corrupted {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A [`StorageError::Io`] saying what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A [`StorageError::Backend`]: the named backend failed while doing
    /// `context`, because of `source` (the engine's error, kept for walking and
    /// downcasting).
    pub fn backend(
        name: impl Into<String>,
        context: impl Into<String>,
        status: ErrorStatus,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            name: name.into(),
            context: context.into(),
            status,
            source: Some(source.into()),
        }
    }

    /// A [`StorageError::Backend`] with no engine error behind it: `context` says
    /// what failed and why.
    pub fn backend_msg(
        name: impl Into<String>,
        context: impl Into<String>,
        status: ErrorStatus,
    ) -> Self {
        Self::Backend {
            name: name.into(),
            context: context.into(),
            status,
            source: None,
        }
    }

    /// A [`StorageError::Closed`] for the named backend.
    pub fn closed(backend: impl Into<String>) -> Self {
        Self::Closed {
            backend: backend.into(),
        }
    }

    /// A [`StorageError::Unsupported`] for the named backend and operation.
    pub fn unsupported(backend: impl Into<String>, operation: impl Into<String>) -> Self {
        Self::Unsupported {
            backend: backend.into(),
            operation: operation.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause, as engines nest them.
    #[derive(Debug)]
    struct Nested(&'static str, Option<Box<Nested>>);

    impl std::fmt::Display for Nested {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Nested {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|n| n as _)
        }
    }

    #[test]
    fn a_report_names_every_cause_once() {
        // SQLite's shape: the message, then its code restating it.
        let sqlite = Nested(
            "unable to open database file: /data/chain.db",
            Some(Box::new(Nested(
                "Error code 14: unable to open database file",
                None,
            ))),
        );
        let e = StorageError::backend("sqlite", "opening", ErrorStatus::Permanent, sqlite);
        assert_eq!(
            error_report(&e),
            "sqlite backend error while opening: unable to open database file: /data/chain.db"
        );
        // A cause ending in the same path as its message is not a restatement.
        let open = Nested(
            "sqlite backend error while opening /data/chain.db",
            Some(Box::new(Nested(
                "unable to open database file: /data/chain.db",
                None,
            ))),
        );
        assert_eq!(
            error_report(&open),
            "sqlite backend error while opening /data/chain.db: unable to open database file: \
             /data/chain.db"
        );
        // Distinct causes all appear, short ones included.
        let e = Nested(
            "a: b",
            Some(Box::new(Nested(
                "bad digit: x",
                Some(Box::new(Nested("eof", None))),
            ))),
        );
        assert_eq!(error_report(&e), "a: b: bad digit: x: eof");
    }

    #[test]
    fn kinds_and_transience() {
        let e = StorageError::Timeout {
            operation: "store_block".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.is_transient());
        assert!(!StorageError::corrupted("x").is_transient());
        let io = StorageError::io(
            "reading",
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        );
        assert!(io.is_transient());
        let io = StorageError::io(
            "reading",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(!io.is_transient());
        assert_eq!(
            StorageError::closed("memory").to_string(),
            "memory store is closed"
        );
    }

    #[test]
    fn backend_errors_keep_their_cause_once() {
        let cause = std::io::Error::other("lock held by another process");
        let e = StorageError::backend("rocksdb", "opening /data", ErrorStatus::Temporary, cause);
        assert_eq!(e.to_string(), "rocksdb backend error while opening /data");
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "lock held by another process");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        assert!(e.is_transient());
        let e = StorageError::backend_msg("object", "gave up", ErrorStatus::Persistent);
        assert_eq!(e.status(), ErrorStatus::Persistent);
        assert!(!e.is_transient());
        assert!(std::error::Error::source(&e).is_none());
    }
}
