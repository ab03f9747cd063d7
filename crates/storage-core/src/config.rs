//! Settings shared by several backends.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Result, StorageError};

/// How a store is opened.
///
/// In TOML and URLs: `"create"`, `"open_existing"` or `"read_only"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenMode {
    /// Open the store, creating it if it does not exist.
    #[default]
    Create,
    /// Open a store that exists; a missing one is
    /// [`StorageError::StoreNotFound`] naming where it was looked for, and
    /// nothing is created.
    OpenExisting,
    /// Open a store that exists for reading only: every write fails with
    /// [`StorageError::ReadOnly`] and nothing on disk changes. Backends that
    /// support it open a store another process holds open for writing, and see
    /// what that process had written when this one opened.
    ReadOnly,
}

impl OpenMode {
    /// Whether the mode may create a missing store.
    pub fn creates(self) -> bool {
        self == Self::Create
    }

    /// The [`StorageError::StoreNotFound`] for a store of `backend` missing at
    /// `location`, unless this mode creates it.
    pub fn require_existing(
        self,
        backend: &str,
        exists: bool,
        location: impl FnOnce() -> String,
    ) -> Result<()> {
        if exists || self.creates() {
            return Ok(());
        }
        Err(StorageError::StoreNotFound {
            backend: backend.to_owned(),
            location: location(),
        })
    }
}

impl std::fmt::Display for OpenMode {
    /// The name TOML and URLs use.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::OpenExisting => "open_existing",
            Self::ReadOnly => "read_only",
        })
    }
}

impl std::str::FromStr for OpenMode {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "create" => Ok(Self::Create),
            "open_existing" | "existing" => Ok(Self::OpenExisting),
            "read_only" | "ro" => Ok(Self::ReadOnly),
            other => Err(StorageError::Configuration(format!(
                "open mode {other:?}: expected create, open_existing or read_only"
            ))),
        }
    }
}

/// Write-ahead-log and durability settings, shared by every backend (each maps
/// them onto its engine, or refuses to open).
///
/// How a backend maps them (the filesystem backend, for instance):
/// - `enabled = false`: writes reach the operating system before they are
///   acknowledged (they survive a process crash) but are not synced; a power loss
///   can lose recent writes.
/// - `enabled = true`, `sync_interval > 0`: as above, plus a sync every
///   `sync_interval`; a power loss loses at most that window.
/// - `enabled = true`, `sync_interval = 0`: every write is synced before it is
///   acknowledged (concurrent writers share one sync); a power loss loses nothing
///   acknowledged.
///
/// `max_log_size` bounds one log file (segment) before the backend starts another.
///
/// In TOML, `sync_interval` is a number of seconds or a string such as `"250ms"`,
/// `"5s"` or `"1m"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WALConfig {
    /// Whether writes are synced at all (see the type docs).
    pub enabled: bool,
    /// Time between syncs; zero syncs every write before acknowledging it.
    #[serde(with = "human_duration")]
    pub sync_interval: Duration,
    /// Largest size of one log file, bytes.
    pub max_log_size: u64,
}

impl Default for WALConfig {
    /// Enabled, a sync every 5 s, 100 MiB log files.
    fn default() -> Self {
        Self {
            enabled: true,
            sync_interval: Duration::from_secs(5),
            max_log_size: 100 * 1024 * 1024,
        }
    }
}

impl WALConfig {
    /// Every write synced before it is acknowledged.
    pub fn synced() -> Self {
        Self {
            sync_interval: Duration::ZERO,
            ..Self::default()
        }
    }

    /// Checks the values: a log file must hold at least 64 KiB.
    pub fn validate(&self) -> Result<()> {
        if self.max_log_size < 64 * 1024 {
            return Err(StorageError::Configuration(format!(
                "wal_config.max_log_size {} is below the 65536-byte minimum",
                self.max_log_size
            )));
        }
        Ok(())
    }
}

/// Parses a bare number of seconds (`"1.5"`) or a duration in humantime's
/// syntax: `"250ms"`, `"5s"`, `"2m"`, `"1h30m"`, `"1h 30m"`, `"2days"`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|e| StorageError::Configuration(format!("bad duration {s:?}: {e}")));
    }
    humantime::parse_duration(s).map_err(|e| {
        StorageError::Configuration(format!(
            "bad duration {s:?}: {e} (expected e.g. \"250ms\", \"5s\", \"1h30m\")"
        ))
    })
}

/// serde for durations in configuration files: written as `"250ms"`, read as a
/// number of seconds or a string [`parse_duration`] accepts. Use it as
/// `#[serde(with = "storage_core::human_duration")]`, or `human_duration::option`
/// for `Option<Duration>`.
pub mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(f64),
        Text(String),
    }

    fn from_raw<E: serde::de::Error>(raw: Raw) -> Result<Duration, E> {
        match raw {
            Raw::Secs(s) => Duration::try_from_secs_f64(s).map_err(E::custom),
            Raw::Text(t) => super::parse_duration(&t).map_err(E::custom),
        }
    }

    /// Writes `"<n>ms"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    /// Reads seconds or a duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        from_raw(Raw::deserialize(d)?)
    }

    /// The same for `Option<Duration>` (absent or null: `None`).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `"<n>ms"`, or nothing.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Reads seconds, a duration string, or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<super::Raw>::deserialize(d)?
                .map(super::from_raw)
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn optional_durations() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct T {
            #[serde(default, with = "human_duration::option")]
            ttl: Option<Duration>,
        }
        let t: T = serde_json::from_str(r#"{"ttl": "10m"}"#).unwrap();
        assert_eq!(t.ttl, Some(Duration::from_secs(600)));
        assert_eq!(serde_json::from_str::<T>("{}").unwrap().ttl, None);
        assert_eq!(
            serde_json::from_str::<T>(r#"{"ttl": null}"#).unwrap().ttl,
            None
        );
        assert_eq!(
            serde_json::from_str::<T>(r#"{"ttl": 1.5}"#).unwrap().ttl,
            Some(Duration::from_millis(1500))
        );
        assert!(serde_json::from_str::<T>(r#"{"ttl": "soon"}"#).is_err());
        let back: T = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let c: WALConfig = serde_json::from_str(r#"{"sync_interval": "0ms"}"#).unwrap();
        assert_eq!(c, WALConfig::synced());
        let c: WALConfig = serde_json::from_str(r#"{"sync_interval": 2}"#).unwrap();
        assert_eq!(c.sync_interval, Duration::from_secs(2));
        let back: WALConfig =
            serde_json::from_str(&serde_json::to_string(&WALConfig::default()).unwrap()).unwrap();
        assert_eq!(back, WALConfig::default());
        assert!(serde_json::from_str::<WALConfig>(r#"{"sync": 1}"#).is_err());
        assert!(
            WALConfig {
                max_log_size: 10,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
