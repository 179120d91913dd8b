//! A child process of the demo: stderr to `logs/NAME.log`, stdout lines copied there too and
//! kept for [`Child::wait_line`], stopped with SIGTERM then SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;

/// A running child.
pub struct Child {
    /// Its name in messages and the log file name.
    pub name: String,
    /// Its log file.
    pub log: PathBuf,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    exited: Option<ExitStatus>,
}

impl Child {
    /// Start `bin args…` in `cwd` with `env` added.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        cwd: &Path,
        logs: &Path,
        env: &[(&str, &str)],
    ) -> Result<Child> {
        let log = logs.join(format!("{name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file.try_clone()?))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            let mut file = tokio::fs::File::from_std(file);
            tokio::spawn(async move {
                let mut reader = BufReader::new(out).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = file.write_all(format!("{line}\n").as_bytes()).await;
                    let _ = tx.send(line);
                }
            });
        }
        Ok(Child {
            name: name.to_string(),
            log,
            child,
            lines,
            exited: None,
        })
    }

    /// The first stdout line starting with `prefix`, within `timeout`.
    pub async fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                Ok(Some(_)) => continue,
                Ok(None) => anyhow::bail!(
                    "{} closed its output (exited?) before printing \"{prefix}…\"; see {}{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                ),
                Err(_) => anyhow::bail!(
                    "{} printed no \"{prefix}…\" line within {timeout:?}; see {}",
                    self.name,
                    self.log.display()
                ),
            }
        }
    }

    /// The last lines of its log, indented, for an error message ("" if none).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(8)..];
        if tail.is_empty() {
            return String::new();
        }
        format!(":\n    {}", tail.join("\n    "))
    }

    /// Its exit status if it has exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        if self.try_exited().is_some() {
            return;
        }
        if let Some(pid) = self.child.id() {
            // kill(1) rather than libc::kill: this crate has no unsafe code.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => self.exited = Some(status),
            _ => {
                {
                    use std::io::Write as _;
                    let _ = writeln!(
                        std::io::stderr(),
                        "{} did not stop within {grace:?}: killing it",
                        self.name
                    );
                }
                let _ = self.child.kill().await;
            }
        }
    }
}

/// GET `url` (plain HTTP on 127.0.0.1) and tell whether it answered 200.
pub async fn http_get_ok(url: &str) -> bool {
    http_get(url, None)
        .await
        .is_some_and(|(status, _)| status == 200)
}

/// GET `url` (plain HTTP/1.0 on 127.0.0.1, optionally with a bearer token): status and body.
pub async fn http_get(url: &str, token: Option<&str>) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt as _;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()?
}
