//! The `cloud-ingest` binary: check-config, migrate, and import of an export file (twice: stored
//! once), on the embedded SQLite store.

use std::process::Command;

use flowsquare_wire as wire;

const BIN: &str = env!("CARGO_BIN_EXE_cloud-ingest");

fn export_file(path: &std::path::Path, batches: u64, per: i64) {
    let birth = wire::Birth {
        v: 1,
        site: "far-site".into(),
        agent: "gw".into(),
        agent_version: "test".into(),
        config_hash: "h1".into(),
        started_ms: 0,
        devices: vec![wire::DeviceInfo {
            name: "plc".into(),
            protocol: "modbus-tcp".into(),
            description: None,
        }],
        tags: vec![wire::TagInfo {
            id: 0,
            name: "tank/level".into(),
            unit: Some("mm".into()),
            kind: "gauge".into(),
            device: "plc".into(),
            description: None,
            data_type: "f32".into(),
            poll_interval_ms: 1000,
        }],
        events: Vec::new(),
    };
    let mut out = b"FLOWSQUARE-EXPORT 1\n".to_vec();
    let mut frame = |bytes: Vec<u8>| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    };
    frame(birth.encode());
    for id in 1..=batches {
        let mut b = wire::Batch::new("far-site", "gw", id, "h1", 0);
        for i in 0..per {
            b.readings.push(wire::WireReading {
                tag: 0,
                ts_ms: 1_767_225_600_000 + (id as i64 * per + i) * 1000,
                value: Some(wire::WireValue::Float(i as f64)),
                quality: wire::Quality::Good,
                status: None,
                error: None,
                counter: None,
            });
        }
        frame(wire::encode(&b).expect("encode"));
    }
    std::fs::write(path, out).expect("write export");
}

#[test]
fn importing_an_export_twice_stores_it_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("ingest.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nsqlite_path = \"{}/ingest.db\"\n",
            dir.path().display()
        ),
    )
    .expect("cfg");
    let file = dir.path().join("site.fsx");
    export_file(&file, 12, 100);
    let run = || {
        Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("import")
            .arg(&file)
            .output()
            .expect("run")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        out.contains("12 batches stored (1200 readings), 0 already present"),
        "{out}"
    );
    let second = run();
    assert!(second.status.success());
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        out.contains("0 batches stored (0 readings), 12 already present"),
        "{out}"
    );
}

#[test]
fn a_truncated_export_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("ingest.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nsqlite_path = \"{}/ingest.db\"\n",
            dir.path().display()
        ),
    )
    .expect("cfg");
    let file = dir.path().join("site.fsx");
    export_file(&file, 3, 10);
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() - 7]).expect("truncate");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("import")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated frame"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_accepts_the_example_and_names_the_line_of_an_error() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/cloud-ingest.example.toml"
    );
    let out = Command::new(BIN)
        .args(["--config", example, "check-config"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[mqtt]\nbrokr = \"x\"\n").expect("write");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("check-config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("brokr"), "{err}");
}
