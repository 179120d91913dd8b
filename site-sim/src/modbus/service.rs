//! Request handling: routing to a unit, faults, and execution against the register image.
//!
//! [`SimService`] implements tokio-modbus's [`Service`](tokio_modbus::server::Service), so it can
//! also be plugged into tokio-modbus's own server skeletons; the simulator's own serve loops
//! ([`crate::modbus::serve_tcp`], [`crate::modbus::serve_rtu`]) call
//! [`SimService::handle`] directly, which reports faults that the tokio-modbus API cannot
//! express (raw garbage, wrong unit id).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use super::faults::{garbage_pdu, nth, wrong_unit_id};
use super::frame::encode_response;
use super::simulator::{Simulator, Unit, WriteEvent};
use super::values::RegisterKind;

/// Which wire the service answers on (it decides what an unknown unit id gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP: an unknown unit id is answered with exception 0x0B
    /// (GatewayTargetDevice).
    Tcp,
    /// Modbus RTU: an unknown unit id is not answered (another device's business); unit 0 is
    /// broadcast (writes go to every unit, nobody answers) unless a unit 0 is configured.
    Rtu,
}

/// What to send back for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send nothing.
    NoReply,
    /// Send an answer.
    Reply(Reply),
}

/// An answer to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Unit id to put in the answer (differs from the request's under `wrong_unit_every`).
    pub unit_id: u8,
    /// Function code of the request.
    pub function: u8,
    /// Data or exception.
    pub result: Result<Response, ExceptionCode>,
    /// `Some(seed)`: replace the answer by garbage generated from `seed`
    /// (see [`crate::modbus::faults`]).
    pub garbage: Option<u64>,
}

/// Modbus request handler for a [`Simulator`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SimService {
    sim: Arc<Simulator>,
    transport: Transport,
}

const MAX_READ_BITS: u16 = 2000;
const MAX_READ_REGISTERS: u16 = 125;
const MAX_WRITE_BITS: u16 = 1968;
const MAX_WRITE_REGISTERS: u16 = 123;
const MAX_RW_WRITE_REGISTERS: u16 = 121;

/// Request → (table, first address, count, is write) spans, for exception rules.
fn spans(req: &Request<'_>) -> Vec<(RegisterKind, u16, u16, bool)> {
    use RegisterKind::*;
    let len = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    match req {
        Request::ReadCoils(a, q) => vec![(Coil, *a, *q, false)],
        Request::ReadDiscreteInputs(a, q) => vec![(Discrete, *a, *q, false)],
        Request::ReadHoldingRegisters(a, q) => vec![(Holding, *a, *q, false)],
        Request::ReadInputRegisters(a, q) => vec![(Input, *a, *q, false)],
        Request::WriteSingleCoil(a, _) => vec![(Coil, *a, 1, true)],
        Request::WriteMultipleCoils(a, v) => vec![(Coil, *a, len(v.len()), true)],
        Request::WriteSingleRegister(a, _) | Request::MaskWriteRegister(a, _, _) => {
            vec![(Holding, *a, 1, true)]
        }
        Request::WriteMultipleRegisters(a, v) => vec![(Holding, *a, len(v.len()), true)],
        Request::ReadWriteMultipleRegisters(ra, rq, wa, v) => {
            vec![
                (Holding, *wa, len(v.len()), true),
                (Holding, *ra, *rq, false),
            ]
        }
        _ => Vec::new(),
    }
}

fn check_count(count: usize, max: u16) -> Result<u16, ExceptionCode> {
    match u16::try_from(count) {
        Ok(c) if (1..=max).contains(&c) => Ok(c),
        _ => Err(ExceptionCode::IllegalDataValue),
    }
}

fn read_words(
    unit: &Unit,
    kind: RegisterKind,
    addr: u16,
    count: u16,
) -> Result<Vec<u16>, ExceptionCode> {
    unit.image
        .read(kind, addr, count, unit.elapsed(), unit.is_strict())
        .ok_or(ExceptionCode::IllegalDataAddress)
}

fn write_words(
    unit: &Unit,
    kind: RegisterKind,
    addr: u16,
    values: &[u16],
) -> Result<(), ExceptionCode> {
    if unit.image.write(kind, addr, values, unit.is_strict()) {
        unit.note_write(WriteEvent {
            unit: unit.id(),
            kind,
            address: addr,
            values: values.to_vec(),
        });
        Ok(())
    } else {
        Err(ExceptionCode::IllegalDataAddress)
    }
}

/// Execute a request on a unit's register image (no faults).
pub(crate) fn execute(unit: &Unit, req: &Request<'_>) -> Result<Response, ExceptionCode> {
    use RegisterKind::*;
    let bits = |w: Vec<u16>| w.into_iter().map(|x| x != 0).collect::<Vec<bool>>();
    match req {
        Request::ReadCoils(a, q) => Ok(Response::ReadCoils(bits(read_words(
            unit,
            Coil,
            *a,
            check_count(usize::from(*q), MAX_READ_BITS)?,
        )?))),
        Request::ReadDiscreteInputs(a, q) => Ok(Response::ReadDiscreteInputs(bits(read_words(
            unit,
            Discrete,
            *a,
            check_count(usize::from(*q), MAX_READ_BITS)?,
        )?))),
        Request::ReadHoldingRegisters(a, q) => Ok(Response::ReadHoldingRegisters(read_words(
            unit,
            Holding,
            *a,
            check_count(usize::from(*q), MAX_READ_REGISTERS)?,
        )?)),
        Request::ReadInputRegisters(a, q) => Ok(Response::ReadInputRegisters(read_words(
            unit,
            Input,
            *a,
            check_count(usize::from(*q), MAX_READ_REGISTERS)?,
        )?)),
        Request::WriteSingleCoil(a, v) => {
            write_words(unit, Coil, *a, &[u16::from(*v)])?;
            Ok(Response::WriteSingleCoil(*a, *v))
        }
        Request::WriteMultipleCoils(a, v) => {
            let q = check_count(v.len(), MAX_WRITE_BITS)?;
            let words: Vec<u16> = v.iter().map(|&b| u16::from(b)).collect();
            write_words(unit, Coil, *a, &words)?;
            Ok(Response::WriteMultipleCoils(*a, q))
        }
        Request::WriteSingleRegister(a, v) => {
            write_words(unit, Holding, *a, &[*v])?;
            Ok(Response::WriteSingleRegister(*a, *v))
        }
        Request::WriteMultipleRegisters(a, v) => {
            let q = check_count(v.len(), MAX_WRITE_REGISTERS)?;
            write_words(unit, Holding, *a, v)?;
            Ok(Response::WriteMultipleRegisters(*a, q))
        }
        Request::MaskWriteRegister(a, and, or) => {
            let current = read_words(unit, Holding, *a, 1)?
                .first()
                .copied()
                .unwrap_or(0);
            let new = (current & and) | (or & !and);
            write_words(unit, Holding, *a, &[new])?;
            Ok(Response::MaskWriteRegister(*a, *and, *or))
        }
        Request::ReadWriteMultipleRegisters(ra, rq, wa, v) => {
            let rq = check_count(usize::from(*rq), MAX_READ_REGISTERS)?;
            check_count(v.len(), MAX_RW_WRITE_REGISTERS)?;
            // Validate the read before writing, so that a failing request changes nothing.
            read_words(unit, Holding, *ra, rq)?;
            write_words(unit, Holding, *wa, v)?;
            Ok(Response::ReadWriteMultipleRegisters(read_words(
                unit, Holding, *ra, rq,
            )?))
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}

fn is_write(req: &Request<'_>) -> bool {
    matches!(
        req,
        Request::WriteSingleCoil(..)
            | Request::WriteMultipleCoils(..)
            | Request::WriteSingleRegister(..)
            | Request::WriteMultipleRegisters(..)
            | Request::MaskWriteRegister(..)
            | Request::ReadWriteMultipleRegisters(..)
    )
}

impl SimService {
    /// A service answering for `sim` on `transport`.
    pub fn new(sim: Arc<Simulator>, transport: Transport) -> Self {
        SimService { sim, transport }
    }

    /// The simulator served.
    pub fn simulator(&self) -> &Arc<Simulator> {
        &self.sim
    }

    /// The transport answered on.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Handle one decoded request for `unit_id`, applying the unit's faults (including the
    /// `delay`, awaited here).
    pub async fn handle(&self, unit_id: u8, request: Request<'static>) -> Outcome {
        let fc = request.function_code().value();
        self.handle_decoded(unit_id, fc, Ok(request)).await
    }

    /// Like [`SimService::handle`], for a request that may have failed to decode (it is then
    /// answered with the given exception, after routing and faults).
    pub(crate) async fn handle_decoded(
        &self,
        unit_id: u8,
        function: u8,
        request: Result<Request<'static>, ExceptionCode>,
    ) -> Outcome {
        let Some(unit) = self.sim.unit(unit_id) else {
            return match self.transport {
                Transport::Tcp => Outcome::Reply(Reply {
                    unit_id,
                    function,
                    result: Err(ExceptionCode::GatewayTargetDevice),
                    garbage: None,
                }),
                Transport::Rtu => {
                    if unit_id == 0 {
                        self.broadcast(request.ok());
                    }
                    Outcome::NoReply
                }
            };
        };
        unit.note_request();
        let (silent, delay) = unit.faults().read(|f| (f.silent, f.delay));
        if silent {
            unit.counters.silenced.fetch_add(1, Ordering::Relaxed);
            return Outcome::NoReply;
        }
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
        let result = request.and_then(|req| {
            let rule = unit.faults().read(|f| {
                spans(&req)
                    .into_iter()
                    .find_map(|(kind, a, q, w)| f.exception_for(kind, a, q, w))
            });
            match rule {
                Some(code) => Err(ExceptionCode::new(code)),
                None => execute(unit, &req),
            }
        });
        let c = &unit.counters;
        let n = c.answers.fetch_add(1, Ordering::Relaxed) + 1;
        if result.is_err() {
            c.exceptions.fetch_add(1, Ordering::Relaxed);
        }
        let (garbage_every, wrong_every) = unit
            .faults()
            .read(|f| (f.garbage_every, f.wrong_unit_every));
        let mut reply = Reply {
            unit_id,
            function,
            result,
            garbage: None,
        };
        if nth(garbage_every, n) {
            c.garbage.fetch_add(1, Ordering::Relaxed);
            reply.garbage = Some(u64::from(unit_id) << 56 ^ n);
        } else if nth(wrong_every, n) {
            c.wrong_unit.fetch_add(1, Ordering::Relaxed);
            reply.unit_id = wrong_unit_id(unit_id);
        }
        Outcome::Reply(reply)
    }

    /// RTU broadcast (unit 0): writes go to every unit that is not silent; nobody answers.
    fn broadcast(&self, request: Option<Request<'static>>) {
        let Some(req) = request.filter(is_write) else {
            return;
        };
        for unit in self.sim.units() {
            unit.note_request();
            if !unit.faults().read(|f| f.silent) {
                // Broadcast results are never reported back.
                let _ = execute(unit, &req);
            }
        }
    }
}

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            match this.handle(req.slave, req.request).await {
                Outcome::NoReply => Ok(None),
                Outcome::Reply(Reply {
                    garbage: Some(seed),
                    function,
                    result,
                    ..
                }) => {
                    // Same length as the real PDU, function code 0x00 (see `faults`).
                    let len = encode_response(function, &result).len();
                    let pdu = garbage_pdu(len, seed);
                    let body = pdu.get(1..).unwrap_or_default().to_vec();
                    Ok(Some(Response::Custom(0x00, body.into())))
                }
                // A wrong unit id cannot be expressed here: the reply is sent as is.
                Outcome::Reply(reply) => reply.result.map(Some),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::faults::ExceptionRule;
    use std::borrow::Cow;

    fn sim() -> Arc<Simulator> {
        Arc::new(
            Simulator::from_toml_str(
                r#"
                [[unit]]
                id = 1
                [[unit.register]]
                kind = "holding"
                address = 0
                type = "u16"
                value = 0x00F0
                [[unit]]
                id = 2
                strict = true
                [[unit.register]]
                kind = "holding"
                address = 10
                type = "u32"
                value = 7
                "#,
            )
            .unwrap(),
        )
    }

    fn result(o: Outcome) -> Result<Response, ExceptionCode> {
        match o {
            Outcome::Reply(r) => r.result,
            Outcome::NoReply => panic!("no reply"),
        }
    }

    #[tokio::test]
    async fn routes_validates_and_executes() {
        let s = SimService::new(sim(), Transport::Tcp);
        assert_eq!(
            result(s.handle(9, Request::ReadHoldingRegisters(0, 1)).await),
            Err(ExceptionCode::GatewayTargetDevice)
        );
        assert_eq!(
            result(s.handle(1, Request::ReadHoldingRegisters(0, 0)).await),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            result(s.handle(1, Request::ReadHoldingRegisters(0, 126)).await),
            Err(ExceptionCode::IllegalDataValue)
        );
        assert_eq!(
            result(s.handle(1, Request::ReadHoldingRegisters(65_535, 2)).await),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            result(s.handle(2, Request::ReadHoldingRegisters(10, 3)).await),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            result(s.handle(2, Request::ReadHoldingRegisters(10, 2)).await),
            Ok(Response::ReadHoldingRegisters(vec![0, 7]))
        );
        assert_eq!(
            result(s.handle(2, Request::WriteSingleRegister(12, 1)).await),
            Err(ExceptionCode::IllegalDataAddress)
        );
        // Mask write: (0x00F0 & 0x0F0F) | (0x3000 & !0x0F0F) = 0x3000
        assert_eq!(
            result(
                s.handle(1, Request::MaskWriteRegister(0, 0x0F0F, 0x3000))
                    .await
            ),
            Ok(Response::MaskWriteRegister(0, 0x0F0F, 0x3000))
        );
        assert_eq!(
            s.simulator()
                .unit(1)
                .unwrap()
                .words(RegisterKind::Holding, 0, 1),
            [0x3000]
        );
        assert_eq!(
            result(
                s.handle(
                    1,
                    Request::ReadWriteMultipleRegisters(0, 2, 1, Cow::Owned(vec![5]))
                )
                .await
            ),
            Ok(Response::ReadWriteMultipleRegisters(vec![0x3000, 5]))
        );
        assert_eq!(
            result(s.handle(1, Request::ReportServerId).await),
            Err(ExceptionCode::IllegalFunction)
        );
        assert_eq!(s.simulator().unit(1).unwrap().stats().writes, 2);
    }

    #[tokio::test]
    async fn faults_apply() {
        let sim = sim();
        let s = SimService::new(sim.clone(), Transport::Rtu);
        let f = sim.faults(1).unwrap();
        assert_eq!(
            s.handle(9, Request::ReadHoldingRegisters(0, 1)).await,
            Outcome::NoReply
        );
        f.set_silent(true);
        assert_eq!(
            s.handle(1, Request::ReadHoldingRegisters(0, 1)).await,
            Outcome::NoReply
        );
        f.set_silent(false);
        f.add_exception(ExceptionRule::new(4, Some(RegisterKind::Holding), 0, 0));
        assert_eq!(
            result(s.handle(1, Request::ReadHoldingRegisters(0, 1)).await),
            Err(ExceptionCode::ServerDeviceFailure)
        );
        // Rules are for reads unless `writes`.
        assert!(result(s.handle(1, Request::WriteSingleRegister(0, 1)).await).is_ok());
        f.clear();
        f.set_wrong_unit_every(2);
        f.set_garbage_every(3);
        let mut ids = Vec::new();
        let mut garbage = Vec::new();
        for _ in 0..6 {
            let Outcome::Reply(r) = s.handle(1, Request::ReadHoldingRegisters(0, 1)).await else {
                panic!("no reply");
            };
            ids.push(r.unit_id);
            garbage.push(r.garbage.is_some());
        }
        // Answers 3..=8 of the unit (2 before): garbage on multiples of 3, wrong unit on
        // multiples of 2 unless garbage already hit.
        assert_eq!(ids, [1, 2, 1, 1, 1, 2]);
        assert_eq!(garbage, [true, false, false, true, false, false]);
        let st = sim.unit(1).unwrap().stats();
        assert_eq!(
            (st.requests, st.answers, st.silenced, st.exceptions),
            (9, 8, 1, 1)
        );
        assert_eq!((st.garbage, st.wrong_unit), (2, 2));
    }

    #[tokio::test]
    async fn rtu_broadcast_writes_every_unit_silently() {
        let sim = sim();
        let s = SimService::new(sim.clone(), Transport::Rtu);
        let mut rx = sim.unit(1).unwrap().subscribe_writes();
        assert_eq!(
            s.handle(0, Request::WriteSingleRegister(10, 3)).await,
            Outcome::NoReply
        );
        assert_eq!(
            sim.unit(1).unwrap().words(RegisterKind::Holding, 10, 1),
            [3]
        );
        assert_eq!(
            sim.unit(2).unwrap().words(RegisterKind::Holding, 10, 1),
            [3]
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            WriteEvent {
                unit: 1,
                kind: RegisterKind::Holding,
                address: 10,
                values: vec![3]
            }
        );
    }
}
