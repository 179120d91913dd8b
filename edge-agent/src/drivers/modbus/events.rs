//! The Modbus binding of event capture ([`crate::drivers::events::EventIo`]): the trigger and
//! the field block are read with the planner's fewest requests and the tag decoder; the
//! handshake is written with FC5 (coil), FC6 (one register) or FC16 (several). Each event
//! definition of a TCP device has its own task and connection, so the tag polling is not
//! affected; on an RTU bus the bus loop polls the definitions between its units' cycles, on the
//! bus's one serial link.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::Slave;

use super::config::{Link, ModbusDevice, ModbusTag, RegisterKind};
use super::decode;
use super::error::LinkError;
use super::plan::{self, ReadRequest};
use super::transport::{self, Words, Write};
use crate::drivers::events::EventDef;
use crate::drivers::events::{IoError, Record};
use crate::drivers::stats::DeviceStats;
use crate::model::HandshakeValue;
use crate::model::{wire_value, Value};

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

/// One event definition on a Modbus device: what to read and write. It is bound to a link for
/// each poll ([`ModbusEvent::bind`]): its own TCP connection, or the serial link of the RTU bus
/// loop it runs in.
#[derive(Debug, Clone)]
pub struct ModbusEvent {
    dev: ModbusDevice,
    trigger: ModbusTag,
    fields: Vec<(String, ModbusTag)>,
    plan: EventPlan,
    stats: Arc<DeviceStats>,
}

/// A [`ModbusEvent`] bound to a link (implements [`crate::drivers::events::EventIo`]).
pub struct Bound<'a> {
    ev: &'a ModbusEvent,
    link: &'a mut Option<Context>,
}

/// A [`ModbusEvent`] with its own connection (TCP devices).
pub struct OwnLink {
    ev: ModbusEvent,
    link: Option<Context>,
}

impl ModbusEvent {
    /// The Modbus side of `def` on `dev`; `None` when a location is not a Modbus one (the
    /// loader rejects that).
    pub fn new(def: &EventDef, dev: &ModbusDevice, stats: Arc<DeviceStats>) -> Option<Self> {
        let fields = def
            .fields
            .iter()
            .map(|f| Some((f.name.clone(), f.source.modbus()?.clone())))
            .collect::<Option<Vec<_>>>()?;
        Some(ModbusEvent {
            dev: dev.clone(),
            trigger: def.trigger.source.modbus()?.clone(),
            fields,
            plan: EventPlan::new(def, dev)?,
            stats,
        })
    }

    /// Bind to `link` (opened on demand: TCP connect or serial port).
    pub fn bind<'a>(&'a self, link: &'a mut Option<Context>) -> Bound<'a> {
        Bound { ev: self, link }
    }

    /// With its own link (a task per definition on a TCP device).
    pub fn own_link(self) -> OwnLink {
        OwnLink {
            ev: self,
            link: None,
        }
    }
}

impl Bound<'_> {
    async fn ctx(&mut self) -> Result<&mut Context, IoError> {
        let dev = &self.ev.dev;
        if self.link.is_none() {
            let opened = match &dev.link {
                Link::Tcp { host, port } => {
                    transport::connect_tcp(host, *port, dev.unit, dev.timeout).await
                }
                Link::Rtu(s) => transport::open_rtu(s, dev.unit),
            };
            match opened {
                Ok(c) => *self.link = Some(c),
                Err(e) => {
                    DeviceStats::inc(&self.ev.stats.link_errors);
                    return Err(IoError::Link(e.to_string()));
                }
            }
        }
        let ctx = self
            .link
            .as_mut()
            .ok_or_else(|| IoError::Link("not connected".into()))?;
        // A shared RTU link serves several units.
        ctx.set_slave(Slave(dev.unit));
        Ok(ctx)
    }

    /// Count a request's outcome like the tag poller does; the two levels become the two
    /// `IoError` variants.
    fn note<T>(
        &mut self,
        what: String,
        t0: Instant,
        r: super::ModbusResult<T>,
    ) -> Result<T, IoError> {
        let stats = &self.ev.stats;
        let rtt = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        match r {
            Ok(Ok(v)) => {
                DeviceStats::inc(&stats.requests_ok);
                stats.rtt_us_sum.fetch_add(rtt, Relaxed);
                Ok(v)
            }
            Ok(Err(exc)) => {
                DeviceStats::inc(&stats.exceptions);
                stats.rtt_us_sum.fetch_add(rtt, Relaxed);
                Err(IoError::Device(format!("device answered {exc} to {what}")))
            }
            Err(e) => {
                DeviceStats::inc(match &e {
                    LinkError::Timeout(_) => &stats.timeouts,
                    LinkError::Protocol(_) => &stats.decode_errors,
                    _ => &stats.link_errors,
                });
                // A late or garbled answer must not be taken for the next one.
                *self.link = None;
                Err(IoError::Link(format!("{what}: {e}")))
            }
        }
    }

    async fn read(&mut self, req: &ReadRequest) -> Result<Words, IoError> {
        let timeout = self.ev.dev.timeout;
        let ctx = self.ctx().await?;
        let t0 = Instant::now();
        let r = transport::read(ctx, req, timeout).await;
        let what = format!("FC{} {}+{}", req.kind.function_code(), req.start, req.count);
        self.note(what, t0, r)
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

impl crate::drivers::events::EventIo for Bound<'_> {
    async fn read_trigger(&mut self) -> Result<u64, IoError> {
        let req = self.ev.plan.trigger.clone();
        let words = self.read(&req).await?;
        match decode_at(&words, req.start, &self.ev.trigger) {
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
        let ev = self.ev;
        let mut values: Vec<Option<Result<Value, String>>> = vec![None; ev.fields.len()];
        for req in &ev.plan.fields {
            if !ev.dev.pause.is_zero() {
                tokio::time::sleep(ev.dev.pause).await;
            }
            let words = self.read(req).await?;
            for &i in &req.tags {
                let (_, tag) = &ev.fields[i as usize];
                values[i as usize] =
                    Some(decode_at(&words, req.start, tag).map_err(|e| e.to_string()));
            }
        }
        for ((name, _), v) in ev.fields.iter().zip(values) {
            match v {
                Some(Ok(v)) => rec.fields.push((name.clone(), wire_value(v))),
                Some(Err(e)) => {
                    DeviceStats::inc(&ev.stats.decode_errors);
                    rec.bad.push((name.clone(), e))
                }
                None => rec.bad.push((name.clone(), "not read".into())),
            }
        }
        Ok(rec)
    }

    async fn write_handshake(&mut self, plc_seq: u64) -> Result<(), IoError> {
        let Some((target, value)) = self.ev.plan.handshake.clone() else {
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
        let timeout = self.ev.dev.timeout;
        let ctx = self.ctx().await?;
        let t0 = Instant::now();
        let r = transport::write(ctx, &w, timeout).await;
        let what = format!("FC{} write {}", w.function_code(), target.address);
        self.note(what, t0, r)
    }

    async fn close(&mut self) {
        // An RTU bus link belongs to the bus loop; only a TCP connection is closed.
        if matches!(self.ev.dev.link, Link::Tcp { .. }) {
            if let Some(mut c) = self.link.take() {
                let _ = c.disconnect().await;
            }
        }
    }
}

impl crate::drivers::events::EventIo for OwnLink {
    async fn read_trigger(&mut self) -> Result<u64, IoError> {
        self.ev.bind(&mut self.link).read_trigger().await
    }
    async fn read_record(&mut self) -> Result<Record, IoError> {
        self.ev.bind(&mut self.link).read_record().await
    }
    async fn write_handshake(&mut self, plc_seq: u64) -> Result<(), IoError> {
        self.ev.bind(&mut self.link).write_handshake(plc_seq).await
    }
    async fn close(&mut self) {
        if let Some(mut c) = self.link.take() {
            let _ = c.disconnect().await;
        }
    }
}
