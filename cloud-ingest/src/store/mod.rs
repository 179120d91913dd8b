//! The store stage: one trait, two backends with the same semantics, one shared test suite.
//!
//! - `postgres/`: PostgreSQL ≥ 14 (production): TimescaleDB hypertables where the extension is
//!   available, native daily range partitions otherwise; binary COPY for readings;
//! - `sqlite/`: the embedded default for single-host sites and the demo;
//! - `suite.rs`: the behaviour both must show (run by each backend's tests).
//!
//! Idempotency: every batch is recorded in a per-agent ledger `(site, agent, buffer_epoch,
//! batch_id)` with the digest of its content ([`wire::Batch::content_digest`]) in the same
//! transaction as its rows, so a re-sent batch is stored once (no row-level unique index on
//! readings, which would make bulk loading several times slower). A batch whose key is in the
//! ledger with another digest is a [`CommitOutcome::Conflict`]: nothing stored, a
//! `batch-conflict` alert opened, never acknowledged as a duplicate. Version 1 frames have epoch
//! 0 (and so do the ledger rows from before the epoch existed).
//!
//! Buffer identity: a birth naming a buffer epoch is kept in `agent_buffers`; a new epoch for an
//! agent that had another (or had stored data) records a `buffer-replaced` gap of unknown count
//! from its last stored reading to the new buffer's creation ([`buffer_replaced_gap`]).

pub mod bounds;
pub mod error;
pub mod ledger;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub mod suite;

pub use bounds::Limits;
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
        /// Readings and events outside the accepted window ([`bounds::split_window`]): not
        /// stored, kept as one dead letter in the same transaction.
        out_of_window: u64,
    },
    /// Already in the ledger with the same content digest: nothing stored again (acknowledge
    /// it again).
    Duplicate,
    /// Its key (site, agent, buffer epoch, batch id) is in the ledger with another content
    /// digest: nothing stored, a `batch-conflict` alert is open (written in the same
    /// transaction). The consumer keeps it as a dead letter and rejects it; never a duplicate.
    Conflict {
        /// What conflicts, for the dead letter and the rejection.
        reason: String,
    },
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
    /// The buffer database it sends from (latest birth that named one).
    pub buffer: Option<BufferRow>,
    /// When a birth last brought a buffer that replaced another, or followed stored data of the
    /// agent (first seen, UTC ms): the moment a `buffer-replaced` gap may have been recorded.
    pub buffer_replaced_ms: Option<i64>,
    /// Why the agent's latest birth was refused (`birth refused: N tags > limit M`; its batches
    /// wait unacknowledged), as the consumer knows it; None: not refused. The stores leave it
    /// None; the API fills it.
    pub birth_refused: Option<String>,
}

/// An agent's buffer database as its birth named it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BufferRow {
    /// The epoch (identity of the buffer database).
    pub epoch: u64,
    /// When the agent created it (UTC ms, agent clock).
    pub created_ms: i64,
    /// `new`, `existing`, `replaced-corrupt`, `replaced-empty`.
    pub origin: String,
    /// What the agent says about a replacement.
    pub note: Option<String>,
    /// When the cloud first saw it (UTC ms).
    pub first_seen_ms: i64,
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

/// A stored gap record. Serialized with `count: null` when the count is unknown.
#[derive(Debug, Clone, PartialEq)]
pub struct GapRow {
    /// Row id (the paging key's tie-breaker; not shown).
    pub id: i64,
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
    /// Readings lost (0 when `count_known` is false; the API then shows `null`).
    pub count: i64,
    /// Whether `count` is known (a crash window or a vanished buffer: a span, not a number).
    pub count_known: bool,
    /// Why.
    pub reason: String,
    /// More about it (a replaced buffer: origin and the agent's note).
    pub detail: Option<String>,
}

impl serde::Serialize for GapRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("GapRow", 10)?;
        m.serialize_field("site", &self.site)?;
        m.serialize_field("agent", &self.agent)?;
        m.serialize_field("batch_id", &self.batch_id)?;
        m.serialize_field("tag_ids", &self.tag_ids)?;
        m.serialize_field("from_ms", &self.from_ms)?;
        m.serialize_field("to_ms", &self.to_ms)?;
        m.serialize_field("count", &self.count_known.then_some(self.count))?;
        m.serialize_field("count_known", &self.count_known)?;
        m.serialize_field("reason", &self.reason)?;
        m.serialize_field("detail", &self.detail)?;
        m.end()
    }
}

/// The largest gap count that can be true: 10^12 (a thousand readings a second of a thousand
/// tags for over eleven days).
pub const MAX_GAP_COUNT: u64 = 1_000_000_000_000;

/// Check the gap records of a batch before anything is stored: a gap that ends before it
/// starts, has a time outside the plausible range ([`crate::times::check_event`], against the
/// latest of `now_ms`, the data clock and the batch's creation: a simulated clock may run
/// ahead), or has a count above what its span can hold (1,000 readings per ms per tag; for
/// `missed-event` records only the absolute bound) or above [`MAX_GAP_COUNT`], makes the batch
/// a dead letter. `tag_count` is the size of the batch's catalog (a gap without tags concerns
/// all of them). The error names the gap.
pub fn check_gaps(b: &wire::Batch, tag_count: usize, now_ms: i64) -> Result<(), String> {
    // The data clock (a simulated one runs ahead of the wall clock in the demo) and the batch's
    // creation (the agent's clock) may both be later than `now_ms`: the latest of the three.
    let now = now_ms
        .max(b.created_ms)
        .max(flowsquare_service::clock::now_ms());
    for (i, g) in b.gaps.iter().enumerate() {
        let name = || {
            format!(
                "batch {}/{}/{}#{}: gap {i} ({}, {} .. {})",
                b.site,
                b.agent,
                b.buffer_epoch,
                b.batch_id,
                gap_reason_name(&g.reason),
                g.from_ms,
                g.to_ms
            )
        };
        if g.to_ms < g.from_ms {
            return Err(format!("{}: ends before it starts", name()));
        }
        for (end, t) in [("start", g.from_ms), ("end", g.to_ms)] {
            if let Err(e) = crate::times::check_event(t, now) {
                return Err(format!("{}: {end} {e}", name()));
            }
        }
        if g.count_known {
            let tags = if g.tags.is_empty() {
                tag_count
            } else {
                g.tags.len()
            }
            .max(1);
            let span = i128::from(g.to_ms) - i128::from(g.from_ms) + 1;
            // Missed records are counted in sequence numbers, not readings: only the absolute
            // bound holds for them (a counter may jump thousands at one instant).
            let possible = if g.reason == wire::GapReason::MissedEvent {
                i128::from(MAX_GAP_COUNT)
            } else {
                span * tags as i128 * 1000
            };
            if g.count > MAX_GAP_COUNT || i128::from(g.count) > possible {
                return Err(format!(
                    "{}: count {} is more than its span can hold ({} tags over {} ms; at most {})",
                    name(),
                    g.count,
                    tags,
                    span,
                    possible.min(i128::from(MAX_GAP_COUNT))
                ));
            }
        }
    }
    Ok(())
}

/// The stored spelling of a gap reason (the wire's names).
pub fn gap_reason_name(r: &wire::GapReason) -> &str {
    match r {
        wire::GapReason::BufferFull => "buffer-full",
        wire::GapReason::BufferAge => "buffer-age",
        wire::GapReason::MissedEvent => "missed-event",
        wire::GapReason::Other(s) => s,
    }
}

/// The reason of the gap the cloud records when an agent's buffer was replaced.
pub const BUFFER_REPLACED: &str = "buffer-replaced";

/// The gap to record when a birth brings buffer `new`, not seen before, for an agent: `None`
/// when it is the agent's first buffer and nothing was stored before,
/// when an `existing` database is merely named for the first time (an upgraded agent), or when
/// the window between the last stored reading (`last_data_ms`, else the previous buffer's
/// creation `previous_created_ms`) and the new buffer's creation is empty. Otherwise
/// (from, to, detail): every tag, count unknown.
pub fn buffer_replaced_gap(
    new: &wire::messages::BufferIdentity,
    previous_created_ms: Option<i64>,
    last_data_ms: Option<i64>,
) -> Option<(i64, i64, String)> {
    if previous_created_ms.is_none() && (new.origin == "existing" || last_data_ms.is_none()) {
        return None;
    }
    let from = match last_data_ms {
        Some(t) => t.saturating_add(1),
        None => previous_created_ms?,
    };
    let to = new.created_ms;
    if to < from || crate::times::check_query(to).is_err() {
        return None;
    }
    let mut detail = format!("buffer {} ({})", new.epoch, new.origin);
    if let Some(n) = &new.note {
        detail.push_str(": ");
        detail.push_str(n);
    }
    Some((from, to, detail))
}

/// The alert kind opened when a batch key comes again with other content.
pub const BATCH_CONFLICT: &str = "batch-conflict";

/// A `batch-conflict` alert: (place, date, message, detail). One stays open per (site, agent):
/// a backend opens it only when none is open.
pub fn conflict_alert(
    b: &wire::Batch,
    stored_digest: i64,
    now_ms: i64,
) -> (String, String, String, serde_json::Value) {
    let date = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000))
        .map(|t| {
            let d = t.date();
            format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
        })
        .unwrap_or_else(|_| "1970-01-01".into());
    let message = format!(
        "{}: batch {} of buffer {} came again with other content; kept as a dead letter, not stored",
        b.agent, b.batch_id, b.buffer_epoch
    );
    let detail = serde_json::json!({
        "agent": b.agent,
        "buffer_epoch": b.buffer_epoch,
        "batch_id": b.batch_id,
        "digest": format!("{:016x}", b.content_digest()),
        "stored_digest": format!("{:016x}", stored_digest as u64),
    });
    (b.agent.clone(), date, message, detail)
}

/// The reason given for a conflicting batch (dead letter and rejection).
pub fn conflict_reason(b: &wire::Batch) -> String {
    format!(
        "batch conflict: {}/{} buffer {} batch {} is already stored with other content (digest {:016x} differs); not stored",
        b.site,
        b.agent,
        b.buffer_epoch,
        b.batch_id,
        b.content_digest()
    )
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

/// The sort key of an agent in its list: (site, agent).
pub type AgentKey = (String, String);
/// The sort key of a tag in its list: (site, agent, name), unique in the registry.
pub type TagKey = (String, String, String);
/// The sort key of a gap record: (start, id).
pub type GapKey = (i64, i64);
/// The sort key of a dead letter (newest first): (received, id).
pub type DeadLetterKey = (i64, i64);

/// Which tags [`Store::tags_page`] lists (all given conditions hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagFilter {
    /// Of this site.
    pub site: Option<String>,
    /// Names starting with this (case-sensitive, no wildcards).
    pub prefix: Option<String>,
    /// Of these sites (a token's scope; None: every site).
    pub sites: Option<Vec<String>>,
    /// With these ids (None: any).
    pub ids: Option<Vec<i64>>,
}

/// Which gap records [`Store::gaps_page`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GapFilter {
    /// Of this site.
    pub site: Option<String>,
    /// Of these sites (None: every site).
    pub sites: Option<Vec<String>>,
    /// Overlapping `[from_ms, to_ms)`.
    pub from_ms: i64,
    /// End of the range (exclusive).
    pub to_ms: i64,
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
    /// One page of agents of `sites` (None: every site), by site and agent, strictly after
    /// `after` (site, agent), at most `limit`.
    async fn agents_page(
        &self,
        sites: Option<&[String]>,
        after: Option<&AgentKey>,
        limit: i64,
    ) -> Result<Vec<AgentRow>, StoreError>;
    /// Every agent, by site and agent.
    async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        self.agents_page(None, None, i64::MAX).await
    }
    /// One page of tags by site, agent and name, strictly after `after`, at most `limit`.
    async fn tags_page(
        &self,
        f: &TagFilter,
        after: Option<&TagKey>,
        limit: i64,
    ) -> Result<Vec<TagRow>, StoreError>;
    /// Tags, optionally of one site and under a name prefix.
    async fn tags(
        &self,
        site: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<Vec<TagRow>, StoreError> {
        let f = TagFilter {
            site: site.map(str::to_owned),
            prefix: prefix.map(str::to_owned),
            ..TagFilter::default()
        };
        self.tags_page(&f, None, i64::MAX).await
    }
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
    /// One page of the gap records overlapping `[from_ms, to_ms)` of `site` (None: any) and of
    /// `sites` (None: every site), by start and id, strictly after `after` (start, id).
    async fn gaps_page(
        &self,
        f: &GapFilter,
        after: Option<GapKey>,
        limit: i64,
    ) -> Result<Vec<GapRow>, StoreError>;
    /// Gap records overlapping a range.
    async fn gaps(
        &self,
        site: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<GapRow>, StoreError> {
        let f = GapFilter {
            site: site.map(str::to_owned),
            sites: None,
            from_ms,
            to_ms,
        };
        self.gaps_page(&f, None, i64::MAX).await
    }
    /// One page of dead letters, newest first, strictly before `before` (received, id).
    async fn dead_letters_page(
        &self,
        before: Option<DeadLetterKey>,
        limit: i64,
    ) -> Result<Vec<DeadLetterRow>, StoreError>;
    /// The newest dead letters.
    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.dead_letters_page(None, limit).await
    }
    /// The reconciliation's storage (movements, runs, variance records, alerts).
    fn ledger(&self) -> &dyn Ledger;
    /// Is the database reachable?
    async fn ping(&self) -> Result<(), StoreError>;
    /// Apply the dead-letter retention ([`Limits::dead_letter_retention_ms`], then
    /// [`Limits::dead_letter_max_total_bytes`]) at `now_ms`: returns how many were dropped.
    /// The service calls it with `maintain`; tests call it directly. Both backends implement
    /// it; the default (nothing dropped) is for test doubles.
    async fn prune_dead_letters(&self, _now_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Periodic upkeep (partitions ahead, retention, compression, aggregates); returns a one-line
    /// summary. The service calls it hourly; backends with nothing to do keep the default.
    async fn maintain(&self) -> Result<String, StoreError> {
        Ok("nothing to do".into())
    }
    /// Build the rollups that are due off the commit path (PostgreSQL: the dirty minutes whose
    /// end is `settle_ms` or more before `now_ms`, then their hours; `postgres::rollup`).
    /// SQLite: the dirty hours whose end is `settle_ms` or more before `now_ms`
    /// (`sqlite::rollup`). Backends without rollups (test doubles) keep the default.
    async fn roll_due(&self, _now_ms: i64, _settle_ms: i64) -> Result<RollReport, StoreError> {
        Ok(RollReport::default())
    }
}

/// What one [`Store::roll_due`] call did and what is left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollReport {
    /// Minute marks (agent × minute) rolled.
    pub minutes: u64,
    /// Hour marks (agent × hour) rolled.
    pub hours: u64,
    /// Minute marks still pending (not due yet, or left for the next call).
    pub pending_minutes: u64,
    /// How long ago the oldest pending minute closed (0 when none has), ms.
    pub lag_ms: i64,
    /// Due marks were left (work bounded per call, or held by a commit in progress).
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(origin: &str, created_ms: i64) -> wire::messages::BufferIdentity {
        wire::messages::BufferIdentity {
            epoch: 9,
            created_ms,
            origin: origin.into(),
            note: Some("3 batches salvaged".into()),
        }
    }

    #[test]
    fn when_a_new_buffer_is_a_gap() {
        // First buffer, no data: nothing lost.
        assert_eq!(buffer_replaced_gap(&buf("new", 100), None, None), None);
        // An upgraded agent names its existing database: nothing lost.
        assert_eq!(
            buffer_replaced_gap(&buf("existing", 100), None, Some(50)),
            None
        );
        // Data stored before, then a new database: from the last reading to its creation.
        let (from, to, detail) =
            buffer_replaced_gap(&buf("new", 100), None, Some(50)).expect("gap");
        assert_eq!((from, to), (51, 100));
        assert!(
            detail.contains("buffer 9 (new): 3 batches salvaged"),
            "{detail}"
        );
        // Another buffer before, no data: from its creation.
        assert_eq!(
            buffer_replaced_gap(&buf("replaced-empty", 100), Some(20), None).map(|g| (g.0, g.1)),
            Some((20, 100))
        );
        // Nothing between the last reading and the new buffer: no gap.
        assert_eq!(
            buffer_replaced_gap(&buf("new", 100), Some(20), Some(100)),
            None
        );
        // A creation time no query can name: no gap (the birth is still recorded).
        assert_eq!(
            buffer_replaced_gap(&buf("new", i64::MAX), Some(20), Some(30)),
            None
        );
    }

    #[test]
    fn gaps_of_unknown_count_are_not_held_to_a_count() {
        let now = 1_767_225_600_000;
        let mut b = wire::Batch::new("s", "a", 1, "h", now);
        b.gaps.push(wire::Gap::uncounted(
            vec![],
            now - 86_400_000,
            now,
            wire::GapReason::Other("unclean-shutdown".into()),
        ));
        assert_eq!(check_gaps(&b, 3, now), Ok(()));
        b.gaps[0].from_ms = now + 1;
        assert!(check_gaps(&b, 3, now).unwrap_err().contains("gap 0"));
        // Missed records at one instant: counted in sequence numbers, only the absolute bound.
        b.gaps[0] = wire::Gap::counted(vec![], now, now, 30_000, wire::GapReason::MissedEvent);
        assert_eq!(check_gaps(&b, 0, now), Ok(()));
        b.gaps[0].count = MAX_GAP_COUNT + 1;
        assert!(check_gaps(&b, 0, now).is_err());
    }
}
