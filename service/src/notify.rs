//! The `sd_notify(3)` protocol: newline-separated `KEY=VALUE` assignments in one datagram sent
//! to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for a Linux abstract socket).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends state changes to the service manager. Without `$NOTIFY_SOCKET` (not started by
/// systemd as `Type=notify`) every call does nothing.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

/// Build one notification datagram from assignments; newlines inside a value (e.g. a status
/// text) are replaced by spaces so they cannot start another assignment.
pub fn message(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(k);
        out.push('=');
        out.extend(v.chars().map(|c| if c == '\n' { ' ' } else { c }));
        out.push('\n');
    }
    out
}

/// The watchdog ping period for `WATCHDOG_USEC` (half the timeout, as sd_watchdog_enabled(3)
/// recommends), if the watchdog is meant for process `pid`.
pub(crate) fn watchdog_period(
    usec: Option<&str>,
    wpid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(p) = wpid {
        if p.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

fn address(spec: &str) -> std::io::Result<SocketAddr> {
    if let Some(name) = spec.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(spec)
    }
}

impl Notifier {
    /// From the environment systemd gives a `Type=notify` service.
    pub fn from_env() -> Notifier {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|spec| {
            let addr = address(&spec).ok()?;
            let sock = UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        let watchdog = watchdog_period(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Notifier { target, watchdog }
    }

    /// A notifier that never sends (tests, commands other than the service itself).
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// Is a service manager listening?
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to ping the watchdog (`None`: no watchdog configured).
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog)
    }

    /// Send assignments; failures are ignored (the service runs on without a manager).
    pub fn send(&self, fields: &[(&str, &str)]) {
        if let Some((sock, addr)) = &self.target {
            let _ = sock.send_to_addr(message(fields).as_bytes(), addr);
        }
    }

    /// Startup finished.
    pub fn ready(&self, status: &str) {
        self.send(&[("READY", "1"), ("STATUS", status)]);
    }

    /// A reload started (systemd shows the unit as reloading until the next `ready`).
    pub fn reloading(&self, status: &str) {
        self.send(&[("RELOADING", "1"), ("STATUS", status)]);
    }

    /// Shutdown started.
    pub fn stopping(&self, status: &str) {
        self.send(&[("STOPPING", "1"), ("STATUS", status)]);
    }

    /// Free-text status (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(&[("STATUS", status)]);
    }

    /// Keep-alive: the service is making progress.
    pub fn watchdog(&self) {
        self.send(&[("WATCHDOG", "1")]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_newline_separated_assignments_without_embedded_newlines() {
        assert_eq!(
            message(&[("READY", "1"), ("STATUS", "polling\n3 devices")]),
            "READY=1\nSTATUS=polling 3 devices\n"
        );
    }

    #[test]
    fn watchdog_period_is_half_the_timeout_and_only_for_our_pid() {
        assert_eq!(
            watchdog_period(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_period(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_period(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        assert_eq!(watchdog_period(None, None, 7), None);
    }

    #[test]
    fn sends_to_a_path_socket_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("fs-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                address(path.to_str().unwrap()).unwrap(),
            )),
            watchdog: None,
        };
        n.ready("up");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up\n");
        let _ = std::fs::remove_dir_all(&dir);

        let name = format!("@fs-notify-test-{}", std::process::id());
        let addr = address(&name).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), address(&name).unwrap())),
            watchdog: Some(Duration::from_secs(1)),
        };
        n.watchdog();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
        assert_eq!(n.watchdog_period(), Some(Duration::from_secs(1)));
    }
}
