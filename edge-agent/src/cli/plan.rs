//! `edge-agent plan`.

use std::path::Path;
use std::process::ExitCode;

use super::CliError;
use crate::config::TagMap;
use crate::drivers::modbus::config::Link;
use crate::drivers::modbus::plan;
use crate::drivers::opcua::config::{Auth, Mode, OpcUaDevice};
use crate::settings::duration;

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
                if let Some(o) = d.driver.opcua() {
                    return opcua_json(&map, di, o);
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
        if let Some(o) = d.driver.opcua() {
            total += opcua_text(&mut out, map, di, o);
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

/// Requests per cycle of an OPC UA device: Read requests (polling) or CreateMonitoredItems
/// requests at connect (subscription; no requests per cycle, the server publishes).
fn opcua_requests(n: usize, o: &OpcUaDevice) -> usize {
    n.div_ceil(o.max_nodes_per_request.max(1))
}

fn opcua_header(d: &crate::config::Device, o: &OpcUaDevice) -> String {
    let auth = match &o.auth {
        Auth::Anonymous => "anonymous".to_owned(),
        Auth::Username { username, .. } => format!("user {username}"),
        Auth::Certificate { .. } => "certificate".to_owned(),
    };
    let mode = match o.mode {
        Mode::Subscription => format!(
            "subscription, publishing every {}",
            duration::format(o.publishing_interval)
        ),
        Mode::Polling => format!("polling every {}", duration::format(d.poll_interval)),
    };
    format!(
        "device {} (opcua {} {}/{}, {auth}), {mode}",
        d.name,
        o.endpoint,
        o.security_policy.as_str(),
        o.security_mode.as_str()
    )
}

fn deadband_text(map: &TagMap, id: crate::model::TagId) -> String {
    match map.tags[id as usize].deadband {
        Some(crate::config::Deadband::Absolute(a)) if a > 0.0 => format!("{a} (server)"),
        Some(crate::config::Deadband::Percent(p)) => format!("{p}% (agent)"),
        _ => "-".to_owned(),
    }
}

/// The nodes of one OPC UA event definition: (trigger, fields, handshake).
fn opcua_event_nodes(
    e: &crate::config::EventDef,
) -> (String, Vec<(String, String)>, Option<String>) {
    let node =
        |s: &crate::config::TagSource| s.opcua().map(|t| t.node.text.clone()).unwrap_or_default();
    (
        node(&e.trigger.source),
        e.fields
            .iter()
            .map(|f| (f.name.clone(), node(&f.source)))
            .collect(),
        e.handshake.as_ref().map(|h| node(&h.target)),
    )
}

/// The event definitions of an OPC UA device (each has its own session).
fn opcua_events_text(out: &mut String, d: &crate::config::Device, o: &OpcUaDevice) {
    use std::fmt::Write as _;
    for e in &d.events {
        let (trigger, fields, handshake) = opcua_event_nodes(e);
        let _ = writeln!(
            out,
            "  event {} ({} trigger, read every {} on its own session; the fields only when it fires):",
            e.name,
            e.trigger.mode.as_str(),
            duration::format(e.poll_interval)
        );
        let _ = writeln!(out, "       Read 1 node  {trigger}  trigger");
        let _ = writeln!(
            out,
            "       Read {} node(s) in {} request(s)  {}",
            fields.len(),
            opcua_requests(fields.len(), o),
            fields
                .iter()
                .map(|(n, node)| format!("{n}={node}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(h) = handshake {
            let _ = writeln!(
                out,
                "       Write {h}  handshake after the record is committed"
            );
        }
    }
}

/// Text plan of an OPC UA device; returns its requests per cycle.
fn opcua_text(out: &mut String, map: &TagMap, di: usize, o: &OpcUaDevice) -> usize {
    use std::fmt::Write as _;
    let d = &map.devices[di];
    let _ = writeln!(out, "{}", opcua_header(d, o));
    let n = d.tags.len();
    let reqs = opcua_requests(n, o);
    match o.mode {
        Mode::Subscription => {
            let _ = writeln!(
                out,
                "  {:>3}  {:<40} {:>9} {:>5} {:<14} tag",
                "#", "node", "sampling", "queue", "deadband"
            );
            for (i, &id) in d.tags.iter().enumerate() {
                let Some(t) = map.tags[id as usize].source.opcua() else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "  {:>3}  {:<40} {:>9} {:>5} {:<14} {}",
                    i + 1,
                    t.node.text,
                    duration::format(t.sampling(o)),
                    t.queue(o),
                    deadband_text(map, id),
                    map.tags[id as usize].name
                );
            }
            opcua_events_text(out, d, o);
            let _ = writeln!(
                out,
                "  1 subscription, {n} monitored item(s) created in {reqs} CreateMonitoredItems request(s) at each (re)connect; no requests per cycle\n"
            );
            0
        }
        Mode::Polling => {
            let _ = writeln!(out, "  {:>3}  {:<40} tag", "#", "node");
            for (i, &id) in d.tags.iter().enumerate() {
                let Some(t) = map.tags[id as usize].source.opcua() else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "  {:>3}  {:<40} {}",
                    i + 1,
                    t.node.text,
                    map.tags[id as usize].name
                );
            }
            opcua_events_text(out, d, o);
            let _ = writeln!(
                out,
                "  {reqs} Read request(s) of at most {} node(s) per cycle for {n} tag(s)\n",
                o.max_nodes_per_request
            );
            reqs
        }
    }
}

fn opcua_json(map: &TagMap, di: usize, o: &OpcUaDevice) -> serde_json::Value {
    let d = &map.devices[di];
    let n = d.tags.len();
    let reqs = opcua_requests(n, o);
    let items: Vec<serde_json::Value> = d
        .tags
        .iter()
        .filter_map(|&id| {
            let t = map.tags[id as usize].source.opcua()?;
            Some(serde_json::json!({
                "tag": map.tags[id as usize].name,
                "node": t.node.text,
                "sampling_interval_ms": t.sampling(o).as_millis() as u64,
                "queue_size": t.queue(o),
                "deadband": deadband_text(map, id),
            }))
        })
        .collect();
    let per_cycle = if o.mode == Mode::Polling { reqs } else { 0 };
    let requests: Vec<serde_json::Value> = (0..per_cycle)
        .map(|i| serde_json::json!({ "service": "Read", "nodes": (n - i * o.max_nodes_per_request).min(o.max_nodes_per_request) }))
        .collect();
    serde_json::json!({
        "protocol": "opcua",
        "device": d.name,
        "endpoint": o.endpoint,
        "security_policy": o.security_policy.as_str(),
        "security_mode": o.security_mode.as_str(),
        "mode": o.mode.as_str(),
        "poll_interval_ms": d.poll_interval.as_millis() as u64,
        "publishing_interval_ms": o.publishing_interval.as_millis() as u64,
        "events": d.events.iter().map(|e| {
            let (trigger, fields, handshake) = opcua_event_nodes(e);
            serde_json::json!({
                "event": e.name,
                "poll_interval_ms": e.poll_interval.as_millis() as u64,
                "trigger": trigger,
                "fields": fields.into_iter().map(|(n, node)| serde_json::json!({"name": n, "node": node})).collect::<Vec<_>>(),
                "handshake": handshake,
            })
        }).collect::<Vec<_>>(),
        "create_monitored_items_requests": if o.mode == Mode::Subscription { reqs } else { 0 },
        "items": items,
        "requests": requests,
    })
}
