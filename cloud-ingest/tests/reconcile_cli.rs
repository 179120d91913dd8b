//! `cloud-ingest reconcile` end to end: the binary with the documented example configuration
//! (its one-tank site model, no data yet) on an embedded SQLite database in a temp directory.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cloud-ingest");

fn example() -> &'static str {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/cloud-ingest.example.toml"
    )
}

#[test]
fn reconcile_reports_progress_and_a_summary_and_missing_data_is_not_an_exception() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "--config",
            example(),
            "reconcile",
            "--date",
            "2026-03-01",
            "--to",
            "2026-03-02",
        ])
        .output()
        .expect("run");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // No gauge data for T1 yet: "no-data" records but no exception, so the exit status is 0 (1
    // would mean exceptions were found; the simulated-month tests cover those). No alert either:
    // the days end before the tank's agent first reported.
    assert!(
        stderr.contains("[1/2] 2026-03-01") && stderr.contains("[2/2] 2026-03-02"),
        "{stderr}"
    );
    assert!(stdout.contains("2 day(s) reconciled"), "{stdout}");
    assert!(!stdout.contains("no-data dar-terminal T1"), "{stdout}");
    assert!(stdout.contains("2026-03-01 run 1:"), "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(dir.path().join("flowsquare-ingest.db").exists());
    // Each day's run is in the audit log with the CLI's actor.
    let log = audit_log(&dir.path().join("flowsquare-ingest.db"));
    let runs: Vec<&str> = log
        .iter()
        .rev()
        .filter(|e| e.e.action == "cli.reconcile")
        .map(|e| e.e.target.as_str())
        .collect();
    assert_eq!(
        runs,
        ["reconciliation/2026-03-01", "reconciliation/2026-03-02"]
    );
    assert!(log
        .iter()
        .all(|e| e.e.actor.starts_with("cli:") && e.e.role == "cli"));
}

/// The audit log of a SQLite database, newest first.
fn audit_log(db: &std::path::Path) -> Vec<cloud_ingest::store::ledger::AuditRow> {
    use cloud_ingest::store::Store;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = cloud_ingest::store::sqlite::SqliteStore::open(db).expect("open");
        s.migrate().await.expect("migrate");
        s.ledger()
            .audit_log(&cloud_ingest::store::ledger::AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .expect("audit log")
    })
}

#[test]
fn reconcile_refuses_a_backwards_range_and_a_bad_date() {
    let dir = tempfile::tempdir().expect("tmp");
    for args in [
        ["--date", "2026-03-02", "--to", "2026-03-01"],
        ["--date", "2026-02-30", "--to", "2026-03-01"],
    ] {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["--config", example(), "reconcile"])
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--to") || err.contains("--date"), "{err}");
    }
}
