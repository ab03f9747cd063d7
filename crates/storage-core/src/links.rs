//! Write-time checks every backend applies the same way: which blocks of a write
//! are new, idempotent repeats or index conflicts ([`admit`]), hash links against
//! stored neighbours ([`check_links`]) and a store's payload limit
//! ([`check_payload_limit`]).

use std::collections::HashMap;

use crate::{Block, BlockHash, Result, StorageError};

/// What a backend's admission check reads of its store, under the same write
/// lock or transaction as the write that follows.
pub trait ChainView {
    /// The hash of the block stored at `index`, if one is.
    fn hash_at(&mut self, index: u64) -> Result<Option<BlockHash>>;

    /// The previous hash of the block stored at `index`: `None` if no block is
    /// stored there, `Some(None)` for a stored genesis block. Only called for the
    /// index right after a new block, to check that the stored block names it.
    fn previous_at(&mut self, index: u64) -> Result<Option<Option<BlockHash>>>;
}

/// A [`ChainView`] from two closures.
pub struct ChainViewFn<H, P>(pub H, pub P);

impl<H, P> ChainView for ChainViewFn<H, P>
where
    H: FnMut(u64) -> Result<Option<BlockHash>>,
    P: FnMut(u64) -> Result<Option<Option<BlockHash>>>,
{
    fn hash_at(&mut self, index: u64) -> Result<Option<BlockHash>> {
        (self.0)(index)
    }
    fn previous_at(&mut self, index: u64) -> Result<Option<Option<BlockHash>>> {
        (self.1)(index)
    }
}

impl<H, P> std::fmt::Debug for ChainViewFn<H, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainViewFn")
    }
}

/// The admission rule of every write: decides, for `blocks` about to be stored,
/// which are new and must be written. Returns their positions in `blocks`, in
/// input order.
///
/// - A block whose hash is already stored at its index, or that repeats an
///   earlier block of the same batch, is an idempotent success: not written again.
/// - A block at an index held by a different block, stored or earlier in the
///   batch, is [`StorageError::IndexConflict`] naming both; the whole write fails.
/// - The new blocks must agree with the hash links of their stored neighbours and
///   of each other ([`check_links`]); otherwise [`StorageError::Verification`].
///
/// Run it under the engine's write lock (or in its write transaction) and write
/// exactly the returned blocks, so that no other write slips in between. Nothing
/// is changed when it fails.
pub fn admit<B: std::borrow::Borrow<Block>>(
    blocks: &[B],
    view: &mut impl ChainView,
) -> Result<Vec<usize>> {
    let mut fresh = Vec::with_capacity(blocks.len());
    // Indices claimed earlier in this batch; a single block needs no map.
    let mut claimed: HashMap<u64, BlockHash> = HashMap::new();
    for (pos, block) in blocks.iter().enumerate() {
        let block = block.borrow();
        let (index, hash) = (block.index(), block.hash());
        let holder = match claimed.get(&index) {
            Some(h) => Some(*h),
            None => view.hash_at(index)?,
        };
        match holder {
            Some(h) if h == hash => {}
            Some(existing) => {
                return Err(StorageError::IndexConflict {
                    index,
                    existing,
                    attempted: hash,
                });
            }
            None => {
                if blocks.len() > 1 {
                    claimed.insert(index, hash);
                }
                fresh.push(pos);
            }
        }
    }
    if !fresh.is_empty() {
        let new: Vec<&Block> = fresh.iter().map(|&p| blocks[p].borrow()).collect();
        check_links(&new, view)?;
    }
    Ok(fresh)
}

/// Checks that blocks about to be written agree with the hash links of their
/// neighbours: a block's previous hash must be the hash of the block at the index
/// before it, and the block at the index after it must name it as its previous
/// hash, whether those neighbours are already stored or in the same batch. A
/// neighbour that is absent constrains nothing, so a chain can still be filled in
/// out of order (replica repair, resumed migrations).
///
/// `fresh` are the blocks that will be written (not already stored, index
/// conflicts already ruled out); `view` reads the store's neighbours
/// ([`ChainView`]). [`admit`] calls this under the same lock or transaction as
/// the write.
///
/// Fails with [`StorageError::Verification`] naming the block and the neighbour.
pub fn check_links<'a>(fresh: &[&'a Block], view: &mut impl ChainView) -> Result<()> {
    let batch: HashMap<u64, &'a Block> = fresh.iter().map(|b| (b.index(), *b)).collect();
    for b in fresh {
        let fail = |reason: String| StorageError::Verification {
            index: b.index(),
            reason,
        };
        if let Some(before) = b.index().checked_sub(1) {
            let hash = match batch.get(&before) {
                Some(p) => Some(p.hash()),
                None => view.hash_at(before)?,
            };
            if let Some(hash) = hash
                && b.previous_hash() != Some(&hash)
            {
                return Err(fail(format!(
                    "its previous hash {} is not the hash of block {before} ({hash})",
                    display(b.previous_hash())
                )));
            }
        }
        if let Some(after) = b.index().checked_add(1) {
            let previous = match batch.get(&after) {
                Some(n) => Some(n.previous_hash().copied()),
                None => view.previous_at(after)?,
            };
            if let Some(previous) = previous
                && previous != Some(b.hash())
            {
                return Err(fail(format!(
                    "block {after} names {} as its previous block, not this one ({})",
                    display(previous.as_ref()),
                    b.hash()
                )));
            }
        }
    }
    Ok(())
}

fn display(h: Option<&BlockHash>) -> String {
    h.map_or_else(|| "(none)".into(), ToString::to_string)
}

/// Fails with [`StorageError::InvalidInput`] if any block's payload is longer than
/// `max_payload_bytes`, a store's configured limit (at most
/// [`crate::MAX_PAYLOAD_BYTES`], which no block can exceed).
pub fn check_payload_limit(blocks: &[Block], max_payload_bytes: usize) -> Result<()> {
    match blocks
        .iter()
        .find(|b| b.payload().len() > max_payload_bytes)
    {
        None => Ok(()),
        Some(b) => Err(StorageError::InvalidInput(format!(
            "block {} has a payload of {} bytes, over this store's limit of \
             {max_payload_bytes} (max_payload_bytes)",
            b.index(),
            b.payload().len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;
    use std::time::{Duration, UNIX_EPOCH};

    fn chain(n: u64) -> Vec<Block> {
        let k = SigningKey::from_bytes(&[3; 32]);
        let mut out: Vec<Block> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(Block::hash);
            let t = UNIX_EPOCH + Duration::from_secs(i);
            out.push(Block::sign_raw(i, t, prev, "t/v1", vec![i as u8], &k).unwrap());
        }
        out
    }

    fn stored(blocks: &[Block]) -> (HashMap<u64, BlockHash>, HashMap<u64, Option<BlockHash>>) {
        (
            blocks.iter().map(|b| (b.index(), b.hash())).collect(),
            blocks
                .iter()
                .map(|b| (b.index(), b.previous_hash().copied()))
                .collect(),
        )
    }

    fn check(fresh: &[&Block], store: &[Block]) -> Result<()> {
        let (h, p) = stored(store);
        check_links(
            fresh,
            &mut ChainViewFn(|i| Ok(h.get(&i).copied()), |i| Ok(p.get(&i).copied())),
        )
    }

    #[test]
    fn links_against_store_and_batch() {
        let c = chain(5);
        let other = chain(5); // same chain: links agree
        assert!(check(&[&c[2]], &c[..2]).is_ok());
        assert!(check(&[&c[2]], &c[3..]).is_ok());
        assert!(check(&[&c[1], &c[2]], &[c[0].clone(), c[3].clone()]).is_ok());
        assert!(check(&[&other[4]], &[]).is_ok());
        // A block from another chain at index 2 between stored 1 and 3.
        let k = SigningKey::from_bytes(&[9; 32]);
        let t = UNIX_EPOCH;
        let stray = Block::sign_raw(2, t, Some(BlockHash([1; 32])), "t/v1", vec![], &k).unwrap();
        let e = check(&[&stray], &c[..2]).unwrap_err();
        assert!(e.to_string().contains("not the hash of block 1"), "{e}");
        let linked = Block::sign_raw(2, t, Some(c[1].hash()), "t/v1", vec![], &k).unwrap();
        let e = check(&[&linked], &c[3..]).unwrap_err();
        assert!(e.to_string().contains("block 3 names"), "{e}");
        // Inside one batch.
        let e = check(&[&c[0], &c[1], &stray], &[]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Verification);
    }

    fn admit_to(blocks: &[Block], store: &[Block]) -> Result<Vec<usize>> {
        let (h, p) = stored(store);
        admit(
            blocks,
            &mut ChainViewFn(|i| Ok(h.get(&i).copied()), |i| Ok(p.get(&i).copied())),
        )
    }

    #[test]
    fn admission_rule() {
        let c = chain(4);
        // New, repeated in the batch, already stored.
        assert_eq!(admit_to(&c[1..3], &c[..1]).unwrap(), vec![0, 1]);
        assert_eq!(
            admit_to(&[c[2].clone(), c[2].clone()], &[]).unwrap(),
            vec![0]
        );
        assert_eq!(admit_to(&c[..2], &c[..2]).unwrap(), Vec::<usize>::new());
        assert_eq!(admit_to(&c[..3], &c[1..2]).unwrap(), vec![0, 2]);
        // A different block at a stored index, or twice in one batch.
        let k = SigningKey::from_bytes(&[9; 32]);
        let rival = Block::sign_raw(1, UNIX_EPOCH, Some(c[0].hash()), "t/v1", vec![7], &k).unwrap();
        match admit_to(&[c[2].clone(), rival.clone()], &c[..2]).unwrap_err() {
            StorageError::IndexConflict {
                index,
                existing,
                attempted,
            } => assert_eq!((index, existing, attempted), (1, c[1].hash(), rival.hash())),
            e => panic!("{e}"),
        }
        match admit_to(&[c[1].clone(), rival.clone()], &c[..1]).unwrap_err() {
            StorageError::IndexConflict {
                existing,
                attempted,
                ..
            } => assert_eq!((existing, attempted), (c[1].hash(), rival.hash())),
            e => panic!("{e}"),
        }
        // Links are checked among the new blocks and against the store.
        let e = admit_to(&[rival], &c[2..3]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Verification, "{e}");
        // A conflict is found even when the repeat comes first.
        assert!(
            admit_to(&[c[0].clone(), c[0].clone()], &c[..1])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn payload_limit() {
        let c = chain(3);
        assert!(check_payload_limit(&c, 1).is_ok());
        let e = check_payload_limit(&c, 0).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
    }
}
