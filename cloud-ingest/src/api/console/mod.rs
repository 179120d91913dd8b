//! The ops console: a browser front end served by cloud-ingest itself, and the API routes it
//! needs beyond the data routes (who am I, terminal KPIs, the site model, truck tracks).
//!
//! # Layout
//! - `mod.rs`: the embedded assets (plain HTML/CSS/ES modules, compiled into the binary with
//!   `include_str!`; no CDN, no build step) served under `/` and `/console/…` with a strict
//!   Content-Security-Policy (`'self'` only, no inline script or style);
//! - `kpis.rs`: `GET /api/v1/kpis` — gross, net and ready stock per tank and product, days of
//!   endurance at the last 7 days' loading rate (pure computation separate from the loading);
//! - `data.rs`: `GET /api/v1/whoami`, `GET /api/v1/site-model`, `GET /api/v1/track`;
//! - `assets/`: `index.html` (shell and login), `style.css`, `app.js` (session, router, API
//!   calls, error hook), `chart.js` (time-series chart and track plot, SVG), `pages.js` (one
//!   render function per page).
//!
//! The pages keep the token in `sessionStorage` and send it as `Authorization: Bearer`; a 401
//! sends them back to the login form. Ages are computed from the server's clock (`now_ms` of
//! `/api/v1/whoami`, refreshed on every navigation), never the browser's. Every page marks
//! `document.body.dataset.state` (`loading` → `ready` or `error`) and records script errors and
//! `console.error` calls in `window.__consoleErrors`, so the browser test can check them.

pub(super) mod data;
pub(super) mod kpis;

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};

use super::problem::Problem;
use super::ApiState;

/// The policy of every console response: only this origin, no inline code, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The embedded files: name under `/console/`, content type, bytes.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/chart.js"),
    ),
    (
        "pages.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/pages.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

/// The console's static routes (open: the assets hold no data; every data call needs a token).
/// They are not API routes, so they are not in the OpenAPI document.
pub(crate) fn routes() -> Vec<(&'static str, MethodRouter<ApiState>)> {
    vec![
        ("/", get(index)),
        ("/console", get(index)),
        ("/console/", get(index)),
        ("/console/{*file}", get(asset)),
        // Browsers ask for it on any page of the origin (e.g. a raw JSON answer).
        ("/favicon.ico", get(favicon)),
    ]
}

/// One embedded file with the console's headers.
fn serve(name: &str) -> Response {
    let Some((_, ctype, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return Problem::not_found(format!("no console file {name:?}; the console starts at /"))
            .into_response();
    };
    let mut res = (StatusCode::OK, *body).into_response();
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidate every time: a new binary serves new files under the same names.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// `GET /`: the console's page.
async fn index() -> Response {
    serve("index.html")
}

/// `GET /favicon.ico`: the console's icon.
async fn favicon() -> Response {
    serve("favicon.svg")
}

/// `GET /console/{file}`.
async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        let index = ASSETS[0].2;
        for (name, _, body) in ASSETS {
            assert!(!body.is_empty(), "{name}");
            if *name != "index.html" {
                let used = ASSETS.iter().any(|(_, _, b)| {
                    b.contains(&format!("/console/{name}")) || b.contains(&format!("./{name}"))
                });
                assert!(used, "{name} is referenced");
            }
        }
        assert!(!index.contains("<script>"), "no inline script");
        assert!(!index.contains("style="), "no inline style");
        for (name, _, body) in ASSETS {
            // The only absolute URL is the SVG namespace name (an identifier, never fetched).
            let external = body
                .replace("http://www.w3.org/2000/svg", "")
                .contains("://");
            assert!(!external, "{name}: no external URL");
        }
    }
}
