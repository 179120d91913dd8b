//! `cloud-ingest import FILE`: load an `edge-agent buffer export` file. The same ledger as the
//! MQTT path makes it idempotent: importing twice (or importing data the agent later sends
//! online) stores each batch once.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

use flowsquare_wire as wire;

use super::CliError;
use crate::store::{CommitOutcome, Store};

/// Magic line of export files (written by `edge-agent buffer export`).
pub const EXPORT_MAGIC: &[u8] = b"FLOWSQUARE-EXPORT 1\n";

fn frames(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let body = bytes
        .strip_prefix(EXPORT_MAGIC)
        .ok_or("not an edge-agent export file (bad magic line)")?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let len = body.get(pos..pos + 4).ok_or(format!(
            "truncated frame header at byte {}",
            pos + EXPORT_MAGIC.len()
        ))?;
        let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let frame = body.get(pos + 4..pos + 4 + n).ok_or(format!(
            "truncated frame at byte {} (file cut short?)",
            pos + EXPORT_MAGIC.len()
        ))?;
        out.push(frame);
        pos += 4 + n;
    }
    Ok(out)
}

pub async fn run(path: &Path, store: &dyn Store) -> Result<ExitCode, CliError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    let frames =
        frames(&bytes).map_err(|e| CliError::Config(format!("{}: {e}", path.display())))?;
    let (birth, batches) = frames
        .split_first()
        .ok_or_else(|| CliError::Config(format!("{}: empty export", path.display())))?;
    let birth = wire::Birth::decode(birth)
        .map_err(|e| CliError::Config(format!("{}: birth: {e}", path.display())))?;
    store
        .birth(&birth, flowsquare_service::clock::now_ms())
        .await?;
    let tty = std::io::stderr().is_terminal();
    let total = batches.len();
    let (mut stored, mut dup, mut readings, mut bad) = (0u64, 0u64, 0u64, 0u64);
    for (i, f) in batches.iter().enumerate() {
        match wire::decode(f) {
            Ok(b) if b.site == birth.site && b.agent == birth.agent => {
                match store.commit(std::slice::from_ref(&b)).await?.first() {
                    Some(CommitOutcome::Stored { readings: n, .. }) => {
                        stored += 1;
                        readings += n;
                    }
                    Some(CommitOutcome::Duplicate) => dup += 1,
                    _ => bad += 1,
                }
            }
            Ok(b) => {
                tracing::error!(
                    batch_id = b.batch_id,
                    "batch names {}/{}, not the export's agent {}/{}; skipped",
                    b.site,
                    b.agent,
                    birth.site,
                    birth.agent
                );
                bad += 1;
            }
            Err(e) => {
                tracing::error!(frame = i, error = %e, "undecodable batch skipped");
                bad += 1;
            }
        }
        if tty || i + 1 == total || i % 100 == 0 {
            let pct = (i + 1) * 100 / total.max(1);
            let bar: String = (0..30)
                .map(|k| if k * 100 / 30 < pct { '#' } else { '.' })
                .collect();
            eprint!(
                "\r[{bar}] {}/{} batches, {readings} readings stored, {dup} already present",
                i + 1,
                total
            );
        }
    }
    eprintln!();
    println!(
        "{}: {stored} batches stored ({readings} readings), {dup} already present, {bad} not usable; site {} agent {}",
        path.display(),
        birth.site,
        birth.agent
    );
    // The imported minutes' rollups now, so that series over them are served from rollups even
    // without a running `serve` (whose roller would do the same). Stops when a pass rolls
    // nothing (marks held by a commit in progress are left for the roller).
    loop {
        let r = store
            .roll_due(flowsquare_service::clock::now_ms(), 0)
            .await?;
        if !r.more || r.minutes + r.hours == 0 {
            break;
        }
    }
    super::reconcile::audit(
        store,
        "cli.import",
        format!("import/{}/{}", birth.site, birth.agent),
        serde_json::Value::Null,
        serde_json::json!({
            "file": path.display().to_string(), "batches_stored": stored, "readings_stored": readings,
            "already_present": dup, "not_usable": bad,
        }),
    )
    .await?;
    Ok(if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
