//! One MQTT connection per start, even when the broker's handshake is slow.
//!
//! The agent runs as a process against a real Mosquitto, through a TCP proxy in this test that
//! holds the broker's first bytes (the CONNACK) back for longer than the uplink loop's 50 ms tick.
//! Before the fix, the tick cancelled rumqttc's connect mid-handshake: the half-open socket was
//! dropped, the broker published the retained "offline" Last Will, and a new connection started
//! (2–3 per start, more over TLS). The proxy counts the connections; a test subscriber on the
//! status topic asserts that no "offline" is ever published during a clean start.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::SimTcp;
use flowsquare_tests::mqtt::{ConsumerOptions, Mosquitto, TestConsumer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");

const SIM: &str = r#"
[[unit]]
id = 1
[[unit.register]]
kind = "holding"
address = 0
type = "u16"
value = 7
"#;

/// A proxy to `broker` that delays the first bytes from the broker by `delay`; counts accepted
/// connections.
async fn slow_proxy(broker: u16, delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let port = l.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", broker)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                let mut first = true;
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if first {
                        tokio::time::sleep(delay).await;
                        first = false;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (port, count)
}

fn config(dir: &Path, broker: u16, root: &str, sim: u16) -> std::path::PathBuf {
    let text = format!(
        r#"[agent]
site = "uc"
id = "gw"

[buffer]
path = "{dir}/buffer.db"

[uplink]
broker = "mqtt://127.0.0.1:{broker}"
topic_root = "{root}"

[[device]]
name = "plc"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {sim}
poll_interval = "200ms"
  [[device.tag]]
  name = "tank/level"
  register = "holding"
  address = 0
  type = "u16"
"#,
        dir = dir.display()
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exited = flowsquare_tests::wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
}

async fn one_connection_per_start(delay: Duration) {
    let sim = SimTcp::start(SIM).await;
    let broker = Mosquitto::start().expect("mosquitto");
    let root = format!("uc{}-{}/fs", std::process::id(), broker.port);
    let consumer = TestConsumer::start(broker.port, &root, ConsumerOptions::default()).await;
    let (proxy, connections) = slow_proxy(broker.port, delay).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(dir.path(), proxy, &root, sim.addr.port());
    let log = dir.path().join("agent.log");
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn edge-agent");

    // Connected: the agent's own "online" status and a first batch arrived through the proxy.
    let up = consumer
        .until(Duration::from_secs(30), |r| {
            r.statuses.iter().any(|s| s.online) && r.readings() > 0
        })
        .await;
    // Several more ticks and a heartbeat's worth of time with the connection up: nothing more
    // may connect (a wait on a condition that must stay false, so it runs to its timeout).
    let extra = consumer
        .until(Duration::from_secs(2), |r| {
            r.statuses.iter().any(|s| !s.online)
        })
        .await;
    let n = connections.load(Ordering::SeqCst);
    let statuses = consumer
        .received
        .lock()
        .map(|g| g.statuses.clone())
        .unwrap_or_default();
    stop(child);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        up,
        "the agent never came online through the proxy; log:\n{log}"
    );
    assert!(
        !extra && statuses.iter().all(|s| s.online),
        "an offline status (Last Will of an aborted connection) was published: {statuses:?}\nlog:\n{log}"
    );
    assert_eq!(n, 1, "connections opened by one start; log:\n{log}");
}

/// The broker answers fast: one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_opens_one_mqtt_connection() {
    one_connection_per_start(Duration::ZERO).await;
}

/// The CONNACK comes 400 ms late (8 uplink ticks): the handshake is not cut, one connection, no
/// Last Will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_is_not_cut_into_a_second_connection() {
    one_connection_per_start(Duration::from_millis(400)).await;
}
