//! Request ids: every request has one — the client's `X-Request-Id` when it is sane (1–128
//! characters of `A-Z a-z 0-9 - _ . : + / = @`), else a new random one (32 hex digits). It is
//! echoed in the response's `X-Request-Id` header and in problem bodies (`request_id`), and it
//! names the request's tracing span, so every log line written while serving the request
//! carries it (`request_id=…`, a journal field under systemd).

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// The header (lower case, as HTTP/2 and hyper write it).
pub const HEADER: &str = "x-request-id";

/// Longest id accepted from a client.
const MAX_LEN: usize = 128;

/// The request's id, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(pub(crate) String);

/// A new random id (128 bits, hex).
pub(crate) fn generate() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The client's id if it is sane.
fn accepted(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let ok = (1..=MAX_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b));
    ok.then_some(s)
}

/// Outermost middleware: give the request its id and span, echo the id, log the outcome (debug).
pub(crate) async fn assign(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(accepted)
        .map_or_else(generate, str::to_owned);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    // Sane ids and generated ones are visible ASCII: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER, v);
    }
    span.in_scope(|| {
        tracing::debug!(
            status = res.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "api request"
        )
    });
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_others_replaced() {
        let ok = |s: &str| accepted(&HeaderValue::from_str(s).expect("value")).is_some();
        assert!(ok("abc-123"));
        assert!(ok("0f1e2d3c-aaaa-bbbb-cccc-000011112222"));
        assert!(ok("trace:abc/1+2=3@x"));
        assert!(ok(&"a".repeat(128)));
        assert!(!ok(&"a".repeat(129)));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(!ok("semi;colon"));
        assert!(!ok("quote\"d"));
        let g = generate();
        assert_eq!(g.len(), 32);
        assert!(g.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(g, generate());
    }
}
