//! A gantry batch-record table in the OPC UA address space (the OPC UA twin of
//! `modbus/gantry.rs`): a sequence number, the fields of the last completed batch, and a
//! writable acknowledgement the agent sets to the sequence number it committed. Tests produce
//! records step by step with [`OpcUaGantry::next_batch`] and [`OpcUaGantry::skip`].
//!
//! | NodeId (`ns=<i>;s=…`) | type | |
//! |---|---|---|
//! | `Gantry.Bay1.Seq` | UInt16 | sequence number, wraps to 0 after `rollover` |
//! | `Gantry.Bay1.Bay` | UInt16 | loading bay |
//! | `Gantry.Bay1.Product` | String | product code |
//! | `Gantry.Bay1.Bol` | String | bill of lading |
//! | `Gantry.Bay1.GrossVolume` | Double | L |
//! | `Gantry.Bay1.NetStandardVolume` | Double | L at 15 °C |
//! | `Gantry.Bay1.Ack` | UInt16 | writable: the last sequence number acknowledged |

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opcua::server::address_space::{AddressSpace, VariableBuilder};
use opcua::server::node_manager::memory::SimpleNodeManager;
use opcua::server::ServerHandle;
use opcua::types::{DataTypeId, DataValue, DateTime, NodeId, StatusCode, Variant};

/// Node names of the table (under Objects/FlowSquare).
pub const SEQ: &str = "Gantry.Bay1.Seq";
/// Acknowledgement node.
pub const ACK: &str = "Gantry.Bay1.Ack";
const FIELDS: &[(&str, DataTypeId)] = &[
    ("Gantry.Bay1.Bay", DataTypeId::UInt16),
    ("Gantry.Bay1.Product", DataTypeId::String),
    ("Gantry.Bay1.Bol", DataTypeId::String),
    ("Gantry.Bay1.GrossVolume", DataTypeId::Double),
    ("Gantry.Bay1.NetStandardVolume", DataTypeId::Double),
];

/// How the table counts.
#[derive(Debug, Clone, Copy)]
pub struct OpcUaGantryConfig {
    /// Sequence number on display at start (the next batch is `start_seq + 1`).
    pub start_seq: u16,
    /// Last number before the counter wraps to 0.
    pub rollover: u16,
    /// Bay number written in every record.
    pub bay: u16,
}

impl Default for OpcUaGantryConfig {
    fn default() -> Self {
        OpcUaGantryConfig {
            start_seq: 0,
            rollover: 9999,
            bay: 1,
        }
    }
}

/// One completed batch, as published.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaBatch {
    /// Its sequence number.
    pub seq: u16,
    /// Bay.
    pub bay: u16,
    /// Bill of lading.
    pub bol: String,
    /// Gross volume, L.
    pub gross_volume: f64,
    /// Net standard volume, L.
    pub net_standard_volume: f64,
}

/// The batch table of a running [`super::OpcUaSim`].
pub struct OpcUaGantry {
    manager: Arc<SimpleNodeManager>,
    handle: ServerHandle,
    ns: u16,
    cfg: OpcUaGantryConfig,
    state: Mutex<(u16, u64)>,
}

/// Add the table's variables (called when the address space is built).
pub(super) fn populate(space: &mut AddressSpace, ns: u16, root: &NodeId) {
    let all = std::iter::once((SEQ, DataTypeId::UInt16))
        .chain(FIELDS.iter().copied())
        .chain(std::iter::once((ACK, DataTypeId::UInt16)));
    for (name, ty) in all {
        let value = match ty {
            DataTypeId::UInt16 => Variant::UInt16(0),
            DataTypeId::Double => Variant::Double(0.0),
            _ => Variant::from(""),
        };
        let mut vb = VariableBuilder::new(&NodeId::new(ns, name), name, name)
            .data_type(ty)
            .value(value)
            .organized_by(root.clone());
        if name == ACK {
            vb = vb.writable();
        }
        vb.insert(space);
    }
}

impl OpcUaGantry {
    pub(super) fn new(
        manager: Arc<SimpleNodeManager>,
        handle: ServerHandle,
        ns: u16,
        cfg: OpcUaGantryConfig,
    ) -> Arc<Self> {
        let g = OpcUaGantry {
            manager,
            handle,
            ns,
            cfg,
            state: Mutex::new((cfg.start_seq, 0)),
        };
        g.publish(&[(SEQ, Variant::UInt16(cfg.start_seq))]);
        Arc::new(g)
    }

    /// Its configuration.
    pub fn config(&self) -> &OpcUaGantryConfig {
        &self.cfg
    }

    fn publish(&self, values: &[(&str, Variant)]) {
        let now = DateTime::now();
        let ids: Vec<(NodeId, DataValue)> = values
            .iter()
            .map(|(n, v)| {
                (
                    NodeId::new(self.ns, *n),
                    DataValue {
                        value: Some(v.clone()),
                        status: Some(StatusCode::Good),
                        source_timestamp: Some(now),
                        server_timestamp: Some(now),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let _ = self.manager.set_values(
            self.handle.subscriptions(),
            ids.iter().map(|(id, dv)| (id, None, dv.clone())),
        );
    }

    fn next_seq(&self, s: u16) -> u16 {
        if s >= self.cfg.rollover {
            0
        } else {
            s + 1
        }
    }

    /// Sequence number on display.
    pub fn seq(&self) -> u16 {
        self.state.lock().map(|s| s.0).unwrap_or(0)
    }

    /// Complete the next batch: its fields, then its sequence number (one update).
    pub fn next_batch(&self) -> OpcUaBatch {
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        st.0 = self.next_seq(st.0);
        st.1 += 1;
        let n = st.1;
        let gross = 20_000.0 + (n % 7) as f64 * 500.0;
        let b = OpcUaBatch {
            seq: st.0,
            bay: self.cfg.bay,
            bol: format!("BOL-{n:06}"),
            gross_volume: gross,
            net_standard_volume: gross * 0.9875,
        };
        self.publish(&[
            ("Gantry.Bay1.Bay", Variant::UInt16(b.bay)),
            ("Gantry.Bay1.Product", Variant::from("ULP95")),
            ("Gantry.Bay1.Bol", Variant::from(b.bol.as_str())),
            ("Gantry.Bay1.GrossVolume", Variant::Double(b.gross_volume)),
            (
                "Gantry.Bay1.NetStandardVolume",
                Variant::Double(b.net_standard_volume),
            ),
            (SEQ, Variant::UInt16(b.seq)),
        ]);
        b
    }

    /// Let `n` sequence numbers pass without showing their records (a missed-event gap).
    pub fn skip(&self, n: u16) {
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        for _ in 0..n {
            st.0 = self.next_seq(st.0);
        }
    }

    /// The value of the acknowledgement node.
    pub fn ack(&self) -> Option<u16> {
        let id = NodeId::new(self.ns, ACK);
        let space = self.manager.address_space().read();
        match space.find(&id) {
            Some(opcua::server::address_space::NodeType::Variable(v)) => match v
                .value(
                    opcua::types::TimestampsToReturn::Neither,
                    &opcua::types::NumericRange::None,
                    &opcua::types::DataEncoding::Binary,
                    0.0,
                )
                .value
            {
                Some(Variant::UInt16(a)) => Some(a),
                _ => None,
            },
            _ => None,
        }
    }

    /// Is the record on display acknowledged (ack = its sequence number)?
    pub fn acked(&self) -> bool {
        self.ack() == Some(self.seq())
    }

    /// Wait (checking every 5 ms) until the record on display is acknowledged; false on timeout.
    pub async fn wait_for_ack(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.acked() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.acked()
    }

    /// The agent's `[[device.event]]` for this table (for tests and the example).
    pub fn agent_event_toml(&self, name: &str, handshake: bool) -> String {
        let node = |n: &str| format!("ns={};s={n}", self.ns);
        let mut t = format!(
            "\n  [[device.event]]\n  name = \"{name}\"\n  poll_interval = \"20ms\"\n  seq_rollover = {}\n  trigger = {{ node = \"{}\", type = \"u16\" }}\n",
            self.cfg.rollover,
            node(SEQ)
        );
        if handshake {
            t += &format!(
                "  handshake = {{ node = \"{}\", type = \"u16\", value = \"seq\" }}\n",
                node(ACK)
            );
        }
        t += &format!(
            "  fields = [\n    {{ name = \"bay\", node = \"{}\", type = \"integer\" }},\n    {{ name = \"product\", node = \"{}\", type = \"string\" }},\n    {{ name = \"bol\", node = \"{}\", type = \"string\" }},\n    {{ name = \"gross_volume\", node = \"{}\", type = \"float\", unit = \"L\" }},\n    {{ name = \"net_standard_volume\", node = \"{}\", type = \"float\", unit = \"L\" }},\n  ]\n",
            node("Gantry.Bay1.Bay"),
            node("Gantry.Bay1.Product"),
            node("Gantry.Bay1.Bol"),
            node("Gantry.Bay1.GrossVolume"),
            node("Gantry.Bay1.NetStandardVolume"),
        );
        t
    }
}
