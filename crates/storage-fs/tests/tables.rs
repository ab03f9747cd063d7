//! The store against a model through many reopens: blocks spread over many
//! segments and their tables, deletions that reach into older tables, blocks
//! stored again after their deletion, heads, compactions, clean closes and
//! handles dropped without closing (the log replayed past the last table).

use std::collections::BTreeMap;
use std::path::Path;

use storage_conformance::data;
use storage_core::{Block, BlockHash, CompressionType, ListOptions, StorageBackend};
use storage_fs::{Durability, FilesystemBackend, FsConfig};

fn open(dir: &Path) -> FilesystemBackend {
    FilesystemBackend::open(
        FsConfig::new(dir.to_path_buf())
            .compression(CompressionType::None)
            .durability(Durability::Buffered)
            .segment_size(64 << 10)
            // A small cache: pages are evicted and read again.
            .index_cache(16 << 10),
    )
    .expect("open")
}

/// A small deterministic generator (the sequence is the test).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn check(
    s: &FilesystemBackend,
    model: &BTreeMap<u64, Block>,
    head: Option<BlockHash>,
    all: &[Block],
    step: usize,
) {
    let want: Vec<Block> = model.values().cloned().collect();
    assert_eq!(
        s.count_blocks().await.unwrap(),
        want.len() as u64,
        "step {step}"
    );
    assert_eq!(
        s.get_blocks_by_range(0, u64::MAX >> 1).await.unwrap(),
        want,
        "step {step}"
    );
    assert_eq!(s.get_chain_head().await.unwrap(), head, "step {step}");
    let listed = s
        .list_blocks(&ListOptions::new().by_timestamp())
        .await
        .unwrap();
    let mut by_time: Vec<(std::time::SystemTime, u64)> =
        want.iter().map(|b| (b.timestamp(), b.index())).collect();
    by_time.sort();
    let got: Vec<(std::time::SystemTime, u64)> =
        listed.iter().map(|m| (m.timestamp, m.index)).collect();
    assert_eq!(got, by_time, "step {step}");
    let desc = s
        .list_blocks(&ListOptions::new().descending().limit(7).offset(3))
        .await
        .unwrap();
    let want_desc: Vec<u64> = want
        .iter()
        .rev()
        .skip(3)
        .take(7)
        .map(Block::index)
        .collect();
    assert_eq!(
        desc.iter().map(|m| m.index).collect::<Vec<_>>(),
        want_desc,
        "step {step}"
    );
    for b in all.iter().step_by(7) {
        let got = s.retrieve_block(&b.hash()).await.unwrap();
        assert_eq!(
            got.as_ref(),
            model.get(&b.index()),
            "step {step}: block {}",
            b.index()
        );
    }
    let stats = s.get_stats().await.unwrap();
    assert_eq!(stats.total_blocks, want.len() as u64, "step {step}");
    assert_eq!(
        stats.total_size_bytes,
        want.iter().map(|b| b.size_bytes()).sum::<u64>(),
        "step {step}"
    );
}

#[tokio::test]
async fn tables_agree_with_a_model_through_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let all = data::chain_with_note(1_500, 200);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model: BTreeMap<u64, Block> = BTreeMap::new();
    let mut head: Option<BlockHash> = None;
    let mut next = 0usize;
    let mut s = open(dir.path());
    for step in 0..160 {
        match rng.below(10) {
            0..=3 if next < all.len() => {
                let k = (1 + rng.below(60) as usize).min(all.len() - next);
                s.store_blocks(&all[next..next + k]).await.unwrap();
                for b in &all[next..next + k] {
                    model.insert(b.index(), b.clone());
                }
                next += k;
            }
            4 if !model.is_empty() => {
                // Delete a few, anywhere (old tables included).
                for _ in 0..1 + rng.below(4) {
                    let Some(&i) = model.keys().nth(rng.below(model.len() as u64) as usize) else {
                        continue;
                    };
                    let b = model.remove(&i).unwrap();
                    assert!(s.delete_block(&b.hash()).await.unwrap());
                    if head == Some(b.hash()) {
                        head = None;
                    }
                }
            }
            5 if next > 0 => {
                // Store a deleted block again.
                let i = rng.below(next as u64);
                if let std::collections::btree_map::Entry::Vacant(v) = model.entry(i) {
                    s.store_block(&all[i as usize]).await.unwrap();
                    v.insert(all[i as usize].clone());
                }
            }
            6 if !model.is_empty() => {
                let &i = model
                    .keys()
                    .nth(rng.below(model.len() as u64) as usize)
                    .unwrap();
                s.set_chain_head(&model[&i].hash()).await.unwrap();
                head = Some(model[&i].hash());
            }
            7 => {
                s.close().await.unwrap();
                drop(s);
                s = open(dir.path());
                assert_eq!(s.recovery().scanned_bytes, 0, "step {step}: a clean close");
            }
            8 => {
                // No close: what no table covers is read from the log.
                drop(s);
                s = open(dir.path());
            }
            9 if rng.below(3) == 0 => s.compact().await.unwrap(),
            _ => {}
        }
        check(&s, &model, head, &all, step).await;
    }
    s.close().await.unwrap();
    drop(s);
    let s = open(dir.path());
    check(&s, &model, head, &all, 999).await;
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() > 6,
        "many segments"
    );
}
