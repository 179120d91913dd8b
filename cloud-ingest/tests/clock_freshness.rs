//! One clock and freshness that means something, in a process whose data clock is simulated
//! (its own test binary: the clock is process-wide). A tank PLC answers only bad-quality
//! readings for 4 h: the stale-tag check raises its alert, stamped on the simulated clock, and
//! the API's freshness says stale; `whoami` names the simulated clock and every time the API
//! gives is on it (not the wall clock, months away).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::AUTHORIZATION;
use axum::http::{Request, StatusCode};
use cloud_ingest::api::{hash_token, router, ApiConfig, ApiState, Role, TokenConfig};
use cloud_ingest::consume::ConsumerStats;
use cloud_ingest::reconcile::Reconciler;
use cloud_ingest::store::sqlite::SqliteStore;
use cloud_ingest::store::Store;
use flowsquare_service::clock::{self, Clock};
use flowsquare_wire as wire;
use serde_json::Value;
use sim_month::{self as sim, SimOptions};
use tower::ServiceExt;

/// 2026-01-01 12:00 UTC: the simulated "now" (the wall clock is elsewhere).
const SIM_NOW: i64 = 1_767_268_800_000;
const HOUR: i64 = 3_600_000;
const TOKEN: &str = "clock-test-token";

fn birth() -> wire::Birth {
    let tag = |id: u32, name: &str| wire::TagInfo {
        id,
        name: name.into(),
        unit: Some("mm".into()),
        kind: "gauge".into(),
        device: "plc".into(),
        description: None,
        data_type: "f32".into(),
        poll_interval_ms: 10_000,
    };
    wire::Birth {
        v: 1,
        site: "dar-terminal".into(),
        agent: "tankfarm".into(),
        agent_version: "0.1.0".into(),
        config_hash: "h".into(),
        started_ms: SIM_NOW - 6 * HOUR,
        devices: vec![wire::DeviceInfo {
            name: "plc".into(),
            protocol: "modbus-tcp".into(),
            description: None,
        }],
        tags: vec![tag(0, "silent/level"), tag(1, "healthy/level")],
        events: Vec::new(),
        buffer: None,
    }
}

/// Tag 0: good for an hour, then only bad-quality readings for 4 h up to now. Tag 1: good
/// throughout (and an hour ahead, so it stays fresh while the sim clock runs).
fn readings() -> wire::Batch {
    let mut b = wire::Batch::new("dar-terminal", "tankfarm", 1, "h", SIM_NOW - 5 * HOUR);
    let mut t = SIM_NOW - 5 * HOUR;
    while t <= SIM_NOW + HOUR {
        if t <= SIM_NOW {
            let bad = t > SIM_NOW - 4 * HOUR;
            b.readings.push(wire::WireReading {
                tag: 0,
                ts_ms: t,
                value: (!bad).then_some(wire::WireValue::Float(1000.0)),
                quality: if bad {
                    wire::Quality::BadCommunication
                } else {
                    wire::Quality::Good
                },
                status: None,
                error: None,
                counter: None,
            });
        }
        b.readings.push(wire::WireReading {
            tag: 1,
            ts_ms: t,
            value: Some(wire::WireValue::Float(2000.0)),
            quality: wire::Quality::Good,
            status: None,
            error: None,
            counter: None,
        });
        t += 10_000;
    }
    b
}

async fn get(app: &axum::Router, uri: &str) -> Vec<Value> {
    let res = app
        .clone()
        .oneshot(
            Request::get(uri)
                .header(AUTHORIZATION, format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::OK, "{uri}");
    let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
        .await
        .expect("body");
    let v: Value = serde_json::from_slice(&bytes).expect("json");
    v["data"].as_array().cloned().expect("data")
}

/// Within the simulated hour after SIM_NOW (the wall clock is months away).
fn on_sim_clock(ms: i64) -> bool {
    (SIM_NOW..SIM_NOW + HOUR).contains(&ms)
}

#[tokio::test]
async fn bad_quality_only_is_stale_and_every_time_is_on_the_simulated_clock() {
    clock::install(Clock::sim_starting_now(SIM_NOW, 2.0)).expect("install the sim clock");
    assert!(
        (clock::real_now_ms() - SIM_NOW).abs() > 30 * 24 * HOUR,
        "the test needs the wall clock far from the simulated one"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(SqliteStore::open(&dir.path().join("ingest.db")).expect("open"));
    store.migrate().await.expect("migrate");
    store.birth(&birth(), SIM_NOW).await.expect("birth");
    store.commit(&[readings()]).await.expect("commit");

    // The stale-tag check: the silent PLC's tag is stale since its last good reading.
    let mut model = sim::site_model();
    model.stale.all_tags = true;
    let tables = sim::generate(&SimOptions {
        days: 1,
        ..Default::default()
    })
    .tables;
    let r = Arc::new(Reconciler::with_tables(model, &tables).expect("site model"));
    let (stale, opened, _) = r
        .check_stale(&*store, clock::now_ms())
        .await
        .expect("stale check");
    assert_eq!((stale, opened), (1, 1));
    let alerts = store
        .ledger()
        .alerts(Some("open"), None, 10)
        .await
        .expect("alerts");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].a.place, "tankfarm/silent/level");
    assert!(
        alerts[0].a.message.contains("no good reading"),
        "{}",
        alerts[0].a.message
    );
    assert!(
        on_sim_clock(alerts[0].opened_ms),
        "opened {}",
        alerts[0].opened_ms
    );
    assert_eq!(
        alerts[0].a.detail["silent_since_ms"],
        SIM_NOW - 4 * HOUR,
        "stale since the last good reading"
    );

    // The API on the same clock.
    let config = ApiConfig {
        listen: "127.0.0.1:0".into(),
        tokens: vec![TokenConfig::new("ops", Role::Admin, hash_token(TOKEN))],
        ..ApiConfig::default()
    };
    let app = router(ApiState {
        store: store.clone(),
        stats: Arc::new(ConsumerStats::default()),
        config: Arc::new(config),
        ready: Arc::new(AtomicBool::new(true)),
        reconciler: Some(r),
        api_stats: Default::default(),
    });
    let me = get(&app, "/api/v1/whoami").await;
    assert_eq!(me[0]["clock"], "simulated");
    assert_eq!(me[0]["clock_speed"], 2.0);
    assert!(
        on_sim_clock(me[0]["now_ms"].as_i64().unwrap_or_default()),
        "{me:?}"
    );
    let fresh = get(&app, "/api/v1/freshness").await;
    assert_eq!(fresh.len(), 2);
    let by = |name: &str| {
        fresh
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .expect("tag")
    };
    let silent = by("silent/level");
    assert_eq!(silent["stale"], true, "{silent}");
    assert_eq!(silent["latest_quality"], "bad-communication");
    assert_eq!(silent["latest_ms"], SIM_NOW, "it still answers, badly");
    assert_eq!(silent["last_good_ms"], SIM_NOW - 4 * HOUR);
    assert_eq!(silent["stale_since_ms"], SIM_NOW - 4 * HOUR);
    assert!(on_sim_clock(silent["now_ms"].as_i64().unwrap_or_default()));
    let healthy = by("healthy/level");
    assert_eq!(healthy["stale"], false, "{healthy}");
    // The alerts list shows the same clock.
    let listed = get(&app, "/api/v1/alerts?state=open").await;
    assert!(on_sim_clock(
        listed[0]["opened_ms"].as_i64().unwrap_or_default()
    ));
}
