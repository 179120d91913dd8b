//! `[buffer]`: the SQLite store-and-forward buffer. Every key is optional.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::store::{Bounds, Durability};
use crate::config::duration;

/// Default size bound.
pub const DEFAULT_MAX_SIZE_MB: u64 = 1024;
/// Default age bound: 30 days.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);
/// Default group-commit interval.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Default group-commit size.
pub const DEFAULT_COMMIT_READINGS: u32 = 10_000;

/// `[buffer]` keys.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Database file. Default: `$STATE_DIRECTORY/buffer.db` under systemd (`StateDirectory=`),
    /// else `/var/lib/flowsquare/buffer.db`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Most disk space for buffered readings, MiB. When reached, the oldest readings of the lowest
    /// priority go first and a gap record tells the cloud what was lost. Events are never dropped.
    #[serde(default = "default_max_size_mb")]
    pub max_size_mb: u64,
    /// Oldest reading kept (older unsent readings are dropped with a gap record).
    #[serde(default = "default_max_age", deserialize_with = "duration::de")]
    pub max_age: Duration,
    /// `crash-safe` (default: survives a process crash) or `power-loss-safe` (fsync every
    /// commit: also survives power loss, at a cost in flash wear and speed).
    #[serde(default)]
    pub durability: DurabilityConfig,
    /// Group commit: readings are committed at least this often…
    #[serde(default = "default_commit_interval", deserialize_with = "duration::de")]
    pub commit_interval: Duration,
    /// …or as soon as this many are waiting.
    #[serde(default = "default_commit_readings")]
    pub commit_readings: u32,
}

/// Spelling of `Durability` in the config.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityConfig {
    /// WAL, synchronous=NORMAL.
    #[default]
    CrashSafe,
    /// WAL, synchronous=FULL.
    PowerLossSafe,
}

fn default_max_size_mb() -> u64 {
    DEFAULT_MAX_SIZE_MB
}
fn default_max_age() -> Duration {
    DEFAULT_MAX_AGE
}
fn default_commit_interval() -> Duration {
    DEFAULT_COMMIT_INTERVAL
}
fn default_commit_readings() -> u32 {
    DEFAULT_COMMIT_READINGS
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            path: None,
            max_size_mb: DEFAULT_MAX_SIZE_MB,
            max_age: DEFAULT_MAX_AGE,
            durability: DurabilityConfig::CrashSafe,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            commit_readings: DEFAULT_COMMIT_READINGS,
        }
    }
}

impl BufferConfig {
    /// The database path in effect.
    pub fn effective_path(&self) -> PathBuf {
        if let Some(p) = &self.path {
            return p.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several directories separated by ':'; the first is ours.
            Some(dirs) => {
                let first = dirs
                    .to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                PathBuf::from(first).join("buffer.db")
            }
            None => PathBuf::from("/var/lib/flowsquare/buffer.db"),
        }
    }

    /// Bounds for the store.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            max_bytes: self.max_size_mb.saturating_mul(1024 * 1024),
            max_age_ms: i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Durability for the store.
    pub fn durability(&self) -> Durability {
        match self.durability {
            DurabilityConfig::CrashSafe => Durability::CrashSafe,
            DurabilityConfig::PowerLossSafe => Durability::PowerLossSafe,
        }
    }

    /// Problems as `(key, message)`.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.max_size_mb == 0 {
            p.push(("max_size_mb", "max_size_mb must be at least 1".into()));
        }
        if self.commit_interval.is_zero() || self.commit_interval > Duration::from_secs(10) {
            p.push((
                "commit_interval",
                "commit_interval must be between 1ms and 10s".into(),
            ));
        }
        if self.commit_readings == 0 {
            p.push((
                "commit_readings",
                "commit_readings must be at least 1".into(),
            ));
        }
        p
    }
}
