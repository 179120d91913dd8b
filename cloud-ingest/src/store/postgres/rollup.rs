//! The service's own rollups: partial aggregates per (tag, minute) and (tag, hour), computed in
//! memory from each stored batch and upserted in the commit transaction.

use std::collections::BTreeMap;

use super::pg;
use super::types::Ts;
use crate::store::StoreError;

/// One minute, ms.
pub(super) const MINUTE_MS: i64 = 60_000;
/// One hour, ms.
pub(super) const HOUR_MS: i64 = 3_600_000;

/// Partial aggregate of one (tag, bucket).
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

impl Agg {
    const EMPTY: Agg = Agg {
        n: 0,
        bad: 0,
        n_good: 0,
        sum: 0.0,
        min: None,
        max: None,
        last_ts: None,
        last: None,
    };

    fn add(&mut self, ts: i64, good: bool, value: Option<f64>) {
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

/// Rollups of one resolution, being built.
#[derive(Debug)]
pub(super) struct Rollup {
    res_ms: i64,
    map: BTreeMap<(i64, i64), Agg>,
    /// The (tag, bucket) being filled: readings come sorted by (tag, ts) in practice.
    cur: Option<((i64, i64), Agg)>,
}

impl Rollup {
    /// Empty, with buckets of `res_ms`.
    pub(super) fn new(res_ms: i64) -> Rollup {
        Rollup {
            res_ms,
            map: BTreeMap::new(),
            cur: None,
        }
    }

    /// Count one reading.
    pub(super) fn add(&mut self, tag_id: i64, ts_ms: i64, good: bool, value: Option<f64>) {
        let key = (tag_id, ts_ms - ts_ms.rem_euclid(self.res_ms));
        match &mut self.cur {
            Some((k, agg)) if *k == key => agg.add(ts_ms, good, value),
            cur => {
                if let Some((k, agg)) = cur.take() {
                    merge(self.map.entry(k).or_insert(Agg::EMPTY), &agg);
                }
                let mut agg = Agg::EMPTY;
                agg.add(ts_ms, good, value);
                *cur = Some((key, agg));
            }
        }
    }

    /// The aggregates, sorted by (tag, bucket) (so that concurrent upserts lock rows in one
    /// order and cannot deadlock).
    pub(super) fn finish(mut self) -> BTreeMap<(i64, i64), Agg> {
        if let Some((k, agg)) = self.cur.take() {
            merge(self.map.entry(k).or_insert(Agg::EMPTY), &agg);
        }
        self.map
    }
}

/// `min` as PostgreSQL orders `float8`: NaN above every number.
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
fn pg_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Fold `b` into `a`.
fn merge(a: &mut Agg, b: &Agg) {
    a.n += b.n;
    a.bad += b.bad;
    a.n_good += b.n_good;
    a.sum += b.sum;
    a.min = match (a.min, b.min) {
        (Some(x), Some(y)) => Some(pg_min(x, y)),
        (x, y) => x.or(y),
    };
    a.max = match (a.max, b.max) {
        (Some(x), Some(y)) => Some(pg_max(x, y)),
        (x, y) => x.or(y),
    };
    if let Some(t) = b.last_ts {
        if a.last_ts.is_none_or(|at| t >= at) {
            a.last_ts = Some(t);
            a.last = b.last;
        }
    }
}

/// Upsert aggregates into `flowsquare.{table}` (`rollup_1m` or `rollup_1h`).
pub(super) async fn upsert(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &str,
    aggs: &BTreeMap<(i64, i64), Agg>,
) -> Result<(), StoreError> {
    if aggs.is_empty() {
        return Ok(());
    }
    let n = aggs.len();
    let (mut tag, mut bucket, mut cnt, mut bad, mut n_good, mut sum) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut min, mut max, mut last_ts, mut last) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (&(t, b), a) in aggs {
        tag.push(t);
        bucket.push(Ts(b));
        cnt.push(a.n);
        bad.push(a.bad);
        n_good.push(a.n_good);
        sum.push(a.sum);
        min.push(a.min);
        max.push(a.max);
        last_ts.push(a.last_ts.map(Ts));
        last.push(a.last);
    }
    let sql = format!(
        "INSERT INTO flowsquare.{table} AS r (tag_id, bucket, n, bad, n_good, sum, min, max, last_ts, last)
         SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[],
                              $6::float8[], $7::float8[], $8::float8[], $9::timestamptz[], $10::float8[])
         ON CONFLICT (tag_id, bucket) DO UPDATE SET
             n = r.n + excluded.n,
             bad = r.bad + excluded.bad,
             n_good = r.n_good + excluded.n_good,
             sum = r.sum + excluded.sum,
             min = least(r.min, excluded.min),
             max = greatest(r.max, excluded.max),
             last_ts = CASE WHEN r.last_ts IS NULL OR excluded.last_ts >= r.last_ts
                            THEN excluded.last_ts ELSE r.last_ts END,
             last = CASE WHEN r.last_ts IS NULL OR excluded.last_ts >= r.last_ts
                         THEN excluded.last ELSE r.last END"
    );
    let st = tx.prepare_cached(&sql).await.map_err(pg)?;
    tx.execute(
        &st,
        &[
            &tag, &bucket, &cnt, &bad, &n_good, &sum, &min, &max, &last_ts, &last,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_groups_by_tag_and_bucket() {
        let mut r = Rollup::new(HOUR_MS);
        for i in 0..7200 {
            r.add(1, i * 1000, i != 5000, Some(i as f64));
        }
        r.add(2, -1, true, Some(3.0)); // before the epoch: bucket -1 h
        r.add(1, 10, true, None); // good without a number
        let m = r.finish();
        assert_eq!(m.len(), 3);
        let a = m[&(1, 0)];
        assert_eq!(
            (a.n, a.bad, a.n_good, a.min, a.max, a.last),
            (3601, 0, 3600, Some(0.0), Some(3599.0), Some(3599.0))
        );
        assert_eq!(a.sum, (0..3600).sum::<i64>() as f64);
        let b = m[&(1, HOUR_MS)];
        assert_eq!(
            (b.n, b.bad, b.n_good, b.last, b.last_ts),
            (3600, 1, 3599, Some(7199.0), Some(7_199_000))
        );
        assert_eq!(m[&(2, -HOUR_MS)].n, 1);
    }
}
