//! The built `olocus-storage` binary, end to end: import → verify → export round
//! trips, migrate between every pair of persistent backends compiled in, verify on
//! a damaged and on a gapped store, the demo, and errors.

mod common;

use std::path::{Path, PathBuf};

use common::{chain, exit_code, fails, ok, s, write_jsonl};

/// Persistent backends compiled into this build, as URL makers.
fn backends(dir: &Path, tag: &str) -> Vec<String> {
    let mut v = vec![format!("fs:{}", s(&dir.join(format!("{tag}-fs"))))];
    if cfg!(feature = "sqlite") {
        v.push(format!("sqlite:{}", s(&dir.join(format!("{tag}.db")))));
    }
    if cfg!(feature = "rocksdb") {
        v.push(format!("rocksdb:{}", s(&dir.join(format!("{tag}-rocks")))));
    }
    v
}

#[test]
fn import_verify_export_round_trips_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let blocks = chain(300);
    write_jsonl(&input, &blocks);
    for (n, url) in backends(dir.path(), "rt").iter().enumerate() {
        let out = ok(&["--store", url, "import", &s(&input)]);
        assert!(out.contains("imported 300 blocks"), "{out}");
        let out = ok(&["--store", url, "verify"]);
        assert!(out.contains("verified 300 blocks"), "{out}");
        assert!(out.contains("head is the last block #299"), "{out}");

        let jsonl = dir.path().join(format!("out{n}.jsonl"));
        ok(&["--store", url, "export", &s(&jsonl)]);
        assert_eq!(
            std::fs::read(&jsonl).unwrap(),
            std::fs::read(&input).unwrap(),
            "{url}"
        );

        // Binary: export, import elsewhere, export again: identical bytes.
        let bin1 = dir.path().join(format!("out{n}.bin"));
        ok(&["--store", url, "export", &s(&bin1)]);
        let other = format!("fs:{}", s(&dir.path().join(format!("copy{n}"))));
        ok(&["--store", &other, "import", &s(&bin1)]);
        let bin2 = dir.path().join(format!("again{n}.bin"));
        ok(&["--store", &other, "export", "--format", "binary", &s(&bin2)]);
        assert_eq!(std::fs::read(&bin1).unwrap(), std::fs::read(&bin2).unwrap());
        assert!(std::fs::metadata(&bin1).unwrap().len() < std::fs::metadata(&jsonl).unwrap().len());
    }
}

#[test]
fn migrate_between_every_pair_keeps_list_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &chain(250));
    let sources = backends(dir.path(), "src");
    for src in &sources {
        ok(&["--store", src, "import", &s(&input)]);
    }
    let want = ok(&["--store", &sources[0], "list", "--json"]);
    let want_head = ok(&["--store", &sources[0], "head"]);
    for (i, src) in sources.iter().enumerate() {
        for (j, dst) in backends(dir.path(), &format!("dst{i}")).iter().enumerate() {
            if i == j {
                continue;
            }
            let out = ok(&["migrate", "--from", src, "--to", dst, "--batch", "64"]);
            assert!(out.contains("migrated 250 blocks"), "{src} -> {dst}: {out}");
            assert_eq!(
                ok(&["--store", dst, "list", "--json"]),
                want,
                "{src} -> {dst}"
            );
            assert_eq!(ok(&["--store", dst, "head"]), want_head);
            assert!(ok(&["--store", dst, "verify"]).contains("verified 250 blocks"));
            // Running it again resumes: nothing new to copy.
            let again = ok(&["migrate", "--from", src, "--to", dst, "--json"]);
            let v: serde_json::Value = serde_json::from_str(&again).unwrap();
            assert_eq!(
                (v["copied"].as_u64(), v["blocks"].as_u64()),
                (Some(0), Some(250))
            );
        }
    }
}

#[test]
fn migrate_resumes_a_partial_copy() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = chain(250);
    let (all, part) = (dir.path().join("all.jsonl"), dir.path().join("part.jsonl"));
    write_jsonl(&all, &blocks);
    write_jsonl(&part, &blocks[..100]);
    let src = format!("fs:{}", s(&dir.path().join("src")));
    let dst = format!("sqlite:{}", s(&dir.path().join("dst.db")));
    ok(&["--store", &src, "import", &s(&all)]);
    ok(&["--store", &dst, "import", &s(&part)]);
    let out = ok(&[
        "migrate", "--from", &src, "--to", &dst, "--batch", "64", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["copied"].as_u64(), v["blocks"].as_u64()),
        (Some(150), Some(250)),
        "{out}"
    );
    // Only the last batch below the copy's top is written again.
    assert!(v["written"].as_u64().unwrap() <= 150 + 64, "{out}");
    assert!(ok(&["--store", &dst, "verify"]).contains("verified 250 blocks"));
}

#[test]
fn verify_names_the_first_damaged_block() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let blocks = chain(60);
    write_jsonl(&input, &blocks);
    let path = dir.path().join("store");
    let url = format!("fs:{}", s(&path));
    ok(&["--store", &url, "import", &s(&input)]);
    // Find block 17's bytes on disk and flip one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let loc = rt.block_on(async {
        let store = storage_fs::FilesystemBackend::open(storage_fs::FsConfig::new(&path)).unwrap();
        let loc = store.locate(&blocks[17].hash()).unwrap().unwrap();
        olocus_storage::StorageBackend::close(&store).await.unwrap();
        loc
    });
    let mut bytes = std::fs::read(&loc.path).unwrap();
    bytes[(loc.offset + loc.len / 2) as usize] ^= 0x04;
    std::fs::write(&loc.path, bytes).unwrap();

    let (out, err) = fails(&["--store", &url, "verify"]);
    assert!(out.contains("store damaged: block #17"), "{out}");
    assert!(out.contains(&blocks[17].hash().to_string()), "{out}");
    assert!(out.contains("damaged"), "{out}");
    assert!(out.contains("17 blocks before it verified"), "{out}");
    assert!(err.contains("verification failed"), "{err}");
    assert_eq!(
        exit_code(&["--store", &url, "verify"]).0,
        Some(6),
        "damaged"
    );
    // JSON Lines: the report, then the failure.
    let (out, _) = fails(&["--store", &url, "verify", "--json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let v = &lines[0];
    assert_eq!(
        (v["ok"].as_bool(), v["verified_before"].as_u64()),
        (Some(false), Some(17))
    );
    assert!(v["reason"].as_str().unwrap().contains("#17"), "{v}");
    assert_eq!(lines[1]["kind"], "damaged", "{out}");
}

#[test]
fn verify_names_a_missing_block() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gap.jsonl");
    let mut blocks = chain(40);
    blocks.remove(23);
    write_jsonl(&input, &blocks);
    let url = format!("fs:{}", s(&dir.path().join("store")));
    // The head goes as far as the chain links, and the import says so.
    let out = ok(&["--store", &url, "import", &s(&input)]);
    assert!(
        out.contains("head is #22") && out.contains("block #23 is not stored"),
        "{out}"
    );
    let (out, _) = fails(&["--store", &url, "verify"]);
    assert!(
        out.contains("chain broken at index 23: gap: block #23 is missing after block #22 (the next stored block is #24)"),
        "{out}"
    );
    // A store whose owner put the head on the top block anyway (as salvage
    // does): the gap is accepted on request, and still listed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = olocus_storage::Storage::open_url(&url).await.unwrap();
        store.set_chain_head(&blocks[38].hash()).await.unwrap();
        store.close().await.unwrap();
    });
    let out = ok(&["--store", &url, "verify", "--allow-gaps"]);
    assert!(out.contains("verified 39 blocks"), "{out}");
    assert!(
        out.contains("missing (accepted with --allow-gaps): #23"),
        "{out}"
    );
}

/// The store is checked against itself: a head below the last block fails, and
/// importing blocks below the head leaves it where it is.
#[test]
fn verify_checks_the_head_and_import_never_moves_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = chain(50);
    let all = dir.path().join("all.jsonl");
    write_jsonl(&all, &blocks);
    let some = dir.path().join("some.jsonl");
    write_jsonl(&some, &blocks[20..25]);
    for url in backends(dir.path(), "head") {
        ok(&["--store", &url, "import", &s(&all)]);
        let out = ok(&["--store", &url, "import", &s(&some)]);
        assert!(out.contains("the head stays"), "{url}: {out}");
        let out = ok(&["--store", &url, "head", "--json"]);
        assert!(out.contains("\"index\":49"), "{url}: {out}");
        ok(&["--store", &url, "verify"]);
        // Import below the head without blocks above it: the head check catches
        // a head that is not the highest block.
        let other = format!("{url}-2");
        let first = dir.path().join("first.jsonl");
        write_jsonl(&first, &blocks[..10]);
        ok(&["--store", &other, "import", &s(&first)]);
        let more = dir.path().join("more.jsonl");
        write_jsonl(&more, &blocks[10..12]);
        ok(&["--store", &other, "import", "--no-head", &s(&more)]);
        let (out, _) = fails(&["--store", &other, "verify"]);
        assert!(out.contains("the head is block #9"), "{url}: {out}");
    }
}

/// Synced blocks that go missing are never absorbed: a filesystem segment cut
/// at a record boundary or inside a record, with or without its index file,
/// refuses to open; `repair` copies what is intact and names what was lost.
#[test]
fn cut_segments_are_reported_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = chain(400);
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &blocks);
    for (n, keep_index) in [(0, true), (1, false)] {
        let path = dir.path().join(format!("cut{n}"));
        let url = format!("fs:{}", s(&path));
        ok(&["--store", &url, "import", "--batch", "1", &s(&input)]);
        let seg = path.join("0000000000000001.seg");
        if !keep_index {
            std::fs::remove_file(path.join("0000000000000001.idx")).unwrap();
        }
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len / 2).unwrap();
        drop(f);
        for cmd in [&["verify"][..], &["stats"], &["export", "-"]] {
            let mut args = vec!["--store", url.as_str()];
            args.extend_from_slice(cmd);
            let (_, err) = fails(&args);
            assert!(err.contains("cut short"), "{cmd:?}: {err}");
        }
        let fixed = format!("fs:{}", s(&dir.path().join(format!("fixed{n}"))));
        let out = ok(&["repair", "--from", &url, "--to", &fixed, "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let copied = v["copied"].as_u64().unwrap();
        assert!(copied > 0 && copied < 400, "{v}");
        if keep_index {
            // The index file says exactly which blocks were there.
            assert_eq!(v["lost"][0][0].as_u64(), Some(copied), "{v}");
            assert_eq!(v["lost"][0][1].as_u64(), Some(399), "{v}");
        } else {
            // Without it, the durable mark still says bytes were lost.
            assert!(
                v["damage"]
                    .to_string()
                    .contains("were synced and are missing"),
                "{v}"
            );
        }
        let out = ok(&["--store", &fixed, "verify"]);
        assert!(out.contains(&format!("verified {copied} blocks")), "{out}");
    }
}

#[test]
fn list_filters_and_get() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let blocks = chain(100);
    write_jsonl(&input, &blocks);
    let url = format!("fs:{}", s(&dir.path().join("store")));
    ok(&["--store", &url, "import", &s(&input)]);
    let out = ok(&[
        "--store",
        &url,
        "list",
        "--type",
        "cli.event/v1",
        "--order",
        "desc",
        "--limit",
        "3",
        "--json",
    ]);
    // JSON Lines: one object per line.
    let idx: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(idx, vec![96, 92, 88]);
    let start = (blocks[10].timestamp_nanos()).to_string();
    let end = humantime::format_rfc3339_nanos(blocks[12].timestamp()).to_string();
    let out = ok(&[
        "--store",
        &url,
        "list",
        "--start-time",
        &start,
        "--end-time",
        &end,
        "--order",
        "time",
        "--json",
    ]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let signer = blocks[0].public_key().to_string();
    let out = ok(&[
        "--store",
        &url,
        "list",
        "--signer",
        &signer,
        "--from-index",
        "95",
        "--offset",
        "2",
    ]);
    assert!(out.contains("(3 blocks)"), "{out}");

    let out = ok(&[
        "--store",
        &url,
        "get",
        &blocks[5].hash().to_string(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["payload"]["json"]["seq"], 5);
    assert_eq!(v["hash"], blocks[5].hash().to_string());
    let (_, err) = fails(&["--store", &url, "get", &"ab".repeat(32)]);
    assert!(err.contains("not found"), "{err}");
    // By index, and by the 12 digits `list` prints (or any unique prefix).
    let by_index = ok(&["--store", &url, "get", "--index", "5", "--json"]);
    assert_eq!(by_index, out);
    let full = blocks[5].hash().to_string();
    assert_eq!(ok(&["--store", &url, "get", &full[..12], "--json"]), out);
    assert_eq!(
        ok(&["--store", &url, "get", &full[..12].to_uppercase(), "--json"]),
        out
    );
    let (code, err) = exit_code(&["--store", &url, "get", "--index", "100"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no block at index 100"), "{err}");
    let (code, err) = exit_code(&["--store", &url, "get", "abc"]);
    assert_eq!(code, Some(2), "too short: {err}");
    let (code, err) = exit_code(&["--store", &url, "get", "28"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("use --index 28"), "{err}");
    // Index ranges are named alike in export and list.
    let part = ok(&[
        "--store",
        &url,
        "export",
        "--from-index",
        "10",
        "--to-index",
        "19",
    ]);
    assert_eq!(part.lines().count(), 10, "{part}");
    let listed = ok(&[
        "--store",
        &url,
        "list",
        "--from-index",
        "10",
        "--to-index",
        "19",
        "--json",
    ]);
    assert_eq!(listed.lines().count(), 10, "{listed}");
    // Stats for people: the chain first, sizes in binary units; exact in JSON.
    let text = ok(&["--store", &url, "stats"]);
    assert!(text.starts_with("blocks            100\n"), "{text}");
    assert!(text.contains(" KiB"), "{text}");
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&["--store", &url, "stats", "--json"])).unwrap();
    assert_eq!(stats["total_blocks"], 100);
    assert!(
        stats["total_size_bytes"].as_u64().unwrap() > 1000,
        "{stats}"
    );
    ok(&["--store", &url, "compact"]);
    ok(&["--store", &url, "vacuum"]);
    assert!(ok(&["--store", &url, "verify"]).contains("verified 100 blocks"));
}

#[test]
fn demo_stores_verifies_and_queries() {
    let out = ok(&["demo", "--blocks", "400"]);
    for needle in [
        "signed",
        "stored",
        "verified   400 blocks",
        "by hash",
        "by range",
        "by time",
        "list",
        "stats",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    // Under --json, data only: each step's figures, no sentences.
    let doc: serde_json::Value = serde_json::from_str(&ok(&["demo", "--blocks", "400", "--json"]))
        .expect("one JSON document");
    let steps = doc["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 9, "{doc}");
    for step in steps {
        assert!(step.get("result").is_none(), "prose in {step}");
        let has_number = step
            .as_object()
            .unwrap()
            .values()
            .any(|v| v.is_number() || v.is_object());
        assert!(has_number, "no figures in {step}");
    }
    assert_eq!(steps[1]["head"]["index"], 399, "{doc}");
    assert_eq!(steps[2]["blocks"], 400, "{doc}");
    assert_eq!(steps[4]["blocks"], 100, "{doc}");
    assert_eq!(steps[8]["total_blocks"], 400, "{doc}");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("fs:{}", s(&dir.path().join("kept")));
    ok(&["demo", "--blocks", "50", "--store", &url]);
    assert!(ok(&["--store", &url, "verify"]).contains("verified 50 blocks"));
    let (_, err) = fails(&["demo", "--blocks", "50", "--store", &url]);
    assert!(err.contains("already holds blocks"), "{err}");
}

#[test]
fn errors_say_what_and_where() {
    let (_, err) = fails(&["--store", "ftp://x", "head"]);
    assert!(err.contains("expected memory:, fs:PATH"), "{err}");
    let (_, err) = fails(&["--store", "sqlit:/tmp/x", "head"]);
    assert!(err.contains("did you mean sqlite:?"), "{err}");
    // One line that says what is wrong, not the whole URL grammar.
    let (_, err) = fails(&["--store", "fs:/tmp/x?compresion=zstd", "head"]);
    assert!(err.contains("did you mean \"compression\"?"), "{err}");
    assert!(err.len() < 160, "{} bytes: {err}", err.len());
    let (_, err) = fails(&["head"]);
    assert!(err.contains("--store"), "{err}");
    // Under --json even a command line clap refuses is a JSON error on stdout.
    let out = common::bin(&["--json", "list", "--limit", "many"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["kind"], "usage", "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("many"), "{doc}");
    // migrate and repair name both stores with --from and --to: --store and
    // --config are not in their help, and are refused rather than ignored.
    for sub in ["migrate", "repair"] {
        let help = ok(&[sub, "--help"]);
        assert!(
            !help.contains("--store") && !help.contains("--config"),
            "{help}"
        );
        for args in [
            vec![
                "--store", "memory:", sub, "--from", "memory:", "--to", "memory:",
            ],
            vec![
                sub, "--from", "memory:", "--to", "memory:", "--config", "x.toml",
            ],
        ] {
            let (code, err) = exit_code(&args);
            assert_eq!(code, Some(2), "{args:?}: {err}");
            assert!(err.contains("--from URL and --to URL"), "{err}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"not\": \"a block\"}\n").unwrap();
    let url = format!("fs:{}", s(&dir.path().join("store")));
    let (_, err) = fails(&["--store", &url, "import", &s(&bad)]);
    assert!(err.contains("line 1"), "{err}");
    let cfg: PathBuf = dir.path().join("missing.toml");
    let (_, err) = fails(&["--config", &s(&cfg), "head"]);
    assert!(err.contains("missing.toml"), "{err}");
    if !cfg!(feature = "rocksdb") {
        let (_, err) = fails(&["--store", "rocksdb:/tmp/x", "head"]);
        assert!(err.contains("`rocksdb` feature"), "{err}");
    }
}

/// Bad input files: each message names the path, line or byte, says what is
/// wrong in words, and the exit code is 2 (bad input).
#[test]
fn bad_input_files_are_named_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("fs:{}", s(&dir.path().join("store")));
    let import = |file: &Path| {
        let (code, err) = exit_code(&["--store", &url, "import", &s(file)]);
        assert_eq!(code, Some(2), "{err}");
        err
    };
    // A directory.
    let err = import(dir.path());
    assert!(
        err.contains(&s(dir.path())) && err.contains("is a directory"),
        "{err}"
    );
    // Invalid UTF-8 on line 3.
    let mut text = Vec::new();
    let blocks = chain(3);
    for b in &blocks[..2] {
        text.extend(olocus_storage::WireFormat::JSON.encode(b).unwrap());
        text.push(b'\n');
    }
    text.extend(b"{\"x\": \"\xff\xfe\"}\n");
    let utf = dir.path().join("bad.jsonl");
    std::fs::write(&utf, &text).unwrap();
    let err = import(&utf);
    assert!(err.contains("line 3: not UTF-8"), "{err}");
    // The blocks before it: nothing stored (one batch), and it says so.
    assert!(err.contains("no block was stored"), "{err}");
    // An empty binary file.
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let err = import(&empty);
    assert!(err.contains("the input is empty"), "{err}");
    // A record whose inner length prefix claims 2^60 bytes.
    let mut record = vec![1u8, 0, 0];
    record.extend([0u8; 32]);
    record.push(0);
    record.push(0xfd);
    record.extend((1u64 << 60).to_le_bytes());
    let mut bin = b"OLBLOCK1".to_vec();
    bin.extend((record.len() as u32).to_le_bytes());
    bin.extend(&record);
    let huge = dir.path().join("huge.bin");
    std::fs::write(&huge, &bin).unwrap();
    let err = import(&huge);
    assert!(
        err.contains("byte 8:") && err.contains("more than the"),
        "{err}"
    );
    assert!(!err.contains("corrupted") && !err.contains("{"), "{err}");
    // A record cut short.
    let whole = olocus_storage::WireFormat::BINARY
        .encode(&blocks[0])
        .unwrap();
    let mut bin = b"OLBLOCK1".to_vec();
    bin.extend((whole.len() as u32).to_le_bytes());
    bin.extend(&whole[..whole.len() - 5]);
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, &bin).unwrap();
    let err = import(&cut);
    assert!(err.contains("5 bytes early"), "{err}");
    // A failure after some batches were stored says how many and what to do.
    let mut text = Vec::new();
    for b in chain(30).iter().take(25) {
        text.extend(olocus_storage::WireFormat::JSON.encode(b).unwrap());
        text.push(b'\n');
    }
    text.extend(b"not json\n");
    let late = dir.path().join("late.jsonl");
    std::fs::write(&late, &text).unwrap();
    let (code, err) = exit_code(&["--store", &url, "import", "--batch", "10", &s(&late)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 26"), "{err}");
    assert!(
        err.contains("20 blocks were stored before this (up to index 19)"),
        "{err}"
    );
    assert!(err.contains("import again"), "{err}");
    // SQLite's causes are printed once.
    let notdb = dir.path().join("notdb.db");
    std::fs::write(&notdb, b"hello, not a database").unwrap();
    let (code, err) = exit_code(&["--store", &format!("sqlite:{}", s(&notdb)), "stats"]);
    assert_eq!(code, Some(6), "{err}");
    assert_eq!(err.matches("not a database").count(), 1, "{err}");
}

/// SQLite keeps no page checksums: damage that drops rows is caught by `verify`
/// (SQLite's integrity check and the counters), and `repair` copies every row
/// that still reads and names the indices it could not.
#[cfg(feature = "sqlite")]
#[test]
fn damaged_sqlite_is_reported_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = chain(1_500);
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &blocks);
    let db = dir.path().join("chain.db");
    let url = format!("sqlite:{}", s(&db));
    ok(&["--store", &url, "import", &s(&input)]);
    ok(&["--store", &url, "verify"]);
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2 / 4096 * 4096;
    for off in (mid + 100..mid + 4000).step_by(97) {
        bytes[off] ^= 0x55;
    }
    std::fs::write(&db, bytes).unwrap();
    let (out, err) = fails(&["--store", &url, "verify"]);
    assert!(
        out.contains("store damaged") || out.contains("chain broken"),
        "{out}"
    );
    assert!(err.contains("verification failed"), "{err}");

    let fixed = format!("sqlite:{}", s(&dir.path().join("fixed.db")));
    let out = ok(&["repair", "--from", &url, "--to", &fixed, "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let copied = v["copied"].as_u64().unwrap();
    let lost: u64 = v["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap() + 1)
        .sum();
    assert!(copied > 1_000, "{v}");
    assert_eq!(
        copied + lost,
        1_500,
        "every index copied or named lost: {v}"
    );
    let out = ok(&["--store", &fixed, "verify", "--allow-gaps"]);
    assert!(out.contains(&format!("verified {copied} blocks")), "{out}");
}

#[test]
fn reading_commands_open_existing_stores_and_read_beside_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    // A mistyped path is an error naming it, and nothing is created there.
    for url in backends(dir.path(), "typo") {
        let path = url.split_once(':').unwrap().1.to_string();
        for cmd in ["head", "list", "verify", "stats", "compact"] {
            let (_, err) = fails(&["--store", &url, cmd]);
            assert!(
                err.contains(&path) && err.contains("no "),
                "{url} {cmd}: {err}"
            );
        }
        assert!(
            !Path::new(&path).exists(),
            "{url}: a read created the store"
        );
    }
    // Every persistent backend here (SQLite has no writer lock to show)
    // locks its directory against a second writer; a reader opens beside it.
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &chain(30));
    let mut urls = vec![format!("fs:{}", s(&dir.path().join("busy-fs")))];
    if cfg!(feature = "rocksdb") {
        urls.push(format!("rocksdb:{}", s(&dir.path().join("busy-rocks"))));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for url in urls {
        ok(&["--store", &url, "import", &s(&input)]);
        let writer = rt
            .block_on(olocus_storage::Storage::open_url(&url))
            .unwrap();
        let listed = ok(&["--store", &url, "list", "--json"]);
        assert_eq!(listed.lines().count(), 30, "{url}: {listed}");
        assert!(ok(&["--store", &url, "verify"]).contains("verified 30 blocks"));
        assert!(ok(&["--store", &url, "head"]).contains("#29"), "{url}");
        let (_, err) = fails(&["--store", &url, "import", &s(&input)]);
        assert!(err.contains("lock"), "{url}: a second writer: {err}");
        rt.block_on(olocus_storage::StorageBackend::close(&*writer))
            .unwrap();
    }
}

/// Runs the binary to completion; whether it succeeded, and its peak resident
/// memory in bytes: the kernel's high-water mark (`VmHWM`, which only grows),
/// read every 2 ms until the process exits.
fn peak_rss(args: &[&str]) -> (bool, u64) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_olocus-storage"))
        .args(args)
        .env_remove("OLOCUS_STORE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        // Gone once the process has exited (a zombie has no memory lines).
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
        if let Some(status) = child.try_wait().unwrap() {
            return (status.success(), peak_kib * 1024);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A streamed export holds a page at a time whatever the chain's length: its
/// peak resident memory grows by less than 16 MiB from 20,000 to 200,000
/// blocks. (The filesystem backend still keeps its whole index in memory.)
#[test]
fn export_streams_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut kinds = Vec::new();
    if cfg!(feature = "sqlite") {
        kinds.push("sqlite");
    }
    if cfg!(feature = "rocksdb") {
        kinds.push("rocksdb");
    }
    for kind in kinds {
        let mut peaks = Vec::new();
        for blocks in [20_000u64, 200_000] {
            let url = format!("{kind}:{}", s(&dir.path().join(format!("{kind}-{blocks}"))));
            ok(&[
                "--store",
                &url,
                "demo",
                "--blocks",
                &blocks.to_string(),
                "--keep",
                "-q",
            ]);
            let out = dir.path().join("export.bin");
            let (success, peak) = peak_rss(&["--store", &url, "export", &s(&out)]);
            assert!(success, "{kind}: export of {blocks} blocks failed");
            let exported = std::fs::metadata(&out).unwrap().len();
            assert!(
                exported > blocks * 200,
                "{kind}: {exported} bytes for {blocks} blocks"
            );
            peaks.push(peak);
            std::fs::remove_file(&out).unwrap();
        }
        let growth = peaks[1].saturating_sub(peaks[0]);
        assert!(
            growth < 16 << 20,
            "{kind}: exporting 200,000 blocks peaked {} MiB above 20,000 ({} MiB → {} MiB)",
            growth >> 20,
            peaks[0] >> 20,
            peaks[1] >> 20
        );
    }
}

/// Each kind of failure ends with its own exit code, the README's table.
#[test]
fn failures_end_with_distinct_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &chain(40));
    let url = format!("fs:{}", s(&dir.path().join("chain")));
    let missing = format!("fs:{}", s(&dir.path().join("nowhere")));
    let cases: Vec<(Vec<String>, i32)> = vec![
        // Usage and bad input.
        (vec!["--store".into(), "ftp:/x".into(), "head".into()], 2),
        (
            vec![
                "--store".into(),
                format!("{url}?compresion=zstd"),
                "head".into(),
            ],
            2,
        ),
        (vec!["list".into(), "--bogus".into()], 2),
        // Not found: a store, a file, a block.
        (vec!["--store".into(), missing.clone(), "head".into()], 3),
        (
            vec![
                "--store".into(),
                url.clone(),
                "import".into(),
                s(&dir.path().join("no.jsonl")),
            ],
            3,
        ),
    ];
    for (args, want) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = exit_code(&args);
        assert_eq!(code, Some(*want), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    ok(&["--store", &url, "import", &s(&input)]);
    let (code, err) = exit_code(&["--store", &url, "get", &"ab".repeat(32)]);
    assert_eq!(code, Some(3), "a missing block: {err}");
    // Bad input file contents.
    let junk = dir.path().join("junk.jsonl");
    std::fs::write(&junk, "{not json}\n").unwrap();
    let (code, err) = exit_code(&["--store", &url, "import", &s(&junk)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 1"), "{err}");
    // Locked: a writer holds the store.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let writer = rt
        .block_on(olocus_storage::Storage::open_url(&url))
        .unwrap();
    let (code, err) = exit_code(&["--store", &url, "import", &s(&input)]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("locked"), "{err}");
    rt.block_on(olocus_storage::StorageBackend::close(&*writer))
        .unwrap();
    // Verification failed: a gap.
    let gapped = dir.path().join("gapped.jsonl");
    let mut blocks = chain(40);
    blocks.remove(20);
    write_jsonl(&gapped, &blocks);
    let gap_url = format!("fs:{}", s(&dir.path().join("gapped")));
    ok(&["--store", &gap_url, "import", &s(&gapped)]);
    let (code, err) = exit_code(&["--store", &gap_url, "verify"]);
    assert_eq!(code, Some(4), "{err}");
}

/// Output closed early (`| head`) ends the command quietly, with the code a
/// shell reports for SIGPIPE, and no panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &chain(3_000));
    let url = format!("fs:{}", s(&dir.path().join("chain")));
    ok(&["--store", &url, "import", &s(&input)]);
    for args in [
        vec!["--store", &url, "list", "--limit", "3000"],
        vec!["--store", &url, "list", "--json"],
        vec!["--store", &url, "export"],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_olocus-storage"))
            .args(&args)
            .env_remove("OLOCUS_STORE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?}");
        // The reading end is dropped here, as `head` exits.
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

/// `OLOCUS_LOG` turns logging on, and log lines into a pipe carry no colour
/// codes.
#[test]
fn logs_follow_olocus_log_without_colour_in_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("fs:{}", s(&dir.path().join("chain")));
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &chain(5));
    ok(&["--store", &url, "import", &s(&input)]);
    let out = common::bin_env(
        &["--store", &url, "head"],
        &[("OLOCUS_LOG", "storage_fs=debug")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("opened filesystem store"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
    let quiet = common::bin(&["--store", &url, "head"]);
    assert!(quiet.stderr.is_empty(), "logs without OLOCUS_LOG");
    // The documented filter for storage operations shows each as it ends,
    // with its outcome, and nothing else.
    let out = common::bin_env(
        &["--store", &url, "get", "--index", "3"],
        &[("OLOCUS_LOG", "storage_op=debug")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let ops: Vec<&str> = err.lines().filter(|l| l.contains("storage_op{")).collect();
    assert!(
        ops.iter().any(|l| l.contains("backend=\"filesystem\"")
            && l.contains("index=3")
            && l.contains("outcome=\"ok\"")
            && l.contains("close")),
        "{err}"
    );
    assert!(
        !err.contains("opened filesystem store"),
        "another target: {err}"
    );
}

/// A hash prefix that several blocks share is refused, listing them; one no
/// block has is not found.
#[test]
fn an_ambiguous_hash_prefix_lists_its_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // The chain is deterministic: among 2,000 hashes, some share 4 digits.
    let blocks = chain(2_000);
    write_jsonl(&input, &blocks);
    let url = format!("fs:{}", s(&dir.path().join("chain")));
    ok(&["--store", &url, "import", &s(&input)]);
    let hashes: Vec<String> = blocks.iter().map(|b| b.hash().to_string()).collect();
    let with = |p: &str| -> Vec<&String> { hashes.iter().filter(|h| h.starts_with(p)).collect() };
    let shared = hashes
        .iter()
        .map(|h| h[..4].to_string())
        .find(|p| with(p).len() > 1)
        .expect("two of 2,000 hashes share 4 digits");
    let (code, err) = exit_code(&["--store", &url, "get", &shared]);
    assert_eq!(code, Some(2), "{err}");
    for h in with(&shared) {
        assert!(err.contains(h.as_str()), "{h} not among: {err}");
    }
    // One more digit of one of them names it alone (or another prefix does).
    let one = with(&shared)[0];
    let unique = (5..=64)
        .map(|n| one[..n].to_string())
        .find(|p| with(p).len() == 1)
        .unwrap();
    let out = ok(&["--store", &url, "get", &unique, "--json"]);
    assert!(out.contains(one.as_str()), "{out}");
    let none = (0..=0xffffu32)
        .map(|n| format!("{n:04x}"))
        .find(|p| with(p).is_empty())
        .unwrap();
    let (code, err) = exit_code(&["--store", &url, "get", &none]);
    assert_eq!(code, Some(3), "{err}");
}

/// Where the store comes from: --config or --store on the command line (not
/// both), else OLOCUS_STORE.
#[test]
fn config_and_store_follow_one_precedence_rule() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &chain(7));
    let a = format!("fs:{}", s(&dir.path().join("a")));
    let b = dir.path().join("b");
    ok(&["--store", &a, "import", &s(&input)]);
    ok(&["--store", &format!("fs:{}", s(&b)), "import", &s(&input)]);
    let toml = dir.path().join("b.toml");
    std::fs::write(
        &toml,
        format!("[backend]\ntype = \"filesystem\"\npath = {:?}\n", s(&b)),
    )
    .unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_olocus-storage"));
        c.args(args).env_remove("OLOCUS_STORE");
        if let Some(v) = env {
            c.env("OLOCUS_STORE", v);
        }
        c.output().unwrap()
    };
    let missing = format!("fs:{}", s(&dir.path().join("missing")));
    // OLOCUS_STORE alone names the store.
    let out = run(&["head"], Some(&a));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --config wins over OLOCUS_STORE (which names a store that is not there).
    let out = run(&["--config", &s(&toml), "head"], Some(&missing));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // So does --store.
    let out = run(&["--store", &a, "head"], Some(&missing));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both on the command line: refused as usage.
    let out = run(&["--config", &s(&toml), "--store", &a, "head"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one"));
}

/// Under `--json`, a failure is a JSON object on standard output too.
#[test]
fn json_errors_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("fs:{}", s(&dir.path().join("missing")));
    let out = common::bin(&["--store", &missing, "head", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "not_found");
    assert_eq!(v["exit_code"], 3);
    assert!(v["error"].as_str().unwrap().contains("missing"), "{v}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `import` moves the head only to a block linked back to the stored chain,
/// and says why when it does not; the blocks are imported either way.
#[test]
fn import_moves_the_head_only_along_a_linked_chain() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = chain(20);
    let url = format!("fs:{}", s(&dir.path().join("chain")));
    let tail = dir.path().join("tail.jsonl");
    write_jsonl(&tail, &blocks[5..20]);
    let out = ok(&["--store", &url, "import", &s(&tail)]);
    assert!(out.contains("imported 15 blocks"), "{out}");
    assert!(out.contains("the head stays: "), "{out}");
    assert!(out.contains("block #0 is not stored"), "{out}");
    assert!(ok(&["--store", &url, "head"]).contains("no head set"));
    // With the start of the chain, the head moves to the top.
    let start = dir.path().join("start.jsonl");
    write_jsonl(&start, &blocks[..5]);
    ok(&["--store", &url, "import", &s(&start)]);
    // The top of that file is #4, below the stored blocks: importing the whole
    // file again moves the head to #19, which now links.
    let all = dir.path().join("all.jsonl");
    write_jsonl(&all, &blocks);
    let out = ok(&["--store", &url, "import", &s(&all), "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["head"], blocks[19].hash().to_string(), "{out}");
    assert!(ok(&["--store", &url, "verify"]).contains("verified 20 blocks"));
}

/// Runs the binary with `args` (one shell string) on a pseudo-terminal:
/// whether it succeeded, and what the terminal showed. util-linux's `script`
/// (in every Debian) runs the command and copies what it shows.
fn on_a_terminal(args: &str) -> (bool, String) {
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_olocus-storage"));
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("OLOCUS_STORE")
        .output()
        .expect("script(1) from util-linux");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Under a terminal (a pseudo-terminal from `script`), `import` shows its
/// progress as bytes of input consumed, in human units; into a pipe it
/// shows none.
#[test]
fn progress_is_input_consumed_in_human_units_and_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_jsonl(&input, &chain(30_000));
    let url = format!("fs:{}", s(&dir.path().join("a")));
    let (success, shown) = on_a_terminal(&format!("--store {url} import {}", s(&input)));
    assert!(success, "{shown}");
    assert!(shown.contains("imported 30000 blocks"), "{shown}");
    let size = std::fs::metadata(&input).unwrap().len();
    assert!(size > 4 << 20, "a file big enough to draw a bar: {size}");
    // The total is the file's size in MiB, and rates have units.
    let total = format!("{:.2} MiB", size as f64 / f64::from(1 << 20));
    assert!(shown.contains(&total), "no {total} in: {shown:?}");
    assert!(
        shown.contains("MiB/s") || shown.contains("KiB/s"),
        "{shown:?}"
    );
    // Every other long step has its bar or spinner too.
    let fixed = format!("fs:{}", s(&dir.path().join("fixed")));
    let copy = format!("fs:{}", s(&dir.path().join("copy")));
    let out_file = s(&dir.path().join("out.jsonl"));
    for (args, shows) in [
        (format!("--store {url} export {out_file}"), "export ["),
        (format!("--store {url} verify"), "verify ["),
        (format!("migrate --from {url} --to {copy}"), "migrate ["),
        (format!("repair --from {url} --to {fixed}"), "repair "),
        (format!("--store {url} compact"), "compact "),
    ] {
        let (success, shown) = on_a_terminal(&args);
        assert!(success, "{args}: {shown}");
        assert!(shown.contains(shows), "{args}: no {shows:?} in {shown:?}");
    }
    // Into a pipe: no bar at all.
    let url = format!("fs:{}", s(&dir.path().join("b")));
    let piped = common::bin(&["--store", &url, "import", &s(&input)]);
    assert!(piped.status.success());
    assert!(
        piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
}
