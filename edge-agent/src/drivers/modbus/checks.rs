//! Checks of the Modbus devices and tags across the tag map (run by the loader through
//! `ProtocolConfig::check`): overlapping tags, whether a TCP device can meet its poll interval,
//! and the shared RTU buses (same serial settings, distinct unit ids, bus load).

use std::collections::HashMap;

use super::config::{Link, ModbusDevice};
use super::plan;
use crate::drivers::{Device, Tag};
use crate::settings::duration;
use crate::settings::parse::Spans;
use crate::settings::Diagnostics;

pub fn overlaps(d: &Device, tags: &[Tag], tag_spans: &[Spans], diags: &mut Diagnostics) {
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

/// Requests and cycle estimate of a Modbus device.
pub fn device_plan(
    d: &Device,
    m: &ModbusDevice,
    tags: &[Tag],
) -> (Vec<plan::ReadRequest>, plan::CycleEstimate) {
    let items = crate::drivers::modbus::items(d, tags);
    let reqs = plan::plan(&items, &plan::Limits::from(m));
    let est = plan::estimate(m, &reqs);
    (reqs, est)
}

pub fn cycle_time(di: usize, d: &Device, tags: &[Tag], spans: &[Spans], diags: &mut Diagnostics) {
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

pub fn rtu_buses(devices: &[Device], tags: &[Tag], spans: &[Spans], diags: &mut Diagnostics) {
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
