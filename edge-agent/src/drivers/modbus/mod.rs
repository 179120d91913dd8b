//! Modbus TCP and RTU acquisition.
//!
//! - `config.rs`: the Modbus keys of a tag map and their resolved types;
//! - `plan.rs`: the request planner (fewest requests per cycle) and cycle-time estimates;
//! - `decode.rs`: registers → values, every type and word/byte order;
//! - `transport.rs`: opening TCP connections / serial ports and executing one request;
//! - `poller.rs`: the run loops (task per TCP device, task per RTU bus);
//! - `events.rs`: the Modbus binding of event capture (trigger, field block, handshake writes);
//! - `probe.rs`: raw register reads decoded every way, for commissioning;
//! - `error.rs`: link errors vs device exceptions.

pub mod checks;
pub mod config;
pub mod decode;
pub mod error;
pub mod events;
pub mod plan;
pub mod poller;
pub mod probe;
pub mod transport;

pub use error::{Exception, LinkError, ModbusResult};
pub use poller::{poll_cycle, run_rtu_bus, run_tcp, DeviceRuntime};

use super::{Device, Tag};
use crate::model::TagId;

/// Planner items of some Modbus tags.
pub fn items_of<'a>(tags: impl Iterator<Item = (TagId, &'a config::ModbusTag)>) -> Vec<plan::Item> {
    tags.map(|(id, m)| plan::Item {
        kind: m.register,
        start: m.address,
        len: m.span().max(1),
        tag: id,
    })
    .collect()
}

/// Planner items of all tags of a device.
pub fn items(d: &Device, tags: &[Tag]) -> Vec<plan::Item> {
    items_of(
        d.tags
            .iter()
            .filter_map(|&id| Some((id, tags[id as usize].source.modbus()?))),
    )
}
