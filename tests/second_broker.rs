//! The chain on a second broker: NATS 2.9's MQTT support (a private `nats-server` with
//! JetStream, `flowsquare_tests::nats`). `flowsquare-sim` (Modbus TCP) → the `edge-agent`
//! binary → nats-server MQTT → the `cloud-ingest` binary (`[mqtt] group = ""`) → PostgreSQL
//! (a database of this test's own).
//!
//! - `nats_chain_exact_through_broker_restart_and_ingest_kill`: nats-server killed and
//!   restarted on its ports and JetStream store (the agent's and ingest's persistent sessions
//!   live there), the ingest SIGKILLed and restarted; the agent stopped in order (SIGTERM, it
//!   drains) and then stored = polled, each reading key once.
//! - `nats_shared_group_refused_at_start`: NATS 2.9 accepts `$share/…` and delivers nothing
//!   to it; the ingest's start-up delivery probe refuses to start, exit code non-zero, with an
//!   error naming the broker behaviour and the fix.
//!
//! - `mosquitto_shared_group_probe_passes`: the same probe on Mosquitto, whose shared
//!   subscriptions work: the ingest with `group = "ingest"` becomes ready.
//!
//! Missing nats-server or PostgreSQL skips, or fails under `FLOWSQUARE_REQUIRE_ALL=1`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowsquare_tests::nats::Nats;
use flowsquare_tests::{wait_until, workspace_bin, Proc};

const WAIT: Duration = Duration::from_secs(60);
const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

const SIM_MAP: &str = r#"
[[unit]]
id = 1
name = "tank-farm"
[[unit.register]]
kind = "holding"
address = 0
type = "f32"
generator = { kind = "sine", amplitude = 1.5, period = "20s", offset = 6.0 }
[[unit.register]]
kind = "holding"
address = 2
type = "u32"
generator = { kind = "counter", rate_per_s = 25.0 }
"#;

fn say(what: &str) {
    eprintln!("[second_broker] {what}");
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let mut code = None;
    wait_until(timeout, || match child.try_wait() {
        Ok(Some(s)) => {
            code = Some(s.code().unwrap_or(-9));
            true
        }
        _ => false,
    });
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    code
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_whitespace().nth(1)?.parse().ok()
}

/// A PostgreSQL database of the test's own, dropped at the end.
struct PgDb {
    name: String,
}

impl PgDb {
    fn create(rt: &tokio::runtime::Runtime) -> Option<PgDb> {
        rt.block_on(async {
            let Ok((admin, conn)) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await
            else {
                flowsquare_tests::external::missing("PostgreSQL on 127.0.0.1:5432");
                return None;
            };
            tokio::spawn(conn);
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!("fs_nats_{}_{n}", std::process::id());
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create database");
            Some(PgDb { name })
        })
    }

    /// (rows, distinct (tag, ts) keys) of the readings table; (0, 0) before the schema exists.
    fn readings(&self, rt: &tokio::runtime::Runtime) -> (i64, i64) {
        rt.block_on(async {
            let url = format!(
                "host=127.0.0.1 port=5432 user=postgres dbname={}",
                self.name
            );
            let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                return (0, 0);
            };
            tokio::spawn(conn);
            c.query_one(
                "SELECT count(*), count(DISTINCT (tag_id, ts)) FROM flowsquare.readings",
                &[],
            )
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or((0, 0))
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((c, conn)) =
                    tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// The edge-agent binary with `--output jsonl`: readings it handed to its buffer are counted.
struct Agent {
    child: Child,
    log: PathBuf,
    readings: Arc<Mutex<u64>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        let log = config.with_file_name("agent.log");
        let mut child = Command::new(workspace_bin("edge-agent"))
            .args(["run", "--config"])
            .arg(config)
            .args(["--output", "jsonl"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn edge-agent");
        let stdout = child.stdout.take().expect("stdout");
        let readings = Arc::new(Mutex::new(0u64));
        let r = readings.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["tag"].is_string() && v["ts"].is_string() {
                    if let Ok(mut g) = r.lock() {
                        *g += 1;
                    }
                } else if v["gap"].is_string() {
                    panic!("unexpected gap (the simulator is up throughout): {line}");
                }
            }
        });
        Agent {
            child,
            log,
            readings,
            reader: Some(reader),
        }
    }

    fn readings(&self) -> u64 {
        *self.readings.lock().expect("lock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (drains); returns (polled, reported, readings in the jsonl stream).
    fn stop(mut self) -> (u64, u64, u64) {
        signal(self.child.id(), "TERM");
        let code = wait_exit(&mut self.child, WAIT);
        let log = self.log();
        assert_eq!(code, Some(0), "agent exit code; log:\n{log}");
        if let Some(r) = self.reader.take() {
            r.join().expect("jsonl reader");
        }
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("edge-agent stopped"))
            .unwrap_or_else(|| panic!("no 'edge-agent stopped' line:\n{log}"))
            .to_owned();
        let field = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} in {line}"))
        };
        (field("polled"), field("reported"), self.readings())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cloud-ingest binary (`serve`).
struct Ingest {
    child: Child,
    log: PathBuf,
}

impl Ingest {
    fn spawn(config: &Path, n: usize) -> Ingest {
        let log = config.with_file_name(format!("ingest-{n}.log"));
        let child = Command::new(workspace_bin("cloud-ingest"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .current_dir(config.parent().expect("dir"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn cloud-ingest");
        Ingest { child, log }
    }

    fn start(config: &Path, n: usize) -> Ingest {
        let i = Ingest::spawn(config, n);
        let ready = wait_until(WAIT, || {
            i.api()
                .and_then(|a| http_status(&a, "/readyz"))
                .is_some_and(|c| c == 200)
        });
        assert!(ready, "cloud-ingest ready; log:\n{}", i.log_text());
        i
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api(&self) -> Option<String> {
        let log = self.log_text();
        let i = log.find("HTTP API at http://")? + "HTTP API at http://".len();
        Some(log[i..].split('/').next()?.to_owned())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ingest's config for the broker at `url` (client id from `port`).
fn ingest_config(
    dir: &Path,
    (url, port): (String, u16),
    root: &str,
    group: &str,
    database: &str,
) -> PathBuf {
    let p = dir.join("ingest.toml");
    std::fs::write(
        &p,
        format!(
            "[mqtt]\nbroker = \"{}\"\ntopic_root = \"{root}\"\ngroup = \"{group}\"\n\
             client_id = \"ingest-{}\"\n[database]\n{database}\n[ingest]\n\
             max_batches_per_commit = 16\n[api]\nlisten = \"127.0.0.1:0\"\n[reconcile]\nenabled = false\n",
            url, port
        ),
    )
    .expect("ingest config");
    p
}

fn agent_config(dir: &Path, nats: &Nats, root: &str, sim_port: u16) -> PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            r#"[agent]
site = "nats"
id = "gw"

[buffer]
path = "{dir}/buffer.db"
commit_interval = "50ms"

[uplink]
broker = "{broker}"
topic_root = "{root}"
ack_timeout = "2s"
live_window = "2s"
heartbeat = "1s"
drain_timeout = "30s"
batch_readings = 200

[[device]]
name = "plc"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {sim_port}
unit = 1
poll_interval = "100ms"
timeout = "1s"
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
"#,
            dir = dir.display(),
            broker = nats.url(),
        ),
    )
    .expect("agent config");
    p
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Wait until the database holds at least `n` readings.
fn wait_stored(
    rt: &tokio::runtime::Runtime,
    db: &PgDb,
    n: i64,
    what: &str,
    logs: impl Fn() -> String,
) {
    let ok = wait_until(WAIT, || db.readings(rt).0 >= n);
    assert!(
        ok,
        "{what}: {n} readings stored (have {:?}); logs:\n{}",
        db.readings(rt),
        logs()
    );
}

#[test]
fn nats_chain_exact_through_broker_restart_and_ingest_kill() {
    let t0 = Instant::now();
    let rt = runtime();
    let Some(nats) = Nats::start() else { return };
    let mut nats = nats.expect("nats-server");
    let Some(db) = PgDb::create(&rt) else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let map = dir.path().join("sim.toml");
    std::fs::write(&map, SIM_MAP).expect("map");
    let mut cmd = Command::new(workspace_bin("flowsquare-sim"));
    cmd.env("RUST_LOG", "warn")
        .args(["modbus", "--map"])
        .arg(&map)
        .args(["--tcp", "127.0.0.1:0"]);
    let sim = Proc::spawn(cmd, 1, WAIT).expect("flowsquare-sim modbus");
    let sim_port = sim.listening[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("sim port");
    let root = format!("nats{}/fs", nats.mqtt_port);
    let database = format!(
        "url = \"host=127.0.0.1 port=5432 user=postgres dbname={}\"\ntimescale = \"off\"",
        db.name
    );
    let ingest_cfg = ingest_config(
        dir.path(),
        (nats.url(), nats.mqtt_port),
        &root,
        "",
        &database,
    );
    let agent_cfg = agent_config(dir.path(), &nats, &root, sim_port);
    let ingest = Ingest::start(&ingest_cfg, 0);
    let agent = Agent::start(&agent_cfg);
    let logs = |a: &Agent, i: &Ingest, n: &Nats| {
        format!(
            "--- agent\n{}\n--- ingest\n{}\n--- nats\n{}",
            a.log(),
            i.log_text(),
            n.log()
        )
    };
    say("flowing through nats-server");
    wait_stored(&rt, &db, 50, "first readings", || {
        logs(&agent, &ingest, &nats)
    });

    say("nats-server: kill -9 and restart (JetStream store kept)");
    nats.stop();
    let polled = agent.readings();
    assert!(
        wait_until(WAIT, || agent.readings() >= polled + 30),
        "agent polls during the outage"
    );
    nats.restart().expect("nats-server restart");
    let now = db.readings(&rt).0;
    wait_stored(&rt, &db, now + 50, "after the broker restart", || {
        logs(&agent, &ingest, &nats)
    });

    say("cloud-ingest: SIGKILL, then restarted");
    signal(ingest.child.id(), "KILL");
    drop(ingest);
    let polled = agent.readings();
    assert!(
        wait_until(WAIT, || agent.readings() >= polled + 30),
        "agent polls while the ingest is down"
    );
    let ingest = Ingest::start(&ingest_cfg, 1);
    let now = db.readings(&rt).0;
    wait_stored(&rt, &db, now + 50, "after the ingest restart", || {
        logs(&agent, &ingest, &nats)
    });

    say("agent: SIGTERM (drains)");
    let (polled, reported, streamed) = agent.stop();
    assert_eq!(polled, reported, "agent counters");
    assert_eq!(polled, streamed, "agent counters vs its jsonl stream");
    let exact = wait_until(WAIT, || db.readings(&rt).0 == polled as i64);
    let (rows, keys) = db.readings(&rt);
    assert!(
        exact,
        "stored {rows} readings, polled {polled}; ingest log:\n{}",
        ingest.log_text()
    );
    assert_eq!(rows, keys, "a reading key stored twice");
    say(&format!(
        "exact: {rows} readings stored = polled ({:?})",
        t0.elapsed()
    ));
}

#[test]
fn nats_shared_group_refused_at_start() {
    let t0 = Instant::now();
    let Some(nats) = Nats::start() else { return };
    let nats = nats.expect("nats-server");
    let dir = tempfile::tempdir().expect("tmp");
    let root = format!("nats{}/fs", nats.mqtt_port);
    let database = format!("sqlite_path = \"{}/ingest.db\"", dir.path().display());
    let cfg = ingest_config(
        dir.path(),
        (nats.url(), nats.mqtt_port),
        &root,
        "ingest",
        &database,
    );
    let mut ingest = Ingest::spawn(&cfg, 0);
    let code = wait_exit(&mut ingest.child, WAIT);
    let log = ingest.log_text();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code {code:?}; log:\n{log}"
    );
    for needle in [
        "does not implement MQTT shared subscriptions",
        "group = \"\"",
        "_probe/",
    ] {
        assert!(log.contains(needle), "{needle:?} in the log:\n{log}");
    }
    say(&format!("refused in {:?}", t0.elapsed()));
}

#[test]
fn mosquitto_shared_group_probe_passes() {
    let t0 = Instant::now();
    let broker = flowsquare_tests::mqtt::Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tmp");
    let root = format!("mosq{}/fs", broker.port);
    let database = format!("sqlite_path = \"{}/ingest.db\"", dir.path().display());
    let cfg = ingest_config(
        dir.path(),
        (broker.url(), broker.port),
        &root,
        "ingest",
        &database,
    );
    let ingest = Ingest::start(&cfg, 0);
    assert!(
        !ingest.log_text().contains("delivery probe"),
        "probe passed quietly:\n{}",
        ingest.log_text()
    );
    say(&format!("ready with a shared group in {:?}", t0.elapsed()));
}
