//! `[[device.event]]`: event definitions (gantry batch records and other transaction tables).
//!
//! The keys that mean the same on every protocol (name, kind, trigger mode, rollover, poll
//! interval, field names and units, handshake value) are read here; where each value lives on
//! the device (register and type on Modbus, node id on OPC UA) is read by the protocol's
//! `ProtocolConfig::tag` from the same table, so a trigger, a field and a handshake target are
//! written exactly like a tag of that protocol.

use serde::Deserialize;
use std::time::Duration;

use crate::drivers::events::{EventDef, EventField, Handshake, Trigger};
use crate::drivers::registry::ProtocolConfig;
use crate::drivers::DeviceDriver;
use crate::model::{HandshakeValue, TriggerMode};
use crate::settings::diag::Diagnostics;
use crate::settings::duration;
use crate::settings::parse::{self, as_table, as_table_array, part, report_unknown_keys, STable};

/// Default event kind.
pub const DEFAULT_KIND: &str = "gantry-batch";

/// Keys of `[[device.event]]` besides its sub-tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    /// Unique name of the definition (letters, digits, '-', '_', '.').
    pub name: String,
    /// Event kind announced to the cloud.
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// How often the trigger is read; default: the device's poll interval.
    #[serde(default, deserialize_with = "duration::de_opt")]
    pub poll_interval: Option<Duration>,
    /// Last sequence number before the PLC wraps to 0; default: the trigger type's maximum.
    #[serde(default)]
    pub seq_rollover: Option<u64>,
}

fn default_kind() -> String {
    DEFAULT_KIND.into()
}

/// Protocol-independent keys of the `trigger` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    /// `sequence` (default) or `flag`.
    #[serde(default)]
    pub mode: TriggerMode,
}

/// Protocol-independent keys of a field table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    /// Field name, unique within the definition.
    pub name: String,
    /// Engineering unit.
    #[serde(default)]
    pub unit: Option<String>,
}

/// Protocol-independent keys of the `handshake` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandshake {
    /// `"seq"`, `true`/`false` (coil) or an integer (register).
    pub value: RawHandshakeValue,
}

/// A handshake value as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawHandshakeValue {
    /// A bit.
    Bool(bool),
    /// A register value.
    Int(i64),
    /// `"seq"`.
    Text(String),
}

/// Load the `[[device.event]]` tables of one device.
pub(super) fn load(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    proto: &dyn ProtocolConfig,
    driver: &DeviceDriver,
    device_poll: Duration,
    device_subject: &str,
    diags: &mut Diagnostics,
) -> (Vec<EventDef>, Vec<parse::Spans>) {
    let mut out = Vec::new();
    let mut spans_out = Vec::new();
    let loc_keys = proto.tag_keys(driver);
    for (i, et) in as_table_array(value, "device.event", device_subject, diags)
        .into_iter()
        .enumerate()
    {
        let subject = match parse::str_key(et.get_ref(), "name") {
            Some(n) => format!("{device_subject} event '{n}'"),
            None => format!("{device_subject} event #{}", i + 1),
        };
        let spans = parse::key_spans(&et);
        if let Some(d) = load_one(&et, proto, driver, device_poll, &loc_keys, &subject, diags) {
            out.push(d);
            spans_out.push(spans);
        }
    }
    (out, spans_out)
}

fn load_one(
    et: &STable<'_, '_>,
    proto: &dyn ProtocolConfig,
    driver: &DeviceDriver,
    device_poll: Duration,
    loc_keys: &[&'static [&'static str]],
    subject: &str,
    diags: &mut Diagnostics,
) -> Option<EventDef> {
    let spans = parse::key_spans(et);
    report_unknown_keys(
        et,
        &[parse::fields_of::<RawEvent>()],
        &["trigger", "handshake", "field", "fields"],
        subject,
        diags,
    );
    let raw: Option<RawEvent> = part(et, subject, diags);
    let t = et.get_ref();

    // Trigger.
    let trigger = match t.get("trigger") {
        Some(v) => as_table(v, "trigger", subject, diags).and_then(|tt| {
            let ts = format!("{subject} trigger");
            let tspans = parse::key_spans(&tt);
            let mut allowed = vec![parse::fields_of::<RawTrigger>()];
            allowed.extend_from_slice(loc_keys);
            report_unknown_keys(&tt, &allowed, &[], &ts, diags);
            let mode: Option<RawTrigger> = part(&tt, &ts, diags);
            let source = proto.tag(driver, &tt, &tspans, &ts, diags)?;
            let mode = mode?.mode;
            match mode {
                TriggerMode::Sequence if !source.is_integer() => diags.error(
                    tspans.of("type"),
                    &ts,
                    format!(
                        "a sequence trigger must be an unsigned integer type (u16, u32, u64), not {}",
                        source.data_type()
                    ),
                ),
                TriggerMode::Flag if !(source.is_integer() || source.is_boolean()) => diags
                    .error(
                        tspans.of("type"),
                        &ts,
                        format!(
                            "a flag trigger must be a bit, bool or integer, not {}",
                            source.data_type()
                        ),
                    ),
                _ => {}
            }
            Some(Trigger { mode, source })
        }),
        None => {
            diags.error(
                et.span(),
                subject,
                "missing `trigger` (e.g. trigger = { register = \"holding\", address = 100, type = \"u16\", mode = \"sequence\" })",
            );
            None
        }
    };

    // Fields: `fields = [ {…}, … ]` and/or `[[device.event.field]]`.
    let mut fields: Vec<EventField> = Vec::new();
    let mut field_spans: Vec<parse::Spans> = Vec::new();
    let mut field_keys = vec![parse::fields_of::<RawField>()];
    field_keys.extend_from_slice(loc_keys);
    for key in ["fields", "field"] {
        let Some(v) = t.get(key) else { continue };
        let what = if key == "fields" {
            "fields"
        } else {
            "device.event.field"
        };
        for (fi, ft) in as_table_array(v, what, subject, diags)
            .into_iter()
            .enumerate()
        {
            let fs = match parse::str_key(ft.get_ref(), "name") {
                Some(n) => format!("{subject} field '{n}'"),
                None => format!("{subject} field #{}", fi + 1),
            };
            let fspans = parse::key_spans(&ft);
            report_unknown_keys(&ft, &field_keys, &[], &fs, diags);
            let common: Option<RawField> = part(&ft, &fs, diags);
            let source = proto.tag(driver, &ft, &fspans, &fs, diags);
            let (Some(c), Some(source)) = (common, source) else {
                continue;
            };
            if !super::schema::valid_ident(&c.name) {
                diags.error(
                    fspans.of("name"),
                    &fs,
                    "field name must be 1–64 characters of letters, digits, '-', '_' or '.'",
                );
            }
            if let Some(first) = fields.iter().position(|f| f.name == c.name) {
                let line = diags.line_of(field_spans[first].of("name").start);
                diags.error(
                    fspans.of("name"),
                    &fs,
                    format!("duplicate field name; first defined at line {line}"),
                );
            }
            fields.push(EventField {
                name: c.name,
                unit: c.unit,
                source,
            });
            field_spans.push(fspans);
        }
    }
    if !t.contains_key("fields") && !t.contains_key("field") {
        diags.error(
            et.span(),
            subject,
            "an event definition needs fields to read when it fires: `fields = [ { name = \"bol\", register = \"holding\", address = 110, type = \"string\", length = 16 } ]` or [[device.event.field]] tables",
        );
    }

    // Handshake.
    let handshake = match t.get("handshake") {
        Some(v) => as_table(v, "handshake", subject, diags).and_then(|ht| {
            let hs = format!("{subject} handshake");
            let hspans = parse::key_spans(&ht);
            let mut allowed = vec![parse::fields_of::<RawHandshake>()];
            allowed.extend_from_slice(loc_keys);
            report_unknown_keys(&ht, &allowed, &[], &hs, diags);
            let raw: Option<RawHandshake> = part(&ht, &hs, diags);
            let target = proto.tag(driver, &ht, &hspans, &hs, diags)?;
            if !target.is_writable() {
                diags.error(
                    hspans.of("register"),
                    &hs,
                    "the handshake must be written to a writable location (a coil or a holding register)",
                );
            }
            let value = match raw?.value {
                RawHandshakeValue::Text(s) if s == "seq" => {
                    if !target.is_integer() && target.is_writable() {
                        diags.error(
                            hspans.of("value"),
                            &hs,
                            format!("value = \"seq\" needs an integer target (u16, u32), not {}", target.data_type()),
                        );
                    }
                    HandshakeValue::Seq
                }
                RawHandshakeValue::Text(s) => {
                    diags.error(
                        hspans.of("value"),
                        &hs,
                        format!("value {s:?} must be \"seq\", true/false or an integer"),
                    );
                    return None;
                }
                RawHandshakeValue::Bool(b) => {
                    if !target.is_boolean() {
                        diags.error(
                            hspans.of("value"),
                            &hs,
                            format!("a true/false value needs a coil or bool target, not {}", target.data_type()),
                        );
                    }
                    HandshakeValue::Bool(b)
                }
                RawHandshakeValue::Int(n) => {
                    if !target.is_integer() || !(0..=65_535).contains(&n) {
                        diags.error(
                            hspans.of("value"),
                            &hs,
                            format!("an integer value needs an integer target and must be 0..=65535 (got {n} for {})", target.data_type()),
                        );
                    }
                    HandshakeValue::Int(n)
                }
            };
            Some(Handshake { target, value })
        }),
        None => None,
    };

    let raw = raw?;
    let trigger = trigger?;
    if !super::schema::valid_ident(&raw.name) {
        diags.error(
            spans.of("name"),
            subject,
            "event name must be 1–64 characters of letters, digits, '-', '_' or '.'",
        );
    }
    if !super::schema::valid_ident(&raw.kind) {
        diags.error(
            spans.of("kind"),
            subject,
            "event kind must be 1–64 characters of letters, digits, '-', '_' or '.'",
        );
    }
    let poll_interval = raw.poll_interval.unwrap_or(device_poll);
    if poll_interval < Duration::from_millis(10) {
        diags.error(
            spans.of("poll_interval"),
            subject,
            "poll_interval must be at least 10ms",
        );
    }
    let type_max = trigger.source.unsigned_max();
    let seq_rollover = match (trigger.mode, raw.seq_rollover) {
        (TriggerMode::Flag, Some(_)) => {
            diags.error(
                spans.of("seq_rollover"),
                subject,
                "seq_rollover applies only to mode = \"sequence\" triggers",
            );
            0
        }
        (TriggerMode::Flag, None) => 0,
        (TriggerMode::Sequence, Some(r)) => {
            if r == 0 || type_max.is_some_and(|m| r > m) {
                diags.error(
                    spans.of("seq_rollover"),
                    subject,
                    format!(
                        "seq_rollover {r} must be between 1 and the trigger type's maximum ({})",
                        type_max.unwrap_or(u64::MAX)
                    ),
                );
            }
            r
        }
        (TriggerMode::Sequence, None) => type_max.unwrap_or(u64::MAX),
    };
    if let (Some(h), TriggerMode::Flag) = (&handshake, trigger.mode) {
        if h.value == HandshakeValue::Seq {
            diags.error(
                spans.of("handshake"),
                subject,
                "handshake value = \"seq\" needs a sequence trigger; a flag trigger is usually acknowledged with a constant (e.g. value = false to reset the flag)",
            );
        }
    }
    Some(EventDef {
        name: raw.name,
        kind: raw.kind,
        description: raw.description,
        poll_interval,
        trigger,
        seq_rollover,
        fields,
        handshake,
    })
}
