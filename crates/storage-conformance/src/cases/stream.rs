//! Keyset paging and streams: a cursor continues a listing exactly where the
//! last page ended, in every order and under every filter; `stream_list`,
//! `stream_range` and `get_block_by_index` agree with the plain calls, cross
//! gaps, and neither repeat nor skip while blocks are appended.

use std::sync::Arc;

use storage_core::{
    Block, BlockMetadata, ErrorKind, ListCursor, ListOptions, PublicKey, SortOrder, StorageBackend,
    StorageBackendExt, TryStreamExt,
};

use super::model::reference_list;
use crate::check::{Ctx, ensure, ensure_eq, expect_kind, fail, indices, same_blocks, same_listing};
use crate::data::{self, EVENT, READING};
use crate::{CaseResult, Env};

/// The index of the far block of `stream_range_bounds_and_gaps`.
const FAR: u64 = 1_000_000_000_000;

const ORDERS: [SortOrder; 4] = [
    SortOrder::Ascending,
    SortOrder::Descending,
    SortOrder::ByTimestamp,
    SortOrder::ByIndex,
];

fn key(n: u8) -> PublicKey {
    PublicKey::from(&data::signer(n).verifying_key())
}

/// Every filter alone and combined, over a store whose timestamps are not in
/// index order and tie in pairs.
fn filter_variants(blocks: &[Block]) -> Vec<(&'static str, ListOptions)> {
    let t = |i: usize| blocks[i].timestamp();
    vec![
        ("no filter", ListOptions::new()),
        ("readings", ListOptions::new().payload_type(READING)),
        ("events", ListOptions::new().payload_type(EVENT)),
        ("signer 2", ListOptions::new().public_key(key(2))),
        (
            "indices 3..=17",
            ListOptions::new().min_index(3).max_index(17),
        ),
        (
            "time window",
            ListOptions::new().start_time(t(5)).end_time(t(20)),
        ),
        (
            "all combined",
            ListOptions::new()
                .payload_type(READING)
                .public_key(key(1))
                .min_index(2)
                .max_index(22)
                .start_time(t(3)),
        ),
    ]
}

/// Pages `options` with cursors, `page` entries at a time.
async fn cursor_pages(
    s: &dyn StorageBackend,
    options: &ListOptions,
    page: u64,
) -> Result<Vec<BlockMetadata>, crate::CaseError> {
    let mut out = Vec::new();
    let mut query = options.clone().limit(page);
    for _ in 0..1_000 {
        let got = s.list_blocks(&query).await?;
        ensure!(
            got.len() as u64 <= page,
            "a page of limit {page} returned {} entries",
            got.len()
        );
        let Some(last) = got.last() else {
            return Ok(out);
        };
        query = query.after(ListCursor::after(last));
        out.extend(got);
    }
    Err(fail(format!(
        "cursor paging of {options:?} did not end after 1000 pages"
    )))
}

/// Pages `options` with offsets, `page` entries at a time.
async fn offset_pages(
    s: &dyn StorageBackend,
    options: &ListOptions,
    page: u64,
) -> Result<Vec<BlockMetadata>, crate::CaseError> {
    let mut out = Vec::new();
    loop {
        let got = s
            .list_blocks(&options.clone().offset(out.len() as u64).limit(page))
            .await?;
        if got.is_empty() {
            return Ok(out);
        }
        out.extend(got);
        ensure!(
            out.len() < 1_000,
            "offset paging of {options:?} did not end"
        );
    }
}

/// Cursor paging returns exactly the whole listing (and what offset paging
/// returns) for every order, every filter and several page sizes, and the
/// stream returns it too; `limit` and `offset` apply to a whole stream.
pub async fn cursor_paging_equals_offset_paging(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let blocks = data::scrambled(24);
    s.store_blocks(&blocks).await?;
    for (name, filter) in filter_variants(&blocks) {
        for order in ORDERS {
            let options = filter.clone().order(order);
            let want = reference_list(blocks.iter(), &options);
            let whole = s.list_blocks(&options).await?;
            same_listing(&whole, &want, format!("{name}, {order:?}: whole listing"))?;
            for page in [1, 2, 5, 7] {
                let what = format!("{name}, {order:?}, pages of {page}");
                same_listing(
                    &cursor_pages(&*s, &options, page).await?,
                    &want,
                    format!("{what}, by cursor"),
                )?;
                same_listing(
                    &offset_pages(&*s, &options, page).await?,
                    &want,
                    format!("{what}, by offset"),
                )?;
                let streamed: Vec<_> = s
                    .stream_list_paged(options.clone(), page)
                    .try_collect()
                    .await
                    .ctx(format!("{what}, streamed"))?;
                same_listing(&streamed, &want, format!("{what}, streamed"))?;
            }
            // Offset and limit bound the whole stream, not each page.
            let bounded = options.clone().offset(3).limit(7);
            let streamed: Vec<_> = s
                .stream_list_paged(bounded.clone(), 2)
                .try_collect()
                .await?;
            same_listing(
                &streamed,
                &reference_list(blocks.iter(), &bounded),
                format!("{name}, {order:?}: offset 3, limit 7, streamed in pages of 2"),
            )?;
        }
    }
    Ok(())
}

/// A cursor is a position, not a stored block: it works from a deleted block,
/// from between two stored positions, at a timestamp tie, at the ends of the
/// key space, and combined with an offset.
pub async fn cursor_positions_need_no_block(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let blocks = data::scrambled(24);
    s.store_blocks(&blocks).await?;
    let nanos = |b: &Block| storage_core::unix_nanos(b.timestamp()).unwrap_or(0);
    // Every block's own position, and the positions just beside it.
    let mut cursors = Vec::new();
    for b in blocks.iter() {
        let (i, t) = (b.index(), nanos(b));
        cursors.push(ListCursor::at(i, t));
        cursors.push(ListCursor::at(i, t.saturating_sub(1)));
        cursors.push(ListCursor::at(i, t + 1));
        cursors.push(ListCursor::at(i + 1, t));
    }
    cursors.extend([
        ListCursor::at(0, 0),
        ListCursor::at(u64::MAX, u64::MAX),
        ListCursor::at(u64::MAX, 0),
        ListCursor::at(0, u64::MAX),
    ]);
    // Delete a third of the blocks: cursors taken from them keep working.
    let removed: Vec<_> = blocks.iter().filter(|b| b.index() % 3 == 1).collect();
    for b in &removed {
        s.delete_block(&b.hash()).await?;
    }
    let kept: Vec<_> = blocks.iter().filter(|b| b.index() % 3 != 1).collect();
    for order in ORDERS {
        for c in &cursors {
            for options in [
                ListOptions::new().order(order).after(*c),
                ListOptions::new().order(order).after(*c).offset(2).limit(3),
                ListOptions::new()
                    .order(order)
                    .payload_type(READING)
                    .after(*c)
                    .limit(4),
            ] {
                same_listing(
                    &s.list_blocks(&options).await?,
                    &reference_list(kept.iter().copied(), &options),
                    format!("{options:?}"),
                )?;
            }
        }
    }
    Ok(())
}

/// `get_block_by_index` returns the stored block, byte-identical, and `None`
/// for a missing index, past the end and at the largest index.
pub async fn get_block_by_index_finds_and_misses(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(10);
    let stored: Vec<_> = chain.iter().filter(|b| b.index() != 4).cloned().collect();
    s.store_blocks(&stored).await?;
    for b in &stored {
        match s.get_block_by_index(b.index()).await? {
            Some(got) => same_blocks(&[got], &[b], format!("index {}", b.index()))?,
            None => return Err(fail(format!("index {} not found", b.index()))),
        }
    }
    for missing in [4, 10, 1_000, u64::MAX] {
        let got = s.get_block_by_index(missing).await?;
        ensure!(
            got.is_none(),
            "index {missing} is not stored, got the block at index {:?}",
            got.map(|b| b.index())
        );
    }
    Ok(())
}

/// `stream_range` yields what `get_blocks_by_range` returns, for bounded,
/// open, empty and reversed ranges, across runs of missing indices longer than
/// a page, in any page size.
pub async fn stream_range_bounds_and_gaps(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(60);
    // Far beyond: a gap no stream could cross window by window.
    let far = Block::sign_raw(
        FAR,
        data::at(data::chain_offset(60)),
        Some(storage_core::BlockHash([7; 32])),
        READING,
        b"{}".to_vec(),
        &data::signer(3),
    )
    .map_err(|e| fail(format!("signing the far block: {e}")))?;
    // Stored: 0..=4, 40..=45, 59 and FAR; gaps of 35, 13 and about 10^12 indices.
    let stored: Vec<&Block> = chain
        .iter()
        .filter(|b| matches!(b.index(), 0..=4 | 40..=45 | 59))
        .chain(std::iter::once(&far))
        .collect();
    let owned: Vec<Block> = stored.iter().map(|b| (*b).clone()).collect();
    s.store_blocks(&owned).await?;
    let within = |lo: u64, hi: u64| -> Vec<&Block> {
        stored
            .iter()
            .copied()
            .filter(|b| (lo..=hi).contains(&b.index()))
            .collect()
    };
    for page in [1, 3, 4, 100] {
        let cases: Vec<(String, Vec<Block>, Vec<&Block>)> = vec![
            (
                "..".into(),
                s.stream_range_paged(.., page).try_collect().await?,
                within(0, u64::MAX),
            ),
            (
                "2..=41".into(),
                s.stream_range_paged(2..=41, page).try_collect().await?,
                within(2, 41),
            ),
            (
                "2..41".into(),
                s.stream_range_paged(2..41, page).try_collect().await?,
                within(2, 40),
            ),
            (
                "5..40 (only gap)".into(),
                s.stream_range_paged(5..40, page).try_collect().await?,
                Vec::new(),
            ),
            (
                "60.. (open, across a gap of 10^12)".into(),
                s.stream_range_paged(60.., page).try_collect().await?,
                within(60, u64::MAX),
            ),
            (
                "46.. (open, starting in a gap)".into(),
                s.stream_range_paged(46.., page).try_collect().await?,
                within(46, u64::MAX),
            ),
            (
                "44..".into(),
                s.stream_range_paged(44.., page).try_collect().await?,
                within(44, u64::MAX),
            ),
            (
                "7..7 (empty)".into(),
                s.stream_range_paged(7..7, page).try_collect().await?,
                Vec::new(),
            ),
            (
                "u64::MAX..=u64::MAX".into(),
                s.stream_range_paged(u64::MAX..=u64::MAX, page)
                    .try_collect()
                    .await?,
                Vec::new(),
            ),
        ];
        for (range, got, want) in cases {
            same_blocks(
                &got,
                &want,
                format!("stream_range({range}), pages of {page}"),
            )?;
        }
        #[allow(clippy::reversed_empty_ranges)]
        let reversed: Vec<Block> = s.stream_range_paged(9..=3, page).try_collect().await?;
        ensure!(
            reversed.is_empty(),
            "a reversed range streamed {} blocks",
            reversed.len()
        );
    }
    let plain = s.get_blocks_by_range(0, u64::MAX).await?;
    let streamed: Vec<Block> = s.stream_range(..).try_collect().await?;
    same_blocks(
        &streamed,
        &plain.iter().collect::<Vec<_>>(),
        "stream_range(..) against get_blocks_by_range(0, MAX)",
    )?;
    Ok(())
}

/// Streams taken while a writer appends: every block stored before the stream
/// started comes exactly once, in order; blocks appended meanwhile may come or
/// not, but never twice and never out of order.
pub async fn streams_while_appending(env: &Env) -> CaseResult {
    let s = env.open().await?;
    let chain = data::chain(400);
    let (before, after) = chain.split_at(200);
    s.store_blocks(before).await?;
    let writer = {
        let s: Arc<dyn StorageBackend> = s.clone();
        let rest: Vec<Block> = after.to_vec();
        tokio::spawn(async move {
            for b in rest {
                s.store_block(&b).await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, storage_core::StorageError>(())
        })
    };
    let check = |what: &str, got: &[u64]| -> CaseResult {
        ensure!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{what}: indices repeat or go back: {:?}",
            got.windows(2).find(|w| w[0] >= w[1])
        );
        let first: Vec<u64> = got.iter().copied().filter(|i| *i < 200).collect();
        ensure_eq!(
            first,
            (0..200).collect::<Vec<u64>>(),
            "{what}: the blocks stored before the stream started"
        );
        Ok(())
    };
    let mut rounds = 0;
    while !writer.is_finished() || rounds < 2 {
        let listed: Vec<BlockMetadata> = s
            .stream_list_paged(ListOptions::new(), 7)
            .try_collect()
            .await?;
        check("stream_list, index order", &indices(&listed))?;
        let by_time: Vec<BlockMetadata> = s
            .stream_list_paged(ListOptions::new().by_timestamp(), 7)
            .try_collect()
            .await?;
        check("stream_list, time order", &indices(&by_time))?;
        let ranged: Vec<Block> = s.stream_range_paged(.., 7).try_collect().await?;
        let ranged: Vec<u64> = ranged.iter().map(Block::index).collect();
        check("stream_range", &ranged)?;
        rounds += 1;
        ensure!(rounds < 10_000, "the writer did not finish");
    }
    writer
        .await
        .map_err(|e| fail(format!("writer task: {e}")))?
        .ctx("appending while streaming")?;
    let all: Vec<Block> = s.stream_range(..).try_collect().await?;
    same_blocks(&all, &chain.iter().collect::<Vec<_>>(), "after the writer")?;
    Ok(())
}

/// Streams end with the store's error: a stream from a closed store yields
/// `Closed` and then ends.
pub async fn streams_end_with_the_error(env: &Env) -> CaseResult {
    let s = env.open().await?;
    s.store_blocks(&data::chain(5)).await?;
    s.close().await?;
    let mut list = s.stream_list(ListOptions::new());
    expect_kind(
        list.try_next().await,
        ErrorKind::Closed,
        "stream_list after close",
    )?;
    ensure!(
        matches!(list.try_next().await, Ok(None)),
        "stream_list went on after its error"
    );
    let mut range = s.stream_range(..);
    expect_kind(
        range.try_next().await,
        ErrorKind::Closed,
        "stream_range after close",
    )?;
    ensure!(
        matches!(range.try_next().await, Ok(None)),
        "stream_range went on after its error"
    );
    Ok(())
}
