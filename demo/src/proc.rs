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
                    "{} closed its output (exited?) before printing \"{prefix}…\"; see {}",
                    self.name,
                    self.log.display()
                ),
                Err(_) => anyhow::bail!(
                    "{} printed no \"{prefix}…\" line within {timeout:?}; see {}",
                    self.name,
                    self.log.display()
                ),
            }
        }
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
                eprintln!("{} did not stop within {grace:?}: killing it", self.name);
                let _ = self.child.kill().await;
            }
        }
    }
}

/// GET `url` (plain HTTP on 127.0.0.1) and tell whether it answered 200.
pub async fn http_get_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(host)).await
    else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    match tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut status)).await {
        Ok(Ok(_)) => status.split_whitespace().nth(1) == Some("200"),
        _ => false,
    }
}
