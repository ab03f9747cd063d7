//! Model-based property test: random operation sequences run against the backend
//! and a plain reference model; every observable result must agree. proptest
//! shrinks a failure to a minimal sequence.
//!
//! Environment: `OLOCUS_MODEL_CASES` (sequences, default 64) and
//! `OLOCUS_MODEL_SEED` (u64, default fixed so runs reproduce).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use storage_core::{
    Block, BlockFilter, BlockHash, BlockMetadata, ErrorKind, ListOptions, PublicKey, SortOrder,
    StorageBackend, StorageError, system_time_from_unix_nanos,
};

use crate::check::fail;
use crate::data::{self, EVENT, READING};
use crate::{Capabilities, CaseError, CaseResult, Env};

/// Blocks the operations draw from: 14 scrambled blocks (indices 0..14, ties and
/// out-of-order timestamps, linked), rivals at indices 2, 7, 11 and 13 (linked to
/// the block before, so they contradict the block after), and one at 40.
fn pool() -> Arc<Vec<Block>> {
    static POOL: OnceLock<Arc<Vec<Block>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let base = data::scrambled(14);
        let mut out: Vec<Block> = base.to_vec();
        for i in [2, 7, 11, 13] {
            out.push(data::rival(&base[i]));
        }
        let far = Block::sign_raw(
            40,
            data::at(3_500),
            Some(BlockHash([1; 32])),
            READING,
            b"{}".to_vec(),
            &data::signer(2),
        )
        .expect("valid block");
        out.push(far);
        Arc::new(out)
    })
    .clone()
}

/// A `ListOptions` drawn from the pool's timestamps and keys.
#[derive(Debug, Clone)]
pub struct ListSpec {
    limit: Option<u64>,
    offset: Option<u64>,
    start: Option<(usize, i8)>,
    end: Option<(usize, i8)>,
    order: u8,
    payload_type: Option<bool>,
    key: Option<u8>,
    min: Option<u64>,
    max: Option<u64>,
}

/// One operation of a model-based sequence; block arguments index the test pool.
#[derive(Debug, Clone)]
#[allow(missing_docs)] // each variant is the trait method of the same name
pub enum Op {
    Store(usize),
    /// Store, then make it the head: the common way chains grow.
    Append(usize),
    StoreBatch(Vec<usize>),
    Delete(usize),
    Retrieve(usize),
    RetrieveMany(Vec<usize>),
    Exists(usize),
    SetHead(usize),
    GetHead,
    List(ListSpec),
    Count,
    Range(u64, u64),
    Stats,
    Compact,
    /// Close and reopen (persistent backends only).
    Reopen,
}

/// Reads an operation sequence from raw bytes (for coverage-guided fuzzers): each
/// operation takes a byte for its kind and one per argument; missing bytes read
/// as zero, so every input is a valid sequence (of at most 64 operations).
pub fn ops_from_bytes(data: &[u8]) -> Vec<Op> {
    let n = pool().len();
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    let mut ops = Vec::new();
    while let Some(kind) = next() {
        if ops.len() == 64 {
            break;
        }
        let mut arg = || next().unwrap_or(0);
        let block = |b: u8| usize::from(b) % n;
        let maybe = |b: u8, v: u64| (b & 1 == 1).then_some(v);
        let op = match kind % 16 {
            0 => Op::Store(block(arg())),
            1 => Op::Append(block(arg())),
            2 => Op::StoreBatch((0..arg() % 5).map(|_| block(arg())).collect()),
            3 => Op::Delete(block(arg())),
            4 => Op::Retrieve(block(arg())),
            5 => Op::RetrieveMany((0..arg() % 4).map(|_| block(arg())).collect()),
            6 => Op::Exists(block(arg())),
            7 => Op::SetHead(block(arg())),
            8 => Op::GetHead,
            9 => {
                let flags = arg();
                let mut at = |bit: u8| -> Option<(usize, i8)> {
                    let (i, d) = (arg(), arg());
                    (flags >> bit & 1 == 1).then_some((block(i), (d % 3) as i8 - 1))
                };
                let (start, end) = (at(0), at(1));
                let (limit, offset) = (arg(), arg());
                let (order, ty, key, min, max) = (arg(), arg(), arg(), arg(), arg());
                Op::List(ListSpec {
                    limit: maybe(limit, u64::from(limit >> 1) % 6),
                    offset: maybe(offset, u64::from(offset >> 1) % 6),
                    start,
                    end,
                    order: order % 4,
                    payload_type: (ty % 3 != 0).then_some(ty % 3 == 1),
                    key: (key % 4 != 0).then_some(key % 4),
                    min: maybe(min, u64::from(min >> 1) % 16),
                    max: maybe(max, u64::from(max >> 1) % 42),
                })
            }
            10 => Op::Count,
            11 => Op::Range(u64::from(arg()) % 44, u64::from(arg()) % 44),
            12 => Op::Stats,
            13 => Op::Compact,
            14 => Op::Reopen,
            _ => Op::Store(block(arg())),
        };
        ops.push(op);
    }
    ops
}

/// Runs `ops` against the environment's backend and the reference model; the
/// error names the first step where they disagree.
pub async fn run_ops(env: &Env, ops: &[Op]) -> CaseResult {
    run_sequence(env, ops, env.capabilities()).await
}

fn op_strategy(n: usize) -> impl Strategy<Value = Op> {
    // Most operations hit a small hot set (indices 0..4 and the rival at 2), so
    // stores, deletes and head moves collide on the same blocks often.
    let i = prop_oneof![3 => prop_oneof![0..4usize, Just(14usize)], 2 => 0..n];
    // Each bound or filter is set a third of the time, so most listings return
    // enough entries for order and pagination to matter.
    use proptest::option::weighted;
    let list = (
        weighted(0.33, 0u64..6),
        weighted(0.33, 0u64..6),
        weighted(0.2, (0..n, -1i8..=1)),
        weighted(0.2, (0..n, -1i8..=1)),
        0u8..4,
        weighted(0.2, any::<bool>()),
        weighted(0.2, 1u8..=3),
        weighted(0.2, 0u64..16),
        weighted(0.2, 0u64..42),
    )
        .prop_map(
            |(limit, offset, start, end, order, payload_type, key, min, max)| ListSpec {
                limit,
                offset,
                start,
                end,
                order,
                payload_type,
                key,
                min,
                max,
            },
        );
    prop_oneof![
        4 => i.clone().prop_map(Op::Store),
        3 => i.clone().prop_map(Op::Append),
        2 => vec(i.clone(), 0..5).prop_map(Op::StoreBatch),
        2 => i.clone().prop_map(Op::Delete),
        2 => i.clone().prop_map(Op::Retrieve),
        1 => vec(i.clone(), 0..4).prop_map(Op::RetrieveMany),
        1 => i.clone().prop_map(Op::Exists),
        2 => i.clone().prop_map(Op::SetHead),
        1 => Just(Op::GetHead),
        4 => list.prop_map(Op::List),
        1 => Just(Op::Count),
        2 => prop_oneof![3 => (0u64..16, 0u64..16), 1 => (0u64..44, 0u64..44)]
            .prop_map(|(a, b)| Op::Range(a, b)),
        1 => Just(Op::Stats),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

impl ListSpec {
    fn options(&self, pool: &[Block]) -> ListOptions {
        let time = |(i, d): (usize, i8)| {
            system_time_from_unix_nanos(
                pool[i]
                    .timestamp_nanos()
                    .saturating_add_signed(i64::from(d)),
            )
        };
        let filter = BlockFilter {
            payload_type: self
                .payload_type
                .map(|e| if e { EVENT } else { READING }.to_string()),
            public_key: self
                .key
                .map(|k| PublicKey::from(&data::signer(k).verifying_key())),
            min_index: self.min,
            max_index: self.max,
        };
        ListOptions {
            limit: self.limit,
            offset: self.offset,
            start_time: self.start.map(time),
            end_time: self.end.map(time),
            order: [
                SortOrder::Ascending,
                SortOrder::Descending,
                SortOrder::ByTimestamp,
                SortOrder::ByIndex,
            ][usize::from(self.order)],
            filter: (filter != BlockFilter::default()).then_some(filter),
        }
    }
}

/// The reference: plain maps, no indexes, no cleverness.
#[derive(Default)]
struct Model {
    blocks: HashMap<BlockHash, Block>,
    by_index: BTreeMap<u64, BlockHash>,
    head: Option<BlockHash>,
}

type Expect<T> = Result<T, ErrorKind>;

impl Model {
    fn conflicts(&self, b: &Block) -> bool {
        !self.blocks.contains_key(&b.hash()) && self.by_index.contains_key(&b.index())
    }

    fn insert(&mut self, b: &Block) {
        self.by_index.insert(b.index(), b.hash());
        self.blocks.insert(b.hash(), b.clone());
    }

    /// Whether new blocks contradict a neighbour's hash link (stored or in the
    /// batch): the block before must be the one named as previous, the block after
    /// must name this one.
    fn breaks_links(&self, fresh: &[&Block]) -> bool {
        let at = |i: u64| -> Option<&Block> {
            fresh
                .iter()
                .copied()
                .find(|b| b.index() == i)
                .or_else(|| self.by_index.get(&i).map(|h| &self.blocks[h]))
        };
        fresh.iter().any(|b| {
            let before = b.index().checked_sub(1).and_then(at);
            let after = b.index().checked_add(1).and_then(at);
            before.is_some_and(|p| b.previous_hash() != Some(&p.hash()))
                || after.is_some_and(|n| n.previous_hash() != Some(&b.hash()))
        })
    }

    fn store(&mut self, b: &Block) -> Expect<BlockHash> {
        if self.conflicts(b) {
            return Err(ErrorKind::IndexConflict);
        }
        if !self.blocks.contains_key(&b.hash()) && self.breaks_links(&[b]) {
            return Err(ErrorKind::Verification);
        }
        self.insert(b);
        Ok(b.hash())
    }

    fn batch_conflicts(&self, bs: &[&Block]) -> bool {
        let mut claimed: HashMap<u64, BlockHash> = HashMap::new();
        bs.iter().any(|b| {
            self.conflicts(b)
                || (!self.blocks.contains_key(&b.hash())
                    && *claimed.entry(b.index()).or_insert(b.hash()) != b.hash())
        })
    }

    fn store_batch(&mut self, bs: &[&Block]) -> Expect<Vec<BlockHash>> {
        if self.batch_conflicts(bs) {
            return Err(ErrorKind::IndexConflict);
        }
        let mut fresh: Vec<&Block> = Vec::new();
        for b in bs {
            if !self.blocks.contains_key(&b.hash()) && !fresh.iter().any(|f| f.hash() == b.hash()) {
                fresh.push(b);
            }
        }
        if self.breaks_links(&fresh) {
            return Err(ErrorKind::Verification);
        }
        bs.iter().for_each(|b| self.insert(b));
        Ok(bs.iter().map(|b| b.hash()).collect())
    }

    fn store_batch_fails(&self, bs: &[&Block]) -> bool {
        let fresh: Vec<&Block> = bs
            .iter()
            .copied()
            .filter(|b| !self.blocks.contains_key(&b.hash()))
            .collect();
        self.batch_conflicts(bs) || self.breaks_links(&fresh)
    }

    fn delete(&mut self, h: &BlockHash) -> bool {
        match self.blocks.remove(h) {
            Some(b) => {
                self.by_index.remove(&b.index());
                if self.head == Some(*h) {
                    self.head = None;
                }
                true
            }
            None => false,
        }
    }

    fn list(&self, opts: &ListOptions) -> Vec<BlockMetadata> {
        opts.apply(self.blocks.values().map(BlockMetadata::of))
    }

    fn range(&self, a: u64, b: u64) -> Expect<Vec<Block>> {
        if a > b {
            return Err(ErrorKind::InvalidInput);
        }
        let mut out: Vec<Block> = self
            .blocks
            .values()
            .filter(|x| (a..=b).contains(&x.index()))
            .cloned()
            .collect();
        out.sort_by_key(Block::index);
        Ok(out)
    }

    fn stats(&self) -> (u64, u64, Option<SystemTime>, Option<SystemTime>) {
        (
            self.blocks.len() as u64,
            self.blocks.values().map(Block::size_bytes).sum(),
            self.blocks.values().map(Block::timestamp).min(),
            self.blocks.values().map(Block::timestamp).max(),
        )
    }
}

fn agree<T: PartialEq + Debug>(
    step: usize,
    op: &Op,
    got: Result<T, StorageError>,
    want: Expect<T>,
) -> Result<(), CaseError> {
    let same = match (&got, &want) {
        (Ok(g), Ok(w)) => g == w,
        (Err(g), Err(w)) => g.kind() == *w,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(fail(format!(
            "step {step} {op:?}: backend {:?}, model {:?}",
            got.map_err(|e| format!("{:?}: {e}", e.kind())),
            want
        )))
    }
}

async fn run_sequence(env: &Env, ops: &[Op], caps: Capabilities) -> CaseResult {
    let pool = pool();
    let mut s = env.open().await?;
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Store(i) => agree(step, op, s.store_block(&pool[*i]).await, m.store(&pool[*i]))?,
            Op::Append(i) => {
                let b = &pool[*i];
                agree(step, op, s.store_block(b).await, m.store(b))?;
                if m.blocks.contains_key(&b.hash()) {
                    m.head = Some(b.hash());
                    agree(step, op, s.set_chain_head(&b.hash()).await, Ok(()))?;
                }
            }
            Op::StoreBatch(is) => {
                let bs: Vec<&Block> = is.iter().map(|i| &pool[*i]).collect();
                // Without atomic batches a failed batch may leave part of itself.
                if !caps.atomic_batches && m.store_batch_fails(&bs) {
                    continue;
                }
                let owned: Vec<Block> = bs.iter().map(|b| (*b).clone()).collect();
                agree(step, op, s.store_blocks(&owned).await, m.store_batch(&bs))?
            }
            Op::Delete(i) => {
                let h = pool[*i].hash();
                agree(step, op, s.delete_block(&h).await, Ok(m.delete(&h)))?
            }
            Op::Retrieve(i) => {
                let h = pool[*i].hash();
                agree(
                    step,
                    op,
                    s.retrieve_block(&h).await,
                    Ok(m.blocks.get(&h).cloned()),
                )?
            }
            Op::RetrieveMany(is) => {
                let hs: Vec<BlockHash> = is.iter().map(|i| pool[*i].hash()).collect();
                let want = hs.iter().map(|h| m.blocks.get(h).cloned()).collect();
                agree(step, op, s.retrieve_blocks(&hs).await, Ok(want))?
            }
            Op::Exists(i) => {
                let h = pool[*i].hash();
                agree(
                    step,
                    op,
                    s.block_exists(&h).await,
                    Ok(m.blocks.contains_key(&h)),
                )?
            }
            Op::SetHead(i) => {
                let h = pool[*i].hash();
                let want = if m.blocks.contains_key(&h) {
                    m.head = Some(h);
                    Ok(())
                } else {
                    Err(ErrorKind::NotFound)
                };
                agree(step, op, s.set_chain_head(&h).await, want)?
            }
            Op::GetHead => agree(step, op, s.get_chain_head().await, Ok(m.head))?,
            Op::List(spec) => {
                let opts = spec.options(&pool);
                agree(step, op, s.list_blocks(&opts).await, Ok(m.list(&opts)))?
            }
            Op::Count => agree(step, op, s.count_blocks().await, Ok(m.blocks.len() as u64))?,
            Op::Range(a, b) => agree(
                step,
                op,
                s.get_blocks_by_range(*a, *b).await,
                m.range(*a, *b),
            )?,
            Op::Stats => {
                let got = s.get_stats().await.map(|st| {
                    (
                        st.total_blocks,
                        st.total_size_bytes,
                        st.oldest_block,
                        st.newest_block,
                    )
                });
                agree(step, op, got, Ok(m.stats()))?
            }
            Op::Compact => agree(step, op, s.compact().await, Ok(()))?,
            Op::Reopen => {
                if caps.persistent {
                    agree(step, op, s.close().await, Ok(()))?;
                    drop(s);
                    s = env.open().await?;
                }
            }
        }
        // Head and count are observable at every step, not only when generated.
        agree(step, op, s.get_chain_head().await, Ok(m.head))?;
        agree(step, op, s.count_blocks().await, Ok(m.blocks.len() as u64))?;
    }
    s.close().await?;
    Ok(())
}

/// Random sequences of every operation agree with the reference model.
pub async fn model_based_operations(env: &Env) -> CaseResult {
    let cases: u32 = std::env::var("OLOCUS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let seed: u64 = std::env::var("OLOCUS_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0105_0c05);
    let caps = env.capabilities();
    let factory = env.factory();
    let handle = tokio::runtime::Handle::current();
    let n = pool().len();
    // proptest drives synchronously; run it on a blocking thread that enters the
    // runtime for each sequence.
    let outcome = tokio::task::spawn_blocking(move || {
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 400,
            ..Config::default()
        };
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
        let mut runner = TestRunner::new_with_rng(config, rng);
        runner.run(&vec(op_strategy(n), 1..40), |ops| {
            let env = Env::from_factory(factory.clone());
            handle
                .block_on(run_sequence(&env, &ops, caps))
                .map_err(|e| TestCaseError::fail(e.to_string()))
        })
    })
    .await
    .map_err(|e| fail(format!("model test thread panicked: {e}")))?;
    match outcome {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, ops)) => Err(fail(format!(
            "model disagreement (seed {seed}); minimal sequence of {} ops:\n{ops:#?}\n{reason}",
            ops.len()
        ))),
        Err(TestError::Abort(reason)) => Err(fail(format!("model test aborted: {reason}"))),
    }
}
