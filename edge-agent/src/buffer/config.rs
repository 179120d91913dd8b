//! `[buffer]`: the SQLite store-and-forward buffer. Every key is optional.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::store::{Bounds, Durability};
use crate::settings::duration;

/// Default size bound: 1 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;
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
    /// Most disk space for buffered readings: `"1GiB"`, `"512MiB"`, `"64KiB"` (also KB/MB/GB,
    /// powers of 1000). When reached, the oldest readings of the lowest priority go first and a
    /// gap record tells the cloud what was lost. Events are never dropped.
    #[serde(default = "default_max_size", deserialize_with = "de_size")]
    pub max_size: u64,
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

fn default_max_size() -> u64 {
    DEFAULT_MAX_SIZE
}

/// Parse `"1GiB"`, `"512MiB"`, `"64KiB"`, `"10MB"`, `"4096B"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with a unit, like \"512MiB\"")
    })?;
    let mult: f64 = match unit.trim() {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    Ok((n * mult) as u64)
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_size(&s).map_err(serde::de::Error::custom)
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
            max_size: DEFAULT_MAX_SIZE,
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
            max_bytes: self.max_size,
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
        if self.max_size < 4096 {
            p.push(("max_size", "max_size must be at least 4KiB".into()));
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
