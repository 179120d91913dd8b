//! Modbus TCP acquisition against the simulator, in-process over real sockets.

mod common;

use std::time::Duration;

use common::{map, Running, SimTcp};
use edge_agent::drivers::read_once;
use edge_agent::model::{Quality, Value};

const SIM: &str = r#"
[[unit]]
id = 1
[[unit.register]]
kind = "holding"
address = 0
type = "f32"
value = 845.5
[[unit.register]]
kind = "holding"
address = 2
type = "u32"
order = "CDAB"
value = 123456
[[unit.register]]
kind = "holding"
address = 4
type = "i16"
value = -40
[[unit.register]]
kind = "holding"
address = 6
type = "string"
length = 6
value = "TK-101"
[[unit.register]]
kind = "input"
address = 0
type = "f64"
order = "DCBA"
value = 1234567.25
[[unit.register]]
kind = "coil"
address = 5
value = true
[unit.faults]
exception = { code = 2, kind = "holding", from = 100, to = 110 }
"#;

fn agent_map(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
[agent]
site = "test"
id = "gw"

[[device]]
name = "sim"
protocol = "modbus-tcp"
host = "{}"
port = {}
poll_interval = "100ms"
timeout = "300ms"
{extra}
  [[device.tag]]
  name = "t/f32"
  register = "holding"
  address = 0
  type = "f32"
  [[device.tag]]
  name = "t/u32-cdab"
  register = "holding"
  address = 2
  type = "u32"
  order = "CDAB"
  [[device.tag]]
  name = "t/i16-scaled"
  register = "holding"
  address = 4
  type = "i16"
  scale = 0.5
  offset = 100.0
  [[device.tag]]
  name = "t/string"
  register = "holding"
  address = 6
  type = "string"
  length = 6
  [[device.tag]]
  name = "t/f64-dcba"
  register = "input"
  address = 0
  type = "f64"
  order = "DCBA"
  [[device.tag]]
  name = "t/coil"
  register = "coil"
  address = 5
  [[device.tag]]
  name = "t/in-exception-range"
  register = "holding"
  address = 100
"#,
        addr.ip(),
        addr.port()
    )
}

fn value_of(
    m: &edge_agent::config::TagMap,
    rs: &[edge_agent::model::Reading],
    name: &str,
) -> Option<Value> {
    let id = m.tag_by_name(name).expect("tag").id;
    rs.iter()
        .rev()
        .find(|r| r.tag == id)
        .and_then(|r| r.value.clone())
}

#[tokio::test]
async fn one_cycle_decodes_every_type_and_an_exception_leaves_the_other_tags_good() {
    let sim = SimTcp::start(SIM).await;
    let m = map(&agent_map(sim.addr, ""));
    let rs = read_once(&m, None).await;
    assert_eq!(rs.len(), m.tags.len(), "one reading per tag");
    assert_eq!(value_of(&m, &rs, "t/f32"), Some(Value::Float(845.5)));
    assert_eq!(value_of(&m, &rs, "t/u32-cdab"), Some(Value::Int(123_456)));
    assert_eq!(value_of(&m, &rs, "t/i16-scaled"), Some(Value::Float(80.0)));
    assert_eq!(
        value_of(&m, &rs, "t/string"),
        Some(Value::Text("TK-101".into()))
    );
    assert_eq!(
        value_of(&m, &rs, "t/f64-dcba"),
        Some(Value::Float(1_234_567.25))
    );
    assert_eq!(value_of(&m, &rs, "t/coil"), Some(Value::Bool(true)));
    let exc_id = m.tag_by_name("t/in-exception-range").expect("tag").id;
    let exc = rs.iter().find(|r| r.tag == exc_id).expect("reading");
    assert_eq!(exc.quality, Quality::BadDevice);
    assert_eq!(exc.status, Some(2));
    assert!(exc
        .error
        .as_deref()
        .unwrap_or("")
        .contains("illegal data address"));
    assert_eq!(
        rs.iter().filter(|r| r.quality == Quality::Good).count(),
        m.tags.len() - 1
    );
    // Timestamps are wall-clock UTC milliseconds taken at send time.
    let now = edge_agent::model::now_ms();
    assert!(rs.iter().all(|r| (now - r.ts_ms).abs() < 10_000));
}

#[tokio::test]
async fn a_disconnect_marks_tags_bad_and_polling_resumes_after_reconnect() {
    let mut sim = SimTcp::start(SIM).await;
    let addr = sim.addr;
    let m = map(&agent_map(addr, ""));
    let f32_id = m.tag_by_name("t/f32").expect("tag").id;
    let mut run = Running::start(&m);
    let good = |rs: &[edge_agent::model::Reading]| {
        rs.iter()
            .any(|r| r.tag == f32_id && r.quality == Quality::Good)
    };
    assert!(
        run.until(Duration::from_secs(10), good).await,
        "first good reading"
    );

    // The device goes away: readings turn bad-communication (never silently missing).
    sim.stop().await;
    run.seen.clear();
    assert!(
        run.until(Duration::from_secs(10), |rs| {
            rs.iter()
                .any(|r| r.tag == f32_id && r.quality == Quality::BadCommunication)
        })
        .await,
        "bad-communication while the device is down"
    );

    // It comes back on the same address: the agent reconnects by itself (backoff ≤ 60 s, but
    // the first retries are within seconds).
    let _back = SimTcp::serve(sim.sim.clone(), &addr.to_string()).await;
    run.seen.clear();
    assert!(
        run.until(Duration::from_secs(30), good).await,
        "good again after reconnect"
    );
    run.stop().await;
}

#[tokio::test]
async fn garbage_and_wrong_unit_answers_are_bad_decode_counted_and_polling_goes_on() {
    let sim = SimTcp::start(SIM).await;
    let m = map(&agent_map(sim.addr, ""));
    let faults = sim.sim.faults(1).expect("unit 1");
    faults.set_garbage_every(3);
    let mut run = Running::start(&m);
    let ok = run
        .until(Duration::from_secs(20), |rs| {
            let decode = rs
                .iter()
                .filter(|r| r.quality == Quality::BadDecode)
                .count();
            let good = rs.iter().filter(|r| r.quality == Quality::Good).count();
            decode >= 2 && good >= 2 * m.tags.len()
        })
        .await;
    let stats = run.acq.as_ref().expect("running").stats[0].snapshot();
    run.stop().await;
    assert!(
        ok,
        "bad-decode readings and good ones keep coming: {:?}",
        stats
    );
    assert!(stats.decode_errors > 0, "decode errors counted: {stats:?}");
}

#[tokio::test]
async fn a_silent_device_times_out_then_is_skipped_with_stale_tags() {
    let sim = SimTcp::start(SIM).await;
    let m = map(&agent_map(sim.addr, ""));
    sim.sim.faults(1).expect("unit 1").set_silent(true);
    let mut run = Running::start(&m);
    let ok = run
        .until(Duration::from_secs(20), |rs| {
            rs.iter().any(|r| r.quality == Quality::BadCommunication)
                && rs.iter().any(|r| r.quality == Quality::Stale)
        })
        .await;
    let stats = run.acq.as_ref().expect("running").stats[0].snapshot();
    run.stop().await;
    assert!(ok, "timeouts, then stale while skipped: {stats:?}");
    // After a timeout the rest of the cycle is not asked: one timeout per failed cycle.
    assert!(stats.timeouts <= stats.cycles, "{stats:?}");
    assert!(stats.skipped_cycles > 0, "{stats:?}");
}

#[tokio::test]
async fn every_cycle_yields_one_reading_per_tag() {
    let sim = SimTcp::start(SIM).await;
    let m = map(&agent_map(sim.addr, ""));
    let mut run = Running::start(&m);
    assert!(
        run.until(Duration::from_secs(10), |rs| rs.len() >= 5 * m.tags.len())
            .await
    );
    run.stop().await;
    // Drain what was produced before the stop, then count per tag: all equal.
    while let Ok(o) = run.rx.try_recv() {
        if let edge_agent::drivers::Output::Readings(b) = o {
            run.seen.extend(b);
        }
    }
    let mut counts = vec![0usize; m.tags.len()];
    for r in &run.seen {
        counts[r.tag as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
}
