//! The audit log: every write through the API lands in `audit_log` with its actor (the token's
//! name and role), time (data clock), action, target and the record before and after; the CLI
//! writes the same entries as `cli:<user>`. `GET /api/v1/audit` (auditor, admin) reads it,
//! filtered by `from`, `to`, `actor`, `action`, `target`, as JSON or CSV (`.csv` /
//! `?format=csv`).

use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Principal;
use super::page::{self, lists, PageReq};
use super::params::{self, Query};
use super::problem::Problem;
use super::routes::call;
use super::ApiState;
use crate::store::ledger::{AuditFilter, AuditRow, NewAudit};
use flowsquare_service::clock::now_ms;

/// Append a write to the audit log (after the write itself succeeded).
pub(super) async fn record(
    s: &ApiState,
    who: &Principal,
    action: &str,
    target: String,
    before: serde_json::Value,
    after: serde_json::Value,
) -> Result<(), Problem> {
    let e = NewAudit {
        actor: who.name.clone(),
        role: who.role.as_str().to_owned(),
        at_ms: now_ms(),
        action: action.to_owned(),
        target,
        before,
        after,
    };
    call(s.store.ledger().audit(&e)).await.map(|_| ())
}

/// JSON of a value (null when it cannot be encoded, which the row types never are).
pub(super) fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// CSV of audit entries (RFC 4180; before/after as JSON).
pub fn csv(rows: &[AuditRow]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_owned()
        }
    }
    let mut out = String::from("id,at_ms,actor,role,action,target,before,after\r\n");
    for r in rows {
        let e = &r.e;
        out.push_str(
            &[
                r.id.to_string(),
                e.at_ms.to_string(),
                field(&e.actor),
                field(&e.role),
                field(&e.action),
                field(&e.target),
                field(&e.before.to_string()),
                field(&e.after.to_string()),
            ]
            .join(","),
        );
        out.push_str("\r\n");
    }
    out
}

fn filter(q: &Query, p: &PageReq<i64>) -> Result<AuditFilter, Problem> {
    let time = |name: &str| -> Result<Option<i64>, Problem> {
        q.opt(name)?.map(|v| params::time_ms(name, v)).transpose()
    };
    let (from_ms, to_ms) = (time("from")?, time("to")?);
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if t <= f {
            return Err(Problem::bad_parameter("to", "`to` must be after `from`"));
        }
    }
    Ok(AuditFilter {
        from_ms,
        to_ms,
        actor: q.opt("actor")?.map(str::to_owned),
        action: q.opt("action")?.map(str::to_owned),
        target: q.opt("target")?.map(str::to_owned),
        limit: p.fetch(),
        before_id: p.after,
    })
}

async fn list(
    s: &ApiState,
    who: &Principal,
    (path, raw): (&str, Option<&str>),
    suffix: bool,
) -> Result<Response, Problem> {
    let q = Query::parse(
        raw,
        &[
            "from", "to", "actor", "action", "target", "limit", "cursor", "format",
        ],
    )?;
    // Audit entries name records, not sites: all-sites tokens only.
    who.scope.require_all("the audit log")?;
    let csv_out = match q.opt("format")? {
        None => suffix,
        Some("csv") => true,
        Some("json") => false,
        Some(o) => {
            return Err(Problem::bad_parameter(
                "format",
                format!("{o:?}: use csv or json"),
            ))
        }
    };
    let p: PageReq<i64> = lists::AUDIT.parse(&q)?;
    let rows = call(s.store.ledger().audit_log(&filter(&q, &p)?)).await?;
    let (rows, next) = p.cut(rows, |r| r.id);
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
    h.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"audit.csv\""),
    );
    Ok(res)
}

/// `GET /api/v1/audit?from=&to=&actor=&action=&target=&limit=&cursor=&format=` (auditor).
pub(super) async fn audit(
    State(s): State<ApiState>,
    axum::Extension(who): axum::Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    list(&s, &who, (uri.path(), raw.as_deref()), false).await
}

/// `GET /api/v1/audit.csv` (auditor).
pub(super) async fn audit_csv(
    State(s): State<ApiState>,
    axum::Extension(who): axum::Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    list(&s, &who, (uri.path(), raw.as_deref()), true).await
}
