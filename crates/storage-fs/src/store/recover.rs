//! Opening: the lock, the manifest, loading segments and index files, telling
//! a torn tail from lost data, and salvage.

use super::*;

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

pub(super) fn acquire_lock(dir: &Dir) -> Result<Box<dyn Any + Send + Sync>> {
    let path = dir.path.join(LOCK_FILE);
    match dir.vfs.lock(&dir.path) {
        Ok(Ok(guard)) => Ok(guard),
        // One process and one handle own a store directory at a time.
        Ok(Err(holder)) => Err(StorageError::StoreLocked {
            backend: crate::NAME.to_owned(),
            location: dir.path.display().to_string(),
            holder: Some(format!("held by {holder}")),
            source: None,
        }),
        Err(e) => Err(io(format!("locking {}", path.display()), e)),
    }
}

/// Opens (creating if needed) the store in `cfg.path` on `vfs`.
pub(crate) fn open(cfg: FsConfig, vfs: Arc<dyn Vfs>) -> Result<(Inner, Recovery)> {
    let dir = Dir {
        path: cfg.path.clone(),
        vfs,
    };
    if cfg.mode == OpenMode::ReadOnly {
        return open_read_only(cfg, dir);
    }
    if !cfg.mode.creates() {
        // A store has its manifest, or (written before manifests) segments.
        let exists = match dir.vfs.list(&dir.path) {
            Ok(names) => names.iter().any(|n| n == "MANIFEST" || n.ends_with(".seg")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io(format!("listing {}", dir.path.display()), e)),
        };
        cfg.mode
            .require_existing(crate::NAME, exists, || dir.path.display().to_string())?;
    }
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
    let cache = table::page_cache(cfg.index_cache);
    let loaded = load(&dir, &cache, &listed, &mut rec)?;
    let (state, active) = (loaded.state, loaded.active);
    // Segments after the last listed one were started by a roll or written by a
    // compaction that stopped before its manifest commit.
    let last_listed = listed.last().map_or(0, |l| l.0);
    for &id in ids.iter().filter(|id| **id > last_listed) {
        discard_uncommitted(&dir, id, &state.index)?;
    }
    let inner = assemble(
        dir,
        cfg.clone(),
        cache,
        state,
        active,
        listed,
        None,
        lock_file,
    );
    {
        let mut w = lock(&inner.writer);
        if w.len >= cfg.segment_size {
            w.roll(&inner)?;
        }
    }
    Ok((inner, rec))
}

/// Opens the store for reading only, beside a writer in another process: no
/// lock, nothing written. What it sees is the store as of opening: the
/// segments the manifest listed, each read to its end then; a record the
/// writer was appending at that moment (a torn tail) is left out, not cut.
/// Segment files stay open, so a compaction in the writer that removes them
/// later does not matter. A compaction that replaces segments while this one
/// opens changes the manifest: opening then starts again.
fn open_read_only(cfg: FsConfig, dir: Dir) -> Result<(Inner, Recovery)> {
    let mut delays = storage_core::raw::read_only_open_delays();
    loop {
        let listed = match read_manifest(&dir)? {
            Some(listed) => listed,
            None => {
                let has_segments = match dir.vfs.list(&dir.path) {
                    Ok(names) => names.iter().any(|n| n.ends_with(".seg")),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                    Err(e) => return Err(io(format!("listing {}", dir.path.display()), e)),
                };
                if has_segments {
                    return Err(StorageError::corrupted(format!(
                        "fs: {} has segment files but no MANIFEST (a store still being \
                         created, or damage); open it for writing to recover it",
                        dir.path.display()
                    )));
                }
                return Err(StorageError::StoreNotFound {
                    backend: crate::NAME.to_owned(),
                    location: dir.path.display().to_string(),
                });
            }
        };
        let mut rec = Recovery {
            segments: listed.len(),
            ..Recovery::default()
        };
        let cache = table::page_cache(cfg.index_cache);
        let outcome = check_listed(&dir, &listed)
            .and_then(|()| load_all(&dir, &cache, &listed, true, &mut rec));
        let loaded = match outcome {
            Ok(loaded) => loaded,
            Err(e) => {
                if read_manifest(&dir)?.as_ref() != Some(&listed)
                    && let Some(pause) = delays.next()
                {
                    std::thread::sleep(pause);
                    continue;
                }
                return Err(e);
            }
        };
        // Writes are refused before they get here; `broken` keeps them out
        // even so, and makes close write nothing.
        let inner = assemble(
            dir.clone(),
            cfg.clone(),
            cache,
            loaded.state,
            loaded.active,
            listed,
            Some("the store is open read-only".into()),
            Box::new(()),
        );
        return Ok((inner, rec));
    }
}

/// An open store from what loading produced. `broken` set refuses writes
/// (a read-only open); `lock` is held for the store's lifetime.
#[allow(clippy::too_many_arguments)]
fn assemble(
    dir: Dir,
    cfg: FsConfig,
    cache: Arc<PageCache>,
    state: State,
    active: Active,
    listed: Vec<(u64, u64)>,
    broken: Option<String>,
    lock: Box<dyn Any + Send + Sync>,
) -> Inner {
    let Active {
        id: seg,
        file,
        len,
        deletes,
        mark,
        dirty,
    } = active;
    Inner {
        dir,
        cfg,
        cache,
        state: RwLock::new(state),
        writer: Mutex::new(Writer {
            seg,
            file,
            len,
            deletes,
            buf: Vec::new(),
            // A read-only store has nothing for close to write.
            dirty: dirty && broken.is_none(),
            broken,
            segments: listed.into_iter().collect(),
        }),
        durable: Mutex::new(DurableState {
            synced: (seg, len),
            leader: false,
            mark,
        }),
        durable_cv: Condvar::new(),
        stop: Arc::new(Stop::default()),
        _lock: lock,
    }
}

/// Every segment the manifest lists exists.
fn check_listed(dir: &Dir, listed: &[(u64, u64)]) -> Result<()> {
    let present: Vec<u64> = read_dir(dir)?
        .iter()
        .filter_map(|n| parse_id(n, ".seg"))
        .collect();
    match listed.iter().find(|(id, _)| !present.contains(id)) {
        Some((id, _)) => Err(lost(
            dir,
            *id,
            "is missing",
            (SEG_HEADER, u64::MAX),
            "the manifest lists it",
        )),
        None => Ok(()),
    }
}

/// Opens a store file (read-only unless `write`) and reads its length.
pub(super) fn open_with_len(dir: &Dir, path: &Path, write: bool) -> Result<(FileRef, u64)> {
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
pub(super) fn start_fresh(dir: &Dir, ids: &[u64]) -> Result<Vec<(u64, u64)>> {
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
pub(super) fn discard_uncommitted(dir: &Dir, id: u64, index: &Index) -> Result<()> {
    let path = dir.seg(id);
    let (file, len) = open_with_len(dir, &path, false)?;
    if len > SEG_HEADER {
        let bytes = read_exact(&*file, 0, len as usize, &|| path.display().to_string())?;
        let (_, ops) = scan(&bytes[SEG_HEADER as usize..], SEG_HEADER, id)?;
        let mut unknown = None;
        for op in &ops {
            if let Op::Put(p) = op
                && !index.contains(&p.hash)?
            {
                unknown = Some(p.index);
                break;
            }
        }
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
pub(super) fn lost(dir: &Dir, id: u64, what: &str, range: (u64, u64), why: &str) -> StorageError {
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

/// The blocks segment `id`'s index file lists: (index, hash, offset). Reads a
/// table or an index file of the first layout; `None` if there is none that
/// reads whole.
pub(super) fn index_file_puts(dir: &Dir, id: u64) -> Option<Vec<(u64, BlockHash, u64)>> {
    let path = dir.idx(id);
    let f = dir.vfs.open(&path, false).ok()?;
    let mut buf = vec![0u8; f.len().ok()? as usize];
    f.read_exact_at(&mut buf, 0).ok()?;
    if let Some(h) = table::parse_table_header(&buf, id)
        && h.file_len == buf.len() as u64
    {
        let t = Table::new(id, h, f, path, table::page_cache(0), None);
        let all = t.all().ok()?;
        return Some(
            all.iter()
                .map(|e| (e.index, e.hash, u64::from(e.off)))
                .collect(),
        );
    }
    let h = format::parse_index_header(&buf, id)?;
    Some(
        format::index_ops(&buf, &h)
            .map_while(|o| o)
            .filter_map(|o| match h.op(&o) {
                Op::Put(p) => Some((p.index, p.hash, p.off)),
                _ => None,
            })
            .collect(),
    )
}

/// Which blocks segment `id`'s index file places at offsets `from..to`.
pub(super) fn indexed_blocks(dir: &Dir, id: u64, from: u64, to: u64) -> String {
    let parsed = index_file_puts(dir, id).map(|puts| {
        puts.into_iter()
            .filter(|(_, _, off)| *off >= from && *off < to)
            .map(|(i, _, _)| i)
            .collect::<Vec<u64>>()
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

/// Syncs the store every `every` (periodic durability) until it is closed:
/// started by the caller once the store has its handle, holding it only
/// while syncing.
pub(crate) fn spawn_periodic(
    weak: impl storage_core::raw::WeakTarget<Target = Inner>,
    every: Duration,
) -> Result<()> {
    let Some(stop) = weak.upgrade().map(|inner| inner.stop.clone()) else {
        return Ok(());
    };
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
pub(super) struct Active {
    id: u64,
    file: FileRef,
    len: u64,
    /// Its deletions that its table does not hold.
    deletes: Vec<(BlockHash, u64)>,
    /// The durable mark: (segment, length, the slot the next write goes to).
    mark: (u64, u64, usize),
    /// Its table or its durable mark does not cover it whole.
    dirty: bool,
}

/// What loading the segments produced.
pub(super) struct Loaded {
    state: State,
    active: Active,
}

/// Loads the listed segments for writing. A damaged table page found while
/// loading (resolving a deletion reads pages) fails that load and removes the
/// table; loading again then reads its segment from the log instead.
fn load(
    dir: &Dir,
    cache: &Arc<PageCache>,
    listed: &[(u64, u64)],
    rec: &mut Recovery,
) -> Result<Loaded> {
    let had_table = |id: u64| dir.vfs.open(&dir.idx(id), false).is_ok();
    let mut attempts = 0;
    loop {
        let before: Vec<u64> = listed
            .iter()
            .map(|l| l.0)
            .filter(|id| had_table(*id))
            .collect();
        match load_all(dir, cache, listed, false, rec) {
            Err(e)
                if e.kind() == storage_core::ErrorKind::Corrupted
                    && attempts <= listed.len()
                    && before.iter().any(|id| !had_table(*id)) =>
            {
                tracing::warn!(error = %e, "reading segments whose index files were damaged");
                attempts += 1;
            }
            other => return other,
        }
    }
}

/// Loads the listed segments `(id, sealed length or 0 for the active one)`, in
/// order: each one's table (its header only), then whatever of it no table
/// covers, read from the log. A sealed segment that had such a tail (its table
/// was never written, or the store is of the first layout) gets its table now,
/// unless the open is read-only.
pub(super) fn load_all(
    dir: &Dir,
    cache: &Arc<PageCache>,
    listed: &[(u64, u64)],
    read_only: bool,
    rec: &mut Recovery,
) -> Result<Loaded> {
    let mut index = Index::default();
    let mut files = BTreeMap::new();
    let mut active = None;
    for (n, &(id, sealed)) in listed.iter().enumerate() {
        let last = n + 1 == listed.len();
        let (file, len, mark, mark_slot) = open_segment(dir, id, last && !read_only)?;
        let table = open_table(dir, cache, id, read_only)?;
        let covered = table.as_ref().map_or(SEG_HEADER, |t| t.header.covered);
        // What the store knows it made durable: the sealed length, or the mark in
        // the header; a table is written only over synced bytes, too.
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
        let (len, tail) =
            recover_tail(dir, id, &*file, covered, end, durable, last, read_only, rec)?;
        if let Some(t) = table {
            index.add_table(t)?;
        }
        let mut deletes = Vec::new();
        for op in &tail {
            index.apply(id, op)?;
            if let Op::Delete(h, off) = op {
                deletes.push((*h, *off));
            }
        }
        if last {
            let next_slot = mark_slot.map_or(0, |k| (k + 1) % 2);
            active = Some(Active {
                id,
                file: file.clone(),
                len,
                deletes,
                mark: (id, mark, next_slot),
                dirty: covered < len || mark < len,
            });
        } else if covered < len && !read_only {
            // Sealed, but its table never got written: write it now.
            let (puts, mut all) = index.segment_contents(id)?;
            all.extend(deletes);
            let c = Contents {
                puts,
                deletes: all,
                head: index.head,
            };
            let t = write_table(dir, cache, id, len, &c)?;
            index.replace_table(t);
        }
        files.insert(id, file);
    }
    Ok(Loaded {
        state: State { index, files },
        active: active.expect("the manifest lists an active segment"),
    })
}

/// Opens a segment file (writable only if it is the active one) and checks its
/// header; returns it, its length, its durable mark and the header slot holding
/// that mark.
pub(super) fn open_segment(
    dir: &Dir,
    id: u64,
    writable: bool,
) -> Result<(FileRef, u64, u64, Option<usize>)> {
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
    // Read again after the header: a writer in another process (beside a
    // read-only opener) may have synced more and marked it meanwhile, and the
    // mark must never be past the length this open works with.
    let len = file
        .len()
        .map_err(|e| io(format!("reading metadata of {}", path.display()), e))?;
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
pub(super) fn recover_tail(
    dir: &Dir,
    id: u64,
    file: &dyn VfsFile,
    covered: u64,
    len: u64,
    durable: u64,
    last: bool,
    read_only: bool,
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
    if read_only {
        // An append under way in the writer (or an interrupted one it will cut
        // when it next opens): not part of what this open sees.
        return Ok((cut, ops));
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
pub(super) fn records_after(tail: &[u8], from: usize, base: u64, seg: u64) -> Option<u64> {
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
pub(super) fn scan(tail: &[u8], base: u64, seg: u64) -> Result<(usize, Vec<Op>)> {
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
            KIND_DELETE => {
                format::parse_delete(body).map(|h| rec_ops.push(Op::Delete(h, base + at as u64)))
            }
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
pub(super) fn valid_record_after(tail: &[u8], from: usize) -> bool {
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
        for (index, hash, _) in index_file_puts(&d, id).unwrap_or_default() {
            out.top = out.top.max(Some(index));
            index_of.insert(hash, index);
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
                    Op::Delete(h, _) => {
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
        u64,
        Vec<(u64, u64, u64, u64)>,
    );

    fn summary(ix: &Index) -> Summary {
        let segs = ix
            .segs
            .iter()
            .map(|(id, u)| (*id, u.count, u.live, u.raw_live))
            .collect();
        let by_time = ix.list(&ListOptions::new().by_timestamp()).unwrap();
        let mut all = ix.list(&ListOptions::default()).unwrap();
        all.extend(ix.list(&ListOptions::new().descending()).unwrap());
        all.extend(by_time);
        (all, ix.head, ix.total_size, ix.len(), segs)
    }

    fn load_dir(path: &std::path::Path) -> (Loaded, Recovery) {
        let d = Dir {
            path: path.to_path_buf(),
            vfs: Arc::new(crate::io::StdVfs),
        };
        let ids = read_manifest(&d).unwrap().unwrap();
        let mut rec = Recovery::default();
        let cache = table::page_cache(1 << 20);
        (load_all(&d, &cache, &ids, true, &mut rec).unwrap(), rec)
    }

    /// Loading from tables and replaying the whole log agree (several sealed
    /// segments, deletions across them, blocks stored again, an unindexed tail).
    #[test]
    fn tables_equal_replay() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = FsConfig {
            path: dir.path().to_path_buf(),
            compression: storage_core::CompressionType::None,
            durability: Durability::Buffered,
            segment_size: 64 << 10,
            max_payload_bytes: storage_core::MAX_PAYLOAD_BYTES,
            execution: Default::default(),
            mode: Default::default(),
            index_cache: 1 << 20,
        };
        let all = blocks(900);
        {
            let (inner, _) = open(cfg.clone(), Arc::new(crate::io::StdVfs)).unwrap();
            for part in all[..800].chunks(50) {
                inner.store(part).unwrap();
            }
            for i in [3, 140, 799] {
                inner.delete(&all[i].hash()).unwrap();
            }
            inner.store(&all[140..141]).unwrap();
            inner.set_head(&all[798].hash()).unwrap();
            inner.close().unwrap();
        }
        {
            // More writes, then no close: the tail has no table.
            let (inner, _) = open(cfg.clone(), Arc::new(crate::io::StdVfs)).unwrap();
            inner.store(&all[800..]).unwrap();
            inner.delete(&all[500].hash()).unwrap();
            inner.delete(&all[850].hash()).unwrap();
            inner.set_head(&all[899].hash()).unwrap();
        }
        let (tables, rec) = load_dir(dir.path());
        assert!(rec.scanned_bytes > 0);
        assert!(tables.state.index.segs.len() > 3);
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "idx") {
                std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        let (replay, _) = load_dir(copy.path());
        assert_eq!(tables.state.index.len(), 896);
        assert_eq!(summary(&tables.state.index), summary(&replay.state.index));
        assert_eq!(tables.state.index.head, Some(all[899].hash()));
        assert!(tables.state.index.contains(&all[140].hash()).unwrap());
        assert!(!tables.state.index.contains(&all[3].hash()).unwrap());
    }
}
