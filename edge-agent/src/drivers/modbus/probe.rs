//! `edge-agent probe modbus`: read raw registers and show them decoded as every type in every
//! word and byte order, side by side, so an engineer sees at once which order a meter uses.

use std::fmt::Write as _;

use super::config::{DataType, Order};
use super::decode::decode_raw;
use crate::model::Value;

fn plausible(v: f64) -> bool {
    v == 0.0 || (v.is_finite() && (1e-6..1e9).contains(&v.abs()))
}

fn num(v: Result<Value, super::decode::DecodeError>) -> String {
    match v {
        Ok(Value::Int(i)) => i.to_string(),
        Ok(Value::UInt(u)) => u.to_string(),
        Ok(Value::Float(f)) => {
            let s = if f != 0.0 && (f.abs() < 1e-4 || f.abs() >= 1e12) {
                format!("{f:.4e}")
            } else {
                let s = format!("{f:.6}");
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            };
            if plausible(f) {
                format!("{s} *")
            } else {
                s
            }
        }
        Ok(Value::Bool(b)) => b.to_string(),
        Ok(Value::Text(t)) => t,
        Err(super::decode::DecodeError::NotFinite(s)) => s,
        Err(_) => "-".into(),
    }
}

/// Render registers read from `start` (protocol address) as every type and order.
pub fn render_registers(start: u16, words: &[u16]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "16-bit (one register):");
    let _ = writeln!(
        s,
        "  {:>6}  {:>6}  {:>6}  {:>6}  {:>8}  {:>6}  {:>6}  ascii",
        "addr", "hex", "u16", "i16", "swapped", "u16", "i16"
    );
    for (i, w) in words.iter().enumerate() {
        let a = u32::from(start) + i as u32;
        let ascii: String = w
            .to_be_bytes()
            .iter()
            .map(|b| {
                if b.is_ascii_graphic() || *b == b' ' {
                    char::from(*b)
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "  {a:>6}  {w:#06x}  {:>6}  {:>6}  {:>8}  {:>6}  {:>6}  {ascii}",
            w,
            *w as i16,
            format!("{:#06x}", w.swap_bytes()),
            w.swap_bytes(),
            w.swap_bytes() as i16
        );
    }
    for (n, title, types) in [
        (
            2usize,
            "32-bit (two registers from each address)",
            [DataType::U32, DataType::I32, DataType::F32],
        ),
        (
            4,
            "64-bit (four registers from each address)",
            [DataType::U64, DataType::I64, DataType::F64],
        ),
    ] {
        if words.len() < n {
            continue;
        }
        let _ = writeln!(s, "{title}:");
        let _ = writeln!(
            s,
            "  {:>6}  {:<5} {:>22} {:>22} {:>24}",
            "addr",
            "order",
            types[0].as_str(),
            types[1].as_str(),
            types[2].as_str()
        );
        for i in 0..=words.len() - n {
            let a = u32::from(start) + i as u32;
            for (k, order) in Order::ALL.iter().enumerate() {
                let w = &words[i..i + n];
                let addr = if k == 0 { a.to_string() } else { String::new() };
                let _ = writeln!(
                    s,
                    "  {addr:>6}  {:<5} {:>22} {:>22} {:>24}",
                    order.as_str(),
                    num(decode_raw(w, types[0], *order, 0, 0)),
                    num(decode_raw(w, types[1], *order, 0, 0)),
                    num(decode_raw(w, types[2], *order, 0, 0)),
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "* = plausible float (0, or magnitude between 1e-6 and 1e9)"
    );
    let _ = writeln!(
        s,
        "orders: ABCD big-endian; CDAB word swap; BADC byte swap; DCBA little-endian"
    );
    s
}

/// Render bits read from `start`.
pub fn render_bits(start: u16, bits: &[bool]) -> String {
    let mut s = String::new();
    for (i, b) in bits.iter().enumerate() {
        let _ = writeln!(s, "  {:>6}  {}", u32::from(start) + i as u32, u8::from(*b));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_swapped_float_is_found_in_the_cdab_row() {
        // 12.5f32 stored CDAB.
        let out = render_registers(100, &[0x0000, 0x4148]);
        let cdab = out
            .lines()
            .find(|l| l.contains("CDAB") && l.contains("12.5 *"));
        assert!(cdab.is_some(), "{out}");
        assert!(out.contains("   100  0x0000"));
    }
}
