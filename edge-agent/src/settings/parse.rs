//! Helpers to deserialize parts of a spanned TOML table one struct at a time, so that every
//! problem in a tag map is reported at once, each at its own file:line:column.

use serde::de::{self, DeserializeOwned, Visitor};
use std::ops::Range;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::diag::Diagnostics;

/// A table of the parsed document (borrowed, never copied), with its span.
#[derive(Debug, Clone, Copy)]
pub struct STable<'a, 'i> {
    span: (usize, usize),
    table: &'a DeTable<'i>,
}

impl<'a, 'i> STable<'a, 'i> {
    /// View `table` at `span`.
    pub fn new(span: Range<usize>, table: &'a DeTable<'i>) -> Self {
        STable {
            span: (span.start, span.end),
            table,
        }
    }
    /// Its span in the source.
    pub fn span(&self) -> Range<usize> {
        self.span.0..self.span.1
    }
    /// The table.
    pub fn get_ref(&self) -> &'a DeTable<'i> {
        self.table
    }
}

/// The field names a derived `Deserialize` struct accepts (serde passes them to
/// `deserialize_struct`; this deserializer captures them and stops).
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Capture(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Capture {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut c = Capture(None);
    let _ = T::deserialize(&mut c);
    c.0.unwrap_or(&[])
}

/// Span of a key's value in `table`, if present.
pub fn value_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    table.get(key).map(|v| v.span())
}

/// Where a table and each of its keys' values are in the source. Compact, because the loader
/// keeps one per tag until the whole map is validated: the key names in one string, the value
/// spans as `u32` offsets (a tag map is far below 4 GB; larger offsets saturate).
#[derive(Debug, Clone, PartialEq)]
pub struct Spans {
    /// The whole table (its first key).
    pub table: Range<usize>,
    /// The key names, concatenated.
    names: Box<str>,
    /// Per key: end of its name in `names`, start and end of its value.
    keys: Box<[(u32, u32, u32)]>,
}

fn offset32(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

impl Spans {
    /// Span of `key`'s value, or the table's.
    pub fn of(&self, key: &str) -> Range<usize> {
        let mut from = 0;
        for &(end, s, e) in self.keys.iter() {
            let end = end as usize;
            if self.names.get(from..end) == Some(key) {
                return s as usize..e as usize;
            }
            from = end;
        }
        self.table.clone()
    }

    /// Move every span by `base` bytes (spans of a part of the text parsed alone, made absolute).
    pub fn shift(&mut self, base: usize) {
        self.table = self.table.start + base..self.table.end + base;
        for k in self.keys.iter_mut() {
            k.1 = offset32(k.1 as usize + base);
            k.2 = offset32(k.2 as usize + base);
        }
    }
}

/// Value spans of every key, for diagnostics after deserialization.
pub fn key_spans(table: &STable<'_, '_>) -> Spans {
    let mut names = String::new();
    let keys = table
        .get_ref()
        .iter()
        .map(|(k, v)| {
            names.push_str(k.get_ref());
            let sp = v.span();
            (offset32(names.len()), offset32(sp.start), offset32(sp.end))
        })
        .collect();
    Spans {
        table: table.span(),
        names: names.into_boxed_str(),
        keys,
    }
}

/// Report every key of `table` that is in none of `allowed` (each a struct's fields), as
/// `unknown key` errors listing the valid keys. `skip` names keys handled elsewhere (sub-tables).
pub fn report_unknown_keys(
    table: &STable<'_, '_>,
    allowed: &[&[&str]],
    skip: &[&str],
    subject: &str,
    diags: &mut Diagnostics,
) {
    for (k, _) in table.get_ref().iter() {
        let name = k.get_ref().as_ref();
        if skip.contains(&name) || allowed.iter().any(|set| set.contains(&name)) {
            continue;
        }
        let mut valid: Vec<&str> = allowed.iter().flat_map(|s| s.iter().copied()).collect();
        valid.extend_from_slice(skip);
        valid.sort_unstable();
        let hint = closest(name, &valid)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        diags.error(
            k.span(),
            subject,
            format!(
                "unknown key `{name}`{hint}; valid keys here: {}",
                valid.join(", ")
            ),
        );
    }
}

fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Deserialize the keys of `table` that are fields of `T` (others are ignored here; they are
/// reported by `report_unknown_keys` or belong to another part). Errors go to `diags`.
///
/// serde stops at the first bad value; to report every bad value of the table at once, the key an
/// error points into is reported, taken out, and deserialization retried, until it succeeds or
/// fails for a reason that is not one key's value (a missing key, reported only if no value was
/// bad, since taking a bad key out makes it "missing").
pub fn part<T: DeserializeOwned>(
    table: &STable<'_, '_>,
    subject: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    let fields = fields_of::<T>();
    let mut sub = DeTable::new();
    for (k, v) in table.get_ref().iter() {
        if fields.contains(&k.get_ref().as_ref()) {
            sub.insert(k.clone(), v.clone());
        }
    }
    let mut bad_keys = 0;
    loop {
        let value = Spanned::new(table.span(), DeValue::Table(sub.clone()));
        let e = match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) if bad_keys == 0 => return Some(v),
            Ok(_) => return None,
            Err(e) => e,
        };
        // The key whose value the error points into, if it points into one.
        let key = e.span().and_then(|sp| {
            sub.iter()
                .find(|(_, v)| v.span().contains(&sp.start))
                .map(|(k, _)| k.get_ref().to_string())
        });
        match key {
            Some(k) => {
                // A secret's value (`security_code = 123456`) is never quoted back.
                let msg = e.message().trim_end();
                let msg = if flowsquare_service::secret::is_secret_key(&k) {
                    flowsquare_service::secret::redact_quoted(msg)
                } else {
                    msg.to_owned()
                };
                diags.error(
                    e.span().unwrap_or(table.span()),
                    subject,
                    format!("`{k}`: {msg}"),
                );
                sub.remove(k.as_str());
                bad_keys += 1;
            }
            None => {
                if bad_keys == 0 {
                    diags.toml_error(&e, table.span(), subject);
                }
                return None;
            }
        }
    }
}

/// Interpret `value` as a table, or report that `what` must be one.
pub fn as_table<'a, 'i>(
    value: &'a Spanned<DeValue<'i>>,
    what: &str,
    subject: &str,
    diags: &mut Diagnostics,
) -> Option<STable<'a, 'i>> {
    match value.get_ref() {
        DeValue::Table(t) => Some(STable::new(value.span(), t)),
        _ => {
            diags.error(value.span(), subject, format!("`{what}` must be a table"));
            None
        }
    }
}

/// Interpret `value` as an array of tables (`[[what]]`), or report it.
pub fn as_table_array<'a, 'i>(
    value: &'a Spanned<DeValue<'i>>,
    what: &str,
    subject: &str,
    diags: &mut Diagnostics,
) -> Vec<STable<'a, 'i>> {
    match value.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .filter_map(|v| as_table(v, what, subject, diags))
            .collect(),
        _ => {
            diags.error(
                value.span(),
                subject,
                format!("`{what}` must be an array of tables, written [[{what}]]"),
            );
            Vec::new()
        }
    }
}

/// A string key of a table, if it is one.
pub fn str_key<'a>(table: &'a DeTable<'_>, key: &str) -> Option<&'a str> {
    table.get(key).and_then(|v| v.get_ref().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        site: String,
        id: String,
        description: Option<String>,
        metrics: Option<String>,
    }

    #[test]
    fn captures_struct_fields() {
        let f = fields_of::<Sample>();
        assert_eq!(f, &["site", "id", "description", "metrics"]);
    }

    #[test]
    fn edit_distance_suggests_typos() {
        assert_eq!(closest("adress", &["address", "bit"]), Some("address"));
        assert_eq!(closest("zzz", &["address", "bit"]), None);
    }
}
