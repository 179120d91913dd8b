//! The processes of the bench: `cloud-ingest serve` as a child process of its own (so its CPU
//! is its own `/proc/<pid>/stat`), on a generated config, and the private Mosquitto's pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowsquare_tests::chain;

use super::Res;

/// `cloud-ingest serve`, killed on drop.
pub struct IngestProc {
    child: Child,
    log: PathBuf,
    /// The HTTP API's address (`127.0.0.1:port`).
    pub api: String,
}

impl IngestProc {
    /// Write `ingest.toml` in `dir` (broker on `broker_port`, topics under `root`, database
    /// `db_url`, API on a free port, no reconciliation, no ack keys) and start the release
    /// binary; ready when `/readyz` answers 200.
    pub async fn start(dir: &Path, broker_port: u16, root: &str, db_url: &str) -> Res<IngestProc> {
        let config = dir.join("ingest.toml");
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nbroker = \"mqtt://127.0.0.1:{broker_port}\"\ntopic_root = \"{root}\"\ngroup = \"\"\n\n\
                 [database]\nurl = \"{db_url}\"\ntimescale = \"off\"\n\n\
                 [ingest]\nmax_batches_per_commit = 64\n\n\
                 [api]\nlisten = \"127.0.0.1:0\"\n\n\
                 [reconcile]\nenabled = false\n"
            ),
        )?;
        let log = dir.join("ingest.log");
        let child = Command::new(env!("CARGO_BIN_EXE_cloud-ingest"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(dir)
            .env_remove("FLOWSQUARE_CLOCK")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut p = IngestProc {
            child,
            log,
            api: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(api) = p.announced_api() {
                p.api = api;
                let api = p.api.clone();
                let ready = tokio::task::spawn_blocking(move || chain::http_get(&api, "/readyz"))
                    .await?
                    .is_some_and(|(code, _)| code == 200);
                if ready {
                    return Ok(p);
                }
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("cloud-ingest exited ({status}):\n{}", p.log_text()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("cloud-ingest not ready in 120 s:\n{}", p.log_text()).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn announced_api(&self) -> Option<String> {
        let log = self.log_text();
        let i = log.find("HTTP API at http://")? + "HTTP API at http://".len();
        Some(log[i..].split('/').next()?.trim().to_owned())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> Res<String> {
        let api = self.api.clone();
        let (code, body) = tokio::task::spawn_blocking(move || chain::http_get(&api, "/metrics"))
            .await?
            .ok_or("GET /metrics failed")?;
        if code != 200 {
            return Err(format!("GET /metrics: {code}").into());
        }
        Ok(body)
    }

    /// SIGTERM, and its exit code within 30 s.
    pub fn stop(mut self) -> Option<i32> {
        chain::signal(self.child.id(), "TERM");
        chain::wait_exit(&mut self.child, Duration::from_secs(30))
    }

    /// WARN/ERROR lines of its log (at most `n`).
    pub fn problems(&self, n: usize) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(n)
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for IngestProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of the `mosquitto` whose command line names `dir` (the private broker's config).
pub fn mosquitto_pid(dir: &Path) -> Option<u32> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.starts_with("mosquitto") && cmd.contains(&dir)).then_some(pid)
    })
}
