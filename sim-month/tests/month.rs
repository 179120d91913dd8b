//! The simulated month through the real stores (SQLite, and PostgreSQL on the local server in a
//! database of its own per test): no fault → no alert; the issue's four faults → exactly their
//! alerts, at the right place and day.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use cloud_ingest::reconcile::model::*;
use cloud_ingest::reconcile::Reconciler;
use cloud_ingest::store::ledger::AlertRow;
use cloud_ingest::store::postgres::{PgOptions, PgStore};
use cloud_ingest::store::sqlite::SqliteStore;
use cloud_ingest::store::Store;
use sim_month::*;

type Key = (String, String, String);

#[test]
fn the_site_model_file_is_valid_and_matches_the_month() {
    let m = site_model();
    m.validate().expect("valid [reconcile]");
    assert_eq!(
        (
            m.tanks.len(),
            m.meters.len(),
            m.stations.len(),
            m.trucks.len()
        ),
        (4, 5, 6, 16)
    );
    assert!(m.tanks.iter().all(|t| t.site == SITE && t.agent == AGENT));
    assert!(m.trucks.iter().all(|t| t.site == FLEET));
}

/// Load, reconcile every day in order, check stale tags at the end; the open alerts.
async fn month(store: &dyn Store, faults: Faults) -> (SimMonth, Vec<AlertRow>) {
    let m = generate(&SimOptions {
        faults,
        ..SimOptions::default()
    });
    m.load(store).await.expect("load the month");
    let r = Reconciler::with_tables(m.config.clone(), &m.tables).expect("site model");
    let (first, last) = (m.opts.start_day, m.opts.start_day + m.opts.days - 1);
    let runs = r
        .run_range(store, first, last, m.as_of_ms(), "test", |_| {})
        .await
        .expect("reconcile");
    assert_eq!(runs.len() as i64, m.opts.days);
    let (stale, _, _) = r
        .check_stale(store, day_start_ms(last + 1) + 60_000)
        .await
        .expect("stale check");
    assert_eq!(stale, 0, "every tank and meter tag reported until the end");
    // Some tank balance is not trivially zero: the gauges are noisy, the figures are real.
    let tanks = store
        .ledger()
        .variances(&day_name(first + 3), Some("tank"))
        .await
        .expect("variances");
    assert_eq!(tanks.len(), 4);
    for t in &tanks {
        let pct = t.v.variance_pct.expect("pct");
        assert!(pct.abs() < 0.1, "{t:?}");
    }
    let alerts = store
        .ledger()
        .alerts(Some("open"), None, 1000)
        .await
        .expect("alerts");
    (m, alerts)
}

fn keys(alerts: &[AlertRow]) -> BTreeSet<Key> {
    alerts
        .iter()
        .map(|a| (a.a.kind.clone(), a.a.place.clone(), a.a.date.clone()))
        .collect()
}

async fn clean_month_has_no_alert(store: &dyn Store) {
    let (_, alerts) = month(store, Faults::default()).await;
    assert!(
        alerts.is_empty(),
        "alerts on a consistent month:\n{}",
        alerts
            .iter()
            .map(|a| a.a.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

async fn each_fault_is_found_where_and_when_it_happened(store: &dyn Store) {
    let (m, alerts) = month(store, Faults::issue()).await;
    let want: BTreeSet<Key> = m.expected.iter().cloned().collect();
    assert_eq!(want.len(), 5, "{want:?}");
    assert_eq!(
        keys(&alerts),
        want,
        "alerts:\n{}",
        alerts
            .iter()
            .map(|a| a.a.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Re-running a day replaces its results: the same alerts, the same records.
    let r = Reconciler::with_tables(m.config.clone(), &m.tables).expect("site model");
    let day = m.opts.start_day + 19;
    let before = store
        .ledger()
        .variances(&day_name(day), None)
        .await
        .expect("variances");
    let again = r
        .run_day(store, day, m.as_of_ms(), "test")
        .await
        .expect("rerun");
    assert_eq!(again.run.alerts_opened, 0);
    assert_eq!(again.run.alerts_closed, 0);
    let after = store
        .ledger()
        .variances(&day_name(day), None)
        .await
        .expect("variances");
    assert_eq!(before.len(), after.len());
    assert_eq!(
        keys(
            &store
                .ledger()
                .alerts(Some("open"), None, 1000)
                .await
                .expect("alerts")
        ),
        want
    );
    // The tank loss is 0.8 % of T3's dispatch that day.
    let t3 = after
        .iter()
        .find(|v| v.v.kind == RecordKind::Tank && v.v.place == "T3")
        .expect("T3");
    let pct = t3.v.variance_pct.expect("pct");
    assert!((pct + 0.8).abs() < 0.1, "{t3:?}");
}

#[tokio::test]
async fn sqlite_clean_month_has_no_alert() {
    let s = SqliteStore::open_in_memory().expect("open");
    s.migrate().await.expect("migrate");
    clean_month_has_no_alert(&s).await;
}

#[tokio::test]
async fn sqlite_each_fault_is_found_where_and_when_it_happened() {
    let s = SqliteStore::open_in_memory().expect("open");
    s.migrate().await.expect("migrate");
    each_fault_is_found_where_and_when_it_happened(&s).await;
}

/// The local server.
const SERVER: &str = "host=127.0.0.1 port=5432 user=postgres";

/// A database of its own (dropped at the end), or None when no server answers.
async fn pg_store() -> Option<(PgStore, String, tokio_postgres::Client)> {
    static N: AtomicU32 = AtomicU32::new(0);
    let (admin, conn) = match tokio_postgres::connect(
        &format!("{SERVER} dbname=postgres connect_timeout=5"),
        tokio_postgres::NoTls,
    )
    .await
    {
        Ok(x) => x,
        Err(e) => {
            if std::env::var_os("FLOWSQUARE_REQUIRE_ALL").is_some() {
                panic!(
                    "PostgreSQL not reachable at {SERVER} ({e}) and FLOWSQUARE_REQUIRE_ALL is set"
                );
            }
            println!("SKIPPED: PostgreSQL not reachable ({e})");
            return None;
        }
    };
    tokio::spawn(conn);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "fs_recon_{}_{}_{nanos:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let store = PgStore::connect(&format!("{SERVER} dbname={name}"), PgOptions::default())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    Some((store, name, admin))
}

async fn pg_drop(store: PgStore, name: String, admin: tokio_postgres::Client) {
    store.close();
    drop(store);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

#[tokio::test]
async fn postgres_clean_month_has_no_alert() {
    let Some((s, name, admin)) = pg_store().await else {
        return;
    };
    clean_month_has_no_alert(&s).await;
    pg_drop(s, name, admin).await;
}

#[tokio::test]
async fn postgres_each_fault_is_found_where_and_when_it_happened() {
    let Some((s, name, admin)) = pg_store().await else {
        return;
    };
    each_fault_is_found_where_and_when_it_happened(&s).await;
    pg_drop(s, name, admin).await;
}

/// A 2 h jetty-meter outage (readings missing, a gap record), a 6 h stale tank gauge (bad
/// quality only), a totalizer rollover mid-day and a totalizer reset: no false loss alert; the stages involved are
/// `incomplete` with what is missing, until the backfill arrives and the re-check runs those
/// days again, which then reconcile clean.
async fn missing_data_is_incomplete_until_backfilled(store: &dyn Store) {
    let faults = Faults {
        meter_outage: Some(("JM1".into(), 14, 12, 2)),
        stale_gauge: Some(("T3".into(), 16, 6, 6)),
        rollover: Some(("M1".into(), 10, 12)),
        reset: Some(("M3".into(), 10, 2)),
        ..Faults::default()
    };
    let m = generate(&SimOptions {
        faults,
        ..SimOptions::default()
    });
    assert_eq!(m.backfill.len(), 1);
    assert_eq!(m.backfill[0].readings.len(), 24 + 72);
    m.load(store).await.expect("load the month");
    let mut cfg = m.config.clone();
    cfg.recheck_days = 40;
    let r = Reconciler::with_tables(cfg, &m.tables).expect("site model");
    let (first, last) = (m.opts.start_day, m.opts.start_day + m.opts.days - 1);
    r.run_range(store, first, last, m.as_of_ms(), "test", |_| {})
        .await
        .expect("reconcile");
    let open = store
        .ledger()
        .alerts(Some("open"), None, 1000)
        .await
        .expect("alerts");
    let want: BTreeSet<Key> = m.expected_missing.iter().cloned().collect();
    let parcel = format!("BL-PMS-{}", day_name(first + 14));
    assert_eq!(
        want,
        [
            (
                "data-missing".into(),
                format!("{parcel}/jetty"),
                day_name(first + 15)
            ),
            ("data-missing".into(), "T3".into(), day_name(first + 16)),
        ]
        .into_iter()
        .collect::<BTreeSet<Key>>()
    );
    assert_eq!(
        keys(&open),
        want,
        "alerts:\n{}",
        open.iter()
            .map(|a| a.a.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let jetty = open
        .iter()
        .find(|a| a.a.place.ends_with("/jetty"))
        .expect("jetty alert");
    assert!(
        jetty.a.message.starts_with(&format!(
            "data missing for gw-1/jetty/JM1/net_total_l {} 12:00–14:00",
            day_name(first + 14)
        )),
        "{}",
        jetty.a.message
    );
    let t3 = open.iter().find(|a| a.a.place == "T3").expect("T3 alert");
    assert!(
        t3.a.message.contains("gw-1/tanks/T3/level_mm") && t3.a.message.contains("no good reading"),
        "{}",
        t3.a.message
    );

    // The records: incomplete with their coverage; the rollover day's meter check is clean.
    let day15 = store
        .ledger()
        .variances(&day_name(first + 15), None)
        .await
        .expect("day 15");
    let verdict = |rows: &[cloud_ingest::store::ledger::VarianceRow],
                   kind: RecordKind,
                   place: &str,
                   stage: &str| {
        rows.iter()
            .find(|v| v.v.kind == kind && v.v.place == place && v.v.stage == stage)
            .map(|v| (v.v.verdict, v.v.coverage.clone()))
            .unwrap_or_else(|| panic!("{kind:?} {place} {stage}"))
    };
    let (v, cov) = verdict(&day15, RecordKind::Parcel, &parcel, "jetty");
    assert_eq!(v, Verdict::Incomplete);
    let cov = cov.expect("coverage");
    assert!(!cov.complete);
    assert_eq!((cov.inputs[0].expected, cov.inputs[0].present), (216, 192));
    assert_eq!(cov.inputs[0].gaps.len(), 1);
    assert_eq!(cov.inputs[0].gaps[0].count, None);
    assert_eq!(
        verdict(&day15, RecordKind::Parcel, &parcel, "tanks").0,
        Verdict::Ok
    );
    assert_eq!(
        verdict(&day15, RecordKind::Chain, "PMS", "jetty").0,
        Verdict::Incomplete
    );
    let day16 = store
        .ledger()
        .variances(&day_name(first + 16), None)
        .await
        .expect("day 16");
    let (v, cov) = verdict(&day16, RecordKind::Tank, "T3", "balance");
    assert_eq!(v, Verdict::Incomplete);
    assert!((cov.expect("coverage").ratio - 0.75).abs() < 1e-9);
    assert_eq!(
        verdict(&day16, RecordKind::Chain, "AGO", "gantry").0,
        Verdict::Incomplete
    );
    assert_eq!(
        verdict(&day16, RecordKind::Tank, "T4", "balance").0,
        Verdict::Ok
    );
    let day10 = store
        .ledger()
        .variances(&day_name(first + 10), None)
        .await
        .expect("day 10");
    let (v, cov) = verdict(&day10, RecordKind::MeterCheck, "M1", "totalizer");
    assert_eq!(v, Verdict::Ok, "the rollover is counted across");
    assert!(cov.expect("coverage").complete);
    let m3 = day10
        .iter()
        .find(|v| v.v.kind == RecordKind::MeterCheck && v.v.place == "M3")
        .expect("M3");
    assert_eq!(
        m3.v.verdict,
        Verdict::Ok,
        "the reset splits the window: {m3:?}"
    );
    assert!(m3.v.measured_l.is_some_and(|x| x > 100_000.0), "{m3:?}");

    // Nothing arrived: the re-check runs nothing.
    let again = r
        .recheck_incomplete(store, m.as_of_ms())
        .await
        .expect("recheck");
    assert!(again.is_empty());

    // The backfill arrives; the re-check runs exactly the two days again, which are clean.
    store.commit(&m.backfill).await.expect("backfill");
    let again = r
        .recheck_incomplete(store, m.as_of_ms())
        .await
        .expect("recheck");
    let dates: Vec<&str> = again.iter().map(|r| r.run.date.as_str()).collect();
    assert_eq!(dates, vec![day_name(first + 15), day_name(first + 16)]);
    assert!(again.iter().all(|r| r.run.trigger == "late-data"));
    for d in [first + 15, first + 16] {
        let rows = store
            .ledger()
            .variances(&day_name(d), None)
            .await
            .expect("rows");
        let bad: Vec<_> = rows
            .iter()
            .filter(|v| !matches!(v.v.verdict, Verdict::Ok | Verdict::Pending))
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
    }
    let day15 = store
        .ledger()
        .variances(&day_name(first + 15), None)
        .await
        .expect("day 15");
    let (_, cov) = verdict(&day15, RecordKind::Parcel, &parcel, "jetty");
    let cov = cov.expect("coverage");
    assert!(cov.complete && cov.inputs[0].gaps[0].filled, "{cov:?}");
    let open = store
        .ledger()
        .alerts(Some("open"), None, 1000)
        .await
        .expect("alerts");
    assert!(open.is_empty(), "{open:#?}");
    // And nothing more to do.
    assert!(r
        .recheck_incomplete(store, m.as_of_ms())
        .await
        .expect("recheck")
        .is_empty());
}

#[tokio::test]
async fn sqlite_missing_data_is_incomplete_until_backfilled() {
    let s = SqliteStore::open_in_memory().expect("open");
    s.migrate().await.expect("migrate");
    missing_data_is_incomplete_until_backfilled(&s).await;
}

#[tokio::test]
async fn postgres_missing_data_is_incomplete_until_backfilled() {
    let Some((s, name, admin)) = pg_store().await else {
        return;
    };
    missing_data_is_incomplete_until_backfilled(&s).await;
    pg_drop(s, name, admin).await;
}
