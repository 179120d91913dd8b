//! `browse opcua` and `read --once` against the site simulator's OPC UA server (in-process), as
//! the binary a field engineer runs: the browse table (names, OPC UA type names, namespace-0
//! server nodes hidden unless asked), and neither command leaving a `pki/` folder or any key in
//! the working directory.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use site_sim::opcua::{OpcUaSim, OpcUaSimConfig};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");

async fn sim(dir: &Path) -> OpcUaSim {
    let c = OpcUaSimConfig::new(dir.join("server-pki"), Duration::from_millis(100));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    OpcUaSim::start(c, l).await.expect("opcua sim")
}

fn run_in(cwd: &Path, args: Vec<String>) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(&args)
        .current_dir(cwd)
        .output()
        .expect("run edge-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_shows_names_and_type_names_hides_server_nodes_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = sim(dir.path()).await;
    let cwd = tempfile::tempdir().expect("cwd");
    let browse = |extra: &[&str]| {
        let mut a: Vec<String> = ["browse", "opcua", "--endpoint", &s.endpoint, "--depth", "2"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        let cwd = cwd.path().to_path_buf();
        tokio::task::spawn_blocking(move || run_in(&cwd, a))
    };
    let (code, out, err) = browse(&[]).await.expect("join");
    assert_eq!(code, 0, "{err}");
    let header = out.lines().find(|l| l.starts_with("NODE")).expect("header");
    assert!(
        header.contains("NAME") && header.contains("TYPE"),
        "{header}"
    );
    let level = out
        .lines()
        .find(|l| l.contains("s=Tank101.Level"))
        .unwrap_or_else(|| panic!("no Tank101.Level row:\n{out}"));
    assert!(
        level.contains(" Double "),
        "type name, not Scalar(Dou…: {level}"
    );
    assert!(level.contains("Level"), "name column: {level}");
    assert!(!out.contains("Scalar("), "{out}");
    assert!(
        !out.contains("i=2253"),
        "the Server object is hidden by default:\n{out}"
    );
    assert!(err.contains("--server-nodes"), "{err}");

    let (code, out, err) = browse(&["--server-nodes"]).await.expect("join");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("i=2253"),
        "--server-nodes lists the Server object:\n{out}"
    );

    assert!(
        entries(cwd.path()).is_empty(),
        "browse wrote into the working directory: {:?}",
        entries(cwd.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_once_writes_no_pki_into_the_working_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = sim(dir.path()).await;
    let cwd = tempfile::tempdir().expect("cwd");
    // No [buffer] path: the default PKI would be `pki/` beside a relative buffer, i.e. in cwd.
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[agent]
site = "t"
id = "gw"
metrics = "off"

[buffer]
path = "buffer.db"

[[device]]
name = "dcs"
protocol = "opcua"
endpoint = "{}"
  [[device.tag]]
  name = "tank/level"
  node = "ns={};s=Tank101.Level"
  type = "float"
"#,
            s.endpoint, s.ns
        ),
    )
    .expect("write map");
    let args: Vec<String> = ["read", "--once", "--format", "jsonl", "--config"]
        .iter()
        .map(|x| x.to_string())
        .chain([cfg.display().to_string()])
        .collect();
    let c = cwd.path().to_path_buf();
    let (code, out, err) = tokio::task::spawn_blocking(move || run_in(&c, args))
        .await
        .expect("join");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"quality\":\"good\""), "{out}{err}");
    assert!(
        entries(cwd.path()).is_empty(),
        "read --once wrote into the working directory: {:?}",
        entries(cwd.path())
    );
}
