//! Writes: `commit`, `birth`, `status`, `heartbeat`, `dead_letter`.
//!
//! `commit` writes, in one transaction: the ledger rows, the readings (one binary `COPY`),
//! events, gaps, and last the rollups' dirty marks, one per (site, agent, minute) the readings
//! touch (`rollup::mark`: `INSERT … ON CONFLICT … DO UPDATE`, in key order). The rollups
//! themselves are built off the commit path by the roller from the committed rows (see the
//! design note of `rollup.rs`), so a live batch of one reading per tag costs a COPY and a few
//! mark rows, not two upserts per reading.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use flowsquare_service::clock;
use flowsquare_wire as wire;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::rollup::MINUTE_MS;
use super::types::{
    counter_columns, fields_json, gap_reason, u64_bits, u64_sat, value_columns, Ts, DAY_MS,
    MAX_TS_MS, MIN_TS_MS,
};
use super::{partitions, pg, rollup, Catalog, Layout, PgStore};
use crate::store::bounds::{self, Refused};
use crate::store::{
    buffer_replaced_gap, check_gaps, conflict_alert, conflict_reason, CommitOutcome, DeadLetter,
    StoreError, BATCH_CONFLICT, BUFFER_REPLACED,
};

/// Column types of the readings COPY, in `COPY_READINGS` order.
const READING_TYPES: [Type; 9] = [
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::TEXT,
    Type::INT2,
    Type::INT8,
    Type::TEXT,
    Type::INT2,
    Type::FLOAT8,
];
const COPY_READINGS: &str = "COPY flowsquare.readings (tag_id, ts, value, text, quality, status, error, counter_kind, counter_value)
     FROM STDIN (FORMAT binary)";

/// `ms` as a timestamp parameter, if PostgreSQL and the partitioning can take it.
fn ts_checked(ms: i64, what: &str) -> Result<Ts, StoreError> {
    if (MIN_TS_MS..MAX_TS_MS).contains(&ms) {
        Ok(Ts(ms))
    } else {
        Err(StoreError::Invalid(format!(
            "{what}: timestamp {ms} ms is outside years 1900-9999"
        )))
    }
}

/// What to do with one batch of the slice.
enum Plan {
    /// Its config hash has no birth yet.
    Unknown,
    /// The same (site, agent, buffer epoch, batch id) appears earlier in the slice; `true` when
    /// with other content (a conflict).
    Repeat(bool),
    /// To be offered to the ledger.
    Candidate(Catalog),
}

/// Commit a slice; see the module doc of `postgres`.
pub(super) async fn commit(
    store: &PgStore,
    batches: &[wire::Batch],
) -> Result<Vec<CommitOutcome>, StoreError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let layout = store.layout().await?;
    match commit_once(store, layout, batches).await {
        // A partition this process believed in was dropped by someone else: forget, retry once.
        Err(e) if layout == Layout::Native && is_missing_partition(&e) => {
            store.inner.partitions.clear();
            commit_once(store, layout, batches).await
        }
        r => r,
    }
}

fn is_missing_partition(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres(e)
        if e.code() == Some(&SqlState::CHECK_VIOLATION)
            && e.as_db_error().is_some_and(|d| d.message().starts_with("no partition")))
}

async fn commit_once(
    store: &PgStore,
    layout: Layout,
    batches: &[wire::Batch],
) -> Result<Vec<CommitOutcome>, StoreError> {
    let mut client = store.client().await?;
    // Received on the data clock, like the SQLite store (it was the wall clock here).
    let now = clock::now_ms();
    let limits = &store.inner.opts.limits;

    // 1. Catalogs and checks, before anything is written.
    let Planned { plans, parts, days } = plan(store, &client, layout, batches, now).await?;

    // 2. Partitions for the days touched (own short transaction, before the COPY): only days
    // inside the accepted window (the rest was split off above).
    if layout == Layout::Native && !days.is_empty() {
        partitions::ensure_days(store, &mut client, &days).await?;
    }

    // 3. One transaction: ledger, readings, events, gaps, dirty marks.
    let tx = client.transaction().await.map_err(pg)?;
    let mut outcomes: Vec<CommitOutcome> = plans
        .iter()
        .zip(batches)
        .map(|(p, b)| match p {
            Plan::Unknown => CommitOutcome::UnknownCatalog,
            Plan::Repeat(true) => CommitOutcome::Conflict {
                reason: conflict_reason(b),
            },
            _ => CommitOutcome::Duplicate,
        })
        .collect();
    let candidates: Vec<(usize, &wire::Batch, &Catalog)> = plans
        .iter()
        .zip(batches)
        .enumerate()
        .filter_map(|(i, (p, b))| match p {
            Plan::Candidate(cat) => Some((i, b, cat)),
            _ => None,
        })
        .collect();
    if candidates.is_empty() {
        tx.commit().await.map_err(pg)?;
        return Ok(outcomes);
    }
    let new = ledger(&tx, &candidates, &parts, now).await?;
    let (stored, known): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|(_, b, _)| new.contains(&key(b)));
    // What is written of each new batch: its part inside the window; the rest a dead letter.
    let mut out_of_window = HashMap::new();
    let stored: Vec<(usize, &wire::Batch, &Catalog)> = stored
        .into_iter()
        .map(|(i, b, cat)| match &parts[i] {
            Some((part, refused)) => {
                if let Some(r) = refused {
                    out_of_window.insert(i, r);
                }
                (i, &**part, cat)
            }
            None => (i, b, cat),
        })
        .collect();
    for r in out_of_window.values() {
        insert_dead_letter(&tx, &bounds::cap_dead_letter(&r.letter, limits)).await?;
    }
    for (i, b, d) in conflicts(&tx, &known).await? {
        open_conflict_alert(&tx, b, d, now).await?;
        outcomes[i] = CommitOutcome::Conflict {
            reason: conflict_reason(b),
        };
    }
    // A repeat in the slice of a conflicting batch conflicts too.
    for i in 0..batches.len() {
        if matches!(plans[i], Plan::Repeat(false)) {
            let k = key(&batches[i]);
            if let Some(j) = (0..i).find(|&j| key(&batches[j]) == k) {
                outcomes[i] = outcomes[j].clone();
            }
        }
    }

    // (site, agent, minute) of every reading written.
    let marks = copy_readings(&tx, &stored).await?;
    tokio::try_join!(insert_events(&tx, &stored), insert_gaps(&tx, &stored, now))?;
    // Last: the marks' row locks are held only for the commit itself.
    rollup::mark(&tx, &marks, MINUTE_MS, now).await?;
    tx.commit().await.map_err(pg)?;
    for (i, b, _) in &stored {
        outcomes[*i] = CommitOutcome::Stored {
            readings: b.readings.len() as u64,
            events: b.events.len() as u64,
            gaps: b.gaps.len() as u64,
            out_of_window: out_of_window.get(i).map_or(0, |r| r.readings + r.events),
        };
    }
    Ok(outcomes)
}

/// A batch's part inside the accepted window (what is stored) and the refused rest; `None` for
/// a batch that is not a candidate (unknown catalog, repeat in the slice).
type Part<'a> = Option<(std::borrow::Cow<'a, wire::Batch>, Option<Refused>)>;

/// Step 1 of a commit: what each batch is, before anything is written.
struct Planned<'a> {
    plans: Vec<Plan>,
    parts: Vec<Part<'a>>,
    /// Days touched (native partitions only).
    days: BTreeSet<i64>,
}

/// Catalogs and checks of `batches`, before anything is written: each batch's plan, its part
/// inside the accepted window, and the days touched (native partitions).
async fn plan<'a>(
    store: &PgStore,
    client: &deadpool_postgres::Object,
    layout: Layout,
    batches: &'a [wire::Batch],
    now: i64,
) -> Result<Planned<'a>, StoreError> {
    let mut plans = Vec::with_capacity(batches.len());
    let mut seen = HashMap::new();
    let mut days = BTreeSet::new();
    let limits = &store.inner.opts.limits;
    // Per batch: the part inside the accepted window (what is stored) and the refused rest.
    let mut parts: Vec<Part<'a>> = Vec::with_capacity(batches.len());
    for b in batches {
        parts.push(None);
        let Some(cat) = catalog(store, client, &b.site, &b.agent, &b.config_hash).await? else {
            plans.push(Plan::Unknown);
            continue;
        };
        let (part, refused) = bounds::split_window(b, limits, now);
        check(&part, &cat, now)?;
        let digest = b.content_digest();
        match seen.entry((
            b.site.as_str(),
            b.agent.as_str(),
            b.buffer_epoch,
            b.batch_id,
        )) {
            std::collections::hash_map::Entry::Occupied(e) => {
                plans.push(Plan::Repeat(*e.get() != digest));
                continue;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(digest);
            }
        }
        if layout == Layout::Native {
            let mut last = None;
            for ts in part
                .readings
                .iter()
                .map(|r| r.ts_ms)
                .chain(part.events.iter().map(|e| e.ts_ms))
            {
                let day = ts.div_euclid(DAY_MS);
                if last != Some(day) {
                    days.insert(day);
                    last = Some(day);
                }
            }
        }
        if let Some(slot) = parts.last_mut() {
            *slot = Some((part, refused));
        }
        plans.push(Plan::Candidate(cat));
    }
    Ok(Planned { plans, parts, days })
}

/// The readings of the batches being stored, by binary COPY (in range: checked by `check`);
/// returns the (site, agent, minute) of every reading written: the rollups' dirty marks.
async fn copy_readings<'b>(
    tx: &deadpool_postgres::Transaction<'_>,
    stored: &[(usize, &'b wire::Batch, &Catalog)],
) -> Result<BTreeSet<(&'b str, &'b str, i64)>, StoreError> {
    let mut marks = BTreeSet::new();
    if stored.iter().all(|(_, b, _)| b.readings.is_empty()) {
        return Ok(marks);
    }
    let st = tx.prepare_cached(COPY_READINGS).await.map_err(pg)?;
    let sink = tx.copy_in(&st).await.map_err(pg)?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &READING_TYPES));
    for (_, b, cat) in stored {
        for r in &b.readings {
            // In range: checked by `check`.
            let tag_id = cat[r.tag as usize];
            let (value, text) = value_columns(r.value.as_ref());
            let (ck, cv) = counter_columns(r.counter.as_ref());
            let quality = i16::from(r.quality.code());
            let status = r.status.map(i64::from);
            let error = r.error.as_deref();
            writer
                .as_mut()
                .write(&[
                    &tag_id,
                    &Ts(r.ts_ms),
                    &value,
                    &text,
                    &quality,
                    &status,
                    &error,
                    &ck,
                    &cv,
                ])
                .await
                .map_err(pg)?;
        }
        let mut last = None;
        for r in &b.readings {
            let minute = r.ts_ms - r.ts_ms.rem_euclid(MINUTE_MS);
            if last != Some(minute) {
                marks.insert((b.site.as_str(), b.agent.as_str(), minute));
                last = Some(minute);
            }
        }
    }
    writer.as_mut().finish().await.map_err(pg)?;
    Ok(marks)
}

/// The ledger key of a batch as stored.
fn key(b: &wire::Batch) -> (&str, &str, i64, i64) {
    (
        b.site.as_str(),
        b.agent.as_str(),
        u64_bits(b.buffer_epoch),
        u64_bits(b.batch_id),
    )
}

/// Of the batches whose key was already in the ledger, those stored with another digest (a row
/// without a digest, from before digests were kept, counts as the same): (index, batch, stored
/// digest).
async fn conflicts<'b>(
    tx: &deadpool_postgres::Transaction<'_>,
    known: &[(usize, &'b wire::Batch, &Catalog)],
) -> Result<Vec<(usize, &'b wire::Batch, i64)>, StoreError> {
    if known.is_empty() {
        return Ok(Vec::new());
    }
    let (mut site, mut agent, mut epoch, mut id) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (_, b, _) in known {
        let (s, a, e, i) = key(b);
        site.push(s);
        agent.push(a);
        epoch.push(e);
        id.push(i);
    }
    let rows = tx
        .query(
            "SELECT b.site, b.agent, b.buffer_epoch, b.batch_id, b.digest
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS k (site, agent, buffer_epoch, batch_id)
             JOIN flowsquare.batches b USING (site, agent, buffer_epoch, batch_id)
             WHERE b.digest IS NOT NULL",
            &[&site, &agent, &epoch, &id],
        )
        .await
        .map_err(pg)?;
    let stored: HashMap<(String, String, i64, i64), i64> = rows
        .into_iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2), r.get(3)), r.get(4)))
        .collect();
    Ok(known
        .iter()
        .filter_map(|(i, b, _)| {
            let (s, a, e, n) = key(b);
            let d = *stored.get(&(s.to_owned(), a.to_owned(), e, n))?;
            (d != u64_bits(b.content_digest())).then_some((*i, *b, d))
        })
        .collect())
}

/// Open a `batch-conflict` alert for the batch's agent unless one is open.
async fn open_conflict_alert(
    tx: &deadpool_postgres::Transaction<'_>,
    b: &wire::Batch,
    stored_digest: i64,
    now: i64,
) -> Result<(), StoreError> {
    let (place, date, message, detail) = conflict_alert(b, stored_digest, now);
    tx.execute(
        "INSERT INTO flowsquare.alerts (kind, site, place, date, message, detail, state, opened)
         SELECT $1, $2, $3, $4, $5, $6, 'open', $7
         WHERE NOT EXISTS (SELECT 1 FROM flowsquare.alerts
                           WHERE kind = $1 AND site = $2 AND place = $3 AND state = 'open')",
        &[
            &BATCH_CONFLICT,
            &b.site,
            &place,
            &date,
            &message,
            &detail,
            &ts_checked(now, "now")?,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Refuse a batch that cannot be stored as it is (whole call fails, nothing stored).
fn check(b: &wire::Batch, cat: &Catalog, now: i64) -> Result<(), StoreError> {
    let what = || format!("batch {}/{}/{}", b.site, b.agent, b.batch_id);
    for r in &b.readings {
        if r.tag as usize >= cat.len() {
            return Err(StoreError::Invalid(format!(
                "{}: reading tag index {} is not in catalog {} ({} tags)",
                what(),
                r.tag,
                b.config_hash,
                cat.len()
            )));
        }
        ts_checked(r.ts_ms, &what())?;
    }
    for e in &b.events {
        ts_checked(e.ts_ms, &what())?;
    }
    for g in &b.gaps {
        if let Some(t) = g.tags.iter().find(|t| **t as usize >= cat.len()) {
            return Err(StoreError::Invalid(format!(
                "{}: gap tag index {t} is not in catalog {} ({} tags)",
                what(),
                b.config_hash,
                cat.len()
            )));
        }
        ts_checked(g.from_ms, &what())?;
        ts_checked(g.to_ms, &what())?;
    }
    check_gaps(b, cat.len(), now).map_err(StoreError::Invalid)
}

/// Insert the ledger rows; returns the keys that were new.
async fn ledger<'b>(
    tx: &deadpool_postgres::Transaction<'_>,
    candidates: &[(usize, &'b wire::Batch, &Catalog)],
    parts: &[Option<(std::borrow::Cow<'_, wire::Batch>, Option<Refused>)>],
    received_ms: i64,
) -> Result<HashSet<(&'b str, &'b str, i64, i64)>, StoreError> {
    let n = candidates.len();
    let (mut epoch, mut digest) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut site, mut agent, mut id, mut hash, mut created) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut readings, mut events, mut gaps) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, b, _) in candidates {
        // The digest of the whole batch, the counts of what is stored of it.
        let part = parts
            .get(*i)
            .and_then(Option::as_ref)
            .map_or(*b, |(p, _)| &**p);
        site.push(b.site.as_str());
        agent.push(b.agent.as_str());
        id.push(u64_bits(b.batch_id));
        epoch.push(u64_bits(b.buffer_epoch));
        digest.push(u64_bits(b.content_digest()));
        hash.push(b.config_hash.as_str());
        created.push(ts_checked(b.created_ms, "").ok());
        readings.push(part.readings.len() as i64);
        events.push(part.events.len() as i64);
        gaps.push(part.gaps.len() as i64);
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO flowsquare.batches (site, agent, batch_id, config_hash, created, readings, events, gaps,
                                             buffer_epoch, digest, received)
             SELECT *, $11::timestamptz FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::timestamptz[],
                                  $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[])
             ON CONFLICT (site, agent, buffer_epoch, batch_id) DO NOTHING
             RETURNING site, agent, buffer_epoch, batch_id",
        )
        .await
        .map_err(pg)?;
    let rows = tx
        .query(
            &st,
            &[
                &site,
                &agent,
                &id,
                &hash,
                &created,
                &readings,
                &events,
                &gaps,
                &epoch,
                &digest,
                &Ts(received_ms),
            ],
        )
        .await
        .map_err(pg)?;
    let returned: HashSet<(String, String, i64, i64)> = rows
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    Ok(candidates
        .iter()
        .map(|(_, b, _)| key(b))
        .filter(|(s, a, e, i)| returned.contains(&(s.to_string(), a.to_string(), *e, *i)))
        .collect())
}

async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    stored: &[(usize, &wire::Batch, &Catalog)],
) -> Result<(), StoreError> {
    let n: usize = stored.iter().map(|(_, b, _)| b.events.len()).sum();
    if n == 0 {
        return Ok(());
    }
    let (mut site, mut agent, mut batch, mut source, mut kind) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut seq, mut ts, mut fields) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (_, b, _) in stored {
        for e in &b.events {
            site.push(b.site.as_str());
            agent.push(b.agent.as_str());
            batch.push(u64_bits(b.batch_id));
            source.push(e.source.as_str());
            kind.push(e.kind.as_str());
            seq.push(u64_bits(e.seq));
            ts.push(Ts(e.ts_ms));
            fields.push(fields_json(&e.fields));
        }
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO flowsquare.events (site, agent, batch_id, source, kind, seq, ts, fields)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::int8[],
                                  $7::timestamptz[], $8::jsonb[]) AS n (site, agent, batch_id, source, kind, seq, ts, fields)
             WHERE NOT EXISTS (SELECT 1 FROM flowsquare.events e
                               WHERE e.site = n.site AND e.agent = n.agent AND e.source = n.source
                                 AND e.ts >= n.ts - make_interval(secs => $9::float8 / 1000)
                                 AND e.kind = n.kind AND e.fields = n.fields)",
        )
        .await
        .map_err(pg)?;
    // See `RECAPTURE_WINDOW_MS`: a record stored before with the very same fields is skipped.
    let window = crate::store::RECAPTURE_WINDOW_MS as f64;
    let inserted = tx
        .execute(
            &st,
            &[
                &site, &agent, &batch, &source, &kind, &seq, &ts, &fields, &window,
            ],
        )
        .await
        .map_err(pg)?;
    if inserted < n as u64 {
        tracing::warn!(
            skipped = n as u64 - inserted,
            "events already stored with the same fields (captured again by a new buffer): skipped"
        );
    }
    Ok(())
}

async fn insert_gaps(
    tx: &deadpool_postgres::Transaction<'_>,
    stored: &[(usize, &wire::Batch, &Catalog)],
    received_ms: i64,
) -> Result<(), StoreError> {
    let n: usize = stored.iter().map(|(_, b, _)| b.gaps.len()).sum();
    if n == 0 {
        return Ok(());
    }
    let (mut idx, mut site, mut agent, mut batch) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut known = Vec::with_capacity(n);
    let (mut from, mut to, mut count, mut reason) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    // Tag ids flattened: (gap index, tag id), regrouped by the query.
    let (mut tag_gap, mut tag_id) = (Vec::new(), Vec::new());
    let mut i = 0i32;
    for (_, b, cat) in stored {
        for g in &b.gaps {
            idx.push(i);
            site.push(b.site.as_str());
            agent.push(b.agent.as_str());
            batch.push(u64_bits(b.batch_id));
            from.push(Ts(g.from_ms));
            to.push(Ts(g.to_ms));
            count.push(if g.count_known { u64_sat(g.count) } else { 0 });
            known.push(g.count_known);
            reason.push(gap_reason(&g.reason));
            for t in &g.tags {
                tag_gap.push(i);
                // In range: checked by `check`.
                tag_id.push(cat[*t as usize]);
            }
            i += 1;
        }
    }
    let st = tx
        .prepare_cached(
            "WITH t AS (
                 SELECT gap, array_agg(tag ORDER BY ord) AS tags
                 FROM unnest($9::int4[], $10::int8[]) WITH ORDINALITY AS t (gap, tag, ord)
                 GROUP BY gap
             )
             INSERT INTO flowsquare.gaps (site, agent, batch_id, tag_ids, from_ts, to_ts, count, reason, count_known, received)
             SELECT g.site, g.agent, g.batch_id, coalesce(t.tags, '{}'), g.from_ts, g.to_ts, g.count, g.reason, g.known, $12::timestamptz
             FROM unnest($1::int4[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[], $6::timestamptz[],
                         $7::int8[], $8::text[], $11::bool[]) AS g (i, site, agent, batch_id, from_ts, to_ts, count, reason, known)
             LEFT JOIN t ON t.gap = g.i
             ORDER BY g.i",
        )
        .await
        .map_err(pg)?;
    tx.execute(
        &st,
        &[
            &idx,
            &site,
            &agent,
            &batch,
            &from,
            &to,
            &count,
            &reason,
            &tag_gap,
            &tag_id,
            &known,
            &Ts(received_ms),
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// The catalog of a config hash (cached), `None` if no birth registered it.
async fn catalog(
    store: &PgStore,
    client: &deadpool_postgres::Object,
    site: &str,
    agent: &str,
    hash: &str,
) -> Result<Option<Catalog>, StoreError> {
    let key = (site.to_string(), agent.to_string(), hash.to_string());
    if let Some(c) = store.catalogs().get(&key) {
        return Ok(Some(c.clone()));
    }
    let st = client
        .prepare_cached(
            "SELECT h.tag_count, c.idx, c.tag_id
             FROM flowsquare.config_hashes h
             LEFT JOIN flowsquare.catalog c USING (site, agent, config_hash)
             WHERE h.site = $1 AND h.agent = $2 AND h.config_hash = $3
             ORDER BY c.idx",
        )
        .await
        .map_err(pg)?;
    let rows = client
        .query(&st, &[&site, &agent, &hash])
        .await
        .map_err(pg)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let count: i32 = first.get(0);
    let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for r in &rows {
        let (Some(idx), Some(id)) = (r.get::<_, Option<i32>>(1), r.get::<_, Option<i64>>(2)) else {
            continue;
        };
        if usize::try_from(idx).ok() != Some(ids.len()) {
            return Err(StoreError::Invalid(format!(
                "catalog {site}/{agent}/{hash} has no tag at index {}",
                ids.len()
            )));
        }
        ids.push(id);
    }
    if ids.len() != usize::try_from(count).unwrap_or(0) {
        return Err(StoreError::Invalid(format!(
            "catalog {site}/{agent}/{hash}: {} of {count} tags",
            ids.len()
        )));
    }
    let cat: Catalog = Arc::from(ids);
    store.catalogs().insert(key, cat.clone());
    Ok(Some(cat))
}

/// Register a birth: agent, tags (stable ids by name), catalog and config history.
pub(super) async fn birth(
    store: &PgStore,
    b: &wire::Birth,
    received_ms: i64,
) -> Result<(), StoreError> {
    let received = ts_checked(received_ms, "birth received time")?;
    let started = ts_checked(b.started_ms, "").ok();
    // One row per name (the last description wins), sorted: concurrent births lock in one order.
    let mut by_name: BTreeMap<&str, &wire::TagInfo> = BTreeMap::new();
    for t in &b.tags {
        by_name.insert(t.name.as_str(), t);
    }
    let n = by_name.len();
    let (mut name, mut unit, mut kind, mut device) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut desc, mut dtype, mut interval) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (nm, t) in &by_name {
        name.push(*nm);
        unit.push(t.unit.as_deref());
        kind.push(t.kind.as_str());
        device.push(t.device.as_str());
        desc.push(t.description.as_deref());
        dtype.push(t.data_type.as_str());
        interval.push(u64_sat(t.poll_interval_ms));
    }
    let tag_count = i32::try_from(b.tags.len())
        .map_err(|_| StoreError::Invalid("birth: too many tags".into()))?;

    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(pg)?;
    if store.inner.opts.limits.max_tags_per_agent.is_some() {
        let row = tx
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE name = ANY($3::text[]))
                 FROM flowsquare.tags WHERE site = $1 AND agent = $2",
                &[&b.site, &b.agent, &name],
            )
            .await
            .map_err(pg)?;
        let (registered, known): (i64, i64) = (row.get(0), row.get(1));
        let registered = usize::try_from(registered).unwrap_or(usize::MAX);
        let total = registered.saturating_add(n) - usize::try_from(known).unwrap_or(0).min(n);
        if let Some(e) = bounds::tag_limit_error(b, registered, total, &store.inner.opts.limits) {
            return Err(e);
        }
    }
    tx.execute(
        "INSERT INTO flowsquare.agents AS a (site, agent, last_seen, version, config_hash, birth_at, started)
         VALUES ($1, $2, $3, $4, $5, $3, $6)
         ON CONFLICT (site, agent) DO UPDATE SET
             last_seen = greatest(a.last_seen, excluded.last_seen),
             version = excluded.version,
             config_hash = excluded.config_hash,
             birth_at = excluded.birth_at,
             started = excluded.started
         WHERE a.birth_at IS NULL OR excluded.birth_at >= a.birth_at",
        &[&b.site, &b.agent, &received, &b.agent_version, &b.config_hash, &started],
    )
    .await
    .map_err(pg)?;
    let rows = tx
        .query(
            "INSERT INTO flowsquare.tags AS t (site, agent, name, unit, kind, device, description, data_type, interval_ms,
                                               first_seen, updated)
             SELECT $1, $2, *, $10, $10 FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int8[])
             ON CONFLICT (site, agent, name) DO UPDATE SET
                 unit = excluded.unit, kind = excluded.kind, device = excluded.device,
                 description = excluded.description, data_type = excluded.data_type,
                 interval_ms = excluded.interval_ms, updated = excluded.updated
             RETURNING name, id",
            &[
                &b.site, &b.agent, &name, &unit, &kind, &device, &desc, &dtype, &interval, &received,
            ],
        )
        .await
        .map_err(pg)?;
    let ids: HashMap<String, i64> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut cat = Vec::with_capacity(b.tags.len());
    for t in &b.tags {
        let id = ids
            .get(&t.name)
            .copied()
            .ok_or_else(|| StoreError::Invalid(format!("birth: tag {:?} got no id", t.name)))?;
        cat.push(id);
    }
    let idx: Vec<i32> = (0..tag_count).collect();
    tx.execute(
        "INSERT INTO flowsquare.catalog AS c (site, agent, config_hash, idx, tag_id)
         SELECT $1, $2, $3, * FROM unnest($4::int4[], $5::int8[])
         ON CONFLICT (site, agent, config_hash, idx) DO UPDATE SET tag_id = excluded.tag_id
         WHERE c.tag_id <> excluded.tag_id",
        &[&b.site, &b.agent, &b.config_hash, &idx, &cat],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "DELETE FROM flowsquare.catalog WHERE site = $1 AND agent = $2 AND config_hash = $3 AND idx >= $4",
        &[&b.site, &b.agent, &b.config_hash, &tag_count],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "INSERT INTO flowsquare.config_hashes AS h (site, agent, config_hash, agent_version, tag_count, first_seen, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $6)
         ON CONFLICT (site, agent, config_hash) DO UPDATE SET
             agent_version = excluded.agent_version, tag_count = excluded.tag_count, births = h.births + 1,
             first_seen = least(h.first_seen, excluded.first_seen), last_seen = greatest(h.last_seen, excluded.last_seen)",
        &[&b.site, &b.agent, &b.config_hash, &b.agent_version, &tag_count, &received],
    )
    .await
    .map_err(pg)?;
    if let Some(buf) = &b.buffer {
        record_buffer(&tx, b, buf, received).await?;
    }
    tx.commit().await.map_err(pg)?;
    store.catalogs().insert(
        (b.site.clone(), b.agent.clone(), b.config_hash.clone()),
        Arc::from(cat),
    );
    Ok(())
}

/// Keep the buffer a birth names; a new epoch after another (or after stored data) records a
/// `buffer-replaced` gap of unknown count ([`buffer_replaced_gap`]). Of several instances
/// receiving the same birth, only the one whose insert of the epoch succeeds records the gap.
async fn record_buffer(
    tx: &deadpool_postgres::Transaction<'_>,
    b: &wire::Birth,
    buf: &wire::messages::BufferIdentity,
    received: Ts,
) -> Result<(), StoreError> {
    let epoch = u64_bits(buf.epoch);
    let previous: Option<Ts> = tx
        .query_opt(
            "SELECT created FROM flowsquare.agent_buffers WHERE site = $1 AND agent = $2 AND epoch <> $3
             ORDER BY last_seen DESC LIMIT 1",
            &[&b.site, &b.agent, &epoch],
        )
        .await
        .map_err(pg)?
        .map(|r| r.get(0));
    // Newest reading of each of the agent's tags (one index probe per tag), then the newest.
    let last_data: Option<Ts> = tx
        .query_one(
            "SELECT max((SELECT max(r.ts) FROM flowsquare.readings r WHERE r.tag_id = t.id))
             FROM flowsquare.tags t WHERE t.site = $1 AND t.agent = $2",
            &[&b.site, &b.agent],
        )
        .await
        .map_err(pg)?
        .get(0);
    let created = Ts(buf.created_ms.clamp(MIN_TS_MS, MAX_TS_MS - 1));
    let gap = buffer_replaced_gap(buf, previous.map(|t| t.0), last_data.map(|t| t.0));
    let replaced = previous.is_some() || gap.is_some() || buf.origin.starts_with("replaced");
    let inserted = tx
        .query_opt(
            "INSERT INTO flowsquare.agent_buffers AS x (site, agent, epoch, created, origin, note, first_seen, last_seen, replaced)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
             ON CONFLICT (site, agent, epoch) DO UPDATE SET last_seen = greatest(x.last_seen, excluded.last_seen)
             RETURNING (xmax = 0)",
            &[&b.site, &b.agent, &epoch, &created, &buf.origin, &buf.note, &received, &replaced],
        )
        .await
        .map_err(pg)?
        .is_some_and(|r| r.get::<_, bool>(0));
    if !inserted {
        return Ok(());
    }
    if let Some((from, to, detail)) = gap {
        tracing::warn!(site = %b.site, agent = %b.agent, epoch = buf.epoch, origin = %buf.origin, from, to,
            "the agent's buffer was replaced: recording a gap of unknown count");
        tx.execute(
            "INSERT INTO flowsquare.gaps (site, agent, batch_id, tag_ids, from_ts, to_ts, count, reason, count_known, detail, received)
             VALUES ($1, $2, 0, '{}', $3, $4, 0, $5, false, $6, $7)",
            &[
                &b.site,
                &b.agent,
                &ts_checked(from, "buffer-replaced gap")?,
                &ts_checked(to, "buffer-replaced gap")?,
                &BUFFER_REPLACED,
                &detail,
                &received,
            ],
        )
        .await
        .map_err(pg)?;
    }
    Ok(())
}

/// Record a status message; an older one (by receive time) than the last does not override it.
pub(super) async fn status(
    store: &PgStore,
    site: &str,
    agent: &str,
    s: &wire::Status,
    received_ms: i64,
) -> Result<(), StoreError> {
    let received = ts_checked(received_ms, "status received time")?;
    let client = store.client().await?;
    client
        .execute(
            "INSERT INTO flowsquare.agents AS a (site, agent, online, status_reason, status_at, last_seen, version)
             VALUES ($1, $2, $3, $4, $5, $5, $6)
             ON CONFLICT (site, agent) DO UPDATE SET
                 online = excluded.online,
                 status_reason = excluded.status_reason,
                 status_at = excluded.status_at,
                 last_seen = greatest(a.last_seen, excluded.last_seen),
                 version = coalesce(excluded.version, a.version)
             WHERE a.status_at IS NULL OR excluded.status_at >= a.status_at",
            &[&site, &agent, &s.online, &s.reason, &received, &s.agent_version],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Record a heartbeat's figures (the whole heartbeat is kept as JSON too).
pub(super) async fn heartbeat(
    store: &PgStore,
    site: &str,
    agent: &str,
    h: &wire::Heartbeat,
    received_ms: i64,
) -> Result<(), StoreError> {
    let received = ts_checked(received_ms, "heartbeat received time")?;
    let oldest = h
        .buffer
        .oldest_unsent_ms
        .and_then(|ms| ts_checked(ms, "").ok());
    let finite = |f: f64| f.is_finite().then_some(f);
    let json =
        serde_json::to_value(h).map_err(|e| StoreError::Invalid(format!("heartbeat: {e}")))?;
    let client = store.client().await?;
    client
        .execute(
            "INSERT INTO flowsquare.agents AS a (site, agent, last_seen, backlog_readings, backlog_rows, backlog_bytes,
                                               oldest_unsent, drain_rate_per_s, eta_s, heartbeat_at, heartbeat)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $3, $10)
             ON CONFLICT (site, agent) DO UPDATE SET
                 last_seen = greatest(a.last_seen, excluded.last_seen),
                 backlog_readings = excluded.backlog_readings, backlog_rows = excluded.backlog_rows,
                 backlog_bytes = excluded.backlog_bytes, oldest_unsent = excluded.oldest_unsent,
                 drain_rate_per_s = excluded.drain_rate_per_s, eta_s = excluded.eta_s,
                 heartbeat_at = excluded.heartbeat_at, heartbeat = excluded.heartbeat
             WHERE a.heartbeat_at IS NULL OR excluded.heartbeat_at >= a.heartbeat_at",
            &[
                &site,
                &agent,
                &received,
                &u64_sat(h.buffer.readings),
                &u64_sat(h.buffer.rows),
                &u64_sat(h.buffer.bytes),
                &oldest,
                &finite(h.buffer.drain_rate_per_s),
                &h.buffer.eta_s.and_then(finite),
                &json,
            ],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Keep an unusable message (its payload capped, `store::bounds`).
pub(super) async fn dead_letter(store: &PgStore, dl: &DeadLetter) -> Result<(), StoreError> {
    let dl = bounds::cap_dead_letter(dl, &store.inner.opts.limits);
    let client = store.client().await?;
    insert_dead_letter(&client, &dl).await
}

/// Insert a dead letter (on a connection or in a transaction).
async fn insert_dead_letter(
    c: &impl deadpool_postgres::GenericClient,
    dl: &DeadLetter,
) -> Result<(), StoreError> {
    let received = ts_checked(dl.received_ms, "dead letter received time")?;
    c.execute(
        "INSERT INTO flowsquare.dead_letters (topic, payload, reason, received) VALUES ($1, $2, $3, $4)",
        &[&dl.topic, &dl.payload, &dl.reason, &received],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Drop the dead letters older than the retention, then the oldest while the payloads kept add
/// up to more than the total bound; returns how many were dropped.
pub(super) async fn prune_dead_letters(store: &PgStore, now_ms: i64) -> Result<u64, StoreError> {
    let limits = &store.inner.opts.limits;
    let client = store.client().await?;
    let mut dropped = 0;
    if let Some(age) = limits.dead_letter_retention_ms {
        let cutoff = Ts(now_ms.saturating_sub(age).clamp(MIN_TS_MS, MAX_TS_MS - 1));
        dropped += client
            .execute(
                "DELETE FROM flowsquare.dead_letters WHERE received < $1",
                &[&cutoff],
            )
            .await
            .map_err(pg)?;
    }
    if let Some(max) = limits.dead_letter_max_total_bytes {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        dropped += client
            .execute(
                "DELETE FROM flowsquare.dead_letters WHERE id IN (
                     SELECT id FROM (
                         SELECT id, sum(octet_length(payload)) OVER (ORDER BY received DESC, id DESC) AS total
                         FROM flowsquare.dead_letters) t
                     WHERE total > $1)",
                &[&max],
            )
            .await
            .map_err(pg)?;
    }
    Ok(dropped)
}
