//! `cloud-ingest calc`: API MPMS 11.1-2004 volume correction factors for tickets, one JSON
//! object per line on standard input → one JSON result per line on standard output, in order.
//!
//! The line function [`line`] is pure (used by the benchmark and the tests); [`run`] is the
//! streaming loop. Input and output fields are documented in [`HELP`] (`calc --help`).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::measure::{
    correct, Base, Density, DensityAt, Group, Input, MeasureError, Mode, Pressure, Request,
    Temperature,
};

/// The long help of `cloud-ingest calc` (every input and output field, with an example).
pub const HELP: &str = "\
Reads one JSON object per line on standard input and writes one JSON result per line on standard
output, in the same order (API MPMS 11.1-2004 / ASTM D1250-04 / IP 200/04).

Input fields:
  group             \"crude\", \"refined\" (sub-group chosen from the density at 60 °F), \"lube\",
                    or \"special\" with alpha60_per_f
  alpha60_per_f     thermal expansion coefficient at 60 °F, 1/°F (230e-6…930e-6); special only
  base_temp_c       base temperature 15 or 20 (°C)        } exactly one of the two
  base_temp_f       base temperature 60 (°F)              }
  density_base      density at the base temperature       } exactly one of the two
  density_observed  density at temp_c/temp_f and pressure }
  density_unit      \"kg/m3\" (default), \"api\" (°API) or \"relative\" (relative density
                    60/60 °F, × 999.016 kg/m³); api and relative need base_temp_f 60
  temp_c | temp_f   observation temperature, °C or °F (ITS-90), −50…150 °C = −58…302 °F
  pressure          observation gauge pressure (default 0); negative gauge is treated as 0
                    (full vacuum at most); up to 1500 psig = 10342.1 kPa = 103.421 bar
  pressure_unit     \"kpa\", \"bar\" or \"psi\" (gauge; required with pressure)
  mode              \"exact\" (default: unrounded) or \"table\" (printed tables: density rounded
                    to 0.1 kg/m³, 0.1 °API or 0.0001; temperature to 0.05 °C or 0.1 °F;
                    pressure to 5 kPa, 0.05 bar or 1 psi; factors to 5 decimals, densities out
                    to 0.1 kg/m³)
  id                optional, any JSON value, echoed in the result (also on errors)
Unknown and duplicate fields are errors (typos must not pass silently); null is the same as
leaving a field out.

Output fields:
  id                the input's id, when given
  ctl               correction for the temperature of the liquid, base → observation
                    temperature (ρ_obs = ρ_base · CTL · CPL; V_base = V_obs · CTPL)
  cpl               correction for the pressure of the liquid at the observation conditions
  ctpl              CTL × CPL (table mode: from the unrounded factors, then rounded)
  density_60f       density at 60 °F, kg/m³
  density_base      density at the metric base, kg/m³ (only with base_temp_c)
  group_used        \"crude\", \"gasoline\", \"transition\", \"jet\", \"fuel_oil\", \"lube\" or
                    \"special\"
On invalid input the line is {\"error\": \"…\"} naming the input field and the limit (invalid
JSON too), and the following lines go on. A blank input line gives a blank output line, so
input and output stay line-aligned (e.g. for `paste`).

Exit status: 0 when every line was computed, 1 when at least one line was an error (all lines
are still processed), 2 when standard input or output failed.

Example (tickets.jsonl holds one request per line):
  {\"id\":\"T1\",\"group\":\"crude\",\"base_temp_f\":60,\"density_base\":850,\"temp_f\":100,\"mode\":\"table\"}
  {\"id\":\"T2\",\"group\":\"refined\",\"base_temp_c\":15,\"density_base\":865.6,\"temp_c\":87.32,
    \"pressure\":75,\"pressure_unit\":\"kpa\"}                      (one line in the file)
  {\"id\":\"T3\",\"group\":\"crude\",\"base_temp_f\":60,\"density_base\":100,\"density_unit\":\"api\",
    \"temp_f\":-58.05}                                          (one line in the file)
  $ cloud-ingest calc < tickets.jsonl; echo $?
  {\"id\":\"T1\",\"ctl\":0.98101,\"cpl\":1,\"ctpl\":0.98101,\"density_60f\":850,\"group_used\":\"crude\"}
  {\"id\":\"T2\",\"ctl\":0.9404167471942763,\"cpl\":1.000078931033071,\"ctpl\":0.9404909752596496,
    \"density_60f\":865.2097994470051,\"density_base\":865.6,\"group_used\":\"fuel_oil\"}
  {\"id\":\"T3\",\"error\":\"temp_f: temperature -58.05 °F is below the limit -58 °F\"}
  1
";

/// The fields of one input line (null is the same as absent).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields<'a> {
    id: Option<Value>,
    #[serde(borrow)]
    group: Option<Cow<'a, str>>,
    alpha60_per_f: Option<f64>,
    base_temp_c: Option<f64>,
    base_temp_f: Option<f64>,
    density_base: Option<f64>,
    density_observed: Option<f64>,
    #[serde(borrow)]
    density_unit: Option<Cow<'a, str>>,
    temp_c: Option<f64>,
    temp_f: Option<f64>,
    pressure: Option<f64>,
    #[serde(borrow)]
    pressure_unit: Option<Cow<'a, str>>,
    #[serde(borrow)]
    mode: Option<Cow<'a, str>>,
}

const FIELDS: &[&str] = &[
    "id",
    "group",
    "alpha60_per_f",
    "base_temp_c",
    "base_temp_f",
    "density_base",
    "density_observed",
    "density_unit",
    "temp_c",
    "temp_f",
    "pressure",
    "pressure_unit",
    "mode",
];

/// Field names the user gave, for naming them in library errors.
struct Names {
    temp: &'static str,
    density: &'static str,
}

fn num(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{key}: {n} is not a representable number")),
        Some(v) => Err(format!("{key}: expected a number, got {v}")),
    }
}

fn text<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<Cow<'a, str>>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Cow::Borrowed(s))),
        Some(v) => Err(format!("{key}: expected a string, got {v}")),
    }
}

/// The slow path: the line as a JSON value, checked field by field so that the error names the
/// field (serde's messages give only a column).
fn fields_of(obj: &Map<String, Value>) -> Result<Fields<'_>, String> {
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "{k}: unknown field (expected one of {})",
            FIELDS.join(", ")
        ));
    }
    Ok(Fields {
        id: obj.get("id").cloned(),
        group: text(obj, "group")?,
        alpha60_per_f: num(obj, "alpha60_per_f")?,
        base_temp_c: num(obj, "base_temp_c")?,
        base_temp_f: num(obj, "base_temp_f")?,
        density_base: num(obj, "density_base")?,
        density_observed: num(obj, "density_observed")?,
        density_unit: text(obj, "density_unit")?,
        temp_c: num(obj, "temp_c")?,
        temp_f: num(obj, "temp_f")?,
        pressure: num(obj, "pressure")?,
        pressure_unit: text(obj, "pressure_unit")?,
        mode: text(obj, "mode")?,
    })
}

fn one_of(
    (a, x): (&'static str, Option<f64>),
    (b, y): (&'static str, Option<f64>),
) -> Result<(&'static str, f64), String> {
    match (x, y) {
        (Some(x), None) => Ok((a, x)),
        (None, Some(y)) => Ok((b, y)),
        (Some(_), Some(_)) => Err(format!("{a} and {b}: give only one of them")),
        (None, None) => Err(format!("{a} or {b} is required")),
    }
}

/// Turn the fields of one line into a library request.
fn request(f: &Fields) -> Result<(Request, Names), String> {
    let alpha = f.alpha60_per_f;
    let group = match f.group.as_deref() {
        None => return Err("group is required (crude, refined, lube or special)".into()),
        Some("special") => match alpha {
            Some(a) => Group::Special { alpha60_per_f: a },
            None => return Err("alpha60_per_f is required with group \"special\"".into()),
        },
        Some(g) => match Group::parse(g) {
            Some(_) if alpha.is_some() => {
                return Err(format!(
                    "alpha60_per_f: only with group \"special\" (group is {g:?})"
                ))
            }
            Some(group) => group,
            None => {
                return Err(format!(
                    "group: {g:?} is not one of \"crude\", \"refined\", \"lube\", \"special\""
                ))
            }
        },
    };
    let base = match one_of(
        ("base_temp_c", f.base_temp_c),
        ("base_temp_f", f.base_temp_f),
    )? {
        ("base_temp_c", t) => {
            if t == 15.0 {
                Base::C15
            } else if t == 20.0 {
                Base::C20
            } else {
                return Err(format!("base_temp_c: {t} is not 15 or 20"));
            }
        }
        (_, t) => {
            if t == 60.0 {
                Base::F60
            } else {
                return Err(format!("base_temp_f: {t} is not 60"));
            }
        }
    };
    let (dkey, dval) = one_of(
        ("density_base", f.density_base),
        ("density_observed", f.density_observed),
    )?;
    let unit = f.density_unit.as_deref().unwrap_or("kg/m3");
    let d = match unit {
        "kg/m3" => Density::KgM3(dval),
        "api" | "relative" if base != Base::F60 => {
            return Err(format!(
                "density_unit: {unit:?} is defined at 60 °F; use \"kg/m3\" with base_temp_c"
            ))
        }
        "api" => Density::Api(dval),
        "relative" => Density::Relative(dval),
        other => {
            return Err(format!(
                "density_unit: {other:?} is not one of \"kg/m3\", \"api\", \"relative\""
            ))
        }
    };
    let density = if dkey == "density_base" {
        DensityAt::Base(d)
    } else {
        DensityAt::Observed(d)
    };
    let (tkey, temperature) = match one_of(("temp_c", f.temp_c), ("temp_f", f.temp_f))? {
        ("temp_c", t) => ("temp_c", Temperature::C(t)),
        (_, t) => ("temp_f", Temperature::F(t)),
    };
    let pressure = match (f.pressure, f.pressure_unit.as_deref()) {
        (None, None) => Pressure::KPa(0.0),
        (Some(p), Some("kpa")) => Pressure::KPa(p),
        (Some(p), Some("bar")) => Pressure::Bar(p),
        (Some(p), Some("psi")) => Pressure::Psi(p),
        (Some(_), Some(u)) => {
            return Err(format!(
                "pressure_unit: {u:?} is not one of \"kpa\", \"bar\", \"psi\""
            ))
        }
        (Some(_), None) => {
            return Err("pressure_unit is required with pressure (kpa, bar or psi)".into())
        }
        (None, Some(_)) => return Err("pressure_unit: given without pressure".into()),
    };
    let mode = match f.mode.as_deref() {
        None | Some("exact") => Mode::Exact,
        Some("table") => Mode::Table,
        Some(m) => return Err(format!("mode: {m:?} is not \"exact\" or \"table\"")),
    };
    Ok((
        Request {
            group,
            base,
            density,
            temperature,
            pressure,
            mode,
        },
        Names {
            temp: tkey,
            density: dkey,
        },
    ))
}

fn field(e: &MeasureError, names: &Names) -> &'static str {
    match e.input() {
        Input::Temperature => names.temp,
        Input::Density => names.density,
        Input::Pressure => "pressure",
        Input::Alpha60 => "alpha60_per_f",
        _ => "input",
    }
}

/// Parse a line: the typed fast path, or — when it fails — the JSON value field by field for
/// an error that names the field.
fn parse(input: &str) -> Result<Fields<'_>, (Option<Value>, String)> {
    let fast_err = match serde_json::from_str::<Fields>(input) {
        Ok(f) => return Ok(f),
        Err(e) => e,
    };
    match serde_json::from_str::<Value>(input) {
        Ok(Value::Object(obj)) => {
            let id = obj.get("id").cloned();
            match fields_of(&obj) {
                Err(e) => Err((id, e)),
                // Well-typed fields, yet the fast path failed: e.g. a duplicate field.
                Ok(_) => Err((id, fast_err.to_string())),
            }
        }
        Ok(other) => {
            let kind = match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            Err((None, format!("expected a JSON object, got {kind}")))
        }
        Err(e) => Err((None, format!("invalid JSON: {e}"))),
    }
}

/// Compute one input line into `out` (cleared first): the result line without its newline, or
/// `{"error": …}` on bad input; true for a result, false for an error. A blank line gives "".
pub fn line(input: &str, out: &mut String) -> bool {
    out.clear();
    if input.trim().is_empty() {
        return true;
    }
    let f = match parse(input) {
        Ok(f) => f,
        Err((id, e)) => {
            write_err(out, id.as_ref(), &e);
            return false;
        }
    };
    let id = f.id.as_ref();
    let (req, names) = match request(&f) {
        Ok(r) => r,
        Err(e) => {
            write_err(out, id, &e);
            return false;
        }
    };
    match correct(&req) {
        Ok(c) => {
            out.push('{');
            if let Some(id) = id {
                out.push_str("\"id\":");
                push_json(out, id);
                out.push(',');
            }
            // f64 Display is the shortest text that reads back to the same number: valid JSON
            // for these finite values.
            let _ = write!(
                out,
                "\"ctl\":{},\"cpl\":{},\"ctpl\":{},\"density_60f\":{}",
                c.ctl, c.cpl, c.ctpl, c.density_60f
            );
            if req.base != Base::F60 {
                let _ = write!(out, ",\"density_base\":{}", c.density_base);
            }
            let _ = write!(out, ",\"group_used\":\"{}\"}}", c.group_used.as_str());
            true
        }
        Err(e) => {
            let f = field(&e, &names);
            write_err(out, id, &format!("{f}: {e}"));
            false
        }
    }
}

fn write_err(out: &mut String, id: Option<&Value>, error: &str) {
    out.clear();
    out.push('{');
    if let Some(id) = id {
        out.push_str("\"id\":");
        push_json(out, id);
        out.push(',');
    }
    out.push_str("\"error\":");
    push_json(out, error);
    out.push('}');
}

fn push_json<T: Serialize + ?Sized>(out: &mut String, v: &T) {
    // Serializing a JSON value or a string cannot fail; the fallback keeps the line valid JSON.
    match serde_json::to_string(v) {
        Ok(s) => out.push_str(&s),
        Err(_) => out.push_str("null"),
    }
}

/// Stream standard input to standard output line by line. Output is flushed whenever no more
/// input is buffered, so an interactive caller gets each answer right away.
pub fn run() -> ExitCode {
    let stdin = std::io::stdin();
    let mut input = BufReader::with_capacity(64 * 1024, stdin.lock());
    let stdout = std::io::stdout();
    let mut output = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    match stream(&mut input, &mut output) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        // The reader went away (`… | head`): stop quietly, like every other command.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloud-ingest calc: {e}");
            ExitCode::from(2)
        }
    }
}

/// The loop of [`run`] over any reader and writer; Ok(true) when no line was an error.
/// Output is flushed when the reader holds no more buffered input (checked without reading, so
/// a caller that sends one line and waits for its answer gets it).
pub fn stream<R: Read, W: Write>(
    input: &mut BufReader<R>,
    output: &mut W,
) -> std::io::Result<bool> {
    let (mut buf, mut out) = (Vec::new(), String::new());
    let mut all_ok = true;
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let bytes = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        match std::str::from_utf8(bytes) {
            Ok(text) => all_ok &= line(text, &mut out),
            Err(e) => {
                out.clear();
                write_err(&mut out, None, &format!("invalid JSON: not UTF-8 ({e})"));
                all_ok = false;
            }
        }
        output.write_all(out.as_bytes())?;
        output.write_all(b"\n")?;
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
    output.flush()?;
    Ok(all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &str) -> Value {
        let mut out = String::new();
        line(input, &mut out);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
    }

    fn err(input: &str) -> String {
        let v = one(input);
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error for {input}: {v}"))
            .to_string()
    }

    #[test]
    fn published_examples() {
        let v = one(
            r#"{"group":"crude","base_temp_f":60,"density_base":17.785,"density_unit":"api","temp_f":-27.7,"pressure":0,"pressure_unit":"psi"}"#,
        );
        assert!(
            (v["ctl"].as_f64().unwrap() - 1.033011591958).abs() < 1e-12,
            "{v}"
        );
        assert_eq!(v["group_used"], "crude");
        assert!(v.get("density_base").is_none());
        let v = one(
            r#"{"group":"refined","base_temp_f":60,"density_base":0.7943,"density_unit":"relative","temp_f":85.0,"pressure":247.3,"pressure_unit":"psi"}"#,
        );
        assert!(
            (v["ctl"].as_f64().unwrap() - 0.986832406683).abs() < 1e-12,
            "{v}"
        );
        assert!(
            (v["cpl"].as_f64().unwrap() - 1.001646525013).abs() < 1e-12,
            "{v}"
        );
        assert_eq!(v["group_used"], "jet");
        let v = one(
            r#"{"id":"T-7","group":"crude","base_temp_f":60,"density_observed":823.7,"temp_f":80.3,"pressure":-5,"pressure_unit":"psi"}"#,
        );
        assert!(
            (v["density_60f"].as_f64().unwrap() - 832.048516184234).abs() < 1e-8,
            "{v}"
        );
        assert_eq!(v["cpl"], 1.0);
        assert_eq!(v["id"], "T-7");
        let v = one(
            r#"{"group":"refined","base_temp_c":15,"density_base":865.6,"temp_c":87.32,"pressure":75,"pressure_unit":"kpa"}"#,
        );
        assert!(
            (v["ctl"].as_f64().unwrap() - 0.940416747194).abs() < 1e-12,
            "{v}"
        );
        assert!(
            (v["cpl"].as_f64().unwrap() - 1.000078931033).abs() < 1e-12,
            "{v}"
        );
        assert_eq!(v["density_base"], 865.6);
        assert_eq!(v["group_used"], "fuel_oil");
        let v = one(
            r#"{"group":"refined","base_temp_c":15,"density_observed":865.6,"temp_c":20,"pressure":11.25,"pressure_unit":"bar"}"#,
        );
        assert!(
            (v["density_base"].as_f64().unwrap() - 868.425929024799).abs() < 1e-8,
            "{v}"
        );
        assert!(
            (v["ctl"].as_f64().unwrap() - 0.995955841168).abs() < 1e-12,
            "{v}"
        );
        let v = one(
            r#"{"group":"refined","base_temp_c":15,"density_base":865.6,"temp_c":87.32,"pressure":75,"pressure_unit":"kpa","mode":"table"}"#,
        );
        assert_eq!(v["cpl"], 1.00008);
        let v = one(
            r#"{"group":"special","alpha60_per_f":0.0005,"base_temp_c":20,"density_base":900,"temp_c":20}"#,
        );
        assert_eq!(
            (v["ctl"].as_f64(), v["group_used"].as_str()),
            (Some(1.0), Some("special"))
        );
    }

    #[test]
    fn every_rejected_input_names_the_field() {
        let ok = r#""group":"crude","base_temp_f":60,"density_base":850"#;
        for (input, want) in [
            ("not json".to_string(), "invalid JSON: expected ident at line 1 column 2"),
            ("[1]".into(), "expected a JSON object, got an array"),
            (format!(r#"{{{ok},"temp_f":-58.05}}"#), "temp_f: temperature -58.05 °F is below the limit -58 °F"),
            (format!(r#"{{{ok},"temp_c":151}}"#), "temp_c: temperature 151 °C is above the limit 150 °C"),
            (format!(r#"{{{ok},"temp_c":"hot"}}"#), "temp_c: expected a number, got \"hot\""),
            (format!(r#"{{{ok}}}"#), "temp_c or temp_f is required"),
            (format!(r#"{{{ok},"temp_c":1,"temp_f":1}}"#), "temp_c and temp_f: give only one of them"),
            (format!(r#"{{{ok},"temp_c":20,"pressure":1600,"pressure_unit":"psi"}}"#), "pressure: pressure 1600 psig is above the limit 1500 psig"),
            (format!(r#"{{{ok},"temp_c":20,"pressure":-200,"pressure_unit":"kpa"}}"#), "pressure: pressure -200 kPa is below the limit -101.325 kPa"),
            (format!(r#"{{{ok},"temp_c":20,"pressure":3}}"#), "pressure_unit is required with pressure (kpa, bar or psi)"),
            (format!(r#"{{{ok},"temp_c":20,"pressure_unit":"psi"}}"#), "pressure_unit: given without pressure"),
            (format!(r#"{{{ok},"temp_c":20,"pressure":3,"pressure_unit":"atm"}}"#), "pressure_unit: \"atm\" is not one of \"kpa\", \"bar\", \"psi\""),
            (format!(r#"{{{ok},"temp_c":20,"mode":"fast"}}"#), "mode: \"fast\" is not \"exact\" or \"table\""),
            (format!(r#"{{{ok},"temp_c":20,"temp":20}}"#), "temp: unknown field (expected one of id, group, alpha60_per_f, base_temp_c, base_temp_f, density_base, density_observed, density_unit, temp_c, temp_f, pressure, pressure_unit, mode)"),
            (format!(r#"{{{ok},"temp_c":20,"density_unit":"lb/gal"}}"#), "density_unit: \"lb/gal\" is not one of \"kg/m3\", \"api\", \"relative\""),
            (format!(r#"{{{ok},"temp_c":20,"alpha60_per_f":0.0005}}"#), "alpha60_per_f: only with group \"special\" (group is \"crude\")"),
            (r#"{"group":"crude","base_temp_f":60,"density_base":1200,"temp_c":20}"#.into(), "density_base: density: 1200 kg/m³ at 60 °F gives 1200.0000 kg/m³ at 60 °F, outside the crude oil range 610.6–1163.5 kg/m³ at 60 °F"),
            (r#"{"group":"lube","base_temp_f":60,"density_observed":700,"temp_c":20}"#.into(), ""),
            (r#"{"group":"oil","base_temp_f":60,"density_base":850,"temp_c":20}"#.into(), "group: \"oil\" is not one of \"crude\", \"refined\", \"lube\", \"special\""),
            (r#"{"base_temp_f":60,"density_base":850,"temp_c":20}"#.into(), "group is required (crude, refined, lube or special)"),
            (r#"{"group":"special","base_temp_f":60,"density_base":850,"temp_c":20}"#.into(), "alpha60_per_f is required with group \"special\""),
            (r#"{"group":"special","alpha60_per_f":0.002,"base_temp_f":60,"density_base":850,"temp_c":20}"#.into(), "alpha60_per_f: alpha60 0.002 1/°F is above the limit 0.00093 1/°F"),
            (r#"{"group":"crude","base_temp_c":16,"density_base":850,"temp_c":20}"#.into(), "base_temp_c: 16 is not 15 or 20"),
            (r#"{"group":"crude","base_temp_f":59,"density_base":850,"temp_c":20}"#.into(), "base_temp_f: 59 is not 60"),
            (r#"{"group":"crude","density_base":850,"temp_c":20}"#.into(), "base_temp_c or base_temp_f is required"),
            (r#"{"group":"crude","base_temp_c":15,"base_temp_f":60,"density_base":850,"temp_c":20}"#.into(), "base_temp_c and base_temp_f: give only one of them"),
            (r#"{"group":"crude","base_temp_c":15,"temp_c":20}"#.into(), "density_base or density_observed is required"),
            (r#"{"group":"crude","base_temp_c":15,"density_base":850,"density_observed":850,"temp_c":20}"#.into(), "density_base and density_observed: give only one of them"),
            (r#"{"group":"crude","base_temp_c":15,"density_base":30,"density_unit":"api","temp_c":20}"#.into(), "density_unit: \"api\" is defined at 60 °F; use \"kg/m3\" with base_temp_c"),
            (r#"{"group":"crude","base_temp_f":60,"density_base":-131.5,"density_unit":"api","temp_c":20}"#.into(), "density_base: density -131.5 °API is below the limit -131.5 °API"),
        ] {
            let got = err(&input);
            if want.is_empty() {
                assert!(got.starts_with("density_observed: density: observed 700 kg/m³ at 20 °C gives"), "{got}");
            } else {
                assert_eq!(got, want, "for {input}");
            }
        }
        // Duplicate fields are errors, null is absent.
        let got =
            err(r#"{"group":"crude","base_temp_f":60,"density_base":850,"temp_c":20,"temp_c":30}"#);
        assert!(got.starts_with("duplicate field `temp_c`"), "{got}");
        let v = one(
            r#"{"group":"crude","base_temp_f":60,"density_base":850,"temp_c":20,"temp_f":null,"id":null}"#,
        );
        assert!(v["ctl"].is_number(), "{v}");
        // The id is echoed on errors too.
        assert_eq!(one(r#"{"id":7,"group":"x"}"#)["id"], 7);
    }

    /// The example of `--help` is what the command prints.
    #[test]
    fn help_example_is_true() {
        let help = HELP.replace("\n    ", "");
        for input in [
            r#"{"id":"T1","group":"crude","base_temp_f":60,"density_base":850,"temp_f":100,"mode":"table"}"#,
            r#"{"id":"T2","group":"refined","base_temp_c":15,"density_base":865.6,"temp_c":87.32,"pressure":75,"pressure_unit":"kpa"}"#,
            r#"{"id":"T3","group":"crude","base_temp_f":60,"density_base":100,"density_unit":"api","temp_f":-58.05}"#,
        ] {
            let mut out = String::new();
            line(input, &mut out);
            assert!(help.contains(&out), "--help lacks {out}");
        }
    }

    #[test]
    fn stream_keeps_lines_aligned() {
        let input = "{\"group\":\"crude\",\"base_temp_f\":60,\"density_base\":850,\"temp_f\":100}\r\n\n{bad\n\u{0}\n{\"group\":\"crude\",\"base_temp_f\":60,\"density_base\":850,\"temp_f\":60}";
        let mut out = Vec::new();
        let ok = stream(&mut BufReader::new(input.as_bytes()), &mut out).unwrap();
        assert!(!ok);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("{\"ctl\":0.98"), "{}", lines[0]);
        assert_eq!(lines[1], "");
        assert!(
            lines[2].starts_with("{\"error\":\"invalid JSON"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("{\"error\":\"invalid JSON"),
            "{}",
            lines[3]
        );
        assert!(lines[4].starts_with("{\"ctl\":1"), "{}", lines[4]);
        let mut bytes = b"{\"group\":1}\n".to_vec();
        bytes.extend_from_slice(b"\xff\xfe\n{}\n");
        let mut out = Vec::new();
        stream(&mut BufReader::new(bytes.as_slice()), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().nth(1).unwrap().contains("not UTF-8"), "{text}");
    }
}
