//! The route table and its handlers. [`table`] is the only place routes are declared: the router
//! is built from it (with the role each route needs) and a test holds the OpenAPI document to it.

use std::future::Future;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Extension;
use serde::Serialize;

use super::auth::{Principal, Tokens};
use super::config::Role;
use super::page::{self, lists, PageReq};
use super::params::{self, Query};
use super::problem::Problem;
use super::{amend, audit, console, freshness, metrics, openapi, recon, ApiState};
use crate::store::{StoreError, TagFilter, TagKey, TagRow};

/// Longest wait for a data query before answering 503.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the readiness ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Most buckets one series request may ask for.
pub const MAX_BUCKETS: i64 = 10_000;
/// Most tag ids in one `/latest` request.
pub const MAX_LATEST_TAGS: usize = 1_000;
/// The paging parameters every list route takes (`page.rs`).
pub(super) const PAGE: [&str; 2] = ["limit", "cursor"];

/// One route: path (axum/OpenAPI syntax), method (OpenAPI spelling), the role it needs
/// (`None` = open), its handler. A path may appear once per method.
pub(crate) type Route = (
    &'static str,
    &'static str,
    Option<Role>,
    MethodRouter<ApiState>,
);

/// Every route the router serves.
pub(crate) fn table() -> Vec<Route> {
    use Role::{Admin, Auditor, Operator, Viewer};
    vec![
        ("/healthz", "get", None, get(healthz)),
        ("/readyz", "get", None, get(readyz)),
        ("/metrics", "get", None, get(metrics_text)),
        ("/api/v1/openapi.json", "get", None, get(openapi_json)),
        ("/api/v1/agents", "get", Some(Viewer), get(agents)),
        ("/api/v1/tags", "get", Some(Viewer), get(tags)),
        ("/api/v1/latest", "get", Some(Viewer), get(latest)),
        ("/api/v1/tags/{id}/series", "get", Some(Viewer), get(series)),
        ("/api/v1/gaps", "get", Some(Viewer), get(gaps)),
        (
            "/api/v1/dead-letters",
            "get",
            Some(Auditor),
            get(dead_letters),
        ),
        (
            "/api/v1/discharges",
            "get",
            Some(Viewer),
            get(recon::list_discharges),
        ),
        (
            "/api/v1/discharges",
            "post",
            Some(Operator),
            post(recon::open_discharge),
        ),
        (
            "/api/v1/discharges/{id}/close",
            "post",
            Some(Operator),
            post(recon::close_discharge),
        ),
        (
            "/api/v1/discharges/{id}",
            "get",
            Some(Viewer),
            get(amend::get_discharge),
        ),
        (
            "/api/v1/discharges/{id}/amend",
            "post",
            Some(Operator),
            post(amend::amend_discharge),
        ),
        ("/api/v1/epods", "get", Some(Viewer), get(recon::list_epods)),
        (
            "/api/v1/epods",
            "post",
            Some(Operator),
            post(recon::post_epod),
        ),
        (
            "/api/v1/epods/{id}",
            "get",
            Some(Viewer),
            get(amend::get_epod),
        ),
        (
            "/api/v1/epods/{id}/amend",
            "post",
            Some(Operator),
            post(amend::amend_epod),
        ),
        (
            "/api/v1/reconciliation/runs",
            "get",
            Some(Viewer),
            get(recon::runs),
        ),
        (
            "/api/v1/reconciliation/run",
            "post",
            Some(Operator),
            post(recon::run_now),
        ),
        (
            "/api/v1/reconciliation/{date}",
            "get",
            Some(Viewer),
            get(recon::chain),
        ),
        (
            "/api/v1/reconciliation/{date}/tanks",
            "get",
            Some(Viewer),
            get(recon::tanks),
        ),
        (
            "/api/v1/reconciliation/{date}/trips",
            "get",
            Some(Viewer),
            get(recon::trips),
        ),
        (
            "/api/v1/reconciliation/{date}/meters",
            "get",
            Some(Viewer),
            get(recon::meters),
        ),
        ("/api/v1/alerts", "get", Some(Viewer), get(recon::alerts)),
        (
            "/api/v1/freshness",
            "get",
            Some(Viewer),
            get(freshness::freshness),
        ),
        ("/api/v1/audit", "get", Some(Auditor), get(audit::audit)),
        (
            "/api/v1/audit.csv",
            "get",
            Some(Auditor),
            get(audit::audit_csv),
        ),
        (
            "/api/v1/whoami",
            "get",
            Some(Viewer),
            get(console::data::whoami),
        ),
        (
            "/api/v1/kpis",
            "get",
            Some(Viewer),
            get(console::kpis::kpis),
        ),
        (
            "/api/v1/site-model",
            "get",
            Some(Viewer),
            get(console::data::site_model),
        ),
        (
            "/api/v1/track",
            "get",
            Some(Viewer),
            get(console::data::track),
        ),
        (
            "/api/v1/admin/tokens/reload",
            "post",
            Some(Admin),
            post(reload_tokens),
        ),
    ]
}

/// A JSON response.
fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut res = (status, bytes).into_response();
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res
        }
        Err(e) => Problem::internal(format!("could not encode the response: {e}")).into_response(),
    }
}

/// A JSON body with `Cache-Control: no-store`.
pub(super) fn json_no_store<T: Serialize + ?Sized>(body: &T) -> Response {
    let mut res = json(StatusCode::OK, body);
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The `/api/v1` convention: `{"data": [...]}`.
pub(super) fn data<T: Serialize>(rows: &[T]) -> Response {
    data_with_status(StatusCode::OK, rows)
}

/// `{"data": [...]}` with another status (201 Created).
pub(super) fn data_with_status<T: Serialize>(status: StatusCode, rows: &[T]) -> Response {
    #[derive(Serialize)]
    struct Data<'a, T> {
        data: &'a [T],
    }
    let mut res = json(status, &Data { data: rows });
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A store query with a deadline; a query that does not answer in time is a 503.
pub(super) async fn call<T>(
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, Problem> {
    match tokio::time::timeout(STORE_TIMEOUT, fut).await {
        Ok(r) => r.map_err(Problem::from),
        Err(_) => Err(Problem::unavailable(format!(
            "the database did not answer within {} s; retry later",
            STORE_TIMEOUT.as_secs()
        ))),
    }
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when the consumer is connected and the database answers a ping.
async fn readyz(State(s): State<ApiState>) -> Response {
    let mut why = Vec::new();
    if !s.ready.load(std::sync::atomic::Ordering::Relaxed) {
        why.push("the consumer is not connected to the broker".to_owned());
    }
    match tokio::time::timeout(PING_TIMEOUT, s.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: database ping failed");
            why.push("the database does not answer".to_owned());
        }
        Err(_) => why.push(format!(
            "the database did not answer a ping within {} s",
            PING_TIMEOUT.as_secs()
        )),
    }
    if why.is_empty() {
        json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
    } else {
        Problem::unavailable(format!("not ready: {}", why.join("; "))).into_response()
    }
}

/// `GET /metrics`.
async fn metrics_text(State(s): State<ApiState>) -> Response {
    let mut res = metrics::render(&s.stats, &s.ready, &s.api_stats).into_response();
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    res
}

/// `GET /api/v1/openapi.json`.
async fn openapi_json() -> Response {
    json(StatusCode::OK, openapi::document())
}

/// `GET /api/v1/agents?limit=&cursor=` (of the token's sites, in the SQL before the limit).
async fn agents(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &PAGE)?;
    let p: PageReq<crate::store::AgentKey> = lists::AGENTS.parse(&q)?;
    let sites = who.scope.list();
    let rows = call(
        s.store
            .agents_page(sites.as_deref(), p.after.as_ref(), p.fetch()),
    )
    .await?;
    let rows = with_refused_births(&s, &who, &p, rows);
    let (rows, next) = p.cut(rows, |a| (a.site.clone(), a.agent.clone()));
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}

/// The agents of a page with the consumer's refused births: `birth_refused` on their rows, and
/// a row for a refused agent the store has none of (its first birth refused, no status yet),
/// merged in key order within the page's key range (so pages stay keyset-exact).
fn with_refused_births(
    s: &ApiState,
    who: &Principal,
    p: &PageReq<crate::store::AgentKey>,
    mut rows: Vec<crate::store::AgentRow>,
) -> Vec<crate::store::AgentRow> {
    let refused: Vec<((String, String), String)> = match s.stats.refused_agents.lock() {
        Ok(m) => m.iter().map(|(k, r)| (k.clone(), r.status())).collect(),
        Err(_) => Vec::new(),
    };
    if refused.is_empty() {
        return rows;
    }
    // The store had more rows than fetched: refused agents past the last one belong to later
    // pages.
    let upper = (rows.len() as i64 >= p.fetch())
        .then(|| rows.last().map(|a| (a.site.clone(), a.agent.clone())))
        .flatten();
    for (key, status) in refused {
        if let Some(a) = rows
            .iter_mut()
            .find(|a| a.site == key.0 && a.agent == key.1)
        {
            a.birth_refused = Some(status);
            continue;
        }
        let in_range = who.scope.allows(&key.0)
            && p.after.as_ref().is_none_or(|a| &key > a)
            && upper.as_ref().is_none_or(|u| &key <= u);
        if in_range {
            rows.push(crate::store::AgentRow {
                site: key.0,
                agent: key.1,
                online: false,
                last_seen_ms: None,
                version: None,
                config_hash: None,
                backlog_readings: None,
                oldest_unsent_ms: None,
                buffer: None,
                buffer_replaced_ms: None,
                birth_refused: Some(status),
            });
        }
    }
    rows.sort_by(|a, b| (&a.site, &a.agent).cmp(&(&b.site, &b.agent)));
    rows
}

/// The tag filter of a request: its `site` and `prefix` within the token's sites (None: a site
/// outside the scope, answered as an unknown one: nothing).
pub(super) fn tag_filter(who: &Principal, q: &Query) -> Result<Option<TagFilter>, Problem> {
    let Some(site) = who.scope.narrow(q.opt("site")?) else {
        return Ok(None);
    };
    Ok(Some(TagFilter {
        site: site.map(str::to_owned),
        prefix: q.opt("prefix")?.map(str::to_owned),
        sites: who.scope.list(),
        ids: None,
    }))
}

/// `GET /api/v1/tags?site=&prefix=&limit=&cursor=` (of the token's sites), by site, agent, name.
async fn tags(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["site", "prefix", "limit", "cursor"])?;
    let p: PageReq<TagKey> = lists::TAGS.parse(&q)?;
    let Some(f) = tag_filter(&who, &q)? else {
        return Ok(page::answer::<TagRow>(
            &[],
            None,
            uri.path(),
            raw.as_deref(),
        ));
    };
    let rows = call(s.store.tags_page(&f, p.after.as_ref(), p.fetch())).await?;
    let (rows, next) = p.cut(rows, tag_key);
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}

/// A tag's paging key.
pub(super) fn tag_key(t: &TagRow) -> TagKey {
    (t.site.clone(), t.agent.clone(), t.name.clone())
}

/// 404 unless every id is a registered tag of the token's sites (a tag of another site is
/// answered as an unknown one). Looked up by id, within the scope, in the query.
async fn require_tags(s: &ApiState, who: &Principal, ids: &[i64]) -> Result<(), Problem> {
    let f = TagFilter {
        sites: who.scope.list(),
        ids: Some(ids.to_vec()),
        ..TagFilter::default()
    };
    let limit = i64::try_from(ids.len())
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let known: std::collections::HashSet<i64> = call(s.store.tags_page(&f, None, limit))
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect();
    let unknown: Vec<String> = ids
        .iter()
        .filter(|id| !known.contains(id))
        .map(i64::to_string)
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(who
            .scope
            .hidden(format!("no tag with id {}", unknown.join(", "))))
    }
}

/// `GET /api/v1/latest?tag_id=1&tag_id=2` or `?tag_id=1,2` (`limit`, `cursor`: pages of the
/// asked ids in id order; rows by tag id).
async fn latest(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["tag_id", "limit", "cursor"])?;
    let p: PageReq<i64> = lists::LATEST.parse(&q)?;
    let mut ids = params::tag_ids(&q, "tag_id", MAX_LATEST_TAGS)?;
    require_tags(&s, &who, &ids).await?;
    ids.sort_unstable();
    ids.retain(|id| p.after.is_none_or(|a| *id > a));
    let (ids, next) = p.cut(ids, |id| *id);
    let mut rows = call(s.store.latest(&ids)).await?;
    rows.sort_by_key(|r| r.tag_id);
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}

/// `GET /api/v1/tags/{id}/series?from=&to=&step=&limit=&cursor=`. A page covers `limit`
/// buckets of time (empty buckets are left out, so it may hold fewer rows); the cursor is the
/// start of its last bucket.
async fn series(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let id = match id {
        Ok(Path(id)) => id.parse::<i64>().map_err(|_| {
            Problem::bad_parameter("id", format!("{id:?} is not a tag id (an integer)"))
        })?,
        Err(e) => return Err(Problem::bad_parameter("id", e.body_text())),
    };
    let q = Query::parse(raw.as_deref(), &["from", "to", "step", "limit", "cursor"])?;
    let p: PageReq<i64> = lists::SERIES.parse(&q)?;
    let (from, to) = params::range(&q)?;
    let step = params::step_ms("step", q.req("step")?)?;
    // Buckets are aligned on the epoch: count those the range touches (`from` ≥ 0, `to` > `from`).
    let buckets = (to - 1) / step - from / step + 1;
    if buckets > MAX_BUCKETS {
        return Err(Problem::bad_parameter(
            "step",
            format!("{buckets} buckets of this step between `from` and `to`; at most {MAX_BUCKETS}: use a larger step or a shorter range"),
        ));
    }
    require_tags(&s, &who, &[id]).await?;
    // This page: from the bucket after the cursor's, `limit` buckets long.
    let first = match p.after {
        None => from,
        Some(c) if c >= from - step && c < to && c.rem_euclid(step) == 0 => (c + step).max(from),
        Some(_) => {
            return Err(Problem::bad_parameter(
                "cursor",
                "not a cursor of this range and step; use the `next` of the previous page",
            ))
        }
    };
    let end = first
        .div_euclid(step)
        .saturating_add(p.limit)
        .saturating_mul(step)
        .min(to);
    let rows = call(s.store.series(id, first, end, step)).await?;
    let next = (end < to).then(|| p.encode(&(end - step)));
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}

/// `GET /api/v1/gaps?site=&from=&to=&limit=&cursor=` (of the token's sites, in the SQL).
async fn gaps(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &["site", "from", "to", "limit", "cursor"])?;
    let p: PageReq<crate::store::GapKey> = lists::GAPS.parse(&q)?;
    let site = q.opt("site")?;
    let (from_ms, to_ms) = params::range(&q)?;
    let Some(site) = who.scope.narrow(site) else {
        return Ok(page::answer::<crate::store::GapRow>(
            &[],
            None,
            uri.path(),
            raw.as_deref(),
        ));
    };
    let f = crate::store::GapFilter {
        site: site.map(str::to_owned),
        sites: who.scope.list(),
        from_ms,
        to_ms,
    };
    let rows = call(s.store.gaps_page(&f, p.after, p.fetch())).await?;
    let (rows, next) = p.cut(rows, |g| (g.from_ms, g.id));
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}

/// `GET /api/v1/dead-letters?limit=&cursor=`, newest first (all-sites tokens: a rejected
/// message's topic may be garbled, so its site is not known).
async fn dead_letters(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    uri: axum::http::Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let q = Query::parse(raw.as_deref(), &PAGE)?;
    who.scope.require_all("the dead-letter list")?;
    let p: PageReq<crate::store::DeadLetterKey> = lists::DEAD_LETTERS.parse(&q)?;
    let rows = call(s.store.dead_letters_page(p.after, p.fetch())).await?;
    let (rows, next) = p.cut(rows, |d| (d.received_ms, d.id));
    Ok(page::answer(&rows, next, uri.path(), raw.as_deref()))
}

/// `POST /api/v1/admin/tokens/reload` (admin, all sites): read the tokens file again.
async fn reload_tokens(
    Extension(who): Extension<Principal>,
    Extension(tokens): Extension<std::sync::Arc<Tokens>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    Query::parse(raw.as_deref(), &[])?;
    who.scope.require_all("reloading the tokens")?;
    match tokens.reload_logged(&format!("api:{}", who.name)) {
        Ok(n) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "data": [{ "tokens": n }] }),
        )),
        Err(e) => Err(Problem::conflict(format!(
            "the tokens were not reloaded, the previous ones stay: {e}"
        ))),
    }
}

/// Unknown routes.
pub(crate) async fn not_found(uri: Uri) -> Problem {
    Problem::not_found(format!(
        "no route {}; the routes are listed in /api/v1/openapi.json",
        uri.path()
    ))
}
