//! Secrets never reach output, and the files the services create are private.
//!
//! Real processes against a Mosquitto broker with a password file: agent A gives its broker
//! password in the URL and its TLS-350 security code inline; agent B reads both from systemd
//! credentials (`$CREDENTIALS_DIRECTORY`); cloud-ingest gives its broker password in the URL,
//! and a PostgreSQL password in the database URL and from a file (whose server it may not
//! reach: the error path is what is checked). Everything runs at `trace` level under umask 000;
//! every line of every output (`check`, `check-config`, `read --once`, `run`, `serve`,
//! `migrate`) is searched for every secret.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowsquare_tests::mqtt::Mosquitto;
use flowsquare_tests::{wait_until, workspace_bin};
use site_sim::tls350::{serve_tcp, Console, ConsoleConfig};
use tokio::sync::oneshot;

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");

const MQTT_URL_PW: &str = "Url-Pw-7f1c9e";
const MQTT_CRED_PW: &str = "Cred-Pw-2b8d41";
const INGEST_PW: &str = "Ingest-Pw-5a03f7";
const PG_URL_PW: &str = "Pg-Url-Pw-91e2aa";
const PG_FILE_PW: &str = "Pg-File-Pw-c47b10";
const CODE_INLINE: &str = "QZ7K4X";
const CODE_CRED: &str = "W9P2M5";
const SECRETS: [&str; 7] = [
    MQTT_URL_PW,
    MQTT_CRED_PW,
    INGEST_PW,
    PG_URL_PW,
    PG_FILE_PW,
    CODE_INLINE,
    CODE_CRED,
];

const TANK: &str = "[[tank]]\nnumber = 1\nproduct = \"1\"\nvolume = 18250.5\n";

/// A simulated TLS-350 console on TCP that answers only commands with `code`.
async fn console(code: &str) -> (u16, oneshot::Sender<()>) {
    let cfg = ConsoleConfig::from_toml_str(&format!("security_code = \"{code}\"\n{TANK}"))
        .expect("console config");
    let c = Arc::new(Mutex::new(Console::new(cfg)));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = serve_tcp(l, c, async move {
            let _ = stopped.await;
        })
        .await;
    });
    (port, stop)
}

/// `program args…` under umask 000 (so only explicit modes make files private), at trace
/// level, with `creds` as `$CREDENTIALS_DIRECTORY` if given.
fn command(program: &Path, args: &[&str], creds: Option<&Path>) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(program)
        .args(args)
        .env("EDGE_AGENT_LOG", "trace")
        .env("CLOUD_INGEST_LOG", "trace")
        .env("RUST_LOG", "trace")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    if let Some(d) = creds {
        c.env("CREDENTIALS_DIRECTORY", d);
    }
    c
}

/// Run to completion; the exit code and everything printed.
fn output(mut c: Command) -> (Option<i32>, String) {
    let out = c.output().expect("run");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A long-running process whose stdout and stderr go to `log`.
fn spawn(mut c: Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).expect("log");
    c.stdout(f.try_clone().expect("clone"))
        .stderr(f)
        .spawn()
        .expect("spawn")
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if !wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_)))
    }) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle))
}

/// A broker that knows the three users, anonymous access off.
fn broker(dir: &Path) -> Mosquitto {
    let pw = dir.join("passwd");
    for (i, (user, pass)) in [
        ("gw-a", MQTT_URL_PW),
        ("gw-b", MQTT_CRED_PW),
        ("ingest", INGEST_PW),
    ]
    .iter()
    .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let ok = cmd.arg(&pw).arg(user).arg(pass).status();
        assert!(ok.is_ok_and(|s| s.success()), "mosquitto_passwd");
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    let _ = std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644));
    Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}",
        pw.display()
    ))
    .expect("mosquitto")
}

fn agent_map(dir: &Path, name: &str, uplink: &str, atg: &str) -> PathBuf {
    let text = format!(
        r#"[agent]
site = "sec"
id = "{name}"

[buffer]
path = "{dir}/state-{name}/buffer.db"

[uplink]
{uplink}

[[device]]
name = "atg"
protocol = "tls-350"
poll_interval = "2s"
timeout = "2s"
{atg}

  [[device.tag]]
  name = "tank-1/volume"
  tank = 1
  field = "volume"
"#,
        dir = dir.display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).expect("write map");
    p
}

/// Every regular file under `dir` is 0600 and every directory 0700 (`dir` included).
fn assert_private(dir: &Path) -> usize {
    let mode = |p: &Path| flowsquare_service::private::mode_of(p).expect("mode");
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files += assert_private(&p);
        } else {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            files += 1;
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_output_and_created_files_are_private() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let broker = broker(&broker_dir(d));
    let port = broker.port;
    let (atg_a, _stop_a) = console(CODE_INLINE).await;
    let (atg_b, _stop_b) = console(CODE_CRED).await;
    let creds = d.join("credentials");
    std::fs::create_dir_all(&creds).expect("creds dir");
    std::fs::write(creds.join("mqtt"), format!("gw-b\n{MQTT_CRED_PW}\n")).expect("cred");
    std::fs::write(creds.join("atg-code"), format!("{CODE_CRED}\n")).expect("cred");
    std::fs::write(d.join("pg-password"), format!("{PG_FILE_PW}\n")).expect("pg pw");

    let root = format!("sec{}-{port}", std::process::id());
    let map_a = agent_map(
        d,
        "a",
        &format!(
            "broker = \"mqtt://gw-a:{MQTT_URL_PW}@127.0.0.1:{port}\"\ntopic_root = \"{root}\""
        ),
        &format!("host = \"127.0.0.1\"\nport = {atg_a}\nsecurity_code = \"{CODE_INLINE}\""),
    );
    let map_b = agent_map(
        d,
        "b",
        &format!("broker = \"mqtt://127.0.0.1:{port}\"\ntopic_root = \"{root}\"\ncredentials = \"systemd:mqtt\""),
        &format!("host = \"127.0.0.1\"\nport = {atg_b}\nsecurity_code_credential = \"atg-code\""),
    );
    let ingest_cfg = d.join("ingest.toml");
    std::fs::write(
        &ingest_cfg,
        format!(
            "[mqtt]\nbroker = \"mqtt://ingest:{INGEST_PW}@127.0.0.1:{port}\"\ntopic_root = \"{root}\"\n\n[database]\nsqlite_path = \"{}/state-ingest/ingest.db\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
            d.display()
        ),
    )
    .expect("ingest config");
    let ingest_bin = workspace_bin("cloud-ingest");
    let agent = Path::new(BIN);
    let mut outputs: Vec<(String, String)> = Vec::new();
    let a = map_a.to_str().expect("utf8");
    let b = map_b.to_str().expect("utf8");

    // check: A is valid with two warnings (broker password, inline code) at their keys.
    let (code, out) = output(command(agent, &["check", "--config", a], None));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("{a}:9:10: warning: uplink: `broker`")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{a}:19:17: warning: device 'atg': `security_code`"
        )),
        "{out}"
    );
    outputs.push(("check a".into(), out));
    let (code, out) = output(command(agent, &["check", "--config", b], None));
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains(": warning: "), "{out}");
    outputs.push(("check b".into(), out));
    let (code, out) = output(command(
        &ingest_bin,
        &[
            "--config",
            ingest_cfg.to_str().expect("utf8"),
            "check-config",
        ],
        None,
    ));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(":2:10: warning: mqtt.broker"), "{out}");
    outputs.push(("check-config".into(), out));

    // read --once: the security codes work (inline, and from the credential).
    for (name, map, creds) in [("a", a, None), ("b", b, Some(creds.as_path()))] {
        let (code, out) = output(command(agent, &["read", "--once", "--config", map], creds));
        assert_eq!(code, Some(0), "read {name}: {out}");
        assert!(out.contains("18250.5"), "read {name}: {out}");
        outputs.push((format!("read {name}"), out));
    }

    // The services: both agents deliver to cloud-ingest through the password-protected broker.
    let ingest_log = d.join("ingest.log");
    let ingest = spawn(
        command(
            &ingest_bin,
            &["--config", ingest_cfg.to_str().expect("utf8"), "serve"],
            None,
        ),
        &ingest_log,
    );
    let log_a = d.join("a.log");
    let log_b = d.join("b.log");
    let run_a = spawn(command(agent, &["run", "--config", a], None), &log_a);
    let run_b = spawn(
        command(agent, &["run", "--config", b], Some(&creds)),
        &log_b,
    );
    let connected = wait_until(Duration::from_secs(60), || {
        log_has(&log_a, "connected to the broker")
            && log_has(&log_b, "connected to the broker")
            && log_has(&ingest_log, "connected; subscribing")
    });
    stop(run_a);
    stop(run_b);
    stop(ingest);
    for (name, log) in [("run a", &log_a), ("run b", &log_b), ("serve", &ingest_log)] {
        outputs.push((
            name.into(),
            std::fs::read_to_string(log).unwrap_or_default(),
        ));
    }
    assert!(connected, "{outputs:#?}");
    assert!(
        outputs[5]
            .1
            .contains(&format!("mqtt://gw-a:***@127.0.0.1:{port}")),
        "the agent logs its broker redacted"
    );

    // The report that started this: a broker that refuses connections, logged at every
    // retry with the URL.
    let map_down = agent_map(
        d,
        "down",
        &format!("broker = \"mqtt://gw-a:{MQTT_URL_PW}@127.0.0.1:1\"\ntopic_root = \"{root}\""),
        &format!("host = \"127.0.0.1\"\nport = {atg_a}\nsecurity_code = \"{CODE_INLINE}\""),
    );
    let log_down = d.join("down.log");
    let down = spawn(
        command(
            agent,
            &["run", "--config", map_down.to_str().expect("utf8")],
            None,
        ),
        &log_down,
    );
    let failed = wait_until(Duration::from_secs(30), || {
        log_has(&log_down, "broker connection failed")
    });
    stop(down);
    let down_log = std::fs::read_to_string(&log_down).unwrap_or_default();
    assert!(
        failed && down_log.contains("mqtt://gw-a:***@127.0.0.1:1"),
        "{down_log}"
    );
    outputs.push(("run down".into(), down_log));

    // PostgreSQL, password in the URL and from a file: the server may refuse or be absent; the
    // error must not carry the password.
    for (n, db) in [
        ("url", format!("url = \"host=127.0.0.1 port=5432 user=fs_secret_test password={PG_URL_PW} dbname=fs_secret_test connect_timeout=3\"")),
        ("url2", format!("url = \"postgres://fs_secret_test:{PG_URL_PW}@127.0.0.1:5432/fs_secret_test?connect_timeout=3\"")),
        ("file", format!("url = \"host=127.0.0.1 port=5432 user=fs_secret_test dbname=fs_secret_test connect_timeout=3\"\npassword_file = \"{}\"", d.join("pg-password").display())),
    ] {
        let cfg = d.join(format!("pg-{n}.toml"));
        std::fs::write(&cfg, format!("[database]\n{db}\n")).expect("pg config");
        let c = cfg.to_str().expect("utf8");
        let (_, out) = output(command(&ingest_bin, &["--config", c, "check-config"], None));
        outputs.push((format!("check-config pg {n}"), out));
        let (_, out) = output(command(&ingest_bin, &["--config", c, "migrate"], None));
        outputs.push((format!("migrate pg {n}"), out));
    }
    drop(broker);

    for (what, out) in &outputs {
        for s in SECRETS {
            assert!(!out.contains(s), "{what} shows the secret {s:?}:\n{out}");
        }
    }
    assert!(
        outputs.iter().any(|(_, o)| o.contains(" TRACE ")),
        "trace logs captured"
    );

    // Created files and directories: 0700 / 0600 under umask 000.
    for state in ["state-a", "state-b", "state-down", "state-ingest"] {
        assert!(assert_private(&d.join(state)) >= 1, "{state}");
    }
    for db in [
        "state-a/buffer.db",
        "state-b/buffer.db",
        "state-ingest/ingest.db",
    ] {
        assert!(d.join(db).exists(), "{db}");
    }
}

fn broker_dir(d: &Path) -> PathBuf {
    let p = d.join("broker");
    std::fs::create_dir_all(&p).expect("broker dir");
    p
}
