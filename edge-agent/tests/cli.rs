//! The `edge-agent` binary as a field engineer uses it: exit codes and output formats of `check`,
//! `plan`, `read --once` and `probe`, against the simulator (TCP in-process, RTU over a pty).

mod common;

use std::process::Command;

use common::SimTcp;
use flowsquare_tests::{workspace_root, PtyPair};

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");

const SIM: &str = r#"
[[unit]]
id = 1
[[unit.register]]
kind = "holding"
address = 0
type = "f32"
order = "CDAB"
value = 12.5
[[unit.register]]
kind = "holding"
address = 2
type = "u16"
value = 7
[unit.faults]
exception = { code = 2, kind = "holding", from = 50, to = 60 }
"#;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run edge-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_and_reports_every_error_with_its_location() {
    let example = workspace_root().join("config/agent.example.toml");
    let (code, out, _) = run(&["check", "--config", example.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: site demo-terminal agent gw-01"), "{out}");

    let bad =
        workspace_root().join("edge-agent/tests/tagmaps/type-does-not-fit-register/agent.toml");
    let (code, out, _) = run(&["check", "--config", bad.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors.len(), 9, "{out}");
    assert!(
        errors
            .iter()
            .all(|l| l.starts_with(bad.to_str().expect("utf8"))),
        "{out}"
    );
    assert!(
        out.contains("agent.toml:14:10: error: device 'm' tag 'a/coil-as-u16'"),
        "{out}"
    );
}

#[test]
fn check_of_a_missing_file_is_a_clear_error_not_a_panic() {
    let (code, _, err) = run(&["check", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read tag map /nonexistent/agent.toml"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// A tag map saved in Latin-1 (an "é" in a description) is refused at the first bad byte's
/// line and column, by `check` and by `run` alike.
#[test]
fn a_tag_map_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agent.toml");
    let mut text = b"[agent]\nsite = \"s\"\nid = \"gw\"\ndescription = \"caf".to_vec();
    text.extend_from_slice(b"\xE9 \xE9\"\n");
    std::fs::write(&path, &text).expect("write");
    let p = path.to_str().expect("utf8");
    let (code, out, err) = run(&["check", "--config", p]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{p}:4:19: error: the tag map is not UTF-8: byte 0xE9 here (save the file as UTF-8)"
        )),
        "{out}{err}"
    );
    let (code, out, err) = run(&["run", "--config", p]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains(":4:19: error: the tag map is not UTF-8"),
        "{out}{err}"
    );
}

fn tag_map(dir: &std::path::Path, addr: std::net::SocketAddr) -> std::path::PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            r#"[agent]
site = "s"
id = "a"
[[device]]
name = "d"
protocol = "modbus-tcp"
host = "{}"
port = {}
timeout = "500ms"
  [[device.tag]]
  name = "x/float"
  register = "holding"
  address = 0
  type = "f32"
  order = "CDAB"
  [[device.tag]]
  name = "x/count"
  register = "holding"
  address = 2
  [[device.tag]]
  name = "x/broken"
  register = "holding"
  address = 55
"#,
            addr.ip(),
            addr.port()
        ),
    )
    .expect("write map");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_once_prints_the_documented_json_lines() {
    let sim = SimTcp::start(SIM).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let map = tag_map(dir.path(), sim.addr);
    let out = tokio::task::spawn_blocking(move || {
        run(&[
            "read",
            "--config",
            map.to_str().expect("utf8"),
            "--once",
            "--format",
            "jsonl",
        ])
    })
    .await
    .expect("join");
    assert_eq!(out.0, 0, "{out:?}");
    let lines: Vec<serde_json::Value> = out
        .1
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.1);
    assert_eq!(lines[0]["tag"], "x/float");
    assert_eq!(lines[0]["value"], 12.5);
    assert_eq!(lines[0]["quality"], "good");
    assert!(lines[0].get("error").is_none());
    let ts = lines[0]["ts"].as_str().expect("ts");
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-01-01T00:00:00.000Z".len(),
        "{ts}"
    );
    assert_eq!(lines[1]["value"], 7);
    assert_eq!(lines[2]["tag"], "x/broken");
    assert_eq!(lines[2]["quality"], "bad-device");
    assert!(lines[2]["value"].is_null());
    assert!(lines[2]["error"]
        .as_str()
        .expect("error")
        .contains("exception 2"));

    // --tag limits the output; a table is the default format.
    let map = dir.path().join("agent.toml");
    let out = tokio::task::spawn_blocking(move || {
        run(&[
            "read",
            "--config",
            map.to_str().expect("utf8"),
            "--once",
            "--tag",
            "x/count",
        ])
    })
    .await
    .expect("join");
    assert_eq!(out.1.lines().count(), 2, "{}", out.1);
    assert!(out.1.starts_with("TAG"), "{}", out.1);
    assert!(
        out.1.contains("x/count") && !out.1.contains("x/float"),
        "{}",
        out.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_a_word_swapped_float_in_its_row() {
    let sim = SimTcp::start(SIM).await;
    let port = sim.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(&[
            "probe",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--unit",
            "1",
            "--register",
            "holding:0",
            "--count",
            "4",
        ])
    })
    .await
    .expect("join");
    assert_eq!(out.0, 0, "{out:?}");
    let row = out
        .1
        .lines()
        .find(|l| l.contains("CDAB") && l.contains("12.5 *"));
    assert!(row.is_some(), "{}", out.1);

    let port = sim.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(&[
            "probe",
            "modbus",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--register",
            "holding:50",
            "--count",
            "1",
        ])
    })
    .await
    .expect("join");
    assert_eq!(out.0, 1);
    assert!(
        out.1.contains("exception 2 (illegal data address)"),
        "{}",
        out.1
    );

    let out = run(&[
        "probe",
        "modbus",
        "--host",
        "127.0.0.1",
        "--register",
        "holdings:0",
    ]);
    assert_eq!(out.0, 2);
    assert!(out.2.contains("expected TABLE:ADDRESS"), "{}", out.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_over_a_serial_line() {
    let pty = PtyPair::new().expect("pty pair");
    let sim = std::sync::Arc::new(
        site_sim::modbus::Simulator::new(
            &site_sim::modbus::MapConfig::from_toml_str(SIM).expect("map"),
        )
        .expect("sim"),
    );
    let cfg = site_sim::modbus::server::SerialConfig::new(pty.a.display().to_string(), 9600);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = site_sim::modbus::server::serve_rtu_path(&cfg, sim, async move {
            let _ = stopped.await;
        })
        .await;
    });
    let path = pty.b.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(&[
            "probe",
            "modbus",
            "--serial",
            &path,
            "--baud",
            "9600",
            "--unit",
            "1",
            "--register",
            "holding:2",
            "--count",
            "1",
        ])
    })
    .await
    .expect("join");
    let _ = stop.send(());
    assert_eq!(out.0, 0, "{out:?}");
    assert!(out.1.contains("0x0007"), "{}", out.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_once_and_plan_show_event_definitions() {
    use site_sim::modbus::{Gantry, GantryConfig};
    let sim = SimTcp::start("[[unit]]\nid = 1\n").await;
    let g = Gantry::new(
        sim.sim.unit(1).expect("unit").clone(),
        GantryConfig {
            start_seq: 41,
            ..GantryConfig::default()
        },
    );
    let rec = g.complete_batch();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nsite = \"t\"\nid = \"gw\"\n[[device]]\nname = \"bay1\"\nprotocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"\nport = {}\n{}",
            sim.addr.port(),
            g.agent_event_toml("bay1-batch")
        ),
    )
    .expect("write");
    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(&[
            "read",
            "--config",
            p.to_str().expect("utf8"),
            "--once",
            "--format",
            "jsonl",
        ])
    })
    .await
    .expect("join");
    assert_eq!(out.0, 0, "{out:?}");
    let line: serde_json::Value = serde_json::from_str(out.1.trim()).expect("one json line");
    assert_eq!(line["event"], "gantry-batch");
    assert_eq!(line["source"], "bay1-batch");
    assert_eq!(line["seq"], 42, "the trigger value");
    assert_eq!(line["fields"]["bol"], rec.bol.as_str());

    let p = path.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(&["read", "--config", p.to_str().expect("utf8"), "--once"])
    })
    .await
    .expect("join");
    assert!(
        out.1.contains("event bay1-batch: trigger = 42"),
        "{}",
        out.1
    );

    let (code, out, _) = run(&[
        "plan",
        "--config",
        path.to_str().expect("utf8"),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let ev = &v["devices"][0]["events"][0];
    assert_eq!(ev["event"], "bay1-batch");
    assert_eq!(ev["trigger"]["function"], 3);
    assert_eq!(ev["trigger"]["start"], 100);
    assert_eq!(ev["fields"][0]["start"], 102);
    assert_eq!(
        ev["fields"][0]["count"], 35,
        "the record block in one request"
    );
}

/// Every command's output into a pipe whose reader is already gone (`… | head` after `head`
/// exited): exit status 0 and no panic message, never "failed printing to stdout: Broken pipe".
/// Exit 0 rather than death by SIGPIPE, so `cmd | head` also succeeds under `set -o pipefail`.
// `std::io::pipe` is newer than the MSRV (1.87 > 1.85): the tests build with the
// workspace toolchain; the binaries under test keep the MSRV.
#[allow(clippy::incompatible_msrv)]
#[test]
fn output_into_a_closed_pipe_exits_0_quietly() {
    let example = workspace_root().join("config/agent.example.toml");
    let example = example.to_str().expect("utf-8 path");
    for args in [
        vec!["plan", "--config", example],
        vec!["plan", "--config", example, "--format", "json"],
        vec!["--help"],
        vec!["opcua", "--help"],
    ] {
        // The reader end is closed before the child starts: its first write fails with EPIPE.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(BIN)
            .args(&args)
            .stdout(writer)
            .output()
            .expect("run edge-agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// `read --once` when no device answers (nothing listens on the port): exit status 1, and the
/// message names the error and says how to start the simulator the demo's tag map polls.
#[test]
fn read_once_with_no_device_answering_fails_and_says_how_to_start_the_simulator() {
    let dir = tempfile::tempdir().expect("tmp");
    // A port nothing listens on: bound, then released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let map = tag_map(dir.path(), addr);
    let (code, _, err) = run(&["read", "--once", "--config", map.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no device answered"), "{err}");
    assert!(
        err.contains(
            "flowsquare-sim modbus --map config/sim/modbus-demo.toml --tcp 127.0.0.1:5020"
        ),
        "{err}"
    );
}
