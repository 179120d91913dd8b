//! `edge-agent plan`.

use std::path::Path;
use std::process::ExitCode;

use super::CliError;
use crate::config::{duration, TagMap};
use crate::drivers::modbus::config::Link;
use crate::drivers::modbus::plan;

/// The Modbus read requests of one cycle of device `di` (`None`: not a Modbus device).
fn requests(map: &TagMap, di: usize) -> Option<(Vec<plan::ReadRequest>, plan::CycleEstimate)> {
    let d = &map.devices[di];
    let m = d.driver.modbus()?;
    let reqs = plan::plan(
        &crate::drivers::modbus::items(d, &map.tags),
        &plan::Limits::from(m),
    );
    let est = plan::estimate(m, &reqs);
    Some((reqs, est))
}

/// The Modbus requests of each event definition of device `di`: (name, trigger interval, plan).
fn event_plans(
    map: &TagMap,
    di: usize,
) -> Vec<(
    String,
    std::time::Duration,
    crate::drivers::modbus::events::EventPlan,
)> {
    let d = &map.devices[di];
    let Some(m) = d.driver.modbus() else {
        return Vec::new();
    };
    d.events
        .iter()
        .filter_map(|e| {
            Some((
                e.name.clone(),
                e.poll_interval,
                crate::drivers::modbus::events::EventPlan::new(e, m)?,
            ))
        })
        .collect()
}

/// How a GPS receiver or TLS-350 console is reached and what a cycle does (`None`: other).
fn serial_plan(map: &TagMap, di: usize) -> Option<(String, Vec<String>)> {
    let d = &map.devices[di];
    if let Some(g) = d.driver.gps() {
        return Some((g.describe(), g.plan_lines()));
    }
    let t = d.driver.tls350()?;
    let mut tanks: Vec<u8> = d
        .tags
        .iter()
        .filter_map(|&id| match &map.tags[id as usize].source {
            crate::config::TagSource::Tls350(t) => Some(t.tank),
            _ => None,
        })
        .collect();
    tanks.sort_unstable();
    tanks.dedup();
    Some((t.describe(), t.plan_lines(&tanks)))
}

fn fc_name(k: crate::drivers::modbus::config::RegisterKind) -> String {
    format!("FC{} read {}", k.function_code(), k.as_str())
}

pub fn run(path: &Path, format: &str) -> Result<ExitCode, CliError> {
    let map = super::load_map(path)?;
    if format == "json" {
        let devices: Vec<serde_json::Value> = (0..map.devices.len())
            .map(|di| {
                let d = &map.devices[di];
                if let Some((link, lines)) = serial_plan(&map, di) {
                    return serde_json::json!({
                        "device": d.name,
                        "protocol": d.driver.protocol(),
                        "link": link,
                        "poll_interval_ms": d.poll_interval.as_millis() as u64,
                        "tags": d.tags.len(),
                        "cycle": lines,
                        "requests": [],
                    });
                }
                let Some((reqs, est)) = requests(&map, di) else {
                    return serde_json::json!({
                        "device": d.name,
                        "protocol": d.driver.protocol(),
                        "poll_interval_ms": d.poll_interval.as_millis() as u64,
                        "tags": d.tags.len(),
                        "requests": [],
                    });
                };
                let events: Vec<serde_json::Value> = event_plans(&map, di)
                    .into_iter()
                    .map(|(name, interval, p)| {
                        let req = |r: &plan::ReadRequest, names: Vec<String>| serde_json::json!({
                            "function": r.kind.function_code(),
                            "table": r.kind.as_str(),
                            "start": r.start,
                            "count": r.count,
                            "fields": names,
                        });
                        let def = d.events.iter().find(|e| e.name == name);
                        serde_json::json!({
                            "event": name,
                            "poll_interval_ms": interval.as_millis() as u64,
                            "trigger": req(&p.trigger, vec![]),
                            "fields": p.fields.iter().map(|r| req(r, r.tags.iter().filter_map(|t| def.and_then(|e| e.fields.get(*t as usize)).map(|f| f.name.clone())).collect())).collect::<Vec<_>>(),
                            "handshake": p.handshake.as_ref().map(|(t, _)| serde_json::json!({"table": t.register.as_str(), "address": t.address})),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "protocol": d.driver.protocol(),
                    "device": d.name,
                    "events": events,
                    "poll_interval_ms": d.poll_interval.as_millis() as u64,
                    "estimated_cycle_ms": est.expected.as_secs_f64() * 1000.0,
                    "all_timeouts_cycle_ms": est.all_timeouts.as_secs_f64() * 1000.0,
                    "requests": reqs.iter().map(|r| serde_json::json!({
                        "function": r.kind.function_code(),
                        "table": r.kind.as_str(),
                        "start": r.start,
                        "count": r.count,
                        "tags": r.tags.iter().map(|t| map.tags[*t as usize].name.clone()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let total: usize = devices
            .iter()
            .map(|d| d["requests"].as_array().map_or(0, Vec::len))
            .sum();
        println!(
            "{}",
            serde_json::json!({ "devices": devices, "total_requests": total })
        );
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_text(&map));
    Ok(ExitCode::SUCCESS)
}

/// The text plan of every device (what `edge-agent plan` prints).
pub fn render_text(map: &TagMap) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut total = 0;
    for (di, d) in map.devices.iter().enumerate() {
        if let Some((link, lines)) = serial_plan(map, di) {
            let _ = writeln!(
                out,
                "device {} ({link}), {} tag(s), poll every {}",
                d.name,
                d.tags.len(),
                duration::format(d.poll_interval)
            );
            for l in lines {
                let _ = writeln!(out, "  {l}");
            }
            continue;
        }
        let (Some(m), Some((reqs, est))) = (d.driver.modbus(), requests(map, di)) else {
            let _ = writeln!(
                out,
                "device {} ({}), {} tags, poll every {}: no read requests to plan\n",
                d.name,
                d.driver.protocol(),
                d.tags.len(),
                duration::format(d.poll_interval)
            );
            continue;
        };
        let link = match &m.link {
            Link::Tcp { host, port } => format!("modbus-tcp {host}:{port}"),
            Link::Rtu(s) => format!("modbus-rtu {} {} baud", s.path, s.baud),
        };
        let _ = writeln!(
            out,
            "device {} ({link} unit {}), poll every {}",
            d.name,
            m.unit,
            duration::format(d.poll_interval)
        );
        let _ = writeln!(
            out,
            "  {:>3}  {:<20} {:>6} {:>6}  tags",
            "#", "function", "start", "count"
        );
        for (i, r) in reqs.iter().enumerate() {
            let names: Vec<&str> = r
                .tags
                .iter()
                .map(|t| map.tags[*t as usize].name.as_str())
                .collect();
            let start = if m.address_base == 1 {
                format!("{} ({})", r.start, u32::from(r.start) + 1)
            } else {
                r.start.to_string()
            };
            let _ = writeln!(
                out,
                "  {:>3}  {:<20} {:>6} {:>6}  {}",
                i + 1,
                fc_name(r.kind),
                start,
                r.count,
                names.join(", ")
            );
        }
        for (e, (name, interval, p)) in d.events.iter().zip(event_plans(map, di)) {
            let _ = writeln!(
                out,
                "  event {name} ({} trigger, read every {}; the field block only when it fires):",
                e.trigger.mode.as_str(),
                duration::format(interval)
            );
            let _ = writeln!(
                out,
                "       {:<20} {:>6} {:>6}  trigger",
                fc_name(p.trigger.kind),
                p.trigger.start,
                p.trigger.count
            );
            for r in &p.fields {
                let names: Vec<&str> = r
                    .tags
                    .iter()
                    .filter_map(|t| e.fields.get(*t as usize).map(|f| f.name.as_str()))
                    .collect();
                let _ = writeln!(
                    out,
                    "       {:<20} {:>6} {:>6}  {}",
                    fc_name(r.kind),
                    r.start,
                    r.count,
                    names.join(", ")
                );
            }
            if let Some((t, v)) = &p.handshake {
                let (fc, what) = match t.register {
                    crate::drivers::modbus::config::RegisterKind::Coil => (5, "coil"),
                    _ if t.span() > 1 => (16, "holding"),
                    _ => (6, "holding"),
                };
                let _ = writeln!(
                    out,
                    "       {:<20} {:>6} {:>6}  handshake ({}) after the record is committed",
                    format!("FC{fc} write {what}"),
                    t.address,
                    t.span().max(1),
                    match v {
                        crate::config::HandshakeValue::Seq => "the sequence number".to_string(),
                        crate::config::HandshakeValue::Bool(b) => b.to_string(),
                        crate::config::HandshakeValue::Int(n) => n.to_string(),
                    }
                );
            }
        }
        total += reqs.len();
        let pct = est.expected.as_secs_f64() / d.poll_interval.as_secs_f64() * 100.0;
        let _ = writeln!(
            out,
            "  {} request(s) for {} tag(s); estimated cycle {} ({pct:.1}% of the interval); if every request timed out: {}",
            reqs.len(),
            d.tags.len(),
            duration::format(est.expected),
            duration::format(est.all_timeouts)
        );
    }
    let _ = writeln!(
        out,
        "total: {total} request(s) per cycle for {} tag(s) on {} device(s)",
        map.tags.len(),
        map.devices.len()
    );
    out
}
