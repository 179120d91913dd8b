//! OPC UA status codes and values → the agent's qualities and values. Pure: no session needed.
//!
//! Quality mapping (the StatusCode is kept in `Reading.status`, its name in `Reading.error`):
//!
//! | OPC UA status                                                    | agent quality        |
//! |------------------------------------------------------------------|----------------------|
//! | Good family (`Good`, `GoodLocalOverride`, …)                     | `good`               |
//! | Uncertain family (`UncertainLastUsableValue`, …)                 | `bad-device` (value dropped: custody data takes no uncertain values) |
//! | link/session: `BadCommunicationError`, `BadConnectionClosed`, `BadTimeout`, `BadServerNotConnected`, `BadSessionClosed`, `BadSessionIdInvalid`, `BadSecureChannelClosed`, `BadSubscriptionIdInvalid`, `BadNoCommunication`, `BadNotConnected`, `BadServerHalted`, `BadShutdown`, `BadTooManyOperations`… | `bad-communication` |
//! | `BadWaitingForInitialData`                                       | `stale`              |
//! | `BadDecodingError`, `BadEncodingError`, `BadDataEncodingInvalid` | `bad-decode`         |
//! | any other Bad (`BadNodeIdUnknown`, `BadNodeIdInvalid`, `BadNotReadable`, `BadUserAccessDenied`, `BadTypeMismatch`, `BadDeviceFailure`, `BadSensorFailure`, `BadOutOfService`, …) | `bad-device` |
//!
//! A good status whose value does not fit the tag's `type` (or is empty, an array, NaN) is
//! `bad-decode`, counted per device as `opcua_bad_values`.

use opcua::types::{DataValue, StatusCode, SubStatusCode, Variant};

use super::config::OpcType;
use crate::model::{Quality, Reading, TagId, Value};

/// The agent quality of an OPC UA status code.
pub fn quality_of(status: StatusCode) -> Quality {
    if status.is_good() {
        return Quality::Good;
    }
    if status.is_uncertain() {
        return Quality::BadDevice;
    }
    use SubStatusCode as S;
    match status.sub_code() {
        S::BadCommunicationError
        | S::BadConnectionClosed
        | S::BadConnectionRejected
        | S::BadDisconnect
        | S::BadTimeout
        | S::BadServerNotConnected
        | S::BadServerHalted
        | S::BadShutdown
        | S::BadSessionClosed
        | S::BadSessionIdInvalid
        | S::BadSessionNotActivated
        | S::BadSecureChannelClosed
        | S::BadSecureChannelIdInvalid
        | S::BadSubscriptionIdInvalid
        | S::BadNoCommunication
        | S::BadNotConnected
        | S::BadTooManyOperations
        | S::BadTooManySessions
        | S::BadResourceUnavailable
        | S::BadTcpInternalError
        | S::BadRequestTimeout => Quality::BadCommunication,
        S::BadWaitingForInitialData => Quality::Stale,
        S::BadDecodingError | S::BadEncodingError | S::BadDataEncodingInvalid => Quality::BadDecode,
        _ => Quality::BadDevice,
    }
}

/// The name of a status code (`BadNodeIdUnknown`), for `Reading.error` and logs.
pub fn status_name(status: StatusCode) -> String {
    status.to_string()
}

/// Why a good-status value could not become a tag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue(pub String);

/// Convert one variant to a value of type `ty`.
pub fn value_of(v: &Variant, ty: OpcType) -> Result<Value, BadValue> {
    let bad = |why: &str| {
        Err(BadValue(format!(
            "{why} ({} value for a {} tag)",
            variant_name(v),
            ty.as_str()
        )))
    };
    let natural = match v {
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(x) => Value::Int(i64::from(*x)),
        Variant::Byte(x) => Value::Int(i64::from(*x)),
        Variant::Int16(x) => Value::Int(i64::from(*x)),
        Variant::UInt16(x) => Value::Int(i64::from(*x)),
        Variant::Int32(x) => Value::Int(i64::from(*x)),
        Variant::UInt32(x) => Value::Int(i64::from(*x)),
        Variant::Int64(x) => Value::Int(*x),
        Variant::UInt64(x) => match i64::try_from(*x) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(*x),
        },
        Variant::Float(f) => Value::Float(f64::from(*f)),
        Variant::Double(f) => Value::Float(*f),
        Variant::String(s) => Value::Text(s.as_ref().to_owned()),
        Variant::LocalizedText(t) => Value::Text(t.text.as_ref().to_owned()),
        Variant::DateTime(d) => Value::Text(d.to_string()),
        Variant::Empty => return bad("empty value"),
        Variant::Array(_) => return bad("array values are not supported"),
        _ => return bad("unsupported value type"),
    };
    if let Value::Float(f) = natural {
        if !f.is_finite() {
            return bad("not a finite number");
        }
    }
    match (ty, natural) {
        (OpcType::Auto, v) => Ok(v),
        (OpcType::Bool, v @ Value::Bool(_)) => Ok(v),
        (OpcType::Bool, Value::Int(i)) if i == 0 || i == 1 => Ok(Value::Bool(i == 1)),
        (OpcType::Integer, v @ (Value::Int(_) | Value::UInt(_))) => Ok(v),
        (OpcType::Integer, Value::Bool(b)) => Ok(Value::Int(i64::from(b))),
        (OpcType::Float, Value::Float(f)) => Ok(Value::Float(f)),
        (OpcType::Float, Value::Int(i)) => Ok(Value::Float(i as f64)),
        (OpcType::Float, Value::UInt(u)) => Ok(Value::Float(u as f64)),
        (OpcType::String, Value::Text(t)) => Ok(Value::Text(t)),
        _ => bad("type mismatch"),
    }
}

fn variant_name(v: &Variant) -> &'static str {
    match v {
        Variant::Empty => "Empty",
        Variant::Boolean(_) => "Boolean",
        Variant::SByte(_) => "SByte",
        Variant::Byte(_) => "Byte",
        Variant::Int16(_) => "Int16",
        Variant::UInt16(_) => "UInt16",
        Variant::Int32(_) => "Int32",
        Variant::UInt32(_) => "UInt32",
        Variant::Int64(_) => "Int64",
        Variant::UInt64(_) => "UInt64",
        Variant::Float(_) => "Float",
        Variant::Double(_) => "Double",
        Variant::String(_) => "String",
        Variant::DateTime(_) => "DateTime",
        Variant::LocalizedText(_) => "LocalizedText",
        Variant::Array(_) => "Array",
        _ => "other",
    }
}

/// What became of one DataValue.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A good value.
    Good,
    /// The server gave a non-good status.
    BadStatus,
    /// Good status, unusable value.
    BadValue,
}

/// The device's time of a DataValue, UTC ms: its source timestamp, else its server timestamp
/// (`None` when neither is given or after 1970).
pub fn source_ms(dv: &DataValue) -> Option<i64> {
    dv.source_timestamp
        .or(dv.server_timestamp)
        .map(|d| d.as_chrono().timestamp_millis())
        .filter(|t| *t > 0)
}

/// Turn a DataValue of `tag` into a reading; `fallback_ts` is used when the server gave no
/// source or server timestamp.
pub fn reading_of(tag: TagId, dv: &DataValue, ty: OpcType, fallback_ts: i64) -> (Reading, Outcome) {
    let ts = source_ms(dv).unwrap_or(fallback_ts);
    let status = dv.status.unwrap_or(StatusCode::Good);
    if !status.is_good() {
        let mut r = Reading::bad(tag, ts, quality_of(status), status_name(status));
        r.status = Some(status.bits());
        return (r, Outcome::BadStatus);
    }
    match dv.value.as_ref().map(|v| value_of(v, ty)) {
        Some(Ok(v)) => (Reading::good(tag, ts, v, 0), Outcome::Good),
        Some(Err(BadValue(why))) => (
            Reading::bad(tag, ts, Quality::BadDecode, why),
            Outcome::BadValue,
        ),
        None => (
            Reading::bad(tag, ts, Quality::BadDecode, "good status without a value"),
            Outcome::BadValue,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_families_map_to_qualities() {
        assert_eq!(quality_of(StatusCode::Good), Quality::Good);
        assert_eq!(quality_of(StatusCode::GoodLocalOverride), Quality::Good);
        assert_eq!(
            quality_of(StatusCode::UncertainLastUsableValue),
            Quality::BadDevice
        );
        assert_eq!(quality_of(StatusCode::BadNodeIdUnknown), Quality::BadDevice);
        assert_eq!(
            quality_of(StatusCode::BadNoCommunication),
            Quality::BadCommunication
        );
        assert_eq!(
            quality_of(StatusCode::BadConnectionClosed),
            Quality::BadCommunication
        );
        assert_eq!(
            quality_of(StatusCode::BadWaitingForInitialData),
            Quality::Stale
        );
        assert_eq!(quality_of(StatusCode::BadDecodingError), Quality::BadDecode);
        assert_eq!(
            status_name(StatusCode::BadNodeIdUnknown),
            "BadNodeIdUnknown"
        );
    }

    #[test]
    fn values_convert_or_are_refused_without_panicking() {
        assert_eq!(
            value_of(&Variant::Double(1.5), OpcType::Auto),
            Ok(Value::Float(1.5))
        );
        assert_eq!(
            value_of(&Variant::Int32(7), OpcType::Float),
            Ok(Value::Float(7.0))
        );
        assert_eq!(
            value_of(&Variant::UInt64(u64::MAX), OpcType::Auto),
            Ok(Value::UInt(u64::MAX))
        );
        assert_eq!(
            value_of(&Variant::Boolean(true), OpcType::Bool),
            Ok(Value::Bool(true))
        );
        assert!(value_of(&Variant::Double(f64::NAN), OpcType::Float).is_err());
        assert!(value_of(&Variant::Empty, OpcType::Auto).is_err());
        assert!(value_of(&Variant::from("x"), OpcType::Float).is_err());
        assert!(value_of(&Variant::from(vec![1i32, 2]), OpcType::Auto).is_err());
    }

    #[test]
    fn a_bad_status_keeps_code_and_name() {
        let dv = DataValue {
            status: Some(StatusCode::BadNodeIdUnknown),
            ..Default::default()
        };
        let (r, o) = reading_of(3, &dv, OpcType::Float, 42);
        assert_eq!(o, Outcome::BadStatus);
        assert_eq!(r.quality, Quality::BadDevice);
        assert_eq!(r.status, Some(StatusCode::BadNodeIdUnknown.bits()));
        assert_eq!(r.error.as_deref(), Some("BadNodeIdUnknown"));
        assert_eq!(r.ts_ms, 42);
    }
}
