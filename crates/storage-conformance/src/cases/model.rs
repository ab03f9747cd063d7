//! Model-based property test: random operation sequences run against the backend
//! and a plain reference model, and after every step every view of the store
//! (head, count, stats, listings in each order, the whole range, a bulk retrieve of
//! every test block, single reads of the blocks the sequence touches) must agree
//! with the model. proptest shrinks a failure to a minimal sequence.
//!
//! Sequences are biased toward revisiting the same few blocks: each picks a window
//! of three neighbouring indices and draws most operations from the blocks at
//! those indices (the chain's own, a rival, and blocks that differ from the chain's
//! in exactly one field), and mixes in canned revisits (delete, re-store, compact,
//! reopen; the head moved onto a block that is then deleted and re-stored; a rival
//! stored at a freed index, then a drop without close).
//!
//! Environment: `OLOCUS_MODEL_CASES` (sequences per suite run; default
//! [`crate::Fixture::model_sequences`], split over [`FIXED_SEEDS`]) and
//! `OLOCUS_MODEL_SEED` (run that one seed instead of the fixed ones, e.g. to
//! reproduce a failure the message names).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use storage_core::{
    Block, BlockFilter, BlockHash, BlockMetadata, ErrorKind, ListCursor, ListOptions, MAX_INDEX,
    MAX_TIMESTAMP_NANOS, PublicKey, SortOrder, StorageBackend, StorageError,
    system_time_from_unix_nanos,
};

use crate::check::fail;
use crate::data::{self, EVENT, READING, READING_EXTENDED, READING_UPPER};
use crate::{CaseError, CaseResult, Env};

/// The seeds CI's gate runs, the sequences split evenly between them. A seed that
/// ever found a bug joins this list with the fix.
pub const FIXED_SEEDS: [u64; 4] = [0x0105_0c05, 0x5eed_0001, 0x5eed_0002, 0x5eed_0003];

/// Chain blocks in the pool (indices `0..BASE`).
const BASE: usize = 12;

/// The blocks operations draw from.
struct Pool {
    blocks: Vec<Block>,
    hashes: Vec<BlockHash>,
    /// Pool positions of every block at each index.
    at_index: BTreeMap<u64, Vec<usize>>,
}

/// Indices of the two far blocks.
const FAR_INDEX: u64 = 40;

/// The pool: 12 scrambled chain blocks (ties and out-of-order timestamps, linked),
/// for each of them a rival and five blocks differing in exactly one field, a block
/// at index 40 stamped at the Unix epoch, and one at the highest index stamped at
/// the latest representable instant.
fn pool() -> Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let base = data::scrambled(BASE);
        let mut blocks: Vec<Block> = base.to_vec();
        for b in base.iter() {
            blocks.push(data::rival(b));
            blocks.extend(data::one_field_variants(b).into_iter().map(|(_, v)| v));
        }
        let far = |index, nanos, ty: &str, key| {
            Block::sign_raw(
                index,
                system_time_from_unix_nanos(nanos),
                Some(BlockHash([1; 32])),
                ty,
                b"{}".to_vec(),
                &data::signer(key),
            )
            .expect("valid block")
        };
        blocks.push(far(FAR_INDEX, 0, READING, 2));
        blocks.push(far(MAX_INDEX, MAX_TIMESTAMP_NANOS, EVENT, 1));
        let mut at_index: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, b) in blocks.iter().enumerate() {
            at_index.entry(b.index()).or_default().push(i);
        }
        Arc::new(Pool {
            hashes: blocks.iter().map(Block::hash).collect(),
            blocks,
            at_index,
        })
    })
    .clone()
}

/// Payload types a listing filters on: exact matches, and near misses (capitals,
/// a prefix, a suffix, a SQL `LIKE` wildcard) that must match nothing else.
const TYPES: [&str; 7] = [
    READING,
    EVENT,
    READING_UPPER,
    READING_EXTENDED,
    "conformance.reading",
    "conformance_reading/v1",
    "CONFORMANCE.EVENT/V1",
];

/// Index bounds listings and ranges draw from, beyond the chain's own.
const FAR_BOUNDS: [u64; 5] = [FAR_INDEX, FAR_INDEX + 1, MAX_INDEX - 1, MAX_INDEX, u64::MAX];

/// One time bound of a listing.
#[derive(Debug, Clone, Copy)]
pub enum TimeBound {
    /// A pool block's timestamp plus -1, 0 or 1 nanoseconds.
    Of(usize, i8),
    /// One second before the Unix epoch.
    BeforeEpoch,
    /// A thousand years after the latest block timestamp there can be.
    FarFuture,
}

impl TimeBound {
    fn at(self, pool: &Pool) -> SystemTime {
        match self {
            TimeBound::Of(i, d) => {
                let t = pool.blocks[i].timestamp();
                match d {
                    -1 => t - Duration::from_nanos(1),
                    1 => t + Duration::from_nanos(1),
                    _ => t,
                }
            }
            TimeBound::BeforeEpoch => SystemTime::UNIX_EPOCH - Duration::from_secs(1),
            TimeBound::FarFuture => {
                system_time_from_unix_nanos(MAX_TIMESTAMP_NANOS)
                    + Duration::from_secs(1000 * 365 * 86_400)
            }
        }
    }
}

/// A `ListOptions` drawn from the pool's timestamps, keys and types.
#[derive(Debug, Clone)]
pub struct ListSpec {
    limit: Option<u64>,
    offset: Option<u64>,
    start: Option<TimeBound>,
    end: Option<TimeBound>,
    order: u8,
    payload_type: Option<u8>,
    key: Option<u8>,
    min: Option<u64>,
    max: Option<u64>,
    /// A cursor: its index (`None`: the index of the block its time comes
    /// from, so cursors often sit exactly on a stored position) and its time.
    after: Option<(Option<u64>, TimeBound)>,
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
    Vacuum,
    /// Close and reopen (persistent backends only).
    Reopen,
    /// Drop every handle without closing, then reopen (persistent backends only).
    DropReopen,
}

impl Op {
    /// The pool blocks this operation names.
    fn blocks(&self) -> Vec<usize> {
        match self {
            Op::Store(i)
            | Op::Append(i)
            | Op::Delete(i)
            | Op::Retrieve(i)
            | Op::Exists(i)
            | Op::SetHead(i) => vec![*i],
            Op::StoreBatch(is) | Op::RetrieveMany(is) => is.clone(),
            _ => Vec::new(),
        }
    }
}

/// Reads an operation sequence from raw bytes (for coverage-guided fuzzers): each
/// operation takes a byte for its kind and one per argument; missing bytes read
/// as zero, so every input is a valid sequence (of at most 64 operations).
pub fn ops_from_bytes(data: &[u8]) -> Vec<Op> {
    let n = pool().blocks.len();
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
        let bound = |b: u8| -> u64 {
            let b = u64::from(b >> 1);
            if b % 8 == 7 {
                FAR_BOUNDS[(b / 8) as usize % FAR_BOUNDS.len()]
            } else {
                b % 16
            }
        };
        let op = match kind % 18 {
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
                let mut at = |bit: u8| -> Option<TimeBound> {
                    let (i, d) = (arg(), arg());
                    (flags >> bit & 1 == 1).then_some(match d % 5 {
                        3 => TimeBound::BeforeEpoch,
                        4 => TimeBound::FarFuture,
                        d => TimeBound::Of(block(i), d as i8 - 1),
                    })
                };
                let (start, end, cursor) = (at(0), at(1), at(2));
                let (limit, offset) = (arg(), arg());
                let (order, ty, key, min, max) = (arg(), arg(), arg(), arg(), arg());
                Op::List(ListSpec {
                    limit: maybe(limit, u64::from(limit >> 1) % 6),
                    offset: maybe(offset, u64::from(offset >> 1) % 6),
                    start,
                    end,
                    order: order % 4,
                    payload_type: (ty % 8 != 0).then(|| ty % 8 - 1),
                    key: (key % 5 != 0).then_some(key % 5),
                    min: maybe(min, bound(min)),
                    max: maybe(max, bound(max)),
                    after: cursor.map(|t| (maybe(flags >> 3, bound(flags)), t)),
                })
            }
            10 => Op::Count,
            11 => Op::Range(bound(arg()), bound(arg())),
            12 => Op::Stats,
            13 => Op::Compact,
            14 => Op::Reopen,
            15 => Op::Vacuum,
            16 => Op::DropReopen,
            _ => Op::Store(block(arg())),
        };
        ops.push(op);
    }
    ops
}

/// Runs `ops` against the environment's backend and the reference model; the
/// error names the first step where they disagree.
pub async fn run_ops(env: &Env, ops: &[Op]) -> CaseResult {
    run_sequence(env, ops).await
}

fn list_strategy(n: usize) -> impl Strategy<Value = ListSpec> {
    use proptest::option::weighted;
    let time = prop_oneof![
        8 => (0..n, -1i8..=1).prop_map(|(i, d)| TimeBound::Of(i, d)),
        1 => Just(TimeBound::BeforeEpoch),
        1 => Just(TimeBound::FarFuture),
    ];
    let count = prop_oneof![8 => 0u64..6, 1 => Just(u64::MAX), 1 => 6u64..40];
    let index = prop_oneof![8 => 0u64..16, 2 => select(FAR_BOUNDS.to_vec())];
    // Each bound or filter is set a fifth to a third of the time, so most listings
    // return enough entries for order and pagination to matter.
    (
        weighted(0.33, count.clone()),
        weighted(0.33, count),
        weighted(0.25, time.clone()),
        weighted(0.25, time.clone()),
        0u8..4,
        weighted(0.2, 0u8..TYPES.len() as u8),
        weighted(0.2, 1u8..=4),
        weighted(0.2, index.clone()),
        weighted(0.2, index.clone()),
        weighted(0.25, (weighted(0.4, index), time)),
    )
        .prop_map(
            |(limit, offset, start, end, order, payload_type, key, min, max, after)| ListSpec {
                limit,
                offset,
                start,
                end,
                order,
                payload_type,
                key,
                min,
                max,
                after,
            },
        )
}

/// One generated piece of a sequence: a single operation or a canned revisit.
fn chunk_strategy(pick: BoxedStrategy<usize>, n: usize) -> impl Strategy<Value = Vec<Op>> {
    let i = pick;
    let range = prop_oneof![
        3 => (0u64..16, 0u64..16),
        1 => (select(FAR_BOUNDS.to_vec()), select(FAR_BOUNDS.to_vec())),
        1 => (0u64..16, select(FAR_BOUNDS.to_vec())),
    ];
    let single = prop_oneof![
        4 => i.clone().prop_map(Op::Store),
        3 => i.clone().prop_map(Op::Append),
        2 => vec(i.clone(), 0..5).prop_map(Op::StoreBatch),
        3 => i.clone().prop_map(Op::Delete),
        1 => i.clone().prop_map(Op::Retrieve),
        1 => vec(i.clone(), 0..5).prop_map(Op::RetrieveMany),
        1 => i.clone().prop_map(Op::Exists),
        2 => i.clone().prop_map(Op::SetHead),
        1 => Just(Op::GetHead),
        3 => list_strategy(n).prop_map(Op::List),
        1 => Just(Op::Count),
        2 => range.prop_map(|(a, b)| Op::Range(a, b)),
        1 => Just(Op::Stats),
        1 => Just(Op::Compact),
        1 => Just(Op::Vacuum),
        1 => Just(Op::Reopen),
        1 => Just(Op::DropReopen),
    ]
    .prop_map(|op| vec![op]);
    let revisit = prop_oneof![
        i.clone()
            .prop_map(|b| vec![Op::Delete(b), Op::Store(b), Op::Compact, Op::Reopen]),
        i.clone()
            .prop_map(|b| vec![Op::Append(b), Op::Delete(b), Op::Store(b), Op::DropReopen]),
        (i.clone(), i.clone()).prop_map(|(a, b)| vec![
            Op::Delete(a),
            Op::Store(b),
            Op::Compact,
            Op::DropReopen
        ]),
        (i.clone(), i).prop_map(|(a, b)| vec![
            Op::Delete(a),
            Op::Vacuum,
            Op::Append(b),
            Op::Reopen
        ]),
    ];
    prop_oneof![10 => single, 2 => revisit]
}

/// Whole sequences: a window of three neighbouring indices is the hot set most
/// operations draw from.
fn sequence_strategy() -> impl Strategy<Value = Vec<Op>> {
    let pool = pool();
    let n = pool.blocks.len();
    (0..=(BASE as u64 - 3)).prop_flat_map(move |w| {
        let chain: Vec<usize> = (w..w + 3).map(|i| pool.at_index[&i][0]).collect();
        let near: Vec<usize> = (w..w + 3).flat_map(|i| pool.at_index[&i].clone()).collect();
        let pick = prop_oneof![5 => select(chain), 3 => select(near), 2 => 0..n].boxed();
        vec(chunk_strategy(pick, n), 1..24)
            .prop_map(|chunks| chunks.into_iter().flatten().collect::<Vec<Op>>())
    })
}

impl ListSpec {
    fn options(&self, pool: &Pool) -> ListOptions {
        let mut filter = BlockFilter::new();
        filter.payload_type = self.payload_type.map(|t| TYPES[usize::from(t)].to_string());
        filter.public_key = self
            .key
            .map(|k| PublicKey::from(&data::signer(k).verifying_key()));
        (filter.min_index, filter.max_index) = (self.min, self.max);
        let mut o = ListOptions::new().order(
            [
                SortOrder::Ascending,
                SortOrder::Descending,
                SortOrder::ByTimestamp,
                SortOrder::ByIndex,
            ][usize::from(self.order)],
        );
        (o.limit, o.offset) = (self.limit, self.offset);
        o.start_time = self.start.map(|t| t.at(pool));
        o.end_time = self.end.map(|t| t.at(pool));
        o.filter = (filter != BlockFilter::default()).then_some(filter);
        // A cursor anywhere: at a stored block's position or beside it.
        o.after = self.after.map(|(index, t)| {
            let index = index.unwrap_or(match t {
                TimeBound::Of(i, _) => pool.blocks[i].index(),
                _ => 0,
            });
            ListCursor::at(index, storage_core::unix_nanos(t.at(pool)).unwrap_or(0))
        });
        o
    }
}

/// What `list_blocks` must return for `opts` over `blocks`, written out from the
/// documented rules (filters AND-ed, inclusive bounds, the order, then offset and
/// limit), independently of any backend's or the core's code.
pub(crate) fn reference_list<'a>(
    blocks: impl IntoIterator<Item = &'a Block>,
    opts: &ListOptions,
) -> Vec<BlockMetadata> {
    let f = opts.filter.clone().unwrap_or_default();
    let mut out: Vec<&Block> = blocks
        .into_iter()
        .filter(|b| opts.start_time.is_none_or(|t| b.timestamp() >= t))
        .filter(|b| opts.end_time.is_none_or(|t| b.timestamp() <= t))
        .filter(|b| f.min_index.is_none_or(|i| b.index() >= i))
        .filter(|b| f.max_index.is_none_or(|i| b.index() <= i))
        .filter(|b| {
            f.payload_type
                .as_deref()
                .is_none_or(|t| b.payload_type() == t)
        })
        .filter(|b| f.public_key.is_none_or(|k| *b.public_key() == k))
        .collect();
    match opts.order {
        SortOrder::Ascending | SortOrder::ByIndex => out.sort_by_key(|b| b.index()),
        SortOrder::Descending => out.sort_by_key(|b| std::cmp::Reverse(b.index())),
        SortOrder::ByTimestamp => out.sort_by_key(|b| (b.timestamp(), b.index())),
    }
    // The cursor: keep what comes strictly after its position in this order.
    if let Some(c) = opts.after {
        out.retain(|b| match opts.order {
            SortOrder::Ascending | SortOrder::ByIndex => b.index() > c.index(),
            SortOrder::Descending => b.index() < c.index(),
            SortOrder::ByTimestamp => {
                let ts = storage_core::unix_nanos(b.timestamp()).unwrap_or(u64::MAX);
                (ts, b.index()) > (c.timestamp_nanos(), c.index())
            }
        });
    }
    let skip = opts.offset.unwrap_or(0).min(out.len() as u64) as usize;
    let take = opts.limit.unwrap_or(u64::MAX).min(out.len() as u64) as usize;
    out.into_iter()
        .skip(skip)
        .take(take)
        .map(BlockMetadata::of)
        .collect()
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
        reference_list(self.blocks.values(), opts)
    }

    fn range(&self, a: u64, b: u64) -> Expect<Vec<Block>> {
        if a > b {
            return Err(ErrorKind::InvalidInput);
        }
        Ok(self
            .by_index
            .range(a..=b)
            .map(|(_, h)| self.blocks[h].clone())
            .collect())
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
    what: &str,
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
            "step {step} {op:?}, {what}: backend {:?}, model {:?}",
            got.map_err(|e| format!("{:?}: {e}", e.kind())),
            want
        )))
    }
}

/// Every view of the store against the model, after step `step`.
async fn check_views(
    step: usize,
    op: &Op,
    s: &dyn StorageBackend,
    m: &Model,
    pool: &Pool,
    touched: &BTreeSet<usize>,
) -> CaseResult {
    agree(step, op, "head", s.get_chain_head().await, Ok(m.head))?;
    agree(
        step,
        op,
        "count",
        s.count_blocks().await,
        Ok(m.blocks.len() as u64),
    )?;
    let stats = s.get_stats().await.map(|st| {
        (
            st.total_blocks,
            st.total_size_bytes,
            st.oldest_block,
            st.newest_block,
        )
    });
    agree(step, op, "stats", stats, Ok(m.stats()))?;
    for order in [
        SortOrder::Ascending,
        SortOrder::Descending,
        SortOrder::ByTimestamp,
    ] {
        let opts = ListOptions::new().order(order);
        agree(
            step,
            op,
            &format!("listing {order:?}"),
            s.list_blocks(&opts).await,
            Ok(m.list(&opts)),
        )?;
    }
    agree(
        step,
        op,
        "the whole range",
        s.get_blocks_by_range(0, u64::MAX).await,
        m.range(0, u64::MAX),
    )?;
    let want = pool.hashes.iter().map(|h| m.blocks.get(h).cloned());
    agree(
        step,
        op,
        "bulk retrieve of every test block",
        s.retrieve_blocks(&pool.hashes).await,
        Ok(want.collect()),
    )?;
    for &i in touched {
        let h = pool.hashes[i];
        agree(
            step,
            op,
            &format!("retrieve of pool block {i}"),
            s.retrieve_block(&h).await,
            Ok(m.blocks.get(&h).cloned()),
        )?;
        agree(
            step,
            op,
            &format!("exists of pool block {i}"),
            s.block_exists(&h).await,
            Ok(m.blocks.contains_key(&h)),
        )?;
    }
    Ok(())
}

async fn run_sequence(env: &Env, ops: &[Op]) -> CaseResult {
    let pool = pool();
    let touched: BTreeSet<usize> = ops.iter().flat_map(Op::blocks).collect();
    let mut s = env.open().await?;
    // What the store says it does decides what the model expects of it.
    let caps = s.capabilities();
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let block = |i: usize| &pool.blocks[i];
        let hash = |i: usize| pool.hashes[i];
        match op {
            Op::Store(i) => agree(
                step,
                op,
                "result",
                s.store_block(block(*i)).await,
                m.store(block(*i)),
            )?,
            Op::Append(i) => {
                let b = block(*i);
                agree(step, op, "result", s.store_block(b).await, m.store(b))?;
                if m.blocks.contains_key(&b.hash()) {
                    m.head = Some(b.hash());
                    agree(
                        step,
                        op,
                        "set head",
                        s.set_chain_head(&b.hash()).await,
                        Ok(()),
                    )?;
                }
            }
            Op::StoreBatch(is) => {
                let bs: Vec<&Block> = is.iter().map(|i| block(*i)).collect();
                // Without atomic batches a failed batch may leave part of itself.
                if !caps.atomic_batches && m.store_batch_fails(&bs) {
                    continue;
                }
                let owned: Vec<Block> = bs.iter().map(|b| (*b).clone()).collect();
                agree(
                    step,
                    op,
                    "result",
                    s.store_blocks(&owned).await,
                    m.store_batch(&bs),
                )?
            }
            Op::Delete(i) => agree(
                step,
                op,
                "result",
                s.delete_block(&hash(*i)).await,
                Ok(m.delete(&hash(*i))),
            )?,
            Op::Retrieve(i) => agree(
                step,
                op,
                "result",
                s.retrieve_block(&hash(*i)).await,
                Ok(m.blocks.get(&hash(*i)).cloned()),
            )?,
            Op::RetrieveMany(is) => {
                let hs: Vec<BlockHash> = is.iter().map(|i| hash(*i)).collect();
                let want = hs.iter().map(|h| m.blocks.get(h).cloned()).collect();
                agree(step, op, "result", s.retrieve_blocks(&hs).await, Ok(want))?
            }
            Op::Exists(i) => agree(
                step,
                op,
                "result",
                s.block_exists(&hash(*i)).await,
                Ok(m.blocks.contains_key(&hash(*i))),
            )?,
            Op::SetHead(i) => {
                let h = hash(*i);
                let want = if m.blocks.contains_key(&h) {
                    m.head = Some(h);
                    Ok(())
                } else {
                    Err(ErrorKind::NotFound)
                };
                agree(step, op, "result", s.set_chain_head(&h).await, want)?
            }
            Op::GetHead => agree(step, op, "result", s.get_chain_head().await, Ok(m.head))?,
            Op::List(spec) => {
                let opts = spec.options(&pool);
                let want = m.list(&opts);
                agree(
                    step,
                    op,
                    "result",
                    s.list_blocks(&opts).await,
                    Ok(want.clone()),
                )?;
                // Resuming by cursor from an entry it returned (the middle
                // one, so something is usually left): a stored position, with
                // ties at its timestamp.
                if let Some(mid) = want.get(want.len().saturating_sub(1) / 2) {
                    let mut next = opts.after(ListCursor::after(mid));
                    next.offset = None;
                    agree(
                        step,
                        op,
                        "resuming after its middle entry",
                        s.list_blocks(&next).await,
                        Ok(m.list(&next)),
                    )?
                }
            }
            Op::Count => agree(
                step,
                op,
                "result",
                s.count_blocks().await,
                Ok(m.blocks.len() as u64),
            )?,
            Op::Range(a, b) => agree(
                step,
                op,
                "result",
                s.get_blocks_by_range(*a, *b).await,
                m.range(*a, *b),
            )?,
            Op::Stats => {} // checked after every step below
            Op::Compact => agree(step, op, "result", s.compact().await, Ok(()))?,
            Op::Vacuum => {
                let want = if caps.vacuum {
                    Ok(())
                } else {
                    Err(ErrorKind::Unsupported)
                };
                agree(step, op, "result", s.vacuum().await, want)?
            }
            Op::Reopen => {
                if caps.persistent {
                    agree(step, op, "close", s.close().await, Ok(()))?;
                    drop(s);
                    s = env.open().await?;
                }
            }
            Op::DropReopen => {
                if caps.persistent {
                    drop(s);
                    s = env.open().await?;
                }
            }
        }
        check_views(step, op, &*s, &m, &pool, &touched).await?;
    }
    s.close().await?;
    Ok(())
}

/// How many sequences to run: `OLOCUS_MODEL_CASES`, or the fixture's number.
fn sequences(env: &Env) -> u32 {
    std::env::var("OLOCUS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| env.fixture().model_sequences())
}

/// Random sequences of every operation agree with the reference model, in every
/// view, after every step.
pub async fn model_based_operations(env: &Env) -> CaseResult {
    let total = sequences(env);
    let chosen: Option<u64> = std::env::var("OLOCUS_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    let seeds: Vec<u64> = match chosen {
        Some(seed) => vec![seed],
        None => FIXED_SEEDS.to_vec(),
    };
    let per_seed = total.div_ceil(seeds.len() as u32).max(1);
    let factory = env.factory();
    let handle = tokio::runtime::Handle::current();
    // proptest drives synchronously; run it on a blocking thread that enters the
    // runtime for each sequence.
    let outcome = tokio::task::spawn_blocking(move || {
        for seed in seeds {
            let config = Config {
                cases: per_seed,
                failure_persistence: None,
                max_shrink_iters: 1000,
                ..Config::default()
            };
            let mut seed_bytes = [0u8; 32];
            seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
            let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
            let mut runner = TestRunner::new_with_rng(config, rng);
            let result = runner.run(&sequence_strategy(), |ops| {
                let env = Env::from_factory(factory.clone());
                handle
                    .block_on(run_sequence(&env, &ops))
                    .map_err(|e| TestCaseError::fail(e.to_string()))
            });
            if let Err(e) = result {
                return Err((seed, e));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| fail(format!("model test thread panicked: {e}")))?;
    match outcome {
        Ok(()) => Ok(()),
        Err((seed, TestError::Fail(reason, ops))) => Err(fail(format!(
            "model disagreement with seed {seed} (reproduce with OLOCUS_MODEL_SEED={seed} \
             OLOCUS_MODEL_CASES={per_seed}); minimal sequence of {} ops:\n{ops:#?}\n{reason}",
            ops.len()
        ))),
        Err((seed, TestError::Abort(reason))) => {
            Err(fail(format!("model test aborted (seed {seed}): {reason}")))
        }
    }
}
