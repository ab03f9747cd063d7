//! Repair: the queue of writes a copy missed, and anti-entropy across copies.

use super::*;

impl StorageManager {
    /// Writes waiting to be replayed on copies that missed them.
    pub fn pending_repairs(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Replays queued writes; those that fail again stay queued. Returns how many
    /// were applied.
    pub async fn process_repairs(&self) -> usize {
        let items: Vec<(usize, RepairOp)> = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        let mut applied = 0;
        for (i, op) in items {
            if self.shared.apply(i, &op).await.is_ok() {
                applied += 1;
            } else {
                self.shared.enqueue(i, op);
            }
        }
        applied
    }

    /// Anti-entropy: replays the queue, then lists every copy and copies each
    /// block a copy lacks from a copy that has it, then aligns heads with the
    /// primary. Indices where copies disagree are reported, not overwritten.
    pub async fn repair(&self) -> Result<RepairReport> {
        let _writes = self.shared.write_lock.lock().await;
        let mut report = RepairReport {
            replayed: self.process_repairs().await,
            copied: vec![0; self.shared.copies.len()],
            ..RepairReport::default()
        };
        let tombstones = self
            .shared
            .tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let timeout = self.shared.config.replica_timeout;
        // index -> hash -> copies holding it
        let mut holders: BTreeMap<u64, BTreeMap<BlockHash, Vec<usize>>> = BTreeMap::new();
        let mut listed = vec![false; self.shared.copies.len()];
        for (i, copy) in self.shared.copies.iter().enumerate() {
            match with_timeout(
                timeout * 4,
                "list_blocks",
                copy.backend.list_blocks(&ListOptions::default()),
            )
            .await
            {
                Ok(metas) => {
                    listed[i] = true;
                    for m in metas {
                        holders
                            .entry(m.index)
                            .or_default()
                            .entry(m.hash)
                            .or_default()
                            .push(i);
                    }
                }
                Err(e) => report
                    .issues
                    .push(format!("{}: cannot list: {e}", copy.name)),
            }
        }
        // Per target copy, the blocks it lacks.
        let mut wanted: Vec<Vec<(BlockHash, usize)>> = vec![Vec::new(); self.shared.copies.len()];
        for (index, by_hash) in &holders {
            if by_hash.len() > 1 {
                report.conflicts.push(*index);
                continue;
            }
            let (hash, have) = by_hash.iter().next().expect("non-empty");
            if tombstones.contains(hash) {
                for &i in have {
                    let copy = &self.shared.copies[i];
                    if let Err(e) =
                        with_timeout(timeout, "delete_block", copy.backend.delete_block(hash)).await
                    {
                        report
                            .issues
                            .push(format!("{}: cannot delete {hash}: {e}", copy.name));
                    }
                }
                continue;
            }
            for (i, _) in listed
                .iter()
                .enumerate()
                .filter(|(i, ok)| **ok && !have.contains(i))
            {
                wanted[i].push((*hash, have[0]));
            }
        }
        for (target, want) in wanted.into_iter().enumerate() {
            for chunk in want.chunks(256) {
                let mut blocks = Vec::with_capacity(chunk.len());
                for (hash, source) in chunk {
                    let src = &self.shared.copies[*source];
                    match with_timeout(timeout, "retrieve_block", src.backend.retrieve_block(hash))
                        .await
                    {
                        Ok(Some(b)) => blocks.push(b),
                        Ok(None) => {}
                        Err(e) => report
                            .issues
                            .push(format!("{}: cannot read {hash}: {e}", src.name)),
                    }
                }
                let dst = &self.shared.copies[target];
                match with_timeout(
                    timeout * 4,
                    "store_blocks",
                    dst.backend.store_blocks(&blocks),
                )
                .await
                {
                    Ok(_) => report.copied[target] += blocks.len() as u64,
                    Err(e) => report
                        .issues
                        .push(format!("{}: cannot store: {e}", dst.name)),
                }
            }
        }
        // Heads follow the primary.
        if let Ok(Some(head)) = with_timeout(
            timeout,
            "get_chain_head",
            self.shared.copies[0].backend.get_chain_head(),
        )
        .await
        {
            for copy in &self.shared.copies[1..] {
                let theirs =
                    with_timeout(timeout, "get_chain_head", copy.backend.get_chain_head()).await;
                if matches!(theirs, Ok(h) if h != Some(head)) {
                    match with_timeout(
                        timeout,
                        "set_chain_head",
                        copy.backend.set_chain_head(&head),
                    )
                    .await
                    {
                        Ok(()) => report.heads_aligned += 1,
                        Err(e) => report
                            .issues
                            .push(format!("{}: cannot set head: {e}", copy.name)),
                    }
                }
            }
        }
        Ok(report)
    }
}

impl Shared {
    pub(crate) fn enqueue(&self, copy: usize, op: RepairOp) {
        let op = match op {
            // A late store of a block deleted since must not be replayed.
            RepairOp::Store(blocks) => {
                let dead = self
                    .tombstones
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let live: Vec<Block> = blocks
                    .into_iter()
                    .filter(|b| !dead.contains(&b.hash()))
                    .collect();
                if live.is_empty() {
                    return;
                }
                RepairOp::Store(live)
            }
            other => other,
        };
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((copy, op));
    }

    /// Records a delete: tombstone, and no queued store of the block survives.
    pub(crate) fn bury(&self, hash: &BlockHash) {
        self.tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(*hash);
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, op) in queue.iter_mut() {
            if let RepairOp::Store(blocks) = op {
                blocks.retain(|b| b.hash() != *hash);
            }
        }
        queue.retain(|(_, op)| !matches!(op, RepairOp::Store(b) if b.is_empty()));
    }

    /// Storing a block again lifts its tombstone.
    pub(crate) fn revive(&self, blocks: &[Block]) {
        let mut dead = self
            .tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !dead.is_empty() {
            for b in blocks {
                dead.remove(&b.hash());
            }
        }
    }

    pub(crate) async fn apply(&self, copy: usize, op: &RepairOp) -> Result<()> {
        let backend = &self.copies[copy].backend;
        let t = self.config.replica_timeout;
        match op {
            RepairOp::Store(blocks) => {
                with_timeout(t, "store_blocks", backend.store_blocks(blocks))
                    .await
                    .map(drop)
            }
            RepairOp::Delete(h) => with_timeout(t, "delete_block", backend.delete_block(h))
                .await
                .map(drop),
            RepairOp::Head(h) => with_timeout(t, "set_chain_head", backend.set_chain_head(h)).await,
        }
    }
}
