//! MQTT test parts: a private Mosquitto broker per test (so a test can stop and restart it) and a
//! test consumer that decodes batches and acknowledges them the way cloud-ingest does.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowsquare_wire as wire;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::wait_until;

/// A Mosquitto broker on its own port, killed on drop.
pub struct Mosquitto {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

pub(crate) fn free_port() -> u16 {
    // Bind port 0 to get a free port from the kernel, then release it for mosquitto (which
    // cannot report a port it picked itself).
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub(crate) fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl Mosquitto {
    /// Start a broker (anonymous access, no persistence) with `extra` config lines.
    pub fn start_with(extra: &str) -> Result<Mosquitto, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
        };
        std::fs::write(
            m.dir.path().join("mosquitto.conf"),
            format!("listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n{extra}\n", m.port),
        )
        .map_err(|e| e.to_string())?;
        m.restart()?;
        Ok(m)
    }

    /// Start a plain broker.
    pub fn start() -> Result<Mosquitto, String> {
        Self::start_with("")
    }

    /// The config directory (for password and ACL files).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Stop the broker (kill -9: an outage, not a polite shutdown).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_until(Duration::from_secs(10), || !port_open(self.port));
    }

    /// (Re)start it on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("mosquitto (apt-get install mosquitto): {e}"))?;
        self.child = Some(child);
        if !wait_until(Duration::from_secs(10), || port_open(self.port)) {
            return Err(format!("mosquitto did not listen on {}", self.port));
        }
        Ok(())
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the test consumer has seen.
#[derive(Debug, Default)]
pub struct Received {
    /// Batches stored, by (site, agent, buffer epoch, batch id) — de-duplicated like the
    /// ingest's ledger (a new buffer database restarts batch ids under a new epoch).
    pub batches: BTreeMap<(String, String, u64, u64), wire::Batch>,
    /// Deliveries of a batch id already stored (re-sends).
    pub duplicates: u64,
    /// Every batch id delivered, in order, with repeats.
    pub deliveries: Vec<u64>,
    /// Every (buffer epoch, batch id) delivered, in order, with repeats.
    pub epoch_deliveries: Vec<(u64, u64)>,
    /// Payloads that failed to decode.
    pub undecodable: u64,
    /// Acks deliberately not sent.
    pub acks_dropped: u64,
    /// Birth messages received.
    pub births: Vec<wire::Birth>,
    /// Status messages received.
    pub statuses: Vec<wire::Status>,
    /// Heartbeats received.
    pub heartbeats: u64,
}

impl Received {
    /// Readings stored (after de-duplication).
    pub fn readings(&self) -> usize {
        self.batches.values().map(|b| b.readings.len()).sum()
    }

    /// Readings as (tag, ts) pairs, with how often each appears (must be 1).
    pub fn reading_keys(&self) -> BTreeMap<(u32, i64), usize> {
        let mut m = BTreeMap::new();
        for b in self.batches.values() {
            for r in &b.readings {
                *m.entry((r.tag, r.ts_ms)).or_insert(0) += 1;
            }
        }
        m
    }

    /// Gap records received.
    pub fn gaps(&self) -> Vec<wire::Gap> {
        self.batches.values().flat_map(|b| b.gaps.clone()).collect()
    }

    /// Readings in gap records of known count.
    pub fn gap_counts(&self) -> u64 {
        self.gaps()
            .iter()
            .filter(|g| g.count_known)
            .map(|g| g.count)
            .sum()
    }

    /// Buffer epochs seen in batches, in order of first appearance.
    pub fn epochs(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (e, _) in &self.epoch_deliveries {
            if !out.contains(e) {
                out.push(*e);
            }
        }
        out
    }

    /// Events received.
    pub fn events(&self) -> Vec<wire::Event> {
        self.batches
            .values()
            .flat_map(|b| b.events.clone())
            .collect()
    }
}

/// Behaviour of the test consumer.
#[derive(Debug, Clone, Default)]
pub struct ConsumerOptions {
    /// Do not acknowledge the first delivery of these batch ids (an ack lost on the way).
    pub drop_first_ack: HashSet<u64>,
    /// Do not acknowledge anything (a cloud that is down).
    pub never_ack: bool,
    /// Acknowledge the first N batches only.
    pub ack_limit: Option<u64>,
    /// Sign the acks with this key (as cloud-ingest with `[mqtt] ack_keys`).
    pub ack_key: Option<Vec<u8>>,
}

/// A consumer that stores batches (de-duplicated) and acknowledges them like cloud-ingest.
pub struct TestConsumer {
    /// What it has seen.
    pub received: Arc<Mutex<Received>>,
    /// Options (may be changed while running).
    pub options: Arc<Mutex<ConsumerOptions>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestConsumer {
    /// Connect to `port`, subscribe to every agent's topics under `root`.
    pub async fn start(port: u16, root: &str, options: ConsumerOptions) -> TestConsumer {
        let received = Arc::new(Mutex::new(Received::default()));
        let options = Arc::new(Mutex::new(options));
        let mut o = MqttOptions::new(
            format!("test-consumer-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
        o.set_clean_session(true);
        let (client, mut ev) = AsyncClient::new(o, 1024);
        let (r, opts, root) = (received.clone(), options.clone(), root.to_owned());
        let task = tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for k in [
                            wire::Kind::Data,
                            wire::Kind::Birth,
                            wire::Kind::Status,
                            wire::Kind::Heartbeat,
                        ] {
                            if let Ok(f) = wire::Topics::filter(&root, k) {
                                let _ = client.subscribe(f, QoS::AtLeastOnce).await;
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok((kind, site, agent)) = wire::Topics::parse(&root, &p.topic) else {
                            continue;
                        };
                        match kind {
                            wire::Kind::Data => {
                                let Ok(b) = wire::decode(&p.payload) else {
                                    r.lock().map(|mut g| g.undecodable += 1).ok();
                                    continue;
                                };
                                let (id, epoch) = (b.batch_id, b.buffer_epoch);
                                let send_ack = {
                                    let Ok(mut g) = r.lock() else { continue };
                                    g.deliveries.push(id);
                                    g.epoch_deliveries.push((epoch, id));
                                    let key = (site.clone(), agent.clone(), epoch, id);
                                    match g.batches.entry(key) {
                                        std::collections::btree_map::Entry::Occupied(_) => {
                                            g.duplicates += 1
                                        }
                                        std::collections::btree_map::Entry::Vacant(v) => {
                                            v.insert(b);
                                        }
                                    }
                                    let Ok(mut o) = opts.lock() else { continue };
                                    let first = o.drop_first_ack.remove(&id);
                                    let ok = !first
                                        && !o.never_ack
                                        && o.ack_limit.is_none_or(|l| acked < l);
                                    if !ok {
                                        g.acks_dropped += 1;
                                    }
                                    ok
                                };
                                if send_ack {
                                    acked += 1;
                                    let mut ack = wire::Ack::committed(vec![id]).for_epoch(epoch);
                                    if let Some(k) =
                                        opts.lock().ok().and_then(|o| o.ack_key.clone())
                                    {
                                        ack.sign(&site, &agent, &k);
                                    }
                                    if let Ok(t) = wire::Topics::new(root.clone(), site, agent) {
                                        let _ = client
                                            .publish(t.ack(), QoS::AtLeastOnce, false, ack.encode())
                                            .await;
                                    }
                                }
                            }
                            wire::Kind::Birth => {
                                if let Ok(b) = wire::Birth::decode(&p.payload) {
                                    r.lock().map(|mut g| g.births.push(b)).ok();
                                }
                            }
                            wire::Kind::Status => {
                                if let Ok(s) = wire::Status::decode(&p.payload) {
                                    r.lock().map(|mut g| g.statuses.push(s)).ok();
                                }
                            }
                            wire::Kind::Heartbeat => {
                                r.lock().map(|mut g| g.heartbeats += 1).ok();
                            }
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        TestConsumer {
            received,
            options,
            task,
        }
    }

    /// Wait until `pred` holds over what was received, or `timeout`.
    pub async fn until(&self, timeout: Duration, pred: impl Fn(&Received) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.received.lock().map(|g| pred(&g)).unwrap_or(false) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
