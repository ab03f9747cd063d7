//! SIGKILL crash cycles.
//!
//! A child process (the test binary itself, started again with a marker argument)
//! opens the store and ingests blocks: single writes with head moves, batches,
//! deletes of older blocks and the odd compaction or vacuum. It reports each step on stdout
//! before it starts it (`op ...`) and as soon as it is acknowledged (`ack ...`).
//! The parent kills it with SIGKILL at a random moment, reopens the store and
//! checks that:
//! - the store opens without any manual repair;
//! - every acknowledged block is present, byte-identical (same hash) and verifies,
//!   and every acknowledged delete holds;
//! - the interrupted step is all or nothing (a batch is wholly there or absent,
//!   for backends with atomic batches);
//! - no block appears that no child started to write;
//! - the head is the last acknowledged one or the interrupted step's, and stored;
//! - count, list, range and stats agree, and every listed block verifies.
//!
//! Most kills land while the child writes; one cycle in eight kills at a random
//! moment after the spawn, so opening and recovery get interrupted too. The
//! settings rotate with the cycle (see [`DurableTarget::open`]).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use storage_core::{Block, BlockHash, ListOptions, SigningKey, StorageBackend, StorageError};

use super::{CHILD_ARG, DurableTarget, Rng, runtime};

/// The test's name within each target (`TARGET::sigkill_crash_cycles`).
pub const TEST_NAME: &str = "sigkill_crash_cycles";

/// What a passing run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Child processes killed and recovered from.
    pub cycles: u64,
    /// Steps the children acknowledged (puts, batches, deletes, head moves, compactions).
    pub acknowledged_steps: u64,
    /// Blocks acknowledged over the whole run (batches count each block).
    pub acknowledged_blocks: u64,
    /// Blocks present at the end.
    pub blocks_present: u64,
    /// Cycles whose interrupted step turned out to have happened.
    pub in_flight_applied: u64,
    /// Acknowledged blocks found missing: always 0 in a report (a loss fails the run).
    pub lost: u64,
}

impl std::fmt::Display for CrashReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cycles, {} acknowledged steps, {} acknowledged blocks, {} lost, \
             {} blocks present, {} interrupted steps found applied",
            self.cycles,
            self.acknowledged_steps,
            self.acknowledged_blocks,
            self.lost,
            self.blocks_present,
            self.in_flight_applied
        )
    }
}

// ---------------------------------------------------------------------------
// Child: ingest until killed.
// ---------------------------------------------------------------------------

pub(super) fn child(target: &dyn DurableTarget, dir: &Path, cycle: u64, seed: u64) {
    let rt = runtime().expect("runtime");
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        writeln!(o, "{line}").expect("stdout");
        o.flush().expect("flush");
    };
    rt.block_on(async {
        let store = target
            .open(dir, cycle % target.settings())
            .await
            .expect("child open");
        say("ready".into());
        let key = SigningKey::from_bytes(&[42; 32]);
        let mut rng = Rng(seed | 1);
        let all = store
            .list_blocks(&ListOptions::default())
            .await
            .expect("list");
        let mut known: Vec<BlockHash> = all.iter().map(|m| m.hash).collect();
        let mut prev: Option<Block> = match all.last() {
            Some(m) => store.retrieve_block(&m.hash).await.expect("retrieve"),
            None => None,
        };
        let make = |prev: &Option<Block>, rng: &mut Rng| -> Block {
            let mut payload = vec![0u8; 600 + rng.below(100) as usize];
            for b in payload.iter_mut() {
                *b = rng.next() as u8;
            }
            let now = SystemTime::now();
            match prev {
                None => Block::sign_raw(0, now, None, "crash.test/v1", payload, &key),
                Some(p) => Block::sign_raw(
                    p.index() + 1,
                    now.max(p.timestamp()),
                    Some(p.hash()),
                    "crash.test/v1",
                    payload,
                    &key,
                ),
            }
            .expect("sign")
        };
        loop {
            let roll = rng.below(100);
            if roll < 55 {
                let b = make(&prev, &mut rng);
                say(format!("op put {}", b.hash()));
                store.store_block(&b).await.expect("store");
                say(format!("ack put {}", b.hash()));
                say(format!("op head {}", b.hash()));
                store.set_chain_head(&b.hash()).await.expect("head");
                say(format!("ack head {}", b.hash()));
                known.push(b.hash());
                prev = Some(b);
            } else if roll < 85 {
                let n = 2 + rng.below(40);
                let mut batch = Vec::new();
                for _ in 0..n {
                    let b = make(&prev, &mut rng);
                    prev = Some(b.clone());
                    batch.push(b);
                }
                let list = batch
                    .iter()
                    .map(|b| b.hash().to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                say(format!("op batch {list}"));
                store.store_blocks(&batch).await.expect("batch");
                say(format!("ack batch {list}"));
                known.extend(batch.iter().map(Block::hash));
            } else if roll < 98 {
                // Delete an older block, never the newest: the chain goes on from
                // it, after a restart too (`known` stays in index order).
                if known.len() > 2 {
                    let at = rng.below(known.len() as u64 - 1) as usize;
                    let h = known.remove(at);
                    say(format!("op del {h}"));
                    store.delete_block(&h).await.expect("delete");
                    say(format!("ack del {h}"));
                }
            } else if roll < 99 {
                say("op compact".into());
                store.compact().await.expect("compact");
                say("ack compact".into());
            } else {
                say("op vacuum".into());
                match store.vacuum().await {
                    Err(e) if e.kind() == storage_core::ErrorKind::Unsupported => {}
                    other => other.expect("vacuum"),
                }
                say("ack vacuum".into());
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Parent: kill, reopen, check.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Model {
    /// Acknowledged (or found applied) and not deleted.
    present: HashSet<BlockHash>,
    /// Acknowledged deletes.
    deleted: HashSet<BlockHash>,
    /// Every block a child ever started to write.
    written: HashSet<BlockHash>,
    /// Blocks whose signature has been verified.
    verified: HashSet<BlockHash>,
    head: Option<BlockHash>,
}

fn parse_hashes(s: &str) -> Result<Vec<BlockHash>, String> {
    s.split(',')
        .map(|h| {
            h.parse()
                .map_err(|e| format!("bad hash {h:?} from child: {e}"))
        })
        .collect()
}

fn split_word(s: &str) -> (&str, &str) {
    let (a, b) = s.split_at(s.find(' ').unwrap_or(s.len()));
    (a, b.trim())
}

/// Runs `cycles` kill-and-recover cycles of `target` (named `name` in
/// [`super::reliability_main`]) in a fresh temp dir.
pub fn run_cycles(
    name: &str,
    target: &dyn DurableTarget,
    cycles: u64,
    seed: u64,
) -> Result<CrashReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_dir = dir.path().join("store");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut report = CrashReport::default();
    let rt = runtime()?;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .arg(CHILD_ARG)
            .arg(name)
            .arg(&store_dir)
            .arg(cycle.to_string())
            .arg(rng.next().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning the child: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = ready_tx.send(());
                } else {
                    lines.push(line);
                }
            }
            lines
        });
        let started = Instant::now();
        if rng.below(8) == 0 {
            // Anywhere: while opening, recovering or writing.
            std::thread::sleep(Duration::from_millis(rng.below(600)));
        } else {
            // Opening a store with a long history can take a while in debug builds.
            let _ = ready_rx.recv_timeout(Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(20 + rng.below(400)));
        }
        child.kill().map_err(|e| format!("kill: {e}"))?; // SIGKILL on Unix
        let status = child.wait().map_err(|e| e.to_string())?;
        let lines = reader.join().map_err(|_| "reader panicked")?;
        // Only our SIGKILL may end it: a child that failed on its own (its panic
        // is on stderr above) would make every later cycle test nothing.
        if std::os::unix::process::ExitStatusExt::signal(&status) != Some(9) {
            return Err(format!(
                "cycle {cycle}: the child ended by itself ({status}) after {} report lines",
                lines.len()
            ));
        }
        // Replay the report into the model; the last unacknowledged step is in
        // flight and may or may not have happened.
        let mut in_flight: Option<String> = None;
        for line in &lines {
            let (kind, rest) = split_word(line);
            match kind {
                "op" => {
                    let (what, arg) = split_word(rest);
                    if what == "put" || what == "batch" {
                        model.written.extend(parse_hashes(arg)?);
                    }
                    in_flight = Some(rest.to_string());
                }
                "ack" => {
                    report.acknowledged_steps += 1;
                    in_flight = None;
                    let (what, arg) = split_word(rest);
                    match what {
                        "put" | "batch" => {
                            for h in parse_hashes(arg)? {
                                report.acknowledged_blocks += 1;
                                model.present.insert(h);
                            }
                        }
                        "del" => {
                            let h = parse_hashes(arg)?[0];
                            model.present.remove(&h);
                            model.deleted.insert(h);
                            if model.head == Some(h) {
                                model.head = None;
                            }
                        }
                        "head" => model.head = Some(parse_hashes(arg)?[0]),
                        "compact" | "vacuum" => {}
                        other => return Err(format!("unknown ack {other:?}")),
                    }
                }
                _ => return Err(format!("unexpected child output {line:?}")),
            }
        }
        let context = |e: String| {
            format!(
                "{name} cycle {cycle} (killed after {:?}, {} report lines, in flight: {in_flight:?}): {e}",
                started.elapsed(),
                lines.len()
            )
        };
        rt.block_on(async {
            let store = target
                .open(&store_dir, (cycle + 1) % target.settings())
                .await
                .map_err(|e| format!("reopening after SIGKILL failed: {e}"))?;
            // An interrupted batch is checked as all-or-nothing where the
            // store says its batches are.
            let atomic = store.capabilities().atomic_batches;
            let applied = check(store.as_ref(), &mut model, in_flight.as_deref(), atomic).await?;
            report.in_flight_applied += u64::from(applied);
            store.close().await.map_err(|e| e.to_string())
        })
        .map_err(context)?;
        report.cycles += 1;
    }
    report.blocks_present = model.present.len() as u64;
    Ok(report)
}

/// Checks the reopened store against the model; returns whether the interrupted
/// step turned out to have happened.
async fn check(
    store: &dyn StorageBackend,
    model: &mut Model,
    in_flight: Option<&str>,
    atomic_batches: bool,
) -> Result<bool, String> {
    let e = |e: StorageError| e.to_string();
    let mut applied = false;
    let mut head_choices = vec![model.head];
    if let Some(step) = in_flight {
        let (what, arg) = split_word(step);
        match what {
            "put" | "batch" => {
                let hashes = parse_hashes(arg)?;
                let mut there = Vec::new();
                for h in &hashes {
                    there.push(store.block_exists(h).await.map_err(e)?);
                }
                if atomic_batches && there.iter().any(|t| *t) && !there.iter().all(|t| *t) {
                    return Err(format!(
                        "interrupted {what} is half there: {there:?} of {hashes:?}"
                    ));
                }
                applied = there.iter().any(|t| *t);
                for (h, t) in hashes.iter().zip(&there) {
                    if *t {
                        model.present.insert(*h);
                    }
                }
            }
            "del" => {
                let h = parse_hashes(arg)?[0];
                if !store.block_exists(&h).await.map_err(e)? {
                    applied = true;
                    model.present.remove(&h);
                    model.deleted.insert(h);
                    if model.head == Some(h) {
                        model.head = None;
                        head_choices.push(None);
                    }
                }
            }
            "head" => head_choices.push(Some(parse_hashes(arg)?[0])),
            "compact" | "vacuum" => {}
            other => return Err(format!("unknown step {other:?}")),
        }
    }
    let present: Vec<BlockHash> = model.present.iter().copied().collect();
    for hashes in present.chunks(512) {
        let got = store.retrieve_blocks(hashes).await.map_err(e)?;
        for (h, b) in hashes.iter().zip(got) {
            match b {
                None => return Err(format!("acknowledged block {h} is lost")),
                Some(b) if b.hash() != *h => {
                    return Err(format!("block {h} came back as {}", b.hash()));
                }
                // The hash covers message and signature: one verification per
                // hash proves every later copy with that hash too.
                Some(b) if !model.verified.contains(h) => {
                    b.verify_signature()
                        .map_err(|err| format!("block {h} does not verify: {err}"))?;
                    model.verified.insert(*h);
                }
                Some(_) => {}
            }
        }
    }
    for h in &model.deleted {
        if store.block_exists(h).await.map_err(e)? {
            return Err(format!("acknowledged delete of {h} was undone"));
        }
    }
    let head = store.get_chain_head().await.map_err(e)?;
    if !head_choices.contains(&head) {
        return Err(format!(
            "head is {head:?}, expected one of {head_choices:?}"
        ));
    }
    if let Some(h) = head
        && !store.block_exists(&h).await.map_err(e)?
    {
        return Err(format!("head {h} is not stored"));
    }
    if head != model.head {
        applied = true;
    }
    model.head = head;
    let listed = store
        .list_blocks(&ListOptions::new().ascending())
        .await
        .map_err(e)?;
    let count = store.count_blocks().await.map_err(e)?;
    let stats = store.get_stats().await.map_err(e)?;
    if listed.len() as u64 != count || stats.total_blocks != count {
        return Err(format!(
            "count {count}, list {}, stats {} disagree",
            listed.len(),
            stats.total_blocks
        ));
    }
    let ranged = store
        .get_blocks_by_range(0, storage_core::MAX_INDEX)
        .await
        .map_err(e)?;
    let listed_hashes: Vec<BlockHash> = listed.iter().map(|m| m.hash).collect();
    let ranged_hashes: Vec<BlockHash> = ranged.iter().map(Block::hash).collect();
    if listed_hashes != ranged_hashes {
        return Err("list and range disagree".into());
    }
    let by_hash: HashMap<BlockHash, &Block> = ranged.iter().map(|b| (b.hash(), b)).collect();
    let mut size = 0;
    for m in &listed {
        let b = by_hash[&m.hash];
        if !model.verified.contains(&m.hash) {
            b.verify_signature()
                .map_err(|err| format!("listed block {} does not verify: {err}", m.index))?;
        }
        if m.size_bytes != b.size_bytes() || m.timestamp != b.timestamp() || m.index != b.index() {
            return Err(format!(
                "metadata of block {} disagrees with the block",
                m.index
            ));
        }
        size += b.size_bytes();
    }
    if stats.total_size_bytes != size {
        return Err(format!(
            "stats say {} bytes, the blocks hold {size}",
            stats.total_size_bytes
        ));
    }
    if let Some(h) = listed_hashes.iter().find(|h| model.deleted.contains(h)) {
        return Err(format!("deleted block {h} is listed"));
    }
    if let Some(h) = listed_hashes.iter().find(|h| !model.written.contains(h)) {
        return Err(format!("block {h}, which no child wrote, is listed"));
    }
    // Blocks written but never acknowledged (the child was killed between the
    // write and its report) are legitimately present: adopt them.
    model.present.extend(listed_hashes);
    Ok(applied)
}
