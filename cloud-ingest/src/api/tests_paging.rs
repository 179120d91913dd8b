//! Paging (`page.rs`, issue 16): every list route of the route table takes `limit` and
//! `cursor` and answers `next`; 2,500 tags walked through `/api/v1/tags` by the `Link` header
//! come each exactly once, in order; a scoped token's pages are full pages of its own sites;
//! bad cursors and limits are 400s naming the parameter. Also the scope of trip records and of
//! the site model's places (issue 15).

use axum::http::header::LINK;
use axum::http::StatusCode;
use axum::Router;
use serde_json::Value;

use super::page::{NOT_LISTS, PAGED};
use super::tests::{fixture, get, Fixture, ADMIN};
use super::tests_access::{fill, scoped_app, two_site_model, variance, DAY, RANGE, S1};
use super::*;
use crate::reconcile::model::RecordKind;
use crate::store::ledger::NewRun;
use crate::store::suite::{birth, T0};

/// A list route's URI with the parameters it needs besides paging.
fn needs(path: &str, level: i64) -> Option<String> {
    let range = RANGE.to_owned();
    Some(match path {
        "/api/v1/latest" => format!("/api/v1/latest?tag_id={level}"),
        "/api/v1/tags/{id}/series" => format!("/api/v1/tags/{level}/series?{range}&step=1h"),
        "/api/v1/gaps" | "/api/v1/discharges" | "/api/v1/epods" => format!("{path}?{range}"),
        p if p.starts_with("/api/v1/reconciliation/{date}") => {
            format!("{}?", p.replace("{date}", DAY))
        }
        p => format!("{p}?"),
    })
}

/// `uri` with more parameters.
fn and(uri: &str, more: &str) -> String {
    if uri.ends_with('?') {
        format!("{uri}{more}")
    } else {
        format!("{uri}&{more}")
    }
}

/// The path of a URI.
fn path_of(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

/// Every GET route of `/api/v1` is a paged list or named as not a list; each list takes
/// `limit` and `cursor` (a bad one is a 400 naming it, a cursor of another list too), answers
/// `next` beside `data` with a `Link` when there is more, and the OpenAPI document says so.
#[tokio::test]
async fn every_list_route_takes_limit_and_cursor() {
    let f = fixture().await;
    fill(&f).await;
    let app = scoped_app(&f, vec![], None);
    let doc = openapi::document();
    let other = {
        let a = get(&app, "/api/v1/agents?limit=1", Some(ADMIN)).await;
        a.json()["next"]
            .as_str()
            .expect("two agents: a next")
            .to_owned()
    };
    let mut seen = 0;
    for (path, method, _, _) in routes::table() {
        if method != "get" || !path.starts_with("/api/v1/") {
            continue;
        }
        if NOT_LISTS.iter().any(|(p, _)| *p == path) {
            continue;
        }
        let Some((_, paging)) = PAGED.iter().find(|(p, _)| *p == path) else {
            panic!("GET {path}: not in page::PAGED nor page::NOT_LISTS; every list route is paged");
        };
        seen += 1;
        let uri = needs(path, f.level).expect("uri");
        let at = path_of(&uri);
        for bad in ["limit=0", &format!("limit={}", paging.max + 1), "limit=x"] {
            get(&app, &and(&uri, bad), Some(ADMIN))
                .await
                .bad_parameter(at, "limit");
        }
        for bad in ["cursor=%21%21", "cursor=e30", &format!("cursor={other}")] {
            if path == "/api/v1/agents" && bad.ends_with(&other) {
                continue;
            }
            get(&app, &and(&uri, bad), Some(ADMIN))
                .await
                .bad_parameter(at, "cursor");
        }
        let a = get(&app, &and(&uri, "limit=1"), Some(ADMIN)).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text);
        if a.content_type() == "application/json" {
            let body = a.json();
            assert!(body.get("next").is_some(), "{uri}: no `next`: {body}");
            assert!(
                body["data"].as_array().is_some_and(|d| d.len() <= 1),
                "{uri}"
            );
            let link = a.headers.get(LINK).and_then(|v| v.to_str().ok());
            assert_eq!(link.is_some(), body["next"].is_string(), "{uri}: {link:?}");
        }
        // The document: both parameters, `next` and the Link header.
        let op = &doc["paths"][path]["get"];
        let refs: Vec<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["$ref"].as_str())
            .collect();
        assert!(
            refs.contains(&"#/components/parameters/cursor"),
            "{path}: {refs:?}"
        );
        let limit = format!("#/components/parameters/limit_{}", paging.list);
        assert!(refs.contains(&limit.as_str()), "{path}: {refs:?}");
        assert_eq!(
            doc["components"]["parameters"][&limit[24..]]["schema"]["maximum"],
            paging.max
        );
        assert!(
            op["responses"]["200"]["headers"]["Link"].is_object(),
            "{path}"
        );
        let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(schema["properties"]["next"].is_object(), "{path}: {schema}");
    }
    assert_eq!(seen, PAGED.len());
}

/// Follow `Link: <…>; rel="next"` from `first` to the end; every page's rows.
async fn follow(app: &Router, first: &str, token: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut uri = first.to_owned();
    loop {
        let a = get(app, &uri, Some(token)).await;
        let link = a
            .headers
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let next = a.json()["next"].clone();
        pages.push(a.data());
        assert!(pages.len() < 1_000, "no end");
        match link {
            None => {
                assert!(next.is_null());
                return pages;
            }
            Some(l) => {
                assert!(l.ends_with(">; rel=\"next\""), "{l}");
                let c = next.as_str().expect("next with a Link");
                assert!(l.contains(&format!("cursor={c}")), "{l}");
                uri = l[1..l.len() - ">; rel=\"next\"".len()].to_owned();
            }
        }
    }
}

/// 2,500 tags (2,000 of s1's two agents, 500 of s2): `/api/v1/tags?limit=100` walked by its
/// `Link` headers gives every tag once, in (site, agent, name) order, in 26 pages (the
/// fixture's own three tags too); the s1 token's pages are full pages of s1 tags only and end
/// after them; a prefix with the site filter pages the same way; the default page is 1,000.
#[tokio::test]
async fn paged_tags_come_each_once_in_order() {
    let f = fixture().await;
    big_registry(&f).await;
    let app = scoped_app(&f, vec![], None);
    let pages = follow(&app, "/api/v1/tags?limit=100", ADMIN).await;
    assert_eq!(pages.len(), 26);
    assert!(pages[..25].iter().all(|p| p.len() == 100));
    let rows: Vec<Value> = pages.into_iter().flatten().collect();
    assert_eq!(rows.len(), 2_503);
    let keys: Vec<(String, String, String)> = rows
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (s("site"), s("agent"), s("name"))
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted, "each tag once, in order");
    let first = get(&app, "/api/v1/tags", Some(ADMIN)).await;
    assert_eq!(first.data().len(), 1_000);
    // The s1 token: s1's 2,002 tags in full pages of 500, nothing of s2.
    let pages = follow(&app, "/api/v1/tags?limit=500", S1).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [500, 500, 500, 500, 2]);
    assert!(pages.iter().flatten().all(|t| t["site"] == "s1"));
    // Site and prefix filters page too.
    let pages = follow(
        &app,
        "/api/v1/tags?site=s2&prefix=bulk%2F04&limit=30",
        ADMIN,
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [30, 30, 30, 10]);
    // Freshness pages the tag list the same way.
    let pages = follow(&app, "/api/v1/freshness?site=s2&limit=200", S1).await;
    assert_eq!(pages, vec![Vec::<Value>::new()]);
    let pages = follow(&app, "/api/v1/freshness?limit=1000", S1).await;
    assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), 2_002);
}

/// Births of 1,000 tags for s1/b1 and s1/b2 and 500 for s2/b1.
async fn big_registry(f: &Fixture) {
    for (site, agent, n) in [("s1", "b1", 1_000), ("s1", "b2", 1_000), ("s2", "b1", 500)] {
        let names: Vec<String> = (0..n).map(|i| format!("bulk/{i:04}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        f.state
            .store
            .birth(&birth(site, agent, "h1", &refs), T0)
            .await
            .expect("birth");
    }
}

/// A cursor is bound to its list and its key: another list's cursor, garbage, or a series
/// cursor outside the range are 400s naming `cursor`; a series walked by cursor covers the
/// range once.
#[tokio::test]
async fn bad_cursors_are_400s() {
    let f = fixture().await;
    let app = scoped_app(&f, vec![], None);
    let tags = get(&app, "/api/v1/tags?limit=1", Some(ADMIN)).await;
    let c = tags.json()["next"].as_str().expect("next").to_owned();
    for uri in [
        format!("/api/v1/gaps?{RANGE}&cursor={c}"),
        format!("/api/v1/agents?cursor={c}"),
        "/api/v1/tags?cursor=not-a-cursor".to_owned(),
        "/api/v1/tags?cursor=".to_owned() + &"A".repeat(40),
    ] {
        get(&app, &uri, Some(ADMIN))
            .await
            .bad_parameter(path_of(&uri), "cursor");
    }
    // A series in pages of 10 minutes of a 1 min step: the fixture's 120 s of readings are in
    // the first page's 2 buckets; the walk ends at `to`.
    let first = format!(
        "/api/v1/tags/{}/series?from={T0}&to={}&step=1m&limit=10",
        f.level,
        T0 + 3_600_000
    );
    let pages = follow(&app, &first, ADMIN).await;
    assert_eq!(pages.len(), 6);
    assert_eq!(pages[0].len(), 2);
    assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), 2);
    let other = format!(
        "/api/v1/tags/{}/series?from={}&to={}&step=1m&cursor={}",
        f.level,
        T0,
        T0 + 60_000,
        super::page::lists::SERIES
            .parse::<i64>(&params::Query::default())
            .expect("req")
            .encode(&(T0 + 7_200_000))
    );
    get(&app, &other, Some(ADMIN))
        .await
        .bad_parameter(path_of(&other), "cursor");
}

/// A trip record belongs to the terminal's site, the site of the station it delivered to and
/// its truck's site: the s1 token (station ST-KARIAKOO, truck TRK-01) sees trips of terminal
/// s2 that touch them, not the others.
#[tokio::test]
async fn trip_records_are_scoped_by_every_site_they_touch() {
    let f = fixture().await;
    let app = scoped_app(&f, vec![], None);
    let trip = |truck: &str, station: Option<&str>| {
        let mut v = variance("s2", RecordKind::Trip, &format!("{truck}/x"));
        v.detail = serde_json::json!({ "bol": format!("B-{truck}-{station:?}"), "truck": truck, "station": station });
        v
    };
    let records = vec![
        trip("TRK-02", Some("ST-KARIAKOO")),
        trip("TRK-01", None),
        trip("TRK-02", Some("ST-UBUNGO")),
        trip("TRK-02", None),
    ];
    let run = NewRun {
        date: DAY.into(),
        trigger: "cli".into(),
        started_ms: T0 + 86_400_000,
        finished_ms: T0 + 86_401_000,
        as_of_ms: T0 + 86_400_000,
    };
    f.state
        .store
        .ledger()
        .save_run(&run, &records, &[], T0 + 86_401_000)
        .await
        .expect("run");
    let uri = format!("/api/v1/reconciliation/{DAY}/trips");
    let mine = get(&app, &uri, Some(S1)).await.data();
    let bols: Vec<&str> = mine
        .iter()
        .filter_map(|r| r["detail"]["bol"].as_str())
        .collect();
    assert_eq!(bols, ["B-TRK-02-Some(\"ST-KARIAKOO\")", "B-TRK-01-None"]);
    assert_eq!(get(&app, &uri, Some(ADMIN)).await.data().len(), 4);
    // Paged by position within the run: one at a time, the same two.
    let pages = follow(&app, &format!("{uri}?limit=1"), S1).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
}

/// The site model's places without a site (terminal, depots) are shown to tokens of every site
/// and of a terminal or fleet site, not to a station-only token, which sees its own station.
#[tokio::test]
async fn a_station_token_sees_its_station_and_not_the_network() {
    let f = fixture().await;
    let station = TokenConfig {
        sites: Some(vec!["st-only".into()]),
        ..TokenConfig::new("station", Role::Viewer, hash_token("station-secret"))
    };
    let mut model = two_site_model();
    // ST-UBUNGO's gauge is the station's own site, with no tanks, meters or trucks.
    for st in &mut model.cfg.stations {
        if st.id == "ST-UBUNGO" {
            st.gauge_site = Some("st-only".into());
        }
    }
    let app = {
        let mut config = (*f.state.config).clone();
        config.tokens.push(station);
        config.tokens.push(TokenConfig {
            sites: Some(vec!["s1".into()]),
            ..TokenConfig::new("s1", Role::Viewer, hash_token(S1))
        });
        router(ApiState {
            config: std::sync::Arc::new(config),
            reconciler: Some(std::sync::Arc::new(model)),
            ..f.state.clone()
        })
    };
    let places = |m: &Value| -> Vec<(String, String)> {
        m["places"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["kind"].as_str().unwrap_or("?").to_owned(),
                    p["id"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect()
    };
    let st = get(&app, "/api/v1/site-model", Some("station-secret"))
        .await
        .data();
    assert_eq!(
        places(&st[0]),
        [("station".to_owned(), "ST-UBUNGO".to_owned())]
    );
    assert!(st[0]["tanks"].as_array().is_some_and(Vec::is_empty));
    let s1 = get(&app, "/api/v1/site-model", Some(S1)).await.data();
    let all = get(&app, "/api/v1/site-model", Some(ADMIN)).await.data();
    let other_places = |m: &Value| places(m).into_iter().filter(|p| p.0 == "place").count();
    assert!(
        other_places(&all[0]) > 0,
        "the model has places: {}",
        all[0]
    );
    assert_eq!(
        other_places(&s1[0]),
        other_places(&all[0]),
        "a terminal site sees them"
    );
}

/// An agent whose birth the tag limit refused is shown with why, also when the store has no
/// row of it yet (merged into its page in key order).
#[tokio::test]
async fn an_agent_with_a_refused_birth_says_so() {
    let f = fixture().await;
    {
        let mut m = f.state.stats.refused_agents.lock().expect("lock");
        for agent in ["a1", "a5"] {
            m.insert(
                ("s1".into(), agent.into()),
                crate::consume::run::RefusedBirth {
                    config_hash: "h9".into(),
                    total: 250_000,
                    limit: 200_000,
                    batches: 3,
                    logged_ms: None,
                },
            );
        }
    }
    let rows = get(&f.app, "/api/v1/agents", Some(ADMIN)).await.data();
    let shown: Vec<(String, Value)> = rows
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["site"].as_str().unwrap_or("?"),
                    a["agent"].as_str().unwrap_or("?")
                ),
                a["birth_refused"].clone(),
            )
        })
        .collect();
    let refused = Value::from("birth refused: 250000 tags > limit 200000");
    assert_eq!(
        shown,
        [
            ("s1/a1".to_owned(), refused.clone()),
            ("s1/a5".to_owned(), refused),
            ("s2/a9".to_owned(), Value::Null)
        ]
    );
    // Paged one by one, each once.
    let pages = follow(&f.app, "/api/v1/agents?limit=1", ADMIN).await;
    let names: Vec<String> = pages
        .iter()
        .flatten()
        .map(|a| a["agent"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(names, ["a1", "a5", "a9"]);
}
