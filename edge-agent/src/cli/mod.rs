//! The `edge-agent` command line: `check`, `plan`, `read`, `probe`, `browse`, `opcua certs`,
//! `buffer`, `run`.

mod buffer;
mod check;
mod opcua;
pub mod plan;
mod probe;
mod probe_serial;
mod read;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Diagnostic, Severity};

/// Errors of the command line layer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The tag map could not be loaded (diagnostics already printed).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Writing output or setting up signals failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A command-line argument is invalid.
    #[error("{0}")]
    Usage(String),
    /// A device could not be reached or answered with an error (probe).
    #[error(transparent)]
    Link(#[from] crate::drivers::modbus::LinkError),
    /// A serial device (GPS, tank gauge) could not be reached (probe).
    #[error("{0}")]
    Device(String),
}

/// FlowSquare edge agent: polls flow meters, tank gauges and PLCs (Modbus TCP/RTU, OPC UA), GPS
/// receivers (NMEA 0183, gpsd) and Veeder-Root TLS-350 consoles from a TOML tag map and hands
/// every reading to the next stage.
///
/// Commissioning a device: `probe` reads raw registers and shows every decoding (`probe nmea`
/// prints a receiver's sentences decoded, `probe tls350` one console reply; `browse opcua`
/// lists an OPC UA server's nodes; `opcua certs` trusts its certificate); write the tag map
/// (see config/agent.example.toml); `check` validates it; `plan` shows the requests of one cycle;
/// `read --once` polls once and prints every tag; `run` polls continuously.
#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about, long_about)]
pub struct Cli {
    /// Log level filter (error, warn, info, debug, trace, or a tracing directive list).
    #[arg(long, global = true, env = "EDGE_AGENT_LOG", default_value = "info")]
    pub log_level: String,
    /// Log format on stderr: text, or json (one object per line, structured fields).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a tag map: every problem at once, each as file:line:column with its device/tag.
    /// Exit status 1 when there are errors (warnings alone exit 0).
    Check {
        /// Tag map (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Print the read requests of one poll cycle per device and the estimated cycle time.
    Plan {
        /// Tag map (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Output format.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Poll the devices and print one line per tag (all tags, or those named with --tag).
    Read {
        /// Tag map (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Only these tags (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Poll once and exit (without it: print every cycle until Ctrl-C).
        #[arg(long)]
        once: bool,
        /// jsonl: {"tag","value","quality","ts"[,"error"]} per line; table: aligned columns.
        #[arg(long, default_value = "table", value_parser = ["jsonl", "table"])]
        format: String,
    },
    /// Talk to one device directly: Modbus registers decoded every way, NMEA sentences decoded,
    /// a TLS-350 reply raw and decoded.
    Probe {
        #[command(subcommand)]
        /// Protocol.
        protocol: probe::ProbeProtocol,
    },
    /// List a server's address space (NodeIds, types, values) to write tag maps.
    Browse {
        #[command(subcommand)]
        /// Protocol.
        protocol: opcua::BrowseProtocol,
    },
    /// OPC UA tools: `opcua certs list|trust|reject` (the agent's certificate and the server
    /// certificates it trusts).
    Opcua {
        #[command(subcommand)]
        /// What to do.
        command: opcua::OpcUaCommand,
    },
    /// Inspect or export the store-and-forward buffer.
    Buffer {
        #[command(subcommand)]
        /// What to do.
        command: buffer::BufferCommand,
    },
    /// Poll continuously: readings go through the deadband filter into the SQLite buffer and,
    /// with an [uplink], to the cloud over MQTT. Stops cleanly on SIGINT/SIGTERM. SIGHUP
    /// (systemctl reload) reloads the tag map: validated first (errors logged, the old map kept),
    /// then only changed devices restart. Under systemd (Type=notify) it reports readiness and
    /// pings the watchdog while polling makes progress.
    Run {
        /// Tag map (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// jsonl: also print reported readings (after deadband/heartbeat) to stdout; none: only
        /// buffer and forward them.
        #[arg(long, default_value = "none", value_parser = ["jsonl", "none"])]
        output: String,
        /// Log a per-device summary this often.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        stats_every: std::time::Duration,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::settings::duration::parse(s)
}

/// Print diagnostics to stderr (errors and warnings); returns the error count.
pub fn print_diagnostics(diags: &[Diagnostic]) -> usize {
    for d in diags {
        eprintln!("{d}");
    }
    diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
}

/// Load a tag map, printing its diagnostics; on errors returns `Err` after printing them.
pub fn load_map(path: &std::path::Path) -> Result<crate::config::TagMap, CliError> {
    match crate::config::load(path) {
        Ok((map, warnings)) => {
            print_diagnostics(&warnings);
            Ok(map)
        }
        Err(ConfigError::Invalid(d)) => {
            let n = print_diagnostics(&d);
            Err(CliError::Usage(format!(
                "{}: {n} error(s); fix them and run `edge-agent check` again",
                path.display()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Give memory freed after start-up back to the OS. Parsing a large tag map briefly needs
/// ~15 bytes of tokens per byte of TOML; glibc keeps freed heap mapped, which would count against
/// the agent's resident memory for its whole life. musl and other allocators need nothing here.
pub fn release_startup_memory() {
    // The parser's code too: the start-up peak is the map's heap plus every page of code run
    // so far (runtime/memory.rs).
    crate::runtime::memory::release_after_start();
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Check {
            config,
            deny_warnings,
        } => check::run(&config, deny_warnings),
        Command::Plan { config, format } => plan::run(&config, &format),
        Command::Read {
            config,
            tags,
            once,
            format,
        } => read::run(&config, &tags, once, &format).await,
        Command::Probe { protocol } => probe::run(protocol).await,
        Command::Browse { protocol } => opcua::browse(protocol).await,
        Command::Opcua { command } => opcua::run(command),
        Command::Buffer { command } => buffer::run(command),
        Command::Run {
            config,
            output,
            stats_every,
        } => run::run(&config, &output, stats_every).await,
    }
}
