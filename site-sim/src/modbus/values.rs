//! Register kinds, data types, word orders, and the encoding of typed values into 16-bit
//! registers (and back).
//!
//! Encoding conventions (the edge agent decodes with exactly these):
//!
//! * Numbers are first written big-endian: a 32-bit value is bytes `A B C D`, a 64-bit value
//!   `A B C D E F G H`.
//! * `ABCD` puts them into registers in that order: `[AB, CD]` (`[AB, CD, EF, GH]`).
//! * `CDAB` reverses the word order: `[CD, AB]` (`[GH, EF, CD, AB]`).
//! * `BADC` swaps the bytes within each word: `[BA, DC]` (`[BA, DC, FE, HG]`).
//! * `DCBA` does both: `[DC, BA]` (`[HG, FE, DC, BA]`).
//! * 16-bit values have one word, so only the byte swap (`BADC`, `DCBA`) changes them.
//! * Strings carry two bytes per register, the first character in the high byte; `BADC` and
//!   `DCBA` swap the bytes within each register, `CDAB` is the same as `ABCD` (no word
//!   reversal). Strings shorter than `length` are padded with NUL bytes.
//! * A `bool` in a register table is one register holding 0 or 1.

use serde::Deserialize;
use std::fmt;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    /// Read/write bits (FC1 read, FC5/FC15 write).
    #[serde(alias = "coils")]
    Coil,
    /// Read-only bits (FC2).
    #[serde(alias = "discrete-input", alias = "discrete_input")]
    Discrete,
    /// Read-only 16-bit registers (FC4).
    #[serde(alias = "input-register", alias = "input_register")]
    Input,
    /// Read/write 16-bit registers (FC3 read, FC6/FC16 write).
    #[serde(alias = "holding-register", alias = "holding_register")]
    Holding,
}

impl RegisterKind {
    /// All four tables.
    pub const ALL: [RegisterKind; 4] = [
        RegisterKind::Coil,
        RegisterKind::Discrete,
        RegisterKind::Input,
        RegisterKind::Holding,
    ];

    /// Bits (coils, discrete inputs) rather than 16-bit registers?
    pub fn is_bit(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::Discrete)
    }

    /// Register-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::Discrete => "discrete",
            RegisterKind::Input => "input",
            RegisterKind::Holding => "holding",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            RegisterKind::Coil => 0,
            RegisterKind::Discrete => 1,
            RegisterKind::Input => 2,
            RegisterKind::Holding => 3,
        }
    }
}

impl fmt::Display for RegisterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Type of the value a register (or a run of registers) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// One bit (coil/discrete), or one register holding 0/1.
    Bool,
    /// Unsigned 16-bit, one register.
    U16,
    /// Signed 16-bit, one register.
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single precision, two registers.
    #[serde(alias = "float", alias = "float32", alias = "real")]
    F32,
    /// IEEE 754 double precision, four registers.
    #[serde(alias = "double", alias = "float64", alias = "lreal")]
    F64,
    /// Fixed-length byte string, `length` bytes, two per register.
    String,
}

impl DataType {
    /// Registers (or bits) a value of this type occupies; `length` is the string length in
    /// bytes and matters only for strings.
    pub fn register_count(self, length: u16) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => length.div_ceil(2),
        }
    }

    /// Integer type (generated values are rounded)?
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U16
                | DataType::I16
                | DataType::U32
                | DataType::I32
                | DataType::U64
                | DataType::I64
        )
    }

    /// Register-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
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

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Word and byte order of a multi-register value, named by where the bytes `A B C D` of the
/// big-endian value end up (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum WordOrder {
    /// Big-endian, high word first: `[AB, CD]` (the Modbus default).
    #[default]
    #[serde(alias = "abcd", alias = "big-endian", alias = "be")]
    ABCD,
    /// Word swap, low word first: `[CD, AB]`.
    #[serde(alias = "cdab", alias = "word-swap")]
    CDAB,
    /// Byte swap within each word: `[BA, DC]`.
    #[serde(alias = "badc", alias = "byte-swap")]
    BADC,
    /// Little-endian: `[DC, BA]`.
    #[serde(alias = "dcba", alias = "little-endian", alias = "le")]
    DCBA,
}

impl WordOrder {
    /// All four orders.
    pub const ALL: [WordOrder; 4] = [
        WordOrder::ABCD,
        WordOrder::CDAB,
        WordOrder::BADC,
        WordOrder::DCBA,
    ];

    /// Low word first?
    pub fn word_swap(self) -> bool {
        matches!(self, WordOrder::CDAB | WordOrder::DCBA)
    }

    /// Bytes swapped within each word?
    pub fn byte_swap(self) -> bool {
        matches!(self, WordOrder::BADC | WordOrder::DCBA)
    }

    /// Register-map spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WordOrder::ABCD => "ABCD",
            WordOrder::CDAB => "CDAB",
            WordOrder::BADC => "BADC",
            WordOrder::DCBA => "DCBA",
        }
    }
}

impl fmt::Display for WordOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed value, before encoding or after decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer (used for `u64` values above `i64::MAX`).
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// A byte string (strings are NUL-padded on encoding; trailing NULs are stripped on
    /// decoding).
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl Value {
    /// The value as an exact integer, if it is one (floats must be integral).
    fn as_integer(&self) -> Option<i128> {
        match self {
            Value::Bool(b) => Some(i128::from(*b)),
            Value::Int(i) => Some(i128::from(*i)),
            Value::UInt(u) => Some(i128::from(*u)),
            // 1e30 is far outside every supported integer range but inside i128.
            Value::Float(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e30 => {
                Some(*x as i128)
            }
            Value::Float(_) | Value::Text(_) => None,
        }
    }

    /// The value as a float, if it is numeric.
    fn as_float(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(x) => Some(*x),
            Value::Text(_) => None,
        }
    }

    /// Convert a generated (continuous) value to the register type: integers are rounded to
    /// the nearest integer (or floored, for counters) and saturated to the type's range,
    /// booleans are true when the rounded value is non-zero.
    pub fn from_generated(ty: DataType, x: f64, floor: bool) -> Value {
        let r = if floor { x.floor() } else { x.round() };
        // `as` casts from f64 saturate at the target's bounds and map NaN to 0.
        match ty {
            DataType::Bool => Value::Bool(r != 0.0 && !r.is_nan()),
            DataType::U16 => Value::Int(i64::from(r as u16)),
            DataType::I16 => Value::Int(i64::from(r as i16)),
            DataType::U32 => Value::Int(i64::from(r as u32)),
            DataType::I32 => Value::Int(i64::from(r as i32)),
            DataType::U64 => Value::UInt(r as u64),
            DataType::I64 => Value::Int(r as i64),
            DataType::F32 | DataType::F64 => Value::Float(x),
            DataType::String => Value::Text(format!("{x}")),
        }
    }
}

/// Put big-endian bytes into registers according to `order` (strings: see the module docs).
pub fn order_words(be_bytes: &[u8], order: WordOrder, is_string: bool) -> Vec<u16> {
    let mut words: Vec<u16> = be_bytes
        .chunks(2)
        .map(|c| {
            // `chunks` never yields an empty slice.
            let hi = c[0];
            let lo = c.get(1).copied().unwrap_or(0);
            if order.byte_swap() {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if order.word_swap() && !is_string {
        words.reverse();
    }
    words
}

/// Inverse of [`order_words`]: registers back to big-endian bytes.
pub fn words_to_be_bytes(words: &[u16], order: WordOrder, is_string: bool) -> Vec<u8> {
    let mut words = words.to_vec();
    if order.word_swap() && !is_string {
        words.reverse();
    }
    words
        .iter()
        .flat_map(|w| {
            let [hi, lo] = w.to_be_bytes();
            if order.byte_swap() {
                [lo, hi]
            } else {
                [hi, lo]
            }
        })
        .collect()
}

fn int_in<T: TryFrom<i128>>(value: &Value, ty: DataType) -> Result<T, String> {
    let i = value
        .as_integer()
        .ok_or_else(|| format!("value {value} is not an integer, as type {ty} needs"))?;
    T::try_from(i).map_err(|_| format!("value {value} is out of range for type {ty}"))
}

/// Encode `value` as `ty` in `order`; `length` is the string length in bytes (ignored for
/// other types). Errors say why the value does not fit.
pub fn encode(
    ty: DataType,
    order: WordOrder,
    value: &Value,
    length: u16,
) -> Result<Vec<u16>, String> {
    let bytes: Vec<u8> = match ty {
        DataType::Bool => {
            let b = match value {
                Value::Bool(b) => *b,
                other => match other.as_integer() {
                    Some(0) => false,
                    Some(1) => true,
                    _ => {
                        return Err(format!(
                            "value {value} is not a boolean (true/false or 0/1)"
                        ))
                    }
                },
            };
            u16::from(b).to_be_bytes().to_vec()
        }
        DataType::U16 => int_in::<u16>(value, ty)?.to_be_bytes().to_vec(),
        DataType::I16 => int_in::<i16>(value, ty)?.to_be_bytes().to_vec(),
        DataType::U32 => int_in::<u32>(value, ty)?.to_be_bytes().to_vec(),
        DataType::I32 => int_in::<i32>(value, ty)?.to_be_bytes().to_vec(),
        DataType::U64 => int_in::<u64>(value, ty)?.to_be_bytes().to_vec(),
        DataType::I64 => int_in::<i64>(value, ty)?.to_be_bytes().to_vec(),
        DataType::F32 => {
            let x = value
                .as_float()
                .ok_or_else(|| format!("value {value} is not a number"))?;
            if x.is_finite() && x.abs() > f64::from(f32::MAX) {
                return Err(format!("value {value} is out of range for type f32"));
            }
            (x as f32).to_be_bytes().to_vec()
        }
        DataType::F64 => value
            .as_float()
            .ok_or_else(|| format!("value {value} is not a number"))?
            .to_be_bytes()
            .to_vec(),
        DataType::String => {
            let Value::Text(s) = value else {
                return Err(format!(
                    "value {value} is not a string, as type string needs"
                ));
            };
            let len = usize::from(length);
            if s.len() > len {
                return Err(format!(
                    "string {s:?} is {} bytes long, more than length = {length}",
                    s.len()
                ));
            }
            let mut b = s.as_bytes().to_vec();
            // NUL padding up to `length`, plus one more NUL to fill the last register when
            // `length` is odd.
            b.resize(usize::from(ty.register_count(length)) * 2, 0);
            b
        }
    };
    Ok(order_words(&bytes, order, ty == DataType::String))
}

/// Decode registers as `ty` in `order` (the inverse of [`encode`]). Returns `None` when too few
/// words are given.
pub fn decode(ty: DataType, order: WordOrder, words: &[u16], length: u16) -> Option<Value> {
    let n = usize::from(ty.register_count(length));
    let words = words.get(..n)?;
    let b = words_to_be_bytes(words, order, ty == DataType::String);
    let arr4 = |b: &[u8]| -> Option<[u8; 4]> { b.get(..4)?.try_into().ok() };
    let arr8 = |b: &[u8]| -> Option<[u8; 8]> { b.get(..8)?.try_into().ok() };
    let arr2 = |b: &[u8]| -> Option<[u8; 2]> { b.get(..2)?.try_into().ok() };
    Some(match ty {
        DataType::Bool => Value::Bool(u16::from_be_bytes(arr2(&b)?) != 0),
        DataType::U16 => Value::Int(i64::from(u16::from_be_bytes(arr2(&b)?))),
        DataType::I16 => Value::Int(i64::from(i16::from_be_bytes(arr2(&b)?))),
        DataType::U32 => Value::Int(i64::from(u32::from_be_bytes(arr4(&b)?))),
        DataType::I32 => Value::Int(i64::from(i32::from_be_bytes(arr4(&b)?))),
        DataType::U64 => Value::UInt(u64::from_be_bytes(arr8(&b)?)),
        DataType::I64 => Value::Int(i64::from_be_bytes(arr8(&b)?)),
        DataType::F32 => Value::Float(f64::from(f32::from_be_bytes(arr4(&b)?))),
        DataType::F64 => Value::Float(f64::from_be_bytes(arr8(&b)?)),
        DataType::String => {
            let mut s = b;
            s.truncate(usize::from(length));
            while s.last() == Some(&0) {
                s.pop();
            }
            Value::Text(String::from_utf8_lossy(&s).into_owned())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use WordOrder::*;

    fn enc(ty: DataType, order: WordOrder, v: Value) -> Vec<u16> {
        encode(ty, order, &v, 0).unwrap()
    }

    #[test]
    fn f32_every_order() {
        // 12.5f32 = 0x4148_0000
        let v = Value::Float(12.5);
        assert_eq!(enc(DataType::F32, ABCD, v.clone()), [0x4148, 0x0000]);
        assert_eq!(enc(DataType::F32, CDAB, v.clone()), [0x0000, 0x4148]);
        assert_eq!(enc(DataType::F32, BADC, v.clone()), [0x4841, 0x0000]);
        assert_eq!(enc(DataType::F32, DCBA, v), [0x0000, 0x4841]);
    }

    #[test]
    fn u32_and_i32_every_order() {
        let v = Value::Int(0x1122_3344);
        assert_eq!(enc(DataType::U32, ABCD, v.clone()), [0x1122, 0x3344]);
        assert_eq!(enc(DataType::U32, CDAB, v.clone()), [0x3344, 0x1122]);
        assert_eq!(enc(DataType::U32, BADC, v.clone()), [0x2211, 0x4433]);
        assert_eq!(enc(DataType::U32, DCBA, v), [0x4433, 0x2211]);
        // -2 = 0xFFFF_FFFE
        let v = Value::Int(-2);
        assert_eq!(enc(DataType::I32, ABCD, v.clone()), [0xFFFF, 0xFFFE]);
        assert_eq!(enc(DataType::I32, CDAB, v.clone()), [0xFFFE, 0xFFFF]);
        assert_eq!(enc(DataType::I32, BADC, v.clone()), [0xFFFF, 0xFEFF]);
        assert_eq!(enc(DataType::I32, DCBA, v), [0xFEFF, 0xFFFF]);
    }

    #[test]
    fn u16_and_i16_only_byte_swap_matters() {
        let v = Value::Int(0x1234);
        assert_eq!(enc(DataType::U16, ABCD, v.clone()), [0x1234]);
        assert_eq!(enc(DataType::U16, CDAB, v.clone()), [0x1234]);
        assert_eq!(enc(DataType::U16, BADC, v.clone()), [0x3412]);
        assert_eq!(enc(DataType::U16, DCBA, v), [0x3412]);
        // -2 = 0xFFFE
        let v = Value::Int(-2);
        assert_eq!(enc(DataType::I16, ABCD, v.clone()), [0xFFFE]);
        assert_eq!(enc(DataType::I16, CDAB, v.clone()), [0xFFFE]);
        assert_eq!(enc(DataType::I16, BADC, v.clone()), [0xFEFF]);
        assert_eq!(enc(DataType::I16, DCBA, v), [0xFEFF]);
    }

    #[test]
    fn sixty_four_bit_every_order() {
        let v = Value::UInt(0x1122_3344_5566_7788);
        let abcd = [0x1122, 0x3344, 0x5566, 0x7788];
        let cdab = [0x7788, 0x5566, 0x3344, 0x1122];
        let badc = [0x2211, 0x4433, 0x6655, 0x8877];
        let dcba = [0x8877, 0x6655, 0x4433, 0x2211];
        assert_eq!(enc(DataType::U64, ABCD, v.clone()), abcd);
        assert_eq!(enc(DataType::U64, CDAB, v.clone()), cdab);
        assert_eq!(enc(DataType::U64, BADC, v.clone()), badc);
        assert_eq!(enc(DataType::U64, DCBA, v), dcba);
        let v = Value::Int(0x1122_3344_5566_7788);
        assert_eq!(enc(DataType::I64, ABCD, v.clone()), abcd);
        assert_eq!(enc(DataType::I64, CDAB, v.clone()), cdab);
        assert_eq!(enc(DataType::I64, BADC, v.clone()), badc);
        assert_eq!(enc(DataType::I64, DCBA, v), dcba);
        // 1.0f64 = 0x3FF0_0000_0000_0000
        let v = Value::Float(1.0);
        assert_eq!(enc(DataType::F64, ABCD, v.clone()), [0x3FF0, 0, 0, 0]);
        assert_eq!(enc(DataType::F64, CDAB, v.clone()), [0, 0, 0, 0x3FF0]);
        assert_eq!(enc(DataType::F64, BADC, v.clone()), [0xF03F, 0, 0, 0]);
        assert_eq!(enc(DataType::F64, DCBA, v), [0, 0, 0, 0xF03F]);
    }

    #[test]
    fn strings_every_order() {
        let v = Value::Text("ABC".into());
        let e = |o| encode(DataType::String, o, &v, 4).unwrap();
        assert_eq!(e(ABCD), [0x4142, 0x4300]);
        assert_eq!(e(CDAB), [0x4142, 0x4300]);
        assert_eq!(e(BADC), [0x4241, 0x0043]);
        assert_eq!(e(DCBA), [0x4241, 0x0043]);
        // Odd length: ceil(5/2) = 3 registers, NUL padded.
        let v = Value::Text("HELLO".into());
        assert_eq!(
            encode(DataType::String, ABCD, &v, 5).unwrap(),
            [0x4845, 0x4C4C, 0x4F00]
        );
        assert!(encode(DataType::String, ABCD, &v, 4).is_err());
    }

    #[test]
    fn bools_in_registers() {
        assert_eq!(enc(DataType::Bool, ABCD, Value::Bool(true)), [1]);
        assert_eq!(enc(DataType::Bool, BADC, Value::Bool(true)), [0x0100]);
        assert_eq!(enc(DataType::Bool, ABCD, Value::Int(0)), [0]);
        assert!(encode(DataType::Bool, ABCD, &Value::Int(2), 0).is_err());
    }

    #[test]
    fn range_and_type_checks() {
        assert!(encode(DataType::U16, ABCD, &Value::Int(65_536), 0).is_err());
        assert!(encode(DataType::U16, ABCD, &Value::Int(-1), 0).is_err());
        assert!(encode(DataType::I16, ABCD, &Value::Int(-32_769), 0).is_err());
        assert!(encode(DataType::U32, ABCD, &Value::Float(1.5), 0).is_err());
        assert_eq!(enc(DataType::U32, ABCD, Value::Float(7.0)), [0, 7]);
        assert!(encode(DataType::F32, ABCD, &Value::Float(1e300), 0).is_err());
        assert!(encode(DataType::F32, ABCD, &Value::Text("x".into()), 0).is_err());
        assert!(encode(DataType::String, ABCD, &Value::Int(1), 4).is_err());
    }

    #[test]
    fn generated_values_round_and_saturate() {
        assert_eq!(
            Value::from_generated(DataType::U16, 2.6, false),
            Value::Int(3)
        );
        assert_eq!(
            Value::from_generated(DataType::U16, 2.6, true),
            Value::Int(2)
        );
        assert_eq!(
            Value::from_generated(DataType::U16, 1e9, false),
            Value::Int(65_535)
        );
        assert_eq!(
            Value::from_generated(DataType::I16, -1e9, false),
            Value::Int(-32_768)
        );
        assert_eq!(
            Value::from_generated(DataType::U32, -5.0, false),
            Value::Int(0)
        );
        assert_eq!(
            Value::from_generated(DataType::Bool, 0.4, false),
            Value::Bool(false)
        );
        assert_eq!(
            Value::from_generated(DataType::Bool, 0.6, false),
            Value::Bool(true)
        );
        assert_eq!(
            Value::from_generated(DataType::F32, 0.25, false),
            Value::Float(0.25)
        );
    }

    #[test]
    fn decode_inverts_encode() {
        let cases = [
            (DataType::Bool, Value::Bool(true)),
            (DataType::U16, Value::Int(65_000)),
            (DataType::I16, Value::Int(-1234)),
            (DataType::U32, Value::Int(4_000_000_000)),
            (DataType::I32, Value::Int(-2_000_000_000)),
            (DataType::U64, Value::UInt(u64::MAX - 7)),
            (DataType::I64, Value::Int(i64::MIN + 3)),
            (DataType::F32, Value::Float(-0.5)),
            (DataType::F64, Value::Float(std::f64::consts::PI)),
            (DataType::String, Value::Text("TK-101".into())),
        ];
        for order in WordOrder::ALL {
            for (ty, v) in &cases {
                let words = encode(*ty, order, v, 8).unwrap();
                assert_eq!(
                    decode(*ty, order, &words, 8).as_ref(),
                    Some(v),
                    "{ty} {order}"
                );
            }
        }
        assert_eq!(decode(DataType::U32, ABCD, &[1], 0), None);
    }
}
