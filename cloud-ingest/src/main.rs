//! `cloud-ingest` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use cloud_ingest::cli::{self, Cli};

fn main() -> anyhow::Result<ExitCode> {
    // `… | head`: a closed stdout ends the command quietly with status 0, never a panic.
    flowsquare_service::pipe::exit_quietly_on_broken_pipe();
    use tracing_subscriber::prelude::*;
    let args = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(&args.log_level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let journal = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(tty);
    match journal {
        // Under systemd: native journal protocol, tracing fields become journal fields
        // (SITE=, AGENT=, BATCH_ID=, ERROR=…), the level becomes PRIORITY.
        Some(layer) => tracing_subscriber::registry()
            .with(filter())
            .with(layer.with_field_prefix(None))
            .init(),
        None if std::env::var_os("JOURNAL_STREAM").is_some() => {
            builder.without_time().with_ansi(false).init()
        }
        None => builder.init(),
    }
    // The data clock: a bad FLOWSQUARE_CLOCK is an error; a simulated one is announced loudly.
    match flowsquare_service::clock::init() {
        Ok(c) => {
            if let Some(w) = flowsquare_service::clock::warning(&c) {
                tracing::warn!("{w}");
            }
        }
        Err(e) => {
            eprintln!("cloud-ingest: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match rt.block_on(cli::run(args)) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("cloud-ingest: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
