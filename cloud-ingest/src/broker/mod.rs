//! The embedded MQTT broker (rumqttd) for single-box deployments and the demo: one process runs
//! broker, ingest and API. Off by default; production uses an external broker (Mosquitto, EMQX,
//! HiveMQ) with the access control of `config/mosquitto/`.
//!
//! Without `password_file` rumqttd listens on `listen` itself, anonymous, and only a loopback
//! address is allowed. With it, [`gate`] listens there: agents log in with a
//! `mosquitto_passwd` identity `{site}/{agent}` and may use only their own topics; rumqttd
//! listens on a loopback port that accepts only a random per-process login, which the gate and
//! the ingest's own client use.

mod gate;
mod packet;
mod passwd;

use std::sync::Arc;

use serde::Deserialize;

use crate::consume::ConsumerStats;

/// An embedded broker error.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Unusable `[broker]` settings.
    #[error("[broker]: {0}")]
    Config(String),
    /// The password file cannot be read or has a line that is not a mosquitto_passwd hash.
    #[error("[broker] password_file: {0}")]
    PasswordFile(String),
    /// A client broke MQTT 3.1.1.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A client did what its identity may not (the connection is closed).
    #[error("refused: {0}")]
    Refused(String),
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `[broker]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run an MQTT 3.1.1 broker inside cloud-ingest. Default false.
    #[serde(default)]
    pub embedded: bool,
    /// Where the embedded broker listens. Default "127.0.0.1:1883". A non-loopback address
    /// needs `password_file`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest message accepted, bytes. Default 16 MiB.
    #[serde(default = "default_max_payload")]
    pub max_payload_size: usize,
    /// Agent logins (`mosquitto_passwd` file; usernames `{site}/{agent}`). Default none:
    /// anonymous, loopback only.
    #[serde(default)]
    pub password_file: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:1883".into()
}
fn default_max_payload() -> usize {
    16 * 1024 * 1024
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            embedded: false,
            listen: default_listen(),
            max_payload_size: default_max_payload(),
            password_file: None,
        }
    }
}

impl BrokerConfig {
    /// Check the settings (`check-config` and `serve`): the listen address parses, a
    /// non-loopback listener has authentication, the password file is readable and hashed.
    pub fn validate(&self) -> Result<std::net::SocketAddr, BrokerError> {
        let addr: std::net::SocketAddr = self.listen.parse().map_err(|_| {
            BrokerError::Config(format!("listen {:?} is not host:port", self.listen))
        })?;
        if !self.embedded {
            return Ok(addr);
        }
        match &self.password_file {
            Some(p) => {
                passwd::check_file(p)?;
            }
            None if !addr.ip().is_loopback() => {
                return Err(BrokerError::Config(format!(
                    "embedded = true on {addr} without authentication: any host could read every agent's data and write its acks. Set password_file (mosquitto_passwd, usernames <site>/<agent>) or listen on 127.0.0.1"
                )))
            }
            None => {}
        }
        Ok(addr)
    }
}

/// A started embedded broker.
pub struct Embedded {
    /// The broker URL the ingest's own client uses (with the internal login when gated).
    pub ingest_url: String,
    /// Whether agents go through the gate (password file).
    pub gated: bool,
}

fn rumqttd_config(
    addr: std::net::SocketAddr,
    max: usize,
    login: Option<(&str, &str)>,
) -> Result<rumqttd::Config, BrokerError> {
    let auth = login.map_or(String::new(), |(u, p)| {
        format!("    [v4.1.connections.auth]\n    {u:?} = {p:?}\n")
    });
    let text = format!(
        r#"id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "embedded"
listen = "{addr}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = {max}
    max_inflight_count = 100
    dynamic_filters = true
{auth}"#
    );
    toml::from_str(&text).map_err(|e| BrokerError::Config(format!("embedded broker config: {e}")))
}

/// Start the embedded broker: rumqttd on its own thread (it runs its own runtime) and, with a
/// password file, the gate as a task on the current runtime. `root` is the topic root.
pub async fn start(
    cfg: &BrokerConfig,
    root: &str,
    stats: Arc<ConsumerStats>,
) -> Result<Embedded, BrokerError> {
    let addr = cfg.validate()?;
    // Bind first: fail early and clearly if the port is taken (rumqttd would only log it).
    let public = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| BrokerError::Config(format!("cannot listen on {addr}: {e}")))?;
    let Some(password_file) = cfg.password_file.clone() else {
        drop(public);
        spawn_rumqttd(rumqttd_config(addr, cfg.max_payload_size, None)?)?;
        return Ok(Embedded {
            ingest_url: format!("mqtt://{addr}"),
            gated: false,
        });
    };
    // A free loopback port for rumqttd (which cannot report a port it picked itself).
    let internal = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (user, password) = (
        format!("fs-internal-{}", std::process::id()),
        format!("{:032x}", rand::random::<u128>()),
    );
    spawn_rumqttd(rumqttd_config(
        internal,
        cfg.max_payload_size,
        Some((&user, &password)),
    )?)?;
    let gate = gate::Gate {
        password_file,
        root: root.to_string(),
        internal,
        user: user.clone(),
        password: password.clone(),
        max_packet: cfg.max_payload_size.saturating_add(64 * 1024),
        stats,
    };
    tokio::spawn(gate::run(public, Arc::new(gate)));
    Ok(Embedded {
        ingest_url: format!("mqtt://{user}:{password}@{internal}"),
        gated: true,
    })
}

fn spawn_rumqttd(config: rumqttd::Config) -> Result<(), BrokerError> {
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })?;
    Ok(())
}
