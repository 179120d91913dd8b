//! SQLite backend: the embedded default (no database URL configured), for single-host sites and
//! the demo. Same semantics as PostgreSQL, held to the same suite (`store/suite.rs`).
//!
//! # Schema (`schema.rs`, `PRAGMA user_version` = [`SCHEMA_VERSION`])
//!
//! ```sql
//! agents(site, agent, online, last_seen_ms, version, config_hash,        -- PK (site, agent)
//!        backlog_readings, oldest_unsent_ms)
//! tags(id INTEGER PRIMARY KEY AUTOINCREMENT,                             -- stable, never reused
//!      site, agent, name, unit, kind, device, description, interval_ms,  -- UNIQUE (site, agent, name)
//!      first_seen_ms)
//! configs(site, agent, config_hash, first_seen_ms, last_seen_ms,         -- config history,
//!         births, agent_version, started_ms, tag_count, devices JSON)    -- PK (site, agent, hash)
//! catalog(site, agent, config_hash, idx, tag_id)                         -- PK (site, agent, hash, idx)
//! batches(site, agent, batch_id, received_ms, config_hash,               -- the ledger,
//!         readings, events, gaps)                                        -- PK (site, agent, batch_id)
//! readings(tag_id, ts_ms, value REAL, text, quality INTEGER,             -- INDEX (tag_id, ts_ms),
//!          status, error, counter_kind, counter_value)                   -- not unique
//! events(id, site, agent, source, kind, seq, ts_ms, fields JSON, batch_id)
//! gaps(id, site, agent, batch_id, tag_ids JSON, from_ms, to_ms, count, reason)
//! dead_letters(id, topic, payload BLOB, reason, received_ms)
//! -- version 2, the reconciliation (`ledger.rs`; see `store::ledger`):
//! discharges, epods (bol UNIQUE), epod_compartments, recon_runs, variances, alerts
//! -- version 6, the hour rollup (`rollup.rs`):
//! rollup_1h(tag_id, bucket_ms, n, bad, n_good, sum, min, max, last_ts, last)  -- PK (tag_id, bucket_ms)
//! rollup_dirty(site, agent, hour_ms)                                         -- PK
//! ```
//!
//! # Rollup and series
//!
//! `commit` marks the (site, agent, hour)s its readings touch in `rollup_dirty` (same
//! transaction); the roller (`Store::roll_due`, run by `serve`) rebuilds a marked hour's
//! `rollup_1h` rows from the readings once the hour closed `rollup_settle_ms` ago. `series` by a
//! whole number of hours takes unmarked whole hours from `rollup_1h`, the rest (marked hours,
//! the partial hours at the ends, other steps) from raw readings in `(tag_id, ts_ms)` index
//! order: exact at all times. Design note (why a commit cannot interleave with a roll, why the
//! hour only): `rollup.rs`. 30 days of a 1 s tag by 1 h: 1-2 ms rolled against ~1 s raw.
//!
//! - A birth upserts its tags by `(site, agent, name)`: a tag keeps its id across configs, its
//!   metadata follows the latest birth. The catalog maps `(site, agent, config_hash, idx)` to tag
//!   ids; a `configs` row (even for a birth with no tags) is what makes a config hash known.
//! - Reading values: numbers and booleans in `value` as REAL (booleans 0/1; integers beyond
//!   ±2^53 lose precision), text in `text`. SQLite cannot store a NaN REAL (it becomes NULL),
//!   so a NaN is kept as `value` NULL with `text` `"NaN"`. `quality` is the wire code
//!   ([`wire::Quality::code`]), spelled out on read. `counter_kind` is 0 rollover (`counter_value`
//!   = delta) or 1 reset (`counter_value` = previous total).
//! - Event fields are a JSON object in field order (`{"bol":"BOL-1","gross_l":30000.0}`); gap
//!   tag ids a JSON array (`[]` = every tag of the agent). Gap reasons are the wire spellings
//!   (`buffer-full`, `buffer-age`, `missed-event`, or the free text of `Other`).
//! - Batch ids and event sequence numbers are `u64` on the wire and stored bit-for-bit as
//!   SQLite's signed 64-bit integers (ids ≥ 2^63 read back negative but stay distinct).
//!
//! # Idempotency
//!
//! `commit` runs the whole slice in one `BEGIN IMMEDIATE` transaction. Per batch, in input order:
//! the catalog is resolved (unknown config hash → [`CommitOutcome::UnknownCatalog`], nothing
//! written, no ledger row, so the re-sent batch is stored once the birth has arrived); then the
//! ledger row is inserted with `INSERT OR IGNORE` and `changes()` tells whether it is new (no
//! → [`CommitOutcome::Duplicate`], nothing written); then its readings, events and gaps. The
//! ledger row and the rows commit or roll back together, so a batch is stored exactly once
//! however often it is delivered, even twice in the same slice. A reading, event or gap that
//! names a tag index outside the catalog fails the whole call with [`StoreError::Invalid`]
//! (rolled back: nothing of the slice is stored).
//!
//! # Errors
//!
//! SQLite failures that are about the database rather than the data (disk full, I/O errors, a
//! read-only or corrupt file, …) are returned as [`StoreError::Unavailable`], which
//! [`StoreError::is_transient`] retries, so batches are never dead-lettered and rejected (then
//! deleted by the agent) because the disk filled up. `SQLITE_BUSY` stays [`StoreError::Sqlite`]
//! (already transient).
//!
//! # Concurrency
//!
//! rusqlite is synchronous: one connection sits behind a `std::sync::Mutex` and every operation
//! runs on tokio's blocking pool (`spawn_blocking`), so operations of one `SqliteStore` are
//! serialised and never block the async workers. Writes use `BEGIN IMMEDIATE` and a busy timeout
//! ([`BUSY_TIMEOUT`]), so another process (or another `SqliteStore`) on the same file waits for
//! the write lock instead of failing; the ledger primary key keeps batches unique across
//! connections. WAL mode lets readers run during a write; `synchronous=FULL` makes every commit
//! durable before the agents are told it is committed (they then delete their copy), so not even
//! power loss can take back an acknowledged batch; it costs about a quarter of the throughput of
//! `synchronous=NORMAL`, which would keep commits through a process crash only. A `commit` whose caller stops waiting (timeout,
//! shutdown) still finishes or rolls back on the blocking pool; either way the agent re-sends
//! the unacknowledged batch and the ledger answers `Duplicate` if it was stored. A poisoned
//! mutex is recovered: a panic inside an operation unwinds through the open `Transaction`,
//! which rolls back, leaving the connection usable.

mod ledger;
mod read;
mod rollup;
mod schema;
mod write;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flowsquare_service::clock;
use flowsquare_wire as wire;
use rusqlite::Connection;

use super::{
    AgentRow, Bucket, CommitOutcome, DeadLetter, DeadLetterRow, GapRow, LatestRow, RollReport,
    Store, StoreError, TagRow,
};

pub use schema::SCHEMA_VERSION;

/// How long an operation waits for another connection's write lock before failing with
/// `SQLITE_BUSY` (a transient [`StoreError`]).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most marks (agent × hour) one [`Store::roll_due`] call rolls (the rest: the next call).
pub const MARKS_PER_CALL: u64 = 500;

/// The embedded SQLite store. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Option<PathBuf>,
    /// The bounds every agent is held to (`store::bounds`; default: none).
    limits: Arc<super::Limits>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (or create) the database file at `path`, creating its directory if needed, in WAL
    /// mode with `synchronous=FULL` and a busy timeout. Call [`Store::migrate`] before use.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                flowsquare_service::private::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let conn = Connection::open(path).map_err(|e| classify(e.into()))?;
        // 0600 before WAL mode: SQLite gives -wal and -shm the database's mode (set again
        // below for files an older version left).
        let restrict = |p: &Path| {
            flowsquare_service::private::restrict_file(p).map_err(|e| {
                StoreError::Unavailable(format!("cannot restrict {}: {e}", p.display()))
            })
        };
        restrict(path)?;
        configure(&conn, true).map_err(classify)?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            restrict(Path::new(&p))?;
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: Some(path.to_path_buf()),
            limits: Arc::default(),
        })
    }

    /// A private in-memory database (gone when the last clone is dropped), for tests.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory()?;
        configure(&conn, false)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: None,
            limits: Arc::default(),
        })
    }

    /// The same store holding every agent to `limits` (accepted time window, tag registry
    /// limit, dead-letter cap and retention; see `store::bounds`).
    pub fn with_limits(mut self, limits: super::Limits) -> SqliteStore {
        self.limits = Arc::new(limits);
        self
    }

    /// [`Store::series`] computed from raw readings only, ignoring the rollup (tests).
    pub async fn series_from_raw(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        self.run(move |c| read::series(c, tag_id, from_ms, to_ms, step_ms))
            .await
    }

    /// Roll every pending mark now, whatever its age (tests, benchmarks).
    pub async fn roll_all(&self) -> Result<RollReport, StoreError> {
        let mut hours = 0;
        loop {
            let r = Store::roll_due(self, i64::MAX, 0).await?;
            hours += r.hours;
            if !r.more {
                return Ok(RollReport { hours, ..r });
            }
        }
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Run `f` with the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means an earlier operation panicked; its transaction was
            // rolled back when the panic unwound through it, so the connection is sound.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
        .map_err(classify)
    }
}

/// Report SQLite failures that say nothing about the data as [`StoreError::Unavailable`]
/// (transient): disk full, I/O error, a read-only, unopenable, locked-out or corrupt file, out
/// of memory, an interrupt. The consumer then retries and acknowledges nothing, so the agents
/// keep the data buffered; treated as permanent, they would make it dead-letter and reject the
/// batches, which the agents then delete.
fn classify(e: StoreError) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                C::DiskFull
                    | C::SystemIoFailure
                    | C::CannotOpen
                    | C::ReadOnly
                    | C::PermissionDenied
                    | C::FileLockingProtocolFailed
                    | C::NoLargeFileSupport
                    | C::DatabaseCorrupt
                    | C::NotADatabase
                    | C::OutOfMemory
                    | C::OperationInterrupted
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => e,
    }
}

/// Connection settings (per connection; `journal_mode=WAL` persists in the file).
fn configure(conn: &Connection, file: bool) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if file {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "cannot use WAL mode (journal_mode={mode})"
            )));
        }
    }
    // FULL: an acknowledged batch must survive power loss (the agent deletes its copy).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 64 MiB page cache: keeps the readings index's hot pages in memory during bulk commits.
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<String, StoreError> {
        self.run(schema::migrate).await
    }

    async fn commit(&self, batches: &[wire::Batch]) -> Result<Vec<CommitOutcome>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        // spawn_blocking needs owned data: the copy costs far less than the inserts.
        let batches = batches.to_vec();
        // Received on the data clock (simulated time in the demo): compares with the data's times.
        let now = clock::now_ms();
        let limits = Arc::clone(&self.limits);
        self.run(move |c| write::commit(c, &batches, now, &limits))
            .await
    }

    async fn dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        let dl = super::bounds::cap_dead_letter(dl, &self.limits).into_owned();
        self.run(move |c| write::dead_letter(c, &dl)).await
    }

    async fn prune_dead_letters(&self, now_ms: i64) -> Result<u64, StoreError> {
        let limits = Arc::clone(&self.limits);
        self.run(move |c| write::prune_dead_letters(c, &limits, now_ms))
            .await
    }

    async fn birth(&self, b: &wire::Birth, received_ms: i64) -> Result<(), StoreError> {
        let b = b.clone();
        let limits = Arc::clone(&self.limits);
        self.run(move |c| write::birth(c, &b, received_ms, &limits))
            .await
    }

    async fn status(
        &self,
        site: &str,
        agent: &str,
        s: &wire::Status,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        let (site, agent, s) = (site.to_owned(), agent.to_owned(), s.clone());
        self.run(move |c| write::status(c, &site, &agent, &s, received_ms))
            .await
    }

    async fn heartbeat(
        &self,
        site: &str,
        agent: &str,
        h: &wire::Heartbeat,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        let (site, agent) = (site.to_owned(), agent.to_owned());
        let (readings, oldest) = (h.buffer.readings, h.buffer.oldest_unsent_ms);
        self.run(move |c| write::heartbeat(c, &site, &agent, readings, oldest, received_ms))
            .await
    }

    async fn agents_page(
        &self,
        sites: Option<&[String]>,
        after: Option<&crate::store::AgentKey>,
        limit: i64,
    ) -> Result<Vec<AgentRow>, StoreError> {
        let (sites, after) = (sites.map(<[String]>::to_vec), after.cloned());
        self.run(move |c| read::agents(c, sites.as_deref(), after.as_ref(), limit))
            .await
    }

    async fn tags_page(
        &self,
        f: &crate::store::TagFilter,
        after: Option<&crate::store::TagKey>,
        limit: i64,
    ) -> Result<Vec<TagRow>, StoreError> {
        let (f, after) = (f.clone(), after.cloned());
        self.run(move |c| read::tags(c, &f, after.as_ref(), limit))
            .await
    }

    async fn latest(&self, tag_ids: &[i64]) -> Result<Vec<LatestRow>, StoreError> {
        let ids = tag_ids.to_vec();
        self.run(move |c| read::latest(c, &ids)).await
    }

    async fn series(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        if step_ms <= 0 {
            return Err(StoreError::Invalid(format!(
                "series step must be > 0 ms, not {step_ms}"
            )));
        }
        // Whole hours inside [from, to) from the rollup when the step is a whole number of
        // hours (both aligned on the epoch); the rest from raw readings (`rollup.rs`).
        let h = rollup::HOUR_MS;
        let mid_from = from_ms.saturating_add((h - from_ms.rem_euclid(h)) % h);
        let mid_to = to_ms - to_ms.rem_euclid(h);
        if step_ms % h == 0 && mid_from < mid_to {
            return self
                .run(move |c| {
                    rollup::series(c, tag_id, (from_ms, to_ms), (mid_from, mid_to), step_ms)
                })
                .await;
        }
        self.run(move |c| read::series(c, tag_id, from_ms, to_ms, step_ms))
            .await
    }

    async fn roll_due(&self, now_ms: i64, settle_ms: i64) -> Result<RollReport, StoreError> {
        // Due: the hour closed `settle_ms` or more ago (data clock).
        let due = now_ms.saturating_sub(settle_ms);
        let mut report = RollReport::default();
        // One transaction per mark, each its own turn on the connection: commits go between.
        while report.hours < MARKS_PER_CALL {
            if !self.run(move |c| rollup::roll_one(c, due)).await? {
                break;
            }
            report.hours += 1;
        }
        let (all, due_left, oldest) = self.run(move |c| rollup::pending(c, due)).await?;
        report.more = due_left > 0;
        // The metric counts pending minutes: SQLite's pending hours, as minutes.
        report.pending_minutes = u64::try_from(all).unwrap_or(0).saturating_mul(60);
        report.lag_ms = oldest.map_or(0, |t| {
            now_ms
                .saturating_sub(t.saturating_add(rollup::HOUR_MS))
                .max(0)
        });
        Ok(report)
    }

    async fn count_readings(
        &self,
        tag_id: Option<i64>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError> {
        self.run(move |c| read::count_readings(c, tag_id, from_ms, to_ms))
            .await
    }

    async fn gaps_page(
        &self,
        f: &crate::store::GapFilter,
        after: Option<crate::store::GapKey>,
        limit: i64,
    ) -> Result<Vec<GapRow>, StoreError> {
        let f = f.clone();
        self.run(move |c| read::gaps(c, &f, after, limit)).await
    }

    async fn dead_letters_page(
        &self,
        before: Option<crate::store::DeadLetterKey>,
        limit: i64,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.run(move |c| read::dead_letters(c, before, limit))
            .await
    }

    fn ledger(&self) -> &dyn super::Ledger {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }
}
