//! Modbus keys of a tag map: the `modbus-tcp` / `modbus-rtu` device keys and the Modbus tag keys.
//! Raw (as written, with `address_base`) structs are deserialized with `deny_unknown_fields`;
//! `resolve_*` turns them into the driver's types, reporting every problem to the diagnostics.

use serde::Deserialize;
use std::time::Duration;

pub use crate::drivers::serial::{Parity, SerialSettings};
use crate::settings::duration;

/// Default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Modbus limit for FC3/FC4 (and the default per-request maximum).
pub const MAX_REGISTERS_PER_REQUEST: u16 = 125;
/// Modbus limit for FC1/FC2 (and the default per-request maximum).
pub const MAX_BITS_PER_REQUEST: u16 = 2000;
/// Default estimated device turnaround, used only to estimate cycle time.
pub const DEFAULT_RESPONSE_TIME: Duration = Duration::from_millis(20);

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegisterKind {
    /// Read/write bits, FC1.
    #[serde(alias = "coils")]
    Coil,
    /// Read-only bits, FC2.
    #[serde(
        alias = "discrete-input",
        alias = "discrete_input",
        alias = "input-status"
    )]
    Discrete,
    /// Read-only 16-bit registers, FC4.
    #[serde(alias = "input-register", alias = "input_register")]
    Input,
    /// Read/write 16-bit registers, FC3.
    #[serde(alias = "holding-register", alias = "holding_register")]
    Holding,
}

impl RegisterKind {
    /// Bits (coils, discrete inputs) rather than 16-bit registers?
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }
    /// Modbus read function code.
    pub fn function_code(self) -> u8 {
        match self {
            RegisterKind::Coil => 1,
            RegisterKind::Discrete => 2,
            RegisterKind::Holding => 3,
            RegisterKind::Input => 4,
        }
    }
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Input => "input",
            RegisterKind::Holding => "holding",
        }
    }
    /// Parse the tag-map spelling (also used by `probe --register holding:100`).
    pub fn parse(s: &str) -> Option<Self> {
        serde::de::Deserialize::deserialize(serde::de::value::StrDeserializer::<
            serde::de::value::Error,
        >::new(s))
        .ok()
    }
}

/// Data types a tag can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// Coil/discrete bit, or register != 0.
    Bool,
    /// One bit (`bit = 0..15`, 0 = least significant) of a 16-bit register.
    Bit,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single, two registers.
    #[serde(alias = "float", alias = "float32", alias = "real")]
    F32,
    /// IEEE 754 double, four registers.
    #[serde(alias = "double", alias = "float64", alias = "lreal")]
    F64,
    /// Fixed-length ASCII string, `length` bytes, two per register.
    String,
}

impl DataType {
    /// Registers (or bits, for coil/discrete) the type occupies.
    pub fn span(self, length: u16) -> u16 {
        match self {
            DataType::Bool | DataType::Bit | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => length.div_ceil(2),
        }
    }
    /// Numeric (scale/offset/deadband/totalizer apply)?
    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::Bit | DataType::String)
    }
    /// Counter range of an unsigned type (for default totalizer rollover).
    pub fn unsigned_range(self) -> Option<f64> {
        match self {
            DataType::U16 => Some(65_536.0),
            DataType::U32 => Some(4_294_967_296.0),
            DataType::U64 => Some(18_446_744_073_709_551_616.0),
            _ => None,
        }
    }
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Bit => "bit",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        }
    }
}

/// Word and byte order of multi-register values, named by where bytes A B C D of the big-endian
/// value sit in the registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Order {
    /// Big-endian, high word first: registers `[AB, CD]` (Modbus default).
    #[default]
    #[serde(alias = "big-endian", alias = "be", alias = "abcd", alias = "ABCDEFGH")]
    ABCD,
    /// Word swap, low word first: `[CD, AB]` (a.k.a. little-endian word order, "mid-little").
    #[serde(
        alias = "word-swap",
        alias = "cdab",
        alias = "little-endian-word-swap",
        alias = "GHEFCDAB"
    )]
    CDAB,
    /// Byte swap within each word: `[BA, DC]` (a.k.a. "mid-big").
    #[serde(alias = "byte-swap", alias = "badc", alias = "BADCFEHG")]
    BADC,
    /// Little-endian: `[DC, BA]`.
    #[serde(
        alias = "little-endian",
        alias = "le",
        alias = "dcba",
        alias = "HGFEDCBA"
    )]
    DCBA,
}

impl Order {
    /// All orders, for `probe`.
    pub const ALL: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];
    /// Are the words in reverse order (low word first)?
    pub fn word_swap(self) -> bool {
        matches!(self, Order::CDAB | Order::DCBA)
    }
    /// Are the bytes within each word swapped?
    pub fn byte_swap(self) -> bool {
        matches!(self, Order::BADC | Order::DCBA)
    }
    /// Tag-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Order::ABCD => "ABCD",
            Order::CDAB => "CDAB",
            Order::BADC => "BADC",
            Order::DCBA => "DCBA",
        }
    }
}

/// Keys of a `protocol = "modbus-tcp"` device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpDevice {
    /// Host name or IP address of the device or gateway.
    pub host: String,
    /// TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Unit id (slave id) behind the address; 0–255 (many TCP devices ignore it).
    #[serde(default = "default_unit")]
    pub unit: u16,
}

/// Keys of a `protocol = "modbus-rtu"` device (one unit on a serial bus).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRtuDevice {
    /// Serial device path, e.g. `/dev/ttyUSB0`; devices with the same path share one bus.
    pub serial: String,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Unit id (slave id) on the bus, 1–247.
    pub unit: u16,
}

/// Request shaping keys, shared by TCP and RTU devices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShaping {
    /// Time to wait for one answer.
    #[serde(default = "default_timeout", deserialize_with = "duration::de")]
    pub timeout: Duration,
    /// Most registers one request may read (1–125).
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// Most coils/discrete inputs one request may read (1–2000).
    #[serde(default = "default_max_bits")]
    pub max_bits: u16,
    /// Unused registers a request may bridge to merge two tags (0 = only adjacent tags merge).
    #[serde(default)]
    pub max_gap: u16,
    /// Unused bits a request may bridge to merge two coil/discrete tags.
    #[serde(default)]
    pub max_bit_gap: u16,
    /// Pause between two requests to this device (slow serial devices need one).
    #[serde(default, deserialize_with = "duration::de")]
    pub pause: Duration,
    /// 0 if `address` is the protocol address, 1 if it is the 1-based register number.
    #[serde(default)]
    pub address_base: u8,
    /// Expected device turnaround; used only to estimate cycle time in `check` and `plan`.
    #[serde(default = "default_response_time", deserialize_with = "duration::de")]
    pub response_time: Duration,
}

impl Default for RawShaping {
    fn default() -> Self {
        RawShaping {
            timeout: default_timeout(),
            max_registers: default_max_registers(),
            max_bits: default_max_bits(),
            max_gap: 0,
            max_bit_gap: 0,
            pause: Duration::ZERO,
            address_base: 0,
            response_time: default_response_time(),
        }
    }
}

fn default_port() -> u16 {
    502
}
fn default_unit() -> u16 {
    1
}
fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_max_registers() -> u16 {
    MAX_REGISTERS_PER_REQUEST
}
fn default_max_bits() -> u16 {
    MAX_BITS_PER_REQUEST
}
fn default_response_time() -> Duration {
    DEFAULT_RESPONSE_TIME
}

/// Modbus keys of a tag.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbusTag {
    /// `coil`, `discrete`, `input` or `holding`.
    pub register: RegisterKind,
    /// Register (or bit) address, in the device's `address_base`.
    pub address: u32,
    /// Data type; default `u16` on registers, `bool` on coils/discrete inputs.
    #[serde(default, rename = "type")]
    pub data_type: Option<DataType>,
    /// For `type = "bit"`: bit number 0–15, 0 = least significant.
    #[serde(default)]
    pub bit: Option<u8>,
    /// For `type = "string"`: length in bytes.
    #[serde(default)]
    pub length: Option<u16>,
    /// Word/byte order: ABCD (default), CDAB, BADC, DCBA, or an alias.
    #[serde(default)]
    pub order: Order,
    /// Engineering value = raw × scale + offset.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default)]
    pub offset: f64,
}

fn default_scale() -> f64 {
    1.0
}

/// How the device is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Modbus TCP.
    Tcp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Modbus RTU on a serial bus.
    Rtu(SerialSettings),
}

/// A resolved Modbus device.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusDevice {
    /// TCP address or serial bus.
    pub link: Link,
    /// Unit id.
    pub unit: u8,
    /// Request timeout.
    pub timeout: Duration,
    /// Per-request register limit.
    pub max_registers: u16,
    /// Per-request bit limit.
    pub max_bits: u16,
    /// Registers a request may bridge.
    pub max_gap: u16,
    /// Bits a request may bridge.
    pub max_bit_gap: u16,
    /// Pause between requests.
    pub pause: Duration,
    /// Address base the tags were written in (kept for display).
    pub address_base: u8,
    /// Expected turnaround, for estimates.
    pub response_time: Duration,
}

/// A resolved Modbus tag (addresses are protocol addresses, 0-based).
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusTag {
    /// Data table.
    pub register: RegisterKind,
    /// 0-based protocol address.
    pub address: u16,
    /// Data type.
    pub data_type: DataType,
    /// Bit number for `bit`.
    pub bit: u8,
    /// String length in bytes.
    pub length: u16,
    /// Word/byte order.
    pub order: Order,
    /// Scale.
    pub scale: f64,
    /// Offset.
    pub offset: f64,
}

impl ModbusTag {
    /// Registers (or bits) the tag occupies.
    pub fn span(&self) -> u16 {
        self.data_type.span(self.length)
    }
}

pub use crate::settings::parse::Spans;

/// Resolve a raw TCP or RTU device, reporting problems as `(span key, message)`.
pub fn resolve_device(
    link: Link,
    unit: u16,
    s: &RawShaping,
    problems: &mut Vec<(&'static str, String)>,
) -> ModbusDevice {
    let is_rtu = matches!(link, Link::Rtu(_));
    if is_rtu && !(1..=247).contains(&unit) {
        problems.push((
            "unit",
            format!(
                "RTU unit id {unit} out of range 1..=247 (0 is broadcast, which never answers)"
            ),
        ));
    } else if unit > 255 {
        problems.push(("unit", format!("unit id {unit} out of range 0..=255")));
    }
    if let Link::Rtu(ser) = &link {
        if !(7..=8).contains(&ser.data_bits) {
            problems.push((
                "data_bits",
                format!("data_bits {} must be 7 or 8", ser.data_bits),
            ));
        }
        if !(1..=2).contains(&ser.stop_bits) {
            problems.push((
                "stop_bits",
                format!("stop_bits {} must be 1 or 2", ser.stop_bits),
            ));
        }
        if ser.baud < 300 || ser.baud > 4_000_000 {
            problems.push((
                "baud",
                format!("baud {} out of range 300..=4000000", ser.baud),
            ));
        }
    }
    if s.timeout.is_zero() {
        problems.push(("timeout", "timeout must be greater than zero".into()));
    }
    if !(1..=MAX_REGISTERS_PER_REQUEST).contains(&s.max_registers) {
        problems.push((
            "max_registers",
            format!(
                "max_registers {} out of range 1..=125 (the Modbus limit)",
                s.max_registers
            ),
        ));
    }
    if !(1..=MAX_BITS_PER_REQUEST).contains(&s.max_bits) {
        problems.push((
            "max_bits",
            format!(
                "max_bits {} out of range 1..=2000 (the Modbus limit)",
                s.max_bits
            ),
        ));
    }
    if s.address_base > 1 {
        problems.push((
            "address_base",
            format!(
                "address_base {} must be 0 (protocol addresses) or 1 (register numbers)",
                s.address_base
            ),
        ));
    }
    ModbusDevice {
        link,
        unit: u8::try_from(unit).unwrap_or(1),
        timeout: s.timeout,
        max_registers: s.max_registers.clamp(1, MAX_REGISTERS_PER_REQUEST),
        max_bits: s.max_bits.clamp(1, MAX_BITS_PER_REQUEST),
        max_gap: s.max_gap,
        max_bit_gap: s.max_bit_gap,
        pause: s.pause,
        address_base: s.address_base.min(1),
        response_time: s.response_time,
    }
}

/// Resolve a raw tag against its device, reporting problems as `(span key, message)`.
pub fn resolve_tag(
    raw: &RawModbusTag,
    dev: &ModbusDevice,
    problems: &mut Vec<(&'static str, String)>,
) -> ModbusTag {
    let data_type = raw.data_type.unwrap_or(if raw.register.is_bit() {
        DataType::Bool
    } else {
        DataType::U16
    });
    if raw.register.is_bit() && data_type != DataType::Bool {
        problems.push((
            "type",
            format!(
                "type {} does not fit {} (a {} holds one bit): use type = \"bool\"",
                data_type.as_str(),
                raw.register.as_str(),
                raw.register.as_str()
            ),
        ));
    }
    let mut bit = 0;
    match (data_type, raw.bit) {
        (DataType::Bit, Some(b)) if b <= 15 => bit = b,
        (DataType::Bit, Some(b)) => problems.push(("bit", format!("bit {b} out of range 0..=15"))),
        (DataType::Bit, None) => {
            problems.push(("type", "type = \"bit\" needs `bit = 0..15`".into()))
        }
        (_, Some(_)) => problems.push((
            "bit",
            format!(
                "`bit` applies only to type = \"bit\", not {}",
                data_type.as_str()
            ),
        )),
        _ => {}
    }
    let mut length = 0;
    match (data_type, raw.length) {
        (DataType::String, Some(l)) if (1..=250).contains(&l) => length = l,
        (DataType::String, Some(l)) => problems.push((
            "length",
            format!("string length {l} out of range 1..=250 bytes"),
        )),
        (DataType::String, None) => {
            problems.push(("type", "type = \"string\" needs `length` (bytes)".into()))
        }
        (_, Some(_)) => problems.push((
            "length",
            format!(
                "`length` applies only to type = \"string\", not {}",
                data_type.as_str()
            ),
        )),
        _ => {}
    }
    let span = data_type.span(length).max(1);
    let base = u32::from(dev.address_base);
    let limit = if raw.register.is_bit() {
        dev.max_bits
    } else {
        dev.max_registers
    };
    if span > limit {
        problems.push((
            "type",
            format!(
                "{} spans {span} registers, more than max_registers = {limit} of its device",
                data_type.as_str()
            ),
        ));
    }
    let mut address = 0u16;
    if raw.address < base {
        problems.push(("address", format!("address {} is below address_base = {base}: with 1-based register numbers the first register is 1", raw.address)));
    } else {
        let proto = raw.address - base;
        let last = proto + u32::from(span) - 1;
        if last > 65_535 {
            problems.push((
                "address",
                format!(
                    "address {} out of range: a {} at this address ends at protocol address {last}, past 65535",
                    raw.address,
                    data_type.as_str()
                ),
            ));
        } else {
            address = proto as u16;
        }
    }
    if !raw.scale.is_finite() || raw.scale == 0.0 {
        problems.push((
            "scale",
            format!("scale {} must be a finite, non-zero number", raw.scale),
        ));
    }
    if !raw.offset.is_finite() {
        problems.push(("offset", "offset must be finite".into()));
    }
    if !data_type.is_numeric() && (raw.scale != 1.0 || raw.offset != 0.0) {
        problems.push((
            "scale",
            format!("scale/offset do not apply to type {}", data_type.as_str()),
        ));
    }
    ModbusTag {
        register: raw.register,
        address,
        data_type,
        bit,
        length,
        order: raw.order,
        scale: raw.scale,
        offset: raw.offset,
    }
}

/// The Modbus part of the tag-map loader (`protocol = "modbus-tcp"` / `"modbus-rtu"`).
pub struct Protocol;

impl crate::drivers::registry::ProtocolConfig for Protocol {
    fn check(
        &self,
        devices: &[crate::drivers::Device],
        tags: &[crate::drivers::Tag],
        device_spans: &[crate::settings::parse::Spans],
        tag_spans: &[crate::settings::parse::Spans],
        diags: &mut crate::settings::Diagnostics,
    ) {
        for (di, d) in devices.iter().enumerate() {
            super::checks::overlaps(d, tags, tag_spans, diags);
            super::checks::cycle_time(di, d, tags, device_spans, diags);
        }
        super::checks::rtu_buses(devices, tags, device_spans, diags);
    }

    fn device_keys(&self, protocol: &str) -> Vec<&'static [&'static str]> {
        use crate::settings::parse::fields_of;
        let link = if protocol == "modbus-rtu" {
            fields_of::<RawRtuDevice>()
        } else {
            fields_of::<RawTcpDevice>()
        };
        vec![link, fields_of::<RawShaping>()]
    }

    fn device_subtables(&self) -> &'static [&'static str] {
        &["event"]
    }

    fn tag_keys(&self, _dev: &crate::drivers::DeviceDriver) -> Vec<&'static [&'static str]> {
        vec![crate::settings::parse::fields_of::<RawModbusTag>()]
    }

    fn device(
        &self,
        protocol: &str,
        table: &crate::settings::parse::STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut crate::settings::Diagnostics,
    ) -> crate::drivers::DeviceDriver {
        use crate::settings::parse::part;
        let shaping: Option<RawShaping> = part(table, subject, diags);
        let link_unit = if protocol == "modbus-tcp" {
            part::<RawTcpDevice>(table, subject, diags).map(|r| {
                (
                    Link::Tcp {
                        host: r.host,
                        port: r.port,
                    },
                    r.unit,
                )
            })
        } else {
            part::<RawRtuDevice>(table, subject, diags).map(|r| {
                (
                    Link::Rtu(SerialSettings {
                        path: r.serial,
                        baud: r.baud,
                        parity: r.parity,
                        data_bits: r.data_bits,
                        stop_bits: r.stop_bits,
                    }),
                    r.unit,
                )
            })
        };
        let shaping = shaping.unwrap_or_default();
        let (link, unit) = link_unit.unwrap_or((
            Link::Tcp {
                host: String::new(),
                port: 502,
            },
            1,
        ));
        let mut problems = Vec::new();
        let dev = resolve_device(link, unit, &shaping, &mut problems);
        for (key, msg) in problems {
            diags.error(spans.of(key), subject, msg);
        }
        crate::drivers::DeviceDriver::Modbus(dev)
    }

    fn tag(
        &self,
        dev: &crate::drivers::DeviceDriver,
        table: &crate::settings::parse::STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut crate::settings::Diagnostics,
    ) -> Option<crate::drivers::TagSource> {
        let dev = dev.modbus()?;
        let raw: RawModbusTag = crate::settings::parse::part(table, subject, diags)?;
        let mut problems = Vec::new();
        let mt = resolve_tag(&raw, dev, &mut problems);
        for (key, msg) in problems {
            diags.error(spans.of(key), subject, msg);
        }
        Some(crate::drivers::TagSource::Modbus(mt))
    }
}
