//! Fan-out: writes to every copy under per-copy timeouts, acknowledged at the
//! consistency level; reads with failover; maintenance on every copy.

use super::*;

impl StorageManager {
    /// Sends one write to every copy and waits for the consistency level (or, with
    /// `sync_writes`, for every outcome). Failed copies get `repair` queued.
    pub(crate) async fn fan_out<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl Fn(Arc<dyn StorageBackend>) -> OpFuture<T>,
        repair: RepairOp,
    ) -> Result<T> {
        self.check_open()?;
        let _serialised = self.shared.write_lock.lock().await;
        let n = self.shared.copies.len();
        let required = self.required_acks();
        let timeout = self.shared.config.replica_timeout;
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (i, copy) in self.shared.copies.iter().enumerate() {
            let fut = call(copy.backend.clone());
            let (tx, shared, repair) = (tx.clone(), self.shared.clone(), repair.clone());
            // Spawned, so stragglers finish (and queue their repair) after we return.
            tokio::spawn(async move {
                let r = with_timeout(timeout, op, fut).await;
                if let Err(e) = &r
                    && e.status() != ErrorStatus::Permanent
                {
                    shared.enqueue(i, repair);
                }
                // Let go of the copies before reporting: a caller that drops the
                // manager once the write returns must really release them (a
                // RocksDB copy keeps its lock until its last handle is gone).
                drop(shared);
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        let mut ok: Option<(usize, T)> = None;
        let (mut successes, mut errors) = (0usize, Vec::new());
        while let Some((i, r)) = rx.recv().await {
            match r {
                Ok(v) => {
                    successes += 1;
                    // Prefer the primary's answer.
                    if ok.as_ref().is_none_or(|(j, _)| i < *j) {
                        ok = Some((i, v));
                    }
                }
                Err(e) => errors.push((i, e)),
            }
            // A failing write still waits for every outcome (each bounded by the
            // timeout) so the error reports exactly how many copies acknowledged.
            let met = successes >= required;
            let all_in = successes + errors.len() == n;
            if (met && !self.shared.config.sync_writes) || all_in {
                break;
            }
        }
        if successes >= required {
            return Ok(ok.expect("a success was recorded").1);
        }
        errors.sort_by_key(|(i, _)| *i);
        let refused = errors
            .iter()
            .position(|(_, e)| e.status() == ErrorStatus::Permanent);
        match refused {
            Some(p) => Err(errors.swap_remove(p).1),
            None => Err(StorageError::InsufficientReplicas {
                required,
                successful: successes,
            }),
        }
    }

    /// A store: lifts tombstones of the blocks, then fans out.
    pub(crate) async fn store_fan_out<T: Send + 'static>(
        &self,
        op: &'static str,
        blocks: &[Block],
        call: impl Fn(Arc<dyn StorageBackend>) -> OpFuture<T>,
        repair: RepairOp,
    ) -> Result<T> {
        self.check_open()?;
        self.shared.revive(blocks);
        self.fan_out(op, call, repair).await
    }

    /// Runs a read on the primary, failing over to healthy replicas when allowed.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl Fn(Arc<dyn StorageBackend>) -> OpFuture<T>,
    ) -> Result<T> {
        self.check_open()?;
        let timeout = self.shared.config.replica_timeout;
        let failover = self.shared.config.auto_failover;
        // Healthy copies first (primary first among them); copies marked unhealthy
        // only as a last resort. Without failover, only the primary.
        let copies = &self.shared.copies;
        let order: Vec<usize> = if failover {
            let (well, ill): (Vec<usize>, Vec<usize>) =
                (0..copies.len()).partition(|&i| copies[i].healthy.load(SeqCst));
            well.into_iter().chain(ill).collect()
        } else {
            vec![0]
        };
        let mut last = None;
        for i in order {
            let copy = &copies[i];
            match with_timeout(timeout, op, call(copy.backend.clone())).await {
                Ok(v) => return Ok(v),
                Err(e) if failover && worth_failing_over(&e) => {
                    // A damaged block is not a sick copy; an unreachable one is.
                    if e.kind() != ErrorKind::Corrupted {
                        copy.healthy.store(false, SeqCst);
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StorageError::InsufficientReplicas {
            required: 1,
            successful: 0,
        }))
    }

    /// Maintenance on every copy; the first failure (after trying all) is returned.
    pub(crate) async fn on_every_copy(
        &self,
        op: &'static str,
        call: impl Fn(Arc<dyn StorageBackend>) -> OpFuture<()>,
    ) -> Result<()> {
        self.check_open()?;
        let _writes = self.shared.write_lock.lock().await;
        let timeout = self.shared.config.replica_timeout * 10;
        let mut first_err = None;
        for copy in &self.shared.copies {
            if let Err(e) = with_timeout(timeout, op, call(copy.backend.clone())).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

pub(crate) fn worth_failing_over(e: &StorageError) -> bool {
    e.status() != ErrorStatus::Permanent || matches!(e.kind(), ErrorKind::Corrupted | ErrorKind::Io)
}

pub(crate) async fn with_timeout<T>(
    limit: Duration,
    op: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    // On the blocking pool, so that the timeout fires even while a disk-backed
    // copy is stuck in a blocking call (inline, it would hold this worker).
    tokio::time::timeout(limit, Execution::BlockingPool.scope(fut))
        .await
        .unwrap_or_else(|_| {
            Err(StorageError::Timeout {
                operation: op.to_string(),
                after: limit,
            })
        })
}

/// Runs the futures concurrently (one task each) and collects their outputs in order.
pub(crate) async fn join_all_spawned<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("health check task panicked"));
    }
    out
}
