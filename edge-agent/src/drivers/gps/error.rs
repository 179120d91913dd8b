//! GPS errors: a sentence or report that could not be used ("the receiver sent garbage") kept
//! apart from the link failing (`GpsLinkError`).

/// A sentence (or gpsd report) that was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NmeaError {
    /// No `$` (or `!`) start character.
    #[error("no '$' start of sentence")]
    NoStart,
    /// Missing or malformed `*hh`.
    #[error("no '*hh' checksum (partial or garbled line)")]
    NoChecksum,
    /// The checksum does not match.
    #[error("checksum mismatch: sentence says {given:02X}, content gives {computed:02X}")]
    Checksum {
        /// Transmitted.
        given: u8,
        /// Computed.
        computed: u8,
    },
    /// Longer than any valid sentence.
    #[error("line of {0} bytes is too long for NMEA 0183")]
    TooLong(usize),
    /// Bytes outside ASCII.
    #[error("non-ASCII bytes in sentence")]
    NotAscii,
    /// The address field is not talker + type.
    #[error("bad address field {0:?} (expected talker and type, e.g. GPGGA)")]
    Address(String),
    /// A field does not parse.
    #[error("bad {field} field {text:?}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Its text (first 20 characters).
        text: String,
    },
    /// A gpsd line that is not a usable JSON report.
    #[error("bad gpsd report: {0}")]
    Json(String),
}

impl NmeaError {
    /// The metric counter this error is counted in.
    pub fn counter(&self) -> &'static str {
        match self {
            NmeaError::Checksum { .. } => "nmea_checksum_errors",
            _ => "nmea_bad_sentences",
        }
    }
}

/// The link to the receiver failed.
#[derive(Debug, thiserror::Error)]
pub enum GpsLinkError {
    /// Could not open the port or connect to gpsd.
    #[error("cannot open {target}: {reason}")]
    Open {
        /// Path or address.
        target: String,
        /// Why.
        reason: String,
    },
    /// Reading failed or the peer closed.
    #[error("link lost: {0}")]
    Io(#[from] std::io::Error),
}
