//! `cloud-ingest reconcile --date D [--to D2]`: reconcile days on demand (progress on stderr, a
//! summary on stdout); exit status 0 = no exception, 1 = exceptions found (alerts raised).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::CliError;
use crate::config::IngestConfig;
use crate::reconcile::model::{day_name, parse_day, Verdict};
use crate::reconcile::Reconciler;
use crate::store::ledger::{NewAudit, RunPick};
use crate::store::Store;
use flowsquare_service::clock::now_ms;

/// The CLI's actor in the audit log: `cli:<user>` (the login name from `USER`/`LOGNAME`).
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// Append a CLI write to the audit log (role `cli`, data clock).
pub async fn audit(
    store: &dyn Store,
    action: &str,
    target: String,
    before: serde_json::Value,
    after: serde_json::Value,
) -> Result<(), CliError> {
    store
        .ledger()
        .audit(&NewAudit {
            actor: cli_actor(),
            role: "cli".into(),
            at_ms: now_ms(),
            action: action.into(),
            target,
            before,
            after,
        })
        .await?;
    Ok(())
}

/// The site model of the configuration (tables relative to the config file), or None when no
/// tanks or meters are configured.
pub fn reconciler(
    cfg: &IngestConfig,
    config_path: Option<&Path>,
) -> Result<Option<Arc<Reconciler>>, CliError> {
    let r = &cfg.reconcile;
    if r.tanks.is_empty() && r.meters.is_empty() {
        r.validate()
            .map_err(|e| CliError::Config(format!("[reconcile]: {e}")))?;
        return Ok(None);
    }
    let base = config_path
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("."));
    Reconciler::load(r.clone(), base)
        .map(|x| Some(Arc::new(x)))
        .map_err(|e| CliError::Config(e.to_string()))
}

/// Run the command.
pub async fn run(
    cfg: &IngestConfig,
    config_path: Option<&Path>,
    store: &dyn Store,
    date: &str,
    to: Option<&str>,
) -> Result<ExitCode, CliError> {
    let Some(r) = reconciler(cfg, config_path)? else {
        return Err(CliError::Config("[reconcile] has no tanks or meters: nothing to reconcile (see config/cloud-ingest.example.toml)".into()));
    };
    let from = parse_day(date).map_err(|e| CliError::Config(format!("--date: {e}")))?;
    let to = match to {
        Some(t) => parse_day(t).map_err(|e| CliError::Config(format!("--to: {e}")))?,
        None => from,
    };
    if to < from {
        return Err(CliError::Config(format!(
            "--to {} is before --date {}",
            day_name(to),
            day_name(from)
        )));
    }
    let total = to - from + 1;
    let started = std::time::Instant::now();
    let mut exceptions = 0;
    let reports = r
        .run_range(store, from, to, now_ms(), "cli", |rep| {
            let done = crate::reconcile::model::parse_day(&rep.run.date).map_or(0, |d| d - from + 1);
            eprintln!(
                "[{done}/{total}] {}: {} records, {} exceptions, {} alerts opened, {} closed ({:.1} s)",
                rep.run.date,
                rep.run.records,
                rep.run.exceptions,
                rep.run.alerts_opened,
                rep.run.alerts_closed,
                started.elapsed().as_secs_f64()
            );
        })
        .await
        .map_err(|e| match e {
            crate::reconcile::ReconcileError::Store(e) => CliError::Store(e),
            other => CliError::Config(other.to_string()),
        })?;
    for rep in &reports {
        let before = match rep.run.supersedes {
            Some(id) => store
                .ledger()
                .run_of(&rep.run.date, RunPick::Id(id))
                .await?
                .map_or(serde_json::Value::Null, |r| {
                    serde_json::to_value(r).unwrap_or_default()
                }),
            None => serde_json::Value::Null,
        };
        audit(
            store,
            "cli.reconcile",
            format!("reconciliation/{}", rep.run.date),
            before,
            serde_json::to_value(&rep.run).unwrap_or_default(),
        )
        .await?;
        exceptions += rep.run.exceptions;
        println!(
            "{} run {}: {} records, {} exceptions",
            rep.run.date, rep.run.id, rep.run.records, rep.run.exceptions
        );
        for a in &rep.result.alerts {
            println!("  {} {} {}: {}", a.kind, a.site, a.place, a.message);
        }
        for v in rep.result.variances.iter().filter(|v| {
            v.kind == crate::reconcile::model::RecordKind::Chain && v.verdict != Verdict::NoData
        }) {
            println!(
                "  chain {} {:<9} {:>14.0} L vs {:>14.0} L  {:+.3} %  (±{} %) {}",
                v.product,
                v.stage,
                v.measured_l.unwrap_or(0.0),
                v.reference_l.unwrap_or(0.0),
                v.variance_pct.unwrap_or(0.0),
                v.tolerance_pct,
                v.verdict.as_str()
            );
        }
    }
    println!(
        "{} day(s) reconciled in {:.2} s: {} exception(s)",
        reports.len(),
        started.elapsed().as_secs_f64(),
        exceptions
    );
    Ok(if exceptions > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
