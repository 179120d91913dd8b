//! The buffer through its async API (group commit, lease, ack, events, bounds) and the
//! `edge-agent buffer status|export` commands on a real database file.

use std::process::Command;

use edge_agent::buffer::{Buffer, BufferConfig, LeaseOrder, LeaseRequest};
use edge_agent::config::{parse_str, TagMap};
use edge_agent::model::{Quality, Reading, Value};
use flowsquare_wire as wire;

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");

fn map_text(dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"[agent]
site = "buf"
id = "gw"
metrics = "off"
[buffer]
path = "{}/buffer.db"
{extra}
[[device]]
name = "d"
protocol = "modbus-tcp"
host = "127.0.0.1"
  [[device.tag]]
  name = "a/level"
  register = "holding"
  address = 0
  type = "f32"
  [[device.tag]]
  name = "a/diag"
  register = "holding"
  address = 2
  priority = "low"
"#,
        dir.display()
    )
}

fn map(dir: &std::path::Path, extra: &str) -> TagMap {
    parse_str("buf.toml", &map_text(dir, extra)).expect("map").0
}

fn readings(n: usize, t0: i64) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            Reading::good(
                (i % 2) as u32,
                t0 + (i / 2) as i64 * 1000,
                Value::Float(1000.0 + i as f64 * 0.001),
                500,
            )
        })
        .collect()
}

/// An hour ago, on a whole second (well inside the default 30-day age bound).
fn t0() -> i64 {
    (edge_agent::model::now_ms() - 3_600_000) / 1000 * 1000
}

fn all(max: u64) -> LeaseRequest {
    LeaseRequest {
        max_readings: max,
        order: LeaseOrder::OldestFirst,
        range: i64::MIN..i64::MAX,
        with_gaps: true,
    }
}

#[tokio::test]
async fn readings_go_through_group_commit_lease_and_ack_unchanged() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = map(dir.path(), "");
    let (buf, th) = Buffer::start(&m, &m.buffer).expect("start");
    let mut sent = readings(3000, t0());
    sent.push(Reading::bad(
        0,
        t0() + 999_000,
        Quality::BadDevice,
        "exception 2",
    ));
    buf.append(sent.clone()).await.expect("append");
    buf.flush().await.expect("flush");
    let f = buf.figures().await.expect("figures");
    assert_eq!(f.readings, 3001);
    assert!(f.bytes < 3001 * 8, "compressed: {} bytes", f.bytes);
    let b = buf
        .lease(all(100_000))
        .await
        .expect("lease")
        .expect("batch");
    let decoded = wire::decode(&b.payload).expect("decode");
    assert_eq!(
        (
            decoded.site.as_str(),
            decoded.agent.as_str(),
            decoded.batch_id
        ),
        ("buf", "gw", b.batch_id)
    );
    assert_eq!(decoded.config_hash, m.hash);
    assert_eq!(decoded.readings.len(), 3001);
    let bad = decoded
        .readings
        .iter()
        .find(|r| r.quality == wire::Quality::BadDevice)
        .expect("bad reading");
    assert_eq!(bad.error.as_deref(), Some("exception 2"));
    assert_eq!(buf.ack(b.batch_id).await.expect("ack"), 3001);
    assert_eq!(buf.figures().await.expect("figures").readings, 0);
    drop(buf);
    tokio::task::spawn_blocking(move || th.join())
        .await
        .expect("join");
}

#[tokio::test]
async fn events_are_never_dropped_when_the_buffer_is_full() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut m = map(dir.path(), "");
    m.buffer = BufferConfig {
        max_size: 4096,
        ..m.buffer.clone()
    };
    let (buf, th) = Buffer::start(&m, &m.buffer).expect("start");
    let events: Vec<wire::Event> = (0..50)
        .map(|i| wire::Event {
            source: "gantry-bay-1".into(),
            kind: "gantry-batch".into(),
            seq: i,
            ts_ms: t0() + i as i64,
            fields: vec![
                ("bol".into(), wire::WireValue::Text(format!("BOL-{i}"))),
                ("gross_l".into(), wire::WireValue::Float(30_000.0)),
            ],
        })
        .collect();
    buf.append_events(events).await.expect("events");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for k in 0..20 {
        // Noisy values (incompressible) so that a few thousand readings overflow 4 KiB.
        let noisy: Vec<Reading> = (0..2000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                Reading::good(
                    (i % 2) as u32,
                    t0() + k * 10_000 + i as i64,
                    Value::Float((x >> 11) as f64),
                    0,
                )
            })
            .collect();
        buf.append(noisy).await.expect("append");
        buf.flush().await.expect("flush");
    }
    let f = buf.figures().await.expect("figures");
    assert!(f.dropped_full > 0, "{f:?}");
    let mut events = 0;
    let mut gaps = Vec::new();
    while let Some(b) = buf.lease(all(1_000_000)).await.expect("lease") {
        let d = wire::decode(&b.payload).expect("decode");
        events += d.events.len();
        gaps.extend(d.gaps);
        buf.ack(b.batch_id).await.expect("ack");
    }
    assert_eq!(events, 50, "every event kept");
    assert_eq!(
        gaps.iter().map(|g| g.count).sum::<u64>(),
        f.dropped_full,
        "every drop reported"
    );
    assert!(gaps.iter().all(|g| g.reason == wire::GapReason::BufferFull));
    drop(buf);
    tokio::task::spawn_blocking(move || th.join())
        .await
        .expect("join");
}

fn event(seq: u64) -> wire::Event {
    wire::Event {
        source: "bay1-batch".into(),
        kind: "gantry-batch".into(),
        seq,
        ts_ms: t0() + seq as i64,
        fields: vec![("bol".into(), wire::WireValue::Text(format!("BOL-{seq}")))],
    }
}

#[tokio::test]
async fn the_event_ledger_confirms_commits_drops_duplicates_and_keeps_the_cursor() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = map(dir.path(), "");
    let (buf, th) = Buffer::start(&m, &m.buffer).expect("start");
    let ledger = buf.event_ledger();
    assert_eq!(ledger.cursor("bay1-batch"), None);
    let gap = edge_agent::buffer::GapRow {
        tags: vec![],
        range: t0()..t0() + 5,
        count: 1,
        reason: edge_agent::model::GapReason::MissedEvent,
    };
    buf.append_events_with_gaps(vec![event(5)], vec![gap.clone()])
        .await
        .expect("events");
    assert!(
        ledger
            .wait_committed("bay1-batch", 5, std::time::Duration::from_secs(5))
            .await
    );
    // A re-send after a late confirmation: the duplicate and its gap are dropped.
    buf.append_events_with_gaps(vec![event(5)], vec![gap])
        .await
        .expect("events");
    buf.append_events(vec![event(6)]).await.expect("events");
    assert!(
        ledger
            .wait_committed("bay1-batch", 6, std::time::Duration::from_secs(5))
            .await
    );
    ledger.mark_acked("bay1-batch", 6).await;
    buf.flush().await.expect("flush");
    let f = buf.figures().await.expect("figures");
    assert_eq!((f.readings, f.pending_gaps), (2, 1), "{f:?}");
    drop(ledger);
    drop(buf);
    tokio::task::spawn_blocking(move || th.join())
        .await
        .expect("join");
    // After a restart the cursor is the last committed record, acknowledged.
    let (buf, th) = Buffer::start(&m, &m.buffer).expect("restart");
    let c = buf.event_ledger().cursor("bay1-batch").expect("cursor");
    assert_eq!((c.seq, c.acked), (6, true));
    let mut seqs = Vec::new();
    while let Some(b) = buf.lease(all(1_000_000)).await.expect("lease") {
        seqs.extend(
            wire::decode(&b.payload)
                .expect("decode")
                .events
                .iter()
                .map(|e| e.seq),
        );
        buf.ack(b.batch_id).await.expect("ack");
    }
    seqs.sort_unstable();
    assert_eq!(seqs, vec![5, 6]);
    drop(buf);
    tokio::task::spawn_blocking(move || th.join())
        .await
        .expect("join");
}

#[tokio::test]
async fn buffer_status_and_export_work_on_the_database_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, map_text(dir.path(), "")).expect("cfg");
    let m = map(dir.path(), "");
    let (buf, th) = Buffer::start(&m, &m.buffer).expect("start");
    let start = t0();
    buf.append(readings(5000, start)).await.expect("append");
    buf.flush().await.expect("flush");
    drop(buf);
    tokio::task::spawn_blocking(move || th.join())
        .await
        .expect("join");

    let out = Command::new(BIN)
        .args(["buffer", "status", "--config"])
        .arg(&cfg)
        .args(["--format", "json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["readings"], 5000);
    assert_eq!(v["oldest_unsent"], edge_agent::model::rfc3339_ms(start));
    let text = Command::new(BIN)
        .args(["buffer", "status", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&text.stdout).contains("readings held     5000"));

    let export = |name: &str| -> Vec<u64> {
        let file = dir.path().join(name);
        let out = Command::new(BIN)
            .args(["buffer", "export", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&file)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&file).expect("export file");
        assert!(bytes.starts_with(b"FLOWSQUARE-EXPORT 1\n"));
        let mut pos = 20;
        let mut frames = Vec::new();
        while pos + 4 <= bytes.len() {
            let n = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
                as usize;
            frames.push(bytes[pos + 4..pos + 4 + n].to_vec());
            pos += 4 + n;
        }
        let birth = wire::Birth::decode(&frames[0]).expect("birth first");
        assert_eq!(birth.tags.len(), 2);
        let batches: Vec<wire::Batch> = frames[1..]
            .iter()
            .map(|f| wire::decode(f).expect("batch"))
            .collect();
        assert_eq!(
            batches.iter().map(|b| b.readings.len()).sum::<usize>(),
            5000
        );
        let mut ids: Vec<u64> = batches.iter().map(|b| b.batch_id).collect();
        ids.sort_unstable();
        ids
    };
    let first = export("a.fsx");
    let second = export("b.fsx");
    assert_eq!(
        first, second,
        "exporting again carries the same batch ids (the cloud stores them once)"
    );
}

#[tokio::test]
async fn small_segments_are_merged_without_changing_a_reading() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = map(dir.path(), "");
    let (buf, th) = Buffer::start(&m, &m.buffer).expect("start");
    let start = t0();
    let mut sent = Vec::new();
    // 300 commits of 20 readings: what a lightly loaded agent writes.
    for k in 0..300 {
        let rs = readings(20, start + k * 10_000);
        sent.extend(rs.clone());
        buf.append(rs).await.expect("append");
        buf.flush().await.expect("flush");
    }
    let before = buf.figures().await.expect("figures");
    // Two priority classes (a/diag is low): two segments per commit.
    assert_eq!((before.segments, before.readings), (600, 6000));
    // One lease in the middle stays untouched by compaction.
    let leased = buf
        .lease(LeaseRequest {
            max_readings: 20,
            order: LeaseOrder::NewestFirst,
            range: i64::MIN..i64::MAX,
            with_gaps: false,
        })
        .await
        .expect("lease")
        .expect("batch");
    let merged = buf.compact().await.expect("compact");
    let after = buf.figures().await.expect("figures");
    assert_eq!(merged, 598, "every unleased small segment merged");
    assert_eq!(after.readings, 6000);
    assert!(
        after.segments <= 4,
        "two leased, one merged per class: {after:?}"
    );
    assert!(
        after.bytes * 3 < before.bytes,
        "merged segments compress better: {} -> {} bytes",
        before.bytes,
        after.bytes
    );
    // Everything comes out exactly once, oldest first.
    let mut got = decode_all(&wire::decode(&leased.payload).expect("decode"));
    buf.ack(leased.batch_id).await.expect("ack");
    while let Some(b) = buf.lease(all(100_000)).await.expect("lease") {
        got.extend(decode_all(&wire::decode(&b.payload).expect("decode")));
        buf.ack(b.batch_id).await.expect("ack");
    }
    let mut want: Vec<(u32, i64)> = sent.iter().map(|r| (r.tag, r.ts_ms)).collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    drop(buf);
    tokio::task::spawn_blocking(move || th.join())
        .await
        .expect("join");
}

fn decode_all(b: &wire::Batch) -> Vec<(u32, i64)> {
    b.readings.iter().map(|r| (r.tag, r.ts_ms)).collect()
}

#[tokio::test]
async fn export_skips_an_unreadable_record_reports_it_and_exports_the_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, map_text(dir.path(), "")).expect("cfg");
    let m = map(dir.path(), "");
    let (buf, th) = Buffer::start(&m, &m.buffer).expect("start");
    let epoch = buf.identity().epoch;
    for k in 0..3 {
        buf.append(readings(1000, t0() + k * 1_000_000))
            .await
            .expect("append");
        buf.flush().await.expect("flush");
    }
    drop(buf);
    tokio::task::spawn_blocking(move || th.join())
        .await
        .expect("join");
    // Eight flipped bytes inside the second stored record; SQLite sees nothing wrong.
    let bad: u64 = {
        let c = rusqlite::Connection::open(dir.path().join("buffer.db")).expect("open");
        let (id, count, mut blob): (i64, i64, Vec<u8>) = c
            .query_row(
                "SELECT id, count, blob FROM segment ORDER BY id LIMIT 1 OFFSET 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("segment");
        let mid = blob.len() / 2;
        for b in &mut blob[mid..mid + 8] {
            *b ^= 0xff;
        }
        c.execute(
            "UPDATE segment SET blob = ?1 WHERE id = ?2",
            rusqlite::params![blob, id],
        )
        .expect("flip");
        count as u64
    };
    let file = dir.path().join("x.fsx");
    let out = Command::new(BIN)
        .args(["buffer", "export", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&file)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{bad} readings in unreadable records were skipped"
        )),
        "{stderr}"
    );
    let bytes = std::fs::read(&file).expect("export file");
    let mut pos = 20;
    let mut frames = Vec::new();
    while pos + 4 <= bytes.len() {
        let n = u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
            as usize;
        frames.push(bytes[pos + 4..pos + 4 + n].to_vec());
        pos += 4 + n;
    }
    let birth = wire::Birth::decode(&frames[0]).expect("birth");
    assert_eq!(birth.buffer.map(|b| b.epoch), Some(epoch));
    let batches: Vec<wire::Batch> = frames[1..]
        .iter()
        .map(|f| wire::decode(f).expect("batch"))
        .collect();
    assert!(batches.iter().all(|b| b.buffer_epoch == epoch));
    let readings: usize = batches.iter().map(|b| b.readings.len()).sum();
    let lost: u64 = batches
        .iter()
        .flat_map(|b| &b.gaps)
        .filter(|g| g.reason == wire::GapReason::Other("buffer-damaged".into()) && g.count_known)
        .map(|g| g.count)
        .sum();
    assert_eq!(
        (readings as u64, lost),
        (3000 - bad, bad),
        "the rest exported, the skipped record a gap"
    );
}
