//! Tracing helpers: every backend operation runs in a span named `storage_op` with
//! fields `backend`, `op`, `hash`, `index`, `count`, `outcome` and `error`.
//!
//! Spans are at `DEBUG` level, so they cost a few nanoseconds unless a subscriber
//! enables them. Their target is `storage_op` too, so a filter names them
//! directly: `storage_op=debug` in an `EnvFilter` (`RUST_LOG`, or the CLI's
//! `OLOCUS_LOG`).

use std::future::Future;

use tracing::field::{Empty, display};
use tracing::{Instrument, Span};

use crate::{ErrorKind, Result};

/// Opens the span for one operation. Record the key with [`record_hash`],
/// [`record_index`] or [`record_count`].
pub fn op_span(backend: &str, op: &'static str) -> Span {
    tracing::debug_span!(
        target: "storage_op",
        "storage_op",
        backend,
        op,
        hash = Empty,
        index = Empty,
        count = Empty,
        outcome = Empty,
        error = Empty
    )
}

/// Records the block hash an operation is about.
pub fn record_hash(span: &Span, hash: &crate::BlockHash) {
    // A disabled span still looks the field up by name; skip it.
    if !span.is_disabled() {
        span.record("hash", display(hash));
    }
}

/// Records the chain index (or range start) an operation is about.
pub fn record_index(span: &Span, index: u64) {
    if !span.is_disabled() {
        span.record("index", index);
    }
}

/// Records how many items an operation handles.
pub fn record_count(span: &Span, count: usize) {
    if !span.is_disabled() {
        span.record("count", count);
    }
}

/// Records `outcome = "ok"`, or the error kind and message.
pub fn record_outcome<T>(span: &Span, result: &Result<T>) {
    match result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(e) => {
            span.record("outcome", e.kind().as_str());
            span.record("error", display(e));
        }
    }
}

/// Runs a synchronous operation body inside `span` and records its outcome.
pub fn in_span<T>(span: Span, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let result = span.in_scope(f);
    record_outcome(&span, &result);
    result
}

/// Runs an asynchronous operation inside `span` and records its outcome.
pub async fn in_span_async<T>(span: Span, fut: impl Future<Output = Result<T>>) -> Result<T> {
    let result = fut.instrument(span.clone()).await;
    record_outcome(&span, &result);
    result
}

impl ErrorKind {
    /// A short snake_case name, as recorded in spans.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Corrupted => "corrupted",
            ErrorKind::IndexConflict => "index_conflict",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Verification => "verification",
            ErrorKind::Configuration => "configuration",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Closed => "closed",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::Locked => "locked",
            ErrorKind::InsufficientReplicas => "insufficient_replicas",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Encoding => "encoding",
            ErrorKind::Backend => "backend",
        }
    }
}
