//! `cloud-ingest serve` as a systemd `Type=notify` service: the real binary against a private
//! Mosquitto with the embedded SQLite store, and a notification socket the test binds (abstract
//! name, as systemd passes `$NOTIFY_SOCKET`): `READY=1` only once the broker has confirmed the
//! subscriptions, `WATCHDOG=1` while the consumer runs, `STOPPING=1` on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowsquare_tests::mqtt::Mosquitto;
use flowsquare_tests::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_cloud-ingest");

struct NotifySocket {
    sock: UnixDatagram,
    name: String,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "flowsquare-ingest-notify-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            sock,
            name: format!("@{name}"),
            seen: Vec::new(),
        }
    }

    fn until(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(m.clone());
                if m.contains(needle) {
                    return Some(m);
                }
            }
        }
        None
    }
}

#[test]
fn ready_after_the_subscriptions_then_watchdog_then_stopping() {
    let mut broker = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("cloud-ingest.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mqtt]\nbroker = \"{}\"\ntopic_root = \"t{}/fs\"\n[database]\nsqlite_path = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            broker.url(),
            std::process::id(),
            dir.path().join("ingest.db").display()
        ),
    )
    .expect("write config");
    // The broker is down at start: no READY until it is back and has confirmed the subscriptions.
    broker.stop();
    let mut ns = NotifySocket::bind();
    let log = dir.path().join("ingest.log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .env("NOTIFY_SOCKET", &ns.name)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn cloud-ingest");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || read_log()
            .contains("broker connection failed")),
        "{}",
        read_log()
    );
    assert!(
        ns.until("READY=1", Duration::from_secs(2)).is_none(),
        "not ready without the broker: {:?}",
        ns.seen
    );
    broker.restart().expect("broker back");
    let ready = ns
        .until("READY=1", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("READY=1: {:?} {}", ns.seen, read_log()));
    assert!(ready.contains("STATUS=broker"), "{ready}");
    for _ in 0..3 {
        assert!(
            ns.until("WATCHDOG=1", Duration::from_secs(5)).is_some(),
            "{:?}",
            ns.seen
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(
        ns.until("STOPPING=1", Duration::from_secs(10)).is_some(),
        "{:?}",
        ns.seen
    );
    let mut code = None;
    wait_until(Duration::from_secs(20), || {
        code = child.try_wait().ok().flatten();
        code.is_some()
    });
    if code.is_none() {
        let _ = child.kill();
    }
    assert_eq!(
        code.and_then(|c| c.code()),
        Some(0),
        "clean exit: {}",
        read_log()
    );
}
