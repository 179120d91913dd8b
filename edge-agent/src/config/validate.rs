//! Checks across devices and tags: duplicate names, serial ports claimed twice, event names;
//! each protocol's own checks (overlapping Modbus tags, shared RTU buses, whether each device
//! and bus can meet its poll interval, …) are its driver's, run through `ProtocolConfig::check`.

use std::collections::HashMap;

use super::{Device, Diagnostics, Tag};
use crate::drivers::modbus::config::Link;
use crate::settings::parse::Spans;

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
    // Each protocol's own checks (Modbus overlaps, cycle time and buses; OPC UA duplicate
    // nodes; GPS and TLS-350 intervals), in registry order.
    for p in crate::drivers::registry::all() {
        p.check(devices, tags, device_spans, tag_spans, diags);
    }
    serial_ports(devices, device_spans, diags);
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
