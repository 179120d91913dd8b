//! The Modbus binding of event capture ([`crate::drivers::events::EventIo`]): the trigger and
//! the field block are read with the planner's fewest requests and the tag decoder; the
//! handshake is written with FC5 (coil), FC6 (one register) or FC16 (several). Each event
//! definition of a TCP device has its own connection, so the tag polling is not affected.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use flowsquare_wire::WireValue;
use tokio_modbus::client::{Client, Context};

use super::config::{Link, ModbusDevice, ModbusTag, RegisterKind};
use super::decode;
use super::error::LinkError;
use super::plan::{self, ReadRequest};
use super::transport::{self, Words, Write};
use crate::config::{EventDef, HandshakeValue};
use crate::drivers::events::{IoError, Record};
use crate::drivers::stats::DeviceStats;
use crate::model::Value;

/// The Modbus requests of one event definition (for `plan` and the binding).
#[derive(Debug, Clone)]
pub struct EventPlan {
    /// The trigger read.
    pub trigger: ReadRequest,
    /// The field-block reads (field index in `ReadRequest::tags`).
    pub fields: Vec<ReadRequest>,
    /// The handshake write target and type.
    pub handshake: Option<(ModbusTag, HandshakeValue)>,
}

impl EventPlan {
    /// Plan `def` on `dev`; `None` if a location is not a Modbus one.
    pub fn new(def: &EventDef, dev: &ModbusDevice) -> Option<EventPlan> {
        let limits = plan::Limits::from(dev);
        let t = def.trigger.source.modbus()?;
        let trigger = ReadRequest {
            kind: t.register,
            start: t.address,
            count: t.span().max(1),
            tags: vec![0],
        };
        let mut items = Vec::new();
        for (i, f) in def.fields.iter().enumerate() {
            let m = f.source.modbus()?;
            items.push(plan::Item {
                kind: m.register,
                start: m.address,
                len: m.span().max(1),
                tag: i as u32,
            });
        }
        let fields = plan::plan(&items, &limits);
        let handshake = match &def.handshake {
            Some(h) => Some((h.target.modbus()?.clone(), h.value)),
            None => None,
        };
        Some(EventPlan {
            trigger,
            fields,
            handshake,
        })
    }
}

/// One event definition on a Modbus TCP device.
pub struct ModbusEventIo {
    host: String,
    port: u16,
    dev: ModbusDevice,
    trigger: ModbusTag,
    fields: Vec<(String, ModbusTag)>,
    plan: EventPlan,
    link: Option<Context>,
    stats: Arc<DeviceStats>,
}

impl ModbusEventIo {
    /// The binding of `def` on `dev`; `None` when `dev` is not a TCP device or a location is
    /// not a Modbus one (the loader rejects both).
    pub fn new(def: &EventDef, dev: &ModbusDevice, stats: Arc<DeviceStats>) -> Option<Self> {
        let Link::Tcp { host, port } = &dev.link else {
            return None;
        };
        let fields = def
            .fields
            .iter()
            .map(|f| Some((f.name.clone(), f.source.modbus()?.clone())))
            .collect::<Option<Vec<_>>>()?;
        Some(ModbusEventIo {
            host: host.clone(),
            port: *port,
            dev: dev.clone(),
            trigger: def.trigger.source.modbus()?.clone(),
            fields,
            plan: EventPlan::new(def, dev)?,
            link: None,
            stats,
        })
    }

    async fn ctx(&mut self) -> Result<&mut Context, IoError> {
        if self.link.is_none() {
            match transport::connect_tcp(&self.host, self.port, self.dev.unit, self.dev.timeout)
                .await
            {
                Ok(c) => self.link = Some(c),
                Err(e) => {
                    DeviceStats::inc(&self.stats.link_errors);
                    return Err(IoError::Link(e.to_string()));
                }
            }
        }
        // Just set above when it was None.
        self.link
            .as_mut()
            .ok_or_else(|| IoError::Link("not connected".into()))
    }

    /// Count a request's outcome like the tag poller does; the two levels become the two
    /// `IoError` variants.
    fn note<T>(
        &mut self,
        what: String,
        t0: Instant,
        r: super::ModbusResult<T>,
    ) -> Result<T, IoError> {
        let rtt = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        match r {
            Ok(Ok(v)) => {
                DeviceStats::inc(&self.stats.requests_ok);
                self.stats.rtt_us_sum.fetch_add(rtt, Relaxed);
                Ok(v)
            }
            Ok(Err(exc)) => {
                DeviceStats::inc(&self.stats.exceptions);
                self.stats.rtt_us_sum.fetch_add(rtt, Relaxed);
                Err(IoError::Device(format!("device answered {exc} to {what}")))
            }
            Err(e) => {
                DeviceStats::inc(match &e {
                    LinkError::Timeout(_) => &self.stats.timeouts,
                    LinkError::Protocol(_) => &self.stats.decode_errors,
                    _ => &self.stats.link_errors,
                });
                // A late or garbled answer must not be taken for the next one.
                self.link = None;
                Err(IoError::Link(format!("{what}: {e}")))
            }
        }
    }

    async fn read(&mut self, req: &ReadRequest) -> Result<Words, IoError> {
        let timeout = self.dev.timeout;
        let ctx = self.ctx().await?;
        let t0 = Instant::now();
        let r = transport::read(ctx, req, timeout).await;
        let what = format!("FC{} {}+{}", req.kind.function_code(), req.start, req.count);
        self.note(what, t0, r)
    }
}

/// A decoded register value on the wire.
pub fn wire_value(v: Value) -> WireValue {
    match v {
        Value::Bool(b) => WireValue::Bool(b),
        Value::Int(i) => WireValue::Int(i),
        Value::UInt(u) => WireValue::UInt(u),
        Value::Float(f) => WireValue::Float(f),
        Value::Text(s) => WireValue::Text(s),
    }
}

fn decode_at(words: &Words, start: u16, tag: &ModbusTag) -> Result<Value, decode::DecodeError> {
    let off = usize::from(tag.address - start);
    match words {
        Words::Bits(b) => b
            .get(off)
            .map(|b| Value::Bool(*b))
            .ok_or(decode::DecodeError::Short {
                needed: off + 1,
                got: b.len(),
            }),
        Words::Registers(r) => decode::decode_tag(r.get(off..).unwrap_or(&[]), tag),
    }
}

impl crate::drivers::events::EventIo for ModbusEventIo {
    async fn read_trigger(&mut self) -> Result<u64, IoError> {
        let req = self.plan.trigger.clone();
        let words = self.read(&req).await?;
        match decode_at(&words, req.start, &self.trigger) {
            Ok(Value::Bool(b)) => Ok(u64::from(b)),
            Ok(Value::Int(i)) => Ok(i as u64),
            Ok(Value::UInt(u)) => Ok(u),
            Ok(other) => Err(IoError::Device(format!(
                "trigger decoded to {other:?}, not an integer"
            ))),
            Err(e) => Err(IoError::Device(format!("trigger: {e}"))),
        }
    }

    async fn read_record(&mut self) -> Result<Record, IoError> {
        let mut rec = Record::default();
        let mut values: Vec<Option<Result<Value, String>>> = vec![None; self.fields.len()];
        for req in self.plan.fields.clone() {
            if !self.dev.pause.is_zero() {
                tokio::time::sleep(self.dev.pause).await;
            }
            let words = self.read(&req).await?;
            for &i in &req.tags {
                let (_, tag) = &self.fields[i as usize];
                values[i as usize] =
                    Some(decode_at(&words, req.start, tag).map_err(|e| e.to_string()));
            }
        }
        for ((name, _), v) in self.fields.iter().zip(values) {
            match v {
                Some(Ok(v)) => rec.fields.push((name.clone(), wire_value(v))),
                Some(Err(e)) => {
                    DeviceStats::inc(&self.stats.decode_errors);
                    rec.bad.push((name.clone(), e))
                }
                None => rec.bad.push((name.clone(), "not read".into())),
            }
        }
        Ok(rec)
    }

    async fn write_handshake(&mut self, plc_seq: u64) -> Result<(), IoError> {
        let Some((target, value)) = self.plan.handshake.clone() else {
            return Ok(());
        };
        let w = match (target.register, value) {
            (RegisterKind::Coil, HandshakeValue::Bool(b)) => Write::Coil {
                address: target.address,
                value: b,
            },
            (RegisterKind::Coil, HandshakeValue::Int(n)) => Write::Coil {
                address: target.address,
                value: n != 0,
            },
            (RegisterKind::Coil, HandshakeValue::Seq) => Write::Coil {
                address: target.address,
                value: true,
            },
            (_, v) => {
                let n = match v {
                    HandshakeValue::Seq => plc_seq as i64,
                    HandshakeValue::Int(n) => n,
                    HandshakeValue::Bool(b) => i64::from(b),
                };
                let words = decode::encode_int(n, target.data_type, target.order)
                    .ok_or_else(|| IoError::Device("handshake target is not an integer".into()))?;
                Write::Registers {
                    address: target.address,
                    words,
                }
            }
        };
        let timeout = self.dev.timeout;
        let ctx = self.ctx().await?;
        let t0 = Instant::now();
        let r = transport::write(ctx, &w, timeout).await;
        let what = format!("FC{} write {}", w.function_code(), target.address);
        self.note(what, t0, r)
    }

    async fn close(&mut self) {
        if let Some(mut c) = self.link.take() {
            let _ = c.disconnect().await;
        }
    }
}
