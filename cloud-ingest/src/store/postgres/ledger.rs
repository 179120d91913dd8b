//! [`Ledger`] on PostgreSQL (tables in `LEDGER_SCHEMA`, created by `migrate`, schema version 2).

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::types::{Ts, MAX_TS_MS, MIN_TS_MS};
use super::{pg, PgStore};
use crate::reconcile::model::{
    Epod, EpodCompartment, NewAlert, RecordKind, TrendPoint, Variance, Verdict,
};
use crate::store::ledger::*;
use crate::store::StoreError;

/// The reconciliation's tables.
pub(super) const LEDGER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS flowsquare.discharges (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site text NOT NULL,
    vessel text NOT NULL,
    parcel text NOT NULL,
    product text NOT NULL,
    bl_l float8 NOT NULL,
    tanks text[] NOT NULL,
    meters text[] NOT NULL,
    opened timestamptz NOT NULL,
    closed timestamptz,
    ship_l float8
);
CREATE TABLE IF NOT EXISTS flowsquare.epods (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trip text NOT NULL,
    bol text NOT NULL UNIQUE,
    truck text NOT NULL,
    station text NOT NULL,
    delivered timestamptz NOT NULL,
    receiver text NOT NULL,
    lat float8,
    lon float8,
    posted timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS epods_delivered ON flowsquare.epods (delivered);
CREATE TABLE IF NOT EXISTS flowsquare.epod_compartments (
    epod_id bigint NOT NULL REFERENCES flowsquare.epods (id),
    compartment bigint NOT NULL,
    product text NOT NULL,
    gross_l float8 NOT NULL,
    net_l float8,
    PRIMARY KEY (epod_id, compartment)
);
CREATE TABLE IF NOT EXISTS flowsquare.recon_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    date text NOT NULL,
    trigger text NOT NULL,
    started timestamptz NOT NULL,
    finished timestamptz NOT NULL,
    as_of timestamptz NOT NULL,
    records bigint NOT NULL,
    exceptions bigint NOT NULL,
    alerts_opened bigint NOT NULL DEFAULT 0,
    alerts_closed bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS flowsquare.variances (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id bigint NOT NULL,
    date text NOT NULL,
    site text NOT NULL,
    kind text NOT NULL,
    place text NOT NULL,
    stage text NOT NULL,
    product text NOT NULL,
    reference_l float8,
    measured_l float8,
    variance_l float8,
    variance_pct float8,
    tolerance_pct float8 NOT NULL,
    verdict text NOT NULL,
    detail jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS variances_date ON flowsquare.variances (date, kind);
CREATE INDEX IF NOT EXISTS variances_place ON flowsquare.variances (site, kind, place, date);
CREATE TABLE IF NOT EXISTS flowsquare.alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    site text NOT NULL,
    place text NOT NULL,
    date text NOT NULL,
    message text NOT NULL,
    detail jsonb NOT NULL,
    state text NOT NULL,
    opened timestamptz NOT NULL,
    closed timestamptz,
    closed_reason text
);
CREATE INDEX IF NOT EXISTS alerts_state ON flowsquare.alerts (state, kind);
";

/// Version 4: the coverage of each variance record (NULL: no tag inputs).
pub(super) const SCHEMA_V4: &str = "
ALTER TABLE flowsquare.variances ADD COLUMN IF NOT EXISTS coverage jsonb;
";

/// Schema step 5 (idempotent): append-only run history (a re-run supersedes the date's run,
/// records stay; runs saved before this step are marked superseded by the next run of their
/// date), amendments (every version of an ePOD or discharge) and the audit log.
pub(super) const SCHEMA_V5: &str = "
ALTER TABLE flowsquare.recon_runs ADD COLUMN IF NOT EXISTS supersedes bigint;
ALTER TABLE flowsquare.recon_runs ADD COLUMN IF NOT EXISTS superseded_by bigint;
CREATE INDEX IF NOT EXISTS recon_runs_date ON flowsquare.recon_runs (date, id);
CREATE INDEX IF NOT EXISTS variances_run ON flowsquare.variances (run_id, kind);
UPDATE flowsquare.recon_runs r SET superseded_by = (SELECT min(n.id) FROM flowsquare.recon_runs n WHERE n.date = r.date AND n.id > r.id)
    WHERE r.superseded_by IS NULL;
CREATE TABLE IF NOT EXISTS flowsquare.amendments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity text NOT NULL,
    entity_id bigint NOT NULL,
    version bigint NOT NULL,
    actor text NOT NULL,
    role text NOT NULL,
    at timestamptz NOT NULL,
    reason text NOT NULL,
    record jsonb NOT NULL,
    UNIQUE (entity, entity_id, version)
);
CREATE TABLE IF NOT EXISTS flowsquare.audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor text NOT NULL,
    role text NOT NULL,
    at timestamptz NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    before jsonb NOT NULL,
    after jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_at ON flowsquare.audit_log (at);
";

fn ts(ms: i64) -> Ts {
    Ts(ms.clamp(MIN_TS_MS, MAX_TS_MS))
}

const DISCHARGE_COLS: &str =
    "id, site, vessel, parcel, product, bl_l, tanks, meters, opened, closed, ship_l";

fn discharge_row(r: &Row) -> DischargeRow {
    DischargeRow {
        id: r.get(0),
        d: NewDischarge {
            site: r.get(1),
            vessel: r.get(2),
            parcel: r.get(3),
            product: r.get(4),
            bl_l: r.get(5),
            tanks: r.get(6),
            meters: r.get(7),
            opened_ms: r.get::<_, Ts>(8).0,
        },
        closed_ms: r.get::<_, Option<Ts>>(9).map(|t| t.0),
        ship_l: r.get(10),
    }
}

const RUN_COLS: &str = "id, date, trigger, started, finished, as_of, records, exceptions, alerts_opened, alerts_closed, supersedes, superseded_by";

const VARIANCE_COLS: &str = "run_id, date, kind, site, place, stage, product, reference_l, measured_l, variance_l, variance_pct, tolerance_pct, verdict, detail, coverage";

fn variance_row(r: &Row) -> VarianceRow {
    VarianceRow {
        run_id: r.get(0),
        v: Variance {
            date: r.get(1),
            kind: RecordKind::parse(r.get(2)).unwrap_or(RecordKind::Chain),
            site: r.get(3),
            place: r.get(4),
            stage: r.get(5),
            product: r.get(6),
            reference_l: r.get(7),
            measured_l: r.get(8),
            variance_l: r.get(9),
            variance_pct: r.get(10),
            tolerance_pct: r.get(11),
            verdict: Verdict::parse(r.get(12)),
            detail: r.get(13),
            coverage: r
                .get::<_, Option<serde_json::Value>>(14)
                .and_then(|c| serde_json::from_value(c).ok()),
        },
    }
}

/// A discharge, locked for the rest of the transaction (close and amend read-modify-write it).
async fn discharge_for_update<C: GenericClient + Sync>(
    c: &C,
    id: i64,
) -> Result<Option<DischargeRow>, StoreError> {
    Ok(c.query_opt(
        &format!("SELECT {DISCHARGE_COLS} FROM flowsquare.discharges WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await
    .map_err(pg)?
    .map(|r| discharge_row(&r)))
}

/// The next version number of a record; the original is stored as version 1 first when the
/// record has none yet.
async fn next_version<C: GenericClient + Sync>(
    c: &C,
    entity: &str,
    id: i64,
    original: &serde_json::Value,
    posted_ms: i64,
) -> Result<i64, StoreError> {
    let last: Option<i64> = c
        .query_one(
            "SELECT max(version) FROM flowsquare.amendments WHERE entity = $1 AND entity_id = $2",
            &[&entity, &id],
        )
        .await
        .map_err(pg)?
        .get(0);
    match last {
        Some(v) => Ok(v + 1),
        None => {
            c.execute(
                "INSERT INTO flowsquare.amendments (entity, entity_id, version, actor, role, at, reason, record) VALUES ($1, $2, 1, $3, '', $4, $5, $6)",
                &[&entity, &id, &ORIGINAL_ACTOR, &ts(posted_ms), &ORIGINAL_REASON, original],
            )
            .await
            .map_err(pg)?;
            Ok(2)
        }
    }
}

async fn insert_version<C: GenericClient + Sync>(
    c: &C,
    entity: &str,
    id: i64,
    version: i64,
    by: &Amendment,
    record: &serde_json::Value,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO flowsquare.amendments (entity, entity_id, version, actor, role, at, reason, record) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[&entity, &id, &version, &by.actor, &by.role, &ts(by.at_ms), &by.reason, record],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

fn run_row(r: &Row) -> RunRow {
    RunRow {
        id: r.get(0),
        date: r.get(1),
        trigger: r.get(2),
        started_ms: r.get::<_, Ts>(3).0,
        finished_ms: r.get::<_, Ts>(4).0,
        as_of_ms: r.get::<_, Ts>(5).0,
        records: r.get(6),
        exceptions: r.get(7),
        alerts_opened: r.get(8),
        alerts_closed: r.get(9),
        supersedes: r.get(10),
        superseded_by: r.get(11),
    }
}

const ALERT_COLS: &str =
    "id, kind, site, place, date, message, detail, state, opened, closed, closed_reason";

fn alert_row(r: &Row) -> AlertRow {
    AlertRow {
        id: r.get(0),
        a: NewAlert {
            kind: r.get(1),
            site: r.get(2),
            place: r.get(3),
            date: r.get(4),
            message: r.get(5),
            detail: r.get(6),
        },
        state: r.get(7),
        opened_ms: r.get::<_, Ts>(8).0,
        closed_ms: r.get::<_, Option<Ts>>(9).map(|t| t.0),
        closed_reason: r.get(10),
    }
}

async fn epods_where<C: GenericClient + Sync>(
    c: &C,
    sql_where: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Epod>, StoreError> {
    let rows = c
        .query(
            &format!(
                "SELECT e.id, e.trip, e.bol, e.truck, e.station, e.delivered, e.receiver, e.lat, e.lon
                 FROM flowsquare.epods e WHERE {sql_where}"
            ),
            args,
        )
        .await
        .map_err(pg)?;
    let mut out: Vec<Epod> = rows
        .iter()
        .map(|r| Epod {
            id: r.get(0),
            trip: r.get(1),
            bol: r.get(2),
            truck: r.get(3),
            station: r.get(4),
            delivered_ms: r.get::<_, Ts>(5).0,
            receiver: r.get(6),
            lat: r.get(7),
            lon: r.get(8),
            compartments: Vec::new(),
        })
        .collect();
    if out.is_empty() {
        return Ok(out);
    }
    let ids: Vec<i64> = out.iter().map(|e| e.id).collect();
    let ks = c
        .query(
            "SELECT epod_id, compartment, product, gross_l, net_l FROM flowsquare.epod_compartments
             WHERE epod_id = ANY($1) ORDER BY epod_id, compartment",
            &[&ids],
        )
        .await
        .map_err(pg)?;
    let at: std::collections::HashMap<i64, usize> =
        out.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    for k in &ks {
        if let Some(&i) = at.get(&k.get::<_, i64>(0)) {
            out[i].compartments.push(EpodCompartment {
                compartment: k.get(1),
                product: k.get(2),
                gross_l: k.get(3),
                net_l: k.get(4),
            });
        }
    }
    Ok(out)
}

async fn open_alerts<C: GenericClient + Sync>(
    c: &C,
    kinds: &[&str],
) -> Result<Vec<AlertRow>, StoreError> {
    // Only what the sync compares (key and date): not the messages and details.
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    let rows = c
        .query(
            "SELECT id, kind, site, place, date, opened FROM flowsquare.alerts WHERE state = 'open' AND kind = ANY($1) ORDER BY id",
            &[&kinds],
        )
        .await
        .map_err(pg)?;
    Ok(rows
        .iter()
        .map(|r| AlertRow {
            id: r.get(0),
            a: NewAlert {
                kind: r.get(1),
                site: r.get(2),
                place: r.get(3),
                date: r.get(4),
                message: String::new(),
                detail: serde_json::Value::Null,
            },
            state: "open".into(),
            opened_ms: r.get::<_, Ts>(5).0,
            closed_ms: None,
            closed_reason: None,
        })
        .collect())
}

async fn apply_sync<C: GenericClient + Sync>(
    c: &C,
    open: &[AlertRow],
    found: &[NewAlert],
    date: Option<&str>,
    now: i64,
    reason: &str,
) -> Result<(i64, i64), StoreError> {
    let (to_open, to_close) = plan_sync(open, found, date);
    if !to_open.is_empty() {
        let col =
            |f: &dyn Fn(&NewAlert) -> String| to_open.iter().map(|a| f(a)).collect::<Vec<String>>();
        let detail: Vec<serde_json::Value> = to_open.iter().map(|a| a.detail.clone()).collect();
        c.execute(
            "INSERT INTO flowsquare.alerts (kind, site, place, date, message, detail, state, opened)
             SELECT k, s, p, d, m, x, 'open', $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[]) AS u(k, s, p, d, m, x)",
            &[
                &col(&|a| a.kind.clone()), &col(&|a| a.site.clone()), &col(&|a| a.place.clone()),
                &col(&|a| a.date.clone()), &col(&|a| a.message.clone()), &detail, &ts(now),
            ],
        )
        .await
        .map_err(pg)?;
    }
    if !to_close.is_empty() {
        c.execute(
            "UPDATE flowsquare.alerts SET state = 'closed', closed = $2, closed_reason = $3 WHERE id = ANY($1)",
            &[&to_close, &ts(now), &reason],
        )
        .await
        .map_err(pg)?;
    }
    Ok((to_open.len() as i64, to_close.len() as i64))
}

#[async_trait]
impl Ledger for PgStore {
    async fn events(
        &self,
        site: &str,
        kind: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT site, agent, source, kind, seq, ts, fields FROM flowsquare.events
                 WHERE site = $1 AND ts >= $2 AND ts < $3 AND kind = $4 ORDER BY ts, seq",
                &[&site, &ts(from_ms), &ts(to_ms), &kind],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| EventRow {
                site: r.get(0),
                agent: r.get(1),
                source: r.get(2),
                kind: r.get(3),
                seq: r.get(4),
                ts_ms: r.get::<_, Ts>(5).0,
                fields: match r.get::<_, serde_json::Value>(6) {
                    serde_json::Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                },
            })
            .collect())
    }

    async fn values_at(
        &self,
        probes: &[(i64, i64)],
        max_age_ms: i64,
    ) -> Result<Vec<Option<(i64, f64)>>, StoreError> {
        if probes.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let tags: Vec<i64> = probes.iter().map(|p| p.0).collect();
        let at: Vec<Ts> = probes.iter().map(|p| ts(p.1)).collect();
        let after: Vec<Ts> = probes.iter().map(|p| ts(p.1 - max_age_ms)).collect();
        let rows = c
            .query(
                "SELECT p.i, r.ts, r.value
                 FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) WITH ORDINALITY AS p(tag, at, after, i)
                 LEFT JOIN LATERAL (
                     SELECT ts, value FROM flowsquare.readings
                     WHERE tag_id = p.tag AND ts <= p.at AND ts > p.after AND quality = 0 AND value IS NOT NULL
                     ORDER BY ts DESC LIMIT 1
                 ) r ON true",
                &[&tags, &at, &after],
            )
            .await
            .map_err(pg)?;
        let mut out = vec![None; probes.len()];
        for r in &rows {
            let i: i64 = r.get(0);
            if let (Some(t), Some(v)) = (r.get::<_, Option<Ts>>(1), r.get::<_, Option<f64>>(2)) {
                if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
                    *slot = Some((t.0, v));
                }
            }
        }
        Ok(out)
    }

    async fn track(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT ts, value FROM flowsquare.readings WHERE tag_id = $1 AND ts >= $2 AND ts <= $3
                 AND quality = 0 AND value IS NOT NULL ORDER BY ts",
                &[&tag_id, &ts(from_ms), &ts(to_ms)],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, Ts>(0).0, r.get(1)))
            .collect())
    }

    async fn open_discharge(&self, d: &NewDischarge) -> Result<DischargeRow, StoreError> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "INSERT INTO flowsquare.discharges (site, vessel, parcel, product, bl_l, tanks, meters, opened)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[&d.site, &d.vessel, &d.parcel, &d.product, &d.bl_l, &d.tanks, &d.meters, &ts(d.opened_ms)],
            )
            .await
            .map_err(pg)?;
        Ok(DischargeRow {
            id: r.get(0),
            d: d.clone(),
            closed_ms: None,
            ship_l: None,
        })
    }

    async fn close_discharge(
        &self,
        id: i64,
        closed_ms: i64,
        ship_l: Option<f64>,
    ) -> Result<CloseOutcome, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let row = discharge_for_update(&tx, id).await?;
        let out = match row {
            None => CloseOutcome::NotFound,
            Some(row) if row.closed_ms.is_some() => CloseOutcome::AlreadyClosed(row),
            Some(row) if closed_ms <= row.d.opened_ms => CloseOutcome::BeforeOpen(row),
            Some(mut row) => {
                tx.execute(
                    "UPDATE flowsquare.discharges SET closed = $2, ship_l = $3 WHERE id = $1",
                    &[&id, &ts(closed_ms), &ship_l],
                )
                .await
                .map_err(pg)?;
                row.closed_ms = Some(closed_ms);
                row.ship_l = ship_l;
                CloseOutcome::Closed(row)
            }
        };
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn discharges_page(
        &self,
        from_ms: i64,
        to_ms: i64,
        sites: Option<&[String]>,
        after: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<DischargeRow>, StoreError> {
        let c = self.client().await?;
        let (opened, id) = after.map_or((None, None), |(t, id)| (Some(ts(t)), Some(id)));
        let rows = c
            .query(
                &format!(
                    "SELECT {DISCHARGE_COLS} FROM flowsquare.discharges
                     WHERE opened < $2 AND (closed IS NULL OR closed >= $1)
                       AND ($3::text[] IS NULL OR site = ANY($3))
                       AND ($4::timestamptz IS NULL OR (opened, id) > ($4, $5::int8))
                     ORDER BY opened, id LIMIT $6"
                ),
                &[&ts(from_ms), &ts(to_ms), &sites, &opened, &id, &limit],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(discharge_row).collect())
    }

    async fn post_epod(&self, e: &Epod, posted_ms: i64) -> Result<EpodOutcome, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Serialise posts of one BOL (a re-post racing the first gets Same, not an error).
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&e.bol])
            .await
            .map_err(pg)?;
        if let Some(old) = epods_where(&tx, "e.bol = $1 ORDER BY e.delivered, e.id", &[&e.bol])
            .await?
            .into_iter()
            .next()
        {
            let same = Epod {
                id: old.id,
                ..e.clone()
            } == old;
            return Ok(if same {
                EpodOutcome::Same(old.id)
            } else {
                EpodOutcome::Conflict(old.id)
            });
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO flowsquare.epods (trip, bol, truck, station, delivered, receiver, lat, lon, posted)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                &[&e.trip, &e.bol, &e.truck, &e.station, &ts(e.delivered_ms), &e.receiver, &e.lat, &e.lon, &ts(posted_ms)],
            )
            .await
            .map_err(pg)?
            .get(0);
        for k in &e.compartments {
            tx.execute(
                "INSERT INTO flowsquare.epod_compartments (epod_id, compartment, product, gross_l, net_l) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &k.compartment, &k.product, &k.gross_l, &k.net_l],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(EpodOutcome::Created(id))
    }

    async fn epods_for(&self, bols: &[String]) -> Result<Vec<Epod>, StoreError> {
        let c = self.client().await?;
        let bols = bols.to_vec();
        epods_where(&c, "e.bol = ANY($1) ORDER BY e.delivered, e.id", &[&bols]).await
    }

    async fn epods_page(
        &self,
        from_ms: i64,
        to_ms: i64,
        scope: Option<&EpodScope>,
        after: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<Epod>, StoreError> {
        let c = self.client().await?;
        let (trucks, stations) = scope.map_or((None, None), |s| {
            (Some(s.trucks.clone()), Some(s.stations.clone()))
        });
        let (delivered, id) = after.map_or((None, None), |(t, id)| (Some(ts(t)), Some(id)));
        epods_where(
            &c,
            "e.delivered >= $1 AND e.delivered < $2
             AND ($3::text[] IS NULL OR e.truck = ANY($3) OR e.station = ANY($4::text[]))
             AND ($5::timestamptz IS NULL OR (e.delivered, e.id) > ($5, $6::int8))
             ORDER BY e.delivered, e.id LIMIT $7",
            &[
                &ts(from_ms),
                &ts(to_ms),
                &trucks,
                &stations,
                &delivered,
                &id,
                &limit,
            ],
        )
        .await
    }

    async fn save_run(
        &self,
        run: &NewRun,
        records: &[Variance],
        alerts: &[NewAlert],
        now_ms: i64,
    ) -> Result<RunRow, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // One run of a date at a time (concurrent runs of one date would interleave their rows).
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('flowsquare-recon-' || $1))",
            &[&run.date],
        )
        .await
        .map_err(pg)?;
        let exceptions = records
            .iter()
            .filter(|v| v.verdict == Verdict::Exception)
            .count() as i64;
        let previous: Option<i64> = tx
            .query_one(
                "SELECT max(id) FROM flowsquare.recon_runs WHERE date = $1",
                &[&run.date],
            )
            .await
            .map_err(pg)?
            .get(0);
        let id: i64 = tx
            .query_one(
                "INSERT INTO flowsquare.recon_runs (date, trigger, started, finished, as_of, records, exceptions, supersedes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[&run.date, &run.trigger, &ts(run.started_ms), &ts(run.finished_ms), &ts(run.as_of_ms), &(records.len() as i64), &exceptions, &previous],
            )
            .await
            .map_err(pg)?
            .get(0);
        // Append-only: the previous run keeps its records; it is only marked superseded.
        tx.execute(
            "UPDATE flowsquare.recon_runs SET superseded_by = $1 WHERE date = $2 AND id <> $1 AND superseded_by IS NULL",
            &[&id, &run.date],
        )
        .await
        .map_err(pg)?;
        // One multi-row insert through unnest (thousands of trips a day).
        let col = |f: &dyn Fn(&Variance) -> String| records.iter().map(f).collect::<Vec<String>>();
        let colf = |f: &dyn Fn(&Variance) -> Option<f64>| {
            records.iter().map(f).collect::<Vec<Option<f64>>>()
        };
        let detail: Vec<serde_json::Value> = records.iter().map(|v| v.detail.clone()).collect();
        let coverage: Vec<Option<serde_json::Value>> = records
            .iter()
            .map(|v| {
                v.coverage
                    .as_ref()
                    .and_then(|c| serde_json::to_value(c).ok())
            })
            .collect();
        let tol: Vec<f64> = records.iter().map(|v| v.tolerance_pct).collect();
        tx.execute(
            "INSERT INTO flowsquare.variances (run_id, date, site, kind, place, stage, product, reference_l, measured_l, variance_l, variance_pct, tolerance_pct, verdict, detail, coverage)
             SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::float8[], $9::float8[], $10::float8[], $11::float8[], $12::float8[], $13::text[], $14::jsonb[], $15::jsonb[])",
            &[
                &id, &run.date,
                &col(&|v| v.site.clone()), &col(&|v| v.kind.as_str().to_owned()), &col(&|v| v.place.clone()),
                &col(&|v| v.stage.clone()), &col(&|v| v.product.clone()),
                &colf(&|v| v.reference_l), &colf(&|v| v.measured_l), &colf(&|v| v.variance_l), &colf(&|v| v.variance_pct),
                &tol, &col(&|v| v.verdict.as_str().to_owned()), &detail, &coverage,
            ],
        )
        .await
        .map_err(pg)?;
        let open = open_alerts(&tx, &RUN_KINDS).await?;
        let (opened, closed) = apply_sync(
            &tx,
            &open,
            alerts,
            Some(&run.date),
            now_ms,
            &format!("not found again by run {id}"),
        )
        .await?;
        let row = tx
            .query_one(
                &format!("UPDATE flowsquare.recon_runs SET alerts_opened = $2, alerts_closed = $3 WHERE id = $1 RETURNING {RUN_COLS}"),
                &[&id, &opened, &closed],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(run_row(&row))
    }

    async fn runs_page(
        &self,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {RUN_COLS} FROM flowsquare.recon_runs WHERE ($2::int8 IS NULL OR id < $2) ORDER BY id DESC LIMIT $1"),
                &[&limit, &before_id],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(run_row).collect())
    }

    async fn run_of(&self, date: &str, pick: RunPick) -> Result<Option<RunRow>, StoreError> {
        let c = self.client().await?;
        let row = match pick {
            RunPick::Latest => c
                .query_opt(
                    &format!("SELECT {RUN_COLS} FROM flowsquare.recon_runs WHERE date = $1 ORDER BY id DESC LIMIT 1"),
                    &[&date],
                )
                .await,
            RunPick::Id(id) => c
                .query_opt(
                    &format!("SELECT {RUN_COLS} FROM flowsquare.recon_runs WHERE date = $1 AND id = $2"),
                    &[&date, &id],
                )
                .await,
            RunPick::AsOf(t) => c
                .query_opt(
                    &format!("SELECT {RUN_COLS} FROM flowsquare.recon_runs WHERE date = $1 AND finished <= $2 ORDER BY id DESC LIMIT 1"),
                    &[&date, &ts(t)],
                )
                .await,
        }
        .map_err(pg)?;
        Ok(row.as_ref().map(run_row))
    }

    async fn run_variances(
        &self,
        run_id: i64,
        kind: Option<&str>,
    ) -> Result<Vec<VarianceRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {VARIANCE_COLS} FROM flowsquare.variances WHERE run_id = $1 AND ($2::text IS NULL OR kind = $2) ORDER BY id"),
                &[&run_id, &kind],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(variance_row).collect())
    }

    async fn discharge(&self, id: i64) -> Result<Option<DischargeRow>, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &format!("SELECT {DISCHARGE_COLS} FROM flowsquare.discharges WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg)?;
        Ok(row.as_ref().map(discharge_row))
    }

    async fn epod(&self, id: i64) -> Result<Option<Epod>, StoreError> {
        let c = self.client().await?;
        Ok(epods_where(&c, "e.id = $1", &[&id])
            .await?
            .into_iter()
            .next())
    }

    async fn amend_discharge(
        &self,
        id: i64,
        d: &DischargeRow,
        by: &Amendment,
    ) -> Result<AmendOutcome<DischargeRow>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let old = discharge_for_update(&tx, id).await?;
        let Some(old) = old else {
            return Ok(AmendOutcome::NotFound);
        };
        let original = serde_json::to_value(&old).unwrap_or_default();
        let version = next_version(&tx, "discharge", id, &original, old.d.opened_ms).await?;
        let new = DischargeRow { id, ..d.clone() };
        tx.execute(
            "UPDATE flowsquare.discharges SET site = $2, vessel = $3, parcel = $4, product = $5, bl_l = $6, tanks = $7, meters = $8, opened = $9, closed = $10, ship_l = $11 WHERE id = $1",
            &[&id, &new.d.site, &new.d.vessel, &new.d.parcel, &new.d.product, &new.d.bl_l, &new.d.tanks, &new.d.meters, &ts(new.d.opened_ms), &new.closed_ms.map(ts), &new.ship_l],
        )
        .await
        .map_err(pg)?;
        let record = serde_json::to_value(&new).unwrap_or_default();
        insert_version(&tx, "discharge", id, version, by, &record).await?;
        tx.commit().await.map_err(pg)?;
        Ok(AmendOutcome::Amended(new, version))
    }

    async fn amend_epod(
        &self,
        id: i64,
        e: &Epod,
        by: &Amendment,
    ) -> Result<AmendOutcome<Epod>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Serialise with posts of the same BOL (see post_epod).
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&e.bol])
            .await
            .map_err(pg)?;
        let old = tx
            .query_opt(
                "SELECT posted FROM flowsquare.epods WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg)?;
        let Some(old) = old else {
            return Ok(AmendOutcome::NotFound);
        };
        let posted_ms = old.get::<_, Ts>(0).0;
        if let Some(other) = epods_where(&tx, "e.bol = $1 AND e.id <> $2", &[&e.bol, &id])
            .await?
            .into_iter()
            .next()
        {
            return Ok(AmendOutcome::BolTaken(other.id));
        }
        let Some(old) = epods_where(&tx, "e.id = $1", &[&id])
            .await?
            .into_iter()
            .next()
        else {
            return Ok(AmendOutcome::NotFound);
        };
        let original = serde_json::to_value(&old).unwrap_or_default();
        let version = next_version(&tx, "epod", id, &original, posted_ms).await?;
        let new = Epod { id, ..e.clone() };
        tx.execute(
            "UPDATE flowsquare.epods SET trip = $2, bol = $3, truck = $4, station = $5, delivered = $6, receiver = $7, lat = $8, lon = $9 WHERE id = $1",
            &[&id, &new.trip, &new.bol, &new.truck, &new.station, &ts(new.delivered_ms), &new.receiver, &new.lat, &new.lon],
        )
        .await
        .map_err(pg)?;
        tx.execute(
            "DELETE FROM flowsquare.epod_compartments WHERE epod_id = $1",
            &[&id],
        )
        .await
        .map_err(pg)?;
        for k in &new.compartments {
            tx.execute(
                "INSERT INTO flowsquare.epod_compartments (epod_id, compartment, product, gross_l, net_l) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &k.compartment, &k.product, &k.gross_l, &k.net_l],
            )
            .await
            .map_err(pg)?;
        }
        let record = serde_json::to_value(&new).unwrap_or_default();
        insert_version(&tx, "epod", id, version, by, &record).await?;
        tx.commit().await.map_err(pg)?;
        Ok(AmendOutcome::Amended(new, version))
    }

    async fn versions(&self, entity: &str, id: i64) -> Result<Vec<VersionRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT version, actor, role, at, reason, record FROM flowsquare.amendments WHERE entity = $1 AND entity_id = $2 ORDER BY version",
                &[&entity, &id],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| VersionRow {
                version: r.get(0),
                by: Amendment {
                    actor: r.get(1),
                    role: r.get(2),
                    at_ms: r.get::<_, Ts>(3).0,
                    reason: r.get(4),
                },
                record: r.get(5),
            })
            .collect())
    }

    async fn audit(&self, e: &NewAudit) -> Result<i64, StoreError> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "INSERT INTO flowsquare.audit_log (actor, role, at, action, target, before, after) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[&e.actor, &e.role, &ts(e.at_ms), &e.action, &e.target, &e.before, &e.after],
            )
            .await
            .map_err(pg)?;
        Ok(r.get(0))
    }

    async fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, actor, role, at, action, target, before, after FROM flowsquare.audit_log
                 WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
                   AND ($3::text IS NULL OR actor = $3) AND ($4::text IS NULL OR action = $4) AND ($5::text IS NULL OR target = $5)
                   AND ($7::int8 IS NULL OR id < $7)
                 ORDER BY id DESC LIMIT $6",
                &[&f.from_ms.map(ts), &f.to_ms.map(ts), &f.actor, &f.action, &f.target, &f.limit, &f.before_id],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get(0),
                e: NewAudit {
                    actor: r.get(1),
                    role: r.get(2),
                    at_ms: r.get::<_, Ts>(3).0,
                    action: r.get(4),
                    target: r.get(5),
                    before: r.get(6),
                    after: r.get(7),
                },
            })
            .collect())
    }

    async fn last_good(
        &self,
        tag_ids: &[i64],
        after_ms: i64,
    ) -> Result<Vec<GoodSince>, StoreError> {
        if tag_ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let ids = tag_ids.to_vec();
        let rows = c
            .query(
                "SELECT p.i, g.ts, f.ts
                 FROM unnest($1::bigint[]) WITH ORDINALITY AS p(tag, i)
                 LEFT JOIN LATERAL (
                     SELECT ts FROM flowsquare.readings
                     WHERE tag_id = p.tag AND ts > $2 AND quality = 0
                     ORDER BY ts DESC LIMIT 1
                 ) g ON true
                 LEFT JOIN LATERAL (
                     SELECT ts FROM flowsquare.readings
                     WHERE tag_id = p.tag AND ts > $2
                     ORDER BY ts LIMIT 1
                 ) f ON true",
                &[&ids, &ts(after_ms)],
            )
            .await
            .map_err(pg)?;
        let mut out = vec![GoodSince::default(); ids.len()];
        for r in &rows {
            let i: i64 = r.get(0);
            if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
                *slot = GoodSince {
                    last_good_ms: r.get::<_, Option<Ts>>(1).map(|t| t.0),
                    first_ms: r.get::<_, Option<Ts>>(2).map(|t| t.0),
                };
            }
        }
        Ok(out)
    }

    async fn variances(
        &self,
        date: &str,
        kind: Option<&str>,
    ) -> Result<Vec<VarianceRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {VARIANCE_COLS} FROM flowsquare.variances WHERE date = $1 AND ($2::text IS NULL OR kind = $2)
                 AND run_id = (SELECT max(id) FROM flowsquare.recon_runs WHERE date = $1) ORDER BY id"),
                &[&date, &kind],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(variance_row).collect())
    }

    async fn trends(
        &self,
        site: &str,
        places: &[String],
        from_date: &str,
        to_date: &str,
    ) -> Result<Vec<(String, TrendPoint)>, StoreError> {
        let c = self.client().await?;
        let places = places.to_vec();
        let rows = c
            .query(
                "SELECT place, date, variance_pct, verdict FROM flowsquare.variances WHERE site = $1 AND kind = 'meter-trend'
                 AND place = ANY($2) AND date >= $3 AND date < $4 AND variance_pct IS NOT NULL
                 AND run_id = (SELECT max(r.id) FROM flowsquare.recon_runs r WHERE r.date = variances.date) ORDER BY place, date",
                &[&site, &places, &from_date, &to_date],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    TrendPoint {
                        day: crate::reconcile::model::parse_day(r.get(1)).unwrap_or(i64::MIN),
                        pct: r.get(2),
                        usable: r.get::<_, &str>(3) == "ok",
                    },
                )
            })
            .collect())
    }

    async fn sync_alerts(
        &self,
        kinds: &[&str],
        found: &[NewAlert],
        now_ms: i64,
    ) -> Result<(i64, i64), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('flowsquare-alert-sync'))",
            &[],
        )
        .await
        .map_err(pg)?;
        let open = open_alerts(&tx, kinds).await?;
        let r = apply_sync(&tx, &open, found, None, now_ms, "no longer found").await?;
        tx.commit().await.map_err(pg)?;
        Ok(r)
    }

    async fn alerts_page(
        &self,
        state: Option<&str>,
        sites: Option<&[String]>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!("SELECT {ALERT_COLS} FROM flowsquare.alerts WHERE ($1::text IS NULL OR state = $1) AND ($3::text[] IS NULL OR site = ANY($3)) AND ($4::int8 IS NULL OR id < $4) ORDER BY id DESC LIMIT $2"),
                &[&state, &limit, &sites, &before_id],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(alert_row).collect())
    }

    async fn dead_letter_count(
        &self,
        site: &str,
        agent: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError> {
        let c = self.client().await?;
        let suffix = format!("/{site}/{agent}/data");
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM flowsquare.dead_letters WHERE received >= $1 AND received < $2
                 AND right(topic, length($3)) = $3",
                &[&ts(from_ms), &ts(to_ms), &suffix],
            )
            .await
            .map_err(pg)?
            .get(0);
        Ok(n)
    }

    async fn first_readings(&self, tag_ids: &[i64]) -> Result<Vec<Option<i64>>, StoreError> {
        if tag_ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT p.i, r.ts
                 FROM unnest($1::bigint[]) WITH ORDINALITY AS p(tag, i)
                 LEFT JOIN LATERAL (
                     SELECT ts FROM flowsquare.readings WHERE tag_id = p.tag ORDER BY ts LIMIT 1
                 ) r ON true",
                &[&tag_ids],
            )
            .await
            .map_err(pg)?;
        let mut out = vec![None; tag_ids.len()];
        for r in &rows {
            let i: i64 = r.get(0);
            if let Some(t) = r.get::<_, Option<Ts>>(1) {
                if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
                    *slot = Some(t.0);
                }
            }
        }
        Ok(out)
    }

    async fn counter_marks(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64, i64, f64)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT ts, value, counter_kind, counter_value FROM flowsquare.readings
                 WHERE tag_id = $1 AND ts > $2 AND ts <= $3 AND counter_kind IS NOT NULL
                 AND counter_value IS NOT NULL AND quality = 0 AND value IS NOT NULL ORDER BY ts",
                &[&tag_id, &ts(from_ms), &ts(to_ms)],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, Ts>(0).0,
                    r.get(1),
                    i64::from(r.get::<_, i16>(2)),
                    r.get(3),
                )
            })
            .collect())
    }
}
