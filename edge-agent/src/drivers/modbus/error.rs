//! Modbus errors, kept on two levels like tokio-modbus: the outer `LinkError` means the link is
//! broken (no answer, lost connection, undecodable frame); the inner `Exception` means the device
//! answered, with an exception code.

use std::time::Duration;

/// The device answered with a Modbus exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception(pub u8);

impl Exception {
    /// Name of the standard exception codes.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "illegal function",
            2 => "illegal data address",
            3 => "illegal data value",
            4 => "server device failure",
            5 => "acknowledge",
            6 => "server device busy",
            8 => "memory parity error",
            10 => "gateway path unavailable",
            11 => "gateway target device failed to respond",
            _ => "non-standard exception",
        }
    }
}

impl std::fmt::Display for Exception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exception {} ({})", self.0, self.name())
    }
}

/// The link to the device failed: no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No answer within the timeout.
    #[error("no answer within {}ms", .0.as_millis())]
    Timeout(Duration),
    /// Could not connect / open the port.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// Address or serial path.
        target: String,
        /// Why.
        reason: String,
    },
    /// The connection broke during a request.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not a valid response to the request (garbage, wrong unit id, wrong
    /// function code, wrong length).
    #[error("invalid answer: {0}")]
    Protocol(String),
}

impl LinkError {
    /// Did the device send something we could not decode (rather than nothing)?
    pub fn is_decode(&self) -> bool {
        matches!(self, LinkError::Protocol(_))
    }
}

/// Two-level result: `Err` = the link failed; `Ok(Err)` = the device answered with an exception.
pub type ModbusResult<T> = Result<Result<T, Exception>, LinkError>;
