//! `migrate`: the schema, created idempotently, under an advisory lock so that several ingest
//! instances can migrate at once.

use deadpool_postgres::GenericClient;

use super::{partitions, pg, Layout, PgStore, TimescaleMode};
use crate::store::StoreError;

/// Schema version written to `flowsquare.meta`.
pub const SCHEMA_VERSION: i32 = 5;
/// Advisory lock key serialising migrations ("FlSq" + 1).
const MIGRATE_LOCK: i64 = 0x466c_5371_0001;

/// Tables common to both layouts.
const COMMON: &str = "
CREATE SCHEMA IF NOT EXISTS flowsquare;
CREATE TABLE IF NOT EXISTS flowsquare.meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS flowsquare.agents (
    site text NOT NULL,
    agent text NOT NULL,
    online boolean NOT NULL DEFAULT false,
    status_reason text,
    status_at timestamptz,
    last_seen timestamptz,
    version text,
    config_hash text,
    birth_at timestamptz,
    started timestamptz,
    backlog_readings bigint,
    backlog_rows bigint,
    backlog_bytes bigint,
    oldest_unsent timestamptz,
    drain_rate_per_s float8,
    eta_s float8,
    heartbeat_at timestamptz,
    heartbeat jsonb,
    PRIMARY KEY (site, agent)
);
CREATE TABLE IF NOT EXISTS flowsquare.tags (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site text NOT NULL,
    agent text NOT NULL,
    name text NOT NULL,
    unit text,
    kind text NOT NULL,
    device text NOT NULL,
    description text,
    data_type text NOT NULL,
    interval_ms bigint NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site, agent, name)
);
CREATE TABLE IF NOT EXISTS flowsquare.config_hashes (
    site text NOT NULL,
    agent text NOT NULL,
    config_hash text NOT NULL,
    agent_version text,
    tag_count integer NOT NULL,
    births bigint NOT NULL DEFAULT 1,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (site, agent, config_hash)
);
CREATE TABLE IF NOT EXISTS flowsquare.catalog (
    site text NOT NULL,
    agent text NOT NULL,
    config_hash text NOT NULL,
    idx integer NOT NULL,
    tag_id bigint NOT NULL REFERENCES flowsquare.tags (id),
    PRIMARY KEY (site, agent, config_hash, idx)
);
CREATE TABLE IF NOT EXISTS flowsquare.batches (
    site text NOT NULL,
    agent text NOT NULL,
    batch_id bigint NOT NULL,
    config_hash text NOT NULL,
    created timestamptz,
    received timestamptz NOT NULL DEFAULT now(),
    readings bigint NOT NULL,
    events bigint NOT NULL,
    gaps bigint NOT NULL,
    PRIMARY KEY (site, agent, batch_id)
);
CREATE TABLE IF NOT EXISTS flowsquare.gaps (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site text NOT NULL,
    agent text NOT NULL,
    batch_id bigint NOT NULL,
    tag_ids bigint[] NOT NULL,
    from_ts timestamptz NOT NULL,
    to_ts timestamptz NOT NULL,
    count bigint NOT NULL,
    reason text NOT NULL,
    received timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS gaps_site_from ON flowsquare.gaps (site, from_ts);
CREATE INDEX IF NOT EXISTS gaps_from ON flowsquare.gaps (from_ts);
CREATE TABLE IF NOT EXISTS flowsquare.dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic text NOT NULL,
    payload bytea NOT NULL,
    reason text NOT NULL,
    received timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_received ON flowsquare.dead_letters (received DESC, id DESC);
CREATE TABLE IF NOT EXISTS flowsquare.rollup_1m (
    tag_id bigint NOT NULL,
    bucket timestamptz NOT NULL,
    n bigint NOT NULL,
    bad bigint NOT NULL,
    n_good bigint NOT NULL,
    sum float8 NOT NULL,
    min float8,
    max float8,
    last_ts timestamptz,
    last float8,
    PRIMARY KEY (tag_id, bucket)
) WITH (fillfactor = 80);
CREATE TABLE IF NOT EXISTS flowsquare.rollup_1h (LIKE flowsquare.rollup_1m INCLUDING ALL) WITH (fillfactor = 80);
";

/// Version 3 (idempotent): the ledger keyed on (site, agent, buffer_epoch, batch_id) with the
/// content digest (existing rows: epoch 0, digest unknown); the buffers agents' births name;
/// gaps with `count_known` (version 1 `unclean-shutdown` gaps of count 0 meant "unknown") and
/// `detail`.
const SCHEMA_V3: &str = "
ALTER TABLE flowsquare.batches ADD COLUMN IF NOT EXISTS buffer_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE flowsquare.batches ADD COLUMN IF NOT EXISTS digest bigint;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'flowsquare.batches'::regclass AND conname = 'batches_epoch_pkey') THEN
        ALTER TABLE flowsquare.batches DROP CONSTRAINT IF EXISTS batches_pkey;
        ALTER TABLE flowsquare.batches
            ADD CONSTRAINT batches_epoch_pkey PRIMARY KEY (site, agent, buffer_epoch, batch_id);
    END IF;
END $$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = 'flowsquare' AND table_name = 'gaps' AND column_name = 'count_known') THEN
        ALTER TABLE flowsquare.gaps ADD COLUMN count_known boolean NOT NULL DEFAULT true;
        UPDATE flowsquare.gaps SET count_known = false WHERE reason = 'unclean-shutdown' AND count = 0;
    END IF;
END $$;
ALTER TABLE flowsquare.gaps ADD COLUMN IF NOT EXISTS detail text;
CREATE TABLE IF NOT EXISTS flowsquare.agent_buffers (
    site text NOT NULL,
    agent text NOT NULL,
    epoch bigint NOT NULL,
    created timestamptz NOT NULL,
    origin text NOT NULL,
    note text,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    replaced boolean NOT NULL,
    PRIMARY KEY (site, agent, epoch)
);
";

/// Columns of `readings` (see the module doc).
const READINGS_COLUMNS: &str = "(
    tag_id bigint NOT NULL,
    ts timestamptz NOT NULL,
    value float8,
    text text,
    quality smallint NOT NULL,
    status bigint,
    error text,
    counter_kind smallint,
    counter_value float8
)";

/// Columns of `events`.
const EVENTS_COLUMNS: &str = "(
    site text NOT NULL,
    agent text NOT NULL,
    batch_id bigint NOT NULL,
    source text NOT NULL,
    kind text NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz NOT NULL,
    fields jsonb NOT NULL
)";

/// Indexes of `readings` and `events` (created on the parent: every partition/chunk gets them).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS readings_tag_ts ON flowsquare.readings (tag_id, ts);
CREATE INDEX IF NOT EXISTS events_agent_ts ON flowsquare.events (site, agent, ts);
CREATE INDEX IF NOT EXISTS events_source_ts ON flowsquare.events (site, agent, source, ts);
";

/// The layout recorded in `flowsquare.meta`, if the schema exists.
pub(super) async fn read_layout<C: GenericClient + Sync>(
    c: &C,
) -> Result<Option<Layout>, StoreError> {
    let exists: bool = c
        .query_one("SELECT to_regclass('flowsquare.meta') IS NOT NULL", &[])
        .await
        .map_err(pg)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "SELECT value FROM flowsquare.meta WHERE key = 'layout'",
            &[],
        )
        .await
        .map_err(pg)?;
    match row.map(|r| r.get::<_, String>(0)).as_deref() {
        None => Ok(None),
        Some("timescaledb") => Ok(Some(Layout::Timescale)),
        Some("native") => Ok(Some(Layout::Native)),
        Some(other) => Err(StoreError::Invalid(format!(
            "flowsquare.meta: unknown layout {other:?}"
        ))),
    }
}

/// Create or upgrade everything; see the module doc of `postgres`.
pub(super) async fn migrate(store: &PgStore) -> Result<String, StoreError> {
    let opts = store.options().clone();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(pg)?;
    let existing = read_layout(&tx).await?;
    let available: Option<String> = tx
        .query_opt(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await
        .map_err(pg)?
        .map(|r| r.get(0));
    let mut note = String::new();
    let layout = match (existing, opts.timescale) {
        (Some(Layout::Timescale), TimescaleMode::Off) => {
            return Err(StoreError::Invalid(
                "the database uses TimescaleDB hypertables; timescale = off cannot apply to it".into(),
            ))
        }
        (Some(Layout::Native), TimescaleMode::Require) => {
            return Err(StoreError::Invalid(
                "the database uses native partitions; timescale = require needs a new database (migrating the data is manual)"
                    .into(),
            ))
        }
        (Some(l), _) => l,
        (None, TimescaleMode::Off) => {
            note = "timescaledb off".into();
            Layout::Native
        }
        (None, mode) => match &available {
            None if mode == TimescaleMode::Require => {
                return Err(StoreError::Invalid(
                    "timescale = require, but the timescaledb extension is not available on this server".into(),
                ))
            }
            None => {
                note = "timescaledb not available".into();
                Layout::Native
            }
            Some(_) => {
                // CREATE EXTENSION fails when the library is not preloaded: fall back in Auto.
                tx.batch_execute("SAVEPOINT ext").await.map_err(pg)?;
                match tx.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb").await {
                    Ok(()) => {
                        tx.batch_execute("RELEASE SAVEPOINT ext").await.map_err(pg)?;
                        Layout::Timescale
                    }
                    Err(e) if mode == TimescaleMode::Auto => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT ext").await.map_err(pg)?;
                        note = format!("timescaledb available but not usable: {}", db_message(&e));
                        Layout::Native
                    }
                    Err(e) => return Err(pg(e)),
                }
            }
        },
    };
    tx.batch_execute(COMMON).await.map_err(pg)?;
    tx.batch_execute(super::ledger::LEDGER_SCHEMA)
        .await
        .map_err(pg)?;
    tx.batch_execute(SCHEMA_V3).await.map_err(pg)?;
    // Version 4: coverage of the variance records (idempotent).
    tx.batch_execute(super::ledger::SCHEMA_V4)
        .await
        .map_err(pg)?;
    // Step 5: run history, amendments, audit log.
    tx.batch_execute(super::ledger::SCHEMA_V5)
        .await
        .map_err(pg)?;
    match layout {
        Layout::Native => {
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS flowsquare.readings {READINGS_COLUMNS} PARTITION BY RANGE (ts);
                 CREATE TABLE IF NOT EXISTS flowsquare.events {EVENTS_COLUMNS} PARTITION BY RANGE (ts);
                 {INDEXES}"
            ))
            .await
            .map_err(pg)?;
        }
        Layout::Timescale => {
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS flowsquare.readings {READINGS_COLUMNS};
                 CREATE TABLE IF NOT EXISTS flowsquare.events {EVENTS_COLUMNS};
                 SELECT create_hypertable('flowsquare.readings', by_range('ts', INTERVAL '1 day'),
                     create_default_indexes => false, if_not_exists => true);
                 SELECT create_hypertable('flowsquare.events', by_range('ts', INTERVAL '1 day'),
                     create_default_indexes => false, if_not_exists => true);
                 {INDEXES}"
            ))
            .await
            .map_err(pg)?;
            partitions::timescale_policies(&tx, &opts).await?;
        }
    }
    let layout_name = match layout {
        Layout::Timescale => "timescaledb",
        Layout::Native => "native",
    };
    tx.execute(
        "INSERT INTO flowsquare.meta (key, value) VALUES ('layout', $1), ('schema_version', $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&layout_name, &SCHEMA_VERSION.to_string()],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    drop(client);
    // A store keeps one layout for its life (a database cannot change layout).
    let layout = *store.inner.layout.get_or_init(|| layout);

    match layout {
        Layout::Timescale => {
            partitions::create_aggregates(store).await?;
            let client = store.client().await?;
            let version: String = client
                .query_one(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
                    &[],
                )
                .await
                .map_err(pg)?
                .get(0);
            Ok(format!(
                "timescaledb {version} (hypertables, compression, 1m/1h aggregates)"
            ))
        }
        Layout::Native => {
            store.create_partitions_ahead().await?;
            if note.is_empty() {
                Ok("native daily partitions".into())
            } else {
                Ok(format!("native daily partitions ({note})"))
            }
        }
    }
}

/// The server's message of an error, without the "db error:" prefix.
fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}
