//! Query-parameter parsing. Every failure is a 400 problem naming the parameter.
//!
//! - Unknown parameters are rejected (a misspelt `tag_ids` is an error, not an ignored filter).
//! - A single-valued parameter given twice is rejected; an empty value counts as absent.
//! - Times: RFC 3339 (`2026-01-01T00:00:00Z`, any offset) or integer epoch milliseconds (UTC),
//!   from 1970 to 9999 in queries; event times in bodies (a discharge opened or closed, a
//!   delivery) from 2000-01-01 to a day after now. Every time the API accepts, number or text,
//!   query or body, is checked here through [`crate::times`], and an error names the field.
//! - Dates: `YYYY-MM-DD`, years 1970 to 9999.
//! - Steps: a positive integer and a unit, `ms`, `s`, `m`, `h` or `d` (`500ms`, `30s`, `5m`,
//!   `1h`, `1d`).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::problem::Problem;

/// Latest representable time accepted (9999-12-31T23:59:59.999Z), epoch ms.
const MAX_TIME_MS: i64 = crate::times::QUERY_MAX_MS;

/// The decoded query string of a request.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Decode `raw` (percent-encoding, `+` as space), rejecting parameters not in `allowed`.
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, Problem> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        for (k, _) in &pairs {
            if !allowed.contains(&k.as_str()) {
                let expected = if allowed.is_empty() {
                    "this route takes no parameters".to_owned()
                } else {
                    format!("expected one of: {}", allowed.join(", "))
                };
                return Err(Problem::bad_parameter(
                    k,
                    format!("unknown parameter; {expected}"),
                ));
            }
        }
        Ok(Query { pairs })
    }

    /// Every value given for `name`, in order.
    pub(crate) fn all<'a: 'n, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a single-valued parameter (`None` if absent or empty).
    pub(crate) fn opt(&self, name: &str) -> Result<Option<&str>, Problem> {
        let mut it = self.all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(Problem::bad_parameter(name, "given more than once"));
        }
        Ok(first.map(str::trim).filter(|v| !v.is_empty()))
    }

    /// The value of a required single-valued parameter.
    pub(crate) fn req(&self, name: &str) -> Result<&str, Problem> {
        self.opt(name)?
            .ok_or_else(|| Problem::bad_parameter(name, "required"))
    }
}

/// A time in a query: RFC 3339 or epoch milliseconds, 1970 to 9999.
pub(crate) fn time_ms(name: &str, v: &str) -> Result<i64, Problem> {
    let ms = parse_time(v).map_err(|e| Problem::bad_parameter(name, e))?;
    crate::times::check_query(ms).map_err(|_| {
        Problem::bad_parameter(name, format!("{v:?} is outside 1970-01-01 .. 9999-12-31"))
    })
}

/// An event time given as a number of epoch milliseconds (in a body): 2000-01-01 to a day
/// after `now_ms`. The error starts with the field's name.
pub(crate) fn event_ms(field: &str, ms: i64, now_ms: i64) -> Result<i64, String> {
    crate::times::check_event(ms, now_ms).map_err(|e| format!("{field}: {e}"))
}

/// An event time given as text (in a body): RFC 3339 or epoch milliseconds, then as
/// [`event_ms`].
pub(crate) fn event_text(field: &str, v: &str, now_ms: i64) -> Result<i64, String> {
    let ms = parse_time(v.trim()).map_err(|e| format!("{field}: {e}"))?;
    event_ms(field, ms, now_ms)
}

/// A day `YYYY-MM-DD` (years 1970 to 9999), as days since the epoch.
pub(crate) fn day(name: &str, v: &str) -> Result<i64, Problem> {
    let day = crate::reconcile::model::parse_day(v).map_err(|e| Problem::bad_parameter(name, e))?;
    crate::times::check_query(day.saturating_mul(86_400_000)).map_err(|_| {
        Problem::bad_parameter(name, format!("{v:?} is outside 1970-01-01 .. 9999-12-31"))
    })?;
    Ok(day)
}

/// RFC 3339 or (signed) integer epoch milliseconds, not yet range-checked.
fn parse_time(v: &str) -> Result<i64, String> {
    let ms = if v.bytes().all(|b| b.is_ascii_digit())
        || (v.starts_with('-') && v.len() > 1 && v[1..].bytes().all(|b| b.is_ascii_digit()))
    {
        v.parse::<i64>()
            .map_err(|_| format!("{v:?} is out of range"))?
    } else {
        let t = OffsetDateTime::parse(v, &Rfc3339).map_err(|e| {
            format!("{v:?} is neither RFC 3339 (2026-01-01T00:00:00Z) nor epoch milliseconds ({e})")
        })?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| format!("{v:?} is out of range"))?
    };
    Ok(ms)
}

/// A required `from`/`to` pair with `from < to`.
pub(crate) fn range(q: &Query) -> Result<(i64, i64), Problem> {
    let from = time_ms("from", q.req("from")?)?;
    let to = time_ms("to", q.req("to")?)?;
    if to <= from {
        return Err(Problem::bad_parameter("to", "must be after `from`"));
    }
    Ok((from, to))
}

/// A step such as `5m`, in milliseconds.
pub(crate) fn step_ms(name: &str, v: &str) -> Result<i64, Problem> {
    let bad = || {
        Problem::bad_parameter(name, format!("{v:?} is not a step: a positive integer and a unit, ms, s, m, h or d (e.g. 30s, 5m, 1h)"))
    };
    let split = v.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = v.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(unit_ms) {
        Some(ms) if ms > 0 && ms <= MAX_TIME_MS => Ok(ms),
        _ => Err(Problem::bad_parameter(
            name,
            format!("{v:?} must be positive and at most 9999 years"),
        )),
    }
}

/// Tag ids from repeated `tag_id=1&tag_id=2` and/or comma lists `tag_id=1,2`; duplicates are
/// dropped (first occurrence kept); at least one, at most `max`.
pub(crate) fn tag_ids(q: &Query, name: &str, max: usize) -> Result<Vec<i64>, Problem> {
    let mut out: Vec<i64> = Vec::new();
    for v in q.all(name) {
        for item in v.split(',') {
            let item = item.trim();
            let id: i64 = item.parse().map_err(|_| {
                Problem::bad_parameter(name, format!("{item:?} is not a tag id (an integer)"))
            })?;
            if !out.contains(&id) {
                if out.len() == max {
                    return Err(Problem::bad_parameter(
                        name,
                        format!("at most {max} tag ids per request"),
                    ));
                }
                out.push(id);
            }
        }
    }
    if out.is_empty() {
        return Err(Problem::bad_parameter(
            name,
            "required: one or more tag ids, `tag_id=1&tag_id=2` or `tag_id=1,2`",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str, allowed: &[&str]) -> Query {
        Query::parse(Some(raw), allowed).expect("query")
    }

    #[test]
    fn query_rules() {
        assert_eq!(
            Query::parse(Some("tag_ids=1"), &["tag_id"])
                .unwrap_err()
                .parameter(),
            Some("tag_ids")
        );
        let x = q("site=a%20b&prefix=&x=1&x=2", &["site", "prefix", "x"]);
        assert_eq!(x.opt("site").expect("site"), Some("a b"));
        assert_eq!(x.opt("prefix").expect("prefix"), None);
        assert_eq!(x.opt("x").unwrap_err().parameter(), Some("x"));
        assert_eq!(x.req("missing").unwrap_err().parameter(), Some("missing"));
        assert!(Query::parse(None, &[]).is_ok());
    }

    #[test]
    fn times() {
        const T0: i64 = 1_767_225_600_000;
        assert_eq!(time_ms("from", "1767225600000").expect("ms"), T0);
        assert_eq!(time_ms("from", "2026-01-01T00:00:00Z").expect("rfc"), T0);
        assert_eq!(
            time_ms("from", "2026-01-01T01:00:00.250+01:00").expect("offset"),
            T0 + 250
        );
        for bad in [
            "yesterday",
            "2026-01-01",
            "-5",
            "99999999999999999999",
            "1e3",
        ] {
            assert_eq!(
                time_ms("from", bad).unwrap_err().parameter(),
                Some("from"),
                "{bad}"
            );
        }
        assert_eq!(
            range(&q("from=10&to=10", &["from", "to"]))
                .unwrap_err()
                .parameter(),
            Some("to")
        );
        assert_eq!(
            range(&q("to=10", &["from", "to"])).unwrap_err().parameter(),
            Some("from")
        );
        assert_eq!(
            range(&q("from=1&to=10", &["from", "to"])).expect("range"),
            (1, 10)
        );
    }

    #[test]
    fn event_times_and_days() {
        const NOW: i64 = 1_767_225_600_000;
        assert_eq!(event_ms("opened_at", NOW, NOW), Ok(NOW));
        assert_eq!(
            event_text("opened_at", "2026-01-01T00:00:00Z", NOW),
            Ok(NOW)
        );
        assert_eq!(event_text("opened_at", " 1767225600000 ", NOW), Ok(NOW));
        for (field, ms) in [
            ("delivered_at", -1),
            ("opened_at", i64::MAX),
            ("closed_at", 0),
        ] {
            let e = event_ms(field, ms, NOW).unwrap_err();
            assert!(e.starts_with(&format!("{field}: ")), "{e}");
        }
        for t in [
            "1969-12-31T23:59:59Z",
            "1994-06-01T00:00:00Z",
            "9999-12-31T00:00:00Z",
            "-1",
            "x",
        ] {
            assert!(
                event_text("delivered_at", t, NOW)
                    .unwrap_err()
                    .starts_with("delivered_at: "),
                "{t}"
            );
        }
        assert_eq!(day("date", "1970-01-02").expect("day"), 1);
        for bad in ["1969-12-31", "0001-01-01", "2026-02-30", "20260101"] {
            assert_eq!(
                day("date", bad).unwrap_err().parameter(),
                Some("date"),
                "{bad}"
            );
        }
    }

    #[test]
    fn steps() {
        assert_eq!(step_ms("step", "500ms").expect("ms"), 500);
        assert_eq!(step_ms("step", "30s").expect("s"), 30_000);
        assert_eq!(step_ms("step", "5m").expect("m"), 300_000);
        assert_eq!(step_ms("step", "1h").expect("h"), 3_600_000);
        assert_eq!(step_ms("step", "2d").expect("d"), 172_800_000);
        for bad in [
            "",
            "1",
            "h",
            "0s",
            "-1h",
            "1.5h",
            "1w",
            "1 h",
            "99999999999999999999d",
            "9999999999999d",
        ] {
            assert!(step_ms("step", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tag_id_lists() {
        assert_eq!(
            tag_ids(
                &q("tag_id=1&tag_id=2,3&tag_id=1", &["tag_id"]),
                "tag_id",
                10
            )
            .expect("ids"),
            vec![1, 2, 3]
        );
        assert!(tag_ids(&q("", &["tag_id"]), "tag_id", 10).is_err());
        assert!(tag_ids(&q("tag_id=1,,2", &["tag_id"]), "tag_id", 10).is_err());
        assert!(tag_ids(&q("tag_id=x", &["tag_id"]), "tag_id", 10).is_err());
        assert!(tag_ids(&q("tag_id=1,2,3", &["tag_id"]), "tag_id", 2).is_err());
    }
}
