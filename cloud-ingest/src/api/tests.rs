//! The API against a real SQLite store in a temp dir (filled through the `Store` trait), driven
//! with `tower::ServiceExt::oneshot`; one test serves on a real listener.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use flowsquare_wire as wire;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

use super::*;
use crate::store::sqlite::SqliteStore;
use crate::store::suite::{batch, birth, T0};
use crate::store::{
    AgentRow, Bucket, CommitOutcome, DeadLetter, DeadLetterRow, GapRow, LatestRow, StoreError,
    TagRow,
};

pub(super) const VIEWER: &str = "viewer-secret";
pub(super) const OPERATOR: &str = "operator-secret";
pub(super) const AUDITOR: &str = "auditor-secret";
pub(super) const ADMIN: &str = "admin-secret";

/// Fault injection around the real store: reads and pings fail as asked.
struct Faulty {
    inner: SqliteStore,
    /// 0 fine, 1 database down (transient), 2 broken (permanent), 3 panic.
    mode: AtomicU8,
}

impl Faulty {
    fn check(&self) -> Result<(), StoreError> {
        match self.mode.load(Relaxed) {
            0 => Ok(()),
            1 => Err(StoreError::Unavailable("connection refused".into())),
            2 => Err(StoreError::Task("secret internals".into())),
            _ => panic!("injected panic"),
        }
    }
}

#[async_trait]
impl Store for Faulty {
    async fn migrate(&self) -> Result<String, StoreError> {
        self.inner.migrate().await
    }
    async fn commit(&self, batches: &[wire::Batch]) -> Result<Vec<CommitOutcome>, StoreError> {
        self.inner.commit(batches).await
    }
    async fn dead_letter(&self, dl: &DeadLetter) -> Result<(), StoreError> {
        self.inner.dead_letter(dl).await
    }
    async fn birth(&self, b: &wire::Birth, received_ms: i64) -> Result<(), StoreError> {
        self.inner.birth(b, received_ms).await
    }
    async fn status(
        &self,
        site: &str,
        agent: &str,
        s: &wire::Status,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.status(site, agent, s, received_ms).await
    }
    async fn heartbeat(
        &self,
        site: &str,
        agent: &str,
        h: &wire::Heartbeat,
        received_ms: i64,
    ) -> Result<(), StoreError> {
        self.inner.heartbeat(site, agent, h, received_ms).await
    }
    fn ledger(&self) -> &dyn crate::store::Ledger {
        &self.inner
    }
    async fn agents_page(
        &self,
        sites: Option<&[String]>,
        after: Option<&crate::store::AgentKey>,
        limit: i64,
    ) -> Result<Vec<AgentRow>, StoreError> {
        self.check()?;
        self.inner.agents_page(sites, after, limit).await
    }
    async fn tags_page(
        &self,
        f: &crate::store::TagFilter,
        after: Option<&crate::store::TagKey>,
        limit: i64,
    ) -> Result<Vec<TagRow>, StoreError> {
        self.check()?;
        self.inner.tags_page(f, after, limit).await
    }
    async fn latest(&self, tag_ids: &[i64]) -> Result<Vec<LatestRow>, StoreError> {
        self.check()?;
        self.inner.latest(tag_ids).await
    }
    async fn series(
        &self,
        tag_id: i64,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        self.check()?;
        self.inner.series(tag_id, from_ms, to_ms, step_ms).await
    }
    async fn count_readings(
        &self,
        tag_id: Option<i64>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<i64, StoreError> {
        self.inner.count_readings(tag_id, from_ms, to_ms).await
    }
    async fn gaps_page(
        &self,
        f: &crate::store::GapFilter,
        after: Option<crate::store::GapKey>,
        limit: i64,
    ) -> Result<Vec<GapRow>, StoreError> {
        self.check()?;
        self.inner.gaps_page(f, after, limit).await
    }
    async fn dead_letters_page(
        &self,
        before: Option<crate::store::DeadLetterKey>,
        limit: i64,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.check()?;
        self.inner.dead_letters_page(before, limit).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ping().await
    }
}

pub(super) struct Fixture {
    pub(super) app: Router,
    pub(super) state: ApiState,
    store: Arc<Faulty>,
    pub(super) level: i64,
    temp: i64,
    _dir: TempDir,
}

/// Site s1, agent a1, tags tank/level and tank/temp with 120 readings each (1 s apart from T0,
/// values 0..119; the 100th of tank/level is bad), a buffer-full gap, a heartbeat, three dead
/// letters; site s2 with one tag and no readings.
pub(super) async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = SqliteStore::open(&dir.path().join("ingest.db")).expect("open");
    let store = Arc::new(Faulty {
        inner: sqlite,
        mode: AtomicU8::new(0),
    });
    store.migrate().await.expect("migrate");
    store
        .birth(&birth("s1", "a1", "h1", &["tank/level", "tank/temp"]), T0)
        .await
        .expect("birth");
    store
        .birth(&birth("s2", "a9", "h1", &["pump/speed"]), T0)
        .await
        .expect("birth 2");
    let mut b = batch("s1", "a1", "h1", 1, 2, 120, T0, 0.0);
    b.readings[100].quality = wire::Quality::BadCommunication;
    b.readings[100].value = None;
    b.gaps.push(wire::Gap {
        tags: vec![1],
        from_ms: T0 - 60_000,
        to_ms: T0,
        count: 60,
        count_known: true,
        reason: wire::GapReason::BufferFull,
    });
    assert_eq!(
        store.commit(&[b]).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 240,
            events: 0,
            gaps: 1,
            out_of_window: 0,
        }]
    );
    store
        .status("s1", "a1", &wire::Status::online(T0, "0.1.0"), T0)
        .await
        .expect("status");
    for i in 0..3 {
        let dl = DeadLetter {
            topic: format!("fs/v1/s1/a1/data#{i}"),
            payload: vec![0; 10 + i],
            reason: format!("bad {i}"),
            received_ms: T0 + i as i64,
        };
        store.dead_letter(&dl).await.expect("dead letter");
    }
    let tags = store.tags(Some("s1"), None).await.expect("tags");
    let id = |n: &str| {
        tags.iter()
            .find(|t| t.name == n)
            .map(|t| t.id)
            .expect("tag")
    };
    let (level, temp) = (id("tank/level"), id("tank/temp"));
    let tok = |name: &str, role, t: &str| TokenConfig::new(name, role, hash_token(t));
    let config = ApiConfig {
        listen: "127.0.0.1:0".into(),
        tokens: vec![
            tok("grafana", Role::Viewer, VIEWER),
            tok("ops", Role::Operator, OPERATOR),
            tok("audit", Role::Auditor, AUDITOR),
            tok("root", Role::Admin, ADMIN),
        ],
        ..ApiConfig::default()
    };
    config.validate().expect("valid config");
    let state = ApiState {
        store: store.clone(),
        stats: Arc::new(ConsumerStats::default()),
        config: Arc::new(config),
        ready: Arc::new(AtomicBool::new(true)),
        reconciler: None,
        api_stats: Default::default(),
    };
    Fixture {
        app: router(state.clone()),
        state,
        store,
        level,
        temp,
        _dir: dir,
    }
}

pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) text: String,
}

impl Answer {
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub(super) fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The `data` array of a 200.
    pub(super) fn data(&self) -> Vec<Value> {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        assert_eq!(self.content_type(), "application/json");
        match self.json() {
            // `next`: the cursor of a paged list (`page.rs`), null or a string.
            Value::Object(mut m)
                if m.keys().all(|k| k == "data" || k == "next")
                    && m.get("next").is_none_or(|n| n.is_null() || n.is_string()) =>
            {
                match m.remove("data") {
                    Some(Value::Array(a)) => a,
                    other => panic!("data is not an array: {other:?}"),
                }
            }
            other => panic!("not {{\"data\": [...]}}: {other}"),
        }
    }
    /// Assert a complete problem body with this status; returns it.
    pub(super) fn problem(&self, status: StatusCode, path: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.content_type(), "application/problem+json");
        let p = self.json();
        for k in ["type", "title", "detail", "instance"] {
            assert!(p[k].is_string(), "{k} missing in {p}");
        }
        assert_eq!(p["status"], status.as_u16());
        assert_eq!(p["instance"], path);
        p
    }
    /// A 400 naming `parameter`.
    pub(super) fn bad_parameter(&self, path: &str, parameter: &str) {
        let p = self.problem(StatusCode::BAD_REQUEST, path);
        assert_eq!(p["parameter"], parameter, "{p}");
        assert!(
            p["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("`{parameter}`")),
            "{p}"
        );
        assert_eq!(p["type"], "urn:flowsquare:problem:bad-parameter");
    }
}

pub(super) async fn send(app: &Router, method: Method, uri: &str, token: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).expect("utf-8"),
    }
}

pub(super) async fn get(app: &Router, uri: &str, token: Option<&str>) -> Answer {
    send(app, Method::GET, uri, token).await
}

#[tokio::test]
async fn authentication_and_roles() {
    let f = fixture().await;
    let a = get(&f.app, "/api/v1/agents", None).await;
    a.problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    assert_eq!(
        a.headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"flowsquare\"")
    );
    let a = get(&f.app, "/api/v1/agents", Some("wrong")).await;
    a.problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    assert!(a.headers[WWW_AUTHENTICATE]
        .to_str()
        .unwrap_or_default()
        .starts_with("Bearer"));
    assert!(a.headers[WWW_AUTHENTICATE]
        .to_str()
        .unwrap_or_default()
        .contains("invalid_token"));
    // The hash itself is not a token.
    get(&f.app, "/api/v1/agents", Some(&hash_token(VIEWER)))
        .await
        .problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    // Not a bearer token.
    let req = Request::get("/api/v1/agents")
        .header(AUTHORIZATION, format!("Basic {VIEWER}"))
        .body(Body::empty())
        .expect("request");
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().contains_key(WWW_AUTHENTICATE));
    // The scheme is case-insensitive.
    let req = Request::get("/api/v1/agents")
        .header(AUTHORIZATION, format!("bearer {VIEWER}"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        f.app
            .clone()
            .oneshot(req)
            .await
            .expect("infallible")
            .status(),
        StatusCode::OK
    );

    for t in [VIEWER, OPERATOR, AUDITOR, ADMIN] {
        assert_eq!(
            get(&f.app, "/api/v1/agents", Some(t)).await.status,
            StatusCode::OK,
            "{t}"
        );
    }
    for t in [VIEWER, OPERATOR] {
        let p = get(&f.app, "/api/v1/dead-letters", Some(t))
            .await
            .problem(StatusCode::FORBIDDEN, "/api/v1/dead-letters");
        let detail = p["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("auditor role"), "{detail}");
        assert!(!detail.contains(t), "the token is never echoed");
    }
    for t in [AUDITOR, ADMIN] {
        assert_eq!(
            get(&f.app, "/api/v1/dead-letters", Some(t))
                .await
                .data()
                .len(),
            3,
            "{t}"
        );
    }
    // Open routes need no token.
    for p in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        assert_eq!(get(&f.app, p, None).await.status, StatusCode::OK, "{p}");
    }
}

#[tokio::test]
async fn no_tokens_configured_means_401() {
    let f = fixture().await;
    let state = ApiState {
        config: Arc::new(ApiConfig::default()),
        ..f.state.clone()
    };
    let app = router(state);
    get(&app, "/api/v1/agents", Some(VIEWER))
        .await
        .problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    assert_eq!(get(&app, "/healthz", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn agents_and_tags() {
    let f = fixture().await;
    let agents = get(&f.app, "/api/v1/agents", Some(VIEWER)).await.data();
    assert_eq!(agents.len(), 2);
    assert_eq!(
        (
            agents[0]["site"].as_str(),
            agents[0]["agent"].as_str(),
            agents[0]["online"].as_bool()
        ),
        (Some("s1"), Some("a1"), Some(true))
    );
    assert_eq!(agents[0]["config_hash"], "h1");

    let all = get(&f.app, "/api/v1/tags", Some(VIEWER)).await.data();
    assert_eq!(all.len(), 3);
    let s1 = get(&f.app, "/api/v1/tags?site=s1", Some(VIEWER))
        .await
        .data();
    assert_eq!(
        s1.iter()
            .map(|t| t["name"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["tank/level", "tank/temp"]
    );
    let level = &s1[0];
    assert_eq!(
        (
            level["id"].as_i64(),
            level["unit"].as_str(),
            level["interval_ms"].as_i64()
        ),
        (Some(f.level), Some("m"), Some(1000))
    );
    let pref = get(&f.app, "/api/v1/tags?prefix=tank%2Fle", Some(VIEWER))
        .await
        .data();
    assert_eq!(pref.len(), 1);
    assert_eq!(pref[0]["id"], f.level);
    // Empty values count as absent.
    assert_eq!(
        get(&f.app, "/api/v1/tags?site=&prefix=", Some(VIEWER))
            .await
            .data()
            .len(),
        3
    );
    assert!(get(&f.app, "/api/v1/tags?site=nowhere", Some(VIEWER))
        .await
        .data()
        .is_empty());
}

#[tokio::test]
async fn latest_values() {
    let f = fixture().await;
    let (l, t) = (f.level, f.temp);
    for uri in [
        format!("/api/v1/latest?tag_id={l}&tag_id={t}"),
        format!("/api/v1/latest?tag_id={l},{t}"),
        format!("/api/v1/latest?tag_id={l}%2C{t}&tag_id={l}"),
    ] {
        let mut rows = get(&f.app, &uri, Some(VIEWER)).await.data();
        rows.sort_by_key(|r| r["tag_id"].as_i64());
        assert_eq!(rows.len(), 2, "{uri}");
        assert_eq!(
            (
                rows[0]["tag_id"].as_i64(),
                rows[0]["ts_ms"].as_i64(),
                rows[0]["value"].as_f64()
            ),
            (Some(l.min(t)), Some(T0 + 119_000), Some(119.0))
        );
        assert_eq!(rows[0]["quality"], "good");
    }
    // A registered tag without readings is left out.
    let tags = get(&f.app, "/api/v1/tags?site=s2", Some(VIEWER))
        .await
        .data();
    let pump = tags[0]["id"].as_i64().expect("id");
    assert!(get(
        &f.app,
        &format!("/api/v1/latest?tag_id={pump}"),
        Some(VIEWER)
    )
    .await
    .data()
    .is_empty());
    // Unknown ids are 404, naming them.
    let p = get(
        &f.app,
        &format!("/api/v1/latest?tag_id={l},99999"),
        Some(VIEWER),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "/api/v1/latest");
    assert!(
        p["detail"].as_str().unwrap_or_default().contains("99999"),
        "{p}"
    );
}

#[tokio::test]
async fn series_bucketing() {
    let f = fixture().await;
    let l = f.level;
    let path = format!("/api/v1/tags/{l}/series");
    // 120 s of data: 1m buckets → 2, 30s → 4; RFC 3339 and epoch ms mix.
    let b = get(
        &f.app,
        &format!(
            "{path}?from=2026-01-01T00:00:00Z&to={}&step=1m",
            T0 + 3_600_000
        ),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["ts_ms"], T0);
    assert_eq!(
        (b[0]["count"].as_i64(), b[0]["bad"].as_i64()),
        (Some(60), Some(0))
    );
    assert_eq!(
        (
            b[0]["min"].as_f64(),
            b[0]["max"].as_f64(),
            b[0]["last"].as_f64(),
            b[0]["avg"].as_f64()
        ),
        (Some(0.0), Some(59.0), Some(59.0), Some(29.5))
    );
    assert_eq!(b[1]["ts_ms"], T0 + 60_000);
    assert_eq!(
        (b[1]["count"].as_i64(), b[1]["bad"].as_i64()),
        (Some(60), Some(1)),
        "reading 100 is bad"
    );
    let b = get(
        &f.app,
        &format!("{path}?from={T0}&to={}&step=30s", T0 + 120_000),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(
        b.iter()
            .map(|x| x["count"].as_i64().unwrap_or(-1))
            .collect::<Vec<_>>(),
        [30, 30, 30, 30]
    );
    // The range is [from, to): a range ending at T0 + 10 s holds 10 readings.
    let b = get(
        &f.app,
        &format!("{path}?from={T0}&to={}&step=1h", T0 + 10_000),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["count"], 10);
    // Offsets are honoured: 01:00:30+01:00 is T0 + 30 s.
    let b = get(
        &f.app,
        &format!(
            "{path}?from=2026-01-01T01:00:30%2B01:00&to={}&step=1d",
            T0 + 40_000
        ),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(b[0]["count"], 10);
    // Exactly 10,000 buckets is allowed; 10,001 is not.
    assert_eq!(
        get(
            &f.app,
            &format!("{path}?from={T0}&to={}&step=1s", T0 + 10_000_000),
            Some(VIEWER)
        )
        .await
        .status,
        StatusCode::OK
    );
    let too_many = format!("{path}?from={T0}&to={}&step=1s", T0 + 10_000_001);
    get(&f.app, &too_many, Some(VIEWER))
        .await
        .bad_parameter(&path, "step");
    // The epoch alignment counts the buckets the range only touches: < 10,000 s, 10,001 buckets.
    let unaligned = format!("{path}?from={}&to={}&step=1s", T0 + 500, T0 + 10_000_100);
    get(&f.app, &unaligned, Some(VIEWER))
        .await
        .bad_parameter(&path, "step");
    // An unknown tag is 404; an empty range of a known tag is an empty list.
    get(
        &f.app,
        &format!(
            "/api/v1/tags/99999/series?from={T0}&to={}&step=1m",
            T0 + 60_000
        ),
        None,
    )
    .await
    .problem(StatusCode::UNAUTHORIZED, "/api/v1/tags/99999/series");
    get(
        &f.app,
        &format!(
            "/api/v1/tags/99999/series?from={T0}&to={}&step=1m",
            T0 + 60_000
        ),
        Some(VIEWER),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "/api/v1/tags/99999/series");
    assert!(get(
        &f.app,
        &format!("{path}?from=1000&to=2000&step=1s"),
        Some(VIEWER)
    )
    .await
    .data()
    .is_empty());
}

#[tokio::test]
async fn gaps_and_dead_letters() {
    let f = fixture().await;
    let g = get(
        &f.app,
        &format!(
            "/api/v1/gaps?site=s1&from={}&to={}",
            T0 - 3_600_000,
            T0 + 3_600_000
        ),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(g.len(), 1);
    assert_eq!(
        (
            g[0]["reason"].as_str(),
            g[0]["count"].as_i64(),
            g[0]["from_ms"].as_i64()
        ),
        (Some("buffer-full"), Some(60), Some(T0 - 60_000))
    );
    assert_eq!(g[0]["tag_ids"], serde_json::json!([f.temp]));
    assert!(get(
        &f.app,
        &format!("/api/v1/gaps?site=s2&from={}&to={}", T0 - 3_600_000, T0),
        Some(VIEWER)
    )
    .await
    .data()
    .is_empty());
    assert!(get(
        &f.app,
        &format!("/api/v1/gaps?from={}&to={}", T0 + 60_000, T0 + 120_000),
        Some(VIEWER)
    )
    .await
    .data()
    .is_empty());

    let d = get(&f.app, "/api/v1/dead-letters?limit=2", Some(AUDITOR))
        .await
        .data();
    assert_eq!(d.len(), 2);
    assert_eq!(
        (
            d[0]["reason"].as_str(),
            d[0]["bytes"].as_i64(),
            d[0]["received_ms"].as_i64()
        ),
        (Some("bad 2"), Some(12), Some(T0 + 2))
    );
    assert!(d[0].get("payload").is_none());
    assert_eq!(
        get(&f.app, "/api/v1/dead-letters", Some(ADMIN))
            .await
            .data()
            .len(),
        3
    );
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let f = fixture().await;
    let series = format!("/api/v1/tags/{}/series", f.level);
    let cases: Vec<(String, &str, &str)> = vec![
        ("/api/v1/agents?x=1".into(), "/api/v1/agents", "x"),
        ("/api/v1/tags?sites=s1".into(), "/api/v1/tags", "sites"),
        ("/api/v1/tags?site=a&site=b".into(), "/api/v1/tags", "site"),
        ("/api/v1/latest".into(), "/api/v1/latest", "tag_id"),
        ("/api/v1/latest?tag_id=".into(), "/api/v1/latest", "tag_id"),
        (
            "/api/v1/latest?tag_id=abc".into(),
            "/api/v1/latest",
            "tag_id",
        ),
        (
            "/api/v1/latest?tag_ids=1".into(),
            "/api/v1/latest",
            "tag_ids",
        ),
        (
            format!(
                "/api/v1/latest?tag_id={}",
                (1..=1001)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "/api/v1/latest",
            "tag_id",
        ),
        (
            "/api/v1/tags/abc/series?from=0&to=1&step=1s".into(),
            "/api/v1/tags/abc/series",
            "id",
        ),
        (format!("{series}?to=1000&step=1s"), &series, "from"),
        (
            format!("{series}?from=yesterday&to=1000&step=1s"),
            &series,
            "from",
        ),
        (format!("{series}?from=0&step=1s"), &series, "to"),
        (format!("{series}?from=2000&to=1000&step=1s"), &series, "to"),
        (format!("{series}?from=0&to=1000"), &series, "step"),
        (format!("{series}?from=0&to=1000&step=5x"), &series, "step"),
        (format!("{series}?from=0&to=1000&step=0s"), &series, "step"),
        (
            format!("{series}?from=0&to=1000&step=1s&limit=10001"),
            &series,
            "limit",
        ),
        ("/api/v1/gaps?site=s1".into(), "/api/v1/gaps", "from"),
        (
            format!("/api/v1/gaps?from={T0}&to=2026-13-01T00:00:00Z"),
            "/api/v1/gaps",
            "to",
        ),
        (
            "/api/v1/dead-letters?limit=0".into(),
            "/api/v1/dead-letters",
            "limit",
        ),
        (
            "/api/v1/dead-letters?limit=1001".into(),
            "/api/v1/dead-letters",
            "limit",
        ),
        (
            "/api/v1/dead-letters?limit=ten".into(),
            "/api/v1/dead-letters",
            "limit",
        ),
    ];
    for (uri, path, parameter) in cases {
        get(&f.app, &uri, Some(ADMIN))
            .await
            .bad_parameter(path, parameter);
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let f = fixture().await;
    let p = get(&f.app, "/api/v1/nothing", Some(VIEWER))
        .await
        .problem(StatusCode::NOT_FOUND, "/api/v1/nothing");
    assert_eq!(p["type"], "urn:flowsquare:problem:not-found");
    get(&f.app, "/index.php", None)
        .await
        .problem(StatusCode::NOT_FOUND, "/index.php");
    get(&f.app, "/console/nothing.js", None)
        .await
        .problem(StatusCode::NOT_FOUND, "/console/nothing.js");
    get(&f.app, "/api/v1/agents/", Some(VIEWER))
        .await
        .problem(StatusCode::NOT_FOUND, "/api/v1/agents/");
    let a = send(&f.app, Method::POST, "/api/v1/agents", Some(ADMIN)).await;
    let p = a.problem(StatusCode::METHOD_NOT_ALLOWED, "/api/v1/agents");
    assert_eq!(p["type"], "urn:flowsquare:problem:method-not-allowed");
    assert!(a.headers.contains_key("allow"));
    send(&f.app, Method::DELETE, "/healthz", None)
        .await
        .problem(StatusCode::METHOD_NOT_ALLOWED, "/healthz");
    assert_eq!(
        send(&f.app, Method::HEAD, "/healthz", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn probes_and_metrics() {
    let f = fixture().await;
    let h = get(&f.app, "/healthz", None).await;
    assert_eq!(
        (h.status, h.json()),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    let r = get(&f.app, "/readyz", None).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, serde_json::json!({"status": "ready"}))
    );

    f.state.ready.store(false, Relaxed);
    let a = get(&f.app, "/readyz", None).await;
    let p = a.problem(StatusCode::SERVICE_UNAVAILABLE, "/readyz");
    assert!(
        p["detail"].as_str().unwrap_or_default().contains("broker"),
        "{p}"
    );
    assert!(a.headers.contains_key("retry-after"));
    f.state.ready.store(true, Relaxed);
    f.store.mode.store(1, Relaxed);
    let p = get(&f.app, "/readyz", None)
        .await
        .problem(StatusCode::SERVICE_UNAVAILABLE, "/readyz");
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("database"),
        "{p}"
    );
    assert_eq!(
        get(&f.app, "/healthz", None).await.status,
        StatusCode::OK,
        "alive while the database is down"
    );
    f.store.mode.store(0, Relaxed);

    f.state.stats.stored_batches.fetch_add(7, Relaxed);
    f.state.stats.stored_readings.fetch_add(240, Relaxed);
    let m = get(&f.app, "/metrics", None).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.content_type().starts_with("text/plain; version=0.0.4"));
    assert!(m.text.contains("# TYPE flowsquare_ingest_stored_batches_total counter\nflowsquare_ingest_stored_batches_total 7\n"), "{}", m.text);
    assert!(m
        .text
        .contains("\nflowsquare_ingest_stored_readings_total 240\n"));
    assert!(m
        .text
        .contains("\nflowsquare_ingest_consumer_connected 1\n"));
}

#[tokio::test]
async fn store_failures_are_503_or_500_never_a_panic() {
    let f = fixture().await;
    let uris = [
        "/api/v1/agents".to_owned(),
        "/api/v1/tags".to_owned(),
        format!("/api/v1/latest?tag_id={}", f.level),
        format!("/api/v1/tags/{}/series?from=0&to=1000&step=1s", f.level),
        "/api/v1/gaps?from=0&to=1000".to_owned(),
        "/api/v1/dead-letters".to_owned(),
    ];
    for (mode, status) in [
        (1, StatusCode::SERVICE_UNAVAILABLE),
        (2, StatusCode::INTERNAL_SERVER_ERROR),
        (3, StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        f.store.mode.store(mode, Relaxed);
        for uri in &uris {
            let path = uri.split('?').next().unwrap_or_default();
            let a = get(&f.app, uri, Some(ADMIN)).await;
            let p = a.problem(status, path);
            assert!(
                !a.text.contains("secret internals") && !a.text.contains("injected panic"),
                "internals stay in the log: {p}"
            );
            if mode == 1 {
                assert_eq!(p["type"], "urn:flowsquare:problem:unavailable");
                assert!(a.headers.contains_key("retry-after"));
            }
        }
    }
    // Parameters are still checked first.
    get(&f.app, "/api/v1/latest", Some(ADMIN))
        .await
        .bad_parameter("/api/v1/latest", "tag_id");
    f.store.mode.store(0, Relaxed);
    assert_eq!(
        get(&f.app, "/api/v1/agents", Some(ADMIN)).await.status,
        StatusCode::OK
    );
}

/// Every `$ref` in `v` points into `doc`.
fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let ptr = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("external ref {r}"));
                assert!(doc.pointer(ptr).is_some(), "dangling {r}");
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let f = fixture().await;
    let a = get(&f.app, "/api/v1/openapi.json", None).await;
    assert_eq!(a.content_type(), "application/json");
    let doc = a.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let table = routes::table();
    let served: BTreeSet<String> = table.iter().map(|(p, _, _, _)| (*p).to_owned()).collect();
    assert_eq!(
        documented, served,
        "the OpenAPI paths are the router's paths"
    );
    for (path, method, needs, _) in &table {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{path}: {method} is served and documented");
        assert_eq!(
            doc["paths"][path].as_object().map(|m| m.len()),
            Some(table.iter().filter(|(p, _, _, _)| p == path).count()),
            "{path}: the documented methods are the served ones"
        );
        match needs {
            None => assert_eq!(op["security"], serde_json::json!([]), "{path} is open"),
            Some(role) => {
                assert!(
                    op.get("security").is_none(),
                    "{path} uses the global bearer security"
                );
                assert_eq!(op["x-required-role"], role.as_str(), "{path}");
                assert!(
                    op["responses"]["401"].is_object() && op["responses"]["403"].is_object(),
                    "{path}"
                );
            }
        }
        // Every documented path parameter is declared.
        for name in path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        {
            let declared = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["$ref"] == format!("#/components/parameters/{name}"));
            assert!(declared, "{path}: path parameter {name}");
        }
        // The router serves it (not the 404 fallback).
        if *method != "get" {
            continue;
        }
        let concrete = path
            .replace("{id}", &f.level.to_string())
            .replace("{date}", "2026-01-01");
        let res = get(&f.app, &concrete, Some(ADMIN)).await;
        assert!(
            !(res.status == StatusCode::NOT_FOUND && res.text.contains("no route")),
            "{concrete}: {}",
            res.text
        );
    }
    check_refs(&doc, &doc);
    // Every operation takes and answers X-Request-Id; all but the probes may answer 429.
    for (path, method, _, _) in &table {
        let op = &doc["paths"][path][method];
        let params = op["parameters"].as_array().expect("parameters");
        assert!(
            params.contains(&serde_json::json!({ "$ref": "#/components/parameters/XRequestId" })),
            "{path}"
        );
        let limited = !matches!(*path, "/healthz" | "/readyz");
        assert_eq!(op["responses"]["429"].is_object(), limited, "{path}: 429");
        assert!(
            op["responses"]["200"]["headers"]["X-Request-Id"].is_object()
                || op["responses"]["200"].get("$ref").is_some()
                || op["responses"]["201"].is_object(),
            "{path}"
        );
    }
    assert!(
        doc["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"].is_object()
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let problem = &doc["components"]["schemas"]["Problem"]["required"];
    assert_eq!(
        problem,
        &serde_json::json!(["type", "title", "status", "detail", "instance"])
    );

    // The schemas describe exactly what the row types serialize to.
    let rows: Vec<(&str, Value)> = vec![
        (
            "Agent",
            get(&f.app, "/api/v1/agents", Some(ADMIN)).await.data()[0].clone(),
        ),
        (
            "Tag",
            get(&f.app, "/api/v1/tags", Some(ADMIN)).await.data()[0].clone(),
        ),
        (
            "Latest",
            get(
                &f.app,
                &format!("/api/v1/latest?tag_id={}", f.level),
                Some(ADMIN),
            )
            .await
            .data()[0]
                .clone(),
        ),
        (
            "Bucket",
            get(
                &f.app,
                &format!(
                    "/api/v1/tags/{}/series?from={T0}&to={}&step=1h",
                    f.level,
                    T0 + 3_600_000
                ),
                Some(ADMIN),
            )
            .await
            .data()[0]
                .clone(),
        ),
        (
            "Gap",
            get(
                &f.app,
                &format!("/api/v1/gaps?from=0&to={}", T0 + 1),
                Some(ADMIN),
            )
            .await
            .data()[0]
                .clone(),
        ),
        (
            "DeadLetter",
            get(&f.app, "/api/v1/dead-letters", Some(ADMIN))
                .await
                .data()[0]
                .clone(),
        ),
        ("Problem", get(&f.app, "/api/v1/agents", None).await.json()),
        (
            "WhoAmI",
            get(&f.app, "/api/v1/whoami", Some(ADMIN)).await.data()[0].clone(),
        ),
        (
            "Kpis",
            get(&with_site_model(&f), "/api/v1/kpis", Some(ADMIN))
                .await
                .data()[0]
                .clone(),
        ),
        (
            "TankKpi",
            get(&with_site_model(&f), "/api/v1/kpis", Some(ADMIN))
                .await
                .data()[0]["tanks"][0]
                .clone(),
        ),
        (
            "ProductKpi",
            get(&with_site_model(&f), "/api/v1/kpis", Some(ADMIN))
                .await
                .data()[0]["products"][0]
                .clone(),
        ),
        (
            "SiteModel",
            get(&with_site_model(&f), "/api/v1/site-model", Some(ADMIN))
                .await
                .data()[0]
                .clone(),
        ),
    ];
    for (name, row) in rows {
        let schema = &doc["components"]["schemas"][name];
        let props: BTreeSet<&String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        let keys: BTreeSet<&String> = row.as_object().expect("object").keys().collect();
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(keys.is_subset(&props), "{name}: {keys:?} ⊄ {props:?}");
        assert!(
            required.iter().all(|k| row.get(*k).is_some()),
            "{name}: required {required:?}, got {keys:?}"
        );
        if name != "Problem" {
            assert_eq!(props, keys, "{name}");
        }
    }
}

#[tokio::test]
async fn serves_on_a_real_listener_until_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = fixture().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, f.state.clone(), async move {
        let _ = rx.await;
    }));
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET /api/v1/tags?site=s1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sock.read_to_string(&mut resp),
    )
    .await
    .expect("in time")
    .expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("tank/level"));
    let _ = tx.send(());
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("stops")
        .expect("task")
        .expect("serve");
}

/// A request with a JSON body.
pub(super) async fn send_json(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &Value,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).expect("utf-8"),
    }
}

/// The site model of the simulated terminal month (`config/sim/month-site.toml`, the
/// `flowsquare-sim-month` test-support crate's) with its strapping tables (site-sim's terminal
/// physics). Read here as data: that crate depends on this one, so a unit test cannot use it.
pub(super) fn sim_site_model() -> (crate::reconcile::ReconcileConfig, Vec<(String, String)>) {
    #[derive(serde::Deserialize)]
    struct File {
        reconcile: crate::reconcile::ReconcileConfig,
    }
    let file: File = toml::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/sim/month-site.toml"
    )))
    .expect("month-site.toml");
    let tables = file
        .reconcile
        .tanks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.clone(), site_sim::terminal::physics::table_csv(i)))
        .collect();
    (file.reconcile, tables)
}

/// The fixture's store with the simulated terminal's site model.
pub(super) fn with_site_model(f: &Fixture) -> Router {
    let (m, tables) = sim_site_model();
    let r = crate::reconcile::Reconciler::with_tables(m, &tables).expect("site model");
    router(ApiState {
        reconciler: Some(Arc::new(r)),
        ..f.state.clone()
    })
}

#[tokio::test]
async fn epods_are_validated_stored_once_and_listed() {
    let f = fixture().await;
    let app = with_site_model(&f);
    let epod = serde_json::json!({
        "trip": "TRIP-1", "bol": "BOL-1", "truck": "TRK-01", "station": "ST-KARIAKOO",
        "delivered_at": "2026-01-01T10:00:00Z", "receiver": "J. Doe", "lat": -6.8161, "lon": 39.2804,
        "compartments": [ { "compartment": 1, "product": "AGO", "gross_l": 9000.0, "net_l": 8950.5 } ]
    });
    // A viewer cannot post.
    send_json(&app, Method::POST, "/api/v1/epods", Some(VIEWER), &epod)
        .await
        .problem(StatusCode::FORBIDDEN, "/api/v1/epods");
    let a = send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &epod).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json()["data"][0]["id"].as_i64().expect("id");
    // The same again: 200, same id.
    let a = send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &epod).await;
    assert_eq!(a.data()[0]["id"], id);
    // Other content for the BOL: 409.
    let mut other = epod.clone();
    other["compartments"][0]["net_l"] = serde_json::json!(8900.0);
    let p = send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &other)
        .await
        .problem(StatusCode::CONFLICT, "/api/v1/epods");
    assert_eq!(p["type"], "urn:flowsquare:problem:conflict");
    // Every problem at once.
    let bad = serde_json::json!({
        "trip": "", "bol": "BOL-2", "truck": "TRK-01", "station": "ST-NOWHERE",
        "delivered_at": "yesterday", "receiver": "x", "lat": 95.0,
        "compartments": [ { "compartment": 1, "product": "AGO", "gross_l": -1.0 },
                          { "compartment": 1, "product": "AGO", "gross_l": 100.0 } ]
    });
    let p = send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &bad)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "/api/v1/epods");
    let errors: Vec<String> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().unwrap_or_default().to_owned())
        .collect();
    for want in [
        "trip",
        "delivered_at",
        "lat, lon",
        "gross_l",
        "given twice",
        "ST-NOWHERE",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{want} not in {errors:?}"
        );
    }
    // Unknown fields and broken JSON are 422 too.
    let mut extra = epod.clone();
    extra["colour"] = serde_json::json!("red");
    send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &extra)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "/api/v1/epods");
    let listed = get(
        &app,
        "/api/v1/epods?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["compartments"][0]["net_l"], 8950.5);
}

#[tokio::test]
async fn discharges_open_close_and_reconciliation_routes() {
    let f = fixture().await;
    let app = with_site_model(&f);
    let d = serde_json::json!({
        "site": "dar-terminal", "vessel": "MT Kilimanjaro", "parcel": "BL-42", "product": "AGO",
        "bl_l": 4_600_000.0, "tanks": ["T3", "T4"], "opened_at": "2026-01-01T10:00:00Z"
    });
    let a = send_json(&app, Method::POST, "/api/v1/discharges", Some(OPERATOR), &d).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json()["data"][0]["id"].as_i64().expect("id");
    // A tank of another product is refused.
    let mut wrong = d.clone();
    wrong["tanks"] = serde_json::json!(["T1", "T9"]);
    let p = send_json(
        &app,
        Method::POST,
        "/api/v1/discharges",
        Some(OPERATOR),
        &wrong,
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "/api/v1/discharges");
    assert_eq!(p["errors"].as_array().map(Vec::len), Some(2), "{p}");
    let close = format!("/api/v1/discharges/{id}/close");
    let early = serde_json::json!({ "closed_at": "2026-01-01T09:00:00Z" });
    send_json(&app, Method::POST, &close, Some(OPERATOR), &early)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, &close);
    let body = serde_json::json!({ "closed_at": "2026-01-02T04:00:00Z", "ship_l": 4_597_000.0 });
    let a = send_json(&app, Method::POST, &close, Some(OPERATOR), &body).await;
    assert_eq!(a.data()[0]["ship_l"], 4_597_000.0);
    send_json(&app, Method::POST, &close, Some(OPERATOR), &body)
        .await
        .problem(StatusCode::CONFLICT, &close);
    send_json(
        &app,
        Method::POST,
        "/api/v1/discharges/999/close",
        Some(OPERATOR),
        &body,
    )
    .await
    .problem(StatusCode::NOT_FOUND, "/api/v1/discharges/999/close");
    let listed = get(
        &app,
        "/api/v1/discharges?from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z",
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(listed.len(), 1);

    // Run a day on demand (no gauge data: no-data records and alerts, stored and served).
    send(
        &app,
        Method::POST,
        "/api/v1/reconciliation/run?date=2026-01-02",
        Some(VIEWER),
    )
    .await
    .problem(StatusCode::FORBIDDEN, "/api/v1/reconciliation/run");
    let run = send(
        &app,
        Method::POST,
        "/api/v1/reconciliation/run?date=2026-01-02",
        Some(OPERATOR),
    )
    .await
    .data();
    assert_eq!(run[0]["date"], "2026-01-02");
    let runs = get(&app, "/api/v1/reconciliation/runs", Some(VIEWER))
        .await
        .data();
    assert_eq!(runs.len(), 1);
    let tanks = get(
        &app,
        "/api/v1/reconciliation/2026-01-02/tanks",
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(tanks.len(), 4);
    assert_eq!(tanks[0]["verdict"], "no-data");
    let chain = get(&app, "/api/v1/reconciliation/2026-01-02", Some(VIEWER))
        .await
        .data();
    assert!(
        chain
            .iter()
            .any(|r| r["kind"] == "parcel" && r["place"] == "BL-42"),
        "{chain:?}"
    );
    let csv = get(&app, "/api/v1/reconciliation/2026-01-02.csv", Some(VIEWER)).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.content_type().starts_with("text/csv"));
    assert!(csv.text.starts_with("date,site,kind,place,stage"));
    assert_eq!(csv.text.lines().count(), chain.len() + 1);
    let csv2 = get(
        &app,
        "/api/v1/reconciliation/2026-01-02/tanks?format=csv",
        Some(VIEWER),
    )
    .await;
    assert_eq!(csv2.text.lines().count(), 5);
    get(&app, "/api/v1/reconciliation/2026-13-02", Some(VIEWER))
        .await
        .bad_parameter("/api/v1/reconciliation/2026-13-02", "date");
    let open = get(&app, "/api/v1/alerts?state=open", Some(VIEWER))
        .await
        .data();
    assert!(open.iter().all(|a| a["state"] == "open"));
    // The tanks' agent has never reported: the day is before its first data, so its no-data
    // records raise no alert.
    assert!(!open.iter().any(|a| a["kind"] == "no-data"), "{open:?}");
    assert!(get(&app, "/api/v1/alerts?state=closed", Some(VIEWER))
        .await
        .data()
        .is_empty());
    get(&app, "/api/v1/alerts?state=maybe", Some(VIEWER))
        .await
        .bad_parameter("/api/v1/alerts", "state");
    // Without a site model a run is a conflict.
    send(
        &f.app,
        Method::POST,
        "/api/v1/reconciliation/run?date=2026-01-02",
        Some(OPERATOR),
    )
    .await
    .problem(StatusCode::CONFLICT, "/api/v1/reconciliation/run");
}

#[tokio::test]
async fn the_console_is_served_open_with_a_strict_policy_and_its_routes_need_a_token() {
    let f = fixture().await;
    for (path, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
    ] {
        let a = get(&f.app, path, None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.headers["content-type"], ctype, "{path}");
        let csp = a.headers["content-security-policy"]
            .to_str()
            .expect("ascii");
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(a.headers["x-content-type-options"], "nosniff");
    }
    for path in ["/api/v1/whoami", "/api/v1/kpis", "/api/v1/site-model"] {
        get(&f.app, path, None)
            .await
            .problem(StatusCode::UNAUTHORIZED, path);
    }
    let me = get(&f.app, "/api/v1/whoami", Some(VIEWER)).await.data()[0].clone();
    assert_eq!(me["role"], "viewer");
    assert_eq!(me["can_audit"], false);
    assert!(me["now_ms"].as_i64().is_some_and(|t| t > 1_700_000_000_000));
    let me = get(&f.app, "/api/v1/whoami", Some(ADMIN)).await.data()[0].clone();
    assert_eq!(
        (me["can_audit"].clone(), me["can_operate"].clone()),
        (serde_json::json!(true), serde_json::json!(true))
    );
    // Without a site model: empty lists, not errors.
    assert_eq!(
        get(&f.app, "/api/v1/kpis", Some(VIEWER)).await.data().len(),
        0
    );
    assert_eq!(
        get(&f.app, "/api/v1/site-model", Some(VIEWER))
            .await
            .data()
            .len(),
        0
    );
    get(
        &f.app,
        "/api/v1/track?truck=TRK-01&from=0&to=1000",
        Some(VIEWER),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "/api/v1/track");
    // With the simulated terminal's model: its tanks, no gauge data yet.
    let app = with_site_model(&f);
    let k = get(&app, "/api/v1/kpis", Some(VIEWER)).await.data()[0].clone();
    assert_eq!(k["tanks"].as_array().map(Vec::len), Some(4), "{k}");
    assert_eq!(k["tanks"][0]["status"], "no-data");
    let m = get(&app, "/api/v1/site-model", Some(VIEWER)).await.data()[0].clone();
    assert!(m["places"].as_array().is_some_and(|p| !p.is_empty()), "{m}");
    let t = get(
        &app,
        "/api/v1/track?truck=TRK-01&from=0&to=1000",
        Some(VIEWER),
    )
    .await
    .data()[0]
        .clone();
    assert_eq!(t["fixes"], serde_json::json!([]));
    get(
        &app,
        &format!("/api/v1/track?truck=TRK-01&from=0&to={}", 3 * 86_400_000),
        Some(VIEWER),
    )
    .await
    .bad_parameter("/api/v1/track", "to");
}

/// Every bad time of issue 13 gets a 4xx problem+json naming the field: numeric and text event
/// times in bodies (an ePOD delivered at -1 or in 1969, a discharge opened at i64::MAX or
/// closed in 1994, a number that is not an integer), query times and dates out of 1970..9999.
#[tokio::test]
async fn every_bad_time_is_a_problem_naming_its_field() {
    let f = fixture().await;
    let app = with_site_model(&f);
    let epod = |at: Value| {
        serde_json::json!({
            "trip": "TRIP-9", "bol": "BOL-9", "truck": "TRK-01", "station": "ST-KARIAKOO",
            "delivered_at": at, "receiver": "J. Doe",
            "compartments": [ { "compartment": 1, "product": "AGO", "gross_l": 9000.0 } ]
        })
    };
    let errors = |p: &Value| -> Vec<String> {
        p["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    for at in [
        serde_json::json!(-1),
        serde_json::json!("-1"),
        serde_json::json!("1969-12-31T23:59:59Z"),
        serde_json::json!(i64::MAX),
        serde_json::json!(1.5e12),
        serde_json::json!(u64::MAX),
        serde_json::json!("9999-12-31T00:00:00Z"),
    ] {
        let p = send_json(
            &app,
            Method::POST,
            "/api/v1/epods",
            Some(OPERATOR),
            &epod(at.clone()),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "/api/v1/epods");
        let e = errors(&p);
        assert!(
            e.iter().any(|e| e.starts_with("delivered_at: ")),
            "{at}: {e:?}"
        );
    }
    let discharge = |at: Value| {
        serde_json::json!({
            "site": "dar-terminal", "vessel": "MT Kilimanjaro", "parcel": "BL-43", "product": "AGO",
            "bl_l": 4_600_000.0, "tanks": ["T3"], "opened_at": at
        })
    };
    for at in [
        serde_json::json!(i64::MAX),
        serde_json::json!(-1),
        serde_json::json!("1994-01-01T00:00:00Z"),
    ] {
        let p = send_json(
            &app,
            Method::POST,
            "/api/v1/discharges",
            Some(OPERATOR),
            &discharge(at.clone()),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "/api/v1/discharges");
        assert!(
            errors(&p).iter().any(|e| e.starts_with("opened_at: ")),
            "{at}: {p}"
        );
    }
    let a = send_json(
        &app,
        Method::POST,
        "/api/v1/discharges",
        Some(OPERATOR),
        &discharge(serde_json::json!("2026-01-01T10:00:00Z")),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json()["data"][0]["id"].as_i64().expect("id");
    let close = format!("/api/v1/discharges/{id}/close");
    for at in [
        serde_json::json!(i64::MAX),
        serde_json::json!("1994-01-01T00:00:00Z"),
    ] {
        let p = send_json(
            &app,
            Method::POST,
            &close,
            Some(OPERATOR),
            &serde_json::json!({ "closed_at": at }),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, &close);
        assert!(
            errors(&p).iter().any(|e| e.starts_with("closed_at: ")),
            "{at}: {p}"
        );
    }
    // Query times and dates.
    for (uri, field) in [
        ("/api/v1/gaps?from=-1&to=10", "from"),
        ("/api/v1/gaps?from=0&to=99999999999999999", "to"),
        ("/api/v1/gaps?from=10&to=5", "to"),
        (
            "/api/v1/epods?from=1969-12-31T00:00:00Z&to=2026-01-01T00:00:00Z",
            "from",
        ),
        ("/api/v1/discharges?from=0&to=10000-01-01T00:00:00Z", "to"),
        ("/api/v1/reconciliation/0001-01-01", "date"),
        ("/api/v1/reconciliation/1969-12-31/tanks", "date"),
    ] {
        let path = uri.split('?').next().unwrap_or(uri);
        let p = get(&app, uri, Some(VIEWER))
            .await
            .problem(StatusCode::BAD_REQUEST, path);
        assert_eq!(p["parameter"], field, "{uri}: {p}");
    }
    let run = "/api/v1/reconciliation/run?date=1969-12-31";
    let p = send_json(
        &app,
        Method::POST,
        run,
        Some(OPERATOR),
        &serde_json::json!({}),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "/api/v1/reconciliation/run");
    assert_eq!(p["parameter"], "date", "{p}");
}

/// `/api/v1/gaps` shows an unknown count as `null` with `count_known: false`; `/api/v1/agents`
/// shows the current buffer and when it was replaced.
#[tokio::test]
async fn gaps_of_unknown_count_and_agent_buffers_are_shown() {
    let f = fixture().await;
    let mut b = birth("s1", "a1", "h1", &["tank/level", "tank/temp"]);
    b.buffer = Some(wire::messages::BufferIdentity {
        epoch: 99,
        created_ms: T0 + 600_000,
        origin: "new".into(),
        note: None,
    });
    f.store.birth(&b, T0 + 601_000).await.expect("birth");
    let gaps = get(
        &f.app,
        &format!("/api/v1/gaps?from={}&to={}", T0 - 120_000, T0 + 700_000),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    let known = gaps
        .iter()
        .find(|g| g["reason"] == "buffer-full")
        .expect("buffer-full");
    assert_eq!(
        (known["count"].as_i64(), known["count_known"].as_bool()),
        (Some(60), Some(true))
    );
    let replaced = gaps
        .iter()
        .find(|g| g["reason"] == "buffer-replaced")
        .expect("buffer-replaced");
    assert!(replaced["count"].is_null(), "{replaced}");
    assert_eq!(replaced["count_known"], false);
    assert_eq!(replaced["from_ms"], T0 + 119_001);
    assert_eq!(replaced["to_ms"], T0 + 600_000);
    let agents = get(&f.app, "/api/v1/agents", Some(VIEWER)).await.data();
    let a1 = agents.iter().find(|a| a["agent"] == "a1").expect("a1");
    assert_eq!(a1["buffer"]["epoch"], 99);
    assert_eq!(a1["buffer"]["origin"], "new");
    // Its first buffer, but data was stored before: a replacement (the old one is gone).
    assert_eq!(a1["buffer_replaced_ms"], T0 + 601_000);
    let a9 = agents.iter().find(|a| a["agent"] == "a9").expect("a9");
    assert!(a9["buffer"].is_null());
}

/// The request id names the request's span: every log line written while serving it carries it.
#[tokio::test]
async fn the_request_id_is_in_the_log_lines_of_the_request() {
    super::test_log::start();
    let f = fixture().await;
    f.store.mode.store(1, Relaxed);
    let req = Request::builder()
        .uri("/api/v1/agents")
        .header(AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header("x-request-id", "log-test-7")
        .body(Body::empty())
        .expect("request");
    let res = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["x-request-id"], "log-test-7");
    let text = super::test_log::text();
    let warn = text
        .lines()
        .find(|l| l.contains("database unavailable") && l.contains("log-test-7"))
        .unwrap_or_else(|| panic!("the handler's warning: {text}"));
    assert!(warn.contains("request_id=log-test-7"), "{warn}");
    assert!(
        text.lines().any(|l| l.contains("api request")
            && l.contains("request_id=log-test-7")
            && l.contains("status=503")),
        "{text}"
    );
}
