//! [`Simulator`]: the units of one simulated device (or serial bus), built from a register map,
//! and [`Unit`]: one unit's registers, faults and statistics, inspectable and changeable from
//! tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::config::MapConfig;
use super::error::SimError;
use super::faults::{FaultHandle, Faults};
use super::registers::RegisterImage;
use super::values::{decode, DataType, RegisterKind, Value, WordOrder};
use crate::clock::Clock;

/// Capacity of each unit's write-event channel; slower subscribers see `Lagged`.
const WRITE_EVENT_CAPACITY: usize = 1024;

/// Counters of one unit since the simulator started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitStats {
    /// Requests addressed to the unit (including silenced and dropped ones).
    pub requests: u64,
    /// Answers sent (data, exceptions, garbage and wrong-unit answers).
    pub answers: u64,
    /// Exception answers among them.
    pub exceptions: u64,
    /// Requests not answered because the unit was silent.
    pub silenced: u64,
    /// Answers replaced by garbage.
    pub garbage: u64,
    /// Answers sent with a wrong unit id.
    pub wrong_unit: u64,
    /// TCP connections closed by `drop_connection_every`.
    pub dropped_connections: u64,
    /// Successful write requests (FC5/6/15/16/22/23).
    pub writes: u64,
}

/// A successful write by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteEvent {
    /// Unit written to.
    pub unit: u8,
    /// Table (`Coil` or `Holding`).
    pub kind: RegisterKind,
    /// First address written.
    pub address: u16,
    /// Values written (coils as 0/1).
    pub values: Vec<u16>,
}

/// Description of one mapped value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointInfo {
    /// Name from the map.
    pub name: Option<String>,
    /// Table.
    pub kind: RegisterKind,
    /// First address.
    pub address: u16,
    /// Type.
    pub data_type: DataType,
    /// Word order.
    pub order: WordOrder,
    /// String length in bytes (0 for other types).
    pub length: u16,
    /// Registers (or bits) covered.
    pub width: u16,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) answers: AtomicU64,
    pub(crate) exceptions: AtomicU64,
    pub(crate) silenced: AtomicU64,
    pub(crate) garbage: AtomicU64,
    pub(crate) wrong_unit: AtomicU64,
    pub(crate) dropped_connections: AtomicU64,
    pub(crate) writes: AtomicU64,
}

/// One simulated unit (slave id).
#[derive(Debug)]
pub struct Unit {
    id: u8,
    name: Option<String>,
    strict: bool,
    pub(crate) image: RegisterImage,
    faults: FaultHandle,
    clock: Clock,
    pub(crate) counters: Counters,
    requests: watch::Sender<u64>,
    writes: broadcast::Sender<WriteEvent>,
}

impl Unit {
    /// Unit id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Name from the map.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Does the unit answer IllegalDataAddress for unmapped addresses?
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// The unit's faults (a cheap, shared handle: changes apply from the next request).
    pub fn faults(&self) -> FaultHandle {
        self.faults.clone()
    }

    /// Current counters.
    pub fn stats(&self) -> UnitStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UnitStats {
            requests: *self.requests.borrow(),
            answers: get(&c.answers),
            exceptions: get(&c.exceptions),
            silenced: get(&c.silenced),
            garbage: get(&c.garbage),
            wrong_unit: get(&c.wrong_unit),
            dropped_connections: get(&c.dropped_connections),
            writes: get(&c.writes),
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        *self.requests.borrow()
    }

    /// Wait until the unit has received at least `n` requests; false on timeout.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.requests.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|&c| c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Subscribe to the writes clients make from now on.
    pub fn subscribe_writes(&self) -> broadcast::Receiver<WriteEvent> {
        self.writes.subscribe()
    }

    /// The mapped values, by table then address.
    pub fn points(&self) -> Vec<PointInfo> {
        RegisterKind::ALL
            .iter()
            .flat_map(|&kind| {
                self.image.points(kind).map(move |p| PointInfo {
                    name: p.name.clone(),
                    kind,
                    address: p.address,
                    data_type: p.data_type,
                    order: p.order,
                    length: p.length,
                    width: p.width,
                })
            })
            .collect()
    }

    /// Current registers (bits as 0/1) as a client would read them now, ignoring faults and
    /// strictness (unmapped addresses read 0; addresses past 65535 are cut off).
    pub fn words(&self, kind: RegisterKind, address: u16, count: u16) -> Vec<u16> {
        let count = count.min(u16::try_from(0x1_0000 - u32::from(address)).unwrap_or(u16::MAX));
        self.image
            .read(kind, address, count, self.clock.elapsed(), false)
            .unwrap_or_default()
    }

    /// Current bits (any table: registers are true when non-zero).
    pub fn bits(&self, kind: RegisterKind, address: u16, count: u16) -> Vec<bool> {
        self.words(kind, address, count)
            .into_iter()
            .map(|w| w != 0)
            .collect()
    }

    /// Override registers (any table, mapped or not), as if a client had written them.
    pub fn set_words(
        &self,
        kind: RegisterKind,
        address: u16,
        values: &[u16],
    ) -> Result<(), SimError> {
        if self.image.write(kind, address, values, false) {
            Ok(())
        } else {
            Err(self.bad_value(
                kind,
                address,
                format!("{} values do not fit below address 65536", values.len()),
            ))
        }
    }

    /// Override bits (any table).
    pub fn set_bits(
        &self,
        kind: RegisterKind,
        address: u16,
        values: &[bool],
    ) -> Result<(), SimError> {
        let words: Vec<u16> = values.iter().map(|&b| u16::from(b)).collect();
        self.set_words(kind, address, &words)
    }

    /// The current value of the point mapped at `address`, decoded with its type and order.
    pub fn value(&self, kind: RegisterKind, address: u16) -> Result<Value, SimError> {
        let p = self
            .image
            .point_at(kind, address)
            .ok_or(SimError::UnmappedRegister {
                unit: self.id,
                kind: kind.as_str(),
                address,
            })?;
        let words = self.words(kind, address, p.width);
        let v = if kind.is_bit() {
            words.first().map(|&w| Value::Bool(w != 0))
        } else {
            decode(p.data_type, p.order, &words, p.length)
        };
        v.ok_or_else(|| self.bad_value(kind, address, "register image too short".into()))
    }

    /// Override the point mapped at `address` with `value`, encoded with its type and order.
    pub fn set_value(
        &self,
        kind: RegisterKind,
        address: u16,
        value: &Value,
    ) -> Result<(), SimError> {
        let p = self
            .image
            .point_at(kind, address)
            .ok_or(SimError::UnmappedRegister {
                unit: self.id,
                kind: kind.as_str(),
                address,
            })?;
        let words = p
            .encode(value)
            .map_err(|reason| self.bad_value(kind, address, reason))?;
        self.set_words(kind, address, &words)
    }

    /// Forget every written value: the map (constants and generators) shows through again.
    pub fn clear_writes(&self) {
        self.image.clear_overrides();
    }

    fn bad_value(&self, kind: RegisterKind, address: u16, reason: String) -> SimError {
        SimError::BadValue {
            unit: self.id,
            kind: kind.as_str(),
            address,
            reason,
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    pub(crate) fn note_request(&self) {
        self.requests.send_modify(|c| *c += 1);
    }

    pub(crate) fn note_write(&self, event: WriteEvent) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        // No subscriber is fine.
        let _ = self.writes.send(event);
    }
}

/// The units of one simulated device (TCP listener) or serial bus, built from a register map.
#[derive(Debug)]
pub struct Simulator {
    units: BTreeMap<u8, Arc<Unit>>,
    clock: Clock,
}

impl Simulator {
    /// Build from a parsed map with a real-time clock; every problem of the map is reported.
    pub fn new(map: &MapConfig) -> Result<Self, SimError> {
        Self::with_clock(map, Clock::system())
    }

    /// Build with a given clock (e.g. [`Clock::manual`] for deterministic tests).
    pub fn with_clock(map: &MapConfig, clock: Clock) -> Result<Self, SimError> {
        let mut problems = Vec::new();
        let mut units = BTreeMap::new();
        if map.units.is_empty() {
            problems.push("the map has no [[unit]]".to_string());
        }
        for u in &map.units {
            if units.contains_key(&u.id) {
                problems.push(format!("unit {} is defined twice", u.id));
                continue;
            }
            let faults =
                Faults::from_config(&u.faults).map_err(|e| format!("unit {}, faults: {e}", u.id));
            let image = RegisterImage::build(u);
            let (faults, image) = match (faults, image) {
                (Ok(f), Ok(i)) => (f, i),
                (f, i) => {
                    problems.extend(f.err());
                    problems.extend(i.err().unwrap_or_default());
                    continue;
                }
            };
            let (writes, _) = broadcast::channel(WRITE_EVENT_CAPACITY);
            units.insert(
                u.id,
                Arc::new(Unit {
                    id: u.id,
                    name: u.name.clone(),
                    strict: u.strict,
                    image,
                    faults: FaultHandle::new(faults),
                    clock: clock.clone(),
                    counters: Counters::default(),
                    requests: watch::Sender::new(0),
                    writes,
                }),
            );
        }
        if problems.is_empty() {
            Ok(Simulator { units, clock })
        } else {
            Err(SimError::InvalidMap(format!(
                "\n  {}",
                problems.join("\n  ")
            )))
        }
    }

    /// Parse and build from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, SimError> {
        Self::new(&MapConfig::from_toml_str(text)?)
    }

    /// Read, parse and build from a map file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SimError> {
        Self::new(&MapConfig::load(path)?)
    }

    /// A unit by id.
    pub fn unit(&self, id: u8) -> Option<&Arc<Unit>> {
        self.units.get(&id)
    }

    /// All units, by id.
    pub fn units(&self) -> impl Iterator<Item = &Arc<Unit>> {
        self.units.values()
    }

    /// The fault handle of a unit.
    pub fn faults(&self, id: u8) -> Option<FaultHandle> {
        self.unit(id).map(|u| u.faults())
    }

    /// The simulator's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
        [[unit]]
        id = 1
        [[unit.register]]
        kind = "holding"
        address = 0
        type = "f32"
        order = "CDAB"
        value = 12.5
        [[unit.register]]
        kind = "input"
        address = 0
        type = "u32"
        order = "CDAB"
        generator = { kind = "counter", rate_per_s = 10.0, rollover = 1000.0 }
        [[unit.register]]
        kind = "coil"
        address = 2
        value = true
    "#;

    #[test]
    fn values_follow_the_clock_and_overrides() {
        let clock = Clock::manual();
        let sim =
            Simulator::with_clock(&MapConfig::from_toml_str(MAP).unwrap(), clock.clone()).unwrap();
        let u = sim.unit(1).unwrap();
        assert_eq!(u.words(RegisterKind::Holding, 0, 2), [0x0000, 0x4148]);
        assert_eq!(
            u.value(RegisterKind::Holding, 0).unwrap(),
            Value::Float(12.5)
        );
        clock.set(Duration::from_millis(12_345));
        // 123.45 floored to 123.
        assert_eq!(u.words(RegisterKind::Input, 0, 2), [123, 0]);
        clock.set(Duration::from_secs(101));
        assert_eq!(u.value(RegisterKind::Input, 0).unwrap(), Value::Int(10));
        assert_eq!(u.bits(RegisterKind::Coil, 1, 3), [false, true, false]);
        u.set_value(RegisterKind::Holding, 0, &Value::Float(-1.0))
            .unwrap();
        assert_eq!(
            u.value(RegisterKind::Holding, 0).unwrap(),
            Value::Float(-1.0)
        );
        assert!(u
            .set_value(RegisterKind::Holding, 0, &Value::Text("x".into()))
            .is_err());
        assert!(matches!(
            u.value(RegisterKind::Holding, 1),
            Err(SimError::UnmappedRegister { address: 1, .. })
        ));
        assert!(u.set_words(RegisterKind::Holding, 65_535, &[1, 2]).is_err());
        assert_eq!(u.words(RegisterKind::Holding, 65_534, 10).len(), 2);
        u.clear_writes();
        assert_eq!(
            u.value(RegisterKind::Holding, 0).unwrap(),
            Value::Float(12.5)
        );
        assert_eq!(u.points().len(), 3);
    }

    #[test]
    fn map_level_problems() {
        let err = Simulator::from_toml_str("").unwrap_err().to_string();
        assert!(err.contains("no [[unit]]"), "{err}");
        let err = Simulator::from_toml_str("[[unit]]\nid = 1\n[[unit]]\nid = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unit 1 is defined twice"), "{err}");
        let err = Simulator::from_toml_str(
            "[[unit]]\nid = 3\n[unit.faults]\nexception = { code = 0, from = 1 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unit 3, faults: exception code 0"), "{err}");
    }
}
