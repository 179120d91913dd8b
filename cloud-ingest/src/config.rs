//! The cloud-ingest configuration file (TOML). `config/cloud-ingest.example.toml` documents every
//! key; a test parses it. Every table is optional: no file at all means the embedded defaults
//! (SQLite in the working directory, the local broker).

use serde::Deserialize;
use std::path::PathBuf;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// `[mqtt]`.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// `[database]`.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// `[ingest]`.
    #[serde(default)]
    pub ingest: IngestTuning,
    /// `[broker]`: the embedded MQTT broker (off by default).
    #[serde(default)]
    pub broker: crate::broker::BrokerConfig,
    /// `[api]`: the HTTP API for cloud ops.
    #[serde(default)]
    pub api: crate::api::ApiConfig,
    /// `[reconcile]`: the site model, tolerances and schedules of the reconciliation.
    #[serde(default)]
    pub reconcile: crate::reconcile::ReconcileConfig,
}

/// `[mqtt]`: where the agents' batches come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port`.
    #[serde(default = "default_broker")]
    pub broker: String,
    /// Topic root the agents publish under (their `[uplink] topic_root`).
    #[serde(default = "default_root")]
    pub topic_root: String,
    /// Shared-subscription group: replicas with the same group split the data between them
    /// (`$share/{group}/…`). Empty = a plain subscription (single replica).
    #[serde(default = "default_group")]
    pub group: String,
    /// MQTT client id (unique per replica). Default `cloud-ingest-{hostname}-{pid}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username/password source, never inline: `file:/path` (two lines) or `systemd:NAME`.
    #[serde(default)]
    pub credentials: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: default_broker(),
            topic_root: default_root(),
            group: default_group(),
            client_id: None,
            credentials: None,
        }
    }
}

/// `[database]`: where the data go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL connection string (`host=… user=… dbname=…` or `postgres://…`). Absent: the
    /// embedded SQLite database at `sqlite_path`.
    #[serde(default)]
    pub url: Option<String>,
    /// SQLite file when no `url` is given. Default `flowsquare-ingest.db`.
    #[serde(default)]
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL: `"auto"` (TimescaleDB hypertables when the extension is available, native
    /// daily partitions otherwise), `"off"` (always native partitions) or `"require"`.
    #[serde(default = "default_timescale")]
    pub timescale: String,
    /// PostgreSQL: drop data older than this many days (partitions/chunks). Default: keep all.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// PostgreSQL native partitions: days created ahead. Default 7.
    #[serde(default = "default_ahead")]
    pub partitions_ahead_days: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            sqlite_path: None,
            timescale: default_timescale(),
            retention_days: None,
            partitions_ahead_days: default_ahead(),
        }
    }
}

fn default_timescale() -> String {
    "auto".into()
}
fn default_ahead() -> u32 {
    7
}

/// `[ingest]`: tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestTuning {
    /// Most batches committed in one database transaction.
    #[serde(default = "default_group_commit")]
    pub max_batches_per_commit: usize,
}

impl Default for IngestTuning {
    fn default() -> Self {
        IngestTuning {
            max_batches_per_commit: default_group_commit(),
        }
    }
}

fn default_broker() -> String {
    "mqtt://127.0.0.1:1883".into()
}
fn default_root() -> String {
    "fs".into()
}
fn default_group() -> String {
    "ingest".into()
}
fn default_group_commit() -> usize {
    64
}

impl IngestConfig {
    /// Parse a config file's text; errors name line and column.
    pub fn parse(text: &str) -> Result<IngestConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Broker host and port.
    pub fn broker_addr(&self) -> Result<(String, u16), String> {
        let rest = self
            .mqtt
            .broker
            .strip_prefix("mqtt://")
            .ok_or_else(|| format!("broker {:?} must start with mqtt://", self.mqtt.broker))?;
        match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => Ok((
                h.to_owned(),
                p.parse()
                    .map_err(|_| format!("broker port {p:?} is not a number"))?,
            )),
            None => Ok((rest.to_owned(), 1883)),
        }
    }
}
