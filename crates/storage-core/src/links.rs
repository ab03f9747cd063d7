//! Write-time checks every backend applies the same way: hash links against
//! stored neighbours ([`check_links`]) and a store's payload limit
//! ([`check_payload_limit`]).

use std::collections::HashMap;

use crate::{Block, BlockHash, Result, StorageError};

/// Checks that blocks about to be written agree with the hash links of their
/// neighbours: a block's previous hash must be the hash of the block at the index
/// before it, and the block at the index after it must name it as its previous
/// hash, whether those neighbours are already stored or in the same batch. A
/// neighbour that is absent constrains nothing, so a chain can still be filled in
/// out of order (replica repair, resumed migrations).
///
/// `fresh` are the blocks that will be written (not already stored, index
/// conflicts already ruled out). `stored_hash(i)` gives the hash of the block
/// stored at index `i`; `stored_previous(i)` the previous hash of the block stored
/// at `i` (`None` if no block is stored there). Backends call this under the same
/// lock or transaction as the write.
///
/// Fails with [`StorageError::Verification`] naming the block and the neighbour.
pub fn check_links<'a>(
    fresh: &[&'a Block],
    mut stored_hash: impl FnMut(u64) -> Result<Option<BlockHash>>,
    mut stored_previous: impl FnMut(u64) -> Result<Option<Option<BlockHash>>>,
) -> Result<()> {
    let batch: HashMap<u64, &'a Block> = fresh.iter().map(|b| (b.index(), *b)).collect();
    for b in fresh {
        let fail = |reason: String| StorageError::Verification {
            index: b.index(),
            reason,
        };
        if let Some(before) = b.index().checked_sub(1) {
            let hash = match batch.get(&before) {
                Some(p) => Some(p.hash()),
                None => stored_hash(before)?,
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
                None => stored_previous(after)?,
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
            |i| Ok(h.get(&i).copied()),
            |i| Ok(p.get(&i).copied()),
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

    #[test]
    fn payload_limit() {
        let c = chain(3);
        assert!(check_payload_limit(&c, 1).is_ok());
        let e = check_payload_limit(&c, 0).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
    }
}
