//! The store stage: one trait, two backends with the same semantics, one shared test suite.
//!
//! - `postgres/`: PostgreSQL ≥ 14 (production): TimescaleDB hypertables where the extension is
//!   available, native daily range partitions otherwise; binary COPY for readings;
//! - `sqlite/`: the embedded default for single-host sites and the demo;
//! - `suite.rs`: the behaviour both must show (run by each backend's tests).
//!
//! Idempotency: every batch is recorded in a per-agent ledger `(site, agent, batch_id)` in the
//! same transaction as its rows, so a re-sent batch is stored once (no row-level unique index on
//! readings, which would make bulk loading several times slower).

pub mod error;
pub mod ledger;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub mod suite;

pub use error::StoreError;
pub use ledger::Ledger;

/// How far back a stored event is looked for when a batch brings a record with the very same
/// source, kind and fields (the PLC's own sequence number, BOL and totals among them): 7 days.
/// Such a record is the same one captured again by an agent whose buffer database — and with it
/// its event cursors — was replaced (reinstall, quarantined buffer, a spare gateway): the PLC
/// still shows it. It is skipped and logged, never stored twice. A record re-read after a
/// longer idle spell of its source would be stored again (documented limit).
pub const RECAPTURE_WINDOW_MS: i64 = 7 * 24 * 3_600_000;

use async_trait::async_trait;
use flowsquare_wire as wire;

/// What committing a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Stored now.
    Stored {
        /// Readings inserted.
        readings: u64,
        /// Events inserted.
        events: u64,
        /// Gap records inserted.
        gaps: u64,
    },
    /// Already in the ledger: nothing stored again (acknowledge it again).
    Duplicate,
    /// The batch refers to a tag catalog (config hash) whose birth message has not arrived yet:
    /// nothing stored, do not acknowledge (the agent re-sends; the retained birth arrives first).
    UnknownCatalog,
}

/// A message that could not be used, kept with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Topic it came on.
    pub topic: String,
    /// Raw payload.
    pub payload: Vec<u8>,
    /// Why it was rejected.
    pub reason: String,
    /// When it was received (UTC ms).
    pub received_ms: i64,
}

/// An agent as the cloud sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AgentRow {
    /// Site id.
    pub site: String,
    /// Agent id.
    pub agent: String,
    /// Online according to its last status (or Last Will).
    pub online: bool,
    /// Last message of any kind (UTC ms).
    pub last_seen_ms: Option<i64>,
    /// Agent version from birth/status.
    pub version: Option<String>,
    /// Current config hash (latest birth).
    pub config_hash: Option<String>,
    /// Readings held in its buffer at the last heartbeat.
    pub backlog_readings: Option<u64>,
    /// Oldest unsent reading at the last heartbeat (UTC ms).
    pub oldest_unsent_ms: Option<i64>,
}

/// A tag in the registry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TagRow {
    /// Database id.
    pub id: i64,
    /// Site.
    pub site: String,
    /// Agent.
    pub agent: String,
    /// Hierarchical name.
    pub name: String,
    /// Engineering unit.
    pub unit: Option<String>,
    /// gauge / totalizer / state.
    pub kind: String,
    /// Device name.
    pub device: String,
    /// Free text.
    pub description: Option<String>,
    /// Poll interval (expected reporting interval), ms.
    pub interval_ms: i64,
}

/// Latest value of a tag.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatestRow {
    /// Tag id.
    pub tag_id: i64,
    /// Time (UTC ms).
    pub ts_ms: i64,
    /// Numeric value (numbers and booleans as 0/1).
    pub value: Option<f64>,
    /// Text value.
    pub text: Option<String>,
    /// Quality (`good`, `bad-communication`, …).
    pub quality: String,
}

/// One bucket of a series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bucket {
    /// Bucket start (UTC ms).
    pub ts_ms: i64,
    /// Minimum of good values.
    pub min: Option<f64>,
    /// Maximum of good values.
    pub max: Option<f64>,
    /// Mean of good values.
    pub avg: Option<f64>,
    /// Last good value.
    pub last: Option<f64>,
    /// Readings in the bucket (all qualities).
    pub count: i64,
    /// Readings of bad quality in the bucket.
    pub bad: i64,
}

/// A stored gap record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GapRow {
    /// Site.
    pub site: String,
    /// Agent.
    pub agent: String,
    /// Batch that reported it.
    pub batch_id: i64,
    /// Tag ids concerned (empty = all tags of the agent).
    pub tag_ids: Vec<i64>,
    /// Start of the missing range (UTC ms).
    pub from_ms: i64,
    /// End of the missing range (UTC ms).
    pub to_ms: i64,
    /// Readings lost (0 = unknown).
    pub count: i64,
    /// Why.
    pub reason: String,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetterRow {
    /// Row id.
    pub id: i64,
    /// Topic.
    pub topic: String,
    /// Why.
    pub reason: String,
    /// Payload size.
    pub bytes: i64,
    /// Received (UTC ms).
    pub received_ms: i64,
}

/// The store interface both backends implement (same semantics, one test suite).
#[async_trait]
pub trait Store: Send + Sync {
    /// Create or upgrade the schema (idempotent). Returns a description of what is in use
    /// (e.g. "timescaledb 2.28.3 hypertables" or "native partitions").
    async fn migrate(&self) -> Result<String, StoreError>;
    /// Commit batches, each atomically with its ledger entry; outcomes in input order. The
    /// backend may use one transaction for all of them.
    async fn commit(&self, batches: &[wire::Batch]) -> Result<Vec<CommitOutcome>, StoreError>;
    /// Keep an unusable message.
    async fn dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError>;
    /// Register a birth: the agent, its devices and tags, the catalog of its config hash.
    async fn birth(&self, b: &wire::Birth, received_ms: i64) -> Result<(), StoreError>;
    /// Record a status message (online, or offline from a Last Will).
    async fn status(
        &self,
        site: &str,
        agent: &str,
        s: &wire::Status,
        received_ms: i64,
    ) -> Result<(), StoreError>;
    /// Record a heartbeat (backlog figures).
    async fn heartbeat(
        &self,
        site: &str,
        agent: &str,
        h: &wire::Heartbeat,
        received_ms: i64,
    ) -> Result<(), StoreError>;
    /// Agents.
    async fn agents(&self) -> Result<Vec<AgentRow>, StoreError>;
    /// Tags, optionally of one site and under a name prefix.
    async fn tags(
        &self,
        site: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<Vec<TagRow>, StoreError>;
    /// Latest reading of each of these tags.
    async fn latest(&self, tag_ids: &[i64]) -> Result<Vec<LatestRow>, StoreError>;
    /// A tag's readings in `[from_ms, to_ms)` bucketed by `step_ms`.
    async fn series(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Bucket>, StoreError>;
    /// Readings stored for a tag in a range (count, for tests and reconciliation checks).
    async fn count_readings(
        &self,
        tag_id: Option<i64>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError>;
    /// Gap records overlapping a range.
    async fn gaps(
        &self,
        site: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<GapRow>, StoreError>;
    /// The newest dead letters.
    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterRow>, StoreError>;
    /// The reconciliation's storage (movements, runs, variance records, alerts).
    fn ledger(&self) -> &dyn Ledger;
    /// Is the database reachable?
    async fn ping(&self) -> Result<(), StoreError>;
    /// Periodic upkeep (partitions ahead, retention, compression, aggregates); returns a one-line
    /// summary. The service calls it hourly; backends with nothing to do keep the default.
    async fn maintain(&self) -> Result<String, StoreError> {
        Ok("nothing to do".into())
    }
}
