//! `edge-agent buffer status` and `edge-agent buffer export`.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::CliError;
use crate::buffer::codec::Identity;
use crate::buffer::writer::build_checked;
use crate::buffer::{LeaseOrder, LeaseRequest, Store};
use crate::model::{now_ms, rfc3339_ms};

/// Exit status of `buffer export` when unreadable records were skipped (the rest exported).
pub const EXPORT_SKIPPED: u8 = 3;

/// Magic line at the start of an export file.
pub const EXPORT_MAGIC: &[u8] = b"FLOWSQUARE-EXPORT 1\n";

/// `buffer` subcommands.
#[derive(Debug, Subcommand)]
pub enum BufferCommand {
    /// Rows, bytes, oldest unsent age, drops by reason; drain rate and ETA from the running agent.
    Status {
        /// Tag map (TOML) of the agent (for the buffer path and metrics address).
        #[arg(long, short)]
        config: std::path::PathBuf,
        /// Output format.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Write unsent data to a portable file for sneakernet recovery (`cloud-ingest import FILE`).
    /// The data are leased under persisted batch ids: if the site comes back online later, the
    /// same ids are sent and the cloud stores them once. A stored record that cannot be read is
    /// skipped (moved to the bad_segment table and exported as a `buffer-damaged` gap with its
    /// tags, time range and count), reported on stderr, and the rest is exported. Exit status:
    /// 0 everything exported; 3 exported, but records were skipped as unreadable (see stderr);
    /// 2 usage or I/O error (nothing exported).
    Export {
        /// Tag map (TOML) of the agent.
        #[arg(long, short)]
        config: std::path::PathBuf,
        /// From (RFC 3339, e.g. 2026-11-20T00:00:00Z, or a duration ago, e.g. 2d). Default: all.
        #[arg(long)]
        since: Option<String>,
        /// Until (same forms). Default: now.
        #[arg(long)]
        until: Option<String>,
        /// Output file.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// Parse an RFC 3339 time or a duration ago (`"2d"`, `"36h"`) into UTC ms.
pub fn parse_time(s: &str) -> Result<i64, CliError> {
    if let Ok(d) = crate::settings::duration::parse(s) {
        return Ok(now_ms() - d.as_millis() as i64);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| CliError::Usage(format!("{s:?}: expected an RFC 3339 time (2026-11-20T00:00:00Z) or a duration ago (2d, 36h)")))
}

/// Ask the running agent's metrics endpoint for a gauge.
fn scrape(addr: &str, metric: &str) -> Option<f64> {
    metrics_body(addr)?
        .lines()
        .find_map(|l| l.strip_prefix(metric).and_then(|v| v.trim().parse().ok()))
}

/// Per-device values of a `flowsquare_device_…{device="…"}` metric of the running agent.
fn scrape_per_device(addr: &str, metric: &str) -> Option<Vec<(String, f64)>> {
    Some(per_device(&metrics_body(addr)?, metric))
}

/// The `metric{device="…"} value` lines of a Prometheus text body.
fn per_device(body: &str, metric: &str) -> Vec<(String, f64)> {
    let prefix = format!("{metric}{{device=\"");
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix.as_str())?;
            let (device, value) = rest.split_once("\"}")?;
            Some((device.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The running agent's `/metrics` text.
fn metrics_body(addr: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

pub fn run(cmd: BufferCommand) -> Result<ExitCode, CliError> {
    match cmd {
        BufferCommand::Status { config, format } => status(&config, &format),
        BufferCommand::Export {
            config,
            since,
            until,
            out,
        } => export(&config, since.as_deref(), until.as_deref(), &out),
    }
}

fn status(config: &Path, format: &str) -> Result<ExitCode, CliError> {
    let map = super::load_map(config)?;
    let path = map.buffer.effective_path();
    if !path.exists() {
        return Err(CliError::Usage(format!(
            "no buffer at {} (has the agent run yet?)",
            path.display()
        )));
    }
    let f = Store::inspect(&path).map_err(|e| CliError::Usage(e.to_string()))?;
    let rate = (map.agent.metrics != "off")
        .then(|| scrape(&map.agent.metrics, "flowsquare_buffer_drain_rate "))
        .flatten();
    // Readings stamped with the gateway's time because a device's clock was out of bounds.
    let substituted = (map.agent.metrics != "off")
        .then(|| {
            scrape_per_device(
                &map.agent.metrics,
                "flowsquare_device_time_substituted_total",
            )
        })
        .flatten();
    let unsent = f.readings;
    let eta = rate.filter(|r| *r > 0.0).map(|r| unsent as f64 / r);
    let age_s = f.oldest_ts.map(|t| (now_ms() - t).max(0) as f64 / 1000.0);
    if format == "json" {
        println!(
            "{}",
            serde_json::json!({
                "path": path.display().to_string(),
                "segments": f.segments, "readings": f.readings, "bytes": f.bytes,
                "leased_readings": f.leased_readings, "pending_gaps": f.pending_gaps,
                "oldest_unsent": f.oldest_ts.map(rfc3339_ms), "oldest_unsent_age_s": age_s,
                "dropped": { "buffer-full": f.dropped_full, "buffer-age": f.dropped_age },
                "quarantined": f.quarantined, "next_batch_id": f.next_batch_id,
                "epoch": f.epoch, "salvaged_readings": f.salvaged_readings,
                "damaged_readings": f.damaged_readings, "damaged_uncounted": f.damaged_uncounted,
                "bad_segments": f.bad_segments,
                "drain_rate_per_s": rate, "eta_s": eta,
                "time_substituted": substituted.as_ref().map(|v| v.iter()
                    .map(|(d, n)| (d.clone(), serde_json::json!(n)))
                    .collect::<serde_json::Map<_, _>>()),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("buffer {}", path.display());
    println!(
        "  readings held     {} in {} segments, {} bytes ({:.1} B/reading)",
        f.readings,
        f.segments,
        f.bytes,
        if f.readings > 0 {
            f.bytes as f64 / f.readings as f64
        } else {
            0.0
        }
    );
    println!(
        "  in flight         {} readings sent, awaiting the cloud's acknowledgement",
        f.leased_readings
    );
    match (f.oldest_ts, age_s) {
        (Some(t), Some(a)) => println!(
            "  oldest unsent     {} ({})",
            rfc3339_ms(t),
            crate::settings::duration::format(std::time::Duration::from_secs_f64(a))
        ),
        _ => println!("  oldest unsent     - (empty)"),
    }
    match (rate, eta) {
        (Some(r), Some(e)) => println!(
            "  drain rate        {r:.0} readings/s, empty in about {}",
            crate::settings::duration::format(std::time::Duration::from_secs_f64(e))
        ),
        (Some(r), None) => println!("  drain rate        {r:.0} readings/s"),
        (None, _) => println!(
            "  drain rate        unknown (agent not running, or [agent] metrics = \"off\")"
        ),
    }
    println!(
        "  dropped           buffer-full {}, buffer-age {} (each reported to the cloud as a gap)",
        f.dropped_full, f.dropped_age
    );
    println!("  gaps to report    {}", f.pending_gaps);
    println!("  quarantined dbs   {}", f.quarantined);
    println!("  buffer epoch      {}", f.epoch);
    println!(
        "  damage            {} readings salvaged, {} reported lost (buffer-damaged gaps), {} parts of unknown count, {} unreadable records moved to bad_segment",
        f.salvaged_readings, f.damaged_readings, f.damaged_uncounted, f.bad_segments
    );
    match &substituted {
        Some(v) if !v.is_empty() => {
            let list: Vec<String> = v.iter().map(|(d, n)| format!("{d} {n:.0}")).collect();
            println!(
                "  time-substituted  {} (readings stamped with the gateway's time: device clock out of bounds)",
                list.join(", ")
            );
        }
        Some(_) => println!("  time-substituted  0"),
        None => println!(
            "  time-substituted  unknown (agent not running, or [agent] metrics = \"off\")"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn export(
    config: &Path,
    since: Option<&str>,
    until: Option<&str>,
    out: &Path,
) -> Result<ExitCode, CliError> {
    let map = super::load_map(config)?;
    let lo = since.map(parse_time).transpose()?.unwrap_or(i64::MIN);
    let hi = until.map(parse_time).transpose()?.unwrap_or(i64::MAX);
    let path = map.buffer.effective_path();
    let (mut store, moved) = Store::open(&path, map.buffer.durability(), map.buffer.bounds())
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(m) = moved {
        eprintln!(
            "the buffer database was damaged and moved to {}: {}",
            m.display(),
            store.identity().note.as_deref().unwrap_or("")
        );
    }
    let total = store
        .figures()
        .map_err(|e| CliError::Usage(e.to_string()))?
        .readings;
    let id = Identity {
        site: map.agent.site.clone(),
        agent: map.agent.id.clone(),
        config_hash: map.hash.clone(),
    };
    let tmp = out.with_extension("partial");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    file.write_all(EXPORT_MAGIC)?;
    let mut birth = crate::config::birth(&map);
    birth.buffer = Some(store.identity().clone());
    let birth = birth.encode();
    file.write_all(&(birth.len() as u32).to_be_bytes())?;
    file.write_all(&birth)?;
    let (mut batches, mut readings, mut skipped) = (0u64, 0u64, 0u64);
    // Batches leased before (sent but unacknowledged) go first, with their ids.
    let mut pending: Vec<crate::buffer::Leased> =
        store.leased().map_err(|e| CliError::Usage(e.to_string()))?;
    loop {
        let next = match pending.pop() {
            Some(l) => Some(l),
            None => store
                .lease(&LeaseRequest {
                    max_readings: 50_000,
                    order: LeaseOrder::OldestFirst,
                    range: lo..hi,
                    with_gaps: true,
                })
                .map_err(|e| CliError::Usage(e.to_string()))?,
        };
        let Some(l) = next else { break };
        let (b, lost) =
            build_checked(&mut store, &id, l).map_err(|e| CliError::Usage(e.to_string()))?;
        if lost > 0 {
            eprintln!(
                "\nbatch {}: an unreadable record of {lost} readings skipped (exported as a buffer-damaged gap)",
                b.batch_id
            );
            skipped += lost;
        }
        file.write_all(&(b.payload.len() as u32).to_be_bytes())?;
        file.write_all(&b.payload)?;
        batches += 1;
        readings += b.readings;
        eprint!("\rexported {batches} batches, {readings} of {total} readings");
    }
    file.flush()?;
    drop(file);
    std::fs::rename(&tmp, out)?;
    let _ = store.close();
    eprintln!();
    println!(
        "{}: {batches} batches, {readings} readings (import with: cloud-ingest import {})",
        out.display(),
        out.display()
    );
    if skipped > 0 {
        eprintln!("{skipped} readings in unreadable records were skipped and exported as buffer-damaged gaps (exit status {EXPORT_SKIPPED})");
        return Ok(ExitCode::from(EXPORT_SKIPPED));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::per_device;

    #[test]
    fn per_device_figures_are_read_from_the_metrics_text() {
        let body = "# HELP flowsquare_device_time_substituted_total readings …\n\
            # TYPE flowsquare_device_time_substituted_total counter\n\
            flowsquare_device_time_substituted_total{device=\"truck-gps\"} 42\n\
            flowsquare_device_time_substituted_total{device=\"dcs\"} 3\n\
            flowsquare_device_time_substituted_totally{device=\"x\"} 9\n\
            flowsquare_device_rtt_ms{device=\"dcs\"} 1.5\n";
        assert_eq!(
            per_device(body, "flowsquare_device_time_substituted_total"),
            vec![("truck-gps".to_owned(), 42.0), ("dcs".to_owned(), 3.0)]
        );
    }
}
