//! Reads: agents, tags, latest values, series, counts, gaps, dead letters.

use std::collections::HashSet;

use flowsquare_wire as wire;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::store::{
    AgentKey, AgentRow, Bucket, BufferRow, DeadLetterKey, DeadLetterRow, GapFilter, GapKey, GapRow,
    LatestRow, StoreError, TagFilter, TagKey, TagRow,
};

/// SQL parameters built with the query.
type Params = Vec<rusqlite::types::Value>;

/// `?n` of the parameter just pushed.
fn push(p: &mut Params, v: impl Into<rusqlite::types::Value>) -> String {
    p.push(v.into());
    format!("?{}", p.len())
}

/// A site list as the JSON array `json_each` reads (the filter stays in the SQL).
fn json_list(sites: &[String]) -> String {
    serde_json::Value::from(sites.to_vec()).to_string()
}

/// The spelling of a stored quality code.
fn quality_name(code: i64) -> String {
    u8::try_from(code)
        .ok()
        .and_then(wire::Quality::from_code)
        .map_or_else(|| format!("unknown-{code}"), |q| q.as_str().to_owned())
}

/// One page of agents, by site and agent.
pub(super) fn agents(
    conn: &mut Connection,
    sites: Option<&[String]>,
    after: Option<&AgentKey>,
    limit: i64,
) -> Result<Vec<AgentRow>, StoreError> {
    let mut p: Params = Vec::new();
    let mut cond = vec!["1 = 1".to_owned()];
    if let Some(s) = sites {
        let n = push(&mut p, json_list(s));
        cond.push(format!("a.site IN (SELECT value FROM json_each({n}))"));
    }
    if let Some((site, agent)) = after {
        let (a, b) = (push(&mut p, site.clone()), push(&mut p, agent.clone()));
        cond.push(format!("(a.site, a.agent) > ({a}, {b})"));
    }
    let lim = push(&mut p, limit);
    let mut st = conn.prepare_cached(&format!(
        "SELECT a.site, a.agent, a.online, a.last_seen_ms, a.version, a.config_hash, a.backlog_readings,
                a.oldest_unsent_ms, b.epoch, b.created_ms, b.origin, b.note, b.first_seen_ms,
                (SELECT max(r.first_seen_ms) FROM agent_buffers r
                 WHERE r.site = a.site AND r.agent = a.agent AND r.replaced)
         FROM agents a
         LEFT JOIN agent_buffers b ON b.site = a.site AND b.agent = a.agent AND b.epoch =
             (SELECT c.epoch FROM agent_buffers c WHERE c.site = a.site AND c.agent = a.agent
              ORDER BY c.last_seen_ms DESC, c.first_seen_ms DESC LIMIT 1)
         WHERE {} ORDER BY a.site, a.agent LIMIT {lim}",
        cond.join(" AND ")
    ))?;
    let rows = st.query_map(params_from_iter(p), |r| {
        Ok(AgentRow {
            site: r.get(0)?,
            agent: r.get(1)?,
            online: r.get(2)?,
            last_seen_ms: r.get(3)?,
            version: r.get(4)?,
            config_hash: r.get(5)?,
            backlog_readings: r
                .get::<_, Option<i64>>(6)?
                .map(|v| u64::try_from(v).unwrap_or(0)),
            oldest_unsent_ms: r.get(7)?,
            buffer: match r.get::<_, Option<i64>>(8)? {
                None => None,
                Some(epoch) => Some(BufferRow {
                    epoch: epoch as u64,
                    created_ms: r.get(9)?,
                    origin: r.get(10)?,
                    note: r.get(11)?,
                    first_seen_ms: r.get(12)?,
                }),
            },
            buffer_replaced_ms: r.get(13)?,
            birth_refused: None,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One page of tags (of one site, under a name prefix (case-sensitive, no wildcards), of some
/// sites), by site, agent and name, strictly after `after`: the keyset walks the
/// `(site, agent, name)` unique index.
pub(super) fn tags(
    conn: &mut Connection,
    f: &TagFilter,
    after: Option<&TagKey>,
    limit: i64,
) -> Result<Vec<TagRow>, StoreError> {
    let mut p: Params = Vec::new();
    let mut cond = vec!["1 = 1".to_owned()];
    if let Some(s) = &f.site {
        cond.push(format!("site = {}", push(&mut p, s.clone())));
    }
    if let Some(x) = &f.prefix {
        let n = push(&mut p, x.clone());
        cond.push(format!("substr(name, 1, length({n})) = {n}"));
    }
    if let Some(s) = &f.sites {
        let n = push(&mut p, json_list(s));
        cond.push(format!("site IN (SELECT value FROM json_each({n}))"));
    }
    if let Some(ids) = &f.ids {
        let n = push(&mut p, serde_json::Value::from(ids.clone()).to_string());
        cond.push(format!("id IN (SELECT value FROM json_each({n}))"));
    }
    if let Some((site, agent, name)) = after {
        let (a, b, c) = (
            push(&mut p, site.clone()),
            push(&mut p, agent.clone()),
            push(&mut p, name.clone()),
        );
        cond.push(format!("(site, agent, name) > ({a}, {b}, {c})"));
    }
    let lim = push(&mut p, limit);
    let mut st = conn.prepare_cached(&format!(
        "SELECT id, site, agent, name, unit, kind, device, description, interval_ms FROM tags
         WHERE {} ORDER BY site, agent, name LIMIT {lim}",
        cond.join(" AND ")
    ))?;
    let rows = st.query_map(params_from_iter(p), |r| {
        Ok(TagRow {
            id: r.get(0)?,
            site: r.get(1)?,
            agent: r.get(2)?,
            name: r.get(3)?,
            unit: r.get(4)?,
            kind: r.get(5)?,
            device: r.get(6)?,
            description: r.get(7)?,
            interval_ms: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The latest reading (any quality) of each tag, in the order asked; tags without readings
/// (and repeated ids) are left out. Equal timestamps: the last stored wins.
pub(super) fn latest(conn: &mut Connection, tag_ids: &[i64]) -> Result<Vec<LatestRow>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT ts_ms, value, text, quality FROM readings WHERE tag_id = ?1
         ORDER BY ts_ms DESC, rowid DESC LIMIT 1",
    )?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(tag_ids.len());
    for &tag_id in tag_ids {
        if !seen.insert(tag_id) {
            continue;
        }
        let row = st
            .query_row([tag_id], |r| {
                Ok(LatestRow {
                    tag_id,
                    ts_ms: r.get(0)?,
                    value: r.get(1)?,
                    text: r.get(2)?,
                    quality: quality_name(r.get(3)?),
                })
            })
            .optional()?;
        out.extend(row);
    }
    Ok(out)
}

/// Start of the bucket of `ts` (floor, also for negative times).
fn bucket_of(ts: i64, step: i64) -> i64 {
    ts - ts.rem_euclid(step)
}

/// A tag's readings in `[from_ms, to_ms)` by buckets of `step_ms` (> 0) aligned on the epoch:
/// min/max/avg/last over good readings with a numeric value, count of all, count of not good.
/// Only buckets holding readings are returned.
///
/// Aggregated while walking the `(tag_id, ts_ms)` index in order (no sort, no temp table), which
/// also makes "last" exact: the latest timestamp, and among equal ones the last stored.
pub(super) fn series(
    conn: &mut Connection,
    tag_id: i64,
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
) -> Result<Vec<Bucket>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT ts_ms, value, quality FROM readings
         WHERE tag_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 ORDER BY ts_ms, rowid",
    )?;
    let mut rows = st.query(params![tag_id, from_ms, to_ms])?;
    let mut out: Vec<Bucket> = Vec::new();
    // Per bucket: sum and number of good values (for the mean).
    let (mut sum, mut good) = (0.0f64, 0i64);
    let good_code = i64::from(wire::Quality::Good.code());
    while let Some(r) = rows.next()? {
        let (ts, value, quality): (i64, Option<f64>, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let start = bucket_of(ts, step_ms);
        if out.last().is_none_or(|b| b.ts_ms != start) {
            if let Some(b) = out.last_mut() {
                b.avg = (good > 0).then(|| sum / good as f64);
            }
            (sum, good) = (0.0, 0);
            out.push(Bucket {
                ts_ms: start,
                min: None,
                max: None,
                avg: None,
                last: None,
                count: 0,
                bad: 0,
            });
        }
        let Some(b) = out.last_mut() else { continue };
        b.count += 1;
        if quality != good_code {
            b.bad += 1;
            continue;
        }
        if let Some(v) = value {
            b.min = Some(b.min.map_or(v, |m| m.min(v)));
            b.max = Some(b.max.map_or(v, |m| m.max(v)));
            b.last = Some(v);
            sum += v;
            good += 1;
        }
    }
    if let Some(b) = out.last_mut() {
        b.avg = (good > 0).then(|| sum / good as f64);
    }
    Ok(out)
}

/// Readings in `[from_ms, to_ms)`, of one tag or of all.
pub(super) fn count_readings(
    conn: &mut Connection,
    tag_id: Option<i64>,
    from_ms: i64,
    to_ms: i64,
) -> Result<i64, StoreError> {
    let n = match tag_id {
        Some(id) => conn
            .prepare_cached(
                "SELECT count(*) FROM readings WHERE tag_id = ?1 AND ts_ms >= ?2 AND ts_ms < ?3",
            )?
            .query_row(params![id, from_ms, to_ms], |r| r.get(0))?,
        // Through the tag list, so that each tag's range is an index range rather than the
        // whole table being scanned (every reading's tag is in `tags`: tags are never deleted).
        None => conn
            .prepare_cached(
                "SELECT count(*) FROM readings
                 WHERE tag_id IN (SELECT id FROM tags) AND ts_ms >= ?1 AND ts_ms < ?2",
            )?
            .query_row(params![from_ms, to_ms], |r| r.get(0))?,
    };
    Ok(n)
}

/// One page of the gap records overlapping `[from_ms, to_ms)` (a gap covers
/// `[from_ms, to_ms]`), by start and id, strictly after `after`.
pub(super) fn gaps(
    conn: &mut Connection,
    f: &GapFilter,
    after: Option<GapKey>,
    limit: i64,
) -> Result<Vec<GapRow>, StoreError> {
    let mut p: Params = Vec::new();
    let mut cond = vec![format!(
        "from_ms < {} AND to_ms >= {}",
        push(&mut p, f.to_ms),
        push(&mut p, f.from_ms)
    )];
    if let Some(s) = &f.site {
        cond.push(format!("site = {}", push(&mut p, s.clone())));
    }
    if let Some(s) = &f.sites {
        let n = push(&mut p, json_list(s));
        cond.push(format!("site IN (SELECT value FROM json_each({n}))"));
    }
    if let Some((t, id)) = after {
        let (a, b) = (push(&mut p, t), push(&mut p, id));
        cond.push(format!("(from_ms, id) > ({a}, {b})"));
    }
    let lim = push(&mut p, limit);
    let mut st = conn.prepare_cached(&format!(
        "SELECT site, agent, batch_id, tag_ids, from_ms, to_ms, count, reason, count_known, detail, id
         FROM gaps WHERE {} ORDER BY from_ms, id LIMIT {lim}",
        cond.join(" AND ")
    ))?;
    let mut rows = st.query(params_from_iter(p))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let tag_ids: String = r.get(3)?;
        let tag_ids: Vec<i64> = serde_json::from_str(&tag_ids)
            .map_err(|e| StoreError::Invalid(format!("stored gap tag ids {tag_ids:?}: {e}")))?;
        out.push(GapRow {
            id: r.get(10)?,
            site: r.get(0)?,
            agent: r.get(1)?,
            batch_id: r.get(2)?,
            tag_ids,
            from_ms: r.get(4)?,
            to_ms: r.get(5)?,
            count: r.get(6)?,
            reason: r.get(7)?,
            count_known: r.get(8)?,
            detail: r.get(9)?,
        });
    }
    Ok(out)
}

/// The newest `limit` dead letters strictly before `before` (received, id), newest first.
pub(super) fn dead_letters(
    conn: &mut Connection,
    before: Option<DeadLetterKey>,
    limit: i64,
) -> Result<Vec<DeadLetterRow>, StoreError> {
    let (t, id) = before.unwrap_or((i64::MAX, i64::MAX));
    let mut st = conn.prepare_cached(
        "SELECT id, topic, reason, length(payload), received_ms FROM dead_letters
         WHERE (received_ms, id) < (?2, ?3)
         ORDER BY received_ms DESC, id DESC LIMIT ?1",
    )?;
    let rows = st.query_map(params![limit.max(0), t, id], |r| {
        Ok(DeadLetterRow {
            id: r.get(0)?,
            topic: r.get(1)?,
            reason: r.get(2)?,
            bytes: r.get(3)?,
            received_ms: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
