//! The ops console in headless Chromium: `cloud-ingest serve` (SQLite, embedded broker, port 0)
//! on a database seeded with the simulated terminal month (`flowsquare-sim-month`) and reconciled, so
//! every page has data. Signs in with a token, loads every page and the reconciliation
//! drill-downs, fails on any browser console error or an empty chart, saves screenshots to
//! `target/console-screenshots/<page>.png`; checks role hiding (viewer vs auditor) and that the
//! console's files load without a token while data calls answer 401 problem+json; a token
//! limited to one site sees that site's agents only.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (scripts/test installs them);
//! without them the test is skipped, or fails under `FLOWSQUARE_REQUIRE_ALL=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloud_ingest::reconcile::model::day_of;
use cloud_ingest::reconcile::{ReconcileConfig, Reconciler};
use cloud_ingest::store::{DeadLetter, Store};
use flowsquare_tests::browser::{self, check_with, http, ConsoleCheck};
use flowsquare_tests::{external, wait_until, workspace_root};
use flowsquare_wire as wire;
use sim_month::{self as sim, SimMonth, SimOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cloud-ingest");
const ADMIN: &str = "console-admin-token";
const VIEWER: &str = "console-viewer-token";
const AUDITOR: &str = "console-auditor-token";

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("console-screenshots")
}

/// The site model as `[reconcile]` TOML (the sim builds it as a struct).
fn reconcile_toml(c: &ReconcileConfig) -> String {
    let q = |s: &str| format!("{s:?}");
    let mut t = format!(
        "[reconcile]\nenabled = true\n[reconcile.tolerances]\ndefault_pct = {}\n",
        c.tolerances.default_pct
    );
    for k in &c.tanks {
        t += &format!(
            "[[reconcile.tanks]]\nid = {}\nsite = {}\nagent = {}\nproduct = {}\nlevel_tag = {}\ntemperature_tag = {}\ndensity_tag = {}\nstrapping_table = {}\ntable_unit_l = {:?}\ngroup = {}\nbase = {}\ninsulated = {}\nmin_operating_level_mm = {:?}\n",
            q(&k.id), q(&k.site), q(&k.agent), q(&k.product), q(&k.level_tag), q(&k.temperature_tag),
            q(&k.density_tag), q(&k.strapping_table.to_string_lossy()), k.table_unit_l, q(&k.group), q(&k.base),
            k.insulated, k.min_operating_level_mm
        );
        if let Some(w) = &k.water_tag {
            t += &format!("water_tag = {}\n", q(w));
        }
    }
    for m in &c.meters {
        let role = match m.role {
            cloud_ingest::reconcile::model::MeterRole::Jetty => "jetty",
            cloud_ingest::reconcile::model::MeterRole::Gantry => "gantry",
        };
        t += &format!(
            "[[reconcile.meters]]\nid = {}\nsite = {}\nagent = {}\nrole = {}\nproduct = {}\ntotalizer_tag = {}\ngross_totalizer = {}\nunit_l = {:?}\nmeter_factor = {:?}\n",
            q(&m.id), q(&m.site), q(&m.agent), q(role), q(&m.product), q(&m.totalizer_tag),
            m.gross_totalizer, m.unit_l, m.meter_factor
        );
        if let Some(k) = &m.tank {
            t += &format!("tank = {}\n", q(k));
        }
    }
    for (table, places) in [("stations", &c.stations), ("places", &c.places)] {
        for p in places {
            t += &format!(
                "[[reconcile.{table}]]\nid = {}\nlat = {:?}\nlon = {:?}\nradius_m = {:?}\n",
                q(&p.id),
                p.lat,
                p.lon,
                p.radius_m
            );
        }
    }
    for k in &c.trucks {
        t += &format!(
            "[[reconcile.trucks]]\nid = {}\nsite = {}\nagent = {}\nlat_tag = {}\nlon_tag = {}\n",
            q(&k.id),
            q(&k.site),
            q(&k.agent),
            q(&k.lat_tag),
            q(&k.lon_tag)
        );
    }
    t
}

/// Fill `db` with the month ending today 00:00 UTC, reconcile it, add agent status, a
/// heartbeat and a dead letter.
async fn seed(db: &Path, month: &SimMonth) {
    let store: Arc<dyn Store> =
        Arc::new(cloud_ingest::store::sqlite::SqliteStore::open(db).expect("open sqlite"));
    store.migrate().await.expect("migrate");
    let t = Instant::now();
    month.load(&*store).await.expect("load the month");
    eprintln!(
        "seeded {} batches in {:?}",
        month.batches.len(),
        t.elapsed()
    );
    let r = Reconciler::with_tables(month.config.clone(), &month.tables).expect("site model");
    let t = Instant::now();
    let (from, to) = (
        month.opts.start_day,
        month.opts.start_day + month.opts.days - 1,
    );
    r.run_range(&*store, from, to, month.as_of_ms(), "test", |_| {})
        .await
        .expect("reconcile");
    eprintln!("reconciled {} days in {:?}", to - from + 1, t.elapsed());
    let now = flowsquare_service::clock::now_ms();
    store
        .status(
            sim::SITE,
            sim::AGENT,
            &wire::Status::online(now - 60_000, "0.1.0"),
            now - 60_000,
        )
        .await
        .expect("status");
    let hb: wire::Heartbeat = serde_json::from_value(serde_json::json!({
        "v": 1, "ts_ms": now - 30_000, "uptime_s": 86_400,
        "buffer": { "rows": 3, "bytes": 4096, "readings": 1250, "oldest_unsent_ms": now - 95_000, "drain_rate_per_s": 40.0 },
    }))
    .expect("heartbeat");
    store
        .heartbeat(sim::SITE, sim::AGENT, &hb, now - 30_000)
        .await
        .expect("heartbeat");
    store
        .dead_letter(&DeadLetter {
            topic: "fs/v1/dar-terminal/gw-9/data".into(),
            payload: vec![0xde, 0xad],
            reason: "bad magic".into(),
            received_ms: now - 3_600_000,
        })
        .await
        .expect("dead letter");
}

/// On the terminal's last day: 12:00–12:30 every reading is bad (no answer), and 12:30–12:45 is
/// lost at the edge and reported as a gap (so the charts mark bad quality and the freshness page
/// lists a gap; every removed reading is counted in it).
fn degrade_last_day(month: &mut SimMonth) {
    let last = month
        .batches
        .iter_mut()
        .rev()
        .find(|b| b.site == sim::SITE && b.agent == sim::AGENT && !b.readings.is_empty())
        .expect("a terminal batch");
    let day = last.readings.iter().map(|r| r.ts_ms).min().unwrap_or(0) / 86_400_000;
    let noon = day * 86_400_000 + 12 * 3_600_000;
    for r in last.readings.iter_mut() {
        if (noon..noon + 1_800_000).contains(&r.ts_ms) {
            r.quality = wire::Quality::BadCommunication;
            r.value = None;
            r.error = Some("timeout".into());
        }
    }
    let before = last.readings.len();
    last.readings
        .retain(|r| !(noon + 1_800_000..noon + 2_700_000).contains(&r.ts_ms));
    last.gaps.push(wire::Gap {
        tags: Vec::new(),
        from_ms: noon + 1_800_000,
        to_ms: noon + 2_700_000,
        count: (before - last.readings.len()) as u64,
        count_known: true,
        reason: wire::GapReason::BufferFull,
    });
}

struct Serve {
    child: std::process::Child,
    base: String,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, reconcile: &str) -> Serve {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let token = |name: &str, role: &str, t: &str| {
        format!(
            "[[api.tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = {:?}\n",
            cloud_ingest::api::hash_token(t)
        )
    };
    let cfg = dir.join("cloud-ingest.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\ntopic_root = \"console{}/fs\"\ngroup = \"\"\n[database]\nsqlite_path = {:?}\n[broker]\nembedded = true\nlisten = \"127.0.0.1:{port}\"\n[api]\nlisten = \"127.0.0.1:0\"\n{}{}{}{reconcile}",
            std::process::id(),
            dir.join("ingest.db").display().to_string(),
            token("ops-admin", "admin", ADMIN),
            token("ops-viewer", "viewer", VIEWER),
            token("ops-auditor", "auditor", AUDITOR),
        ),
    )
    .expect("config");
    let log = dir.join("serve.log");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn cloud-ingest serve");
    let mut s = Serve {
        child,
        base: String::new(),
        log,
    };
    eprintln!("waiting for `HTTP API at http://…` in the serve log");
    let found = wait_until(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        match text.split("HTTP API at http://").nth(1) {
            Some(rest) => {
                let addr = rest.split('/').next().unwrap_or("");
                s.base = format!("http://{addr}");
                true
            }
            None => false,
        }
    });
    assert!(
        found,
        "serve did not start: {}",
        std::fs::read_to_string(&s.log).unwrap_or_default()
    );
    s
}

#[test]
fn the_console_shows_every_page_with_data_and_hides_what_a_role_cannot_see() {
    let started = Instant::now();
    let Some((chromium, chromedriver)) = browser::find() else {
        external::missing("chromium and chromium-driver (headless browser for the console test)");
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    // The month that ends today at 00:00 UTC, with the issue's faults (exceptions to show).
    let today = day_of(flowsquare_service::clock::now_ms());
    let month = sim::generate(&SimOptions {
        start_day: today - 30,
        days: 30,
        faults: sim::Faults {
            tank_loss: Some(("T3".into(), 25, 0.008)),
            transit_loss: Some(("TRK-07".into(), 29, 0.02)),
            ..sim::Faults::issue()
        },
        ..SimOptions::default()
    });
    let mut month = month;
    degrade_last_day(&mut month);
    std::fs::create_dir_all(dir.path().join("tables")).expect("tables dir");
    for (id, csv) in &month.tables {
        std::fs::write(dir.path().join(format!("tables/{id}.csv")), csv).expect("table");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(seed(&dir.path().join("ingest.db"), &month));
    let srv = serve(dir.path(), &reconcile_toml(&month.config));
    eprintln!(
        "cloud-ingest serving at {} after {:?}",
        srv.base,
        started.elapsed()
    );

    // Without a token: the console's files load, data calls are 401 problem+json.
    let t = Duration::from_secs(10);
    let index = http("GET", &format!("{}/", srv.base), &[], None, t).expect("GET /");
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = index.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    for (file, ctype) in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let a = http("GET", &format!("{}/console/{file}", srv.base), &[], None, t).expect("asset");
        assert_eq!(a.status, 200, "{file}");
        assert!(
            a.header("content-type").unwrap_or("").starts_with(ctype),
            "{file}: {:?}",
            a.header("content-type")
        );
    }
    let missing = http(
        "GET",
        &format!("{}/console/nope.js", srv.base),
        &[],
        None,
        t,
    )
    .expect("404");
    assert_eq!(missing.status, 404);
    for path in ["/api/v1/whoami", "/api/v1/kpis", "/api/v1/agents"] {
        let a = http("GET", &format!("{}{path}", srv.base), &[], None, t).expect("401");
        assert_eq!(a.status, 401, "{path}");
        assert_eq!(
            a.header("content-type"),
            Some("application/problem+json"),
            "{path}"
        );
        assert_eq!(a.json()["status"], 401, "{path}");
    }
    let kpis = http(
        "GET",
        &format!("{}/api/v1/kpis", srv.base),
        &[("Authorization", &format!("Bearer {VIEWER}"))],
        None,
        t,
    )
    .expect("kpis");
    assert_eq!(kpis.status, 200, "{}", kpis.text());
    let k = &kpis.json()["data"][0];
    assert_eq!(k["tanks"].as_array().map(Vec::len), Some(4), "{k}");
    assert!(
        k["products"][0]["endurance_days"]
            .as_f64()
            .is_some_and(|d| d > 0.0),
        "{k}"
    );

    // Every page, as admin.
    let driver = browser::Driver::start(&chromium, &chromedriver).expect("chromedriver");
    let session = driver.session(1440, 1000).expect("browser session");
    let report = check_with(
        &session,
        &ConsoleCheck {
            base_url: srv.base.clone(),
            token: ADMIN.into(),
            screenshot_dir: screenshot_dir(),
            expect_data: true,
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nserve log:\n{}",
            std::fs::read_to_string(&srv.log).unwrap_or_default()
        )
    });
    assert_eq!(report.role, "admin");
    for p in &report.pages {
        eprintln!(
            "page {:<12} {:>5} ms  charts {:?}  {}",
            p.name,
            p.load_ms,
            p.chart_points,
            p.screenshot.display()
        );
    }
    assert_eq!(report.pages.len(), browser::PAGES.len() + 3);
    let tags = report
        .pages
        .iter()
        .find(|p| p.name == "tags")
        .expect("tags page");
    assert!(
        tags.chart_points[0] > 200,
        "a day of 5-minute buckets: {:?}",
        tags.chart_points
    );
    // Quality is shown: the degraded half hour is marked on the tags page's chart.
    session
        .execute(
            "document.body.dataset.state = 'loading'; location.hash = '#/tags'; return true",
            &[],
        )
        .expect("go");
    session
        .wait_for("return document.body.dataset.page === 'tags' && document.body.dataset.state === 'ready'", Duration::from_secs(30))
        .expect("tags page");
    let bad = session
        .execute(
            "return Number(document.querySelector('#page svg.chart').dataset.bad)",
            &[],
        )
        .expect("bad buckets");
    assert!(
        bad.as_u64().is_some_and(|n| n >= 6),
        "bad-quality buckets marked: {bad}"
    );
    let gaps = session
        .execute("document.body.dataset.state = 'loading'; location.hash = '#/freshness'; return true", &[])
        .and_then(|_| session.wait_for("return document.body.dataset.page === 'freshness' && document.body.dataset.state === 'ready'", Duration::from_secs(30)))
        .and_then(|_| session.execute("return document.body.innerText.includes('buffer-full')", &[]))
        .expect("freshness page");
    assert_eq!(gaps, serde_json::json!(true), "the gap is listed");

    // Role hiding: a viewer sees no dead letters (and never asks for them); an auditor does.
    let has_dead_letters = |token: &str| -> bool {
        browser::login(&session, &srv.base, token).expect("sign in");
        session
            .execute("document.body.dataset.state = 'loading'; location.hash = '#/freshness'; return true", &[])
            .expect("go");
        session
            .wait_for("return document.body.dataset.page === 'freshness' && document.body.dataset.state === 'ready'", Duration::from_secs(30))
            .expect("freshness page");
        browser::errors_of(&session, "freshness").expect("no console errors");
        session
            .execute(
                "return document.getElementById('dead-letters') !== null",
                &[],
            )
            .expect("query")
            == serde_json::json!(true)
    };
    assert!(
        !has_dead_letters(VIEWER),
        "a viewer must not see dead letters"
    );
    assert!(has_dead_letters(AUDITOR), "an auditor sees dead letters");
    let role = session
        .execute(
            "return document.getElementById('who-role').textContent",
            &[],
        )
        .expect("role");
    assert_eq!(role, "auditor");
    eprintln!("console test done in {:?}", started.elapsed());
}

#[test]
fn every_page_says_no_data_yet_on_an_empty_database() {
    let Some((chromium, chromedriver)) = browser::find() else {
        external::missing("chromium and chromium-driver (headless browser for the console test)");
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    // No [reconcile] section, nothing stored.
    let srv = serve(dir.path(), "");
    let driver = browser::Driver::start(&chromium, &chromedriver).expect("chromedriver");
    let session = driver.session(1280, 900).expect("session");
    let report = check_with(
        &session,
        &ConsoleCheck {
            base_url: srv.base.clone(),
            token: ADMIN.into(),
            screenshot_dir: screenshot_dir().join("empty"),
            expect_data: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.pages.len(), browser::PAGES.len());
    for page in ["fleet", "tags", "recon", "trucks", "kpis", "alerts"] {
        session.execute("document.body.dataset.state = 'loading'; if (location.hash === arguments[0]) window.dispatchEvent(new HashChangeEvent('hashchange')); else location.hash = arguments[0]; return true", &[serde_json::json!(format!("#/{page}"))]).expect("go");
        session
            .wait_for(&format!("return document.body.dataset.page === '{page}' && document.body.dataset.state === 'ready'"), Duration::from_secs(20))
            .expect("ready");
        let empty = session
            .execute(
                "return document.querySelector('#page .empty') !== null",
                &[],
            )
            .expect("query");
        assert_eq!(
            empty,
            serde_json::json!(true),
            "{page}: an empty-state message"
        );
    }
}

/// A token limited to site `north` signs in and sees north's agent, never south's (the console
/// shows what the API answers, and the API answers the token's sites only).
#[test]
fn a_site_scoped_token_sees_only_its_site_in_the_console() {
    let Some((chromium, chromedriver)) = browser::find() else {
        external::missing("chromium and chromium-driver (headless browser for the console test)");
        return;
    };
    const NORTH: &str = "console-north-token";
    let dir = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = cloud_ingest::store::sqlite::SqliteStore::open(&dir.path().join("ingest.db"))
            .expect("open sqlite");
        store.migrate().await.expect("migrate");
        let now = flowsquare_service::clock::now_ms();
        for (site, agent) in [("north", "gw-north"), ("south", "gw-south")] {
            let b: wire::Birth = serde_json::from_value(serde_json::json!({
                "v": 1, "site": site, "agent": agent, "agent_version": "0.1.0", "config_hash": "h1",
                "started_ms": now - 60_000,
                "devices": [ { "name": "plc", "protocol": "modbus-tcp" } ],
                "tags": [ { "id": 0, "name": format!("{site}/level"), "unit": "m", "kind": "gauge",
                            "device": "plc", "data_type": "f32", "poll_interval_ms": 1000 } ]
            }))
            .expect("birth");
            store.birth(&b, now - 60_000).await.expect("birth");
            store
                .status(
                    site,
                    agent,
                    &wire::Status::online(now - 30_000, "0.1.0"),
                    now - 30_000,
                )
                .await
                .expect("status");
        }
    });
    let scoped = format!(
        "[[api.tokens]]\nname = \"north-ops\"\nrole = \"viewer\"\nsha256 = {:?}\nsites = [\"north\"]\n",
        cloud_ingest::api::hash_token(NORTH)
    );
    let srv = serve(dir.path(), &scoped);
    let driver = browser::Driver::start(&chromium, &chromedriver).expect("chromedriver");
    let session = driver.session(1280, 900).expect("session");
    let fleet_text = |token: &str| -> String {
        browser::login(&session, &srv.base, token).expect("sign in");
        session
            .wait_for(
                "return document.body.dataset.page === 'fleet' && document.body.dataset.state === 'ready'",
                Duration::from_secs(30),
            )
            .expect("fleet page");
        browser::errors_of(&session, "fleet").expect("no console errors");
        session
            .execute("return document.body.innerText", &[])
            .expect("text")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let all = fleet_text(ADMIN);
    assert!(
        all.contains("gw-north") && all.contains("gw-south"),
        "{all}"
    );
    let north = fleet_text(NORTH);
    assert!(north.contains("gw-north"), "{north}");
    assert!(
        !north.contains("gw-south") && !north.contains("south"),
        "a north token sees nothing of south: {north}"
    );
}
