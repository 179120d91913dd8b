//! `migrate`: the schema, created idempotently, under an advisory lock so that several ingest
//! instances can migrate at once.

use deadpool_postgres::GenericClient;

use super::{partitions, pg, Layout, PgStore, TimescaleMode};
use crate::store::StoreError;

/// Schema version written to `flowsquare.meta`.
pub const SCHEMA_VERSION: i32 = 6;
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

/// Version 6 (idempotent): the rollups' dirty marks (`roll.rs`). A database of an earlier
/// version has its rollups complete (they were written at commit), so it starts with none.
const SCHEMA_V6: &str = "
CREATE TABLE IF NOT EXISTS flowsquare.rollup_dirty (
    site text NOT NULL,
    agent text NOT NULL,
    bucket timestamptz NOT NULL,
    unit_ms integer NOT NULL,
    seq bigint NOT NULL DEFAULT 1,
    since timestamptz NOT NULL,
    PRIMARY KEY (site, agent, bucket, unit_ms)
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
    let probe = probe_timescale(&tx).await?;
    let (planned, mut note) = choose_layout(existing, opts.timescale, &probe)?;
    if existing.is_none()
        && planned == Layout::Native
        && probe.available.is_some()
        && opts.timescale == TimescaleMode::Auto
    {
        // Installed but not preloaded under "auto": said loudly, once per start.
        tracing::warn!(%note, "TimescaleDB is installed but not used: native daily partitions");
    }
    let layout = match planned {
        Layout::Timescale if existing.is_none() => {
            // A failure other than the preload (checked above) still falls back in Auto.
            tx.batch_execute("SAVEPOINT ext").await.map_err(pg)?;
            match tx
                .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                .await
            {
                Ok(()) => {
                    tx.batch_execute("RELEASE SAVEPOINT ext")
                        .await
                        .map_err(pg)?;
                    Layout::Timescale
                }
                Err(e) if opts.timescale == TimescaleMode::Auto => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT ext")
                        .await
                        .map_err(pg)?;
                    note = format!("timescaledb available but not usable: {}", db_message(&e));
                    Layout::Native
                }
                Err(e) => return Err(pg(e)),
            }
        }
        l => l,
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
    tx.batch_execute(SCHEMA_V6).await.map_err(pg)?;
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

/// What the server says about TimescaleDB, read before anything is tried: `CREATE EXTENSION`
/// of a library that is installed but not preloaded makes the server close the connection
/// (FATAL "extension "timescaledb" must be preloaded"), which would look like an outage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TimescaleProbe {
    /// `pg_available_extensions.default_version` (`None`: the package is not installed).
    pub available: Option<String>,
    /// The extension already exists in this database.
    pub created: bool,
    /// The library is loaded at server start: `shared_preload_libraries` lists it, or (where
    /// that setting is not readable) the library's `timescaledb.*` settings exist.
    pub preloaded: bool,
    /// `shared_preload_libraries` as the server shows it (`None`: not readable by this role).
    pub preload_setting: Option<String>,
}

/// Does a `shared_preload_libraries` value list TimescaleDB (`timescaledb`, a versioned
/// `timescaledb-2.x`, or a path ending so; quoted or not)?
pub fn lists_timescaledb(setting: &str) -> bool {
    setting.split(',').any(|lib| {
        let lib = lib.trim().trim_matches('"').trim_matches('\'');
        let name = lib.rsplit('/').next().unwrap_or(lib);
        name == "timescaledb" || name.starts_with("timescaledb-")
    })
}

/// Read the [`TimescaleProbe`] (unqualified catalog names: a test may shadow them with a
/// schema earlier in `search_path`).
pub(super) async fn probe_timescale(
    c: &impl deadpool_postgres::GenericClient,
) -> Result<TimescaleProbe, StoreError> {
    let row = c
        .query_one(
            "SELECT (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
                    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
                    (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'),
                    EXISTS (SELECT 1 FROM pg_settings WHERE name LIKE 'timescaledb.%')",
            &[],
        )
        .await
        .map_err(pg)?;
    let setting: Option<String> = row.get(2);
    let loaded: bool = row.get(3);
    Ok(TimescaleProbe {
        available: row.get(0),
        created: row.get(1),
        preloaded: setting.as_deref().is_some_and(lists_timescaledb)
            || (setting.is_none() && loaded),
        preload_setting: setting,
    })
}

/// The fix for an installed but not preloaded TimescaleDB.
fn preload_fix(p: &TimescaleProbe) -> String {
    let now = match p.preload_setting.as_deref() {
        Some("") => "it is empty now".to_owned(),
        Some(s) => format!("it is '{s}' now: keep those and add timescaledb"),
        None => "it is not readable by this role".to_owned(),
    };
    format!(
        "add timescaledb to shared_preload_libraries in postgresql.conf ({now}; e.g. shared_preload_libraries = 'timescaledb', or as a superuser ALTER SYSTEM SET shared_preload_libraries = 'timescaledb') and restart PostgreSQL"
    )
}

/// The layout a migration will use (`existing`: what the database has; the probe: what the
/// server offers), with a note saying why TimescaleDB is not used (empty when it is, or when
/// the database already has its layout). `timescale = "require"` that cannot be met, or a mode
/// that contradicts the existing layout, is an error naming the fix.
pub fn choose_layout(
    existing: Option<Layout>,
    mode: TimescaleMode,
    probe: &TimescaleProbe,
) -> Result<(Layout, String), StoreError> {
    let refuse = |m: String| Err(StoreError::Invalid(m));
    match (existing, mode) {
        (Some(Layout::Timescale), TimescaleMode::Off) => refuse(
            "the database uses TimescaleDB hypertables; timescale = off cannot apply to it".into(),
        ),
        (Some(Layout::Native), TimescaleMode::Require) => refuse(
            "the database uses native partitions; timescale = require needs a new database (migrating the data is manual)".into(),
        ),
        (Some(l), _) => Ok((l, String::new())),
        (None, TimescaleMode::Off) => Ok((Layout::Native, "timescaledb off".into())),
        (None, mode) => match &probe.available {
            None if mode == TimescaleMode::Require => refuse(
                "timescale = require, but the timescaledb extension is not available on this server (install the timescaledb package for this PostgreSQL version, add it to shared_preload_libraries and restart; or use timescale = \"auto\")".into(),
            ),
            None => Ok((Layout::Native, "timescaledb not available".into())),
            Some(_) if !probe.created && !probe.preloaded => {
                if mode == TimescaleMode::Require {
                    refuse(format!(
                        "timescale = require, but the timescaledb extension is installed and not preloaded (CREATE EXTENSION would fail with FATAL \"extension \"timescaledb\" must be preloaded\"): {}",
                        preload_fix(probe)
                    ))
                } else {
                    Ok((
                        Layout::Native,
                        format!("timescaledb installed but not preloaded; to use it, {}", preload_fix(probe)),
                    ))
                }
            }
            Some(_) => Ok((Layout::Timescale, String::new())),
        },
    }
}

/// What a migration of this store would choose, for `check-config`: the layout in words, or
/// the error `migrate` would give. Reads only.
pub(super) async fn planned_layout(store: &PgStore) -> Result<String, StoreError> {
    let client = store.client().await?;
    let existing = read_layout(&client).await?;
    let probe = probe_timescale(&client).await?;
    let (layout, note) = choose_layout(existing, store.options().timescale, &probe)?;
    let what = match (layout, existing.is_some()) {
        (Layout::Timescale, true) => "timescaledb hypertables (the database's layout)".to_owned(),
        (Layout::Native, true) => "native daily partitions (the database's layout)".to_owned(),
        (Layout::Timescale, false) => format!(
            "timescaledb {} hypertables",
            probe.available.as_deref().unwrap_or("?")
        ),
        (Layout::Native, false) => "native daily partitions".to_owned(),
    };
    Ok(if note.is_empty() {
        what
    } else {
        format!("{what} ({note})")
    })
}

/// The server's message of an error, without the "db error:" prefix.
fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(available: bool, preloaded: bool, setting: Option<&str>) -> TimescaleProbe {
        TimescaleProbe {
            available: available.then(|| "2.17.2".to_owned()),
            created: false,
            preloaded,
            preload_setting: setting.map(str::to_owned),
        }
    }

    #[test]
    fn the_layout_follows_the_mode_and_the_probe() {
        use TimescaleMode::*;
        let not_preloaded = probe(true, false, Some(""));
        let (l, note) = choose_layout(None, Auto, &not_preloaded).expect("auto");
        assert_eq!(l, Layout::Native);
        assert!(
            note.contains("not preloaded") && note.contains("it is empty now"),
            "{note}"
        );
        let e = choose_layout(None, Require, &not_preloaded).expect_err("require");
        assert!(e.to_string().contains("must be preloaded"), "{e}");
        let listed = probe(true, true, Some("pg_stat_statements,timescaledb"));
        assert_eq!(
            choose_layout(None, Auto, &listed).expect("auto"),
            (Layout::Timescale, String::new())
        );
        assert_eq!(
            choose_layout(None, Off, &listed).expect("off").0,
            Layout::Native
        );
        assert!(choose_layout(None, Require, &probe(false, false, None)).is_err());
        // A database keeps its layout; a contradicting mode is refused.
        assert_eq!(
            choose_layout(Some(Layout::Native), Auto, &listed)
                .expect("kept")
                .0,
            Layout::Native
        );
        assert!(choose_layout(Some(Layout::Native), Require, &listed).is_err());
        assert!(choose_layout(Some(Layout::Timescale), Off, &listed).is_err());
    }

    #[test]
    fn preload_settings_are_read() {
        for yes in [
            "timescaledb",
            "pg_stat_statements, timescaledb",
            "'timescaledb'",
            "\"$libdir/timescaledb-2.17.2\"",
        ] {
            assert!(lists_timescaledb(yes), "{yes}");
        }
        for no in ["", "pg_stat_statements", "timescaledb_toolkit"] {
            assert!(!lists_timescaledb(no), "{no}");
        }
    }
}
