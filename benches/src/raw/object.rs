//! Raw object-store requests (one object per block), for the matrix's ratio.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use storage_core::{Block, WireFormat};

/// One PUT holding `blocks` back to back, as one segment of our backend.
pub async fn store(store: &dyn ObjectStore, name: &str, blocks: &[Block]) {
    let mut bytes = Vec::new();
    for b in blocks {
        bytes.extend_from_slice(&WireFormat::BINARY.encode(b).unwrap());
    }
    store
        .put(&ObjectPath::from(name), PutPayload::from(bytes))
        .await
        .unwrap();
}

fn block_path(b: &Block) -> ObjectPath {
    ObjectPath::from(format!("blk/{}", b.hash()))
}

/// Every block as its own object (32 PUTs at a time).
pub async fn fill(store: &dyn ObjectStore, blocks: &[Block]) {
    futures::stream::iter(blocks)
        .map(|b| async move {
            store
                .put(
                    &block_path(b),
                    PutPayload::from(WireFormat::BINARY.encode(b).unwrap()),
                )
                .await
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// A block back, as our retrieve returns it: one GET, decoded, hash checked.
pub async fn retrieve(store: &dyn ObjectStore, b: &Block) -> Block {
    let bytes = store
        .get(&block_path(b))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    WireFormat::BINARY.decode_stored(&bytes, &b.hash()).unwrap()
}

/// One LIST request's first 100 names after `offset`.
pub async fn list_100(store: &dyn ObjectStore, offset: &Block) -> usize {
    let prefix = ObjectPath::from("blk");
    store
        .list_with_offset(Some(&prefix), &block_path(offset))
        .take(100)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len()
}
