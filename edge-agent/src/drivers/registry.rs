//! The registry of protocols: how a protocol plugs into the tag-map loader.
//!
//! The loader (`config/mod.rs`) owns the keys every device and tag has (`config/schema.rs`); a
//! driver's `config.rs` owns the rest through [`ProtocolConfig`]: which keys its devices and tags
//! accept, and how a device or tag table becomes its resolved type ([`DeviceDriver`],
//! [`TagSource`]). This file holds the one match over the protocols: adding a protocol is one
//! implementation plus one line in [`for_protocol`], [`all`] and [`PROTOCOLS`].

use super::{Device, DeviceDriver, Tag, TagSource};
use crate::settings::diag::Diagnostics;
use crate::settings::parse::{STable, Spans};

/// The protocols a device's `protocol` key may name, in the order error messages list them.
pub const PROTOCOLS: &[&str] = &[
    "modbus-tcp",
    "modbus-rtu",
    "opcua",
    "nmea",
    "gpsd",
    "tls-350",
];

/// The config part of one protocol's driver.
pub trait ProtocolConfig: Sync {
    /// Device keys this protocol accepts besides `config::schema::DEVICE_COMMON_KEYS`, as the field
    /// lists of its raw structs (`parse::fields_of::<Raw…>()`).
    fn device_keys(&self, protocol: &str) -> Vec<&'static [&'static str]>;

    /// Tag keys this protocol accepts besides `config::schema::TAG_COMMON_KEYS`.
    fn tag_keys(&self, dev: &DeviceDriver) -> Vec<&'static [&'static str]>;

    /// Sub-tables of a device table besides `tag` that this protocol reads itself (e.g.
    /// `event`); they are not reported as unknown keys.
    fn device_subtables(&self) -> &'static [&'static str] {
        &[]
    }

    /// Read the protocol part of a device table. Problems are reported to `diags` at the key
    /// they concern (`spans.of(key)`); the result is then built from defaults so that the tags'
    /// own problems are still reported (the map is rejected anyway).
    fn device(
        &self,
        protocol: &str,
        table: &STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut Diagnostics,
    ) -> DeviceDriver;

    /// Read the protocol part of a tag table of `dev`; `None` when it could not be read at all
    /// (already reported).
    fn tag(
        &self,
        dev: &DeviceDriver,
        table: &STable<'_, '_>,
        spans: &Spans,
        subject: &str,
        diags: &mut Diagnostics,
    ) -> Option<TagSource>;

    /// Checks of this protocol's devices and tags across the whole map, after every device and
    /// tag was read (`devices`/`tags` hold every protocol's; spans index like them).
    fn check(
        &self,
        _devices: &[Device],
        _tags: &[Tag],
        _device_spans: &[Spans],
        _tag_spans: &[Spans],
        _diags: &mut Diagnostics,
    ) {
    }
}

/// Every protocol's config part once, in registry order (cross-map checks run in this order).
pub fn all() -> [&'static dyn ProtocolConfig; 4] {
    [
        &super::modbus::config::Protocol,
        &super::opcua::config::Protocol,
        &super::gps::config::Protocol,
        &super::tls350::config::Protocol,
    ]
}

/// The config part of the driver for `protocol`.
pub fn for_protocol(protocol: &str) -> Option<&'static dyn ProtocolConfig> {
    match protocol {
        "modbus-tcp" | "modbus-rtu" => Some(&super::modbus::config::Protocol),
        "nmea" | "gpsd" => Some(&super::gps::config::Protocol),
        "tls-350" => Some(&super::tls350::config::Protocol),
        "opcua" => Some(&super::opcua::config::Protocol),
        _ => None,
    }
}

/// `"a", "b" or "c"`: the supported protocols for an error message.
pub fn supported_list() -> String {
    let quoted: Vec<String> = PROTOCOLS.iter().map(|p| format!("{p:?}")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}
