//! PostgreSQL backend (production): TimescaleDB hypertables where the extension is available,
//! native daily range partitions otherwise; readings loaded with binary `COPY`.
//!
//! # Schema (`schema.rs`, all in schema `flowsquare`, created idempotently by `migrate`)
//!
//! ```sql
//! meta(key, value)                                   -- 'layout' = timescaledb | native, 'schema_version'
//! agents(site, agent, online, status_reason, status_at, last_seen, version, config_hash,
//!        birth_at, started, backlog_readings, backlog_rows, backlog_bytes, oldest_unsent,
//!        drain_rate_per_s, eta_s, heartbeat_at, heartbeat jsonb)       -- PK (site, agent)
//! tags(id bigint identity, site, agent, name, unit, kind, device,      -- UNIQUE (site, agent, name):
//!      description, data_type, interval_ms, first_seen, updated)      -- ids stable across configs
//! config_hashes(site, agent, config_hash, agent_version, tag_count,    -- config history; its row is
//!               first_seen, last_seen)                                 -- what makes a hash known
//! catalog(site, agent, config_hash, idx, tag_id)                      -- PK (site, agent, hash, idx)
//! batches(site, agent, batch_id, config_hash, created, received,      -- the ledger,
//!         readings, events, gaps)                                      -- PK (site, agent, batch_id)
//! readings(tag_id, ts, value float8, text, quality smallint,          -- INDEX (tag_id, ts), NOT unique
//!          status bigint, error, counter_kind smallint, counter_value float8)
//! events(site, agent, batch_id, source, kind, seq, ts, fields jsonb)  -- INDEX (site, agent, ts)
//! gaps(id, site, agent, batch_id, tag_ids bigint[], from_ts, to_ts, count, reason, received)
//! dead_letters(id, topic, payload bytea, reason, received)
//! -- version 2, the reconciliation (`ledger.rs`; see `store::ledger`):
//! discharges, epods (bol UNIQUE), epod_compartments, recon_runs, variances, alerts
//! rollup_1m, rollup_1h(tag_id, bucket, n, bad, n_good, sum, min, max, last_ts, last)
//!                                                                     -- PK (tag_id, bucket)
//! -- version 6: rollup_dirty(site, agent, bucket, unit_ms, seq, since)  -- PK (site, agent, bucket, unit_ms)
//! ```
//!
//! Values: numbers and booleans go to `value` (booleans 0/1, NaN kept as NaN); integers beyond
//! ±2^53, which `float8` cannot hold exactly, also keep their exact decimal in `text`; text values
//! go to `text`. `quality` is the wire code ([`wire::Quality::code`]). `counter_kind` is 0
//! rollover (`counter_value` = delta) or 1 reset (`counter_value` = previous total). Batch ids
//! and event sequence numbers (`u64` on the wire) are stored bit for bit as `bigint` (ids ≥ 2^63
//! read back negative but stay distinct). Event fields are a `jsonb` object (field order is not
//! kept by `jsonb`); gap reasons are the wire spellings (`buffer-full`, `buffer-age`,
//! `missed-event` or the text of `Other`), gap `tag_ids` empty = every tag of the agent.
//!
//! # Partitioning (`partitions.rs`)
//!
//! - **TimescaleDB** ([`TimescaleMode::Auto`] when `pg_available_extensions` lists it and the
//!   library is preloaded ([`choose_layout`]: installed but not preloaded falls back to native
//!   partitions with a warning; under `Require` it is refused with the fix), or
//!   [`TimescaleMode::Require`]): `readings` and `events` are hypertables with 1-day chunks;
//!   `readings` has a compression policy (segment by `tag_id`, order by `ts`, after
//!   [`COMPRESS_AFTER_DAYS`] days), a retention policy when [`PgOptions::retention_days`] is set,
//!   and continuous aggregates `agg_1m` / `agg_1h` (min/max/avg/last of good values, count, bad
//!   count per tag) with refresh policies. Because background jobs may not run (they do not on
//!   the development machine), [`PgStore::refresh_aggregates`],
//!   [`PgStore::compress_chunks_older_than`] and [`PgStore::drop_expired_partitions`] do the
//!   same work on demand; nothing in this module depends on the jobs having run.
//! - **Native**: `readings` and `events` are `PARTITION BY RANGE (ts)`, one partition per UTC day
//!   (`readings_pYYYYMMDD`). Partitions are created [`PgOptions::partitions_ahead_days`] ahead
//!   by `migrate` and [`PgStore::create_partitions_ahead`], and on demand before each `COPY` for
//!   the days a slice touches (known days are cached in memory), so old data stores fine within
//!   the accepted window ([`PgOptions::limits`], `store::bounds`): readings and events outside it
//!   are split off as a dead letter before any partition is made, no partition is created for a
//!   day outside it, and the days created ahead stop at its end. New partitions are created detached and then `ATTACH`ed (a `SHARE UPDATE
//!   EXCLUSIVE` lock on the parent: ingestion and queries go on meanwhile), under an advisory
//!   lock so several ingest instances do not race. There is no default partition.
//!   [`PgStore::drop_expired_partitions`] drops the days older than the retention.
//!
//! # Rollups and series (`rollup.rs`, `read.rs`)
//!
//! The service keeps its own rollups in both layouts, built off the commit path: `commit`
//! writes one dirty mark per (site, agent, minute) its readings touch into `rollup_dirty`, and
//! the roller ([`PgStore::roll_due`], run by `serve`) rebuilds the marked minutes' partial
//! aggregates (count, bad count, good count, sum, min, max, last) in `rollup_1m` set-based from
//! the committed readings, then their hours in `rollup_1h` from the minutes (the design note of
//! `rollup.rs`: the locking that makes it lose nothing, crash safety). `series` answers from
//! `rollup_1h` when the step is a whole number of hours, `rollup_1m` when it is a whole number
//! of minutes, and raw readings otherwise; the partial units at either end of the range, and the
//! units a mark still covers, come from raw readings, so the result equals the raw computation
//! for any range at any time. (The TimescaleDB
//! continuous aggregates are for dashboards and ad-hoc SQL; `series` does not depend on them
//! being refreshed.) Retention drops raw partitions and `rollup_1m` rows, and keeps `rollup_1h`.
//! Measured (`benches/pg_ingest.rs`): 30 days of 1 s data by 1 h buckets takes a few ms from
//! `rollup_1h` against 1-2.5 s from raw readings. On the live shape (part (a2): 10,000 tags ×
//! 1 reading per batch) the rollups upserted in the commit made it cost the database 5.6× the
//! raw COPY of the same rows; with the marks it costs the same as the COPY, and the roller
//! ~1.3 CPU s per million readings (`benches/README.md`). Connections run with `jit = off` (unless the URL sets `options`
//! with `jit`): JIT compilation adds ~0.4 s to large aggregations and helps no ingest statement.
//!
//! # Idempotency (`write.rs`)
//!
//! `commit` runs the whole slice in one transaction. Per batch, in input order: the catalog of
//! its config hash is resolved (unknown → [`CommitOutcome::UnknownCatalog`]: nothing written and
//! no ledger row, so the re-sent batch is stored once the birth has arrived); then its ledger
//! row is inserted with `INSERT … ON CONFLICT DO NOTHING RETURNING`, and no returned row means
//! [`CommitOutcome::Duplicate`] (nothing written); then the readings of all new batches go in
//! one binary `COPY`, their events and gaps in one `INSERT` each. The ledger rows and the data
//! commit or roll back together, so a batch is stored exactly once however often it is
//! delivered, by however many ingest instances (a concurrent insert of the same ledger key
//! waits for the other transaction, then conflicts). There is deliberately no unique index on
//! readings. A reading or gap naming a tag index outside the catalog, or a timestamp outside
//! years 1900-9999, fails the whole call with [`StoreError::Invalid`] (nothing stored).
//!
//! # Outages
//!
//! Connections come from a small `deadpool-postgres` pool. A connection that the server closed
//! (restart, `pg_terminate_backend`, network loss) is detected when it is next taken from the
//! pool and replaced by a new one; TCP keepalives and a user timeout bound how long a dead peer
//! goes unnoticed. While the server is down every operation fails with a transient error
//! ([`StoreError::is_transient`]: connection refused/closed, SQLSTATE class 08, 57P01-57P03,
//! 53300, and also serialization failures, deadlocks and lock timeouts are returned as
//! [`StoreError::Unavailable`]); once it is back the next call reconnects, without restarting
//! the process. A commit interrupted by an outage either committed or not, atomically; the
//! ledger makes the retry safe.

mod ledger;
mod partitions;
mod read;
mod rollup;
mod schema;
mod types;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use flowsquare_wire as wire;
use tokio_postgres::NoTls;

use super::{
    AgentRow, Bucket, CommitOutcome, DeadLetter, DeadLetterRow, GapRow, LatestRow, RollReport,
    Store, StoreError, TagRow,
};

pub use partitions::COMPRESS_AFTER_DAYS;
pub use read::MAX_BUCKETS;
pub use rollup::MARKS_PER_PASS;
pub use schema::{choose_layout, lists_timescaledb, TimescaleProbe, SCHEMA_VERSION};

/// Whether to use TimescaleDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimescaleMode {
    /// Use it when `pg_available_extensions` lists it and it can be created; native partitions
    /// otherwise. A database already migrated keeps the layout it has.
    #[default]
    Auto,
    /// Never use it: native daily partitions.
    Off,
    /// Use it, or fail `migrate` with a clear error.
    Require,
}

/// Options of [`PgStore::connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Whether to use TimescaleDB (hypertables, compression, continuous aggregates) or native
    /// daily partitions. Default [`TimescaleMode::Auto`].
    pub timescale: TimescaleMode,
    /// Drop raw readings and events older than this many days (whole days/chunks), by
    /// [`PgStore::drop_expired_partitions`] and, with TimescaleDB, a retention policy. `None`
    /// (default): keep everything.
    pub retention_days: Option<u32>,
    /// Native partitions: how many days after today `migrate` and
    /// [`PgStore::create_partitions_ahead`] create in advance (days a batch touches are also
    /// created on demand). Ignored with TimescaleDB. Default 7.
    pub partitions_ahead_days: u32,
    /// Most connections the pool opens (at least 1). Default 4.
    pub pool_size: usize,
    /// Password (from `[database] password_file` / `password_credential`); replaces one in the
    /// URL. `Debug` shows `***`.
    pub password: Option<flowsquare_service::secret::Secret>,
    /// The bounds every agent is held to (accepted time window, tag registry limit, dead-letter
    /// cap and retention; `store::bounds`). Default: none.
    pub limits: crate::store::Limits,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            timescale: TimescaleMode::Auto,
            retention_days: None,
            partitions_ahead_days: 7,
            pool_size: 4,
            password: None,
            limits: crate::store::Limits::default(),
        }
    }
}

/// How readings and events are partitioned in a migrated database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// TimescaleDB hypertables.
    Timescale,
    /// Native daily range partitions.
    Native,
}

/// A tag catalog: tag ids by index in the birth of one config hash.
type Catalog = Arc<[i64]>;
/// (site, agent, config hash).
type CatalogKey = (String, String, String);

/// The PostgreSQL store. Cheap to clone: clones share the pool and caches.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    opts: PgOptions,
    /// Set by `migrate` (or read from `flowsquare.meta` on first use).
    layout: OnceLock<Layout>,
    /// Catalogs already read; a catalog of a config hash never changes (tag ids are stable by
    /// name and a hash fixes the names), and `birth` refreshes its own entry anyway.
    catalogs: Mutex<HashMap<CatalogKey, Catalog>>,
    /// Native layout: partitions known to exist.
    partitions: partitions::Known,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("opts", &self.inner.opts)
            .field("layout", &self.inner.layout.get())
            .finish_non_exhaustive()
    }
}

/// How long taking a connection from the pool may wait (for a free one, or to connect).
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connect timeout when the URL does not set one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl PgStore {
    /// Build the pool for `url` (a `postgres://…` URL or a `key=value` string) and check that
    /// the server answers. Unreachable server → a transient error ([`StoreError::is_transient`]);
    /// bad URL or credentials → a permanent one. Call [`Store::migrate`] before use.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
        let store = PgStore::connect_lazy(url, opts)?;
        drop(store.client().await?);
        Ok(store)
    }

    /// Like [`PgStore::connect`] without checking the server: the first operation connects.
    /// For a service that must start while the database is down.
    pub fn connect_lazy(url: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
        let mut cfg = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Invalid(
                flowsquare_service::secret::redact(&format!("database url: {e}")).into_owned(),
            )
        })?;
        if let Some(p) = &opts.password {
            cfg.password(p.expose());
        }
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(CONNECT_TIMEOUT);
        }
        // JIT compilation costs hundreds of ms on the large aggregations (raw series) and
        // helps none of the ingest's statements; leave it alone if the URL sets it.
        match cfg.get_options() {
            None => {
                cfg.options("-c jit=off");
            }
            Some(o) if !o.contains("jit") => {
                let o = format!("{o} -c jit=off");
                cfg.options(o);
            }
            Some(_) => {}
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("flowsquare-cloud-ingest");
        }
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(60));
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StoreError::Invalid(format!("connection pool: {e}")))?;
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                opts,
                layout: OnceLock::new(),
                catalogs: Mutex::new(HashMap::new()),
                partitions: partitions::Known::default(),
            }),
        })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &PgOptions {
        &self.inner.opts
    }

    /// The layout of the migrated database (reads `flowsquare.meta` once if `migrate` was not
    /// called by this process).
    pub async fn layout(&self) -> Result<Layout, StoreError> {
        if let Some(l) = self.inner.layout.get() {
            return Ok(*l);
        }
        let client = self.client().await?;
        let l = schema::read_layout(&client).await?.ok_or_else(|| {
            StoreError::Invalid("database schema flowsquare is not migrated (run migrate)".into())
        })?;
        Ok(*self.inner.layout.get_or_init(|| l))
    }

    /// [`Store::series`] computed from raw readings only, ignoring the rollups: slower, for
    /// reconciliation checks and benchmarks (the results are the same).
    pub async fn series_from_raw(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        read::series(self, tag_id, from_ms, to_ms, step_ms, read::Source::Raw).await
    }

    /// The layout `migrate` would choose (in words, with why TimescaleDB is not used), or the
    /// error it would give: what `check-config` shows. Reads only.
    pub async fn planned_layout(&self) -> Result<String, StoreError> {
        schema::planned_layout(self).await
    }

    /// Close the pool: connections are closed as they are returned.
    pub fn close(&self) {
        self.inner.pool.close();
    }

    /// The catalog cache.
    fn catalogs(&self) -> std::sync::MutexGuard<'_, HashMap<CatalogKey, Catalog>> {
        // A cache: a panic while holding it cannot leave it inconsistent.
        self.inner
            .catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(pool_err)
    }
}

/// Map a pool error: connection failures are transient.
fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => match pg(e) {
            StoreError::Postgres(e) if e.code().is_none() => StoreError::Unavailable(e.to_string()),
            other => other,
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Map a PostgreSQL error: conditions that a retry can cure are [`StoreError::Unavailable`]
/// (transient), the rest [`StoreError::Postgres`].
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(format!("connection closed: {e}"));
    }
    match e.code().map(|c| c.code()) {
        Some(code) if is_retryable_sqlstate(code) => {
            StoreError::Unavailable(format!("{e} (SQLSTATE {code})"))
        }
        _ => StoreError::Postgres(e),
    }
}

/// SQLSTATEs worth retrying: connection exceptions (class 08), operator intervention (server
/// shutting down or starting), too many connections, serialization failure, deadlock, lock
/// timeout.
fn is_retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01" | "55P03"
        )
}

#[async_trait]
impl Store for PgStore {
    async fn maintain(&self) -> Result<String, StoreError> {
        let created = self.create_partitions_ahead().await?;
        let dropped = self.drop_expired_partitions().await?;
        let compressed = self
            .compress_chunks_older_than(std::time::Duration::from_secs(
                u64::from(COMPRESS_AFTER_DAYS) * 86_400,
            ))
            .await?;
        // TimescaleDB's own scheduled jobs may not run (they fail on PostgreSQL 15.20): refresh the
        // continuous aggregates over the last two days ourselves.
        // The aggregates are over the data's time: the last two days on the data clock.
        let now = flowsquare_service::clock::now_ms();
        self.refresh_aggregates(now - 2 * 86_400_000, now).await?;
        Ok(format!("{created} partitions created ahead, {dropped} expired dropped, {compressed} chunks compressed"))
    }

    async fn migrate(&self) -> Result<String, StoreError> {
        schema::migrate(self).await
    }

    async fn roll_due(&self, now_ms: i64, settle_ms: i64) -> Result<RollReport, StoreError> {
        PgStore::roll_due(self, now_ms, settle_ms).await
    }

    async fn commit(&self, batches: &[wire::Batch]) -> Result<Vec<CommitOutcome>, StoreError> {
        write::commit(self, batches).await
    }

    async fn dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        write::dead_letter(self, dl).await
    }

    async fn prune_dead_letters(&self, now_ms: i64) -> Result<u64, StoreError> {
        write::prune_dead_letters(self, now_ms).await
    }

    async fn birth(&self, b: &wire::Birth, received_ms: i64) -> Result<(), StoreError> {
        write::birth(self, b, received_ms).await
    }

    async fn status(
        &self,
        site: &str,
        agent: &str,
        s: &wire::Status,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        write::status(self, site, agent, s, received_ms).await
    }

    async fn heartbeat(
        &self,
        site: &str,
        agent: &str,
        h: &wire::Heartbeat,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        write::heartbeat(self, site, agent, h, received_ms).await
    }

    async fn agents_page(
        &self,
        sites: Option<&[String]>,
        after: Option<&crate::store::AgentKey>,
        limit: i64,
    ) -> Result<Vec<AgentRow>, StoreError> {
        read::agents(self, sites, after, limit).await
    }

    async fn tags_page(
        &self,
        f: &crate::store::TagFilter,
        after: Option<&crate::store::TagKey>,
        limit: i64,
    ) -> Result<Vec<TagRow>, StoreError> {
        read::tags(self, f, after, limit).await
    }

    async fn latest(&self, tag_ids: &[i64]) -> Result<Vec<LatestRow>, StoreError> {
        read::latest(self, tag_ids).await
    }

    async fn series(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        read::series(self, tag_id, from_ms, to_ms, step_ms, read::Source::Best).await
    }

    async fn count_readings(
        &self,
        tag_id: Option<i64>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError> {
        read::count_readings(self, tag_id, from_ms, to_ms).await
    }

    async fn gaps_page(
        &self,
        f: &crate::store::GapFilter,
        after: Option<crate::store::GapKey>,
        limit: i64,
    ) -> Result<Vec<GapRow>, StoreError> {
        read::gaps(self, f, after, limit).await
    }

    async fn dead_letters_page(
        &self,
        before: Option<crate::store::DeadLetterKey>,
        limit: i64,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        read::dead_letters(self, before, limit).await
    }

    fn ledger(&self) -> &dyn crate::store::Ledger {
        self
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(pg)?;
        Ok(())
    }
}
