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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowsquare_tests::chain::{
    modbus_sim, runtime, signal, wait_exit, AgentToml, Ingest, PgDb, SIM_TANK_FARM,
};
use flowsquare_tests::nats::Nats;
use flowsquare_tests::wait_until;

const WAIT: Duration = Duration::from_secs(60);

fn say(what: &str) {
    eprintln!("[second_broker] {what}");
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
    let toml = AgentToml {
        site: "nats",
        dir,
        broker: &nats.url(),
        root,
        sim_port,
        agent_extra: "",
        uplink_extra: "",
    };
    std::fs::write(&p, toml.render()).expect("agent config");
    p
}

/// The edge-agent binary (`flowsquare_tests::chain::Agent`): readings it handed to its buffer
/// are counted from its jsonl stream; a gap fails the test (the simulator is up throughout).
struct Agent {
    agent: flowsquare_tests::chain::Agent,
    readings: Arc<Mutex<u64>>,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        let readings = Arc::new(Mutex::new(0u64));
        let r = readings.clone();
        let agent = flowsquare_tests::chain::Agent::start(config, "agent.log", move |v, line| {
            if v["tag"].is_string() && v["ts"].is_string() {
                if let Ok(mut g) = r.lock() {
                    *g += 1;
                }
            } else if v["gap"].is_string() {
                panic!("unexpected gap (the simulator is up throughout): {line}");
            }
        });
        Agent { agent, readings }
    }

    fn readings(&self) -> u64 {
        *self.readings.lock().expect("lock")
    }

    fn log(&self) -> String {
        self.agent.log()
    }

    /// SIGTERM (drains); returns (polled, reported, readings in the jsonl stream).
    fn stop(self) -> (u64, u64, u64) {
        let stopped = self.agent.stop(WAIT);
        (
            stopped.field("polled"),
            stopped.field("reported"),
            *self.readings.lock().expect("lock"),
        )
    }
}

/// (rows, distinct (tag, ts) keys) of the readings table; (0, 0) before the schema exists.
fn stored(db: &PgDb, rt: &tokio::runtime::Runtime) -> (i64, i64) {
    rt.block_on(async {
        let Ok((c, conn)) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await else {
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

/// Wait until the database holds at least `n` readings.
fn wait_stored(
    rt: &tokio::runtime::Runtime,
    db: &PgDb,
    n: i64,
    what: &str,
    logs: impl Fn() -> String,
) {
    let ok = wait_until(WAIT, || stored(db, rt).0 >= n);
    assert!(
        ok,
        "{what}: {n} readings stored (have {:?}); logs:\n{}",
        stored(db, rt),
        logs()
    );
}

#[test]
fn nats_chain_exact_through_broker_restart_and_ingest_kill() {
    let t0 = Instant::now();
    let rt = runtime();
    let Some(nats) = Nats::start() else { return };
    let mut nats = nats.expect("nats-server");
    let Some(db) = rt.block_on(PgDb::create("fs_nats")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let (_sim, sim_port) = modbus_sim(dir.path(), SIM_TANK_FARM, WAIT);
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
    let ingest = Ingest::start(&ingest_cfg, 0, WAIT);
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
    let now = stored(&db, &rt).0;
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
    let ingest = Ingest::start(&ingest_cfg, 1, WAIT);
    let now = stored(&db, &rt).0;
    wait_stored(&rt, &db, now + 50, "after the ingest restart", || {
        logs(&agent, &ingest, &nats)
    });

    say("agent: SIGTERM (drains)");
    let (polled, reported, streamed) = agent.stop();
    assert_eq!(polled, reported, "agent counters");
    assert_eq!(polled, streamed, "agent counters vs its jsonl stream");
    let exact = wait_until(WAIT, || stored(&db, &rt).0 == polled as i64);
    let (rows, keys) = stored(&db, &rt);
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
    let ingest = Ingest::start(&cfg, 0, WAIT);
    assert!(
        !ingest.log_text().contains("delivery probe"),
        "probe passed quietly:\n{}",
        ingest.log_text()
    );
    say(&format!("ready with a shared group in {:?}", t0.elapsed()));
}
