//! Compaction and vacuum: rewriting a prefix of the log without deleted
//! entries, crash-safe at every step, and removing orphaned files.

use super::*;

impl Inner {
    /// Rewrites a prefix of the log without deleted entries (`compact`: up to the
    /// last segment holding any; `vacuum`: every segment, re-encoding entries with
    /// the configured compression), then removes orphaned files.
    ///
    /// The copies go to new segments after the active one, followed by the current
    /// head; once they and their tables are synced, the manifest is replaced to
    /// list them instead of the old segments (the commit point), and then the
    /// old segments are deleted. A crash at any point leaves a store that opens
    /// to the same contents.
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

    pub(super) fn rewrite_prefix(&self, w: &mut Writer, end: u64, recode: bool) -> Result<()> {
        if end >= w.seg {
            w.roll(self)?;
        }
        // What to copy, with each block's metadata, from one snapshot (writers are
        // held off by the writer lock, so it stays true).
        let (live, head) = {
            let st = read_state(&self.state);
            let live: Vec<(Loc, FileRef, PutOp)> = st
                .index
                .range(0, u64::MAX)?
                .into_iter()
                .filter(|(_, e)| e.loc.seg <= end)
                .map(|(i, e)| {
                    // `off` is set where the copy lands.
                    let op = PutOp {
                        off: 0,
                        ..st.index.put_op(i, &e)
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
        let mut out = Output::new(self, w.seg + 1, head)?;
        for (loc, file, mut op) in live {
            let mut entry = self.read_entry(&file, loc)?;
            if recode {
                entry = format::recode_entry(&entry, &op.hash, self.cfg.compression)?;
            }
            let (_, _, raw_len) = format::split_entry(&entry, &op.hash)?;
            op.len = entry.len() as u32;
            op.raw_len = raw_len;
            out.put(self, &entry, op)?;
        }
        out.head(self)?;
        let written = out.finish(self)?;

        // New writes go to a segment after the copies.
        let next = written.last().map_or(w.seg, |(id, _, _, _)| *id) + 1;
        let before = w.seg;
        let unused = w.len == SEG_HEADER;
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
        for (id, _, len, _) in &written {
            w.segments.insert(*id, *len);
        }
        // The commit point: from here on the copies are the store, and the old
        // segments (no longer listed) are ignored until they are removed.
        write_manifest(&self.dir, &w.segments)?;
        {
            let mut st = write_state(&self.state);
            st.index.remove_segments(&old);
            if unused {
                st.files.remove(&before);
            }
            for (id, file, _, table) in written {
                st.files.insert(id, file);
                st.index.add_table(table)?;
            }
            for id in &old {
                st.files.remove(id);
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

/// A segment a compaction wrote: id, file, length, table.
pub(super) type Sealed = (u64, FileRef, u64, Arc<Table>);

/// Segments written by a compaction.
pub(super) struct Output {
    id: u64,
    file: FileRef,
    len: u64,
    puts: Vec<PutOp>,
    /// The store's head (what the copies' tables record).
    head: Option<BlockHash>,
    buf: Vec<u8>,
    entries: u32,
    done: Vec<Sealed>,
}

/// Flush a compaction record at this size.
pub(super) const OUTPUT_RECORD: usize = 1 << 20;

impl Output {
    pub(super) fn new(inner: &Inner, id: u64, head: Option<BlockHash>) -> Result<Self> {
        Ok(Self {
            id,
            file: create_segment(&inner.dir, id)?,
            len: SEG_HEADER,
            puts: Vec::new(),
            head,
            buf: Vec::new(),
            entries: 0,
            done: Vec::new(),
        })
    }

    pub(super) fn put(&mut self, inner: &Inner, entry: &[u8], mut op: PutOp) -> Result<Loc> {
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
        self.puts.push(op);
        Ok(loc)
    }

    pub(super) fn flush(&mut self, inner: &Inner) -> Result<()> {
        if self.entries == 0 {
            return Ok(());
        }
        self.buf[REC_HEADER..REC_HEADER + 4].copy_from_slice(&self.entries.to_le_bytes());
        format::finish_record(&mut self.buf, 0, KIND_PUT);
        self.write(inner)?;
        self.entries = 0;
        Ok(())
    }

    pub(super) fn write(&mut self, inner: &Inner) -> Result<()> {
        self.file
            .write_all_at(&self.buf, self.len)
            .map_err(|e| io(format!("writing {}", inner.dir.seg(self.id).display()), e))?;
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    pub(super) fn next_segment(&mut self, inner: &Inner) -> Result<()> {
        self.seal(inner)?;
        self.id += 1;
        self.file = create_segment(&inner.dir, self.id)?;
        self.len = SEG_HEADER;
        Ok(())
    }

    pub(super) fn seal(&mut self, inner: &Inner) -> Result<()> {
        let c = Contents {
            puts: std::mem::take(&mut self.puts),
            deletes: Vec::new(),
            head: self.head,
        };
        let t = seal_segment(&inner.dir, &inner.cache, self.id, &self.file, self.len, &c)?;
        self.done.push((self.id, self.file.clone(), self.len, t));
        Ok(())
    }

    /// Logs the head after the copies (for a replay of the log without tables).
    pub(super) fn head(&mut self, inner: &Inner) -> Result<()> {
        self.flush(inner)?;
        let start = format::begin_record(&mut self.buf);
        self.buf
            .extend_from_slice(&format::head_body(self.head.as_ref()));
        format::finish_record(&mut self.buf, start, KIND_HEAD);
        self.write(inner)
    }

    pub(super) fn finish(mut self, inner: &Inner) -> Result<Vec<Sealed>> {
        self.flush(inner)?;
        self.seal(inner)?;
        sync_dir(&inner.dir)?;
        Ok(self.done)
    }
}
