//! `flowsquare-demo`: the whole product on one machine, in one command.
//!
//! # Layout
//! - `main.rs`: the command line and the run: start cloud-ingest (embedded SQLite and broker)
//!   → the simulated terminal (`flowsquare-sim terminal`, which writes the agents' tag maps with
//!   the addresses it bound) → one edge-agent per tag map; print the console URL; on Ctrl-C stop
//!   them in order (agents drain their buffers → simulator → ingest).
//! - `proc.rs`: a child process with its output sent to a log file, its `listening …` lines
//!   collected, and an orderly stop (SIGTERM, then SIGKILL after a grace period).
//!
//! The binaries are found next to this one (`cargo build --release` puts them together), so
//! `scripts/demo` builds the workspace and runs `target/release/flowsquare-demo`.

mod proc;

/// `println!` that never panics: the demo keeps stopping its children in order even when its
/// own standard output is gone (a closed pipe, a closed terminal).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;

use proc::Child;

/// The demo's tokens (plaintext, demo only; config/demo/cloud-ingest.toml holds their hashes).
const TOKENS: &[(&str, &str)] = &[
    ("demo-admin", "admin"),
    ("demo-operator", "operator"),
    ("demo-auditor", "auditor"),
    ("demo-viewer", "viewer"),
];

/// Run the FlowSquare demo: a simulated terminal (vessel, jetty meter, tanks over Modbus and
/// OPC UA, gantry batch records, trucks with NMEA GPS on pseudo-terminals, a station TLS-350,
/// ePODs), the edge agents polling it, and cloud-ingest on embedded defaults (SQLite, embedded
/// MQTT broker) serving the ops console. Prints the console URL; Ctrl-C stops everything in
/// order (agents first, so their buffers drain, then the simulator, then cloud-ingest).
///
/// Everything the demo writes (databases, buffers, tag maps, logs) goes under --dir; each
/// process logs to DIR/logs/NAME.log.
#[derive(Debug, Parser)]
#[command(name = "flowsquare-demo", version)]
struct Cli {
    /// Working directory for the demo's state and logs. Default: target/demo under the
    /// current directory. Its previous contents are DELETED at start unless --keep is given; a
    /// non-empty directory that is not a previous demo directory (no `.flowsquare-demo` marker)
    /// is refused unless --force.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the previous run's databases and buffers in --dir (continue a demo).
    #[arg(long)]
    keep: bool,
    /// Let --dir empty a non-empty directory that is not a previous demo directory.
    #[arg(long)]
    force: bool,
    /// Console/API port on 127.0.0.1. 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Simulated seconds per real second (the simulated week fits in minutes at 600).
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// The configuration directory (config/ of the repository): demo/cloud-ingest.toml,
    /// sim/terminal.toml and the strapping tables.
    #[arg(long, value_name = "DIR", default_value = "config")]
    config_dir: PathBuf,
    /// Stop after this long (e.g. for a scripted check); default: run until Ctrl-C.
    #[arg(long, value_name = "SECONDS")]
    stop_after: Option<u64>,
    /// Extra arguments for `flowsquare-sim terminal` (fault injection, see
    /// `flowsquare-sim terminal --help`), after `--`.
    #[arg(last = true, value_name = "SIM_ARGS")]
    sim_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowsquare-demo: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowsquare-demo: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The file that marks a directory as the demo's own (so the next run may empty it).
const MARKER: &str = ".flowsquare-demo";

/// May the demo empty `dir`? Yes when it is empty, was made by a previous demo run (it holds
/// the marker), or `force`; otherwise an error that names the directory and the way out.
fn may_clear(dir: &Path, force: bool) -> Result<()> {
    if force || dir.join(MARKER).is_file() {
        return Ok(());
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    if entries.next().is_none() {
        return Ok(());
    }
    bail!(
        "{} is not empty and is not a previous demo directory: the demo empties --dir at start. \
         Give another --dir, continue in it with --keep, or pass --force to delete its contents",
        dir.display()
    )
}

/// A free TCP port on 127.0.0.1 (bound and released; the child binds it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("this program's path has no directory")
}

fn find_bin(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{} not found next to flowsquare-demo (build the workspace first: cargo build --release)",
            p.display()
        )
    }
}

/// The cloud-ingest configuration of the demo with its ports, database and table paths set
/// for this run.
fn ingest_config(src: &Path, dir: &Path, api_port: u16, broker_port: u16) -> Result<String> {
    let text =
        std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", src.display()))?;
    let base = src
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    let table = |doc: &mut toml::Table, name: &str| -> Result<toml::Table> {
        match doc.remove(name) {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(t)) => Ok(t),
            Some(_) => bail!("{}: [{name}] is not a table", src.display()),
        }
    };
    let mut mqtt = table(&mut doc, "mqtt")?;
    mqtt.insert(
        "broker".into(),
        format!("mqtt://127.0.0.1:{broker_port}").into(),
    );
    doc.insert("mqtt".into(), mqtt.into());
    let mut broker = table(&mut doc, "broker")?;
    broker.insert("embedded".into(), true.into());
    broker.insert("listen".into(), format!("127.0.0.1:{broker_port}").into());
    doc.insert("broker".into(), broker.into());
    let mut api = table(&mut doc, "api")?;
    api.insert("listen".into(), format!("127.0.0.1:{api_port}").into());
    doc.insert("api".into(), api.into());
    let mut db = table(&mut doc, "database")?;
    db.remove("url");
    db.insert(
        "sqlite_path".into(),
        dir.join("ingest.db").display().to_string().into(),
    );
    doc.insert("database".into(), db.into());
    // Strapping tables are relative to the source config: make them absolute.
    if let Some(toml::Value::Table(rec)) = doc.get_mut("reconcile") {
        if let Some(toml::Value::Array(tanks)) = rec.get_mut("tanks") {
            for t in tanks {
                if let Some(toml::Value::String(p)) = t.get_mut("strapping_table") {
                    if Path::new(p.as_str()).is_relative() {
                        *p = base.join(p.as_str()).display().to_string();
                    }
                }
            }
        }
    }
    toml::to_string(&doc).context("writing the demo's cloud-ingest config")
}

async fn wait_http_ok(url: &str, timeout: Duration, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if proc::http_get_ok(url).await {
            return Ok(());
        }
        if let Some(status) = child.try_exited() {
            bail!(
                "{} exited ({status}) before {url} answered; see {}{}",
                child.name,
                child.log.display(),
                child.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{url} did not answer within {timeout:?}; see {}",
                child.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(cli: Cli) -> Result<()> {
    let started = Instant::now();
    let dir = cli
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/demo"));
    if dir.exists() && !cli.keep {
        may_clear(&dir, cli.force)?;
    }
    let bins = bin_dir()?;
    let ingest_bin = find_bin(&bins, "cloud-ingest")?;
    let sim_bin = find_bin(&bins, "flowsquare-sim")?;
    let agent_bin = find_bin(&bins, "edge-agent")?;
    if dir.exists() && !cli.keep {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let maps = dir.join("maps");
    let logs = dir.join("logs");
    for d in [&dir, &maps, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(
        dir.join(MARKER),
        "flowsquare-demo working directory: emptied at each start\n",
    )
    .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let config_dir = std::fs::canonicalize(&cli.config_dir).with_context(|| {
        format!(
            "{}: the configuration directory (run from the repository root or give --config-dir)",
            cli.config_dir.display()
        )
    })?;

    let api_port = if cli.port == 0 {
        free_port()?
    } else {
        cli.port
    };
    if TcpListener::bind(("127.0.0.1", api_port)).is_err() {
        bail!("port {api_port} is in use: give another with --port (0 picks a free one)");
    }
    let broker_port = free_port()?;
    let base = format!("http://127.0.0.1:{api_port}");
    // One simulated clock for every process: day 0 is today's UTC midnight, starting 3 s from
    // now (the simulator's lead-in), running --speed times real time.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_millis() as i64;
    let midnight_ms = now_ms - now_ms.rem_euclid(86_400_000);
    let clock = format!("sim:{midnight_ms}:{}:{}", now_ms + 3_000, cli.speed);

    say!(
        "[1/3] cloud-ingest: SQLite in {}, embedded MQTT broker on 127.0.0.1:{broker_port}",
        dir.display()
    );
    let ingest_cfg = dir.join("cloud-ingest.toml");
    std::fs::write(
        &ingest_cfg,
        ingest_config(
            &config_dir.join("demo/cloud-ingest.toml"),
            &dir,
            api_port,
            broker_port,
        )?,
    )?;
    let mut ingest = Child::spawn(
        "cloud-ingest",
        &ingest_bin,
        &[
            "--config".into(),
            ingest_cfg.display().to_string(),
            "serve".into(),
        ],
        &dir,
        &logs,
        &[("FLOWSQUARE_CLOCK", clock.as_str())],
    )?;
    wait_http_ok(
        &format!("{base}/readyz"),
        Duration::from_secs(60),
        &mut ingest,
    )
    .await?;

    say!("[2/3] simulated terminal at {}x real time", cli.speed);
    let mut sim_args = vec![
        "terminal".to_string(),
        "--config".into(),
        config_dir.join("sim/terminal.toml").display().to_string(),
        "--write-maps".into(),
        maps.display().to_string(),
        "--mqtt-upstream".into(),
        format!("127.0.0.1:{broker_port}"),
        "--epod-url".into(),
        format!("{base}/api/v1/epods"),
        "--token".into(),
        "demo-operator".into(),
        "--clock".into(),
        clock.clone(),
        "--run-dir".into(),
        dir.join("sim").display().to_string(),
    ];
    sim_args.extend(cli.sim_args.iter().cloned());
    let mut sim = Child::spawn("flowsquare-sim", &sim_bin, &sim_args, &dir, &logs, &[])?;
    sim.wait_line("maps written", Duration::from_secs(60))
        .await
        .context("the simulator did not write the tag maps")?;

    let mut map_files: Vec<PathBuf> = std::fs::read_dir(&maps)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    map_files.sort();
    if map_files.is_empty() {
        bail!("the simulator wrote no tag maps into {}", maps.display());
    }
    say!("[3/3] {} edge agents ({})", map_files.len(), maps.display());
    let mut agents = Vec::new();
    for map in &map_files {
        let name = map
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "agent".into());
        let state = dir.join("agents").join(&name);
        std::fs::create_dir_all(&state)?;
        let child = Child::spawn(
            &format!("edge-agent-{name}"),
            &agent_bin,
            &["run".into(), "--config".into(), map.display().to_string()],
            &state,
            &logs,
            &[("FLOWSQUARE_CLOCK", clock.as_str())],
        )?;
        agents.push(child);
    }

    say!();
    say!(
        "  Console:  {base}/   (ready after {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    say!(
        "  Tokens:   {}",
        TOKENS
            .iter()
            .map(|(t, r)| format!("{t} ({r})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    say!("  API:      {base}/api/v1/openapi.json");
    say!("  Logs:     {}", logs.display());
    say!("  Ctrl-C stops everything.");
    say!();

    // Progress: say when the first readings are committed (what the console's charts show).
    let first = async {
        loop {
            if first_reading(&base).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .is_ok()
    {
        say!(
            "  first readings committed {:.1} s after start: the console has data.",
            started.elapsed().as_secs_f64()
        );
    } else {
        say!(
            "  no readings committed after 60 s: see the logs in {}",
            logs.display()
        );
    }

    let outcome = supervise(&mut ingest, &mut sim, &mut agents, cli.stop_after).await;

    say!("stopping: edge agents (draining buffers)…");
    for a in &mut agents {
        a.stop(Duration::from_secs(20)).await;
    }
    say!("stopping: simulator…");
    sim.stop(Duration::from_secs(10)).await;
    say!("stopping: cloud-ingest…");
    ingest.stop(Duration::from_secs(20)).await;
    say!("stopped.");
    outcome
}

/// Whether cloud-ingest has committed a reading of any tag (what a console chart shows).
async fn first_reading(base: &str) -> bool {
    let Some((200, body)) =
        proc::http_get(&format!("{base}/api/v1/tags"), Some("demo-viewer")).await
    else {
        return false;
    };
    let Ok(tags) = serde_json::from_str::<serde_json::Value>(&body) else {
        return false;
    };
    let list = tags.get("data").unwrap_or(&tags);
    let ids: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.get("id").and_then(|i| i.as_i64()))
                .take(100)
                .map(|i| i.to_string())
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        return false;
    }
    let url = format!("{base}/api/v1/latest?tag_id={}", ids.join(","));
    matches!(proc::http_get(&url, Some("demo-viewer")).await,
        Some((200, body)) if body.contains("\"value\""))
}

/// Wait for Ctrl-C / SIGTERM / --stop-after, or for a child to exit on its own (an error).
async fn supervise(
    ingest: &mut Child,
    sim: &mut Child,
    agents: &mut [Child],
    stop_after: Option<u64>,
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let deadline = stop_after.map(|s| Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => { say!(); return Ok(()) }
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        for c in std::iter::once(&mut *ingest)
            .chain(std::iter::once(&mut *sim))
            .chain(agents.iter_mut())
        {
            if let Some(status) = c.try_exited() {
                bail!(
                    "{} exited on its own ({status}); see {}{}",
                    c.name,
                    c.log.display(),
                    c.log_tail()
                );
            }
        }
    }
}
