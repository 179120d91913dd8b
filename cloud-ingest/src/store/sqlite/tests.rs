//! The shared suite on a fresh temp-file database per test, and SQLite-specific tests.

use std::path::Path;

use flowsquare_wire as wire;

use super::SqliteStore;
use crate::store::suite::{batch, birth, T0};
use crate::store::{CommitOutcome, DeadLetter, Store, StoreError};

/// A migrated store on a fresh file in its own temporary directory.
async fn make() -> Option<Box<dyn Store>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path()).await;
    Some(Box::new(crate::store::suite::Guarded {
        store: Box::new(store),
        guard: dir,
    }))
}

async fn open(dir: &Path) -> SqliteStore {
    let store = SqliteStore::open(&dir.join("ingest.db")).expect("open");
    let what = store.migrate().await.expect("migrate");
    assert!(
        what.starts_with("sqlite 3.") && what.ends_with("(embedded)"),
        "{what}"
    );
    store
}

crate::store_suite!(async { make().await });

/// The bounded tests (`store::bounds`) on a store holding every agent to
/// [`crate::store::suite::bounded_limits`].
mod bounded {
    use super::*;

    async fn make() -> Option<Box<dyn Store>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path())
            .await
            .with_limits(crate::store::suite::bounded_limits());
        Some(Box::new(crate::store::suite::Guarded {
            store: Box::new(store),
            guard: dir,
        }))
    }

    crate::store_suite!(@t async { make().await }; out_of_window_readings_are_dead_lettered,
        a_birth_beyond_the_tag_limit_is_refused, dead_letters_are_capped_and_pruned);
}

async fn tag_id(s: &SqliteStore, name: &str) -> i64 {
    s.tags(None, Some(name))
        .await
        .expect("tags")
        .into_iter()
        .find(|t| t.name == name)
        .expect("tag")
        .id
}

const FAR: i64 = T0 + 1_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_the_file_keeps_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut b = batch("r1", "a1", "h1", 1, 2, 50, T0, 0.0);
    b.gaps.push(wire::Gap {
        tags: vec![0],
        from_ms: T0,
        to_ms: T0 + 1000,
        count: 1,
        count_known: true,
        reason: wire::GapReason::BufferAge,
    });
    let (level, total) = {
        let s = open(dir.path()).await;
        s.birth(&birth("r1", "a1", "h1", &["tank/level", "meter/total"]), T0)
            .await
            .expect("birth");
        s.status("r1", "a1", &wire::Status::online(T0, "0.1.0"), T0)
            .await
            .expect("status");
        assert_eq!(
            s.commit(std::slice::from_ref(&b)).await.expect("commit"),
            vec![CommitOutcome::Stored {
                readings: 100,
                events: 0,
                gaps: 1,
                out_of_window: 0,
            }]
        );
        s.dead_letter(&DeadLetter {
            topic: "fs/v1/r1/a1/data".into(),
            payload: vec![1, 2, 3],
            reason: "garbage".into(),
            received_ms: T0,
        })
        .await
        .expect("dead letter");
        (
            tag_id(&s, "tank/level").await,
            tag_id(&s, "meter/total").await,
        )
    };
    let s = open(dir.path()).await; // migrates again: harmless
    assert_eq!(
        (
            tag_id(&s, "tank/level").await,
            tag_id(&s, "meter/total").await
        ),
        (level, total)
    );
    assert_eq!(s.count_readings(None, T0, FAR).await.expect("count"), 100);
    assert_eq!(
        s.count_readings(Some(level), T0, FAR).await.expect("count"),
        50
    );
    let a = s.agents().await.expect("agents");
    assert_eq!(a.len(), 1);
    assert!(a[0].online);
    assert_eq!(a[0].config_hash.as_deref(), Some("h1"));
    let g = s.gaps(Some("r1"), T0, FAR).await.expect("gaps");
    assert_eq!(
        (g.len(), g[0].tag_ids.clone(), g[0].reason.as_str()),
        (1, vec![level], "buffer-age")
    );
    assert_eq!(s.dead_letters(10).await.expect("dead letters")[0].bytes, 3);
    // The ledger survived too: the re-sent batch is a duplicate, and the catalog is known.
    assert_eq!(
        s.commit(std::slice::from_ref(&b)).await.expect("again"),
        vec![CommitOutcome::Duplicate]
    );
    let next = batch("r1", "a1", "h1", 2, 2, 1, T0 + 50_000, 0.0);
    assert_eq!(
        s.commit(&[next]).await.expect("next"),
        vec![CommitOutcome::Stored {
            readings: 2,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_readings_in_one_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path()).await;
    let names: Vec<String> = (0..10).map(|i| format!("big/t{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    s.birth(&birth("b1", "a1", "h1", &names), T0)
        .await
        .expect("birth");
    let b = batch("b1", "a1", "h1", 1, 10, 10_000, T0, 0.0);
    assert_eq!(
        s.commit(&[b]).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 100_000,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        }]
    );
    assert_eq!(
        s.count_readings(None, T0, FAR).await.expect("count"),
        100_000
    );
    let t3 = tag_id(&s, "big/t3").await;
    assert_eq!(
        s.count_readings(Some(t3), T0, FAR).await.expect("count"),
        10_000
    );
    let buckets = s.series(t3, T0, FAR, 3_600_000).await.expect("series");
    assert_eq!(
        buckets.iter().map(|b| b.count).collect::<Vec<_>>(),
        vec![3600, 3600, 2800]
    );
    assert_eq!(buckets[2].last, Some(9999.0));
}

/// Several tasks (on one store and on a second connection to the same file) commit the same
/// batches in different orders: each batch is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_store_each_batch_once() {
    const BATCHES: u64 = 40;
    const TASKS: u64 = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let s1 = open(dir.path()).await;
    let s2 = open(dir.path()).await; // another connection: contends for the file's write lock
    s1.birth(&birth("c1", "a1", "h1", &["c/a", "c/b", "c/c"]), T0)
        .await
        .expect("birth");
    let batches: Vec<wire::Batch> = (0..BATCHES)
        .map(|id| {
            batch(
                "c1",
                "a1",
                "h1",
                id,
                3,
                100,
                T0 + id as i64 * 100_000,
                id as f64,
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = if t % 2 == 0 { s1.clone() } else { s2.clone() };
        // Each task walks the batches from another start, two per call.
        let mine: Vec<wire::Batch> = (0..BATCHES)
            .map(|i| batches[((i + t * 5) % BATCHES) as usize].clone())
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for pair in mine.chunks(2) {
                let out = store.commit(pair).await.expect("commit");
                for (b, o) in pair.iter().zip(out) {
                    match o {
                        CommitOutcome::Stored { readings, .. } => {
                            assert_eq!(readings, 300);
                            stored.push(b.batch_id);
                        }
                        CommitOutcome::Duplicate => {}
                        CommitOutcome::UnknownCatalog => panic!("catalog is known"),
                        CommitOutcome::Conflict { reason } => panic!("same content: {reason}"),
                    }
                }
            }
            stored
        }));
    }
    let mut stored = Vec::new();
    for t in tasks {
        stored.extend(t.await.expect("task"));
    }
    stored.sort_unstable();
    assert_eq!(
        stored,
        (0..BATCHES).collect::<Vec<_>>(),
        "each batch stored by exactly one call"
    );
    assert_eq!(
        s1.count_readings(None, T0, FAR).await.expect("count"),
        (BATCHES * 300) as i64
    );
    let a = tag_id(&s1, "c/a").await;
    assert_eq!(
        s2.count_readings(Some(a), T0, FAR).await.expect("count"),
        (BATCHES * 100) as i64
    );
}

/// A tag index outside the catalog fails the call and rolls all of it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tag_index_rolls_back_the_whole_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path()).await;
    s.birth(&birth("e1", "a1", "h1", &["e/a"]), T0)
        .await
        .expect("birth");
    let good = batch("e1", "a1", "h1", 1, 1, 10, T0, 0.0);
    let bad = batch("e1", "a1", "h1", 2, 2, 10, T0, 0.0); // tag index 1 does not exist
    let mut bad_gap = batch("e1", "a1", "h1", 3, 1, 10, T0, 0.0);
    bad_gap.gaps.push(wire::Gap {
        tags: vec![7],
        from_ms: T0,
        to_ms: T0,
        count: 1,
        count_known: true,
        reason: wire::GapReason::BufferFull,
    });
    for b in [bad, bad_gap] {
        let err = s.commit(&[good.clone(), b]).await.expect_err("invalid");
        assert!(
            matches!(err, StoreError::Invalid(_)) && !err.is_transient(),
            "{err}"
        );
    }
    assert_eq!(s.count_readings(None, T0, FAR).await.expect("count"), 0);
    assert!(s.gaps(None, T0, FAR).await.expect("gaps").is_empty());
    assert_eq!(
        s.commit(&[good]).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 10,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        }]
    );
}

/// Columns the trait does not read back are stored all the same: status, error, counters, odd
/// values, event fields in order; a config with no tags is a known catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_is_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path()).await;
    s.birth(&birth("d1", "a1", "h1", &["d/a"]), T0)
        .await
        .expect("birth");
    let mut b = wire::Batch::new("d1", "a1", u64::MAX, "h1", T0);
    let r = |ts, value, quality| wire::WireReading {
        tag: 0,
        ts_ms: ts,
        value,
        quality,
        status: None,
        error: None,
        counter: None,
    };
    b.readings.push(wire::WireReading {
        status: Some(2),
        error: Some("illegal address".into()),
        ..r(T0, None, wire::Quality::BadDevice)
    });
    b.readings.push(wire::WireReading {
        counter: Some(wire::Counter::Rollover { delta: 12.5 }),
        ..r(
            T0 + 1,
            Some(wire::WireValue::Float(3.0)),
            wire::Quality::Good,
        )
    });
    b.readings.push(wire::WireReading {
        counter: Some(wire::Counter::Reset { previous: 99.0 }),
        ..r(
            T0 + 2,
            Some(wire::WireValue::UInt(1 << 40)),
            wire::Quality::Good,
        )
    });
    b.readings.push(r(
        T0 + 3,
        Some(wire::WireValue::Float(f64::NAN)),
        wire::Quality::Good,
    ));
    b.readings.push(r(
        T0 + 4,
        Some(wire::WireValue::Bool(false)),
        wire::Quality::Stale,
    ));
    b.events.push(wire::Event {
        source: "bay-1".into(),
        kind: "delivery".into(),
        seq: u64::MAX,
        ts_ms: T0,
        fields: vec![
            ("z".into(), wire::WireValue::Int(-1)),
            ("a\"q".into(), wire::WireValue::Bool(true)),
            ("big".into(), wire::WireValue::UInt(u64::MAX)),
            ("nan".into(), wire::WireValue::Float(f64::NAN)),
        ],
    });
    assert_eq!(
        s.commit(std::slice::from_ref(&b)).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 5,
            events: 1,
            gaps: 0,
            out_of_window: 0,
        }]
    );
    assert_eq!(
        s.commit(&[b]).await.expect("again"),
        vec![CommitOutcome::Duplicate],
        "u64::MAX batch id dedups too"
    );

    let id = tag_id(&s, "d/a").await;
    let latest = s.latest(&[id, id, 999]).await.expect("latest");
    assert_eq!(latest.len(), 1);
    assert_eq!(
        (latest[0].ts_ms, latest[0].value, latest[0].quality.as_str()),
        (T0 + 4, Some(0.0), "stale")
    );
    let buckets = s.series(id, T0, T0 + 10, 1000).await.expect("series");
    assert_eq!(
        (buckets[0].count, buckets[0].bad, buckets[0].last),
        (5, 2, Some((1u64 << 40) as f64))
    );

    let raw = rusqlite::Connection::open(dir.path().join("ingest.db")).expect("raw");
    type Row = (
        i64,
        Option<f64>,
        Option<String>,
        i64,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<f64>,
    );
    let rows: Vec<Row> = raw
        .prepare("SELECT ts_ms, value, text, quality, status, error, counter_kind, counter_value FROM readings ORDER BY ts_ms")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        rows[0],
        (
            T0,
            None,
            None,
            2,
            Some(2),
            Some("illegal address".into()),
            None,
            None
        )
    );
    assert_eq!(
        rows[1],
        (T0 + 1, Some(3.0), None, 0, None, None, Some(0), Some(12.5))
    );
    assert_eq!(
        rows[2],
        (
            T0 + 2,
            Some((1u64 << 40) as f64),
            None,
            0,
            None,
            None,
            Some(1),
            Some(99.0)
        )
    );
    assert_eq!(
        rows[3],
        (T0 + 3, None, Some("NaN".into()), 0, None, None, None, None)
    );
    let (seq, fields, batch_id): (i64, String, i64) = raw
        .query_row("SELECT seq, fields, batch_id FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("event");
    assert_eq!((seq, batch_id), (-1, -1), "u64 stored bit for bit");
    assert_eq!(
        fields,
        r#"{"z":-1,"a\"q":true,"big":18446744073709551615,"nan":null}"#
    );

    // A birth without tags makes its (empty) catalog known.
    s.birth(&birth("d1", "a1", "empty", &[]), T0)
        .await
        .expect("birth");
    let empty = wire::Batch::new("d1", "a1", 5, "empty", T0);
    assert_eq!(
        s.commit(&[empty]).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 0,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        }]
    );
}

/// A database written by a newer build is refused, not misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path()).await;
    let raw = rusqlite::Connection::open(dir.path().join("ingest.db")).expect("raw");
    raw.pragma_update(None, "user_version", super::SCHEMA_VERSION + 1)
        .expect("bump");
    assert!(matches!(s.migrate().await, Err(StoreError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_rejects_a_non_positive_step_and_buckets_before_1970() {
    let s = SqliteStore::open_in_memory().expect("memory");
    s.migrate().await.expect("migrate");
    s.birth(&birth("n1", "a1", "h1", &["n/a"]), T0)
        .await
        .expect("birth");
    s.commit(&[batch("n1", "a1", "h1", 1, 1, 3, -1500, 1.0)])
        .await
        .expect("commit");
    let id = tag_id(&s, "n/a").await;
    assert!(matches!(
        s.series(id, -10_000, 10_000, 0).await,
        Err(StoreError::Invalid(_))
    ));
    let b = s.series(id, -10_000, 10_000, 1000).await.expect("series");
    // Readings at -1500, -500, 500: buckets -2000, -1000, 0 (floor, not truncation).
    assert_eq!(
        b.iter().map(|b| b.ts_ms).collect::<Vec<_>>(),
        vec![-2000, -1000, 0]
    );
}

/// A full disk is transient (retry, acknowledge nothing), not a reason to reject the batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_transient_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path()).await;
    s.birth(&birth("f1", "a1", "h1", &["f/a", "f/b"]), T0)
        .await
        .expect("birth");
    let pages: i64 = {
        let c = s.conn.lock().expect("lock");
        let pages = c
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("page count");
        c.pragma_update(None, "max_page_count", pages + 2)
            .expect("limit");
        pages
    };
    let b = batch("f1", "a1", "h1", 1, 2, 5_000, T0, 0.0);
    let err = s
        .commit(std::slice::from_ref(&b))
        .await
        .expect_err("disk full");
    assert!(
        matches!(err, StoreError::Unavailable(_)) && err.is_transient(),
        "{err}"
    );
    assert_eq!(s.count_readings(None, T0, FAR).await.expect("count"), 0);
    s.conn
        .lock()
        .expect("lock")
        .pragma_update(None, "max_page_count", pages * 1000)
        .expect("limit");
    assert_eq!(
        s.commit(&[b]).await.expect("commit"),
        vec![CommitOutcome::Stored {
            readings: 10_000,
            events: 0,
            gaps: 0,
            out_of_window: 0,
        }],
        "nothing of the failed attempt was left in the ledger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recaptured_event_is_stored_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path()).await;
    crate::store::suite::a_recaptured_event_is_stored_once(&s, &s).await;
}

/// Schema step 3 on a database of step 2: the ledger is copied into its new table (epoch 0, no
/// digest; a re-send is still a duplicate), an old `unclean-shutdown` gap of count 0 becomes one
/// of unknown count; running it again changes nothing.
#[tokio::test]
async fn step_3_migrates_a_step_2_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ingest.db");
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(&format!(
            "{}{}PRAGMA user_version = 2;",
            super::schema::SCHEMA_V1_FOR_TESTS,
            super::ledger::SCHEMA_V2
        ))
        .expect("step 2 schema");
        c.execute_batch(
            "INSERT INTO batches VALUES ('m', 'a', 1, 0, 'h', 10, 0, 0);
             INSERT INTO gaps (site, agent, batch_id, tag_ids, from_ms, to_ms, count, reason)
             VALUES ('m', 'a', 1, '[]', 0, 60000, 0, 'unclean-shutdown'),
                    ('m', 'a', 1, '[]', 0, 60000, 7, 'buffer-full');",
        )
        .expect("step 2 rows");
    }
    let s = open(dir.path()).await;
    s.migrate().await.expect("again");
    s.birth(&birth("m", "a", "h", &["x"]), T0)
        .await
        .expect("birth");
    let old = batch("m", "a", "h", 1, 1, 10, T0, 0.0);
    assert_eq!(
        s.commit(std::slice::from_ref(&old)).await.expect("re-send"),
        vec![CommitOutcome::Duplicate]
    );
    let mut v2 = old;
    v2.buffer_epoch = 3;
    assert!(matches!(
        s.commit(&[v2]).await.expect("other epoch")[..],
        [CommitOutcome::Stored { readings: 10, .. }]
    ));
    let gaps = s.gaps(Some("m"), 0, i64::MAX / 2).await.expect("gaps");
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

/// Rollups (`rollup.rs`): a batch of mixed readings of tags 0 and 1 over `hours` hours from
/// `t0`: every 7 min, values in halves (exact sums), some bad, some without a value, and two
/// readings at one timestamp (the last stored is the last).
fn mixed(id: u64, t0: i64, hours: i64, base: f64) -> wire::Batch {
    let mut b = wire::Batch::new("r1", "a1", id, "h1", t0);
    let mut i = 0i64;
    while i * 420_000 < hours * super::rollup::HOUR_MS {
        for tag in 0..2u32 {
            let ts = t0 + i * 420_000;
            let quality = if i % 5 == 3 {
                wire::Quality::BadDevice
            } else {
                wire::Quality::Good
            };
            let value = (i % 11 != 4).then(|| wire::WireValue::Float(base + (i % 9) as f64 / 2.0));
            for k in 0..(1 + i64::from(i % 6 == 0)) {
                let value = value.clone().map(|v| match v {
                    wire::WireValue::Float(f) => wire::WireValue::Float(f + k as f64),
                    v => v,
                });
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
        }
        i += 1;
    }
    b
}

/// Series by whole hours (and ends cut inside hours) equal the raw walk.
async fn assert_series_exact(s: &SqliteStore, tag: i64, what: &str) {
    let h = super::rollup::HOUR_MS;
    for (from, to, step) in [
        (T0, T0 + 8 * h, h),
        (T0 - 3 * h, T0 + 9 * h, 2 * h),
        (T0 + 1_234_567, T0 + 7 * h - 999, h),
        (T0 + 1_234_567, T0 + 7 * h - 999, 3 * h),
        (T0 + 30 * 60_000, T0 + 2 * h + 1, h),
    ] {
        let best = s.series(tag, from, to, step).await.expect("series");
        let raw = s.series_from_raw(tag, from, to, step).await.expect("raw");
        assert!(!raw.is_empty(), "{what}: no data");
        assert_eq!(best, raw, "{what}: [{from}, {to}) by {step}");
    }
}

async fn marks(s: &SqliteStore) -> u64 {
    s.roll_due(i64::MIN / 2, 0)
        .await
        .expect("pending")
        .pending_minutes
        / 60
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_from_rollups_equal_series_from_raw_readings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path()).await;
    let h = super::rollup::HOUR_MS;
    s.birth(&birth("r1", "a1", "h1", &["t0", "t1"]), T0)
        .await
        .expect("birth");
    let (t0, t1) = (tag_id(&s, "t0").await, tag_id(&s, "t1").await);
    let out = s.commit(&[mixed(1, T0, 6, 10.0)]).await.expect("commit");
    assert!(matches!(out[..], [CommitOutcome::Stored { .. }]));
    // One mark per (agent, hour), not per reading.
    assert_eq!(marks(&s).await, 6);
    for tag in [t0, t1] {
        assert_series_exact(&s, tag, "before any roll").await;
    }
    // Settle: only hours closed settle ago are rolled.
    let r = s.roll_due(T0 + 3 * h + 10_000, 10_000).await.expect("roll");
    assert_eq!((r.hours, marks(&s).await), (3, 3));
    assert_series_exact(&s, t0, "partly rolled").await;
    s.roll_all().await.expect("roll all");
    assert_eq!(marks(&s).await, 0);
    for tag in [t0, t1] {
        assert_series_exact(&s, tag, "rolled").await;
    }
    // A late reading into a rolled hour: marked, read raw until rolled again.
    let mut late = wire::Batch::new("r1", "a1", 2, "h1", T0 + h + 5);
    late.readings.push(wire::WireReading {
        tag: 0,
        ts_ms: T0 + h + 5,
        value: Some(wire::WireValue::Float(1000.5)),
        quality: wire::Quality::Good,
        status: None,
        error: None,
        counter: None,
    });
    s.commit(std::slice::from_ref(&late)).await.expect("late");
    assert_eq!(marks(&s).await, 1);
    assert_series_exact(&s, t0, "late reading pending").await;
    let b = s.series(t0, T0 + h, T0 + 2 * h, h).await.expect("series");
    assert_eq!(b[0].max, Some(1000.5));
    s.roll_all().await.expect("roll all");
    assert_series_exact(&s, t0, "late reading rolled").await;
    // The re-sent batch stores nothing and marks nothing.
    let out = s.commit(&[late]).await.expect("re-sent");
    assert_eq!(out, [CommitOutcome::Duplicate]);
    assert_eq!(marks(&s).await, 0);
    assert_series_exact(&s, t0, "re-sent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_marks_survive_reopening_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = {
        let s = open(dir.path()).await;
        s.birth(&birth("r1", "a1", "h1", &["t0", "t1"]), T0)
            .await
            .expect("birth");
        s.commit(&[mixed(1, T0, 4, 0.5)]).await.expect("commit");
        tag_id(&s, "t0").await
    };
    let s = open(dir.path()).await;
    assert_eq!(marks(&s).await, 4);
    assert_series_exact(&s, t0, "reopened, pending").await;
    assert_eq!(s.roll_all().await.expect("roll").hours, 4);
    assert_series_exact(&s, t0, "reopened, rolled").await;
}

/// Not a test: 30 days of one 1 s tag by 1 h after rolling, timed (`--ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure_series_30_days_of_1s_by_1h() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(dir.path()).await;
    s.birth(&birth("r1", "a1", "h1", &["x"]), T0)
        .await
        .expect("birth");
    let day = 86_400;
    for d in 0..30u64 {
        let t = T0 + d as i64 * day * 1000;
        s.commit(&[batch("r1", "a1", "h1", d + 1, 1, day, t, 0.0)])
            .await
            .expect("commit");
    }
    let x = tag_id(&s, "x").await;
    let (from, to, h) = (T0, T0 + 30 * day * 1000, super::rollup::HOUR_MS);
    let t = std::time::Instant::now();
    let raw = s.series_from_raw(x, from, to, h).await.expect("raw");
    let raw_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = std::time::Instant::now();
    let r = s.roll_all().await.expect("roll");
    let roll_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut best_ms = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let best = s.series(x, from, to, h).await.expect("series");
        best_ms = best_ms.min(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(best, raw);
    }
    println!(
        "30 d x 1 s by 1 h: raw {raw_ms:.0} ms, rolled {best_ms:.1} ms; roll of {} hours {roll_ms:.0} ms",
        r.hours
    );
    // Minute steps are read raw: the API allows 10,000 buckets (~7 days at 1 min).
    for days in [1, 7] {
        let t = std::time::Instant::now();
        let b = s.series(x, from, from + days * day * 1000, 60_000).await;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "{days} d x 1 s by 1 min (raw): {ms:.0} ms, {} buckets",
            b.expect("series").len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_version_5_file_marks_its_hours_pending() {
    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = {
        let s = open(dir.path()).await;
        s.birth(&birth("r1", "a1", "h1", &["t0", "t1"]), T0)
            .await
            .expect("birth");
        s.commit(&[mixed(1, T0 - 2 * super::rollup::HOUR_MS, 5, 3.0)])
            .await
            .expect("commit");
        tag_id(&s, "t0").await
    };
    {
        // As version 5 left it: readings, no rollup tables.
        let c = rusqlite::Connection::open(dir.path().join("ingest.db")).expect("open");
        c.execute_batch("DROP TABLE rollup_1h; DROP TABLE rollup_dirty; PRAGMA user_version = 5;")
            .expect("version 5");
    }
    let s = open(dir.path()).await;
    assert_eq!(marks(&s).await, 5);
    assert_series_exact(&s, t0, "upgraded, pending").await;
    s.migrate().await.expect("again");
    assert_eq!(marks(&s).await, 5);
    s.roll_all().await.expect("roll");
    assert_series_exact(&s, t0, "upgraded, rolled").await;
}
