//! The register image of one unit: the mapped points (constant or generated), plus the values
//! written by clients (or through the library), which override the map address by address.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::config::{ConstValue, UnitConfig};
use super::generator::Generator;
use super::values::{encode, DataType, RegisterKind, Value, WordOrder};

/// Longest string a register map may declare, in bytes (a read is at most 125 registers).
pub const MAX_STRING_LENGTH: u16 = 250;

/// One mapped value.
#[derive(Debug)]
pub(crate) struct Point {
    pub(crate) name: Option<String>,
    pub(crate) address: u16,
    pub(crate) data_type: DataType,
    pub(crate) order: WordOrder,
    pub(crate) length: u16,
    /// Registers (or bits) covered.
    pub(crate) width: u16,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Fixed(Vec<u16>),
    Generated { generator: Generator, floor: bool },
}

impl Point {
    /// The point's registers at time `t` (before overrides).
    pub(crate) fn words(&self, t: Duration) -> Vec<u16> {
        match &self.source {
            Source::Fixed(w) => w.clone(),
            Source::Generated { generator, floor } => {
                let v = Value::from_generated(self.data_type, generator.value_at(t), *floor);
                // A generated value always fits: it is converted to the type (saturating)
                // first. Fall back to zeros rather than panic if that ever changed.
                encode(self.data_type, self.order, &v, self.length)
                    .unwrap_or_else(|_| vec![0; usize::from(self.width)])
            }
        }
    }

    pub(crate) fn encode(&self, value: &Value) -> Result<Vec<u16>, String> {
        encode(self.data_type, self.order, value, self.length)
    }
}

type Tables<T> = [T; 4];

/// Points and overrides of the four tables of one unit.
#[derive(Debug, Default)]
pub(crate) struct RegisterImage {
    points: Tables<BTreeMap<u16, Point>>,
    overrides: Mutex<Tables<BTreeMap<u16, u16>>>,
}

fn const_to_value(c: &ConstValue) -> Value {
    match c {
        ConstValue::Bool(b) => Value::Bool(*b),
        ConstValue::Int(i) => Value::Int(*i),
        ConstValue::Float(x) => Value::Float(*x),
        ConstValue::Text(s) => Value::Text(s.clone()),
    }
}

impl RegisterImage {
    /// Build and validate the image of a unit; every problem is reported.
    pub(crate) fn build(unit: &UnitConfig) -> Result<Self, Vec<String>> {
        let mut image = RegisterImage::default();
        let mut problems = Vec::new();
        for r in &unit.registers {
            let at = format!("unit {}, {} register {}", unit.id, r.kind, r.address);
            let ty = r.effective_type();
            let mut bad = |msg: String| problems.push(format!("{at}: {msg}"));
            if r.kind.is_bit() && ty != DataType::Bool {
                bad(format!(
                    "a {} holds one bit: type must be bool, not {ty}",
                    r.kind
                ));
                continue;
            }
            let length = match (ty, r.length, &r.value) {
                (DataType::String, Some(l), _) => l,
                (DataType::String, None, Some(ConstValue::Text(s))) => {
                    u16::try_from(s.len()).unwrap_or(u16::MAX)
                }
                (DataType::String, None, _) => {
                    bad("type = \"string\" needs `length` (bytes) or a string `value`".into());
                    continue;
                }
                (_, Some(_), _) => {
                    bad(format!(
                        "`length` applies only to type = \"string\", not {ty}"
                    ));
                    continue;
                }
                (_, None, _) => 0,
            };
            if ty == DataType::String && !(1..=MAX_STRING_LENGTH).contains(&length) {
                bad(format!(
                    "string length {length} out of range 1..={MAX_STRING_LENGTH}"
                ));
                continue;
            }
            let width = ty.register_count(length);
            let last = u32::from(r.address) + u32::from(width) - 1;
            if last > 0xFFFF {
                bad(format!(
                    "a {ty} here would end at address {last}, past 65535"
                ));
                continue;
            }
            let source = match (&r.generator, &r.value) {
                (Some(_), Some(_)) => {
                    bad("give either `value` or `generator`, not both".into());
                    continue;
                }
                (Some(_), None) if ty == DataType::String => {
                    bad("strings cannot have a generator; use a constant `value`".into());
                    continue;
                }
                (Some(g), None) => match Generator::new(g) {
                    Ok(generator) => Source::Generated {
                        floor: generator.is_counter(),
                        generator,
                    },
                    Err(e) => {
                        bad(e);
                        continue;
                    }
                },
                (None, value) => {
                    let v = match value {
                        Some(c) => const_to_value(c),
                        None => match ty {
                            DataType::String => Value::Text(String::new()),
                            DataType::Bool => Value::Bool(false),
                            _ => Value::Int(0),
                        },
                    };
                    match encode(ty, r.order, &v, length) {
                        Ok(words) => Source::Fixed(words),
                        Err(e) => {
                            bad(e);
                            continue;
                        }
                    }
                }
            };
            let table = &mut image.points[r.kind.index()];
            // Overlap check against the neighbours on both sides.
            let before = table
                .range(..=r.address)
                .next_back()
                .filter(|(a, p)| u32::from(**a) + u32::from(p.width) > u32::from(r.address));
            let after = table
                .range(r.address..)
                .next()
                .filter(|(a, _)| u32::from(**a) <= last);
            if let Some((a, p)) = before.or(after) {
                bad(format!(
                    "overlaps the {} at address {a} (which covers {a}..={})",
                    p.data_type,
                    u32::from(*a) + u32::from(p.width) - 1
                ));
                continue;
            }
            table.insert(
                r.address,
                Point {
                    name: r.name.clone(),
                    address: r.address,
                    data_type: ty,
                    order: r.order,
                    length,
                    width,
                    source,
                },
            );
        }
        if problems.is_empty() {
            Ok(image)
        } else {
            Err(problems)
        }
    }

    fn overrides(&self) -> MutexGuard<'_, Tables<BTreeMap<u16, u16>>> {
        self.overrides
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The point covering `address`, if any.
    pub(crate) fn covering(&self, kind: RegisterKind, address: u16) -> Option<&Point> {
        self.points[kind.index()]
            .range(..=address)
            .next_back()
            .map(|(_, p)| p)
            .filter(|p| u32::from(p.address) + u32::from(p.width) > u32::from(address))
    }

    /// The point starting at `address`, if any.
    pub(crate) fn point_at(&self, kind: RegisterKind, address: u16) -> Option<&Point> {
        self.points[kind.index()].get(&address)
    }

    /// All points of a table, by address.
    pub(crate) fn points(&self, kind: RegisterKind) -> impl Iterator<Item = &Point> {
        self.points[kind.index()].values()
    }

    /// Is every address of `[first, first + count)` mapped?
    pub(crate) fn all_mapped(&self, kind: RegisterKind, first: u16, count: u16) -> bool {
        let end = u32::from(first) + u32::from(count);
        let mut a = u32::from(first);
        while a < end {
            let Ok(addr) = u16::try_from(a) else {
                return false;
            };
            match self.covering(kind, addr) {
                Some(p) => a = u32::from(p.address) + u32::from(p.width),
                None => return false,
            }
        }
        true
    }

    /// Current registers (or bits as 0/1) of `[first, first + count)`; unmapped addresses read 0
    /// (or, when `strict`, make the read fail with `None`). Addresses past 65535 also fail.
    pub(crate) fn read(
        &self,
        kind: RegisterKind,
        first: u16,
        count: u16,
        t: Duration,
        strict: bool,
    ) -> Option<Vec<u16>> {
        if u32::from(first) + u32::from(count) > 0x1_0000
            || (strict && !self.all_mapped(kind, first, count))
        {
            return None;
        }
        let overrides = self.overrides();
        let overrides = &overrides[kind.index()];
        let mut out = Vec::with_capacity(usize::from(count));
        // The words of the point being read, computed once per request.
        let mut current: Option<(u16, Vec<u16>)> = None;
        for i in 0..count {
            let addr = first + i; // no overflow: checked above
            if let Some(v) = overrides.get(&addr) {
                out.push(*v);
                continue;
            }
            let word = match self.covering(kind, addr) {
                Some(p) => {
                    if current.as_ref().map(|(a, _)| *a) != Some(p.address) {
                        current = Some((p.address, p.words(t)));
                    }
                    current
                        .as_ref()
                        .and_then(|(_, w)| w.get(usize::from(addr - p.address)).copied())
                        .unwrap_or(0)
                }
                None => 0,
            };
            out.push(word);
        }
        Some(out)
    }

    /// Store `values` from `first` on as overrides. With `strict`, every address must be mapped
    /// (else nothing is stored and `false` is returned).
    pub(crate) fn write(
        &self,
        kind: RegisterKind,
        first: u16,
        values: &[u16],
        strict: bool,
    ) -> bool {
        let Ok(count) = u16::try_from(values.len()) else {
            return false;
        };
        if u32::from(first) + u32::from(count) > 0x1_0000
            || (strict && !self.all_mapped(kind, first, count))
        {
            return false;
        }
        let mut overrides = self.overrides();
        let table = &mut overrides[kind.index()];
        for (i, v) in (0..count).zip(values) {
            let v = if kind.is_bit() {
                u16::from(*v != 0)
            } else {
                *v
            };
            table.insert(first + i, v);
        }
        true
    }

    /// Forget every written value of every table.
    pub(crate) fn clear_overrides(&self) {
        for t in self.overrides().iter_mut() {
            t.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::config::MapConfig;

    fn image(regs: &str) -> Result<RegisterImage, Vec<String>> {
        let map = MapConfig::from_toml_str(&format!("[[unit]]\nid = 1\n{regs}")).unwrap();
        RegisterImage::build(&map.units[0])
    }

    fn reg(kind: &str, address: u16, extra: &str) -> String {
        format!("[[unit.register]]\nkind = \"{kind}\"\naddress = {address}\n{extra}\n")
    }

    #[test]
    fn reads_points_gaps_and_overrides() {
        let img = image(
            &[
                reg("holding", 0, "type = \"f32\"\nvalue = 12.5"),
                reg(
                    "holding",
                    4,
                    "type = \"u16\"\ngenerator = { kind = \"ramp\", every = \"1s\" }",
                ),
                reg("coil", 3, "value = true"),
            ]
            .concat(),
        )
        .unwrap();
        let t = Duration::from_secs(7);
        assert_eq!(
            img.read(RegisterKind::Holding, 0, 6, t, false),
            Some(vec![0x4148, 0, 0, 0, 7, 0])
        );
        assert_eq!(
            img.read(RegisterKind::Holding, 1, 1, t, false),
            Some(vec![0])
        );
        assert_eq!(img.read(RegisterKind::Holding, 0, 6, t, true), None);
        assert_eq!(
            img.read(RegisterKind::Holding, 0, 2, t, true),
            Some(vec![0x4148, 0])
        );
        assert_eq!(
            img.read(RegisterKind::Coil, 2, 3, t, false),
            Some(vec![0, 1, 0])
        );
        assert_eq!(img.read(RegisterKind::Holding, 65_535, 2, t, false), None);
        // A write overrides the generator, word by word.
        assert!(img.write(RegisterKind::Holding, 4, &[99], true));
        assert!(img.write(RegisterKind::Holding, 1, &[0xBEEF], true));
        assert_eq!(
            img.read(RegisterKind::Holding, 0, 5, t, false),
            Some(vec![0x4148, 0xBEEF, 0, 0, 99])
        );
        assert!(!img.write(RegisterKind::Holding, 2, &[1], true));
        assert!(img.write(RegisterKind::Holding, 2, &[1], false));
        assert!(img.write(RegisterKind::Coil, 3, &[0], true));
        assert_eq!(img.read(RegisterKind::Coil, 3, 1, t, true), Some(vec![0]));
        img.clear_overrides();
        assert_eq!(
            img.read(RegisterKind::Holding, 0, 5, t, false),
            Some(vec![0x4148, 0, 0, 0, 7])
        );
    }

    #[test]
    fn reports_every_problem() {
        let errs = image(
            &[
                reg("coil", 0, "type = \"u16\""),
                reg("holding", 0, "type = \"u32\""),
                reg("holding", 1, "type = \"u16\""),
                reg("holding", 10, "type = \"string\""),
                reg("holding", 20, "type = \"u16\"\nvalue = 70000"),
                reg(
                    "holding",
                    30,
                    "type = \"u16\"\nvalue = 1\ngenerator = { kind = \"sine\" }",
                ),
                reg("holding", 65_535, "type = \"f32\""),
                reg("input", 0, "type = \"u16\"\nlength = 4"),
                reg(
                    "input",
                    10,
                    "type = \"string\"\nlength = 2\nvalue = \"long\"",
                ),
                reg(
                    "input",
                    20,
                    "type = \"string\"\nlength = 4\ngenerator = { kind = \"sine\" }",
                ),
            ]
            .concat(),
        )
        .unwrap_err();
        let all = errs.join("\n");
        for needle in [
            "coil register 0: a coil holds one bit",
            "holding register 1: overlaps the u32 at address 0",
            "holding register 10: type = \"string\" needs `length`",
            "holding register 20: value 70000 is out of range for type u16",
            "holding register 30: give either",
            "holding register 65535: a f32 here would end at address 65536",
            "input register 0: `length` applies only",
            "input register 10: string \"long\" is 4 bytes long",
            "input register 20: strings cannot have a generator",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 9);
    }

    #[test]
    fn overlap_detected_from_both_sides() {
        let errs = image(
            &[
                reg("input", 5, "type = \"u16\""),
                reg("input", 2, "type = \"f64\""),
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(
            errs[0].contains("overlaps the u16 at address 5"),
            "{errs:?}"
        );
        assert!(image(
            &[
                reg("input", 5, "type = \"u16\""),
                reg("input", 1, "type = \"f32\"")
            ]
            .concat()
        )
        .is_ok());
    }

    #[test]
    fn string_length_defaults_to_value() {
        let img = image(&reg("holding", 0, "type = \"string\"\nvalue = \"ABC\"")).unwrap();
        let p = img.point_at(RegisterKind::Holding, 0).unwrap();
        assert_eq!((p.length, p.width), (3, 2));
        assert_eq!(
            img.read(RegisterKind::Holding, 0, 2, Duration::ZERO, true),
            Some(vec![0x4142, 0x4300])
        );
    }
}
