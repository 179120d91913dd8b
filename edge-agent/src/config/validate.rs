//! Checks across devices and tags: duplicate names, overlapping tags, shared RTU buses, serial
//! ports claimed twice, and whether each device (and bus) can meet its poll interval.

use std::collections::HashMap;

use super::{Device, Diagnostics, Tag};
use crate::config::duration;
use crate::config::parse::Spans;
use crate::drivers::modbus::config::{Link, ModbusDevice};
use crate::drivers::modbus::plan;

pub(super) fn check(
    devices: &[Device],
    tags: &[Tag],
    device_spans: &[Spans],
    tag_spans: &[Spans],
    diags: &mut Diagnostics,
) {
    duplicates(
        devices.iter().map(|d| d.name.as_str()),
        device_spans,
        "device",
        diags,
    );
    duplicates(
        tags.iter().map(|t| t.name.as_str()),
        tag_spans,
        "tag",
        diags,
    );
    for (di, d) in devices.iter().enumerate() {
        overlaps(d, tags, tag_spans, diags);
        same_node(d, tags, tag_spans, diags);
        cycle_time(di, d, tags, device_spans, diags);
    }
    rtu_buses(devices, tags, device_spans, diags);
    serial_ports(devices, device_spans, diags);
    for (di, d) in devices.iter().enumerate() {
        if d.driver.gps().is_some() && d.poll_interval < std::time::Duration::from_secs(1) {
            diags.warning(
                device_spans[di].of("poll_interval"),
                format!("device '{}'", d.name),
                format!(
                    "poll_interval {} is below 1s: most receivers send one fix per second, so faster polls repeat the last fix with its GPS timestamp",
                    duration::format(d.poll_interval)
                ),
            );
        }
        if let Some(t) = d.driver.tls350() {
            if t.timeout > d.poll_interval {
                diags.warning(
                    device_spans[di].of("timeout"),
                    format!("device '{}'", d.name),
                    format!(
                        "timeout {} is longer than poll_interval {}: a console that stops answering delays every cycle",
                        duration::format(t.timeout),
                        duration::format(d.poll_interval)
                    ),
                );
            }
        }
    }
}

/// A serial port can be opened by one driver: NMEA receivers and TLS-350 consoles own theirs
/// (only Modbus RTU units share a bus).
fn serial_ports(devices: &[Device], spans: &[Spans], diags: &mut Diagnostics) {
    use crate::drivers::gps::config::GpsLink;
    use crate::drivers::tls350::config::TlsLink;
    let path_of = |d: &Device| -> Option<(String, bool)> {
        if let Some(m) = d.driver.modbus() {
            if let Link::Rtu(s) = &m.link {
                return Some((s.path.clone(), true));
            }
        }
        if let Some(GpsLink::Nmea(s)) = d.driver.gps().map(|g| &g.link) {
            return Some((s.path.clone(), false));
        }
        if let Some(TlsLink::Serial(s)) = d.driver.tls350().map(|t| &t.link) {
            return Some((s.path.clone(), false));
        }
        None
    };
    let mut first: HashMap<String, (usize, bool)> = HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        let Some((path, shareable)) = path_of(d) else {
            continue;
        };
        match first.get(&path) {
            Some(&(f, other_shareable)) if !(shareable && other_shareable) => diags.error(
                spans[i].of("serial"),
                format!("device '{}'", d.name),
                format!(
                    "serial port {path} is already used by device '{}' ({}); a {} device needs a port of its own",
                    devices[f].name,
                    devices[f].driver.protocol(),
                    if shareable { devices[f].driver.protocol() } else { d.driver.protocol() }
                ),
            ),
            Some(_) => {}
            None => {
                first.insert(path, (i, shareable));
            }
        }
    }
}

fn duplicates<'a>(
    names: impl Iterator<Item = &'a str>,
    spans: &[Spans],
    what: &str,
    diags: &mut Diagnostics,
) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, n) in names.enumerate() {
        if let Some(&f) = first.get(n) {
            let line = diags.line_of(spans[f].of("name").start);
            diags.error(
                spans[i].of("name"),
                format!("{what} '{n}'"),
                format!("duplicate {what} name; first defined at line {line}"),
            );
        } else {
            first.insert(n, i);
        }
    }
}

fn overlaps(d: &Device, tags: &[Tag], tag_spans: &[Spans], diags: &mut Diagnostics) {
    let mut spans: Vec<(
        crate::drivers::modbus::config::RegisterKind,
        u32,
        u32,
        Option<u8>,
        usize,
    )> = d
        .tags
        .iter()
        .filter_map(|&id| {
            let m = tags[id as usize].source.modbus()?;
            let bit =
                (m.data_type == crate::drivers::modbus::config::DataType::Bit).then_some(m.bit);
            Some((
                m.register,
                u32::from(m.address),
                u32::from(m.address) + u32::from(m.span()),
                bit,
                id as usize,
            ))
        })
        .collect();
    spans.sort_by_key(|s| (s.0, s.1, s.2));
    for (i, a) in spans.iter().enumerate() {
        for b in spans.iter().skip(i + 1) {
            // Sorted by table then start: nothing later overlaps `a`.
            if b.0 != a.0 || b.1 >= a.2 {
                break;
            }
            // Two bits of the same register are not an overlap.
            if let (Some(x), Some(y)) = (a.3, b.3) {
                if x != y {
                    continue;
                }
            }
            let ta = &tags[a.4];
            let tb = &tags[b.4];
            diags.warning(
                tag_spans[b.4].of("address"),
                format!("device '{}' tag '{}'", d.name, tb.name),
                format!(
                    "overlaps tag '{}' (line {}) in the {} table",
                    ta.name,
                    diags.line_of(tag_spans[a.4].table.start),
                    a.0.as_str()
                ),
            );
        }
    }
}

/// Two tags of one OPC UA device on the same node: usually a copy-paste slip.
fn same_node(d: &Device, tags: &[Tag], tag_spans: &[Spans], diags: &mut Diagnostics) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for &id in &d.tags {
        let Some(o) = tags[id as usize].source.opcua() else {
            continue;
        };
        let key = o.node.text.trim();
        match first.get(key) {
            Some(&f) => diags.warning(
                tag_spans[id as usize].of("node"),
                format!("device '{}' tag '{}'", d.name, tags[id as usize].name),
                format!(
                    "same node as tag '{}' (line {})",
                    tags[f].name,
                    diags.line_of(tag_spans[f].table.start)
                ),
            ),
            None => {
                first.insert(key, id as usize);
            }
        }
    }
}

/// Requests and cycle estimate of a Modbus device.
pub(crate) fn device_plan(
    d: &Device,
    m: &ModbusDevice,
    tags: &[Tag],
) -> (Vec<plan::ReadRequest>, plan::CycleEstimate) {
    let items = crate::drivers::modbus::items(d, tags);
    let reqs = plan::plan(&items, &plan::Limits::from(m));
    let est = plan::estimate(m, &reqs);
    (reqs, est)
}

fn cycle_time(di: usize, d: &Device, tags: &[Tag], spans: &[Spans], diags: &mut Diagnostics) {
    let Some(m) = d.driver.modbus() else {
        return;
    };
    if matches!(m.link, Link::Rtu(_)) {
        return; // checked per bus
    }
    let (_, est) = device_plan(d, m, tags);
    if est.expected > d.poll_interval {
        diags.error(
            spans[di].of("poll_interval"),
            format!("device '{}'", d.name),
            format!(
                "poll_interval {} cannot be met: one cycle of {} requests takes about {} (response_time {} each, pause {}); raise poll_interval, max_registers or max_gap",
                duration::format(d.poll_interval),
                est.requests,
                duration::format(est.expected),
                duration::format(m.response_time),
                duration::format(m.pause)
            ),
        );
    }
}

fn rtu_buses(devices: &[Device], tags: &[Tag], spans: &[Spans], diags: &mut Diagnostics) {
    let mut buses: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        if let Some(ModbusDevice {
            link: Link::Rtu(s), ..
        }) = d.driver.modbus()
        {
            if !buses.contains_key(s.path.as_str()) {
                order.push(s.path.as_str());
            }
            buses.entry(s.path.as_str()).or_default().push(i);
        }
    }
    for path in order {
        let members = &buses[path];
        let first = members[0];
        let Some(m0) = devices[first].driver.modbus() else {
            continue;
        };
        let mut units: HashMap<u8, usize> = HashMap::new();
        let mut load = 0.0;
        for &i in members {
            let d = &devices[i];
            let Some(m) = d.driver.modbus() else {
                continue;
            };
            let subject = format!("device '{}'", d.name);
            if m.link != m0.link {
                diags.error(
                    spans[i].of("baud"),
                    &subject,
                    format!(
                        "serial settings differ from device '{}' on the same bus {path}: baud, parity, data_bits and stop_bits must match",
                        devices[first].name
                    ),
                );
            }
            if let Some(&other) = units.get(&m.unit) {
                diags.error(
                    spans[i].of("unit"),
                    &subject,
                    format!(
                        "unit {} is already used by device '{}' on bus {path}",
                        m.unit, devices[other].name
                    ),
                );
            } else {
                units.insert(m.unit, i);
            }
            let (_, est) = device_plan(d, m, tags);
            load += est.expected.as_secs_f64() / d.poll_interval.as_secs_f64().max(1e-3);
        }
        if load > 1.0 {
            diags.error(
                spans[first].of("serial"),
                format!("bus {path}"),
                format!(
                    "the bus cannot meet its poll intervals: its units need {:.0}% of the bus time (wire time at the configured baud, response_time and pauses); lower the number of requests or raise poll_interval",
                    load * 100.0
                ),
            );
        }
    }
}

/// Checks on the event definitions: unique names across the tag map (a name keys the persisted
/// cursor and is the `source` of its events).
pub(super) fn events(devices: &[Device], event_spans: &[Spans], diags: &mut Diagnostics) {
    let defs: Vec<(&Device, &crate::config::EventDef)> = devices
        .iter()
        .flat_map(|d| d.events.iter().map(move |e| (d, e)))
        .collect();
    duplicates(
        defs.iter().map(|(_, e)| e.name.as_str()),
        event_spans,
        "event",
        diags,
    );
}
