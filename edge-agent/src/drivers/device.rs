//! The resolved devices and tags the drivers run from: a device's common settings with its
//! protocol part (`DeviceDriver`), a tag's common settings with where its value comes from
//! (`TagSource`). Each protocol's part is its driver's own type (`modbus::config`, …); the tag map
//! loader (`config/`) builds them through the registry (`registry.rs`).

use std::time::Duration;

use super::events::EventDef;
use super::gps::config::{GpsDevice, GpsLink, GpsTag};
use super::modbus::config as mb;
use super::opcua::config as ua;
use super::tls350::config::{TlsDevice, TlsTag};
use crate::model::{Deadband, Priority, TagId, TagKind};

/// Protocol-specific part of a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceDriver {
    /// Modbus TCP or RTU.
    Modbus(mb::ModbusDevice),
    /// GPS receiver: NMEA 0183 on a serial port, or gpsd.
    Gps(GpsDevice),
    /// Veeder-Root TLS-350 tank gauge console.
    Tls350(TlsDevice),
    /// OPC UA client session.
    OpcUa(ua::OpcUaDevice),
}

impl DeviceDriver {
    /// The `protocol` key's spelling (also announced in the birth catalog).
    pub fn protocol(&self) -> &'static str {
        match self {
            DeviceDriver::Modbus(m) => match m.link {
                mb::Link::Tcp { .. } => "modbus-tcp",
                mb::Link::Rtu(_) => "modbus-rtu",
            },
            DeviceDriver::Gps(g) => match g.link {
                GpsLink::Nmea(_) => "nmea",
                GpsLink::Gpsd { .. } => "gpsd",
            },
            DeviceDriver::Tls350(_) => "tls-350",
            DeviceDriver::OpcUa(_) => "opcua",
        }
    }

    /// The Modbus settings, if this is a Modbus device.
    pub fn modbus(&self) -> Option<&mb::ModbusDevice> {
        match self {
            DeviceDriver::Modbus(m) => Some(m),
            _ => None,
        }
    }

    /// The GPS settings, if this is a GPS receiver.
    pub fn gps(&self) -> Option<&GpsDevice> {
        match self {
            DeviceDriver::Gps(g) => Some(g),
            _ => None,
        }
    }

    /// The TLS-350 settings, if this is a tank gauge console.
    pub fn tls350(&self) -> Option<&TlsDevice> {
        match self {
            DeviceDriver::Tls350(t) => Some(t),
            _ => None,
        }
    }

    /// The OPC UA settings, if this is an OPC UA device.
    pub fn opcua(&self) -> Option<&ua::OpcUaDevice> {
        match self {
            DeviceDriver::OpcUa(o) => Some(o),
            _ => None,
        }
    }
}

/// A device of the loaded tag map.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Poll interval.
    pub poll_interval: Duration,
    /// Protocol settings.
    pub driver: DeviceDriver,
    /// Its tags, in file order.
    pub tags: Vec<TagId>,
    /// Its event definitions (`[[device.event]]`), in file order.
    pub events: Vec<EventDef>,
}

/// Protocol-specific part of a tag.
#[derive(Debug, Clone, PartialEq)]
pub enum TagSource {
    /// A Modbus register/bit.
    Modbus(mb::ModbusTag),
    /// A figure of the GPS fix.
    Gps(GpsTag),
    /// A figure of one tank's inventory.
    Tls350(TlsTag),
    /// An OPC UA variable node (boxed: it is 5× the size of the others, and a tag map holds
    /// one `TagSource` per tag).
    OpcUa(Box<ua::OpcUaTag>),
}

impl TagSource {
    /// The data type's spelling (birth catalog, diagnostics).
    pub fn data_type(&self) -> &'static str {
        match self {
            TagSource::Modbus(m) => m.data_type.as_str(),
            TagSource::Gps(g) if g.field.is_integer() => "i64",
            TagSource::Gps(_) | TagSource::Tls350(_) => "f64",
            TagSource::OpcUa(o) => o.data_type.as_str(),
        }
    }

    /// Does the tag carry numbers (so deadbands and totalizers apply)?
    pub fn is_numeric(&self) -> bool {
        match self {
            TagSource::Modbus(m) => m.data_type.is_numeric(),
            TagSource::Gps(_) | TagSource::Tls350(_) => true,
            TagSource::OpcUa(o) => o.data_type.is_numeric(),
        }
    }

    /// The wrap value of a totalizer when the tag map gives none (unsigned integer types: the
    /// type's range times the scale).
    pub fn default_rollover(&self) -> Option<f64> {
        match self {
            TagSource::Modbus(m) => m.data_type.unsigned_range().map(|r| r * m.scale.abs()),
            TagSource::Gps(_) | TagSource::Tls350(_) => None,
            // OPC UA integers carry their own width; a totalizer needs an explicit rollover.
            TagSource::OpcUa(_) => None,
        }
    }

    /// Does it decode to an integer (event sequence numbers, handshake values)?
    pub fn is_integer(&self) -> bool {
        match self {
            TagSource::Modbus(m) => {
                matches!(
                    m.data_type,
                    mb::DataType::U16
                        | mb::DataType::U32
                        | mb::DataType::U64
                        | mb::DataType::I16
                        | mb::DataType::I32
                        | mb::DataType::I64
                ) && m.scale == 1.0
                    && m.offset == 0.0
            }
            TagSource::Gps(g) => g.field.is_integer(),
            TagSource::Tls350(_) => false,
            TagSource::OpcUa(o) => o.data_type == ua::OpcType::Integer,
        }
    }

    /// Does it decode to a bool?
    pub fn is_boolean(&self) -> bool {
        match self {
            TagSource::Modbus(m) => matches!(m.data_type, mb::DataType::Bool | mb::DataType::Bit),
            TagSource::Gps(_) | TagSource::Tls350(_) => false,
            TagSource::OpcUa(o) => o.data_type == ua::OpcType::Bool,
        }
    }

    /// Largest value of an unsigned integer type (default sequence rollover).
    pub fn unsigned_max(&self) -> Option<u64> {
        match self {
            TagSource::Modbus(m) => match m.data_type {
                mb::DataType::U16 => Some(u64::from(u16::MAX)),
                mb::DataType::U32 => Some(u64::from(u32::MAX)),
                mb::DataType::U64 => Some(u64::MAX),
                _ => None,
            },
            TagSource::OpcUa(o) => o.unsigned_max,
            TagSource::Gps(_) | TagSource::Tls350(_) => None,
        }
    }

    /// Can the agent write it (event handshakes)?
    pub fn is_writable(&self) -> bool {
        match self {
            TagSource::Modbus(m) => {
                matches!(
                    m.register,
                    mb::RegisterKind::Coil | mb::RegisterKind::Holding
                ) && m.data_type != mb::DataType::Bit
                    && m.data_type != mb::DataType::String
            }
            TagSource::Gps(_) | TagSource::Tls350(_) => false,
            TagSource::OpcUa(_) => true,
        }
    }

    /// The Modbus register, if this is a Modbus tag.
    pub fn modbus(&self) -> Option<&mb::ModbusTag> {
        match self {
            TagSource::Modbus(m) => Some(m),
            _ => None,
        }
    }

    /// The OPC UA node, if this is an OPC UA tag.
    pub fn opcua(&self) -> Option<&ua::OpcUaTag> {
        match self {
            TagSource::OpcUa(o) => Some(o.as_ref()),
            _ => None,
        }
    }
}

/// A tag of the loaded tag map.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    /// Index in `TagMap::tags`.
    pub id: TagId,
    /// Index of its device in `TagMap::devices`.
    pub device: usize,
    /// Hierarchical name.
    pub name: String,
    /// Engineering unit.
    pub unit: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Gauge, totalizer or state.
    pub kind: TagKind,
    /// Report-by-exception threshold.
    pub deadband: Option<Deadband>,
    /// Heartbeat: longest silence inside the deadband.
    pub max_silence: Duration,
    /// Totalizer wrap value (engineering units), if known.
    pub rollover: Option<f64>,
    /// Buffer priority.
    pub priority: Priority,
    /// Where the value comes from.
    pub source: TagSource,
}
