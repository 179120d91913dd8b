//! Live-shape ingest benchmark (`cargo bench -p cloud-ingest --bench live_shape`), issue 16
//! item 2: one reading per tag per batch, as gateways send live data, through MQTT into
//! `cloud-ingest serve` running as a process of its own, against a raw binary COPY of the same
//! rows into the same table and indexes in the same run.
//!
//! Set-up: a private Mosquitto on a free port (`max_inflight_messages 20`, as the shipped
//! config), a fresh database `fs_bench_live_<pid>` (dropped at the end, on error and on Ctrl-C),
//! `cloud-ingest serve` (the bench profile's binary) on a generated config (API on a free port,
//! native partitions, `max_batches_per_commit = 64`, no reconciliation, no ack keys).
//!
//! Per tag count (`--tags`, default 10,000, 50,000, 200,000 = 2, 10, 40 agents of 5,000 tags;
//! `common/fleet.rs` describes the shape): births stored, tables emptied, then 1 Hz per tag for
//! the warm-up (10 s) + the window (`--secs`, default 60). Over the window: offered and
//! committed (acknowledged) readings/s, CPU % of one core of cloud-ingest (`/proc/<pid>/stat`),
//! of every PostgreSQL process of the machine (`comm` "postgres…", the postmaster's reaped
//! children included) and of the bench database's own backends + the server's background
//! processes, and poll-to-commit p50/p95/p99 from the ingest's histogram
//! `flowsquare_ingest_poll_to_commit_seconds` (read before and after, quantiles as Prometheus'
//! `histogram_quantile`). Then every batch must be acknowledged and the table must hold exactly
//! the readings published.
//!
//! Max rate (at the largest tag count; `--no-max` skips it): the same agents send the same
//! batches as fast as their acks allow (`--inflight`, default 8 per agent, the agent's default)
//! for the warm-up + window; then the same rows by raw binary COPY into the emptied table, as
//! one COPY and as one transaction per 2,500 rows (one batch), timed, and the ratio.
//!
//! Flags: `--tags 10000,50000,200000`, `--secs 60`, `--warmup 10`, `--inflight 8`, `--quick`
//! (10 s windows, 3 s warm-up), `--no-max`; `FLOWSQUARE_PG` names the server (default
//! `host=127.0.0.1 port=5432 user=postgres`). Needs `mosquitto` on the PATH.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use common::cpu::{Cpu, Sample};
use common::fleet::{self, Counters, RunSpec, SimAgent, TAGS_PER_AGENT};
use common::procs::{self, IngestProc};
use common::{db, hist, Res};
use flowsquare_tests::chain;
use flowsquare_tests::mqtt::Mosquitto;
use tokio::time::Instant;

const LATENCY: &str = "flowsquare_ingest_poll_to_commit_seconds";
const STORED: &str = "flowsquare_ingest_stored_readings_total";

struct Args {
    tags: Vec<usize>,
    secs: u64,
    warmup: u64,
    inflight: usize,
    max: bool,
}

fn args() -> Res<Args> {
    let mut a = Args {
        tags: vec![10_000, 50_000, 200_000],
        secs: 60,
        warmup: 10,
        inflight: 8,
        max: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--tags" => {
                a.tags = val("--tags")?
                    .split(',')
                    .map(|t| t.trim().parse::<usize>())
                    .collect::<Result<_, _>>()?;
            }
            "--secs" => a.secs = val("--secs")?.parse()?,
            "--warmup" => a.warmup = val("--warmup")?.parse()?,
            "--inflight" => a.inflight = val("--inflight")?.parse()?,
            "--quick" => (a.secs, a.warmup) = (10, 3),
            "--no-max" => a.max = false,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if a.tags.is_empty() || a.tags.iter().any(|t| *t == 0 || t % TAGS_PER_AGENT != 0) {
        return Err(format!("--tags: multiples of {TAGS_PER_AGENT}").into());
    }
    if a.secs == 0 || a.inflight == 0 {
        return Err("--secs and --inflight must be > 0".into());
    }
    Ok(a)
}

/// What the whole run shares.
struct Ctx {
    args: Args,
    db: db::BenchDb,
    c: tokio_postgres::Client,
    ingest: IngestProc,
    broker_port: u16,
    broker_pid: Option<u32>,
    root: String,
}

/// One measured phase.
struct Phase {
    tags: usize,
    mode: &'static str,
    offered: f64,
    sustained: f64,
    stored: f64,
    cpu: Cpu,
    p: [f64; 3],
    published: u64,
    committed: i64,
    drain_s: f64,
    /// Rollup rows written per reading committed in the window.
    rollup_per_reading: f64,
}

/// The state at one edge of the window.
struct Edge {
    metrics: String,
    cpu: Sample,
    published: u64,
    acked: u64,
    pids: Vec<u32>,
    rollup_rows: i64,
}

async fn edge(ctx: &Ctx, counters: &Counters) -> Res<Edge> {
    let metrics = ctx.ingest.metrics().await?;
    let pids = db::my_pids(&ctx.c, &ctx.db.name).await?;
    let rollup_rows = db::rollup_rows(&ctx.c).await?;
    Ok(Edge {
        cpu: Sample::take(ctx.ingest.pid(), ctx.broker_pid),
        published: counters.published.load(Relaxed),
        acked: counters.acked.load(Relaxed),
        metrics,
        pids,
        rollup_rows,
    })
}

/// Run the agents for one phase (paced or max rate) and measure the window.
async fn phase(ctx: &Ctx, agents: &mut Vec<SimAgent>, paced: bool) -> Res<Phase> {
    let a = &ctx.args;
    db::reset(&ctx.c).await?;
    let counters = Arc::new(Counters::default());
    let start = Instant::now() + Duration::from_millis(300);
    let measure_from = start + Duration::from_secs(a.warmup);
    let make_until = measure_from + Duration::from_secs(a.secs);
    let spec = Arc::new(RunSpec {
        port: ctx.broker_port,
        root: ctx.root.clone(),
        paced_from: paced.then_some(start),
        make_until,
        drain_until: make_until + Duration::from_secs(900),
        inflight: a.inflight,
    });
    let n = agents.len();
    let tasks: Vec<_> = std::mem::take(agents)
        .into_iter()
        .enumerate()
        .map(|(i, ag)| tokio::spawn(fleet::run_agent(ag, i, n, spec.clone(), counters.clone())))
        .collect();
    tokio::time::sleep_until(measure_from).await;
    let e0 = edge(ctx, &counters).await?;
    tokio::time::sleep_until(make_until).await;
    let e1 = edge(ctx, &counters).await?;
    for t in tasks {
        agents.push(t.await??);
    }
    let drain_s = make_until.elapsed().as_secs_f64();
    let committed = db::count_readings(&ctx.c).await?;
    let published = counters.published.load(Relaxed);
    let secs = e1.cpu.at.duration_since(e0.cpu.at).as_secs_f64();
    let mut pids = e0.pids.clone();
    pids.extend(e1.pids.iter().filter(|p| !e0.pids.contains(p)));
    let d = hist::delta(
        &hist::buckets(&e0.metrics, LATENCY),
        &hist::buckets(&e1.metrics, LATENCY),
    )
    .ok_or("poll-to-commit histogram missing from /metrics")?;
    let stored = |m: &str| chain::metric(m, STORED).unwrap_or(0.0);
    Ok(Phase {
        tags: agents.len() * TAGS_PER_AGENT,
        mode: if paced { "1 Hz" } else { "max rate" },
        offered: (e1.published - e0.published) as f64 / secs,
        sustained: (e1.acked - e0.acked) as f64 / secs,
        stored: (stored(&e1.metrics) - stored(&e0.metrics)) / secs,
        cpu: Cpu::between(&e0.cpu, &e1.cpu, &pids),
        p: [0.5, 0.95, 0.99].map(|q| hist::quantile(q, &d)),
        published,
        committed,
        drain_s,
        rollup_per_reading: (e1.rollup_rows - e0.rollup_rows) as f64
            / (e1.acked - e0.acked).max(1) as f64,
    })
}

fn print_phase(p: &Phase) {
    let ok = if p.committed == p.published as i64 {
        "equal: nothing lost, nothing invented"
    } else {
        "DIFFERENT"
    };
    println!(
        "  {} tags, {}: offered {:.0}/s, committed (acked) {:.0}/s (ingest counter {:.0}/s); CPU % of a core: ingest {:.1}, PostgreSQL {:.1} (all processes) / {:.1} (this database + background), agents {:.1}, broker {:.1}; poll-to-commit p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
        p.tags, p.mode, p.offered, p.sustained, p.stored, p.cpu.ingest, p.cpu.pg_all, p.cpu.pg_mine,
        p.cpu.agents, p.cpu.broker, p.p[0] * 1e3, p.p[1] * 1e3, p.p[2] * 1e3
    );
    println!(
        "  published {} readings, committed {} in the database: {ok}; all acknowledged {:.1} s after the last batch was made; rollup rows written per reading {:.2}",
        p.published, p.committed, p.drain_s, p.rollup_per_reading
    );
}

/// The raw COPY of the rows the agents sent: (rows, seconds, PostgreSQL CPU % of this database).
async fn copy(ctx: &mut Ctx, agents: &[SimAgent], chunk: usize) -> Res<(u64, f64, f64)> {
    db::reset(&ctx.c).await?;
    let rows = agents.iter().flat_map(|a| {
        a.sent.iter().flat_map(move |&(ts, half)| {
            let base = usize::from(half) * fleet::HALF;
            (base..base + fleet::HALF).map(move |t| (a.tag_ids[t], ts, fleet::value(t, ts)))
        })
    });
    let pids = db::my_pids(&ctx.c, &ctx.db.name).await?;
    let s0 = Sample::take(ctx.ingest.pid(), ctx.broker_pid);
    let good = i16::from(flowsquare_wire::Quality::Good.code());
    let n = db::raw_copy(&mut ctx.c, rows, chunk, good).await?;
    let s1 = Sample::take(ctx.ingest.pid(), ctx.broker_pid);
    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let stored = db::count_readings(&ctx.c).await?;
    if stored != n as i64 {
        return Err(format!("raw COPY: {n} rows written, {stored} in the table").into());
    }
    Ok((n, secs, Cpu::between(&s0, &s1, &pids).pg_mine))
}

/// The agents of `tags` tags: births published and stored, tag ids known.
async fn agents_for(ctx: &Ctx, tags: usize) -> Res<Vec<SimAgent>> {
    let mut agents: Vec<SimAgent> = (0..tags / TAGS_PER_AGENT)
        .map(|i| SimAgent::new(format!("l{}k-a{i:02}", tags / 1000)))
        .collect();
    fleet::publish_births(&agents, ctx.broker_port, &ctx.root).await?;
    let sites: Vec<String> = agents.iter().map(|a| a.site.clone()).collect();
    let ids = db::tag_ids(&ctx.c, &sites, TAGS_PER_AGENT).await?;
    for (a, ids) in agents.iter_mut().zip(ids) {
        a.tag_ids = ids;
    }
    Ok(agents)
}

async fn run(ctx: &mut Ctx) -> Res<()> {
    let mut table = Vec::new();
    let mut copies = Vec::new();
    let largest = ctx.args.tags.iter().copied().max().unwrap_or(0);
    for tags in ctx.args.tags.clone() {
        let mut agents = agents_for(ctx, tags).await?;
        println!("\n== {tags} tags ({} agents), 1 Hz per tag", agents.len());
        let p = phase(ctx, &mut agents, true).await?;
        print_phase(&p);
        table.push(p);
        if tags == largest && ctx.args.max {
            println!(
                "\n== {tags} tags, max rate ({} batches in flight per agent)",
                ctx.args.inflight
            );
            let p = phase(ctx, &mut agents, false).await?;
            print_phase(&p);
            for chunk in [usize::MAX, fleet::HALF] {
                let (n, secs, pg) = copy(ctx, &agents, chunk).await?;
                let how = if chunk == usize::MAX {
                    "one COPY".to_owned()
                } else {
                    format!("one transaction per {chunk} rows")
                };
                let r = n as f64 / secs;
                println!(
                    "  raw binary COPY of the same {n} rows, {how}: {secs:.2} s = {r:.0} rows/s (PostgreSQL {pg:.0} % of a core); ingest max rate / COPY = {:.2}",
                    p.sustained / r
                );
                copies.push((how, n, r, pg, p.sustained / r));
            }
            table.push(p);
        }
    }
    print_table(&table, &copies);
    if table.iter().any(|p| p.committed != p.published as i64) {
        return Err("committed readings differ from published ones".into());
    }
    Ok(())
}

fn ms(s: f64) -> String {
    if s.is_nan() {
        "–".into()
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

fn print_table(table: &[Phase], copies: &[(String, u64, f64, f64, f64)]) {
    println!("\n| tags | mode | offered/s | committed/s | ingest CPU | PostgreSQL CPU (all / this db) | ingest + PG (this db) | p50 | p95 | p99 | rollup rows/reading | published = committed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for p in table {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} % | {:.1} % / {:.1} % | {:.1} % | {} | {} | {} | {:.2} | {} |",
            p.tags,
            p.mode,
            p.offered,
            p.sustained,
            p.cpu.ingest,
            p.cpu.pg_all,
            p.cpu.pg_mine,
            p.cpu.ingest + p.cpu.pg_mine,
            ms(p.p[0]),
            ms(p.p[1]),
            ms(p.p[2]),
            p.rollup_per_reading,
            if p.committed == p.published as i64 {
                format!("{} ✓", p.published)
            } else {
                format!("{} ≠ {}", p.published, p.committed)
            }
        );
    }
    for (how, n, r, pg, ratio) in copies {
        println!("| raw COPY, {how} | {n} rows | | {r:.0} | | {pg:.1} % (this db) | | | | | | ratio max rate / COPY = {ratio:.2} |");
    }
}

async fn main_inner() -> Res<()> {
    let args = args()?;
    hist::self_check()?;
    if let Err(e) = db::connect("postgres").await {
        println!("SKIPPED: PostgreSQL not reachable ({e})");
        return Ok(());
    }
    let broker = Mosquitto::start_with("max_inflight_messages 20")?;
    let broker_pid = procs::mosquitto_pid(&broker.dir());
    let bench_db = db::BenchDb::create().await?;
    let dir = tempfile::tempdir()?;
    let root = format!("live-{}/fs", std::process::id());
    let ingest = IngestProc::start(dir.path(), broker.port, &root, &bench_db.url()).await?;
    let c = db::connect(&bench_db.name).await?;
    let version: String = c.query_one("SHOW server_version", &[]).await?.get(0);
    println!(
        "PostgreSQL {version}, database {}; cloud-ingest pid {} (API {}); Mosquitto on port {}; window {} s after {} s warm-up; {} cores, load {}",
        bench_db.name,
        ingest.pid(),
        ingest.api,
        broker.port,
        args.secs,
        args.warmup,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let mut ctx = Ctx {
        args,
        db: bench_db,
        c,
        ingest,
        broker_port: broker.port,
        broker_pid,
        root,
    };
    let result = run(&mut ctx).await;
    for l in ctx.ingest.problems(10) {
        println!("ingest log: {l}");
    }
    println!(
        "load at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let Ctx { ingest, db, .. } = ctx;
    if result.is_ok() && ingest.stop() != Some(0) {
        return Err("cloud-ingest did not exit 0 on SIGTERM".into());
    }
    drop(db);
    drop(broker);
    result
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    tokio::select! {
        r = main_inner() => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    }
}
