//! Event capture end to end: the `edge-agent` binary captures batch records from the simulated
//! gantry controller (in-process, Modbus TCP), commits them to its SQLite buffer with the
//! definition's cursor, acknowledges them to the PLC, and forwards them through a private
//! Mosquitto to the acknowledging test consumer. Across an orderly restart, a SIGKILL and a
//! handshake that failed before a restart, every record arrives exactly once, skipped records
//! arrive as a missed-event gap, and the birth catalog lists the definition.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::SimTcp;
use flowsquare_tests::mqtt::{ConsumerOptions, Mosquitto, TestConsumer};
use site_sim::modbus::{Ack, ExceptionRule, Gantry, GantryConfig, RegisterKind};

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");
const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    dir: tempfile::TempDir,
    sim: SimTcp,
    gantry: Arc<Gantry>,
    broker: Mosquitto,
    root: String,
}

impl Setup {
    async fn new() -> Setup {
        let sim = SimTcp::start("[[unit]]\nid = 1\n").await;
        let gantry = Gantry::new(
            sim.sim.unit(1).expect("unit").clone(),
            GantryConfig {
                ack: Ack::Coil,
                ack_address: 100,
                start_seq: 9997,
                ..GantryConfig::default()
            },
        );
        let broker = Mosquitto::start().expect("mosquitto");
        let root = format!("ev{}-{}/fs", std::process::id(), broker.port);
        Setup {
            dir: tempfile::tempdir().expect("tmp"),
            sim,
            gantry,
            broker,
            root,
        }
    }

    fn config(&self) -> PathBuf {
        let text = format!(
            r#"[agent]
site = "ev"
id = "gw"
metrics = "127.0.0.1:0"

[buffer]
path = "{dir}/buffer.db"
commit_interval = "50ms"

[uplink]
broker = "{broker}"
topic_root = "{root}"
ack_timeout = "2s"
heartbeat = "1s"
drain_timeout = "10s"

[[device]]
name = "bay1"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
poll_interval = "20ms"
timeout = "500ms"
{event}"#,
            dir = self.dir.path().display(),
            broker = self.broker.url(),
            root = self.root,
            port = self.sim.addr.port(),
            event = self.gantry.agent_event_toml("bay1-batch"),
        );
        let p = self.dir.path().join("agent.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, n: u32) -> Agent {
        let log = config.with_file_name(format!("agent-{n}.log"));
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn edge-agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, sig: &str) -> i32 {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
        let mut code = -1;
        flowsquare_tests::wait_until(Duration::from_secs(30), || match self.child.try_wait() {
            Ok(Some(s)) => {
                code = s.code().unwrap_or(-9);
                true
            }
            _ => false,
        });
        if code == -1 {
            let _ = self.child.kill();
        }
        code
    }
}

/// A figure of `/metrics` (the agent logs its address at start).
fn scrape(agent: &Agent, metric: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let log = agent.log();
    let i = log.find("metrics at http://")? + "metrics at http://".len();
    let addr = log[i..].split('/').next()?.to_owned();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(metric).and_then(|v| v.trim().parse().ok()))
}

/// (source, seq) → how often it was stored, over the de-duplicated batches.
fn stored(c: &TestConsumer) -> BTreeMap<u64, usize> {
    let r = c.received.lock().expect("lock");
    let mut m = BTreeMap::new();
    for e in r.events() {
        assert_eq!(e.source, "bay1-batch");
        *m.entry(e.seq).or_insert(0) += 1;
    }
    m
}

async fn arrived(c: &TestConsumer, seq: u64) -> bool {
    c.until(WAIT, |r| r.events().iter().any(|e| e.seq == seq))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_restarts_and_a_crash_exactly_once_through_buffer_and_uplink() {
    let s = Setup::new().await;
    let consumer = TestConsumer::start(s.broker.port, &s.root, ConsumerOptions::default()).await;
    let cfg = s.config();
    let g = &s.gantry;

    // Run 1: two records, each acknowledged to the PLC (only after the commit).
    g.complete_batch(); // 9998
    let mut a = Agent::start(&cfg, 1);
    assert!(g.wait_for_ack(WAIT).await, "record 9998 acked: {}", a.log());
    g.complete_batch(); // 9999
    assert!(g.wait_for_ack(WAIT).await, "record 9999 acked: {}", a.log());
    assert!(arrived(&consumer, 9999).await, "{}", a.log());
    assert_eq!(a.signal("TERM"), 0, "{}", a.log());

    // While the agent is down the PLC completes a batch (across the rollover).
    g.complete_batch(); // 0 → extended 10000
    let mut a = Agent::start(&cfg, 2);
    assert!(g.wait_for_ack(WAIT).await, "record 0 acked: {}", a.log());
    assert!(
        a.log().contains("resumes after the last committed record"),
        "{}",
        a.log()
    );
    // One record skipped.
    g.skip(1);
    g.complete_batch(); // 2 → 10002, one missed
    assert!(g.wait_for_ack(WAIT).await, "record 2 acked: {}", a.log());
    assert!(arrived(&consumer, 10_002).await, "{}", a.log());
    let dev = "{device=\"bay1\"}";
    assert_eq!(
        scrape(&a, &format!("flowsquare_device_events_missed_total{dev}")),
        Some(1.0)
    );
    assert_eq!(
        scrape(&a, &format!("flowsquare_device_events_captured_total{dev}")),
        Some(2.0)
    );
    // Crash.
    a.signal("KILL");

    // While it is down: one more batch. Then the handshake fails once the agent is back.
    g.complete_batch(); // 3 → 10003
    let faults = s.sim.sim.faults(1).expect("faults");
    faults.update(|f| {
        f.exceptions.push(ExceptionRule {
            code: 4,
            kind: Some(RegisterKind::Coil),
            from: 100,
            to: 100,
            writes: true,
        })
    });
    let mut a = Agent::start(&cfg, 3);
    assert!(arrived(&consumer, 10_003).await, "{}", a.log());
    assert!(!g.acked(), "the handshake write is refused");
    assert!(
        flowsquare_tests::wait_until(WAIT, || scrape(
            &a,
            "flowsquare_device_events_handshake_failures_total{device=\"bay1\"}"
        )
        .is_some_and(|n| n >= 1.0)),
        "handshake failures counted"
    );
    // Stopped with the record committed but not acknowledged: the next run acknowledges it
    // without capturing it again.
    assert_eq!(a.signal("TERM"), 0, "{}", a.log());
    faults.clear();
    let mut a = Agent::start(&cfg, 4);
    assert!(
        g.wait_for_ack(WAIT).await,
        "record 3 acked after the restart: {}",
        a.log()
    );
    g.complete_batch(); // 4 → 10004
    assert!(g.wait_for_ack(WAIT).await, "{}", a.log());
    assert!(arrived(&consumer, 10_004).await, "{}", a.log());
    assert_eq!(a.signal("TERM"), 0, "{}", a.log());
    if std::env::var_os("SHOW_AGENT_LOG").is_some() {
        eprintln!("{}", a.log());
    }

    let got = stored(&consumer);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        vec![9998, 9999, 10_000, 10_002, 10_003, 10_004],
        "every record, none invented"
    );
    assert!(got.values().all(|&n| n == 1), "none stored twice: {got:?}");
    let r = consumer.received.lock().expect("lock");
    let missed: Vec<_> = r
        .gaps()
        .into_iter()
        .filter(|g| g.reason == flowsquare_wire::GapReason::MissedEvent)
        .collect();
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0].count, 1);
    // Fields travel intact.
    let e = r
        .events()
        .into_iter()
        .find(|e| e.seq == 10_003)
        .expect("record 3");
    assert!(e
        .fields
        .iter()
        .any(|(n, v)| n == "bol" && *v == flowsquare_wire::WireValue::Text("BOL-000006".into())));
    // The birth catalog lists the definition and its fields.
    let b = r.births.last().expect("birth");
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].name, "bay1-batch");
    assert_eq!(b.events[0].device, "bay1");
    assert_eq!(b.events[0].seq_rollover, Some(9999));
    assert!(b.events[0].fields.iter().any(|f| f.name == "gross_volume"
        && f.data_type == "f32"
        && f.unit.as_deref() == Some("L")));
}
