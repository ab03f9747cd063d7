//! The store engine: opening and recovery, the writer, durability and compaction.
//! Everything here is blocking; `lib.rs` runs it off the async runtime's threads.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use storage_core::{Block, BlockHash, Result, StorageError};

use crate::format::{
    self, KIND_DELETE, KIND_HEAD, KIND_PUT, MAX_RECORD_BODY, Op, PutOp, REC_HEADER, SEG_HEADER,
};
use crate::index::{Bulk, Index, Loc};
use crate::io::{Vfs, VfsFile};
use crate::{Durability, FsConfig};

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

/// Reads the manifest: `None` when there is none; damage is `Corrupted`.
fn read_manifest(dir: &Dir) -> Result<Option<Vec<(u64, u64)>>> {
    let path = dir.path.join(MANIFEST);
    let file = match dir.vfs.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("opening {}", path.display()), e)),
    };
    let len = file
        .len()
        .map_err(|e| io(format!("reading metadata of {}", path.display()), e))?;
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

/// Writes segment `id`'s index atomically (temp file, sync, rename).
fn write_index(dir: &Dir, id: u64, covered: u64, ops: &[Op]) -> Result<()> {
    let path = dir.idx(id);
    let tmp = path.with_extension("idx.tmp");
    let bytes = format::encode_index(id, covered, ops);
    let write = || -> std::io::Result<()> {
        let f = dir.vfs.create(&tmp, false)?;
        f.write_all_at(&bytes, 0)?;
        f.sync_data()?;
        dir.vfs.rename(&tmp, &path)
    };
    write().map_err(|e| io(format!("writing index {}", path.display()), e))
}

/// Seals segment `id`: syncs its first `len` bytes, then writes its index file
/// covering them.
fn seal_segment(dir: &Dir, id: u64, file: &FileRef, len: u64, ops: &[Op]) -> Result<()> {
    file.sync_data()
        .map_err(|e| io(format!("syncing {}", dir.seg(id).display()), e))?;
    write_index(dir, id, len, ops)
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
    /// Operations in the active segment, for its index file.
    pub ops: Vec<Op>,
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

impl Writer {
    fn usable(&self) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(StorageError::backend_msg(
                crate::NAME,
                format!("writing: the store refuses writes until reopened, because {why}"),
                storage_core::ErrorStatus::Permanent,
            )),
        }
    }

    /// Appends one record (already framed); returns where it starts.
    fn append(&mut self, inner: &Inner, bytes: &[u8]) -> Result<(u64, u64)> {
        if self.len > SEG_HEADER && self.len + bytes.len() as u64 > inner.cfg.segment_size {
            self.roll(inner)?;
        }
        let off = self.len;
        if let Err(e) = self.file.write_all_at(bytes, off) {
            // Leave no partial record behind, or the next one would land after it.
            if let Err(e2) = self.file.set_len(off) {
                self.broken = Some(format!(
                    "could not truncate segment {} after a failed write: {e2}",
                    self.seg
                ));
            }
            return Err(io(
                format!(
                    "appending {} bytes to {}",
                    bytes.len(),
                    inner.dir.seg(self.seg).display()
                ),
                e,
            ));
        }
        self.len += bytes.len() as u64;
        self.dirty = true;
        Ok((self.seg, off))
    }

    /// Seals the active segment (sync, index file), starts the next one and
    /// records both in the manifest.
    fn roll(&mut self, inner: &Inner) -> Result<()> {
        self.seal(inner)?;
        self.start(inner, self.seg + 1)?;
        write_manifest(&inner.dir, &self.segments)
    }

    /// Syncs the active segment and writes its index file; the manifest records
    /// it as sealed at its length once the caller writes it.
    fn seal(&mut self, inner: &Inner) -> Result<()> {
        seal_segment(&inner.dir, self.seg, &self.file, self.len, &self.ops)?;
        inner.mark_synced((self.seg, self.len));
        self.segments.insert(self.seg, self.len);
        Ok(())
    }

    /// Starts segment `id` as the active one (the caller writes the manifest).
    fn start(&mut self, inner: &Inner, id: u64) -> Result<()> {
        let file = create_segment(&inner.dir, id)?;
        write_state(&inner.state).files.insert(id, file.clone());
        self.seg = id;
        self.file = file;
        self.len = SEG_HEADER;
        self.ops.clear();
        self.segments.insert(id, 0);
        Ok(())
    }
}

pub(crate) fn read_state(s: &RwLock<State>) -> std::sync::RwLockReadGuard<'_, State> {
    s.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write_state(s: &RwLock<State>) -> std::sync::RwLockWriteGuard<'_, State> {
    s.write().unwrap_or_else(PoisonError::into_inner)
}

fn put_op(block: &Block, off: u64, entry: &format::EncodedEntry) -> PutOp {
    PutOp::of(block, off, entry.bytes.len() as u32, entry.raw_len)
}

/// The header slot write that records `durable` (a synced position), if it says
/// more than the last one: (segment, length, slot).
fn next_mark(mark: (u64, u64, usize), durable: (u64, u64)) -> Option<(u64, u64, usize)> {
    if mark.0 == durable.0 {
        (durable.1 > mark.1).then_some((durable.0, durable.1, mark.2))
    } else {
        (durable.1 > SEG_HEADER).then_some((durable.0, durable.1, 0))
    }
}

fn write_mark(file: &FileRef, (seg, len, slot): (u64, u64, usize)) -> std::io::Result<()> {
    let (bytes, at) = format::durable_slot(seg, slot, len);
    file.write_all_at(&bytes, at)
}

impl Inner {
    fn mark_synced(&self, pos: (u64, u64)) {
        let mut d = lock(&self.durable);
        if pos > d.synced {
            d.synced = pos;
        }
    }

    /// Waits until everything up to `pos` is synced. Group commit: one writer
    /// syncs for everyone who appended before it started; the others wait.
    fn sync_to(&self, pos: (u64, u64)) -> Result<()> {
        let mut d = lock(&self.durable);
        loop {
            if d.synced >= pos {
                return Ok(());
            }
            if d.leader {
                d = self
                    .durable_cv
                    .wait(d)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            d.leader = true;
            let (prior, mark) = (d.synced, d.mark);
            drop(d);
            let (file, target) = {
                let w = lock(&self.writer);
                (w.file.clone(), (w.seg, w.len))
            };
            // The header learns what the previous sync made durable, in the same
            // sync as the new data: it never claims more than is on disk, even if
            // the power fails halfway through this sync.
            let marked = (prior.0 == target.0)
                .then(|| next_mark(mark, prior))
                .flatten();
            let synced = match marked {
                Some(m) => write_mark(&file, m).and_then(|()| file.sync_data()),
                None => file.sync_data(),
            };
            d = lock(&self.durable);
            d.leader = false;
            if synced.is_ok() && target > d.synced {
                d.synced = target;
            }
            if let Some(m) = marked {
                // The slot was written (or half-written): the next write takes the other.
                d.mark = (m.0, m.1, (m.2 + 1) % 2);
            }
            self.durable_cv.notify_all();
            synced.map_err(|e| io(format!("syncing {}", self.dir.seg(target.0).display()), e))?;
        }
    }

    /// Makes the active segment durable to its end and records that in its header
    /// (two syncs: data first, then the header slot). Used by close, under the
    /// writer lock. It does not wait for a group-commit leader (which may itself
    /// be waiting for the writer lock): if both write a slot, each writes a
    /// length already synced, and a torn slot fails its checksum while the other
    /// slot still holds an older true one.
    fn sync_and_mark(&self, w: &Writer) -> Result<()> {
        let path = || self.dir.seg(w.seg).display().to_string();
        let end = (w.seg, w.len);
        w.file
            .sync_data()
            .map_err(|e| io(format!("syncing {}", path()), e))?;
        let marked = {
            let mut d = lock(&self.durable);
            if end > d.synced {
                d.synced = end;
            }
            let m = next_mark(d.mark, end);
            if let Some(m) = m {
                d.mark = (m.0, m.1, (m.2 + 1) % 2);
            }
            self.durable_cv.notify_all();
            m
        };
        if let Some(m) = marked {
            write_mark(&w.file, m)
                .and_then(|()| w.file.sync_data())
                .map_err(|e| io(format!("recording the durable length of {}", path()), e))?;
        }
        Ok(())
    }

    fn after_write(&self, end: (u64, u64)) -> Result<()> {
        match self.cfg.durability {
            Durability::Sync => self.sync_to(end),
            Durability::Buffered | Durability::Periodic(_) => Ok(()),
        }
    }

    /// Stores blocks as one record: all or nothing.
    /// The payload limit is checked by the layer before this runs.
    pub(crate) fn store(&self, blocks: &[Block]) -> Result<()> {
        // Encoding and compression are the CPU-heavy part: outside the lock.
        let encoded = blocks
            .iter()
            .map(|b| format::encode_entry(b, self.cfg.compression))
            .collect::<Result<Vec<_>>>()?;
        let mut w = lock(&self.writer);
        w.usable()?;
        let fresh = {
            let st = read_state(&self.state);
            storage_core::raw::admit(
                blocks,
                &mut storage_core::raw::ChainViewFn(
                    |i| Ok(st.index.at(i).map(|e| e.hash)),
                    |i| {
                        let Some(e) = st.index.at(i) else {
                            return Ok(None);
                        };
                        // Only when filling a gap before a stored block: read it.
                        let file = self.file_of(&st, e.loc.seg)?;
                        let block = format::decode_entry(&self.read_entry(&file, e.loc)?, &e.hash)?;
                        Ok(Some(block.previous_hash().copied()))
                    },
                ),
            )?
        };
        if fresh.is_empty() {
            return Ok(());
        }
        let body_len: usize = 4 + fresh.iter().map(|i| encoded[*i].bytes.len()).sum::<usize>();
        if body_len > MAX_RECORD_BODY {
            return Err(StorageError::InvalidInput(format!(
                "the batch encodes to {body_len} bytes, more than the {MAX_RECORD_BODY}-byte \
                 limit of one atomic write; split it"
            )));
        }
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        let start = format::begin_record(&mut buf);
        buf.extend_from_slice(&(fresh.len() as u32).to_le_bytes());
        for i in &fresh {
            buf.extend_from_slice(&encoded[*i].bytes);
        }
        format::finish_record(&mut buf, start, KIND_PUT);
        let appended = w.append(self, &buf);
        w.buf = buf;
        let (seg, rec) = appended?;
        let mut at = rec + REC_HEADER as u64 + 4;
        let mut ops = Vec::with_capacity(fresh.len());
        for i in fresh {
            ops.push(Op::Put(put_op(&blocks[i], at, &encoded[i])));
            at += encoded[i].bytes.len() as u64;
        }
        {
            let mut st = write_state(&self.state);
            for op in &ops {
                st.index.apply(seg, op)?;
            }
        }
        w.ops.extend(ops);
        let end = (w.seg, w.len);
        drop(w);
        self.after_write(end)
    }

    /// Logs a delete or head change (after `check` passes under the writer lock).
    fn log_op(&self, op: Op, check: impl FnOnce(&Index) -> Result<bool>) -> Result<bool> {
        let mut w = lock(&self.writer);
        w.usable()?;
        if !check(&read_state(&self.state).index)? {
            return Ok(false);
        }
        let mut buf = Vec::with_capacity(REC_HEADER + 33);
        let start = format::begin_record(&mut buf);
        let kind = match &op {
            Op::Delete(h) => {
                buf.extend_from_slice(h.as_bytes());
                KIND_DELETE
            }
            Op::Head(h) => {
                buf.extend_from_slice(&format::head_body(h.as_ref()));
                KIND_HEAD
            }
            Op::Put(_) => unreachable!("puts go through store"),
        };
        format::finish_record(&mut buf, start, kind);
        let (seg, _) = w.append(self, &buf)?;
        write_state(&self.state).index.apply(seg, &op)?;
        w.ops.push(op);
        let end = (w.seg, w.len);
        drop(w);
        self.after_write(end)?;
        Ok(true)
    }

    pub(crate) fn delete(&self, hash: &BlockHash) -> Result<bool> {
        self.log_op(Op::Delete(*hash), |ix| Ok(ix.contains(hash)))
    }

    pub(crate) fn set_head(&self, hash: &BlockHash) -> Result<()> {
        self.log_op(Op::Head(Some(*hash)), |ix| {
            if !ix.contains(hash) {
                return Err(StorageError::BlockNotFound { hash: *hash });
            }
            Ok(ix.head != Some(*hash))
        })
        .map(|_| ())
    }

    /// The bytes of one entry.
    pub(crate) fn read_entry(&self, file: &FileRef, loc: Loc) -> Result<Vec<u8>> {
        read_exact(&**file, u64::from(loc.off), loc.len as usize, &|| {
            self.dir.seg(loc.seg).display().to_string()
        })
    }

    pub(crate) fn retrieve(&self, hash: &BlockHash) -> Result<Option<Block>> {
        let (file, loc) = {
            let st = read_state(&self.state);
            let Some(e) = st.index.get(hash) else {
                return Ok(None);
            };
            (self.file_of(&st, e.loc.seg)?, e.loc)
        };
        format::decode_entry(&self.read_entry(&file, loc)?, hash).map(Some)
    }

    fn file_of(&self, st: &State, seg: u64) -> Result<FileRef> {
        st.files.get(&seg).cloned().ok_or_else(|| {
            StorageError::corrupted(format!("fs: segment {seg} is indexed but not open"))
        })
    }

    /// Blocks with `start <= index <= end`. Neighbouring entries are read with one
    /// read each run (blocks of a chain usually sit next to each other).
    pub(crate) fn range(&self, start: u64, end: u64) -> Result<Vec<Block>> {
        let wanted: Vec<(BlockHash, Loc, FileRef)> = {
            let st = read_state(&self.state);
            st.index
                .by_index
                .range(start..=end)
                .map(|(_, e)| Ok((e.hash, e.loc, self.file_of(&st, e.loc.seg)?)))
                .collect::<Result<_>>()?
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut i = 0;
        while i < wanted.len() {
            // Extend the run while the next entry follows closely in the same file.
            let off = |k: usize| u64::from(wanted[k].1.off);
            let stop = |k: usize| off(k) + u64::from(wanted[k].1.len);
            let (seg, first) = (wanted[i].1.seg, off(i));
            let mut j = i + 1;
            let mut run_end = stop(i);
            while j < wanted.len()
                && wanted[j].1.seg == seg
                && off(j) >= run_end
                && off(j) - run_end <= 4096
                && stop(j) - first <= 8 << 20
            {
                run_end = stop(j);
                j += 1;
            }
            let bytes = read_exact(&*wanted[i].2, first, (run_end - first) as usize, &|| {
                self.dir.seg(seg).display().to_string()
            })?;
            for (k, (hash, loc, _)) in wanted[i..j].iter().enumerate() {
                let at = (off(i + k) - first) as usize;
                out.push(format::decode_entry(
                    &bytes[at..at + loc.len as usize],
                    hash,
                )?);
            }
            i = j;
        }
        Ok(out)
    }

    /// Syncs, writes the active segment's index and stops the sync thread.
    pub(crate) fn close(&self) -> Result<()> {
        *lock(&self.stop.stopped) = true;
        self.stop.cv.notify_all();
        let mut w = lock(&self.writer);
        // A store that was only read writes nothing (so reading works on a full disk).
        if w.broken.is_some() || !w.dirty {
            return Ok(());
        }
        self.sync_and_mark(&w)?;
        write_index(&self.dir, w.seg, w.len, &w.ops)?;
        w.dirty = false;
        Ok(())
    }

    /// Rewrites a prefix of the log without deleted entries (`compact`: up to the
    /// last segment holding any; `vacuum`: every segment, re-encoding entries with
    /// the configured compression), then removes orphaned files.
    ///
    /// The copies go to new segments after the active one, followed by the current
    /// head; only once they are synced are the old segments deleted, oldest first.
    /// Replaying what is left after a crash at any point gives the same store: a
    /// copy replayed after its original simply supersedes it, and a delete is only
    /// dropped together with every older copy of its block.
    pub(crate) fn rewrite(&self, all: bool) -> Result<()> {
        let mut w = lock(&self.writer);
        w.usable()?;
        let prefix_end = {
            let st = read_state(&self.state);
            if all {
                Some(w.seg)
            } else {
                st.index
                    .segs
                    .iter()
                    .filter(|(_, u)| u.dead_entries > 0)
                    .map(|(id, _)| *id)
                    .max()
            }
        };
        if let Some(end) = prefix_end {
            self.rewrite_prefix(&mut w, end, all)?;
        }
        // Under the writer lock: a roll creates a segment before listing it.
        self.remove_orphans()
    }

    fn rewrite_prefix(&self, w: &mut Writer, end: u64, recode: bool) -> Result<()> {
        if end >= w.seg {
            w.roll(self)?;
        }
        // What to copy, with each block's metadata, from one snapshot (writers are
        // held off by the writer lock, so it stays true).
        let (live, head) = {
            let st = read_state(&self.state);
            let live: Vec<(Loc, FileRef, PutOp)> = st
                .index
                .by_index
                .iter()
                .filter(|(_, e)| e.loc.seg <= end)
                .map(|(i, e)| {
                    let op = PutOp {
                        off: 0, // set where the copy lands
                        len: e.loc.len,
                        raw_len: e.raw_len,
                        index: *i,
                        ts: e.ts,
                        size: e.size,
                        hash: e.hash,
                        key: st.index.key(e.key),
                        ty: st.index.ty(e.ty).clone(),
                    };
                    Ok((e.loc, self.file_of(&st, e.loc.seg)?, op))
                })
                .collect::<Result<_>>()?;
            (live, st.index.head)
        };
        let old: Vec<u64> = read_state(&self.state)
            .files
            .keys()
            .copied()
            .filter(|id| *id <= end)
            .collect();

        // Write the copies; damage is never copied forward.
        let mut out = Output::new(self, w.seg + 1)?;
        let mut moved = Vec::with_capacity(live.len());
        for (loc, file, mut op) in live {
            let mut entry = self.read_entry(&file, loc)?;
            if recode {
                entry = format::recode_entry(&entry, &op.hash, self.cfg.compression)?;
            }
            let (_, _, raw_len) = format::split_entry(&entry, &op.hash)?;
            op.len = entry.len() as u32;
            op.raw_len = raw_len;
            let index = op.index;
            moved.push((index, out.put(self, &entry, op)?));
        }
        out.head(self, head)?;
        let written = out.finish(self)?;

        // New writes go to a segment after the copies.
        let next = written.last().map_or(w.seg, |(id, _, _)| *id) + 1;
        let before = w.seg;
        let unused = w.len == SEG_HEADER && w.ops.is_empty();
        if unused {
            // Nothing was written to it (e.g. it was started by the roll above).
            w.segments.remove(&before);
        } else {
            w.seal(self)?;
        }
        w.start(self, next)?;
        for id in &old {
            w.segments.remove(id);
        }
        for (id, _, len) in &written {
            w.segments.insert(*id, *len);
        }
        // The commit point: from here on the copies are the store, and the old
        // segments (no longer listed) are ignored until they are removed.
        write_manifest(&self.dir, &w.segments)?;
        {
            let mut st = write_state(&self.state);
            for (id, file, _) in written {
                st.files.insert(id, file);
            }
            for (index, loc) in moved {
                st.index.relocate(index, loc);
            }
            for id in &old {
                st.files.remove(id);
                st.index.segs.remove(id);
            }
            if unused {
                st.files.remove(&before);
            }
        }
        if unused {
            remove_file(&self.dir, &self.dir.seg(before))?;
        }
        for id in old {
            remove_file(&self.dir, &self.dir.seg(id))?;
            remove_file(&self.dir, &self.dir.idx(id))?;
        }
        sync_dir(&self.dir)
    }

    /// Removes files the store no longer needs: unfinished index files, saved torn
    /// tails, and index files of segments that are gone. Unknown files are left.
    pub(crate) fn remove_orphans(&self) -> Result<()> {
        let live: Vec<u64> = read_state(&self.state).files.keys().copied().collect();
        for name in read_dir(&self.dir)? {
            // Segments the manifest no longer lists were replaced by a compaction
            // that committed but did not finish removing them.
            let orphan = name.ends_with(".tmp")
                || name.contains(".seg.torn-")
                || parse_id(&name, ".idx").is_some_and(|id| !live.contains(&id))
                || parse_id(&name, ".seg").is_some_and(|id| !live.contains(&id));
            if orphan {
                remove_file(&self.dir, &self.dir.path.join(&name))?;
            }
        }
        Ok(())
    }
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

/// Segments written by a compaction.
struct Output {
    id: u64,
    file: FileRef,
    len: u64,
    ops: Vec<Op>,
    buf: Vec<u8>,
    entries: u32,
    /// Sealed segments: id, file, length.
    done: Vec<(u64, FileRef, u64)>,
}

/// Flush a compaction record at this size.
const OUTPUT_RECORD: usize = 1 << 20;

impl Output {
    fn new(inner: &Inner, id: u64) -> Result<Self> {
        Ok(Self {
            id,
            file: create_segment(&inner.dir, id)?,
            len: SEG_HEADER,
            ops: Vec::new(),
            buf: Vec::new(),
            entries: 0,
            done: Vec::new(),
        })
    }

    fn put(&mut self, inner: &Inner, entry: &[u8], mut op: PutOp) -> Result<Loc> {
        if self.buf.len() + entry.len() > OUTPUT_RECORD && self.entries > 0 {
            self.flush(inner)?;
        }
        if self.entries == 0
            && self.len > SEG_HEADER
            && self.len + (REC_HEADER + 4 + entry.len()) as u64 > inner.cfg.segment_size
        {
            self.next_segment(inner)?;
        }
        if self.buf.is_empty() {
            format::begin_record(&mut self.buf);
            self.buf.extend_from_slice(&[0; 4]);
        }
        op.off = self.len + self.buf.len() as u64;
        self.buf.extend_from_slice(entry);
        self.entries += 1;
        let loc = Loc::at(self.id, op.off, op.len);
        self.ops.push(Op::Put(op));
        Ok(loc)
    }

    fn flush(&mut self, inner: &Inner) -> Result<()> {
        if self.entries == 0 {
            return Ok(());
        }
        self.buf[REC_HEADER..REC_HEADER + 4].copy_from_slice(&self.entries.to_le_bytes());
        format::finish_record(&mut self.buf, 0, KIND_PUT);
        self.write(inner)?;
        self.entries = 0;
        Ok(())
    }

    fn write(&mut self, inner: &Inner) -> Result<()> {
        self.file
            .write_all_at(&self.buf, self.len)
            .map_err(|e| io(format!("writing {}", inner.dir.seg(self.id).display()), e))?;
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn next_segment(&mut self, inner: &Inner) -> Result<()> {
        self.seal(inner)?;
        self.id += 1;
        self.file = create_segment(&inner.dir, self.id)?;
        self.len = SEG_HEADER;
        Ok(())
    }

    fn seal(&mut self, inner: &Inner) -> Result<()> {
        seal_segment(&inner.dir, self.id, &self.file, self.len, &self.ops)?;
        self.ops.clear();
        self.done.push((self.id, self.file.clone(), self.len));
        Ok(())
    }

    fn head(&mut self, inner: &Inner, head: Option<BlockHash>) -> Result<()> {
        self.flush(inner)?;
        let start = format::begin_record(&mut self.buf);
        self.buf
            .extend_from_slice(&format::head_body(head.as_ref()));
        format::finish_record(&mut self.buf, start, KIND_HEAD);
        self.write(inner)?;
        self.ops.push(Op::Head(head));
        Ok(())
    }

    fn finish(mut self, inner: &Inner) -> Result<Vec<(u64, FileRef, u64)>> {
        self.flush(inner)?;
        self.seal(inner)?;
        sync_dir(&inner.dir)?;
        Ok(self.done)
    }
}

// ---------------------------------------------------------------------------
// Opening and recovery
// ---------------------------------------------------------------------------

/// What opening found, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments loaded.
    pub segments: usize,
    /// Log bytes decoded because no index file covered them.
    pub scanned_bytes: u64,
    /// Bytes cut off a torn tail (an interrupted append), saved beside the segment.
    pub truncated_bytes: u64,
}

fn acquire_lock(dir: &Dir) -> Result<Box<dyn Any + Send + Sync>> {
    let path = dir.path.join(LOCK_FILE);
    match dir.vfs.lock(&dir.path) {
        Ok(Ok(guard)) => Ok(guard),
        // Not temporary for retry loops: the holder keeps it until it closes.
        Ok(Err(holder)) => Err(StorageError::backend_msg(
            crate::NAME,
            format!(
                "opening {}: the store is already open (lock held by {holder}); one \
                 process and one handle own a store directory at a time",
                dir.path.display(),
            ),
            storage_core::ErrorStatus::Permanent,
        )),
        Err(e) => Err(io(format!("locking {}", path.display()), e)),
    }
}

/// Opens (creating if needed) the store in `cfg.path` on `vfs`.
pub(crate) fn open(cfg: FsConfig, vfs: Arc<dyn Vfs>) -> Result<(Arc<Inner>, Recovery)> {
    let dir = Dir {
        path: cfg.path.clone(),
        vfs,
    };
    dir.vfs
        .create_dir_all(&dir.path)
        .map_err(|e| io(format!("creating {}", dir.path.display()), e))?;
    let lock_file = acquire_lock(&dir)?;
    let mut ids = Vec::new();
    for name in read_dir(&dir)? {
        if let Some(id) = parse_id(&name, ".seg") {
            ids.push(id);
        } else if name.ends_with(".idx.tmp") || name == "MANIFEST.tmp" {
            // A write that never finished.
            remove_file(&dir, &dir.path.join(&name))?;
        }
    }
    ids.sort_unstable();
    let listed = match read_manifest(&dir)? {
        Some(listed) => listed,
        None => {
            let fresh = start_fresh(&dir, &ids)?;
            ids = fresh.iter().map(|(id, _)| *id).collect();
            fresh
        }
    };
    for (id, _) in &listed {
        if !ids.contains(id) {
            return Err(lost(
                &dir,
                *id,
                "is missing",
                (SEG_HEADER, u64::MAX),
                "the manifest lists it",
            ));
        }
    }
    let mut rec = Recovery {
        segments: listed.len(),
        ..Recovery::default()
    };
    let loaded = match load_all(&dir, &listed, true, &mut rec)? {
        Some(l) => l,
        // The log has deletions or superseded copies: replay it. Recovery work
        // (cutting a torn tail) was done by the first pass.
        None => load_all(&dir, &listed, false, &mut Recovery::default())?
            .expect("a replay always completes"),
    };
    let (state, active) = (loaded.state, loaded.active);
    // Segments after the last listed one were started by a roll or written by a
    // compaction that stopped before its manifest commit.
    let last_listed = listed.last().map_or(0, |l| l.0);
    for &id in ids.iter().filter(|id| **id > last_listed) {
        discard_uncommitted(&dir, id, &state.index)?;
    }
    let Active {
        id: seg,
        file,
        len,
        ops,
        mark,
        dirty,
    } = active;
    let inner = Arc::new(Inner {
        dir: dir.clone(),
        cfg: cfg.clone(),
        state: RwLock::new(state),
        writer: Mutex::new(Writer {
            seg,
            file,
            len,
            ops,
            buf: Vec::new(),
            broken: None,
            segments: listed.into_iter().collect(),
            dirty,
        }),
        durable: Mutex::new(DurableState {
            synced: (seg, len),
            leader: false,
            mark,
        }),
        durable_cv: Condvar::new(),
        stop: Arc::new(Stop::default()),
        _lock: lock_file,
    });
    {
        let mut w = lock(&inner.writer);
        if w.len >= cfg.segment_size {
            w.roll(&inner)?;
        }
    }
    if let Durability::Periodic(every) = cfg.durability {
        spawn_periodic(Arc::downgrade(&inner), inner.stop.clone(), every)?;
    }
    Ok((inner, rec))
}

/// Opens a store file (read-only unless `write`) and reads its length.
fn open_with_len(dir: &Dir, path: &Path, write: bool) -> Result<(FileRef, u64)> {
    let file = dir
        .vfs
        .open(path, write)
        .map_err(|e| io(format!("opening {}", path.display()), e))?;
    let len = file
        .len()
        .map_err(|e| io(format!("reading metadata of {}", path.display()), e))?;
    Ok((file, len))
}

/// A directory without a manifest: a new store (segments that hold no record
/// are left from a creation that did not finish), or damage.
fn start_fresh(dir: &Dir, ids: &[u64]) -> Result<Vec<(u64, u64)>> {
    let mut holding = 0;
    for &id in ids {
        let path = dir.seg(id);
        let (file, len) = open_with_len(dir, &path, false)?;
        let head = read_exact(&*file, 0, len.min(16) as usize, &|| {
            path.display().to_string()
        })?;
        if format::parse_segment_header(&head, id) == format::SegmentHeader::Version1 {
            // Not readable as a store of this format: typed like any other file
            // this version cannot read.
            return Err(StorageError::corrupted(format!(
                "fs: {} was written by the first version of the segment format, which \
                 this version does not open; export it with the version that wrote it and \
                 import the export",
                dir.path.display()
            )));
        }
        if len > SEG_HEADER {
            holding += 1;
        }
    }
    if holding > 0 {
        return Err(StorageError::corrupted(format!(
            "fs: {} has no MANIFEST although {holding} segment files hold records, so \
             which of them hold the store is unknown; salvage what is intact with `repair`",
            dir.path.display()
        )));
    }
    for &id in ids {
        remove_file(dir, &dir.seg(id))?;
        remove_file(dir, &dir.idx(id))?;
    }
    create_segment(dir, 1)?;
    let listed = BTreeMap::from([(1, 0)]);
    write_manifest(dir, &listed)?;
    Ok(listed.into_iter().collect())
}

/// Removes segment `id`, which the manifest does not list although it comes
/// after every listed one: it was started by a roll, or written by a compaction
/// that did not commit. Either way every block in it is also in the listed
/// segments; if not, the manifest is not the store's latest, and that is damage.
fn discard_uncommitted(dir: &Dir, id: u64, index: &Index) -> Result<()> {
    let path = dir.seg(id);
    let (file, len) = open_with_len(dir, &path, false)?;
    if len > SEG_HEADER {
        let bytes = read_exact(&*file, 0, len as usize, &|| path.display().to_string())?;
        let (_, ops) = scan(&bytes[SEG_HEADER as usize..], SEG_HEADER, id)?;
        let unknown = ops.iter().find_map(|op| match op {
            Op::Put(p) if !index.contains(&p.hash) => Some(p.index),
            _ => None,
        });
        if let Some(index) = unknown {
            return Err(StorageError::corrupted(format!(
                "fs: {} is not in the MANIFEST but holds block #{index}, which no listed \
                 segment holds: the MANIFEST is not the store's latest; salvage what is \
                 intact with `repair`",
                path.display()
            )));
        }
    }
    drop(file);
    remove_file(dir, &path)?;
    remove_file(dir, &dir.idx(id))
}

/// The error for bytes `range` of segment `id` that the store made durable but
/// can no longer read. Names the blocks its index file placed there, if it has one.
fn lost(dir: &Dir, id: u64, what: &str, range: (u64, u64), why: &str) -> StorageError {
    let (from, to) = range;
    let blocks = indexed_blocks(dir, id, from, to);
    let bytes = if to == u64::MAX {
        String::new()
    } else {
        format!(" (bytes {from}..{to})")
    };
    StorageError::corrupted(format!(
        "fs: segment {} {what}{bytes} although {why}; {blocks}; salvage what is intact \
         with `repair`",
        dir.seg(id).display()
    ))
}

/// Which blocks segment `id`'s index file places at offsets `from..to`.
fn indexed_blocks(dir: &Dir, id: u64, from: u64, to: u64) -> String {
    let parsed = dir.vfs.open(&dir.idx(id), false).ok().and_then(|f| {
        let mut buf = vec![0u8; f.len().ok()? as usize];
        f.read_exact_at(&mut buf, 0).ok()?;
        let h = format::parse_index_header(&buf, id)?;
        let indices: Vec<u64> = format::index_ops(&buf, &h)
            .map_while(|o| o)
            .filter_map(|o| match h.op(&o) {
                Op::Put(p) if p.off >= from && p.off < to => Some(p.index),
                _ => None,
            })
            .collect();
        Some(indices)
    });
    match parsed {
        Some(v) if v.is_empty() => "its index file places no block there".into(),
        Some(v) => format!("blocks lost: {}", index_ranges(&v)),
        None => "which blocks were there is unknown (no index file covers them)".into(),
    }
}

/// `[1, 2, 3, 7]` as `#1..=#3, #7`.
pub(crate) fn index_ranges(indices: &[u64]) -> String {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for i in sorted {
        match ranges.last_mut() {
            Some(last) if last.1 + 1 == i => last.1 = i,
            _ => ranges.push((i, i)),
        }
    }
    storage_core::salvage::format_ranges(&ranges).join(", ")
}

fn spawn_periodic(weak: Weak<Inner>, stop: Arc<Stop>, every: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("olocus-fs-sync".into())
        .spawn(move || {
            let mut stopped = lock(&stop.stopped);
            loop {
                let (guard, _) = stop
                    .cv
                    .wait_timeout(stopped, every)
                    .unwrap_or_else(PoisonError::into_inner);
                stopped = guard;
                if *stopped {
                    return;
                }
                drop(stopped);
                // Hold the store only while syncing, so dropping it is never delayed.
                if let Some(inner) = weak.upgrade() {
                    let pos = {
                        let w = lock(&inner.writer);
                        (w.seg, w.len)
                    };
                    if let Err(e) = inner.sync_to(pos) {
                        tracing::warn!(error = %e, "periodic sync failed");
                    }
                } else {
                    return;
                }
                stopped = lock(&stop.stopped);
            }
        })
        .map(|_| ())
        .map_err(|e| io("starting the periodic sync thread".into(), e))
}

/// The active (last) segment as loading left it.
struct Active {
    id: u64,
    file: FileRef,
    len: u64,
    /// Its operations, for its next index file.
    ops: Vec<Op>,
    /// The durable mark: (segment, length, the slot the next write goes to).
    mark: (u64, u64, usize),
    /// Its index file or its durable mark does not cover it whole.
    dirty: bool,
}

/// What loading the segments produced.
struct Loaded {
    state: State,
    active: Active,
}

/// Loads the listed segments `(id, sealed length or 0 for the active one)`, in
/// order, into an index: `bulk` builds it with [`Bulk`] and returns `None` when
/// the log needs a replay; otherwise every operation is replayed.
fn load_all(
    dir: &Dir,
    listed: &[(u64, u64)],
    bulk: bool,
    rec: &mut Recovery,
) -> Result<Option<Loaded>> {
    let idx_file = |id: u64| dir.vfs.open(&dir.idx(id), false);
    // Index files hold ~80 bytes per block: size the builder from them.
    let expected: u64 = listed
        .iter()
        .filter_map(|(id, _)| idx_file(*id).and_then(|f| f.len()).ok())
        .map(|len| len / 80)
        .sum();
    let mut builder = bulk.then(|| Bulk::new(expected as usize + 1024));
    let mut index = Index::default();
    let mut files = BTreeMap::new();
    let mut active = None;
    let mut buf = Vec::new(); // one buffer for every index file
    for (n, &(id, sealed)) in listed.iter().enumerate() {
        let last = n + 1 == listed.len();
        let (file, len, mark, mark_slot) = open_segment(dir, id, last)?;
        buf.clear();
        let header = idx_file(id)
            .and_then(|f| {
                buf.resize(f.len()? as usize, 0);
                f.read_exact_at(&mut buf, 0)
            })
            .ok()
            .and_then(|_| format::parse_index_header(&buf, id))
            .filter(|h| h.covered >= SEG_HEADER);
        let covered = header.as_ref().map_or(SEG_HEADER, |h| h.covered);
        // What the store knows it made durable: the sealed length, or the mark in
        // the header; an index file is written only over synced bytes, too.
        let durable = if sealed > 0 { sealed } else { mark }.max(covered);
        if len < durable {
            let why = if sealed > 0 {
                format!("it was sealed at {sealed} bytes")
            } else if covered >= mark {
                format!("its index file covers {covered} bytes")
            } else {
                format!("{mark} bytes of it were synced")
            };
            // Records are all or nothing: what is lost starts at the last whole one.
            let whole = read_exact(&*file, 0, len as usize, &|| {
                dir.seg(id).display().to_string()
            })
            .ok()
            .and_then(|b| scan(&b[SEG_HEADER as usize..], SEG_HEADER, id).ok())
            .map_or(SEG_HEADER, |(good, _)| SEG_HEADER + good as u64);
            return Err(lost(
                dir,
                id,
                &format!("is cut short at {len} bytes"),
                (whole.min(len), durable),
                &why,
            ));
        }
        // A sealed segment ends where it was sealed.
        let end = if sealed > 0 { sealed } else { len };
        let (len, tail) = recover_tail(dir, id, &*file, covered, end, durable, last, rec)?;
        match &mut builder {
            Some(b) => {
                if let Some(h) = &header
                    && !b.add_indexed(id, h, format::index_ops(&buf, h))
                {
                    return Ok(None);
                }
                if !b.add_tail(id, &tail) {
                    return Ok(None);
                }
            }
            None => {
                if let Some(h) = &header {
                    for raw in format::index_ops(&buf, h) {
                        let raw = raw.ok_or_else(|| {
                            StorageError::corrupted(format!(
                                "fs: index file {} is malformed although its checksum holds",
                                dir.idx(id).display()
                            ))
                        })?;
                        index.apply(id, &h.op(&raw))?;
                    }
                }
                for op in &tail {
                    index.apply(id, op)?;
                }
            }
        }
        let rescanned = covered < len || !tail.is_empty();
        if last || rescanned {
            let mut ops: Vec<Op> = match &header {
                Some(h) => format::index_ops(&buf, h)
                    .map_while(|o| o)
                    .map(|o| h.op(&o))
                    .collect(),
                None => Vec::new(),
            };
            ops.extend(tail);
            if !last {
                // Sealed, but its index file never got written: write it now.
                write_index(dir, id, len, &ops)?;
            } else {
                let next_slot = mark_slot.map_or(0, |k| (k + 1) % 2);
                active = Some(Active {
                    id,
                    file: file.clone(),
                    len,
                    ops,
                    mark: (id, mark, next_slot),
                    dirty: covered < len || mark < len,
                });
            }
        }
        files.insert(id, file);
    }
    let index = match builder {
        Some(b) => match b.finish() {
            Some(ix) => ix,
            None => return Ok(None),
        },
        None => index,
    };
    Ok(Some(Loaded {
        state: State { index, files },
        active: active.expect("the manifest lists an active segment"),
    }))
}

/// Opens a segment file (writable only if it is the active one) and checks its
/// header; returns it, its length, its durable mark and the header slot holding
/// that mark.
fn open_segment(dir: &Dir, id: u64, writable: bool) -> Result<(FileRef, u64, u64, Option<usize>)> {
    let path = dir.seg(id);
    let (file, len) = open_with_len(dir, &path, writable)?;
    if len < SEG_HEADER {
        // The manifest lists only segments whose header was synced.
        return Err(lost(
            dir,
            id,
            &format!("is cut short at {len} bytes, inside its header"),
            (len, u64::MAX),
            "its header was synced before the manifest listed it",
        ));
    }
    let header = read_exact(&*file, 0, SEG_HEADER as usize, &|| {
        path.display().to_string()
    })?;
    match format::parse_segment_header(&header, id) {
        format::SegmentHeader::Valid { durable, slot } => Ok((file, len, durable, slot)),
        _ => Err(StorageError::corrupted(format!(
            "fs: {} does not start with the header of segment {id}; salvage what is \
             intact with `repair`",
            path.display()
        ))),
    }
}

/// Decodes the part of a segment after `covered` (what no index file covers) up
/// to `len`; cuts a torn tail off the last segment. Returns the length after
/// recovery and the operations found.
///
/// Only an incomplete write can be cut: damage below `durable` (synced bytes),
/// in a sealed segment, or followed by valid records is `Corrupted`.
#[allow(clippy::too_many_arguments)]
fn recover_tail(
    dir: &Dir,
    id: u64,
    file: &dyn VfsFile,
    covered: u64,
    len: u64,
    durable: u64,
    last: bool,
    rec: &mut Recovery,
) -> Result<(u64, Vec<Op>)> {
    if covered >= len {
        return Ok((len, Vec::new()));
    }
    let path = dir.seg(id);
    let tail = read_exact(file, covered, (len - covered) as usize, &|| {
        path.display().to_string()
    })?;
    rec.scanned_bytes += tail.len() as u64;
    let (good, ops) = scan(&tail, covered, id)?;
    if good == tail.len() {
        return Ok((len, ops));
    }
    let cut = covered + good as u64;
    let why = if cut < durable {
        Some(format!("bytes up to {durable} were synced"))
    } else if !last {
        Some("the segment was sealed".to_string())
    } else if valid_record_after(&tail, good + 1) {
        Some("valid records follow, so this is not an interrupted write".to_string())
    } else {
        None
    };
    if let Some(why) = why {
        let before = ops.iter().rev().find_map(|op| match op {
            Op::Put(p) => Some(p.index),
            _ => None,
        });
        let after = records_after(&tail, good + 1, covered, id);
        let around = match (before, after) {
            (Some(b), Some(a)) => format!("blocks between #{b} and #{a} may be lost"),
            (Some(b), None) => format!("blocks after #{b} may be lost"),
            (None, Some(a)) => format!("blocks before #{a} may be lost"),
            (None, None) => "which blocks is unknown".to_string(),
        };
        return Err(StorageError::corrupted(format!(
            "fs: {} is damaged at byte {cut} (bytes {cut}..{len} do not read as records) \
             although {why}; {around}; salvage what is intact with `repair`",
            path.display()
        )));
    }
    // An interrupted append: keep the bytes for inspection, then cut them.
    let saved = dir.path.join(format!("{id:016x}.seg.torn-{cut}"));
    dir.vfs
        .create(&saved, false)
        .and_then(|f| f.write_all_at(&tail[good..], 0))
        .and_then(|_| file.set_len(cut))
        .and_then(|_| file.sync_all())
        .map_err(|e| io(format!("truncating the torn tail of {}", path.display()), e))?;
    rec.truncated_bytes += (tail.len() - good) as u64;
    tracing::warn!(
        segment = %path.display(),
        at = cut,
        bytes = tail.len() - good,
        saved = %saved.display(),
        "cut a torn tail left by an interrupted write"
    );
    Ok((cut, ops))
}

/// The lowest block index in the first valid record at or after `from` in
/// `tail` (which starts at segment offset `base`).
fn records_after(tail: &[u8], from: usize, base: u64, seg: u64) -> Option<u64> {
    let at = next_valid_record(tail, from)?;
    let (_, ops) = scan(&tail[at..], base + at as u64, seg).ok()?;
    ops.iter()
        .filter_map(|op| match op {
            Op::Put(p) => Some(p.index),
            _ => None,
        })
        .min()
}

/// Decodes records from `tail` (which starts at segment offset `base`); returns
/// how many bytes held whole, valid records, and their operations.
fn scan(tail: &[u8], base: u64, seg: u64) -> Result<(usize, Vec<Op>)> {
    let mut at = 0usize;
    let mut ops = Vec::new();
    while at < tail.len() {
        let Some(h) = format::parse_record_header(&tail[at..]) else {
            break;
        };
        let body_start = at + REC_HEADER;
        let Some(body) = tail.get(body_start..body_start + h.body_len) else {
            break;
        };
        if !format::record_checksum_ok(&tail[at..], body, h.crc) {
            break;
        }
        let mut rec_ops = Vec::new();
        let parsed = match h.kind {
            KIND_PUT => format::put_entries(body).and_then(|entries| {
                for (off, entry) in entries {
                    let (block, raw_len) = format::decode_scanned_entry(entry).ok()?;
                    rec_ops.push(Op::Put(PutOp::of(
                        &block,
                        base + (body_start + off) as u64,
                        entry.len() as u32,
                        raw_len,
                    )));
                }
                Some(())
            }),
            KIND_DELETE => format::parse_delete(body).map(|h| rec_ops.push(Op::Delete(h))),
            KIND_HEAD => format::parse_head(body).map(|h| rec_ops.push(Op::Head(h))),
            _ => None,
        };
        if parsed.is_none() {
            // The checksum held but the contents do not parse: written that way.
            return Err(StorageError::corrupted(format!(
                "fs: segment {seg} has a malformed record at byte {}",
                base + at as u64
            )));
        }
        ops.extend(rec_ops);
        at = body_start + h.body_len;
    }
    Ok((at, ops))
}

/// Whether any whole, valid record starts at or after `from`: if so, damage before
/// it is not a torn tail.
fn valid_record_after(tail: &[u8], from: usize) -> bool {
    next_valid_record(tail, from).is_some()
}

/// Where the first whole, valid record at or after `from` starts.
pub(crate) fn next_valid_record(tail: &[u8], from: usize) -> Option<usize> {
    let magic = format::REC_MAGIC.to_le_bytes();
    (from..tail.len().saturating_sub(REC_HEADER - 1)).find(|&at| {
        tail[at..at + 2] == magic
            && format::parse_record_header(&tail[at..]).is_some_and(|h| {
                tail.get(at + REC_HEADER..at + REC_HEADER + h.body_len)
                    .is_some_and(|body| format::record_checksum_ok(&tail[at..], body, h.crc))
            })
    })
}

/// What reading a store's files directly recovered (see [`salvage_scan`]).
pub(crate) struct Salvaged {
    /// Blocks still stored, by index, as the log's operations leave them.
    pub blocks: BTreeMap<u64, Block>,
    /// Indices of blocks the log deletes.
    pub deleted: std::collections::BTreeSet<u64>,
    /// The last head the log records.
    pub head: Option<BlockHash>,
    /// The highest index any readable record or index file mentions.
    pub top: Option<u64>,
    /// Damaged byte ranges, per segment.
    pub damage: Vec<String>,
}

/// Reads every segment file in `dir` record by record, whatever the manifest
/// and index files say, skipping damaged bytes (resuming at the next valid
/// record), and replays what reads: the salvage of a store that will not open.
/// Index files, where they parse, tell which indices existed.
pub(crate) fn salvage_scan(dir: &Path) -> Result<Salvaged> {
    let vfs: Arc<dyn Vfs> = Arc::new(crate::io::StdVfs);
    let d = Dir {
        path: dir.to_path_buf(),
        vfs,
    };
    // Nobody may write the store while it is read.
    let _lock = acquire_lock(&d)?;
    let mut ids: Vec<u64> = read_dir(&d)?
        .iter()
        .filter_map(|n| parse_id(n, ".seg"))
        .collect();
    ids.sort_unstable();
    let mut out = Salvaged {
        blocks: BTreeMap::new(),
        deleted: Default::default(),
        head: None,
        top: None,
        damage: Vec::new(),
    };
    // Sealed lengths, if the manifest still reads.
    let sealed: HashMap<u64, u64> = read_manifest(&d)
        .ok()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut by_hash: HashMap<BlockHash, u64> = HashMap::new();
    let mut index_of: HashMap<BlockHash, u64> = HashMap::new();
    for id in ids {
        let path = d.seg(id);
        let bytes =
            std::fs::read(&path).map_err(|e| io(format!("reading {}", path.display()), e))?;
        // What its index file says existed.
        if let Ok(idx) = std::fs::read(d.idx(id))
            && let Some(h) = format::parse_index_header(&idx, id)
        {
            for raw in format::index_ops(&idx, &h).map_while(|o| o) {
                if let Op::Put(p) = h.op(&raw) {
                    out.top = out.top.max(Some(p.index));
                    index_of.insert(p.hash, p.index);
                }
            }
        }
        let start = match format::parse_segment_header(&bytes, id) {
            format::SegmentHeader::Version1 => 16,
            format::SegmentHeader::Valid { durable, .. } => {
                let synced = durable.max(sealed.get(&id).copied().unwrap_or(0));
                if (bytes.len() as u64) < synced {
                    out.damage.push(format!(
                        "{}: bytes {}..{synced} were synced and are missing (blocks after \
                         the last one copied from this segment are lost)",
                        path.display(),
                        bytes.len()
                    ));
                }
                SEG_HEADER as usize
            }
            format::SegmentHeader::Invalid => {
                out.damage.push(format!(
                    "{}: bytes 0..{SEG_HEADER} (header)",
                    path.display()
                ));
                SEG_HEADER as usize
            }
        };
        let mut at = start.min(bytes.len());
        while at < bytes.len() {
            let whole = format::parse_record_header(&bytes[at..]).and_then(|h| {
                let end = at + REC_HEADER + h.body_len;
                let body = bytes.get(at + REC_HEADER..end)?;
                format::record_checksum_ok(&bytes[at..], body, h.crc).then_some(end)
            });
            let ops = whole.and_then(|end| {
                scan(&bytes[at..end], at as u64, id)
                    .ok()
                    .map(|r| (end, r.1))
            });
            let Some((end, ops)) = ops else {
                let next = next_valid_record(&bytes, at + 1).unwrap_or(bytes.len());
                out.damage
                    .push(format!("{}: bytes {at}..{next}", path.display()));
                at = next;
                continue;
            };
            for op in ops {
                match op {
                    Op::Put(p) => {
                        let entry = &bytes[p.off as usize..p.off as usize + p.len as usize];
                        match format::decode_scanned_entry(entry) {
                            Ok((block, _)) if block.hash() == p.hash => {
                                out.top = out.top.max(Some(block.index()));
                                index_of.insert(p.hash, block.index());
                                if let Some(old) = out.blocks.insert(block.index(), block) {
                                    by_hash.remove(&old.hash());
                                }
                                by_hash.insert(p.hash, p.index);
                                out.deleted.remove(&p.index);
                            }
                            _ => out.damage.push(format!(
                                "{}: block #{} at byte {} does not decode",
                                path.display(),
                                p.index,
                                p.off
                            )),
                        }
                    }
                    Op::Delete(h) => {
                        if let Some(i) = by_hash.remove(&h) {
                            out.blocks.remove(&i);
                        }
                        if let Some(i) = index_of.get(&h) {
                            out.deleted.insert(*i);
                        }
                    }
                    Op::Head(h) => out.head = h,
                }
            }
            at = end;
        }
    }
    // A deleted index that holds a block again was re-stored.
    let present: Vec<u64> = out.blocks.keys().copied().collect();
    for i in present {
        out.deleted.remove(&i);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, FsConfig};
    use storage_core::{ListOptions, SigningKey, system_time_from_unix_nanos};

    fn blocks(n: u64) -> Vec<Block> {
        let keys = [
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        ];
        let mut out: Vec<Block> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(Block::hash);
            // Timestamps out of index order on purpose.
            let ts = system_time_from_unix_nanos(1_000_000 + (i * 7919) % 1000);
            let ty = if i % 3 == 0 { "t.a/v1" } else { "t.b/v1" };
            out.push(
                Block::sign_raw(i, ts, prev, ty, vec![i as u8; 100], &keys[(i % 2) as usize])
                    .unwrap(),
            );
        }
        out
    }

    /// Everything a load decides: listings in two orders, head, size, segments.
    type Summary = (
        Vec<storage_core::BlockMetadata>,
        Option<BlockHash>,
        u64,
        Vec<(u64, u64, u64)>,
    );

    fn summary(ix: &Index) -> Summary {
        let segs = ix
            .segs
            .iter()
            .map(|(id, u)| (*id, u.live, u.raw_live))
            .collect();
        let by_time = ix.list(&ListOptions {
            order: storage_core::SortOrder::ByTimestamp,
            ..Default::default()
        });
        let mut all = ix.list(&ListOptions::default());
        all.extend(by_time);
        (all, ix.head, ix.total_size, segs)
    }

    /// The bulk load and the operation-by-operation replay agree on the same log
    /// (several sealed segments plus an unindexed tail).
    #[test]
    fn bulk_load_equals_replay() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FsConfig {
            path: dir.path().to_path_buf(),
            compression: storage_core::CompressionType::None,
            durability: Durability::Buffered,
            segment_size: 64 << 10,
            max_payload_bytes: storage_core::MAX_PAYLOAD_BYTES,
            execution: Default::default(),
        };
        let all = blocks(900);
        {
            let (inner, _) = open(cfg.clone(), Arc::new(crate::io::StdVfs)).unwrap();
            for part in all[..800].chunks(50) {
                inner.store(part).unwrap();
            }
            inner.set_head(&all[799].hash()).unwrap();
            inner.close().unwrap();
        }
        {
            // More writes, then no close: the tail has no index file.
            let (inner, _) = open(cfg.clone(), Arc::new(crate::io::StdVfs)).unwrap();
            inner.store(&all[800..]).unwrap();
            inner.set_head(&all[899].hash()).unwrap();
        }
        let d = Dir {
            path: dir.path().to_path_buf(),
            vfs: Arc::new(crate::io::StdVfs),
        };
        let _lock = acquire_lock(&d).unwrap();
        let ids = read_manifest(&d).unwrap().unwrap();
        assert!(ids.len() > 3, "{ids:?}");
        let mut rec = Recovery::default();
        let bulk = load_all(&d, &ids, true, &mut rec).unwrap().unwrap();
        assert!(rec.scanned_bytes > 0);
        let replay = load_all(&d, &ids, false, &mut Recovery::default())
            .unwrap()
            .unwrap();
        assert_eq!(bulk.state.index.len(), 900);
        assert_eq!(summary(&bulk.state.index), summary(&replay.state.index));
        assert_eq!(bulk.state.index.head, Some(all[899].hash()));
    }
}
