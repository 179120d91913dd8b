//! The one error type of the wire contract.

/// Everything that can be wrong with bytes, a message or a topic on the wire.
///
/// Every decoder in this crate returns one of these instead of panicking, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The bytes do not start with the batch magic `FSB`: not a FlowSquare batch.
    #[error("not a FlowSquare batch (bad magic)")]
    BadMagic,
    /// A batch format version this build does not know (a newer agent, or corruption).
    #[error("unsupported batch format version {0}")]
    UnsupportedVersion(u8),
    /// A JSON control message whose `v` is newer than this build understands.
    #[error("unsupported {message} message version {v}")]
    UnsupportedMessageVersion {
        /// Which message (`ack`, `birth`, `status`, `heartbeat`).
        message: &'static str,
        /// The version found.
        v: u32,
    },
    /// The input ended in the middle of `what`.
    #[error("truncated: input ends inside {what}")]
    Truncated {
        /// The field being read when the input ran out.
        what: &'static str,
    },
    /// `what` is longer than the format allows (`len` > `max`), on encode or decode.
    #[error("{what} too large: {len} > {max}")]
    TooLarge {
        /// The field or section.
        what: &'static str,
        /// Its (claimed) length or count.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The bytes are structurally wrong: checksum mismatch, unknown code, inconsistent counts.
    #[error("corrupt batch: {0}")]
    Corrupt(String),
    /// zstd could not compress the body (should not happen; reported rather than panicking).
    #[error("compression failed: {0}")]
    Compress(String),
    /// zstd could not decompress the body.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// A JSON control message did not parse (syntax, missing required field, wrong type).
    #[error("bad JSON message: {0}")]
    Json(String),
    /// A JSON control message parsed but breaks a rule of the contract (e.g. an empty ack).
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A topic (or filter root) that does not follow the topic scheme.
    #[error("bad topic: {0}")]
    BadTopic(String),
    /// A site or agent id outside 1-64 characters of `[A-Za-z0-9_.-]`.
    #[error("bad id: {0}")]
    BadId(String),
}

impl From<serde_json::Error> for WireError {
    fn from(e: serde_json::Error) -> Self {
        WireError::Json(e.to_string())
    }
}
