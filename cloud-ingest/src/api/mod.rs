//! The HTTP API for cloud operations (axum): probes and metrics for the platform, read access to
//! the stored data for people and dashboards.
//!
//! # Routes
//!
//! | method | path                         | role      | answers                                  |
//! |--------|------------------------------|-----------|------------------------------------------|
//! | GET    | `/healthz`                   | open      | `{"status":"ok"}`: the process is alive   |
//! | GET    | `/readyz`                    | open      | `{"status":"ready"}`, or 503 when the consumer is not connected or the database does not answer a ping |
//! | GET    | `/metrics`                   | open      | Prometheus text, `flowsquare_ingest_*`    |
//! | GET    | `/api/v1/openapi.json`       | open      | the OpenAPI 3.0 document of all of these  |
//! | GET    | `/api/v1/agents`             | viewer    | agents                                   |
//! | GET    | `/api/v1/tags?site=&prefix=` | viewer    | tags                                     |
//! | GET    | `/api/v1/latest?tag_id=…`    | viewer    | latest reading per tag                   |
//! | GET    | `/api/v1/tags/{id}/series?from=&to=&step=` | viewer | buckets (min/max/avg/last/count/bad) |
//! | GET    | `/api/v1/gaps?site=&from=&to=` | viewer  | gap records overlapping the range        |
//! | GET    | `/api/v1/dead-letters?limit=` | auditor  | newest dead letters (no payloads)        |
//! | GET    | `/api/v1/discharges?from=&to=` | viewer  | ship discharges overlapping the range    |
//! | POST   | `/api/v1/discharges`         | operator  | open a discharge (vessel, parcel, B/L quantity, product, tanks) |
//! | POST   | `/api/v1/discharges/{id}/close` | operator | close it (`closed_at`, ship's figure)  |
//! | GET    | `/api/v1/discharges/{id}`    | viewer    | a discharge with its versions (amendments) |
//! | POST   | `/api/v1/discharges/{id}/amend` | operator | correct it: changed fields + `reason`; a new version |
//! | GET    | `/api/v1/epods?from=&to=`    | viewer    | ePODs delivered in the range             |
//! | POST   | `/api/v1/epods`              | operator  | post an ePOD (validated; 201, 200 same again, 409 other content: amend it, 422) |
//! | GET    | `/api/v1/epods/{id}`         | viewer    | an ePOD with its versions (amendments)   |
//! | POST   | `/api/v1/epods/{id}/amend`   | operator  | correct it: changed fields + `reason`; a new version |
//! | GET    | `/api/v1/reconciliation/runs?limit=` | viewer | runs, newest first, with which run superseded which |
//! | POST   | `/api/v1/reconciliation/run?date=` | operator | reconcile a day now                   |
//! | GET    | `/api/v1/reconciliation/{date}[.csv]` | viewer | chain per product and parcels (`?format=csv`; current run, or `?run=ID` / `?as_of=TIME`) |
//! | GET    | `/api/v1/reconciliation/{date}/tanks\|trips\|meters` | viewer | tank balances, trips, meter checks and trends (same `run` / `as_of`) |
//! | GET    | `/api/v1/alerts?state=open\|closed&limit=` | viewer | alerts, newest first           |
//! | GET    | `/api/v1/freshness?site=`    | viewer    | per tag: latest reading, last good reading, limit, stale (bad quality counts as silent) |
//! | GET    | `/api/v1/audit[.csv]?from=&to=&actor=&action=&target=&limit=` | auditor | the audit log of every write, newest first (`?format=csv`) |
//! | GET    | `/api/v1/whoami`             | viewer    | the token's name and role, what it may see, the server's (data) clock |
//! | GET    | `/api/v1/kpis`               | viewer    | gross/net/ready stock per tank and product, endurance days |
//! | GET    | `/api/v1/site-model`         | viewer    | the `[reconcile]` tanks, meters, stations, places, trucks |
//! | GET    | `/api/v1/track?truck=&from=&to=` | viewer | a truck's GPS fixes and stops (≤ 2 days) |
//! | POST   | `/api/v1/admin/tokens/reload` | admin    | read the tokens file again (also on SIGHUP) |
//! | GET    | `/`, `/console/{file}`       | open      | the ops console (embedded HTML/CSS/JS, strict CSP; see `console/`) |
//!
//! Parameters (`params.rs`): times are RFC 3339 or epoch milliseconds; `from` is inclusive, `to`
//! exclusive and after `from`; `step` is an integer and a unit (`500ms`, `30s`, `5m`, `1h`,
//! `1d`), buckets are aligned on the epoch and a series may span at most 10,000 of them;
//! `tag_id` is repeated (`tag_id=1&tag_id=2`) and/or a comma list (`tag_id=1,2`), up to 1,000;
//! every list route is paged (`page.rs`): `limit` (each list's default and maximum in
//! `page::PAGED` and the OpenAPI document) and `cursor` (the previous page's `next`; a bad one
//! is a 400 naming it). Empty values count as absent; unknown parameters and
//! single-valued parameters given twice are rejected.
//!
//! # Authentication and roles
//!
//! `/api/v1` data routes need `Authorization: Bearer <token>`; the configuration holds only the
//! token's SHA-256 ([`hash_token`]), compared in constant time. The roles ([`Role`]):
//!
//! | token role | viewer routes | auditor routes (dead letters, audit log) |
//! |------------|---------------|-------------------------------|
//! | viewer     | yes           | 403                           |
//! | operator   | yes           | 403                           |
//! | auditor    | yes           | yes                           |
//! | admin      | yes           | yes                           |
//!
//! (`operator` ⊇ viewer, plus posting movements and starting runs; `admin` ⊇ all.)
//!
//! A token may be limited to sites (`sites = [...]`; `scope.rs`): every data route answers only
//! those sites' rows, 404 for another site's record by id, 403 for a write to another site and
//! for the routes that cover every site (dead letters, audit log, `POST
//! /api/v1/reconciliation/run`, `POST /api/v1/admin/tokens/reload`). A token may expire
//! (`expires`, RFC 3339; then 401 `token expired`). The tokens of `[api] tokens_file` are read
//! again on SIGHUP and by `POST /api/v1/admin/tokens/reload` (admin); a file that does not load
//! keeps the tokens in use. Refusals are logged with the token's name, never the token.
//! With `[api.jwt]` (`jwt.rs`) a bearer shaped like a JWT is checked against the issuer's JWKS
//! file instead (re-read with the tokens file) and maps to the same principal; a JWT that does
//! not pass is a 401 naming why.
//!
//! # Conventions
//!
//! - Successful `/api/v1` data responses are `{"data": [...]}`, always an array; lists add
//!   `"next"` (the next page's cursor, null on the last page) and `Link: <…>; rel="next"`;
//!   rows are the store's row types ([`crate::store`]), times in UTC epoch milliseconds.
//!   `Cache-Control: no-store`.
//! - Every error is RFC 7807 `application/problem+json` (`problem.rs`): `{type, title, status,
//!   detail, instance}` (+ `parameter` for 400). 400 bad parameter, 401 missing/unknown token
//!   (`WWW-Authenticate: Bearer`), 403 role too low (naming the role needed), 404 unknown route
//!   or tag, 405 wrong method, 503 database unavailable (transient store errors, timeouts;
//!   `Retry-After`), 500 otherwise. Handlers run in their own task: a panic is a 500, not a
//!   dropped connection. Errors hyper would answer itself before routing (malformed request
//!   line or header 400, URI too long 414, head too large 431, head too slow 408) are answered
//!   by the connection layer (`conn.rs`, `head.rs`) with the same problem bodies; 429 when a
//!   rate limit is exhausted (`Retry-After`).
//! - Every response carries `X-Request-Id` (the client's, when sane, else a new one), also in
//!   problem bodies (`request_id`) and in the request's tracing span (`request_id.rs`).
//!
//! # Robustness (`[api]` keys)
//!
//! `conn.rs` serves HTTP/1.1 over its own accept loop: header timeout (`header_timeout_ms`,
//! 408), idle keep-alive timeout (`idle_timeout_ms`), a connection limit (`max_connections`;
//! at the limit the oldest connection waiting for a request head is closed, so slow clients
//! cannot starve `/healthz`), graceful shutdown. `cors.rs`: CORS for `cors_origins` only (off by
//! default). `limit.rs`: token-bucket rate limits per client address (before routing; the
//! probes exempt) and per token (after authentication), bounded memory, counted on `/metrics`.
//!
//! Layers, outermost first: request id → problem finishing (`problem::finish`) → CORS → rate
//! limit per address → routes (authentication → rate limit per token → handler).

mod amend;
mod audit;
mod auth;
mod config;
mod conn;
mod console;
mod cors;
mod freshness;
mod head;
mod jwt;
mod limit;
mod metrics;
mod openapi;
mod page;
mod params;
mod problem;
mod recon;
mod request_id;
mod routes;
mod scope;

#[cfg(test)]
mod test_log;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_access;
#[cfg(test)]
mod tests_history;
#[cfg(test)]
mod tests_jwt;
#[cfg(test)]
mod tests_paging;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;

pub use auth::{hash_token, Principal, Tokens};
pub use config::{ApiConfig, Role, TokenConfig};
pub use conn::{bind, BACKLOG};
pub use head::{MAX_HEAD, MAX_HEADERS, MAX_URI};
pub use jwt::{check as check_jwt, JwtConfig};
pub use limit::ApiStats;
pub use scope::SiteScope;

use crate::consume::ConsumerStats;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The consumer's counters (for `/metrics`).
    pub stats: Arc<ConsumerStats>,
    /// The `[api]` configuration (tokens are read once, when the router is built).
    pub config: Arc<ApiConfig>,
    /// Set by the consumer while it is connected to the broker (for `/readyz`).
    pub ready: Arc<AtomicBool>,
    /// The site model (`[reconcile]`), for validation and on-demand runs; None: not configured.
    pub reconciler: Option<Arc<crate::reconcile::Reconciler>>,
    /// The API's own counters (connections, rate limits), for `/metrics`.
    pub api_stats: Arc<ApiStats>,
}

/// The API's router, with its state (the tokens of its configuration, read now).
pub fn router(state: ApiState) -> Router {
    let tokens = Arc::new(Tokens::load(&state.config));
    router_with_tokens(state, tokens)
}

/// The API's router with a token table the caller keeps (to reload it).
pub fn router_with_tokens(state: ApiState, tokens: Arc<Tokens>) -> Router {
    let limits = Arc::new(limit::Limits::new(&state.config, state.api_stats.clone()));
    let cors = Arc::new(cors::Cors::new(&state.config.cors_origins));
    let mut r = Router::new();
    for (path, _method, needs, handler) in routes::table() {
        let handler = match needs {
            Some(needs) => handler.route_layer(from_fn_with_state(
                auth::Guard {
                    tokens: tokens.clone(),
                    limits: limits.clone(),
                    needs,
                },
                auth::require,
            )),
            None => handler,
        };
        r = r.route(path, handler);
    }
    for (path, handler) in console::routes() {
        r = r.route(path, handler);
    }
    r.fallback(routes::not_found)
        .layer(axum::Extension(tokens))
        .with_state(state)
        .layer(from_fn_with_state(limits, limit::per_ip))
        .layer(from_fn_with_state(cors, cors::apply))
        .layer(from_fn(problem::finish))
        .layer(from_fn(request_id::assign))
}

/// `check-config`: the tokens of `[[api.tokens]]` and the tokens file together (the file read
/// and checked as a reload would); a summary line and warnings (a token of every site below
/// admin when other tokens are limited to sites), or what is wrong.
pub fn check_tokens(cfg: &ApiConfig) -> Result<Vec<String>, String> {
    let mut all = cfg.tokens.clone();
    if let Some(path) = &cfg.tokens_file {
        all.extend(auth::read_tokens_file(path)?);
    }
    config::validate_tokens(&all).map_err(|e| match &cfg.tokens_file {
        Some(p) => format!("with the tokens file {}: {e}", p.display()),
        None => e,
    })?;
    let scoped = all.iter().filter(|t| t.sites.is_some()).count();
    let expiring = all.iter().filter(|t| t.expires.is_some()).count();
    let mut out = vec![format!(
        "ok: [api] {} token(s) ({} from the tokens file), {scoped} limited to sites, {expiring} with an expiry",
        all.len(),
        all.len() - cfg.tokens.len()
    )];
    if scoped > 0 {
        for t in all
            .iter()
            .filter(|t| t.sites.is_none() && t.role != Role::Admin)
        {
            out.push(format!(
                "warning: [api] token {:?} ({}) sees every site; add `sites = [...]` to limit it",
                t.name, t.role
            ));
        }
    }
    Ok(out)
}

/// Serve the API on `listener` until `shutdown` completes (then finish the requests in
/// progress), with the connection layer's timeouts and limits (`conn.rs`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        let c = &state.config;
        tracing::info!(
            %addr,
            tokens = c.tokens.len(),
            max_connections = c.max_connections,
            header_timeout_ms = c.header_timeout_ms,
            cors_origins = c.cors_origins.len(),
            "api listening"
        );
    }
    let config = state.config.clone();
    let stats = state.api_stats.clone();
    let tokens = Arc::new(Tokens::load(&config));
    let hup = tokio::spawn(reload_on_sighup(tokens.clone()));
    let r = conn::serve(
        listener,
        router_with_tokens(state, tokens),
        &config,
        stats,
        shutdown,
    )
    .await;
    hup.abort();
    r
}

/// Reload the tokens file on every SIGHUP (a bad file keeps the tokens in use; logged).
async fn reload_on_sighup(tokens: Arc<Tokens>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "api: no SIGHUP handler, the tokens file is reloaded by the admin route only");
            return;
        }
    };
    while hup.recv().await.is_some() {
        // The outcome is logged by `reload_logged`.
        let _ = tokens.reload_logged("SIGHUP");
    }
}
