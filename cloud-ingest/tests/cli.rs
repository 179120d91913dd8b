//! The `cloud-ingest` binary: check-config, migrate, and import of an export file (twice: stored
//! once), on the embedded SQLite store, and once on PostgreSQL (its rollups built at the end);
//! `calc` (JSON lines through the real binary).

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
        buffer: None,
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

/// On PostgreSQL (a database of its own on the local server; skipped without one) the import
/// builds the rollups of what it stored before it ends: no dirty mark is left.
#[test]
fn importing_into_postgresql_rolls_the_imported_minutes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = "host=127.0.0.1 port=5432 user=postgres";
    let name = format!("fs_test_cli_import_{}", std::process::id());
    let admin = rt.block_on(async {
        match tokio_postgres::connect(
            &format!("{server} dbname=postgres connect_timeout=5"),
            tokio_postgres::NoTls,
        )
        .await
        {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                Some(c)
            }
            Err(e) => {
                assert!(
                    std::env::var_os("FLOWSQUARE_REQUIRE_ALL").is_none(),
                    "PostgreSQL not reachable: {e}"
                );
                println!("SKIPPED: PostgreSQL not reachable ({e})");
                None
            }
        }
    });
    let Some(admin) = admin else { return };
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        rt.block_on(admin.batch_execute(&sql))
            .expect("create database");
    }
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("ingest.toml");
    std::fs::write(
        &cfg,
        format!("[database]\nurl = \"{server} dbname={name}\"\ntimescale = \"off\"\n"),
    )
    .expect("cfg");
    let file = dir.path().join("site.fsx");
    export_file(&file, 12, 100);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("import")
        .arg(&file)
        .output()
        .expect("run");
    let counts = rt.block_on(async {
        let (c, conn) =
            tokio_postgres::connect(&format!("{server} dbname={name}"), tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(conn);
        let marks: i64 = c
            .query_one("SELECT count(*) FROM flowsquare.rollup_dirty", &[])
            .await
            .expect("marks")
            .get(0);
        let n: Option<i64> = c
            .query_one("SELECT sum(n)::int8 FROM flowsquare.rollup_1m", &[])
            .await
            .expect("minutes")
            .get(0);
        drop(c);
        (marks, n)
    });
    rt.block_on(admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .expect("drop database");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(counts, (0, Some(1200)), "marks left, readings in rollup_1m");
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
    // Both imports are in the audit log with the CLI's actor and what they stored.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let log = rt.block_on(async {
        use cloud_ingest::store::Store;
        let s = cloud_ingest::store::sqlite::SqliteStore::open(&dir.path().join("ingest.db"))
            .expect("open");
        s.ledger()
            .audit_log(&cloud_ingest::store::ledger::AuditFilter {
                action: Some("cli.import".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("audit log")
    });
    assert_eq!(log.len(), 2);
    assert!(log[0].e.actor.starts_with("cli:") && log[0].e.role == "cli");
    assert_eq!(log[1].e.after["batches_stored"], 12);
    assert_eq!(log[0].e.after["already_present"], 12);
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

/// `check-config` reads the tokens file as a reload would: a broken one is named with its line
/// and column; a token of every site below admin beside scoped ones is warned about.
#[test]
fn check_config_reads_the_tokens_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = dir.path().join("tokens.toml");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[api]\ntokens_file = {:?}\n", tokens.display().to_string()),
    )
    .expect("write");
    let run = || {
        Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("check-config")
            .output()
            .expect("run")
    };
    let sha = |t: &str| cloud_ingest::api::hash_token(t);
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nname = \"st\"\nrole = \"viewer\"\nsha256 = \"{}\"\nsites = [\"s1\"]\nexpires = \"2030-01-01T00:00:00Z\"\n\
             [[tokens]]\nname = \"all\"\nrole = \"viewer\"\nsha256 = \"{}\"\n",
            sha("a"),
            sha("b")
        ),
    )
    .expect("write");
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("2 token(s) (2 from the tokens file), 1 limited to sites, 1 with an expiry"),
        "{text}"
    );
    assert!(
        text.contains("warning: [api] token \"all\" (viewer) sees every site"),
        "{text}"
    );
    assert!(
        !text.contains(&sha("a")) && !text.contains(&sha("b")),
        "no hash printed"
    );
    std::fs::write(&tokens, "[[tokens]]\nname = \"x\"\nrole = \"root\"\n").expect("write");
    let out = run();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokens.toml:3:8"), "{err}");
}

/// `check-config` checks `[api.jwt]` and reads its JWKS file: a missing or bad file is named.
#[test]
fn check_config_reads_the_jwks_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let jwks = dir.path().join("jwks.json");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[api.jwt]\nissuer = \"https://login.example.com\"\naudience = \"api\"\njwks_file = {:?}\n",
            jwks.display().to_string()
        ),
    )
    .expect("write");
    let run = || {
        Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .arg("check-config")
            .output()
            .expect("run")
    };
    let out = run();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[api.jwt]") && err.contains("jwks.json"),
        "{err}"
    );
    // An RSA public key (the RFC 7517 example's modulus).
    let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    std::fs::write(
        &jwks,
        format!("{{\"keys\": [{{\"kty\": \"RSA\", \"kid\": \"k1\", \"n\": \"{n}\", \"e\": \"AQAB\"}}]}}"),
    )
    .expect("write");
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok: [api.jwt]") && text.contains("1 key(s) (k1 RS256)"),
        "{text}"
    );
    std::fs::write(
        &jwks,
        "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"h\", \"k\": \"c2VjcmV0\"}]}",
    )
    .expect("write");
    let out = run();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symmetric"), "{err}");
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
    // [api] robustness keys are validated too.
    for (text, needle) in [
        ("[api]\nheader_timeout_ms = 0\n", "header_timeout_ms"),
        ("[api]\ncors_origins = [\"*\"]\n", "cors_origins"),
        ("[api]\nrate_limit_per_ip = -1\n", "rate_limit_per_ip"),
    ] {
        std::fs::write(&bad, text).expect("write");
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&bad)
            .arg("check-config")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("[api]") && err.contains(needle), "{err}");
    }
}

fn check_config(path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(path)
        .arg("check-config")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Passwords in the broker and database URLs: `check-config` passes, warns at each key's
/// file:line:column, and prints neither password.
#[test]
fn check_config_warns_about_passwords_in_urls_without_printing_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("ingest.toml");
    std::fs::write(
        &cfg,
        "[mqtt]\nbroker = \"mqtt://ingest:Mq-S3cret@127.0.0.1:1883\"\n\n[database]\nurl = \"postgres://fs:Pg-S3cret@127.0.0.1/fs\"\n",
    )
    .expect("write");
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, Some(0), "{out}{err}");
    let p = cfg.display().to_string();
    assert!(
        out.contains(&format!(
            "{p}:2:10: warning: mqtt.broker: `broker`: the broker password"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{p}:5:7: warning: database.url: `url`: the database password"
        )),
        "{out}"
    );
    assert!(out.contains("mqtt://ingest:***@127.0.0.1:1883"), "{out}");
    for secret in ["Mq-S3cret", "Pg-S3cret"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    }
}

/// A configuration saved in Latin-1 is refused at its first bad byte's line and column.
#[test]
fn a_config_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("ingest.toml");
    std::fs::write(&cfg, b"[mqtt]\ntopic_root = \"fs\"\n# caf\xE9\n".as_slice()).expect("write");
    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("not UTF-8: byte 0xE9 at line 3, column 6"),
        "{err}"
    );
}

/// `cloud-ingest calc` streams JSON lines: one result per line in order, bad lines (invalid
/// JSON, out-of-limit inputs) answered with `{"error": …}` and the following lines still
/// computed; exit status 1 because some lines were errors.
#[test]
fn calc_answers_every_line_in_order_including_bad_ones() {
    use std::io::Write;
    let input = concat!(
        r#"{"id":1,"group":"refined","base_temp_c":15,"density_base":865.6,"temp_c":87.32,"pressure":75,"pressure_unit":"kpa"}"#,
        "\n",
        "{not json\n",
        r#"{"id":3,"group":"crude","base_temp_f":60,"density_base":100,"density_unit":"api","temp_f":-58.05}"#,
        "\n",
        "\n",
        r#"{"id":5,"group":"crude","base_temp_f":60,"density_observed":823.7,"temp_f":80.3,"pressure":-5,"pressure_unit":"psi","mode":"table"}"#,
        "\n",
    );
    let mut child = Command::new(BIN)
        .arg("calc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn calc");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("calc");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(lines.len(), 5, "{text}");
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect(s);
    let first = json(lines[0]);
    assert_eq!(first["id"], 1);
    assert!(
        (first["ctl"].as_f64().unwrap() - 0.940416747194).abs() < 1e-12,
        "{first}"
    );
    assert!(
        (first["cpl"].as_f64().unwrap() - 1.000078931033).abs() < 1e-12,
        "{first}"
    );
    assert_eq!(first["density_base"], 865.6);
    assert_eq!(first["group_used"], "fuel_oil");
    assert!(json(lines[1])["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid JSON"));
    let third = json(lines[2]);
    assert_eq!(third["id"], 3);
    assert_eq!(
        third["error"],
        "temp_f: temperature -58.05 °F is below the limit -58 °F"
    );
    assert_eq!(lines[3], "");
    let fifth = json(lines[4]);
    assert_eq!(fifth["id"], 5);
    assert_eq!(fifth["ctl"], 0.98997);
    assert_eq!(fifth["cpl"], 1.0);
    assert_eq!(fifth["density_60f"], 832.0);
    assert!(fifth.get("density_base").is_none());

    // All good → exit 0; `--help` documents every field with an example.
    let ok = Command::new(BIN)
        .arg("calc")
        .stdin(std::fs::File::open("/dev/null").expect("null"))
        .output()
        .expect("calc");
    assert!(ok.status.success());
    assert!(ok.stdout.is_empty());
    let help = Command::new(BIN)
        .args(["calc", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for field in [
        "group",
        "alpha60_per_f",
        "base_temp_c",
        "base_temp_f",
        "density_base",
        "density_observed",
        "density_unit",
        "temp_c",
        "temp_f",
        "pressure",
        "pressure_unit",
        "mode",
        "ctl",
        "cpl",
        "ctpl",
        "density_60f",
        "group_used",
        "gasoline",
        "transition",
        "jet",
        "fuel_oil",
        "Example",
    ] {
        assert!(help.contains(field), "--help lacks {field}:\n{help}");
    }
}

/// `calc` answers each line as soon as it has it (no waiting for more input or end of input),
/// so a script can keep one process open and ask line by line.
#[test]
fn calc_answers_interactively() {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(BIN)
        .arg("calc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn calc");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("read")).is_err() {
                return;
            }
        }
    });
    for (input, want) in [
        (
            r#"{"group":"crude","base_temp_f":60,"density_base":850,"temp_f":60}"#,
            "\"ctl\":1",
        ),
        ("{oops", "\"error\":\"invalid JSON"),
    ] {
        writeln!(stdin, "{input}").expect("write");
        stdin.flush().expect("flush");
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("an answer while stdin is still open");
        assert!(got.contains(want), "{got}");
    }
    drop(stdin);
    assert_eq!(child.wait().expect("wait").code(), Some(1));
    reader.join().expect("reader");
}

/// Output into a pipe whose reader is gone (`cloud-ingest hash-token | head`): exit 0, no panic.
// `std::io::pipe` is newer than the MSRV (1.87 > 1.85): the tests build with the
// workspace toolchain; the binaries under test keep the MSRV.
#[allow(clippy::incompatible_msrv)]
#[test]
fn output_into_a_closed_pipe_exits_0_quietly() {
    use std::io::Write as _;
    for (args, input) in [(vec!["hash-token"], "a-token\n"), (vec!["--help"], "")] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run cloud-ingest");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// Issue 15: `check-config` refuses the embedded broker on a non-loopback address without
/// authentication (TLS alone is none), a password file that is not mosquitto_passwd hashes,
/// client certificates without TLS and unreadable TLS files; loopback without authentication
/// (the demo), a hashed password file and client certificates pass, and it prints which login
/// applies.
#[test]
fn check_config_refuses_an_open_embedded_broker_on_the_network() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("c.toml");
    let pw = dir.path().join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&pw)
        .args(["s1/a", "a-pw"])
        .status()
        .expect("mosquitto_passwd");
    assert!(ok.success());
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "s1/a:a-pw\n").expect("write");
    // A self-signed certificate and key (server and, here, also the client CA).
    let (crt, key) = (dir.path().join("b.crt"), dir.path().join("b.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=broker", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    let tls = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        crt.display(),
        key.display()
    );
    for (broker, code, needle) in [
        (
            format!("listen = \"0.0.0.0:8883\"\n{tls}client_ca_file = {:?}\n", crt.display()),
            Some(0),
            "TLS (",
        ),
        (
            format!("listen = \"0.0.0.0:8883\"\n{tls}client_ca_file = {:?}\n", crt.display()),
            Some(0),
            "login: client certificate from",
        ),
        (
            format!("listen = \"0.0.0.0:8883\"\n{tls}"),
            Some(2),
            "without authentication",
        ),
        (
            format!("listen = \"0.0.0.0:8883\"\nclient_ca_file = {:?}\n", crt.display()),
            Some(2),
            "client_ca_file needs tls_cert_file",
        ),
        (
            format!(
                "listen = \"0.0.0.0:8883\"\ntls_cert_file = {:?}\ntls_key_file = \"/nonexistent\"\nclient_ca_file = {:?}\n",
                crt.display(),
                crt.display()
            ),
            Some(2),
            "[broker] TLS: /nonexistent",
        ),
        (
            format!(
                "listen = \"0.0.0.0:1883\"\npassword_file = {:?}\n",
                pw.display()
            ),
            Some(0),
            "passwords cross the network unencrypted",
        ),
        (
            "listen = \"127.0.0.1:1883\"\n".to_string(),
            Some(0),
            "login: anonymous",
        ),
        (
            "listen = \"0.0.0.0:1883\"\n".to_string(),
            Some(2),
            "without authentication",
        ),
        (
            "listen = \"192.0.2.1:1883\"\n".to_string(),
            Some(2),
            "password_file",
        ),
        ("listen = \"127.0.0.1:1883\"\n".to_string(), Some(0), "ok"),
        (
            format!(
                "listen = \"0.0.0.0:1883\"\npassword_file = {:?}\n",
                pw.display()
            ),
            Some(0),
            "ok",
        ),
        (
            format!(
                "listen = \"0.0.0.0:1883\"\npassword_file = {:?}\n",
                plain.display()
            ),
            Some(2),
            "not a mosquitto_passwd hash",
        ),
    ] {
        std::fs::write(&cfg, format!("[broker]\nembedded = true\n{broker}")).expect("write");
        let (c, out, err) = check_config(&cfg);
        assert_eq!(c, code, "{broker}: {out}{err}");
        assert!(
            out.contains(needle) || err.contains(needle),
            "{broker}: {out}{err}"
        );
    }
}
