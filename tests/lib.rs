//! Test support for the FlowSquare workspace: real parts, really started.
//!
//! # Layout
//! - `Proc`: a child process whose stdout announces `listening ...`; killed on drop;
//! - `PtyPair`: two linked pseudo-terminals (socat), for serial protocols;
//! - `wait_until`: wait on a condition with a deadline (no fixed sleeps in tests);
//! - `external`: find third-party servers (the pymodbus virtualenv) or decide to skip;
//! - `mqtt`: a private Mosquitto per test and a consumer that acknowledges like cloud-ingest;
//! - `nats`: a private nats-server with JetStream and MQTT per test (the second broker);
//! - `chain`: the chain's processes (edge-agent with `--output jsonl`, cloud-ingest) and a
//!   PostgreSQL database of the test's own, for the end-to-end tests;
//! - `pki`: test certificates (CAs, server and client certificates) made by the openssl CLI;
//! - `browser`: a WebDriver client for headless Chromium (ChromeDriver) and the console check;
//! - `workspace_bin`: the workspace's own binaries (edge-agent, cloud-ingest, flowsquare-sim,
//!   flowsquare-demo) for tests outside the crates that own them (built once per test process,
//!   current sources).

pub mod browser;
pub mod chain;
pub mod mqtt;
pub mod nats;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a binary of this workspace (`edge-agent`, `cloud-ingest`, `flowsquare-sim`), for tests
/// in crates that do not own it (`env!("CARGO_BIN_EXE_…")` exists only in the owning crate).
///
/// `$FLOWSQUARE_BIN_DIR` names a directory of prebuilt binaries. Otherwise they are taken from
/// the test binary's own target directory (`target/<profile>/`) when all three are newer than
/// every source file of the crates they are built from (as after `cargo test --workspace`,
/// which builds them for the owning crates' tests); if not, once per test process, `cargo build
/// --bins -p edge-agent -p cloud-ingest -p site-sim` runs with the cargo that runs the tests
/// (`$CARGO`), in the test binary's profile. A failed build panics with cargo's message (this
/// is test support).
pub fn workspace_bin(name: &str) -> PathBuf {
    use std::sync::OnceLock;
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("FLOWSQUARE_BIN_DIR") {
            return Ok(PathBuf::from(d));
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/<test>-<hash>: the binaries are uplifted to target/<profile>/.
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or("test binary has no target directory")?;
        let sources = newest_source(&workspace_root());
        let fresh = ["edge-agent", "cloud-ingest", "flowsquare-sim"]
            .iter()
            .all(|b| {
                std::fs::metadata(dir.join(b))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| sources.is_some_and(|s| t > s))
            });
        if fresh {
            return Ok(dir);
        }
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--bins",
            "-p",
            "edge-agent",
            "-p",
            "cloud-ingest",
            "-p",
            "site-sim",
        ]);
        if release {
            cmd.arg("--release");
        }
        eprintln!("building the workspace binaries: {cmd:?}");
        let st = cmd
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("{cmd:?}: {e}"))?;
        if !st.success() {
            return Err(format!("{cmd:?} failed: {st}"));
        }
        Ok(dir)
    });
    match dir {
        Ok(d) => {
            let p = d.join(name);
            assert!(p.exists(), "{} does not exist", p.display());
            p
        }
        Err(e) => panic!("workspace binaries: {e}"),
    }
}

/// Newest modification time of the sources the binaries are built from (the product crates'
/// `src/` trees and `Cargo.toml`s, the workspace's `Cargo.toml` and `Cargo.lock`).
fn newest_source(root: &Path) -> Option<std::time::SystemTime> {
    fn walk(p: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    walk(&path, newest);
                }
            } else if path.extension().is_some_and(|x| x == "rs" || x == "toml") {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    *newest = Some(newest.map_or(t, |n| n.max(t)));
                }
            }
        }
    }
    let mut newest = std::fs::metadata(root.join("Cargo.lock"))
        .and_then(|m| m.modified())
        .ok();
    for c in [
        "edge-agent",
        "cloud-ingest",
        "site-sim",
        "measure",
        "wire",
        "service",
    ] {
        walk(&root.join(c).join("src"), &mut newest);
        for f in [root.join(c).join("Cargo.toml"), root.join("Cargo.toml")] {
            if let Ok(t) = std::fs::metadata(f).and_then(|m| m.modified()) {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
        }
    }
    newest
}

/// Poll `cond` every few milliseconds until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process that prints `listening <kind> <address>` lines on stdout once it serves.
pub struct Proc {
    child: Child,
    /// Its stdin (closing it tells cooperative servers to stop).
    pub stdin: Option<ChildStdin>,
    /// The addresses it announced, in order (`127.0.0.1:PORT`, or a path).
    pub listening: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawn `cmd` and wait (up to `timeout`) for `expect` `listening` lines.
    pub fn spawn(mut cmd: Command, expect: usize, timeout: Duration) -> Result<Proc, String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc {
            stdin: child.stdin.take(),
            child,
            listening: Vec::new(),
            lines: rx,
        };
        let deadline = Instant::now() + timeout;
        while p.listening.len() < expect {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix("listening ") {
                        let addr = rest.split_whitespace().nth(1).unwrap_or(rest).to_owned();
                        p.listening.push(addr);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "{cmd:?} did not announce {expect} listener(s) within {timeout:?}"
                    ))
                }
            }
        }
        Ok(p)
    }

    /// Further stdout lines, waiting up to `timeout` for the next one.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill it now and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two linked pseudo-terminals made by socat: what is written to `a` is read from `b` and back.
pub struct PtyPair {
    _dir: tempfile::TempDir,
    proc: Child,
    /// One end (e.g. for the device simulator).
    pub a: PathBuf,
    /// The other end (e.g. for the agent).
    pub b: PathBuf,
}

impl PtyPair {
    /// Start socat and wait for both links to appear.
    pub fn new() -> Result<PtyPair, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let proc = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("socat (apt-get install socat): {e}"))?;
        let mut p = PtyPair {
            _dir: dir,
            proc,
            a,
            b,
        };
        if !wait_until(Duration::from_secs(10), || p.a.exists() && p.b.exists()) {
            let _ = p.proc.kill();
            return Err("socat did not create the pty pair".into());
        }
        Ok(p)
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// Third-party servers used by interoperability tests.
pub mod external {
    use super::*;

    /// The Python interpreter of the virtualenv with pymodbus (and later asyncua): `$FLOWSQUARE_PYTHON`
    /// or `<workspace>/.venv/bin/python`.
    pub fn python() -> Option<PathBuf> {
        let p = std::env::var_os("FLOWSQUARE_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
        p.exists().then_some(p)
    }

    /// Called when an external part is missing: panics when `FLOWSQUARE_REQUIRE_ALL` is set (the
    /// test script sets it, so CI never silently skips); otherwise prints why the test is skipped.
    pub fn missing(what: &str) {
        let msg = format!("{what} is not available; run scripts/test, which installs it");
        if std::env::var_os("FLOWSQUARE_REQUIRE_ALL").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
}
