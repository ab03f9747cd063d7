//! Writing blocks: one segment object per write, then claims of their indices in
//! the index pages (the shared admission rule under each page's compare-and-swap),
//! reads of stored blocks, and the head.

use super::*;

impl Inner {
    /// Reads the blocks of `entries` (any order, any segments): one ranged GET per
    /// segment, `parallelism` segments at a time. A block whose segment has gone
    /// (compacted by another writer) is looked up again; one deleted meanwhile is
    /// `None`.
    pub(crate) async fn read_entries(&self, entries: &[Entry]) -> Result<Vec<Option<Block>>> {
        let mut out = vec![None; entries.len()];
        for (idx, got) in self.fetch_records(entries).await? {
            match got {
                Some(bytes) => {
                    for (i, b) in idx.into_iter().zip(bytes) {
                        out[i] = Some(entries[i].decode(&b)?);
                    }
                }
                None => {
                    for i in idx {
                        out[i] = self.read_moved(&entries[i]).await?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The records of `entries`, grouped by segment: one ranged GET per segment,
    /// `parallelism` segments at a time. Each group gives the positions of its
    /// entries in `entries` and their bytes, or `None` if the segment is gone.
    pub(crate) async fn fetch_records(
        &self,
        entries: &[Entry],
    ) -> Result<Vec<(Vec<usize>, Option<Vec<Bytes>>)>> {
        let mut by_segment: BTreeMap<SegmentId, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_segment.entry(e.segment).or_default().push(i);
        }
        let reads = by_segment.into_iter().map(|(seg, idx)| async move {
            let ranges: Vec<_> = idx.iter().map(|&i| entries[i].range()).collect();
            let got = self.get_ranges(&seg.path(), &ranges).await?;
            Ok::<_, StorageError>((idx, got))
        });
        bounded(reads, self.options.parallelism).try_collect().await
    }

    /// `entry`'s segment was not found: re-read its page; the block was moved (read
    /// it there), deleted (`None`), or its segment is lost (`Corrupted`).
    pub(crate) async fn read_moved(&self, entry: &Entry) -> Result<Option<Block>> {
        let number = page_of(entry.meta.index);
        let fresh = self.fetch_page(number).await?;
        {
            let mut view = self.view();
            if view.etag(number).is_some() || fresh.is_some() {
                view.install(number, fresh);
            }
        }
        let now = self.view().lookup(&entry.meta.hash);
        match now {
            None => Ok(None),
            Some(e) if e.segment != entry.segment => {
                let path = e.segment.path();
                match self.get_ranges(&path, &[e.range()]).await? {
                    Some(bytes) => Ok(Some(e.decode(&bytes[0])?)),
                    None => Err(missing_segment(&e)),
                }
            }
            Some(e) => Err(missing_segment(&e)),
        }
    }

    pub(crate) async fn store_many(&self, blocks: &[Block]) -> Result<Vec<BlockHash>> {
        let hashes: Vec<BlockHash> = blocks.iter().map(Block::hash).collect();
        // Fail fast, before uploading anything, on what this instance already
        // knows; the claims below decide for good.
        let mut ordered: Vec<&Block> = {
            let view = self.view();
            admit(
                blocks,
                &mut ChainViewFn(
                    |i| Ok(view.entry(i).map(|e| e.meta.hash)),
                    |i| Ok(view.entry(i).map(|e| e.previous)),
                ),
            )?
            .into_iter()
            .map(|p| &blocks[p])
            .collect()
        };
        if ordered.is_empty() {
            return Ok(hashes);
        }
        ordered.sort_by_key(|b| b.index());
        let segment = SegmentId::random()?;
        let (bytes, entries) = encode_segment(segment, self.options.format, &ordered)?;
        self.in_flight_mark(segment, true);
        let result = self
            .upload_and_claim(segment, bytes, &ordered, entries)
            .await;
        self.in_flight_mark(segment, false);
        result.map(|()| hashes)
    }

    pub(crate) fn in_flight_mark(&self, segment: SegmentId, on: bool) {
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            set.insert(segment);
        } else {
            set.remove(&segment);
        }
    }

    pub(crate) async fn upload_and_claim(
        &self,
        segment: SegmentId,
        bytes: Vec<u8>,
        blocks: &[&Block],
        entries: Vec<Entry>,
    ) -> Result<()> {
        let path = segment.path();
        // A plain PUT: the name is 128 random bits, and an unconditional PUT may be
        // retried after a lost response, where create-if-absent would then fail.
        self.put(&path, bytes, PutMode::Overwrite).await?;
        // Claim page by page; pages in parallel.
        let mut per_page: BTreeMap<u64, Vec<(&Block, Entry)>> = BTreeMap::new();
        for (b, e) in blocks.iter().zip(entries) {
            per_page.entry(page_of(b.index())).or_default().push((b, e));
        }
        let claims = per_page
            .iter()
            .map(|(&number, items)| async move { (number, self.claim(number, items).await) });
        let outcomes: Vec<(u64, Result<()>)> =
            bounded(claims, self.options.parallelism).collect().await;
        let Some(err) = outcomes
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| (*n, e)))
            .min_by_key(|(n, _)| *n)
            .map(|(n, _)| n)
        else {
            return Ok(());
        };
        // Undo the pages that were claimed, then drop the segment if nothing else
        // references it; compact removes whatever a failure here leaves.
        let mut first_error = None;
        for (number, r) in outcomes {
            match r {
                Ok(()) => {
                    let undo = self
                        .update_page(number, |page| {
                            let mut next = page.clone();
                            next.entries.retain(|_, e| e.segment != segment);
                            Ok((next.entries.len() != page.entries.len()).then_some(next))
                        })
                        .await;
                    if let Err(e) = undo {
                        tracing::warn!(page = number, error = %e, "could not undo a failed batch's claim");
                    }
                }
                Err(e) if number == err => first_error = Some(e),
                Err(_) => {}
            }
        }
        let referenced = self
            .view()
            .pages
            .values()
            .any(|c| c.page.entries.values().any(|e| e.segment == segment));
        if !referenced && let Err(e) = self.delete(&path).await {
            tracing::debug!(segment = %segment, error = %e, "orphan segment left for compact");
        }
        Err(first_error.expect("a failed page was found"))
    }

    /// Claims the indices of `items` in one page, checking conflicts and the links
    /// to neighbours in the same page against its current version.
    pub(crate) async fn claim(&self, number: u64, items: &[(&Block, Entry)]) -> Result<()> {
        self.update_page(number, |page| {
            let claimed: Vec<&Block> = items.iter().map(|(b, _)| *b).collect();
            let fresh = admit(
                &claimed,
                &mut ChainViewFn(
                    |i| Ok(page.entries.get(&i).map(|e| e.meta.hash)),
                    |i| Ok(page.entries.get(&i).map(|e| e.previous)),
                ),
            )?;
            if fresh.is_empty() {
                return Ok(None);
            }
            let mut next = page.clone();
            for p in fresh {
                let (b, e) = &items[p];
                next.entries.insert(b.index(), e.clone());
            }
            Ok(Some(next))
        })
        .await
    }

    pub(crate) async fn read_head(&self) -> Result<Option<(Option<BlockHash>, UpdateVersion)>> {
        let path = Path::from(HEAD_OBJECT);
        match self.get(&path).await? {
            None => Ok(None),
            Some((bytes, version)) => Ok(Some((decode_head(&bytes)?, version))),
        }
    }

    /// Changes the head with compare-and-swap: `change` gets the current head and
    /// returns the new one, or `None` to leave it.
    pub(crate) async fn update_head(
        &self,
        change: impl Fn(Option<BlockHash>) -> Option<Option<BlockHash>>,
    ) -> Result<()> {
        let _queued = self.head_lock.lock().await;
        let path = Path::from(HEAD_OBJECT);
        let mut delays = cas_delays();
        for _ in 0..CAS_ATTEMPTS {
            let current = self.read_head().await?;
            let Some(next) = change(current.as_ref().and_then(|(h, _)| *h)) else {
                return Ok(());
            };
            let mode = self.cas_mode(&path, current.as_ref().map(|(_, v)| v))?;
            match self.put(&path, encode_head(next.as_ref()), mode).await? {
                Put::Done(_) => return Ok(()),
                Put::Lost => {
                    if let Some(pause) = delays.next() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
        Err(self.gave_up(&path))
    }
}

pub(crate) fn missing_segment(e: &Entry) -> StorageError {
    StorageError::corrupted(format!(
        "object store: segment {} holding block {} (index {}) is missing",
        e.segment.path(),
        e.meta.hash,
        e.meta.index
    ))
}
