//! Fault-injection helpers for fixtures.

use std::path::Path;

use storage_core::StorageError;

/// Flips one bit in the middle of every occurrence of `needle` in the file at
/// `path` (e.g. a block's payload inside a database file). Returns how many
/// occurrences were damaged; an absent needle is an error, so a fixture never
/// silently damages nothing.
pub fn flip_in_file(path: &Path, needle: &[u8]) -> Result<usize, StorageError> {
    if needle.is_empty() {
        return Err(StorageError::InvalidInput("nothing to search for".into()));
    }
    let mut bytes = std::fs::read(path)
        .map_err(|e| StorageError::io(format!("reading {}", path.display()), e))?;
    let hits: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    if hits.is_empty() {
        return Err(StorageError::InvalidInput(format!(
            "{} does not contain the bytes to damage",
            path.display()
        )));
    }
    for at in &hits {
        bytes[at + needle.len() / 2] ^= 0x01;
    }
    std::fs::write(path, bytes)
        .map_err(|e| StorageError::io(format!("writing {}", path.display()), e))?;
    Ok(hits.len())
}
