//! Simulated power loss: the store runs on `SimVfs` with synced writes, a fixed
//! workload (single writes, batches, head moves, deletes, a compaction, a reopen)
//! is run once to count its disk operations, and then once per cut point with the
//! power failing at that operation. The filesystem a restart would find (only
//! what was synced: file contents and directory entries) is reopened and checked:
//! - it opens without any repair;
//! - every acknowledged block is there, byte-identical, and verifies; every
//!   acknowledged delete holds; the interrupted step is all or nothing;
//! - the head is the last acknowledged one or the interrupted step's;
//! - count, list, range and stats agree, nothing appears that was never written;
//! - the store takes a new write and reads it back.
//!
//! Each cut point runs twice: once dropping every unsynced write, once keeping a
//! random prefix of the unsynced appends (a torn write). A second test cuts the
//! power again at every disk operation of the recovery that follows.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use storage_core::{
    Block, BlockHash, CompressionType, ListOptions, MAX_INDEX, SigningKey, StorageBackend,
    StorageError,
};
use storage_fs::io::SimVfs;
use storage_fs::{Durability, FilesystemBackend, FsConfig};

fn config() -> FsConfig {
    FsConfig::new("/sim/store")
        .compression(CompressionType::Lz4)
        .durability(Durability::Sync)
        .segment_size(64 << 10)
        .max_payload_bytes(storage_core::MAX_PAYLOAD_BYTES)
        .execution(Default::default())
        .mode(Default::default())
}

/// 121 linked blocks with 1.5 KiB payloads (half random, so segments fill up);
/// the workload uses the first 120.
fn blocks() -> Vec<Block> {
    let key = SigningKey::from_bytes(&[5; 32]);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut out: Vec<Block> = Vec::new();
    for i in 0..121u64 {
        let mut payload = vec![b'p'; 1536];
        for b in &mut payload[..768] {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i);
        let prev = out.last().map(Block::hash);
        out.push(Block::sign_raw(i, t, prev, "power.test/v1", payload, &key).expect("sign"));
    }
    out
}

#[derive(Debug, Clone)]
enum Step {
    Put(Block),
    Batch(Vec<Block>),
    Head(BlockHash),
    Delete(BlockHash),
    Compact,
    Reopen,
}

fn workload(blocks: &[Block]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut at = 0;
    for round in 0..6 {
        for _ in 0..4 {
            steps.push(Step::Put(blocks[at].clone()));
            steps.push(Step::Head(blocks[at].hash()));
            at += 1;
        }
        steps.push(Step::Batch(blocks[at..at + 16].to_vec()));
        at += 16;
        steps.push(Step::Delete(blocks[at - 10].hash()));
        steps.push(Step::Delete(blocks[at - 20].hash()));
        match round {
            2 => steps.push(Step::Compact),
            3 => steps.push(Step::Reopen),
            _ => {}
        }
    }
    steps
}

#[derive(Default, Clone)]
struct Model {
    present: HashSet<BlockHash>,
    deleted: HashSet<BlockHash>,
    head: Option<BlockHash>,
}

/// Runs the workload until it finishes or a step fails; returns the model of
/// acknowledged steps and the step in flight when the power went.
async fn run(vfs: &SimVfs, steps: &[Step]) -> (Model, Option<Step>) {
    let mut model = Model::default();
    let open = || FilesystemBackend::open_on(config(), Arc::new(vfs.clone()));
    let mut store = match open() {
        Ok(s) => s,
        Err(_) => return (model, None),
    };
    for step in steps {
        let done: Result<(), StorageError> = match step {
            Step::Put(b) => store.store_block(b).await.map(|_| ()),
            Step::Batch(bs) => store.store_blocks(bs).await.map(|_| ()),
            Step::Head(h) => store.set_chain_head(h).await,
            Step::Delete(h) => store.delete_block(h).await.map(|_| ()),
            Step::Compact => store.compact().await,
            Step::Reopen => match store.close().await {
                Ok(()) => {
                    drop(store);
                    match open() {
                        Ok(s) => {
                            store = s;
                            Ok(())
                        }
                        // The power went while reopening.
                        Err(_) => return (model, Some(step.clone())),
                    }
                }
                Err(e) => Err(e),
            },
        };
        if done.is_err() {
            let _ = store.close().await;
            return (model, Some(step.clone()));
        }
        match step {
            Step::Put(b) => {
                model.present.insert(b.hash());
            }
            Step::Batch(bs) => model.present.extend(bs.iter().map(Block::hash)),
            Step::Head(h) => model.head = Some(*h),
            Step::Delete(h) => {
                model.present.remove(h);
                model.deleted.insert(*h);
                if model.head == Some(*h) {
                    model.head = None;
                }
            }
            Step::Compact | Step::Reopen => {}
        }
    }
    let _ = store.close().await;
    (model, None)
}

async fn check(
    store: &FilesystemBackend,
    model: &Model,
    in_flight: Option<&Step>,
    written: &HashSet<BlockHash>,
) -> Result<(), String> {
    let e = |e: StorageError| e.to_string();
    let mut present = model.present.clone();
    let mut deleted = model.deleted.clone();
    let mut heads = vec![model.head];
    match in_flight {
        Some(Step::Put(b)) => {
            if store.block_exists(&b.hash()).await.map_err(e)? {
                present.insert(b.hash());
            }
        }
        Some(Step::Batch(bs)) => {
            let mut there = Vec::new();
            for b in bs {
                there.push(store.block_exists(&b.hash()).await.map_err(e)?);
            }
            if there.iter().any(|t| *t) != there.iter().all(|t| *t) {
                return Err(format!("interrupted batch is half there: {there:?}"));
            }
        }
        Some(Step::Head(h)) => heads.push(Some(*h)),
        Some(Step::Delete(h)) => {
            if !store.block_exists(h).await.map_err(e)? {
                present.remove(h);
                deleted.insert(*h);
                if model.head == Some(*h) {
                    heads.push(None);
                }
            }
        }
        Some(Step::Compact | Step::Reopen) | None => {}
    }
    for h in &present {
        match store.retrieve_block(h).await.map_err(e)? {
            None => return Err(format!("acknowledged block {h} is lost")),
            Some(b) if b.hash() != *h => return Err(format!("{h} came back as {}", b.hash())),
            Some(b) => b.verify_signature().map_err(e)?,
        }
    }
    for h in &deleted {
        if store.block_exists(h).await.map_err(e)? {
            return Err(format!("acknowledged delete of {h} was undone"));
        }
    }
    let head = store.get_chain_head().await.map_err(e)?;
    if !heads.contains(&head) {
        return Err(format!("head {head:?}, expected one of {heads:?}"));
    }
    let listed = store
        .list_blocks(&ListOptions::default())
        .await
        .map_err(e)?;
    let ranged = store.get_blocks_by_range(0, MAX_INDEX).await.map_err(e)?;
    let count = store.count_blocks().await.map_err(e)?;
    let stats = store.get_stats().await.map_err(e)?;
    if listed.len() as u64 != count || ranged.len() as u64 != count || stats.total_blocks != count {
        return Err(format!(
            "count {count}, list {}, range {}, stats {} disagree",
            listed.len(),
            ranged.len(),
            stats.total_blocks
        ));
    }
    for (m, b) in listed.iter().zip(&ranged) {
        if m.hash != b.hash() || !written.contains(&m.hash) {
            return Err(format!("block {} is not one that was written", m.index));
        }
        b.verify_signature().map_err(e)?;
    }
    Ok(())
}

/// What both tests start from: a runtime, the blocks, the workload, every block
/// it writes, and the model and disk operations of a run without a cut.
struct Setup {
    rt: tokio::runtime::Runtime,
    blocks: Vec<Block>,
    steps: Vec<Step>,
    written: HashSet<BlockHash>,
    model: Model,
    total: u64,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let blocks = blocks();
    let steps = workload(&blocks);
    let written = blocks.iter().map(Block::hash).collect();
    let full = SimVfs::new();
    let (model, in_flight) = rt.block_on(run(&full, &steps));
    assert!(in_flight.is_none(), "the workload fails without a cut");
    let total = full.operations();
    assert!(total > 100, "only {total} disk operations");
    Setup {
        rt,
        blocks,
        steps,
        written,
        model,
        total,
    }
}

#[test]
fn acknowledged_synced_writes_survive_every_cut_point() {
    let Setup {
        rt,
        blocks,
        steps,
        written,
        model,
        total,
    } = setup();
    let extra = blocks[120].clone(); // never part of the workload

    let mut cuts = 0;
    let mut acknowledged = 0;
    for cut in 1..=total + 1 {
        for torn in [None, Some(cut)] {
            let vfs = SimVfs::new();
            vfs.cut_power_at(cut);
            let (model, in_flight) = rt.block_on(run(&vfs, &steps));
            acknowledged += model.present.len();
            let after = vfs.power_loss(torn);
            let outcome = rt.block_on(async {
                let store = FilesystemBackend::open_on(config(), Arc::new(after))
                    .map_err(|e| format!("reopening failed: {e}"))?;
                check(&store, &model, in_flight.as_ref(), &written).await?;
                // Still a working store.
                store.store_block(&extra).await.map_err(|e| e.to_string())?;
                let back = store.retrieve_block(&extra.hash()).await;
                if !matches!(back, Ok(Some(ref b)) if b.hash() == extra.hash()) {
                    return Err(format!("a write after recovery reads back as {back:?}"));
                }
                store.close().await.map_err(|e| e.to_string())
            });
            if let Err(e) = outcome {
                panic!(
                    "power cut at disk operation {cut} of {total} (torn: {torn:?}, in flight: \
                     {:?}): {e}",
                    in_flight.map(|s| match s {
                        Step::Put(b) => format!("put {}", b.index()),
                        Step::Batch(bs) => format!("batch from {}", bs[0].index()),
                        other => format!("{other:?}").chars().take(20).collect(),
                    })
                );
            }
            cuts += 1;
        }
    }
    println!(
        "power loss: {cuts} cuts over {total} disk operations, {acknowledged} acknowledged \
         blocks checked, 0 lost; the full run left {} blocks",
        model.present.len()
    );
}

/// Recovery writes too (cutting torn tails, writing missing index files): a
/// second power cut at any of its disk operations must leave a store that still
/// opens with every acknowledged write.
#[test]
fn recovery_survives_a_second_power_cut() {
    let Setup {
        rt,
        steps,
        written,
        total,
        ..
    } = setup();
    let (mut second_cuts, mut with_recovery_writes) = (0, 0);
    for cut in 1..=total {
        let vfs = SimVfs::new();
        vfs.cut_power_at(cut);
        let (model, in_flight) = rt.block_on(run(&vfs, &steps));
        // Torn, so recovery has tails to cut.
        let first = vfs.power_loss(Some(cut));
        // How many disk operations a clean recovery of this image does.
        let probe = first.power_loss(None);
        drop(FilesystemBackend::open_on(config(), Arc::new(probe.clone())).expect("recovery"));
        let recovery_ops = probe.operations();
        with_recovery_writes += u64::from(recovery_ops > 0);
        for k in 1..=recovery_ops {
            let again = first.power_loss(None);
            again.cut_power_at(k);
            // The open may fail: the power went during it.
            drop(FilesystemBackend::open_on(
                config(),
                Arc::new(again.clone()),
            ));
            let after = again.power_loss(Some(k));
            let outcome = rt.block_on(async {
                let store = FilesystemBackend::open_on(config(), Arc::new(after))
                    .map_err(|e| format!("reopening failed: {e}"))?;
                check(&store, &model, in_flight.as_ref(), &written).await?;
                store.close().await.map_err(|e| e.to_string())
            });
            if let Err(e) = outcome {
                panic!(
                    "power cut at disk operation {cut} of {total}, then at operation {k} of \
                     the {recovery_ops} of recovery: {e}"
                );
            }
            second_cuts += 1;
        }
    }
    println!(
        "second power cuts: {second_cuts} during the recoveries of {with_recovery_writes} \
         of {total} first cuts"
    );
}
