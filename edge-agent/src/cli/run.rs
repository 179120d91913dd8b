//! `edge-agent run`: acquisition → per-tag filter → sink, with an ordered shutdown on
//! SIGINT/SIGTERM (drivers stop, then what they produced is drained).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::CliError;
use crate::drivers::filter::TagFilter;
use crate::drivers::Acquisition;
use crate::model::Reading;
use crate::sink;

pub async fn run(path: &Path, output: &str, stats_every: Duration) -> Result<ExitCode, CliError> {
    let map = super::load_map(path)?;
    super::release_startup_memory();
    tracing::info!(
        site = %map.agent.site, agent = %map.agent.id, devices = map.devices.len(), tags = map.tags.len(),
        config_hash = %map.hash, "edge-agent starting"
    );
    let (tx, mut rx) = mpsc::channel::<Vec<Reading>>(256);
    let acq = Acquisition::start(&map, tx);
    let stats = acq.stats.clone();
    let mut filter = TagFilter::new(map.tags.len());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(stats_every.max(Duration::from_secs(1)));
    tick.tick().await;
    let (mut polled, mut reported) = (0u64, 0u64);
    let mut consume = |batch: Vec<Reading>, polled: &mut u64, reported: &mut u64| {
        let mut out = String::new();
        for r in batch {
            *polled += 1;
            let Some(tag) = map.tags.get(r.tag as usize) else {
                continue;
            };
            if let Some(r) = filter.process(tag, r) {
                *reported += 1;
                if output == "jsonl" {
                    out.push_str(&sink::json_line(&map, &r));
                    out.push('\n');
                }
            }
        }
        if !out.is_empty() {
            print!("{out}");
        }
    };
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(b) => consume(b, &mut polled, &mut reported),
                None => break,
            },
            _ = tick.tick() => {
                for (d, s) in map.devices.iter().zip(&stats) {
                    let s = s.snapshot();
                    tracing::info!(
                        device = %d.name, cycles = s.cycles, success_rate = s.success_rate(), rtt_ms = s.mean_rtt_ms(),
                        exceptions = s.exceptions, timeouts = s.timeouts, decode_errors = s.decode_errors,
                        skipped_cycles = s.skipped_cycles, overruns = s.overruns, "device summary"
                    );
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    // Ordered shutdown: drivers stop first, then every reading they produced is drained.
    acq.stop().await;
    while let Ok(b) = rx.try_recv() {
        consume(b, &mut polled, &mut reported);
    }
    tracing::info!(polled, reported, "edge-agent stopped");
    Ok(ExitCode::SUCCESS)
}
