//! Append-only history, amendments and the audit log through the API (real SQLite store; the
//! fixture and helpers of `tests.rs`).

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::tests::{
    fixture, get, send, send_json, with_site_model, ADMIN, AUDITOR, OPERATOR, VIEWER,
};

fn epod() -> Value {
    json!({
        "trip": "TRIP-1", "bol": "BOL-1", "truck": "TRK-01", "station": "ST-KARIAKOO",
        "delivered_at": "2026-01-01T10:00:00Z", "receiver": "J. Doe", "lat": -6.8161, "lon": 39.2804,
        "compartments": [ { "compartment": 1, "product": "AGO", "gross_l": 9000.0, "net_l": 8950.5 } ]
    })
}

#[tokio::test]
async fn an_epod_amendment_keeps_the_original_and_its_history() {
    let f = fixture().await;
    let app = with_site_model(&f);
    let a = send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &epod()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json()["data"][0]["id"].as_i64().expect("id");
    // A second ePOD for the BOL stays a conflict, and the problem says how to correct it.
    let mut other = epod();
    other["compartments"][0]["net_l"] = json!(8900.0);
    let p = send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &other)
        .await
        .problem(StatusCode::CONFLICT, "/api/v1/epods");
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("/api/v1/epods/{id}/amend")),
        "{detail}"
    );

    let path = format!("/api/v1/epods/{id}/amend");
    let fix = json!({ "compartments": [ { "compartment": 1, "product": "AGO", "gross_l": 9000.0, "net_l": 8900.0 } ] });
    // A reason is mandatory; a viewer cannot amend.
    let p = send_json(&app, Method::POST, &path, Some(OPERATOR), &fix)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, &path);
    assert!(p["errors"][0]
        .as_str()
        .unwrap_or_default()
        .contains("reason"));
    let mut body = fix.clone();
    body["reason"] = json!("receiver's meter ticket re-read: 8,900 L net");
    send_json(&app, Method::POST, &path, Some(VIEWER), &body)
        .await
        .problem(StatusCode::FORBIDDEN, &path);
    // Unknown fields are refused like in a post.
    let mut bad = body.clone();
    bad["colour"] = json!("red");
    send_json(&app, Method::POST, &path, Some(OPERATOR), &bad)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, &path);

    let a = send_json(&app, Method::POST, &path, Some(OPERATOR), &body)
        .await
        .data();
    assert_eq!(a[0]["version"], 2);
    assert_eq!(a[0]["compartments"][0]["net_l"], 8900.0);
    assert_eq!(a[0]["bol"], "BOL-1", "fields not given are kept");
    // The same again changes nothing: refused.
    send_json(&app, Method::POST, &path, Some(OPERATOR), &body)
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, &path);

    // GET shows the latest version with its history, the original first.
    let e = get(&app, &format!("/api/v1/epods/{id}"), Some(VIEWER))
        .await
        .data();
    let v = e[0]["versions"].as_array().expect("versions");
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["version"], 1);
    assert_eq!(v[0]["record"]["compartments"][0]["net_l"], 8950.5);
    assert_eq!(v[1]["actor"], "ops");
    assert_eq!(v[1]["role"], "operator");
    assert_eq!(v[1]["reason"], body["reason"]);
    assert_eq!(v[1]["record"]["compartments"][0]["net_l"], 8900.0);
    // The list (what the reconciliation reads) has the latest version.
    let listed = get(
        &app,
        "/api/v1/epods?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["compartments"][0]["net_l"], 8900.0);
    // Unknown ids are 404.
    get(&app, "/api/v1/epods/999", Some(VIEWER))
        .await
        .problem(StatusCode::NOT_FOUND, "/api/v1/epods/999");
    send_json(
        &app,
        Method::POST,
        "/api/v1/epods/999/amend",
        Some(OPERATOR),
        &body,
    )
    .await
    .problem(StatusCode::NOT_FOUND, "/api/v1/epods/999/amend");
}

#[tokio::test]
async fn a_rerun_supersedes_and_keeps_the_previous_figures_and_every_write_is_audited() {
    let f = fixture().await;
    let app = with_site_model(&f);
    let d = json!({
        "site": "dar-terminal", "vessel": "MT Kilimanjaro", "parcel": "BL-42", "product": "AGO",
        "bl_l": 4_600_000.0, "tanks": ["T3", "T4"], "opened_at": "2026-01-01T10:00:00Z"
    });
    let a = send_json(&app, Method::POST, "/api/v1/discharges", Some(OPERATOR), &d).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.json()["data"][0]["id"].as_i64().expect("id");
    let close = json!({ "closed_at": "2026-01-02T04:00:00Z", "ship_l": 4_597_000.0 });
    send_json(
        &app,
        Method::POST,
        &format!("/api/v1/discharges/{id}/close"),
        Some(OPERATOR),
        &close,
    )
    .await
    .data();
    let a = send_json(&app, Method::POST, "/api/v1/epods", Some(ADMIN), &epod()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);

    let run = |app: axum::Router| async move {
        send(
            &app,
            Method::POST,
            "/api/v1/reconciliation/run?date=2026-01-02",
            Some(OPERATOR),
        )
        .await
        .data()[0]
            .clone()
    };
    let ship_of = |rows: &[Value]| {
        rows.iter()
            .find(|r| r["kind"] == "parcel" && r["place"] == "BL-42" && r["stage"] == "ship")
            .map(|r| r["measured_l"].clone())
            .unwrap_or(Value::Null)
    };
    let run1 = run(app.clone()).await;
    // The ship's figure is corrected by an amendment; the day is run again.
    let path = format!("/api/v1/discharges/{id}/amend");
    let p = send_json(
        &app,
        Method::POST,
        &path,
        Some(OPERATOR),
        &json!({ "ship_l": 4_590_000.0 }),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, &path);
    assert!(p["errors"][0]
        .as_str()
        .unwrap_or_default()
        .contains("reason"));
    let amended = send_json(
        &app,
        Method::POST,
        &path,
        Some(OPERATOR),
        &json!({ "ship_l": 4_590_000.0, "reason": "ullage report corrected by the surveyor" }),
    )
    .await
    .data();
    assert_eq!(amended[0]["version"], 2);
    assert_eq!(amended[0]["ship_l"], 4_590_000.0);
    assert_eq!(
        amended[0]["closed_ms"], 1_767_326_400_000_i64,
        "fields not given are kept"
    );
    let run2 = run(app.clone()).await;
    assert_eq!(run2["supersedes"], run1["id"]);

    // The current figures use the amended discharge; the first run's stay readable.
    let now = get(&app, "/api/v1/reconciliation/2026-01-02", Some(VIEWER))
        .await
        .data();
    assert_eq!(ship_of(&now), json!(4_590_000.0));
    assert!(now.iter().all(|r| r["run_id"] == run2["id"]));
    let r1 = run1["id"].as_i64().expect("run id");
    let before = get(
        &app,
        &format!("/api/v1/reconciliation/2026-01-02?run={r1}"),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(ship_of(&before), json!(4_597_000.0));
    assert!(before.iter().all(|r| r["run_id"] == run1["id"]));
    let as_of = run1["finished_ms"].as_i64().expect("finished");
    let then = get(
        &app,
        &format!("/api/v1/reconciliation/2026-01-02?as_of={as_of}"),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(ship_of(&then), json!(4_597_000.0));
    // The drill-downs take the same parameters.
    let tanks1 = get(
        &app,
        &format!("/api/v1/reconciliation/2026-01-02/tanks?run={r1}"),
        Some(VIEWER),
    )
    .await
    .data();
    assert_eq!(tanks1.len(), 4);
    assert!(tanks1.iter().all(|r| r["run_id"] == run1["id"]));
    // Bad or unknown picks.
    get(
        &app,
        "/api/v1/reconciliation/2026-01-02?run=999999",
        Some(VIEWER),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "/api/v1/reconciliation/2026-01-02");
    get(
        &app,
        "/api/v1/reconciliation/2026-01-02?as_of=0",
        Some(VIEWER),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "/api/v1/reconciliation/2026-01-02");
    get(
        &app,
        &format!("/api/v1/reconciliation/2026-01-02?run={r1}&as_of={as_of}"),
        Some(VIEWER),
    )
    .await
    .bad_parameter("/api/v1/reconciliation/2026-01-02", "as_of");
    get(
        &app,
        "/api/v1/reconciliation/2026-01-02?run=x",
        Some(VIEWER),
    )
    .await
    .bad_parameter("/api/v1/reconciliation/2026-01-02", "run");
    // The runs list says which superseded which.
    let runs = get(&app, "/api/v1/reconciliation/runs", Some(VIEWER))
        .await
        .data();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["id"], run2["id"]);
    assert_eq!(runs[0]["superseded_by"], Value::Null);
    assert_eq!(runs[1]["superseded_by"], run2["id"]);
    // The discharge's history.
    let h = get(&app, &format!("/api/v1/discharges/{id}"), Some(VIEWER))
        .await
        .data();
    assert_eq!(h[0]["version"], 2);
    assert_eq!(h[0]["versions"][0]["record"]["ship_l"], 4_597_000.0);
    assert_eq!(
        h[0]["versions"][1]["reason"],
        "ullage report corrected by the surveyor"
    );

    // The audit log: auditor and admin only.
    for t in [VIEWER, OPERATOR] {
        get(&app, "/api/v1/audit", Some(t))
            .await
            .problem(StatusCode::FORBIDDEN, "/api/v1/audit");
    }
    get(&app, "/api/v1/audit", Some(ADMIN)).await.data();
    let log = get(&app, "/api/v1/audit", Some(AUDITOR)).await.data();
    let actions: Vec<(&str, &str, &str, &str)> = log
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default(),
                e["actor"].as_str().unwrap_or_default(),
                e["role"].as_str().unwrap_or_default(),
                e["target"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let did = format!("discharge/{id}");
    assert_eq!(
        actions,
        vec![
            ("discharge.open", "ops", "operator", did.as_str()),
            ("discharge.close", "ops", "operator", did.as_str()),
            ("epod.post", "root", "admin", actions[2].3),
            (
                "reconciliation.run",
                "ops",
                "operator",
                "reconciliation/2026-01-02"
            ),
            ("discharge.amend", "ops", "operator", did.as_str()),
            (
                "reconciliation.run",
                "ops",
                "operator",
                "reconciliation/2026-01-02"
            ),
        ],
        "every write of the test, in order (refused writes are not writes)"
    );
    // before/after: the amendment shows both figures and the reason.
    let amend = log
        .iter()
        .find(|e| e["action"] == "discharge.amend")
        .expect("amend entry");
    assert_eq!(amend["before"]["ship_l"], 4_597_000.0);
    assert_eq!(amend["after"]["ship_l"], 4_590_000.0);
    assert_eq!(
        amend["after"]["reason"],
        "ullage report corrected by the surveyor"
    );
    let rerun = &log[0];
    assert_eq!(rerun["before"]["id"], run1["id"]);
    assert_eq!(rerun["after"]["id"], run2["id"]);
    // Filters and CSV.
    let only = get(&app, "/api/v1/audit?action=discharge.amend", Some(AUDITOR))
        .await
        .data();
    assert_eq!(only.len(), 1);
    let root = get(&app, "/api/v1/audit?actor=root", Some(AUDITOR))
        .await
        .data();
    assert_eq!(root.len(), 1);
    let target = get(&app, &format!("/api/v1/audit?target={did}"), Some(AUDITOR))
        .await
        .data();
    assert_eq!(target.len(), 3);
    let at = log[2]["at_ms"].as_i64().expect("at");
    let window = get(
        &app,
        &format!("/api/v1/audit?from={at}&to={}", at + 1),
        Some(AUDITOR),
    )
    .await
    .data();
    assert!(window.iter().all(|e| e["at_ms"] == at) && !window.is_empty());
    get(&app, "/api/v1/audit?from=1000&to=10", Some(AUDITOR))
        .await
        .bad_parameter("/api/v1/audit", "to");
    for path in ["/api/v1/audit.csv", "/api/v1/audit?format=csv"] {
        let csv = get(&app, path, Some(AUDITOR)).await;
        assert_eq!(csv.status, StatusCode::OK, "{}", csv.text);
        assert!(csv.content_type().starts_with("text/csv"));
        assert!(csv
            .text
            .starts_with("id,at_ms,actor,role,action,target,before,after"));
        assert_eq!(csv.text.lines().count(), log.len() + 1);
    }
    get(&app, "/api/v1/audit.csv", Some(VIEWER))
        .await
        .problem(StatusCode::FORBIDDEN, "/api/v1/audit.csv");
}

#[tokio::test]
async fn freshness_and_the_new_rows_match_their_openapi_schemas() {
    let f = fixture().await;
    let app = with_site_model(&f);
    let id = send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &epod())
        .await
        .json()["data"][0]["id"]
        .as_i64()
        .expect("id");
    let fix = json!({ "receiver": "M. Roe", "reason": "wrong receiver name" });
    send_json(
        &app,
        Method::POST,
        &format!("/api/v1/epods/{id}/amend"),
        Some(OPERATOR),
        &fix,
    )
    .await
    .data();
    let d = json!({
        "site": "dar-terminal", "vessel": "MT Kilimanjaro", "parcel": "BL-42", "product": "AGO",
        "bl_l": 4_600_000.0, "tanks": ["T3", "T4"], "opened_at": "2026-01-01T10:00:00Z"
    });
    let did = send_json(&app, Method::POST, "/api/v1/discharges", Some(OPERATOR), &d)
        .await
        .json()["data"][0]["id"]
        .as_i64()
        .expect("id");
    send(
        &app,
        Method::POST,
        "/api/v1/reconciliation/run?date=2026-01-02",
        Some(OPERATOR),
    )
    .await
    .data();

    // The fixture's tags last reported on 2026-01-01 (long before "now"): stale since then,
    // although their newest readings are good; the site without readings is silent.
    let fresh = get(&app, "/api/v1/freshness", Some(VIEWER)).await.data();
    assert_eq!(fresh.len(), 3);
    assert!(fresh.iter().all(|r| r["stale"] == true), "{fresh:?}");
    let level = fresh
        .iter()
        .find(|r| r["tag_id"] == f.level)
        .expect("level");
    assert_eq!(level["latest_quality"], "good");
    assert_eq!(level["stale_since_ms"], level["latest_ms"]);
    let s2 = get(&app, "/api/v1/freshness?site=s2", Some(VIEWER))
        .await
        .data();
    assert_eq!(s2.len(), 1);
    assert_eq!(s2[0]["latest_ms"], Value::Null);

    let doc = get(&app, "/api/v1/openapi.json", None).await.json();
    let epod_h = get(&app, &format!("/api/v1/epods/{id}"), Some(VIEWER))
        .await
        .data()[0]
        .clone();
    let rows = vec![
        ("EpodHistory", epod_h.clone()),
        ("Version", epod_h["versions"][1].clone()),
        (
            "DischargeHistory",
            get(&app, &format!("/api/v1/discharges/{did}"), Some(VIEWER))
                .await
                .data()[0]
                .clone(),
        ),
        (
            "AuditEntry",
            get(&app, "/api/v1/audit", Some(AUDITOR)).await.data()[0].clone(),
        ),
        (
            "Run",
            get(&app, "/api/v1/reconciliation/runs", Some(VIEWER))
                .await
                .data()[0]
                .clone(),
        ),
        ("Freshness", level.clone()),
    ];
    for (name, row) in rows {
        let schema = &doc["components"]["schemas"][name];
        let props: std::collections::BTreeSet<&String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        let keys: std::collections::BTreeSet<&String> =
            row.as_object().expect("object").keys().collect();
        assert_eq!(props, keys, "{name}");
        for k in schema["required"].as_array().expect("required") {
            assert!(
                row.get(k.as_str().unwrap_or_default()).is_some(),
                "{name}: {k}"
            );
        }
    }
}

#[tokio::test]
async fn an_epod_amendment_is_used_by_the_next_run_and_the_previous_figures_stay() {
    use crate::store::suite::{birth, T0};
    use flowsquare_wire as wire;
    let f = fixture().await;
    let app = with_site_model(&f);
    // A loading at the gantry on 2026-01-02 (meter M3, AGO), confirmed by an ePOD.
    let store = f.state.store.clone();
    store
        .birth(&birth("dar-terminal", "gw-1", "hg", &["x"]), T0)
        .await
        .expect("birth");
    let mut b = wire::Batch::new("dar-terminal", "gw-1", 1, "hg", T0);
    let text = |s: &str| wire::WireValue::Text(s.into());
    b.events.push(wire::Event {
        source: "bay-3".into(),
        kind: "gantry-batch".into(),
        seq: 1,
        ts_ms: T0 + 86_400_000 + 8 * 3_600_000,
        fields: vec![
            ("bol".into(), text("BOL-1")),
            ("truck".into(), text("TRK-01")),
            ("meter".into(), text("M3")),
            ("compartment".into(), wire::WireValue::Int(1)),
            ("product".into(), text("AGO")),
            ("gross_l".into(), wire::WireValue::Float(9000.0)),
            ("nsv_l".into(), wire::WireValue::Float(8950.0)),
        ],
    });
    store.commit(&[b]).await.expect("commit");
    let mut e = epod();
    e["delivered_at"] = json!("2026-01-02T10:00:00Z");
    let id = send_json(&app, Method::POST, "/api/v1/epods", Some(OPERATOR), &e)
        .await
        .json()["data"][0]["id"]
        .as_i64()
        .expect("id");
    let run = || async {
        send(
            &app,
            Method::POST,
            "/api/v1/reconciliation/run?date=2026-01-02",
            Some(OPERATOR),
        )
        .await
        .data()[0]["id"]
            .as_i64()
            .expect("run id")
    };
    let delivered = |q: String| {
        let app = app.clone();
        async move {
            let trips = get(
                &app,
                &format!("/api/v1/reconciliation/2026-01-02/trips{q}"),
                Some(VIEWER),
            )
            .await
            .data();
            let t = trips
                .iter()
                .find(|r| r["stage"] == "transit")
                .unwrap_or_else(|| panic!("no transit record: {trips:?}"))
                .clone();
            (t["reference_l"].clone(), t["measured_l"].clone())
        }
    };
    let r1 = run().await;
    assert_eq!(
        delivered(String::new()).await,
        (json!(8950.0), json!(8950.5))
    );
    let fix = json!({
        "compartments": [ { "compartment": 1, "product": "AGO", "gross_l": 9000.0, "net_l": 8900.0 } ],
        "reason": "receiver's net figure re-read"
    });
    send_json(
        &app,
        Method::POST,
        &format!("/api/v1/epods/{id}/amend"),
        Some(OPERATOR),
        &fix,
    )
    .await
    .data();
    let r2 = run().await;
    assert_ne!(r1, r2);
    assert_eq!(
        delivered(String::new()).await.1,
        json!(8900.0),
        "the run used the latest version"
    );
    assert_eq!(
        delivered(format!("?run={r1}")).await.1,
        json!(8950.5),
        "the first run's figure stays"
    );
}
