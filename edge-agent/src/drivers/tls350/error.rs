//! TLS-350 errors: the console answered something unusable (`FrameError`: bad checksum,
//! malformed data, or "unsupported command") kept apart from the link failing (`TlsLinkError`).

use std::time::Duration;

/// A reply that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No `<SOH>`.
    #[error("no SOH in the reply")]
    NoSoh,
    /// No `<ETX>`.
    #[error("reply without ETX (truncated)")]
    NoEtx,
    /// No `&&CCCC` before ETX.
    #[error("reply without '&&' and checksum")]
    NoChecksum,
    /// Checksum mismatch.
    #[error("checksum mismatch: reply says {given:04X}, content gives {computed:04X}")]
    Checksum {
        /// Transmitted.
        given: u16,
        /// Computed.
        computed: u16,
    },
    /// The console answered `9999FF1B`: it does not support the command.
    #[error("the console does not support this command (9999FF1B)")]
    Unsupported,
    /// The reply is for another command.
    #[error("reply to {got:?}, expected {expected:?}")]
    Echo {
        /// Command sent.
        expected: String,
        /// Echo received.
        got: String,
    },
    /// The data ended early.
    #[error("reply data ends inside the {what} at byte {at}")]
    Truncated {
        /// Which field.
        what: &'static str,
        /// Offset in the data.
        at: usize,
    },
    /// A field does not parse.
    #[error("bad {what} {text:?} at byte {at}")]
    Field {
        /// Which field.
        what: &'static str,
        /// Its text.
        text: String,
        /// Offset in the data.
        at: usize,
    },
    /// Longer than any reply.
    #[error("reply longer than {0} bytes without ETX")]
    TooLong(usize),
}

impl FrameError {
    /// Did the console say it does not support the command (rather than send garbage)?
    pub fn is_unsupported(&self) -> bool {
        matches!(self, FrameError::Unsupported)
    }
}

/// The link to the console failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsLinkError {
    /// No complete answer in time.
    #[error("no complete answer within {}ms", .0.as_millis())]
    Timeout(Duration),
    /// Could not open the port or connect.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// Address or path.
        target: String,
        /// Why.
        reason: String,
    },
    /// The connection broke.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
}
