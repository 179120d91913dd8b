//! A simulated OPC UA server (async-opcua server): a small tank-farm / gantry address space whose
//! variables change every `interval`, plus `bench` generated variables for load tests. Started
//! in-process by tests ([`OpcUaSim::start`]) or as a process (`flowsquare-sim opcua`).
//!
//! Address space (namespace [`NAMESPACE_URI`], string NodeIds, under Objects/FlowSquare):
//!
//! | NodeId (`ns=<i>;s=…`) | type | value at tick `n` |
//! |---|---|---|
//! | `Tank101.Level` | Double | 5000 + 250·sin(n/20) mm |
//! | `Tank101.Temperature` | Float | 15 + 2·sin(n/50) °C |
//! | `Meter1.Total` | Double | 12.5·n m³ (a totalizer) |
//! | `Pump1.Running` | Boolean | on for 10 ticks, off for 10 |
//! | `Gantry.Status` | String | `loading` / `idle` |
//! | `Counter` | UInt32 | n |
//! | `Gantry.Setpoint` | Double | writable by clients, not changed by the simulator |
//! | `Bad.Text` | String | always `n/a` (for type-mismatch tests) |
//! | `Gantry.Bay1.*` | | the batch-record table of `gantry.rs` ([`OpcUaSim::gantry`]) |
//! | `Bench.<k>` (k < bench) | Double | n + k/1000 (in folder Objects/FlowSquare/Bench) |

pub mod gantry;

pub use gantry::{OpcUaBatch, OpcUaGantry, OpcUaGantryConfig};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::VariableBuilder;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{
    DataTypeId, DataValue, DateTime, MessageSecurityMode, NodeId, ObjectId, Variant,
};
use tokio::net::TcpListener;

/// Namespace of the simulated variables.
pub const NAMESPACE_URI: &str = "urn:flowsquare:site-sim";

/// Errors of the OPC UA simulator.
#[derive(Debug, thiserror::Error)]
pub enum OpcUaSimError {
    /// The server could not be built.
    #[error("OPC UA server: {0}")]
    Build(String),
    /// Binding or reading the listener failed.
    #[error("OPC UA listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct OpcUaSimConfig {
    /// Time between value changes.
    pub interval: Duration,
    /// Number of generated `Bench.<k>` variables.
    pub bench: usize,
    /// PKI directory of the server (its certificate is made there once).
    pub pki_dir: PathBuf,
    /// Also offer Basic256Sha256 Sign and SignAndEncrypt endpoints.
    pub secure: bool,
    /// Trust every client certificate (else only those in `<pki>/trusted`).
    pub trust_clients: bool,
    /// User name / password pairs accepted (anonymous is always accepted).
    pub users: Vec<(String, String)>,
    /// More `Double` variables (initially 0) under the FlowSquare folder, set by the caller
    /// with [`OpcUaSim::set`] (the simulated terminal's tanks).
    pub extra: Vec<String>,
    /// Added to the source and server timestamps of the changing variables, ms (a server whose
    /// clock is wrong: tests of the agent's time sanity).
    pub clock_offset_ms: i64,
}

impl OpcUaSimConfig {
    /// Plain (security None, anonymous) server changing every `interval`.
    pub fn new(pki_dir: impl Into<PathBuf>, interval: Duration) -> Self {
        OpcUaSimConfig {
            interval,
            bench: 0,
            pki_dir: pki_dir.into(),
            secure: false,
            trust_clients: true,
            users: Vec::new(),
            extra: Vec::new(),
            clock_offset_ms: 0,
        }
    }
}

/// A running simulated server.
pub struct OpcUaSim {
    /// `opc.tcp://127.0.0.1:PORT/`.
    pub endpoint: String,
    /// Bound address.
    pub addr: std::net::SocketAddr,
    /// Namespace index of the simulated variables.
    pub ns: u16,
    handle: ServerHandle,
    manager: Arc<SimpleNodeManager>,
    server: Option<tokio::task::JoinHandle<()>>,
    updater: Option<tokio::task::JoinHandle<()>>,
}

const DEMO: &[(&str, DataTypeId)] = &[
    ("Tank101.Level", DataTypeId::Double),
    ("Tank101.Temperature", DataTypeId::Float),
    ("Meter1.Total", DataTypeId::Double),
    ("Pump1.Running", DataTypeId::Boolean),
    ("Gantry.Status", DataTypeId::String),
    ("Counter", DataTypeId::UInt32),
    ("Gantry.Setpoint", DataTypeId::Double),
    ("Bad.Text", DataTypeId::String),
];

/// Values of the changing demo variables at tick `n`.
pub fn demo_values(n: u64) -> Vec<(&'static str, Variant)> {
    let t = n as f64;
    vec![
        (
            "Tank101.Level",
            Variant::Double(5000.0 + 250.0 * (t / 20.0).sin()),
        ),
        (
            "Tank101.Temperature",
            Variant::Float((15.0 + 2.0 * (t / 50.0).sin()) as f32),
        ),
        ("Meter1.Total", Variant::Double(12.5 * t)),
        ("Pump1.Running", Variant::Boolean((n / 10) % 2 == 0)),
        (
            "Gantry.Status",
            Variant::from(if (n / 10) % 2 == 0 { "loading" } else { "idle" }),
        ),
        (
            "Counter",
            Variant::UInt32(u32::try_from(n % u64::from(u32::MAX)).unwrap_or(0)),
        ),
    ]
}

impl OpcUaSim {
    /// Serve on `listener` (bind 127.0.0.1:0 for tests).
    pub async fn start(
        cfg: OpcUaSimConfig,
        listener: TcpListener,
    ) -> Result<OpcUaSim, OpcUaSimError> {
        let addr = listener.local_addr()?;
        let host = addr.ip().to_string();
        let endpoint = format!("opc.tcp://{host}:{}/", addr.port());
        let mut user_ids: Vec<String> = vec![ANONYMOUS_USER_TOKEN_ID.to_owned()];
        let mut b = ServerBuilder::new()
            .application_name("FlowSquare site simulator")
            // Not NAMESPACE_URI: the server registers its application URI as its own namespace.
            .application_uri("urn:flowsquare:site-sim:server")
            .product_uri("urn:flowsquare:site-sim")
            .create_sample_keypair(true)
            .pki_dir(&cfg.pki_dir)
            .host(host.clone())
            .port(addr.port())
            .trust_client_certs(cfg.trust_clients)
            .discovery_urls(vec![endpoint.clone()])
            .diagnostics_enabled(false);
        for (i, (u, p)) in cfg.users.iter().enumerate() {
            let id = format!("user{i}");
            b = b.add_user_token(&id, ServerUserToken::user_pass(u.as_str(), p.as_str()));
            user_ids.push(id);
        }
        let ids: Vec<&str> = user_ids.iter().map(String::as_str).collect();
        b = b.add_endpoint(
            "none",
            (
                "/",
                SecurityPolicy::None,
                MessageSecurityMode::None,
                ids.as_slice(),
            ),
        );
        if cfg.secure {
            b = b
                .add_endpoint(
                    "basic256sha256_sign",
                    (
                        "/",
                        SecurityPolicy::Basic256Sha256,
                        MessageSecurityMode::Sign,
                        ids.as_slice(),
                    ),
                )
                .add_endpoint(
                    "basic256sha256_sign_encrypt",
                    (
                        "/",
                        SecurityPolicy::Basic256Sha256,
                        MessageSecurityMode::SignAndEncrypt,
                        ids.as_slice(),
                    ),
                );
        }
        // Room for the benchmark's 5,000 items per request.
        {
            let limits = b.limits_mut();
            limits.max_array_length = 100_000;
            limits.max_message_size = 64 * 1024 * 1024;
            limits.max_chunk_count = 1024;
            limits.subscriptions.max_monitored_items_per_sub = 100_000;
            limits.subscriptions.max_queued_notifications = 100_000;
            limits.operational.max_monitored_items_per_call = 100_000;
            limits.operational.max_nodes_per_read = 100_000;
        }
        let (server, handle) = b
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: NAMESPACE_URI.to_owned(),
                    ..Default::default()
                },
                "flowsquare-sim",
            ))
            .build()
            .map_err(OpcUaSimError::Build)?;
        let manager = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or_else(|| OpcUaSimError::Build("no node manager".into()))?;
        let ns = handle
            .get_namespace_index(NAMESPACE_URI)
            .ok_or_else(|| OpcUaSimError::Build("namespace not registered".into()))?;
        populate(&manager, ns, cfg.bench, &cfg.extra);
        let server = tokio::spawn(async move {
            if let Err(e) = server.run_with(listener).await {
                tracing::error!(error = %e, "OPC UA simulator stopped");
            }
        });
        let (m, h) = (manager.clone(), handle.clone());
        let (interval, bench, offset) = (cfg.interval, cfg.bench, cfg.clock_offset_ms);
        let updater = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let bench_ids: Vec<NodeId> = (0..bench)
                .map(|k| NodeId::new(ns, format!("Bench.{k}")))
                .collect();
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                n += 1;
                update(&m, &h, ns, n, &bench_ids, offset);
            }
        });
        Ok(OpcUaSim {
            endpoint,
            addr,
            ns,
            handle,
            manager,
            server: Some(server),
            updater: Some(updater),
        })
    }

    /// `ns=<i>;s=<name>` of a simulated variable.
    pub fn node(&self, name: &str) -> String {
        format!("ns={};s={name}", self.ns)
    }

    /// The gantry batch-record table, its sequence number set to `cfg.start_seq`.
    pub fn gantry(&self, cfg: OpcUaGantryConfig) -> Arc<OpcUaGantry> {
        OpcUaGantry::new(self.manager.clone(), self.handle.clone(), self.ns, cfg)
    }

    /// Set a variable now (tests: bad values, status codes).
    pub fn set(&self, name: &str, value: DataValue) {
        let id = NodeId::new(self.ns, name);
        let _ = self.manager.set_values(
            self.handle.subscriptions(),
            [(&id, None, value)].into_iter(),
        );
    }

    /// Current value of a variable (tests: what a client wrote).
    pub fn get(&self, name: &str) -> Option<Variant> {
        let id = NodeId::new(self.ns, name);
        let space = self.manager.address_space().read();
        match space.find(&id) {
            Some(opcua::server::address_space::NodeType::Variable(v)) => {
                v.value(
                    opcua::types::TimestampsToReturn::Neither,
                    &opcua::types::NumericRange::None,
                    &opcua::types::DataEncoding::Binary,
                    0.0,
                )
                .value
            }
            _ => None,
        }
    }

    /// Stop serving: listener and every session closed.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(u) = self.updater.take() {
            u.abort();
        }
        self.handle.cancel();
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
    }
}

impl Drop for OpcUaSim {
    fn drop(&mut self) {
        if let Some(u) = self.updater.take() {
            u.abort();
        }
        self.handle.cancel();
    }
}

fn populate(m: &SimpleNodeManager, ns: u16, bench: usize, extra: &[String]) {
    let mut space = m.address_space().write();
    let root = NodeId::new(ns, "FlowSquare");
    space.add_folder(
        &root,
        "FlowSquare",
        "FlowSquare",
        &ObjectId::ObjectsFolder.into(),
    );
    let init = demo_values(0);
    for (name, ty) in DEMO {
        let value = init
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                if *name == "Bad.Text" {
                    Variant::from("n/a")
                } else {
                    Variant::Double(0.0)
                }
            });
        let mut vb = VariableBuilder::new(&NodeId::new(ns, *name), *name, *name)
            .data_type(*ty)
            .value(value)
            .organized_by(root.clone());
        if *name == "Gantry.Setpoint" {
            vb = vb.writable();
        }
        vb.insert(&mut *space);
    }
    gantry::populate(&mut space, ns, &root);
    for name in extra {
        VariableBuilder::new(
            &NodeId::new(ns, name.as_str()),
            name.as_str(),
            name.as_str(),
        )
        .data_type(DataTypeId::Double)
        .value(0.0)
        .organized_by(root.clone())
        .insert(&mut *space);
    }
    if bench > 0 {
        let folder = NodeId::new(ns, "Bench");
        space.add_folder(&folder, "Bench", "Bench", &root);
        for k in 0..bench {
            let name = format!("Bench.{k}");
            VariableBuilder::new(
                &NodeId::new(ns, name.as_str()),
                name.as_str(),
                name.as_str(),
            )
            .data_type(DataTypeId::Double)
            .value(k as f64 / 1000.0)
            .organized_by(folder.clone())
            .insert(&mut *space);
        }
    }
}

fn update(
    m: &SimpleNodeManager,
    h: &ServerHandle,
    ns: u16,
    n: u64,
    bench: &[NodeId],
    offset_ms: i64,
) {
    let now = if offset_ms == 0 {
        DateTime::now()
    } else {
        DateTime::from(DateTime::now().checked_ticks() + offset_ms * 10_000)
    };
    let dv = |v: Variant| DataValue {
        value: Some(v),
        status: Some(opcua::types::StatusCode::Good),
        source_timestamp: Some(now),
        server_timestamp: Some(now),
        ..Default::default()
    };
    let demo: Vec<(NodeId, DataValue)> = demo_values(n)
        .into_iter()
        .map(|(name, v)| (NodeId::new(ns, name), dv(v)))
        .collect();
    let values = demo.iter().map(|(id, v)| (id, None, v.clone())).chain(
        bench
            .iter()
            .enumerate()
            .map(|(k, id)| (id, None, dv(Variant::Double(n as f64 + k as f64 / 1000.0)))),
    );
    let _ = m.set_values(h.subscriptions(), values);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn variables_exist_and_change() {
        let dir = std::env::temp_dir().join(format!("sim-pki-{}", std::process::id()));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = OpcUaSim::start(OpcUaSimConfig::new(&dir, Duration::from_millis(50)), l)
            .await
            .unwrap();
        let first = s.get("Counter");
        assert!(first.is_some(), "ns {} ", s.ns);
        assert!(s.get("Tank101.Level").is_some());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.get("Counter") == first && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(s.get("Counter"), first);
        s.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
