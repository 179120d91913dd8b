//! Decoding register words into values: every data type in every word/byte order, scale and
//! offset, strings and bits. Pure functions, table-tested.

use super::config::{DataType, ModbusTag, Order};
use crate::model::Value;

/// Why a register block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer words than the type needs (short answer).
    #[error("short answer: {needed} registers needed, {got} received")]
    Short {
        /// Words the type needs.
        needed: usize,
        /// Words available.
        got: usize,
    },
    /// A float register pair holds NaN or infinity.
    #[error("not a finite number ({0})")]
    NotFinite(String),
    /// String bytes are not ASCII/UTF-8.
    #[error("string is not valid text")]
    BadText,
}

/// The big-endian bytes (A B C D …) of `words` stored in `order`.
pub fn canonical_bytes(words: &[u16], order: Order) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 2);
    let mut push = |w: u16| {
        let [hi, lo] = w.to_be_bytes();
        if order.byte_swap() {
            out.extend_from_slice(&[lo, hi]);
        } else {
            out.extend_from_slice(&[hi, lo]);
        }
    };
    if order.word_swap() {
        words.iter().rev().copied().for_each(&mut push);
    } else {
        words.iter().copied().for_each(&mut push);
    }
    out
}

fn take<const N: usize>(words: &[u16], order: Order) -> Result<[u8; N], DecodeError> {
    let needed = N / 2;
    if words.len() < needed {
        return Err(DecodeError::Short {
            needed,
            got: words.len(),
        });
    }
    // The same bytes as `canonical_bytes`, written straight into the array: no allocation per
    // reading (this runs for every numeric register of every poll; issue 14).
    let mut out = [0u8; N];
    let mut put = |i: usize, w: u16| {
        let [hi, lo] = w.to_be_bytes();
        let (a, b) = if order.byte_swap() {
            (lo, hi)
        } else {
            (hi, lo)
        };
        out[2 * i] = a;
        out[2 * i + 1] = b;
    };
    if order.word_swap() {
        words[..needed]
            .iter()
            .rev()
            .enumerate()
            .for_each(|(i, &w)| put(i, w));
    } else {
        words[..needed]
            .iter()
            .enumerate()
            .for_each(|(i, &w)| put(i, w));
    }
    Ok(out)
}

/// Raw (unscaled) value of a register-table tag from its words.
pub fn decode_raw(
    words: &[u16],
    dt: DataType,
    order: Order,
    bit: u8,
    length: u16,
) -> Result<Value, DecodeError> {
    let first = || {
        words
            .first()
            .copied()
            .ok_or(DecodeError::Short { needed: 1, got: 0 })
    };
    Ok(match dt {
        DataType::Bool => Value::Bool(first()? != 0),
        DataType::Bit => Value::Bool(first()? >> bit & 1 == 1),
        DataType::U16 => Value::Int(i64::from(u16::from_be_bytes(take::<2>(words, order)?))),
        DataType::I16 => Value::Int(i64::from(i16::from_be_bytes(take::<2>(words, order)?))),
        DataType::U32 => Value::Int(i64::from(u32::from_be_bytes(take::<4>(words, order)?))),
        DataType::I32 => Value::Int(i64::from(i32::from_be_bytes(take::<4>(words, order)?))),
        DataType::U64 => {
            let v = u64::from_be_bytes(take::<8>(words, order)?);
            i64::try_from(v).map(Value::Int).unwrap_or(Value::UInt(v))
        }
        DataType::I64 => Value::Int(i64::from_be_bytes(take::<8>(words, order)?)),
        DataType::F32 => {
            let v = f32::from_be_bytes(take::<4>(words, order)?);
            if !v.is_finite() {
                return Err(DecodeError::NotFinite(v.to_string()));
            }
            // Widen through the shortest decimal that round-trips the f32, so 7.2f32 reads 7.2,
            // not 7.199999809265137 (the same f32 either way; no precision is invented). The
            // decimal is written by std's `Display` (whose choice between two equally short
            // decimals the stored history already has) into a stack buffer: no allocation per
            // reading (30 % of a typical map's registers are f32).
            Value::Float(widen_f32(v))
        }
        DataType::F64 => {
            let v = f64::from_be_bytes(take::<8>(words, order)?);
            if !v.is_finite() {
                return Err(DecodeError::NotFinite(v.to_string()));
            }
            Value::Float(v)
        }
        DataType::String => {
            let needed = usize::from(length.div_ceil(2));
            if words.len() < needed {
                return Err(DecodeError::Short {
                    needed,
                    got: words.len(),
                });
            }
            // Strings are never word-reversed; only the byte order within a word applies.
            let byte_order = if order.byte_swap() {
                Order::BADC
            } else {
                Order::ABCD
            };
            let mut bytes = canonical_bytes(&words[..needed], byte_order);
            bytes.truncate(usize::from(length));
            let s = std::str::from_utf8(&bytes).map_err(|_| DecodeError::BadText)?;
            Value::Text(s.trim_end_matches(['\0', ' ']).to_owned())
        }
    })
}

/// `v` as the f64 of its shortest round-tripping decimal (`v.to_string().parse()`), formatted
/// on the stack. The longest f32 `Display` is 48 bytes (a negative subnormal, `-0.000…14`);
/// should it ever not fit, the exact widening is returned instead.
fn widen_f32(v: f32) -> f64 {
    struct Stack {
        buf: [u8; 64],
        len: usize,
    }
    impl std::fmt::Write for Stack {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let mut w = Stack {
        buf: [0; 64],
        len: 0,
    };
    if std::fmt::Write::write_fmt(&mut w, format_args!("{v}")).is_err() {
        return f64::from(v);
    }
    std::str::from_utf8(&w.buf[..w.len])
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::from(v))
}

/// Apply scale and offset: integers stay integers when scale = 1 and offset = 0.
pub fn scale(v: Value, scale: f64, offset: f64) -> Value {
    if scale == 1.0 && offset == 0.0 {
        return v;
    }
    match v.as_f64() {
        Some(x) if !matches!(v, Value::Bool(_)) => {
            // Decimal scales (0.1, 0.01, 0.001) divide by the integer inverse: 202 x 0.1 gives
            // 20.200000000000003, 202 / 10 gives 20.2.
            let inv = 1.0 / scale;
            let scaled = if scale.abs() < 1.0 && (inv - inv.round()).abs() < 1e-9 * inv.abs() {
                x / inv.round()
            } else {
                x * scale
            };
            Value::Float(scaled + offset)
        }
        _ => v,
    }
}

/// Decode a register-table tag completely (raw, then scaled).
pub fn decode_tag(words: &[u16], tag: &ModbusTag) -> Result<Value, DecodeError> {
    let raw = decode_raw(words, tag.data_type, tag.order, tag.bit, tag.length)?;
    Ok(scale(raw, tag.scale, tag.offset))
}

/// Registers holding the integer `v` as type `dt` in `order` (event handshake writes): the
/// inverse of [`decode_raw`] for integer types. `None` for non-integer types.
pub fn encode_int(v: i64, dt: DataType, order: Order) -> Option<Vec<u16>> {
    let be: Vec<u8> = match dt {
        DataType::U16 | DataType::I16 | DataType::Bool => (v as u16).to_be_bytes().to_vec(),
        DataType::U32 | DataType::I32 => (v as u32).to_be_bytes().to_vec(),
        DataType::U64 | DataType::I64 => (v as u64).to_be_bytes().to_vec(),
        _ => return None,
    };
    let mut words: Vec<u16> = be
        .chunks(2)
        .map(|c| {
            if order.byte_swap() {
                u16::from_be_bytes([c[1], c[0]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
        .collect();
    if order.word_swap() {
        words.reverse();
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;

    /// Registers holding big-endian bytes `be` in `order` (the inverse of `canonical_bytes`).
    fn encode(be: &[u8], order: Order) -> Vec<u16> {
        let mut words: Vec<u16> = be
            .chunks(2)
            .map(|c| {
                if order.byte_swap() {
                    u16::from_be_bytes([c[1], c[0]])
                } else {
                    u16::from_be_bytes([c[0], c[1]])
                }
            })
            .collect();
        if order.word_swap() {
            words.reverse();
        }
        words
    }

    #[test]
    fn encode_int_round_trips_in_every_order() {
        for order in Order::ALL {
            for (dt, v) in [(U16, 9999i64), (U32, 123_456_789), (U64, 1 << 40)] {
                let w = encode_int(v, dt, order).unwrap();
                assert_eq!(
                    decode_raw(&w, dt, order, 0, 0),
                    Ok(Value::Int(v)),
                    "{dt:?} {order:?}"
                );
            }
        }
    }

    #[test]
    fn f32_12_5_in_every_order() {
        // 12.5f32 = 0x41480000: A=41 B=48 C=00 D=00
        let cases = [
            (Order::ABCD, [0x4148, 0x0000]),
            (Order::CDAB, [0x0000, 0x4148]),
            (Order::BADC, [0x4841, 0x0000]),
            (Order::DCBA, [0x0000, 0x4841]),
        ];
        for (order, words) in cases {
            assert_eq!(
                decode_raw(&words, F32, order, 0, 0),
                Ok(Value::Float(12.5)),
                "{order:?}"
            );
        }
    }

    #[test]
    fn f32_widens_through_its_shortest_decimal() {
        // 7.2f32 reads 7.2 (not 7.199999809265137), and the stack-buffer path gives exactly what
        // `to_string().parse()` gives, over normal, subnormal, huge and negative values (ties
        // between two equally short decimals included: -2070951.25 reads -2070951.3).
        let words = |v: f32| {
            let b = v.to_be_bytes();
            [
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            ]
        };
        assert_eq!(
            decode_raw(&words(7.2), F32, Order::ABCD, 0, 0),
            Ok(Value::Float(7.2))
        );
        let mut bits: u32 = 1;
        for _ in 0..20_000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = f32::from_bits(bits);
            if !v.is_finite() {
                continue;
            }
            let want = v.to_string().parse::<f64>().unwrap();
            assert_eq!(
                decode_raw(&words(v), F32, Order::ABCD, 0, 0),
                Ok(Value::Float(want)),
                "{v:e}"
            );
        }
        for v in [
            f32::MIN_POSITIVE,
            -f32::from_bits(1),
            f32::MAX,
            f32::MIN,
            -2_070_951.2,
        ] {
            assert_eq!(widen_f32(v), v.to_string().parse::<f64>().unwrap(), "{v:e}");
        }
    }

    #[test]
    fn take_writes_the_canonical_bytes_in_every_order() {
        let words = [0x0102, 0x0304, 0x0506, 0x0708];
        for order in Order::ALL {
            assert_eq!(
                take::<2>(&words, order).unwrap().to_vec(),
                canonical_bytes(&words[..1], order)
            );
            assert_eq!(
                take::<4>(&words, order).unwrap().to_vec(),
                canonical_bytes(&words[..2], order)
            );
            assert_eq!(
                take::<8>(&words, order).unwrap().to_vec(),
                canonical_bytes(&words, order)
            );
        }
        assert_eq!(
            take::<4>(&words[..1], Order::ABCD),
            Err(DecodeError::Short { needed: 2, got: 1 })
        );
    }

    #[test]
    fn every_type_in_every_order_round_trips() {
        for order in Order::ALL {
            let check = |dt: DataType, be: Vec<u8>, want: Value| {
                let words = encode(&be, order);
                assert_eq!(
                    decode_raw(&words, dt, order, 0, 0),
                    Ok(want.clone()),
                    "{dt:?} {order:?}"
                );
            };
            check(U16, 0xBEEFu16.to_be_bytes().to_vec(), Value::Int(0xBEEF));
            check(I16, (-1234i16).to_be_bytes().to_vec(), Value::Int(-1234));
            check(
                U32,
                0xDEAD_BEEFu32.to_be_bytes().to_vec(),
                Value::Int(0xDEAD_BEEF),
            );
            check(
                I32,
                (-123_456_789i32).to_be_bytes().to_vec(),
                Value::Int(-123_456_789),
            );
            check(
                U64,
                0x0123_4567_89AB_CDEFu64.to_be_bytes().to_vec(),
                Value::Int(0x0123_4567_89AB_CDEF),
            );
            check(U64, u64::MAX.to_be_bytes().to_vec(), Value::UInt(u64::MAX));
            check(
                I64,
                (-9_876_543_210i64).to_be_bytes().to_vec(),
                Value::Int(-9_876_543_210),
            );
            check(
                F32,
                (-273.15f32).to_be_bytes().to_vec(),
                Value::Float(-273.15),
            );
            check(
                F64,
                845.123_456_789f64.to_be_bytes().to_vec(),
                Value::Float(845.123_456_789),
            );
        }
    }

    #[test]
    fn u16_byte_swap_applies_but_word_swap_does_not() {
        assert_eq!(
            decode_raw(&[0x1234], U16, Order::CDAB, 0, 0),
            Ok(Value::Int(0x1234))
        );
        assert_eq!(
            decode_raw(&[0x1234], U16, Order::BADC, 0, 0),
            Ok(Value::Int(0x3412))
        );
        assert_eq!(
            decode_raw(&[0x1234], U16, Order::DCBA, 0, 0),
            Ok(Value::Int(0x3412))
        );
    }

    #[test]
    fn bits_and_bools() {
        assert_eq!(
            decode_raw(&[0b1000_0000_0000_0100], Bit, Order::ABCD, 2, 0),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            decode_raw(&[0b1000_0000_0000_0100], Bit, Order::ABCD, 3, 0),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            decode_raw(&[0b1000_0000_0000_0100], Bit, Order::ABCD, 15, 0),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            decode_raw(&[0], Bool, Order::ABCD, 0, 0),
            Ok(Value::Bool(false))
        );
        assert_eq!(
            decode_raw(&[7], Bool, Order::ABCD, 0, 0),
            Ok(Value::Bool(true))
        );
    }

    #[test]
    fn strings_trim_padding_and_honour_byte_swap() {
        let w = [
            u16::from_be_bytes(*b"TK"),
            u16::from_be_bytes(*b"-1"),
            u16::from_be_bytes(*b"01"),
            0,
        ];
        assert_eq!(
            decode_raw(&w, String, Order::ABCD, 0, 8),
            Ok(Value::Text("TK-101".into()))
        );
        let sw: Vec<u16> = w.iter().map(|x| x.swap_bytes()).collect();
        assert_eq!(
            decode_raw(&sw, String, Order::BADC, 0, 8),
            Ok(Value::Text("TK-101".into()))
        );
        // Odd length: the last register's low byte is not part of the string.
        assert_eq!(
            decode_raw(&w, String, Order::ABCD, 0, 5),
            Ok(Value::Text("TK-10".into()))
        );
        assert_eq!(
            decode_raw(&[0xFFFF], String, Order::ABCD, 0, 2),
            Err(DecodeError::BadText)
        );
    }

    #[test]
    fn scale_and_offset() {
        assert_eq!(
            scale(Value::Int(1234), 0.1, 0.0),
            Value::Float(1234.0 * 0.1)
        );
        assert_eq!(scale(Value::Int(100), 1.0, -40.0), Value::Float(60.0));
        assert_eq!(scale(Value::Int(5), 1.0, 0.0), Value::Int(5));
        assert_eq!(scale(Value::Bool(true), 2.0, 0.0), Value::Bool(true));
    }

    #[test]
    fn short_answers_and_nan_are_decode_errors() {
        assert_eq!(
            decode_raw(&[1], U32, Order::ABCD, 0, 0),
            Err(DecodeError::Short { needed: 2, got: 1 })
        );
        assert!(matches!(
            decode_raw(&[0x7FC0, 0], F32, Order::ABCD, 0, 0),
            Err(DecodeError::NotFinite(_))
        ));
        assert_eq!(
            decode_raw(&[], U16, Order::ABCD, 0, 0),
            Err(DecodeError::Short { needed: 1, got: 0 })
        );
    }
}
