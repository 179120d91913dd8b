//! Errors of the Modbus simulator library.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while loading a register map or serving it.
///
/// Request-level problems (unmapped address, bad quantity, …) are not errors: they are answered
/// on the wire with a Modbus exception.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The register map file could not be read.
    #[error("cannot read register map {path}: {source}")]
    ReadMap {
        /// File that was read.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// The register map is not valid TOML or has unknown / mistyped keys.
    #[error("invalid register map{}: {source}", display_path(.path))]
    ParseMap {
        /// File, when the map came from one.
        path: Option<PathBuf>,
        /// Parser message (with line and column).
        source: toml::de::Error,
    },
    /// The map parsed but describes something impossible (overlapping registers, a value that
    /// does not fit its type, …); one indented line per problem.
    #[error("invalid register map:{0}")]
    InvalidMap(String),
    /// A duration string such as `"500ms"` could not be parsed.
    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration {
        /// The text as written.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A library call named a unit id the simulator does not serve.
    #[error("unit {0} is not configured in the register map")]
    UnknownUnit(u8),
    /// A library call named a register that is not in the map.
    #[error("unit {unit}: no {kind} register is mapped at address {address}")]
    UnmappedRegister {
        /// Unit id.
        unit: u8,
        /// Data table (`coil`, `discrete`, `input`, `holding`).
        kind: &'static str,
        /// 0-based protocol address.
        address: u16,
    },
    /// A value given through the library does not fit the register's type.
    #[error("unit {unit}, {kind} register {address}: {reason}")]
    BadValue {
        /// Unit id.
        unit: u8,
        /// Data table.
        kind: &'static str,
        /// 0-based protocol address.
        address: u16,
        /// Why the value was rejected.
        reason: String,
    },
    /// A socket or serial-port operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        source: io::Error,
    },
    /// The serial port could not be opened or configured.
    #[error("cannot open serial port {path}: {source}")]
    Serial {
        /// Device path.
        path: String,
        /// Underlying error.
        source: tokio_serial::Error,
    },
}

fn display_path(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

impl SimError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        SimError::Io {
            context: context.into(),
            source,
        }
    }
}
