//! Corrections by amendment: `POST /api/v1/epods/{id}/amend` and
//! `POST /api/v1/discharges/{id}/amend` (operator) take the corrected fields (any of the POST
//! body's; a discharge also `closed_at` and `ship_l`) and a mandatory `reason`. The record's
//! new content is validated like a new post; the store keeps every version (the original as
//! version 1) with who, when and why, and the reconciliation reads the latest. `GET
//! /api/v1/epods/{id}` and `GET /api/v1/discharges/{id}` show a record with its history.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::audit::{self, json};
use super::auth::Principal;
use super::params::Query;
use super::problem::Problem;
use super::recon::{
    check_epod_write, id_param, parse_body, positive, validate_discharge, validate_epod,
    visible_discharge, visible_epod, when, DischargeBody, EpodBody, When,
};
use super::routes::{call, data};
use super::ApiState;
use crate::reconcile::model::Epod;
use crate::store::ledger::{AmendOutcome, Amendment, DischargeRow, VersionRow};
use flowsquare_service::clock::now_ms;

/// Longest `reason`, bytes.
pub const MAX_REASON: usize = 1_000;

/// A record with its version and history, as the GET and amend routes answer it.
fn with_history(record: Value, versions: Vec<VersionRow>) -> Value {
    let mut o = match record {
        Value::Object(o) => o,
        other => {
            let mut m = Map::new();
            m.insert("record".into(), other);
            m
        }
    };
    o.insert(
        "version".into(),
        Value::from(versions.last().map_or(1, |v| v.version)),
    );
    o.insert("versions".into(), json(&versions));
    Value::Object(o)
}

/// The amendment body: its `reason` and the corrected fields laid over `current` (the record
/// in its POST body form).
fn overlay(body: &Bytes, mut current: Map<String, Value>) -> Result<(String, Value), Problem> {
    let b: Map<String, Value> = parse_body(body)?;
    let mut errors = Vec::new();
    let reason = match b.get("reason") {
        Some(Value::String(r)) if !r.trim().is_empty() && r.len() <= MAX_REASON => r.clone(),
        Some(Value::String(r)) if r.len() > MAX_REASON => {
            errors.push(format!("reason: at most {MAX_REASON} bytes"));
            String::new()
        }
        _ => {
            errors.push("reason: say why the record is amended (a non-empty text)".into());
            String::new()
        }
    };
    if b.len() < 2 {
        errors.push("body: give the corrected fields besides `reason`".into());
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_body(errors));
    }
    for (k, v) in b {
        if k != "reason" {
            current.insert(k, v);
        }
    }
    Ok((reason, Value::Object(current)))
}

fn amendment(who: &Principal, reason: String) -> Amendment {
    Amendment {
        actor: who.name.clone(),
        role: who.role.as_str().to_owned(),
        at_ms: now_ms(),
        reason,
    }
}

fn epod_body(e: &Epod) -> Map<String, Value> {
    let v = serde_json::json!({
        "trip": e.trip, "bol": e.bol, "truck": e.truck, "station": e.station,
        "delivered_at": e.delivered_ms, "receiver": e.receiver, "lat": e.lat, "lon": e.lon,
        "compartments": e.compartments.iter().map(|c| serde_json::json!({
            "compartment": c.compartment, "product": c.product, "gross_l": c.gross_l, "net_l": c.net_l,
        })).collect::<Vec<_>>(),
    });
    match v {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

/// `GET /api/v1/epods/{id}`: the ePOD (latest version) and its history.
pub(super) async fn get_epod(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let id = id_param(id, "ePOD")?;
    let e = visible_epod(&s, &who, id).await?;
    let versions = call(s.store.ledger().versions("epod", id)).await?;
    Ok(data(&[with_history(json(&e), versions)]))
}

/// `POST /api/v1/epods/{id}/amend`: a new version of the ePOD.
pub(super) async fn amend_epod(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let id = id_param(id, "ePOD")?;
    let old = visible_epod(&s, &who, id).await?;
    let (reason, merged) = overlay(&body, epod_body(&old))?;
    let b: EpodBody = serde_json::from_value(merged)
        .map_err(|e| Problem::invalid_body(vec![format!("body: {e}")]))?;
    let mut new = validate_epod(b, &s).map_err(Problem::invalid_body)?;
    new.id = id;
    check_epod_write(&s, &who, &new)?;
    if new == old {
        return Err(Problem::invalid_body(vec![
            "body: the amendment changes nothing".into(),
        ]));
    }
    let by = amendment(&who, reason);
    match call(s.store.ledger().amend_epod(id, &new, &by)).await? {
        AmendOutcome::Amended(e, version) => {
            let mut after = json(&e);
            if let Value::Object(o) = &mut after {
                o.insert("version".into(), Value::from(version));
                o.insert("reason".into(), Value::from(by.reason.clone()));
            }
            audit::record(
                &s,
                &who,
                "epod.amend",
                format!("epod/{id}"),
                json(&old),
                after,
            )
            .await?;
            let versions = call(s.store.ledger().versions("epod", id)).await?;
            Ok(data(&[with_history(json(&e), versions)]))
        }
        AmendOutcome::NotFound => Err(Problem::not_found(format!("no ePOD {id}"))),
        AmendOutcome::BolTaken(other) => Err(Problem::conflict(format!(
            "BOL {:?} belongs to ePOD {other}; an amendment cannot take another ePOD's BOL",
            new.bol
        ))),
    }
}

/// A discharge amendment in its full form (the POST fields and the close fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DischargeAmendBody {
    site: Value,
    vessel: Value,
    parcel: Value,
    product: Value,
    bl_l: Value,
    tanks: Value,
    #[serde(default)]
    meters: Value,
    opened_at: Value,
    #[serde(default)]
    closed_at: Option<When>,
    #[serde(default)]
    ship_l: Option<f64>,
}

fn discharge_body(d: &DischargeRow) -> Map<String, Value> {
    let v = serde_json::json!({
        "site": d.d.site, "vessel": d.d.vessel, "parcel": d.d.parcel, "product": d.d.product,
        "bl_l": d.d.bl_l, "tanks": d.d.tanks, "meters": d.d.meters, "opened_at": d.d.opened_ms,
        "closed_at": d.closed_ms, "ship_l": d.ship_l,
    });
    match v {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

/// Validate a discharge amendment into the new row.
fn validate_amended(merged: Value, s: &ApiState, id: i64) -> Result<DischargeRow, Problem> {
    let b: DischargeAmendBody = serde_json::from_value(merged)
        .map_err(|e| Problem::invalid_body(vec![format!("body: {e}")]))?;
    let base: DischargeBody = serde_json::from_value(serde_json::json!({
        "site": b.site, "vessel": b.vessel, "parcel": b.parcel, "product": b.product,
        "bl_l": b.bl_l, "tanks": b.tanks,
        "meters": if b.meters.is_null() { Value::Array(Vec::new()) } else { b.meters },
        "opened_at": b.opened_at,
    }))
    .map_err(|e| Problem::invalid_body(vec![format!("body: {e}")]))?;
    let mut errors = Vec::new();
    let d = validate_discharge(base, s);
    let closed_ms = b
        .closed_at
        .as_ref()
        .map(|w| when("closed_at", w, &mut errors));
    if let Some(x) = b.ship_l {
        positive("ship_l", x, &mut errors);
    }
    if b.ship_l.is_some() && closed_ms.is_none() {
        errors.push("ship_l: the ship's figure is given with the close (`closed_at`)".into());
    }
    let d = match d {
        Ok(d) => d,
        Err(mut e) => {
            e.append(&mut errors);
            return Err(Problem::invalid_body(e));
        }
    };
    if let Some(c) = closed_ms {
        if c <= d.opened_ms {
            errors.push(format!(
                "closed_at: {c} ms is not after the discharge's opening ({} ms)",
                d.opened_ms
            ));
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid_body(errors));
    }
    Ok(DischargeRow {
        id,
        d,
        closed_ms,
        ship_l: b.ship_l,
    })
}

/// `GET /api/v1/discharges/{id}`: the discharge (latest version) and its history.
pub(super) async fn get_discharge(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let id = id_param(id, "discharge")?;
    let d = visible_discharge(&s, &who, id).await?;
    let versions = call(s.store.ledger().versions("discharge", id)).await?;
    Ok(data(&[with_history(json(&d), versions)]))
}

/// `POST /api/v1/discharges/{id}/amend`: a new version of the discharge.
pub(super) async fn amend_discharge(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    let id = id_param(id, "discharge")?;
    let old = visible_discharge(&s, &who, id).await?;
    let (reason, merged) = overlay(&body, discharge_body(&old))?;
    let new = validate_amended(merged, &s, id)?;
    who.scope.check_write(&new.d.site)?;
    if new == old {
        return Err(Problem::invalid_body(vec![
            "body: the amendment changes nothing".into(),
        ]));
    }
    let by = amendment(&who, reason);
    match call(s.store.ledger().amend_discharge(id, &new, &by)).await? {
        AmendOutcome::Amended(d, version) => {
            let mut after = json(&d);
            if let Value::Object(o) = &mut after {
                o.insert("version".into(), Value::from(version));
                o.insert("reason".into(), Value::from(by.reason.clone()));
            }
            audit::record(
                &s,
                &who,
                "discharge.amend",
                format!("discharge/{id}"),
                json(&old),
                after,
            )
            .await?;
            let versions = call(s.store.ledger().versions("discharge", id)).await?;
            Ok(data(&[with_history(json(&d), versions)]))
        }
        AmendOutcome::NotFound => Err(Problem::not_found(format!("no discharge {id}"))),
        AmendOutcome::BolTaken(other) => Err(Problem::conflict(format!(
            "record {other} conflicts with the amendment"
        ))),
    }
}
