//! RFC 7807 (`application/problem+json`) errors, and the outermost layer that makes sure every
//! error leaves as one: problems raised by handlers get their `instance` (the request path),
//! errors produced by axum itself (unknown route, wrong method, extractor rejections) are
//! rewritten, and a panicking handler becomes a 500 instead of a dropped connection.
//!
//! Body: `{"type", "title", "status", "detail", "instance", "request_id"}` plus, for 400,
//! `"parameter"` (the query or path parameter at fault). `request_id` is the request's
//! `X-Request-Id` (`request_id.rs`). `type` is a URN naming the kind of problem:
//!
//! | status | `type`                                  |
//! |--------|-----------------------------------------|
//! | 400    | `urn:flowsquare:problem:bad-parameter`; `bad-request` for a malformed request line or header (`conn.rs`) |
//! | 401    | `urn:flowsquare:problem:unauthorized`   |
//! | 403    | `urn:flowsquare:problem:forbidden` (a role too low, a CORS origin not allowed) |
//! | 404    | `urn:flowsquare:problem:not-found`      |
//! | 405    | `urn:flowsquare:problem:method-not-allowed` |
//! | 408    | `urn:flowsquare:problem:request-timeout` (the request head did not arrive in time) |
//! | 409    | `urn:flowsquare:problem:conflict`       |
//! | 414    | `urn:flowsquare:problem:uri-too-long`   |
//! | 422    | `urn:flowsquare:problem:invalid-body` (+ `errors`: every problem with the body) |
//! | 429    | `urn:flowsquare:problem:rate-limited` (`Retry-After`) |
//! | 431    | `urn:flowsquare:problem:headers-too-large` |
//! | 500    | `urn:flowsquare:problem:internal`       |
//! | 503    | `urn:flowsquare:problem:unavailable` (`Retry-After`) |
//! | other  | `about:blank` (title = the HTTP reason) |
//!
//! Errors found before a request reaches the router (malformed or oversized heads, slow heads,
//! connections closed at the connection limit) are answered by the connection layer with the
//! same bodies ([`Problem::http1_response`]).

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::Instrument as _;

use super::request_id::RequestId;
use crate::store::StoreError;

/// The media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_S: u64 = 5;

/// Largest body of a non-problem error response that is kept as the problem's detail.
const MAX_DETAIL: usize = 1024;

/// An RFC 7807 problem (boxed: it travels in `Result`s through every handler).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem(Box<Body7807>);

/// The serialized body.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Body7807 {
    /// URI naming the kind of problem.
    #[serde(rename = "type")]
    kind: String,
    /// Short summary of the kind.
    title: String,
    /// HTTP status.
    status: u16,
    /// What went wrong in this request.
    detail: String,
    /// The request path (filled in by the outermost layer).
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    /// For 400: the parameter at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<String>,
    /// For 422: every problem with the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Vec<String>>,
    /// The request's id (`X-Request-Id`; filled in by the outermost layer).
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    /// `WWW-Authenticate` challenge for 401.
    #[serde(skip)]
    challenge: Option<&'static str>,
    /// `Retry-After` seconds (429; 503 defaults to 5).
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem(Box::new(Body7807 {
            kind: format!("urn:flowsquare:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            instance: None,
            parameter: None,
            errors: None,
            request_id: None,
            challenge: None,
            retry_after: None,
        }))
    }

    /// The parameter at fault (400).
    #[cfg(test)]
    pub(crate) fn parameter(&self) -> Option<&str> {
        self.0.parameter.as_deref()
    }

    /// 400: a query or path parameter is missing or malformed (named in `parameter` and in the
    /// detail).
    pub fn bad_parameter(parameter: &str, detail: impl std::fmt::Display) -> Problem {
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-parameter",
            "Bad request parameter",
            format!("parameter `{parameter}`: {detail}"),
        );
        p.0.parameter = Some(parameter.to_owned());
        p
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge (`invalid_token` when a token was sent).
    pub fn unauthorized(detail: impl Into<String>, token_sent: bool) -> Problem {
        let mut p = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        );
        p.0.challenge = Some(if token_sent {
            "Bearer realm=\"flowsquare\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"flowsquare\""
        });
        p
    }

    /// 403: authenticated, but the role is too low.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Role too low", detail)
    }

    /// 404: no such route or resource.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 409: the request conflicts with what is stored (or configured).
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 422: the JSON body is malformed or invalid; every problem is listed in `errors`.
    pub fn invalid_body(errors: Vec<String>) -> Problem {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "Invalid request body",
            errors.join("; "),
        );
        p.0.errors = Some(errors);
        p
    }

    /// 503: the database is unavailable (with `Retry-After`).
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }

    /// 429: a rate limit is exhausted; retry after `retry_after_s` seconds (`Retry-After`).
    pub fn too_many_requests(detail: impl Into<String>, retry_after_s: u64) -> Problem {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            detail,
        );
        p.0.retry_after = Some(retry_after_s.max(1));
        p
    }

    /// A problem found by the connection layer before routing: 400 (malformed request line or
    /// header), 408 (head too slow), 414, 431, 503 (connection limit, shutting down).
    pub(crate) fn protocol(status: StatusCode, detail: impl Into<String>) -> Problem {
        let (slug, title) = match status {
            StatusCode::BAD_REQUEST => ("bad-request", "Malformed request"),
            StatusCode::REQUEST_TIMEOUT => ("request-timeout", "Request head timeout"),
            StatusCode::URI_TOO_LONG => ("uri-too-long", "URI too long"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                ("headers-too-large", "Request headers too large")
            }
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "Service unavailable"),
            _ => return Problem::for_status(status, detail.into()),
        };
        Problem::new(status, slug, title, detail)
    }

    /// Set `instance` (the request path) and `request_id`.
    pub(crate) fn at(mut self, instance: Option<String>, request_id: Option<String>) -> Problem {
        self.0.instance = instance;
        self.0.request_id = request_id;
        self
    }

    /// The whole HTTP/1.1 response (head and body, `Connection: close`) for the connection
    /// layer, which answers before any router exists.
    pub(crate) fn http1_response(&self) -> Vec<u8> {
        let status = self.status_code();
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
            body.len()
        );
        if let Some(id) = &self.0.request_id {
            head.push_str(&format!("{}: {id}\r\n", super::request_id::HEADER));
        }
        if let Some(s) = self.retry_after_s() {
            head.push_str(&format!("retry-after: {s}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        out
    }

    fn retry_after_s(&self) -> Option<u64> {
        self.0
            .retry_after
            .or((self.0.status == 503).then_some(RETRY_AFTER_S))
    }

    /// 500.
    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    /// The problem for an error status produced outside our handlers.
    fn for_status(status: StatusCode, detail: String) -> Problem {
        match status {
            StatusCode::NOT_FOUND => Problem::not_found(detail),
            StatusCode::METHOD_NOT_ALLOWED => {
                Problem::new(status, "method-not-allowed", "Method not allowed", detail)
            }
            StatusCode::BAD_REQUEST => {
                Problem::new(status, "bad-parameter", "Bad request parameter", detail)
            }
            StatusCode::SERVICE_UNAVAILABLE => Problem::unavailable(detail),
            StatusCode::INTERNAL_SERVER_ERROR => Problem::internal(detail),
            _ => Problem(Box::new(Body7807 {
                kind: "about:blank".into(),
                title: status.canonical_reason().unwrap_or("Error").into(),
                status: status.as_u16(),
                detail,
                instance: None,
                parameter: None,
                errors: None,
                request_id: None,
                challenge: None,
                retry_after: None,
            })),
        }
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn body(&self) -> Body {
        // Serializing a struct of strings and integers cannot fail; the fallback is a constant.
        Body::from(
            serde_json::to_vec(&*self.0)
                .unwrap_or_else(|_| br#"{"type":"about:blank","title":"Error"}"#.to_vec()),
        )
    }
}

impl From<StoreError> for Problem {
    /// Transient store errors (database down, busy) are 503; bad input is 400; the rest 500 with
    /// the cause in the service log, not in the response.
    fn from(e: StoreError) -> Problem {
        if e.is_transient() {
            tracing::warn!(error = %e, "api: database unavailable");
            Problem::unavailable("the database is unavailable; retry later")
        } else if let StoreError::Invalid(msg) = &e {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-parameter",
                "Bad request parameter",
                msg.clone(),
            )
        } else {
            tracing::error!(error = %e, "api: store query failed");
            Problem::internal("the store query failed; the cause is in the service log")
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut res = Response::new(self.body());
        *res.status_mut() = self.status_code();
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(c) = self.0.challenge {
            h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        if let Some(s) = self.retry_after_s() {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        // The outermost layer finds it here to add the `instance`.
        res.extensions_mut().insert(self);
        res
    }
}

/// Outer middleware (inside the request id's): runs the request in its own task, in the
/// request's span (a panic becomes a 500 problem), then gives every error response a complete
/// problem body with `instance` = the request path and the request id.
pub(crate) async fn finish(req: Request, next: Next) -> Response {
    let instance = req.uri().path().to_owned();
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    let task = next.run(req).instrument(tracing::Span::current());
    let res = match tokio::spawn(task).await {
        Ok(res) => res,
        Err(e) => {
            tracing::error!(path = %instance, error = %e, "api: handler failed");
            Problem::internal("the request handler failed; the cause is in the service log")
                .into_response()
        }
    };
    let problem = match res.extensions().get::<Problem>() {
        Some(p) => p.clone(),
        None if res.status().is_client_error() || res.status().is_server_error() => {
            let status = res.status();
            let (parts, body) = res.into_parts();
            let text = axum::body::to_bytes(body, MAX_DETAIL)
                .await
                .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
                .unwrap_or_default();
            let detail = if !text.is_empty() {
                text
            } else if status == StatusCode::NOT_FOUND {
                format!("no route {instance}; the routes are listed in /api/v1/openapi.json")
            } else if status == StatusCode::METHOD_NOT_ALLOWED {
                "this method is not served on this path (the methods are in /api/v1/openapi.json)"
                    .to_owned()
            } else {
                status.canonical_reason().unwrap_or("error").to_owned()
            };
            let p = Problem::for_status(status, detail).at(Some(instance), request_id);
            let mut out = p.into_response();
            // Keep what axum said beyond the body (e.g. `Allow` on 405).
            for (k, v) in parts.headers.iter() {
                if k != CONTENT_TYPE && k != CONTENT_LENGTH && !out.headers().contains_key(k) {
                    out.headers_mut().insert(k.clone(), v.clone());
                }
            }
            return out;
        }
        None => return res,
    };
    let p = problem.at(Some(instance), request_id);
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.extensions.remove::<Problem>();
    Response::from_parts(parts, p.body())
}
