//! Queries: agents, tags, latest values, bucketed series, counts, gaps, dead letters.

use tokio_postgres::types::ToSql;

use super::rollup::{HOUR_MS, MINUTE_MS};
use super::types::{quality_name, Ts, MAX_TS_MS, MIN_TS_MS};
use super::{pg, PgStore};
use crate::store::{
    AgentKey, AgentRow, Bucket, BufferRow, DeadLetterKey, DeadLetterRow, GapFilter, GapKey, GapRow,
    LatestRow, StoreError, TagFilter, TagKey, TagRow,
};

/// SQL parameters built with the query.
type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// `$n` of the parameter just pushed.
fn push<'a>(p: &mut Params<'a>, v: &'a (dyn ToSql + Sync)) -> String {
    p.push(v);
    format!("${}", p.len())
}

/// Most buckets one `series` call may ask for.
pub const MAX_BUCKETS: i64 = 1_000_000;

/// A query bound: clamped to what PostgreSQL and the stored data can hold.
fn bound(ms: i64) -> Ts {
    Ts(ms.clamp(MIN_TS_MS, MAX_TS_MS))
}

/// One page of agents (see [`crate::store::Store::agents_page`]).
pub(super) async fn agents(
    store: &PgStore,
    sites: Option<&[String]>,
    after: Option<&AgentKey>,
    limit: i64,
) -> Result<Vec<AgentRow>, StoreError> {
    let client = store.client().await?;
    let mut p: Params = Vec::new();
    let mut cond = vec!["true".to_owned()];
    if let Some(s) = &sites {
        cond.push(format!("a.site = ANY({}::text[])", push(&mut p, s)));
    }
    if let Some((site, agent)) = after {
        let (a, b) = (push(&mut p, site), push(&mut p, agent));
        cond.push(format!("(a.site, a.agent) > ({a}::text, {b}::text)"));
    }
    let lim = push(&mut p, &limit);
    let sql = format!(
            "SELECT a.site, a.agent, a.online, a.last_seen, a.version, a.config_hash, a.backlog_readings,
                    a.oldest_unsent, b.epoch, b.created, b.origin, b.note, b.first_seen,
                    (SELECT max(r.first_seen) FROM flowsquare.agent_buffers r
                     WHERE r.site = a.site AND r.agent = a.agent AND r.replaced)
             FROM flowsquare.agents a
             LEFT JOIN LATERAL (SELECT * FROM flowsquare.agent_buffers c
                                WHERE c.site = a.site AND c.agent = a.agent
                                ORDER BY c.last_seen DESC, c.first_seen DESC LIMIT 1) b ON true
             WHERE {}
             ORDER BY a.site, a.agent LIMIT {lim}",
        cond.join(" AND ")
    );
    let rows = client.query(&sql, &p).await.map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| AgentRow {
            site: r.get(0),
            agent: r.get(1),
            online: r.get(2),
            last_seen_ms: r.get::<_, Option<Ts>>(3).map(|t| t.0),
            version: r.get(4),
            config_hash: r.get(5),
            backlog_readings: r
                .get::<_, Option<i64>>(6)
                .and_then(|n| u64::try_from(n).ok()),
            oldest_unsent_ms: r.get::<_, Option<Ts>>(7).map(|t| t.0),
            buffer: r.get::<_, Option<i64>>(8).map(|epoch| BufferRow {
                epoch: epoch as u64,
                created_ms: r.get::<_, Ts>(9).0,
                origin: r.get(10),
                note: r.get(11),
                first_seen_ms: r.get::<_, Ts>(12).0,
            }),
            buffer_replaced_ms: r.get::<_, Option<Ts>>(13).map(|t| t.0),
            birth_refused: None,
        })
        .collect())
}

/// One page of tags (see [`crate::store::Store::tags_page`]): the filter and the keyset are
/// in the SQL, so a page reads only its rows (the `(site, agent, name)` unique index).
pub(super) async fn tags(
    store: &PgStore,
    f: &TagFilter,
    after: Option<&TagKey>,
    limit: i64,
) -> Result<Vec<TagRow>, StoreError> {
    let client = store.client().await?;
    let mut p: Params = Vec::new();
    let mut cond = vec!["true".to_owned()];
    if let Some(s) = &f.site {
        cond.push(format!("site = {}::text", push(&mut p, s)));
    }
    if let Some(x) = &f.prefix {
        cond.push(format!("starts_with(name, {}::text)", push(&mut p, x)));
    }
    if let Some(s) = &f.sites {
        cond.push(format!("site = ANY({}::text[])", push(&mut p, s)));
    }
    if let Some(ids) = &f.ids {
        cond.push(format!("id = ANY({}::int8[])", push(&mut p, ids)));
    }
    if let Some((site, agent, name)) = after {
        let (a, b, c) = (push(&mut p, site), push(&mut p, agent), push(&mut p, name));
        cond.push(format!(
            "(site, agent, name) > ({a}::text, {b}::text, {c}::text)"
        ));
    }
    let lim = push(&mut p, &limit);
    let sql = format!(
        "SELECT id, site, agent, name, unit, kind, device, description, interval_ms
         FROM flowsquare.tags WHERE {} ORDER BY site, agent, name LIMIT {lim}",
        cond.join(" AND ")
    );
    let rows = client.query(&sql, &p).await.map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| TagRow {
            id: r.get(0),
            site: r.get(1),
            agent: r.get(2),
            name: r.get(3),
            unit: r.get(4),
            kind: r.get(5),
            device: r.get(6),
            description: r.get(7),
            interval_ms: r.get(8),
        })
        .collect())
}

pub(super) async fn latest(store: &PgStore, tag_ids: &[i64]) -> Result<Vec<LatestRow>, StoreError> {
    if tag_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = tag_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let client = store.client().await?;
    // Per tag, the newest row by the (tag_id, ts) index: partitions/chunks are scanned newest
    // first and the scan stops at the first row.
    let rows = client
        .query(
            "SELECT t.id, r.ts, r.value, r.text, r.quality
             FROM unnest($1::int8[]) AS t (id)
             CROSS JOIN LATERAL (
                 SELECT ts, value, text, quality FROM flowsquare.readings
                 WHERE tag_id = t.id ORDER BY ts DESC LIMIT 1
             ) r",
            &[&ids],
        )
        .await
        .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| LatestRow {
            tag_id: r.get(0),
            ts_ms: r.get::<_, Ts>(1).0,
            value: r.get(2),
            text: r.get(3),
            quality: quality_name(r.get(4)),
        })
        .collect())
}

/// Where `series` takes its data from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Rollups where the step allows, raw readings for the rest.
    Best,
    /// Raw readings only.
    Raw,
}

/// Bucketed series; see the module doc of `postgres`.
pub(super) async fn series(
    store: &PgStore,
    tag_id: i64,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    source: Source,
) -> Result<Vec<Bucket>, StoreError> {
    if step_ms <= 0 {
        return Err(StoreError::Invalid(format!(
            "series: step must be positive, got {step_ms} ms"
        )));
    }
    let (from_ms, to_ms) = (
        from_ms.clamp(MIN_TS_MS, MAX_TS_MS),
        to_ms.clamp(MIN_TS_MS, MAX_TS_MS),
    );
    if to_ms <= from_ms {
        return Ok(Vec::new());
    }
    if (to_ms - from_ms) / step_ms > MAX_BUCKETS {
        return Err(StoreError::Invalid(format!(
            "series: more than {MAX_BUCKETS} buckets"
        )));
    }
    // Rollup units lie wholly inside one bucket when the step is a multiple of the unit (both
    // are aligned on the epoch). Whole units inside [from, to) come from the rollup, the partial
    // ones at the ends from raw readings.
    let rollup = match source {
        Source::Raw => None,
        Source::Best if step_ms % HOUR_MS == 0 => Some((HOUR_MS, "rollup_1h")),
        Source::Best if step_ms % MINUTE_MS == 0 => Some((MINUTE_MS, "rollup_1m")),
        Source::Best => None,
    };
    let whole_units = rollup.and_then(|(unit, table)| {
        let mid_from = from_ms + (unit - from_ms.rem_euclid(unit)) % unit;
        let mid_to = to_ms - to_ms.rem_euclid(unit);
        (mid_from < mid_to).then_some((unit, table, mid_from, mid_to))
    });
    let client = store.client().await?;
    let rows = match whole_units {
        Some((unit, table, mid_from, mid_to)) => {
            // Partial aggregates: rollup rows for the whole units no dirty mark covers (`d`: an
            // hour is pending while its hour mark or a minute mark inside it is), one per raw
            // reading for the pending units and the ends; then merged per bucket. One
            // statement, one snapshot: exact whatever the roller is doing (`rollup.rs`).
            let sql = format!(
                "WITH d AS (
                     SELECT DISTINCT date_bin($7::int8 * INTERVAL '1 millisecond', m.bucket, TIMESTAMPTZ 'epoch') AS u
                     FROM flowsquare.tags tg
                     JOIN flowsquare.rollup_dirty m ON m.site = tg.site AND m.agent = tg.agent
                     WHERE tg.id = $1 AND m.unit_ms <= $7 AND m.bucket >= $4 AND m.bucket < $5
                 ),
                 p AS (
                     SELECT bucket AS t, n, bad, n_good, sum, min, max, last_ts, last
                     FROM flowsquare.{table}
                     WHERE tag_id = $1 AND bucket >= $4 AND bucket < $5
                       AND bucket NOT IN (SELECT u FROM d)
                   UNION ALL
                     SELECT ts, 1::int8, (quality <> 0)::int4::int8, g::int4::int8,
                            CASE WHEN g THEN value ELSE 0 END, CASE WHEN g THEN value END,
                            CASE WHEN g THEN value END, CASE WHEN g THEN ts END, CASE WHEN g THEN value END
                     FROM (
                         SELECT ts, value, quality, quality = 0 AND value IS NOT NULL AS g
                         FROM flowsquare.readings WHERE tag_id = $1 AND ts >= $2 AND ts < $4
                       UNION ALL
                         SELECT ts, value, quality, quality = 0 AND value IS NOT NULL AS g
                         FROM flowsquare.readings WHERE tag_id = $1 AND ts >= $5 AND ts < $3
                       UNION ALL
                         SELECT x.ts, x.value, x.quality, x.quality = 0 AND x.value IS NOT NULL AS g
                         FROM d CROSS JOIN LATERAL (
                             SELECT ts, value, quality FROM flowsquare.readings
                             WHERE tag_id = $1 AND ts >= d.u AND ts < d.u + $7::int8 * INTERVAL '1 millisecond'
                         ) x
                     ) r
                 )
                 SELECT date_bin($6::int8 * INTERVAL '1 millisecond', t, TIMESTAMPTZ 'epoch') AS b,
                        sum(n)::int8, sum(bad)::int8, min(min), max(max),
                        CASE WHEN sum(n_good) > 0 THEN sum(sum) / sum(n_good) END,
                        (array_agg(last ORDER BY last_ts DESC) FILTER (WHERE last_ts IS NOT NULL))[1]
                 FROM p GROUP BY 1 ORDER BY 1"
            );
            let st = client.prepare_cached(&sql).await.map_err(pg)?;
            let params: [&(dyn ToSql + Sync); 7] = [
                &tag_id,
                &Ts(from_ms),
                &Ts(to_ms),
                &Ts(mid_from),
                &Ts(mid_to),
                &step_ms,
                &unit,
            ];
            client.query(&st, &params).await.map_err(pg)?
        }
        None => {
            let st = client
                .prepare_cached(
                    "SELECT date_bin($4::int8 * INTERVAL '1 millisecond', ts, TIMESTAMPTZ 'epoch') AS b,
                            count(*), count(*) FILTER (WHERE quality <> 0),
                            min(value) FILTER (WHERE quality = 0 AND value IS NOT NULL),
                            max(value) FILTER (WHERE quality = 0 AND value IS NOT NULL),
                            avg(value) FILTER (WHERE quality = 0 AND value IS NOT NULL),
                            (array_agg(value ORDER BY ts DESC) FILTER (WHERE quality = 0 AND value IS NOT NULL))[1]
                     FROM flowsquare.readings
                     WHERE tag_id = $1 AND ts >= $2 AND ts < $3
                     GROUP BY 1 ORDER BY 1",
                )
                .await
                .map_err(pg)?;
            client
                .query(&st, &[&tag_id, &Ts(from_ms), &Ts(to_ms), &step_ms])
                .await
                .map_err(pg)?
        }
    };
    Ok(rows
        .iter()
        .map(|r| Bucket {
            ts_ms: r.get::<_, Ts>(0).0,
            count: r.get(1),
            bad: r.get(2),
            min: r.get(3),
            max: r.get(4),
            avg: r.get(5),
            last: r.get(6),
        })
        .collect())
}

pub(super) async fn count_readings(
    store: &PgStore,
    tag_id: Option<i64>,
    from_ms: i64,
    to_ms: i64,
) -> Result<i64, StoreError> {
    let client = store.client().await?;
    let (from, to) = (bound(from_ms), bound(to_ms));
    let row = match tag_id {
        Some(id) => client
            .query_one("SELECT count(*) FROM flowsquare.readings WHERE tag_id = $1 AND ts >= $2 AND ts < $3", &[&id, &from, &to])
            .await
            .map_err(pg)?,
        None => client
            .query_one("SELECT count(*) FROM flowsquare.readings WHERE ts >= $1 AND ts < $2", &[&from, &to])
            .await
            .map_err(pg)?,
    };
    Ok(row.get(0))
}

/// Gap records overlapping `[from_ms, to_ms)` (a gap covers `[from_ms, to_ms]`), by start.
/// One page, by start and id, strictly after `after`.
pub(super) async fn gaps(
    store: &PgStore,
    f: &GapFilter,
    after: Option<GapKey>,
    limit: i64,
) -> Result<Vec<GapRow>, StoreError> {
    let client = store.client().await?;
    let (from, to) = (bound(f.from_ms), bound(f.to_ms));
    let after = after.map(|(t, id)| (bound(t), id));
    let mut p: Params = Vec::new();
    let mut cond = vec![format!(
        "from_ts < {} AND to_ts >= {}",
        push(&mut p, &to),
        push(&mut p, &from)
    )];
    if let Some(s) = &f.site {
        cond.push(format!("site = {}::text", push(&mut p, s)));
    }
    if let Some(s) = &f.sites {
        cond.push(format!("site = ANY({}::text[])", push(&mut p, s)));
    }
    if let Some((t, id)) = &after {
        let (a, b) = (push(&mut p, t), push(&mut p, id));
        cond.push(format!("(from_ts, id) > ({a}, {b})"));
    }
    let lim = push(&mut p, &limit);
    let sql = format!(
        "SELECT site, agent, batch_id, tag_ids, from_ts, to_ts, count, reason, count_known, detail, id
         FROM flowsquare.gaps WHERE {} ORDER BY from_ts, id LIMIT {lim}",
        cond.join(" AND ")
    );
    let rows = client.query(&sql, &p).await.map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| GapRow {
            id: r.get(10),
            site: r.get(0),
            agent: r.get(1),
            batch_id: r.get(2),
            tag_ids: r.get(3),
            from_ms: r.get::<_, Ts>(4).0,
            to_ms: r.get::<_, Ts>(5).0,
            count: r.get(6),
            reason: r.get(7),
            count_known: r.get(8),
            detail: r.get(9),
        })
        .collect())
}

/// The newest dead letters first, strictly before `before` (received, id).
pub(super) async fn dead_letters(
    store: &PgStore,
    before: Option<DeadLetterKey>,
    limit: i64,
) -> Result<Vec<DeadLetterRow>, StoreError> {
    let client = store.client().await?;
    let limit = limit.max(0);
    let rows = match before {
        None => client
            .query(
                "SELECT id, topic, reason, octet_length(payload)::int8, received FROM flowsquare.dead_letters
                 ORDER BY received DESC, id DESC LIMIT $1",
                &[&limit],
            )
            .await,
        Some((t, id)) => client
            .query(
                "SELECT id, topic, reason, octet_length(payload)::int8, received FROM flowsquare.dead_letters
                 WHERE (received, id) < ($2, $3)
                 ORDER BY received DESC, id DESC LIMIT $1",
                &[&limit, &bound(t), &id],
            )
            .await,
    }
    .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| DeadLetterRow {
            id: r.get(0),
            topic: r.get(1),
            reason: r.get(2),
            bytes: r.get(3),
            received_ms: r.get::<_, Ts>(4).0,
        })
        .collect())
}
