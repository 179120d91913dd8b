//! SQLite's rollup (`rollup_1h`), built off the commit path by the roller from the committed
//! rows, so that `series` by whole hours stays fast (issue 16 item 1).
//!
//! # Design note
//!
//! **One unit, the hour.** PostgreSQL keeps 1 min and 1 h rollups; SQLite keeps the hour only.
//! A 1 min step over 30 days is 43,200 buckets, more than the API's limit
//! (`api::routes::MAX_BUCKETS`, 10,000: ~7 days at 1 min), so minute steps only cover short
//! ranges, read from raw readings (a day of a 1 s tag at 1 min: ~50 ms; 7 days: ~250 ms, over
//! the 200 ms goal: a 1 min rollup would be the next step). The long ranges are read by hours,
//! and those are what the raw walk made slow (30 days of 1 s data by 1 h: ~1-1.7 s raw, 1-2 ms
//! from the rollup; `tests::measure_series_30_days_of_1s_by_1h`, ignored).
//!
//! **Marks.** `commit` writes, in its transaction, one *dirty mark* per (site, agent, hour) its
//! stored readings touch into `rollup_dirty (site, agent, hour_ms)` with `INSERT OR IGNORE` — a
//! handful per commit, not one per reading. A tag belongs to one (site, agent), so a mark names
//! every rollup row it may make stale. A re-sent (duplicate) batch stores nothing and marks
//! nothing; a late reading into a rolled hour marks it again.
//!
//! **Roller** ([`roll_one`], through `Store::roll_due`, run every `[database]
//! rollup_interval_ms` by `serve`, and by `import` with settle 0): a mark is due when its hour
//! closed `rollup_settle_ms` or more before `now` (data clock, as on PostgreSQL). Per mark, one
//! `BEGIN IMMEDIATE` transaction deletes the `rollup_1h` rows of the agent's tags for that hour,
//! re-aggregates them `INSERT … SELECT … GROUP BY tag_id` from `readings` restricted to
//! `tag_id IN (SELECT id FROM tags WHERE site = ? AND agent = ?)` (an index range of
//! `(tag_id, ts_ms)` per tag), and deletes the mark. Why nothing is lost: SQLite has one writer
//! per database file. Every write here (`commit`, the roll) is a `BEGIN IMMEDIATE` transaction,
//! which takes the file's write lock before it reads anything, and in this process all of them
//! also run one at a time on the store's single connection behind its mutex. So a roll and a
//! commit never interleave: a commit either ended before the roll began (the roll's aggregation
//! sees its readings) or begins after the roll committed (it inserts the mark again, rolled
//! later). That holds for another process on the same file too (the write lock is the file's).
//!
//! **Reads stay exact** (`series` here): in one read transaction (one WAL snapshot), an hour
//! inside `[from, to)` is taken from `rollup_1h` only when no mark covers (the tag's agent,
//! hour); marked hours and the partial hours at the ends are aggregated from raw readings, then
//! merged per bucket. A mark and the rows it stands for change in the same transaction, so in
//! any snapshot an unmarked hour's rollup row counts every reading visible in it.
//!
//! **Semantics** equal the raw walk (`read::series`): `n` all readings, `bad` quality not good,
//! `n_good`/`sum`/`min`/`max` over good readings with a numeric value (a NaN is stored as NULL
//! and so is not one), `last` the value of the latest such reading, among equal timestamps the
//! last stored (`rowid`). (Sums are added per hour, then per bucket, so an average can differ
//! from the raw walk's in the last bits.)
//!
//! **Crash safety and upgrade.** Marks are written and deleted in the transactions that change
//! the rows they stand for, so a killed ingest leaves them for the next roller. Migrating a
//! version 5 database marks every (site, agent, hour) holding readings (one scan of `readings`),
//! so its history is read raw until rolled, never missing.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use crate::store::{Bucket, StoreError};

/// One hour, ms.
pub(super) const HOUR_MS: i64 = 3_600_000;

/// Start of the hour of `ts` (floor, also for negative times).
pub(super) fn hour_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(HOUR_MS)
}

/// Version 6: the rollup and its marks (idempotent).
pub(super) const SCHEMA_V6: &str = "
CREATE TABLE IF NOT EXISTS rollup_1h (
    tag_id    INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    bad       INTEGER NOT NULL,
    n_good    INTEGER NOT NULL,
    sum       REAL NOT NULL,
    min       REAL,
    max       REAL,
    last_ts   INTEGER,
    last      REAL,
    PRIMARY KEY (tag_id, bucket_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_dirty (
    site    TEXT NOT NULL,
    agent   TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    PRIMARY KEY (site, agent, hour_ms)
) WITHOUT ROWID;
";

/// Upgrading from a version without rollups: every hour holding readings is pending.
pub(super) const MARK_EXISTING: &str = "
INSERT OR IGNORE INTO rollup_dirty (site, agent, hour_ms)
SELECT DISTINCT t.site, t.agent, r.ts_ms - ((r.ts_ms % 3600000) + 3600000) % 3600000
FROM tags t JOIN readings r ON r.tag_id = t.id";

/// Mark the (site, agent, hour)s of one commit (in its transaction).
pub(super) fn mark(
    tx: &Transaction<'_>,
    marks: &BTreeSet<(&str, &str, i64)>,
) -> Result<(), StoreError> {
    if marks.is_empty() {
        return Ok(());
    }
    let mut st = tx.prepare_cached(
        "INSERT OR IGNORE INTO rollup_dirty (site, agent, hour_ms) VALUES (?1, ?2, ?3)",
    )?;
    for (site, agent, hour) in marks {
        st.execute(params![site, agent, hour])?;
    }
    Ok(())
}

/// The agent's tags' rows of one hour, re-aggregated from the readings.
const ROLL_HOUR: &str = "
INSERT INTO rollup_1h (tag_id, bucket_ms, n, bad, n_good, sum, min, max, last_ts, last)
SELECT g.tag_id, ?3, g.n, g.bad, g.n_good, g.sum, g.min, g.max, g.last_ts,
       (SELECT x.value FROM readings x
        WHERE x.tag_id = g.tag_id AND x.ts_ms = g.last_ts AND x.quality = 0 AND x.value IS NOT NULL
        ORDER BY x.rowid DESC LIMIT 1)
FROM (
    SELECT tag_id, count(*) AS n, sum(quality <> 0) AS bad, sum(good) AS n_good,
           total(CASE WHEN good THEN value END) AS sum, min(CASE WHEN good THEN value END) AS min,
           max(CASE WHEN good THEN value END) AS max, max(CASE WHEN good THEN ts_ms END) AS last_ts
    FROM (SELECT tag_id, ts_ms, value, quality, quality = 0 AND value IS NOT NULL AS good
          FROM readings
          WHERE tag_id IN (SELECT id FROM tags WHERE site = ?1 AND agent = ?2)
            AND ts_ms >= ?3 AND ts_ms < ?3 + 3600000)
    GROUP BY tag_id
) g";

/// Roll the oldest mark whose hour closed at or before `due_ms` (one transaction); returns
/// whether there was one.
pub(super) fn roll_one(conn: &mut Connection, due_ms: i64) -> Result<bool, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mark: Option<(String, String, i64)> = tx
        .prepare_cached(
            "SELECT site, agent, hour_ms FROM rollup_dirty WHERE hour_ms <= ?1 - 3600000
             ORDER BY hour_ms, site, agent LIMIT 1",
        )?
        .query_row([due_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let Some((site, agent, hour)) = mark else {
        return Ok(false);
    };
    tx.prepare_cached(
        "DELETE FROM rollup_1h WHERE tag_id IN (SELECT id FROM tags WHERE site = ?1 AND agent = ?2)
         AND bucket_ms = ?3",
    )?
    .execute(params![site, agent, hour])?;
    tx.prepare_cached(ROLL_HOUR)?
        .execute(params![site, agent, hour])?;
    tx.prepare_cached("DELETE FROM rollup_dirty WHERE site = ?1 AND agent = ?2 AND hour_ms = ?3")?
        .execute(params![site, agent, hour])?;
    tx.commit()?;
    Ok(true)
}

/// Marks left: (all, due at `due_ms`, the oldest hour).
pub(super) fn pending(
    conn: &mut Connection,
    due_ms: i64,
) -> Result<(i64, i64, Option<i64>), StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*), count(*) FILTER (WHERE hour_ms <= ?1 - 3600000), min(hour_ms)
             FROM rollup_dirty",
        )?
        .query_row([due_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?)
}

/// Partial aggregate of one bucket while merging units.
#[derive(Default)]
struct Part {
    n: i64,
    bad: i64,
    n_good: i64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    last_ts: Option<i64>,
    last: Option<f64>,
}

impl Part {
    /// Take a later (or, within one walk, equal-time later-stored) last value.
    fn last(&mut self, ts: i64, v: f64) {
        if self.last_ts.is_none_or(|t| ts >= t) {
            self.last_ts = Some(ts);
            self.last = Some(v);
        }
    }
}

/// Aggregate the tag's raw readings in `[lo, hi)` into `out` by buckets of `step`.
fn raw_into(
    tx: &Transaction<'_>,
    tag_id: i64,
    (lo, hi): (i64, i64),
    step: i64,
    out: &mut BTreeMap<i64, Part>,
) -> Result<(), StoreError> {
    if hi <= lo {
        return Ok(());
    }
    let mut st = tx.prepare_cached(
        "SELECT ts_ms, value, quality FROM readings
         WHERE tag_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 ORDER BY ts_ms, rowid",
    )?;
    let mut rows = st.query(params![tag_id, lo, hi])?;
    while let Some(r) = rows.next()? {
        let (ts, value, quality): (i64, Option<f64>, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let p = out.entry(ts - ts.rem_euclid(step)).or_default();
        p.n += 1;
        if quality != 0 {
            p.bad += 1;
            continue;
        }
        if let Some(v) = value {
            p.n_good += 1;
            p.sum += v;
            p.min = Some(p.min.map_or(v, |m| m.min(v)));
            p.max = Some(p.max.map_or(v, |m| m.max(v)));
            p.last(ts, v);
        }
    }
    Ok(())
}

/// Series by a step that is a whole number of hours, with whole hours `[mid_from, mid_to)`
/// (non-empty) inside `[from, to)`: unmarked hours from `rollup_1h`, the rest from raw
/// readings, in one read transaction (see the design note).
pub(super) fn series(
    conn: &mut Connection,
    tag_id: i64,
    (from, to): (i64, i64),
    (mid_from, mid_to): (i64, i64),
    step: i64,
) -> Result<Vec<Bucket>, StoreError> {
    let tx = conn.transaction()?;
    let pending: HashSet<i64> = tx
        .prepare_cached(
            "SELECT m.hour_ms FROM tags t
             JOIN rollup_dirty m ON m.site = t.site AND m.agent = t.agent
             WHERE t.id = ?1 AND m.hour_ms >= ?2 AND m.hour_ms < ?3",
        )?
        .query_map(params![tag_id, mid_from, mid_to], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out: BTreeMap<i64, Part> = BTreeMap::new();
    {
        let mut st = tx.prepare_cached(
            "SELECT bucket_ms, n, bad, n_good, sum, min, max, last_ts, last FROM rollup_1h
             WHERE tag_id = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3",
        )?;
        let mut rows = st.query(params![tag_id, mid_from, mid_to])?;
        while let Some(r) = rows.next()? {
            let hour: i64 = r.get(0)?;
            if pending.contains(&hour) {
                continue;
            }
            let p = out.entry(hour - hour.rem_euclid(step)).or_default();
            p.n += r.get::<_, i64>(1)?;
            p.bad += r.get::<_, i64>(2)?;
            p.n_good += r.get::<_, i64>(3)?;
            p.sum += r.get::<_, f64>(4)?;
            if let Some(v) = r.get::<_, Option<f64>>(5)? {
                p.min = Some(p.min.map_or(v, |m| m.min(v)));
            }
            if let Some(v) = r.get::<_, Option<f64>>(6)? {
                p.max = Some(p.max.map_or(v, |m| m.max(v)));
            }
            if let (Some(t), Some(v)) = (r.get::<_, Option<i64>>(7)?, r.get::<_, Option<f64>>(8)?) {
                p.last(t, v);
            }
        }
    }
    raw_into(&tx, tag_id, (from, mid_from), step, &mut out)?;
    raw_into(&tx, tag_id, (mid_to, to), step, &mut out)?;
    for &h in &pending {
        raw_into(&tx, tag_id, (h, h + HOUR_MS), step, &mut out)?;
    }
    tx.finish()?;
    Ok(out
        .into_iter()
        .map(|(ts_ms, p)| Bucket {
            ts_ms,
            min: p.min,
            max: p.max,
            avg: (p.n_good > 0).then(|| p.sum / p.n_good as f64),
            last: p.last,
            count: p.n,
            bad: p.bad,
        })
        .collect())
}
