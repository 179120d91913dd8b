//! The agent as a systemd service, end to end with the real binary:
//! - the `sd_notify` protocol on a notification socket the test binds (as systemd does):
//!   `READY=1` after the first poll cycle, `WATCHDOG=1` while polling progresses, `RELOADING=1`
//!   then `READY=1` around a reload, `STOPPING=1` on SIGTERM;
//! - live reload (SIGHUP) through a private Mosquitto and an acknowledging consumer: data
//!   buffered during a broker outage survives the reload, an unchanged device polls on without a
//!   gap, a changed device restarts with its new tags, the new birth carries the new config
//!   hash, every polled reading arrives exactly once under the catalog of the map it was polled
//!   with, and an invalid map is refused with its errors logged while the old one keeps running.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::SimTcp;
use edge_agent::model::rfc3339_ms;
use flowsquare_tests::mqtt::{ConsumerOptions, Mosquitto, Received};
use flowsquare_tests::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");

const SIM: &str = r#"
[[unit]]
id = 1
[[unit.register]]
kind = "holding"
address = 0
type = "f32"
generator = { kind = "sine", amplitude = 1.0, period = "10s", offset = 5.0 }
[[unit.register]]
kind = "holding"
address = 2
type = "u32"
generator = { kind = "counter", rate_per_s = 10.0 }
[[unit.register]]
kind = "input"
address = 0
type = "i16"
value = 215
"#;

/// The agent child process; stdout (`--output jsonl`) lists every reported reading.
struct Agent {
    child: Child,
    polled: Arc<Mutex<Vec<(String, String)>>>,
    stderr: PathBuf,
}

impl Agent {
    fn start(config: &Path, env: &[(&str, &str)]) -> Agent {
        let stderr = config.with_file_name("agent.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(config)
            .args(["--output", "jsonl"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn edge-agent");
        let out = child.stdout.take().expect("stdout");
        let polled = Arc::new(Mutex::new(Vec::new()));
        let p = polled.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    p.lock().expect("lock").push((
                        v["tag"].as_str().unwrap_or("").to_owned(),
                        v["ts"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
        });
        Agent {
            child,
            polled,
            stderr,
        }
    }

    fn polled(&self) -> Vec<(String, String)> {
        self.polled.lock().expect("lock").clone()
    }

    fn count(&self, tag: &str) -> usize {
        self.polled().iter().filter(|(t, _)| t == tag).count()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    fn wait_log(&self, needle: &str, times: usize) -> bool {
        wait_until(Duration::from_secs(20), || {
            self.log().matches(needle).count() >= times
        })
    }

    /// SIGTERM, wait for the orderly exit; exit code, everything reported, the log.
    fn stop(mut self) -> (i32, Vec<(String, String)>, String) {
        self.signal("TERM");
        let mut code = -1;
        wait_until(Duration::from_secs(40), || match self.child.try_wait() {
            Ok(Some(s)) => {
                code = s.code().unwrap_or(-9);
                true
            }
            _ => false,
        });
        if code == -1 {
            let _ = self.child.kill();
        }
        wait_until(Duration::from_secs(5), || {
            Arc::strong_count(&self.polled) == 1
        });
        (code, self.polled(), self.log())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent_toml(dir: &Path, port: u16, uplink: &str, meter_tags: &str) -> String {
    format!(
        r#"[agent]
site = "sf"
id = "gw"
metrics = "127.0.0.1:0"

[buffer]
path = "{dir}/buffer.db"
commit_interval = "50ms"
{uplink}
[[device]]
name = "plc"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
poll_interval = "100ms"
timeout = "500ms"
  [[device.tag]]
  name = "tank/level"
  register = "holding"
  address = 0
  type = "f32"

[[device]]
name = "meter"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
poll_interval = "100ms"
timeout = "500ms"
{meter_tags}
"#,
        dir = dir.display()
    )
}

const METER_V1: &str = r#"  [[device.tag]]
  name = "meter/total"
  register = "holding"
  address = 2
  type = "u32"
  kind = "totalizer"
"#;

/// The meter changed: the temperature tag is new (and comes first, so every tag id after it
/// moves), the totalizer's scale changed.
const METER_V2: &str = r#"  [[device.tag]]
  name = "meter/temperature"
  register = "input"
  address = 0
  type = "i16"
  scale = 0.1
  [[device.tag]]
  name = "meter/total"
  register = "holding"
  address = 2
  type = "u32"
  kind = "totalizer"
  scale = 0.5
"#;

/// Received readings as (tag name, RFC 3339 ts), each batch resolved with the birth catalog of
/// the config hash it carries.
fn received_keys(r: &Received) -> Vec<(String, String)> {
    let catalogs: BTreeMap<&str, BTreeMap<u32, &str>> = r
        .births
        .iter()
        .map(|b| {
            (
                b.config_hash.as_str(),
                b.tags.iter().map(|t| (t.id, t.name.as_str())).collect(),
            )
        })
        .collect();
    r.batches
        .values()
        .flat_map(|b| {
            let cat = catalogs.get(b.config_hash.as_str());
            b.readings.iter().map(move |x| {
                (
                    cat.and_then(|c| c.get(&x.tag))
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| format!("?{}:{}", b.config_hash, x.tag)),
                    rfc3339_ms(x.ts_ms),
                )
            })
        })
        .collect()
}

/// Longest interval between consecutive readings of `tag` (RFC 3339 timestamps sort as text).
fn longest_silence(polled: &[(String, String)], tag: &str) -> Duration {
    let ts: BTreeSet<i64> = polled
        .iter()
        .filter(|(t, _)| t == tag)
        .filter_map(|(_, ts)| {
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        })
        .collect();
    let v: Vec<i64> = ts.into_iter().collect();
    let ms = v.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    Duration::from_millis(ms as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reload_keeps_unchanged_devices_polling_and_loses_nothing_buffered() {
    let sim = SimTcp::start(SIM).await;
    let mut broker = Mosquitto::start().expect("mosquitto");
    let root = format!("t{}-{}/fs", std::process::id(), broker.port);
    let dir = tempfile::tempdir().expect("tmp");
    let uplink = format!(
        "\n[uplink]\nbroker = \"{}\"\ntopic_root = \"{root}\"\nack_timeout = \"2s\"\nlive_window = \"2s\"\nheartbeat = \"1s\"\ndrain_timeout = \"15s\"\nbatch_readings = 50\n",
        broker.url()
    );
    let path = dir.path().join("agent.toml");
    let v1 = agent_toml(dir.path(), sim.addr.port(), &uplink, METER_V1);
    std::fs::write(&path, &v1).expect("write");
    let consumer =
        flowsquare_tests::mqtt::TestConsumer::start(broker.port, &root, ConsumerOptions::default())
            .await;
    let agent = Agent::start(&path, &[]);
    let hash1 = edge_agent::config::config_hash(&v1);
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| r.readings() >= 20
                && r.births.iter().any(|b| b.config_hash == hash1))
            .await,
        "data flows: {}",
        agent.log()
    );

    // Broker down: readings pile up in the buffer; reload while they are there.
    broker.stop();
    let n = agent.count("tank/level");
    assert!(wait_until(Duration::from_secs(10), || agent
        .count("tank/level")
        >= n + 20));
    let v2 = agent_toml(dir.path(), sim.addr.port(), &uplink, METER_V2);
    let hash2 = edge_agent::config::config_hash(&v2);
    std::fs::write(&path, &v2).expect("write");
    agent.signal("HUP");
    assert!(agent.wait_log("tag map reloaded", 1), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains(r#"keep=["device plc"]"#) && log.contains(r#"restart=["device meter"]"#),
        "only the meter restarts: {log}"
    );
    assert!(wait_until(Duration::from_secs(10), || agent
        .count("meter/temperature")
        >= 10));

    // An invalid map is refused with file:line:column; the running map goes on.
    let bad = v2.replace("type = \"i16\"", "type = \"i17\"");
    std::fs::write(&path, &bad).expect("write");
    agent.signal("HUP");
    assert!(agent.wait_log("reload refused", 1), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains(&format!("{}:", path.display())) && log.contains("i17"),
        "the error names the file, line and the bad value: {log}"
    );
    let (l, t) = (agent.count("tank/level"), agent.count("meter/temperature"));
    assert!(wait_until(Duration::from_secs(10), || agent
        .count("tank/level")
        >= l + 10
        && agent.count("meter/temperature") >= t + 10));

    // Broker back: old-map batches and new-map batches all arrive, the new birth first.
    broker.restart().expect("restart");
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| r
                .births
                .iter()
                .any(|b| b.config_hash == hash2))
            .await,
        "new birth with the new hash: {}",
        agent.log()
    );
    let (code, polled, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let all: BTreeSet<(String, String)> = polled.iter().cloned().collect();
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| received_keys(r)
                .into_iter()
                .collect::<BTreeSet<_>>()
                .is_superset(&all))
            .await,
        "every reported reading arrives"
    );
    let r = consumer.received.lock().expect("lock");
    let got = received_keys(&r);
    let got_set: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "stored once");
    let invented: Vec<_> = got_set.difference(&all).take(5).collect();
    assert!(invented.is_empty(), "nothing invented: {invented:?}");
    assert!(r.gaps().is_empty(), "no gap: {:?}", r.gaps());
    // Both hashes carried data: buffered old-map segments kept theirs.
    let hashes: BTreeSet<&str> = r
        .batches
        .values()
        .filter(|b| !b.readings.is_empty())
        .map(|b| b.config_hash.as_str())
        .collect();
    assert!(
        hashes.contains(hash1.as_str()) && hashes.contains(hash2.as_str()),
        "{hashes:?}"
    );
    // The unchanged device kept polling through both reloads (100 ms interval).
    let silence = longest_silence(&polled, "tank/level");
    assert!(
        silence < Duration::from_millis(1000),
        "plc silent for {silence:?}"
    );
    assert!(!log.contains("reported as a gap"), "{log}");
}

/// A notification socket bound by the test, like systemd's (abstract name: the `@` form).
struct NotifySocket {
    sock: UnixDatagram,
    name: String,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "flowsquare-test-notify-{}-{}",
            std::process::id(),
            rand_suffix()
        );
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            sock,
            name: format!("@{name}"),
            seen: Vec::new(),
        }
    }

    /// Receive until a message containing `needle` arrives (after those already seen).
    fn until(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(m.clone());
                if m.contains(needle) {
                    return Some(m);
                }
            }
        }
        None
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_watchdog_reloading_and_stopping() {
    let sim = SimTcp::start(SIM).await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, agent_toml(dir.path(), sim.addr.port(), "", METER_V1)).expect("write");
    let mut ns = NotifySocket::bind();
    let agent = Agent::start(
        &path,
        &[
            ("NOTIFY_SOCKET", ns.name.as_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let ready = ns.until("READY=1", Duration::from_secs(20));
    let ready = ready.unwrap_or_else(|| panic!("READY=1: {:?} {}", ns.seen, agent.log()));
    assert!(
        ready.contains("STATUS=polling 2 devices, 2 tags"),
        "{ready}"
    );
    // READY because every device had its first cycle (not because the 30 s bound passed); the
    // log line is written before the notification is sent.
    let log = agent.log();
    assert!(
        log.contains("first_cycles_done=true") && log.contains("uplink_attempted=true"),
        "{log}"
    );
    for _ in 0..3 {
        assert!(
            ns.until("WATCHDOG=1", Duration::from_secs(5)).is_some(),
            "{:?}",
            ns.seen
        );
    }
    std::fs::write(&path, agent_toml(dir.path(), sim.addr.port(), "", METER_V2)).expect("write");
    agent.signal("HUP");
    assert!(
        ns.until("RELOADING=1", Duration::from_secs(10)).is_some(),
        "{:?}",
        ns.seen
    );
    let after = ns
        .until("READY=1", Duration::from_secs(10))
        .expect("READY after reload");
    assert!(after.contains("3 tags"), "{after}");
    agent.signal("TERM");
    assert!(
        ns.until("STOPPING=1", Duration::from_secs(10)).is_some(),
        "{:?}",
        ns.seen
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_watchdog_pings_when_the_watchdog_belongs_to_another_process() {
    let sim = SimTcp::start(SIM).await;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, agent_toml(dir.path(), sim.addr.port(), "", METER_V1)).expect("write");
    let mut ns = NotifySocket::bind();
    let agent = Agent::start(
        &path,
        &[
            ("NOTIFY_SOCKET", ns.name.as_str()),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    assert!(ns.until("READY=1", Duration::from_secs(20)).is_some());
    assert!(
        ns.until("WATCHDOG=1", Duration::from_secs(2)).is_none(),
        "{:?}",
        ns.seen
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
}

/// Metric names in a source or document text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("flowsquare_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches('_');
        // Crate paths (flowsquare_wire::…, flowsquare_tests) are not metrics.
        if !tail[end..].starts_with("::") && name.matches('_').count() >= 2 {
            out.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_field_guide_explains_every_metric_and_the_alerts_use_only_real_ones() {
    let root = flowsquare_tests::workspace_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let exported: BTreeSet<String> = metric_names(&read("edge-agent/src/metrics/mod.rs"))
        .into_iter()
        .chain(metric_names(&read("cloud-ingest/src/api/metrics.rs")))
        .filter(|m| m != "flowsquare_device" && m != "flowsquare_ingest")
        .collect();
    assert!(exported.len() >= 30, "{exported:?}");
    let guide = read("docs/field-guide.md");
    let missing: Vec<_> = exported
        .iter()
        .filter(|m| !guide.contains(&format!("`{m}")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/field-guide.md: {missing:?}"
    );
    let alerts = read("config/prometheus/flowsquare-alerts.yml");
    let unknown: Vec<_> = metric_names(&alerts)
        .into_iter()
        .filter(|m| !exported.contains(m))
        .collect();
    assert!(
        unknown.is_empty(),
        "alerts on metrics that do not exist: {unknown:?}"
    );
    for line in alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            guide.contains(&format!("`{line}`")),
            "alert {line} not explained in the guide"
        );
    }
}
