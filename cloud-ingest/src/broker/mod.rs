//! The embedded MQTT broker (rumqttd) for single-box deployments and the demo: one process runs
//! broker, ingest and API. Off by default; production uses an external broker (Mosquitto, EMQX,
//! HiveMQ) with the access control of `config/mosquitto/`.
//!
//! [`gate`] always owns `listen`; rumqttd listens on a loopback port that accepts only a random
//! per-process login, which the gate and the ingest's own client use. How agents log in:
//!
//! - `password_file`: a `mosquitto_passwd` identity `{site}/{agent}` ([`passwd`]);
//! - `client_ca_file` (with `tls_cert_file`/`tls_key_file`): a client certificate issued by
//!   that CA, its subject CN `{site}/{agent}` being the identity ([`tls`]; a CONNECT username,
//!   if given, must equal it). With both, an agent needs both.
//! - neither: anonymous, and only a loopback `listen` is allowed (the demo). The gate still
//!   refuses client ids rumqttd cannot take (`/ + $ #` make rumqttd 0.20 panic on a second
//!   login), so a hostile id gets CONNACK 2, not a stopped broker.
//!
//! An identity must use client id `fs-{site}-{agent}` (the agent's default) and only its own
//! topics ([`policy`]). That client id is ambiguous when ids hold `-` (`a-b/c` and `a/b-c` both
//! give `fs-a-b-c`). Choice: the id an agent sends keeps its form, so no deployed agent has to
//! change, but rumqttd never sees it: the gate hands rumqttd `fs~{site}~{agent}`, built from the
//! authenticated (site, agent) pair with a separator ids cannot hold, so each identity has its
//! own session and no identity can take over or throw off another's, whatever the strings.
//! `tls_cert_file` without `client_ca_file` serves TLS with password login.

mod gate;
mod packet;
mod passwd;
mod policy;
mod tls;

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
    /// The TLS certificate, key or client CA cannot be used.
    #[error("[broker] TLS: {0}")]
    Tls(String),
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
    /// needs `password_file` or `client_ca_file`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest message accepted, bytes. Default 16 MiB.
    #[serde(default = "default_max_payload")]
    pub max_payload_size: usize,
    /// Agent logins (`mosquitto_passwd` file; usernames `{site}/{agent}`). Default none.
    #[serde(default)]
    pub password_file: Option<String>,
    /// TLS on `listen`: the server certificate (PEM, chain first). Default none (plain TCP).
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    /// The server certificate's private key (PEM: PKCS#8, RSA or SEC1).
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// Client certificates required and verified against these CAs (PEM); the certificate's
    /// subject CN `{site}/{agent}` is the identity. Needs `tls_cert_file`.
    #[serde(default)]
    pub client_ca_file: Option<String>,
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
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
        }
    }
}

impl BrokerConfig {
    /// How agents log in.
    fn login(&self) -> policy::Login {
        policy::Login {
            password: self.password_file.is_some(),
            certificate: self.client_ca_file.is_some(),
        }
    }

    /// The TLS server configuration, if `tls_cert_file` is set.
    fn tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, BrokerError> {
        match (&self.tls_cert_file, &self.tls_key_file, &self.client_ca_file) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), ca) => tls::server_config(cert, key, ca.as_deref()).map(Some),
            (None, _, Some(_)) => Err(BrokerError::Config(
                "client_ca_file needs tls_cert_file and tls_key_file (client certificates are checked in the TLS handshake)".into(),
            )),
            _ => Err(BrokerError::Config(
                "tls_cert_file and tls_key_file go together".into(),
            )),
        }
    }

    /// Check the settings (`check-config` and `serve`): the listen address parses, a
    /// non-loopback listener has authentication, the password file is readable and hashed,
    /// the TLS files load.
    pub fn validate(&self) -> Result<std::net::SocketAddr, BrokerError> {
        let addr: std::net::SocketAddr = self.listen.parse().map_err(|_| {
            BrokerError::Config(format!("listen {:?} is not host:port", self.listen))
        })?;
        if !self.embedded {
            return Ok(addr);
        }
        if let Some(p) = &self.password_file {
            passwd::check_file(p)?;
        }
        self.tls()?;
        if self.login().is_open() && !addr.ip().is_loopback() {
            return Err(BrokerError::Config(format!(
                "embedded = true on {addr} without authentication: any host could read every agent's data and write its acks. Set password_file (mosquitto_passwd, usernames <site>/<agent>) or client_ca_file with tls_cert_file/tls_key_file (client certificates, CN <site>/<agent>), or listen on 127.0.0.1"
            )));
        }
        Ok(addr)
    }

    /// One line for `check-config`: how agents log in to the embedded broker.
    pub fn login_summary(&self) -> String {
        let transport = match &self.tls_cert_file {
            Some(c) => format!("TLS ({c})"),
            None => "plain TCP".into(),
        };
        let login = match (&self.password_file, &self.client_ca_file) {
            (None, None) => "anonymous (loopback only; no identities, no topic rules)".to_string(),
            (Some(p), None) => format!("password file {p}, username <site>/<agent>"),
            (None, Some(ca)) => format!("client certificate from {ca}, CN <site>/<agent>"),
            (Some(p), Some(ca)) => {
                format!("client certificate from {ca} (CN <site>/<agent>) and password file {p}")
            }
        };
        let mut line = format!(
            "embedded broker on {}: {transport}; login: {login}",
            self.listen
        );
        if self.password_file.is_some() && self.tls_cert_file.is_none() {
            line.push_str("; passwords cross the network unencrypted (set tls_cert_file)");
        }
        line
    }
}

/// A started embedded broker.
pub struct Embedded {
    /// The broker URL the ingest's own client uses (rumqttd's internal listener and login).
    pub ingest_url: String,
    /// Whether agents must authenticate (password file or client certificates).
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

/// Start the embedded broker: rumqttd on its own thread (it runs its own runtime), on a
/// loopback port with a random login, and the gate on `listen` as a task on the current
/// runtime. `root` is the topic root.
pub async fn start(
    cfg: &BrokerConfig,
    root: &str,
    stats: Arc<ConsumerStats>,
) -> Result<Embedded, BrokerError> {
    let addr = cfg.validate()?;
    // Bind first: fail early and clearly if the port is taken.
    let public = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| BrokerError::Config(format!("cannot listen on {addr}: {e}")))?;
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
    let login = cfg.login();
    let gate = gate::Gate {
        login,
        password_file: cfg.password_file.clone(),
        tls: cfg.tls()?.map(tokio_rustls::TlsAcceptor::from),
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
        gated: !login.is_open(),
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
