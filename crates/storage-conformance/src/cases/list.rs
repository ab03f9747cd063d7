//! `list_blocks`: every filter alone and combined, every order with ties, and
//! pagination edges. Expected results are written out literally.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use storage_core::{
    Block, BlockFilter, BlockHash, BlockMetadata, ListOptions, MAX_TIMESTAMP_NANOS, PublicKey,
    SortOrder, StorageBackend, system_time_from_unix_nanos,
};

use super::model::reference_list;
use crate::check::{ensure_eq, indices, same_listing};
use crate::data::{self, EVENT, READING, READING_EXTENDED, READING_UPPER};
use crate::{CaseResult, Env};

fn key(n: u8) -> PublicKey {
    PublicKey::from(&data::signer(n).verifying_key())
}

fn filtered(filter: BlockFilter) -> ListOptions {
    ListOptions::new().filter(filter)
}

/// Twelve chain blocks: signer 2 at 2, 5, 8, 11; events at 3, 7, 11; pairs share
/// timestamps (0-1, 2-3, ...).
async fn twelve(env: &Env) -> Result<std::sync::Arc<dyn StorageBackend>, crate::CaseError> {
    let s = env.open().await?;
    s.store_blocks(&data::chain(12)).await?;
    Ok(s)
}

/// Filter by payload type.
pub async fn filter_by_payload_type(env: &Env) -> CaseResult {
    let s = twelve(env).await?;
    let by = |t: &str| filtered(BlockFilter::new().payload_type(t));
    ensure_eq!(
        indices(&s.list_blocks(&by(EVENT)).await?),
        vec![3, 7, 11],
        "events"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(READING)).await?),
        vec![0, 1, 2, 4, 5, 6, 8, 9, 10],
        "readings"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by("no.such/type")).await?),
        Vec::<u64>::new(),
        "unknown type"
    );
    Ok(())
}

/// Filter by signer.
pub async fn filter_by_public_key(env: &Env) -> CaseResult {
    let s = twelve(env).await?;
    let by = |k: PublicKey| filtered(BlockFilter::new().public_key(k));
    ensure_eq!(
        indices(&s.list_blocks(&by(key(2))).await?),
        vec![2, 5, 8, 11],
        "signer 2"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(key(1))).await?),
        vec![0, 1, 3, 4, 6, 7, 9, 10],
        "signer 1"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(key(9))).await?),
        Vec::<u64>::new(),
        "unknown signer"
    );
    Ok(())
}

/// Filter by inclusive index bounds.
pub async fn filter_by_index_bounds(env: &Env) -> CaseResult {
    let s = twelve(env).await?;
    let by = |min: Option<u64>, max: Option<u64>| {
        let mut f = BlockFilter::new();
        (f.min_index, f.max_index) = (min, max);
        filtered(f)
    };
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(9), None)).await?),
        vec![9, 10, 11],
        "min 9"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(None, Some(2))).await?),
        vec![0, 1, 2],
        "max 2"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(4), Some(6))).await?),
        vec![4, 5, 6],
        "4..=6"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(5), Some(5))).await?),
        vec![5],
        "5..=5"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(7), Some(3))).await?),
        Vec::<u64>::new(),
        "min > max"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(12), None)).await?),
        Vec::<u64>::new(),
        "min past the end"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(0), Some(u64::MAX))).await?).len(),
        12,
        "0..=MAX"
    );
    Ok(())
}

/// Filter by inclusive time bounds, including bounds before 1970 and empty windows.
pub async fn filter_by_time_range(env: &Env) -> CaseResult {
    let s = twelve(env).await?;
    let t = |i: u64| data::at(data::chain_offset(i));
    let by = |start: Option<SystemTime>, end: Option<SystemTime>| {
        let mut o = ListOptions::new();
        (o.start_time, o.end_time) = (start, end);
        o
    };
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(t(4)), None)).await?),
        vec![4, 5, 6, 7, 8, 9, 10, 11],
        "from block 4's time"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(None, Some(t(5)))).await?),
        vec![0, 1, 2, 3, 4, 5],
        "until block 5's time"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(t(2)), Some(t(3)))).await?),
        vec![2, 3],
        "one instant, two blocks"
    );
    let just_after = t(3) + Duration::from_nanos(1);
    let just_before_next = t(4) - Duration::from_nanos(1);
    ensure_eq!(
        indices(
            &s.list_blocks(&by(Some(just_after), Some(just_before_next)))
                .await?
        ),
        Vec::<u64>::new(),
        "between steps"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(t(6)), Some(t(2)))).await?),
        Vec::<u64>::new(),
        "start after end"
    );
    let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
    ensure_eq!(
        indices(&s.list_blocks(&by(Some(before_1970), Some(t(1)))).await?),
        vec![0, 1],
        "start before 1970"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(None, Some(before_1970))).await?),
        Vec::<u64>::new(),
        "end before 1970"
    );
    Ok(())
}

/// All filters at once, with an order and pagination.
pub async fn filters_combined(env: &Env) -> CaseResult {
    let s = twelve(env).await?;
    let mut opts = ListOptions::new()
        .start_time(data::at(data::chain_offset(2)))
        .end_time(data::at(data::chain_offset(11)))
        .descending()
        .payload_type(READING)
        .public_key(key(1))
        .min_index(1)
        .max_index(10);
    // signer 1 ∩ readings ∩ 1..=10 ∩ time(2..=11) = 4, 6, 9, 10.
    ensure_eq!(
        indices(&s.list_blocks(&opts).await?),
        vec![10, 9, 6, 4],
        "combined, descending"
    );
    opts.offset = Some(1);
    opts.limit = Some(2);
    ensure_eq!(
        indices(&s.list_blocks(&opts).await?),
        vec![9, 6],
        "combined, paged"
    );
    opts.order = SortOrder::ByTimestamp;
    ensure_eq!(
        indices(&s.list_blocks(&opts).await?),
        vec![6, 9],
        "combined, by time, paged"
    );
    Ok(())
}

/// Each order, on blocks whose timestamps are not in index order and tie in pairs.
pub async fn sort_orders_and_ties(env: &Env) -> CaseResult {
    let s = env.open().await?;
    s.store_blocks(&data::scrambled(12)).await?;
    let by = |order| ListOptions::new().order(order);
    let asc: Vec<u64> = (0..12).collect();
    let desc: Vec<u64> = (0..12).rev().collect();
    ensure_eq!(
        indices(&s.list_blocks(&by(SortOrder::Ascending)).await?),
        asc,
        "Ascending"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(SortOrder::ByIndex)).await?),
        asc,
        "ByIndex"
    );
    ensure_eq!(
        indices(&s.list_blocks(&by(SortOrder::Descending)).await?),
        desc,
        "Descending"
    );
    // Timestamps (see data::scrambled_offset): 0,7 | 2,9 | 4,11 | 1,6 | 3,8 | 5,10;
    // ties by index, lowest first.
    ensure_eq!(
        indices(&s.list_blocks(&by(SortOrder::ByTimestamp)).await?),
        vec![0, 7, 2, 9, 4, 11, 1, 6, 3, 8, 5, 10],
        "ByTimestamp with ties"
    );
    Ok(())
}

/// `limit`/`offset` at zero, inside, at and past the end, and offset without limit.
pub async fn pagination_edges(env: &Env) -> CaseResult {
    let s = env.open().await?;
    s.store_blocks(&data::chain(10)).await?;
    let page = |offset: Option<u64>, limit: Option<u64>, order| {
        let mut o = ListOptions::new().order(order);
        (o.offset, o.limit) = (offset, limit);
        o
    };
    let asc = SortOrder::Ascending;
    let cases: Vec<(ListOptions, Vec<u64>, &str)> = vec![
        (page(None, Some(0), asc), vec![], "limit 0"),
        (page(Some(0), None, asc), (0..10).collect(), "offset 0"),
        (page(None, Some(3), asc), vec![0, 1, 2], "limit 3"),
        (page(Some(8), None, asc), vec![8, 9], "offset without limit"),
        (page(Some(10), None, asc), vec![], "offset at the end"),
        (page(Some(100), Some(5), asc), vec![], "offset past the end"),
        (page(Some(3), Some(2), asc), vec![3, 4], "offset 3 limit 2"),
        (page(Some(9), Some(5), asc), vec![9], "limit past the end"),
        (
            page(Some(2), Some(3), SortOrder::Descending),
            vec![7, 6, 5],
            "descending page",
        ),
        (
            page(Some(1), Some(2), SortOrder::ByTimestamp),
            vec![1, 2],
            "by-time page",
        ),
        (
            page(None, Some(u64::MAX), asc),
            (0..10).collect(),
            "limit u64::MAX",
        ),
        (page(Some(u64::MAX), None, asc), vec![], "offset u64::MAX"),
    ];
    for (opts, want, what) in cases {
        ensure_eq!(indices(&s.list_blocks(&opts).await?), want, "{what}");
    }
    let mut events = filtered(BlockFilter::new().payload_type(EVENT));
    events.offset = Some(1);
    ensure_eq!(
        indices(&s.list_blocks(&events).await?),
        vec![7],
        "offset applies after the filter"
    );
    Ok(())
}

/// Every metadata field equals what the block says, in every order.
pub async fn list_metadata_is_exact(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let blocks = data::scrambled(12);
    s.store_blocks(&blocks).await?;
    for order in [
        SortOrder::Ascending,
        SortOrder::Descending,
        SortOrder::ByTimestamp,
        SortOrder::ByIndex,
    ] {
        let listed = s.list_blocks(&ListOptions::new().order(order)).await?;
        for m in &listed {
            ensure_eq!(
                *m,
                BlockMetadata::of(&blocks[m.index as usize]),
                "metadata of block {} ({order:?})",
                m.index
            );
        }
        ensure_eq!(listed.len(), 12, "entries ({order:?})");
    }
    Ok(())
}

/// A linked chain of `types.len()` blocks with these payload types, timestamps
/// as in [`data::chain`], signers per [`data::signer_of`].
fn typed_chain(types: &[&str]) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::with_capacity(types.len());
    for (i, ty) in types.iter().enumerate() {
        let i = i as u64;
        let block = Block::sign_raw(
            i,
            data::at(data::chain_offset(i)),
            out.last().map(Block::hash),
            *ty,
            format!("{{\"seq\":{i}}}").into_bytes(),
            &data::signer(data::signer_of(i)),
        )
        .expect("valid test block");
        out.push(block);
    }
    out
}

/// Blocks stamped at the Unix epoch and at the latest representable instant, at
/// indices 20 and 30 (no neighbours among the test chains).
fn extreme_blocks() -> [Block; 2] {
    let at = |index, nanos| {
        Block::sign_raw(
            index,
            system_time_from_unix_nanos(nanos),
            Some(BlockHash([1; 32])),
            READING,
            b"{}".to_vec(),
            &data::signer(2),
        )
        .expect("valid block")
    };
    [at(20, 0), at(30, MAX_TIMESTAMP_NANOS)]
}

/// Time bounds equal to every stored timestamp, a nanosecond either side, before
/// 1970, at the epoch, at the latest representable instant and past it: alone and
/// in pairs, in every order, with and without a page.
pub async fn time_bounds_in_every_order(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let mut blocks: Vec<Block> = data::scrambled(12).to_vec();
    blocks.extend(extreme_blocks());
    s.store_blocks(&blocks).await?;
    let stamps: BTreeSet<SystemTime> = blocks.iter().map(Block::timestamp).collect();
    let mut exact: Vec<SystemTime> = stamps.iter().copied().collect();
    exact.push(SystemTime::UNIX_EPOCH - Duration::from_secs(1));
    exact.push(system_time_from_unix_nanos(MAX_TIMESTAMP_NANOS) + Duration::from_secs(86_400));
    let mut near = exact.clone();
    for t in &stamps {
        near.push(*t + Duration::from_nanos(1));
        if *t > SystemTime::UNIX_EPOCH {
            near.push(*t - Duration::from_nanos(1));
        }
    }
    let orders = [
        SortOrder::Ascending,
        SortOrder::Descending,
        SortOrder::ByTimestamp,
        SortOrder::ByIndex,
    ];
    let check = async |opts: ListOptions| -> CaseResult {
        same_listing(
            &s.list_blocks(&opts).await?,
            &reference_list(&blocks, &opts),
            format!(
                "{:?}, start {:?}, end {:?}, offset {:?}, limit {:?}",
                opts.order, opts.start_time, opts.end_time, opts.offset, opts.limit
            ),
        )
    };
    for order in orders {
        for t in &near {
            for (start_time, end_time) in [(Some(*t), None), (None, Some(*t))] {
                let mut opts = ListOptions::new().order(order);
                (opts.start_time, opts.end_time) = (start_time, end_time);
                check(opts).await?;
            }
        }
        for a in &exact {
            for b in &exact {
                let opts = ListOptions::new().order(order).start_time(*a).end_time(*b);
                check(opts.clone()).await?;
                check(opts.offset(1).limit(2)).await?;
            }
        }
    }
    Ok(())
}

/// Payload-type filters match exactly: not a prefix, not an extension, not in
/// other capitals, not as a SQL `LIKE` pattern; signer filters likewise.
pub async fn filters_match_exactly(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let types = [
        READING,
        READING_UPPER,
        READING_EXTENDED,
        EVENT,
        "conformance.reading",
        "conformance_reading/v1",
        READING,
        "conformance.event/v1x",
        EVENT,
        "conformance-reading/v1",
    ];
    let blocks = typed_chain(&types);
    s.store_blocks(&blocks).await?;
    let mut filters: Vec<&str> = types.to_vec();
    filters.extend([
        "CONFORMANCE.EVENT/V1",
        "conformance.reading/v",
        "conformance._eading/v1",
        "conformance_reading_v1",
    ]);
    for ty in filters {
        for order in [SortOrder::Ascending, SortOrder::ByTimestamp] {
            let opts = ListOptions::new().order(order).payload_type(ty);
            same_listing(
                &s.list_blocks(&opts).await?,
                &reference_list(&blocks, &opts),
                format!("payload type {ty:?}, {order:?}"),
            )?;
        }
    }
    for k in 1..=4 {
        for ty in [None, Some(READING)] {
            let mut opts = ListOptions::new().public_key(key(k));
            if let Some(ty) = ty {
                opts = opts.payload_type(ty);
            }
            same_listing(
                &s.list_blocks(&opts).await?,
                &reference_list(&blocks, &opts),
                format!("signer {k}, type {ty:?}"),
            )?;
        }
    }
    Ok(())
}
