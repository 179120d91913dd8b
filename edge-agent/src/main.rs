//! `edge-agent` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use edge_agent::cli::{self, Cli};

fn init_logging(level: &str, format: &str) {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // Under systemd (JOURNAL_STREAM set, the journal socket reachable): the native journal
    // protocol, so every tracing field is a journal field (DEVICE=, TAG=, ERROR=, CONFIG_HASH=…;
    // `journalctl -u edge-agent DEVICE=tank-gauge-1`), with the level as PRIORITY.
    if std::env::var_os("JOURNAL_STREAM").is_some() && format != "json" {
        if let Ok(layer) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter())
                .with(layer.with_field_prefix(None))
                .init();
            return;
        }
    }
    let filter = filter();
    // Colours only on a terminal: logs redirected to files or journald stay plain text.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty);
    // Journal socket unreachable under systemd: plain text, journald adds its own timestamps.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match (format, journald) {
        ("json", _) => builder.json().init(),
        (_, true) => builder.without_time().with_ansi(false).init(),
        _ => builder.init(),
    }
}

fn main() -> anyhow::Result<ExitCode> {
    // `… | head`: a closed stdout ends the command quietly with status 0, never a panic.
    flowsquare_service::pipe::exit_quietly_on_broken_pipe();
    let args = Cli::parse();
    init_logging(&args.log_level, &args.log_format);
    // The data clock: a bad FLOWSQUARE_CLOCK is an error; a simulated one is announced loudly.
    match flowsquare_service::clock::init() {
        Ok(c) => {
            if let Some(w) = flowsquare_service::clock::warning(&c) {
                tracing::warn!("{w}");
            }
        }
        Err(e) => {
            eprintln!("edge-agent: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match rt.block_on(cli::run(args)) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("edge-agent: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
