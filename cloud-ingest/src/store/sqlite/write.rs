//! Writes: batches (with the ledger), births, status, heartbeats, dead letters.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

use flowsquare_wire as wire;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::store::bounds::{self, Limits};
use crate::store::{
    buffer_replaced_gap, check_gaps, conflict_alert, conflict_reason, CommitOutcome, DeadLetter,
    StoreError, BATCH_CONFLICT, BUFFER_REPLACED,
};

/// `u64` → SQLite integer, saturating (counts and figures).
fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `u64` identity (batch id, event sequence) → SQLite integer, bit for bit: distinct ids stay
/// distinct; ids ≥ 2^63 read back negative.
fn bits(v: u64) -> i64 {
    v as i64
}

/// The `value` and `text` columns of a reading's value.
fn value_columns(v: Option<&wire::WireValue>) -> (Option<f64>, Option<&str>) {
    match v {
        None => (None, None),
        Some(wire::WireValue::Bool(b)) => (Some(if *b { 1.0 } else { 0.0 }), None),
        Some(wire::WireValue::Int(i)) => (Some(*i as f64), None),
        Some(wire::WireValue::UInt(u)) => (Some(*u as f64), None),
        // SQLite stores a NaN REAL as NULL: keep the fact in the text column.
        Some(wire::WireValue::Float(f)) if f.is_nan() => (None, Some("NaN")),
        Some(wire::WireValue::Float(f)) => (Some(*f), None),
        Some(wire::WireValue::Text(s)) => (None, Some(s.as_str())),
    }
}

/// The `counter_kind` and `counter_value` columns.
fn counter_columns(c: Option<&wire::Counter>) -> (Option<i64>, Option<f64>) {
    match c {
        None => (None, None),
        Some(wire::Counter::Rollover { delta }) => (Some(0), Some(*delta)),
        Some(wire::Counter::Reset { previous }) => (Some(1), Some(*previous)),
    }
}

/// An event field value as JSON (non-finite floats become `null`, as serde_json writes them).
fn json_value(v: &wire::WireValue) -> serde_json::Value {
    match v {
        wire::WireValue::Bool(b) => serde_json::Value::Bool(*b),
        wire::WireValue::Int(i) => serde_json::Value::from(*i),
        wire::WireValue::UInt(u) => serde_json::Value::from(*u),
        wire::WireValue::Float(f) => serde_json::Value::from(*f),
        wire::WireValue::Text(s) => serde_json::Value::String(s.clone()),
    }
}

/// Event fields as a JSON object text, in field order (a `serde_json::Map` would sort them).
pub(super) fn fields_json(fields: &[(String, wire::WireValue)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(name.clone()).to_string());
        out.push(':');
        out.push_str(&json_value(value).to_string());
    }
    out.push('}');
    out
}

/// The stored spelling of a gap reason (the wire's names).
pub(super) fn gap_reason(r: &wire::GapReason) -> &str {
    crate::store::gap_reason_name(r)
}

/// Tag ids of a config's catalog by index, or `None` when the config hash is unknown.
fn load_catalog(
    tx: &Transaction<'_>,
    site: &str,
    agent: &str,
    hash: &str,
) -> Result<Option<Vec<i64>>, StoreError> {
    let known = tx
        .prepare_cached(
            "SELECT 1 FROM configs WHERE site = ?1 AND agent = ?2 AND config_hash = ?3",
        )?
        .query_row(params![site, agent, hash], |_| Ok(()))
        .optional()?;
    if known.is_none() {
        return Ok(None);
    }
    let mut st = tx.prepare_cached(
        "SELECT idx, tag_id FROM catalog WHERE site = ?1 AND agent = ?2 AND config_hash = ?3 ORDER BY idx",
    )?;
    let mut ids = Vec::new();
    let mut rows = st.query(params![site, agent, hash])?;
    while let Some(row) = rows.next()? {
        let (idx, id): (i64, i64) = (row.get(0)?, row.get(1)?);
        if idx != ids.len() as i64 {
            return Err(StoreError::Invalid(format!(
                "catalog {site}/{agent}/{hash} has a hole at index {}",
                ids.len()
            )));
        }
        ids.push(id);
    }
    Ok(Some(ids))
}

/// The tag id of a tag index of a batch.
fn resolve(catalog: &[i64], b: &wire::Batch, idx: u32, what: &str) -> Result<i64, StoreError> {
    catalog.get(idx as usize).copied().ok_or_else(|| {
        StoreError::Invalid(format!(
            "batch {}/{}/{}: {what} names tag index {idx}, but catalog {} has {} tags",
            b.site,
            b.agent,
            b.batch_id,
            b.config_hash,
            catalog.len()
        ))
    })
}

/// Commit batches in one transaction; outcomes in input order. See the module doc.
pub(super) fn commit(
    conn: &mut Connection,
    batches: &[wire::Batch],
    received_ms: i64,
    limits: &Limits,
) -> Result<Vec<CommitOutcome>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut catalogs: HashMap<(&str, &str, &str), Option<Vec<i64>>> = HashMap::new();
    let mut out = Vec::with_capacity(batches.len());
    // The (site, agent, hour)s the stored readings touch (`rollup.rs`).
    let mut marks = BTreeSet::new();
    for b in batches {
        let key = (b.site.as_str(), b.agent.as_str(), b.config_hash.as_str());
        let catalog = match catalogs.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(load_catalog(&tx, key.0, key.1, key.2)?),
        };
        let Some(catalog) = catalog.as_deref() else {
            out.push(CommitOutcome::UnknownCatalog);
            continue;
        };
        check_gaps(b, catalog.len(), received_ms).map_err(StoreError::Invalid)?;
        // The ledger keeps the whole batch's digest; what is stored is the part inside the
        // accepted window, the rest one dead letter in this transaction.
        let digest = bits(b.content_digest());
        let (part, refused) = bounds::split_window(b, limits, received_ms);
        let (readings, events, gaps) = (
            part.readings.len() as u64,
            part.events.len() as u64,
            part.gaps.len() as u64,
        );
        let new = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO batches (site, agent, buffer_epoch, batch_id, received_ms, config_hash, readings, events, gaps, digest)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                b.site,
                b.agent,
                bits(b.buffer_epoch),
                bits(b.batch_id),
                received_ms,
                b.config_hash,
                sat(readings),
                sat(events),
                sat(gaps),
                digest
            ])?;
        if new == 0 {
            out.push(duplicate_or_conflict(&tx, b, digest, received_ms)?);
        } else {
            insert_readings(&tx, &part, catalog)?;
            marks.extend(part.readings.iter().map(|r| {
                (
                    b.site.as_str(),
                    b.agent.as_str(),
                    super::rollup::hour_of(r.ts_ms),
                )
            }));
            insert_events(&tx, &part)?;
            insert_gaps(&tx, &part, catalog)?;
            let mut out_of_window = 0;
            if let Some(r) = refused {
                insert_dead_letter(&tx, &bounds::cap_dead_letter(&r.letter, limits))?;
                out_of_window = r.readings + r.events;
            }
            out.push(CommitOutcome::Stored {
                readings,
                events,
                gaps,
                out_of_window,
            });
        }
        // A data message is a message: the agent was seen now.
        tx.prepare_cached(
            "UPDATE agents SET last_seen_ms = max(coalesce(last_seen_ms, ?3), ?3) WHERE site = ?1 AND agent = ?2",
        )?
        .execute(params![b.site, b.agent, received_ms])?;
    }
    super::rollup::mark(&tx, &marks)?;
    tx.commit()?;
    Ok(out)
}

/// A batch whose key is in the ledger: a duplicate when the stored digest is the same (or
/// unknown: a row from before digests were kept), else a conflict, with its alert opened here
/// (one open per agent).
fn duplicate_or_conflict(
    tx: &Transaction<'_>,
    b: &wire::Batch,
    digest: i64,
    now_ms: i64,
) -> Result<CommitOutcome, StoreError> {
    let stored: Option<i64> = tx
        .prepare_cached(
            "SELECT digest FROM batches WHERE site = ?1 AND agent = ?2 AND buffer_epoch = ?3 AND batch_id = ?4",
        )?
        .query_row(
            params![b.site, b.agent, bits(b.buffer_epoch), bits(b.batch_id)],
            |r| r.get(0),
        )?;
    match stored {
        Some(d) if d != digest => {
            let (place, date, message, detail) = conflict_alert(b, d, now_ms);
            tx.prepare_cached(
                "INSERT INTO alerts (kind, site, place, date, message, detail, state, opened_ms)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7
                 WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE kind = ?1 AND site = ?2 AND place = ?3 AND state = 'open')",
            )?
            .execute(params![
                BATCH_CONFLICT,
                b.site,
                place,
                date,
                message,
                detail.to_string(),
                now_ms
            ])?;
            Ok(CommitOutcome::Conflict {
                reason: conflict_reason(b),
            })
        }
        _ => Ok(CommitOutcome::Duplicate),
    }
}

fn insert_readings(
    tx: &Transaction<'_>,
    b: &wire::Batch,
    catalog: &[i64],
) -> Result<(), StoreError> {
    let mut rows = b.readings.chunks_exact(READINGS_PER_INSERT);
    if rows.len() > 0 {
        let mut st = tx.prepare_cached(&insert_readings_sql(READINGS_PER_INSERT))?;
        for chunk in rows.by_ref() {
            bind_readings(&mut st, b, catalog, chunk)?;
        }
    }
    let rest = rows.remainder();
    if !rest.is_empty() {
        let mut st = tx.prepare_cached(&insert_readings_sql(1))?;
        for r in rest {
            bind_readings(&mut st, b, catalog, std::slice::from_ref(r))?;
        }
    }
    Ok(())
}

/// Readings per multi-row `INSERT` (9 parameters each: 576, far below SQLite's limit).
const READINGS_PER_INSERT: usize = 64;

/// `INSERT INTO readings ... VALUES (?, ...), ...` for `n` rows.
fn insert_readings_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO readings (tag_id, ts_ms, value, text, quality, status, error, counter_kind, counter_value) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?)");
    }
    sql
}

/// Bind `rows` to a statement made by [`insert_readings_sql`]`(rows.len())` and run it.
fn bind_readings(
    st: &mut rusqlite::CachedStatement<'_>,
    b: &wire::Batch,
    catalog: &[i64],
    rows: &[wire::WireReading],
) -> Result<(), StoreError> {
    let mut i = 1;
    for r in rows {
        let tag_id = resolve(catalog, b, r.tag, "a reading")?;
        let (value, text) = value_columns(r.value.as_ref());
        let (counter_kind, counter_value) = counter_columns(r.counter.as_ref());
        st.raw_bind_parameter(i, tag_id)?;
        st.raw_bind_parameter(i + 1, r.ts_ms)?;
        st.raw_bind_parameter(i + 2, value)?;
        st.raw_bind_parameter(i + 3, text)?;
        st.raw_bind_parameter(i + 4, r.quality.code())?;
        st.raw_bind_parameter(i + 5, r.status)?;
        st.raw_bind_parameter(i + 6, r.error.as_deref())?;
        st.raw_bind_parameter(i + 7, counter_kind)?;
        st.raw_bind_parameter(i + 8, counter_value)?;
        i += 9;
    }
    st.raw_execute()?;
    Ok(())
}

fn insert_events(tx: &Transaction<'_>, b: &wire::Batch) -> Result<(), StoreError> {
    if b.events.is_empty() {
        return Ok(());
    }
    // A record already stored with the very same fields (the PLC's own sequence number among
    // them) is the same record captured again by an agent that lost its event cursors (a new
    // buffer database): skipped, not stored twice (see `RECAPTURE_WINDOW_MS`).
    let mut st = tx.prepare_cached(
        "INSERT INTO events (site, agent, source, kind, seq, ts_ms, fields, batch_id)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
         WHERE NOT EXISTS (SELECT 1 FROM events WHERE site = ?1 AND agent = ?2 AND source = ?3
                           AND ts_ms >= ?6 - ?9 AND kind = ?4 AND fields = ?7)",
    )?;
    for e in &b.events {
        let n = st.execute(params![
            b.site,
            b.agent,
            e.source,
            e.kind,
            bits(e.seq),
            e.ts_ms,
            fields_json(&e.fields),
            bits(b.batch_id),
            crate::store::RECAPTURE_WINDOW_MS
        ])?;
        if n == 0 {
            tracing::warn!(site = %b.site, agent = %b.agent, source = %e.source, seq = e.seq,
                "event already stored with the same fields (captured again by a new buffer): skipped");
        }
    }
    Ok(())
}

fn insert_gaps(tx: &Transaction<'_>, b: &wire::Batch, catalog: &[i64]) -> Result<(), StoreError> {
    if b.gaps.is_empty() {
        return Ok(());
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO gaps (site, agent, batch_id, tag_ids, from_ms, to_ms, count, reason, count_known)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for g in &b.gaps {
        let ids = g
            .tags
            .iter()
            .map(|&t| resolve(catalog, b, t, "a gap"))
            .collect::<Result<Vec<i64>, _>>()?;
        st.execute(params![
            b.site,
            b.agent,
            bits(b.batch_id),
            serde_json::Value::from(ids).to_string(),
            g.from_ms,
            g.to_ms,
            if g.count_known { sat(g.count) } else { 0 },
            gap_reason(&g.reason),
            g.count_known
        ])?;
    }
    Ok(())
}

/// Register a birth: agent, config history, tags (ids stable by name), the config's catalog.
pub(super) fn birth(
    conn: &mut Connection,
    b: &wire::Birth,
    received_ms: i64,
    limits: &Limits,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    check_tag_limit(&tx, b, limits)?;
    tx.execute(
        "INSERT INTO agents (site, agent, last_seen_ms, version, config_hash) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (site, agent) DO UPDATE SET
             last_seen_ms = max(coalesce(last_seen_ms, excluded.last_seen_ms), excluded.last_seen_ms),
             version = excluded.version,
             config_hash = excluded.config_hash",
        params![b.site, b.agent, received_ms, b.agent_version, b.config_hash],
    )?;
    if let Some(buf) = &b.buffer {
        record_buffer(&tx, b, buf, received_ms)?;
    }
    let devices = serde_json::to_string(&b.devices)
        .map_err(|e| StoreError::Invalid(format!("birth devices: {e}")))?;
    tx.execute(
        "INSERT INTO configs (site, agent, config_hash, first_seen_ms, last_seen_ms, births, agent_version,
                              started_ms, tag_count, devices)
         VALUES (?1, ?2, ?3, ?4, ?4, 1, ?5, ?6, ?7, ?8)
         ON CONFLICT (site, agent, config_hash) DO UPDATE SET
             last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
             births = births + 1,
             agent_version = excluded.agent_version,
             started_ms = excluded.started_ms,
             tag_count = excluded.tag_count,
             devices = excluded.devices",
        params![
            b.site,
            b.agent,
            b.config_hash,
            received_ms,
            b.agent_version,
            b.started_ms,
            b.tags.len() as i64,
            devices
        ],
    )?;
    let before: Vec<(i64, i64)> = tx
        .prepare(
            "SELECT idx, tag_id FROM catalog WHERE site = ?1 AND agent = ?2 AND config_hash = ?3 ORDER BY idx",
        )?
        .query_map(params![b.site, b.agent, b.config_hash], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut ids = Vec::with_capacity(b.tags.len());
    {
        let mut upsert_tag = tx.prepare_cached(
            "INSERT INTO tags (site, agent, name, unit, kind, device, description, interval_ms, first_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (site, agent, name) DO UPDATE SET
                 unit = excluded.unit, kind = excluded.kind, device = excluded.device,
                 description = excluded.description, interval_ms = excluded.interval_ms
             RETURNING id",
        )?;
        let mut put_catalog = tx.prepare_cached(
            "INSERT INTO catalog (site, agent, config_hash, idx, tag_id) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (site, agent, config_hash, idx) DO UPDATE SET tag_id = excluded.tag_id",
        )?;
        for (idx, t) in b.tags.iter().enumerate() {
            let id: i64 = upsert_tag.query_row(
                params![
                    b.site,
                    b.agent,
                    t.name,
                    t.unit,
                    t.kind,
                    t.device,
                    t.description,
                    sat(t.poll_interval_ms),
                    received_ms
                ],
                |r| r.get(0),
            )?;
            put_catalog.execute(params![b.site, b.agent, b.config_hash, idx as i64, id])?;
            ids.push((idx as i64, id));
        }
    }
    tx.execute(
        "DELETE FROM catalog WHERE site = ?1 AND agent = ?2 AND config_hash = ?3 AND idx >= ?4",
        params![b.site, b.agent, b.config_hash, b.tags.len() as i64],
    )?;
    if !before.is_empty() && before != ids {
        // Same hash, other tags: the hash does not identify the config (a bug on the agent side).
        tracing::warn!(site = %b.site, agent = %b.agent, config_hash = %b.config_hash,
            "a birth changed the tag catalog of a known config hash; later batches use the new one");
    }
    tx.commit()?;
    Ok(())
}

/// Keep the buffer a birth names; a new epoch after another (or after stored data) records a
/// `buffer-replaced` gap of unknown count ([`buffer_replaced_gap`]).
fn record_buffer(
    tx: &Transaction<'_>,
    b: &wire::Birth,
    buf: &wire::messages::BufferIdentity,
    received_ms: i64,
) -> Result<(), StoreError> {
    let known = tx
        .prepare_cached(
            "SELECT 1 FROM agent_buffers WHERE site = ?1 AND agent = ?2 AND epoch = ?3",
        )?
        .query_row(params![b.site, b.agent, bits(buf.epoch)], |_| Ok(()))
        .optional()?
        .is_some();
    if known {
        tx.prepare_cached(
            "UPDATE agent_buffers SET last_seen_ms = max(last_seen_ms, ?4) WHERE site = ?1 AND agent = ?2 AND epoch = ?3",
        )?
        .execute(params![b.site, b.agent, bits(buf.epoch), received_ms])?;
        return Ok(());
    }
    let previous: Option<i64> = tx
        .prepare_cached(
            "SELECT created_ms FROM agent_buffers WHERE site = ?1 AND agent = ?2 ORDER BY last_seen_ms DESC LIMIT 1",
        )?
        .query_row(params![b.site, b.agent], |r| r.get(0))
        .optional()?;
    // Newest reading of each of the agent's tags (one index probe per tag), then the newest.
    let last_data: Option<i64> = tx
        .prepare_cached(
            "SELECT max((SELECT max(ts_ms) FROM readings r WHERE r.tag_id = t.id)) FROM tags t
             WHERE t.site = ?1 AND t.agent = ?2",
        )?
        .query_row(params![b.site, b.agent], |r| r.get(0))?;
    let gap = buffer_replaced_gap(buf, previous, last_data);
    let replaced = previous.is_some() || gap.is_some() || buf.origin.starts_with("replaced");
    tx.prepare_cached(
        "INSERT INTO agent_buffers (site, agent, epoch, created_ms, origin, note, first_seen_ms, last_seen_ms, replaced)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
    )?
    .execute(params![
        b.site,
        b.agent,
        bits(buf.epoch),
        buf.created_ms,
        buf.origin,
        buf.note,
        received_ms,
        replaced
    ])?;
    if let Some((from, to, detail)) = gap {
        tracing::warn!(site = %b.site, agent = %b.agent, epoch = buf.epoch, origin = %buf.origin, from, to,
            "the agent's buffer was replaced: recording a gap of unknown count");
        tx.prepare_cached(
            "INSERT INTO gaps (site, agent, batch_id, tag_ids, from_ms, to_ms, count, reason, count_known, detail)
             VALUES (?1, ?2, 0, '[]', ?3, ?4, 0, ?5, 0, ?6)",
        )?
        .execute(params![b.site, b.agent, from, to, BUFFER_REPLACED, detail])?;
    }
    Ok(())
}

/// Record a status message.
pub(super) fn status(
    conn: &mut Connection,
    site: &str,
    agent: &str,
    s: &wire::Status,
    received_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO agents (site, agent, online, last_seen_ms, version) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (site, agent) DO UPDATE SET
             online = excluded.online,
             last_seen_ms = max(coalesce(last_seen_ms, excluded.last_seen_ms), excluded.last_seen_ms),
             version = coalesce(excluded.version, version)",
    )?
    .execute(params![site, agent, s.online, received_ms, s.agent_version])?;
    Ok(())
}

/// Record a heartbeat's backlog figures.
pub(super) fn heartbeat(
    conn: &mut Connection,
    site: &str,
    agent: &str,
    backlog_readings: u64,
    oldest_unsent_ms: Option<i64>,
    received_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO agents (site, agent, last_seen_ms, backlog_readings, oldest_unsent_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (site, agent) DO UPDATE SET
             last_seen_ms = max(coalesce(last_seen_ms, excluded.last_seen_ms), excluded.last_seen_ms),
             backlog_readings = excluded.backlog_readings,
             oldest_unsent_ms = excluded.oldest_unsent_ms",
    )?
    .execute(params![site, agent, received_ms, sat(backlog_readings), oldest_unsent_ms])?;
    Ok(())
}

/// Keep a dead letter.
pub(super) fn dead_letter(conn: &mut Connection, dl: &DeadLetter) -> Result<(), StoreError> {
    insert_dead_letter(conn, dl)
}

/// Insert a dead letter (on a connection or in a transaction).
fn insert_dead_letter(conn: &Connection, dl: &DeadLetter) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO dead_letters (topic, payload, reason, received_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![dl.topic, dl.payload, dl.reason, dl.received_ms])?;
    Ok(())
}

/// Refuse a birth that would leave its agent with more registered tags than the limit (checked
/// before anything of it is written).
fn check_tag_limit(
    tx: &Transaction<'_>,
    b: &wire::Birth,
    limits: &Limits,
) -> Result<(), StoreError> {
    if limits.max_tags_per_agent.is_none() {
        return Ok(());
    }
    let names: std::collections::HashSet<&str> = b.tags.iter().map(|t| t.name.as_str()).collect();
    let mut st = tx.prepare_cached("SELECT name FROM tags WHERE site = ?1 AND agent = ?2")?;
    let registered: Vec<String> = st
        .query_map(params![b.site, b.agent], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let known = registered
        .iter()
        .filter(|n| names.contains(n.as_str()))
        .count();
    let total = registered.len() + names.len() - known;
    match bounds::tag_limit_error(b, registered.len(), total, limits) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Drop the dead letters older than the retention, then the oldest while the payloads kept add
/// up to more than the total bound; returns how many were dropped.
pub(super) fn prune_dead_letters(
    conn: &mut Connection,
    limits: &Limits,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut dropped = 0;
    if let Some(age) = limits.dead_letter_retention_ms {
        dropped += tx.execute(
            "DELETE FROM dead_letters WHERE received_ms < ?1",
            params![now_ms.saturating_sub(age)],
        )?;
    }
    if let Some(max) = limits.dead_letter_max_total_bytes {
        // Keep the newest whose running total (newest first) stays within the bound.
        dropped += tx.execute(
            "DELETE FROM dead_letters WHERE id IN (
                 SELECT id FROM (
                     SELECT id, sum(length(payload)) OVER (ORDER BY received_ms DESC, id DESC) AS total
                     FROM dead_letters)
                 WHERE total > ?1)",
            params![i64::try_from(max).unwrap_or(i64::MAX)],
        )?;
    }
    tx.commit()?;
    Ok(dropped as u64)
}
