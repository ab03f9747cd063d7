//! Crash test: a child process ingests blocks (single writes, batches, deletes,
//! head changes, the odd compaction) and reports each step before and after it is
//! acknowledged; the parent kills it with SIGKILL at a random moment, reopens the
//! store and checks that:
//! - the store opens without any repair;
//! - every acknowledged block is present and its signature verifies, and every
//!   acknowledged delete holds;
//! - the interrupted step is all or nothing (a batch is wholly there or absent);
//! - the head is the last acknowledged one or the interrupted step's;
//! - count, list, range and stats agree, and every listed block verifies.
//!
//! `OLOCUS_CRASH_CYCLES` (default 30) sets the cycles and `OLOCUS_CRASH_SEED` the
//! seed. The durability mode rotates per cycle: buffered with large segments,
//! synced with 64 KiB segments, periodic with 64 KiB segments.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use storage_core::{
    Block, BlockHash, CompressionType, ListOptions, SigningKey, SortOrder, StorageBackend,
};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

const TEST_NAME: &str = "sigkill_crash_cycles";

fn config(dir: &Path, mode: u64) -> FsConfig {
    let (durability, segment_size, compression) = match mode % 3 {
        0 => (Durability::Buffered, 100 << 20, CompressionType::None),
        1 => (Durability::Sync, 64 << 10, CompressionType::Lz4),
        _ => (
            Durability::Periodic(Duration::from_millis(10)),
            64 << 10,
            CompressionType::Zstd,
        ),
    };
    FsConfig {
        path: dir.to_path_buf(),
        compression,
        durability,
        segment_size,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic from the seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        let dir = Path::new(&args[at + 1]);
        let mode: u64 = args[at + 2].parse().expect("mode");
        let seed: u64 = args[at + 3].parse().expect("seed");
        child(dir, mode, seed);
        return ExitCode::SUCCESS;
    }
    // Enough of libtest's interface for `cargo test` and test runners.
    if args.iter().any(|a| a == "--list") {
        println!("{TEST_NAME}: test");
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| TEST_NAME.contains(f.as_str())) {
        println!("running 0 tests");
        return ExitCode::SUCCESS;
    }
    println!("running 1 test");
    match parent() {
        Ok(summary) => {
            println!("test {TEST_NAME} ... ok ({summary})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test {TEST_NAME} ... FAILED\n{e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Child: ingest until killed.
// ---------------------------------------------------------------------------

fn child(dir: &Path, mode: u64, seed: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = FilesystemBackend::open_async(config(dir, mode))
            .await
            .expect("child open");
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
        let out = std::io::stdout();
        let say = |line: String| {
            let mut o = out.lock();
            writeln!(o, "{line}").expect("stdout");
            o.flush().expect("flush");
        };
        let make = |prev: &Option<Block>, rng: &mut Rng| -> Block {
            let mut payload = vec![0u8; 600 + rng.below(100) as usize];
            for b in payload.iter_mut() {
                *b = rng.next() as u8;
            }
            let now = SystemTime::now();
            match prev {
                None => Block::sign_raw(0, now, None, "crash.test/v1", payload, &key),
                Some(p) => {
                    let ts = now.max(p.timestamp());
                    Block::sign_raw(
                        p.index() + 1,
                        ts,
                        Some(p.hash()),
                        "crash.test/v1",
                        payload,
                        &key,
                    )
                }
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
                    .collect::<Vec<_>>();
                say(format!("op batch {}", list.join(",")));
                store.store_blocks(&batch).await.expect("batch");
                say(format!("ack batch {}", list.join(",")));
                known.extend(batch.iter().map(Block::hash));
            } else if roll < 98 {
                // Delete an older block (never the newest, so the chain goes on).
                if known.len() > 2 {
                    let at = rng.below(known.len() as u64 - 1) as usize;
                    let h = known.swap_remove(at);
                    say(format!("op del {h}"));
                    store.delete_block(&h).await.expect("delete");
                    say(format!("ack del {h}"));
                }
            } else {
                say("op compact".into());
                store.compact().await.expect("compact");
                say("ack compact".into());
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Parent: kill, reopen, check.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Model {
    /// Acknowledged and not deleted.
    present: HashSet<BlockHash>,
    /// Acknowledged deletes.
    deleted: HashSet<BlockHash>,
    head: Option<BlockHash>,
}

fn parse_hashes(s: &str) -> Vec<BlockHash> {
    s.split(',')
        .map(|h| h.parse().expect("hash from child"))
        .collect()
}

fn parent() -> Result<String, String> {
    let cycles: u64 = std::env::var("OLOCUS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("OLOCUS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0de);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store_dir = dir.path().join("store");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let (mut acked_ops, mut truncations) = (0u64, 0u64);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .arg("--child")
            .arg(&store_dir)
            .arg(cycle.to_string())
            .arg(rng.next().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning the child: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        // Let it run long enough to open, recover and write, then kill it.
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        child.kill().map_err(|e| format!("kill: {e}"))?; // SIGKILL on Unix
        let status = child.wait().map_err(|e| e.to_string())?;
        let lines = reader.join().map_err(|_| "reader panicked")?;
        if status.success() {
            return Err(format!("cycle {cycle}: child exited by itself: {status}"));
        }
        // Replay the child's report into the model; the last unacknowledged step
        // is "in flight" and may or may not have happened.
        let mut in_flight: Option<String> = None;
        for line in &lines {
            let (kind, rest) = line.split_at(line.find(' ').unwrap_or(line.len()));
            let rest = rest.trim();
            match kind {
                "op" => in_flight = Some(rest.to_string()),
                "ack" => {
                    acked_ops += 1;
                    in_flight = None;
                    let (what, arg) = rest.split_at(rest.find(' ').unwrap_or(rest.len()));
                    let arg = arg.trim();
                    match what {
                        "put" | "batch" => {
                            for h in parse_hashes(arg) {
                                model.present.insert(h);
                            }
                        }
                        "del" => {
                            let h: BlockHash = arg.parse().map_err(|e| format!("{e}"))?;
                            model.present.remove(&h);
                            model.deleted.insert(h);
                            if model.head == Some(h) {
                                model.head = None;
                            }
                        }
                        "head" => model.head = Some(arg.parse().map_err(|e| format!("{e}"))?),
                        "compact" => {}
                        other => return Err(format!("unknown ack {other:?}")),
                    }
                }
                _ => return Err(format!("unexpected child output {line:?}")),
            }
        }
        let store = FilesystemBackend::open(config(&store_dir, cycle + 1))
            .map_err(|e| format!("cycle {cycle}: reopening after SIGKILL failed: {e}"))?;
        if store.recovery().truncated_bytes > 0 {
            truncations += 1;
        }
        rt.block_on(check(&store, &mut model, in_flight.as_deref()))
            .map_err(|e| {
                format!(
                    "cycle {cycle} (killed after {:?}, {} report lines, in flight: {in_flight:?}): {e}",
                    started.elapsed(),
                    lines.len()
                )
            })?;
        rt.block_on(store.close()).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "{cycles} cycles, {acked_ops} acknowledged steps, {} blocks present, 0 lost, \
         {truncations} torn tails cut",
        model.present.len()
    ))
}

async fn check(
    store: &FilesystemBackend,
    model: &mut Model,
    in_flight: Option<&str>,
) -> Result<(), String> {
    let e = |e: storage_core::StorageError| e.to_string();
    // The interrupted step: all or nothing, then fold it into the model.
    let mut head_choices = vec![model.head];
    if let Some(step) = in_flight {
        let (what, arg) = step.split_at(step.find(' ').unwrap_or(step.len()));
        let arg = arg.trim();
        match what {
            "put" | "batch" => {
                let hashes = parse_hashes(arg);
                let mut there = Vec::new();
                for h in &hashes {
                    there.push(store.block_exists(h).await.map_err(e)?);
                }
                if there.iter().any(|t| *t) && !there.iter().all(|t| *t) {
                    return Err(format!(
                        "interrupted {what} is half there: {there:?} of {hashes:?}"
                    ));
                }
                if there.first() == Some(&true) {
                    model.present.extend(hashes);
                }
            }
            "del" => {
                let h: BlockHash = arg.parse().map_err(|e| format!("{e}"))?;
                if !store.block_exists(&h).await.map_err(e)? {
                    model.present.remove(&h);
                    model.deleted.insert(h);
                    if model.head == Some(h) {
                        model.head = None;
                        head_choices.push(None);
                    }
                }
            }
            "head" => head_choices.push(Some(arg.parse().map_err(|e| format!("{e}"))?)),
            "compact" => {}
            other => return Err(format!("unknown step {other:?}")),
        }
    }
    for h in &model.present {
        match store.retrieve_block(h).await.map_err(e)? {
            None => return Err(format!("acknowledged block {h} is lost")),
            Some(b) if b.hash() != *h => {
                return Err(format!("block {h} came back as {}", b.hash()));
            }
            Some(b) => b
                .verify_signature()
                .map_err(|err| format!("block {h} does not verify: {err}"))?,
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
    model.head = head;
    let listed = store
        .list_blocks(&ListOptions {
            order: SortOrder::Ascending,
            ..Default::default()
        })
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
        .get_blocks_by_range(0, u64::MAX >> 1)
        .await
        .map_err(e)?;
    let listed_hashes: Vec<BlockHash> = listed.iter().map(|m| m.hash).collect();
    let ranged_hashes: Vec<BlockHash> = ranged.iter().map(Block::hash).collect();
    if listed_hashes != ranged_hashes {
        return Err("list and range disagree".into());
    }
    let by_hash: HashMap<BlockHash, &Block> = ranged.iter().map(|b| (b.hash(), b)).collect();
    for m in &listed {
        let b = by_hash[&m.hash];
        b.verify_signature()
            .map_err(|err| format!("listed block {} does not verify: {err}", m.index))?;
        if m.size_bytes != b.size_bytes() || m.timestamp != b.timestamp() {
            return Err(format!(
                "metadata of block {} disagrees with the block",
                m.index
            ));
        }
    }
    if !listed_hashes
        .iter()
        .all(|h| model.present.contains(h) || !model.deleted.contains(h))
    {
        return Err("a deleted block is listed".into());
    }
    // Blocks written but never acknowledged (the child was killed between the
    // write and its report) are legitimately present: adopt them.
    model.present.extend(listed_hashes);
    Ok(())
}
