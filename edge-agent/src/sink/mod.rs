//! Where readings go after acquisition, until the buffer stage takes over: printing them as JSON
//! lines or a table (`read`, `run --output jsonl`).

use std::fmt::Write as _;

use crate::config::TagMap;
use crate::model::{rfc3339_ms, Quality, Reading, Value};

/// One reading as the documented JSON line:
/// `{"tag":"...","value":...,"quality":"...","ts":"RFC 3339"}` plus `error` when not good.
pub fn json_line(map: &TagMap, r: &Reading) -> String {
    let name = map
        .tags
        .get(r.tag as usize)
        .map(|t| t.name.as_str())
        .unwrap_or("?");
    let mut obj = serde_json::Map::new();
    obj.insert("tag".into(), name.into());
    obj.insert(
        "value".into(),
        match &r.value {
            Some(Value::Float(f)) => serde_json::Number::from_f64(*f)
                .map(Into::into)
                .unwrap_or(serde_json::Value::Null),
            Some(v) => serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        },
    );
    obj.insert("quality".into(), r.quality.as_str().into());
    obj.insert("ts".into(), rfc3339_ms(r.ts_ms).into());
    if r.quality != Quality::Good {
        obj.insert("error".into(), r.error.clone().unwrap_or_default().into());
    }
    if let Some(s) = r.status {
        obj.insert("status".into(), s.into());
    }
    if let Some(c) = &r.counter {
        obj.insert(
            "counter".into(),
            serde_json::to_value(c).unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::Value::Object(obj).to_string()
}

fn value_text(v: &Option<Value>) -> String {
    match v {
        Some(Value::Float(f)) => format!("{f}"),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::UInt(u)) => u.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Text(t)) => format!("{t:?}"),
        None => "-".into(),
    }
}

/// Readings as an aligned table (tag, value, unit, quality, time, rtt or error).
pub fn table(map: &TagMap, readings: &[Reading]) -> String {
    let rows: Vec<[String; 6]> = readings
        .iter()
        .map(|r| {
            let t = map.tags.get(r.tag as usize);
            [
                t.map(|t| t.name.clone()).unwrap_or_default(),
                value_text(&r.value),
                t.and_then(|t| t.unit.clone()).unwrap_or_default(),
                r.quality.as_str().to_owned(),
                rfc3339_ms(r.ts_ms),
                if r.quality == Quality::Good {
                    format!("{:.1} ms", f64::from(r.rtt_us) / 1000.0)
                } else {
                    r.error.clone().unwrap_or_default()
                },
            ]
        })
        .collect();
    let head = ["TAG", "VALUE", "UNIT", "QUALITY", "TIME", "RTT / ERROR"];
    let mut w = head.map(str::len);
    for row in &rows {
        for (i, c) in row.iter().enumerate().take(5) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, c: &[String; 6]| {
        let _ = writeln!(
            s,
            "{:<a$}  {:>b$}  {:<c$}  {:<d$}  {:<e$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4]
        );
    };
    line(&mut s, &head.map(String::from));
    for r in &rows {
        line(&mut s, r);
    }
    s
}

fn wire_value_json(v: &flowsquare_wire::WireValue) -> serde_json::Value {
    use flowsquare_wire::WireValue as W;
    match v {
        W::Bool(b) => (*b).into(),
        W::Int(i) => (*i).into(),
        W::UInt(u) => (*u).into(),
        W::Float(f) => serde_json::Number::from_f64(*f)
            .map(Into::into)
            .unwrap_or(serde_json::Value::Null),
        W::Text(t) => t.clone().into(),
    }
}

/// One business event as a JSON line:
/// `{"event":"gantry-batch","source":"...","seq":N,"ts":"RFC 3339","fields":{...}}`.
pub fn event_line(e: &flowsquare_wire::Event) -> String {
    let fields: serde_json::Map<String, serde_json::Value> = e
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), wire_value_json(v)))
        .collect();
    serde_json::json!({
        "event": e.kind,
        "source": e.source,
        "seq": e.seq,
        "ts": rfc3339_ms(e.ts_ms),
        "fields": fields,
    })
    .to_string()
}

/// One detected loss as a JSON line:
/// `{"gap":"missed-event","from":"...","to":"...","count":N,"tags":[...]}`.
pub fn gap_line(g: &crate::model::GapRow) -> String {
    serde_json::json!({
        "gap": g.reason.as_str(),
        "from": rfc3339_ms(g.range.start),
        "to": rfc3339_ms(g.range.end),
        "count": g.count,
        "tags": g.tags,
    })
    .to_string()
}
