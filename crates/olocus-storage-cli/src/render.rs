//! How blocks, metadata and statistics are printed, for people and as JSON.

use std::time::SystemTime;

use base64::Engine as _;
use olocus_storage::{BackendStats, Block, BlockMetadata, StorageStats, unix_nanos};
use serde_json::{Value, json};

/// RFC 3339 with nanoseconds, UTC.
pub(crate) fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// The first 12 hex digits, for tables.
pub(crate) fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// Metadata as JSON.
pub(crate) fn meta_json(m: &BlockMetadata) -> Value {
    json!({
        "index": m.index,
        "hash": m.hash.to_string(),
        "timestamp": time(m.timestamp),
        "timestamp_nanos": unix_nanos(m.timestamp).ok(),
        "payload_type": m.payload_type,
        "public_key": m.public_key.to_string(),
        "size_bytes": m.size_bytes,
    })
}

/// A block as JSON; the payload as JSON when it is JSON, else base64.
pub(crate) fn block_json(b: &Block) -> Value {
    let payload = match serde_json::from_slice::<Value>(b.payload()) {
        Ok(v) => json!({ "json": v }),
        Err(_) => {
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b.payload()) })
        }
    };
    json!({
        "index": b.index(),
        "hash": b.hash().to_string(),
        "timestamp": time(b.timestamp()),
        "timestamp_nanos": b.timestamp_nanos(),
        "public_key": b.public_key().to_string(),
        "previous_hash": b.previous_hash().map(|h| h.to_string()),
        "payload_type": b.payload_type(),
        "payload": payload,
        "signature": b.signature().to_string(),
        "size_bytes": b.size_bytes(),
    })
}

/// One table line of metadata.
pub(crate) fn meta_line(m: &BlockMetadata) -> String {
    let hash = m.hash.to_string();
    let key = m.public_key.to_string();
    format!(
        "{:>8}  {}  {}  {:<24}  {}  {:>7}",
        m.index,
        short(&hash),
        time(m.timestamp),
        m.payload_type,
        short(&key),
        m.size_bytes
    )
}

/// The header of [`meta_line`] tables.
pub(crate) fn meta_header() -> String {
    format!(
        "{:>8}  {:<12}  {:<30}  {:<24}  {:<12}  {:>7}",
        "index", "hash", "timestamp", "type", "signer", "bytes"
    )
}

/// Statistics as JSON.
pub(crate) fn stats_json(s: &StorageStats) -> Value {
    let specific = match &s.backend_specific {
        BackendStats::Memory { heap_usage } => json!({ "memory": { "heap_usage": heap_usage } }),
        BackendStats::Filesystem {
            directory_size,
            file_count,
            segments,
            stored_bytes,
            uncompressed_bytes,
            dead_bytes,
        } => json!({ "filesystem": {
            "directory_size": directory_size, "file_count": file_count, "segments": segments,
            "stored_bytes": stored_bytes, "uncompressed_bytes": uncompressed_bytes,
            "dead_bytes": dead_bytes,
        }}),
        BackendStats::RocksDB {
            live_data_size,
            total_data_size,
            num_entries,
            num_deletions,
            compaction_stats,
        } => json!({ "rocksdb": {
            "live_data_size": live_data_size, "total_data_size": total_data_size,
            "num_entries": num_entries, "num_deletions": num_deletions,
            "last_compaction": compaction_stats.last_compaction.map(time),
            "compaction_seconds": compaction_stats.compaction_time.as_secs_f64(),
        }}),
        BackendStats::SQLite {
            database_size,
            page_count,
            page_size,
            fragmentation_ratio,
        } => json!({ "sqlite": {
            "database_size": database_size, "page_count": page_count,
            "page_size": page_size, "fragmentation_ratio": fragmentation_ratio,
        }}),
        BackendStats::Other { backend, values } => json!({ backend: values }),
        other => json!({ "other": format!("{other:?}") }),
    };
    json!({
        "total_blocks": s.total_blocks,
        "total_size_bytes": s.total_size_bytes,
        "oldest_block": s.oldest_block.map(time),
        "newest_block": s.newest_block.map(time),
        "backend": specific,
    })
}

/// Statistics for people: the chain first, then the backend's figures, sizes
/// in binary units (exact bytes are in `--json`).
pub(crate) fn stats_text(s: &StorageStats) -> String {
    use indicatif::HumanBytes as B;
    let when = |t: Option<SystemTime>| t.map_or_else(|| "-".to_string(), time);
    let mut rows: Vec<(&str, String)> = vec![
        ("blocks", s.total_blocks.to_string()),
        (
            "size",
            format!("{} (canonical encoding)", B(s.total_size_bytes)),
        ),
        ("oldest", when(s.oldest_block)),
        ("newest", when(s.newest_block)),
    ];
    let backend: (&str, Vec<(&str, String)>) = match &s.backend_specific {
        BackendStats::Memory { heap_usage } => {
            ("memory", vec![("heap", B(*heap_usage).to_string())])
        }
        BackendStats::Filesystem {
            directory_size,
            file_count,
            segments,
            stored_bytes,
            uncompressed_bytes,
            dead_bytes,
        } => (
            "filesystem",
            vec![
                (
                    "on disk",
                    format!("{} in {file_count} files", B(*directory_size)),
                ),
                ("segments", segments.to_string()),
                (
                    "stored",
                    format!(
                        "{} ({} uncompressed)",
                        B(*stored_bytes),
                        B(*uncompressed_bytes)
                    ),
                ),
                ("reclaimable", format!("{} (compact)", B(*dead_bytes))),
            ],
        ),
        BackendStats::RocksDB {
            live_data_size,
            total_data_size,
            num_entries,
            num_deletions,
            compaction_stats,
        } => (
            "rocksdb",
            vec![
                ("live data", B(*live_data_size).to_string()),
                ("total data", B(*total_data_size).to_string()),
                ("entries", num_entries.to_string()),
                ("deletions", num_deletions.to_string()),
                ("last compaction", when(compaction_stats.last_compaction)),
            ],
        ),
        BackendStats::SQLite {
            database_size,
            page_count,
            page_size,
            fragmentation_ratio,
        } => (
            "sqlite",
            vec![
                ("database", B(*database_size).to_string()),
                ("pages", format!("{page_count} of {}", B(*page_size))),
                (
                    "free pages",
                    format!("{:.1}% (vacuum)", fragmentation_ratio * 100.0),
                ),
            ],
        ),
        BackendStats::Other { backend, values } => (
            backend.as_str(),
            values
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_string()))
                .collect(),
        ),
        other => ("other", vec![("details", format!("{other:?}"))]),
    };
    rows.push(("backend", backend.0.to_string()));
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<18}{v}\n"));
    }
    for (k, v) in backend.1 {
        out.push_str(&format!("  {k:<16}{v}\n"));
    }
    out
}
