//! `[uplink]`: the MQTT connection to the cloud. Without an `[uplink]` table the agent buffers
//! readings locally only (bounded by `[buffer]`).

use flowsquare_service::secret::{self, Secret, SecretSource, SecretUrl};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use crate::settings::duration;

/// `[uplink]` keys.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Broker URL: `mqtt://host:port` or `mqtts://host:port` (TLS). Default port 1883 / 8883.
    /// `mqtt://user:password@host` works, with a `check` warning (use `credentials`); the
    /// password is redacted wherever the URL is shown.
    pub broker: SecretUrl,
    /// MQTT protocol version: `"3.1.1"` (default) or `"5"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Topic root; topics are `{topic_root}/v1/{site}/{agent}/{data|ack|birth|status|heartbeat}`.
    #[serde(default = "default_root")]
    pub topic_root: String,
    /// MQTT client id. Default `fs-{site}-{agent}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Where the username and password come from: `file:/path` (first line username, second
    /// line password; keep it mode 0600) or `systemd:NAME` (the credential NAME passed with
    /// `LoadCredential=`, same two lines). Default: anonymous (or the broker URL's user info).
    #[serde(default)]
    pub credentials: Option<String>,
    /// TLS: CA certificate(s) to trust, PEM. Default with `mqtts://`: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS client certificate (PEM), for brokers that authenticate gateways by certificate.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// TLS client key (PEM, PKCS#8 or RSA).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive", deserialize_with = "duration::de")]
    pub keep_alive: Duration,
    /// Batches sent and not yet acknowledged by the cloud, at most.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Most readings per batch.
    #[serde(default = "default_batch_readings")]
    pub batch_readings: u32,
    /// A batch the cloud has not acknowledged after this long is sent again (same batch id).
    #[serde(default = "default_ack_timeout", deserialize_with = "duration::de")]
    pub ack_timeout: Duration,
    /// Readings younger than this are "live" and go out first, newest first.
    #[serde(default = "default_live_window", deserialize_with = "duration::de")]
    pub live_window: Duration,
    /// Older readings (backlog after an outage) drain oldest first at most this many readings
    /// per second, so a long outage never starves live values. 0 = no limit.
    #[serde(default = "default_backlog_rate")]
    pub backlog_rate: u32,
    /// How often a heartbeat (buffer and device figures) is published.
    #[serde(default = "default_heartbeat", deserialize_with = "duration::de")]
    pub heartbeat: Duration,
    /// On shutdown, how long to wait for acknowledgements of batches already sent.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration::de")]
    pub drain_timeout: Duration,
    /// Longest wait between broker connection attempts (backoff from 0.5 s doubling up to
    /// this, jittered): a broker that comes back is used within about this long.
    #[serde(default = "default_reconnect_max", deserialize_with = "duration::de")]
    pub reconnect_max: Duration,
    /// File holding the key the cloud signs acks with (its `[mqtt] ack_keys` key for this
    /// site; the key alone, one trailing newline ignored, at least 16 characters). When set (or
    /// `ack_key_credential`), an ack without a valid signature is ignored and counted: nothing
    /// is deleted on it.
    #[serde(default)]
    pub ack_key_file: Option<PathBuf>,
    /// The same key as a systemd credential (`$CREDENTIALS_DIRECTORY/<name>`, passed with
    /// `LoadCredential=`).
    #[serde(default)]
    pub ack_key_credential: Option<String>,
}

fn default_protocol() -> String {
    "3.1.1".into()
}
fn default_root() -> String {
    "fs".into()
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_inflight() -> u16 {
    8
}
fn default_batch_readings() -> u32 {
    5000
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_live_window() -> Duration {
    Duration::from_secs(10)
}
fn default_backlog_rate() -> u32 {
    200_000
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(60)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
/// Default cap of the reconnect backoff.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(10);
fn default_reconnect_max() -> Duration {
    DEFAULT_RECONNECT_MAX
}

/// Shortest ack key accepted (characters; `openssl rand -hex 32` gives 64).
pub const MIN_ACK_KEY_LEN: usize = 16;

/// A parsed broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS?
    pub tls: bool,
}

impl UplinkConfig {
    /// The broker URL after the scheme, split at its user info: `(user info, host:port)`.
    fn broker_parts(&self) -> Result<(bool, Option<&str>, &str), String> {
        let url = self.broker.expose();
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!(
                "broker {:?} must start with mqtt:// or mqtts://",
                self.broker
            ));
        };
        let rest = rest.trim_end_matches('/');
        Ok(match rest.rsplit_once('@') {
            Some((user_info, host_port)) => (tls, Some(user_info), host_port),
            None => (tls, None, rest),
        })
    }

    /// Parse `broker`.
    pub fn broker_addr(&self) -> Result<BrokerAddr, String> {
        let (tls, _, rest) = self.broker_parts()?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("broker port {p:?} is not a number"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(format!("broker {:?} has no host", self.broker));
        }
        Ok(BrokerAddr {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
            tls,
        })
    }

    /// Username and password written in the broker URL (`mqtt://user:password@host`),
    /// percent-decoded.
    pub fn url_credentials(&self) -> Option<(String, Secret)> {
        let (_, user_info, _) = self.broker_parts().ok()?;
        let (user, pass) = user_info?.split_once(':').unwrap_or((user_info?, ""));
        Some((
            secret::percent_decode(user),
            Secret::new(secret::percent_decode(pass)),
        ))
    }

    /// Problems as `(key, message)`.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !matches!(self.protocol.as_str(), "3.1.1" | "5") {
            p.push((
                "protocol",
                format!("protocol {:?}: use \"3.1.1\" or \"5\"", self.protocol),
            ));
        }
        if let Err(e) = self.broker_addr() {
            p.push(("broker", e));
        }
        if let Some(c) = &self.credentials {
            if let Err(e) = SecretSource::from_spec(c) {
                p.push(("credentials", format!("credentials: {e}")));
            } else if self.url_credentials().is_some() {
                p.push((
                    "credentials",
                    "the broker URL has a user name too: give the user and password in one place (credentials)".into(),
                ));
            }
        }
        if let Err(e) = self.ack_key_source() {
            p.push(("ack_key_file", e));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            p.push(("cert_file", "cert_file and key_file go together".into()));
        }
        if self.inflight == 0 || self.inflight > 100 {
            p.push(("inflight", "inflight must be between 1 and 100".into()));
        }
        if self.reconnect_max < Duration::from_millis(500)
            || self.reconnect_max > Duration::from_secs(600)
        {
            p.push((
                "reconnect_max",
                "reconnect_max must be between 500ms and 10min".into(),
            ));
        }
        if self.batch_readings == 0 {
            p.push(("batch_readings", "batch_readings must be at least 1".into()));
        }
        if self.topic_root.is_empty() || self.topic_root.contains(['+', '#']) {
            p.push((
                "topic_root",
                "topic_root must be non-empty and contain no MQTT wildcards".into(),
            ));
        }
        p
    }

    /// Where the ack key comes from (`None`: acks are not authenticated).
    pub fn ack_key_source(&self) -> Result<Option<SecretSource>, String> {
        SecretSource::from_keys(
            "ack_key",
            None,
            self.ack_key_file.clone(),
            self.ack_key_credential.clone(),
        )
        .map_err(|_| "give either ack_key_file or ack_key_credential, not both".to_owned())
    }

    /// The key acks must be signed with, read from its file or credential; `None`: acks are
    /// taken unauthenticated.
    pub fn read_ack_key(&self) -> Result<Option<Secret>, String> {
        let Some(src) = self.ack_key_source()? else {
            return Ok(None);
        };
        let key = src.read().map_err(|e| format!("ack key: {e}"))?;
        if key.expose().len() < MIN_ACK_KEY_LEN {
            return Err(format!(
                "ack key: shorter than {MIN_ACK_KEY_LEN} characters (use the cloud's [mqtt] ack_keys key for this site)"
            ));
        }
        Ok(Some(key))
    }

    /// Whether the broker is on this machine (a loopback address or `localhost`).
    pub fn broker_is_loopback(&self) -> bool {
        self.broker_addr().is_ok_and(|a| {
            a.host.eq_ignore_ascii_case("localhost")
                || a.host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
    }

    /// Every warning as `(key, message)`: [`UplinkConfig::secret_warnings`], and acks taken
    /// unauthenticated from a broker that is not on this machine.
    pub fn warnings(&self) -> Vec<(&'static str, String)> {
        let mut w = self.secret_warnings();
        if matches!(self.ack_key_source(), Ok(None)) && !self.broker_is_loopback() {
            w.push((
                "broker",
                "acknowledgements are not authenticated: any client that may publish on this agent's ack topic can make it delete buffered data the cloud never stored; give the cloud's ack key for this site (ack_key_credential = \"NAME\" or ack_key_file = \"/path\"; cloud-ingest [mqtt] ack_keys)".into(),
            ));
        }
        w
    }

    /// Warnings as `(key, message)`: a password written in the broker URL.
    pub fn secret_warnings(&self) -> Vec<(&'static str, String)> {
        if self.url_credentials().is_some_and(|(_, p)| !p.is_empty()) {
            vec![(
                "broker",
                secret::inline_warning(
                    "broker",
                    "the broker password (in the URL)",
                    "credentials = \"systemd:NAME\" or \"file:/path\"",
                ),
            )]
        } else {
            Vec::new()
        }
    }

    /// The username and password: from where `credentials` points (two lines: username,
    /// password), else from the broker URL's user info; `None`: anonymous.
    pub fn read_credentials(&self) -> Result<Option<(String, Secret)>, String> {
        let Some(spec) = &self.credentials else {
            return Ok(self.url_credentials());
        };
        let src = SecretSource::from_spec(spec).map_err(|e| format!("credentials: {e}"))?;
        let text = src.read_text().map_err(|e| format!("credentials: {e}"))?;
        let mut lines = text.expose().lines();
        let user = lines.next().unwrap_or("").trim().to_owned();
        let pass = lines.next().unwrap_or("").trim_end_matches('\r').to_owned();
        if user.is_empty() {
            return Err(format!(
                "credentials {spec:?}: the first line (username) is empty"
            ));
        }
        Ok(Some((user, Secret::new(pass))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_cap_is_documented_in_the_example_defaults_to_10_s_and_is_bounded() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.example.toml");
        let text = std::fs::read_to_string(path).expect("example");
        let doc: toml::Table = toml::from_str(&text).expect("example parses");
        let u: UplinkConfig = doc["uplink"]
            .clone()
            .try_into()
            .expect("the example has an [uplink]");
        assert_eq!(u.reconnect_max, Duration::from_secs(10));
        assert!(text.contains("\nreconnect_max = "), "documented by example");

        let parse = |extra: &str| -> UplinkConfig {
            toml::from_str(&format!("broker = \"mqtt://h\"\n{extra}")).expect("parses")
        };
        assert_eq!(parse("").reconnect_max, DEFAULT_RECONNECT_MAX);
        let c = parse("reconnect_max = \"3s\"");
        assert_eq!(c.reconnect_max, Duration::from_secs(3));
        assert!(c.validate().is_empty());
        let bad = parse("reconnect_max = \"100ms\"");
        assert!(bad.validate().iter().any(|(k, _)| *k == "reconnect_max"));
    }

    fn uplink(text: &str) -> UplinkConfig {
        toml::from_str(text).expect("parses")
    }

    /// A password in the broker URL is used (percent-decoded), warned about, never shown.
    #[test]
    fn a_password_in_the_broker_url_works_is_warned_about_and_is_redacted() {
        let c = uplink("broker = \"mqtts://gw%2D1:p%40ss:w@broker.example:8884/\"");
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let a = c.broker_addr().expect("addr");
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("broker.example", 8884, true)
        );
        let (user, pass) = c.read_credentials().expect("ok").expect("some");
        assert_eq!((user.as_str(), pass.expose()), ("gw-1", "p@ss:w"));
        assert_eq!(c.secret_warnings().len(), 1);
        for shown in [format!("{c:?}"), c.broker.to_string()] {
            assert!(
                !shown.contains("p%40ss") && shown.contains("gw%2D1:***@"),
                "{shown}"
            );
        }
        // Without a port: the old parse took "PASS@host" for a port and printed it.
        let c = uplink("broker = \"mqtt://u:hunter2@host\"");
        assert_eq!(c.broker_addr().expect("addr").port, 1883);
        let c = uplink("broker = \"mqtt://u:hunter2@\"");
        let e = c.broker_addr().expect_err("no host");
        assert!(!e.contains("hunter2"), "{e}");
        let c = uplink("broker = \"tcp://u:hunter2@h\"");
        let e = c.broker_addr().expect_err("scheme");
        assert!(!e.contains("hunter2"), "{e}");
        // A user without a password: no warning. Both places: refused.
        assert!(uplink("broker = \"mqtt://u@h\"")
            .secret_warnings()
            .is_empty());
        let both = uplink("broker = \"mqtt://u:p@h\"\ncredentials = \"file:/x\"");
        assert!(both.validate().iter().any(|(k, _)| *k == "credentials"));
    }

    /// `credentials`: the two-line file, trailing newline or not; missing and empty files
    /// are errors naming the file.
    #[test]
    fn credentials_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("mqtt");
        let c = uplink(&format!(
            "broker = \"mqtt://h\"\ncredentials = \"file:{}\"",
            f.display()
        ));
        let e = c.read_credentials().expect_err("missing");
        assert!(e.contains(&f.display().to_string()), "{e}");
        std::fs::write(&f, "").expect("write");
        assert!(c.read_credentials().expect_err("empty").contains("empty"));
        std::fs::write(&f, "gw\npw\n").expect("write");
        let (u, p) = c.read_credentials().expect("ok").expect("some");
        assert_eq!((u.as_str(), p.expose()), ("gw", "pw"));
        std::fs::write(&f, "gw\r\npw").expect("write");
        let (u, p) = c.read_credentials().expect("ok").expect("some");
        assert_eq!((u.as_str(), p.expose()), ("gw", "pw"));
        assert!(c.secret_warnings().is_empty());
    }

    /// `ack_key_file`: read, newline stripped, at least 16 characters; both sources refused;
    /// without a key, `check` warns unless the broker is on this machine.
    #[test]
    fn ack_keys_and_the_unauthenticated_warning() {
        let unauth = |c: &UplinkConfig| {
            c.warnings()
                .iter()
                .any(|(_, m)| m.contains("not authenticated"))
        };
        for quiet in [
            "mqtt://127.0.0.1:1883",
            "mqtt://localhost",
            "mqtts://LOCALHOST:8883",
            "mqtt://[::1]:1883",
            "mqtt://127.0.0.53",
        ] {
            let c = uplink(&format!("broker = \"{quiet}\""));
            assert!(c.broker_is_loopback(), "{quiet}");
            assert!(c.warnings().is_empty(), "{quiet}: {:?}", c.warnings());
        }
        for loud in [
            "mqtt://10.0.0.5",
            "mqtts://broker.example",
            "mqtt://gw@192.168.1.2:1883",
        ] {
            let c = uplink(&format!("broker = \"{loud}\""));
            assert!(unauth(&c), "{loud}");
            assert!(c.read_ack_key().expect("ok").is_none());
        }
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("ack");
        let c = uplink(&format!(
            "broker = \"mqtt://10.0.0.5\"\nack_key_file = {:?}",
            f.display().to_string()
        ));
        assert!(c.validate().is_empty() && c.warnings().is_empty());
        assert!(c.read_ack_key().expect_err("missing").contains("ack key"));
        std::fs::write(&f, "too short\n").expect("write");
        assert!(c.read_ack_key().expect_err("short").contains("shorter"));
        std::fs::write(&f, "0123456789abcdef0123\n").expect("write");
        let k = c.read_ack_key().expect("ok").expect("some");
        assert_eq!(k.expose(), "0123456789abcdef0123");
        let both =
            uplink("broker = \"mqtt://h\"\nack_key_file = \"/x\"\nack_key_credential = \"y\"");
        assert!(both.validate().iter().any(|(k, _)| *k == "ack_key_file"));
    }
}
