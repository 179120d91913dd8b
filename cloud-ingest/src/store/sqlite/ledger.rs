//! [`Ledger`] on SQLite (schema version 2: the reconciliation's tables; version 5: run history,
//! amendments, audit log).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::SqliteStore;
use crate::reconcile::model::{
    Epod, EpodCompartment, NewAlert, RecordKind, TrendPoint, Variance, Verdict,
};
use crate::store::ledger::*;
use crate::store::StoreError;

/// Version 4: the coverage of each variance record (JSON, NULL: no tag inputs). SQLite has no
/// `ADD COLUMN IF NOT EXISTS`: added when `table_info` does not list it.
pub(super) fn migrate_v4(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let has: bool = tx
        .prepare("SELECT 1 FROM pragma_table_info('variances') WHERE name = 'coverage'")?
        .exists([])?;
    if !has {
        tx.execute_batch("ALTER TABLE variances ADD COLUMN coverage TEXT")?;
    }
    Ok(())
}

/// Version 2: the reconciliation's tables.
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS discharges (
    id        INTEGER PRIMARY KEY,
    site      TEXT NOT NULL,
    vessel    TEXT NOT NULL,
    parcel    TEXT NOT NULL,
    product   TEXT NOT NULL,
    bl_l      REAL NOT NULL,
    tanks     TEXT NOT NULL,
    meters    TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    closed_ms INTEGER,
    ship_l    REAL
);
CREATE TABLE IF NOT EXISTS epods (
    id           INTEGER PRIMARY KEY,
    trip         TEXT NOT NULL,
    bol          TEXT NOT NULL UNIQUE,
    truck        TEXT NOT NULL,
    station      TEXT NOT NULL,
    delivered_ms INTEGER NOT NULL,
    receiver     TEXT NOT NULL,
    lat          REAL,
    lon          REAL,
    posted_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS epods_delivered ON epods (delivered_ms);
CREATE TABLE IF NOT EXISTS epod_compartments (
    epod_id     INTEGER NOT NULL REFERENCES epods (id),
    compartment INTEGER NOT NULL,
    product     TEXT NOT NULL,
    gross_l     REAL NOT NULL,
    net_l       REAL,
    PRIMARY KEY (epod_id, compartment)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recon_runs (
    id            INTEGER PRIMARY KEY,
    date          TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    started_ms    INTEGER NOT NULL,
    finished_ms   INTEGER NOT NULL,
    as_of_ms      INTEGER NOT NULL,
    records       INTEGER NOT NULL,
    exceptions    INTEGER NOT NULL,
    alerts_opened INTEGER NOT NULL,
    alerts_closed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS variances (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL,
    date          TEXT NOT NULL,
    site          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    place         TEXT NOT NULL,
    stage         TEXT NOT NULL,
    product       TEXT NOT NULL,
    reference_l   REAL,
    measured_l    REAL,
    variance_l    REAL,
    variance_pct  REAL,
    tolerance_pct REAL NOT NULL,
    verdict       TEXT NOT NULL,
    detail        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS variances_date ON variances (date, kind);
CREATE INDEX IF NOT EXISTS variances_place ON variances (site, kind, place, date);
CREATE TABLE IF NOT EXISTS alerts (
    id            INTEGER PRIMARY KEY,
    kind          TEXT NOT NULL,
    site          TEXT NOT NULL,
    place         TEXT NOT NULL,
    date          TEXT NOT NULL,
    message       TEXT NOT NULL,
    detail        TEXT NOT NULL,
    state         TEXT NOT NULL,
    opened_ms     INTEGER NOT NULL,
    closed_ms     INTEGER,
    closed_reason TEXT
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, kind);
";

/// Version 5: append-only run history (a re-run supersedes the date's run, records stay),
/// amendments (every version of an ePOD or discharge) and the audit log. The two
/// `recon_runs` columns are added by [`migrate_v5`] (SQLite has no `ADD COLUMN IF NOT EXISTS`).
const SCHEMA_V5: &str = "
CREATE INDEX IF NOT EXISTS variances_run ON variances (run_id, kind);
CREATE INDEX IF NOT EXISTS recon_runs_date ON recon_runs (date, id);
CREATE TABLE IF NOT EXISTS amendments (
    id        INTEGER PRIMARY KEY,
    entity    TEXT NOT NULL,
    entity_id INTEGER NOT NULL,
    version   INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    role      TEXT NOT NULL,
    at_ms     INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    record    TEXT NOT NULL,
    UNIQUE (entity, entity_id, version)
);
CREATE TABLE IF NOT EXISTS audit_log (
    id     INTEGER PRIMARY KEY,
    actor  TEXT NOT NULL,
    role   TEXT NOT NULL,
    at_ms  INTEGER NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT NOT NULL,
    after  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at_ms);
";

/// Schema step 5 (idempotent): the tables above, the run-history columns, and the history of
/// runs saved before it (each superseded by the next run of its date).
pub(super) fn migrate_v5(c: &Connection) -> Result<(), StoreError> {
    c.execute_batch(SCHEMA_V5)?;
    for col in ["supersedes", "superseded_by"] {
        let has: bool = c.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('recon_runs') WHERE name = ?1",
            [col],
            |r| r.get(0),
        )?;
        if !has {
            c.execute_batch(&format!("ALTER TABLE recon_runs ADD COLUMN {col} INTEGER"))?;
        }
    }
    c.execute_batch(
        "UPDATE recon_runs SET superseded_by = (SELECT min(n.id) FROM recon_runs n WHERE n.date = recon_runs.date AND n.id > recon_runs.id)
         WHERE superseded_by IS NULL;",
    )?;
    Ok(())
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn discharge_row(r: &Row<'_>) -> rusqlite::Result<DischargeRow> {
    let tanks: String = r.get(6)?;
    let meters: String = r.get(7)?;
    Ok(DischargeRow {
        id: r.get(0)?,
        d: NewDischarge {
            site: r.get(1)?,
            vessel: r.get(2)?,
            parcel: r.get(3)?,
            product: r.get(4)?,
            bl_l: r.get(5)?,
            tanks: serde_json::from_str(&tanks).unwrap_or_default(),
            meters: serde_json::from_str(&meters).unwrap_or_default(),
            opened_ms: r.get(8)?,
        },
        closed_ms: r.get(9)?,
        ship_l: r.get(10)?,
    })
}

const DISCHARGE_COLS: &str =
    "id, site, vessel, parcel, product, bl_l, tanks, meters, opened_ms, closed_ms, ship_l";

fn discharge_by_id(c: &Connection, id: i64) -> Result<Option<DischargeRow>, StoreError> {
    Ok(c.query_row(
        &format!("SELECT {DISCHARGE_COLS} FROM discharges WHERE id = ?1"),
        [id],
        discharge_row,
    )
    .optional()?)
}

fn epods_where(
    c: &Connection,
    sql_where: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Epod>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT id, trip, bol, truck, station, delivered_ms, receiver, lat, lon FROM epods WHERE {sql_where}"
    ))?;
    let mut out: Vec<Epod> = st
        .query_map(args, |r| {
            Ok(Epod {
                id: r.get(0)?,
                trip: r.get(1)?,
                bol: r.get(2)?,
                truck: r.get(3)?,
                station: r.get(4)?,
                delivered_ms: r.get(5)?,
                receiver: r.get(6)?,
                lat: r.get(7)?,
                lon: r.get(8)?,
                compartments: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut cs = c.prepare_cached(
        "SELECT compartment, product, gross_l, net_l FROM epod_compartments WHERE epod_id = ?1 ORDER BY compartment",
    )?;
    for e in &mut out {
        e.compartments = cs
            .query_map([e.id], |r| {
                Ok(EpodCompartment {
                    compartment: r.get(0)?,
                    product: r.get(1)?,
                    gross_l: r.get(2)?,
                    net_l: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(out)
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        date: r.get(1)?,
        trigger: r.get(2)?,
        started_ms: r.get(3)?,
        finished_ms: r.get(4)?,
        as_of_ms: r.get(5)?,
        records: r.get(6)?,
        exceptions: r.get(7)?,
        alerts_opened: r.get(8)?,
        alerts_closed: r.get(9)?,
        supersedes: r.get(10)?,
        superseded_by: r.get(11)?,
    })
}

const RUN_COLS: &str = "id, date, trigger, started_ms, finished_ms, as_of_ms, records, exceptions, alerts_opened, alerts_closed, supersedes, superseded_by";

const VARIANCE_COLS: &str = "run_id, date, kind, site, place, stage, product, reference_l, measured_l, variance_l, variance_pct, tolerance_pct, verdict, detail, coverage";

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The next version number of a record; the original is stored as version 1 first when the
/// record has none yet.
fn next_version(
    c: &Connection,
    entity: &str,
    id: i64,
    original: &serde_json::Value,
    posted_ms: i64,
) -> Result<i64, StoreError> {
    let last: Option<i64> = c.query_row(
        "SELECT max(version) FROM amendments WHERE entity = ?1 AND entity_id = ?2",
        params![entity, id],
        |r| r.get(0),
    )?;
    match last {
        Some(v) => Ok(v + 1),
        None => {
            c.execute(
                "INSERT INTO amendments (entity, entity_id, version, actor, role, at_ms, reason, record) VALUES (?1, ?2, 1, ?3, '', ?4, ?5, ?6)",
                params![entity, id, ORIGINAL_ACTOR, posted_ms, ORIGINAL_REASON, original.to_string()],
            )?;
            Ok(2)
        }
    }
}

fn insert_version(
    c: &Connection,
    entity: &str,
    id: i64,
    version: i64,
    by: &Amendment,
    record: &serde_json::Value,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO amendments (entity, entity_id, version, actor, role, at_ms, reason, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![entity, id, version, by.actor, by.role, by.at_ms, by.reason, record.to_string()],
    )?;
    Ok(())
}

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    let before: String = r.get(6)?;
    let after: String = r.get(7)?;
    Ok(AuditRow {
        id: r.get(0)?,
        e: NewAudit {
            actor: r.get(1)?,
            role: r.get(2)?,
            at_ms: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            before: serde_json::from_str(&before).unwrap_or(serde_json::Value::Null),
            after: serde_json::from_str(&after).unwrap_or(serde_json::Value::Null),
        },
    })
}

fn alert_row(r: &Row<'_>) -> rusqlite::Result<AlertRow> {
    let detail: String = r.get(6)?;
    Ok(AlertRow {
        id: r.get(0)?,
        a: NewAlert {
            kind: r.get(1)?,
            site: r.get(2)?,
            place: r.get(3)?,
            date: r.get(4)?,
            message: r.get(5)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        },
        state: r.get(7)?,
        opened_ms: r.get(8)?,
        closed_ms: r.get(9)?,
        closed_reason: r.get(10)?,
    })
}

const ALERT_COLS: &str =
    "id, kind, site, place, date, message, detail, state, opened_ms, closed_ms, closed_reason";

/// Open alerts of these kinds.
fn open_alerts(c: &Connection, kinds: &[&str]) -> Result<Vec<AlertRow>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {ALERT_COLS} FROM alerts WHERE state = 'open' ORDER BY id"
    ))?;
    let all: Vec<AlertRow> = st.query_map([], alert_row)?.collect::<Result<_, _>>()?;
    Ok(all
        .into_iter()
        .filter(|a| kinds.contains(&a.a.kind.as_str()))
        .collect())
}

/// Apply a sync plan; returns (opened, closed).
fn apply_sync(
    c: &Connection,
    open: &[AlertRow],
    found: &[NewAlert],
    date: Option<&str>,
    now: i64,
    reason: &str,
) -> Result<(i64, i64), StoreError> {
    let (to_open, to_close) = plan_sync(open, found, date);
    let mut ins = c.prepare_cached(
        "INSERT INTO alerts (kind, site, place, date, message, detail, state, opened_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7)",
    )?;
    for a in &to_open {
        ins.execute(params![
            a.kind,
            a.site,
            a.place,
            a.date,
            a.message,
            a.detail.to_string(),
            now
        ])?;
    }
    let mut close = c.prepare_cached(
        "UPDATE alerts SET state = 'closed', closed_ms = ?2, closed_reason = ?3 WHERE id = ?1",
    )?;
    for id in &to_close {
        close.execute(params![id, now, reason])?;
    }
    Ok((to_open.len() as i64, to_close.len() as i64))
}

fn variance_row(r: &Row<'_>) -> rusqlite::Result<VarianceRow> {
    let kind: String = r.get(2)?;
    let verdict: String = r.get(12)?;
    let detail: String = r.get(13)?;
    let coverage: Option<String> = r.get(14)?;
    Ok(VarianceRow {
        run_id: r.get(0)?,
        v: Variance {
            date: r.get(1)?,
            kind: RecordKind::parse(&kind).unwrap_or(RecordKind::Chain),
            site: r.get(3)?,
            place: r.get(4)?,
            stage: r.get(5)?,
            product: r.get(6)?,
            reference_l: r.get(7)?,
            measured_l: r.get(8)?,
            variance_l: r.get(9)?,
            variance_pct: r.get(10)?,
            tolerance_pct: r.get(11)?,
            verdict: Verdict::parse(&verdict),
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            coverage: coverage.and_then(|c| serde_json::from_str(&c).ok()),
        },
    })
}

/// The stored form of a record's coverage.
fn coverage_json(v: &Variance) -> Option<String> {
    v.coverage
        .as_ref()
        .and_then(|c| serde_json::to_string(c).ok())
}

#[async_trait]
impl Ledger for SqliteStore {
    async fn events(
        &self,
        site: &str,
        kind: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let (site, kind) = (site.to_owned(), kind.to_owned());
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT site, agent, source, kind, seq, ts_ms, fields FROM events
                 WHERE site = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND kind = ?4 ORDER BY ts_ms, id",
            )?;
            let rows = st
                .query_map(params![site, from_ms, to_ms, kind], |r| {
                    let f: String = r.get(6)?;
                    Ok(EventRow {
                        site: r.get(0)?,
                        agent: r.get(1)?,
                        source: r.get(2)?,
                        kind: r.get(3)?,
                        seq: r.get(4)?,
                        ts_ms: r.get(5)?,
                        fields: serde_json::from_str(&f).unwrap_or_default(),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn values_at(
        &self,
        probes: &[(i64, i64)],
        max_age_ms: i64,
    ) -> Result<Vec<Option<(i64, f64)>>, StoreError> {
        let probes = probes.to_vec();
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT ts_ms, value FROM readings WHERE tag_id = ?1 AND ts_ms <= ?2 AND ts_ms > ?3
                 AND quality = 0 AND value IS NOT NULL ORDER BY ts_ms DESC LIMIT 1",
            )?;
            let mut out = Vec::with_capacity(probes.len());
            for (tag, at) in probes {
                out.push(
                    st.query_row(params![tag, at, at - max_age_ms], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn track(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT ts_ms, value FROM readings WHERE tag_id = ?1 AND ts_ms >= ?2 AND ts_ms <= ?3
                 AND quality = 0 AND value IS NOT NULL ORDER BY ts_ms",
            )?;
            let rows = st
                .query_map(params![tag_id, from_ms, to_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn open_discharge(&self, d: &NewDischarge) -> Result<DischargeRow, StoreError> {
        let d = d.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO discharges (site, vessel, parcel, product, bl_l, tanks, meters, opened_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![d.site, d.vessel, d.parcel, d.product, d.bl_l, json_list(&d.tanks), json_list(&d.meters), d.opened_ms],
            )?;
            Ok(DischargeRow { id: c.last_insert_rowid(), d, closed_ms: None, ship_l: None })
        })
        .await
    }

    async fn close_discharge(
        &self,
        id: i64,
        closed_ms: i64,
        ship_l: Option<f64>,
    ) -> Result<CloseOutcome, StoreError> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = match discharge_by_id(&tx, id)? {
                None => CloseOutcome::NotFound,
                Some(row) if row.closed_ms.is_some() => CloseOutcome::AlreadyClosed(row),
                Some(row) if closed_ms <= row.d.opened_ms => CloseOutcome::BeforeOpen(row),
                Some(mut row) => {
                    tx.execute(
                        "UPDATE discharges SET closed_ms = ?2, ship_l = ?3 WHERE id = ?1",
                        params![id, closed_ms, ship_l],
                    )?;
                    row.closed_ms = Some(closed_ms);
                    row.ship_l = ship_l;
                    CloseOutcome::Closed(row)
                }
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn discharges_page(
        &self,
        from_ms: i64,
        to_ms: i64,
        sites: Option<&[String]>,
        after: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<DischargeRow>, StoreError> {
        let sites = sites.map(|s| serde_json::Value::from(s.to_vec()).to_string());
        let (opened, id) = after.map_or((None, None), |(t, id)| (Some(t), Some(id)));
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {DISCHARGE_COLS} FROM discharges WHERE opened_ms < ?2 AND (closed_ms IS NULL OR closed_ms >= ?1)
                 AND (?3 IS NULL OR site IN (SELECT value FROM json_each(?3)))
                 AND (?4 IS NULL OR (opened_ms, id) > (?4, ?5))
                 ORDER BY opened_ms, id LIMIT ?6"
            ))?;
            let rows = st
                .query_map(params![from_ms, to_ms, sites, opened, id, limit], discharge_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn post_epod(&self, e: &Epod, posted_ms: i64) -> Result<EpodOutcome, StoreError> {
        let e = e.clone();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing = epods_where(&tx, "bol = ?1", &[&e.bol])?;
            if let Some(old) = existing.into_iter().next() {
                let same = Epod { id: old.id, ..e.clone() } == old;
                return Ok(if same { EpodOutcome::Same(old.id) } else { EpodOutcome::Conflict(old.id) });
            }
            tx.execute(
                "INSERT INTO epods (trip, bol, truck, station, delivered_ms, receiver, lat, lon, posted_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![e.trip, e.bol, e.truck, e.station, e.delivered_ms, e.receiver, e.lat, e.lon, posted_ms],
            )?;
            let id = tx.last_insert_rowid();
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO epod_compartments (epod_id, compartment, product, gross_l, net_l) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for k in &e.compartments {
                    st.execute(params![id, k.compartment, k.product, k.gross_l, k.net_l])?;
                }
            }
            tx.commit()?;
            Ok(EpodOutcome::Created(id))
        })
        .await
    }

    async fn epods_for(&self, bols: &[String]) -> Result<Vec<Epod>, StoreError> {
        let bols = bols.to_vec();
        self.run(move |c| {
            let mut out = Vec::new();
            for b in &bols {
                out.extend(epods_where(c, "bol = ?1", &[b])?);
            }
            Ok(out)
        })
        .await
    }

    async fn epods_page(
        &self,
        from_ms: i64,
        to_ms: i64,
        scope: Option<&EpodScope>,
        after: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<Epod>, StoreError> {
        let list = |v: &[String]| serde_json::Value::from(v.to_vec()).to_string();
        let (trucks, stations) = scope.map_or((None, None), |s| {
            (Some(list(&s.trucks)), Some(list(&s.stations)))
        });
        let (delivered, id) = after.map_or((None, None), |(t, id)| (Some(t), Some(id)));
        self.run(move |c| {
            epods_where(
                c,
                "delivered_ms >= ?1 AND delivered_ms < ?2
                 AND (?3 IS NULL OR truck IN (SELECT value FROM json_each(?3))
                      OR station IN (SELECT value FROM json_each(?4)))
                 AND (?5 IS NULL OR (delivered_ms, id) > (?5, ?6))
                 ORDER BY delivered_ms, id LIMIT ?7",
                &[
                    &from_ms, &to_ms, &trucks, &stations, &delivered, &id, &limit,
                ],
            )
        })
        .await
    }

    async fn save_run(
        &self,
        run: &NewRun,
        records: &[Variance],
        alerts: &[NewAlert],
        now_ms: i64,
    ) -> Result<RunRow, StoreError> {
        let (run, records, alerts) = (run.clone(), records.to_vec(), alerts.to_vec());
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exceptions = records.iter().filter(|v| v.verdict == Verdict::Exception).count() as i64;
            let previous: Option<i64> = tx
                .query_row("SELECT max(id) FROM recon_runs WHERE date = ?1", [&run.date], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO recon_runs (date, trigger, started_ms, finished_ms, as_of_ms, records, exceptions, alerts_opened, alerts_closed, supersedes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8)",
                params![run.date, run.trigger, run.started_ms, run.finished_ms, run.as_of_ms, records.len() as i64, exceptions, previous],
            )?;
            let id = tx.last_insert_rowid();
            // Append-only: the previous run keeps its records; it is only marked superseded.
            tx.execute(
                "UPDATE recon_runs SET superseded_by = ?1 WHERE date = ?2 AND id <> ?1 AND superseded_by IS NULL",
                params![id, run.date],
            )?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO variances (run_id, date, site, kind, place, stage, product, reference_l, measured_l, variance_l, variance_pct, tolerance_pct, verdict, detail, coverage)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )?;
                for v in &records {
                    st.execute(params![
                        id, v.date, v.site, v.kind.as_str(), v.place, v.stage, v.product, v.reference_l, v.measured_l,
                        v.variance_l, v.variance_pct, v.tolerance_pct, v.verdict.as_str(), v.detail.to_string(),
                        coverage_json(v)
                    ])?;
                }
            }
            let open = open_alerts(&tx, &RUN_KINDS)?;
            let (opened, closed) = apply_sync(&tx, &open, &alerts, Some(&run.date), now_ms, &format!("not found again by run {id}"))?;
            tx.execute("UPDATE recon_runs SET alerts_opened = ?2, alerts_closed = ?3 WHERE id = ?1", params![id, opened, closed])?;
            let row = tx.query_row(&format!("SELECT {RUN_COLS} FROM recon_runs WHERE id = ?1"), [id], run_row)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    async fn runs_page(
        &self,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {RUN_COLS} FROM recon_runs WHERE (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = st
                .query_map(params![limit, before_id], run_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn run_of(&self, date: &str, pick: RunPick) -> Result<Option<RunRow>, StoreError> {
        let date = date.to_owned();
        self.run(move |c| {
            let (cond, arg) = match pick {
                RunPick::Latest => ("1 = 1 OR ?2 IS NULL", None),
                RunPick::Id(id) => ("id = ?2", Some(id)),
                RunPick::AsOf(t) => ("finished_ms <= ?2", Some(t)),
            };
            Ok(c.query_row(
                &format!("SELECT {RUN_COLS} FROM recon_runs WHERE date = ?1 AND ({cond}) ORDER BY id DESC LIMIT 1"),
                params![date, arg],
                run_row,
            )
            .optional()?)
        })
        .await
    }

    async fn run_variances(
        &self,
        run_id: i64,
        kind: Option<&str>,
    ) -> Result<Vec<VarianceRow>, StoreError> {
        let kind = kind.map(str::to_owned);
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {VARIANCE_COLS} FROM variances WHERE run_id = ?1 AND (?2 IS NULL OR kind = ?2) ORDER BY id"
            ))?;
            let rows = st.query_map(params![run_id, kind], variance_row)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn discharge(&self, id: i64) -> Result<Option<DischargeRow>, StoreError> {
        self.run(move |c| discharge_by_id(c, id)).await
    }

    async fn epod(&self, id: i64) -> Result<Option<Epod>, StoreError> {
        self.run(move |c| Ok(epods_where(c, "id = ?1", &[&id])?.into_iter().next()))
            .await
    }

    async fn amend_discharge(
        &self,
        id: i64,
        d: &DischargeRow,
        by: &Amendment,
    ) -> Result<AmendOutcome<DischargeRow>, StoreError> {
        let (d, by) = (d.clone(), by.clone());
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(old) = discharge_by_id(&tx, id)? else {
                return Ok(AmendOutcome::NotFound);
            };
            let version = next_version(&tx, "discharge", id, &serde_json::to_value(&old).unwrap_or_default(), old.d.opened_ms)?;
            let new = DischargeRow { id, ..d };
            tx.execute(
                "UPDATE discharges SET site = ?2, vessel = ?3, parcel = ?4, product = ?5, bl_l = ?6, tanks = ?7, meters = ?8, opened_ms = ?9, closed_ms = ?10, ship_l = ?11 WHERE id = ?1",
                params![id, new.d.site, new.d.vessel, new.d.parcel, new.d.product, new.d.bl_l, json_list(&new.d.tanks), json_list(&new.d.meters), new.d.opened_ms, new.closed_ms, new.ship_l],
            )?;
            insert_version(&tx, "discharge", id, version, &by, &serde_json::to_value(&new).unwrap_or_default())?;
            tx.commit()?;
            Ok(AmendOutcome::Amended(new, version))
        })
        .await
    }

    async fn amend_epod(
        &self,
        id: i64,
        e: &Epod,
        by: &Amendment,
    ) -> Result<AmendOutcome<Epod>, StoreError> {
        let (e, by) = (e.clone(), by.clone());
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(old) = epods_where(&tx, "id = ?1", &[&id])?.into_iter().next() else {
                return Ok(AmendOutcome::NotFound);
            };
            if let Some(other) = epods_where(&tx, "bol = ?1 AND id <> ?2", &[&e.bol, &id])?.into_iter().next() {
                return Ok(AmendOutcome::BolTaken(other.id));
            }
            let posted_ms: i64 = tx.query_row("SELECT posted_ms FROM epods WHERE id = ?1", [id], |r| r.get(0))?;
            let version = next_version(&tx, "epod", id, &serde_json::to_value(&old).unwrap_or_default(), posted_ms)?;
            let new = Epod { id, ..e };
            tx.execute(
                "UPDATE epods SET trip = ?2, bol = ?3, truck = ?4, station = ?5, delivered_ms = ?6, receiver = ?7, lat = ?8, lon = ?9 WHERE id = ?1",
                params![id, new.trip, new.bol, new.truck, new.station, new.delivered_ms, new.receiver, new.lat, new.lon],
            )?;
            tx.execute("DELETE FROM epod_compartments WHERE epod_id = ?1", [id])?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO epod_compartments (epod_id, compartment, product, gross_l, net_l) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for k in &new.compartments {
                    st.execute(params![id, k.compartment, k.product, k.gross_l, k.net_l])?;
                }
            }
            insert_version(&tx, "epod", id, version, &by, &serde_json::to_value(&new).unwrap_or_default())?;
            tx.commit()?;
            Ok(AmendOutcome::Amended(new, version))
        })
        .await
    }

    async fn versions(&self, entity: &str, id: i64) -> Result<Vec<VersionRow>, StoreError> {
        let entity = entity.to_owned();
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT version, actor, role, at_ms, reason, record FROM amendments WHERE entity = ?1 AND entity_id = ?2 ORDER BY version",
            )?;
            let rows = st
                .query_map(params![entity, id], |r| {
                    let record: String = r.get(5)?;
                    Ok(VersionRow {
                        version: r.get(0)?,
                        by: Amendment { actor: r.get(1)?, role: r.get(2)?, at_ms: r.get(3)?, reason: r.get(4)? },
                        record: serde_json::from_str(&record).unwrap_or(serde_json::Value::Null),
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn audit(&self, e: &NewAudit) -> Result<i64, StoreError> {
        let e = e.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO audit_log (actor, role, at_ms, action, target, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![e.actor, e.role, e.at_ms, e.action, e.target, json_text(&e.before), json_text(&e.after)],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    async fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let f = f.clone();
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, actor, role, at_ms, action, target, before, after FROM audit_log
                 WHERE (?1 IS NULL OR at_ms >= ?1) AND (?2 IS NULL OR at_ms < ?2) AND (?3 IS NULL OR actor = ?3)
                   AND (?4 IS NULL OR action = ?4) AND (?5 IS NULL OR target = ?5)
                   AND (?7 IS NULL OR id < ?7)
                 ORDER BY id DESC LIMIT ?6",
            )?;
            let rows = st
                .query_map(params![f.from_ms, f.to_ms, f.actor, f.action, f.target, f.limit, f.before_id], audit_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn last_good(
        &self,
        tag_ids: &[i64],
        after_ms: i64,
    ) -> Result<Vec<GoodSince>, StoreError> {
        let ids = tag_ids.to_vec();
        self.run(move |c| {
            let mut good = c.prepare_cached(
                "SELECT ts_ms FROM readings WHERE tag_id = ?1 AND ts_ms > ?2 AND quality = 0 ORDER BY ts_ms DESC LIMIT 1",
            )?;
            let mut first = c.prepare_cached(
                "SELECT ts_ms FROM readings WHERE tag_id = ?1 AND ts_ms > ?2 ORDER BY ts_ms LIMIT 1",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(GoodSince {
                    last_good_ms: good.query_row(params![id, after_ms], |r| r.get(0)).optional()?,
                    first_ms: first.query_row(params![id, after_ms], |r| r.get(0)).optional()?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn variances(
        &self,
        date: &str,
        kind: Option<&str>,
    ) -> Result<Vec<VarianceRow>, StoreError> {
        let (date, kind) = (date.to_owned(), kind.map(str::to_owned));
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {VARIANCE_COLS} FROM variances WHERE date = ?1 AND (?2 IS NULL OR kind = ?2)
                 AND run_id = (SELECT max(id) FROM recon_runs WHERE date = ?1) ORDER BY id"
            ))?;
            let rows = st
                .query_map(params![date, kind], variance_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn trends(
        &self,
        site: &str,
        places: &[String],
        from_date: &str,
        to_date: &str,
    ) -> Result<Vec<(String, TrendPoint)>, StoreError> {
        let (site, places, from, to) = (
            site.to_owned(),
            places.to_vec(),
            from_date.to_owned(),
            to_date.to_owned(),
        );
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT date, variance_pct, verdict FROM variances WHERE site = ?1 AND kind = 'meter-trend' AND place = ?2
                 AND date >= ?3 AND date < ?4 AND variance_pct IS NOT NULL
                 AND run_id = (SELECT max(r.id) FROM recon_runs r WHERE r.date = variances.date) ORDER BY date",
            )?;
            let mut out = Vec::new();
            for place in &places {
                let rows: Vec<TrendPoint> = st
                    .query_map(params![site, place, from, to], |r| {
                        let date: String = r.get(0)?;
                        let verdict: String = r.get(2)?;
                        Ok(TrendPoint {
                            day: crate::reconcile::model::parse_day(&date).unwrap_or(i64::MIN),
                            pct: r.get(1)?,
                            usable: verdict == "ok",
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                out.extend(rows.into_iter().map(|p| (place.clone(), p)));
            }
            Ok(out)
        })
        .await
    }

    async fn sync_alerts(
        &self,
        kinds: &[&str],
        found: &[NewAlert],
        now_ms: i64,
    ) -> Result<(i64, i64), StoreError> {
        let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        let found = found.to_vec();
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let k: Vec<&str> = kinds.iter().map(String::as_str).collect();
            let open = open_alerts(&tx, &k)?;
            let r = apply_sync(&tx, &open, &found, None, now_ms, "no longer found")?;
            tx.commit()?;
            Ok(r)
        })
        .await
    }

    async fn alerts_page(
        &self,
        state: Option<&str>,
        sites: Option<&[String]>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let state = state.map(str::to_owned);
        // The sites as a JSON array (json_each), so the filter is in the query, before the limit.
        let sites = sites.map(|s| serde_json::Value::from(s.to_vec()).to_string());
        self.run(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ALERT_COLS} FROM alerts WHERE (?1 IS NULL OR state = ?1)
                 AND (?3 IS NULL OR site IN (SELECT value FROM json_each(?3)))
                 AND (?4 IS NULL OR id < ?4)
                 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = st
                .query_map(params![state, limit, sites, before_id], alert_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn dead_letter_count(
        &self,
        site: &str,
        agent: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError> {
        let suffix = format!("/{site}/{agent}/data");
        self.run(move |c| {
            let n = c
                .prepare_cached(
                    "SELECT count(*) FROM dead_letters WHERE received_ms >= ?1 AND received_ms < ?2
                     AND substr(topic, -length(?3)) = ?3",
                )?
                .query_row(params![from_ms, to_ms, suffix], |r| r.get(0))?;
            Ok(n)
        })
        .await
    }

    async fn first_readings(&self, tag_ids: &[i64]) -> Result<Vec<Option<i64>>, StoreError> {
        let ids = tag_ids.to_vec();
        self.run(move |c| {
            let mut st = c.prepare_cached("SELECT min(ts_ms) FROM readings WHERE tag_id = ?1")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(st.query_row([id], |r| r.get::<_, Option<i64>>(0))?);
            }
            Ok(out)
        })
        .await
    }

    async fn counter_marks(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64, i64, f64)>, StoreError> {
        self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT ts_ms, value, counter_kind, counter_value FROM readings
                 WHERE tag_id = ?1 AND ts_ms > ?2 AND ts_ms <= ?3 AND counter_kind IS NOT NULL
                 AND counter_value IS NOT NULL AND quality = 0 AND value IS NOT NULL ORDER BY ts_ms, rowid",
            )?;
            let rows = st
                .query_map(params![tag_id, from_ms, to_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }
}
