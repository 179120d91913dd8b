//! OPC UA acquisition against real servers: the site simulator's async-opcua server (in-process,
//! and as a separate process for the restart test), with security Basic256Sha256
//! SignAndEncrypt and explicitly trusted certificates, and the third-party python `asyncua`
//! server.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{map, Running};
use edge_agent::config::parse_str;
use edge_agent::drivers::opcua::{pki, OpcUaSession};
use edge_agent::drivers::read_once;
use edge_agent::model::{Quality, Reading, Value};
use flowsquare_tests::{external, workspace_root, Proc};
use opcua::types::{NodeId, Variant};
use site_sim::opcua::{OpcUaSim, OpcUaSimConfig};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");
const WAIT: Duration = Duration::from_secs(30);

async fn sim(dir: &Path, cfg: impl FnOnce(&mut OpcUaSimConfig)) -> OpcUaSim {
    let mut c = OpcUaSimConfig::new(dir.join("server-pki"), Duration::from_millis(100));
    cfg(&mut c);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    OpcUaSim::start(c, l).await.expect("opcua sim")
}

fn tag_id(m: &edge_agent::config::TagMap, name: &str) -> u32 {
    m.tag_by_name(name).expect("tag").id
}

fn of(seen: &[Reading], id: u32) -> Vec<&Reading> {
    seen.iter().filter(|r| r.tag == id).collect()
}

fn distinct_good(seen: &[Reading], id: u32) -> usize {
    let mut v: Vec<String> = of(seen, id)
        .iter()
        .filter(|r| r.quality == Quality::Good)
        .map(|r| format!("{:?}", r.value))
        .collect();
    v.dedup();
    v.len()
}

fn agent_map(endpoint: &str, dir: &Path, mode: &str, extra_device: &str, tags: &str) -> String {
    format!(
        r#"
[agent]
site = "t"
id = "gw"
metrics = "off"

[buffer]
path = "{dir}/buffer.db"

[[device]]
name = "dcs"
protocol = "opcua"
endpoint = "{endpoint}"
mode = "{mode}"
poll_interval = "100ms"
publishing_interval = "100ms"
reconnect_min = "100ms"
reconnect_max = "500ms"
request_timeout = "2s"
{extra_device}
{tags}
"#,
        dir = dir.display()
    )
}

fn demo_tags(ns: u16) -> String {
    format!(
        r#"
  [[device.tag]]
  name = "tank/level"
  node = "ns={ns};s=Tank101.Level"
  type = "float"
  [[device.tag]]
  name = "tank/counter"
  node = "nsu=urn:flowsquare:site-sim;s=Counter"
  type = "integer"
  [[device.tag]]
  name = "pump/running"
  node = "ns={ns};s=Pump1.Running"
  type = "bool"
  kind = "state"
  [[device.tag]]
  name = "gantry/status"
  node = "ns={ns};s=Gantry.Status"
  type = "string"
  kind = "state"
  [[device.tag]]
  name = "bad/text-as-float"
  node = "ns={ns};s=Bad.Text"
  type = "float"
  [[device.tag]]
  name = "bad/missing"
  node = "ns={ns};s=No.Such.Node"
"#
    )
}

/// Both modes against the in-process simulator: changing values arrive, wrong types and unknown
/// nodes are bad readings (counted per device), nothing panics.
async fn changing_values(mode: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = sim(dir.path(), |_| {}).await;
    let m = map(&agent_map(
        &s.endpoint,
        dir.path(),
        mode,
        "",
        &demo_tags(s.ns),
    ));
    let (level, counter, running, status, text, missing) = (
        tag_id(&m, "tank/level"),
        tag_id(&m, "tank/counter"),
        tag_id(&m, "pump/running"),
        tag_id(&m, "gantry/status"),
        tag_id(&m, "bad/text-as-float"),
        tag_id(&m, "bad/missing"),
    );
    let mut run = Running::start(&m);
    let ok = run
        .until(WAIT, |seen| {
            distinct_good(seen, counter) >= 5
                && distinct_good(seen, level) >= 3
                && !of(seen, text).is_empty()
                && !of(seen, missing).is_empty()
        })
        .await;
    let stats = run.acq.as_ref().expect("running").stats[0].clone();
    run.stop().await;
    assert!(
        ok,
        "{mode}: readings seen: {:?}",
        run.seen.iter().take(20).collect::<Vec<_>>()
    );
    let seen = &run.seen;
    // Counter values come as integers and never go back.
    let counts: Vec<i64> = of(seen, counter)
        .iter()
        .filter_map(|r| match r.value {
            Some(Value::Int(i)) => Some(i),
            _ => None,
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(of(seen, running)
        .iter()
        .any(|r| matches!(r.value, Some(Value::Bool(_)))));
    assert!(of(seen, status)
        .iter()
        .any(|r| matches!(&r.value, Some(Value::Text(t)) if t == "loading" || t == "idle")));
    let t = of(seen, text)[0];
    assert_eq!(t.quality, Quality::BadDecode, "{t:?}");
    assert!(t.error.as_deref().unwrap_or("").contains("String"), "{t:?}");
    let miss = of(seen, missing)[0];
    assert_eq!(miss.quality, Quality::BadDevice, "{miss:?}");
    assert_eq!(miss.error.as_deref(), Some("BadNodeIdUnknown"));
    assert_eq!(
        miss.status,
        Some(opcua::types::StatusCode::BadNodeIdUnknown.bits())
    );
    let extras = stats.extras();
    let fig = |n: &str| extras.iter().find(|(k, _)| *k == n).map(|(_, f)| f.value);
    assert!(fig("opcua_bad_values").unwrap_or(0.0) >= 1.0, "{extras:?}");
    assert!(fig("opcua_bad_status").unwrap_or(0.0) >= 1.0, "{extras:?}");
    s.stop().await;
}

#[tokio::test]
async fn subscription_mode_delivers_changes_and_bad_values_as_bad_readings() {
    changing_values("subscription").await;
}

#[tokio::test]
async fn polling_mode_reads_changing_values_every_cycle() {
    changing_values("polling").await;
}

#[tokio::test]
async fn read_once_and_the_session_api_read_and_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = sim(dir.path(), |_| {}).await;
    let m = map(&agent_map(
        &s.endpoint,
        dir.path(),
        "subscription",
        "",
        &demo_tags(s.ns),
    ));
    assert!(
        s.get("Tank101.Level").is_some(),
        "simulator has no Tank101.Level in ns {}",
        s.ns
    );
    let readings = read_once(&m, None).await;
    assert_eq!(readings.len(), m.tags.len(), "{readings:?}");
    let level = &readings[tag_id(&m, "tank/level") as usize];
    assert_eq!(level.quality, Quality::Good, "{level:?}");

    // The same through the command line: `edge-agent read --once`.
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        agent_map(
            &s.endpoint,
            dir.path(),
            "subscription",
            "",
            &demo_tags(s.ns),
        ),
    )
    .expect("write map");
    let out = tokio::process::Command::new(BIN)
        .args(["read", "--once", "--format", "jsonl", "--config"])
        .arg(&cfg)
        .output()
        .await
        .expect("edge-agent read");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.lines().count(), m.tags.len(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("\"tank/level\"") && l.contains("\"good\"")),
        "{text}"
    );
    assert!(text.contains("BadNodeIdUnknown"), "{text}");

    // The API another feature (gantry event capture) binds to.
    let dev = m.devices[0].driver.opcua().expect("opcua").clone();
    let session = OpcUaSession::connect(
        &dev,
        &dir.path().join("pki"),
        &pki::Identity::of(&m.agent_context()),
        "test",
    )
    .await
    .expect("session");
    let setpoint = NodeId::new(s.ns, "Gantry.Setpoint");
    let st = session
        .write_value(&setpoint, Variant::Double(42.5))
        .await
        .expect("write");
    assert!(st.is_good(), "{st}");
    let back = session
        .read_nodes(&[setpoint, NodeId::new(s.ns, "No.Such")])
        .await
        .expect("read");
    assert_eq!(back[0].value, Some(Variant::Double(42.5)));
    assert_eq!(
        back[1].status,
        Some(opcua::types::StatusCode::BadNodeIdUnknown)
    );
    assert_eq!(s.get("Gantry.Setpoint"), Some(Variant::Double(42.5)));
    session.close().await;
    s.stop().await;
}

/// Security Basic256Sha256 SignAndEncrypt with user/password: the server certificate is not
/// trusted until the engineer trusts it with `edge-agent opcua certs trust`; then data flows
/// without restarting the agent. The agent's certificate is made by `edge-agent opcua certs
/// renew` for `[agent] site`/`id` (subject and application URI), is the one the session presents
/// (the server trusts only it), and is reused.
#[tokio::test]
async fn sign_and_encrypt_needs_an_explicitly_trusted_server_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_pki = dir.path().join("agent-pki");
    let own = pki::own_cert_path(&agent_pki);
    // The server's PKI is read when the simulator starts: trust the agent there after renew.
    let server_pki = dir.path().join("server-pki");
    let s = sim(dir.path(), |c| {
        c.secure = true;
        c.trust_clients = false;
        c.users = vec![("operator".into(), "s3cret".into())];
    })
    .await;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret\n").expect("password file");
    let extra = format!(
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\nauth = \"username\"\nusername = \"operator\"\npassword_file = \"{}\"\npki_dir = \"{}\"",
        pw.display(),
        agent_pki.display()
    );
    let tags = format!(
        "  [[device.tag]]\n  name = \"tank/counter\"\n  node = \"ns={};s=Counter\"\n",
        s.ns
    );
    let m = map(&agent_map(
        &s.endpoint,
        dir.path(),
        "subscription",
        &extra,
        &tags,
    ));
    let cfg = dir.path().join("secure.toml");
    std::fs::write(
        &cfg,
        agent_map(&s.endpoint, dir.path(), "subscription", &extra, &tags),
    )
    .expect("write map");
    let renew = Command::new(BIN)
        .args(["opcua", "certs", "renew", "--config"])
        .arg(&cfg)
        .output()
        .expect("certs renew");
    let text = String::from_utf8_lossy(&renew.stdout).to_string();
    assert!(
        renew.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&renew.stderr)
    );
    let who = pki::Identity::of(&m.agent_context());
    let uri = who.application_uri();
    assert!(text.contains(&format!("application uri {uri}")), "{text}");
    assert!(text.contains("must trust"), "{text}");
    let shown = Command::new(BIN)
        .args(["opcua", "certs", "show", "--config"])
        .arg(&cfg)
        .output()
        .expect("certs show");
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(
        shown.contains(&format!("CN={}", who.common_name())) && shown.contains("O=FlowSquare"),
        "{shown}"
    );
    assert!(shown.contains("matches [agent] site/id"), "{shown}");
    let own_der = std::fs::read(&own).expect("read own cert");
    // The server trusts only the agent's renewed certificate.
    pki::trust_file(&server_pki, &own).expect("server trusts the agent");
    let counter = tag_id(&m, "tank/counter");
    let mut run = Running::start(&m);
    // Untrusted: bad-communication, and the server certificate waits under rejected/.
    assert!(
        run.until(WAIT, |seen| of(seen, counter)
            .iter()
            .any(|r| r.quality == Quality::BadCommunication))
            .await
    );
    let why = run
        .seen
        .last()
        .and_then(|r| r.error.clone())
        .unwrap_or_default();
    assert!(
        flowsquare_tests::wait_until(WAIT, || pki::list(&agent_pki)
            .iter()
            .any(|c| c.state == pki::CertState::Rejected)),
        "no rejected server certificate; agent says: {why}"
    );
    assert!(run.seen.iter().all(|r| r.quality != Quality::Good));
    let listed = Command::new(BIN)
        .args(["opcua", "certs", "list", "--pki-dir"])
        .arg(&agent_pki)
        .output()
        .expect("certs list");
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    let rejected = text
        .lines()
        .find(|l| l.starts_with("rejected"))
        .unwrap_or_else(|| panic!("no rejected certificate listed:\n{text}"));
    let thumb = rejected.split_whitespace().nth(1).expect("thumbprint");
    let trust = Command::new(BIN)
        .args(["opcua", "certs", "trust", "--pki-dir"])
        .arg(&agent_pki)
        .arg(&thumb[..12])
        .output()
        .expect("certs trust");
    assert!(
        trust.status.success(),
        "{}",
        String::from_utf8_lossy(&trust.stderr)
    );
    // Trusted: the next reconnect succeeds and values flow, encrypted.
    let ok = run
        .until(WAIT, |seen| distinct_good(seen, counter) >= 3)
        .await;
    run.stop().await;
    assert!(ok, "no good readings after trusting: {:?}", run.seen.last());
    // The agent's certificate was reused, not regenerated.
    assert_eq!(std::fs::read(&own).expect("own cert"), own_der);
    assert_eq!(
        pki::ensure_own_certificate(&agent_pki, &who).expect("own again"),
        uri
    );
    assert_eq!(std::fs::read(&own).expect("own cert"), own_der);
    s.stop().await;
}

/// Child-process mode of this test binary: serve the simulator until killed. The restart test
/// runs it as a separate process (it sets FLOWSQUARE_OPCUA_SIM_ADDR); otherwise it returns.
#[test]
fn opcua_sim_child_process() {
    let Ok(addr) = std::env::var("FLOWSQUARE_OPCUA_SIM_ADDR") else {
        return;
    };
    let pki = std::env::var("FLOWSQUARE_OPCUA_SIM_PKI").expect("pki dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let l = TcpListener::bind(&addr).await.expect("bind");
        let s = OpcUaSim::start(OpcUaSimConfig::new(pki, Duration::from_millis(100)), l)
            .await
            .expect("sim");
        // libtest has printed "test … ... " without a newline: start a fresh line.
        println!("\nlistening opcua {}", s.addr);
        std::future::pending::<()>().await;
    });
}

fn spawn_sim(addr: &str, pki: &Path) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "opcua_sim_child_process",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("FLOWSQUARE_OPCUA_SIM_ADDR", addr)
    .env("FLOWSQUARE_OPCUA_SIM_PKI", pki);
    Proc::spawn(cmd, 1, WAIT).expect("simulator process")
}

/// The server process is killed and started again on the same port: the tags go
/// bad-communication, then data resumes — same agent, no restart — and the reconnect is counted.
async fn restart(mode: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spki = dir.path().join("server-pki");
    let mut server = spawn_sim("127.0.0.1:0", &spki);
    let addr = server.listening[0].clone();
    let endpoint = format!("opc.tcp://{addr}/");
    let tags = "  [[device.tag]]\n  name = \"tank/counter\"\n  node = \"nsu=urn:flowsquare:site-sim;s=Counter\"\n  type = \"integer\"\n";
    let m = map(&agent_map(&endpoint, dir.path(), mode, "", tags));
    let counter = tag_id(&m, "tank/counter");
    let mut run = Running::start(&m);
    assert!(
        run.until(WAIT, |seen| distinct_good(seen, counter) >= 3)
            .await
    );
    server.kill();
    let before = run.seen.len();
    assert!(
        run.until(WAIT, |seen| seen[before..].iter().any(
            |r| r.tag == counter && r.quality == Quality::BadCommunication
        ))
        .await,
        "{mode}: no bad-communication reading after the server died"
    );
    let _server = spawn_sim(&addr, &spki);
    let lost = run.seen.len();
    // A fresh server counts from 1 again: good values after the restart prove the new session.
    let ok = run
        .until(WAIT, |seen| {
            seen[lost..]
                .iter()
                .filter(|r| r.tag == counter && r.quality == Quality::Good)
                .count()
                >= 3
        })
        .await;
    let stats = run.acq.as_ref().expect("running").stats[0].clone();
    run.stop().await;
    assert!(ok, "{mode}: data did not resume: {:?}", run.seen.last());
    let reconnects = stats
        .extras()
        .iter()
        .find(|(k, _)| *k == "opcua_reconnects")
        .map(|(_, f)| f.value)
        .unwrap_or(0.0);
    assert!(reconnects >= 1.0, "{:?}", stats.extras());
}

#[tokio::test]
async fn subscription_comes_back_after_a_server_restart() {
    restart("subscription").await;
}

#[tokio::test]
async fn polling_comes_back_after_a_server_restart() {
    restart("polling").await;
}

/// Interoperability: the python `asyncua` server (tests/support/asyncua_server.py), both modes,
/// namespace URIs resolved against its namespace array, a bad status mapped.
#[tokio::test]
async fn reads_and_subscribes_to_the_python_asyncua_server() {
    let Some(py) = external::python() else {
        external::missing("python virtualenv with asyncua");
        return;
    };
    if !Command::new(&py)
        .args(["-c", "import asyncua"])
        .status()
        .is_ok_and(|s| s.success())
    {
        external::missing("python package asyncua");
        return;
    }
    let mut cmd = Command::new(py);
    cmd.arg(workspace_root().join("tests/support/asyncua_server.py"));
    let server = Proc::spawn(cmd, 1, WAIT).expect("asyncua server");
    let endpoint = &server.listening[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let ns = "nsu=urn:flowsquare:asyncua-test;s=Tank201";
    let tags = format!(
        r#"
  [[device.tag]]
  name = "tk201/level"
  node = "{ns}.Level"
  type = "float"
  [[device.tag]]
  name = "tk201/count"
  node = "{ns}.Count"
  type = "integer"
  [[device.tag]]
  name = "tk201/name"
  node = "{ns}.Name"
  type = "string"
  [[device.tag]]
  name = "tk201/valve"
  node = "{ns}.Valve"
  type = "bool"
  [[device.tag]]
  name = "tk201/broken"
  node = "{ns}.Broken"
"#
    );
    for mode in ["polling", "subscription"] {
        let text = agent_map(endpoint, dir.path(), mode, "", &tags);
        let (m, _) = parse_str("interop.toml", &text).expect("valid map");
        let count = tag_id(&m, "tk201/count");
        let broken = tag_id(&m, "tk201/broken");
        let once = read_once(&m, None).await;
        assert_eq!(once.len(), 5, "{once:?}");
        let name = &once[tag_id(&m, "tk201/name") as usize];
        assert_eq!(name.value, Some(Value::Text("TK-201".into())), "{name:?}");
        let b = &once[broken as usize];
        assert_eq!(b.quality, Quality::BadDevice, "{b:?}");
        assert_eq!(b.error.as_deref(), Some("BadSensorFailure"));
        let mut run = Running::start(&m);
        let ok = run
            .until(WAIT, |seen| distinct_good(seen, count) >= 3)
            .await;
        run.stop().await;
        assert!(ok, "{mode}: {:?}", run.seen.last());
        assert!(of(&run.seen, tag_id(&m, "tk201/level"))
            .iter()
            .any(|r| matches!(r.value, Some(Value::Float(f)) if f > 1000.0)));
    }
    drop(server);
}

/// A server whose clock is far off: subscription readings carry the gateway's time, quality
/// `time-substituted`, the server's time in `error`, counted per device; the initial value of
/// a monitored item (whose old source time only says the value has not changed) keeps its
/// quality; `timestamps = "gateway"` stamps everything with the gateway's time, quality good.
async fn server_clock_off(offset_ms: i64, extra_device: &str) -> (Vec<Reading>, f64, u32) {
    server_clock_off_in(offset_ms, "subscription", extra_device).await
}

async fn server_clock_off_in(
    offset_ms: i64,
    mode: &str,
    extra_device: &str,
) -> (Vec<Reading>, f64, u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = sim(dir.path(), |c| c.clock_offset_ms = offset_ms).await;
    let m = map(&agent_map(
        &s.endpoint,
        dir.path(),
        mode,
        extra_device,
        &demo_tags(s.ns),
    ));
    let counter = tag_id(&m, "tank/counter");
    let started = edge_agent::model::now_ms();
    let mut run = Running::start(&m);
    let ok = run.until(WAIT, |seen| of(seen, counter).len() >= 5).await;
    let stats = run.acq.as_ref().expect("running").stats[0].clone();
    run.stop().await;
    s.stop().await;
    assert!(
        ok,
        "readings seen: {:?}",
        run.seen.iter().take(20).collect::<Vec<_>>()
    );
    let ended = edge_agent::model::now_ms();
    let seen: Vec<Reading> = run
        .seen
        .iter()
        .filter(|r| r.tag == counter)
        .cloned()
        .collect();
    for r in &seen {
        assert!(
            (started..=ended).contains(&r.ts_ms),
            "stamped with the gateway's time: {r:?}"
        );
    }
    let substituted = stats
        .extras()
        .iter()
        .find(|(k, _)| *k == "time_substituted")
        .map_or(0.0, |(_, f)| f.value);
    (seen, substituted, counter)
}

#[tokio::test]
async fn a_server_clock_ten_days_behind_gives_time_substituted_readings() {
    let (seen, substituted, _) = server_clock_off(-10 * 86_400_000, "").await;
    // The first value is the monitored item's initial one: the gateway's time, quality kept.
    assert_eq!(seen[0].quality, Quality::Good, "{:?}", seen[0]);
    assert!(seen[0]
        .error
        .as_deref()
        .unwrap_or("")
        .starts_with("unchanged since source time "));
    // Every change after it: the server's clock is wrong.
    for r in &seen[1..] {
        assert_eq!(r.quality, Quality::TimeSubstituted, "{r:?}");
        assert!(r.value.is_some());
        let e = r.error.as_deref().unwrap_or("");
        assert!(
            e.starts_with("source time ") && e.contains("(skew -10 d)"),
            "{e}"
        );
    }
    assert!(substituted >= (seen.len() - 1) as f64, "{substituted}");
}

#[tokio::test]
async fn a_server_clock_ahead_is_substituted_from_the_first_value() {
    let (seen, substituted, _) = server_clock_off(20 * 60_000, "").await;
    for r in &seen {
        assert_eq!(r.quality, Quality::TimeSubstituted, "{r:?}");
        assert!(
            r.error.as_deref().unwrap_or("").contains("(skew +20 min)"),
            "{r:?}"
        );
    }
    assert!(substituted >= seen.len() as f64);
}

#[tokio::test]
async fn timestamps_gateway_keeps_readings_good_and_notes_the_server_time() {
    let (seen, substituted, _) = server_clock_off(
        -10 * 86_400_000,
        "timestamps = \"gateway\"\nmax_clock_skew = \"1m\"",
    )
    .await;
    for r in &seen {
        assert_eq!(r.quality, Quality::Good, "{r:?}");
        assert!(
            r.error.as_deref().unwrap_or("").contains("(skew -10 d)"),
            "{r:?}"
        );
    }
    assert_eq!(substituted, 0.0);
}

#[tokio::test]
async fn polling_stamps_the_request_time_and_notes_a_server_clock_ahead() {
    let (seen, substituted, _) = server_clock_off_in(20 * 60_000, "polling", "").await;
    for r in &seen {
        assert_eq!(r.quality, Quality::Good, "{r:?}");
        assert!(
            r.error.as_deref().unwrap_or("").contains("(skew +20 min)"),
            "{r:?}"
        );
    }
    // Behind: an old source time only says the value has not changed; nothing to note.
    let (seen, _, _) = server_clock_off_in(-10 * 86_400_000, "polling", "").await;
    for r in &seen {
        assert_eq!(
            (r.quality, r.error.as_deref()),
            (Quality::Good, None),
            "{r:?}"
        );
    }
    assert_eq!(substituted, 0.0);
}
