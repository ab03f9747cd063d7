//! The write path: appending records, group commit and the durable-length
//! mark, deletes, the head, and close.

use super::*;

impl Writer {
    pub(super) fn usable(&self) -> Result<()> {
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
    pub(super) fn append(&mut self, inner: &Inner, bytes: &[u8]) -> Result<(u64, u64)> {
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
    pub(super) fn roll(&mut self, inner: &Inner) -> Result<()> {
        self.seal(inner)?;
        self.start(inner, self.seg + 1)?;
        write_manifest(&inner.dir, &self.segments)
    }

    /// Syncs the active segment and writes its table; the manifest records it
    /// as sealed at its length once the caller writes it.
    pub(super) fn seal(&mut self, inner: &Inner) -> Result<()> {
        let c = inner.contents(self)?;
        let t = seal_segment(&inner.dir, &inner.cache, self.seg, &self.file, self.len, &c)?;
        write_state(&inner.state).index.replace_table(t);
        self.deletes.clear();
        inner.mark_synced((self.seg, self.len));
        self.segments.insert(self.seg, self.len);
        Ok(())
    }

    /// Starts segment `id` as the active one (the caller writes the manifest).
    pub(super) fn start(&mut self, inner: &Inner, id: u64) -> Result<()> {
        let file = create_segment(&inner.dir, id)?;
        write_state(&inner.state).files.insert(id, file.clone());
        self.seg = id;
        self.file = file;
        self.len = SEG_HEADER;
        self.deletes.clear();
        self.segments.insert(id, 0);
        Ok(())
    }
}

pub(super) fn put_op(block: &Block, off: u64, entry: &format::EncodedEntry) -> PutOp {
    PutOp::of(block, off, entry.bytes.len() as u32, entry.raw_len)
}

/// The header slot write that records `durable` (a synced position), if it says
/// more than the last one: (segment, length, slot).
pub(super) fn next_mark(mark: (u64, u64, usize), durable: (u64, u64)) -> Option<(u64, u64, usize)> {
    if mark.0 == durable.0 {
        (durable.1 > mark.1).then_some((durable.0, durable.1, mark.2))
    } else {
        (durable.1 > SEG_HEADER).then_some((durable.0, durable.1, 0))
    }
}

pub(super) fn write_mark(
    file: &FileRef,
    (seg, len, slot): (u64, u64, usize),
) -> std::io::Result<()> {
    let (bytes, at) = format::durable_slot(seg, slot, len);
    file.write_all_at(&bytes, at)
}

impl Inner {
    /// What the active segment's table holds once it covers all of it.
    pub(super) fn contents(&self, w: &Writer) -> Result<Contents> {
        let st = read_state(&self.state);
        let (puts, mut deletes) = st.index.segment_contents(w.seg)?;
        deletes.extend_from_slice(&w.deletes);
        Ok(Contents {
            puts,
            deletes,
            head: st.index.head,
        })
    }

    pub(super) fn mark_synced(&self, pos: (u64, u64)) {
        let mut d = lock(&self.durable);
        if pos > d.synced {
            d.synced = pos;
        }
    }

    /// Waits until everything up to `pos` is synced. Group commit: one writer
    /// syncs for everyone who appended before it started; the others wait.
    pub(super) fn sync_to(&self, pos: (u64, u64)) -> Result<()> {
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
    pub(super) fn sync_and_mark(&self, w: &Writer) -> Result<()> {
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

    pub(super) fn after_write(&self, end: (u64, u64)) -> Result<()> {
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
                    |i| Ok(st.index.at(i)?.map(|e| e.hash)),
                    |i| {
                        let Some(e) = st.index.at(i)? else {
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
        let end = (w.seg, w.len);
        drop(w);
        self.after_write(end)
    }

    /// Logs a delete (`Some(hash)` in `delete`) or a head change (after
    /// `check` passes under the writer lock).
    pub(super) fn log_op(
        &self,
        delete: Option<BlockHash>,
        head: Option<BlockHash>,
        check: impl FnOnce(&Index) -> Result<bool>,
    ) -> Result<bool> {
        let mut w = lock(&self.writer);
        w.usable()?;
        if !check(&read_state(&self.state).index)? {
            return Ok(false);
        }
        let mut buf = Vec::with_capacity(REC_HEADER + 33);
        let start = format::begin_record(&mut buf);
        let kind = match &delete {
            Some(h) => {
                buf.extend_from_slice(h.as_bytes());
                KIND_DELETE
            }
            None => {
                buf.extend_from_slice(&format::head_body(head.as_ref()));
                KIND_HEAD
            }
        };
        format::finish_record(&mut buf, start, kind);
        let (seg, off) = w.append(self, &buf)?;
        let op = match delete {
            Some(h) => {
                w.deletes.push((h, off));
                Op::Delete(h, off)
            }
            None => Op::Head(head),
        };
        write_state(&self.state).index.apply(seg, &op)?;
        let end = (w.seg, w.len);
        drop(w);
        self.after_write(end)?;
        Ok(true)
    }

    pub(crate) fn delete(&self, hash: &BlockHash) -> Result<bool> {
        self.log_op(Some(*hash), None, |ix| ix.contains(hash))
    }

    pub(crate) fn set_head(&self, hash: &BlockHash) -> Result<()> {
        self.log_op(None, Some(*hash), |ix| {
            if !ix.contains(hash)? {
                return Err(StorageError::BlockNotFound { hash: *hash });
            }
            Ok(ix.head != Some(*hash))
        })
        .map(|_| ())
    }

    /// Syncs, writes the active segment's table and stops the sync thread.
    pub(crate) fn close(&self) -> Result<()> {
        *lock(&self.stop.stopped) = true;
        self.stop.cv.notify_all();
        let mut w = lock(&self.writer);
        // A store that was only read writes nothing (so reading works on a full disk).
        if w.broken.is_some() || !w.dirty {
            return Ok(());
        }
        self.sync_and_mark(&w)?;
        let c = self.contents(&w)?;
        let t = write_table(&self.dir, &self.cache, w.seg, w.len, &c)?;
        write_state(&self.state).index.replace_table(t);
        w.deletes.clear();
        w.dirty = false;
        Ok(())
    }
}
