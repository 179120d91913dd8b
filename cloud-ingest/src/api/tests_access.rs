//! The access model: site-scoped tokens on two sites' data (every route of the route table is
//! walked, so a new route cannot forget its scope), token expiry, the tokens file reloaded
//! without a restart, and every refusal logged without the token.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::Router;
use flowsquare_wire as wire;
use serde_json::{json, Value};

use super::tests::{fixture, get, send, send_json, sim_site_model, Fixture, ADMIN, VIEWER};
use super::*;
use crate::reconcile::model::{Epod, EpodCompartment, NewAlert, RecordKind, Variance, Verdict};
use crate::store::ledger::{EpodOutcome, NewDischarge, NewRun};
use crate::store::suite::{batch, T0};

/// Admin role, site s1 only: every refusal below is the scope's, never the role's.
pub(super) const S1: &str = "s1-admin-secret";
/// Expired in 2020.
const EXPIRED: &str = "expired-secret";
pub(super) const DAY: &str = "2026-01-01";
pub(super) const RANGE: &str = "from=2025-12-31T00:00:00Z&to=2026-01-03T00:00:00Z";

/// Ids of the records of both sites.
pub(super) struct Ids {
    pub(super) d1: i64,
    pub(super) d2: i64,
    pub(super) e1: i64,
    pub(super) e2: i64,
    pub(super) s2_tag: i64,
}

/// The simulated terminal's model split over two sites: s1 has T1, T2, JM1, M1, M2, station
/// ST-KARIAKOO and truck TRK-01; s2 the other tanks, meters, stations and trucks.
pub(super) fn two_site_model() -> crate::reconcile::Reconciler {
    let (mut m, tables) = sim_site_model();
    let s = |one: bool| if one { "s1" } else { "s2" }.to_owned();
    for t in &mut m.tanks {
        t.site = s(t.id == "T1" || t.id == "T2");
    }
    for x in &mut m.meters {
        x.site = s(!(x.id == "M3" || x.id == "M4"));
    }
    for st in &mut m.stations {
        st.gauge_site = Some(s(st.id == "ST-KARIAKOO"));
    }
    for t in &mut m.trucks {
        t.site = s(t.id == "TRK-01");
    }
    crate::reconcile::Reconciler::with_tables(m, &tables).expect("two-site model")
}

pub(super) fn variance(site: &str, kind: RecordKind, place: &str) -> Variance {
    Variance {
        date: DAY.into(),
        site: site.into(),
        kind,
        place: place.into(),
        stage: "balance".into(),
        product: "PMS".into(),
        reference_l: Some(1.0),
        measured_l: Some(1.0),
        variance_l: Some(0.0),
        variance_pct: Some(0.0),
        tolerance_pct: 0.5,
        verdict: Verdict::Ok,
        detail: Value::Null,
        coverage: None,
    }
}

fn epod(bol: &str, truck: &str, station: &str) -> Epod {
    Epod {
        id: 0,
        trip: format!("TRIP-{bol}"),
        bol: bol.into(),
        truck: truck.into(),
        station: station.into(),
        delivered_ms: T0 + 3_600_000,
        receiver: "J. Doe".into(),
        lat: None,
        lon: None,
        compartments: vec![EpodCompartment {
            compartment: 1,
            product: "PMS".into(),
            gross_l: 9000.0,
            net_l: None,
        }],
    }
}

/// Records of both sites: a gap and readings of s2, a discharge, an ePOD, variance records of
/// every kind and an alert per site.
pub(super) async fn fill(f: &Fixture) -> Ids {
    let store = &f.state.store;
    let mut b = batch("s2", "a9", "h1", 1, 1, 5, T0, 0.0);
    b.gaps.push(wire::Gap {
        tags: vec![],
        from_ms: T0 - 60_000,
        to_ms: T0,
        count: 60,
        count_known: true,
        reason: wire::GapReason::BufferFull,
    });
    store.commit(&[b]).await.expect("s2 batch");
    let s2_tag = store.tags(Some("s2"), None).await.expect("tags")[0].id;
    let l = store.ledger();
    let discharge = |site: &str, tank: &str, product: &str| NewDischarge {
        site: site.into(),
        vessel: "MT Test".into(),
        parcel: format!("P-{site}"),
        product: product.into(),
        bl_l: 1_000_000.0,
        tanks: vec![tank.into()],
        meters: vec![],
        opened_ms: T0,
    };
    let d1 = l
        .open_discharge(&discharge("s1", "T1", "PMS"))
        .await
        .expect("d1")
        .id;
    let d2 = l
        .open_discharge(&discharge("s2", "T3", "AGO"))
        .await
        .expect("d2")
        .id;
    let posted = |o| match o {
        EpodOutcome::Created(id) => id,
        other => panic!("{other:?}"),
    };
    let e1 = posted(
        l.post_epod(&epod("B1", "TRK-01", "ST-KARIAKOO"), T0)
            .await
            .expect("e1"),
    );
    let e2 = posted(
        l.post_epod(&epod("B2", "TRK-02", "ST-UBUNGO"), T0)
            .await
            .expect("e2"),
    );
    let mut records = Vec::new();
    for (site, tank, trip, meter) in [
        ("s1", "T1", "TRK-01/B1", "M1"),
        ("s2", "T3", "TRK-02/B2", "M3"),
    ] {
        records.push(variance(site, RecordKind::Tank, tank));
        records.push(variance(site, RecordKind::Trip, trip));
        records.push(variance(site, RecordKind::Chain, "PMS"));
        records.push(variance(site, RecordKind::MeterCheck, meter));
    }
    let alert = |site: &str| NewAlert {
        kind: "tank-balance".into(),
        site: site.into(),
        place: "T".into(),
        date: DAY.into(),
        message: format!("alert of {site}"),
        detail: Value::Null,
    };
    let run = NewRun {
        date: DAY.into(),
        trigger: "cli".into(),
        started_ms: T0 + 86_400_000,
        finished_ms: T0 + 86_401_000,
        as_of_ms: T0 + 86_400_000,
    };
    l.save_run(&run, &records, &[alert("s1"), alert("s2")], T0 + 86_401_000)
        .await
        .expect("run");
    Ids {
        d1,
        d2,
        e1,
        e2,
        s2_tag,
    }
}

/// The API on the fixture's store with the two-site model, the fixture's tokens, a token of
/// site s1, an expired one and `extra`.
pub(super) fn scoped_app(
    f: &Fixture,
    extra: Vec<TokenConfig>,
    tokens_file: Option<std::path::PathBuf>,
) -> Router {
    let mut config = (*f.state.config).clone();
    config.tokens.push(TokenConfig {
        sites: Some(vec!["s1".into()]),
        ..TokenConfig::new("s1-admin", Role::Admin, hash_token(S1))
    });
    config.tokens.push(TokenConfig {
        expires: Some("2020-01-01T00:00:00Z".into()),
        ..TokenConfig::new("old", Role::Viewer, hash_token(EXPIRED))
    });
    config.tokens.extend(extra);
    config.tokens_file = tokens_file;
    config.validate().expect("valid");
    router(ApiState {
        config: Arc::new(config),
        reconciler: Some(Arc::new(two_site_model())),
        ..f.state.clone()
    })
}

/// The site of an ePOD row by its truck (the model's).
fn epod_site(row: &Value) -> String {
    if row["truck"] == "TRK-01" { "s1" } else { "s2" }.into()
}

/// Sites named in a row: its `site`, else what it belongs to.
type Sites = fn(&Value) -> Vec<String>;

fn by_site(row: &Value) -> Vec<String> {
    vec![row["site"].as_str().unwrap_or("?").to_owned()]
}

fn of_epod(row: &Value) -> Vec<String> {
    vec![epod_site(row)]
}

fn of_kpis(report: &Value) -> Vec<String> {
    report["tanks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["site"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn of_model(m: &Value) -> Vec<String> {
    let mut out: Vec<String> = m["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or("?").to_owned())
        .collect();
    for k in ["tanks", "meters", "trucks"] {
        out.extend(
            m[k].as_array()
                .into_iter()
                .flatten()
                .map(|t| t["site"].as_str().unwrap_or("?").to_owned()),
        );
    }
    // Stations by their gauge site (ST-KARIAKOO is s1's); the other known places have none.
    out.extend(
        m["places"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["kind"] == "station")
            .map(|p| if p["id"] == "ST-KARIAKOO" { "s1" } else { "s2" }.to_owned()),
    );
    out
}

/// What to check of one route with the s1 token.
enum Probe {
    /// GET: the s1 token's rows are all of s1 (and there are some); the all-sites admin also
    /// gets s2's.
    List(String, Sites),
    /// GET: nothing at all (a filter naming another site).
    Empty(String),
    /// GET: its own record 200, the other site's 404 with the detail of a missing one.
    ById { own: String, other: String },
    /// 403: the route covers every site.
    AllSites(Method, String),
    /// A write with this body: refused with this status (403 another site, 404 a record of
    /// another site).
    Write(Method, String, Value, StatusCode),
    /// GET: no site data; the answer (whoami, the runs list) is checked by `check`.
    Own(String, fn(&Value)),
}

/// The probes of every authenticated route (None: the route is not covered, a test failure).
fn probes(path: &str, method: &str, ids: &Ids, level: i64) -> Option<Vec<Probe>> {
    use Probe::*;
    let amend = json!({ "reason": "move it", "site": "s2", "tanks": ["T3"], "product": "AGO" });
    let epod_body = json!({
        "trip": "TRIP-9", "bol": "B9", "truck": "TRK-02", "station": "ST-UBUNGO",
        "delivered_at": "2026-01-01T10:00:00Z", "receiver": "x",
        "compartments": [ { "compartment": 1, "product": "AGO", "gross_l": 9000.0 } ]
    });
    let discharge_body = json!({
        "site": "s2", "vessel": "MT X", "parcel": "P9", "product": "AGO", "bl_l": 1000.0,
        "tanks": ["T3"], "opened_at": "2026-01-01T00:00:00Z"
    });
    let p = |s: &str| s.to_owned();
    Some(match (method, path) {
        ("get", "/api/v1/agents") => vec![List(p(path), by_site)],
        ("get", "/api/v1/tags") => vec![List(p(path), by_site), Empty(format!("{path}?site=s2"))],
        ("get", "/api/v1/latest") => vec![ById {
            own: format!("{path}?tag_id={level}"),
            other: format!("{path}?tag_id={}", ids.s2_tag),
        }],
        ("get", "/api/v1/tags/{id}/series") => vec![ById {
            own: format!("/api/v1/tags/{level}/series?{RANGE}&step=1h"),
            other: format!("/api/v1/tags/{}/series?{RANGE}&step=1h", ids.s2_tag),
        }],
        ("get", "/api/v1/gaps") => vec![
            List(format!("{path}?{RANGE}"), by_site),
            Empty(format!("{path}?{RANGE}&site=s2")),
        ],
        ("get", "/api/v1/dead-letters") => vec![AllSites(Method::GET, p(path))],
        ("get", "/api/v1/discharges") => vec![List(format!("{path}?{RANGE}"), by_site)],
        ("post", "/api/v1/discharges") => vec![Write(
            Method::POST,
            p(path),
            discharge_body,
            StatusCode::FORBIDDEN,
        )],
        ("post", "/api/v1/discharges/{id}/close") => vec![Write(
            Method::POST,
            format!("/api/v1/discharges/{}/close", ids.d2),
            json!({ "closed_at": "2026-01-01T12:00:00Z" }),
            StatusCode::NOT_FOUND,
        )],
        ("get", "/api/v1/discharges/{id}") => vec![ById {
            own: format!("/api/v1/discharges/{}", ids.d1),
            other: format!("/api/v1/discharges/{}", ids.d2),
        }],
        ("post", "/api/v1/discharges/{id}/amend") => vec![
            Write(
                Method::POST,
                format!("/api/v1/discharges/{}/amend", ids.d2),
                json!({ "reason": "r", "vessel": "MT Y" }),
                StatusCode::NOT_FOUND,
            ),
            Write(
                Method::POST,
                format!("/api/v1/discharges/{}/amend", ids.d1),
                amend,
                StatusCode::FORBIDDEN,
            ),
        ],
        ("get", "/api/v1/epods") => vec![List(format!("{path}?{RANGE}"), of_epod)],
        ("post", "/api/v1/epods") => vec![Write(
            Method::POST,
            p(path),
            epod_body,
            StatusCode::FORBIDDEN,
        )],
        ("get", "/api/v1/epods/{id}") => vec![ById {
            own: format!("/api/v1/epods/{}", ids.e1),
            other: format!("/api/v1/epods/{}", ids.e2),
        }],
        ("post", "/api/v1/epods/{id}/amend") => vec![
            Write(
                Method::POST,
                format!("/api/v1/epods/{}/amend", ids.e2),
                json!({ "reason": "r", "receiver": "y" }),
                StatusCode::NOT_FOUND,
            ),
            Write(
                Method::POST,
                format!("/api/v1/epods/{}/amend", ids.e1),
                json!({ "reason": "r", "truck": "TRK-02", "station": "ST-UBUNGO" }),
                StatusCode::FORBIDDEN,
            ),
        ],
        ("get", "/api/v1/reconciliation/runs") => vec![Own(p(path), |runs| {
            assert!(
                runs["records"].is_null() && runs["exceptions"].is_null(),
                "{runs}"
            );
            assert_eq!(runs["date"], DAY);
        })],
        ("post", "/api/v1/reconciliation/run") => {
            vec![AllSites(Method::POST, format!("{path}?date={DAY}"))]
        }
        ("get", "/api/v1/reconciliation/{date}") => vec![
            List(format!("/api/v1/reconciliation/{DAY}"), by_site),
            List(format!("/api/v1/reconciliation/{DAY}.csv"), by_site),
        ],
        ("get", "/api/v1/reconciliation/{date}/tanks") => {
            vec![List(format!("/api/v1/reconciliation/{DAY}/tanks"), by_site)]
        }
        ("get", "/api/v1/reconciliation/{date}/trips") => {
            vec![List(format!("/api/v1/reconciliation/{DAY}/trips"), by_site)]
        }
        ("get", "/api/v1/reconciliation/{date}/meters") => vec![List(
            format!("/api/v1/reconciliation/{DAY}/meters"),
            by_site,
        )],
        ("get", "/api/v1/alerts") => vec![List(p(path), by_site)],
        ("get", "/api/v1/freshness") => {
            vec![List(p(path), by_site), Empty(format!("{path}?site=s2"))]
        }
        ("get", "/api/v1/audit") | ("get", "/api/v1/audit.csv") => {
            vec![AllSites(Method::GET, p(path))]
        }
        ("get", "/api/v1/whoami") => vec![Own(p(path), |me| {
            assert_eq!(me["sites"], json!(["s1"]), "{me}")
        })],
        ("get", "/api/v1/kpis") => vec![List(p(path), of_kpis)],
        ("get", "/api/v1/site-model") => vec![List(p(path), of_model)],
        ("get", "/api/v1/track") => vec![ById {
            own: format!("{path}?truck=TRK-01&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"),
            other: format!("{path}?truck=TRK-02&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"),
        }],
        ("post", "/api/v1/admin/tokens/reload") => vec![AllSites(Method::POST, p(path))],
        _ => return None,
    })
}

/// The sites of an answer's rows (JSON `data`, or CSV's `site` column).
fn sites_of(a: &tests::Answer, of: Sites) -> Vec<String> {
    if a.text.starts_with("date,site,") {
        return a
            .text
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(1))
            .map(str::to_owned)
            .collect();
    }
    a.data().iter().flat_map(of).collect()
}

async fn check(app: &Router, probe: &Probe) {
    match probe {
        Probe::List(uri, of) => {
            let mine = sites_of(&get(app, uri, Some(S1)).await, *of);
            assert!(!mine.is_empty(), "{uri}: the s1 token sees s1's rows");
            assert!(mine.iter().all(|s| s == "s1"), "{uri}: {mine:?}");
            let all = sites_of(&get(app, uri, Some(ADMIN)).await, *of);
            assert!(
                all.iter().any(|s| s == "s2"),
                "{uri}: the fixture has s2 rows: {all:?}"
            );
        }
        Probe::Empty(uri) => assert!(get(app, uri, Some(S1)).await.data().is_empty(), "{uri}"),
        Probe::ById { own, other } => {
            get(app, own, Some(S1)).await.data();
            get(app, other, Some(ADMIN)).await.data();
            let path = other.split('?').next().unwrap_or(other);
            let p = get(app, other, Some(S1))
                .await
                .problem(StatusCode::NOT_FOUND, path);
            assert!(
                !p["detail"].as_str().unwrap_or_default().contains("s2"),
                "{p}"
            );
        }
        Probe::AllSites(method, uri) => {
            let path = uri.split('?').next().unwrap_or(uri);
            let p = send(app, method.clone(), uri, Some(S1))
                .await
                .problem(StatusCode::FORBIDDEN, path);
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("every site"),
                "{p}"
            );
        }
        Probe::Write(method, uri, body, status) => {
            send_json(app, method.clone(), uri, Some(S1), body)
                .await
                .problem(*status, uri);
        }
        Probe::Own(uri, f) => {
            let rows = get(app, uri, Some(S1)).await.data();
            assert!(!rows.is_empty(), "{uri}");
            rows.iter().for_each(f);
        }
    }
}

/// Every authenticated route of the table has its probes, and they hold: a new route without
/// a scope check fails here.
#[tokio::test]
async fn a_site_scoped_token_sees_exactly_its_sites_on_every_route() {
    let f = fixture().await;
    let ids = fill(&f).await;
    let app = scoped_app(&f, vec![], None);
    for (path, method, needs, _) in routes::table() {
        if needs.is_none() {
            // Open routes: probes, the OpenAPI document and the counters on /metrics, none of
            // which carries a site.
            continue;
        }
        let Some(ps) = probes(path, method, &ids, f.level) else {
            panic!("{method} {path}: no site-scope probe in tests_access.rs; every data route must apply the token's SiteScope");
        };
        for p in &ps {
            check(&app, p).await;
        }
    }
    // Nothing of s2 was changed by the refused writes.
    let d2 = get(&app, &format!("/api/v1/discharges/{}", ids.d2), Some(ADMIN))
        .await
        .data();
    assert_eq!(d2[0]["version"], 1);
    assert!(d2[0]["closed_ms"].is_null());
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let f = fixture().await;
    let app = scoped_app(&f, vec![], None);
    let p = get(&app, "/api/v1/agents", Some(EXPIRED))
        .await
        .problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    assert_eq!(p["detail"], "token expired");
    // One that expires later works, and whoami says when.
    let later = TokenConfig {
        expires: Some("2999-01-01T00:00:00Z".into()),
        ..TokenConfig::new("later", Role::Viewer, hash_token("later-secret"))
    };
    let app = scoped_app(&f, vec![later], None);
    let me = get(&app, "/api/v1/whoami", Some("later-secret"))
        .await
        .data();
    assert_eq!(me[0]["expires_ms"], 32472144000000_i64);
    assert!(me[0]["sites"].is_null());
}

fn file_token(name: &str, secret: &str, sites: &str) -> String {
    format!(
        "[[tokens]]\nname = \"{name}\"\nrole = \"viewer\"\nsha256 = \"{}\"\n{sites}\n",
        hash_token(secret)
    )
}

/// Tokens from the file are added, rotated and revoked by a reload (the admin route here;
/// SIGHUP calls the same), without a restart; a bad file keeps the tokens in use and says
/// where it is wrong.
#[tokio::test]
async fn the_tokens_file_is_reloaded_without_a_restart() {
    let f = fixture().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, file_token("field", "field-1", "sites = [\"s1\"]")).expect("write");
    let app = scoped_app(&f, vec![], Some(file.clone()));
    let agents = get(&app, "/api/v1/agents", Some("field-1")).await.data();
    assert!(
        !agents.is_empty() && agents.iter().all(|a| a["site"] == "s1"),
        "{agents:?}"
    );
    // Rotate: field-2 replaces field-1.
    std::fs::write(&file, file_token("field", "field-2", "")).expect("write");
    let reload = |who: &'static str| {
        let app = app.clone();
        async move { send(&app, Method::POST, "/api/v1/admin/tokens/reload", Some(who)).await }
    };
    // Only an all-sites admin may reload.
    reload(VIEWER)
        .await
        .problem(StatusCode::FORBIDDEN, "/api/v1/admin/tokens/reload");
    let n = reload(ADMIN).await.data();
    assert_eq!(n[0]["tokens"], 7, "6 configured + 1 from the file");
    get(&app, "/api/v1/agents", Some("field-1"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    assert_eq!(
        get(&app, "/api/v1/agents", Some("field-2"))
            .await
            .data()
            .len(),
        2
    );
    // A broken file: 409 naming line and column; the tokens in use stay.
    std::fs::write(&file, "[[tokens]]\nname = \"x\"\nrole = \"root\"\n").expect("write");
    let p = reload(ADMIN)
        .await
        .problem(StatusCode::CONFLICT, "/api/v1/admin/tokens/reload");
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("tokens.toml:3:8"), "{detail}");
    get(&app, "/api/v1/agents", Some("field-2")).await.data();
    // Revoke: an empty file.
    std::fs::write(&file, "").expect("write");
    assert_eq!(reload(ADMIN).await.data()[0]["tokens"], 6);
    get(&app, "/api/v1/agents", Some("field-2"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    // The same tokens table reloaded by a handle (what SIGHUP does).
    std::fs::write(&file, file_token("field", "field-3", "")).expect("write");
    let mut cfg = (*f.state.config).clone();
    cfg.tokens_file = Some(file.clone());
    let tokens = Arc::new(Tokens::load(&cfg));
    let app2 = router_with_tokens(f.state.clone(), tokens.clone());
    get(&app2, "/api/v1/agents", Some("field-3")).await.data();
    std::fs::write(&file, "").expect("write");
    tokens.reload_logged("test").expect("reload");
    get(&app2, "/api/v1/agents", Some("field-3"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
}

/// Every refusal is logged (why, path, the token's name when known) and no log line holds a
/// token or its hash.
#[tokio::test]
async fn refusals_are_logged_without_secrets() {
    super::test_log::start();
    let f = fixture().await;
    let ids = fill(&f).await;
    let app = scoped_app(&f, vec![], None);
    get(&app, "/api/v1/agents", Some(EXPIRED))
        .await
        .problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    get(&app, "/api/v1/agents", Some("wrong-secret"))
        .await
        .problem(StatusCode::UNAUTHORIZED, "/api/v1/agents");
    get(&app, "/api/v1/audit", Some(S1))
        .await
        .problem(StatusCode::FORBIDDEN, "/api/v1/audit");
    let uri = format!("/api/v1/discharges/{}", ids.d2);
    get(&app, &uri, Some(S1))
        .await
        .problem(StatusCode::NOT_FOUND, &uri);
    get(&app, "/api/v1/dead-letters", Some(VIEWER))
        .await
        .problem(StatusCode::FORBIDDEN, "/api/v1/dead-letters");
    let text = super::test_log::text();
    for want in [
        "token expired",
        "token=old",
        "unknown bearer token",
        "all-sites route",
        "outside the token's sites",
        "role too low",
    ] {
        assert!(text.contains(want), "{want:?} not logged:\n{text}");
    }
    for secret in [EXPIRED, "wrong-secret", S1, VIEWER] {
        assert!(!text.contains(secret), "{secret} in the log");
        assert!(
            !text.contains(&hash_token(secret)),
            "the hash of {secret} in the log"
        );
    }
}
