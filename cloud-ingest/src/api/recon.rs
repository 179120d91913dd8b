//! Movements, reconciliation and alerts: `/api/v1/discharges`, `/api/v1/epods`,
//! `/api/v1/reconciliation/...`, `/api/v1/alerts`. Bodies are JSON; every problem with a body is
//! reported at once (422, `errors`).

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::audit::{self, json};
use super::auth::Principal;
use super::page::{self, lists, PageReq};
use super::params::{self, Query};
use super::problem::Problem;
use super::routes::{call, data, data_with_status};
use super::ApiState;
use crate::reconcile::model::{day_name, Epod, EpodCompartment, RecordKind};
use crate::store::ledger::{
    CloseOutcome, DischargeRow, EpodOutcome, EpodScope, NewDischarge, RunPick, VarianceRow,
};
use flowsquare_service::clock::now_ms;

/// A time in a body: RFC 3339 text or epoch milliseconds (anything else is named as wrong).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum When {
    Ms(i64),
    Text(String),
    Other(serde_json::Value),
}

/// An event time of a body, range-checked like every time the API takes ([`params::event_ms`]).
pub(super) fn when(field: &str, w: &When, errors: &mut Vec<String>) -> i64 {
    let r = match w {
        When::Ms(ms) => params::event_ms(field, *ms, now_ms()),
        When::Text(t) => params::event_text(field, t, now_ms()),
        When::Other(v) => Err(format!(
            "{field}: {v} is neither an RFC 3339 time nor integer epoch milliseconds"
        )),
    };
    r.unwrap_or_else(|e| {
        errors.push(e);
        0
    })
}

pub(super) fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::invalid_body(vec![format!("body: {e}")]))
}

fn text(field: &str, v: &str, errors: &mut Vec<String>) {
    if v.trim().is_empty() {
        errors.push(format!("{field}: must not be empty"));
    } else if v.len() > 200 {
        errors.push(format!("{field}: at most 200 bytes"));
    }
}

pub(super) fn positive(field: &str, v: f64, errors: &mut Vec<String>) {
    if !(v.is_finite() && v > 0.0) {
        errors.push(format!("{field}: {v} must be a positive number of litres"));
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DischargeBody {
    site: String,
    vessel: String,
    parcel: String,
    product: String,
    bl_l: f64,
    tanks: Vec<String>,
    #[serde(default)]
    meters: Vec<String>,
    opened_at: When,
}

/// Validate a discharge body; every problem is listed.
pub(super) fn validate_discharge(
    b: DischargeBody,
    s: &ApiState,
) -> Result<NewDischarge, Vec<String>> {
    let mut e = Vec::new();
    for (f, v) in [
        ("site", &b.site),
        ("vessel", &b.vessel),
        ("parcel", &b.parcel),
        ("product", &b.product),
    ] {
        text(f, v, &mut e);
    }
    positive("bl_l", b.bl_l, &mut e);
    if b.tanks.is_empty() {
        e.push("tanks: name at least one receiving tank".into());
    }
    let opened_ms = when("opened_at", &b.opened_at, &mut e);
    if let Some(r) = &s.reconciler {
        for t in &b.tanks {
            match r.cfg.tanks.iter().find(|k| &k.id == t) {
                None => e.push(format!("tanks: {t:?} is not a tank of the site model")),
                Some(k) if k.site != b.site => e.push(format!(
                    "tanks: {t:?} is at site {:?}, not {:?}",
                    k.site, b.site
                )),
                Some(k) if k.product != b.product => e.push(format!(
                    "tanks: {t:?} holds {:?}, not {:?}",
                    k.product, b.product
                )),
                Some(_) => {}
            }
        }
        for m in &b.meters {
            if !r
                .cfg
                .meters
                .iter()
                .any(|k| &k.id == m && k.role == crate::reconcile::model::MeterRole::Jetty)
            {
                e.push(format!(
                    "meters: {m:?} is not a jetty meter of the site model"
                ));
            }
        }
    }
    if !e.is_empty() {
        return Err(e);
    }
    Ok(NewDischarge {
        site: b.site,
        vessel: b.vessel,
        parcel: b.parcel,
        product: b.product,
        bl_l: b.bl_l,
        tanks: b.tanks,
        meters: b.meters,
        opened_ms,
    })
}

/// A discharge of the token's sites; 404 for one of another site, as for none.
pub(super) async fn visible_discharge(
    s: &ApiState,
    who: &Principal,
    id: i64,
) -> Result<DischargeRow, Problem> {
    match call(s.store.ledger().discharge(id)).await? {
        Some(d) if who.scope.allows(&d.d.site) => Ok(d),
        Some(_) => Err(who.scope.hidden(format!("no discharge {id}"))),
        None => Err(Problem::not_found(format!("no discharge {id}"))),
    }
}

/// May this token see this ePOD (`scope.rs`: its truck's or station's site)?
pub(super) fn sees_epod(s: &ApiState, who: &Principal, e: &Epod) -> bool {
    who.scope
        .allows_epod(s.reconciler.as_ref().map(|r| &r.cfg), e)
}

/// An ePOD of the token's sites; 404 for another, as for none.
pub(super) async fn visible_epod(s: &ApiState, who: &Principal, id: i64) -> Result<Epod, Problem> {
    match call(s.store.ledger().epod(id)).await? {
        Some(e) if sees_epod(s, who, &e) => Ok(e),
        Some(_) => Err(who.scope.hidden(format!("no ePOD {id}"))),
        None => Err(Problem::not_found(format!("no ePOD {id}"))),
    }
}

/// 403 when a scoped token posts or amends an ePOD of neither its trucks nor its stations.
pub(super) fn check_epod_write(s: &ApiState, who: &Principal, e: &Epod) -> Result<(), Problem> {
    if sees_epod(s, who, e) {
        Ok(())
    } else {
        tracing::warn!(token = %who.name, "api request refused: ePOD outside the token's sites");
        Err(Problem::forbidden(format!(
            "this token may not write ePODs of truck {:?} at station {:?} (not of its sites)",
            e.truck, e.station
        )))
    }
}

/// `POST /api/v1/discharges`: open a discharge.
pub(super) async fn open_discharge(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let b: DischargeBody = parse_body(&body)?;
    // The site first: a token of other sites learns nothing of this site's model.
    who.scope.check_write(&b.site)?;
    let d = validate_discharge(b, &s).map_err(Problem::invalid_body)?;
    let row = call(s.store.ledger().open_discharge(&d)).await?;
    audit::record(
        &s,
        &who,
        "discharge.open",
        format!("discharge/{}", row.id),
        serde_json::Value::Null,
        json(&row),
    )
    .await?;
    Ok(data_with_status(StatusCode::CREATED, &[row]))
}

/// `GET /api/v1/discharges?from=&to=&limit=&cursor=` (of the token's sites, in the SQL), by
/// open time.
pub(super) async fn list_discharges(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["from", "to", "limit", "cursor"])?;
    let p: PageReq<(i64, i64)> = lists::DISCHARGES.parse(&q)?;
    let (from, to) = params::range(&q)?;
    let sites = who.scope.list();
    let rows =
        call(
            s.store
                .ledger()
                .discharges_page(from, to, sites.as_deref(), p.after, p.fetch()),
        )
        .await?;
    let (rows, next) = p.cut(rows, |d| (d.d.opened_ms, d.id));
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    closed_at: When,
    #[serde(default)]
    ship_l: Option<f64>,
}

/// `POST /api/v1/discharges/{id}/close`.
pub(super) async fn close_discharge(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let id = id_param(id, "discharge")?;
    let b: CloseBody = parse_body(&body)?;
    let mut e = Vec::new();
    let closed_ms = when("closed_at", &b.closed_at, &mut e);
    if let Some(x) = b.ship_l {
        positive("ship_l", x, &mut e);
    }
    if !e.is_empty() {
        return Err(Problem::invalid_body(e));
    }
    visible_discharge(&s, &who, id).await?;
    match call(s.store.ledger().close_discharge(id, closed_ms, b.ship_l)).await? {
        CloseOutcome::Closed(row) => {
            let before = DischargeRow {
                closed_ms: None,
                ship_l: None,
                ..row.clone()
            };
            audit::record(
                &s,
                &who,
                "discharge.close",
                format!("discharge/{id}"),
                json(&before),
                json(&row),
            )
            .await?;
            Ok(data(&[row]))
        }
        CloseOutcome::NotFound => Err(Problem::not_found(format!("no discharge {id}"))),
        CloseOutcome::AlreadyClosed(row) => Err(Problem::conflict(format!(
            "discharge {id} was already closed at {} ms",
            row.closed_ms.unwrap_or(0)
        ))),
        CloseOutcome::BeforeOpen(row) => Err(Problem::invalid_body(vec![format!(
            "closed_at: {closed_ms} ms is not after the discharge's opening ({} ms)",
            row.d.opened_ms
        )])),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompartmentBody {
    compartment: i64,
    product: String,
    gross_l: f64,
    #[serde(default)]
    net_l: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EpodBody {
    trip: String,
    bol: String,
    truck: String,
    station: String,
    delivered_at: When,
    receiver: String,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    compartments: Vec<CompartmentBody>,
}

/// Validate an ePOD body; every problem is listed.
pub(super) fn validate_epod(b: EpodBody, s: &ApiState) -> Result<Epod, Vec<String>> {
    let mut e = Vec::new();
    for (f, v) in [
        ("trip", &b.trip),
        ("bol", &b.bol),
        ("truck", &b.truck),
        ("station", &b.station),
        ("receiver", &b.receiver),
    ] {
        text(f, v, &mut e);
    }
    let delivered_ms = when("delivered_at", &b.delivered_at, &mut e);
    if delivered_ms > now_ms() + 3_600_000 {
        e.push("delivered_at: more than an hour in the future".into());
    }
    match (b.lat, b.lon) {
        (Some(la), Some(lo)) => {
            if !(-90.0..=90.0).contains(&la) {
                e.push(format!("lat: {la} is not a latitude"));
            }
            if !(-180.0..=180.0).contains(&lo) {
                e.push(format!("lon: {lo} is not a longitude"));
            }
        }
        (None, None) => {}
        _ => e.push("lat, lon: give both or neither".into()),
    }
    if b.compartments.is_empty() {
        e.push("compartments: at least one".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in b.compartments.iter().enumerate() {
        if !seen.insert(c.compartment) {
            e.push(format!(
                "compartments[{i}]: compartment {} given twice",
                c.compartment
            ));
        }
        if !(1..=99).contains(&c.compartment) {
            e.push(format!(
                "compartments[{i}].compartment: {} is not 1–99",
                c.compartment
            ));
        }
        text(&format!("compartments[{i}].product"), &c.product, &mut e);
        positive(&format!("compartments[{i}].gross_l"), c.gross_l, &mut e);
        if let Some(n) = c.net_l {
            positive(&format!("compartments[{i}].net_l"), n, &mut e);
            if n.is_finite() && c.gross_l.is_finite() && (n - c.gross_l).abs() > 0.1 * c.gross_l {
                e.push(format!(
                    "compartments[{i}]: net_l {n} is more than 10 % from gross_l {}",
                    c.gross_l
                ));
            }
        }
    }
    if let Some(r) = &s.reconciler {
        if let Some((la, lo)) = b.lat.zip(b.lon) {
            if let Some(st) = r.cfg.stations.iter().find(|p| p.id == b.station) {
                let d = crate::analytics::stops::distance_m(la, lo, st.lat, st.lon);
                if d > st.radius_m * 10.0 {
                    e.push(format!("lat, lon: {d:.0} m from station {:?}, which is farther than 10 × its radius", b.station));
                }
            }
        }
        if !r.cfg.stations.is_empty() && !r.cfg.stations.iter().any(|p| p.id == b.station) {
            e.push(format!(
                "station: {:?} is not a station of the site model",
                b.station
            ));
        }
    }
    if !e.is_empty() {
        return Err(e);
    }
    Ok(Epod {
        id: 0,
        trip: b.trip,
        bol: b.bol,
        truck: b.truck,
        station: b.station,
        delivered_ms,
        receiver: b.receiver,
        lat: b.lat,
        lon: b.lon,
        compartments: b
            .compartments
            .into_iter()
            .map(|c| EpodCompartment {
                compartment: c.compartment,
                product: c.product,
                gross_l: c.gross_l,
                net_l: c.net_l,
            })
            .collect(),
    })
}

/// `POST /api/v1/epods`: 201 stored, 200 the same ePOD again, 409 another for the BOL, 422.
pub(super) async fn post_epod(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let b: EpodBody = parse_body(&body)?;
    let mut epod = validate_epod(b, &s).map_err(Problem::invalid_body)?;
    check_epod_write(&s, &who, &epod)?;
    match call(s.store.ledger().post_epod(&epod, now_ms())).await? {
        EpodOutcome::Created(id) => {
            epod.id = id;
            audit::record(
                &s,
                &who,
                "epod.post",
                format!("epod/{id}"),
                serde_json::Value::Null,
                json(&epod),
            )
            .await?;
            Ok(data_with_status(StatusCode::CREATED, &[epod]))
        }
        EpodOutcome::Same(id) => {
            epod.id = id;
            Ok(data(&[epod]))
        }
        EpodOutcome::Conflict(id) => Err(Problem::conflict(format!(
            "ePOD {id} for BOL {:?} is already stored with other content; to correct it, amend it: \
             POST /api/v1/epods/{id}/amend with the corrected fields and a `reason` (the original is kept)",
            epod.bol
        ))),
    }
}

/// The ePODs a scoped token sees, as a filter of the SQL ([`EpodScope`]: the trucks of its
/// sites and the stations whose gauge site is one of them; see `scope.rs`). `None` inside: every
/// ePOD; `None` outside: none (a scoped token without a site model).
fn epod_scope(s: &ApiState, who: &Principal) -> Option<Option<EpodScope>> {
    if who.scope.is_all() {
        return Some(None);
    }
    let m = &s.reconciler.as_ref()?.cfg;
    Some(Some(EpodScope {
        trucks: m
            .trucks
            .iter()
            .filter(|t| who.scope.allows(&t.site))
            .map(|t| t.id.clone())
            .collect(),
        stations: m
            .stations
            .iter()
            .filter(|st| {
                st.gauge_site
                    .as_deref()
                    .is_some_and(|g| who.scope.allows(g))
            })
            .map(|st| st.id.clone())
            .collect(),
    }))
}

/// `GET /api/v1/epods?from=&to=&limit=&cursor=` (by delivery time; the token's in the SQL).
pub(super) async fn list_epods(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["from", "to", "limit", "cursor"])?;
    let p: PageReq<(i64, i64)> = lists::EPODS.parse(&q)?;
    let (from, to) = params::range(&q)?;
    let Some(scope) = epod_scope(&s, &who) else {
        return Ok(page::answer::<Epod>(&[], None, uri.path(), raw.as_deref()));
    };
    let rows = call(
        s.store
            .ledger()
            .epods_page(from, to, scope.as_ref(), p.after, p.fetch()),
    )
    .await?;
    let (rows, next) = p.cut(rows, |e| (e.delivered_ms, e.id));
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}

/// `GET /api/v1/reconciliation/runs?limit=&cursor=`, newest first. A run covers every site:
/// for a token of some sites its counts (records, exceptions, alerts), which add up every
/// site's, are null.
pub(super) async fn runs(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["limit", "cursor"])?;
    let p: PageReq<i64> = lists::RUNS.parse(&q)?;
    let rows = call(s.store.ledger().runs_page(p.after, p.fetch())).await?;
    let (rows, next) = p.cut(rows, |r| r.id);
    if who.scope.is_all() {
        return Ok(page::answer(&rows, next, uri.path(), raw.as_deref()));
    }
    let redacted: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut v = json(r);
            if let serde_json::Value::Object(o) = &mut v {
                for k in ["records", "exceptions", "alerts_opened", "alerts_closed"] {
                    o.insert(k.into(), serde_json::Value::Null);
                }
            }
            v
        })
        .collect();
    Ok(page::answer(&redacted, next, uri.path(), raw.as_deref()))
}

/// `POST /api/v1/reconciliation/run?date=YYYY-MM-DD` (operator): reconcile a day now.
pub(super) async fn run_now(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["date"])?;
    let date = q.req("date")?;
    let day = params::day("date", date)?;
    who.scope.require_all("a reconciliation run")?;
    let Some(r) = s.reconciler.clone() else {
        return Err(Problem::conflict(
            "no [reconcile] site model is configured (tanks, meters): nothing to reconcile",
        ));
    };
    let store = s.store.clone();
    let before = call(s.store.ledger().run_of(&day_name(day), RunPick::Latest)).await?;
    let report = tokio::time::timeout(std::time::Duration::from_secs(600), async move {
        r.run_day(&*store, day, now_ms(), "api").await
    })
    .await
    .map_err(|_| Problem::unavailable("the reconciliation did not finish within 600 s"))?
    .map_err(|e| match e {
        crate::reconcile::ReconcileError::Store(e) => Problem::from(e),
        other => Problem::internal(other.to_string()),
    })?;
    audit::record(
        &s,
        &who,
        "reconciliation.run",
        format!("reconciliation/{}", report.run.date),
        json(&before),
        json(&report.run),
    )
    .await?;
    Ok(data(&[report.run]))
}

/// `run=ID` or `as_of=TIME` (not both); neither: the current run.
fn run_pick(q: &Query) -> Result<RunPick, Problem> {
    match (q.opt("run")?, q.opt("as_of")?) {
        (Some(_), Some(_)) => Err(Problem::bad_parameter(
            "as_of",
            "give `run` or `as_of`, not both",
        )),
        (Some(r), None) => r.parse::<i64>().map(RunPick::Id).map_err(|_| {
            Problem::bad_parameter("run", format!("{r:?} is not a run id (an integer)"))
        }),
        (None, Some(t)) => Ok(RunPick::AsOf(params::time_ms("as_of", t)?)),
        (None, None) => Ok(RunPick::Latest),
    }
}

/// The integer `{id}` of a path.
pub(super) fn id_param(p: Result<Path<String>, PathRejection>, what: &str) -> Result<i64, Problem> {
    match p {
        Ok(Path(id)) => id.parse::<i64>().map_err(|_| {
            Problem::bad_parameter("id", format!("{id:?} is not a {what} id (an integer)"))
        }),
        Err(e) => Err(Problem::bad_parameter("id", e.body_text())),
    }
}

/// The `{date}` of a reconciliation path, with `.csv` meaning CSV.
fn date_param(p: Result<Path<String>, PathRejection>) -> Result<(String, bool), Problem> {
    let raw = match p {
        Ok(Path(d)) => d,
        Err(e) => return Err(Problem::bad_parameter("date", e.body_text())),
    };
    let (d, csv) = match raw.strip_suffix(".csv") {
        Some(d) => (d.to_owned(), true),
        None => (raw, false),
    };
    let day = params::day("date", &d)?;
    Ok((day_name(day), csv))
}

fn wants_csv(q: &Query, suffix: bool) -> Result<bool, Problem> {
    match q.opt("format")? {
        None => Ok(suffix),
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(o) => Err(Problem::bad_parameter(
            "format",
            format!("{o:?}: use csv or json"),
        )),
    }
}

/// CSV of variance records (RFC 4180; the coverage as `coverage_pct` (the weakest input's share
/// of its expected readings), `data_complete` and `missing` (what is missing, `; `-separated),
/// empty for records without tag inputs; `detail` as JSON in the last column).
pub fn csv(rows: &[VarianceRow]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }
    let num = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v}"));
    let mut out = String::from("date,site,kind,place,stage,product,reference_l,measured_l,variance_l,variance_pct,tolerance_pct,verdict,run_id,coverage_pct,data_complete,missing,detail\r\n");
    for r in rows {
        let v = &r.v;
        out.push_str(
            &[
                field(&v.date),
                field(&v.site),
                v.kind.as_str().to_owned(),
                field(&v.place),
                field(&v.stage),
                field(&v.product),
                num(v.reference_l),
                num(v.measured_l),
                num(v.variance_l),
                num(v.variance_pct),
                format!("{}", v.tolerance_pct),
                v.verdict.as_str().to_owned(),
                r.run_id.to_string(),
                num(v
                    .coverage
                    .as_ref()
                    .map(|c| (c.ratio * 10_000.0).round() / 100.0)),
                v.coverage
                    .as_ref()
                    .map_or(String::new(), |c| c.complete.to_string()),
                field(
                    &v.coverage
                        .as_ref()
                        .map_or(String::new(), |c| c.missing.join("; ")),
                ),
                field(&v.detail.to_string()),
            ]
            .join(","),
        );
        out.push_str("\r\n");
    }
    out
}

/// May this token see this variance record? Its site in scope, or, for a trip record, the site
/// of the station it delivered to (its gauge site) or of its truck (the fleet's site): a trip
/// touches the terminal, the truck's company and the station (`scope.rs`).
fn sees_record(s: &ApiState, who: &Principal, r: &VarianceRow) -> bool {
    if who.scope.allows(&r.v.site) {
        return true;
    }
    if r.v.kind != RecordKind::Trip {
        return false;
    }
    let Some(m) = s.reconciler.as_ref().map(|r| &r.cfg) else {
        return false;
    };
    let field = |k: &str| r.v.detail.get(k).and_then(serde_json::Value::as_str);
    let by_station = field("station").is_some_and(|id| {
        m.stations.iter().any(|st| {
            st.id == id
                && st
                    .gauge_site
                    .as_deref()
                    .is_some_and(|g| who.scope.allows(g))
        })
    });
    let by_truck = field("truck").is_some_and(|id| {
        m.trucks
            .iter()
            .any(|t| t.id == id && who.scope.allows(&t.site))
    });
    by_station || by_truck
}

/// The variance records of a date's run (of `kinds`, of the token's sites), a page of them:
/// a run's records never change, so the cursor is (run id, position) and the next pages read
/// the same run even when a newer one has been saved meanwhile.
async fn records(
    s: &ApiState,
    who: &Principal,
    (path, raw): (&str, Option<&str>),
    date: Result<Path<String>, PathRejection>,
    kinds: &[RecordKind],
    name: &str,
) -> Result<Response, Problem> {
    let q = Query::parse(raw, &["format", "run", "as_of", "limit", "cursor"])?;
    let p: PageReq<(i64, i64)> = lists::RECORDS.parse(&q)?;
    let (date, suffix) = date_param(date)?;
    let csv_out = wants_csv(&q, suffix)?;
    let pick = match p.after {
        Some((run, _)) => RunPick::Id(run),
        None => run_pick(&q)?,
    };
    let run = call(s.store.ledger().run_of(&date, pick)).await?;
    let all = match &run {
        Some(run) => call(s.store.ledger().run_variances(run.id, None)).await?,
        None if pick == RunPick::Latest => Vec::new(),
        None => {
            return Err(Problem::not_found(match pick {
                RunPick::Id(id) => format!(
                    "no run {id} of {date}; the runs are listed at /api/v1/reconciliation/runs"
                ),
                _ => format!("no run of {date} had finished at that `as_of`"),
            }))
        }
    };
    let skip = p
        .after
        .map_or(0, |(_, n)| usize::try_from(n).unwrap_or(usize::MAX));
    let rows: Vec<(i64, VarianceRow)> = all
        .into_iter()
        .filter(|r| kinds.contains(&r.v.kind) && sees_record(s, who, r))
        .enumerate()
        .skip(skip)
        .map(|(i, r)| (i as i64 + 1, r))
        .collect();
    let run_id = run.as_ref().map_or(0, |r| r.id);
    let (rows, next) = p.cut(rows, |(n, _)| (run_id, *n));
    let rows: Vec<VarianceRow> = rows.into_iter().map(|(_, r)| r).collect();
    if !csv_out {
        return Ok(page::answer(&rows, next, path, raw));
    }
    let mut res = (StatusCode::OK, csv(&rows)).into_response();
    page::link(&mut res, next.as_deref(), path, raw);
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"reconciliation-{date}-{name}.csv\""
    )) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// `GET /api/v1/reconciliation/{date}`: the chain per product and the parcels (`.csv` or `?format=csv`).
pub(super) async fn chain(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    date: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    records(
        &s,
        &who,
        (uri.path(), raw.as_deref()),
        date,
        &[RecordKind::Chain, RecordKind::Parcel],
        "chain",
    )
    .await
}

/// `GET /api/v1/reconciliation/{date}/tanks`.
pub(super) async fn tanks(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    date: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    records(
        &s,
        &who,
        (uri.path(), raw.as_deref()),
        date,
        &[RecordKind::Tank],
        "tanks",
    )
    .await
}

/// `GET /api/v1/reconciliation/{date}/trips`.
pub(super) async fn trips(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    date: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    records(
        &s,
        &who,
        (uri.path(), raw.as_deref()),
        date,
        &[RecordKind::Trip],
        "trips",
    )
    .await
}

/// `GET /api/v1/reconciliation/{date}/meters`.
pub(super) async fn meters(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    date: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    records(
        &s,
        &who,
        (uri.path(), raw.as_deref()),
        date,
        &[RecordKind::MeterCheck, RecordKind::MeterTrend],
        "meters",
    )
    .await
}

/// `GET /api/v1/alerts?state=open|closed&limit=&cursor=`, newest first (the token's sites in
/// the SQL, before the limit).
pub(super) async fn alerts(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["state", "limit", "cursor"])?;
    let p: PageReq<i64> = lists::ALERTS.parse(&q)?;
    let state = match q.opt("state")? {
        None => None,
        Some(v @ ("open" | "closed")) => Some(v),
        Some(o) => {
            return Err(Problem::bad_parameter(
                "state",
                format!("{o:?}: use open or closed"),
            ))
        }
    };
    let sites = who.scope.list();
    let rows = call(
        s.store
            .ledger()
            .alerts_page(state, sites.as_deref(), p.after, p.fetch()),
    )
    .await?;
    let (rows, next) = p.cut(rows, |a| a.id);
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}
