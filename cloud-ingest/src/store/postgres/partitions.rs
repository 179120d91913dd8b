//! Native daily partitions (created ahead and on demand, dropped by retention) and the
//! TimescaleDB equivalents (policies, continuous aggregates, explicit compression/refresh).

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::types::{day_name, parse_day_name, rfc3339, Ts, DAY_MS};
use super::{pg, Layout, PgOptions, PgStore};
use crate::store::StoreError;

/// TimescaleDB: chunks of `readings` older than this are compressed by the policy.
pub const COMPRESS_AFTER_DAYS: u32 = 7;
/// Advisory lock key serialising partition DDL across ingest instances ("FlSq" + 2).
const PARTITION_LOCK: i64 = 0x466c_5371_0002;
/// Advisory lock key serialising the creation of continuous aggregates ("FlSq" + 3).
const AGGREGATES_LOCK: i64 = 0x466c_5371_0003;
/// Most partition days one call may create: more means timestamps gone wrong, and creating
/// thousands of tables would hurt the whole database.
pub(super) const MAX_NEW_DAYS: usize = 1000;
/// The partitioned tables, each with one partition per day.
const PARENTS: [&str; 2] = ["readings", "events"];

/// Days (since the Unix epoch) whose partitions are known to exist.
#[derive(Debug, Default)]
pub(super) struct Known(Mutex<HashSet<i64>>);

impl Known {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        // The set is a cache: a panic while holding it cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget every day (after a COPY found no partition: someone dropped one).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

/// Today, in days since the Unix epoch (UTC), on the data clock: partitions hold the data's
/// days, so creating ahead and retention count in the data's time (simulated in the demo).
fn today() -> i64 {
    flowsquare_service::clock::now_ms().div_euclid(DAY_MS)
}

/// The days (since the Unix epoch) a partition may be created for: those touching the accepted
/// window ([`crate::store::Limits::window`]) at the data clock's now.
fn allowed_days(store: &PgStore) -> (i64, i64) {
    let (from, to) = store
        .inner
        .opts
        .limits
        .window(flowsquare_service::clock::now_ms());
    (from.div_euclid(DAY_MS), to.div_euclid(DAY_MS))
}

/// Make sure partitions of `readings` and `events` exist for these days (native layout).
/// Returns how many days were created. A day outside the accepted window is refused (the
/// commit has split such data off already; this is the partition side's own guard).
pub(super) async fn ensure_days(
    store: &PgStore,
    client: &mut deadpool_postgres::Object,
    days: &BTreeSet<i64>,
) -> Result<usize, StoreError> {
    // One day of slack each side: the commit judged the window a moment earlier (midnight may
    // have passed since).
    let (first, last) = allowed_days(store);
    let (first, last) = (first.saturating_sub(1), last.saturating_add(1));
    if let Some(d) = days.iter().find(|d| !(first..=last).contains(*d)) {
        return Err(StoreError::Invalid(format!(
            "no partition is created for day {} outside the accepted window",
            day_name(*d).unwrap_or_else(|_| d.to_string())
        )));
    }
    let missing: Vec<i64> = {
        let known = store.inner.partitions.lock();
        days.iter()
            .copied()
            .filter(|d| !known.contains(d))
            .collect()
    };
    if missing.is_empty() {
        return Ok(0);
    }
    if missing.len() > MAX_NEW_DAYS {
        return Err(StoreError::Invalid(format!(
            "the data touches {} days without partitions (at most {MAX_NEW_DAYS} at once): timestamps look wrong",
            missing.len()
        )));
    }
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await
        .map_err(pg)?;
    // Do not wait behind a long lock queue on the parent: fail (transiently) instead.
    tx.batch_execute("SET LOCAL lock_timeout = '10s'")
        .await
        .map_err(pg)?;
    let attached: HashSet<String> = tx
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent IN ('flowsquare.readings'::regclass, 'flowsquare.events'::regclass)",
            &[],
        )
        .await
        .map_err(pg)?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut created = 0;
    for &day in &missing {
        let name = day_name(day)?;
        let (from, to) = (rfc3339(day * DAY_MS)?, rfc3339((day + 1) * DAY_MS)?);
        let mut any = false;
        for parent in PARENTS {
            let part = format!("{parent}_p{name}");
            if attached.contains(&part) {
                continue;
            }
            // Created alone, then attached: ATTACH takes only SHARE UPDATE EXCLUSIVE on the
            // parent (CREATE … PARTITION OF would take ACCESS EXCLUSIVE and stop readers).
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS flowsquare.{part}
                     (LIKE flowsquare.{parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
                 ALTER TABLE flowsquare.{parent} ATTACH PARTITION flowsquare.{part}
                     FOR VALUES FROM ('{from}') TO ('{to}');"
            ))
            .await
            .map_err(pg)?;
            any = true;
        }
        created += usize::from(any);
    }
    tx.commit().await.map_err(pg)?;
    store.inner.partitions.lock().extend(missing);
    if created > 0 {
        tracing::info!(days = created, "created daily partitions");
    }
    Ok(created)
}

/// A parsed partition name: (parent, day).
fn parse_partition(name: &str) -> Option<(&'static str, i64)> {
    PARENTS.into_iter().find_map(|p| {
        let rest = name.strip_prefix(p)?.strip_prefix("_p")?;
        Some((p, parse_day_name(rest)?))
    })
}

impl PgStore {
    /// Native layout: create the partitions of today and the next
    /// [`PgOptions::partitions_ahead_days`] days (idempotent; `migrate` calls it; call it daily).
    /// Returns how many days were created. No-op with TimescaleDB.
    pub async fn create_partitions_ahead(&self) -> Result<usize, StoreError> {
        if self.layout().await? != Layout::Native {
            return Ok(0);
        }
        let t = today();
        // Not beyond the accepted window: no data can land there.
        let ahead =
            (t + i64::from(self.inner.opts.partitions_ahead_days)).min(allowed_days(self).1);
        let days: BTreeSet<i64> = (t..=ahead).collect();
        let mut client = self.client().await?;
        ensure_days(self, &mut client, &days).await
    }

    /// Apply the retention ([`PgOptions::retention_days`]) now: drop the days of raw readings and
    /// events entirely older than it (native partitions, or TimescaleDB chunks, whose policy
    /// does the same when background jobs run) and the `rollup_1m` rows (hourly rollups are
    /// kept). Returns how many partitions or chunks were dropped; 0 without a retention.
    pub async fn drop_expired_partitions(&self) -> Result<usize, StoreError> {
        let Some(days) = self.inner.opts.retention_days else {
            return Ok(0);
        };
        let layout = self.layout().await?;
        let cutoff_day = today() - i64::from(days);
        let cutoff = Ts(cutoff_day * DAY_MS);
        let mut client = self.client().await?;
        let mut dropped = 0usize;
        match layout {
            Layout::Native => {
                let names: Vec<String> = client
                    .query(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                         WHERE i.inhparent IN ('flowsquare.readings'::regclass, 'flowsquare.events'::regclass)",
                        &[],
                    )
                    .await
                    .map_err(pg)?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut gone = Vec::new();
                for name in names {
                    let Some((_, day)) = parse_partition(&name) else {
                        continue;
                    };
                    if day + 1 > cutoff_day {
                        continue;
                    }
                    let tx = client.transaction().await.map_err(pg)?;
                    tx.batch_execute(&format!(
                        "SET LOCAL lock_timeout = '10s'; DROP TABLE IF EXISTS flowsquare.{name}"
                    ))
                    .await
                    .map_err(pg)?;
                    tx.commit().await.map_err(pg)?;
                    dropped += 1;
                    gone.push(day);
                }
                let mut known = self.inner.partitions.lock();
                for d in gone {
                    known.remove(&d);
                }
            }
            Layout::Timescale => {
                for parent in PARENTS {
                    let n: i64 = client
                        .query_one(
                            &format!("SELECT count(*) FROM drop_chunks('flowsquare.{parent}', older_than => $1::timestamptz)"),
                            &[&cutoff],
                        )
                        .await
                        .map_err(pg)?
                        .get(0);
                    dropped += usize::try_from(n).unwrap_or(0);
                }
            }
        }
        client
            .execute(
                "DELETE FROM flowsquare.rollup_1m WHERE bucket < $1",
                &[&cutoff],
            )
            .await
            .map_err(pg)?;
        if dropped > 0 {
            tracing::info!(dropped, retention_days = days, "dropped expired partitions");
        }
        Ok(dropped)
    }

    /// TimescaleDB: compress the `readings` chunks entirely older than `age` now (what the
    /// compression policy does when background jobs run). Returns how many chunks were looked
    /// at (already compressed ones are skipped). No-op (0) with native partitions.
    pub async fn compress_chunks_older_than(&self, age: Duration) -> Result<u64, StoreError> {
        if self.layout().await? != Layout::Timescale {
            return Ok(0);
        }
        // Chunks hold the data's time: their age is on the data clock.
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = flowsquare_service::clock::now_ms()
            .saturating_sub(age_ms)
            .max(0);
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(compress_chunk(c, if_not_compressed => true))
                 FROM show_chunks('flowsquare.readings', older_than => $1::timestamptz) c",
                &[&Ts(cutoff)],
            )
            .await
            .map_err(pg)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// TimescaleDB: refresh the continuous aggregates `agg_1m` and `agg_1h` over
    /// `[from_ms, to_ms)` now (what their policies do when background jobs run). `series` does
    /// not need it (it uses the service's own rollups); dashboards reading the aggregates do.
    /// No-op with native partitions.
    pub async fn refresh_aggregates(&self, from_ms: i64, to_ms: i64) -> Result<(), StoreError> {
        if self.layout().await? != Layout::Timescale {
            return Ok(());
        }
        let (from, to) = (rfc3339(from_ms)?, rfc3339(to_ms)?);
        let client = self.client().await?;
        for view in ["agg_1m", "agg_1h"] {
            // A procedure: must run outside a transaction block, hence a simple query.
            client
                .batch_execute(&format!(
                    "CALL refresh_continuous_aggregate('flowsquare.{view}', '{from}'::timestamptz, '{to}'::timestamptz)"
                ))
                .await
                .map_err(pg)?;
        }
        Ok(())
    }
}

/// TimescaleDB compression and retention policies (inside the migration transaction).
pub(super) async fn timescale_policies(
    tx: &deadpool_postgres::Transaction<'_>,
    opts: &PgOptions,
) -> Result<(), StoreError> {
    let compressed: bool = tx
        .query_opt(
            "SELECT compression_enabled FROM timescaledb_information.hypertables
             WHERE hypertable_schema = 'flowsquare' AND hypertable_name = 'readings'",
            &[],
        )
        .await
        .map_err(pg)?
        .is_some_and(|r| r.get(0));
    if !compressed {
        tx.batch_execute(
            "ALTER TABLE flowsquare.readings SET (timescaledb.compress,
                 timescaledb.compress_segmentby = 'tag_id', timescaledb.compress_orderby = 'ts')",
        )
        .await
        .map_err(pg)?;
    }
    let mut sql = format!(
        "SELECT add_compression_policy('flowsquare.readings', INTERVAL '{COMPRESS_AFTER_DAYS} days', if_not_exists => true);
         SELECT remove_retention_policy('flowsquare.readings', if_exists => true);
         SELECT remove_retention_policy('flowsquare.events', if_exists => true);"
    );
    if let Some(days) = opts.retention_days {
        sql.push_str(&format!(
            "SELECT add_retention_policy('flowsquare.readings', INTERVAL '{days} days');
             SELECT add_retention_policy('flowsquare.events', INTERVAL '{days} days');"
        ));
    }
    tx.batch_execute(&sql).await.map_err(pg)?;
    Ok(())
}

/// TimescaleDB continuous aggregates at 1 minute and 1 hour, with refresh policies (outside a
/// transaction: continuous aggregates cannot be created inside one).
pub(super) async fn create_aggregates(store: &PgStore) -> Result<(), StoreError> {
    let client = store.client().await?;
    // A session lock (no transaction to hold it): released below, or when the connection ends.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&AGGREGATES_LOCK])
        .await
        .map_err(pg)?;
    let result = create_aggregates_locked(&client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&AGGREGATES_LOCK])
        .await
        .map_err(pg);
    result.and(unlocked.map(drop))
}

async fn create_aggregates_locked(client: &deadpool_postgres::Object) -> Result<(), StoreError> {
    for (view, width, start, every) in [
        ("agg_1m", "1 minute", "3 days", "1 minute"),
        ("agg_1h", "1 hour", "7 days", "30 minutes"),
    ] {
        client
            .batch_execute(&format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS flowsquare.{view}
                 WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
                 SELECT tag_id, time_bucket(INTERVAL '{width}', ts) AS bucket,
                        min(value) FILTER (WHERE quality = 0) AS min,
                        max(value) FILTER (WHERE quality = 0) AS max,
                        avg(value) FILTER (WHERE quality = 0) AS avg,
                        last(value, ts) FILTER (WHERE quality = 0 AND value IS NOT NULL) AS last,
                        count(*) AS count,
                        count(*) FILTER (WHERE quality <> 0) AS bad
                 FROM flowsquare.readings
                 GROUP BY tag_id, bucket
                 WITH NO DATA;
                 SELECT add_continuous_aggregate_policy('flowsquare.{view}',
                     start_offset => INTERVAL '{start}', end_offset => INTERVAL '{width}',
                     schedule_interval => INTERVAL '{every}', if_not_exists => true);"
            ))
            .await
            .map_err(pg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_parse() {
        assert_eq!(
            parse_partition("readings_p20260101"),
            Some(("readings", 20454))
        );
        assert_eq!(parse_partition("events_p20260102"), Some(("events", 20455)));
        assert_eq!(parse_partition("readings_default"), None);
        assert_eq!(parse_partition("rollup_1m"), None);
    }
}
