//! The `flowsquare-sim` binary: listeners, stdout protocol, ports file, signals, gen-map.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use site_sim::modbus::{RegisterKind, Simulator, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_modbus::client::{tcp, Reader as _};
use tokio_modbus::Slave;

const BIN: &str = env!("CARGO_BIN_EXE_flowsquare-sim");
const BOUND: Duration = Duration::from_secs(10);

fn demo_map() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/sim/modbus-demo.toml")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("site-sim-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn demo_map_loads_with_the_documented_values() {
    let sim = Simulator::load(demo_map()).unwrap();
    let plc = sim.unit(1).unwrap();
    assert_eq!(
        plc.value(RegisterKind::Holding, 30).unwrap(),
        Value::Text("DIESEL".into())
    );
    assert_eq!(plc.value(RegisterKind::Coil, 0).unwrap(), Value::Bool(true));
    assert!(
        matches!(plc.value(RegisterKind::Holding, 20).unwrap(), Value::Float(x) if (x - 7.2).abs() < 1e-6)
    );
    assert_eq!(plc.faults().get().exceptions.len(), 2);
    assert!(sim.unit(2).unwrap().is_strict());
}

#[tokio::test]
async fn serves_listeners_until_sigterm() {
    let dir = scratch("serve");
    let ports_file = dir.join("ports");
    let mut child = Command::new(BIN)
        .args(["modbus", "--map"])
        .arg(demo_map())
        .args(["--tcp", "127.0.0.1:0", "--listeners", "3", "--ports-file"])
        .arg(&ports_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let line = tokio::time::timeout(BOUND, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let port: u16 = line
            .strip_prefix("listening tcp 127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap();
        ports.push(port);
    }
    let written: Vec<u16> = std::fs::read_to_string(&ports_file)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(written, ports);

    for port in &ports {
        let mut c = tcp::connect_slave(([127, 0, 0, 1], *port).into(), Slave(1))
            .await
            .unwrap();
        let words = tokio::time::timeout(BOUND, c.read_holding_registers(30, 4))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            words,
            [
                u16::from_be_bytes(*b"DI"),
                u16::from_be_bytes(*b"ES"),
                u16::from_be_bytes(*b"EL"),
                0
            ]
        );
    }

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gen_map_prints_a_valid_map_and_agent_tags() {
    let out = std::process::Command::new(BIN)
        .args(["gen-map", "--units", "2", "--tags", "100"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let sim = Simulator::from_toml_str(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    assert_eq!(sim.unit(2).unwrap().points().len(), 100);

    let out = std::process::Command::new(BIN)
        .args(["gen-map", "--tags", "10", "--agent-tags", "--port", "1502"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("[[device.tag]]").count(), 10);
}

#[test]
fn bad_input_fails_cleanly() {
    let dir = scratch("bad");
    let map = dir.join("map.toml");
    std::fs::write(&map, "[[unit]]\nid = 1\ncolour = 2\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["modbus", "--tcp", "127.0.0.1:0", "--map"])
        .arg(&map)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `colour`"), "{err}");
    assert!(out.stdout.is_empty());

    let out = std::process::Command::new(BIN)
        .args([
            "modbus",
            "--tcp",
            "127.0.0.1:5020",
            "--listeners",
            "2",
            "--map",
        ])
        .arg(demo_map())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs port 0"));

    let out = std::process::Command::new(BIN)
        .args(["modbus", "--map"])
        .arg(demo_map())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to serve"));

    let out = std::process::Command::new(BIN)
        .args(["modbus", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--map",
        "--tcp",
        "--listeners",
        "--rtu",
        "--baud",
        "--parity",
        "--stop-bits",
        "--ports-file",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Output into a pipe whose reader is gone (`flowsquare-sim gen-map … | head`): exit 0, no panic.
// `std::io::pipe` is newer than the MSRV (1.87 > 1.85): the tests build with the
// workspace toolchain; the binaries under test keep the MSRV.
#[allow(clippy::incompatible_msrv)]
#[test]
fn output_into_a_closed_pipe_exits_0_quietly() {
    for args in [
        vec!["gen-map", "--units", "2", "--tags", "1000"],
        vec!["--help"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = std::process::Command::new(BIN)
            .args(&args)
            .stdout(writer)
            .output()
            .expect("run flowsquare-sim");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
