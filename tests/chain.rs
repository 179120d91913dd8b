//! The chain's processes and database, shared by the end-to-end tests (`tests/e2e.rs`,
//! `tests/second_broker.rs`): the `edge-agent` binary with `--output jsonl`, the
//! `cloud-ingest` binary, a PostgreSQL database of the test's own, the agent config for the
//! simulated PLC, and the small helpers around them (signals, waiting for an exit, a plain HTTP
//! GET, a Prometheus metric's value). Test support: failures panic with the log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{wait_until, workspace_bin, Proc};

/// The administrative connection string of the local PostgreSQL.
pub const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

/// Send `sig` (`TERM`, `KILL`, …) to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Exit code of `child` within `timeout` (-9 when killed by a signal); None: still running,
/// then it is killed and reaped.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
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

/// `GET path` on `addr`: (status, the whole response).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
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
    let code = body.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body))
}

/// Value of the unlabelled metric `name` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A tokio runtime with one worker thread, for tests that are not `async`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A suffix unique to this process and moment (database names, ids).
pub fn uniq() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}_{n}", std::process::id())
}

/// A PostgreSQL database of the test's own, dropped (`WITH (FORCE)`) at the end.
pub struct PgDb {
    pub name: String,
    /// A connection to the `postgres` database (for `ALTER DATABASE`, `pg_terminate_backend`).
    pub admin: tokio_postgres::Client,
}

impl PgDb {
    /// A fresh database named `{prefix}_{uniq}`; None (the test is skipped) when the server is
    /// unreachable, unless `FLOWSQUARE_REQUIRE_ALL` is set (`external::missing` then panics).
    /// Runs inside a tokio runtime (the admin connection is spawned on it).
    pub async fn create(prefix: &str) -> Option<PgDb> {
        let Ok((admin, conn)) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls).await
        else {
            crate::external::missing("PostgreSQL on 127.0.0.1:5432");
            return None;
        };
        tokio::spawn(conn);
        let name = format!("{prefix}_{}", uniq());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        Some(PgDb { name, admin })
    }

    /// Connection string of the database.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port=5432 user=postgres dbname={}",
            self.name
        )
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

/// The edge-agent binary (`run --output jsonl`); every parsed jsonl line goes to `on_line` on
/// a reader thread. Killed on drop.
pub struct Agent {
    pub child: Child,
    log: PathBuf,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Start on `config`; stderr goes to `log_name` beside it.
    pub fn start(
        config: &Path,
        log_name: &str,
        mut on_line: impl FnMut(&serde_json::Value, &str) + Send + 'static,
    ) -> Agent {
        let log = config.with_file_name(log_name);
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
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    on_line(&v, &line);
                }
            }
        });
        Agent {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's `/metrics` text (its `[agent] metrics` address, as its log announces it).
    pub fn metrics(&self) -> Option<String> {
        let log = self.log();
        let i = log.find("metrics at http://")? + "metrics at http://".len();
        let addr = log[i..].split('/').next()?.to_owned();
        http_get(&addr, "/metrics").map(|(_, b)| b)
    }

    /// Wait for the jsonl reader to reach the end of the stream; a panic in `on_line` is
    /// passed on.
    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            if let Err(p) = r.join() {
                std::panic::resume_unwind(p);
            }
        }
    }

    /// SIGTERM: the agent commits what it polled, drains the uplink and exits 0 within `wait`;
    /// its `edge-agent stopped` line, the stream read to its end.
    pub fn stop(mut self, wait: Duration) -> Stopped {
        signal(self.child.id(), "TERM");
        let code = wait_exit(&mut self.child, wait);
        let log = self.log();
        assert_eq!(code, Some(0), "agent exit code; log:\n{log}");
        self.join_reader();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("edge-agent stopped"))
            .unwrap_or_else(|| panic!("no 'edge-agent stopped' line:\n{log}"))
            .to_owned();
        Stopped { line }
    }

    /// SIGKILL, the stream read to its end.
    pub fn kill9(mut self, wait: Duration) {
        signal(self.child.id(), "KILL");
        wait_exit(&mut self.child, wait);
        self.join_reader();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's `edge-agent stopped` log line.
pub struct Stopped {
    pub line: String,
}

impl Stopped {
    /// The counter `key=` of the line (`polled`, `reported`, `buffered_readings`).
    pub fn field(&self, key: &str) -> u64 {
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {}", self.line))
    }
}

/// The cloud-ingest binary (`serve`). Killed on drop.
pub struct Ingest {
    pub child: Child,
    log: PathBuf,
}

impl Ingest {
    /// Start on `config` (run `n`: its log is `ingest-{n}.log` beside the config).
    pub fn spawn(config: &Path, n: usize) -> Ingest {
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

    /// Start and wait (up to `wait`) until `/readyz` answers 200 (subscribed, database answers).
    pub fn start(config: &Path, n: usize, wait: Duration) -> Ingest {
        let i = Ingest::spawn(config, n);
        let ready = wait_until(wait, || {
            i.api()
                .and_then(|a| http_get(&a, "/readyz"))
                .is_some_and(|(c, _)| c == 200)
        });
        assert!(ready, "cloud-ingest ready; log:\n{}", i.log_text());
        i
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP API's address, as the log announces it.
    pub fn api(&self) -> Option<String> {
        let log = self.log_text();
        let i = log.find("HTTP API at http://")? + "HTTP API at http://".len();
        Some(log[i..].split('/').next()?.to_owned())
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&self.api()?, "/metrics")?;
        metric(&body, name)
    }

    pub fn kill9(mut self, wait: Duration) {
        signal(self.child.id(), "KILL");
        wait_exit(&mut self.child, wait);
    }

    /// SIGTERM; exit 0 within `wait`.
    pub fn stop(mut self, wait: Duration) {
        signal(self.child.id(), "TERM");
        let code = wait_exit(&mut self.child, wait);
        assert_eq!(code, Some(0), "ingest exit; log:\n{}", self.log_text());
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flowsquare-sim modbus` on the `map` (written to `sim.toml` in `dir`), Modbus TCP on a free
/// port of 127.0.0.1: the process and its port.
pub fn modbus_sim(dir: &Path, map: &str, wait: Duration) -> (Proc, u16) {
    let path = dir.join("sim.toml");
    std::fs::write(&path, map).expect("map");
    let mut cmd = Command::new(workspace_bin("flowsquare-sim"));
    cmd.env("RUST_LOG", "warn")
        .args(["modbus", "--map"])
        .arg(&path)
        .args(["--tcp", "127.0.0.1:0"]);
    let sim = Proc::spawn(cmd, 1, wait).expect("flowsquare-sim modbus");
    let port = sim.listening[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("sim port");
    (sim, port)
}

/// The simulator map's tag unit: a sine level (holding 0, f32) and a counter (holding 2, u32).
pub const SIM_TANK_FARM: &str = r#"
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

/// An agent config polling the simulated PLC (`SIM_TANK_FARM`, Modbus TCP on `sim_port`):
/// `[agent]`, `[buffer]` in `dir`, `[uplink]` and the `plc` device with `tank/level` and
/// `meter/total`, last in the text (more tags of it and more devices can be appended). The
/// `*_extra` lines go at the end of `[agent]` and of `[uplink]`.
pub struct AgentToml<'a> {
    pub site: &'a str,
    pub dir: &'a Path,
    pub broker: &'a str,
    pub root: &'a str,
    pub sim_port: u16,
    pub agent_extra: &'a str,
    pub uplink_extra: &'a str,
}

impl AgentToml<'_> {
    pub fn render(&self) -> String {
        format!(
            r#"[agent]
site = "{site}"
id = "gw"
{agent_extra}
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
{uplink_extra}
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
            site = self.site,
            dir = self.dir.display(),
            broker = self.broker,
            root = self.root,
            sim_port = self.sim_port,
            agent_extra = self.agent_extra,
            uplink_extra = self.uplink_extra,
        )
    }
}
