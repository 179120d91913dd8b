//! Store-and-forward benchmarks: the SQLite buffer's append and lease+ack throughput through its
//! real async API, and the drain of a large backlog by the real uplink through Mosquitto to a
//! consumer that decodes and acknowledges every batch like cloud-ingest.
//!
//!     cargo bench -p edge-agent --bench store_forward [-- KEY=VALUE ...]
//!
//! Needs nothing but a Mosquitto on 127.0.0.1:1883 for the drain (skipped, with a message, when
//! none answers). Everything else lives in temporary directories, removed at the end.
//!
//! Keys (also read from the environment as `SF_<KEY>`, upper case; arguments win):
//! - `readings=2000000`: readings appended, then leased and acknowledged, per buffer run;
//! - `backlog=5000000`: readings in the backlog the uplink drains;
//! - `tags=200`, `chunk=1000`: tags of the synthetic tank farm (one reading per tag per second),
//!   readings per `append` call;
//! - `leases=5000,50000`: `max_readings` of the lease+ack runs (one buffer run each, per
//!   durability mode);
//! - `commit=10000`: `[buffer] commit_readings`, i.e. readings per segment when appending as
//!   fast as possible (a live agent at 200 tags/s commits every `commit_interval` = 100 ms
//!   instead: `chunk=20 commit=20` gives its segment size);
//! - `durability=crash-safe,power-loss-safe`: durability modes of the buffer runs;
//! - `drains=20000x8,50000x16`: uplink `batch_readings`x`inflight` of the drain runs;
//! - `data=levels`: every tag a tank level (random walk in 1 mm steps); `data=tankfarm`: the
//!   mixed roles of `flowsquare_wire::synth::TankFarm` (levels, temperatures, totalizers, f32
//!   flow and density, pump states), as in the `wire_size` example;
//! - `broker=127.0.0.1:1883`;
//! - `protocol=3.1.1`: the uplink's MQTT version (`3.1.1` or `5`; the consumer speaks 3.1.1);
//! - `consumer_nodelay=0`: 1 disables Nagle's algorithm on the consumer's socket (rumqttc's
//!   default, like the ingest's, leaves it on);
//! - `parts=buffer,phases,drain`: which parts to run.
//!
//! Targets (store-and-forward issue): append ≥ 500,000 readings/s, lease+ack ≥ 500,000
//! readings/s, backlog drain to a consumer ≥ 150,000 readings/s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edge_agent::buffer::codec::{self, Identity};
use edge_agent::buffer::config::DurabilityConfig;
use edge_agent::buffer::{Buffer, BufferConfig, Class, LeaseOrder, LeaseRequest, Store};
use edge_agent::config::{parse_str, TagMap};
use edge_agent::metrics::Telemetry;
use edge_agent::model::{now_ms, Reading, Value};
use edge_agent::uplink::UplinkConfig;
use flowsquare_wire as wire;
use flowsquare_wire::synth::XorShift64;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const APPEND_TARGET: f64 = 500_000.0;
const LEASE_TARGET: f64 = 500_000.0;
const DRAIN_TARGET: f64 = 150_000.0;
/// Tags per simulated device (they share a poll timestamp).
const TAGS_PER_DEVICE: u32 = 20;
/// Linux USER_HZ: the unit of utime/stime in /proc.
const CLK_TCK: f64 = 100.0;

#[derive(Debug, Clone)]
struct Params {
    readings: u64,
    backlog: u64,
    tags: u32,
    chunk: usize,
    leases: Vec<u64>,
    durability: Vec<DurabilityConfig>,
    drains: Vec<(u32, u16)>,
    broker: String,
    parts: Vec<String>,
    tank_farm: bool,
    commit: u32,
    consumer_nodelay: bool,
    protocol: String,
}

impl Params {
    fn load() -> Result<Params> {
        let mut kv: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in std::env::vars() {
            if let Some(k) = k.strip_prefix("SF_") {
                kv.insert(k.to_ascii_lowercase(), v);
            }
        }
        for a in std::env::args().skip(1) {
            // `cargo bench` passes `--bench`; other flags are not ours either.
            if a.starts_with('-') {
                continue;
            }
            match a.split_once('=') {
                Some((k, v)) => {
                    kv.insert(k.to_owned(), v.to_owned());
                }
                None => bail!("argument {a:?}: expected KEY=VALUE (see the file's header)"),
            }
        }
        let get = |k: &str, d: &str| kv.get(k).cloned().unwrap_or_else(|| d.to_owned());
        let num = |k: &str, d: &str| -> Result<u64> {
            get(k, d)
                .replace('_', "")
                .parse()
                .with_context(|| format!("{k}: not a number"))
        };
        let list = |k: &str, d: &str| -> Vec<String> {
            get(k, d)
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let leases = list("leases", "5000,50000")
            .iter()
            .map(|s| s.replace('_', "").parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .context("leases: expected numbers")?;
        let durability = list("durability", "crash-safe,power-loss-safe")
            .iter()
            .map(|s| match s.as_str() {
                "crash-safe" => Ok(DurabilityConfig::CrashSafe),
                "power-loss-safe" => Ok(DurabilityConfig::PowerLossSafe),
                other => bail!("durability {other:?}: crash-safe or power-loss-safe"),
            })
            .collect::<Result<Vec<_>>>()?;
        let drains = list("drains", "20000x8,50000x16")
            .iter()
            .map(|s| {
                let (b, i) = s
                    .split_once('x')
                    .with_context(|| format!("drains {s:?}: expected BATCHxINFLIGHT"))?;
                Ok((
                    b.replace('_', "").parse()?,
                    i.parse().with_context(|| format!("drains {s:?}"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let p = Params {
            readings: num("readings", "2000000")?,
            backlog: num("backlog", "5000000")?,
            tags: num("tags", "200")? as u32,
            chunk: num("chunk", "1000")? as usize,
            leases,
            durability,
            drains,
            broker: get("broker", "127.0.0.1:1883"),
            parts: list("parts", "buffer,phases,drain"),
            commit: num("commit", "10000")? as u32,
            consumer_nodelay: num("consumer_nodelay", "0")? != 0,
            protocol: get("protocol", "3.1.1"),
            tank_farm: match get("data", "levels").as_str() {
                "levels" => false,
                "tankfarm" => true,
                other => bail!("data {other:?}: levels or tankfarm"),
            },
        };
        if p.tags == 0 || p.chunk == 0 || p.readings == 0 || p.backlog == 0 || p.commit == 0 {
            bail!("tags, chunk, commit, readings and backlog must be at least 1");
        }
        Ok(p)
    }

    fn part(&self, name: &str) -> bool {
        self.parts.iter().any(|p| p == name)
    }
}

fn durability_name(d: DurabilityConfig) -> &'static str {
    match d {
        DurabilityConfig::CrashSafe => "crash-safe",
        DurabilityConfig::PowerLossSafe => "power-loss-safe",
    }
}

fn verdict(rate: f64, target: f64) -> &'static str {
    if rate >= target {
        "PASS"
    } else {
        "MISS"
    }
}

/// The tag map: `tags` f32 tank levels on simulated Modbus devices of 20 tags each.
fn tag_map(tags: u32) -> Result<TagMap> {
    use std::fmt::Write as _;
    let mut s = String::from("[agent]\nsite = \"bench\"\nid = \"gw\"\nmetrics = \"off\"\n");
    for d in 0..tags.div_ceil(TAGS_PER_DEVICE) {
        let _ = write!(
            s,
            "\n[[device]]\nname = \"tank-plc-{d}\"\nprotocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"\n\
             port = {}\npoll_interval = \"1s\"\n",
            15020 + d
        );
        for t in d * TAGS_PER_DEVICE..((d + 1) * TAGS_PER_DEVICE).min(tags) {
            let _ = write!(
                s,
                "  [[device.tag]]\n  name = \"tank-{t}/level\"\n  unit = \"m\"\n  register = \"holding\"\n  \
                 address = {}\n  type = \"f32\"\n",
                (t - d * TAGS_PER_DEVICE) * 2
            );
        }
    }
    match parse_str("bench.toml", &s) {
        Ok((m, _)) => Ok(m),
        Err(e) => bail!("bench tag map invalid: {e:?}"),
    }
}

/// A synthetic tank farm: every tag is a tank level (random walk in 1 mm steps, in m), polled
/// once a second; the tags of a device share the poll timestamp (device offset + 0-15 ms jitter).
/// Readings come time-major, like drivers produce them.
struct Farm {
    tags: u32,
    start_ms: i64,
    second: i64,
    tag: u32,
    rng: XorShift64,
    level_mm: Vec<i64>,
    poll_ts: Vec<i64>,
    /// `data=tankfarm`: the readings of `wire::synth::TankFarm` and the next one to hand out.
    synth: Option<(Vec<wire::WireReading>, usize)>,
}

impl Farm {
    /// A farm whose `readings` readings all lie in the past (the last one over an hour ago).
    fn new(p: &Params, readings: u64, seed: u64) -> Farm {
        let tags = p.tags;
        let seconds = readings.div_ceil(u64::from(tags)) as i64;
        let start_ms = (now_ms() / 1000 - seconds - 3600) * 1000;
        let mut rng = XorShift64::new(seed);
        let level_mm = (0..tags)
            .map(|_| 2_000 + rng.below(13_000) as i64)
            .collect();
        let synth = p.tank_farm.then(|| {
            let farm = wire::synth::TankFarm {
                start_ms,
                seed,
                ..wire::synth::TankFarm::new(tags as usize, seconds as usize)
            };
            (farm.readings(), 0)
        });
        Farm {
            synth,
            tags,
            start_ms,
            second: 0,
            tag: 0,
            rng,
            level_mm,
            poll_ts: vec![0; tags.div_ceil(TAGS_PER_DEVICE) as usize],
        }
    }

    fn next_chunk(&mut self, n: usize) -> Vec<Reading> {
        if let Some((all, pos)) = &mut self.synth {
            let end = (*pos + n).min(all.len());
            let out = all[*pos..end]
                .iter()
                .map(|r| {
                    let value = match r.value.clone() {
                        Some(wire::WireValue::Bool(b)) => Value::Bool(b),
                        Some(wire::WireValue::Int(i)) => Value::Int(i),
                        Some(wire::WireValue::UInt(u)) => Value::UInt(u),
                        Some(wire::WireValue::Float(f)) => Value::Float(f),
                        Some(wire::WireValue::Text(t)) => Value::Text(t),
                        None => Value::Float(0.0),
                    };
                    Reading::good(r.tag, r.ts_ms, value, 1_500)
                })
                .collect();
            *pos = end;
            return out;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            if self.tag == 0 {
                for (d, ts) in self.poll_ts.iter_mut().enumerate() {
                    *ts = self.start_ms
                        + self.second * 1000
                        + (d as i64 * 37) % 1000
                        + self.rng.below(16) as i64;
                }
            }
            let t = self.tag as usize;
            let level = &mut self.level_mm[t];
            *level = (*level + self.rng.below(3) as i64 - 1).clamp(0, 20_000);
            out.push(Reading::good(
                self.tag,
                self.poll_ts[t / TAGS_PER_DEVICE as usize],
                Value::Float(*level as f64 / 1000.0),
                1_500 + self.rng.below(1_000) as u32,
            ));
            self.tag += 1;
            if self.tag == self.tags {
                self.tag = 0;
                self.second += 1;
            }
        }
        out
    }

    /// `total` readings in chunks of `chunk`.
    fn chunks(&mut self, total: u64, chunk: usize) -> Vec<Vec<Reading>> {
        let mut v = Vec::new();
        let mut left = total;
        while left > 0 {
            let n = (chunk as u64).min(left) as usize;
            v.push(self.next_chunk(n));
            left -= n as u64;
        }
        v
    }

    /// Position of a reading in generation order (for the consumer's exactly-once check).
    fn index(start_ms: i64, tags: u32, tag: u32, ts_ms: i64) -> Option<u64> {
        let second = (ts_ms - start_ms).div_euclid(1000);
        (second >= 0 && tag < tags).then(|| second as u64 * u64::from(tags) + u64::from(tag))
    }
}

/// CPU time (ticks) of this process's threads by name, and of the Mosquitto daemon.
#[derive(Debug, Clone, Default)]
struct Cpu {
    threads: BTreeMap<String, u64>,
    mosquitto: Option<u64>,
}

fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_owned();
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let ut: u64 = f.get(11)?.parse().ok()?;
    let st: u64 = f.get(12)?.parse().ok()?;
    Some((name, ut + st))
}

impl Cpu {
    fn now() -> Cpu {
        let mut c = Cpu::default();
        if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
            for e in rd.flatten() {
                let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                let main = e.file_name().to_str() == Some(&std::process::id().to_string());
                if let Some((name, t)) = stat_ticks(&s) {
                    let group = if name == "buffer" {
                        "buffer thread"
                    } else if name.starts_with("tokio-r") {
                        "runtime workers"
                    } else if main {
                        "main thread"
                    } else {
                        "other threads"
                    };
                    *c.threads.entry(group.to_owned()).or_default() += t;
                }
            }
        }
        c.mosquitto = std::fs::read_to_string("/run/mosquitto/mosquitto.pid")
            .ok()
            .and_then(|p| std::fs::read_to_string(format!("/proc/{}/stat", p.trim())).ok())
            .and_then(|s| stat_ticks(&s))
            .map(|(_, t)| t);
        c
    }

    /// "buffer thread 97%, runtime workers 12%, …" of one core over `wall`.
    fn since(&self, before: &Cpu, wall: Duration) -> String {
        let pct = |d: u64| d as f64 / CLK_TCK / wall.as_secs_f64().max(1e-9) * 100.0;
        let mut parts: Vec<String> = self
            .threads
            .iter()
            .map(|(k, v)| {
                let b = before.threads.get(k).copied().unwrap_or(0);
                format!("{k} {:.0}%", pct(v.saturating_sub(b)))
            })
            .collect();
        if let (Some(a), Some(b)) = (self.mosquitto, before.mosquitto) {
            parts.push(format!("mosquitto {:.0}%", pct(a.saturating_sub(b))));
        }
        format!("CPU (% of one core): {}", parts.join(", "))
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn side(p: &Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}{ext}", p.display()))
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

async fn join(th: edge_agent::buffer::BufferThread) -> Result<()> {
    tokio::task::spawn_blocking(move || th.join()).await?;
    Ok(())
}

/// One line of the summary.
struct Line {
    what: String,
    rate: f64,
    target: f64,
}

// ------------------------------------------------------------------------------------------
// Part 1: append, then lease+ack, through the async buffer API.

async fn buffer_run(
    p: &Params,
    map: &TagMap,
    durability: DurabilityConfig,
    lease_max: u64,
    seed: u64,
    summary: &mut Vec<Line>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buffer.db");
    let cfg = BufferConfig {
        path: Some(path.clone()),
        durability,
        commit_readings: p.commit,
        ..BufferConfig::default()
    };
    let n = p.readings;
    let t = Instant::now();
    let chunks = Farm::new(p, n, seed).chunks(n, p.chunk);
    let gen = t.elapsed();
    println!(
        "\n== buffer, {}: {n} readings ({} tags at 1 s, {} readings per append; generated beforehand in {:.2} s), lease max_readings {lease_max}",
        durability_name(durability),
        p.tags,
        p.chunk,
        gen.as_secs_f64()
    );
    let (buffer, th) = Buffer::start(map, &cfg)?;
    let cpu0 = Cpu::now();
    let t0 = Instant::now();
    for c in chunks {
        buffer.append(c).await?;
    }
    buffer.flush().await?;
    let append = t0.elapsed();
    let cpu1 = Cpu::now();
    let r = rate(n, append);
    println!(
        "append: {n} readings in {:.3} s = {r:.0} readings/s (target {APPEND_TARGET:.0}: {})",
        append.as_secs_f64(),
        verdict(r, APPEND_TARGET)
    );
    println!("  {}", cpu1.since(&cpu0, append));
    summary.push(Line {
        what: format!("append, {}", durability_name(durability)),
        rate: r,
        target: APPEND_TARGET,
    });
    let f = buffer.figures().await?;
    if f.readings != n {
        bail!(
            "buffer holds {} readings after flush, expected {n}",
            f.readings
        );
    }
    let (db, wal) = (file_len(&path), file_len(&side(&path, "-wal")));
    let commits = buffer
        .stats
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    // An orderly close checkpoints the WAL into buffer.db and removes it: the settled size.
    drop(buffer);
    join(th).await?;
    let closed = file_len(&path);
    println!(
        "  disk: {} segments, {commits} commits; blobs (StoreFigures.bytes) {} B = {:.3} B/reading; \
         running: buffer.db {db} B + WAL {wal} B; after an orderly close: buffer.db {closed} B = {:.3} B/reading",
        f.segments,
        f.bytes,
        f.bytes as f64 / n as f64,
        closed as f64 / n as f64
    );
    let (buffer, th) = Buffer::start(map, &cfg)?;

    let req = LeaseRequest {
        max_readings: lease_max,
        order: LeaseOrder::OldestFirst,
        range: i64::MIN..i64::MAX,
        with_gaps: true,
    };
    let (mut batches, mut leased, mut acked, mut wire_bytes) = (0u64, 0u64, 0u64, 0u64);
    let (mut t_lease, mut t_ack) = (Duration::ZERO, Duration::ZERO);
    let cpu0 = Cpu::now();
    let t0 = Instant::now();
    loop {
        let t = Instant::now();
        let got = buffer.lease(req.clone()).await?;
        t_lease += t.elapsed();
        let Some(b) = got else { break };
        batches += 1;
        leased += b.readings;
        wire_bytes += b.payload.len() as u64;
        let t = Instant::now();
        acked += buffer.ack(b.batch_id).await?;
        t_ack += t.elapsed();
    }
    let dt = t0.elapsed();
    let cpu1 = Cpu::now();
    let f = buffer.figures().await?;
    if leased != n || acked != n || f.readings != 0 {
        bail!(
            "lease+ack: leased {leased}, acked {acked}, {} left; expected {n}, {n}, 0",
            f.readings
        );
    }
    let r = rate(n, dt);
    println!(
        "lease+ack (max_readings {lease_max}): {n} readings in {batches} batches in {:.3} s = {r:.0} readings/s (target {LEASE_TARGET:.0}: {})",
        dt.as_secs_f64(),
        verdict(r, LEASE_TARGET)
    );
    println!(
        "  lease {:.3} s ({:.0}%), ack {:.3} s ({:.0}%); {:.0} readings/batch; wire {:.3} B/reading",
        t_lease.as_secs_f64(),
        t_lease.as_secs_f64() / dt.as_secs_f64() * 100.0,
        t_ack.as_secs_f64(),
        t_ack.as_secs_f64() / dt.as_secs_f64() * 100.0,
        n as f64 / batches as f64,
        wire_bytes as f64 / n as f64
    );
    println!("  {}", cpu1.since(&cpu0, dt));
    println!(
        "  after: buffer.db {} B + WAL {} B (SQLite keeps freed pages for reuse)",
        file_len(&path),
        file_len(&side(&path, "-wal"))
    );
    summary.push(Line {
        what: format!("lease+ack max {lease_max}, {}", durability_name(durability)),
        rate: r,
        target: LEASE_TARGET,
    });
    drop(buffer);
    join(th).await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Phases: what the buffer thread does, step by step, on the store and codec directly.

fn phases(p: &Params, map: &TagMap, lease_max: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = BufferConfig {
        path: Some(dir.path().join("phases.db")),
        ..BufferConfig::default()
    };
    let (mut store, _) = Store::open(&cfg.effective_path(), cfg.durability(), cfg.bounds())?;
    let id = Identity {
        site: map.agent.site.clone(),
        agent: map.agent.id.clone(),
        config_hash: map.hash.clone(),
    };
    let n = p.readings;
    let seg = u64::from(p.commit);
    let mut farm = Farm::new(p, n, 7);
    let mut t = BTreeMap::<&str, Duration>::new();
    let mut time = |k: &'static str, d: Duration| *t.entry(k).or_default() += d;
    let mut left = n;
    let commits = n.div_ceil(seg);
    let sample_every = (commits / 10).max(1);
    let mut per_commit: Vec<Duration> = Vec::with_capacity(commits as usize);
    let mut bounds: Vec<(u64, Duration)> = Vec::new();
    while left > 0 {
        let k = seg.min(left) as usize;
        let rs = farm.next_chunk(k);
        let s = Instant::now();
        let segment = codec::encode_segment(Class::Normal, &id, &rs)?;
        time("1 append: encode_segment", s.elapsed());
        let s = Instant::now();
        drop(rs);
        time("2 append: drop readings", s.elapsed());
        let s = Instant::now();
        store.append(&[segment])?;
        let d = s.elapsed();
        time("3 append: Store::append (SQLite)", d);
        per_commit.push(d);
        if per_commit.len() as u64 % sample_every == 0 {
            // The bound check Store::append ends with, once more on its own (nothing to evict).
            let s = Instant::now();
            store.enforce_bounds(now_ms())?;
            bounds.push((per_commit.len() as u64, s.elapsed()));
        }
        left -= k as u64;
    }
    let req = LeaseRequest {
        max_readings: lease_max,
        order: LeaseOrder::OldestFirst,
        range: i64::MIN..i64::MAX,
        with_gaps: true,
    };
    loop {
        let s = Instant::now();
        let Some(l) = store.lease(&req)? else {
            time("4 lease: SQLite select+update", s.elapsed());
            break;
        };
        time("4 lease: SQLite select+update", s.elapsed());
        let s = Instant::now();
        let payload = codec::build_batch(&id, &l)?;
        time("5 lease: build_batch (decode+encode)", s.elapsed());
        let s = Instant::now();
        std::hint::black_box(wire::decode(&payload)?);
        time("7 consumer: wire::decode (not agent work)", s.elapsed());
        let s = Instant::now();
        store.ack(l.batch_id)?;
        time("6 ack: SQLite delete+commit", s.elapsed());
    }
    println!(
        "\n== phases (store and codec called directly, crash-safe, {n} readings, segments of {seg}, lease max_readings {lease_max})"
    );
    let tenth = (per_commit.len() / 10).max(1);
    let avg_us = |d: &[Duration]| {
        d.iter().map(Duration::as_secs_f64).sum::<f64>() / d.len().max(1) as f64 * 1e6
    };
    println!(
        "  Store::append per commit ({} commits): first tenth {:.0} µs, last tenth {:.0} µs",
        per_commit.len(),
        avg_us(&per_commit[..tenth.min(per_commit.len())]),
        avg_us(&per_commit[per_commit.len().saturating_sub(tenth)..])
    );
    println!(
        "  Store::enforce_bounds alone (nothing to evict), by segments stored: {}",
        bounds
            .iter()
            .map(|(k, d)| format!("{k}: {:.0} µs", d.as_secs_f64() * 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let total_append: Duration = t
        .iter()
        .filter(|(k, _)| k.contains("append"))
        .map(|(_, v)| *v)
        .sum();
    let total_lease: Duration = t
        .iter()
        .filter(|(k, _)| k.contains("lease") || k.contains("ack"))
        .map(|(_, v)| *v)
        .sum();
    for (k, v) in &t {
        let of = if k.contains("append") {
            Some(total_append)
        } else if k.contains("consumer") {
            None
        } else {
            Some(total_lease)
        };
        println!(
            "  {k:<40} {:>7.3} s = {:>10.0} readings/s{}",
            v.as_secs_f64(),
            rate(n, *v),
            of.map(|o| format!(
                "  ({:.0}% of its side)",
                v.as_secs_f64() / o.as_secs_f64() * 100.0
            ))
            .unwrap_or_default()
        );
    }
    println!(
        "  append side {:.3} s = {:.0} readings/s; lease+ack side {:.3} s = {:.0} readings/s (one thread, no channel)",
        total_append.as_secs_f64(),
        rate(n, total_append),
        total_lease.as_secs_f64(),
        rate(n, total_lease)
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Part 2: drain a backlog through Mosquitto.

#[derive(Debug, Default)]
struct Seen {
    subscribed: bool,
    batches: HashMap<u64, u64>,
    deliveries: u64,
    duplicate_deliveries: u64,
    readings_delivered: u64,
    distinct: u64,
    repeated: u64,
    foreign: u64,
    payload_bytes: u64,
    undecodable: u64,
    ack_failures: u64,
    bits: Vec<u64>,
    /// When each delivery arrived (to see the cadence of the uplink).
    arrivals: Vec<Instant>,
}

/// The cadence of deliveries: bursts separated by more than `quiet`.
fn cadence(arrivals: &[Instant], start: Instant, quiet: Duration) -> String {
    let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else {
        return "no deliveries".into();
    };
    let bursts = 1 + arrivals
        .windows(2)
        .filter(|w| w[1].saturating_duration_since(w[0]) > quiet)
        .count();
    let span = last.saturating_duration_since(*first);
    format!(
        "first delivery {:.0} ms after the uplink started; {} deliveries in {bursts} bursts (separated by > {} ms) over {:.0} ms: {:.1} batches per burst, one burst every {:.0} ms",
        first.saturating_duration_since(start).as_secs_f64() * 1e3,
        arrivals.len(),
        quiet.as_millis(),
        span.as_secs_f64() * 1e3,
        arrivals.len() as f64 / bursts as f64,
        span.as_secs_f64() * 1e3 / (bursts.max(2) - 1) as f64
    )
}

/// A lean consumer: decodes every batch, checks each reading against the expected set (one bit
/// per reading), acknowledges like cloud-ingest (`Ack::committed`, also for re-deliveries).
struct Consumer {
    seen: Arc<Mutex<Seen>>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Consumer {
    async fn start(
        host: &str,
        port: u16,
        root: &str,
        expected: u64,
        start_ms: i64,
        tags: u32,
        nodelay: bool,
    ) -> Result<Consumer> {
        let seen = Arc::new(Mutex::new(Seen {
            bits: vec![0; expected.div_ceil(64) as usize],
            ..Seen::default()
        }));
        let mut o = MqttOptions::new(format!("bench-consumer-{}", std::process::id()), host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
        o.set_clean_session(true);
        let (client, mut ev) = AsyncClient::new(o, 1024);
        if nodelay {
            let mut no = rumqttc::NetworkOptions::new();
            no.set_tcp_nodelay(true);
            ev.set_network_options(no);
        }
        let filter = wire::Topics::filter(root, wire::Kind::Data)?;
        let (c, s, root) = (client.clone(), seen.clone(), root.to_owned());
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Ok(mut g) = s.lock() {
                            g.subscribed = true;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok((wire::Kind::Data, site, agent)) =
                            wire::Topics::parse(&root, &p.topic)
                        else {
                            continue;
                        };
                        let Ok(mut g) = s.lock() else { continue };
                        g.payload_bytes += p.payload.len() as u64;
                        let Ok(b) = wire::decode(&p.payload) else {
                            g.undecodable += 1;
                            continue;
                        };
                        g.deliveries += 1;
                        g.arrivals.push(Instant::now());
                        g.readings_delivered += b.readings.len() as u64;
                        if g.batches
                            .insert(b.batch_id, b.readings.len() as u64)
                            .is_some()
                        {
                            g.duplicate_deliveries += 1;
                        } else {
                            for r in &b.readings {
                                match Farm::index(start_ms, tags, r.tag, r.ts_ms)
                                    .filter(|i| *i < expected)
                                {
                                    Some(i) => {
                                        let (w, bit) = ((i / 64) as usize, 1u64 << (i % 64));
                                        if g.bits[w] & bit != 0 {
                                            g.repeated += 1;
                                        } else {
                                            g.bits[w] |= bit;
                                            g.distinct += 1;
                                        }
                                    }
                                    None => g.foreign += 1,
                                }
                            }
                        }
                        let ack = wire::Topics::new(root.clone(), site, agent)
                            .map(|t| t.ack())
                            .ok()
                            .and_then(|topic| {
                                c.try_publish(
                                    topic,
                                    QoS::AtLeastOnce,
                                    false,
                                    wire::Ack::committed(vec![b.batch_id]).encode(),
                                )
                                .ok()
                            });
                        if ack.is_none() {
                            g.ack_failures += 1;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let c = Consumer { seen, client, task };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.seen.lock().map(|g| g.subscribed).unwrap_or(false) {
            if Instant::now() > deadline {
                bail!("the consumer could not subscribe at {host}:{port}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(c)
    }

    /// Clear the retained birth and status the agent left under `root`, then disconnect.
    async fn finish(self, root: &str) {
        // Let the broker take in the agent's last (offline) status first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(t) = wire::Topics::new(root, "bench", "gw") {
            for topic in [t.birth(), t.status()] {
                let _ = self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, true, Vec::<u8>::new());
            }
        }
        let _ = self.client.try_disconnect();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Fill a buffer at `path` with the backlog; returns the farm's start time.
async fn prefill(p: &Params, map: &TagMap, path: &Path) -> Result<i64> {
    // No age bound while filling: every commit would otherwise scan all stored segments for old
    // ones (see the README), which makes filling with small segments quadratic. The drain runs
    // with the default bounds.
    let cfg = BufferConfig {
        path: Some(path.to_path_buf()),
        commit_readings: p.commit,
        max_age: Duration::ZERO,
        ..BufferConfig::default()
    };
    let mut farm = Farm::new(p, p.backlog, 11);
    let start_ms = farm.start_ms;
    let (buffer, th) = Buffer::start(map, &cfg)?;
    let t0 = Instant::now();
    let mut left = p.backlog;
    while left > 0 {
        let n = (p.chunk as u64).min(left) as usize;
        buffer.append(farm.next_chunk(n)).await?;
        left -= n as u64;
    }
    buffer.flush().await?;
    let f = buffer.figures().await?;
    drop(buffer);
    join(th).await?;
    println!(
        "\n== drain: backlog of {} readings pre-filled in {:.1} s (generation included), {} segments, {:.3} B/reading stored, oldest {:.1} h ago",
        f.readings,
        t0.elapsed().as_secs_f64(),
        f.segments,
        f.bytes as f64 / f.readings.max(1) as f64,
        (now_ms() - start_ms) as f64 / 3.6e6
    );
    if f.readings != p.backlog {
        bail!(
            "pre-fill holds {} readings, expected {}",
            f.readings,
            p.backlog
        );
    }
    Ok(start_ms)
}

#[allow(clippy::too_many_arguments)]
async fn drain_run(
    p: &Params,
    map: &Arc<TagMap>,
    filled: &Path,
    start_ms: i64,
    host: &str,
    port: u16,
    (batch, inflight): (u32, u16),
    summary: &mut Vec<Line>,
) -> Result<()> {
    let n = p.backlog;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("buffer.db");
    std::fs::copy(filled, &path)?;
    for ext in ["-wal", "-shm"] {
        if side(filled, ext).exists() {
            std::fs::copy(side(filled, ext), side(&path, ext))?;
        }
    }
    let cfg = BufferConfig {
        path: Some(path.clone()),
        ..BufferConfig::default()
    };
    let (buffer, th) = Buffer::start(map, &cfg)?;
    // What the uplink asks the buffer on every 50 ms tick before it leases backlog: live
    // readings, newest first (there are none: the whole backlog is older than the live window).
    let probe = LeaseRequest {
        max_readings: u64::from(batch),
        order: LeaseOrder::NewestFirst,
        range: now_ms() - 10_000..i64::MAX,
        with_gaps: true,
    };
    let t = Instant::now();
    let none = buffer.lease(probe).await?;
    let probe_t = t.elapsed();
    let t = Instant::now();
    let fig = buffer.figures().await?;
    let figures_t = t.elapsed();
    if none.is_some() {
        bail!(
            "the live probe leased something: the backlog should all be older than the live window"
        );
    }
    println!(
        "  before the drain: {} segments; a live lease that finds nothing takes {:.2} ms, figures() {:.2} ms",
        fig.segments,
        probe_t.as_secs_f64() * 1e3,
        figures_t.as_secs_f64() * 1e3
    );
    let root = format!("bench-{}-{batch}x{inflight}/fs", std::process::id());
    let ucfg: UplinkConfig = toml::from_str(&format!(
        "broker = \"mqtt://{host}:{port}\"\ntopic_root = \"{root}\"\nclient_id = \"bench-agent-{}\"\n\
         inflight = {inflight}\nbatch_readings = {batch}\nbacklog_rate = 0\nprotocol = \"{}\"\n",
        std::process::id(),
        p.protocol
    ))?;
    let consumer =
        Consumer::start(host, port, &root, n, start_ms, p.tags, p.consumer_nodelay).await?;
    let telemetry = Arc::new(Telemetry::new(Vec::new(), buffer.stats.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cpu0 = Cpu::now();
    let t0 = Instant::now();
    // The map never changes here (no reload): the watch sender can go right away.
    let uplink = tokio::spawn(edge_agent::uplink::run(
        ucfg,
        tokio::sync::watch::channel(map.clone()).1,
        buffer.clone(),
        telemetry.clone(),
        stop_rx,
    ));
    let limit = Duration::from_secs(60).max(Duration::from_secs_f64(n as f64 / 20_000.0));
    let stats = buffer.stats.clone();
    let acked = || stats.acked.load(std::sync::atomic::Ordering::Relaxed);
    let mut elapsed = None;
    while t0.elapsed() < limit && !uplink.is_finished() {
        if acked() >= n {
            let at = t0.elapsed();
            if buffer.figures().await?.readings == 0 {
                elapsed = Some(at);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu1 = Cpu::now();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(30), uplink).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => println!("  uplink stopped with an error: {e}"),
        Ok(Err(e)) => println!("  uplink task failed: {e}"),
        Err(_) => println!("  uplink did not stop within 30 s"),
    }
    let left = buffer.figures().await?;
    let up = &telemetry.uplink;
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (sent_batches, resent) = (ld(&up.sent_batches), ld(&up.resent_batches));
    let seen = consumer
        .seen
        .lock()
        .map(|mut g| std::mem::take(&mut *g))
        .map_err(|_| anyhow::anyhow!("consumer state poisoned"))?;
    consumer.finish(&root).await;
    drop(buffer);
    join(th).await?;
    let exact = seen.distinct == n && seen.repeated == 0 && seen.foreign == 0;
    match elapsed {
        Some(dt) => {
            let r = rate(n, dt);
            println!(
                "drain (batch_readings {batch}, inflight {inflight}, backlog_rate 0, MQTT {}): {n} readings in {:.3} s = {r:.0} readings/s, {:.2} MB/s payload (target {DRAIN_TARGET:.0}: {})",
                p.protocol,
                dt.as_secs_f64(),
                seen.payload_bytes as f64 / 1e6 / dt.as_secs_f64(),
                verdict(r, DRAIN_TARGET)
            );
            println!("  {}", cpu1.since(&cpu0, dt));
            summary.push(Line {
                what: format!("drain {batch}x{inflight}"),
                rate: r,
                target: DRAIN_TARGET,
            });
        }
        None => {
            println!(
                "drain (batch_readings {batch}, inflight {inflight}): NOT FINISHED after {:.0} s: {} of {n} acknowledged, {} left in the buffer (target {DRAIN_TARGET:.0}: MISS)",
                t0.elapsed().as_secs_f64(),
                acked(),
                left.readings
            );
            summary.push(Line {
                what: format!("drain {batch}x{inflight} (unfinished)"),
                rate: 0.0,
                target: DRAIN_TARGET,
            });
        }
    }
    println!(
        "  consumer: {} deliveries ({} re-deliveries), {} readings delivered, {} distinct of {n} expected ({}), {} repeated, {} unexpected, {} undecodable, {} acks not sent; {:.3} B/reading on the wire; agent: {} batches sent, {} re-sent; buffer left {}",
        seen.deliveries,
        seen.duplicate_deliveries,
        seen.readings_delivered,
        seen.distinct,
        if exact { "EXACT" } else { "NOT EXACT" },
        seen.repeated,
        seen.foreign,
        seen.undecodable,
        seen.ack_failures,
        seen.payload_bytes as f64 / seen.readings_delivered.max(1) as f64,
        sent_batches,
        resent,
        left.readings
    );
    println!(
        "  cadence: {}",
        cadence(&seen.arrivals, t0, Duration::from_millis(15))
    );
    if !exact {
        bail!("the consumer did not receive exactly the {n} readings of the backlog");
    }
    Ok(())
}

async fn bench(p: Params) -> Result<()> {
    let map = Arc::new(tag_map(p.tags)?);
    println!(
        "store_forward benchmark: {} CPUs; readings={} backlog={} tags={} chunk={} leases={:?} drains={:?} data={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        p.readings,
        p.backlog,
        p.tags,
        p.chunk,
        p.leases,
        p.drains,
        if p.tank_farm { "tankfarm" } else { "levels" }
    );
    let mut summary = Vec::new();
    if p.part("buffer") {
        let mut seed = 1;
        for &d in &p.durability {
            for &l in &p.leases {
                buffer_run(&p, &map, d, l, seed, &mut summary).await?;
                seed += 1;
            }
        }
    }
    if p.part("phases") {
        let (pp, m, l) = (
            p.clone(),
            map.clone(),
            p.leases.first().copied().unwrap_or(5000),
        );
        tokio::task::spawn_blocking(move || phases(&pp, &m, l)).await??;
    }
    if p.part("drain") {
        let (host, port) = match p.broker.rsplit_once(':') {
            Some((h, port)) => (h.to_owned(), port.parse::<u16>().context("broker port")?),
            None => (p.broker.clone(), 1883),
        };
        let reachable = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok()
            });
        if !reachable {
            println!(
                "\n== drain: SKIPPED: no MQTT broker answers at {host}:{port} (start Mosquitto there, e.g. `apt-get install mosquitto`, or pass broker=HOST:PORT)"
            );
        } else {
            let dir = tempfile::tempdir()?;
            let filled = dir.path().join("backlog.db");
            let start_ms = prefill(&p, &map, &filled).await?;
            for &d in &p.drains {
                drain_run(&p, &map, &filled, start_ms, &host, port, d, &mut summary).await?;
            }
        }
    }
    println!("\n== summary (readings/s; ratio = measured / target)");
    for l in &summary {
        println!(
            "  {:<40} {:>10.0}  target {:>7.0}  ratio {:>5.2}  {}",
            l.what,
            l.rate,
            l.target,
            l.rate / l.target,
            verdict(l.rate, l.target)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let p = Params::load()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(p))
}
