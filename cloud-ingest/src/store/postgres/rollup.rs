//! The service's own rollups (`rollup_1m`, `rollup_1h`), built off the commit path by the
//! roller from the committed rows.
//!
//! # Design note
//!
//! **Marks.** `commit` writes the ledger, the readings (binary `COPY`), events and gaps, and one
//! *dirty mark* per (site, agent, minute) its readings touch into `flowsquare.rollup_dirty`
//! `(site, agent, bucket, unit_ms, seq, since)`, PK `(site, agent, bucket, unit_ms)` — a handful
//! of rows per commit (distinct minutes × agents), not one per reading. A tag belongs to one
//! (site, agent), so a mark names every rollup row it may make stale. The mark is written with
//! `INSERT … ON CONFLICT … DO UPDATE SET seq = seq + 1`, last in the transaction (the row lock
//! is held only for the commit itself) and in key order (two commits lock marks in one order:
//! no deadlock). `DO UPDATE` takes the row lock of an existing mark; `DO NOTHING` would not, and
//! a roller could then delete the mark and aggregate before that commit is visible, losing its
//! readings for good.
//!
//! **Roller** ([`PgStore::roll_due`], run every `[database] rollup_interval_ms` by `serve`).
//! One READ COMMITTED transaction per pass of ≤ [`MARKS_PER_PASS`] marks:
//! 1. `DELETE … WHERE key IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING` the due minute marks
//!    (due: the minute, or the mark's first commit, is older than one unit + the settle time
//!    `rollup_settle_ms`, so in live flow a minute is rolled once, after it closed);
//! 2. a *new statement* (READ COMMITTED: a new snapshot, taken after the delete) deletes the
//!    `rollup_1m` rows of those (agent's tags, minutes) and re-aggregates them set-based,
//!    `INSERT … SELECT … GROUP BY tag_id, minute` from `readings` (runs of consecutive minutes
//!    of one agent are one index range per tag);
//! 3. marks the hours of those minutes (the same upsert as a commit's);
//!
//! then commits. Hours are rolled the same way from `rollup_1m` (passes over due hour marks).
//! `cloud-ingest import` rolls what it stored before it ends (settle 0), so an import needs no
//! running `serve` for its series to come from rollups.
//! Why nothing is lost: a commit C touching a marked minute either (a) locked the mark before
//! the roller's `SELECT … FOR UPDATE SKIP LOCKED`: the roller skips that mark, which stays and is
//! rolled by a later pass (after C is visible); or (b) committed before the roller locked it:
//! the roller's aggregation snapshot, taken after, sees C; or (c) upserts after the roller
//! locked/deleted the mark: C waits for the roller's transaction to end, then inserts a new mark,
//! rolled later. A commit inserting a mark where none exists is invisible to the roller's delete
//! until it commits, and its mark is rolled later. Rollers of several ingest instances take
//! disjoint marks (`SKIP LOCKED`); a (tag, minute) is covered by one mark key only.
//!
//! **Reads stay exact** (`read.rs`): `series` takes a whole minute (hour) from the rollup only
//! when no mark covers it in the same snapshot (for an hour: no hour mark and no minute mark
//! inside it); pending units are aggregated from raw readings. By the argument above, a unit
//! without a visible mark has a rollup row that counts every commit visible in the snapshot.
//!
//! **Crash safety.** Marks are written in the commit's transaction, and deleted in the roller's
//! transaction with the rows they stand for: a killed ingest (or database restart) leaves them,
//! and the next roller (after restart) rolls them. Tests (`tests.rs`): `series_from_rollups_
//! equal_series_from_raw_readings` (before any roll, rolled, late data pending, rolled again),
//! `a_late_reading_into_a_rolled_minute_corrects_minute_and_hour` (settle, lag, re-sent batch),
//! `a_commit_concurrent_with_a_roll_is_not_lost` (a second connection holds a commit's
//! transaction open across the roll: the three interleavings above),
//! `pending_marks_survive_a_restart_and_are_rolled_after_it` (a store dropped with marks
//! pending, a new one on the database rolls them), `a_killed_roll_leaves_its_marks` (the
//! roller's connection terminated mid-transaction: marks and old rows unchanged, the next pass
//! does the work), `rolled_rollups_equal_the_in_memory_aggregates` (seeded random batches
//! against `Agg`, the aggregate the commit path used to upsert).
//!
//! **Retention** drops `rollup_1m` rows older than it and keeps `rollup_1h`; an hour older than
//! the retention is therefore never re-rolled from minutes (its mark is dropped): data that old
//! arriving late (only if the accepted window is longer than the retention) is in the raw
//! readings but not in that hour's rollup row.
//!
//! **TimescaleDB**: the same marks, roller and SQL (the continuous aggregates `agg_1m`/`agg_1h`
//! are kept as they were, for dashboards). **SQLite** has the same scheme with hours only
//! (`sqlite/rollup.rs`: marks in the commit, a roller, exact reads; its single writer makes the
//! locking above unnecessary).

use std::collections::BTreeSet;

use super::types::{Ts, DAY_MS, MAX_TS_MS, MIN_TS_MS};
use super::{pg, PgStore};
use crate::store::{RollReport, StoreError};

/// One minute, ms.
pub(super) const MINUTE_MS: i64 = 60_000;
/// One hour, ms.
pub(super) const HOUR_MS: i64 = 3_600_000;
/// Most marks one roller transaction takes.
pub const MARKS_PER_PASS: i64 = 500;
/// Most passes of each unit per [`PgStore::roll_due`] call (the rest is left for the next).
const MAX_PASSES: usize = 20;

/// Upsert the marks of (site, agent, bucket) of one unit, in key order (see the design note).
pub(super) async fn mark(
    c: &impl deadpool_postgres::GenericClient,
    marks: &BTreeSet<(&str, &str, i64)>,
    unit_ms: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    if marks.is_empty() {
        return Ok(());
    }
    let (mut site, mut agent, mut bucket) = (Vec::new(), Vec::new(), Vec::new());
    for (s, a, b) in marks {
        site.push(*s);
        agent.push(*a);
        bucket.push(Ts(*b));
    }
    let unit = i32::try_from(unit_ms).unwrap_or(i32::MAX);
    let st = c
        .prepare_cached(
            "INSERT INTO flowsquare.rollup_dirty AS d (site, agent, bucket, unit_ms, since)
             SELECT k.site, k.agent, k.bucket, $4, $5
             FROM unnest($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS k (site, agent, bucket, i)
             ORDER BY k.i
             ON CONFLICT (site, agent, bucket, unit_ms) DO UPDATE SET seq = d.seq + 1",
        )
        .await
        .map_err(pg)?;
    c.execute(&st, &[&site, &agent, &bucket, &unit, &Ts(now_ms)])
        .await
        .map_err(pg)?;
    Ok(())
}

/// Runs of consecutive buckets of one agent: (site, agent, from, to).
type Ranges = (Vec<String>, Vec<String>, Vec<Ts>, Vec<Ts>);

/// Merge sorted (site, agent, bucket) keys into runs of consecutive buckets.
fn ranges(keys: &[(String, String, i64)], unit_ms: i64, floor_ms: i64) -> Ranges {
    let mut out: Ranges = Default::default();
    for (s, a, b) in keys {
        let lo = (*b).max(floor_ms);
        let hi = b + unit_ms;
        if hi <= lo {
            continue;
        }
        let n = out.0.len();
        if n > 0 && out.0[n - 1] == *s && out.1[n - 1] == *a && out.3[n - 1].0 == lo {
            out.3[n - 1] = Ts(hi);
        } else {
            out.0.push(s.clone());
            out.1.push(a.clone());
            out.2.push(Ts(lo));
            out.3.push(Ts(hi));
        }
    }
    out
}

/// Aggregate of the readings of each (tag, minute) in the ranges ($1..$4). (`OFFSET 0` keeps
/// each lateral subquery a plan of its own: an index range per (tag, range), whatever the
/// planner's estimates.)
const MINUTES_FROM_READINGS: &str = "
INSERT INTO flowsquare.rollup_1m (tag_id, bucket, n, bad, n_good, sum, min, max, last_ts, last)
SELECT r.tag_id, date_bin(INTERVAL '1 minute', r.ts, TIMESTAMPTZ 'epoch'),
       count(*), count(*) FILTER (WHERE r.quality <> 0), count(*) FILTER (WHERE r.g),
       coalesce(sum(r.value) FILTER (WHERE r.g), 0), min(r.value) FILTER (WHERE r.g),
       max(r.value) FILTER (WHERE r.g), max(r.ts) FILTER (WHERE r.g),
       (array_agg(r.value ORDER BY r.ts DESC) FILTER (WHERE r.g))[1]
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS k (site, agent, lo, hi)
JOIN flowsquare.tags t ON t.site = k.site AND t.agent = k.agent
CROSS JOIN LATERAL (
    SELECT x.tag_id, x.ts, x.value, x.quality, x.quality = 0 AND x.value IS NOT NULL AS g
    FROM flowsquare.readings x WHERE x.tag_id = t.id AND x.ts >= k.lo AND x.ts < k.hi OFFSET 0
) r
GROUP BY 1, 2";

/// Aggregate of the minutes of each (tag, hour) in the ranges ($1..$4).
const HOURS_FROM_MINUTES: &str = "
INSERT INTO flowsquare.rollup_1h (tag_id, bucket, n, bad, n_good, sum, min, max, last_ts, last)
SELECT m.tag_id, date_bin(INTERVAL '1 hour', m.bucket, TIMESTAMPTZ 'epoch'),
       sum(m.n)::int8, sum(m.bad)::int8, sum(m.n_good)::int8, sum(m.sum), min(m.min), max(m.max),
       max(m.last_ts), (array_agg(m.last ORDER BY m.last_ts DESC) FILTER (WHERE m.last_ts IS NOT NULL))[1]
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS k (site, agent, lo, hi)
JOIN flowsquare.tags t ON t.site = k.site AND t.agent = k.agent
CROSS JOIN LATERAL (
    SELECT * FROM flowsquare.rollup_1m x WHERE x.tag_id = t.id AND x.bucket >= k.lo AND x.bucket < k.hi OFFSET 0
) m
GROUP BY 1, 2";

/// One pass: take up to [`MARKS_PER_PASS`] due marks of `unit_ms` and rebuild what they cover.
/// Returns how many marks were taken.
async fn pass(
    store: &PgStore,
    unit_ms: i64,
    due_before_ms: i64,
    floor_ms: i64,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let (table, source) = if unit_ms == MINUTE_MS {
        ("rollup_1m", MINUTES_FROM_READINGS)
    } else {
        ("rollup_1h", HOURS_FROM_MINUTES)
    };
    let unit = i32::try_from(unit_ms).unwrap_or(i32::MAX);
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    // 1. Take the marks (a commit holding one is skipped: its mark stays for a later pass).
    let taken = tx
        .query(
            "DELETE FROM flowsquare.rollup_dirty
             WHERE (site, agent, bucket, unit_ms) IN (
                 SELECT site, agent, bucket, unit_ms FROM flowsquare.rollup_dirty
                 WHERE unit_ms = $1 AND least(bucket, since) <= $2
                 ORDER BY site, agent, bucket LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING site, agent, bucket",
            &[&unit, &Ts(due_before_ms), &MARKS_PER_PASS],
        )
        .await
        .map_err(pg)?;
    if taken.is_empty() {
        return Ok(0);
    }
    let mut keys: Vec<(String, String, i64)> = taken
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get::<_, Ts>(2).0))
        .collect();
    keys.sort();
    let (site, agent, lo, hi) = ranges(&keys, unit_ms, floor_ms);
    if !site.is_empty() {
        // 2. New statements, new snapshots: every commit whose mark was taken is visible.
        // Each (tag, range) an index range of the primary key (a join filter would read every
        // row of the tag).
        tx.execute(
            &format!(
                "DELETE FROM flowsquare.{table} r
                 WHERE (r.tag_id, r.bucket) IN (
                     SELECT x.tag_id, x.bucket
                     FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) AS k (site, agent, lo, hi)
                     JOIN flowsquare.tags t ON t.site = k.site AND t.agent = k.agent
                     CROSS JOIN LATERAL (
                         SELECT tag_id, bucket FROM flowsquare.{table} y
                         WHERE y.tag_id = t.id AND y.bucket >= k.lo AND y.bucket < k.hi OFFSET 0
                     ) x)"
            ),
            &[&site, &agent, &lo, &hi],
        )
        .await
        .map_err(pg)?;
        tx.execute(source, &[&site, &agent, &lo, &hi])
            .await
            .map_err(pg)?;
    }
    // 3. Minutes rolled: their hours are stale now.
    if unit_ms == MINUTE_MS {
        let hours: BTreeSet<(&str, &str, i64)> = keys
            .iter()
            .map(|(s, a, b)| (s.as_str(), a.as_str(), b - b.rem_euclid(HOUR_MS)))
            .collect();
        mark(&tx, &hours, HOUR_MS, now_ms).await?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(keys.len())
}

impl PgStore {
    /// Roll the due marks (see the module's design note): minutes whose end (or whose mark's
    /// first commit) is `settle_ms` or more before `now_ms` (data clock), then the hours. Bounded
    /// work per call ([`MAX_PASSES`] passes of each unit); [`RollReport::more`] says whether
    /// due marks were left.
    pub async fn roll_due(&self, now_ms: i64, settle_ms: i64) -> Result<RollReport, StoreError> {
        let due = |unit: i64| now_ms.saturating_sub(unit.saturating_add(settle_ms));
        self.roll(now_ms, due(MINUTE_MS), due(HOUR_MS)).await
    }

    /// Roll every pending mark now, whatever its age (tests, benchmarks).
    pub async fn roll_all(&self) -> Result<RollReport, StoreError> {
        let now = flowsquare_service::clock::now_ms();
        loop {
            let r = self.roll(now, MAX_TS_MS - 1, MAX_TS_MS - 1).await?;
            if !r.more {
                return Ok(r);
            }
        }
    }

    /// Roll the minute marks due before `minutes_ms` and the hour marks due before `hours_ms`.
    async fn roll(
        &self,
        now_ms: i64,
        minutes_ms: i64,
        hours_ms: i64,
    ) -> Result<RollReport, StoreError> {
        let clamp = |ms: i64| ms.clamp(MIN_TS_MS, MAX_TS_MS - 1);
        let (now_ms, minutes_ms, hours_ms) = (clamp(now_ms), clamp(minutes_ms), clamp(hours_ms));
        // Minute rows older than the retention are dropped: hours before it are not re-rolled.
        let floor_ms = match self.inner.opts.retention_days {
            Some(d) => (now_ms.div_euclid(DAY_MS) - i64::from(d)).saturating_mul(DAY_MS),
            None => i64::MIN,
        };
        let mut report = RollReport::default();
        for (unit, due_before, rolled) in [
            (MINUTE_MS, minutes_ms, &mut report.minutes),
            (HOUR_MS, hours_ms, &mut report.hours),
        ] {
            for _ in 0..MAX_PASSES {
                let n = pass(self, unit, due_before, floor_ms, now_ms).await?;
                *rolled += n as u64;
                if (n as i64) < MARKS_PER_PASS {
                    break;
                }
            }
        }
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE unit_ms = 60000),
                        min(bucket) FILTER (WHERE unit_ms = 60000),
                        count(*) FILTER (WHERE least(bucket, since) <= $1 AND unit_ms = 60000
                                         OR least(bucket, since) <= $2 AND unit_ms = 3600000)
                 FROM flowsquare.rollup_dirty",
                &[&Ts(minutes_ms), &Ts(hours_ms)],
            )
            .await
            .map_err(pg)?;
        report.pending_minutes = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        report.lag_ms = row
            .get::<_, Option<Ts>>(1)
            .map_or(0, |t| (now_ms - (t.0 + MINUTE_MS)).max(0));
        report.more = row.get::<_, i64>(2) > 0;
        Ok(report)
    }
}

/// Partial aggregate of one (tag, bucket): the in-memory reference the rolled rows are checked
/// against (it was computed at every commit before the roller).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Agg {
    /// Readings (all qualities).
    pub n: i64,
    /// Readings of bad quality (anything but good).
    pub bad: i64,
    /// Good readings with a numeric value.
    pub n_good: i64,
    /// Sum of those values.
    pub sum: f64,
    /// Their minimum.
    pub min: Option<f64>,
    /// Their maximum.
    pub max: Option<f64>,
    /// Time of the last of them.
    pub last_ts: Option<i64>,
    /// The last of them.
    pub last: Option<f64>,
}

#[cfg(test)]
impl Agg {
    pub(super) const EMPTY: Agg = Agg {
        n: 0,
        bad: 0,
        n_good: 0,
        sum: 0.0,
        min: None,
        max: None,
        last_ts: None,
        last: None,
    };

    /// Count one reading.
    pub(super) fn add(&mut self, ts: i64, good: bool, value: Option<f64>) {
        self.n += 1;
        if !good {
            self.bad += 1;
            return;
        }
        let Some(v) = value else { return };
        self.n_good += 1;
        self.sum += v;
        // NaN sorts above every number, as in PostgreSQL.
        self.min = Some(self.min.map_or(v, |m| pg_min(m, v)));
        self.max = Some(self.max.map_or(v, |m| pg_max(m, v)));
        if self.last_ts.is_none_or(|t| ts >= t) {
            self.last_ts = Some(ts);
            self.last = Some(v);
        }
    }
}

/// `min` as PostgreSQL orders `float8`: NaN above every number.
#[cfg(test)]
fn pg_min(a: f64, b: f64) -> f64 {
    if a.is_nan() {
        b
    } else if b.is_nan() {
        a
    } else {
        a.min(b)
    }
}

/// `max` as PostgreSQL orders `float8`: NaN above every number.
#[cfg(test)]
fn pg_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agg_orders_nan_above_every_number() {
        let mut a = Agg::EMPTY;
        a.add(1, true, Some(f64::NAN));
        a.add(2, true, Some(1.0));
        a.add(3, false, Some(-5.0));
        a.add(0, true, None);
        assert_eq!((a.n, a.bad, a.n_good), (4, 1, 2));
        assert_eq!(a.min, Some(1.0));
        assert!(a.max.is_some_and(f64::is_nan));
        assert_eq!((a.last_ts, a.last), (Some(2), Some(1.0)));
    }

    #[test]
    fn consecutive_buckets_of_one_agent_make_one_range() {
        let k = |s: &str, a: &str, b: i64| (s.to_string(), a.to_string(), b);
        let keys = [
            k("s", "a", 0),
            k("s", "a", MINUTE_MS),
            k("s", "a", 3 * MINUTE_MS),
            k("s", "b", 4 * MINUTE_MS),
            k("t", "b", 5 * MINUTE_MS),
        ];
        let (site, agent, lo, hi) = ranges(&keys, MINUTE_MS, i64::MIN);
        assert_eq!(site, ["s", "s", "s", "t"]);
        assert_eq!(agent, ["a", "a", "b", "b"]);
        let lo: Vec<i64> = lo.iter().map(|t| t.0).collect();
        let hi: Vec<i64> = hi.iter().map(|t| t.0).collect();
        assert_eq!(lo, [0, 3 * MINUTE_MS, 4 * MINUTE_MS, 5 * MINUTE_MS]);
        assert_eq!(
            hi,
            [2 * MINUTE_MS, 4 * MINUTE_MS, 5 * MINUTE_MS, 6 * MINUTE_MS]
        );
        // Below the floor: left out, or cut at it.
        let (site, _, lo, hi) = ranges(&keys, MINUTE_MS, 90_000);
        assert_eq!(site.len(), 4);
        assert_eq!((lo[0].0, hi[0].0), (90_000, 2 * MINUTE_MS));
        assert_eq!(lo[1].0, 3 * MINUTE_MS);
    }
}
