//! The reconciliation's storage (both backends, same semantics, one test in `suite.rs`): reads
//! of what ingestion stored (events by kind, a tag's last good value at instants, a GPS track)
//! and the movement records, runs, variance records and alerts.
//!
//! Tables (both backends): `discharges`, `epods` + `epod_compartments` (BOL unique),
//! `recon_runs`, `variances` (kept per run: a re-run of a date supersedes the previous run,
//! whose records stay queryable by run id or `as_of`), `alerts` (open/closed; one open alert
//! per (site, kind, place, date)), `amendments` (every version of an amended ePOD or
//! discharge, the original included) and `audit_log` (every write through the API and CLI).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::reconcile::model::{Epod, NewAlert, TrendPoint, Variance};

/// A stored event (gantry batch record, TLS-350 delivery, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    /// Site.
    pub site: String,
    /// Agent.
    pub agent: String,
    /// Source (device or record name).
    pub source: String,
    /// Kind.
    pub kind: String,
    /// Per-source sequence number.
    pub seq: i64,
    /// Time, ms.
    pub ts_ms: i64,
    /// Fields.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A discharge as posted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDischarge {
    /// Terminal site.
    pub site: String,
    /// Vessel name.
    pub vessel: String,
    /// Parcel / B/L number.
    pub parcel: String,
    /// Product.
    pub product: String,
    /// B/L quantity, litres at the base temperature.
    pub bl_l: f64,
    /// Receiving tanks (site-model ids).
    pub tanks: Vec<String>,
    /// Jetty meters (site-model ids); empty = every jetty meter of the site.
    #[serde(default)]
    pub meters: Vec<String>,
    /// Start of the discharge, ms.
    pub opened_ms: i64,
}

/// A stored discharge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DischargeRow {
    /// Id.
    pub id: i64,
    /// What was posted.
    #[serde(flatten)]
    pub d: NewDischarge,
    /// End of the discharge, ms (None: open).
    pub closed_ms: Option<i64>,
    /// The ship's figure of what it discharged, litres (given at close).
    pub ship_l: Option<f64>,
}

/// What closing a discharge did.
#[derive(Debug, Clone, PartialEq)]
pub enum CloseOutcome {
    /// Closed now.
    Closed(DischargeRow),
    /// No such discharge.
    NotFound,
    /// Already closed (unchanged).
    AlreadyClosed(DischargeRow),
    /// The close time is not after the open time.
    BeforeOpen(DischargeRow),
}

/// What posting an ePOD did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpodOutcome {
    /// Stored, with this id.
    Created(i64),
    /// The same ePOD was already stored (idempotent re-post).
    Same(i64),
    /// Another ePOD for this BOL is stored.
    Conflict(i64),
}

/// A run as started.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Day reconciled (`YYYY-MM-DD`).
    pub date: String,
    /// `schedule`, `api` or `cli`.
    pub trigger: String,
    /// Started, ms.
    pub started_ms: i64,
    /// Finished, ms.
    pub finished_ms: i64,
    /// The instant the run looked from, ms.
    pub as_of_ms: i64,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    /// Id.
    pub id: i64,
    /// Day reconciled.
    pub date: String,
    /// `schedule`, `api` or `cli`.
    pub trigger: String,
    /// Started, ms.
    pub started_ms: i64,
    /// Finished, ms.
    pub finished_ms: i64,
    /// The instant it looked from, ms.
    pub as_of_ms: i64,
    /// Variance records.
    pub records: i64,
    /// Of which exceptions.
    pub exceptions: i64,
    /// Alerts opened.
    pub alerts_opened: i64,
    /// Alerts closed (no longer found).
    pub alerts_closed: i64,
    /// The earlier run of the same date this one replaced as the current figures.
    pub supersedes: Option<i64>,
    /// The later run of the same date that replaced this one (None: the current run).
    pub superseded_by: Option<i64>,
}

/// The actor of version 1 of an amended record (the original post).
pub const ORIGINAL_ACTOR: &str = "original";
/// The reason of version 1.
pub const ORIGINAL_REASON: &str = "as first posted";

/// A tag's readings since an instant (freshness).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GoodSince {
    /// The newest reading of good quality, ms.
    pub last_good_ms: Option<i64>,
    /// The first reading of any quality, ms.
    pub first_ms: Option<i64>,
}

/// Which run of a date to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPick {
    /// The current (newest) run.
    Latest,
    /// This run (must be of the date).
    Id(i64),
    /// The newest run finished at or before this instant, ms (what was known then).
    AsOf(i64),
}

/// Who made a change, when and why (an amendment).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Amendment {
    /// Actor: the token's name (`cli:<user>` from the CLI).
    pub actor: String,
    /// Its role.
    pub role: String,
    /// When, ms (data clock).
    pub at_ms: i64,
    /// Why (mandatory).
    pub reason: String,
}

/// One version of an amended record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRow {
    /// Version number (1 = as first posted).
    pub version: i64,
    /// Who, when, why (version 1: the original post).
    #[serde(flatten)]
    pub by: Amendment,
    /// The record's content in this version.
    pub record: serde_json::Value,
}

/// What amending a record did.
#[derive(Debug, Clone, PartialEq)]
pub enum AmendOutcome<T> {
    /// Amended: the new content and its version number.
    Amended(T, i64),
    /// No such record.
    NotFound,
    /// Another ePOD already holds the BOL the amendment gives.
    BolTaken(i64),
}

/// One entry of the audit log, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAudit {
    /// Actor: the token's name, or `cli:<user>`.
    pub actor: String,
    /// Its role (`cli` for the command line).
    pub role: String,
    /// When, ms (data clock).
    pub at_ms: i64,
    /// What (`discharge.open`, `epod.amend`, `reconciliation.run`, …).
    pub action: String,
    /// On what (`discharge/12`, `epod/BOL-7`, `reconciliation/2025-11-08`, …).
    pub target: String,
    /// Before the change (null: nothing before).
    pub before: serde_json::Value,
    /// After it.
    pub after: serde_json::Value,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    /// Id (in write order).
    pub id: i64,
    /// The entry.
    #[serde(flatten)]
    pub e: NewAudit,
}

/// A filter on the audit log (all given conditions hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// At or after, ms.
    pub from_ms: Option<i64>,
    /// Before, ms.
    pub to_ms: Option<i64>,
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Exactly this action.
    pub action: Option<String>,
    /// Exactly this target.
    pub target: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
    /// Only entries with a smaller id (the paging keyset: older than the previous page).
    pub before_id: Option<i64>,
}

/// Which ePODs a scoped list shows: those of these trucks or at these stations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpodScope {
    /// Trucks (site-model ids).
    pub trucks: Vec<String>,
    /// Stations (site-model ids).
    pub stations: Vec<String>,
}

/// A stored variance record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VarianceRow {
    /// The run that produced it.
    pub run_id: i64,
    /// The record.
    #[serde(flatten)]
    pub v: Variance,
}

/// A stored alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    /// Id.
    pub id: i64,
    /// The alert.
    #[serde(flatten)]
    pub a: NewAlert,
    /// `open` or `closed`.
    pub state: String,
    /// Opened, ms.
    pub opened_ms: i64,
    /// Closed, ms.
    pub closed_ms: Option<i64>,
    /// Why it was closed.
    pub closed_reason: Option<String>,
}

/// Alert kinds that continue across days: while an alert of the kind is open for a place, the
/// same finding on a later day does not open another.
pub const CONTINUING_KINDS: [&str; 2] = ["meter-drift", "stale-tag"];

/// Alerts to open and to close so that the open alerts in a scope are exactly `found`.
/// `open` is every open alert of the scope's kinds (all dates); with `date` set, only alerts of
/// that date are in scope (a reconciliation run), without it all dates are (stale tags).
pub fn plan_sync<'a>(
    open: &[AlertRow],
    found: &'a [NewAlert],
    date: Option<&str>,
) -> (Vec<&'a NewAlert>, Vec<i64>) {
    let same_key =
        |a: &NewAlert, b: &NewAlert| a.site == b.site && a.kind == b.kind && a.place == b.place;
    let mut to_open = Vec::new();
    for f in found {
        let exists = open.iter().any(|o| {
            same_key(&o.a, f)
                && (date.is_none()
                    || o.a.date == f.date
                    || (CONTINUING_KINDS.contains(&f.kind.as_str()) && o.a.date < f.date))
        });
        let dup = to_open
            .iter()
            .any(|t: &&NewAlert| same_key(t, f) && t.date == f.date);
        if !exists && !dup {
            to_open.push(f);
        }
    }
    let to_close = open
        .iter()
        .filter(|o| date.is_none_or(|d| o.a.date == d))
        .filter(|o| !found.iter().any(|f| same_key(&o.a, f)))
        .map(|o| o.id)
        .collect();
    (to_open, to_close)
}

/// Reconciliation storage.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Events of `kind` at `site` in `[from_ms, to_ms)`, by time.
    async fn events(
        &self,
        site: &str,
        kind: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<EventRow>, StoreError>;
    /// For each `(tag, at)`: the last good numeric reading with `at − max_age_ms < ts ≤ at`.
    async fn values_at(
        &self,
        probes: &[(i64, i64)],
        max_age_ms: i64,
    ) -> Result<Vec<Option<(i64, f64)>>, StoreError>;
    /// Good numeric readings of a tag in `[from_ms, to_ms]`, by time.
    async fn track(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64)>, StoreError>;
    /// Open a discharge.
    async fn open_discharge(&self, d: &NewDischarge) -> Result<DischargeRow, StoreError>;
    /// Close a discharge.
    async fn close_discharge(
        &self,
        id: i64,
        closed_ms: i64,
        ship_l: Option<f64>,
    ) -> Result<CloseOutcome, StoreError>;
    /// One page of the discharges overlapping `[from_ms, to_ms)` (open ones included) of
    /// `sites` (None: every site), by open time and id, strictly after `after` (opened, id).
    async fn discharges_page(
        &self,
        from_ms: i64,
        to_ms: i64,
        sites: Option<&[String]>,
        after: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<DischargeRow>, StoreError>;
    /// Discharges overlapping `[from_ms, to_ms)` (open ones included), by open time.
    async fn discharges(&self, from_ms: i64, to_ms: i64) -> Result<Vec<DischargeRow>, StoreError> {
        self.discharges_page(from_ms, to_ms, None, None, i64::MAX)
            .await
    }
    /// Store an ePOD (validated by the caller).
    async fn post_epod(&self, e: &Epod, posted_ms: i64) -> Result<EpodOutcome, StoreError>;
    /// The ePODs of these BOLs.
    async fn epods_for(&self, bols: &[String]) -> Result<Vec<Epod>, StoreError>;
    /// One page of the ePODs delivered in `[from_ms, to_ms)` (of `scope`'s trucks or stations;
    /// None: all), by delivery time and id, strictly after `after` (delivered, id).
    async fn epods_page(
        &self,
        from_ms: i64,
        to_ms: i64,
        scope: Option<&EpodScope>,
        after: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<Epod>, StoreError>;
    /// ePODs delivered in `[from_ms, to_ms)`, by delivery time.
    async fn epods(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Epod>, StoreError> {
        self.epods_page(from_ms, to_ms, None, None, i64::MAX).await
    }
    /// Save a run of `date`: it supersedes the date's current run (whose records stay, under
    /// its run id), and the date's reconciliation alerts are synchronised with `alerts`
    /// ([`plan_sync`]) at `now_ms`; one transaction.
    async fn save_run(
        &self,
        run: &NewRun,
        records: &[Variance],
        alerts: &[NewAlert],
        now_ms: i64,
    ) -> Result<RunRow, StoreError>;
    /// One page of runs, newest first, with ids below `before_id`.
    async fn runs_page(
        &self,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError>;
    /// The newest runs first.
    async fn runs(&self, limit: i64) -> Result<Vec<RunRow>, StoreError> {
        self.runs_page(None, limit).await
    }
    /// One run of a date (None: no such run of the date).
    async fn run_of(&self, date: &str, pick: RunPick) -> Result<Option<RunRow>, StoreError>;
    /// The variance records of one run (optionally of one kind).
    async fn run_variances(
        &self,
        run_id: i64,
        kind: Option<&str>,
    ) -> Result<Vec<VarianceRow>, StoreError>;
    /// One discharge.
    async fn discharge(&self, id: i64) -> Result<Option<DischargeRow>, StoreError>;
    /// One ePOD.
    async fn epod(&self, id: i64) -> Result<Option<Epod>, StoreError>;
    /// Replace a discharge's content with `d` (validated by the caller), keeping every version.
    async fn amend_discharge(
        &self,
        id: i64,
        d: &DischargeRow,
        by: &Amendment,
    ) -> Result<AmendOutcome<DischargeRow>, StoreError>;
    /// Replace an ePOD's content with `e` (validated by the caller), keeping every version.
    async fn amend_epod(
        &self,
        id: i64,
        e: &Epod,
        by: &Amendment,
    ) -> Result<AmendOutcome<Epod>, StoreError>;
    /// The versions of an amended record (`entity` `epod` or `discharge`), oldest first; empty
    /// for a record never amended.
    async fn versions(&self, entity: &str, id: i64) -> Result<Vec<VersionRow>, StoreError>;
    /// Append to the audit log.
    async fn audit(&self, e: &NewAudit) -> Result<i64, StoreError>;
    /// Read the audit log, newest first.
    async fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError>;
    /// For each tag, its readings after `after_ms`: the time of the newest of good quality and
    /// the time of the first of any quality (None: none).
    async fn last_good(&self, tag_ids: &[i64], after_ms: i64)
        -> Result<Vec<GoodSince>, StoreError>;
    /// The variance records of a date's current run (optionally of one kind).
    async fn variances(
        &self,
        date: &str,
        kind: Option<&str>,
    ) -> Result<Vec<VarianceRow>, StoreError>;
    /// The meter-trend points of these places at a site on dates in `[from, to)`, by place.
    async fn trends(
        &self,
        site: &str,
        places: &[String],
        from_date: &str,
        to_date: &str,
    ) -> Result<Vec<(String, TrendPoint)>, StoreError>;
    /// Make the open alerts of `kinds` exactly `found` (all dates); returns (opened, closed).
    async fn sync_alerts(
        &self,
        kinds: &[&str],
        found: &[NewAlert],
        now_ms: i64,
    ) -> Result<(i64, i64), StoreError>;
    /// One page of alerts (`open`, `closed` or all) of these sites (None: every site), newest
    /// first, with ids below `before_id`.
    async fn alerts_page(
        &self,
        state: Option<&str>,
        sites: Option<&[String]>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AlertRow>, StoreError>;
    /// Alerts (`open`, `closed` or all) of these sites (None: every site), newest first.
    async fn alerts(
        &self,
        state: Option<&str>,
        sites: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        self.alerts_page(state, sites, None, limit).await
    }
    /// Dead-lettered data batches (topic `…/{site}/{agent}/data`) received in
    /// `[from_ms, to_ms)` (the reconciliation's coverage).
    async fn dead_letter_count(
        &self,
        site: &str,
        agent: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError>;
    /// The time of each tag's first stored reading (any quality; None: none), in input order.
    async fn first_readings(&self, tag_ids: &[i64]) -> Result<Vec<Option<i64>>, StoreError>;
    /// A tag's good readings in `(from_ms, to_ms]` carrying a totalizer marker, by time:
    /// `(ts_ms, value, counter_kind, counter_value)` (0 = rollover with its delta, 1 = reset with
    /// the total before it).
    async fn counter_marks(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, f64, i64, f64)>, StoreError>;
}

/// The reconciliation alert kinds (everything a run raises).
pub const RUN_KINDS: [&str; 12] = [
    "tank-balance",
    "chain-variance",
    "parcel-variance",
    "transit-loss",
    "epod-missing",
    "meter-check",
    "meter-drift",
    "unscheduled-stop",
    "no-data",
    "unknown-meter",
    "station-gauge-variance",
    "data-missing",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str, place: &str, date: &str) -> NewAlert {
        NewAlert {
            kind: kind.into(),
            site: "s".into(),
            place: place.into(),
            date: date.into(),
            message: String::new(),
            detail: serde_json::Value::Null,
        }
    }

    fn row(id: i64, a: NewAlert) -> AlertRow {
        AlertRow {
            id,
            a,
            state: "open".into(),
            opened_ms: 0,
            closed_ms: None,
            closed_reason: None,
        }
    }

    #[test]
    fn a_rerun_keeps_what_it_finds_again_and_closes_the_rest() {
        let open = vec![
            row(1, alert("tank-balance", "T1", "2025-11-08")),
            row(2, alert("transit-loss", "X/B", "2025-11-08")),
            row(3, alert("tank-balance", "T1", "2025-11-07")),
        ];
        let found = vec![
            alert("tank-balance", "T1", "2025-11-08"),
            alert("epod-missing", "Y/C", "2025-11-08"),
        ];
        let (o, c) = plan_sync(&open, &found, Some("2025-11-08"));
        assert_eq!(o, vec![&found[1]]);
        assert_eq!(c, vec![2]); // the 2025-11-07 alert is another date's
    }

    #[test]
    fn a_continuing_drift_opens_once() {
        let open = vec![row(1, alert("meter-drift", "M2", "2025-11-08"))];
        let found = vec![alert("meter-drift", "M2", "2025-11-09")];
        let (o, c) = plan_sync(&open, &found, Some("2025-11-09"));
        assert!(o.is_empty());
        assert!(c.is_empty());
    }

    #[test]
    fn stale_tags_sync_over_all_dates() {
        let open = vec![
            row(1, alert("stale-tag", "a/t1", "2025-11-08")),
            row(2, alert("stale-tag", "a/t2", "2025-11-08")),
        ];
        let found = vec![
            alert("stale-tag", "a/t1", "2025-11-09"),
            alert("stale-tag", "a/t3", "2025-11-09"),
        ];
        let (o, c) = plan_sync(&open, &found, None);
        assert_eq!(o, vec![&found[1]]);
        assert_eq!(c, vec![2]);
    }
}
