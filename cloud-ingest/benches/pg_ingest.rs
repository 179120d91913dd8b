//! PostgreSQL ingest benchmark (`cargo bench -p cloud-ingest --bench pg_ingest`).
//!
//! (a) `PgStore::commit` of 200 batches of 5,000 readings (100 tags × 50 s of 1 s data, 1M
//!     readings) against a raw binary COPY of the same rows into the same table, as one COPY and
//!     as 200 COPY transactions of 5,000; readings/s of each and the ratio.
//! (b) `series` of one tag over 30 days of 1 s data (2,592,000 readings) by 1 h buckets: median
//!     of 5 (and, for reference, the same from raw readings only, and other steps).
//! (c) End to end through the local Mosquitto (127.0.0.1:1883, a unique topic root per run):
//!     `consume::run` in-process with `PgStore`; 4 agents (50 tags each) publish a birth and
//!     200 pre-encoded batches of 5,000 readings (QoS 1) as fast as the broker takes them; time
//!     from the first publish to the last end-to-end ack, against a raw binary COPY of the same
//!     rows into the same (truncated) table, for `max_batches_per_commit` 64 and 16. Skipped when
//!     the broker is unreachable. `--e2e` runs part (c) only.
//! (a2) The live shape: 10,000 tags × 1 reading per batch, 100 batches (one per second of data,
//!     1M readings), `PgStore::commit` one batch per call against a raw binary COPY of the same
//!     rows, one transaction per batch, into the same table; readings/s and the CPU seconds the
//!     database backends of the bench's own connections spent (from `/proc/<pid>/stat` of the
//!     `pg_stat_activity` rows of its database: background workers not counted), then the
//!     roller's pass over the pending minutes (time and backend CPU). `--a2` runs part (a2) only.
//!
//! Runs on native partitions, and on TimescaleDB when the extension is installed and preloaded,
//! each in a database of its own (`fs_bench_<pid>_<layout>`, dropped at the end). The server is
//! `$FLOWSQUARE_PG` or `host=127.0.0.1 port=5432 user=postgres`. `--quick` loads a tenth.

use std::collections::HashSet;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloud_ingest::config::IngestConfig;
use cloud_ingest::consume::{self, ConsumerStats};
use cloud_ingest::store::postgres::{PgOptions, PgStore, TimescaleMode};
use cloud_ingest::store::{CommitOutcome, Store};
use flowsquare_wire as wire;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{oneshot, watch, Barrier};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
const TAGS: u32 = 100;
const PER_TAG: i64 = 50;
const BATCH: usize = 5_000;
const REPS: usize = 3;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn server() -> String {
    std::env::var("FLOWSQUARE_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

async fn connect(db: &str) -> Res<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(&format!("{} dbname={db}", server()), NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

fn birth(site: &str, names: &[String]) -> wire::Birth {
    wire::Birth {
        v: 1,
        site: site.into(),
        agent: "gw".into(),
        agent_version: "bench".into(),
        config_hash: "h".into(),
        started_ms: T0,
        devices: vec![wire::DeviceInfo {
            name: "plc".into(),
            protocol: "modbus-tcp".into(),
            description: None,
        }],
        tags: names
            .iter()
            .enumerate()
            .map(|(i, n)| wire::TagInfo {
                id: i as u32,
                name: n.clone(),
                unit: Some("m".into()),
                kind: "gauge".into(),
                device: "plc".into(),
                description: None,
                data_type: "f32".into(),
                poll_interval_ms: 1000,
            })
            .collect(),
        events: Vec::new(),
        buffer: None,
    }
}

/// Batch `k` of the throughput run: `TAGS` tags × `PER_TAG` seconds, tank-level-like values.
fn batch(site: &str, k: u64, tags: u32, per_tag: i64, t0: i64) -> wire::Batch {
    let mut b = wire::Batch::new(site, "gw", k + 1, "h", t0);
    for tag in 0..tags {
        for i in 0..per_tag {
            let s = (t0 - T0) / 1000 + i;
            b.readings.push(wire::WireReading {
                tag,
                ts_ms: t0 + i * 1000,
                value: Some(wire::WireValue::Float(
                    1000.0 + f64::from(tag) + (s % 3600) as f64 * 0.001,
                )),
                quality: wire::Quality::Good,
                status: None,
                error: None,
                counter: None,
            });
        }
    }
    b
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Raw binary COPY of `rows` (tag id, ts, value) in chunks of `chunk`, one transaction each.
async fn raw_copy(
    c: &mut tokio_postgres::Client,
    rows: &[(i64, i64, f64)],
    chunk: usize,
) -> Res<Duration> {
    let types = [
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::FLOAT8,
        Type::TEXT,
        Type::INT2,
        Type::INT8,
        Type::TEXT,
        Type::INT2,
        Type::FLOAT8,
    ];
    let start = Instant::now();
    for part in rows.chunks(chunk) {
        let tx = c.transaction().await?;
        let sink = tx
            .copy_in(
                "COPY flowsquare.readings (tag_id, ts, value, text, quality, status, error, counter_kind, counter_value)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut w = pin!(BinaryCopyInWriter::new(sink, &types));
        let (none_s, none_i, none_q, none_f): (
            Option<&str>,
            Option<i64>,
            Option<i16>,
            Option<f64>,
        ) = (None, None, None, None);
        for (tag, ts, v) in part {
            let ts = std::time::UNIX_EPOCH + Duration::from_millis(*ts as u64);
            let vals: [&(dyn ToSql + Sync); 9] = [
                tag, &ts, v, &none_s, &0i16, &none_i, &none_s, &none_q, &none_f,
            ];
            w.as_mut().write(&vals).await?;
        }
        w.as_mut().finish().await?;
        tx.commit().await?;
    }
    Ok(start.elapsed())
}

async fn reset(c: &tokio_postgres::Client) -> Res<()> {
    // One statement per call: VACUUM cannot run in the implicit transaction of a multi-statement query.
    for sql in [
        "TRUNCATE flowsquare.readings, flowsquare.batches, flowsquare.rollup_1m, flowsquare.rollup_1h,
                  flowsquare.rollup_dirty",
        "VACUUM ANALYZE flowsquare.readings",
        "CHECKPOINT",
    ] {
        c.batch_execute(sql).await?;
    }
    Ok(())
}

const BROKER_PORT: u16 = 1883;
const E2E_AGENTS: usize = 4;
const E2E_TAGS: u32 = 50;
const E2E_PER_TAG: i64 = 100;

fn mqtt_options(id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", BROKER_PORT);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(64 << 20, 64 << 20);
    o
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// One simulated agent: site, encoded birth, encoded batches, and its readings (tag, ts, value).
struct E2eAgent {
    site: String,
    birth: Vec<u8>,
    payloads: Vec<Vec<u8>>,
    rows: Vec<(u32, i64, f64)>,
}

fn e2e_agents(scale: i64) -> Res<Vec<E2eAgent>> {
    let per_agent = 200 / scale as usize / E2E_AGENTS;
    let names: Vec<String> = (0..E2E_TAGS)
        .map(|i| format!("tank/T{i:03}.level"))
        .collect();
    let mut out = Vec::new();
    for a in 0..E2E_AGENTS {
        let site = format!("c{a}");
        let mut payloads = Vec::new();
        let mut rows = Vec::new();
        for k in 0..per_agent {
            let t0 = T0 + k as i64 * E2E_PER_TAG * 1000;
            let b = batch(&site, k as u64, E2E_TAGS, E2E_PER_TAG, t0);
            assert_eq!(b.readings.len(), BATCH);
            for r in &b.readings {
                let v = match r.value {
                    Some(wire::WireValue::Float(f)) => f,
                    _ => 0.0,
                };
                rows.push((r.tag, r.ts_ms, v));
            }
            payloads.push(wire::encode(&b)?);
        }
        out.push(E2eAgent {
            birth: birth(&site, &names).encode(),
            site,
            payloads,
            rows,
        });
    }
    Ok(out)
}

/// Publish the birth and the batches of one agent (QoS 1) once `go` opens; returns when the
/// broker has acknowledged (PUBACK) all of them.
async fn publish_agent(
    root: String,
    site: String,
    birth: Vec<u8>,
    payloads: Vec<Vec<u8>>,
    go: Arc<Barrier>,
) -> Result<Instant, String> {
    let (client, mut ev) = AsyncClient::new(
        mqtt_options(&format!("bench-pub-{site}-{}", nanos())),
        payloads.len() + 8,
    );
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => {
                go.wait().await;
                return Err(e.to_string());
            }
        }
    }
    let topics = wire::Topics::new(root, site, "gw").map_err(|e| e.to_string())?;
    go.wait().await;
    let total = 1 + payloads.len();
    let c = client.clone();
    let data = topics.data();
    let birth_topic = topics.birth();
    let feeder = tokio::spawn(async move {
        let _ = c.publish(birth_topic, QoS::AtLeastOnce, true, birth).await;
        for p in payloads {
            let _ = c.publish(data.clone(), QoS::AtLeastOnce, false, p).await;
        }
    });
    let mut acked = 0;
    while acked < total {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let done = Instant::now();
    let _ = feeder.await;
    // Clear the retained birth of this unique root.
    let _ = client
        .publish(topics.birth(), QoS::AtLeastOnce, true, Vec::new())
        .await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while ev.poll().await.is_ok() {}
    })
    .await;
    Ok(done)
}

/// Part (c): one end-to-end run with `max_batches_per_commit = max`, then raw COPY of the same
/// rows into the truncated table.
async fn e2e(
    db: &str,
    mode: TimescaleMode,
    c: &mut tokio_postgres::Client,
    agents: &[E2eAgent],
    max: usize,
) -> Res<()> {
    let n_batches: usize = agents.iter().map(|a| a.payloads.len()).sum();
    let expected = (n_batches * BATCH) as i64;
    reset(c).await?;
    let store: Arc<dyn Store> = Arc::new(
        PgStore::connect(
            &format!("{} dbname={db}", server()),
            PgOptions {
                timescale: mode,
                ..PgOptions::default()
            },
        )
        .await?,
    );
    let root = format!("bench-{}-{}/fs", std::process::id(), nanos());

    // The consumer.
    let mut cfg = IngestConfig::default();
    cfg.mqtt.broker = format!("mqtt://127.0.0.1:{BROKER_PORT}").into();
    cfg.mqtt.topic_root = root.clone();
    cfg.mqtt.group = String::new();
    cfg.mqtt.client_id = Some(format!("bench-ingest-{}", nanos()));
    cfg.ingest.max_batches_per_commit = max;
    let stats = Arc::new(ConsumerStats::default());
    let connected = Arc::new(AtomicBool::new(false));
    let (stop, stop_rx) = watch::channel(false);
    let consumer = tokio::spawn(consume::run(
        cfg,
        store.clone(),
        stats.clone(),
        connected.clone(),
        stop_rx,
    ));

    // The ack subscriber: counts distinct committed (agent, batch id).
    let (ack_client, mut ack_ev) =
        AsyncClient::new(mqtt_options(&format!("bench-acks-{}", nanos())), 64);
    let ack_filter = wire::Topics::filter(&root, wire::Kind::Ack)?;
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (last_tx, last_rx) = oneshot::channel::<Instant>();
    let acks = tokio::spawn(async move {
        let (mut ready_tx, mut last_tx) = (Some(ready_tx), Some(last_tx));
        let mut seen = HashSet::new();
        let mut rejected = 0usize;
        loop {
            match ack_ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ack_client
                        .subscribe(ack_filter.clone(), QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = ready_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(ack) = wire::Ack::decode(&p.payload) {
                        if ack.status == wire::AckStatus::Committed {
                            for id in ack.batch_ids {
                                seen.insert((p.topic.clone(), id));
                            }
                        } else {
                            rejected += ack.batch_ids.len();
                        }
                    }
                    if seen.len() >= n_batches {
                        if let Some(t) = last_tx.take() {
                            let _ = t.send(Instant::now());
                            let _ = ack_client.disconnect().await;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) if last_tx.is_none() => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        rejected
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .map_err(|_| "ack subscriber: no SUBACK in 10 s")??;
    let t = Instant::now();
    while !connected.load(Relaxed) {
        if t.elapsed() > Duration::from_secs(10) {
            return Err("consumer did not connect in 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The consumer subscribes right after CONNACK; give the SUBACKs a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The publishers: connected first, then released together.
    let go = Arc::new(Barrier::new(agents.len() + 1));
    let pubs: Vec<_> = agents
        .iter()
        .map(|a| {
            tokio::spawn(publish_agent(
                root.clone(),
                a.site.clone(),
                a.birth.clone(),
                a.payloads.clone(),
                go.clone(),
            ))
        })
        .collect();
    go.wait().await;
    let start = Instant::now();
    let last = tokio::time::timeout(Duration::from_secs(600), last_rx)
        .await
        .map_err(|_| format!("not all batches acknowledged in 600 s: {stats:?}",))??;
    let mut published = start;
    for p in pubs {
        published = published.max(p.await??);
    }
    let e2e_s = last.duration_since(start).as_secs_f64();
    let pub_s = published.duration_since(start).as_secs_f64();
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer).await;
    let rejected = acks.await?;
    let stored: i64 = c
        .query_one("SELECT count(*) FROM flowsquare.readings", &[])
        .await?
        .get(0);
    assert_eq!(stored, expected, "readings in the database after e2e");
    assert_eq!(rejected, 0, "rejected batches");

    // The same rows by raw binary COPY, and decode + commit without MQTT, into the truncated table.
    let mut rows = Vec::with_capacity(expected as usize);
    for a in agents {
        let tags = store.tags(Some(&a.site), None).await?;
        let ids: Vec<i64> = (0..E2E_TAGS)
            .map(|i| {
                let n = format!("tank/T{i:03}.level");
                tags.iter().find(|t| t.name == n).map(|t| t.id).ok_or("tag")
            })
            .collect::<Result<_, _>>()?;
        rows.extend(a.rows.iter().map(|(t, ts, v)| (ids[*t as usize], *ts, *v)));
    }
    reset(c).await?;
    let copy_s = raw_copy(c, &rows, rows.len()).await?.as_secs_f64();
    let stored: i64 = c
        .query_one("SELECT count(*) FROM flowsquare.readings", &[])
        .await?
        .get(0);
    assert_eq!(stored, expected, "readings in the database after raw COPY");
    reset(c).await?;
    let copy_chunked_s = raw_copy(c, &rows, BATCH).await?.as_secs_f64();
    reset(c).await?;
    let payloads: Vec<&Vec<u8>> = agents.iter().flat_map(|a| a.payloads.iter()).collect();
    let t = Instant::now();
    let decoded: Vec<wire::Batch> = payloads
        .iter()
        .map(|p| wire::decode(p))
        .collect::<Result<_, _>>()?;
    let decode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for group in decoded.chunks(max) {
        let out = store.commit(group).await?;
        assert!(
            out.iter()
                .all(|o| matches!(o, CommitOutcome::Stored { .. })),
            "{out:?}"
        );
    }
    let commit_s = t.elapsed().as_secs_f64();
    let bytes: usize = payloads.iter().map(|p| p.len()).sum();

    let total = expected as f64;
    let (x, y) = (total / e2e_s, total / copy_s);
    let r = x / y;
    println!(
        "(c) max_batches_per_commit = {max}: {n_batches} batches x {BATCH} readings ({} agents x {E2E_TAGS} tags), {:.1} MB on the wire",
        agents.len(),
        bytes as f64 / 1e6
    );
    println!(
        "    e2e ingest: {x:.0} readings/s; raw COPY: {y:.0} readings/s; ratio X/Y = {r:.2} (target >= 0.7: {})",
        if r >= 0.7 { "PASS" } else { "MISS" }
    );
    println!(
        "    e2e {e2e_s:.2} s (first publish -> last ack); all PUBACKed by the broker after {pub_s:.2} s; {} readings stored, {} batches acked",
        stats.stored_readings.load(Relaxed),
        stats.acked_batches.load(Relaxed)
    );
    println!(
        "    same rows: raw COPY {copy_s:.2} s (one COPY), {copy_chunked_s:.2} s ({:.0} readings/s, one per {BATCH}); decode {decode_s:.2} s + commit in groups of {max} {commit_s:.2} s ({:.0} readings/s, no MQTT)",
        total / copy_chunked_s,
        total / (decode_s + commit_s)
    );
    Ok(())
}

async fn run(layout: &str, mode: TimescaleMode, scale: i64) -> Res<()> {
    let admin = connect("postgres").await?;
    let db = format!("fs_bench_{}_{layout}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    let result = run_in(&db, layout, mode, scale, only_e2e()).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;
    result
}

fn only_e2e() -> bool {
    std::env::args().any(|a| a == "--e2e")
}

fn only_a2() -> bool {
    std::env::args().any(|a| a == "--a2")
}

/// CPU seconds (user + system) spent so far by the server backends connected to `db`.
async fn db_cpu_s(c: &tokio_postgres::Client, db: &str) -> Res<f64> {
    let rows = c
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await?;
    let mut ticks = 0u64;
    for r in rows {
        let pid: i32 = r.get(0);
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which ends at the last ')'): utime and stime are the
        // 14th and 15th fields of the line, the 12th and 13th after it.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    // USER_HZ is 100 on Linux.
    Ok(ticks as f64 / 100.0)
}

/// Roll every pending minute and hour (the roller's work, off the commit path).
async fn roll_all(store: &PgStore) -> Res<()> {
    store.roll_all().await?;
    Ok(())
}

/// Part (a2): the live shape, one reading per tag per batch.
async fn a2(store: &PgStore, c: &mut tokio_postgres::Client, db: &str, scale: i64) -> Res<()> {
    const LIVE_TAGS: u32 = 10_000;
    let n_batches = 100 / scale as u64;
    let names: Vec<String> = (0..LIVE_TAGS)
        .map(|i| format!("live/T{i:05}.level"))
        .collect();
    store.birth(&birth("live", &names), T0).await?;
    let ids: Vec<i64> = {
        let tags = store.tags(Some("live"), None).await?;
        let by_name: std::collections::HashMap<&str, i64> =
            tags.iter().map(|t| (t.name.as_str(), t.id)).collect();
        names
            .iter()
            .map(|n| by_name.get(n.as_str()).copied().ok_or("tag"))
            .collect::<Result<_, _>>()?
    };
    // Batch k: every tag once, at T0 + k s (a one-second poll, sent every second).
    let batches: Vec<wire::Batch> = (0..n_batches)
        .map(|k| batch("live", k, LIVE_TAGS, 1, T0 + k as i64 * 1000))
        .collect();
    let rows: Vec<(i64, i64, f64)> = batches
        .iter()
        .flat_map(|b| b.readings.iter())
        .map(|r| {
            let v = match r.value {
                Some(wire::WireValue::Float(f)) => f,
                _ => 0.0,
            };
            (ids[r.tag as usize], r.ts_ms, v)
        })
        .collect();
    let total = rows.len() as f64;
    // Warm-up: the day's partition exists, statements are prepared.
    store
        .commit(&[batch("live", 1_000_000, LIVE_TAGS, 1, T0)])
        .await?;
    let (mut copy, mut copy_cpu, mut commit, mut commit_cpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut roll, mut roll_cpu) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        reset(c).await?;
        let cpu0 = db_cpu_s(c, db).await?;
        copy.push(total / raw_copy(c, &rows, LIVE_TAGS as usize).await?.as_secs_f64());
        copy_cpu.push(db_cpu_s(c, db).await? - cpu0);
        reset(c).await?;
        let cpu0 = db_cpu_s(c, db).await?;
        let start = Instant::now();
        for b in &batches {
            let out = store.commit(std::slice::from_ref(b)).await?;
            assert!(matches!(out[0], CommitOutcome::Stored { .. }), "{out:?}");
        }
        commit.push(total / start.elapsed().as_secs_f64());
        commit_cpu.push(db_cpu_s(c, db).await? - cpu0);
        let cpu0 = db_cpu_s(c, db).await?;
        let start = Instant::now();
        roll_all(store).await?;
        roll.push(start.elapsed().as_secs_f64());
        roll_cpu.push(db_cpu_s(c, db).await? - cpu0);
    }
    println!(
        "(a2) live shape: {} readings, {n_batches} batches of {LIVE_TAGS} tags x 1 reading, median of {REPS}:",
        total as u64
    );
    println!(
        "    raw binary COPY, one transaction per batch  {:>10.0} readings/s  db backends {:.2} CPU s",
        median(copy),
        median(copy_cpu)
    );
    println!(
        "    PgStore::commit, 1 batch per call           {:>10.0} readings/s  db backends {:.2} CPU s",
        median(commit),
        median(commit_cpu)
    );
    println!(
        "    rollups of the pending minutes afterwards   {:>10.2} s             db backends {:.2} CPU s",
        median(roll),
        median(roll_cpu)
    );
    Ok(())
}

async fn run_in(
    db: &str,
    layout: &str,
    mode: TimescaleMode,
    scale: i64,
    only_e2e: bool,
) -> Res<()> {
    let store = PgStore::connect(
        &format!("{} dbname={db}", server()),
        PgOptions {
            timescale: mode,
            ..PgOptions::default()
        },
    )
    .await?;
    let described = store.migrate().await?;
    println!("\n== {layout}: {described}");
    let mut c = connect(db).await?;
    if only_a2() {
        a2(&store, &mut c, db, scale).await?;
        store.close();
        return Ok(());
    }
    if !only_e2e {
        ab(&store, &mut c, scale).await?;
        a2(&store, &mut c, db, scale).await?;
    }

    // ---- (c) end to end through MQTT vs raw COPY ----
    if tokio::net::TcpStream::connect(("127.0.0.1", BROKER_PORT))
        .await
        .is_err()
    {
        println!("(c) SKIPPED: no MQTT broker on 127.0.0.1:{BROKER_PORT}");
    } else {
        let agents = e2e_agents(scale)?;
        for max in [64, 16] {
            e2e(db, mode, &mut c, &agents, max).await?;
        }
    }
    store.close();
    Ok(())
}

/// Parts (a) and (b).
async fn ab(store: &PgStore, c: &mut tokio_postgres::Client, scale: i64) -> Res<()> {
    // ---- (a) commit() vs raw COPY ----
    let n_batches = (200 / scale) as u64;
    let names: Vec<String> = (0..TAGS).map(|i| format!("tank/T{i:03}.level")).collect();
    store.birth(&birth("a", &names), T0).await?;
    let ids: Vec<i64> = {
        let tags = store.tags(Some("a"), None).await?;
        names
            .iter()
            .map(|n| {
                tags.iter()
                    .find(|t| &t.name == n)
                    .map(|t| t.id)
                    .ok_or("tag")
            })
            .collect::<Result<_, _>>()?
    };
    let batches: Vec<wire::Batch> = (0..n_batches)
        .map(|k| batch("a", k, TAGS, PER_TAG, T0 + k as i64 * PER_TAG * 1000))
        .collect();
    let rows: Vec<(i64, i64, f64)> = batches
        .iter()
        .flat_map(|b| b.readings.iter())
        .map(|r| {
            let v = match r.value {
                Some(wire::WireValue::Float(f)) => f,
                _ => 0.0,
            };
            (ids[r.tag as usize], r.ts_ms, v)
        })
        .collect();
    let total = rows.len() as f64;
    assert_eq!(batches[0].readings.len(), BATCH);
    // Warm-up: partitions/chunks of the day exist, statements are prepared.
    store.commit(&batches[..1]).await?;
    let (mut one, mut chunked, mut commit, mut commit10) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..REPS {
        reset(c).await?;
        one.push(total / raw_copy(c, &rows, rows.len()).await?.as_secs_f64());
        reset(c).await?;
        chunked.push(total / raw_copy(c, &rows, BATCH).await?.as_secs_f64());
        reset(c).await?;
        let start = Instant::now();
        for b in &batches {
            let out = store.commit(std::slice::from_ref(b)).await?;
            assert!(matches!(out[0], CommitOutcome::Stored { .. }), "{out:?}");
        }
        commit.push(total / start.elapsed().as_secs_f64());
        reset(c).await?;
        let start = Instant::now();
        for slice in batches.chunks(10) {
            let out = store.commit(slice).await?;
            assert!(
                out.iter()
                    .all(|o| matches!(o, CommitOutcome::Stored { .. })),
                "{out:?}"
            );
        }
        commit10.push(total / start.elapsed().as_secs_f64());
    }
    let (one, chunked, commit, commit10) = (
        median(one),
        median(chunked),
        median(commit),
        median(commit10),
    );
    println!(
        "(a) {} readings, batches of {BATCH} ({TAGS} tags x {PER_TAG} s), median of {REPS}:",
        total as u64
    );
    println!("    raw binary COPY, one COPY of all rows             {one:>10.0} readings/s");
    println!("    raw binary COPY, one transaction per {BATCH}       {chunked:>10.0} readings/s");
    println!("    PgStore::commit, 1 batch per call (transaction)   {commit:>10.0} readings/s");
    println!("    PgStore::commit, 10 batches per call              {commit10:>10.0} readings/s");
    println!(
        "    commit(1 batch)   / raw COPY per {BATCH}: {:.2}x   / raw single COPY: {:.2}x",
        commit / chunked,
        commit / one
    );
    println!(
        "    commit(10 batches)/ raw COPY per {BATCH}: {:.2}x   / raw single COPY: {:.2}x",
        commit10 / chunked,
        commit10 / one
    );

    // ---- (b) series over 30 days of 1 s data ----
    let days = 30 / scale;
    let secs = days * 86_400;
    store
        .birth(&birth("b", &["tank/T900.level".to_string()]), T0)
        .await?;
    let tag = store.tags(Some("b"), None).await?[0].id;
    let start = Instant::now();
    let mut k = 0u64;
    let mut s = 0i64;
    while s < secs {
        let n = (secs - s).min(BATCH as i64);
        let mut b = batch("b", k, 1, n, T0 + s * 1000);
        // Some bad readings, as a real feed has.
        for r in b.readings.iter_mut().step_by(997) {
            r.quality = wire::Quality::BadCommunication;
            r.value = None;
        }
        store.commit(&[b]).await?;
        s += n;
        k += 1;
    }
    let load = start.elapsed();
    let start = Instant::now();
    store.roll_all().await?;
    let rolled = start.elapsed();
    for t in ["readings", "rollup_1m", "rollup_1h"] {
        c.batch_execute(&format!("VACUUM ANALYZE flowsquare.{t}"))
            .await?;
    }
    println!(
        "(b) loaded {secs} readings of one tag ({days} days of 1 s) through commit() in {:.1} s ({:.0} readings/s)",
        load.as_secs_f64(),
        secs as f64 / load.as_secs_f64()
    );
    println!(
        "    then rolled up (every minute and hour pending) in {:.1} s",
        rolled.as_secs_f64()
    );
    let to = T0 + secs * 1000;
    let label = format!("series, {days} days by 1 h");
    let cases: [(&str, i64, i64, bool); 5] = [
        (&label, to, 3_600_000, false),
        ("same from raw readings only", to, 3_600_000, true),
        ("series, 1 day by 1 min", T0 + 86_400_000, 60_000, false),
        (
            "series, 7 days by 15 min",
            T0 + 7 * 86_400_000,
            900_000,
            false,
        ),
        (
            "series, 1 day by 90 s (raw)",
            T0 + 86_400_000,
            90_000,
            false,
        ),
    ];
    for (what, to, step, raw) in cases {
        let mut times = Vec::new();
        let mut buckets = 0;
        for i in 0..6 {
            let start = Instant::now();
            let out = if raw {
                store.series_from_raw(tag, T0, to, step).await?
            } else {
                store.series(tag, T0, to, step).await?
            };
            if i > 0 {
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            buckets = out.len();
            let count: i64 = out.iter().map(|b| b.count).sum();
            assert_eq!(count, (to - T0).min(secs * 1000) / 1000, "{what}");
        }
        println!(
            "    {what:<32} {buckets:>5} buckets  median of 5: {:>8.1} ms",
            median(times)
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let scale = if std::env::args().any(|a| a == "--quick") {
        10
    } else {
        1
    };
    let admin = match connect("postgres").await {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED: PostgreSQL not reachable ({e})");
            return Ok(());
        }
    };
    // Databases of earlier runs that died (panic, SIGPIPE) before dropping theirs.
    for row in admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'fs\\_bench\\_%'",
            &[],
        )
        .await?
    {
        let name: String = row.get(0);
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| {
            p != std::process::id() && !std::path::Path::new(&format!("/proc/{p}")).exists()
        }) {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
        }
    }
    let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    println!("PostgreSQL {version}");
    run("native", TimescaleMode::Off, scale).await?;
    let ts = admin
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await?
        .is_some();
    let preload: String = admin
        .query_one("SHOW shared_preload_libraries", &[])
        .await?
        .get(0);
    if ts && preload.contains("timescaledb") {
        run("timescaledb", TimescaleMode::Require, scale).await?;
    } else {
        println!("\nSKIPPED timescaledb: extension not installed or not preloaded");
    }
    Ok(())
}
