//! Against real SeaweedFS servers on 127.0.0.1:
//!
//! - `volume_server_killed_mid_ingest`: a cluster of its own (so killing a server
//!   disturbs no other test); one of three volume servers is killed with SIGKILL
//!   mid-ingest and restarted later. Every write is acknowledged or fails with a
//!   transient error (then retried), and afterwards every acknowledged block reads
//!   back and verifies.
//! - `two_writers_race_for_indices`: two backend instances on two runtimes append
//!   to one chain on the shared cluster, storing each index at the same moment;
//!   each index has exactly one winner, the loser of every race gets
//!   `IndexConflict`, and the chain verifies.
//! - `wrong_credentials_are_a_configuration_error`.
//!
//! The shared cluster comes from `OLOCUS_S3_*` (`cargo xtask cluster up`, or
//! `cargo xtask ci`); `weed` for the private cluster from `OLOCUS_WEED` (set by
//! `cargo xtask ci`). Without them, the tests that need them are reported as
//! ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use seaweed_cluster::{Cluster, ClusterSpec};
use storage_conformance::data;
use storage_core::{Block, BlockHash, ErrorKind, StorageBackend, StorageBackendExt, StorageError};
use storage_object::{CLUSTER_ENV, ObjectOptions, ObjectStoreBackend, ObjectStoreConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn unique(prefix: &str) -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("randomness");
    format!("{prefix}/{}", u64::from_le_bytes(r))
}

/// Signs `count` blocks continuing `prev` (or from genesis).
fn extend(prev: Option<&Block>, count: usize, key: u8) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::with_capacity(count);
    for _ in 0..count {
        let last = out.last().or(prev);
        let index = last.map_or(0, |b| b.index() + 1);
        out.push(
            Block::sign_raw(
                index,
                data::at(index * 1_000),
                last.map(Block::hash),
                data::READING,
                format!("{{\"seq\":{index},\"writer\":{key}}}").into_bytes(),
                &data::signer(key),
            )
            .expect("valid block"),
        );
    }
    out
}

fn volume_server_killed_mid_ingest(weed: PathBuf) -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(ClusterSpec::new(weed, dir.path().join("cluster"), 9650))?;
    let env: BTreeMap<_, _> = cluster.env().into_iter().collect();
    let mut config = ObjectStoreConfig::s3(
        &format!("s3://{}/fault", env["OLOCUS_S3_BUCKET"]),
        &env["OLOCUS_S3_ENDPOINT"],
        &env["OLOCUS_S3_ACCESS_KEY_ID"],
        &env["OLOCUS_S3_SECRET_ACCESS_KEY"],
    );
    // A short budget, so a write the cluster cannot take fails (transiently) soon.
    config.options = ObjectOptions::default()
        .request_timeout(Duration::from_secs(5))
        .retry_timeout(Duration::from_secs(4));
    let rt = runtime();
    let store = rt.block_on(ObjectStoreBackend::open(config.clone()))?;

    #[derive(Default)]
    struct Tally {
        acked: Vec<Block>,
        transient_errors: u64,
        acked_while_down: u64,
    }
    let mut tally = Tally::default();
    // One step: a batch of 25 or a single block, retried until acknowledged.
    // Every error must be transient; anything else fails the test.
    let step = |store: &ObjectStoreBackend, tally: &mut Tally, n: usize, down: bool| {
        let blocks = extend(
            tally.acked.last(),
            if n.is_multiple_of(3) { 1 } else { 25 },
            1,
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = rt.block_on(async {
                if blocks.len() == 1 {
                    store.store_block(&blocks[0]).await.map(|_| ())
                } else {
                    store.store_blocks(&blocks).await.map(|_| ())
                }
            });
            match r {
                Ok(()) => {
                    tally.acked.extend(blocks);
                    tally.acked_while_down += u64::from(down);
                    return Ok(());
                }
                Err(e)
                    if e.status() != storage_core::ErrorStatus::Permanent
                        && Instant::now() < deadline =>
                {
                    tally.transient_errors += 1;
                    eprintln!("transient error (retrying): {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("step {n}: {:?} error: {e}", e.kind())),
            }
        }
    };
    for n in 0..20 {
        step(&store, &mut tally, n, false)?;
    }
    cluster.kill_volume(1)?;
    let down_since = Instant::now();
    let mut n = 20;
    let mut read_while_down = 0;
    while down_since.elapsed() < Duration::from_secs(12) {
        step(&store, &mut tally, n, true)?;
        n += 1;
        // Blocks acknowledged earlier still read back, whichever copy is gone.
        let probe = tally.acked[(n * 7919) % tally.acked.len()].clone();
        let got = rt
            .block_on(store.retrieve_block(&probe.hash()))?
            .ok_or_else(|| format!("block {} unreadable while a server was down", probe.index()))?;
        if got.hash() != probe.hash() {
            return Err(format!("block {} came back different", probe.index()).into());
        }
        read_while_down += 1;
    }
    cluster.restart_volume(1)?;
    for _ in 0..10 {
        step(&store, &mut tally, n, false)?;
        n += 1;
    }
    rt.block_on(store.close())?;

    // A fresh instance reads everything back.
    let store = rt.block_on(ObjectStoreBackend::open(config))?;
    let acked = &tally.acked;
    rt.block_on(async {
        let count = store.count_blocks().await?;
        if count != acked.len() as u64 {
            return Err(format!("count {count}, acknowledged {}", acked.len()).into());
        }
        for chunk in acked.chunks(200) {
            let hashes: Vec<BlockHash> = chunk.iter().map(Block::hash).collect();
            for (want, got) in chunk.iter().zip(store.retrieve_blocks(&hashes).await?) {
                let got = got.ok_or_else(|| format!("acknowledged block {} lost", want.index()))?;
                if got.hash() != want.hash() {
                    return Err(format!("block {} came back different", want.index()).into());
                }
                got.verify_signature()?;
            }
        }
        let verified = store.verify_stored_chain(500).await?;
        if verified != acked.len() as u64 {
            return Err(format!("verified {verified} of {}", acked.len()).into());
        }
        Ok::<_, Failed>(())
    })?;
    eprintln!(
        "fault test: {} blocks acknowledged ({} steps while a volume server was down, and {} \
         reads of earlier blocks), {} transient errors, all read back and verified",
        acked.len(),
        tally.acked_while_down,
        read_while_down,
        tally.transient_errors
    );
    if tally.acked_while_down == 0 {
        return Err("no write was acknowledged while the volume server was down".into());
    }
    cluster.stop();
    Ok(())
}

/// Two parties meet here each round; a party that never comes fails the other
/// after a minute instead of hanging it.
struct Rendezvous {
    state: std::sync::Mutex<(u64, usize)>,
    turned: std::sync::Condvar,
}

impl Rendezvous {
    fn new() -> Self {
        Self {
            state: std::sync::Mutex::new((0, 0)),
            turned: std::sync::Condvar::new(),
        }
    }

    fn wait(&self) -> Result<(), String> {
        let mut s = self.state.lock().map_err(|_| "poisoned")?;
        let round = s.0;
        s.1 += 1;
        if s.1 == 2 {
            *s = (round + 1, 0);
            self.turned.notify_all();
            return Ok(());
        }
        let (s, timeout) = self
            .turned
            .wait_timeout_while(s, Duration::from_secs(60), |s| s.0 == round)
            .map_err(|_| "poisoned")?;
        drop(s);
        if timeout.timed_out() {
            return Err("the other writer did not arrive within 60 s".into());
        }
        Ok(())
    }
}

fn two_writers_race_for_indices(config: ObjectStoreConfig) -> Result<(), Failed> {
    const TARGET: u64 = 40;
    let meet = Arc::new(Rendezvous::new());
    // Each writer: its own runtime on its own thread, its own backend instance.
    // Every round both read the head, sign a block for the same next index, meet,
    // and store at once; the winner moves the head before they meet again.
    let writer = |key: u8, config: ObjectStoreConfig, meet: Arc<Rendezvous>| {
        std::thread::spawn(move || -> Result<Vec<(u8, u64, BlockHash, bool)>, String> {
            let rt = runtime();
            rt.block_on(async {
                let store = ObjectStoreBackend::open(config)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut attempts = Vec::new();
                loop {
                    let head = store.get_chain_head().await.map_err(|e| e.to_string())?;
                    let prev = match head {
                        Some(h) => store.retrieve_block(&h).await.map_err(|e| e.to_string())?,
                        None => None,
                    };
                    if prev.as_ref().is_some_and(|p| p.index() + 1 >= TARGET) {
                        return Ok(attempts);
                    }
                    let block = extend(prev.as_ref(), 1, key).remove(0);
                    meet.wait()?;
                    match store.store_block(&block).await {
                        Ok(_) => {
                            attempts.push((key, block.index(), block.hash(), true));
                            store
                                .set_chain_head(&block.hash())
                                .await
                                .map_err(|e| e.to_string())?;
                        }
                        Err(e) if e.kind() == ErrorKind::IndexConflict => {
                            attempts.push((key, block.index(), block.hash(), false));
                        }
                        Err(e) => return Err(format!("writer {key}: {:?} error: {e}", e.kind())),
                    }
                    meet.wait()?;
                }
            })
        })
    };
    let a = writer(1, config.clone(), meet.clone());
    let b = writer(2, config.clone(), meet);
    let mut attempts = a.join().map_err(|_| "writer 1 panicked")??;
    attempts.extend(b.join().map_err(|_| "writer 2 panicked")??);

    let rt = runtime();
    let store = rt.block_on(ObjectStoreBackend::open(config))?;
    let stored = rt.block_on(store.get_blocks_by_range(0, u64::MAX))?;
    if stored.len() as u64 != TARGET {
        return Err(format!("{} blocks stored, want {TARGET}", stored.len()).into());
    }
    let verified = rt.block_on(store.verify_stored_chain(100))?;
    if verified != TARGET {
        return Err(format!("chain verifies for {verified} of {TARGET} blocks").into());
    }
    let mut wins = [0u64; 2];
    let mut conflicts = 0;
    for (key, index, hash, won) in &attempts {
        let winner = stored[*index as usize].hash();
        if *won != (winner == *hash) {
            return Err(format!(
                "index {index}: attempt {hash} succeeded={won}, but the stored block is {winner}"
            )
            .into());
        }
        if *won {
            wins[usize::from(*key - 1)] += 1;
        } else {
            conflicts += 1;
        }
    }
    if conflicts != TARGET {
        return Err(format!("{conflicts} lost races in {TARGET} rounds of two writers").into());
    }
    if wins.iter().sum::<u64>() != TARGET {
        return Err(format!(
            "{} acknowledged stores for {TARGET} indices",
            wins.iter().sum::<u64>()
        )
        .into());
    }
    eprintln!(
        "two writers: {TARGET} indices, writer 1 won {}, writer 2 won {}, {conflicts} lost races \
         got IndexConflict",
        wins[0], wins[1]
    );
    Ok(())
}

fn wrong_credentials_are_a_configuration_error(
    mut config: ObjectStoreConfig,
) -> Result<(), Failed> {
    config.secret_access_key = Some("not-the-secret".into());
    let rt = runtime();
    match rt.block_on(ObjectStoreBackend::open(config)) {
        Err(StorageError::Configuration(msg)) => {
            eprintln!("refused as expected: {msg}");
            Ok(())
        }
        Err(e) => Err(format!("wrong kind: {:?}: {e}", e.kind()).into()),
        Ok(_) => Err("opened with a wrong secret".into()),
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let shared = || ObjectStoreConfig::from_cluster_env(&unique("cluster-tests"));
    let no_cluster = format!(
        "no cluster ({} unset; cargo xtask cluster up)",
        CLUSTER_ENV.join(", ")
    );
    let weed = std::env::var_os("OLOCUS_WEED").map(PathBuf::from);
    // A test whose server is missing is reported as ignored, with the reason.
    let skip = |name: &str, reason: String| {
        Trial::ignorable_test(name.to_string(), move || {
            Ok(Completion::ignored_with(reason.clone()))
        })
    };
    let trials = vec![
        match weed {
            Some(w) => Trial::test("volume_server_killed_mid_ingest", move || {
                volume_server_killed_mid_ingest(w)
            }),
            None => skip(
                "volume_server_killed_mid_ingest",
                "needs OLOCUS_WEED (the weed binary; cargo xtask ci sets it)".into(),
            ),
        },
        match shared() {
            Some(c) => Trial::test("two_writers_race_for_indices", move || {
                two_writers_race_for_indices(c)
            }),
            None => skip("two_writers_race_for_indices", no_cluster.clone()),
        },
        match shared() {
            Some(c) => Trial::test("wrong_credentials_are_a_configuration_error", move || {
                wrong_credentials_are_a_configuration_error(c)
            }),
            None => skip("wrong_credentials_are_a_configuration_error", no_cluster),
        },
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
