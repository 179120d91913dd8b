//! `flowsquare-sim`: the site simulator as a process (benchmarks, demos). A thin CLI over the
//! `site_sim` library.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use site_sim::modbus::{self, gen_map, MapConfig, SerialConfig, Simulator};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// FlowSquare site simulator: simulated field devices for tests, benchmarks and demos.
#[derive(Debug, Parser)]
#[command(name = "flowsquare-sim", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a register map as simulated Modbus TCP devices and/or a Modbus RTU bus.
    ///
    /// After binding, prints one line per endpoint to stdout: `listening tcp ADDR:PORT` or
    /// `listening rtu PATH`. Runs until SIGINT or SIGTERM, then exits 0. Logs go to stderr
    /// (level from RUST_LOG, default info).
    ///
    /// Example: flowsquare-sim modbus --map config/sim/modbus-demo.toml --tcp 127.0.0.1:0
    /// --listeners 4 --ports-file /tmp/ports
    Modbus(ModbusArgs),
    /// Feed NMEA 0183 sentences to a serial port or pseudo-terminal: a truck driving a route
    /// (fix loss, corrupted checksums, partial sentences on request) or a recorded file.
    ///
    /// Prints `feeding nmea PATH` once the port is open; runs until SIGINT/SIGTERM (or the end
    /// of a replay without `repeat`).
    ///
    /// Example: flowsquare-sim nmea --config config/sim/nmea-truck.toml --serial /dev/pts/3
    Nmea(NmeaArgs),
    /// Serve a Veeder-Root TLS-350 console (i201 inventory, i202 deliveries, 9999FF1B for the
    /// rest) on a serial port / pseudo-terminal and/or TCP.
    ///
    /// Prints `listening tcp ADDR:PORT` / `listening serial PATH` per endpoint; runs until
    /// SIGINT/SIGTERM.
    ///
    /// Example: flowsquare-sim tls350 --config config/sim/tls350-station.toml --tcp 127.0.0.1:10001
    Tls350(Tls350Args),
    /// Serve a simulated OPC UA server (tank farm / gantry variables changing every --interval,
    /// plus --bench generated variables).
    ///
    /// After binding, prints `listening opcua opc.tcp://HOST:PORT/` to stdout. Runs until SIGINT or
    /// SIGTERM, then exits 0.
    ///
    /// Example: flowsquare-sim opcua --listen 127.0.0.1:0 --interval 1s --bench 5000
    Opcua(OpcUaArgs),
    /// Run the coherent simulated terminal: tanks, jetty meter, vessel discharges, gantry bays,
    /// trucks with NMEA ptys, a station TLS-350, an MQTT relay, ePODs posted to cloud-ingest.
    ///
    /// Prints `clock <VALUE>` (export FLOWSQUARE_CLOCK=<VALUE> to every agent and to
    /// cloud-ingest), one line `listening <modbus|opcua|tls350|mqtt-relay|pty> ADDR` per
    /// endpoint and, with --write-maps, `maps written DIR`; runs until SIGINT/SIGTERM.
    ///
    /// Example: flowsquare-sim terminal --config config/sim/terminal.toml --speed 600
    /// --run-dir /tmp/fs-term --write-maps /tmp/fs-term/maps --mqtt-upstream 127.0.0.1:1883
    /// --epod-url http://127.0.0.1:8080/api/v1/epods --token demo-operator
    Terminal(Box<TerminalArgs>),
    /// Print a generated benchmark register map (or, with --agent-tags, the matching edge-agent
    /// devices and tags) to stdout.
    ///
    /// Example: flowsquare-sim gen-map --units 1 --tags 100 > map.toml
    GenMap(GenMapArgs),
}

#[derive(Debug, Args)]
struct ModbusArgs {
    /// Register map (TOML); see config/sim/modbus-demo.toml for every key, and
    /// config/sim/gantry-demo.toml for a gantry batch controller (`[unit.gantry]`).
    #[arg(long, value_name = "FILE")]
    map: PathBuf,
    /// Serve Modbus TCP on this address (repeatable; each address is a separate device with
    /// its own copy of the map). Port 0 picks a free port.
    #[arg(long = "tcp", value_name = "ADDR")]
    tcp: Vec<String>,
    /// Bind N listeners (N separate devices, same map) on each --tcp address; needs port 0.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    listeners: u16,
    /// Serve Modbus RTU on this serial device or pseudo-terminal (all units share the bus).
    #[arg(long, value_name = "PATH")]
    rtu: Option<String>,
    /// RTU baud rate.
    #[arg(long, default_value_t = 9600, value_name = "BAUD")]
    baud: u32,
    /// RTU parity.
    #[arg(long, value_enum, default_value_t = ParityArg::None)]
    parity: ParityArg,
    /// RTU data bits (5–8).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(5..=8))]
    data_bits: u8,
    /// RTU stop bits (1 or 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    stop_bits: u8,
    /// Also write the bound TCP ports, one per line, to this file (written atomically, after
    /// every listener is bound).
    #[arg(long, value_name = "FILE")]
    ports_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TerminalArgs {
    /// Terminal file (TOML); see config/sim/terminal.toml for every key.
    #[arg(long, value_name = "FILE", default_value = "config/sim/terminal.toml")]
    config: PathBuf,
    /// Inject a fault in addition to the file's [faults] (repeatable), with the keys of the
    /// file's `[[faults.KIND]]`: tank_leak:tank=T3,day=1,at=12:00,hours=2,litres=4000 ·
    /// meter_drift:meter=M2,from_day=1,fraction=0.003 ·
    /// transit_loss:truck=TRK-02,day=0,fraction=0.02,stop_min=40 ·
    /// silent:device=tank-plc,day=0,at=08:00,minutes=240 (device tank-plc or tls350) ·
    /// broker_outage:day=0,at=10:00,minutes=180. Days count from day 0 (the clock's origin).
    #[arg(long, value_name = "KIND:KEY=VALUE,…")]
    fault: Vec<String>,
    /// Sim seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Sim time origin, RFC 3339 UTC midnight (default: the file's `start`).
    #[arg(long, value_name = "TIME")]
    start: Option<String>,
    /// Real time from now until the sim clock starts at --start (the terminal is still until
    /// then), so the agents started after the simulator see day 0 from its midnight.
    #[arg(long, default_value = "3s", value_parser = site_sim::duration::parse_duration)]
    lead_in: std::time::Duration,
    /// Join a clock another process started (a FLOWSQUARE_CLOCK value); overrides --speed,
    /// --start and --lead-in.
    #[arg(long, env = "FLOWSQUARE_CLOCK", value_name = "CLOCK")]
    clock: Option<String>,
    /// Modbus TCP address (tank PLC unit 1, bays units 10+n). Port 0 (the default) = a free
    /// port; the bound addresses are printed and written into the --write-maps maps.
    #[arg(long, default_value = "127.0.0.1:0")]
    modbus: String,
    /// OPC UA address.
    #[arg(long, default_value = "127.0.0.1:0")]
    opcua: String,
    /// TLS-350 console address.
    #[arg(long, default_value = "127.0.0.1:0")]
    tls350: String,
    /// MQTT relay address (the agents' broker; the broker-outage fault cuts it).
    #[arg(long, default_value = "127.0.0.1:0")]
    mqtt_listen: String,
    /// The MQTT broker (HOST:PORT) the relay forwards to: cloud-ingest's.
    #[arg(
        long,
        alias = "broker",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:1883"
    )]
    mqtt_upstream: String,
    /// Directory of the pty links (<id>.tty) and the OPC UA PKI.
    #[arg(long, default_value = "/tmp/flowsquare-terminal")]
    run_dir: PathBuf,
    /// Write the agent tag maps with the bound addresses into DIR.
    #[arg(long, value_name = "DIR")]
    write_maps: Option<PathBuf>,
    /// cloud-ingest's ePOD endpoint, `http://HOST:PORT/api/v1/epods`; discharges go to
    /// `…/api/v1/discharges` beside it (absent: no paperwork is posted).
    #[arg(long, value_name = "URL")]
    epod_url: Option<String>,
    /// Bearer token (operator role) for --epod-url.
    #[arg(long, env = "FLOWSQUARE_TOKEN", value_name = "TOKEN")]
    token: Option<String>,
    /// Real time between model steps.
    #[arg(long, default_value = "50ms", value_parser = site_sim::duration::parse_duration)]
    tick: std::time::Duration,
    /// Real time between NMEA fixes per truck.
    #[arg(long, default_value = "100ms", value_parser = site_sim::duration::parse_duration)]
    nmea_interval: std::time::Duration,
    /// The agents' poll interval (real time) written into the --write-maps maps. At --speed N
    /// a reading covers N × this of sim time.
    #[arg(long, default_value = "200ms", value_parser = site_sim::duration::parse_duration)]
    poll: std::time::Duration,
}

#[derive(Debug, Args)]
struct NmeaArgs {
    /// Feeder config (TOML); see config/sim/nmea-truck.toml for every key.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Serial device or pseudo-terminal to write to.
    #[arg(long, value_name = "PATH")]
    serial: String,
    /// Baud rate.
    #[arg(long, default_value_t = 4800, value_name = "BAUD")]
    baud: u32,
}

#[derive(Debug, Args)]
struct Tls350Args {
    /// Console config (TOML); see config/sim/tls350-station.toml for every key.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Serve on this TCP address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<String>,
    /// Serve on this serial device or pseudo-terminal.
    #[arg(long, value_name = "PATH")]
    serial: Option<String>,
    /// Serial baud rate.
    #[arg(long, default_value_t = 9600, value_name = "BAUD")]
    baud: u32,
}

#[derive(Debug, Args)]
struct OpcUaArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:4840", value_name = "ADDR")]
    listen: String,
    /// Time between value changes, e.g. 1s or 200ms.
    #[arg(long, default_value = "1s", value_parser = site_sim::duration::parse_duration)]
    interval: std::time::Duration,
    /// Number of generated Bench.<k> variables (all change every interval).
    #[arg(long, default_value_t = 0)]
    bench: usize,
    /// PKI directory of the server (its certificate is created there once).
    #[arg(long, default_value = "pki-sim", value_name = "DIR")]
    pki_dir: PathBuf,
    /// Also offer Basic256Sha256 Sign and SignAndEncrypt endpoints.
    #[arg(long)]
    secure: bool,
    /// Accept only client certificates in <pki-dir>/trusted (default: trust every client).
    #[arg(long)]
    strict_clients: bool,
    /// Accept this user (USER:PASSWORD; repeatable). Anonymous is always accepted.
    #[arg(long = "user", value_name = "USER:PASSWORD")]
    users: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ParityArg {
    None,
    Even,
    Odd,
}

#[derive(Debug, Args)]
struct GenMapArgs {
    /// Number of units (ids 1, 2, …).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=247))]
    units: u8,
    /// Tags per unit.
    #[arg(long, default_value_t = 100)]
    tags: u16,
    /// Print the edge-agent [[device]] / [[device.tag]] list instead of the register map.
    #[arg(long)]
    agent_tags: bool,
    /// Simulator host written into the agent devices (with --agent-tags).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Simulator port written into the agent devices (with --agent-tags).
    #[arg(long, default_value_t = 502)]
    port: u16,
}

fn main() -> ExitCode {
    // `… | head`: a closed stdout ends the command quietly with status 0, never a panic.
    flowsquare_service::pipe::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Standard output's reader went away (`gen-map … | head`): stop quietly.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// Did writing fail because the reader of a pipe is gone?
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes, skipping causes whose text an outer message already includes
/// (the library's errors spell out their source).
fn describe(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::GenMap(a) => {
            let text = if a.agent_tags {
                gen_map::bench_agent_tags(a.units, a.tags, &a.host, a.port)
            } else {
                gen_map::bench_map(a.units, a.tags)
            };
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("writing to stdout")?;
            Ok(())
        }
        Command::Terminal(a) => {
            init_logging();
            runtime()?.block_on(run_terminal(*a))
        }
        Command::Nmea(a) => {
            init_logging();
            runtime()?.block_on(run_nmea(a))
        }
        Command::Tls350(a) => {
            init_logging();
            runtime()?.block_on(run_tls350(a))
        }
        Command::Opcua(a) => {
            init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run_opcua(a))
        }
        Command::Modbus(a) => {
            init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(run_modbus(a))
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("--tcp {addr}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--tcp {addr}: resolves to no address"))
}

async fn run_modbus(a: ModbusArgs) -> Result<()> {
    if a.tcp.is_empty() && a.rtu.is_none() {
        bail!("nothing to serve: give --tcp ADDR and/or --rtu PATH");
    }
    let map = MapConfig::load(&a.map)?;
    // Validate once up front so that a bad map fails before anything is bound.
    Simulator::new(&map)?;

    let mut listeners = Vec::new();
    for addr in &a.tcp {
        let sa = resolve(addr).await?;
        if a.listeners > 1 && sa.port() != 0 {
            bail!(
                "--listeners {} needs port 0 in --tcp {addr} (each listener gets its own port)",
                a.listeners
            );
        }
        for _ in 0..a.listeners {
            let l = TcpListener::bind(sa)
                .await
                .with_context(|| format!("binding {sa}"))?;
            listeners.push(l);
        }
    }
    let serial = match &a.rtu {
        Some(path) => {
            let cfg = SerialConfig {
                path: path.clone(),
                baud: a.baud,
                parity: match a.parity {
                    ParityArg::None => modbus::Parity::None,
                    ParityArg::Even => modbus::Parity::Even,
                    ParityArg::Odd => modbus::Parity::Odd,
                },
                data_bits: a.data_bits,
                stop_bits: a.stop_bits,
            };
            Some((modbus::open_serial(&cfg)?, path.clone()))
        }
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = stop_rx.clone();
        async move {
            // An error means the sender is gone: stop as well.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut tasks = JoinSet::new();
    let mut lines = String::new();
    let mut ports = String::new();
    for l in listeners {
        let local = l.local_addr().context("reading the bound address")?;
        lines.push_str(&format!("listening tcp {local}\n"));
        ports.push_str(&format!("{}\n", local.port()));
        let sim = Arc::new(Simulator::new(&map)?);
        start_gantries(&map, &sim, &shutdown);
        tracing::info!(addr = %local, units = sim.units().count(), "serving modbus tcp");
        tasks.spawn(modbus::serve_tcp(l, sim, shutdown()));
    }
    if let Some((port, path)) = serial {
        lines.push_str(&format!("listening rtu {path}\n"));
        let sim = Arc::new(Simulator::new(&map)?);
        start_gantries(&map, &sim, &shutdown);
        tracing::info!(%path, baud = a.baud, units = sim.units().count(), "serving modbus rtu");
        tasks.spawn(modbus::serve_rtu(port, sim, shutdown()));
    }
    if let Some(file) = &a.ports_file {
        write_atomically(file, &ports)?;
    }
    {
        let mut out = std::io::stdout().lock();
        out.write_all(lines.as_bytes())
            .context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }

    tokio::select! {
        r = wait_for_signal() => r?,
        Some(done) = tasks.join_next() => {
            // A server ended on its own: only an error or a closed serial port does that.
            match done {
                Ok(Ok(())) => tracing::warn!("a server stopped (serial port closed?)"),
                Ok(Err(e)) => return Err(e.into()),
                Err(e) => bail!("a server task failed: {e}"),
            }
        }
    }
    tracing::info!("shutting down");
    // Receivers may all be gone already; that is fine.
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "server error during shutdown");
        }
    }
    Ok(())
}

/// Start the `[unit.gantry]` batch controllers of `sim` on their timers.
fn start_gantries<F, Fut>(map: &MapConfig, sim: &Arc<Simulator>, shutdown: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    for u in &map.units {
        if let (Some(cfg), Some(unit)) = (&u.gantry, sim.unit(u.id)) {
            let g = modbus::Gantry::new(unit.clone(), cfg.clone());
            tracing::info!(
                unit = u.id,
                base = cfg.base,
                "gantry batch controller running"
            );
            tokio::spawn(g.run(shutdown()));
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn read_config(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn announce(lines: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(lines.as_bytes())
        .context("writing to stdout")?;
    out.flush().context("flushing stdout")
}

async fn run_terminal(a: TerminalArgs) -> Result<()> {
    use flowsquare_service::clock::{self, Clock};
    use site_sim::terminal;
    let cfg = terminal::TerminalConfig::load_with_faults(&a.config, &a.fault)?;
    let c = match &a.clock {
        Some(v) if !v.is_empty() => Clock::parse(v)?,
        _ => {
            let start = match &a.start {
                Some(s) => terminal::config::parse_time_ms(s)
                    .filter(|ms| ms % 86_400_000 == 0)
                    .with_context(|| format!("--start {s}: expected an RFC 3339 UTC midnight"))?,
                None => cfg.start_ms(),
            };
            if !(a.speed > 0.0 && a.speed <= clock::MAX_SPEED) {
                bail!("--speed {}: expected 0 < N ≤ {}", a.speed, clock::MAX_SPEED);
            }
            // The sim origin a lead-in from now, so agents started after the simulator see day
            // 0 from its midnight.
            let lead = i64::try_from(a.lead_in.as_millis()).unwrap_or(0);
            Clock::Sim {
                sim_start_ms: start,
                real_start_ms: clock::real_now_ms() + lead,
                speed: a.speed,
            }
        }
    };
    if clock::install(c).is_err() {
        bail!("the process clock was already set");
    }
    if let Some(w) = clock::warning(&c) {
        tracing::warn!("{w}");
    }
    let opts = terminal::Options {
        config_path: a.config.clone(),
        faults: a.fault.clone(),
        clock: c,
        modbus: resolve(&a.modbus).await?,
        opcua: resolve(&a.opcua).await?,
        tls350: resolve(&a.tls350).await?,
        mqtt_listen: resolve(&a.mqtt_listen).await?,
        broker: a.mqtt_upstream.clone(),
        run_dir: a.run_dir.clone(),
        write_maps: a.write_maps.clone(),
        epod_url: a.epod_url.clone(),
        token: a.token.clone(),
        tick: a.tick,
        nmea_interval: a.nmea_interval,
        poll: format!("{}ms", a.poll.as_millis().max(1)),
    };
    let env = c.env_value();
    let maps_dir = a.write_maps.clone();
    terminal::run(
        opts,
        |eps| {
            let mut s = format!("clock {env}\n");
            for e in eps {
                s.push_str(&format!("listening {} {}\n", e.what, e.addr));
            }
            if let Some(d) = &maps_dir {
                s.push_str(&format!("maps written {}\n", d.display()));
            }
            if let Err(e) = announce(&s) {
                tracing::error!(error = %e, "writing the endpoints");
            }
        },
        async {
            if let Err(e) = wait_for_signal().await {
                tracing::error!(error = %e, "signal handler");
            }
        },
    )
    .await?;
    Ok(())
}

async fn run_nmea(a: NmeaArgs) -> Result<()> {
    let text = read_config(&a.config)?;
    let cfg = site_sim::nmea::FeederConfig::from_toml_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    let port = modbus::open_serial(&SerialConfig::new(a.serial.clone(), a.baud))?;
    announce(&format!("feeding nmea {}\n", a.serial))?;
    tokio::select! {
        r = site_sim::nmea::feed(port, cfg, std::future::pending::<()>()) => r?,
        r = wait_for_signal() => r?,
    }
    Ok(())
}

async fn run_tls350(a: Tls350Args) -> Result<()> {
    use site_sim::tls350::{Console, ConsoleConfig};
    if a.tcp.is_none() && a.serial.is_none() {
        bail!("nothing to serve: give --tcp ADDR and/or --serial PATH");
    }
    let text = read_config(&a.config)?;
    let cfg = ConsoleConfig::from_toml_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    let console = Arc::new(std::sync::Mutex::new(Console::new(cfg)));
    let mut tasks = JoinSet::new();
    let mut lines = String::new();
    if let Some(addr) = &a.tcp {
        let l = TcpListener::bind(resolve(addr).await?)
            .await
            .with_context(|| format!("binding {addr}"))?;
        lines.push_str(&format!("listening tcp {}\n", l.local_addr()?));
        tasks.spawn(site_sim::tls350::serve_tcp(
            l,
            console.clone(),
            std::future::pending::<()>(),
        ));
    }
    if let Some(path) = &a.serial {
        let mut sc = SerialConfig::new(path.clone(), a.baud);
        sc.parity = modbus::Parity::Odd;
        sc.data_bits = 7;
        let port = modbus::open_serial(&sc)?;
        lines.push_str(&format!("listening serial {path}\n"));
        tasks.spawn(site_sim::tls350::serve_stream(
            port,
            console.clone(),
            std::future::pending::<()>(),
        ));
    }
    announce(&lines)?;
    tokio::select! {
        r = wait_for_signal() => r?,
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => tracing::warn!("a server stopped (serial port closed?)"),
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => bail!("a server task failed: {e}"),
        },
    }
    Ok(())
}

async fn run_opcua(a: OpcUaArgs) -> Result<()> {
    use site_sim::opcua::{OpcUaSim, OpcUaSimConfig};
    let sa = resolve(&a.listen).await?;
    let listener = TcpListener::bind(sa)
        .await
        .with_context(|| format!("binding {sa}"))?;
    let mut cfg = OpcUaSimConfig::new(&a.pki_dir, a.interval);
    cfg.bench = a.bench;
    cfg.secure = a.secure;
    cfg.trust_clients = !a.strict_clients;
    for u in &a.users {
        let (user, pass) = u
            .split_once(':')
            .with_context(|| format!("--user {u}: expected USER:PASSWORD"))?;
        cfg.users.push((user.to_owned(), pass.to_owned()));
    }
    let sim = OpcUaSim::start(cfg, listener).await?;
    tracing::info!(endpoint = %sim.endpoint, bench = a.bench, "serving opcua");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening opcua {}", sim.endpoint).context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    sim.stop().await;
    Ok(())
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}
