//! The register map file: which units a simulated device serves, what each register holds, and
//! which faults each unit injects. `config/sim/modbus-demo.toml` documents every key by
//! example.
//!
//! ```toml
//! [[unit]]
//! id = 1
//!
//! [[unit.register]]
//! kind = "holding"
//! address = 0
//! type = "f32"
//! order = "CDAB"
//! generator = { kind = "sine", amplitude = 2.0, period = "60s", offset = 20.0 }
//!
//! [unit.faults]
//! delay = "200ms"
//! exceptions = [{ code = 2, kind = "holding", from = 100, to = 110 }]
//! ```
//!
//! Every table rejects unknown keys, so a typo is an error rather than a silently ignored
//! setting.

use serde::Deserialize;
use std::path::Path;

use super::error::SimError;
use super::values::{DataType, RegisterKind, WordOrder};
use crate::duration::HumanDuration;

/// A whole register map: the units (slave ids) one simulated device or serial bus serves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// `[[unit]]` tables, one per unit id; at least one.
    #[serde(rename = "unit", default)]
    pub units: Vec<UnitConfig>,
}

impl MapConfig {
    /// Parse a register map from TOML text (syntax and key names only; [`crate::modbus::Simulator::new`]
    /// checks the contents).
    pub fn from_toml_str(text: &str) -> Result<Self, SimError> {
        toml::from_str(text).map_err(|source| SimError::ParseMap { path: None, source })
    }

    /// Read and parse a register map file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SimError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ReadMap {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| SimError::ParseMap {
            path: Some(path.to_path_buf()),
            source,
        })
    }
}

/// One unit (slave id): its registers, strictness and faults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitConfig {
    /// Unit id (slave id) this unit answers to, 1–247 on RTU (0 is broadcast there), 0–255 on
    /// TCP; unique within the map.
    pub id: u8,
    /// Free-text name, shown in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// When true, any read or write touching an unmapped address is answered with exception
    /// 2 (IllegalDataAddress); when false (default) unmapped addresses read as 0 and accept
    /// writes.
    #[serde(default = "default_strict")]
    pub strict: bool,
    /// Faults injected by this unit (`[unit.faults]`); none by default.
    #[serde(default)]
    pub faults: FaultConfig,
    /// `[[unit.register]]` tables: the mapped values.
    #[serde(rename = "register", default)]
    pub registers: Vec<RegisterConfig>,
    /// `[unit.gantry]`: a gantry batch controller writing batch records on a timer (see
    /// [`crate::modbus::gantry`] for the record layout).
    #[serde(default)]
    pub gantry: Option<super::gantry::GantryConfig>,
}

fn default_strict() -> bool {
    false
}

/// One mapped value: a bit, a register, or a run of registers holding a multi-register type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// Free-text name (e.g. the tag it simulates), shown in logs and `gen-map` output.
    #[serde(default)]
    pub name: Option<String>,
    /// Data table: `coil`, `discrete`, `input` or `holding`.
    pub kind: RegisterKind,
    /// 0-based protocol address of the first register (or bit).
    pub address: u16,
    /// Value type: `bool` (default on coils/discretes), `u16` (default on registers), `i16`,
    /// `u32`, `i32`, `u64`, `i64`, `f32`, `f64`, `string`. Coils and discretes hold `bool` only.
    #[serde(default, rename = "type")]
    pub data_type: Option<DataType>,
    /// Word/byte order of the value: `ABCD` (default), `CDAB`, `BADC`, `DCBA`.
    #[serde(default = "default_order")]
    pub order: WordOrder,
    /// Constant initial value: a number, a boolean, or a string for `type = "string"`.
    /// Default 0 / false / empty string. Not allowed together with a non-constant generator.
    #[serde(default)]
    pub value: Option<ConstValue>,
    /// For `type = "string"`: length in bytes (registers = ceil(length / 2)); default: the
    /// length of `value`.
    #[serde(default)]
    pub length: Option<u16>,
    /// A time-dependent value instead of the constant `value`.
    #[serde(default)]
    pub generator: Option<GeneratorConfig>,
}

fn default_order() -> WordOrder {
    WordOrder::ABCD
}

/// A constant as written in the map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConstValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (for `type = "string"`).
    Text(String),
}

/// A generated value, a function of the time `t` since the simulator started.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GeneratorConfig {
    /// Always `value`.
    Constant(ConstantGenerator),
    /// `min`, `min + step`, … up to `max`, one step per `every`, then back to `min`.
    Ramp(RampGenerator),
    /// `offset + amplitude · sin(2π t / period)`.
    Sine(SineGenerator),
    /// `start + rate_per_s · t`, wrapping to 0 at `rollover`; integer types are floored.
    Counter(CounterGenerator),
    /// A deterministic random walk: every `every`, move by a pseudo-random amount in
    /// `[-step, step]` (from `seed`), clamped to `[min, max]`.
    RandomWalk(RandomWalkGenerator),
}

/// `kind = "constant"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstantGenerator {
    /// The value.
    pub value: f64,
}

/// `kind = "ramp"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampGenerator {
    /// Increment per tick (> 0); default 1.
    #[serde(default = "default_ramp_step")]
    pub step: f64,
    /// Tick period; default `"1s"`.
    #[serde(default = "default_every")]
    pub every: HumanDuration,
    /// First value, and the value after wrapping; default 0.
    #[serde(default = "default_min")]
    pub min: f64,
    /// Last value before wrapping to `min`; default 100.
    #[serde(default = "default_max")]
    pub max: f64,
}

/// `kind = "sine"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SineGenerator {
    /// Peak deviation from `offset`; default 1.
    #[serde(default = "default_amplitude")]
    pub amplitude: f64,
    /// Time for one full wave; default `"60s"`.
    #[serde(default = "default_period")]
    pub period: HumanDuration,
    /// Centre value (the value at t = 0); default 0.
    #[serde(default = "default_offset")]
    pub offset: f64,
}

/// `kind = "counter"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterGenerator {
    /// Increase per second; default 1.
    #[serde(default = "default_rate")]
    pub rate_per_s: f64,
    /// Value at which the counter wraps to 0 (e.g. 1000000 for a 6-digit totalizer); default:
    /// none (integer types then saturate at their maximum).
    #[serde(default)]
    pub rollover: Option<f64>,
    /// Value at t = 0; default 0.
    #[serde(default = "default_counter_start")]
    pub start: f64,
}

/// `kind = "random_walk"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomWalkGenerator {
    /// Largest move per tick (> 0); default 1.
    #[serde(default = "default_walk_step")]
    pub step: f64,
    /// Lower clamp; default 0.
    #[serde(default = "default_min")]
    pub min: f64,
    /// Upper clamp; default 100.
    #[serde(default = "default_max")]
    pub max: f64,
    /// Seed of the pseudo-random sequence: the same seed gives the same walk; default 0.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Tick period (at least 1ms); default `"1s"`.
    #[serde(default = "default_every")]
    pub every: HumanDuration,
    /// Value at t = 0; default the middle of `[min, max]`.
    #[serde(default)]
    pub start: Option<f64>,
}

fn default_ramp_step() -> f64 {
    1.0
}
fn default_walk_step() -> f64 {
    1.0
}
fn default_every() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}
fn default_min() -> f64 {
    0.0
}
fn default_max() -> f64 {
    100.0
}
fn default_amplitude() -> f64 {
    1.0
}
fn default_period() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_offset() -> f64 {
    0.0
}
fn default_rate() -> f64 {
    1.0
}
fn default_counter_start() -> f64 {
    0.0
}
fn default_seed() -> u64 {
    0
}

/// Faults a unit injects (`[unit.faults]`). The same settings can be changed at run time
/// through a [`crate::modbus::FaultHandle`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Never answer (the request is read and dropped: the client times out).
    #[serde(default)]
    pub silent: bool,
    /// Wait this long before answering, e.g. `"200ms"`.
    #[serde(default)]
    pub delay: Option<HumanDuration>,
    /// One exception range (shorthand for a one-element `exceptions`).
    #[serde(default)]
    pub exception: Option<ExceptionConfig>,
    /// Exception ranges: requests touching one are answered with its exception code.
    #[serde(default)]
    pub exceptions: Vec<ExceptionConfig>,
    /// TCP only: close the connection on every Nth request of a connection, without executing
    /// or answering it (0 = never).
    #[serde(default)]
    pub drop_connection_every: u32,
    /// Replace every Nth answer of this unit with garbage bytes (0 = never). See
    /// [`crate::modbus::faults`] for exactly what is sent.
    #[serde(default)]
    pub garbage_every: u32,
    /// Send every Nth answer of this unit with a wrong unit id (id + 1, skipping 0) (0 = never).
    #[serde(default)]
    pub wrong_unit_every: u32,
}

/// An address range answered with a Modbus exception.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionConfig {
    /// Exception code, 1–255 (1 IllegalFunction, 2 IllegalDataAddress, 3 IllegalDataValue,
    /// 4 ServerDeviceFailure, 6 ServerDeviceBusy, 0x0B GatewayTargetDevice, …).
    pub code: u8,
    /// Table the range is in; default: all four tables.
    #[serde(default)]
    pub kind: Option<RegisterKind>,
    /// First address of the range (0-based).
    pub from: u16,
    /// Last address of the range, inclusive; default `from`.
    #[serde(default)]
    pub to: Option<u16>,
    /// Also answer the exception for writes touching the range (default: reads only).
    #[serde(default)]
    pub writes: bool,
}

impl RegisterConfig {
    /// The effective data type (the default depends on the table).
    pub fn effective_type(&self) -> DataType {
        self.data_type.unwrap_or(if self.kind.is_bit() {
            DataType::Bool
        } else {
            DataType::U16
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_the_documented_shape() {
        let m = MapConfig::from_toml_str(
            r#"
            [[unit]]
            id = 1
            [unit.faults]
            delay = "200ms"
            exception = { code = 2, kind = "holding", from = 100, to = 110 }
            exceptions = [{ code = 4, from = 7 }]
            garbage_every = 3
            [[unit.register]]
            kind = "holding"
            address = 0
            type = "f32"
            order = "CDAB"
            value = 12.5
            [[unit.register]]
            kind = "input"
            address = 10
            type = "u32"
            generator = { kind = "ramp", step = 2.0, every = "500ms", min = 0.0, max = 10.0 }
            [[unit.register]]
            kind = "holding"
            address = 20
            type = "string"
            length = 8
            value = "TK-101"
            [[unit.register]]
            kind = "coil"
            address = 0
            value = true
            "#,
        )
        .unwrap();
        let u = &m.units[0];
        assert_eq!(u.id, 1);
        assert!(!u.strict);
        assert_eq!(
            u.faults.delay,
            Some(HumanDuration(Duration::from_millis(200)))
        );
        assert_eq!(u.faults.exception.as_ref().unwrap().to, Some(110));
        assert_eq!(u.faults.exceptions[0].kind, None);
        assert_eq!(u.registers[0].order, WordOrder::CDAB);
        assert_eq!(u.registers[0].value, Some(ConstValue::Float(12.5)));
        assert_eq!(
            u.registers[1].generator,
            Some(GeneratorConfig::Ramp(RampGenerator {
                step: 2.0,
                every: HumanDuration(Duration::from_millis(500)),
                min: 0.0,
                max: 10.0
            }))
        );
        assert_eq!(
            u.registers[2].value,
            Some(ConstValue::Text("TK-101".into()))
        );
        assert_eq!(u.registers[3].effective_type(), DataType::Bool);
        assert_eq!(u.registers[0].effective_type(), DataType::F32);
    }

    fn parse_err(text: &str) -> String {
        MapConfig::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn rejects_unknown_keys_everywhere() {
        assert!(parse_err("[[unit]]\nid = 1\ncolour = 3\n").contains("unknown field `colour`"));
        assert!(parse_err("bogus = 1\n").contains("unknown field `bogus`"));
        assert!(parse_err(
            "[[unit]]\nid = 1\n[[unit.register]]\nkind = \"holding\"\naddress = 0\nadress = 1\n"
        )
        .contains("unknown field `adress`"));
        assert!(
            parse_err("[[unit]]\nid = 1\n[unit.faults]\nsilence = true\n")
                .contains("unknown field `silence`")
        );
        assert!(parse_err(
            "[[unit]]\nid = 1\n[[unit.register]]\nkind = \"holding\"\naddress = 0\n\
             generator = { kind = \"ramp\", stepp = 1.0 }\n"
        )
        .contains("unknown field `stepp`"));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse_err("[[unit]]\nid = 300\n").contains("invalid value"));
        assert!(parse_err(
            "[[unit]]\nid = 1\n[[unit.register]]\nkind = \"register\"\naddress = 0\n"
        )
        .contains("unknown variant `register`"));
        assert!(parse_err(
            "[[unit]]\nid = 1\n[[unit.register]]\nkind = \"holding\"\naddress = 0\ntype = \"f16\"\n"
        )
        .contains("unknown variant `f16`"));
        assert!(parse_err(
            "[[unit]]\nid = 1\n[[unit.register]]\nkind = \"holding\"\naddress = 0\norder = \"ACBD\"\n"
        )
        .contains("unknown variant `ACBD`"));
        assert!(
            parse_err("[[unit]]\nid = 1\n[unit.faults]\ndelay = \"5\"\n")
                .contains("unit is required")
        );
        assert!(parse_err(
            "[[unit]]\nid = 1\n[[unit.register]]\nkind = \"holding\"\naddress = 0\n\
             generator = { kind = \"zigzag\" }\n"
        )
        .contains("unknown variant `zigzag`"));
    }

    #[test]
    fn load_reports_the_path() {
        let err = MapConfig::load("/nonexistent/map.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/map.toml"), "{err}");
    }
}
