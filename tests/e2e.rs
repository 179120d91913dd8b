//! End to end, every part a real process: `flowsquare-sim` (a Modbus TCP device with a tag unit
//! and a gantry batch controller, plus an NMEA feeder on a socat pty pair) → the `edge-agent`
//! binary → a private Mosquitto → the `cloud-ingest` binary → PostgreSQL (a database of its own
//! per test) or the embedded SQLite default.
//!
//! The count is exact. The agent's own record of what it polled is its `--output jsonl` stream
//! (one line per reading handed to the buffer, per event captured, per gap detected) and, for a
//! run stopped in order (SIGTERM, which drains), its `polled` / `reported` counters in the
//! `edge-agent stopped` line, which must agree with the stream. The database must then hold
//! exactly: every reading the agent reported, minus the readings counted in gap rows, minus — for
//! a run ended by SIGKILL, whose counters die with it — readings of that run inside the
//! `unclean-shutdown` window the next start reports, whose count must equal them exactly (the
//! agent counts what it handed to the buffer and did not commit). No reading key
//! (tag, ts) and no event key (source, seq) is stored more often than the agent produced it, and
//! the gantry's sequence numbers are covered without a hole: events stored + missed-event gap
//! counts = the whole range.
//!
//! Outages are real: Mosquitto killed and restarted on its port; the test's PostgreSQL database
//! closed (`ALTER DATABASE … ALLOW_CONNECTIONS false` and `pg_terminate_backend` of its sessions,
//! so the ingest's pool loses its connections and new ones are refused, while other tests'
//! databases stay up — the same mechanism as `cloud-ingest/tests/ingest.rs`); SIGKILL of the
//! agent (restarted on the same buffer) and of the ingest (restarted).
//!
//! Replaced buffers (issue 13): the buffer deleted between two runs, a corrupt one (an index page
//! overwritten, so SQLite's `quick_check` fails) quarantined and salvaged after a SIGKILL with
//! unsent data, and a spare gateway taking over the same site and agent ids three times (the
//! broken one killed with data in flight and back later with its old buffer). Batch ids restart
//! in every new buffer; the buffer epoch keeps them apart in the cloud, and the count is exact:
//! stored + gap counts = polled, every captured record stored once (by the PLC's own sequence
//! number: a new buffer numbers events afresh, and the record on display at its start is
//! captured again and recognised by the cloud).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowsquare_tests::chain::{
    metric, modbus_sim, runtime, AgentToml, Ingest, PgDb, SIM_TANK_FARM,
};
use flowsquare_tests::mqtt::Mosquitto;
use flowsquare_tests::{wait_until, workspace_bin, Proc, PtyPair};

/// Longest wait for any one condition.
const WAIT: Duration = Duration::from_secs(60);

fn say(what: &str) {
    eprintln!(
        "[e2e {:?}] {what}",
        std::thread::current().name().unwrap_or("?")
    );
}

fn rfc3339_to_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

// ---------------------------------------------------------------------------------------------
// The database under test.

enum Db {
    Pg(PgDb),
    Sqlite(PathBuf),
}

/// What the database holds, as keys.
#[derive(Debug, Default)]
struct Stored {
    /// (tag name, ts ms) → rows.
    readings: BTreeMap<(String, i64), usize>,
    /// (source, seq) → rows.
    events: BTreeMap<(String, i64), usize>,
    /// (source, the PLC's own sequence number) → rows.
    plc_events: BTreeMap<(String, i64), usize>,
    /// (reason, from ms, to ms, count; None = unknown).
    gaps: Vec<(String, i64, i64, Option<i64>)>,
}

impl Stored {
    fn readings(&self) -> usize {
        self.readings.values().sum()
    }
}

impl Db {
    /// A fresh database; None (the test is skipped) when the server is unreachable, unless
    /// `FLOWSQUARE_REQUIRE_ALL` is set (scripts/test sets it, so CI never skips silently).
    async fn pg() -> Option<Db> {
        PgDb::create("fs_e2e").await.map(Db::Pg)
    }

    /// The `[database]` table of the ingest config.
    fn config(&self) -> String {
        match self {
            Db::Pg(p) => format!(
                "url = \"host=127.0.0.1 port=5432 user=postgres dbname={}\"\ntimescale = \"off\"\n",
                p.name
            ),
            Db::Sqlite(path) => format!("sqlite_path = \"{}\"\n", path.display()),
        }
    }

    /// Close the database: refuse new connections, cut the existing ones.
    async fn take_down(&self) {
        let Db::Pg(p) = self else { return };
        p.admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                p.name
            ))
            .await
            .expect("alter");
        p.admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&p.name],
            )
            .await
            .expect("terminate");
    }

    async fn bring_back(&self) {
        let Db::Pg(p) = self else { return };
        p.admin
            .batch_execute(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", p.name))
            .await
            .expect("alter");
    }

    /// Readings stored so far (0 while the schema does not exist yet).
    async fn count(&self) -> usize {
        self.rows("readings").await
    }

    /// Events stored so far.
    async fn events(&self) -> usize {
        self.rows("events").await
    }

    /// Rows of `table` (0 while the schema does not exist yet).
    async fn rows(&self, table: &str) -> usize {
        match self {
            Db::Pg(p) => {
                let Ok((c, conn)) = tokio_postgres::connect(&p.url(), tokio_postgres::NoTls).await
                else {
                    return 0;
                };
                tokio::spawn(conn);
                c.query_one(&format!("SELECT count(*) FROM flowsquare.{table}"), &[])
                    .await
                    .map(|r| r.get::<_, i64>(0) as usize)
                    .unwrap_or(0)
            }
            Db::Sqlite(path) => sqlite(path)
                .and_then(|c| {
                    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .ok()
                })
                .unwrap_or(0) as usize,
        }
    }

    async fn stored(&self) -> Stored {
        let mut s = Stored::default();
        match self {
            Db::Pg(p) => {
                let (c, conn) = tokio_postgres::connect(&p.url(), tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                tokio::spawn(conn);
                let ms = |col: &str| format!("round(extract(epoch FROM {col}) * 1000)::bigint");
                for r in c
                    .query(
                        &format!(
                            "SELECT t.name, {} FROM flowsquare.readings r JOIN flowsquare.tags t ON t.id = r.tag_id",
                            ms("r.ts")
                        ),
                        &[],
                    )
                    .await
                    .expect("readings")
                {
                    *s.readings.entry((r.get(0), r.get(1))).or_default() += 1;
                }
                for r in c
                    .query(
                        "SELECT source, seq, (fields->>'plc_seq')::bigint FROM flowsquare.events",
                        &[],
                    )
                    .await
                    .expect("events")
                {
                    *s.events.entry((r.get(0), r.get(1))).or_default() += 1;
                    if let Some(p) = r.get::<_, Option<i64>>(2) {
                        *s.plc_events.entry((r.get(0), p)).or_default() += 1;
                    }
                }
                for r in c
                    .query(
                        &format!(
                            "SELECT reason, {}, {}, count FROM flowsquare.gaps",
                            ms("from_ts"),
                            ms("to_ts")
                        ),
                        &[],
                    )
                    .await
                    .expect("gaps")
                {
                    s.gaps.push((r.get(0), r.get(1), r.get(2), r.get(3)));
                }
            }
            Db::Sqlite(path) => {
                let c = sqlite(path).expect("open the ingest's SQLite database");
                let mut q = c
                    .prepare(
                        "SELECT t.name, r.ts_ms FROM readings r JOIN tags t ON t.id = r.tag_id",
                    )
                    .expect("prepare");
                let rows = q
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .expect("readings");
                for k in rows.flatten() {
                    *s.readings.entry(k).or_default() += 1;
                }
                let mut q = c
                    .prepare("SELECT source, seq, json_extract(fields, '$.plc_seq') FROM events")
                    .expect("prepare");
                let rows = q
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                        ))
                    })
                    .expect("events");
                for (src, seq, plc) in rows.flatten() {
                    *s.events.entry((src.clone(), seq)).or_default() += 1;
                    if let Some(p) = plc {
                        *s.plc_events.entry((src, p)).or_default() += 1;
                    }
                }
                let mut q = c
                    .prepare("SELECT reason, from_ms, to_ms, count FROM gaps")
                    .expect("prepare");
                let rows = q
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .expect("gaps");
                s.gaps.extend(rows.flatten());
            }
        }
        s
    }
}

fn sqlite(path: &Path) -> Option<rusqlite::Connection> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()?;
    c.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(c)
}

// ---------------------------------------------------------------------------------------------
// The processes.

/// The Modbus device: tag registers on unit 1, a gantry bay on unit 2 that waits for the agent's
/// ack coil and skips a sequence number every 4th batch (a record the agent never sees).
/// (Appended to `SIM_TANK_FARM`, the tag unit's first two registers.)
const SIM_MAP: &str = r#"[[unit.register]]
kind = "holding"
address = 4
type = "f32"
generator = { kind = "random_walk", step = 0.5, min = 800.0, max = 900.0, every = "200ms", start = 850.0 }
[[unit.register]]
kind = "input"
address = 0
type = "i16"
generator = { kind = "random_walk", step = 2.0, min = 150.0, max = 250.0, seed = 7, every = "300ms", start = 200.0 }

[[unit]]
id = 2
name = "bay1"
[unit.gantry]
base = 100
bay = 1
arms = 2
seq_rollover = 9999
start_seq = 9990
ack = "coil"
ack_address = 100
batch_interval = "250ms"
skip_every = 4
"#;

const NMEA: &str = r#"
talker = "GN"
interval = "100ms"
sentences = ["RMC", "GGA", "VTG"]
[truck]
speed_kmh = 60.0
route = [[-33.9530, 151.2045], [-33.9100, 151.1800]]
"#;

/// The event definition matching the simulated gantry (as `site_sim::modbus::Gantry` writes it).
fn gantry_event() -> String {
    let b = 100;
    let mut s = format!(
        "[[device.event]]\nname = \"bay1-batch\"\nkind = \"gantry-batch\"\nseq_rollover = 9999\n\
         trigger = {{ register = \"holding\", address = {b}, type = \"u16\", mode = \"sequence\" }}\n\
         handshake = {{ register = \"coil\", address = 100, value = true }}\nfields = [\n"
    );
    for (n, off, ty, extra) in [
        ("bay", 2, "u16", ""),
        ("arm", 3, "u16", ""),
        ("bol", 9, "string", ", length = 16"),
        ("preset", 17, "u32", ""),
        ("gross_volume", 19, "f32", ""),
        ("net_standard_volume", 21, "f32", ""),
    ] {
        s.push_str(&format!(
            "  {{ name = \"{n}\", register = \"holding\", address = {}, type = \"{ty}\"{extra} }},\n",
            b + off
        ));
    }
    s.push_str("]\n");
    s
}

/// What one agent run printed (`--output jsonl`).
#[derive(Debug, Default)]
struct AgentOut {
    readings: Vec<(String, i64)>,
    events: Vec<(String, i64)>,
    /// (source, the PLC's own sequence number) of each captured event.
    plc_events: Vec<(String, i64)>,
    /// (reason, count).
    gaps: Vec<(String, i64)>,
}

/// One finished agent run.
#[derive(Debug)]
struct Run {
    out: AgentOut,
    /// (polled, reported, buffered_readings) of an orderly stop; None after SIGKILL.
    counters: Option<(u64, u64, u64)>,
}

/// The edge-agent binary (`flowsquare_tests::chain::Agent`) and what its jsonl stream printed.
struct Agent {
    agent: flowsquare_tests::chain::Agent,
    out: Arc<Mutex<AgentOut>>,
}

impl Agent {
    fn start(config: &Path, n: usize) -> Agent {
        let out = Arc::new(Mutex::new(AgentOut::default()));
        let o = out.clone();
        let log = format!("agent-{n}.log");
        let agent = flowsquare_tests::chain::Agent::start(config, &log, move |v, _| {
            let ts = v["ts"].as_str().and_then(rfc3339_to_ms);
            let Ok(mut g) = o.lock() else { return };
            if let (Some(tag), Some(ts)) = (v["tag"].as_str(), ts) {
                g.readings.push((tag.to_owned(), ts));
            } else if let (Some(src), Some(seq)) = (v["source"].as_str(), v["seq"].as_i64()) {
                g.events.push((src.to_owned(), seq));
                if let Some(p) = v["fields"]["plc_seq"].as_i64() {
                    g.plc_events.push((src.to_owned(), p));
                }
            } else if let Some(reason) = v["gap"].as_str() {
                g.gaps
                    .push((reason.to_owned(), v["count"].as_i64().unwrap_or(0)));
            }
        });
        Agent { agent, out }
    }

    fn log(&self) -> String {
        self.agent.log()
    }

    fn metrics(&self) -> Option<String> {
        self.agent.metrics()
    }

    /// SIGTERM: the agent commits what it polled, drains the uplink, and exits 0.
    fn stop(self) -> Run {
        say("agent: SIGTERM (orderly stop, drain)");
        let stopped = self.agent.stop(WAIT);
        let counters = (
            stopped.field("polled"),
            stopped.field("reported"),
            stopped.field("buffered_readings"),
        );
        Run {
            out: std::mem::take(&mut *self.out.lock().expect("lock")),
            counters: Some(counters),
        }
    }

    fn kill9(self) -> Run {
        say("agent: SIGKILL");
        self.agent.kill9(WAIT);
        Run {
            out: std::mem::take(&mut *self.out.lock().expect("lock")),
            counters: None,
        }
    }
}

/// One site: simulator processes, broker, database, and the agent and ingest configs.
struct Site {
    dir: tempfile::TempDir,
    _sim: Proc,
    _nmea: Proc,
    _pty: PtyPair,
    broker: Mosquitto,
    db: Db,
    agent_cfg: PathBuf,
    ingest_cfg: PathBuf,
    runs: Vec<Run>,
    agents: usize,
    ingests: usize,
}

impl Site {
    /// None: PostgreSQL wanted and unreachable (skipped).
    async fn new(pg: bool) -> Option<Site> {
        let db = if pg { Some(Db::pg().await?) } else { None };
        let dir = tempfile::tempdir().expect("tmp");
        let (sim, port) = modbus_sim(dir.path(), &format!("{SIM_TANK_FARM}{SIM_MAP}"), WAIT);
        let pty = PtyPair::new().expect("pty pair (socat)");
        let nmea_cfg = dir.path().join("nmea.toml");
        std::fs::write(&nmea_cfg, NMEA).expect("nmea");
        let mut cmd = Command::new(workspace_bin("flowsquare-sim"));
        cmd.env("RUST_LOG", "warn")
            .args(["nmea", "--config"])
            .arg(&nmea_cfg)
            .arg("--serial")
            .arg(&pty.a)
            .args(["--baud", "115200"]);
        let nmea = Proc::spawn(cmd, 0, WAIT).expect("flowsquare-sim nmea");
        let broker = Mosquitto::start().expect("mosquitto");
        let root = format!("e2e{}/fs", broker.port);
        let db = db.unwrap_or_else(|| Db::Sqlite(dir.path().join("ingest.db")));
        let agent_cfg = dir.path().join("agent.toml");
        let toml = AgentToml {
            site: "e2e",
            dir: dir.path(),
            broker: &broker.url(),
            root: &root,
            sim_port: port,
            agent_extra: "metrics = \"127.0.0.1:0\"\n",
            uplink_extra: &format!("ack_key_file = \"{}/ack.key\"\n", dir.path().display()),
        };
        let devices = format!(
            r#"  [[device.tag]]
  name = "tank/density"
  register = "holding"
  address = 4
  type = "f32"
  [[device.tag]]
  name = "tank/temperature"
  register = "input"
  address = 0
  type = "i16"
  scale = 0.1
  priority = "low"

[[device]]
name = "bay1"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {port}
unit = 2
poll_interval = "50ms"
timeout = "1s"
{event}
[[device]]
name = "truck-gps"
protocol = "nmea"
serial = "{gps}"
baud = 115200
max_age = "5s"
poll_interval = "500ms"
  [[device.tag]]
  name = "truck/latitude"
  field = "latitude"
  [[device.tag]]
  name = "truck/longitude"
  field = "longitude"
  [[device.tag]]
  name = "truck/fix"
  field = "fix_quality"
"#,
            event = gantry_event(),
            gps = pty.b.display(),
        );
        std::fs::write(&agent_cfg, format!("{}{devices}", toml.render())).expect("agent config");
        let ingest_cfg = dir.path().join("ingest.toml");
        std::fs::write(
            &ingest_cfg,
            format!(
                "[mqtt]\nbroker = \"{}\"\ntopic_root = \"{root}\"\ngroup = \"\"\nclient_id = \"ingest-{}\"\nack_keys = {{ \"*\" = \"file:{}/ack.key\" }}\n[database]\n{}[ingest]\nmax_batches_per_commit = 16\n[api]\nlisten = \"127.0.0.1:0\"\n[reconcile]\nenabled = false\n",
                broker.url(),
                broker.port,
                dir.path().display(),
                db.config()
            ),
        )
        .expect("ingest config");
        // Acks are signed (cloud-ingest [mqtt] ack_keys) and checked (the agent's ack_key_file).
        std::fs::write(dir.path().join("ack.key"), "e2e-ack-key-0123456789abcdef\n")
            .expect("ack key");
        Some(Site {
            dir,
            _sim: sim,
            _nmea: nmea,
            _pty: pty,
            broker,
            db,
            agent_cfg,
            ingest_cfg,
            runs: Vec::new(),
            agents: 0,
            ingests: 0,
        })
    }

    fn agent(&mut self) -> Agent {
        self.agents += 1;
        say(&format!("starting edge-agent (run {})", self.agents));
        Agent::start(&self.agent_cfg, self.agents)
    }

    fn ingest(&mut self) -> Ingest {
        self.ingests += 1;
        say(&format!("starting cloud-ingest (run {})", self.ingests));
        say("waiting for cloud-ingest /readyz (subscribed, database answers)");
        Ingest::start(&self.ingest_cfg, self.ingests, WAIT)
    }

    /// Wait until the database holds `more` readings and `events` more events than now.
    async fn grows(&self, more: usize, events: usize, why: &str) {
        let (r0, e0) = (self.db.count().await, self.db.events().await);
        say(&format!(
            "waiting for {more} more readings and {events} more events in the database ({why}; now {r0}/{e0})"
        ));
        let deadline = Instant::now() + WAIT;
        loop {
            let (r, e) = (self.db.count().await, self.db.events().await);
            if r >= r0 + more && e >= e0 + events {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{why}: only {r}/{e} readings/events stored (from {r0}/{e0}); agent logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The exact count (see the module doc).
    async fn verify(&self) {
        let s = self.db.stored().await;
        let runs = &self.runs;
        // 1. The agent's two records of an orderly run agree (no deadband in this map: every
        //    polled reading is reported), and the drain left nothing behind.
        let mut produced: BTreeMap<(String, i64), usize> = BTreeMap::new();
        for (i, r) in runs.iter().enumerate() {
            if let Some((polled, reported, held)) = r.counters {
                assert_eq!(polled, reported, "run {i}: polled = reported");
                assert_eq!(
                    r.out.readings.len() as u64,
                    reported,
                    "run {i}: its output lists every reported reading"
                );
                assert_eq!(held, 0, "run {i}: drained, nothing left in the buffer");
            }
            for k in &r.out.readings {
                *produced.entry(k.clone()).or_default() += 1;
            }
        }
        let polled: usize = produced.values().sum();
        // 2. Nothing invented, nothing stored twice.
        for (k, n) in &s.readings {
            let p = produced.get(k).copied().unwrap_or(0);
            assert!(p > 0, "a reading nobody polled was stored: {k:?}");
            assert!(*n <= p, "{k:?} stored {n} times, polled {p} times");
        }
        for (k, n) in &s.events {
            assert_eq!(*n, 1, "event {k:?} stored {n} times");
        }
        // 3. Nothing lost: every missing reading lies in a reported window.
        let counted_gaps: i64 = s
            .gaps
            .iter()
            .filter(|g| g.0 != "missed-event")
            .filter_map(|g| g.3)
            .sum();
        let crash: Vec<_> = s
            .gaps
            .iter()
            .filter(|g| g.0 == "unclean-shutdown")
            .collect();
        let kills = runs.iter().filter(|r| r.counters.is_none()).count();
        assert_eq!(
            crash.len(),
            kills,
            "one unclean-shutdown gap per SIGKILL: {:?}",
            s.gaps
        );
        let mut lost = 0usize;
        for (i, r) in runs.iter().enumerate() {
            for k in &r.out.readings {
                if s.readings.contains_key(k) {
                    continue;
                }
                assert!(
                    r.counters.is_none(),
                    "run {i} (orderly) lost {k:?}; gaps {:?}",
                    s.gaps
                );
                assert!(
                    crash.iter().any(|g| k.1 >= g.1 && k.1 <= g.2),
                    "run {i}: {k:?} lost outside every reported window {crash:?}"
                );
                lost += 1;
            }
        }
        let stored = s.readings();
        let crash_counted: i64 = crash.iter().filter_map(|g| g.3).sum();
        say(&format!(
            "count: agent polled {polled} readings over {} runs; stored {stored}; counted in gaps {counted_gaps}; lost in SIGKILL windows {lost}, of which the crash gaps count {crash_counted}",
            runs.len()
        ));
        // A crash window says how many readings it lost (the agent's side file of readings
        // handed to the buffer vs its committed total).
        assert!(
            crash.iter().all(|g| g.3.is_some()),
            "every crash window has a count: {crash:?}"
        );
        assert_eq!(
            lost as i64, crash_counted,
            "the crash windows count exactly the readings lost"
        );
        assert_eq!(
            stored + counted_gaps as usize,
            polled,
            "stored + gap counts = polled, exactly"
        );
        // 4. Events: the agent's captures, once each, and the PLC's sequence without a hole.
        let captured: std::collections::BTreeSet<_> = runs
            .iter()
            .flat_map(|r| r.out.events.iter().cloned())
            .collect();
        let stored_ev: std::collections::BTreeSet<_> = s.events.keys().cloned().collect();
        assert_eq!(
            stored_ev, captured,
            "stored events = the events the agent captured"
        );
        let missed: i64 = s
            .gaps
            .iter()
            .filter(|g| g.0 == "missed-event")
            .filter_map(|g| g.3)
            .sum();
        let seqs: Vec<i64> = stored_ev.iter().map(|k| k.1).collect();
        let (lo, hi) = (
            seqs.first().copied().unwrap_or(0),
            seqs.last().copied().unwrap_or(-1),
        );
        say(&format!(
            "events: {} stored, seq {lo}..={hi}, {missed} reported missed (skipped by the PLC)",
            seqs.len()
        ));
        assert!(missed > 0, "the simulated PLC skips numbers: gaps arrive");
        assert_eq!(
            (hi - lo + 1),
            seqs.len() as i64 + missed,
            "every sequence number is an event or in a missed-event gap"
        );
    }
}

/// PostgreSQL: Mosquitto killed and restarted, then the database closed for a while.
#[test]
fn postgres_exact_count_through_a_broker_restart_and_a_database_outage() {
    let t0 = Instant::now();
    runtime().block_on(async {
        let Some(mut site) = Site::new(true).await else {
            return;
        };
        let ingest = site.ingest();
        let agent = site.agent();
        site.grows(200, 2, "data flows").await;

        say("broker: kill -9, then restart on its port");
        site.broker.stop();
        let m0 = agent.metrics().unwrap_or_default();
        let polled0 = metric(&m0, "flowsquare_readings_polled_total").unwrap_or(0.0);
        assert!(
            wait_until(WAIT, || agent
                .metrics()
                .and_then(|m| metric(&m, "flowsquare_readings_polled_total"))
                .is_some_and(|p| p >= polled0 + 100.0)),
            "the agent polls on while the broker is down"
        );
        site.broker.restart().expect("restart mosquitto");
        site.grows(300, 2, "data flows after the broker restart")
            .await;

        say("database: ALLOW_CONNECTIONS false + pg_terminate_backend");
        site.db.take_down().await;
        assert!(
            wait_until(WAIT, || ingest
                .metric("flowsquare_ingest_commit_errors_total")
                .is_some_and(|v| v > 0.0)),
            "the ingest hits the outage"
        );
        assert!(
            wait_until(WAIT, || agent
                .metrics()
                .and_then(|m| metric(&m, "flowsquare_buffer_readings"))
                .is_some_and(|v| v >= 150.0)),
            "the agent keeps what the cloud cannot commit"
        );
        site.db.bring_back().await;
        site.grows(300, 2, "the backlog is committed after the outage")
            .await;

        let run = agent.stop();
        site.runs.push(run);
        site.verify().await;
        ingest.stop(WAIT);
    });
    say(&format!("took {:.1} s", t0.elapsed().as_secs_f64()));
}

/// PostgreSQL: SIGKILL of the agent (restarted on the same buffer), then of the ingest.
#[test]
fn postgres_exact_count_through_sigkill_of_the_agent_and_of_the_ingest() {
    let t0 = Instant::now();
    runtime().block_on(async {
        let Some(mut site) = Site::new(true).await else {
            return;
        };
        let ingest = site.ingest();
        let agent = site.agent();
        site.grows(200, 2, "data flows").await;
        let run = agent.kill9();
        site.runs.push(run);
        let agent = site.agent();
        site.grows(200, 2, "data flows after the agent restart")
            .await;

        say("cloud-ingest: SIGKILL");
        ingest.kill9(WAIT);
        let m0 = agent.metrics().unwrap_or_default();
        let polled0 = metric(&m0, "flowsquare_readings_polled_total").unwrap_or(0.0);
        assert!(
            wait_until(WAIT, || agent
                .metrics()
                .and_then(|m| metric(&m, "flowsquare_readings_polled_total"))
                .is_some_and(|p| p >= polled0 + 100.0)),
            "the agent polls on while the ingest is down"
        );
        let ingest = site.ingest();
        site.grows(300, 2, "data flows after the ingest restart")
            .await;

        let run = agent.stop();
        site.runs.push(run);
        site.verify().await;
        ingest.stop(WAIT);
    });
    say(&format!("took {:.1} s", t0.elapsed().as_secs_f64()));
}

/// The embedded SQLite store (the default without a database URL): a broker restart, SIGKILL
/// of the ingest and of the agent.
#[test]
fn sqlite_exact_count_through_a_broker_restart_and_sigkill_of_both() {
    let t0 = Instant::now();
    runtime().block_on(async {
        let Some(mut site) = Site::new(false).await else {
            return;
        };
        let ingest = site.ingest();
        let agent = site.agent();
        site.grows(200, 2, "data flows").await;
        // The metrics as last read once the agent had deleted acknowledged readings.
        let mut seen = String::new();
        assert!(
            wait_until(WAIT, || {
                seen = agent.metrics().unwrap_or_default();
                metric(&seen, "flowsquare_readings_acked_total").is_some_and(|v| v > 0.0)
            }),
            "the agent takes the ingest's signed acks"
        );
        assert_eq!(
            metric(&seen, "flowsquare_acks_forged_total"),
            Some(0.0),
            "no signed ack refused"
        );

        say("broker: kill -9, then restart on its port");
        site.broker.stop();
        site.broker.restart().expect("restart mosquitto");
        site.grows(200, 2, "data flows after the broker restart")
            .await;

        say("cloud-ingest: SIGKILL");
        ingest.kill9(WAIT);
        let ingest = site.ingest();
        site.grows(200, 2, "data flows after the ingest restart")
            .await;

        let run = agent.kill9();
        site.runs.push(run);
        let agent = site.agent();
        site.grows(200, 2, "data flows after the agent restart")
            .await;

        let run = agent.stop();
        site.runs.push(run);
        site.verify().await;
        ingest.stop(WAIT);
    });
    say(&format!("took {:.1} s", t0.elapsed().as_secs_f64()));
}

// ---------------------------------------------------------------------------------------------
// Custody across replaced buffers (issue 13): a buffer deleted between runs, a corrupt one
// quarantined, and a spare gateway taking over with the same site and agent ids. Batch ids
// restart at 1 in every new buffer database; the buffer epoch in each frame keeps them apart in
// the cloud's ledger, so nothing is taken for a re-send and dropped.

impl Site {
    /// The agent config with its buffer in the state directory `name` (another gateway with the
    /// same ids, or the same one after its state was wiped).
    fn gateway(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.agent_cfg).expect("agent config");
        let state = self.dir.path().join(name);
        std::fs::create_dir_all(&state).expect("state dir");
        let text = text.replace(
            &format!("path = \"{}/buffer.db\"", self.dir.path().display()),
            &format!("path = \"{}/buffer.db\"", state.display()),
        );
        let path = self.dir.path().join(format!("agent-{name}.toml"));
        std::fs::write(&path, text).expect("gateway config");
        path
    }

    fn agent_on(&mut self, config: &Path) -> Agent {
        self.agents += 1;
        say(&format!(
            "starting edge-agent (run {}) with {}",
            self.agents,
            config.display()
        ));
        Agent::start(config, self.agents)
    }

    /// The exact count when buffers were replaced between runs: stored readings + known gap
    /// counts = every reading the runs polled; every reading not stored lies in a reported gap;
    /// nothing stored twice or invented; every captured record stored once (by the PLC's own
    /// sequence number: a new buffer numbers its events afresh, and the record on display at its
    /// start is captured again and recognised by the cloud).
    async fn verify_exact(&self) {
        let s = self.db.stored().await;
        let mut produced: BTreeMap<(String, i64), usize> = BTreeMap::new();
        for r in &self.runs {
            for k in &r.out.readings {
                *produced.entry(k.clone()).or_default() += 1;
            }
        }
        let polled: usize = produced.values().sum();
        for (k, n) in &s.readings {
            let p = produced.get(k).copied().unwrap_or(0);
            assert!(p > 0, "a reading nobody polled was stored: {k:?}");
            assert!(*n <= p, "{k:?} stored {n} times, polled {p} times");
        }
        let windows: Vec<_> = s.gaps.iter().filter(|g| g.0 != "missed-event").collect();
        let mut lost = 0usize;
        for (k, p) in &produced {
            let n = s.readings.get(k).copied().unwrap_or(0);
            if n < *p {
                assert!(
                    windows.iter().any(|g| k.1 >= g.1 && k.1 <= g.2),
                    "{k:?} lost outside every reported window {windows:?}"
                );
                lost += p - n;
            }
        }
        let counted: i64 = windows.iter().filter_map(|g| g.3).sum();
        let stored = s.readings();
        say(&format!(
            "count: polled {polled}, stored {stored}, lost {lost}, counted in gaps {counted}; gaps {:?}",
            s.gaps
        ));
        assert_eq!(
            stored + counted as usize,
            polled,
            "stored + gap counts = polled, exactly"
        );
        let captured: std::collections::BTreeSet<_> = self
            .runs
            .iter()
            .flat_map(|r| r.out.plc_events.iter().cloned())
            .collect();
        for (k, n) in &s.plc_events {
            assert_eq!(*n, 1, "record {k:?} stored {n} times");
        }
        let stored_ev: std::collections::BTreeSet<_> = s.plc_events.keys().cloned().collect();
        assert_eq!(stored_ev, captured, "every captured record, once");
    }
}

/// The buffer's files (database, WAL, shared memory and side files) in `dir`.
fn buffer_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("buffer.db"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Damage the buffer so that SQLite's `quick_check` fails while every row of the segment table
/// can still be read: the root page of an index is overwritten with garbage. The agent must
/// quarantine the file and salvage all of it.
fn break_an_index(db: &Path) {
    let (root, page) = {
        let c = rusqlite::Connection::open(db).expect("open buffer");
        c.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .expect("checkpoint");
        let root: i64 = c
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'segment' ORDER BY name LIMIT 1",
                [],
                |r| r.get(0),
            )
            .expect("an index on segment");
        let page: i64 = c
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        (root, page)
    };
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(db)
        .expect("open for damage");
    f.seek(SeekFrom::Start(((root - 1) * page) as u64))
        .expect("seek");
    f.write_all(&vec![0xA5; page as usize]).expect("damage");
    say(&format!(
        "buffer damaged: index root page {root} overwritten"
    ));
}

/// PostgreSQL: the agent's buffer deleted between two runs, then a corrupt buffer (holding
/// unsent data of a run killed while the broker was down) quarantined and salvaged.
#[test]
fn postgres_exact_count_with_a_deleted_and_a_corrupt_buffer() {
    let t0 = Instant::now();
    runtime().block_on(async {
        let Some(mut site) = Site::new(true).await else {
            return;
        };
        let state = site.dir.path().to_path_buf();
        let ingest = site.ingest();
        let agent = site.agent();
        site.grows(200, 2, "data flows").await;
        let run = agent.stop();
        site.runs.push(run);

        for f in buffer_files(&state) {
            std::fs::remove_file(&f).expect("delete buffer file");
        }
        say("buffer deleted: the next run starts a new buffer (batch ids from 1 again)");
        let agent = site.agent();
        site.grows(
            200,
            2,
            "the new buffer's batches are stored, not taken for re-sends",
        )
        .await;
        let run = agent.stop();
        site.runs.push(run);

        say("broker down; the agent buffers, then dies with unsent data");
        site.broker.stop();
        let agent = site.agent();
        assert!(
            wait_until(WAIT, || agent
                .metrics()
                .and_then(|m| metric(&m, "flowsquare_buffer_readings"))
                .is_some_and(|v| v >= 150.0)),
            "the agent buffers while the broker is down"
        );
        let run = agent.kill9();
        site.runs.push(run);
        break_an_index(&state.join("buffer.db"));
        site.broker.restart().expect("restart mosquitto");
        let agent = site.agent();
        site.grows(200, 2, "salvaged and new data flow").await;
        assert!(
            agent.log().contains("salvag"),
            "the agent says what it salvaged:\n{}",
            agent.log()
        );
        let run = agent.stop();
        site.runs.push(run);
        site.verify_exact().await;
        ingest.stop(WAIT);
    });
    say(&format!("took {:.1} s", t0.elapsed().as_secs_f64()));
}

/// SQLite store: a spare gateway takes over the site and agent ids of a broken one, three
/// times, each with its own buffer; the broken one is killed once with data in flight and comes
/// back later with its old buffer.
#[test]
fn sqlite_exact_count_across_three_spare_gateway_takeovers() {
    let t0 = Instant::now();
    runtime().block_on(async {
        let Some(mut site) = Site::new(false).await else {
            return;
        };
        let ingest = site.ingest();
        let (a, b) = (site.gateway("gw-a"), site.gateway("gw-b"));
        let agent = site.agent_on(&a);
        site.grows(200, 2, "gateway A").await;
        let run = agent.kill9();
        site.runs.push(run);
        for (i, cfg) in [&b, &a, &b].into_iter().enumerate() {
            let agent = site.agent_on(cfg);
            site.grows(200, 2, &format!("takeover {}", i + 1)).await;
            let run = agent.stop();
            site.runs.push(run);
        }
        site.verify_exact().await;
        let replaced = site
            .db
            .stored()
            .await
            .gaps
            .iter()
            .filter(|g| g.0 == "buffer-replaced")
            .count();
        assert!(replaced >= 1, "the cloud records the buffer replacement");
        ingest.stop(WAIT);
    });
    say(&format!("took {:.1} s", t0.elapsed().as_secs_f64()));
}
