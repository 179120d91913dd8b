//! The reconciliation routes on a simulated month (the `flowsquare-sim-month` test-support
//! crate, hence an integration test: a unit test of cloud-ingest cannot use a crate that
//! depends on cloud-ingest): the records' coverage in JSON and CSV, and the alert that says
//! what is missing rather than a loss.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use cloud_ingest::api::{hash_token, router, ApiConfig, ApiState, Role, TokenConfig};
use cloud_ingest::consume::ConsumerStats;
use cloud_ingest::reconcile::Reconciler;
use cloud_ingest::store::sqlite::SqliteStore;
use cloud_ingest::store::Store;
use serde_json::Value;
use sim_month as sim;
use tempfile::TempDir;
use tower::ServiceExt;

const VIEWER: &str = "viewer-secret";
const OPERATOR: &str = "operator-secret";

/// The API on a fresh SQLite store with the simulated month's site model.
async fn app_with_sim_model() -> (Router, Arc<SqliteStore>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("ingest.db")).expect("open"));
    store.migrate().await.expect("migrate");
    let m = sim::site_model();
    let tables = sim::generate(&sim::SimOptions {
        days: 1,
        ..Default::default()
    })
    .tables;
    let r = Reconciler::with_tables(m, &tables).expect("site model");
    let token = |name: &str, role, secret| TokenConfig::new(name, role, hash_token(secret));
    let config = ApiConfig {
        listen: "127.0.0.1:0".into(),
        tokens: vec![
            token("viewer", Role::Viewer, VIEWER),
            token("operator", Role::Operator, OPERATOR),
        ],
        ..ApiConfig::default()
    };
    let app = router(ApiState {
        store: store.clone(),
        stats: Arc::new(ConsumerStats::default()),
        config: Arc::new(config),
        ready: Arc::new(AtomicBool::new(true)),
        reconciler: Some(Arc::new(r)),
        api_stats: Default::default(),
    });
    (app, store, dir)
}

struct Answer {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl Answer {
    fn data(&self) -> Vec<Value> {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        assert_eq!(self.content_type, "application/json");
        let v: Value = serde_json::from_str(&self.text).expect("json");
        v["data"].as_array().cloned().expect("data")
    }
}

async fn send(app: &Router, method: Method, uri: &str, token: Option<&str>) -> Answer {
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
    let content_type = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .expect("body");
    Answer {
        status,
        content_type,
        text: String::from_utf8(bytes.to_vec()).expect("utf-8"),
    }
}

async fn get(app: &Router, uri: &str, token: Option<&str>) -> Answer {
    send(app, Method::GET, uri, token).await
}

#[tokio::test]
async fn reconciliation_records_carry_their_coverage_in_json_and_csv() {
    let (app, store, _dir) = app_with_sim_model().await;
    // Three simulated days; T1's level gauge answers bad quality only for 6 h on the second.
    let m = sim::generate(&sim::SimOptions {
        days: 3,
        faults: sim::Faults {
            stale_gauge: Some(("T1".into(), 1, 6, 6)),
            ..sim::Faults::default()
        },
        ..sim::SimOptions::default()
    });
    m.load(&*store).await.expect("load");
    let day = cloud_ingest::reconcile::model::day_name(m.opts.start_day + 1);
    let run = send(
        &app,
        Method::POST,
        &format!("/api/v1/reconciliation/run?date={day}"),
        Some(OPERATOR),
    )
    .await
    .data();
    assert_eq!(run[0]["date"], day.as_str());
    let tanks = get(
        &app,
        &format!("/api/v1/reconciliation/{day}/tanks"),
        Some(VIEWER),
    )
    .await
    .data();
    let t1 = tanks.iter().find(|t| t["place"] == "T1").expect("T1");
    assert_eq!(t1["verdict"], "incomplete", "{t1}");
    let c = &t1["coverage"];
    assert_eq!(c["complete"], false);
    assert_eq!(c["ratio"], 0.75);
    let level = c["inputs"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["tag"] == "gw-1/tanks/T1/level_mm"))
        .expect("level input");
    assert_eq!(
        (level["expected"].as_i64(), level["present"].as_i64()),
        (Some(288), Some(216))
    );
    assert_eq!(level["stale"].as_array().map(Vec::len), Some(1));
    let missing = c["missing"][0].as_str().unwrap_or_default();
    assert!(
        missing.starts_with(&format!(
            "data missing for gw-1/tanks/T1/level_mm {day} 06:"
        )),
        "{missing}"
    );
    // The other tanks are complete and judged.
    let t2 = tanks.iter().find(|t| t["place"] == "T2").expect("T2");
    assert_eq!(
        (t2["verdict"].clone(), t2["coverage"]["complete"].clone()),
        (serde_json::json!("ok"), serde_json::json!(true))
    );
    // CSV: coverage %, complete, what is missing.
    let csv = get(
        &app,
        &format!("/api/v1/reconciliation/{day}/tanks?format=csv"),
        Some(VIEWER),
    )
    .await;
    assert!(
        csv.text
            .starts_with("date,site,kind,place,stage,product,reference_l,measured_l,variance_l,variance_pct,tolerance_pct,verdict,run_id,coverage_pct,data_complete,missing,detail\r\n"),
        "{}",
        csv.text
    );
    let row = csv
        .text
        .lines()
        .find(|l| l.contains(",T1,"))
        .expect("T1 row");
    assert!(
        row.contains(",incomplete,")
            && row.contains(",75,false,")
            && row.contains("data missing for gw-1/tanks/T1/level_mm"),
        "{row}"
    );
    // The alert says what is missing rather than a loss.
    let open = get(&app, "/api/v1/alerts?state=open", Some(VIEWER))
        .await
        .data();
    let kinds: Vec<(String, String)> = open
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or_default().to_owned(),
                a["place"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("data-missing".to_owned(), "T1".to_owned())],
        "{open:?}"
    );
}
