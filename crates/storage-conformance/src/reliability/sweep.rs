//! Corruption sweeps: damage a closed store's files at many offsets, reopen, and
//! read everything.
//!
//! For each of the target's settings, a store is built (single writes, batches,
//! deletes, a head) and closed, and its files are saved. Then, once per damage
//! point, the files are restored, one file is damaged (one bit flipped, or the file
//! truncated at that offset), the store is reopened on its own thread and every
//! view is read: count, stats, head, list, range, each block by hash, all blocks
//! at once. The sweep fails on:
//! - a wrong answer: a block, listed entry or head that the store never held,
//!   or a block under another hash or index;
//! - an error of any kind other than [`ErrorKind::Corrupted`] (opening included);
//! - a panic, or a hang (no answer within a minute);
//! - a silent loss: a stored block that the damaged store no longer finds
//!   (`Ok(None)`, or left out of a listing or range), unless opening, reading or
//!   [`verify_store`] reported the damage. Damage may cost blocks; it may never
//!   cost them quietly.
//!
//! Deleted blocks that come back are counted, not failed.
//!
//! Damage points per file and kind: `points` plus one per 16 KiB, spread evenly
//! with a random jitter, always including the first and last byte; and a cut at
//! every boundary the target names ([`DurableTarget::boundaries`]: record or page
//! starts). Set `OLOCUS_SWEEP_VERBOSE` to print what each damaged store answered.
//!
//! [`verify_store`]: storage_core::StorageBackendExt::verify_store

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use storage_core::{
    Block, BlockHash, BlockMetadata, ErrorKind, ListOptions, StorageBackend, StorageBackendExt,
    StorageError, VerifyOptions,
};

use super::{DurableTarget, Rng, runtime};
use crate::data;

/// The test's name within each target (`TARGET::corruption_sweep`).
pub const TEST_NAME: &str = "corruption_sweep";

/// Damaged copies tried at once.
const WORKERS: usize = 4;

/// How long one damaged store may take to open and be read.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a passing sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Settings swept (stores built).
    pub settings: u64,
    /// Files damaged (over all settings).
    pub files: u64,
    /// Reopens after a flipped bit.
    pub flips: u64,
    /// Reopens after a truncation.
    pub truncations: u64,
    /// Reopens refused with a `Corrupted` error.
    pub open_refused: u64,
    /// Block reads that returned the right block.
    pub reads_right: u64,
    /// Reads and views that failed with a `Corrupted` error.
    pub reads_corrupted: u64,
    /// Stored blocks a damaged store no longer found.
    pub reads_missing: u64,
    /// Deleted blocks a damaged store returned again.
    pub resurrected: u64,
    /// Damaged stores that lost blocks and said so when verified.
    pub verify_reported: u64,
}

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} settings, {} files, {} bit flips and {} truncations: {} opens refused \
             as corrupted; reads: {} right, {} corrupted, {} missing (every loss reported, \
             {} by verify), {} deleted blocks back, 0 wrong",
            self.settings,
            self.files,
            self.flips,
            self.truncations,
            self.open_refused,
            self.reads_right,
            self.reads_corrupted,
            self.reads_missing,
            self.verify_reported,
            self.resurrected
        )
    }
}

/// What the pristine store holds.
struct Pristine {
    /// Stored blocks by hash.
    present: HashMap<BlockHash, Block>,
    /// Stored then deleted.
    deleted: HashMap<BlockHash, Block>,
    head: BlockHash,
    /// Every file, relative to the store directory, with its bytes.
    files: Vec<(PathBuf, Vec<u8>)>,
}

/// Runs the sweep for `target` with `points` damage points per file and kind.
pub fn run_sweep(
    target: Arc<dyn DurableTarget>,
    points: usize,
    seed: u64,
) -> Result<SweepReport, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut rng = Rng(seed | 1);
    let mut report = SweepReport::default();
    let pristine_rt = runtime()?;
    for setting in 0..target.settings() {
        let dir = tmp.path().join(format!("store-{setting}"));
        let pristine = Arc::new(
            pristine_rt
                .block_on(build(target.as_ref(), &dir, setting))
                .map_err(|e| format!("setting {setting}: building the store: {e}"))?,
        );
        report.settings += 1;
        // Every damage point of every file, decided up front (so the seed alone
        // fixes them), then tried by a few workers in their own directories: a
        // damaged engine can spend most of an attempt waiting, not computing.
        let mut jobs = Vec::new();
        for (file_no, (rel, bytes)) in pristine.files.iter().enumerate() {
            if !target.damageable(rel) || bytes.is_empty() {
                continue;
            }
            report.files += 1;
            let len = bytes.len() as u64;
            let n = (points + bytes.len() / 16384).max(2) as u64;
            for flip in [true, false] {
                for k in 0..n {
                    let off = match k {
                        0 => 0,
                        k if k == n - 1 => len - 1,
                        k => (k * len / n + rng.below((len / n).max(1))).min(len - 1),
                    };
                    let damage = if flip {
                        Damage::FlipAt(off, 1 << rng.below(8))
                    } else {
                        Damage::TruncateAt(off)
                    };
                    jobs.push((file_no, damage));
                }
            }
            for off in target.boundaries(rel, bytes) {
                if off < len {
                    jobs.push((file_no, Damage::TruncateAt(off)));
                }
            }
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for worker in 0..WORKERS {
                let dir = tmp.path().join(format!("store-{setting}-{worker}"));
                let (target, pristine, jobs, next, results) =
                    (&target, &pristine, &jobs, &next, &results);
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(file_no, damage)) = jobs.get(i) else {
                            return;
                        };
                        let rel = &pristine.files[file_no].0;
                        let what = format!(
                            "setting {setting}, file {} ({file_no}), {damage}",
                            rel.display()
                        );
                        let outcome = restore(&dir, &pristine.files)
                            .and_then(|()| damage.apply(&dir.join(rel)))
                            .and_then(|()| attempt(target.clone(), &dir, setting, pristine.clone()))
                            .map_err(|e| format!("{what}: {e}"));
                        results
                            .lock()
                            .expect("results")
                            .push((what, damage, outcome));
                    }
                });
            }
        });
        let mut results = results.into_inner().expect("results");
        results.sort_by(|a, b| a.0.cmp(&b.0));
        // Every damage point is tried; the failures are reported together.
        let failures: Vec<&String> = results
            .iter()
            .filter_map(|(_, _, o)| o.as_ref().err())
            .collect();
        if !failures.is_empty() {
            let shown: Vec<&str> = failures.iter().take(5).map(|f| f.as_str()).collect();
            return Err(format!(
                "{} of {} damaged stores answered wrongly; the first {}:\n{}",
                failures.len(),
                results.len(),
                shown.len(),
                shown.join("\n")
            ));
        }
        for (what, damage, outcome) in results {
            let tally = outcome.expect("failures reported above");
            if std::env::var_os("OLOCUS_SWEEP_VERBOSE").is_some() {
                println!(
                    "{what}: refused {}, right {}, corrupted {}, missing {}, back {}",
                    tally.open_refused,
                    tally.right,
                    tally.corrupted,
                    tally.missing,
                    tally.resurrected,
                );
            }
            match damage {
                Damage::FlipAt(..) => report.flips += 1,
                Damage::TruncateAt(_) => report.truncations += 1,
            }
            report.open_refused += u64::from(tally.open_refused);
            report.reads_right += tally.right;
            report.reads_corrupted += tally.corrupted;
            report.reads_missing += tally.missing;
            report.resurrected += tally.resurrected;
            report.verify_reported += u64::from(tally.verify_reported);
        }
    }
    Ok(report)
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// XOR the byte at the offset with the mask.
    FlipAt(u64, u8),
    /// Cut the file to the offset.
    TruncateAt(u64),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::FlipAt(off, mask) => write!(f, "byte {off} XOR {mask:#04x}"),
            Damage::TruncateAt(off) => write!(f, "truncated to {off} bytes"),
        }
    }
}

impl Damage {
    fn apply(&self, path: &Path) -> Result<(), String> {
        let err = |e: std::io::Error| format!("damaging {}: {e}", path.display());
        match *self {
            Damage::FlipAt(off, mask) => {
                let mut bytes = std::fs::read(path).map_err(err)?;
                bytes[off as usize] ^= mask;
                std::fs::write(path, bytes).map_err(err)
            }
            Damage::TruncateAt(off) => std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(off))
                .map_err(err),
        }
    }
}

/// Builds the store to damage: 300 blocks of two signers and two payload types,
/// half their payload random (so compression cannot shrink the store to one
/// small file), stored one by one and then in batches; 15 of them deleted, the
/// head on the newest; closed, its files saved.
async fn build(target: &dyn DurableTarget, dir: &Path, setting: u64) -> Result<Pristine, String> {
    let e = |e: StorageError| e.to_string();
    let chain = sweep_chain(300);
    let store = target.open(dir, setting).await.map_err(e)?;
    for b in &chain[..100] {
        store.store_block(b).await.map_err(e)?;
    }
    for batch in chain[100..].chunks(35) {
        store.store_blocks(batch).await.map_err(e)?;
    }
    let mut present: HashMap<BlockHash, Block> =
        chain.iter().map(|b| (b.hash(), b.clone())).collect();
    let mut deleted = HashMap::new();
    for i in (3..300).step_by(20) {
        let h = chain[i].hash();
        store.delete_block(&h).await.map_err(e)?;
        deleted.insert(h, present.remove(&h).expect("stored"));
    }
    let head = chain[299].hash();
    store.set_chain_head(&head).await.map_err(e)?;
    store.close().await.map_err(e)?;
    drop(store);
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    Ok(Pristine {
        present,
        deleted,
        head,
        files,
    })
}

fn sweep_chain(len: u64) -> Vec<Block> {
    let keys = [data::signer(1), data::signer(2)];
    let mut rng = Rng(0x5eed);
    let mut out: Vec<Block> = Vec::new();
    for i in 0..len {
        let mut payload = vec![b'n'; 600];
        for b in &mut payload[..300] {
            *b = rng.next() as u8;
        }
        let ty = if i % 3 == 0 {
            "sweep.event/v1"
        } else {
            "sweep.reading/v1"
        };
        let block = Block::sign_raw(
            i,
            data::at(i * 1_000),
            out.last().map(Block::hash),
            ty,
            payload,
            &keys[(i % 2) as usize],
        )
        .expect("valid sweep block");
        out.push(block);
    }
    out
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> Result<(), String> {
    let err = |e: std::io::Error| format!("reading {}: {e}", dir.display());
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            let bytes = std::fs::read(&path).map_err(err)?;
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            out.push((rel, bytes));
        }
    }
    Ok(())
}

/// Puts the directory back exactly as the pristine store left it (files an
/// earlier attempt created, such as saved tails or new logs, are removed).
fn restore(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<(), String> {
    let err = |e: std::io::Error| format!("restoring {}: {e}", dir.display());
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(err)?;
    }
    for (rel, bytes) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        std::fs::write(&path, bytes).map_err(err)?;
    }
    std::fs::create_dir_all(dir).map_err(err)
}

#[derive(Default)]
struct Tally {
    open_refused: bool,
    right: u64,
    corrupted: u64,
    missing: u64,
    resurrected: u64,
    verify_reported: bool,
}

/// Opens and reads the damaged store on its own thread, so a panic or a hang in
/// the backend (or the engine under it) is caught and reported.
fn attempt(
    target: Arc<dyn DurableTarget>,
    dir: &Path,
    setting: u64,
    pristine: Arc<Pristine>,
) -> Result<Tally, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let rt = runtime()?;
            rt.block_on(read_all(target.as_ref(), &dir, setting, &pristine))
        }));
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(ATTEMPT_TIMEOUT) {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(format!(
            "the backend panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
        Err(_) => Err(format!(
            "no answer within {ATTEMPT_TIMEOUT:?} (hung); the thread is left behind"
        )),
    }
}

/// `Ok(Some(v))` for an answer, `Ok(None)` for a `Corrupted` error (counted), and
/// `Err` for any other error.
fn judge<T>(
    what: &str,
    result: Result<T, StorageError>,
    tally: &mut Tally,
) -> Result<Option<T>, String> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::Corrupted => {
            tally.corrupted += 1;
            Ok(None)
        }
        Err(e) => Err(format!(
            "{what} failed with a {:?} error, not Corrupted: {e}",
            e.kind()
        )),
    }
}

async fn read_all(
    target: &dyn DurableTarget,
    dir: &Path,
    setting: u64,
    p: &Pristine,
) -> Result<Tally, String> {
    let mut t = Tally::default();
    let Some(store) = judge("open", target.open(dir, setting).await, &mut t)? else {
        t.open_refused = true;
        return Ok(t);
    };
    let known = |h: &BlockHash| p.present.get(h).or_else(|| p.deleted.get(h));
    // Whether any view left out a stored block (without an error).
    let mut lost = Vec::new();
    judge("count", store.count_blocks().await, &mut t)?;
    judge("stats", store.get_stats().await, &mut t)?;
    if let Some(Some(h)) = judge("head", store.get_chain_head().await, &mut t)?
        && h != p.head
    {
        return Err(format!("head is {h}, which was never the head"));
    }
    if let Some(listed) = judge(
        "list",
        store.list_blocks(&ListOptions::default()).await,
        &mut t,
    )? {
        for m in &listed {
            match known(&m.hash) {
                Some(b) if BlockMetadata::of(b) == *m => {}
                _ => return Err(format!("listed entry {m:?} is not one the store held")),
            }
        }
        let seen: std::collections::HashSet<BlockHash> = listed.iter().map(|m| m.hash).collect();
        lost.extend(
            p.present
                .keys()
                .filter(|h| !seen.contains(h))
                .map(|h| ("list", *h)),
        );
    }
    if let Some(blocks) = judge(
        "range",
        store.get_blocks_by_range(0, storage_core::MAX_INDEX).await,
        &mut t,
    )? {
        let mut last = None;
        let seen: std::collections::HashSet<BlockHash> = blocks.iter().map(Block::hash).collect();
        lost.extend(
            p.present
                .keys()
                .filter(|h| !seen.contains(h))
                .map(|h| ("range", *h)),
        );
        for b in blocks {
            if known(&b.hash()).is_none() || last >= Some(b.index()) {
                return Err(format!(
                    "range returned block {} ({}), not one the store held in order",
                    b.index(),
                    b.hash()
                ));
            }
            last = Some(b.index());
        }
    }
    let all: Vec<BlockHash> = p.present.keys().chain(p.deleted.keys()).copied().collect();
    if let Some(got) = judge("retrieve_blocks", store.retrieve_blocks(&all).await, &mut t)? {
        for (h, b) in all.iter().zip(got) {
            if let Some(b) = b
                && b.hash() != *h
            {
                return Err(format!("retrieve_blocks({h}) returned block {}", b.hash()));
            }
        }
    }
    for h in &all {
        let deleted = p.deleted.contains_key(h);
        if let Some(got) = judge("retrieve", store.retrieve_block(h).await, &mut t)? {
            match got {
                Some(b) if b.hash() != *h || b.index() != known(h).expect("known").index() => {
                    return Err(format!("retrieve({h}) returned block {}", b.hash()));
                }
                Some(_) if deleted => t.resurrected += 1,
                Some(_) => t.right += 1,
                None if deleted => {}
                None => {
                    t.missing += 1;
                    lost.push(("retrieve", *h));
                }
            }
        }
    }
    if !lost.is_empty() {
        // Blocks are gone: acceptable only if the store says it is damaged.
        let verified = store
            .verify_store(&VerifyOptions::default().allow_gaps(true), &mut |_| {})
            .await;
        match verified {
            Err(e) if matches!(e.kind(), ErrorKind::Corrupted | ErrorKind::Verification) => {
                t.verify_reported = true;
            }
            other => {
                let (view, h) = lost[0];
                let index = known(&h).expect("known").index();
                return Err(format!(
                    "silent loss: {} stored blocks are gone (first: #{index} {h}, left out \
                     by {view}), yet no read failed and verify_store answered {:?}",
                    lost.iter()
                        .map(|l| l.1)
                        .collect::<std::collections::HashSet<_>>()
                        .len(),
                    other.map(|_| "ok")
                ));
            }
        }
    }
    judge("close", store.close().await, &mut t)?;
    Ok(t)
}
