//! Event capture against the simulated gantry batch controller (in-process, real Modbus TCP
//! sockets): records with all their fields, rollover 9999 → 0 without a gap, skipped records
//! reported as missed-event gaps with their count, and the handshake seen by the PLC. The
//! restart with a persisted cursor and the way through buffer and uplink are in
//! `events_store_and_forward.rs` (agent binary, private Mosquitto).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{map, Running, SimTcp};
use edge_agent::model::Quality;
use flowsquare_tests::PtyPair;
use flowsquare_wire::{Event, WireValue};
use site_sim::modbus::{Ack, Gantry, GantryConfig, RegisterKind};

const WAIT: Duration = Duration::from_secs(10);

struct Bay {
    sim: SimTcp,
    gantry: Arc<Gantry>,
}

impl Bay {
    async fn start(cfg: GantryConfig) -> Bay {
        let sim = SimTcp::start("[[unit]]\nid = 1\n").await;
        let unit = sim.sim.unit(1).expect("unit 1").clone();
        Bay {
            gantry: Gantry::new(unit, cfg),
            sim,
        }
    }

    fn tag_map(&self) -> String {
        format!(
            r#"[agent]
site = "t"
id = "gw"
metrics = "off"

[[device]]
name = "bay1"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {}
poll_interval = "20ms"
timeout = "500ms"
{}"#,
            self.sim.addr.port(),
            self.gantry.agent_event_toml("bay1-batch")
        )
    }

    /// Wait until the agent read the trigger at least `n` more times.
    async fn polls(&self, n: u64) {
        let u = self.sim.sim.unit(1).expect("unit");
        let target = u.requests() + n;
        assert!(u.wait_for_requests(target, WAIT).await, "agent polls");
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
async fn batch_records_are_captured_with_all_their_fields() {
    let bay = Bay::start(GantryConfig::default()).await;
    let r1 = bay.gantry.complete_batch();
    let mut run = Running::start(&map(&bay.tag_map()));
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 1)).await);
    let r2 = bay.gantry.complete_batch();
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 2)).await);
    bay.polls(20).await;
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    for (e, r) in evs.iter().zip([&r1, &r2]) {
        assert_eq!(e.source, "bay1-batch");
        assert_eq!(e.kind, "gantry-batch");
        assert_eq!(field(e, "plc_seq"), &WireValue::Int(i64::from(r.seq)));
        assert_eq!(field(e, "bay"), &WireValue::Int(i64::from(r.bay)));
        assert_eq!(field(e, "arm"), &WireValue::Int(i64::from(r.arm)));
        assert_eq!(
            field(e, "compartment"),
            &WireValue::Int(i64::from(r.compartment))
        );
        assert_eq!(field(e, "product"), &WireValue::Text(r.product.clone()));
        assert_eq!(field(e, "bol"), &WireValue::Text(r.bol.clone()));
        assert_eq!(field(e, "preset"), &WireValue::Int(i64::from(r.preset)));
        for (name, v) in [
            ("gross_volume", r.gross),
            ("net_standard_volume", r.nsv),
            ("avg_temperature", r.avg_temp),
            ("density", r.density),
            ("meter_factor", r.meter_factor),
        ] {
            // f32 registers are carried as their shortest decimal (1.0002, not 1.00020003…).
            match field(e, name) {
                WireValue::Float(x) => assert_eq!(*x as f32, v, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        for (name, v) in [
            ("start_time", r.start_time),
            ("end_time", r.end_time),
            ("start_totalizer", r.start_total),
            ("end_totalizer", r.end_total),
        ] {
            assert_eq!(field(e, name), &WireValue::Int(i64::from(v)), "{name}");
        }
        // The totalizers let the cloud check the gross volume.
        assert_eq!(
            f64::from(r.end_total - r.start_total),
            f64::from(r.gross),
            "gross = end − start"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_9999_to_0_is_not_a_gap() {
    let bay = Bay::start(GantryConfig {
        start_seq: 9997,
        ..GantryConfig::default()
    })
    .await;
    bay.gantry.complete_batch(); // 9998
    let mut run = Running::start(&map(&bay.tag_map()));
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 9998)).await);
    for ext in [9999, 10_000, 10_001] {
        bay.gantry.complete_batch();
        assert!(
            run.until_events(WAIT, |e, _| has_seq(e, ext)).await,
            "record {ext}"
        );
    }
    bay.polls(10).await;
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert!(gaps.is_empty(), "no gap across the rollover: {gaps:?}");
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![9998, 9999, 10_000, 10_001],
        "the extended number keeps counting"
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
async fn skipped_records_are_reported_as_missed_event_gaps_with_their_count() {
    let bay = Bay::start(GantryConfig {
        start_seq: 9990,
        ..GantryConfig::default()
    })
    .await;
    bay.gantry.complete_batch(); // 9991
    let mut run = Running::start(&map(&bay.tag_map()));
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 9991)).await);
    // One record skipped.
    bay.gantry.skip(1);
    bay.gantry.complete_batch(); // 9993
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 9993)).await);
    // Several, across the rollover: 9994..=9999 and 0 skipped, 1 is the next record.
    bay.gantry.skip(7);
    let r = bay.gantry.complete_batch();
    assert_eq!(r.seq, 1);
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 10_001)).await);
    bay.polls(10).await;
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![9991, 9993, 10_001]
    );
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    assert!(gaps
        .iter()
        .all(|g| g.reason == edge_agent::model::GapReason::MissedEvent));
    assert_eq!(gaps.iter().map(|g| g.count).collect::<Vec<_>>(), vec![1, 7]);
    // The totalizers show the volume of the records never seen (measurement.md §3).
    let total = |e: &Event, name: &str| match field(e, name) {
        WireValue::Int(v) => *v,
        other => panic!("{name}: {other:?}"),
    };
    for w in evs.windows(2) {
        assert!(
            total(&w[1], "start_totalizer") > total(&w[0], "end_totalizer"),
            "a gap in the records is a jump in the totalizer"
        );
    }
    assert!(gaps.iter().all(|g| g.range.start <= g.range.end));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coil_handshake_is_written_and_seen_by_the_plc() {
    let bay = Bay::start(GantryConfig {
        ack: Ack::Coil,
        ack_address: 100,
        ..GantryConfig::default()
    })
    .await;
    bay.gantry.complete_batch();
    assert!(!bay.gantry.acked());
    let mut run = Running::start(&map(&bay.tag_map()));
    assert!(bay.gantry.wait_for_ack(WAIT).await, "record 1 acknowledged");
    // The controller clears the ack with the next record; the agent acknowledges it again.
    bay.gantry.complete_batch();
    assert!(!bay.gantry.acked());
    assert!(bay.gantry.wait_for_ack(WAIT).await, "record 2 acknowledged");
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 2)).await);
    let (evs, _) = run.captured();
    run.stop().await;
    assert_eq!(evs.len(), 2);
    let acq_writes = bay.sim.sim.unit(1).expect("unit").stats().writes;
    assert_eq!(acq_writes, 2, "one handshake write per record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequence_handshake_writes_the_plc_number_into_a_register() {
    let bay = Bay::start(GantryConfig {
        ack: Ack::Register,
        ack_address: 140,
        start_seq: 9998,
        ..GantryConfig::default()
    })
    .await;
    bay.gantry.complete_batch(); // 9999
    let mut run = Running::start(&map(&bay.tag_map()));
    assert!(bay.gantry.wait_for_ack(WAIT).await);
    let unit = bay.sim.sim.unit(1).expect("unit").clone();
    assert_eq!(unit.words(RegisterKind::Holding, 140, 1), vec![9999]);
    bay.gantry.complete_batch(); // 0
    assert!(bay.gantry.wait_for_ack(WAIT).await);
    assert_eq!(unit.words(RegisterKind::Holding, 140, 1), vec![0]);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_answering_loses_no_record() {
    let mut bay = Bay::start(GantryConfig::default()).await;
    bay.gantry.complete_batch();
    let mut run = Running::start(&map(&bay.tag_map()));
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 1)).await);
    // The PLC goes off the network; a batch completes meanwhile.
    bay.sim.stop().await;
    bay.gantry.complete_batch();
    let sim = bay.sim.sim.clone();
    bay.sim = SimTcp::serve(sim, &format!("127.0.0.1:{}", bay.sim.addr.port())).await;
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 2)).await);
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(gaps.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_trigger_fires_on_each_rise_and_the_handshake_resets_it() {
    let sim = SimTcp::start("[[unit]]\nid = 1\n").await;
    let unit = sim.sim.unit(1).expect("unit").clone();
    let text = format!(
        r#"[agent]
site = "t"
id = "gw"
metrics = "off"

[[device]]
name = "bay1"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {}
poll_interval = "20ms"

  [[device.event]]
  name = "bay1-delivery"
  kind = "delivery"
  trigger = {{ register = "coil", address = 7, mode = "flag" }}
  handshake = {{ register = "coil", address = 7, value = false }}
  fields = [ {{ name = "ticket", register = "holding", address = 200, type = "u32" }} ]
"#,
        sim.addr.port()
    );
    let flag = |on: bool| unit.set_bits(RegisterKind::Coil, 7, &[on]).expect("flag");
    let ticket = |n: u16| {
        unit.set_words(RegisterKind::Holding, 200, &[0, n])
            .expect("ticket")
    };
    let mut run = Running::start(&map(&text));
    ticket(1001);
    flag(true);
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 1)).await);
    let reset = async {
        let mut w = unit.subscribe_writes();
        while unit.bits(RegisterKind::Coil, 7, 1) != vec![false] {
            let _ = w.recv().await;
        }
    };
    assert!(
        tokio::time::timeout(WAIT, reset).await.is_ok(),
        "flag reset by the handshake"
    );
    ticket(1002);
    flag(true);
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 2)).await);
    let u = sim.sim.unit(1).expect("unit");
    assert!(u.wait_for_requests(u.requests() + 20, WAIT).await);
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert!(gaps.is_empty());
    assert_eq!(evs.len(), 2, "one record per rise: {evs:?}");
    assert_eq!(field(&evs[0], "ticket"), &WireValue::Int(1001));
    assert_eq!(field(&evs[1], "ticket"), &WireValue::Int(1002));
    assert!(evs.iter().all(|e| e.kind == "delivery"));
    assert!(
        evs[0].fields.iter().all(|(n, _)| n != "plc_seq"),
        "a flag has no PLC sequence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_an_rtu_bus_share_the_link_with_the_tag_polling() {
    use site_sim::modbus::server::{serve_rtu_path, SerialConfig};
    use site_sim::modbus::Simulator;
    let pty = PtyPair::new().expect("pty pair (socat)");
    let sim = Arc::new(
        Simulator::from_toml_str(
            "[[unit]]\nid = 1\n[[unit]]\nid = 2\n[[unit.register]]\nkind = \"input\"\naddress = 0\ntype = \"f32\"\nvalue = 22.5\n",
        )
        .expect("sim"),
    );
    let gantry = Gantry::new(
        sim.unit(1).expect("unit").clone(),
        GantryConfig {
            ack: Ack::Coil,
            start_seq: 9998,
            ..GantryConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = SerialConfig::new(pty.a.display().to_string(), 38400);
    let s = sim.clone();
    tokio::spawn(async move {
        let _ = serve_rtu_path(&cfg, s, async move {
            let _ = stopped.await;
        })
        .await;
    });
    let path = pty.b.display().to_string();
    let text = format!(
        r#"[agent]
site = "t"
id = "gw"
metrics = "off"

[[device]]
name = "bay1"
protocol = "modbus-rtu"
serial = "{path}"
baud = 38400
unit = 1
poll_interval = "100ms"
timeout = "300ms"
{}
[[device]]
name = "meter2"
protocol = "modbus-rtu"
serial = "{path}"
baud = 38400
unit = 2
poll_interval = "100ms"
timeout = "300ms"
  [[device.tag]]
  name = "m2/value"
  register = "input"
  address = 0
  type = "f32"
"#,
        gantry.agent_event_toml("bay1-batch")
    );
    gantry.complete_batch(); // 9999
    let mut run = Running::start(&map(&text));
    assert!(
        gantry.wait_for_ack(WAIT).await,
        "record 9999 acknowledged over RTU"
    );
    gantry.complete_batch(); // 0
    assert!(
        gantry.wait_for_ack(WAIT).await,
        "record 0 acknowledged over RTU"
    );
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 10_000)).await);
    assert!(
        run.until(WAIT, |rs| rs
            .iter()
            .filter(|r| r.tag == 0 && r.quality == Quality::Good)
            .count()
            >= 5)
            .await,
        "the other unit keeps being read"
    );
    let (evs, gaps) = run.captured();
    run.stop().await;
    let _ = stop.send(());
    assert!(gaps.is_empty());
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![9999, 10_000]
    );
    assert_eq!(field(&evs[1], "bol"), &WireValue::Text("BOL-000002".into()));
}

/// A controller just powered up shows a blank record (sequence 0, every register zero): it is
/// not an event and no gap; it is counted; the first real batch is captured as seq 1 without a
/// gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_record_at_start_is_not_an_event() {
    let bay = Bay::start(GantryConfig::default()).await;
    assert_eq!(bay.gantry.seq(), 0);
    let mut run = Running::start(&map(&bay.tag_map()));
    bay.polls(20).await;
    let blank = |run: &Running| {
        run.acq
            .as_ref()
            .map(|a| a.stats[0].extras())
            .unwrap_or_default()
            .into_iter()
            .find(|(n, _)| *n == "events_blank_skipped")
            .map_or(0.0, |(_, f)| f.value)
    };
    assert_eq!(blank(&run), 1.0, "skipped once, not at every poll");
    let (evs, gaps) = run.captured();
    assert!(evs.is_empty(), "{evs:?}");
    assert!(gaps.is_empty(), "{gaps:?}");
    bay.gantry.complete_batch();
    assert!(run.until_events(WAIT, |e, _| has_seq(e, 1)).await);
    bay.polls(10).await;
    let (evs, gaps) = run.captured();
    run.stop().await;
    assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
    assert!(gaps.is_empty(), "{gaps:?}");
}
