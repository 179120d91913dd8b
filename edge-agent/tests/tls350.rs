//! Veeder-Root TLS-350 acquisition against the site-sim console: over a pseudo-terminal pair
//! (socat) and over TCP; inventory readings, a bad-checksum fault, the unsupported-command
//! answer, and delivery events over the pty that survive a restart without being reported twice.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{map, Running};
use edge_agent::drivers::Output;
use edge_agent::model::{Quality, Value};
use flowsquare_tests::PtyPair;
use flowsquare_wire::{Event, WireValue};
use site_sim::modbus::{Parity, SerialConfig};
use site_sim::tls350::{
    serve_serial, serve_tcp, Console, ConsoleConfig, DeliveryConfig, SharedConsole,
};
use tokio::sync::oneshot;

const STATION: &str = r#"
[[tank]]
number = 1
product = "1"
volume = 18250.5
tc_volume = 18100.25
ullage = 11749.5
height = 152.75
water = 0.5
temperature = 14.25
water_volume = 12.0
[[tank.delivery]]
start = "2406150800"
end = "2406150835"
start_volume = 8250.5
end_volume = 18250.5
start_height = 70.5
end_height = 152.75
[[tank]]
number = 2
product = "2"
volume = 9000.0
temperature = -99.99
"#;

fn console(extra: &str) -> SharedConsole {
    let cfg = ConsoleConfig::from_toml_str(&format!("{extra}{STATION}")).expect("console config");
    Arc::new(Mutex::new(Console::new(cfg)))
}

struct Sim {
    _pty: Option<PtyPair>,
    _stop: oneshot::Sender<()>,
    /// The agent's side: `serial = "..."` or `host = ... port = ...`.
    link: String,
}

fn on_pty(c: SharedConsole) -> Sim {
    let pty = PtyPair::new().expect("pty pair (socat)");
    let mut cfg = SerialConfig::new(pty.a.display().to_string(), 9600);
    cfg.parity = Parity::Odd;
    cfg.data_bits = 7;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = serve_serial(&cfg, c, async move {
            let _ = stopped.await;
        })
        .await
        {
            eprintln!("tls-350 sim: {e}");
        }
    });
    Sim {
        link: format!("serial = \"{}\"", pty.b.display()),
        _pty: Some(pty),
        _stop: stop,
    }
}

async fn on_tcp(c: SharedConsole) -> Sim {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = serve_tcp(l, c, async move {
            let _ = stopped.await;
        })
        .await;
    });
    Sim {
        link: format!("host = \"127.0.0.1\"\nport = {port}"),
        _pty: None,
        _stop: stop,
    }
}

const TAGS: [(u8, &str); 9] = [
    (1, "volume"),
    (1, "tc_volume"),
    (1, "ullage"),
    (1, "height"),
    (1, "water"),
    (1, "temperature"),
    (1, "water_volume"),
    (2, "temperature"),
    (9, "volume"),
];

fn agent_map(link: &str, device_extra: &str, buffer: Option<&std::path::Path>) -> String {
    let mut s = String::from("[agent]\nsite = \"test\"\nid = \"gw\"\n");
    if let Some(b) = buffer {
        s.push_str(&format!("[buffer]\npath = \"{}\"\n", b.display()));
    }
    s.push_str(&format!(
        "\n[[device]]\nname = \"atg-1\"\nprotocol = \"tls-350\"\n{link}\npoll_interval = \"100ms\"\ntimeout = \"1s\"\n{device_extra}\n"
    ));
    for (tank, field) in TAGS {
        s.push_str(&format!(
            "  [[device.tag]]\n  name = \"station/tank-{tank}/{field}\"\n  tank = {tank}\n  field = \"{field}\"\n"
        ));
    }
    s
}

fn f(v: &Option<Value>) -> f64 {
    match v {
        Some(Value::Float(x)) => *x,
        _ => f64::NAN,
    }
}

#[tokio::test]
async fn inventory_over_a_pty() {
    let sim = on_pty(console(""));
    let m = map(&agent_map(&sim.link, "delivery_interval = \"0s\"", None));
    let rs = edge_agent::drivers::read_once(&m, None).await;
    let vals: Vec<f64> = rs.iter().take(8).map(|r| f(&r.value)).collect();
    assert_eq!(
        vals,
        vec![18250.5, 18100.25, 11749.5, 152.75, 0.5, 14.25, 12.0, -99.99],
        "{rs:?}"
    );
    assert_eq!(rs[8].quality, Quality::BadDevice);
    assert!(
        rs[8].error.as_deref().unwrap_or("").contains("tank 9"),
        "{:?}",
        rs[8]
    );
}

#[tokio::test]
async fn inventory_over_tcp_with_a_security_code() {
    let sim = on_tcp(console("security_code = \"ABC123\"\n")).await;
    // Without the code the console does not answer (as a real one): bad-communication.
    let m = map(&agent_map(&sim.link, "delivery_interval = \"0s\"", None));
    let rs = edge_agent::drivers::read_once(&m, None).await;
    assert!(
        rs.iter().all(|r| r.quality == Quality::BadCommunication),
        "{rs:?}"
    );
    let m = map(&agent_map(
        &sim.link,
        "delivery_interval = \"0s\"\nsecurity_code = \"ABC123\"",
        None,
    ));
    let rs = edge_agent::drivers::read_once(&m, None).await;
    assert_eq!(f(&rs[0].value), 18250.5, "{rs:?}");
}

#[tokio::test]
async fn unsupported_command_is_a_device_answer_not_a_link_failure() {
    let sim = on_pty(console("[faults]\nunsupported = [\"i201\"]\n"));
    let m = map(&agent_map(&sim.link, "delivery_interval = \"0s\"", None));
    let rs = edge_agent::drivers::read_once(&m, None).await;
    assert_eq!(rs.len(), TAGS.len());
    for r in &rs {
        assert_eq!(
            (r.quality, r.status),
            (Quality::BadDevice, Some(0x9999)),
            "{r:?}"
        );
        assert!(r
            .error
            .as_deref()
            .unwrap_or("")
            .contains("does not support"));
    }
}

#[tokio::test]
async fn bad_checksums_are_counted_and_polling_goes_on() {
    let sim = on_pty(console("[faults]\nbad_checksum_every = 3\n"));
    let m = map(&agent_map(&sim.link, "delivery_interval = \"0s\"", None));
    let mut run = Running::start(&m);
    let ok = run
        .until(Duration::from_secs(20), |rs| {
            let of0 = |q: Quality| rs.iter().filter(|r| r.tag == 0 && r.quality == q).count();
            of0(Quality::Good) >= 6 && of0(Quality::BadDecode) >= 2
        })
        .await;
    let stats = run.acq.as_ref().map(|a| a.stats[0].clone()).expect("stats");
    run.stop().await;
    assert!(
        ok,
        "{:?}",
        run.seen.iter().filter(|r| r.tag == 0).collect::<Vec<_>>()
    );
    let bad: Vec<_> = run
        .seen
        .iter()
        .filter(|r| r.quality == Quality::BadDecode)
        .collect();
    assert!(
        bad.iter()
            .all(|r| r.error.as_deref().unwrap_or("").contains("checksum")),
        "{bad:?}"
    );
    let extras = stats.extras();
    let get = |n: &str| {
        extras
            .iter()
            .find(|(k, _)| *k == n)
            .map_or(0.0, |(_, v)| v.value)
    };
    assert!(get("tls350_checksum_errors") >= 2.0);
    assert_eq!(get("tls350_checksum_errors"), get("tls350_bad_frames"));
    assert!(stats.snapshot().decode_errors >= 2);
    // Visible on /metrics with the device name.
    let metrics =
        edge_agent::metrics::Telemetry::new(vec![("atg-1".into(), stats.clone())], Arc::default())
            .render();
    assert!(
        metrics.contains("flowsquare_device_tls350_checksum_errors_total{device=\"atg-1\"}"),
        "{metrics}"
    );
    // Every cycle gave one reading per tag.
    let per_tag: Vec<usize> = (0..TAGS.len() as u32)
        .map(|t| run.seen.iter().filter(|r| r.tag == t).count())
        .collect();
    assert!(per_tag.windows(2).all(|w| w[0] == w[1]), "{per_tag:?}");
}

fn events(run: &Running) -> Vec<Event> {
    run.events
        .iter()
        .flat_map(|o| match o {
            Output::Events { events, .. } => events.clone(),
            Output::Readings(_) => Vec::new(),
        })
        .collect()
}

fn field<'a>(e: &'a Event, name: &str) -> Option<&'a WireValue> {
    e.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn i202_answers(c: &SharedConsole) -> u64 {
    c.lock()
        .map(|c| c.answered.get("i202").copied().unwrap_or(0))
        .unwrap_or(0)
}

fn delivery(start: &str, end: &str, from: f32, to: f32) -> DeliveryConfig {
    DeliveryConfig {
        start: start.into(),
        end: end.into(),
        start_volume: from,
        end_volume: to,
        start_tc_volume: None,
        end_tc_volume: None,
        start_water: 0.5,
        end_water: 0.5,
        start_temperature: 15.0,
        end_temperature: 14.5,
        start_height: 50.0,
        end_height: 120.0,
    }
}

#[tokio::test]
async fn deliveries_become_events_once_across_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = console("utc_offset_minutes = 120\n");
    let sim = on_pty(c.clone());
    let m = map(&agent_map(
        &sim.link,
        "delivery_interval = \"100ms\"\nutc_offset = \"+02:00\"",
        Some(&dir.path().join("buffer.db")),
    ));

    // First start: the stored delivery is reported, then a new one.
    let mut run = Running::start(&m);
    assert!(
        run.wait_for(Duration::from_secs(10), |r| !events(r).is_empty())
            .await,
        "the stored delivery is reported"
    );
    let first = events(&run);
    let e0 = &first[0];
    assert_eq!(
        (e0.kind.as_str(), e0.source.as_str(), e0.seq),
        ("delivery", "atg-1", 0)
    );
    assert_eq!(
        field(e0, "delivery_id"),
        Some(&WireValue::Text("T01-2406150800-2406150835".into()))
    );
    assert_eq!(field(e0, "tank"), Some(&WireValue::Int(1)));
    assert_eq!(
        field(e0, "start"),
        Some(&WireValue::Text("2024-06-15T06:00:00.000Z".into())),
        "console at UTC+2"
    );
    assert_eq!(field(e0, "volume"), Some(&WireValue::Float(10000.0)));
    assert_eq!(field(e0, "end_height"), Some(&WireValue::Float(152.75)));
    assert_eq!(e0.ts_ms, 1_718_433_300_000, "end time 06:35Z");

    c.lock()
        .expect("console")
        .add_delivery(1, delivery("2406151400", "2406151430", 17000.0, 27000.0));
    assert!(
        run.wait_for(Duration::from_secs(10), |r| events(r).len() >= 2)
            .await,
        "the new delivery is reported"
    );
    let polls = i202_answers(&c);
    assert!(
        run.wait_for(Duration::from_secs(10), |_| i202_answers(&c) >= polls + 3)
            .await
    );
    run.stop().await;
    while let Ok(o) = run.rx.try_recv() {
        run.events.push(o);
    }
    let first = events(&run);
    assert_eq!(
        first.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![0, 1],
        "each delivery once: {first:?}"
    );

    // Restart: nothing old again; the next delivery continues the sequence.
    let mut run = Running::start(&m);
    let polls = i202_answers(&c);
    assert!(
        run.wait_for(Duration::from_secs(10), |_| i202_answers(&c) >= polls + 3)
            .await
    );
    assert!(
        events(&run).is_empty(),
        "re-reported after restart: {:?}",
        events(&run)
    );
    c.lock()
        .expect("console")
        .add_delivery(2, delivery("2406151500", "2406151520", 1000.0, 9000.0));
    let got = run
        .wait_for(Duration::from_secs(10), |r| !events(r).is_empty())
        .await;
    assert!(got);
    let second = events(&run);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(
        (second[0].seq, field(&second[0], "tank")),
        (2, Some(&WireValue::Int(2)))
    );

    // Ten deliveries at once into tank 1 (a console keeps ten): all new, so older ones may have
    // been overwritten unseen: reported as a missed-event gap after the last one reported.
    {
        let mut con = c.lock().expect("console");
        for h in 0..10u8 {
            let start = format!("24061616{h:02}");
            let end = format!("24061616{:02}", h + 30);
            con.add_delivery(1, delivery(&start, &end, 1000.0, 2000.0));
        }
    }
    let got = run
        .wait_for(Duration::from_secs(10), |r| events(r).len() >= 11)
        .await;
    run.stop().await;
    assert!(got, "{:?}", events(&run));
    let seqs: Vec<u64> = events(&run).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (2..13).collect::<Vec<u64>>());
    let gaps: Vec<_> = run
        .events
        .iter()
        .flat_map(|o| match o {
            Output::Events { gaps, .. } => gaps.clone(),
            Output::Readings(_) => Vec::new(),
        })
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].reason, edge_agent::model::GapReason::MissedEvent);
    // After 14:30 (UTC+2) on the 15th, before 16:00 on the 16th.
    assert_eq!(
        gaps[0].range,
        1_718_454_600_000..1_718_546_400_000,
        "{gaps:?}"
    );
    assert!(dir.path().join("buffer.db.atg-1.deliveries.json").exists());
}

async fn agent(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(args)
        .output()
        .await
        .expect("run edge-agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn probe_and_read_once_from_the_command_line() {
    let sim = on_tcp(console("")).await;
    let port = sim.link.rsplit(' ').next().unwrap_or("").to_owned();
    let (ok, out) = agent(&[
        "probe",
        "tls350",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--command",
        "i20200",
    ])
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("checksum ok"), "{out}");
    assert!(
        out.contains("tank 1 2406150800–2406150835: start_volume 8250.5"),
        "{out}"
    );
    let (ok, out) = agent(&["probe", "tls350", "--host", "127.0.0.1", "--port", &port]).await;
    assert!(
        ok && out.contains("tank 2 product 2 status 0000: volume 9000"),
        "{out}"
    );
    let (ok, out) = agent(&[
        "probe",
        "tls350",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--command",
        "i10100",
    ])
    .await;
    assert!(!ok && out.contains("does not support"), "{out}");

    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        agent_map(&sim.link, "delivery_interval = \"0s\"", None),
    )
    .expect("write");
    let cfg = cfg.display().to_string();
    let (ok, out) = agent(&["read", "--once", "--config", &cfg, "--format", "jsonl"]).await;
    assert!(ok, "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let by_tag = |t: &str| {
        lines
            .iter()
            .find(|l| l["tag"] == t)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_tag("station/tank-1/volume")["value"], 18250.5, "{out}");
    assert_eq!(by_tag("station/tank-1/volume")["quality"], "good", "{out}");
    assert_eq!(
        by_tag("station/tank-9/volume")["quality"],
        "bad-device",
        "{out}"
    );
    let (ok, out) = agent(&["plan", "--config", &cfg]).await;
    assert!(
        ok && out.contains("i20100 in-tank inventory (all tanks) every cycle, for tanks 1, 2, 9"),
        "{out}"
    );
}

#[tokio::test]
async fn a_missing_port_gives_bad_communication_with_the_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let link = format!("serial = \"{}\"", dir.path().join("ttyS9").display());
    let m = map(&agent_map(&link, "delivery_interval = \"0s\"", None));
    let rs = edge_agent::drivers::read_once(&m, None).await;
    assert!(
        rs.iter().all(|r| r.quality == Quality::BadCommunication),
        "{rs:?}"
    );
    assert!(
        rs[0].error.as_deref().unwrap_or("").contains("ttyS9"),
        "{rs:?}"
    );
}

/// `edge-agent run` as a child process, stopped with SIGTERM on drop.
struct AgentProc(std::process::Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_inventory_reach_the_cloud_through_buffer_and_mqtt() {
    use flowsquare_tests::mqtt::{ConsumerOptions, Mosquitto, TestConsumer};
    let c = console("");
    let sim = on_tcp(c.clone()).await;
    let broker = Mosquitto::start().expect("mosquitto");
    let root = format!("t{}-{}/fs", std::process::id(), broker.port);
    let consumer = TestConsumer::start(broker.port, &root, ConsumerOptions::default()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut text = agent_map(
        &sim.link,
        "delivery_interval = \"200ms\"",
        Some(&dir.path().join("buffer.db")),
    );
    text = text.replacen(
        "[buffer]\n",
        &format!(
            "[uplink]\nbroker = \"{}\"\ntopic_root = \"{root}\"\n\n[buffer]\ncommit_interval = \"50ms\"\n",
            broker.url()
        ),
        1,
    );
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, text).expect("config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let _agent = AgentProc(
        std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edge-agent"),
    );
    let ok = consumer
        .until(Duration::from_secs(30), |r| {
            r.events().iter().any(|e| e.kind == "delivery") && r.readings() >= 20
        })
        .await;
    let agent_log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert!(
        ok,
        "no delivery event / readings in the cloud; agent log:\n{agent_log}"
    );
    let (e, protocol) = {
        let r = consumer.received.lock().expect("lock");
        let p = r
            .births
            .last()
            .map(|b| b.devices[0].protocol.clone())
            .unwrap_or_default();
        (r.events(), p)
    };
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].source.as_str(), e[0].seq), ("atg-1", 0));
    assert!(e[0]
        .fields
        .iter()
        .any(|(k, v)| k == "delivery_id"
            && *v == WireValue::Text("T01-2406150800-2406150835".into())));
    assert_eq!(protocol, "tls-350");
    assert!(agent_log.contains("delivery captured"), "{agent_log}");
}
