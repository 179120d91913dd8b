//! PostgreSQL tests: the shared suite on native partitions and on TimescaleDB, and tests of what
//! only this backend does (outages, partitions, retention, COPY volume, rollups, concurrency).
//!
//! Each test gets a database of its own (`fs_test_<pid>_<n>_<random>`) on the local server
//! (`host=127.0.0.1 port=5432 user=postgres`, trust authentication), dropped when the test's
//! store is dropped. Without a server the tests print `SKIPPED: PostgreSQL not reachable` and
//! pass, unless `FLOWSQUARE_REQUIRE_ALL` is set: then they fail.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowsquare_wire as wire;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use super::read::Source;
use super::rollup::MINUTE_MS;
use super::types::{Ts, DAY_MS};
use super::*;
use crate::store::suite::{self, T0};

/// The local server.
const SERVER: &str = "host=127.0.0.1 port=5432 user=postgres";

/// A connection to the `postgres` database, or `None` (skip) when the server is unreachable.
async fn admin() -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(
        &format!("{SERVER} dbname=postgres connect_timeout=5"),
        tokio_postgres::NoTls,
    )
    .await
    {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Some(client)
        }
        Err(e) => {
            if std::env::var_os("FLOWSQUARE_REQUIRE_ALL").is_some() {
                panic!(
                    "PostgreSQL not reachable at {SERVER} ({e}) and FLOWSQUARE_REQUIRE_ALL is set"
                );
            }
            println!("SKIPPED: PostgreSQL not reachable ({e})");
            None
        }
    }
}

/// A database name never used before.
fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "fs_test_{}_{}_{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos ^ 0x5bd1_e995
    )
}

/// A database of its own, dropped (with its connections) on drop.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn create(admin: &tokio_postgres::Client) -> TestDb {
        let name = unique_name();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        TestDb { name }
    }

    fn url(&self) -> String {
        format!("{SERVER} dbname={}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(
                    &format!("{SERVER} dbname=postgres"),
                    tokio_postgres::NoTls,
                )
                .await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A migrated store on a database of its own.
struct TestStore {
    pg: PgStore,
    db: TestDb,
    described: String,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        self.pg.close();
    }
}

/// The suite's view of a test store: the store, with the database kept alive behind it.
fn guarded(t: TestStore) -> Box<dyn Store> {
    Box::new(crate::store::suite::Guarded {
        store: Box::new(t.pg.clone()),
        guard: t,
    })
}

async fn make_with(opts: PgOptions) -> Option<TestStore> {
    let admin = admin().await?;
    let db = TestDb::create(&admin).await;
    let pg = PgStore::connect(&db.url(), opts).await.expect("connect");
    let described = pg.migrate().await.expect("migrate");
    Some(TestStore { pg, db, described })
}

fn native() -> PgOptions {
    PgOptions {
        timescale: TimescaleMode::Off,
        ..PgOptions::default()
    }
}

async fn make() -> Option<Box<dyn Store>> {
    Some(guarded(make_with(native()).await?))
}

crate::store_suite!(async { make().await });

/// The same suite on TimescaleDB hypertables, where the extension is installed.
mod timescale {
    use super::*;

    async fn make() -> Option<Box<dyn Store>> {
        Some(guarded(make_ts().await?))
    }

    async fn make_ts() -> Option<TestStore> {
        let admin = admin().await?;
        let available = admin
            .query_opt(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'",
                &[],
            )
            .await
            .expect("pg_available_extensions");
        if available.is_none() {
            println!("SKIPPED: timescaledb extension not installed");
            return None;
        }
        let preload: String = admin
            .query_one("SHOW shared_preload_libraries", &[])
            .await
            .expect("show")
            .get(0);
        if !preload.contains("timescaledb") {
            println!(
                "SKIPPED: timescaledb extension installed but not in shared_preload_libraries"
            );
            return None;
        }
        let s = make_with(PgOptions {
            timescale: TimescaleMode::Require,
            retention_days: Some(30),
            ..PgOptions::default()
        })
        .await?;
        assert!(s.described.starts_with("timescaledb "), "{}", s.described);
        println!("{}", s.described);
        Some(s)
    }

    crate::store_suite!(async { make().await });

    /// Explicit compression, aggregate refresh and retention work, and the data stays readable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn maintenance_runs_on_demand() {
        let Some(s) = make_ts().await else { return };
        let pg = &s.pg;
        pg.birth(&suite::birth("m", "a", "h", &["x"]), T0)
            .await
            .expect("birth");
        let b = suite::batch("m", "a", "h", 1, 1, 7200, T0, 0.0);
        pg.commit(&[b]).await.expect("commit");
        pg.refresh_aggregates(T0, T0 + 7_200_000)
            .await
            .expect("refresh");
        let client = pg.client().await.expect("client");
        let row = client
            .query_one("SELECT sum(count)::int8, max(max), min(min) FROM flowsquare.agg_1h WHERE bucket >= $1", &[&types::Ts(T0)])
            .await
            .expect("agg");
        assert_eq!(
            (
                row.get::<_, i64>(0),
                row.get::<_, f64>(1),
                row.get::<_, f64>(2)
            ),
            (7200, 7199.0, 0.0)
        );
        // T0 (2026-01-01) is more than a day old: its chunks compress, and stay readable.
        assert!(
            pg.compress_chunks_older_than(Duration::from_secs(86_400))
                .await
                .expect("compress")
                >= 1
        );
        assert_eq!(
            pg.count_readings(None, T0, T0 + 7_200_000)
                .await
                .expect("count"),
            7200
        );
        let buckets = pg
            .series(tag_id(pg, "x").await, T0, T0 + 7_200_000, 3_600_000)
            .await
            .expect("series");
        assert_eq!(buckets.iter().map(|b| b.count).sum::<i64>(), 7200);
        // Retention (30 days) drops the 2026-01-01 chunks when that is long enough ago.
        let _ = pg.drop_expired_partitions().await.expect("retention");
    }
}

// ---- PostgreSQL-specific behaviour ----

async fn relation_exists(client: &deadpool_postgres::Object, name: &str) -> bool {
    client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .expect("to_regclass")
        .get(0)
}

async fn tag_id(s: &PgStore, name: &str) -> i64 {
    s.tags(None, Some(name))
        .await
        .expect("tags")
        .into_iter()
        .find(|t| t.name == name)
        .expect("tag")
        .id
}

fn stored(readings: u64) -> CommitOutcome {
    CommitOutcome::Stored {
        readings,
        events: 0,
        gaps: 0,
        out_of_window: 0,
    }
}

#[test]
fn retryable_sqlstates() {
    for code in [
        "08006", "08001", "57P01", "57P03", "53300", "40001", "40P01", "55P03",
    ] {
        assert!(is_retryable_sqlstate(code), "{code}");
    }
    for code in ["23505", "23514", "42P01", "22P02", "28P01"] {
        assert!(!is_retryable_sqlstate(code), "{code}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_describes_the_layout_and_keeps_it() {
    let Some(s) = make_with(native()).await else {
        return;
    };
    assert_eq!(s.described, "native daily partitions (timescaledb off)");
    assert_eq!(s.pg.layout().await.expect("layout"), Layout::Native);
    // Another process with another mode: Auto keeps the layout, Require refuses.
    let auto = PgStore::connect(&s.db.url(), PgOptions::default())
        .await
        .expect("connect");
    assert!(auto
        .migrate()
        .await
        .expect("migrate")
        .starts_with("native daily partitions"));
    let require = PgStore::connect(
        &s.db.url(),
        PgOptions {
            timescale: TimescaleMode::Require,
            ..PgOptions::default()
        },
    )
    .await
    .expect("connect");
    let e = require
        .migrate()
        .await
        .expect_err("require on a native database");
    assert!(
        matches!(e, StoreError::Invalid(_)) && !e.is_transient(),
        "{e}"
    );
    // Partitions exist ahead.
    let client = s.pg.client().await.expect("client");
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        / DAY_MS;
    let ahead = format!(
        "flowsquare.readings_p{}",
        types::day_name(today + 7).expect("day")
    );
    assert!(relation_exists(&client, &ahead).await, "{ahead}");
}

/// A TCP proxy in front of the server: stopping it is a database outage as the ingest sees it
/// (connections cut, new ones refused); starting it again on the same port ends the outage.
struct Proxy {
    port: u16,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(port: u16) -> Proxy {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_reuseaddr(true).expect("reuseaddr");
        sock.bind(([127, 0, 0, 1], port).into())
            .expect("bind proxy");
        let listener = sock.listen(64).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().expect("conns").push(task);
            }
        });
        Proxy {
            port,
            accept: Some(accept),
            conns,
        }
    }

    fn stop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for t in self.conns.lock().expect("conns").drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_transient_and_the_store_recovers() {
    let Some(admin) = admin().await else { return };
    let db = TestDb::create(&admin).await;
    let mut proxy = Proxy::start(0).await;
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname={} connect_timeout=3",
        proxy.port, db.name
    );
    let s = PgStore::connect(
        &url,
        PgOptions {
            pool_size: 2,
            ..native()
        },
    )
    .await
    .expect("connect");
    s.migrate().await.expect("migrate");
    s.birth(&suite::birth("o", "a", "h", &["x"]), T0)
        .await
        .expect("birth");
    let b1 = suite::batch("o", "a", "h", 1, 1, 100, T0, 0.0);
    let b2 = suite::batch("o", "a", "h", 2, 1, 100, T0 + 100_000, 0.0);
    assert_eq!(
        s.commit(std::slice::from_ref(&b1)).await.expect("commit"),
        vec![stored(100)]
    );

    proxy.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let e = tokio::time::timeout(Duration::from_secs(30), s.commit(std::slice::from_ref(&b2)))
            .await
            .expect("no hang while down")
            .expect_err("the database is down");
        assert!(e.is_transient(), "outage error must be transient: {e:?}");
    }
    let e = s.ping().await.expect_err("down");
    assert!(e.is_transient(), "{e:?}");

    let _proxy = Proxy::start(proxy.port).await;
    let mut out = None;
    for _ in 0..5 {
        match s.commit(std::slice::from_ref(&b2)).await {
            Ok(o) => {
                out = Some(o);
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(
        out.expect("works again after the outage"),
        vec![stored(100)]
    );
    assert_eq!(
        s.commit(&[b1]).await.expect("commit"),
        vec![CommitOutcome::Duplicate]
    );
    assert_eq!(
        s.count_readings(None, T0, T0 + 1_000_000)
            .await
            .expect("count"),
        200
    );
    s.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_replaced() {
    let Some(admin) = admin().await else { return };
    let Some(s) = make_with(PgOptions {
        pool_size: 3,
        ..native()
    })
    .await
    else {
        return;
    };
    s.pg.birth(&suite::birth("k", "a", "h", &["x"]), T0)
        .await
        .expect("birth");
    for id in 1..=3u64 {
        let b = suite::batch("k", "a", "h", id, 1, 10, T0 + id as i64 * 10_000, 0.0);
        let killed: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&s.db.name],
            )
            .await
            .expect("terminate")
            .get(0);
        assert!(killed >= 1, "the pool had connections");
        let mut failures = 0;
        let out = loop {
            match s.pg.commit(std::slice::from_ref(&b)).await {
                Ok(o) => break o,
                Err(e) => {
                    assert!(e.is_transient(), "{e:?}");
                    failures += 1;
                    assert!(
                        failures <= 2,
                        "still failing after {failures} attempts: {e}"
                    );
                }
            }
        };
        assert_eq!(out, vec![stored(10)]);
    }
    assert_eq!(
        s.pg.count_readings(None, T0, T0 + 100_000)
            .await
            .expect("count"),
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_data_gets_partitions_on_demand_and_retention_drops_them() {
    let Some(s) = make_with(PgOptions {
        retention_days: Some(30),
        ..native()
    })
    .await
    else {
        return;
    };
    let s = &s.pg;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let today = now.div_euclid(DAY_MS) * DAY_MS;
    let old_t = today - 40 * DAY_MS + 3_600_000;
    s.birth(&suite::birth("r", "a", "h", &["x", "y"]), now)
        .await
        .expect("birth");
    let mut old = suite::batch("r", "a", "h", 1, 2, 500, old_t, 1.0);
    old.events.push(wire::Event {
        source: "bay".into(),
        kind: "k".into(),
        seq: 1,
        ts_ms: old_t,
        fields: vec![],
    });
    let recent = suite::batch("r", "a", "h", 2, 2, 500, today + 60_000, 1.0);
    assert_eq!(
        s.commit(std::slice::from_ref(&old)).await.expect("old"),
        vec![CommitOutcome::Stored {
            readings: 1000,
            events: 1,
            gaps: 0,
            out_of_window: 0,
        }]
    );
    assert_eq!(
        s.commit(&[recent]).await.expect("recent"),
        vec![stored(1000)]
    );
    let client = s.client().await.expect("client");
    let part = format!(
        "flowsquare.readings_p{}",
        types::day_name(old_t.div_euclid(DAY_MS)).expect("day")
    );
    assert!(
        relation_exists(&client, &part).await,
        "{part} created on demand"
    );
    assert_eq!(
        s.count_readings(None, old_t, old_t + DAY_MS)
            .await
            .expect("count"),
        1000
    );

    let dropped = s.drop_expired_partitions().await.expect("retention");
    assert!(
        dropped >= 2,
        "readings and events of the old day: {dropped}"
    );
    assert!(!relation_exists(&client, &part).await, "{part} dropped");
    assert_eq!(
        s.count_readings(None, old_t, old_t + DAY_MS)
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        s.count_readings(None, today, today + DAY_MS)
            .await
            .expect("count"),
        1000
    );
    // The ledger outlives the data: a late re-send is still a duplicate.
    assert_eq!(
        s.commit(&[old]).await.expect("again"),
        vec![CommitOutcome::Duplicate]
    );
    // Old data arriving after retention still gets a partition (and goes with the next run).
    let late = suite::batch("r", "a", "h", 3, 1, 10, old_t + 7_200_000, 1.0);
    assert_eq!(s.commit(&[late]).await.expect("late"), vec![stored(10)]);
    assert!(s.drop_expired_partitions().await.expect("retention") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_takes_100k_readings_in_one_commit() {
    let Some(s) = make_with(native()).await else {
        return;
    };
    let s = &s.pg;
    let names: Vec<String> = (0..100).map(|i| format!("bulk/t{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    s.birth(&suite::birth("b", "a", "h", &refs), T0)
        .await
        .expect("birth");
    let b = suite::batch("b", "a", "h", 1, 100, 1000, T0, 0.5);
    assert_eq!(s.commit(&[b]).await.expect("commit"), vec![stored(100_000)]);
    assert_eq!(
        s.count_readings(None, T0, T0 + 1_000_000)
            .await
            .expect("count"),
        100_000
    );
    let id = tag_id(s, "bulk/t042").await;
    let buckets = s
        .series(id, T0, T0 + 1_000_000, 60_000)
        .await
        .expect("series");
    assert_eq!(buckets.iter().map(|b| b.count).sum::<i64>(), 1000);
    assert_eq!(buckets.last().and_then(|b| b.last), Some(999.5));
}

/// Ranges that do not start or end on a unit, steps of whole minutes, hours, and neither.
const EXACT_RANGES: [(i64, i64, i64); 7] = [
    (T0, T0 + 4 * 3_600_000, 3_600_000),
    (T0 + 1_234_567, T0 + 12_000_000, 3_600_000),
    (T0 - 3_600_000, T0 + 9_000_001, 7_200_000),
    (T0 + 59_999, T0 + 5_000_000, 60_000),
    (T0 + 30_000, T0 + 3_000_000, 300_000),
    (T0, T0 + 4 * 3_600_000, 90_000),
    (T0 + 3_599_000, T0 + 3_601_000, 3_600_000),
];

/// `series` (rollups where they are rolled, raw readings elsewhere) equals the raw computation
/// over `ranges` for tag `id`.
async fn assert_series_exact(s: &PgStore, id: i64, ranges: &[(i64, i64, i64)], when: &str) {
    for &(from, to, step) in ranges {
        let best = read::series(s, id, from, to, step, Source::Best)
            .await
            .expect("best");
        let raw = read::series(s, id, from, to, step, Source::Raw)
            .await
            .expect("raw");
        assert_eq!(best.len(), raw.len(), "{when}: {from} {to} {step}");
        for (b, r) in best.iter().zip(&raw) {
            assert_eq!(
                (b.ts_ms, b.count, b.bad, b.min, b.max, b.last),
                (r.ts_ms, r.count, r.bad, r.min, r.max, r.last),
                "{when}: {from} {to} {step}"
            );
            match (b.avg, r.avg) {
                (Some(ba), Some(ra)) => {
                    assert!((ba - ra).abs() <= 1e-9 * ra.abs().max(1.0), "{ba} vs {ra}")
                }
                (ba, ra) => assert_eq!(ba, ra, "{when}"),
            }
            assert_eq!(b.ts_ms.rem_euclid(step), 0, "aligned on the epoch");
        }
    }
}

/// Dirty marks pending (minutes, hours).
async fn pending_marks(s: &PgStore) -> (i64, i64) {
    let c = s.client().await.expect("client");
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE unit_ms = 60000), count(*) FILTER (WHERE unit_ms = 3600000)
             FROM flowsquare.rollup_dirty",
            &[],
        )
        .await
        .expect("marks");
    (r.get(0), r.get(1))
}

/// Rollup-based series equal the raw computation, with late data, duplicates, bad readings,
/// non-numeric values and ranges that do not start or end on a unit: before anything is
/// rolled, after rolling, with late data into rolled units, and after rolling again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_from_rollups_equal_series_from_raw_readings() {
    let Some(s) = make_with(native()).await else {
        return;
    };
    let s = &s.pg;
    s.birth(&suite::birth("q", "a", "h", &["p/a", "p/b"]), T0)
        .await
        .expect("birth");
    let mk = |id: u64, t0: i64, n: i64| {
        let mut b = suite::batch("q", "a", "h", id, 2, n, t0, (id * 7) as f64);
        for (i, r) in b.readings.iter_mut().enumerate() {
            match i % 97 {
                0 => {
                    r.quality = wire::Quality::BadDevice;
                    r.value = None;
                }
                1 => r.quality = wire::Quality::Stale, // bad, with a value
                2 => r.value = Some(wire::WireValue::Bool(i % 2 == 0)),
                3 => r.value = Some(wire::WireValue::Text("x".into())),
                4 => r.value = Some(wire::WireValue::Int(-(i as i64))),
                _ => {}
            }
        }
        b
    };
    // 3 h of data in 4 batches, the second hour arriving last (late data into rolled-up units).
    let batches = [
        mk(1, T0, 3600),
        mk(3, T0 + 7_200_000, 3600),
        mk(4, T0 + 10_800_000, 1800),
        mk(2, T0 + 3_600_000, 3600),
    ];
    let id = tag_id(s, "p/b").await;
    for b in &batches[..3] {
        s.commit(std::slice::from_ref(b)).await.expect("commit");
    }
    assert!(pending_marks(s).await.0 > 0);
    assert_series_exact(s, id, &EXACT_RANGES, "nothing rolled").await;
    s.roll_all().await.expect("roll");
    assert_eq!(pending_marks(s).await, (0, 0));
    assert_series_exact(s, id, &EXACT_RANGES, "rolled").await;
    // Late: the second hour, and a reading into an already rolled minute and hour.
    s.commit(std::slice::from_ref(&batches[3]))
        .await
        .expect("late");
    s.commit(&[mk(5, T0 + 30_500, 1)]).await.expect("late");
    assert_series_exact(s, id, &EXACT_RANGES, "late data pending").await;
    s.roll_all().await.expect("roll");
    assert_series_exact(s, id, &EXACT_RANGES, "late data rolled").await;
    assert_eq!(
        s.commit(&batches[1..3]).await.expect("dups"),
        vec![CommitOutcome::Duplicate; 2]
    );
    assert_eq!(pending_marks(s).await, (0, 0), "a duplicate marks nothing");
    let total: i64 = read::series(s, id, T0, T0 + 4 * 3_600_000, 3_600_000, Source::Best)
        .await
        .expect("s")
        .iter()
        .map(|b| b.count)
        .sum();
    assert_eq!(total, 3600 * 3 + 1800 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_of_one_batch_store_it_once() {
    let Some(s) = make_with(PgOptions {
        pool_size: 4,
        ..native()
    })
    .await
    else {
        return;
    };
    let s = s.pg.clone();
    s.birth(&suite::birth("c", "a", "h", &["x", "y"]), T0)
        .await
        .expect("birth");
    for id in 1..=5u64 {
        let b = suite::batch("c", "a", "h", id, 2, 2000, T0 + id as i64 * 10_000_000, 0.0);
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (s, b) = (s.clone(), b.clone());
                tokio::spawn(async move { s.commit(&[b]).await.expect("commit") })
            })
            .collect();
        let mut outs = Vec::new();
        for t in tasks {
            outs.extend(t.await.expect("task"));
        }
        assert_eq!(
            outs.iter().filter(|o| **o == stored(4000)).count(),
            1,
            "{outs:?}"
        );
        assert_eq!(
            outs.iter()
                .filter(|o| **o == CommitOutcome::Duplicate)
                .count(),
            2,
            "{outs:?}"
        );
    }
    assert_eq!(
        s.count_readings(None, T0, T0 + 100_000_000)
            .await
            .expect("count"),
        5 * 4000
    );
    let id = tag_id(&s, "x").await;
    let n: i64 = s
        .series(id, T0, T0 + 100_000_000, 3_600_000)
        .await
        .expect("series")
        .iter()
        .map(|b| b.count)
        .sum();
    assert_eq!(n, 5 * 2000, "rollups counted once too");
    s.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tag_index_fails_the_call_and_stores_nothing() {
    let Some(s) = make_with(native()).await else {
        return;
    };
    let s = &s.pg;
    s.birth(&suite::birth("v", "a", "h", &["x", "y"]), T0)
        .await
        .expect("birth");
    let good = suite::batch("v", "a", "h", 1, 2, 10, T0, 0.0);
    let mut bad = suite::batch("v", "a", "h", 2, 2, 10, T0, 0.0);
    bad.readings[3].tag = 5;
    let e = s
        .commit(&[good.clone(), bad.clone()])
        .await
        .expect_err("bad index");
    assert!(
        matches!(e, StoreError::Invalid(_)) && !e.is_transient(),
        "{e:?}"
    );
    let mut bad_gap = suite::batch("v", "a", "h", 3, 1, 1, T0, 0.0);
    bad_gap.gaps.push(wire::Gap {
        tags: vec![2],
        from_ms: T0,
        to_ms: T0,
        count: 1,
        count_known: true,
        reason: wire::GapReason::BufferAge,
    });
    assert!(matches!(
        s.commit(&[bad_gap]).await,
        Err(StoreError::Invalid(_))
    ));
    let mut bad_ts = suite::batch("v", "a", "h", 4, 1, 1, T0, 0.0);
    bad_ts.readings[0].ts_ms = i64::MAX;
    assert!(matches!(
        s.commit(&[bad_ts]).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        s.count_readings(None, i64::MIN, i64::MAX)
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        s.commit(&[good]).await.expect("good alone"),
        vec![stored(20)]
    );
}

/// Values and metadata round-trip: big integers keep their digits, counters and statuses are
/// kept, a birth without tags makes its hash known, a batch repeated inside one slice is
/// stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_round_trip() {
    let Some(s) = make_with(native()).await else {
        return;
    };
    let s = &s.pg;
    s.birth(&suite::birth("d", "a", "h0", &[]), T0)
        .await
        .expect("empty birth");
    let mut only_gap = wire::Batch::new("d", "a", 1, "h0", T0);
    only_gap.gaps.push(wire::Gap {
        tags: vec![],
        from_ms: T0,
        to_ms: T0 + 1,
        count: 3,
        count_known: true,
        reason: wire::GapReason::MissedEvent,
    });
    assert_eq!(
        s.commit(&[only_gap.clone(), only_gap])
            .await
            .expect("commit"),
        vec![
            CommitOutcome::Stored {
                readings: 0,
                events: 0,
                gaps: 1,
                out_of_window: 0,
            },
            CommitOutcome::Duplicate
        ]
    );
    s.birth(&suite::birth("d", "a", "h1", &["big", "ctr"]), T0)
        .await
        .expect("birth");
    let mut b = wire::Batch::new("d", "a", u64::MAX, "h1", T0);
    let r = |tag, value| wire::WireReading {
        tag,
        ts_ms: T0,
        value: Some(value),
        quality: wire::Quality::Good,
        status: None,
        error: None,
        counter: None,
    };
    b.readings.push(r(0, wire::WireValue::UInt(u64::MAX)));
    let mut c = r(1, wire::WireValue::Float(5.0));
    c.counter = Some(wire::Counter::Reset { previous: 99.5 });
    c.status = Some(u32::MAX);
    c.error = Some("e".into());
    b.readings.push(c);
    assert_eq!(
        s.commit(&[b.clone()]).await.expect("commit"),
        vec![stored(2)]
    );
    assert_eq!(
        s.commit(&[b]).await.expect("again"),
        vec![CommitOutcome::Duplicate]
    );
    let client = s.client().await.expect("client");
    let row = client
        .query_one("SELECT r.text FROM flowsquare.readings r JOIN flowsquare.tags t ON t.id = r.tag_id WHERE t.name = 'big'", &[])
        .await
        .expect("big");
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("18446744073709551615")
    );
    let row = client
        .query_one(
            "SELECT status, error, counter_kind, counter_value FROM flowsquare.readings r JOIN flowsquare.tags t ON t.id = r.tag_id
             WHERE t.name = 'ctr'",
            &[],
        )
        .await
        .expect("ctr");
    assert_eq!(
        (
            row.get::<_, Option<i64>>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<i16>>(2),
            row.get::<_, Option<f64>>(3)
        ),
        (
            Some(i64::from(u32::MAX)),
            Some("e".into()),
            Some(1),
            Some(99.5)
        )
    );
    let id: i64 = client
        .query_one(
            "SELECT batch_id FROM flowsquare.batches WHERE config_hash = 'h1'",
            &[],
        )
        .await
        .expect("ledger")
        .get(0);
    assert_eq!(id, -1, "u64::MAX stored bit for bit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recaptured_event_is_stored_once() {
    let Some(t) = make_with(native()).await else {
        return;
    };
    crate::store::suite::a_recaptured_event_is_stored_once(&t.pg, &t.pg).await;
}

/// Schema step 3 on a database of step 2: ledger rows get epoch 0 and no digest (a re-send of
/// such a batch is still a duplicate), the new key is the primary key, an old `unclean-shutdown`
/// gap of count 0 becomes one of unknown count; running it again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_3_migrates_a_step_2_database() {
    let Some(s) = make_with(native()).await else {
        return;
    };
    s.pg.birth(&suite::birth("m3", "a", "h", &["x"]), T0)
        .await
        .expect("birth");
    let old = suite::batch("m3", "a", "h", 1, 1, 10, T0, 0.0);
    s.pg.commit(std::slice::from_ref(&old))
        .await
        .expect("commit");
    let client = s.pg.client().await.expect("client");
    // Back to step 2's shape, with a version 1 crash-window gap.
    client
        .batch_execute(
            "ALTER TABLE flowsquare.batches DROP CONSTRAINT batches_epoch_pkey;
             ALTER TABLE flowsquare.batches DROP COLUMN buffer_epoch, DROP COLUMN digest;
             ALTER TABLE flowsquare.batches ADD PRIMARY KEY (site, agent, batch_id);
             ALTER TABLE flowsquare.gaps DROP COLUMN count_known, DROP COLUMN detail;
             DROP TABLE flowsquare.agent_buffers;
             INSERT INTO flowsquare.gaps (site, agent, batch_id, tag_ids, from_ts, to_ts, count, reason)
             VALUES ('m3', 'a', 1, '{}', '2026-01-01', '2026-01-01 00:01', 0, 'unclean-shutdown'),
                    ('m3', 'a', 1, '{}', '2026-01-01', '2026-01-01 00:01', 7, 'buffer-full');
             UPDATE flowsquare.meta SET value = '2' WHERE key = 'schema_version';",
        )
        .await
        .expect("step 2 shape");
    drop(client);
    for _ in 0..2 {
        s.pg.migrate().await.expect("migrate");
    }
    let client = s.pg.client().await.expect("client");
    let row = client
        .query_one(
            "SELECT buffer_epoch, digest IS NULL FROM flowsquare.batches WHERE site = 'm3'",
            &[],
        )
        .await
        .expect("ledger row");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, bool>(1)), (0, true));
    let pk: String = client
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'flowsquare.batches'::regclass AND contype = 'p'",
            &[],
        )
        .await
        .expect("pk")
        .get(0);
    assert_eq!(pk, "PRIMARY KEY (site, agent, buffer_epoch, batch_id)");
    drop(client);
    assert_eq!(
        s.pg.commit(&[old]).await.expect("re-send"),
        vec![CommitOutcome::Duplicate]
    );
    let gaps = s.pg.gaps(Some("m3"), 0, i64::MAX / 2).await.expect("gaps");
    let known: Vec<(String, bool)> = gaps
        .iter()
        .map(|g| (g.reason.clone(), g.count_known))
        .collect();
    assert!(
        known.contains(&("unclean-shutdown".into(), false)),
        "{known:?}"
    );
    assert!(known.contains(&("buffer-full".into(), true)), "{known:?}");
}

/// The bounded tests (`store::bounds`) on native partitions under
/// [`suite::bounded_limits`], and what only partitions show.
mod bounded {
    use super::*;

    async fn make_bounded() -> Option<TestStore> {
        make_with(PgOptions {
            limits: suite::bounded_limits(),
            ..native()
        })
        .await
    }

    async fn make() -> Option<Box<dyn Store>> {
        Some(guarded(make_bounded().await?))
    }

    crate::store_suite!(@t async { make().await }; out_of_window_readings_are_dead_lettered,
        a_birth_beyond_the_tag_limit_is_refused, dead_letters_are_capped_and_pruned);

    /// The days of the readings partitions that exist.
    async fn partition_days(s: &PgStore) -> Vec<i64> {
        let c = s.client().await.expect("client");
        c.query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'flowsquare.readings'::regclass",
            &[],
        )
        .await
        .expect("partitions")
        .into_iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            super::super::types::parse_day_name(name.strip_prefix("readings_p")?)
        })
        .collect()
    }

    /// Readings outside the window create no partition (only their own days inside it exist),
    /// partitions ahead stop at the window's end (7 days configured, 1 accepted), and a day
    /// outside the window is refused by the partition code itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_window_readings_create_no_partition() {
        let Some(t) = make_bounded().await else {
            return;
        };
        let today = flowsquare_service::clock::now_ms().div_euclid(DAY_MS);
        let before = partition_days(&t.pg).await;
        assert!(
            before.iter().all(|d| (today..=today + 1).contains(d)),
            "{before:?}"
        );
        suite::out_of_window_readings_are_dead_lettered(&t.pg).await;
        let now = flowsquare_service::clock::now_ms();
        let days = partition_days(&t.pg).await;
        for ts in &suite::window_times(now)[2..] {
            assert!(!days.contains(&ts.div_euclid(DAY_MS)), "{days:?}");
        }
        assert!(
            days.iter().all(|d| (today - 1..=today + 1).contains(d)),
            "{days:?}"
        );
        let mut client = t.pg.client().await.expect("client");
        let far = std::collections::BTreeSet::from([today + 999]);
        let e = super::super::partitions::ensure_days(&t.pg, &mut client, &far)
            .await
            .expect_err("outside the window");
        assert!(e.to_string().contains("outside the accepted window"), "{e}");
    }
}

/// TimescaleDB installed but not preloaded, stubbed at the SQL level: the test database shadows
/// `pg_available_extensions` and `pg_settings` with views in a schema ahead of `pg_catalog` in
/// its `search_path` (the probe reads them unqualified), so the server seems to offer the
/// extension with an empty `shared_preload_libraries`. "auto" falls back to native partitions
/// saying why and how to fix it; "require" refuses with the fix; `check-config`'s
/// `planned_layout` says the same, and with the library listed it would choose TimescaleDB.
mod preload {
    use super::*;

    async fn stubbed(preload: &str) -> Option<TestDb> {
        let admin = admin().await?;
        let db = TestDb::create(&admin).await;
        let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c.batch_execute(&format!(
            "CREATE SCHEMA stub;
             CREATE VIEW stub.pg_available_extensions AS
                 SELECT 'timescaledb'::name AS name, '2.17.2'::text AS default_version;
             CREATE VIEW stub.pg_settings AS
                 SELECT name, CASE WHEN name = 'shared_preload_libraries' THEN '{preload}' ELSE setting END AS setting
                 FROM pg_catalog.pg_settings;
             ALTER DATABASE {} SET search_path = stub, pg_catalog, public;",
            db.name
        ))
        .await
        .expect("stub");
        Some(db)
    }

    fn opts(timescale: TimescaleMode) -> PgOptions {
        PgOptions {
            timescale,
            ..PgOptions::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn installed_but_not_preloaded_auto_falls_back_and_require_refuses_with_the_fix() {
        let Some(db) = stubbed("").await else {
            return;
        };
        let require = PgStore::connect(&db.url(), opts(TimescaleMode::Require))
            .await
            .expect("connect");
        let planned = require.planned_layout().await.expect_err("require refused");
        let e = require.migrate().await.expect_err("require refused");
        require.close();
        for e in [planned.to_string(), e.to_string()] {
            assert!(
                e.contains("not preloaded")
                    && e.contains("shared_preload_libraries")
                    && e.contains("restart PostgreSQL"),
                "{e}"
            );
        }
        let auto = PgStore::connect(&db.url(), opts(TimescaleMode::Auto))
            .await
            .expect("connect");
        let planned = auto.planned_layout().await.expect("auto");
        assert!(
            planned.starts_with("native daily partitions (timescaledb installed but not preloaded"),
            "{planned}"
        );
        let described = auto.migrate().await.expect("auto falls back");
        assert!(
            described
                .starts_with("native daily partitions (timescaledb installed but not preloaded")
                && described.contains("shared_preload_libraries"),
            "{described}"
        );
        assert_eq!(auto.layout().await.expect("layout"), Layout::Native);
        auto.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_preloaded_library_would_be_used() {
        let Some(db) = stubbed("pg_stat_statements, timescaledb").await else {
            return;
        };
        let s = PgStore::connect(&db.url(), opts(TimescaleMode::Require))
            .await
            .expect("connect");
        let planned = s.planned_layout().await.expect("planned");
        assert_eq!(planned, "timescaledb 2.17.2 hypertables");
        s.close();
    }
}

// ---- Rollups off the commit path (`rollup.rs`: the design note names these tests) ----

/// The rollup rows of one table, by (tag, bucket).
async fn rollup_rows(
    s: &PgStore,
    table: &str,
) -> std::collections::BTreeMap<(i64, i64), rollup::Agg> {
    let c = s.client().await.expect("client");
    c.query(
        &format!(
            "SELECT tag_id, bucket, n, bad, n_good, sum, min, max, last_ts, last FROM flowsquare.{table}"
        ),
        &[],
    )
    .await
    .expect("rollup rows")
    .iter()
    .map(|r| {
        (
            (r.get(0), r.get::<_, Ts>(1).0),
            rollup::Agg {
                n: r.get(2),
                bad: r.get(3),
                n_good: r.get(4),
                sum: r.get(5),
                min: r.get(6),
                max: r.get(7),
                last_ts: r.get::<_, Option<Ts>>(8).map(|t| t.0),
                last: r.get(9),
            },
        )
    })
    .collect()
}

/// One-tag batch of readings at these times (value = seconds of the time).
fn batch_at(id: u64, times: &[i64]) -> wire::Batch {
    let mut b = wire::Batch::new("r", "a", id, "h", times[0]);
    for &ts in times {
        b.readings.push(wire::WireReading {
            tag: 0,
            ts_ms: ts,
            value: Some(wire::WireValue::Float((ts - T0) as f64 / 1000.0)),
            quality: wire::Quality::Good,
            status: None,
            error: None,
            counter: None,
        });
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reading_into_a_rolled_minute_corrects_minute_and_hour() {
    let Some(t) = make_with(native()).await else {
        return;
    };
    let s = &t.pg;
    s.birth(&suite::birth("r", "a", "h", &["late"]), T0)
        .await
        .expect("birth");
    let id = tag_id(s, "late").await;
    let times: Vec<i64> = (0..7200).map(|i| T0 + i * 1000).collect();
    s.commit(&[batch_at(1, &times)]).await.expect("commit");
    // Due only after the minute closed + settle: nothing rolled "at" T0 + 90 s with 60 s settle.
    let r = s.roll_due(T0 + 90_000, 60_000).await.expect("roll");
    assert_eq!((r.minutes, r.pending_minutes), (0, 120), "{r:?}");
    // At T0 + 200 s: the first two minutes (closed ≥ 60 s ago); their hour waits for its end.
    let r = s.roll_due(T0 + 200_000, 60_000).await.expect("roll");
    assert_eq!(
        (r.minutes, r.hours, r.pending_minutes),
        (2, 0, 118),
        "{r:?}"
    );
    assert_eq!(
        r.lag_ms,
        200_000 - 180_000,
        "the third minute closed 20 s ago"
    );
    assert_eq!(pending_marks(s).await, (118, 1));
    assert_series_exact(s, id, &EXACT_RANGES, "partly rolled").await;
    s.roll_all().await.expect("roll");
    let (m, h) = (
        rollup_rows(s, "rollup_1m").await,
        rollup_rows(s, "rollup_1h").await,
    );
    assert_eq!((m.len(), h.len()), (120, 2));
    assert_eq!(m[&(id, T0 + 60_000)].n, 60);
    assert_eq!(h[&(id, T0)].n, 3600);
    // A late reading (another batch) into the rolled minute T0 + 1 min, the newest of its minute.
    s.commit(&[batch_at(2, &[T0 + 119_999])])
        .await
        .expect("late");
    assert_eq!(pending_marks(s).await, (1, 0));
    assert_series_exact(s, id, &EXACT_RANGES, "late pending").await;
    let r = s
        .roll_due(flowsquare_service::clock::now_ms(), 10_000)
        .await
        .expect("roll");
    assert_eq!((r.minutes, r.hours, r.pending_minutes), (1, 1, 0), "{r:?}");
    let (m, h) = (
        rollup_rows(s, "rollup_1m").await,
        rollup_rows(s, "rollup_1h").await,
    );
    let minute = m[&(id, T0 + 60_000)];
    assert_eq!(
        (minute.n, minute.last_ts, minute.last),
        (61, Some(T0 + 119_999), Some(119.999))
    );
    assert_eq!((h[&(id, T0)].n, h[&(id, T0 + 3_600_000)].n), (3601, 3600));
    assert_eq!(m[&(id, T0)].n, 60, "other minutes untouched");
    // The same batch re-sent (ack lost): a duplicate, nothing marked, nothing counted twice.
    assert_eq!(
        s.commit(&[batch_at(2, &[T0 + 119_999])])
            .await
            .expect("again"),
        vec![CommitOutcome::Duplicate]
    );
    assert_eq!(pending_marks(s).await, (0, 0));
    assert_series_exact(s, id, &EXACT_RANGES, "late rolled").await;
}

/// A commit in flight while the roller runs is never lost: driven step by step with a second
/// connection holding a commit's transaction open (the commit's own statements: readings, then
/// `rollup::mark`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_concurrent_with_a_roll_is_not_lost() {
    let Some(t) = make_with(native()).await else {
        return;
    };
    let s = &t.pg;
    s.birth(&suite::birth("r", "a", "h", &["cc"]), T0)
        .await
        .expect("birth");
    let id = tag_id(s, "cc").await;
    let times: Vec<i64> = (0..300).map(|i| T0 + i * 1000).collect();
    s.commit(&[batch_at(1, &times)]).await.expect("commit");
    s.roll_all().await.expect("roll");
    let now = flowsquare_service::clock::now_ms();
    let insert =
        "INSERT INTO flowsquare.readings (tag_id, ts, value, quality) VALUES ($1, $2, 7.5, 0)";
    let one = |b: i64| std::collections::BTreeSet::from([("r", "a", b)]);

    // (a) The commit holds an existing mark (DO UPDATE locked it): the roller skips it.
    s.commit(&[batch_at(2, &[T0 + 10_500])])
        .await
        .expect("commit");
    let mut c2 = s.client().await.expect("client");
    let tx = c2.transaction().await.expect("tx");
    tx.execute(insert, &[&id, &Ts(T0 + 20_500)])
        .await
        .expect("insert");
    rollup::mark(&tx, &one(T0), MINUTE_MS, now)
        .await
        .expect("mark");
    let r = s.roll_due(now, 0).await.expect("roll");
    assert_eq!(r.minutes, 0, "the locked mark is skipped: {r:?}");
    assert!(r.more);
    assert_series_exact(s, id, &EXACT_RANGES, "(a) in flight").await;
    tx.commit().await.expect("commit");
    s.roll_all().await.expect("roll");
    assert_eq!(rollup_rows(s, "rollup_1m").await[&(id, T0)].n, 62);
    assert_series_exact(s, id, &EXACT_RANGES, "(a) rolled").await;

    // (b) The commit creates a new mark, uncommitted during the roll: invisible, rolled after.
    let tx = c2.transaction().await.expect("tx");
    tx.execute(insert, &[&id, &Ts(T0 + 60_500)])
        .await
        .expect("insert");
    rollup::mark(&tx, &one(T0 + 60_000), MINUTE_MS, now)
        .await
        .expect("mark");
    let r = s.roll_due(now, 0).await.expect("roll");
    assert_eq!((r.minutes, r.more), (0, false), "{r:?}");
    tx.commit().await.expect("commit");
    assert_eq!(pending_marks(s).await, (1, 0));
    s.roll_all().await.expect("roll");
    assert_eq!(rollup_rows(s, "rollup_1m").await[&(id, T0 + 60_000)].n, 61);

    // (c) The roller has taken (deleted, uncommitted) the mark when a real commit upserts it: the
    // commit waits for the roller, then creates the mark again.
    s.commit(&[batch_at(3, &[T0 + 120_500])])
        .await
        .expect("commit");
    let tx = c2.transaction().await.expect("tx");
    let taken = tx
        .query(
            "DELETE FROM flowsquare.rollup_dirty WHERE unit_ms = 60000 RETURNING bucket",
            &[],
        )
        .await
        .expect("take");
    assert_eq!(taken.len(), 1);
    let committer = {
        let s = s.clone();
        tokio::spawn(async move { s.commit(&[batch_at(4, &[T0 + 121_500])]).await })
    };
    // Wait (bounded) until the commit waits on the roller's lock.
    let admin = s.client().await.expect("admin");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                 AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the commit never waited on the mark"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!committer.is_finished());
    // The roller's aggregation ran before the commit: it ends without it.
    tx.commit().await.expect("roller ends");
    assert_eq!(
        committer.await.expect("task").expect("commit"),
        vec![stored(1)]
    );
    assert_eq!(
        pending_marks(s).await.0,
        1,
        "the commit marked its minute again"
    );
    s.roll_all().await.expect("roll");
    assert_eq!(rollup_rows(s, "rollup_1m").await[&(id, T0 + 120_000)].n, 62);
    assert_series_exact(s, id, &EXACT_RANGES, "(c) rolled").await;
    let h = rollup_rows(s, "rollup_1h").await;
    assert_eq!(h[&(id, T0)].n, 300 + 1 + 1 + 1 + 1 + 1);
}

/// Marks persist with the readings: a store dropped with minutes pending (a killed ingest) and
/// a new one opened on the database reads them exactly and rolls them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_marks_survive_a_restart_and_are_rolled_after_it() {
    let Some(t) = make_with(native()).await else {
        return;
    };
    t.pg.birth(&suite::birth("r", "a", "h", &["rs"]), T0)
        .await
        .expect("birth");
    let id = tag_id(&t.pg, "rs").await;
    let times: Vec<i64> = (0..1000).map(|i| T0 + i * 3_000).collect();
    t.pg.commit(&[batch_at(1, &times)]).await.expect("commit");
    t.pg.close();
    let s = PgStore::connect(&t.db.url(), native())
        .await
        .expect("reopen");
    s.migrate().await.expect("migrate");
    assert_eq!(pending_marks(&s).await, (50, 0));
    assert!(rollup_rows(&s, "rollup_1m").await.is_empty());
    assert_series_exact(&s, id, &EXACT_RANGES, "after restart, pending").await;
    let r = s
        .roll_due(flowsquare_service::clock::now_ms(), 10_000)
        .await
        .expect("roll");
    assert_eq!((r.minutes, r.hours, r.pending_minutes), (50, 1, 0), "{r:?}");
    assert_eq!(rollup_rows(&s, "rollup_1m").await.len(), 50);
    assert_series_exact(&s, id, &EXACT_RANGES, "after restart, rolled").await;
    s.close();
}

/// A roller killed inside its transaction (connection terminated) leaves the marks and the old
/// rollup rows: the next pass does the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_roll_leaves_its_marks() {
    let Some(t) = make_with(native()).await else {
        return;
    };
    let s = &t.pg;
    s.birth(&suite::birth("r", "a", "h", &["k"]), T0)
        .await
        .expect("birth");
    let id = tag_id(s, "k").await;
    s.commit(&[batch_at(1, &[T0, T0 + 1000])])
        .await
        .expect("commit");
    s.roll_all().await.expect("roll");
    s.commit(&[batch_at(2, &[T0 + 2000, T0 + 61_000])])
        .await
        .expect("commit");
    let (c, conn) = tokio_postgres::connect(&t.db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let conn = tokio::spawn(conn);
    c.batch_execute(
        "BEGIN;
         DELETE FROM flowsquare.rollup_dirty;
         DELETE FROM flowsquare.rollup_1m;",
    )
    .await
    .expect("half a roll");
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let admin = s.client().await.expect("admin");
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("kill");
    let _ = conn.await;
    assert_eq!(pending_marks(s).await, (2, 0));
    assert_eq!(
        rollup_rows(s, "rollup_1m").await[&(id, T0)].n,
        2,
        "old rows back"
    );
    assert_series_exact(s, id, &EXACT_RANGES, "after the killed roll").await;
    s.roll_all().await.expect("roll");
    assert_eq!(rollup_rows(s, "rollup_1m").await[&(id, T0)].n, 3);
    assert_series_exact(s, id, &EXACT_RANGES, "rolled").await;
}

/// Property (seeded): random batches — qualities, NaN, booleans, integers, text, values
/// missing, several tags and agents, late and re-sent batches, rolls in between — give rollup
/// rows equal to the in-memory [`rollup::Agg`] the commit path used to upsert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_rollups_equal_the_in_memory_aggregates() {
    use std::collections::{BTreeMap, HashSet};
    let Some(t) = make_with(native()).await else {
        return;
    };
    let s = &t.pg;
    // splitmix64.
    let mut state = 0x5eed_2026_u64;
    let mut rnd = move |n: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let names = ["v0", "v1", "v2", "v3"];
    for agent in ["a", "b"] {
        s.birth(&suite::birth("p", agent, "h", &names), T0)
            .await
            .expect("birth");
    }
    let mut ids = BTreeMap::new();
    for t in s.tags(Some("p"), None).await.expect("tags") {
        ids.insert((t.agent.clone(), t.name.clone()), t.id);
    }
    let mut used: HashSet<(String, u32, i64)> = HashSet::new();
    let (mut minutes, mut hours) = (BTreeMap::new(), BTreeMap::new());
    let mut sent: Vec<wire::Batch> = Vec::new();
    for k in 0..60u64 {
        let agent = if rnd(3) == 0 { "b" } else { "a" };
        let mut b = wire::Batch::new("p", agent, k + 1, "h", T0);
        for _ in 0..rnd(400) + 1 {
            let tag = rnd(4) as u32;
            // Three hours, ms resolution; one reading per (tag, time) so that "last" is defined.
            let ts = T0 + rnd(3 * 3_600_000) as i64;
            if !used.insert((agent.to_string(), tag, ts)) {
                continue;
            }
            let value = match rnd(10) {
                0 => None,
                1 => Some(wire::WireValue::Float(f64::NAN)),
                2 => Some(wire::WireValue::Bool(rnd(2) == 0)),
                3 => Some(wire::WireValue::Int(rnd(1000) as i64 - 500)),
                4 => Some(wire::WireValue::Text("t".into())),
                _ => Some(wire::WireValue::Float(
                    rnd(1_000_000) as f64 / 64.0 - 5000.0,
                )),
            };
            let quality = match rnd(8) {
                0 => wire::Quality::BadCommunication,
                1 => wire::Quality::Stale,
                _ => wire::Quality::Good,
            };
            let id = ids[&(agent.to_string(), names[tag as usize].to_string())];
            let good = quality == wire::Quality::Good;
            let v = super::types::value_columns(value.as_ref()).0;
            for (map, unit) in [(&mut minutes, MINUTE_MS), (&mut hours, rollup::HOUR_MS)] {
                let e: &mut rollup::Agg = map
                    .entry((id, ts - ts.rem_euclid(unit)))
                    .or_insert(rollup::Agg::EMPTY);
                e.add(ts, good, v);
            }
            b.readings.push(wire::WireReading {
                tag,
                ts_ms: ts,
                value,
                quality,
                status: None,
                error: None,
                counter: None,
            });
        }
        s.commit(std::slice::from_ref(&b)).await.expect("commit");
        sent.push(b);
        match rnd(6) {
            // Some re-sent (ack lost): duplicates.
            0 => {
                let again = sent[rnd(sent.len() as u64) as usize].clone();
                assert_eq!(
                    s.commit(&[again]).await.expect("again"),
                    vec![CommitOutcome::Duplicate]
                );
            }
            1 => {
                s.roll_all().await.expect("roll");
            }
            _ => {}
        }
    }
    s.roll_all().await.expect("roll");
    let same = |a: &rollup::Agg, b: &rollup::Agg| {
        let f = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()),
            (x, y) => x == y,
        };
        let sum = a.sum == b.sum
            || (a.sum.is_nan() && b.sum.is_nan())
            || (a.sum - b.sum).abs() <= 1e-9 * a.sum.abs().max(1.0);
        a.n == b.n
            && a.bad == b.bad
            && a.n_good == b.n_good
            && sum
            && f(a.min, b.min)
            && f(a.max, b.max)
            && a.last_ts == b.last_ts
            && f(a.last, b.last)
    };
    for (table, want) in [("rollup_1m", &minutes), ("rollup_1h", &hours)] {
        let got = rollup_rows(s, table).await;
        assert_eq!(got.len(), want.len(), "{table}");
        for (k, w) in want.iter() {
            let g = got
                .get(k)
                .unwrap_or_else(|| panic!("{table} {k:?} missing"));
            assert!(same(g, w), "{table} {k:?}: rolled {g:?}, in memory {w:?}");
        }
    }
}

/// The roller `serve` runs (`cli::roll_up`): rolls what is due in the background, publishes the
/// pending minutes for `/metrics`, and stops when told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_roller_rolls_in_the_background_and_stops_when_told() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(t) = make_with(native()).await else {
        return;
    };
    let s = t.pg.clone();
    s.birth(&suite::birth("r", "a", "h", &["bg"]), T0)
        .await
        .expect("birth");
    let times: Vec<i64> = (0..600).map(|i| T0 + i * 1000).collect();
    s.commit(&[batch_at(1, &times)]).await.expect("commit");
    assert_eq!(pending_marks(&s).await, (10, 0));
    let stats = Arc::new(crate::consume::ConsumerStats::default());
    stats.rollup_pending_minutes.store(u64::MAX, Relaxed);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let db = crate::config::DatabaseConfig {
        rollup_interval_ms: 100,
        rollup_settle_ms: 0,
        ..Default::default()
    };
    let task = tokio::spawn(crate::cli::roll_up(
        Arc::new(s.clone()),
        db,
        stats.clone(),
        stop_rx,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pending_marks(&s).await != (0, 0) || stats.rollup_pending_minutes.load(Relaxed) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the roller never rolled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rollup_rows(&s, "rollup_1m").await.len(), 10);
    assert_eq!(rollup_rows(&s, "rollup_1h").await.len(), 1);
    stop_tx.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the roller stops")
        .expect("task");
}
