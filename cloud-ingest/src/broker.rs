//! The embedded MQTT broker (rumqttd) for single-box deployments and the demo: one process runs
//! broker, ingest and API. Off by default; production uses an external broker (Mosquitto, EMQX,
//! HiveMQ) with the access control of `config/mosquitto/`.

use serde::Deserialize;

/// `[broker]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Run an MQTT 3.1.1 broker inside cloud-ingest. Default false.
    #[serde(default)]
    pub embedded: bool,
    /// Where the embedded broker listens. Default "127.0.0.1:1883" (agents on other hosts need
    /// an address they can reach, and then a firewall: the embedded broker has no access control).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest message accepted, bytes. Default 16 MiB.
    #[serde(default = "default_max_payload")]
    pub max_payload_size: usize,
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
        }
    }
}

/// Start the embedded broker on its own thread (rumqttd runs its own runtime).
pub fn start(cfg: &BrokerConfig) -> Result<std::thread::JoinHandle<()>, String> {
    let addr: std::net::SocketAddr = cfg
        .listen
        .parse()
        .map_err(|_| format!("[broker] listen {:?} is not host:port", cfg.listen))?;
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
"#,
        max = cfg.max_payload_size
    );
    let config: rumqttd::Config =
        toml::from_str(&text).map_err(|e| format!("embedded broker config: {e}"))?;
    // Fail early and clearly if the port is taken (rumqttd would only log it from its thread).
    std::net::TcpListener::bind(addr)
        .map_err(|e| format!("embedded broker cannot listen on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| e.to_string())
}
