//! Store-and-forward end to end: the `edge-agent` binary polls the simulator, commits every
//! reading to its SQLite buffer and forwards batches through a real (private) Mosquitto to a test
//! consumer that stores them de-duplicated and acknowledges the way cloud-ingest does. Through
//! broker restarts, outages, SIGKILL and lost acks, every polled reading must arrive exactly once
//! (or, for a crash, be covered by a reported gap).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::SimTcp;
use edge_agent::model::rfc3339_ms;
use flowsquare_tests::mqtt::{ConsumerOptions, Mosquitto, Received, TestConsumer};

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

struct Setup {
    dir: tempfile::TempDir,
    sim: SimTcp,
    broker: Mosquitto,
    root: String,
}

impl Setup {
    async fn new() -> Setup {
        let sim = SimTcp::start(SIM).await;
        let broker = Mosquitto::start().expect("mosquitto");
        let root = format!("t{}-{}/fs", std::process::id(), broker.port);
        Setup {
            dir: tempfile::tempdir().expect("tmp"),
            sim,
            broker,
            root,
        }
    }

    fn config(&self, extra_buffer: &str, extra_uplink: &str) -> PathBuf {
        let text = format!(
            r#"[agent]
site = "sf"
id = "gw"
metrics = "127.0.0.1:0"

[buffer]
path = "{dir}/buffer.db"
commit_interval = "50ms"
{extra_buffer}

[uplink]
broker = "{broker}"
topic_root = "{root}"
ack_timeout = "2s"
live_window = "2s"
heartbeat = "1s"
drain_timeout = "15s"
batch_readings = 50
{extra_uplink}

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
  [[device.tag]]
  name = "meter/total"
  register = "holding"
  address = 2
  type = "u32"
  kind = "totalizer"
  [[device.tag]]
  name = "tank/temperature"
  register = "input"
  address = 0
  type = "i16"
  scale = 0.1
  priority = "low"
"#,
            dir = self.dir.path().display(),
            broker = self.broker.url(),
            root = self.root,
            port = self.sim.addr.port(),
        );
        let p = self.dir.path().join("agent.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    async fn consumer(&self, o: ConsumerOptions) -> TestConsumer {
        TestConsumer::start(self.broker.port, &self.root, o).await
    }
}

/// The agent as a child process; its stdout (`--output jsonl`) lists every reading it polled.
struct Agent {
    child: Child,
    polled: Arc<Mutex<Vec<(String, String)>>>,
    stderr: PathBuf,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        let stderr = config.with_file_name(format!("agent-{}.log", rand_suffix()));
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .args(["--output", "jsonl"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .spawn()
            .expect("spawn edge-agent");
        let out = child.stdout.take().expect("stdout");
        let polled = Arc::new(Mutex::new(Vec::new()));
        let p = polled.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let key = (
                        v["tag"].as_str().unwrap_or("").to_owned(),
                        v["ts"].as_str().unwrap_or("").to_owned(),
                    );
                    p.lock().expect("lock").push(key);
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// SIGTERM and wait for the orderly exit (drain included); returns the exit code.
    fn stop(mut self) -> (i32, Vec<(String, String)>, String) {
        self.signal("TERM");
        let code = wait_exit(&mut self.child, Duration::from_secs(40));
        // The stdout reader finishes when the pipe closes.
        flowsquare_tests::wait_until(Duration::from_secs(5), || {
            Arc::strong_count(&self.polled) == 1
        });
        (code, self.polled(), self.log())
    }

    fn kill9(mut self) -> Vec<(String, String)> {
        self.signal("KILL");
        wait_exit(&mut self.child, Duration::from_secs(10));
        flowsquare_tests::wait_until(Duration::from_secs(5), || {
            Arc::strong_count(&self.polled) == 1
        });
        self.polled()
    }

    fn metrics_addr(&self) -> Option<String> {
        let log = self.log();
        let i = log.find("metrics at http://")? + "metrics at http://".len();
        Some(log[i..].split('/').next()?.to_owned())
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn wait_exit(child: &mut Child, timeout: Duration) -> i32 {
    let mut code = -1;
    flowsquare_tests::wait_until(timeout, || match child.try_wait() {
        Ok(Some(s)) => {
            code = s.code().unwrap_or(-9);
            true
        }
        _ => false,
    });
    if code == -1 {
        let _ = child.kill();
    }
    code
}

/// Received readings as (tag name, RFC 3339 ts), using the birth catalog for names.
fn received_keys(r: &Received) -> Vec<(String, String)> {
    let names: Vec<String> = r
        .births
        .last()
        .map(|b| b.tags.iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    r.batches
        .values()
        .flat_map(|b| b.readings.iter())
        .map(|x| {
            (
                names.get(x.tag as usize).cloned().unwrap_or_default(),
                rfc3339_ms(x.ts_ms),
            )
        })
        .collect()
}

fn assert_exactly_once(polled: &[(String, String)], r: &Received) {
    let got = received_keys(r);
    let got_set: BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(
        got.len(),
        got_set.len(),
        "no reading stored twice after de-duplication"
    );
    let polled_set: BTreeSet<_> = polled.iter().cloned().collect();
    let missing: Vec<_> = polled_set.difference(&got_set).take(5).collect();
    let invented: Vec<_> = got_set.difference(&polled_set).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} polled readings missing, e.g. {missing:?}",
        polled_set.len() - polled_set.intersection(&got_set).count()
    );
    assert!(
        invented.is_empty(),
        "readings never polled arrived: {invented:?}"
    );
}

async fn received_at_least(c: &TestConsumer, n: usize) -> bool {
    c.until(Duration::from_secs(30), |r| r.readings() >= n)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_exactly_once_through_an_outage_and_a_restart_of_the_broker() {
    let mut s = Setup::new().await;
    // One consumer for the whole test, reconnecting by itself across the broker restart; it
    // subscribes with a clean session, so what the broker held is lost, but nothing was
    // acknowledged that the consumer did not store: the agent re-sends it.
    let consumer = s.consumer(ConsumerOptions::default()).await;
    let agent = Agent::start(&s.config("", ""));
    assert!(
        received_at_least(&consumer, 30).await,
        "data flows: {}",
        agent.log()
    );
    s.broker.stop();
    let unit = s.sim.sim.unit(1).expect("unit").clone();
    let before = unit.requests();
    assert!(
        unit.wait_for_requests(before + 20, Duration::from_secs(20))
            .await
    );
    s.broker.restart().expect("restart");
    let n = consumer.received.lock().expect("lock").readings();
    assert!(
        received_at_least(&consumer, n + 60).await,
        "data flows again: {}",
        agent.log()
    );
    let (code, polled, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    assert!(!polled.is_empty());
    // The retained offline status is published just before the agent exits.
    consumer
        .until(Duration::from_secs(10), |r| {
            r.statuses.iter().any(|st| !st.online)
        })
        .await;
    let r = consumer.received.lock().expect("lock");
    assert_exactly_once(&polled, &r);
    assert!(r.births.len() >= 2, "a birth on every connection");
    assert!(r.heartbeats >= 1, "heartbeats published");
    assert!(
        r.statuses.iter().any(|st| !st.online),
        "offline status at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_unreachable_at_start_then_back() {
    let mut s = Setup::new().await;
    s.broker.stop();
    let agent = Agent::start(&s.config("", ""));
    let unit = s.sim.sim.unit(1).expect("unit").clone();
    assert!(
        unit.wait_for_requests(30, Duration::from_secs(20)).await,
        "polls without a broker"
    );
    s.broker.restart().expect("start");
    let consumer = s.consumer(ConsumerOptions::default()).await;
    assert!(
        received_at_least(&consumer, 60).await,
        "backlog and live data arrive: {}",
        agent.log()
    );
    let (code, polled, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let r = consumer.received.lock().expect("lock");
    assert_exactly_once(&polled, &r);
    // The error was logged once per distinct cause, not per retry.
    assert!(
        log.matches("broker connection failed").count() <= 2,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_resends_the_same_batch_id_and_it_is_stored_once() {
    let s = Setup::new().await;
    let consumer = s
        .consumer(ConsumerOptions {
            drop_first_ack: [1u64, 2, 3].into_iter().collect(),
            ..Default::default()
        })
        .await;
    let agent = Agent::start(&s.config("", ""));
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| r.duplicates >= 3)
            .await,
        "re-sends after the ack timeout: {}",
        agent.log()
    );
    let (code, polled, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let r = consumer.received.lock().expect("lock");
    for id in [1u64, 2, 3] {
        assert!(
            r.deliveries.iter().filter(|d| **d == id).count() >= 2,
            "batch {id} delivered again under the same id"
        );
    }
    assert_exactly_once(&polled, &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_resends_the_same_ids_and_reports_the_crash_window() {
    let s = Setup::new().await;
    let consumer = s
        .consumer(ConsumerOptions {
            never_ack: true,
            ..Default::default()
        })
        .await;
    let cfg = s.config("", "");
    let agent = Agent::start(&cfg);
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| r.batches.len() >= 3)
            .await,
        "batches sent: {}",
        agent.log()
    );
    let first_ids: Vec<u64> = consumer
        .received
        .lock()
        .expect("lock")
        .batches
        .keys()
        .map(|k| k.3)
        .collect();
    let polled_1 = agent.kill9();
    // The cloud is back: it acknowledges from now on.
    consumer.options.lock().expect("lock").never_ack = false;
    let agent = Agent::start(&cfg);
    let n = polled_1.len();
    assert!(
        received_at_least(&consumer, n + 30).await,
        "{}",
        agent.log()
    );
    let (code, polled_2, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let r = consumer.received.lock().expect("lock");
    for id in &first_ids {
        assert!(
            r.deliveries.iter().filter(|d| *d == id).count() >= 2,
            "batch {id} re-sent under the same id after the restart"
        );
    }
    // Every reading of the second run arrives; of the first run, every reading arrives or lies in
    // the crash window reported as a gap (readings handed over but not yet committed).
    let gaps = r.gaps();
    let crash: Vec<_> = gaps
        .iter()
        .filter(|g| g.reason == flowsquare_wire::GapReason::Other("unclean-shutdown".into()))
        .collect();
    assert_eq!(crash.len(), 1, "one unclean-shutdown gap: {gaps:?}");
    let (from, to) = (rfc3339_ms(crash[0].from_ms), rfc3339_ms(crash[0].to_ms));
    let got: BTreeSet<_> = received_keys(&r).into_iter().collect();
    let lost: Vec<_> = polled_1.iter().filter(|k| !got.contains(*k)).collect();
    assert!(
        lost.iter().all(|(_, ts)| *ts >= from && *ts <= to),
        "lost outside the reported window {from}..{to}: {lost:?}"
    );
    assert!(
        lost.len() <= 3 * 10,
        "at most about one commit interval lost: {}",
        lost.len()
    );
    // The in-flight side file makes the count known: exactly the readings lost.
    assert!(crash[0].count_known, "{crash:?}");
    assert_eq!(crash[0].count, lost.len() as u64, "{crash:?} {lost:?}");
    eprintln!(
        "crash window: {} readings lost, counted {}",
        lost.len(),
        crash[0].count
    );
    let all: BTreeSet<_> = polled_1.iter().chain(&polled_2).cloned().collect();
    assert!(got.is_subset(&all), "nothing invented");
    assert_eq!(received_keys(&r).len(), got.len(), "nothing stored twice");
    assert!(
        polled_2.iter().all(|k| got.contains(k)),
        "every reading of the second run arrives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_the_oldest_low_priority_readings_and_reports_a_gap() {
    let s = Setup::new().await;
    // The cloud does not acknowledge: the window fills, the rest stays in a 16 KiB buffer.
    let consumer = s
        .consumer(ConsumerOptions {
            never_ack: true,
            ..Default::default()
        })
        .await;
    let agent = Agent::start(&s.config("max_size = \"16KiB\"", "inflight = 1"));
    let unit = s.sim.sim.unit(1).expect("unit").clone();
    let addr =
        flowsquare_tests::wait_until(Duration::from_secs(10), || agent.metrics_addr().is_some());
    assert!(addr);
    let metrics = agent.metrics_addr().expect("metrics address");
    let dropped = || {
        scrape(
            &metrics,
            "flowsquare_readings_dropped_total{reason=\"buffer-full\"}",
        )
        .unwrap_or(0.0)
    };
    let mut ok = false;
    for _ in 0..600 {
        if dropped() > 0.0 {
            ok = true;
            break;
        }
        let n = unit.requests();
        unit.wait_for_requests(n + 5, Duration::from_secs(5)).await;
    }
    assert!(ok, "readings dropped for space: {}", agent.log());
    consumer.options.lock().expect("lock").never_ack = false;
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| !r.gaps().is_empty())
            .await,
        "a gap record arrives"
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let r = consumer.received.lock().expect("lock");
    let gaps: Vec<_> = r
        .gaps()
        .into_iter()
        .filter(|g| g.reason == flowsquare_wire::GapReason::BufferFull)
        .collect();
    assert!(!gaps.is_empty());
    // The low-priority tag (id 2) goes first.
    assert!(
        gaps[0].tags == vec![2],
        "oldest low-priority readings dropped first: {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_buffer_file_is_quarantined_and_the_agent_keeps_running() {
    let s = Setup::new().await;
    std::fs::write(s.dir.path().join("buffer.db"), vec![0x5a; 8192]).expect("garbage");
    let consumer = s.consumer(ConsumerOptions::default()).await;
    let agent = Agent::start(&s.config("", ""));
    assert!(received_at_least(&consumer, 30).await, "{}", agent.log());
    let metrics = agent.metrics_addr().expect("metrics");
    assert_eq!(
        scrape(&metrics, "flowsquare_buffer_quarantined_total"),
        Some(1.0)
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, 0);
    assert!(
        log.contains("buffer database is corrupt: moved aside"),
        "{log}"
    );
    let moved = std::fs::read_dir(s.dir.path())
        .expect("dir")
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("buffer.db.corrupt-")
        });
    assert!(moved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_acknowledgements_are_counted_and_never_acted_on() {
    let s = Setup::new().await;
    let consumer = s.consumer(ConsumerOptions::default()).await;
    let agent = Agent::start(&s.config("", ""));
    assert!(received_at_least(&consumer, 10).await);
    // Garbage and a well-formed ack for a batch that does not exist, straight to the ack topic.
    let topics = flowsquare_wire::Topics::new(s.root.clone(), "sf", "gw").expect("topics");
    let mut o = rumqttc::MqttOptions::new("evil", "127.0.0.1", s.broker.port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    let t = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    client
        .publish(
            topics.ack(),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"{not json".to_vec(),
        )
        .await
        .expect("publish");
    client
        .publish(
            topics.ack(),
            rumqttc::QoS::AtLeastOnce,
            false,
            flowsquare_wire::Ack::committed(vec![999_999]).encode(),
        )
        .await
        .expect("publish");
    let metrics = agent.metrics_addr().expect("metrics");
    let seen = flowsquare_tests::wait_until(Duration::from_secs(20), || {
        scrape(&metrics, "flowsquare_malformed_messages_total").unwrap_or(0.0) >= 1.0
    });
    let n = consumer.received.lock().expect("lock").readings();
    assert!(
        received_at_least(&consumer, n + 20).await,
        "the agent goes on"
    );
    t.abort();
    let (code, polled, log) = agent.stop();
    assert!(seen, "{log}");
    assert_eq!(code, 0);
    assert!(log.contains("malformed acknowledgement ignored"), "{log}");
    assert_exactly_once(&polled, &consumer.received.lock().expect("lock"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_give_one_clear_error_line_and_a_backoff() {
    let dir = tempfile::tempdir().expect("tmp");
    let pw = dir.path().join("passwd");
    let st = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["agent", "right-password"])
        .status();
    if !st.map(|s| s.success()).unwrap_or(false) {
        panic!("mosquitto_passwd failed (is mosquitto installed?)");
    }
    let broker = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}",
        pw.display()
    ))
    .expect("mosquitto");
    // allow_anonymous must come before listener-specific settings; per_listener_settings is off.
    let sim = SimTcp::start(SIM).await;
    let cred = dir.path().join("mqtt.cred");
    std::fs::write(&cred, "agent\nwrong-password\n").expect("cred");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nsite = \"sf\"\nid = \"gw\"\nmetrics = \"off\"\n[buffer]\npath = \"{}/b.db\"\n[uplink]\nbroker = \"{}\"\ncredentials = \"file:{}\"\n[[device]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"\nport = {}\npoll_interval = \"100ms\"\n  [[device.tag]]\n  name = \"a/b\"\n  register = \"holding\"\n  address = 0\n",
            dir.path().display(),
            broker.url(),
            cred.display(),
            sim.addr.port()
        ),
    )
    .expect("cfg");
    let agent = Agent::start(&cfg);
    let unit = sim.sim.unit(1).expect("unit").clone();
    // Give it time for several connection attempts (backoff starts at 0.5 s).
    assert!(unit.wait_for_requests(40, Duration::from_secs(20)).await);
    let (code, _, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("broker connection failed"))
        .collect();
    assert_eq!(lines.len(), 1, "one line, not a flood: {log}");
    assert!(
        lines[0].contains("BadUserNamePassword") || lines[0].contains("NotAuthorized"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("check [uplink] credentials"),
        "{}",
        lines[0]
    );
}

fn scrape(addr: &str, metric: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(metric).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_5_delivers_every_reading_exactly_once() {
    let s = Setup::new().await;
    let consumer = s
        .consumer(ConsumerOptions {
            drop_first_ack: [2u64].into_iter().collect(),
            ..Default::default()
        })
        .await;
    let agent = Agent::start(&s.config("", "protocol = \"5\""));
    assert!(received_at_least(&consumer, 40).await, "{}", agent.log());
    assert!(
        consumer
            .until(Duration::from_secs(20), |r| r.duplicates >= 1)
            .await,
        "the batch whose ack was lost is re-sent"
    );
    let (code, polled, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let r = consumer.received.lock().expect("lock");
    assert_exactly_once(&polled, &r);
    assert!(r.statuses.iter().any(|st| st.online));
}

/// Make a CA and a server certificate for 127.0.0.1 with the openssl command line.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(st.map(|s| s.success()).unwrap_or(false), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=FlowSquare test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    // Mosquitto started as root drops to its own user before loading certificates: let it read
    // these throw-away test files.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for f in ["ca.pem", "server.pem", "server.key"] {
        let _ = std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let certs = tempfile::tempdir().expect("tmp");
    make_certs(certs.path());
    let p = |f: &str| certs.path().join(f).display().to_string();
    let tls_broker = Mosquitto::start_with(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}",
        p("ca.pem"),
        p("server.pem"),
        p("server.key")
    ))
    .expect("mosquitto with TLS");
    let mut s = Setup::new().await;
    // The consumer speaks plain MQTT to a second listener of the same broker is not available
    // here, so the check is end to end through the TLS broker: the agent must connect and the
    // broker must accept its publications; a consumer over TLS is out of scope for rumqttc's
    // plain test client, so the agent's own metrics prove delivery up to the broker (PUBACKs)
    // and its connection state.
    s.broker = tls_broker;
    let cfg = s
        .config("", &format!("ca_file = \"{}\"", p("ca.pem")))
        .display()
        .to_string();
    // Nobody acknowledges in this test: do not wait long for acks at shutdown.
    let text = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace("mqtt://", "mqtts://")
        .replace("drain_timeout = \"15s\"", "drain_timeout = \"1s\"");
    std::fs::write(&cfg, text).expect("cfg");
    let agent = Agent::start(Path::new(&cfg));
    flowsquare_tests::wait_until(Duration::from_secs(10), || agent.metrics_addr().is_some());
    let metrics = agent.metrics_addr().expect("metrics");
    let connected = flowsquare_tests::wait_until(Duration::from_secs(20), || {
        scrape(&metrics, "flowsquare_mqtt_connected").unwrap_or(0.0) == 1.0
            && scrape(&metrics, "flowsquare_readings_sent_total").unwrap_or(0.0) > 0.0
    });
    let (code, _, log) = agent.stop();
    assert!(connected, "connected over TLS and sending: {log}");
    assert_eq!(code, 0);
    assert!(!log.contains("broker connection failed"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Issue 13: buffer identity, damaged buffers, crash counts, reconnect cap, uplink restarts.

/// The agent's config with a short drain (for runs whose cloud does not acknowledge).
fn short_drain(cfg: &Path) {
    let text = std::fs::read_to_string(cfg)
        .expect("cfg")
        .replace("drain_timeout = \"15s\"", "drain_timeout = \"1s\"");
    std::fs::write(cfg, text).expect("cfg");
}

/// The buffer identities announced in births, in order.
fn buffer_births(r: &Received) -> Vec<flowsquare_wire::messages::BufferIdentity> {
    r.births.iter().filter_map(|b| b.buffer.clone()).collect()
}

fn remove_db(path: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// Run the agent (every batch acknowledged), stop it, damage the buffer file with `damage`,
/// run it again: every reading polled in both runs is stored exactly once (the second buffer's
/// batch ids restart under a new epoch and are not taken for duplicates), and the second birth
/// says how the buffer was found.
async fn damage_between_runs(damage: fn(&Path), origin: &str) -> Received {
    let s = Setup::new().await;
    let consumer = s.consumer(ConsumerOptions::default()).await;
    let cfg = s.config("", "");
    let db = s.dir.path().join("buffer.db");
    let agent = Agent::start(&cfg);
    assert!(received_at_least(&consumer, 30).await, "{}", agent.log());
    let (code, polled_1, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    damage(&db);
    let agent = Agent::start(&cfg);
    let n = consumer.received.lock().expect("lock").readings();
    assert!(
        received_at_least(&consumer, n + 30).await,
        "the uplink keeps sending: {}",
        agent.log()
    );
    let (code, polled_2, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let r = std::mem::take(&mut *consumer.received.lock().expect("lock"));
    let polled: Vec<_> = polled_1.iter().chain(&polled_2).cloned().collect();
    assert_exactly_once(&polled, &r);
    assert_eq!(r.gap_counts(), 0, "nothing was lost: {:?}", r.gaps());
    let ids = buffer_births(&r);
    let (first, last) = (ids.first().expect("birth"), ids.last().expect("birth"));
    assert_eq!(first.origin, "new");
    assert_eq!(last.origin, origin, "{last:?}\n{log}");
    assert_ne!(first.epoch, last.epoch, "a new buffer, a new epoch");
    assert_eq!(r.epochs(), vec![first.epoch, last.epoch]);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_buffer_starts_a_new_epoch_and_nothing_is_taken_for_a_duplicate() {
    let r = damage_between_runs(remove_db, "new").await;
    let last = buffer_births(&r).pop().expect("birth");
    assert!(
        last.note.as_deref().unwrap_or("").contains("deleted"),
        "the side file tells a deleted database from a first start: {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_byte_buffer_is_replaced_and_reported() {
    damage_between_runs(
        |db| {
            remove_db(db);
            std::fs::write(db, b"").expect("zero bytes");
        },
        "replaced-empty",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_buffer_is_replaced_and_reported() {
    damage_between_runs(
        |db| {
            remove_db(db);
            std::fs::write(db, vec![0x5a; 8192]).expect("garbage");
        },
        "replaced-corrupt",
    )
    .await;
}

/// Run the agent with a cloud that does not acknowledge (its readings stay in the buffer),
/// stop it, damage the buffer, run it again with the cloud back. Returns what was polled in
/// both runs, what the consumer received, and the second run's log.
async fn held_then_damaged(
    damage: impl FnOnce(&Path),
) -> (
    Vec<(String, String)>,
    Vec<(String, String)>,
    Received,
    String,
) {
    let s = Setup::new().await;
    let consumer = s
        .consumer(ConsumerOptions {
            never_ack: true,
            ..Default::default()
        })
        .await;
    let cfg = s.config("", "");
    short_drain(&cfg);
    let agent = Agent::start(&cfg);
    let unit = s.sim.sim.unit(1).expect("unit").clone();
    assert!(
        unit.wait_for_requests(80, Duration::from_secs(30)).await,
        "{}",
        agent.log()
    );
    let (code, polled_1, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    damage(&s.dir.path().join("buffer.db"));
    consumer.options.lock().expect("lock").never_ack = false;
    let agent = Agent::start(&cfg);
    let n1 = polled_1.len() as u64;
    // Everything of the first run is stored or counted, and the second run's data flow.
    let ok = consumer
        .until(Duration::from_secs(40), |r| {
            r.readings() as u64 + r.gap_counts() >= n1 + 30
                || r.gaps().iter().any(|g| !g.count_known) && r.readings() as u64 >= 60
        })
        .await;
    assert!(ok, "{}", agent.log());
    let (code, polled_2, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let r = std::mem::take(&mut *consumer.received.lock().expect("lock"));
    (polled_1, polled_2, r, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flipped_record_is_quarantined_alone_reported_as_a_counted_gap_and_the_uplink_goes_on()
{
    let (p1, p2, r, log) = held_then_damaged(|db| {
        let c = rusqlite::Connection::open(db).expect("open");
        let (id, mut blob): (i64, Vec<u8>) = c
            .query_row(
                "SELECT id, blob FROM segment WHERE batch_id IS NULL ORDER BY count DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("an unsent segment");
        let mid = blob.len() / 2;
        for b in &mut blob[mid..mid + 8] {
            *b ^= 0xff;
        }
        c.execute(
            "UPDATE segment SET blob = ?1 WHERE id = ?2",
            rusqlite::params![blob, id],
        )
        .expect("flip");
        let check: String = c
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .expect("quick_check");
        assert_eq!(check, "ok", "SQLite sees nothing wrong");
    })
    .await;
    assert!(log.contains("moved to bad_segment"), "{log}");
    assert!(!log.contains("uplink stopped"), "{log}");
    let polled: BTreeSet<_> = p1.iter().chain(&p2).cloned().collect();
    let got: BTreeSet<_> = received_keys(&r).into_iter().collect();
    assert_eq!(received_keys(&r).len(), got.len(), "nothing stored twice");
    assert!(got.is_subset(&polled), "nothing invented");
    let damaged: Vec<_> = r
        .gaps()
        .into_iter()
        .filter(|g| g.reason == flowsquare_wire::GapReason::Other("buffer-damaged".into()))
        .collect();
    assert_eq!(damaged.len(), 1, "{:?}", r.gaps());
    assert!(damaged[0].count_known && damaged[0].count > 0);
    assert_eq!(
        got.len() as u64 + r.gap_counts(),
        polled.len() as u64,
        "stored readings + gap counts = readings polled"
    );
    assert!(
        p2.iter().all(|k| got.contains(k)),
        "the second run's readings all arrive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_buffer_is_salvaged_and_what_is_lost_is_reported() {
    let (p1, p2, r, log) = held_then_damaged(|db| {
        let len = std::fs::metadata(db).expect("db").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(db)
            .expect("open");
        f.set_len(len * 6 / 10).expect("truncate");
    })
    .await;
    assert!(
        log.contains("buffer database is corrupt: moved aside"),
        "{log}"
    );
    let ids = buffer_births(&r);
    let last = ids.last().expect("birth");
    assert_eq!(last.origin, "replaced-corrupt", "{last:?}");
    assert!(
        last.note.as_deref().unwrap_or("").contains("salvaged"),
        "{last:?}"
    );
    let polled: BTreeSet<_> = p1.iter().chain(&p2).cloned().collect();
    let keys = received_keys(&r);
    let got: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), got.len(), "nothing stored twice");
    assert!(got.is_subset(&polled), "nothing invented");
    assert!(
        got.len() as u64 + r.gap_counts() <= polled.len() as u64,
        "nothing counted twice"
    );
    assert!(
        p2.iter().all(|k| got.contains(k)),
        "the second run's readings all arrive"
    );
    // Every reading of the first run not stored lies in a reported gap.
    let gaps = r.gaps();
    let missing: Vec<_> = p1
        .iter()
        .filter(|k| !got.contains(*k))
        .filter(|(_, ts)| {
            !gaps
                .iter()
                .any(|g| *ts >= rfc3339_ms(g.from_ms) && *ts <= rfc3339_ms(g.to_ms))
        })
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "lost outside every gap: {missing:?} {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_without_the_side_file_reports_a_crash_window_of_unknown_count() {
    let s = Setup::new().await;
    let consumer = s.consumer(ConsumerOptions::default()).await;
    let cfg = s.config("", "");
    let agent = Agent::start(&cfg);
    assert!(received_at_least(&consumer, 30).await, "{}", agent.log());
    agent.kill9();
    std::fs::remove_file(s.dir.path().join("buffer.db.inflight")).expect("side file");
    let agent = Agent::start(&cfg);
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| !r.gaps().is_empty())
            .await,
        "{}",
        agent.log()
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let gaps = consumer.received.lock().expect("lock").gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(!gaps[0].count_known, "{gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_for_another_buffer_epoch_deletes_nothing() {
    let s = Setup::new().await;
    let consumer = s
        .consumer(ConsumerOptions {
            never_ack: true,
            ..Default::default()
        })
        .await;
    let agent = Agent::start(&s.config("", ""));
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| r.batches.len() >= 3)
            .await,
        "{}",
        agent.log()
    );
    let (epoch, ids): (u64, Vec<u64>) = {
        let r = consumer.received.lock().expect("lock");
        (r.epochs()[0], r.batches.keys().map(|k| k.3).collect())
    };
    let topics = flowsquare_wire::Topics::new(s.root.clone(), "sf", "gw").expect("topics");
    let mut o = rumqttc::MqttOptions::new("other-cloud", "127.0.0.1", s.broker.port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    let t = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    client
        .publish(
            topics.ack(),
            rumqttc::QoS::AtLeastOnce,
            false,
            flowsquare_wire::Ack::committed(ids.clone())
                .for_epoch(epoch + 1)
                .encode(),
        )
        .await
        .expect("publish");
    let metrics = agent.metrics_addr().expect("metrics");
    assert!(
        flowsquare_tests::wait_until(Duration::from_secs(20), || {
            scrape(&metrics, "flowsquare_acks_foreign_epoch_total").unwrap_or(0.0) >= 1.0
        }),
        "{}",
        agent.log()
    );
    assert_eq!(
        scrape(&metrics, "flowsquare_readings_acked_total"),
        Some(0.0),
        "nothing deleted"
    );
    t.abort();
    // The real cloud acknowledges: the batches it never stored are still there and arrive.
    consumer.options.lock().expect("lock").never_ack = false;
    let n = consumer.received.lock().expect("lock").readings();
    assert!(received_at_least(&consumer, n + 30).await);
    let (code, polled, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    assert_exactly_once(&polled, &consumer.received.lock().expect("lock"));
}

/// With `[uplink] ack_key_file`, acks for the agent's in-flight batches that are unsigned,
/// signed with another key or signed for another agent delete nothing (counted, one WARN line);
/// a correctly signed one deletes its batch; a cloud signing with the key delivers everything
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_acks_delete_nothing_and_signed_acks_are_taken() {
    const KEY: &[u8] = b"site-sf-ack-key-0123456789abcdef";
    let s = Setup::new().await;
    let key_file = s.dir.path().join("ack.key");
    std::fs::write(&key_file, [KEY, b"\n"].concat()).expect("key");
    let consumer = s
        .consumer(ConsumerOptions {
            never_ack: true,
            ack_key: Some(KEY.to_vec()),
            ..Default::default()
        })
        .await;
    let cfg = s.config(
        "",
        &format!("ack_key_file = {:?}", key_file.display().to_string()),
    );
    let agent = Agent::start(&cfg);
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| r.batches.len() >= 3)
            .await,
        "{}",
        agent.log()
    );
    let (epoch, ids): (u64, Vec<u64>) = {
        let r = consumer.received.lock().expect("lock");
        (r.epochs()[0], r.batches.keys().map(|k| k.3).collect())
    };
    let topics = flowsquare_wire::Topics::new(s.root.clone(), "sf", "gw").expect("topics");
    let mut o = rumqttc::MqttOptions::new("forger", "127.0.0.1", s.broker.port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut ev) = rumqttc::AsyncClient::new(o, 10);
    let t = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    let ack = || flowsquare_wire::Ack::committed(ids.clone()).for_epoch(epoch);
    let forged = [
        ack(),
        flowsquare_wire::Ack::committed(ids.clone()),
        ack().signed("sf", "gw", b"a guessed key, long enough"),
        ack().signed("sf", "gw-2", KEY),
    ];
    for f in &forged {
        client
            .publish(topics.ack(), rumqttc::QoS::AtLeastOnce, false, f.encode())
            .await
            .expect("publish");
    }
    let metrics = agent.metrics_addr().expect("metrics");
    assert!(
        flowsquare_tests::wait_until(Duration::from_secs(20), || {
            scrape(&metrics, "flowsquare_acks_forged_total").unwrap_or(0.0) >= 4.0
        }),
        "{}",
        agent.log()
    );
    assert_eq!(
        scrape(&metrics, "flowsquare_readings_acked_total"),
        Some(0.0),
        "nothing deleted"
    );
    assert!(scrape(&metrics, "flowsquare_batches_in_flight").unwrap_or(0.0) >= 3.0);
    // The real thing, signed with the key: deleted.
    client
        .publish(
            topics.ack(),
            rumqttc::QoS::AtLeastOnce,
            false,
            flowsquare_wire::Ack::committed(vec![ids[0]])
                .for_epoch(epoch)
                .signed("sf", "gw", KEY)
                .encode(),
        )
        .await
        .expect("publish");
    assert!(
        flowsquare_tests::wait_until(Duration::from_secs(20), || {
            scrape(&metrics, "flowsquare_readings_acked_total").unwrap_or(0.0) > 0.0
        }),
        "{}",
        agent.log()
    );
    assert_eq!(scrape(&metrics, "flowsquare_acks_forged_total"), Some(4.0));
    t.abort();
    // The cloud acknowledges, signed: the batches the forger named arrive after all.
    consumer.options.lock().expect("lock").never_ack = false;
    let n = consumer.received.lock().expect("lock").readings();
    assert!(received_at_least(&consumer, n + 30).await);
    let (code, polled, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let warns = log
        .lines()
        .filter(|l| l.contains("without a valid signature"))
        .count();
    assert_eq!(warns, 1, "one WARN line a minute, not one per ack: {log}");
    assert_exactly_once(&polled, &consumer.received.lock().expect("lock"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_broker_is_used_within_the_reconnect_cap() {
    let mut s = Setup::new().await;
    let agent = Agent::start(&s.config("", ""));
    flowsquare_tests::wait_until(Duration::from_secs(10), || agent.metrics_addr().is_some());
    let metrics = agent.metrics_addr().expect("metrics");
    let connected = || scrape(&metrics, "flowsquare_mqtt_connected") == Some(1.0);
    assert!(flowsquare_tests::wait_until(
        Duration::from_secs(20),
        connected
    ));
    s.broker.stop();
    let down = std::time::Instant::now();
    assert!(flowsquare_tests::wait_until(
        Duration::from_secs(20),
        || !connected()
    ));
    // Down long enough for the backoff to reach its cap (0.5 s doubling: 10 s after ~20 s).
    let unit = s.sim.sim.unit(1).expect("unit").clone();
    while down.elapsed() < Duration::from_secs(22) {
        let n = unit.requests();
        unit.wait_for_requests(n + 5, Duration::from_secs(5)).await;
    }
    s.broker.restart().expect("restart");
    let back = std::time::Instant::now();
    assert!(
        flowsquare_tests::wait_until(Duration::from_secs(30), connected),
        "{}",
        agent.log()
    );
    let took = back.elapsed();
    assert!(
        took <= Duration::from_secs(10 + 4),
        "reconnected {took:?} after the broker came back (cap 10 s)"
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_uplink_is_restarted_counted_and_shown_as_down() {
    let s = Setup::new().await;
    let cfg = s.config("", "ca_file = \"/nonexistent/ca.pem\"");
    let text = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace("mqtt://", "mqtts://")
        .replace("drain_timeout = \"15s\"", "drain_timeout = \"1s\"");
    std::fs::write(&cfg, text).expect("cfg");
    let agent = Agent::start(&cfg);
    flowsquare_tests::wait_until(Duration::from_secs(10), || agent.metrics_addr().is_some());
    let metrics = agent.metrics_addr().expect("metrics");
    assert!(
        flowsquare_tests::wait_until(Duration::from_secs(20), || {
            scrape(&metrics, "flowsquare_uplink_restarts_total").unwrap_or(0.0) >= 2.0
        }),
        "{}",
        agent.log()
    );
    assert_eq!(scrape(&metrics, "flowsquare_mqtt_connected"), Some(0.0));
    assert!(
        flowsquare_tests::wait_until(Duration::from_secs(5), || {
            scrape(&metrics, "flowsquare_uplink_running") == Some(0.0)
        }),
        "shown as down between restarts"
    );
    let (code, _, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("uplink stopped; restarting it"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_a_long_commit_window_counts_exactly_the_readings_lost() {
    let s = Setup::new().await;
    let consumer = s.consumer(ConsumerOptions::default()).await;
    let cfg = s.config("", "");
    // A 2 s group commit: a kill half a second after a commit loses the readings of ~5 polls.
    let text = std::fs::read_to_string(&cfg)
        .expect("cfg")
        .replace("commit_interval = \"50ms\"", "commit_interval = \"2s\"");
    std::fs::write(&cfg, text).expect("cfg");
    let agent = Agent::start(&cfg);
    assert!(received_at_least(&consumer, 1).await, "{}", agent.log());
    let n = consumer.received.lock().expect("lock").readings();
    assert!(
        received_at_least(&consumer, n + 1).await,
        "a commit just happened"
    );
    let unit = s.sim.sim.unit(1).expect("unit").clone();
    let r = unit.requests();
    assert!(unit.wait_for_requests(r + 5, Duration::from_secs(10)).await);
    let polled_1 = agent.kill9();
    let agent = Agent::start(&cfg);
    assert!(
        consumer
            .until(Duration::from_secs(30), |r| !r.gaps().is_empty())
            .await,
        "{}",
        agent.log()
    );
    let (code, polled_2, log) = agent.stop();
    assert_eq!(code, 0, "{log}");
    let r = consumer.received.lock().expect("lock");
    let got: BTreeSet<_> = received_keys(&r).into_iter().collect();
    let lost = polled_1.iter().filter(|k| !got.contains(*k)).count() as u64;
    let gaps = r.gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(lost > 0, "the kill fell inside a commit window");
    assert!(gaps[0].count_known, "{gaps:?}");
    assert_eq!(
        gaps[0].count, lost,
        "the gap counts exactly the readings lost"
    );
    assert!(polled_2.iter().all(|k| got.contains(k)));
    assert_eq!(
        got.len() as u64 + r.gap_counts(),
        (polled_1.len() + polled_2.len()) as u64,
        "stored + counted = polled"
    );
}
