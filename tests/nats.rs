//! A private NATS server with MQTT support per test (`nats-server`, Debian package
//! `nats-server`): its own ports, its own JetStream store (kept across restarts), never the
//! system's NATS on 4222.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::mqtt::{free_port, port_open};
use crate::wait_until;

/// The `nats-server` binary: `$FLOWSQUARE_NATS_SERVER`, `/usr/sbin/nats-server`, or on `PATH`.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOWSQUARE_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        return Some(sbin);
    }
    let ok = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| PathBuf::from("nats-server"))
}

/// A nats-server with JetStream and the MQTT listener, killed on drop.
pub struct Nats {
    /// Its MQTT port on 127.0.0.1.
    pub mqtt_port: u16,
    /// Its NATS client port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nats {
    /// Start one; `None` (after `external::missing`) when nats-server is not installed.
    pub fn start() -> Option<Result<Nats, String>> {
        let Some(bin) = binary() else {
            crate::external::missing("nats-server (apt-get install nats-server)");
            return None;
        };
        Some(Self::start_with(bin))
    }

    fn start_with(bin: PathBuf) -> Result<Nats, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (port, mqtt_port) = (free_port(), free_port());
        let store = dir.path().join("jetstream");
        std::fs::write(
            dir.path().join("nats.conf"),
            format!(
                "server_name: fs_test_{mqtt_port}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: \"{}\" }}\nmqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n",
                store.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut n = Nats {
            mqtt_port,
            port,
            bin,
            dir,
            child: None,
        };
        n.restart()?;
        Ok(n)
    }

    /// Kill it (-9: an outage); the JetStream store stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_until(Duration::from_secs(10), || !port_open(self.mqtt_port));
    }

    /// (Re)start it on the same ports and store.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let log =
            std::fs::File::create(self.dir.path().join("nats.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.bin.display()))?;
        self.child = Some(child);
        if !wait_until(Duration::from_secs(20), || port_open(self.mqtt_port)) {
            return Err(format!(
                "nats-server did not listen on MQTT port {}; log:\n{}",
                self.mqtt_port,
                self.log()
            ));
        }
        Ok(())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// `mqtt://127.0.0.1:MQTT_PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
