//! Event capture on an OPC UA device, against the site simulator's async-opcua server
//! (in-process, real sockets) and its gantry batch-record table: records with their fields,
//! rollover 9999 → 0 without a gap, a skipped record reported as a missed-event gap of 1, and
//! the handshake written to the server's `Ack` node, capture resumed after a server restart, and
//! `read --once` (no handshake).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{map, Running};
use flowsquare_wire::{Event, WireValue};
use site_sim::opcua::{OpcUaGantry, OpcUaGantryConfig, OpcUaSim, OpcUaSimConfig};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);

struct Bay {
    _dir: tempfile::TempDir,
    sim: OpcUaSim,
    gantry: Arc<OpcUaGantry>,
}

impl Bay {
    async fn start(cfg: OpcUaGantryConfig) -> Bay {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = OpcUaSimConfig::new(dir.path().join("server-pki"), Duration::from_secs(3600));
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let sim = OpcUaSim::start(c, l).await.expect("opcua sim");
        let gantry = sim.gantry(cfg);
        Bay {
            _dir: dir,
            sim,
            gantry,
        }
    }

    fn tag_map(&self, handshake: bool) -> String {
        let dir: &Path = self._dir.path();
        format!(
            r#"[agent]
site = "t"
id = "gw"
metrics = "off"

[buffer]
path = "{}/buffer.db"

[[device]]
name = "bay1"
protocol = "opcua"
endpoint = "{}"
mode = "polling"
poll_interval = "1s"
pki_dir = "{}/agent-pki"
{}"#,
            dir.display(),
            self.sim.endpoint,
            dir.display(),
            self.gantry.agent_event_toml("bay1-batch", handshake)
        )
    }
}

fn field<'a>(e: &'a Event, name: &str) -> &'a WireValue {
    e.fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("field {name} missing in {e:?}"))
}

fn has_seq(evs: &[Event], seq: u64) -> bool {
    evs.iter().any(|e| e.seq == seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_batch_records_are_captured_with_their_fields() {
    let bay = Bay::start(OpcUaGantryConfig::default()).await;
    let r1 = bay.gantry.next_batch();
    let mut run = Running::start(&map(&bay.tag_map(false)));
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 1)).await);
    let r2 = bay.gantry.next_batch();
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 2)).await);
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_eq!(evs.len(), 2, "{evs:?}");
    for (e, r) in evs.iter().zip([r1, r2]) {
        assert_eq!(e.source, "bay1-batch");
        assert_eq!(e.kind, "gantry-batch");
        assert_eq!(field(e, "plc_seq"), &WireValue::Int(i64::from(r.seq)));
        assert_eq!(field(e, "bay"), &WireValue::Int(i64::from(r.bay)));
        assert_eq!(field(e, "bol"), &WireValue::Text(r.bol.clone()));
        assert_eq!(field(e, "product"), &WireValue::Text("ULP95".into()));
        assert_eq!(field(e, "gross_volume"), &WireValue::Float(r.gross_volume));
        assert_eq!(
            field(e, "net_standard_volume"),
            &WireValue::Float(r.net_standard_volume)
        );
        assert!(!e.fields.iter().any(|(n, _)| n == "bad_fields"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_rollover_9999_to_0_is_not_a_gap() {
    let bay = Bay::start(OpcUaGantryConfig {
        start_seq: 9997,
        ..OpcUaGantryConfig::default()
    })
    .await;
    bay.gantry.next_batch(); // 9998
    let mut run = Running::start(&map(&bay.tag_map(false)));
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 9998)).await);
    for ext in [9999, 10_000, 10_001] {
        bay.gantry.next_batch();
        assert!(
            run.until_events(WAIT, |e, _| has_seq(e, ext)).await,
            "record {ext}"
        );
    }
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert!(gaps.is_empty(), "no gap across the rollover: {gaps:?}");
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![9998, 9999, 10_000, 10_001]
    );
    let plc: Vec<&WireValue> = evs.iter().map(|e| field(e, "plc_seq")).collect();
    assert_eq!(
        plc,
        vec![
            &WireValue::Int(9998),
            &WireValue::Int(9999),
            &WireValue::Int(0),
            &WireValue::Int(1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_skipped_record_is_one_missed_event_gap() {
    let bay = Bay::start(OpcUaGantryConfig {
        start_seq: 40,
        ..OpcUaGantryConfig::default()
    })
    .await;
    bay.gantry.next_batch(); // 41
    let mut run = Running::start(&map(&bay.tag_map(false)));
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 41)).await);
    bay.gantry.skip(1); // 42 never shown
    bay.gantry.next_batch(); // 43
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 43)).await);
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![41, 43]);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].reason, edge_agent::model::GapReason::MissedEvent);
    assert_eq!(gaps[0].count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_handshake_is_written_and_seen_by_the_server() {
    let bay = Bay::start(OpcUaGantryConfig::default()).await;
    bay.gantry.next_batch(); // 1
    assert!(!bay.gantry.acked());
    let mut run = Running::start(&map(&bay.tag_map(true)));
    assert!(bay.gantry.wait_for_ack(WAIT).await, "record 1 acknowledged");
    assert_eq!(bay.gantry.ack(), Some(1));
    bay.gantry.next_batch(); // 2
    assert!(!bay.gantry.acked());
    assert!(bay.gantry.wait_for_ack(WAIT).await, "record 2 acknowledged");
    assert_eq!(bay.gantry.ack(), Some(2), "ack carries the sequence number");
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 2)).await);
    let (evs, _) = run.captured();
    run.stop().await;
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_capture_resumes_after_the_server_restarts() {
    let Bay { _dir, sim, gantry } = Bay::start(OpcUaGantryConfig {
        start_seq: 10,
        ..OpcUaGantryConfig::default()
    })
    .await;
    gantry.next_batch(); // 11
    let bay = Bay { _dir, sim, gantry };
    let mut run = Running::start(&map(&bay.tag_map(true)));
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 11)).await);
    assert!(bay.gantry.wait_for_ack(WAIT).await);
    // The server goes away (the session breaks) and comes back on the same port, the PLC
    // having completed the next record meanwhile.
    let Bay { _dir, sim, .. } = bay;
    let addr = sim.addr;
    sim.stop().await;
    let deadline = std::time::Instant::now() + WAIT;
    let l = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            // The port is free again as soon as the old listener is gone.
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::task::yield_now().await
            }
            Err(e) => panic!("rebind {addr}: {e}"),
        }
    };
    let c = OpcUaSimConfig::new(_dir.path().join("server-pki"), Duration::from_secs(3600));
    let sim = OpcUaSim::start(c, l).await.expect("opcua sim again");
    let gantry = sim.gantry(OpcUaGantryConfig {
        start_seq: 11,
        ..OpcUaGantryConfig::default()
    });
    gantry.next_batch(); // 12
    assert!(
        run.until_events(WAIT, |e, _| has_seq(e, 12)).await,
        "record 12 after the reconnect"
    );
    assert!(
        gantry.wait_for_ack(WAIT).await,
        "acknowledged on the new session"
    );
    let (evs, gaps) = run.captured();
    run.stop().await;
    sim.stop().await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![11, 12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_read_once_shows_the_record_on_display_and_writes_no_handshake() {
    let bay = Bay::start(OpcUaGantryConfig {
        start_seq: 41,
        ..OpcUaGantryConfig::default()
    })
    .await;
    let r = bay.gantry.next_batch(); // 42
    let m = map(&bay.tag_map(true));
    let out = edge_agent::drivers::read_events_once(&m).await;
    assert_eq!(out.len(), 1);
    let (name, res) = &out[0];
    assert_eq!(name, "bay1-batch");
    let (trigger, e) = res.as_ref().expect("read");
    assert_eq!(*trigger, 42);
    assert_eq!(field(e, "bol"), &WireValue::Text(r.bol));
    assert_eq!(bay.gantry.ack(), Some(0), "read --once never acknowledges");
}

/// A batch table just populated (sequence 0, every field zero or empty) shows no record: the
/// agent skips it (counted once), reports no gap, and captures the first real batch as seq 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_blank_record_at_start_is_not_an_event() {
    let bay = Bay::start(OpcUaGantryConfig::default()).await;
    let mut run = Running::start(&map(&bay.tag_map(false)));
    let blank = |run: &Running| {
        run.acq
            .as_ref()
            .map(|a| a.stats[0].extras())
            .unwrap_or_default()
            .into_iter()
            .find(|(n, _)| *n == "events_blank_skipped")
            .map_or(0.0, |(_, f)| f.value)
    };
    assert!(
        run.wait_for(WAIT, |run| blank(run) >= 1.0).await,
        "blank record seen"
    );
    let (evs, gaps) = run.captured();
    assert!(evs.is_empty(), "{evs:?}");
    assert!(gaps.is_empty(), "{gaps:?}");
    bay.gantry.next_batch();
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 1)).await);
    let (evs, gaps) = run.captured();
    let skipped = blank(&run);
    run.stop().await;
    assert_eq!(skipped, 1.0, "skipped once, not at every poll");
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
    assert!(gaps.is_empty(), "{gaps:?}");
}
