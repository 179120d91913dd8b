//! The main job as a newcomer runs it: `flowsquare-demo` (what `scripts/demo` runs after the
//! build) on a free port, every console page loaded in headless Chromium against it, then
//! Ctrl-C (SIGINT) and a clean, ordered stop.
//!
//! The demo runs faster than real time so that a simulated day closes, the ingest's scheduler
//! reconciles it (02:00 simulated) and the reconciliation pages have a day to show. What the
//! test waits for is printed; screenshots go to target/console-screenshots/demo/.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowsquare_tests::browser::{self, check_console, ConsoleCheck};
use flowsquare_tests::{workspace_bin, workspace_root};

/// Simulated seconds per real second: a day in 72 s.
const SPEED: f64 = 1200.0;

fn api_get(base: &str, path: &str) -> Option<serde_json::Value> {
    let a = browser::http(
        "GET",
        &format!("{base}{path}"),
        &[("Authorization", "Bearer demo-viewer")],
        None,
        Duration::from_secs(10),
    )
    .ok()?;
    (a.status == 200).then(|| a.json())
}

/// The demo process, stopped (SIGINT, so it stops its own children in order) if the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_demo_reaches_a_first_chart_and_every_console_page_loads_then_stops_cleanly() {
    if browser::find().is_none() {
        flowsquare_tests::external::missing("chromium (Debian packages chromium, chromium-driver)");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    // The demo starts the binaries next to its own: make sure they are built and current.
    for b in ["cloud-ingest", "edge-agent", "flowsquare-sim"] {
        workspace_bin(b);
    }
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_flowsquare-demo"))
            .args(["--port", "0", "--speed", &SPEED.to_string(), "--dir"])
            .arg(dir.path().join("demo"))
            .arg("--config-dir")
            .arg(workspace_root().join("config"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flowsquare-demo"),
    );
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.0.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("demo> {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |prefix: &str, timeout: Duration| -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.trim_start().starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("the demo printed no line starting {prefix:?} within {timeout:?}"),
            }
        }
    };
    let console = wait_line("Console:", Duration::from_secs(120));
    let base = console
        .split_whitespace()
        .nth(1)
        .expect("Console: URL")
        .trim_end_matches('/')
        .to_string();
    wait_line("first readings committed", Duration::from_secs(60));
    println!(
        "first data in the console {:.1} s after the command",
        started.elapsed().as_secs_f64()
    );

    // Simulated day 0 (today's UTC date: the demo starts its clock at today's midnight)
    // reconciled by the ingest's scheduler at 02:00 of simulated day 1.
    let day0 = time::OffsetDateTime::now_utc().date().to_string();
    println!("waiting for the scheduler to reconcile simulated day 0 ({day0}; about 80 s)…");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let runs = api_get(&base, "/api/v1/reconciliation/runs");
        let done = runs
            .as_ref()
            .and_then(|v| v.get("data").unwrap_or(v).as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|r| r.get("date").and_then(|d| d.as_str()) == Some(day0.as_str()));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "day {day0} not reconciled after 240 s: {runs:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "day 0 reconciled {:.1} s after the command",
        started.elapsed().as_secs_f64()
    );
    // No fault is injected: the first simulated day (and the empty day before the simulation)
    // must open no alert — no "no data" for days before the agents' first data, no alert from a
    // blank batch record read at agent start, no stale tag.
    let alerts = api_get(&base, "/api/v1/alerts?state=open");
    let open = alerts
        .as_ref()
        .and_then(|v| v.get("data").unwrap_or(v).as_array().cloned())
        .unwrap_or_default();
    assert!(
        alerts.is_some() && open.is_empty(),
        "open alerts in a demo without faults: {alerts:#?}"
    );

    let shots = workspace_root().join("target/console-screenshots/demo");
    let report = check_console(&ConsoleCheck {
        base_url: base.clone(),
        token: "demo-admin".into(),
        screenshot_dir: shots.clone(),
        expect_data: true,
    })
    .unwrap_or_else(|e| panic!("console against the running demo: {e}"));
    for p in &report.pages {
        println!("{p:?}");
    }
    println!("screenshots in {}", shots.display());

    // Ctrl-C: an ordered stop and exit status 0.
    let pid = child.0.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    wait_line("stopped.", Duration::from_secs(90));
    let status = child.0.wait().expect("wait for the demo");
    assert!(status.success(), "demo exit status {status}");
}
