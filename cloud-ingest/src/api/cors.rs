//! CORS, off by default. `[api] cors_origins` lists the browser origins allowed to call the API
//! from their pages. A preflight (`OPTIONS` with `Access-Control-Request-Method`) from a listed
//! origin is answered 204 with the methods and headers the API takes; from any other origin (or
//! with no origins configured) it is a 403 problem. Other requests are served as usual; those
//! from a listed origin carry `Access-Control-Allow-Origin` (and expose `X-Request-Id`,
//! `Retry-After`, `WWW-Authenticate`). Credentials are bearer tokens, never cookies, so
//! `Access-Control-Allow-Credentials` is not sent.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

/// Methods the API serves.
const METHODS: &str = "GET, POST, OPTIONS";
/// Request headers a cross-origin caller may send.
const HEADERS: &str = "authorization, content-type, x-request-id";
/// Response headers a cross-origin caller may read.
const EXPOSE: &str = "x-request-id, retry-after, www-authenticate";
/// How long a browser may cache a preflight, seconds.
const MAX_AGE: &str = "600";

/// The allowed origins.
#[derive(Debug, Default)]
pub(crate) struct Cors {
    origins: HashSet<String>,
}

impl Cors {
    pub(crate) fn new(origins: &[String]) -> Cors {
        Cors {
            origins: origins.iter().cloned().collect(),
        }
    }
}

/// Middleware: answer preflights, mark responses to allowed origins.
pub(crate) async fn apply(State(cors): State<Arc<Cors>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(ORIGIN).cloned();
    let allowed = origin
        .as_ref()
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| cors.origins.contains(o));
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut res = match (&origin, allowed) {
            (Some(o), true) => {
                let mut res = StatusCode::NO_CONTENT.into_response();
                let h = res.headers_mut();
                h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
                h.insert(
                    ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(METHODS),
                );
                h.insert(
                    ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(HEADERS),
                );
                h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
                res
            }
            _ => {
                let who = origin
                    .as_ref()
                    .and_then(|o| o.to_str().ok())
                    .unwrap_or("(no Origin header)");
                Problem::forbidden(format!(
                    "cross-origin requests from {who} are not allowed (the allowed origins are [api] cors_origins)"
                ))
                .into_response()
            }
        };
        res.headers_mut()
            .append(VARY, HeaderValue::from_static("origin"));
        return res;
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    if let (Some(o), true) = (origin, allowed) {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE),
        );
    }
    if !cors.origins.is_empty() {
        // The answer depends on the origin: caches must not serve one origin's to another.
        h.append(VARY, HeaderValue::from_static("origin"));
    }
    res
}
