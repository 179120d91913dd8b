//! Simulated agents speaking the agent's real wire format (`flowsquare_wire`): a retained birth
//! of 5,000 tags each, then live-shaped data batches (QoS 1) on `{root}/v1/{site}/gw/data`, each
//! batch held until the ingest's end-to-end ack (`…/ack`, after its database commit) names it.
//!
//! Shape: every tag is "polled" once a second; an agent sends a batch every 0.5 s holding the
//! newest reading of half its tags (tags 0–2,499 in one half-second, 2,500–4,999 in the next),
//! all stamped with the moment the batch is made (the poll). Agents' ticks are spread evenly
//! over the half second. At most `inflight` batches per agent wait for their ack (the agent's
//! `[uplink] inflight`); batches made meanwhile queue in order, as in the agent's buffer.
//! In max-rate mode an agent makes a new batch whenever fewer than `inflight` are unacked.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use flowsquare_wire as wire;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::Res;

pub const TAGS_PER_AGENT: usize = 5_000;
/// Readings per batch: half the agent's tags.
pub const HALF: usize = TAGS_PER_AGENT / 2;
pub const CONFIG_HASH: &str = "live-shape-1";
const PERIOD: Duration = Duration::from_millis(500);

/// The value of wire tag `tag` at `ts_ms` (a slow level; the same function makes the rows of the
/// raw COPY).
pub fn value(tag: usize, ts_ms: i64) -> f64 {
    1000.0 + tag as f64 + ((ts_ms / 1000) % 3600) as f64 * 0.001
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the agents of one phase did, in readings (and batches).
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub acked_batches: AtomicU64,
}

/// One simulated agent (`site`, agent id `gw`).
#[derive(Debug, Default)]
pub struct SimAgent {
    pub site: String,
    /// The database's tag id of each wire index (from the stored catalog).
    pub tag_ids: Vec<i64>,
    next_batch: u64,
    last_ts: i64,
    /// (ts, half) of every batch made in the current phase: the rows of the raw COPY.
    pub sent: Vec<(i64, u8)>,
}

impl SimAgent {
    pub fn new(site: String) -> SimAgent {
        SimAgent {
            site,
            next_batch: 1,
            ..SimAgent::default()
        }
    }

    pub fn birth(&self) -> wire::Birth {
        let per_device = 100;
        wire::Birth {
            v: 1,
            site: self.site.clone(),
            agent: "gw".into(),
            agent_version: "live-shape-bench".into(),
            config_hash: CONFIG_HASH.into(),
            started_ms: now_ms(),
            devices: (0..TAGS_PER_AGENT / per_device)
                .map(|d| wire::DeviceInfo {
                    name: format!("plc{d:02}"),
                    protocol: "modbus-tcp".into(),
                    description: None,
                })
                .collect(),
            tags: (0..TAGS_PER_AGENT)
                .map(|i| wire::TagInfo {
                    id: i as u32,
                    name: format!("plc{:02}/level{:04}", i / per_device, i),
                    unit: Some("mm".into()),
                    kind: "gauge".into(),
                    device: format!("plc{:02}", i / per_device),
                    description: None,
                    data_type: "f64".into(),
                    poll_interval_ms: 1000,
                })
                .collect(),
            events: Vec::new(),
            buffer: None,
        }
    }

    /// The next batch: (batch id, encoded payload, readings).
    fn make(&mut self, counters: &Counters) -> Result<(u64, Vec<u8>, u64), String> {
        let ts = now_ms().max(self.last_ts + 1);
        self.last_ts = ts;
        let id = self.next_batch;
        self.next_batch += 1;
        let half = (id % 2) as u8;
        let mut b = wire::Batch::new(&self.site, "gw", id, CONFIG_HASH, ts);
        b.readings = (usize::from(half) * HALF..(usize::from(half) + 1) * HALF)
            .map(|tag| wire::WireReading {
                tag: tag as u32,
                ts_ms: ts,
                value: Some(wire::WireValue::Float(value(tag, ts))),
                quality: wire::Quality::Good,
                status: None,
                error: None,
                counter: None,
            })
            .collect();
        let payload = wire::encode(&b).map_err(|e| e.to_string())?;
        self.sent.push((ts, half));
        counters.published.fetch_add(HALF as u64, Relaxed);
        Ok((id, payload, HALF as u64))
    }
}

fn options(id: String, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_max_packet_size(64 << 20, 64 << 20);
    o
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Publish the agents' births (retained, QoS 1) on one connection; returns once the broker has
/// acknowledged them all.
pub async fn publish_births(agents: &[SimAgent], port: u16, root: &str) -> Res<()> {
    let (client, mut ev) = AsyncClient::new(
        options(format!("live-births-{}", nanos()), port),
        agents.len() + 8,
    );
    let mut pending = agents.len();
    let mut sent = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while pending > 0 {
        let e = tokio::time::timeout_at(deadline, ev.poll())
            .await
            .map_err(|_| "births: no PUBACK in 120 s")?;
        match e? {
            Event::Incoming(Packet::ConnAck(_)) if !sent => {
                sent = true;
                for a in agents {
                    let t = wire::Topics::new(root.to_owned(), a.site.clone(), "gw")?;
                    client.try_publish(t.birth(), QoS::AtLeastOnce, true, a.birth().encode())?;
                }
            }
            Event::Incoming(Packet::PubAck(_)) => pending -= 1,
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    Ok(())
}

/// How one phase runs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub port: u16,
    pub root: String,
    /// Paced: the first batch tick (agent `i` of `n` ticks `i/n` of a period later); None: max
    /// rate.
    pub paced_from: Option<Instant>,
    /// No batch is made from here on.
    pub make_until: Instant,
    /// Every batch must be acknowledged by then.
    pub drain_until: Instant,
    pub inflight: usize,
}

/// Connect, subscribe to the agent's ack topic; the acks (or the connection's end) arrive on the
/// channel.
async fn connect(
    spec: &RunSpec,
    topics: &wire::Topics,
) -> Result<
    (
        AsyncClient,
        mpsc::UnboundedReceiver<Result<wire::Ack, String>>,
    ),
    String,
> {
    let o = options(format!("live-{}-{}", topics.site(), nanos()), spec.port);
    let (client, mut ev) = AsyncClient::new(o, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (c, ack_topic) = (client.clone(), topics.ack());
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = c.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce) {
                        let _ = tx.send(Err(e.to_string()));
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(wire::Ack::decode(&p.payload).map_err(|e| e.to_string()));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(format!("broker connection: {e}")));
                    break;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| "no SUBACK for the ack topic in 30 s")?
        .map_err(|_| "connection lost before SUBACK")?;
    Ok((client, rx))
}

/// Run one agent for a phase; gives the agent back once every batch it made is acknowledged.
pub async fn run_agent(
    mut a: SimAgent,
    idx: usize,
    n: usize,
    spec: Arc<RunSpec>,
    counters: Arc<Counters>,
) -> Result<SimAgent, String> {
    let topics =
        wire::Topics::new(spec.root.clone(), a.site.clone(), "gw").map_err(|e| e.to_string())?;
    let (client, mut acks) = connect(&spec, &topics).await?;
    let data = topics.data();
    a.sent.clear();
    let mut inflight: HashMap<u64, u64> = HashMap::new();
    let mut queue: VecDeque<(u64, Vec<u8>, u64)> = VecDeque::new();
    let mut tick = spec.paced_from.map(|t0| {
        let mut t = tokio::time::interval_at(t0 + PERIOD * idx as u32 / n.max(1) as u32, PERIOD);
        t.set_missed_tick_behavior(MissedTickBehavior::Burst);
        t
    });
    loop {
        let making = Instant::now() < spec.make_until;
        if making && tick.is_none() {
            while inflight.len() + queue.len() < spec.inflight {
                queue.push_back(a.make(&counters)?);
            }
        }
        while inflight.len() < spec.inflight {
            let Some((id, payload, readings)) = queue.pop_front() else {
                break;
            };
            client
                .publish(data.clone(), QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string())?;
            inflight.insert(id, readings);
        }
        if !making && queue.is_empty() && inflight.is_empty() {
            break;
        }
        let next_tick = async {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = next_tick, if making => queue.push_back(a.make(&counters)?),
            _ = tokio::time::sleep_until(spec.make_until), if making => {}
            m = acks.recv() => match m {
                Some(Ok(ack)) if ack.status == wire::AckStatus::Committed => {
                    for id in ack.batch_ids {
                        if let Some(r) = inflight.remove(&id) {
                            counters.acked.fetch_add(r, Relaxed);
                            counters.acked_batches.fetch_add(1, Relaxed);
                        }
                    }
                }
                Some(Ok(ack)) => return Err(format!("{}: batches {:?} rejected: {:?}", a.site, ack.batch_ids, ack.reason)),
                Some(Err(e)) => return Err(format!("{}: {e}", a.site)),
                None => return Err(format!("{}: ack channel closed", a.site)),
            },
            _ = tokio::time::sleep_until(spec.drain_until) => {
                return Err(format!("{}: {} batches in flight and {} queued still unacknowledged at the deadline", a.site, inflight.len(), queue.len()));
            }
        }
    }
    let _ = client.disconnect().await;
    Ok(a)
}
