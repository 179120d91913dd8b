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
    limit_malloc_arenas();
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
    // One worker: the agent's tasks are I/O-bound and short (a poll, a decode, a hand-over), and
    // with two workers most of the time went into waking and switching between them (issue 14,
    // perf). Still a multi-thread runtime, so `spawn_blocking` and the buffer's own thread work
    // as before and nothing blocking can stall the I/O driver's thread for good.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The command runs as a task on the worker, not as `block_on`'s own future on the main
    // thread: the pipeline loop lives in it, and every hand-over between the drivers (on the
    // worker) and the pipeline would otherwise wake a second thread (issue 14, perf).
    let res = rt.block_on(async { tokio::spawn(cli::run(args)).await });
    match res {
        Ok(Ok(code)) => Ok(code),
        Ok(Err(e)) => {
            eprintln!("edge-agent: {e}");
            Ok(ExitCode::from(2))
        }
        // The command's task panicked (the panic message is already on stderr).
        Err(e) => {
            eprintln!("edge-agent: {e}");
            Ok(ExitCode::from(101))
        }
    }
}

/// glibc gives each thread that allocates its own malloc arena (up to 8 per core), each keeping
/// freed memory of its own: two arenas keep the agent's resident memory down (issue 14) without
/// making its few threads contend for one lock. An environment `MALLOC_ARENA_MAX` (or
/// `MALLOC_MMAP_THRESHOLD_` for the threshold below) still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists; mallopt only
        // sets an allocator parameter, and a refusal (return 0) leaves the default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    // A fixed mmap threshold of 1 MiB, without glibc's dynamic growth: a large block freed
    // once (the birth: ~120 bytes per tag; tag-map parsing) would otherwise raise the threshold
    // to its size, and every later block up to that size would come from the heap and keep it
    // resident once freed. Blocks of 1 MiB and more are mapped and unmapped; the steady ones
    // (group commits, batches) stay below it. (128 KiB, glibc's initial value, cost 20 % more
    // CPU at 100,000 tags in page faults: bench-footprint, issue 14.)
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
