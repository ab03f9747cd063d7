//! The store engine: opening and recovery, the writer, durability and compaction.
//! Everything here is blocking; `lib.rs` runs it off the async runtime's threads.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use storage_core::{Block, BlockHash, OpenMode, Result, StorageError};

use crate::format::{
    self, KIND_DELETE, KIND_HEAD, KIND_PUT, MAX_RECORD_BODY, Op, PutOp, REC_HEADER, SEG_HEADER,
};
use crate::index::{Index, Loc};
use crate::io::{Vfs, VfsFile};
use crate::table::{self, PageCache, Table};
use crate::{Durability, FsConfig};

mod compact;
mod read;
mod recover;
mod write;

pub use recover::Recovery;
pub(crate) use recover::{open, salvage_scan, spawn_periodic};

/// An open file of the store.
pub(crate) type FileRef = Arc<dyn VfsFile>;

/// The store directory and the file layer it lives on.
#[derive(Clone)]
pub(crate) struct Dir {
    pub path: PathBuf,
    pub vfs: Arc<dyn Vfs>,
}

impl Dir {
    fn seg(&self, id: u64) -> PathBuf {
        seg_path(&self.path, id)
    }
    fn idx(&self, id: u64) -> PathBuf {
        idx_path(&self.path, id)
    }
}

/// Lock file name.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// The list of the store's segments (see `format`).
pub(crate) const MANIFEST: &str = "MANIFEST";

/// Writes the manifest atomically (temp file, sync, rename, directory sync).
fn write_manifest(dir: &Dir, segments: &BTreeMap<u64, u64>) -> Result<()> {
    let path = dir.path.join(MANIFEST);
    let tmp = dir.path.join("MANIFEST.tmp");
    let entries: Vec<(u64, u64)> = segments.iter().map(|(id, len)| (*id, *len)).collect();
    let bytes = format::encode_manifest(&entries);
    let write = || -> std::io::Result<()> {
        let f = dir.vfs.create(&tmp, false)?;
        f.write_all_at(&bytes, 0)?;
        f.sync_data()?;
        dir.vfs.rename(&tmp, &path)
    };
    write().map_err(|e| io(format!("writing {}", path.display()), e))?;
    sync_dir(dir)
}

/// Opens a store file for reading, with its length; `None` if it is missing.
fn open_if_exists(dir: &Dir, path: &Path) -> Result<Option<(FileRef, u64)>> {
    let file = match dir.vfs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("opening {}", path.display()), e)),
    };
    let len = file
        .len()
        .map_err(|e| io(format!("reading metadata of {}", path.display()), e))?;
    Ok(Some((file, len)))
}

/// Reads the manifest: `None` when there is none; damage is `Corrupted`.
fn read_manifest(dir: &Dir) -> Result<Option<Vec<(u64, u64)>>> {
    let path = dir.path.join(MANIFEST);
    let Some((file, len)) = open_if_exists(dir, &path)? else {
        return Ok(None);
    };
    let bytes = read_exact(&*file, 0, len as usize, &|| path.display().to_string())?;
    format::parse_manifest(&bytes).map(Some).ok_or_else(|| {
        StorageError::corrupted(format!(
            "fs: {} is damaged, so which segments hold the store is unknown; \
             salvage what is intact with `repair`",
            path.display()
        ))
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below checks before it mutates, so a panic inside one
    // cannot leave half-applied state behind: a poisoned lock is safe to reuse.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io(context: String, e: std::io::Error) -> StorageError {
    StorageError::io(context, e)
}

pub(crate) fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

pub(crate) fn idx_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.idx"))
}

fn parse_id(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    (stem.len() == 16)
        .then(|| u64::from_str_radix(stem, 16).ok())
        .flatten()
}

fn sync_dir(dir: &Dir) -> Result<()> {
    dir.vfs
        .sync_dir(&dir.path)
        .map_err(|e| io(format!("syncing directory {}", dir.path.display()), e))
}

/// What a table of a segment holds: its puts, its deletions (hash, record
/// offset) and the head once they are applied.
pub(crate) struct Contents {
    pub puts: Vec<PutOp>,
    pub deletes: Vec<(BlockHash, u64)>,
    pub head: Option<BlockHash>,
}

/// Writes segment `id`'s table atomically (temp file, sync, rename) and opens it.
fn write_table(
    dir: &Dir,
    cache: &Arc<PageCache>,
    id: u64,
    covered: u64,
    c: &Contents,
) -> Result<Arc<Table>> {
    let path = dir.idx(id);
    let tmp = path.with_extension("idx.tmp");
    let bytes = table::encode_table(id, covered, &c.puts, &c.deletes, c.head);
    let write = || -> std::io::Result<FileRef> {
        let f = dir.vfs.create(&tmp, false)?;
        f.write_all_at(&bytes, 0)?;
        f.sync_data()?;
        dir.vfs.rename(&tmp, &path)?;
        Ok(f)
    };
    let file = write().map_err(|e| io(format!("writing index {}", path.display()), e))?;
    let header = table::parse_table_header(&bytes, id).ok_or_else(|| {
        StorageError::corrupted(format!("fs: index {} did not read back", path.display()))
    })?;
    Ok(Arc::new(Table::new(
        id,
        header,
        file,
        path,
        cache.clone(),
        Some(dir.vfs.clone()),
    )))
}

/// Opens segment `id`'s table, if it has a whole one of this layout; `None`
/// when it has none, or one that is damaged or of the first layout (the
/// segment is then read from its log).
fn open_table(
    dir: &Dir,
    cache: &Arc<PageCache>,
    id: u64,
    read_only: bool,
) -> Result<Option<Arc<Table>>> {
    let path = dir.idx(id);
    let Some((file, len)) = open_if_exists(dir, &path)? else {
        return Ok(None);
    };
    let mut first = vec![0u8; (len as usize).min(table::PAGE)];
    file.read_exact_at(&mut first, 0)
        .map_err(|e| io(format!("reading {}", path.display()), e))?;
    let Some(hlen) = table::header_len(&first) else {
        return Ok(None);
    };
    if hlen as u64 > len {
        return Ok(None);
    }
    if hlen > first.len() {
        first.resize(hlen, 0);
        file.read_exact_at(&mut first, 0)
            .map_err(|e| io(format!("reading {}", path.display()), e))?;
    }
    Ok(table::parse_table_header(&first, id)
        .filter(|h| h.file_len == len && h.covered >= SEG_HEADER)
        .map(|h| {
            let remover = (!read_only).then(|| dir.vfs.clone());
            Arc::new(Table::new(id, h, file, path, cache.clone(), remover))
        }))
}

/// Seals segment `id`: syncs its first `len` bytes, then writes its table
/// covering them.
fn seal_segment(
    dir: &Dir,
    cache: &Arc<PageCache>,
    id: u64,
    file: &FileRef,
    len: u64,
    c: &Contents,
) -> Result<Arc<Table>> {
    file.sync_data()
        .map_err(|e| io(format!("syncing {}", dir.seg(id).display()), e))?;
    write_table(dir, cache, id, len, c)
}

fn create_segment(dir: &Dir, id: u64) -> Result<FileRef> {
    let path = dir.seg(id);
    let create = || -> std::io::Result<FileRef> {
        let f = dir.vfs.create(&path, true)?;
        f.write_all_at(&format::segment_header(id), 0)?;
        f.sync_all()?;
        Ok(f)
    };
    let f = create().map_err(|e| io(format!("creating segment {}", path.display()), e))?;
    // The new file's directory entry must be durable before synced writes land in it.
    sync_dir(dir)?;
    Ok(f)
}

/// Reads `len` bytes at `off`; a short file is damage, not an I/O hiccup.
pub(crate) fn read_exact(
    file: &dyn VfsFile,
    off: u64,
    len: usize,
    what: &dyn Fn() -> String,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    match file.read_exact_at(&mut buf, off) {
        Ok(()) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StorageError::corrupted(
            format!("fs: {} ends before byte {}", what(), off + len as u64),
        )),
        Err(e) => Err(io(format!("reading {}", what()), e)),
    }
}

/// Index and open segment files, behind one lock.
#[derive(Default)]
pub(crate) struct State {
    pub index: Index,
    pub files: BTreeMap<u64, FileRef>,
}

/// The single writer: the active segment and the operations it holds.
pub(crate) struct Writer {
    pub seg: u64,
    pub file: FileRef,
    /// Bytes in the active segment (its end offset).
    pub len: u64,
    /// Deletions in the active segment that its table does not hold yet.
    pub deletes: Vec<(BlockHash, u64)>,
    buf: Vec<u8>,
    /// Set when a failed write could not be undone; the store refuses writes.
    broken: Option<String>,
    /// Every segment of the store (as in the manifest): id → the length it was
    /// sealed at, 0 for the active one.
    pub segments: BTreeMap<u64, u64>,
    /// Something was written since the last close (or open): close has work.
    dirty: bool,
}

#[derive(Debug, Default)]
struct DurableState {
    /// Everything up to this (segment, offset) is synced.
    synced: (u64, u64),
    /// A writer is syncing for the group right now.
    leader: bool,
    /// The durable length last written to a header slot of segment `mark.0`, and
    /// the slot the next write goes to.
    mark: (u64, u64, usize),
}

#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

/// An open store.
pub(crate) struct Inner {
    pub dir: Dir,
    pub cfg: FsConfig,
    /// Table pages read so far.
    pub cache: Arc<PageCache>,
    pub state: RwLock<State>,
    pub writer: Mutex<Writer>,
    durable: Mutex<DurableState>,
    durable_cv: Condvar,
    stop: Arc<Stop>,
    /// Held for the store's lifetime; dropping it releases the lock.
    _lock: Box<dyn Any + Send + Sync>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        *lock(&self.stop.stopped) = true;
        self.stop.cv.notify_all();
    }
}

pub(crate) fn read_state(s: &RwLock<State>) -> std::sync::RwLockReadGuard<'_, State> {
    s.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write_state(s: &RwLock<State>) -> std::sync::RwLockWriteGuard<'_, State> {
    s.write().unwrap_or_else(PoisonError::into_inner)
}

/// Names of the files in the store directory.
fn read_dir(dir: &Dir) -> Result<Vec<String>> {
    dir.vfs
        .list(&dir.path)
        .map_err(|e| io(format!("listing {}", dir.path.display()), e))
}

fn remove_file(dir: &Dir, path: &Path) -> Result<()> {
    match dir.vfs.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", path.display()), e)),
    }
}

/// Bytes and files in the store directory.
pub(crate) fn dir_usage(dir: &Dir) -> Result<(u64, u64, u64)> {
    let (mut size, mut files, mut seg_bytes) = (0u64, 0u64, 0u64);
    for name in read_dir(dir)? {
        let path = dir.path.join(&name);
        let len = match dir.vfs.open(&path, false).and_then(|f| f.len()) {
            Ok(len) => len,
            // Removed meanwhile (an orphan cleanup): not part of the store.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("reading metadata of {}", path.display()), e)),
        };
        size += len;
        files += 1;
        if parse_id(&name, ".seg").is_some() {
            seg_bytes += len;
        }
    }
    Ok((size, files, seg_bytes))
}
