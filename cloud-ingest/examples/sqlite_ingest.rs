//! Throughput of the embedded SQLite store: 1M synthetic tank-farm readings (100 tags) committed
//! in batches of 5,000, one batch per `commit` call, then ten batches per call, each into a
//! fresh database file in a temporary directory.
//!
//! `cargo run -p cloud-ingest --example sqlite_ingest --release`

use std::time::Instant;

use cloud_ingest::store::sqlite::SqliteStore;
use cloud_ingest::store::{CommitOutcome, Store};
use flowsquare_wire as wire;

const TAGS: usize = 100;
const READINGS: usize = 1_000_000;
const BATCH: usize = 5_000;

fn birth() -> wire::Birth {
    wire::Birth {
        v: 1,
        site: "terminal-01".into(),
        agent: "gw-01".into(),
        agent_version: "0.1.0".into(),
        config_hash: "sha256:5e1f0c".into(),
        started_ms: 1_700_000_000_000,
        devices: vec![wire::DeviceInfo {
            name: "plc".into(),
            protocol: "modbus-tcp".into(),
            description: None,
        }],
        tags: (0..TAGS)
            .map(|i| wire::TagInfo {
                id: i as u32,
                name: format!("farm/tag-{i:03}"),
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

/// 1M readings in poll order, cut into batches of 5,000 sorted the way `decode` returns them.
fn batches() -> Vec<wire::Batch> {
    let readings = wire::synth::TankFarm::new(TAGS, READINGS / TAGS).readings();
    readings
        .chunks(BATCH)
        .enumerate()
        .map(|(i, chunk)| {
            let mut b = wire::Batch::new(
                "terminal-01",
                "gw-01",
                i as u64 + 1,
                "sha256:5e1f0c",
                chunk[0].ts_ms,
            );
            b.readings = chunk.to_vec();
            b.sort_readings();
            b
        })
        .collect()
}

async fn run(per_call: usize, batches: &[wire::Batch]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ingest.db");
    let store = SqliteStore::open(&path)?;
    let what = store.migrate().await?;
    store.birth(&birth(), 1_700_000_000_000).await?;
    let start = Instant::now();
    let mut stored = 0u64;
    for call in batches.chunks(per_call) {
        for outcome in store.commit(call).await? {
            match outcome {
                CommitOutcome::Stored { readings, .. } => stored += readings,
                other => anyhow::bail!("unexpected outcome {other:?}"),
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let count = store.count_readings(None, i64::MIN, i64::MAX).await?;
    anyhow::ensure!(count == stored as i64, "stored {stored}, counted {count}");
    let bytes: u64 = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{what}: {stored} readings, {} batches of {BATCH}, {per_call} batch(es) per commit: {secs:.2} s = {:.0} readings/s; files {:.1} MB ({:.1} B/reading)",
        batches.len(),
        stored as f64 / secs,
        bytes as f64 / 1e6,
        bytes as f64 / stored as f64
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let batches = batches();
    run(1, &batches).await?;
    run(10, &batches).await?;
    Ok(())
}
