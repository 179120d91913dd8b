//! Schema and migration (idempotent; versioned by `PRAGMA user_version`).

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// The schema version this build creates (`PRAGMA user_version`). A database with a newer one
/// is refused rather than misread.
pub const SCHEMA_VERSION: i64 = 6;

/// Version 1. Every statement is `IF NOT EXISTS`, so running it again is harmless.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS agents (
    site             TEXT NOT NULL,
    agent            TEXT NOT NULL,
    online           INTEGER NOT NULL DEFAULT 0,
    last_seen_ms     INTEGER,
    version          TEXT,
    config_hash      TEXT,
    backlog_readings INTEGER,
    oldest_unsent_ms INTEGER,
    PRIMARY KEY (site, agent)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS tags (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    site          TEXT NOT NULL,
    agent         TEXT NOT NULL,
    name          TEXT NOT NULL,
    unit          TEXT,
    kind          TEXT NOT NULL,
    device        TEXT NOT NULL,
    description   TEXT,
    interval_ms   INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    UNIQUE (site, agent, name)
);

CREATE TABLE IF NOT EXISTS configs (
    site          TEXT NOT NULL,
    agent         TEXT NOT NULL,
    config_hash   TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    births        INTEGER NOT NULL,
    agent_version TEXT NOT NULL,
    started_ms    INTEGER NOT NULL,
    tag_count     INTEGER NOT NULL,
    devices       TEXT NOT NULL,
    PRIMARY KEY (site, agent, config_hash)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS catalog (
    site        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    tag_id      INTEGER NOT NULL REFERENCES tags (id),
    PRIMARY KEY (site, agent, config_hash, idx)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS batches (
    site        TEXT NOT NULL,
    agent       TEXT NOT NULL,
    batch_id    INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    readings    INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    gaps        INTEGER NOT NULL,
    PRIMARY KEY (site, agent, batch_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS readings (
    tag_id        INTEGER NOT NULL,
    ts_ms         INTEGER NOT NULL,
    value         REAL,
    text          TEXT,
    quality       INTEGER NOT NULL,
    status        INTEGER,
    error         TEXT,
    counter_kind  INTEGER,
    counter_value REAL
);
CREATE INDEX IF NOT EXISTS readings_tag_ts ON readings (tag_id, ts_ms);

CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY,
    site     TEXT NOT NULL,
    agent    TEXT NOT NULL,
    source   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    ts_ms    INTEGER NOT NULL,
    fields   TEXT NOT NULL,
    batch_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_site_ts ON events (site, ts_ms);
CREATE INDEX IF NOT EXISTS events_source_ts ON events (site, agent, source, ts_ms);

CREATE TABLE IF NOT EXISTS gaps (
    id       INTEGER PRIMARY KEY,
    site     TEXT NOT NULL,
    agent    TEXT NOT NULL,
    batch_id INTEGER NOT NULL,
    tag_ids  TEXT NOT NULL,
    from_ms  INTEGER NOT NULL,
    to_ms    INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    reason   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gaps_from ON gaps (from_ms);

CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    reason      TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_received ON dead_letters (received_ms);
";

/// Version 1, for tests that build an older database.
#[cfg(test)]
pub(super) const SCHEMA_V1_FOR_TESTS: &str = SCHEMA_V1;

/// Version 3, the tables and columns that need no check.
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS agent_buffers (
    site          TEXT NOT NULL,
    agent         TEXT NOT NULL,
    epoch         INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    origin        TEXT NOT NULL,
    note          TEXT,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    replaced      INTEGER NOT NULL,
    PRIMARY KEY (site, agent, epoch)
) WITHOUT ROWID;
";

/// The ledger keyed on (site, agent, buffer_epoch, batch_id) with the content digest.
const BATCHES_V3: &str = "
CREATE TABLE batches_v3 (
    site         TEXT NOT NULL,
    agent        TEXT NOT NULL,
    buffer_epoch INTEGER NOT NULL DEFAULT 0,
    batch_id     INTEGER NOT NULL,
    received_ms  INTEGER NOT NULL,
    config_hash  TEXT NOT NULL,
    readings     INTEGER NOT NULL,
    events       INTEGER NOT NULL,
    gaps         INTEGER NOT NULL,
    digest       INTEGER,
    PRIMARY KEY (site, agent, buffer_epoch, batch_id)
) WITHOUT ROWID;
INSERT INTO batches_v3 (site, agent, buffer_epoch, batch_id, received_ms, config_hash, readings, events, gaps)
    SELECT site, agent, 0, batch_id, received_ms, config_hash, readings, events, gaps FROM batches;
DROP TABLE batches;
ALTER TABLE batches_v3 RENAME TO batches;
";

fn has_column(tx: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    let n: i64 = tx.query_row(
        &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
        [column],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Version 3, each part guarded so that running it again changes nothing: the ledger gets the
/// buffer epoch in its key (existing rows: epoch 0) and the digest (existing rows: unknown), by
/// copying it into a new table; gaps get `count_known` (version 1 `unclean-shutdown` gaps of
/// count 0 meant "unknown") and `detail`.
fn migrate_v3(tx: &Connection) -> Result<(), StoreError> {
    tx.execute_batch(SCHEMA_V3)?;
    if !has_column(tx, "batches", "buffer_epoch")? {
        tx.execute_batch(BATCHES_V3)?;
    }
    if !has_column(tx, "gaps", "count_known")? {
        tx.execute_batch(
            "ALTER TABLE gaps ADD COLUMN count_known INTEGER NOT NULL DEFAULT 1;
             UPDATE gaps SET count_known = 0 WHERE reason = 'unclean-shutdown' AND count = 0;",
        )?;
    }
    if !has_column(tx, "gaps", "detail")? {
        tx.execute_batch("ALTER TABLE gaps ADD COLUMN detail TEXT;")?;
    }
    Ok(())
}

/// Create or upgrade the schema; returns e.g. `sqlite 3.50.2 (embedded)`.
pub(super) fn migrate(conn: &mut Connection) -> Result<String, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "database schema version {version} is newer than this build's ({SCHEMA_VERSION}): upgrade cloud-ingest"
        )));
    }
    tx.execute_batch(SCHEMA_V1)?;
    // Version 2: the reconciliation's tables (idempotent, like every later step).
    tx.execute_batch(super::ledger::SCHEMA_V2)?;
    // Version 3: batch identity (buffer epoch + content digest), buffers, gaps of unknown count.
    migrate_v3(&tx)?;
    // Version 4: coverage of the variance records.
    super::ledger::migrate_v4(&tx)?;
    // Version 5: run history, amendments, audit log.
    super::ledger::migrate_v5(&tx)?;
    // Version 6: the hour rollup and its dirty marks; an upgraded file's hours start pending.
    let fresh: i64 = tx.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = 'rollup_dirty'",
        [],
        |r| r.get(0),
    )?;
    tx.execute_batch(super::rollup::SCHEMA_V6)?;
    if fresh == 0 {
        tx.execute_batch(super::rollup::MARK_EXISTING)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(format!("sqlite {} (embedded)", rusqlite::version()))
}
