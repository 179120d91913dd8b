//! The OPC UA binding of event capture ([`crate::drivers::events::EventIo`]): the trigger and
//! the field block are read with the Read service (one request for the block, split only by
//! `max_nodes_per_request`), values mapped like tags (`status.rs`); the handshake is a Write of
//! the Value attribute, in the Variant type the node holds (read once per session). Each event
//! definition has its own task and session, so the tag subscription is not affected; a broken
//! session is a link error (the run loop closes it and connects again with backoff), a bad
//! status of a node is a device error. A failed connect is retried after `reconnect_min`,
//! doubling up to `reconnect_max` (the loop's polls in between fail at once, without a request).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use opcua::types::{NodeId, StatusCode, Variant};

use super::config::{OpcType, OpcUaDevice, OpcUaTag};
use super::session::OpcUaSession;
use super::status::{status_name, value_of};
use crate::drivers::events::EventDef;
use crate::drivers::events::{IoError, Record};
use crate::drivers::stats::DeviceStats;
use crate::model::wire_value;
use crate::model::HandshakeValue;
use crate::model::Value;

/// One event definition on an OPC UA device, with its own session (opened on demand).
pub struct OpcUaEvent {
    name: String,
    dev: OpcUaDevice,
    pki: PathBuf,
    identity: super::pki::Identity,
    trigger: OpcUaTag,
    fields: Vec<(String, OpcUaTag)>,
    handshake: Option<(OpcUaTag, HandshakeValue)>,
    stats: Arc<DeviceStats>,
    link: Option<Link>,
    /// Reconnect backoff: no connect attempt before this instant.
    retry_at: Option<Instant>,
    /// The next backoff delay (`reconnect_min`, doubling up to `reconnect_max`).
    backoff: std::time::Duration,
}

/// A session with the definition's nodes resolved against it.
struct Link {
    session: OpcUaSession,
    trigger: NodeId,
    fields: Vec<NodeId>,
    handshake: Option<NodeId>,
    /// The Variant type of the handshake node, learnt at the first write.
    handshake_kind: Option<Variant>,
}

impl OpcUaEvent {
    /// The OPC UA side of `def` on `dev`; `None` when a location is not an OPC UA one (the
    /// loader rejects that).
    pub fn new(
        def: &EventDef,
        dev: &OpcUaDevice,
        pki: PathBuf,
        identity: super::pki::Identity,
        stats: Arc<DeviceStats>,
    ) -> Option<Self> {
        let fields = def
            .fields
            .iter()
            .map(|f| Some((f.name.clone(), f.source.opcua()?.clone())))
            .collect::<Option<Vec<_>>>()?;
        let handshake = match &def.handshake {
            Some(h) => Some((h.target.opcua()?.clone(), h.value)),
            None => None,
        };
        Some(OpcUaEvent {
            name: def.name.clone(),
            dev: dev.clone(),
            pki,
            identity,
            trigger: def.trigger.source.opcua()?.clone(),
            fields,
            handshake,
            stats,
            link: None,
            retry_at: None,
            backoff: dev.reconnect_min,
        })
    }

    async fn link(&mut self) -> Result<&mut Link, IoError> {
        if self.link.is_none() {
            if let Some(at) = self.retry_at {
                if Instant::now() < at {
                    return Err(IoError::Link(format!(
                        "reconnecting (backoff up to {:?})",
                        self.dev.reconnect_max
                    )));
                }
            }
            let name = format!("flowsquare event {}", self.name);
            let session =
                match OpcUaSession::connect(&self.dev, &self.pki, &self.identity, &name).await {
                    Ok(s) => {
                        self.retry_at = None;
                        self.backoff = self.dev.reconnect_min;
                        s
                    }
                    Err(e) => {
                        DeviceStats::inc(&self.stats.link_errors);
                        self.retry_at = Some(Instant::now() + self.backoff);
                        self.backoff = (self.backoff * 2).min(self.dev.reconnect_max);
                        return Err(IoError::Link(e.to_string()));
                    }
                };
            let resolve = |t: &OpcUaTag| {
                session
                    .resolve(&t.node)
                    .map_err(|e| IoError::Device(format!("node {}: {e}", t.node.text)))
            };
            let trigger = resolve(&self.trigger)?;
            let fields = self
                .fields
                .iter()
                .map(|(_, t)| resolve(t))
                .collect::<Result<Vec<_>, _>>()?;
            let handshake = match &self.handshake {
                Some((t, _)) => Some(resolve(t)?),
                None => None,
            };
            self.link = Some(Link {
                session,
                trigger,
                fields,
                handshake,
                handshake_kind: None,
            });
        }
        self.link
            .as_mut()
            .ok_or_else(|| IoError::Link("not connected".into()))
    }

    /// Fail fast on a session the library reported lost.
    fn check_lost(&mut self) -> Result<(), IoError> {
        let lost = self
            .link
            .as_ref()
            .and_then(|l| l.session.lost().borrow().clone());
        if let Some(why) = lost {
            self.link = None;
            DeviceStats::inc(&self.stats.link_errors);
            return Err(IoError::Link(why));
        }
        Ok(())
    }

    async fn read(&mut self, which: Which) -> Result<Vec<opcua::types::DataValue>, IoError> {
        self.check_lost()?;
        let link = self.link().await?;
        let nodes = match which {
            Which::Trigger => std::slice::from_ref(&link.trigger),
            Which::Fields => link.fields.as_slice(),
        };
        let t0 = Instant::now();
        let r = link.session.read_nodes(nodes).await;
        let rtt = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        match r {
            Ok(v) => {
                DeviceStats::inc(&self.stats.requests_ok);
                self.stats.rtt_us_sum.fetch_add(rtt, Relaxed);
                Ok(v)
            }
            Err(e) => {
                DeviceStats::inc(&self.stats.link_errors);
                self.link = None;
                Err(IoError::Link(e.to_string()))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Trigger,
    Fields,
}

/// The value of one DataValue, or why not.
fn value(dv: &opcua::types::DataValue, ty: OpcType) -> Result<Value, String> {
    let status = dv.status.unwrap_or(StatusCode::Good);
    if !status.is_good() {
        return Err(status_name(status));
    }
    match &dv.value {
        Some(v) => value_of(v, ty).map_err(|e| e.0),
        None => Err("good status without a value".into()),
    }
}

/// `n` in the Variant type of `like` (servers refuse a Write of another type).
fn variant_like(like: &Variant, n: i64) -> Option<Variant> {
    Some(match like {
        Variant::Boolean(_) => Variant::Boolean(n != 0),
        Variant::SByte(_) => Variant::SByte(i8::try_from(n).ok()?),
        Variant::Byte(_) => Variant::Byte(u8::try_from(n).ok()?),
        Variant::Int16(_) => Variant::Int16(i16::try_from(n).ok()?),
        Variant::UInt16(_) => Variant::UInt16(u16::try_from(n).ok()?),
        Variant::Int32(_) => Variant::Int32(i32::try_from(n).ok()?),
        Variant::UInt32(_) => Variant::UInt32(u32::try_from(n).ok()?),
        Variant::Int64(_) => Variant::Int64(n),
        Variant::UInt64(_) => Variant::UInt64(u64::try_from(n).ok()?),
        Variant::Float(_) => Variant::Float(n as f32),
        Variant::Double(_) => Variant::Double(n as f64),
        _ => return None,
    })
}

impl crate::drivers::events::EventIo for OpcUaEvent {
    async fn read_trigger(&mut self) -> Result<u64, IoError> {
        let dv = self.read(Which::Trigger).await?;
        let dv = dv
            .first()
            .ok_or_else(|| IoError::Device("trigger: no value".into()))?;
        match value(dv, self.trigger.data_type) {
            Ok(Value::Bool(b)) => Ok(u64::from(b)),
            Ok(Value::Int(i)) => {
                u64::try_from(i).map_err(|_| IoError::Device(format!("trigger is negative ({i})")))
            }
            Ok(Value::UInt(u)) => Ok(u),
            Ok(other) => Err(IoError::Device(format!(
                "trigger {} is {other:?}, not an integer",
                self.trigger.node.text
            ))),
            Err(e) => Err(IoError::Device(format!(
                "trigger {}: {e}",
                self.trigger.node.text
            ))),
        }
    }

    async fn read_record(&mut self) -> Result<Record, IoError> {
        let dvs = self.read(Which::Fields).await?;
        let mut rec = Record::default();
        for ((name, tag), dv) in self.fields.iter().zip(&dvs) {
            match value(dv, tag.data_type) {
                Ok(v) => rec.fields.push((name.clone(), wire_value(v))),
                Err(e) => {
                    DeviceStats::inc(&self.stats.decode_errors);
                    rec.bad.push((name.clone(), e));
                }
            }
        }
        Ok(rec)
    }

    async fn write_handshake(&mut self, plc_seq: u64) -> Result<(), IoError> {
        let Some((target, value)) = self.handshake.clone() else {
            return Ok(());
        };
        self.check_lost()?;
        let n = match value {
            HandshakeValue::Seq => i64::try_from(plc_seq).unwrap_or(i64::MAX),
            HandshakeValue::Int(n) => n,
            HandshakeValue::Bool(b) => i64::from(b),
        };
        let stats = self.stats.clone();
        let link = self.link().await?;
        let Some(node) = link.handshake.clone() else {
            return Ok(());
        };
        if link.handshake_kind.is_none() {
            let dv = match link.session.read_nodes(std::slice::from_ref(&node)).await {
                Ok(v) => v,
                Err(e) => {
                    DeviceStats::inc(&stats.link_errors);
                    self.link = None;
                    return Err(IoError::Link(e.to_string()));
                }
            };
            link.handshake_kind = dv.into_iter().next().and_then(|d| d.value);
        }
        let v = link
            .handshake_kind
            .as_ref()
            .and_then(|k| variant_like(k, n))
            .ok_or_else(|| {
                IoError::Device(format!(
                    "handshake {}: {n} does not fit the node's value type ({:?})",
                    target.node.text, link.handshake_kind
                ))
            })?;
        match link.session.write_value(&node, v).await {
            Ok(s) if s.is_good() => {
                DeviceStats::inc(&stats.requests_ok);
                Ok(())
            }
            Ok(s) => {
                DeviceStats::inc(&stats.exceptions);
                Err(IoError::Device(format!(
                    "handshake {}: server answered {}",
                    target.node.text,
                    status_name(s)
                )))
            }
            Err(e) => {
                DeviceStats::inc(&stats.link_errors);
                self.link = None;
                Err(IoError::Link(format!("handshake write: {e}")))
            }
        }
    }

    async fn close(&mut self) {
        if let Some(l) = self.link.take() {
            l.session.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_values_take_the_node_type() {
        assert_eq!(
            variant_like(&Variant::UInt16(0), 9999),
            Some(Variant::UInt16(9999))
        );
        assert_eq!(variant_like(&Variant::UInt16(0), 70_000), None);
        assert_eq!(
            variant_like(&Variant::Boolean(false), 1),
            Some(Variant::Boolean(true))
        );
        assert_eq!(
            variant_like(&Variant::Int32(0), -1),
            Some(Variant::Int32(-1))
        );
        assert_eq!(variant_like(&Variant::from("x"), 1), None);
    }

    #[test]
    fn bad_statuses_and_values_are_reasons() {
        let dv = opcua::types::DataValue {
            status: Some(StatusCode::BadNodeIdUnknown),
            ..Default::default()
        };
        assert_eq!(value(&dv, OpcType::Integer), Err("BadNodeIdUnknown".into()));
        let dv = opcua::types::DataValue::value_only(Variant::UInt16(7));
        assert_eq!(value(&dv, OpcType::Integer), Ok(Value::Int(7)));
    }
}
