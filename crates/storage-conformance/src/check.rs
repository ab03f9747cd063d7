//! Case results and the assertions cases use.

use std::fmt::{self, Debug};

use storage_core::{Block, BlockMetadata, ErrorKind, StorageError, WireFormat};

/// Why a case did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseError {
    /// The backend broke the contract; the message says how.
    Failed(String),
    /// The case does not apply to this backend (reported as ignored, not passed).
    Skipped(String),
}

/// What a case returns.
pub type CaseResult = Result<(), CaseError>;

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseError::Failed(m) => write!(f, "failed: {m}"),
            CaseError::Skipped(m) => write!(f, "skipped: {m}"),
        }
    }
}

impl std::error::Error for CaseError {}

impl From<StorageError> for CaseError {
    fn from(e: StorageError) -> Self {
        CaseError::Failed(format!("unexpected error ({:?}): {e}", e.kind()))
    }
}

/// Adds what was being done to an unexpected error.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T, CaseError>;
}

impl<T> Ctx<T> for Result<T, StorageError> {
    fn ctx(self, what: impl fmt::Display) -> Result<T, CaseError> {
        self.map_err(|e| {
            CaseError::Failed(format!("{what}: unexpected error ({:?}): {e}", e.kind()))
        })
    }
}

pub(crate) fn fail(msg: impl Into<String>) -> CaseError {
    CaseError::Failed(msg.into())
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::check::fail(format!($($fmt)+)));
        }
    };
}

macro_rules! ensure_eq {
    ($got:expr, $want:expr, $($fmt:tt)+) => {{
        let (got, want) = (&$got, &$want);
        if got != want {
            return Err($crate::check::fail(format!(
                "{}\n   got: {:?}\n  want: {:?}",
                format!($($fmt)+),
                got,
                want
            )));
        }
    }};
}

pub(crate) use {ensure, ensure_eq};

/// The call must fail with `kind`.
pub(crate) fn expect_kind<T: Debug>(
    result: Result<T, StorageError>,
    kind: ErrorKind,
    what: impl fmt::Display,
) -> Result<StorageError, CaseError> {
    match result {
        Err(e) if e.kind() == kind => Ok(e),
        Err(e) => Err(fail(format!(
            "{what}: expected a {kind:?} error, got {:?}: {e}",
            e.kind()
        ))),
        Ok(v) => Err(fail(format!(
            "{what}: expected a {kind:?} error, got Ok({v:?})"
        ))),
    }
}

/// `got` must be byte-identical to `want`: same hash, same canonical encoding, and
/// its signature verifies.
pub(crate) fn same_block(
    got: &Block,
    want: &Block,
    what: impl fmt::Display,
) -> Result<(), CaseError> {
    ensure!(
        got.hash() == want.hash(),
        "{what}: got block {} (index {}), want {} (index {})",
        got.hash(),
        got.index(),
        want.hash(),
        want.index()
    );
    let (g, w) = (
        WireFormat::BINARY.encode(got)?,
        WireFormat::BINARY.encode(want)?,
    );
    ensure!(
        g == w,
        "{what}: block {} is not byte-identical",
        want.hash()
    );
    got.verify_signature().map_err(|e| {
        fail(format!(
            "{what}: signature of {} does not verify: {e}",
            got.hash()
        ))
    })?;
    Ok(())
}

/// `got` must hold exactly `want`, in order, each byte-identical.
pub(crate) fn same_blocks(
    got: &[Block],
    want: &[&Block],
    what: impl fmt::Display,
) -> Result<(), CaseError> {
    ensure_eq!(
        got.iter().map(Block::index).collect::<Vec<_>>(),
        want.iter().map(|b| b.index()).collect::<Vec<_>>(),
        "{what}: indices"
    );
    for (g, w) in got.iter().zip(want) {
        same_block(g, w, &what)?;
    }
    Ok(())
}

/// The indices of a listing, in order.
pub(crate) fn indices(list: &[BlockMetadata]) -> Vec<u64> {
    list.iter().map(|m| m.index).collect()
}

/// `got` must be exactly `want`; on a difference the message names the lengths and
/// the first entry that differs instead of printing both listings whole.
pub(crate) fn same_listing(
    got: &[BlockMetadata],
    want: &[BlockMetadata],
    what: impl fmt::Display,
) -> Result<(), CaseError> {
    if got == want {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    Err(fail(format!(
        "{what}: got {} entries, want {}; first difference at position {at}:\n   got: {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        got.get(at),
        want.get(at)
    )))
}
