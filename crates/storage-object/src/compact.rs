//! Compaction: rewriting segments to drop deleted blocks and removing orphans.

use super::*;

impl Inner {
    pub(crate) async fn compact(&self) -> Result<()> {
        self.refresh().await?;
        let listed = self.list(SEGMENTS_DIR).await?;
        let mut live: HashMap<SegmentId, Vec<Entry>> = HashMap::new();
        for c in self.view().pages.values() {
            for e in c.page.entries.values() {
                live.entry(e.segment).or_default().push(e.clone());
            }
        }
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = SystemTime::now();
        let small = self.options.compact_segment_bytes / 4;
        let mut orphans = Vec::new();
        let mut repack: Vec<Entry> = Vec::new();
        let mut repacked = Vec::new();
        let mut any_dead = false;
        for m in &listed {
            let Some(seg) = SegmentId::from_path(&m.location) else {
                continue;
            };
            if in_flight.contains(&seg) {
                continue;
            }
            match live.get(&seg) {
                None => {
                    let modified = system_time_from_unix_nanos(
                        u64::try_from(m.last_modified.timestamp_nanos_opt().unwrap_or(0))
                            .unwrap_or(0),
                    );
                    let age = now.duration_since(modified).unwrap_or(Duration::ZERO);
                    if age >= self.options.orphan_grace {
                        orphans.push(seg);
                    }
                }
                Some(entries) => {
                    let live_bytes: u64 = entries.iter().map(|e| u64::from(e.len)).sum();
                    let dead = m.size > SEGMENT_HEADER_LEN + live_bytes;
                    if dead || m.size < small {
                        any_dead |= dead;
                        repack.extend(entries.iter().cloned());
                        repacked.push(seg);
                    }
                }
            }
        }
        // Repacking one small, whole segment into another gains nothing.
        if any_dead || repacked.len() >= 2 {
            repack.sort_by_key(|e| e.meta.index);
            let limit = self.options.compact_segment_bytes;
            let mut start = 0;
            while start < repack.len() {
                let mut end = start + 1;
                let mut size = u64::from(repack[start].len);
                while end < repack.len() && size + u64::from(repack[end].len) <= limit {
                    size += u64::from(repack[end].len);
                    end += 1;
                }
                self.move_entries(&repack[start..end]).await?;
                start = end;
            }
        }
        // Segments nothing references any more: repacked ones and orphans. Checked
        // again now: this process's writers may have claimed one meanwhile.
        let mut keep: HashSet<SegmentId> = self
            .view()
            .pages
            .values()
            .flat_map(|c| c.page.entries.values().map(|e| e.segment))
            .collect();
        keep.extend(
            self.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter(),
        );
        let doomed: Vec<Path> = repacked
            .into_iter()
            .chain(orphans)
            .filter(|s| !keep.contains(s))
            .map(|s| s.path())
            .collect();
        let deletes = doomed
            .into_iter()
            .map(|p| async move { self.delete(&p).await });
        bounded(deletes, self.options.parallelism)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Copies the records of `entries` into one new segment and points their index
    /// entries at it (only entries still pointing where they did). Records that no
    /// longer decode, or whose segment has gone, stay as they are.
    pub(crate) async fn move_entries(&self, entries: &[Entry]) -> Result<()> {
        let groups = self.fetch_records(entries).await?;
        let segment = SegmentId::random()?;
        let mut bytes = encode_segment(segment, self.options.format, &[])?.0;
        let mut moves: BTreeMap<u64, Vec<(Entry, Entry)>> = BTreeMap::new();
        for (idx, got) in groups {
            let Some(records) = got else { continue };
            for (i, record) in idx.into_iter().zip(records) {
                let e = &entries[i];
                if let Err(err) = e.decode(&record) {
                    tracing::warn!(error = %err, "compact leaves a damaged record in place");
                    continue;
                }
                let mut moved = e.clone();
                moved.segment = segment;
                moved.offset = bytes.len() as u64;
                bytes.extend_from_slice(&record);
                moves
                    .entry(page_of(e.meta.index))
                    .or_default()
                    .push((e.clone(), moved));
            }
        }
        if moves.is_empty() {
            return Ok(());
        }
        self.in_flight_mark(segment, true);
        let result = async {
            self.put(&segment.path(), bytes, PutMode::Overwrite).await?;
            for (number, items) in &moves {
                self.update_page(*number, |page| {
                    let mut next = page.clone();
                    let mut changed = false;
                    for (old, new) in items {
                        if let Some(e) = next.entries.get_mut(&old.meta.index)
                            && e == old
                        {
                            *e = new.clone();
                            changed = true;
                        }
                    }
                    Ok(changed.then_some(next))
                })
                .await?;
            }
            Ok(())
        }
        .await;
        self.in_flight_mark(segment, false);
        result
    }
}
