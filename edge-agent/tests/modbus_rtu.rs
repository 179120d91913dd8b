//! Modbus RTU acquisition over a pseudo-terminal pair (socat): the simulator serves one end as a
//! multi-unit RS-485 bus, the agent polls the other.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{map, Running};
use edge_agent::model::{Quality, Reading, Value};
use flowsquare_tests::PtyPair;
use site_sim::modbus::server::{serve_rtu_path, SerialConfig};
use site_sim::modbus::{MapConfig, Simulator};
use tokio::sync::oneshot;

const SIM: &str = r#"
[[unit]]
id = 1
[[unit.register]]
kind = "input"
address = 0
type = "f32"
value = 11.5
[[unit]]
id = 2
[[unit.register]]
kind = "input"
address = 0
type = "f32"
value = 22.5
[[unit]]
id = 3
[[unit.register]]
kind = "input"
address = 0
type = "f32"
value = 33.5
"#;

struct Bus {
    pty: PtyPair,
    sim: Arc<Simulator>,
    _stop: oneshot::Sender<()>,
}

async fn bus() -> Bus {
    let pty = PtyPair::new().expect("pty pair (socat)");
    let sim = Arc::new(Simulator::new(&MapConfig::from_toml_str(SIM).expect("map")).expect("sim"));
    let (stop, stopped) = oneshot::channel::<()>();
    let cfg = SerialConfig::new(pty.a.display().to_string(), 19200);
    let s = sim.clone();
    tokio::spawn(async move {
        if let Err(e) = serve_rtu_path(&cfg, s, async move {
            let _ = stopped.await;
        })
        .await
        {
            eprintln!("rtu sim: {e}");
        }
    });
    Bus {
        pty,
        sim,
        _stop: stop,
    }
}

fn agent_map(path: &str, interval: &str, timeout: &str) -> String {
    let mut s = String::from("[agent]\nsite = \"test\"\nid = \"gw\"\n");
    for unit in 1..=3 {
        s.push_str(&format!(
            r#"
[[device]]
name = "unit-{unit}"
protocol = "modbus-rtu"
serial = "{path}"
baud = 19200
unit = {unit}
poll_interval = "{interval}"
timeout = "{timeout}"
  [[device.tag]]
  name = "u{unit}/value"
  register = "input"
  address = 0
  type = "f32"
"#
        ));
    }
    s
}

fn good_times(rs: &[Reading], tag: u32) -> Vec<i64> {
    rs.iter()
        .filter(|r| r.tag == tag && r.quality == Quality::Good)
        .map(|r| r.ts_ms)
        .collect()
}

#[tokio::test]
async fn units_sharing_a_bus_are_read_over_a_pty() {
    let b = bus().await;
    let m = map(&agent_map(&b.pty.b.display().to_string(), "200ms", "300ms"));
    let rs = edge_agent::drivers::read_once(&m, None).await;
    let vals: Vec<Option<Value>> = rs.iter().map(|r| r.value.clone()).collect();
    assert_eq!(
        vals,
        vec![
            Some(Value::Float(11.5)),
            Some(Value::Float(22.5)),
            Some(Value::Float(33.5))
        ],
        "{rs:?}"
    );
}

#[tokio::test]
async fn one_dead_unit_does_not_delay_the_others_beyond_its_timeout() {
    let b = bus().await;
    let interval = 200;
    let timeout = 150;
    let m = map(&agent_map(
        &b.pty.b.display().to_string(),
        &format!("{interval}ms"),
        &format!("{timeout}ms"),
    ));
    b.sim.faults(2).expect("unit 2").set_silent(true);
    let mut run = Running::start(&m);
    // Long enough for unit 2 to time out three times and be skipped.
    let ok = run
        .until(Duration::from_secs(30), |rs| {
            good_times(rs, 0).len() >= 15
                && rs.iter().any(|r| r.tag == 1 && r.quality == Quality::Stale)
        })
        .await;
    run.stop().await;
    assert!(ok, "unit 1 keeps being read and unit 2 is skipped");
    let unit2: Vec<Quality> = run
        .seen
        .iter()
        .filter(|r| r.tag == 1)
        .map(|r| r.quality)
        .collect();
    assert_eq!(
        &unit2[..3],
        &[Quality::BadCommunication; 3],
        "three timeouts, then skipped: {unit2:?}"
    );
    for tag in [0, 2] {
        let t = good_times(&run.seen, tag);
        let worst = t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        // Each unit keeps its interval; the dead unit can push a cycle back by at most its one
        // timeout (plus scheduling slack on a loaded 2-core CI machine).
        assert!(
            worst <= interval + timeout + 250,
            "unit {} worst gap {worst} ms (interval {interval}, timeout {timeout}): {t:?}",
            tag + 1
        );
        assert!(
            run.seen
                .iter()
                .filter(|r| r.tag == tag)
                .all(|r| r.quality == Quality::Good),
            "unit {} all good",
            tag + 1
        );
    }
}

#[tokio::test]
async fn a_wrong_unit_id_in_the_answer_is_bad_decode_and_the_bus_recovers() {
    let b = bus().await;
    let m = map(&agent_map(&b.pty.b.display().to_string(), "100ms", "200ms"));
    b.sim.faults(1).expect("unit 1").set_wrong_unit_every(2);
    let mut run = Running::start(&m);
    let ok = run
        .until(Duration::from_secs(20), |rs| {
            rs.iter()
                .filter(|r| r.tag == 0 && r.quality == Quality::BadDecode)
                .count()
                >= 2
                && rs
                    .iter()
                    .filter(|r| r.tag == 2 && r.quality == Quality::Good)
                    .count()
                    >= 10
        })
        .await;
    run.stop().await;
    assert!(
        ok,
        "wrong-unit answers are bad-decode, the other units stay good"
    );
    assert!(run
        .seen
        .iter()
        .filter(|r| r.tag == 0)
        .any(|r| r.quality == Quality::Good));
}
