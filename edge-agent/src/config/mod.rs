//! Tag maps: loading, validation and the resolved model the drivers run from.
//!
//! A tag map is one TOML file: `[agent]`, then `[[device]]` tables each with `[[device.tag]]`
//! tables. `config/agent.example.toml` documents every key by example. Loading reports every
//! problem at once, each at file:line:column with the device or tag it concerns, and never panics.
//!
//! - `schema.rs`: the protocol-independent keys (agent, device and tag common keys);
//! - the registry of protocols is the drivers' (`drivers/registry.rs`: `ProtocolConfig`,
//!   implemented by each driver's `config.rs`, with each protocol's own cross-map checks), and
//!   so are the resolved types it builds (`drivers/device.rs`: `Device`, `Tag`;
//!   `drivers/events/def.rs`: `EventDef`), re-exported here; the tag vocabulary (`TagKind`,
//!   `Deadband`, `Priority`) is the model's; `TagMap::plant` is what the drivers run from;
//! - `validate.rs`: checks across devices and tags (duplicates, serial ports, event names; then
//!   each protocol's checks);
//! - `events.rs`: `[[device.event]]` event definitions (batch records), protocol-independent keys;
//! - `birth.rs`: the birth catalog, and the uplink's view of a tag map.
//!
//! The primitives (diagnostics, spanned parsing, durations) live in `settings/`, below the
//! drivers that own their protocols' keys.

pub mod birth;
pub mod events;
pub mod schema;
mod validate;

use std::path::Path;
use std::time::Duration;

pub use crate::drivers::events::{EventDef, EventField, Handshake, Trigger};
pub use crate::drivers::{Device, DeviceDriver, Tag, TagSource};
pub use crate::model::{Deadband, HandshakeValue, Priority, TagKind, TriggerMode};
pub use crate::settings::diag::{Diagnostic, Diagnostics, Severity};
pub use birth::birth;
pub use schema::AgentConfig;

use crate::drivers::{registry, AgentContext, Plant};
use crate::model::TagId;
use crate::settings::parse::{
    self, as_table, as_table_array, part, report_unknown_keys, str_key, STable, Spans,
};
use schema::{DeviceCommon, TagCommon};

/// Errors of the config stage.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read tag map {path}: {source}")]
    Io {
        /// Path given.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The tag map has errors (all of them, with warnings, in file order).
    #[error("tag map has {} error(s)", .0.iter().filter(|d| d.severity == Severity::Error).count())]
    Invalid(Vec<Diagnostic>),
}

/// A loaded, valid tag map.
#[derive(Debug, Clone)]
pub struct TagMap {
    /// File it was loaded from.
    pub file: String,
    /// Hash of the file contents (announced in the birth message).
    pub hash: String,
    /// Agent identity.
    pub agent: AgentConfig,
    /// Devices in file order.
    pub devices: Vec<Device>,
    /// All tags; `TagId` indexes this.
    pub tags: Vec<Tag>,
    /// `[buffer]` (defaults when absent).
    pub buffer: crate::buffer::BufferConfig,
    /// `[uplink]`, if the agent forwards to the cloud.
    pub uplink: Option<crate::uplink::UplinkConfig>,
}

impl TagMap {
    /// Every event definition with the index of its device, in file order.
    pub fn events(&self) -> impl Iterator<Item = (usize, &EventDef)> {
        self.devices
            .iter()
            .enumerate()
            .flat_map(|(i, d)| d.events.iter().map(move |e| (i, e)))
    }

    /// The tag called `name`.
    pub fn tag_by_name(&self, name: &str) -> Option<&Tag> {
        self.tags.iter().find(|t| t.name == name)
    }
}

impl From<&TagMap> for crate::buffer::TagClasses {
    /// The buffer's view of a tag map: its identity and each tag's priority class.
    fn from(map: &TagMap) -> Self {
        use crate::buffer::Class;
        crate::buffer::TagClasses {
            identity: crate::buffer::Identity {
                site: map.agent.site.clone(),
                agent: map.agent.id.clone(),
                config_hash: map.hash.clone(),
            },
            classes: map
                .tags
                .iter()
                .map(|t| match t.priority {
                    Priority::High => Class::High,
                    Priority::Normal => Class::Normal,
                    Priority::Low => Class::Low,
                })
                .collect(),
        }
    }
}

impl From<&std::sync::Arc<TagMap>> for crate::buffer::TagClasses {
    fn from(map: &std::sync::Arc<TagMap>) -> Self {
        Self::from(&**map)
    }
}

impl TagMap {
    /// What the drivers need of the agent besides its devices: identity and the buffer's path.
    pub fn agent_context(&self) -> AgentContext {
        AgentContext {
            site: self.agent.site.clone(),
            id: self.agent.id.clone(),
            buffer_path: self.buffer.effective_path(),
        }
    }

    /// The drivers' view of the map: its devices and tags, and the agent context.
    pub fn plant(&self) -> Plant<'_> {
        Plant {
            devices: &self.devices,
            tags: &self.tags,
            agent: self.agent_context(),
        }
    }
}

impl<'a> From<&'a TagMap> for Plant<'a> {
    fn from(map: &'a TagMap) -> Self {
        map.plant()
    }
}

impl<'a> From<&'a std::sync::Arc<TagMap>> for Plant<'a> {
    fn from(map: &'a std::sync::Arc<TagMap>) -> Self {
        map.plant()
    }
}

/// Load and validate the tag map at `path`; warnings come back with the map.
/// A file that is not UTF-8 is one error at its first bad byte's line and column.
pub fn load(path: &Path) -> Result<(TagMap, Vec<Diagnostic>), ConfigError> {
    use flowsquare_service::text::{self, ReadError};
    let file = path.display().to_string();
    let text = match text::read(path) {
        Ok(t) => t,
        Err(ReadError::Io(source)) => return Err(ConfigError::Io { path: file, source }),
        Err(ReadError::NotUtf8(e)) => {
            return Err(ConfigError::Invalid(vec![Diagnostic {
                severity: Severity::Error,
                file,
                line: e.line,
                column: e.column,
                subject: String::new(),
                message: format!(
                    "the tag map is not UTF-8: byte 0x{:02X} here (save the file as UTF-8)",
                    e.byte
                ),
            }]))
        }
    };
    parse_str(&file, &text)
}

/// 64-bit FNV-1a of the text, hex: a stable config hash without a crypto dependency.
pub fn config_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Parse and validate tag-map text; `file` names it in diagnostics.
///
/// Memory: the parsed TOML tree with spans takes ~1 KB per tag, so a large map is parsed one
/// `[[device]]` at a time (see [`device_parts`]): the text before the first device
/// (`[agent]`, `[buffer]`, `[uplink]`), then each device with its tags, whose tree is dropped
/// once the device is loaded. When a part does not stand alone (a syntax error, a multi-line
/// string cut at a header, a top-level table after a device, …) the whole document is parsed
/// at once instead, so the result and every diagnostic are exactly those of a whole parse.
pub fn parse_str(file: &str, text: &str) -> Result<(TagMap, Vec<Diagnostic>), ConfigError> {
    if let Some(parts) = device_parts(text) {
        if let Some(result) = parse_parts(file, text, &parts) {
            return result;
        }
    }
    parse_whole(file, text)
}

/// Byte offsets of the lines that are a top-level `[[device]]` header (comments allowed after
/// it), if there is at least one.
fn device_parts(text: &str) -> Option<Vec<usize>> {
    let mut starts = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.trim_start().strip_prefix("[[device]]") {
            let rest = rest.trim_start();
            if rest.is_empty() || rest.starts_with('#') {
                starts.push(at);
            }
        }
        at += line.len();
    }
    (!starts.is_empty()).then_some(starts)
}

/// The whole tag map, from one parse tree.
fn parse_whole(file: &str, text: &str) -> Result<(TagMap, Vec<Diagnostic>), ConfigError> {
    let mut diags = Diagnostics::new(file, text);
    let (doc, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in &syntax {
            diags.toml_error(e, 0..0, "");
        }
        return Err(ConfigError::Invalid(diags.into_sorted()));
    }
    let root: &toml::de::DeTable = doc.get_ref();
    let (buffer, uplink, agent) = load_head(&STable::new(doc.span(), root), &mut diags);
    let mut loaded = Loaded::default();
    if let Some(v) = root.get("device") {
        for dt in as_table_array(v, "device", "", &mut diags) {
            loaded.device(&dt, &mut diags);
        }
    } else {
        diags.warning(
            0..0,
            "",
            "no [[device]] tables: the agent will poll nothing",
        );
    }
    finish(file, text, agent, buffer, uplink, loaded, diags)
}

/// The tag map parsed part by part (`starts`: the `[[device]]` headers); `None` when a part
/// does not stand alone (the caller parses the whole document instead).
fn parse_parts(
    file: &str,
    text: &str,
    starts: &[usize],
) -> Option<Result<(TagMap, Vec<Diagnostic>), ConfigError>> {
    let mut diags = Diagnostics::new(file, text);
    let (head, syntax) = toml::de::DeTable::parse_recoverable(&text[..starts[0]]);
    if !syntax.is_empty() || head.get_ref().contains_key("device") {
        return None;
    }
    let (buffer, uplink, agent) = load_head(&STable::new(head.span(), head.get_ref()), &mut diags);
    drop(head);
    let mut loaded = Loaded::default();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let (doc, syntax) = toml::de::DeTable::parse_recoverable(&text[start..end]);
        let root = doc.get_ref();
        if !syntax.is_empty() || root.len() != 1 {
            return None;
        }
        let v = root.get("device")?;
        diags.set_base(start);
        let (devices, tags, events) = (
            loaded.device_spans.len(),
            loaded.tag_spans.len(),
            loaded.event_spans.len(),
        );
        for dt in as_table_array(v, "device", "", &mut diags) {
            loaded.device(&dt, &mut diags);
        }
        diags.set_base(0);
        // Spans kept for the checks across devices: made absolute.
        for s in loaded.device_spans[devices..]
            .iter_mut()
            .chain(&mut loaded.tag_spans[tags..])
            .chain(&mut loaded.event_spans[events..])
        {
            s.shift(start);
        }
    }
    Some(finish(file, text, agent, buffer, uplink, loaded, diags))
}

/// What every part before the devices gives: `[buffer]`, `[uplink]`, `[agent]`.
fn load_head(
    root: &STable<'_, '_>,
    diags: &mut Diagnostics,
) -> (
    crate::buffer::BufferConfig,
    Option<crate::uplink::UplinkConfig>,
    Option<AgentConfig>,
) {
    report_unknown_keys(
        root,
        &[&["agent", "device", "buffer", "uplink"]],
        &[],
        "",
        diags,
    );
    let root = root.get_ref();
    let buffer = section::<crate::buffer::BufferConfig>(
        root,
        "buffer",
        diags,
        |b| b.validate(),
        |_| Vec::new(),
    )
    .unwrap_or_default();
    let uplink = section::<crate::uplink::UplinkConfig>(
        root,
        "uplink",
        diags,
        |u| u.validate(),
        |u| u.warnings(),
    );
    let agent = match root.get("agent") {
        Some(v) => as_table(v, "agent", "agent", diags).and_then(|t| load_agent(&t, diags)),
        None => {
            diags.error(
                0..0,
                "",
                "missing [agent] table (site and id of this gateway)",
            );
            None
        }
    };
    (buffer, uplink, agent)
}

/// Devices and tags loaded so far, with the spans the checks across devices need.
#[derive(Default)]
struct Loaded {
    /// `[[device]]` tables seen (loaded or not: unnamed ones are called `#N` after it).
    seen: usize,
    devices: Vec<Device>,
    tags: Vec<Tag>,
    device_spans: Vec<Spans>,
    tag_spans: Vec<Spans>,
    event_spans: Vec<Spans>,
}

impl Loaded {
    /// Load one `[[device]]` table.
    fn device(&mut self, dt: &STable<'_, '_>, diags: &mut Diagnostics) {
        self.seen += 1;
        load_device(
            self.seen - 1,
            dt,
            &mut self.devices,
            &mut self.tags,
            &mut self.device_spans,
            &mut self.tag_spans,
            &mut self.event_spans,
            diags,
        );
    }
}

/// The checks across devices, then the map (or every diagnostic).
fn finish(
    file: &str,
    text: &str,
    agent: Option<AgentConfig>,
    buffer: crate::buffer::BufferConfig,
    uplink: Option<crate::uplink::UplinkConfig>,
    loaded: Loaded,
    mut diags: Diagnostics,
) -> Result<(TagMap, Vec<Diagnostic>), ConfigError> {
    let Loaded {
        seen: _,
        devices,
        mut tags,
        device_spans,
        tag_spans,
        event_spans,
    } = loaded;
    validate::check(&devices, &tags, &device_spans, &tag_spans, &mut diags);
    validate::events(&devices, &event_spans, &mut diags);
    tags.shrink_to_fit();
    match agent {
        Some(agent) if !diags.has_errors() => Ok((
            TagMap {
                file: file.to_owned(),
                hash: config_hash(text),
                agent,
                devices,
                tags,
                buffer,
                uplink,
            },
            diags.into_sorted(),
        )),
        _ => Err(ConfigError::Invalid(diags.into_sorted())),
    }
}

/// An optional single-table section (`[buffer]`, `[uplink]`), deserialized and validated:
/// `validate` gives its errors, `warn` its warnings, each as `(key, message)`.
fn section<T: serde::de::DeserializeOwned>(
    root: &toml::de::DeTable<'_>,
    key: &str,
    diags: &mut Diagnostics,
    validate: impl Fn(&T) -> Vec<(&'static str, String)>,
    warn: impl Fn(&T) -> Vec<(&'static str, String)>,
) -> Option<T> {
    let v = root.get(key)?;
    let t = as_table(v, key, key, diags)?;
    report_unknown_keys(&t, &[parse::fields_of::<T>()], &[], key, diags);
    let parsed: T = part(&t, key, diags)?;
    let spans = parse::key_spans(&t);
    for (k, msg) in validate(&parsed) {
        diags.error(spans.of(k), key, msg);
    }
    for (k, msg) in warn(&parsed) {
        diags.warning(spans.of(k), key, msg);
    }
    Some(parsed)
}

fn load_agent(t: &STable<'_, '_>, diags: &mut Diagnostics) -> Option<AgentConfig> {
    report_unknown_keys(t, &[parse::fields_of::<AgentConfig>()], &[], "agent", diags);
    let agent: AgentConfig = part(t, "agent", diags)?;
    for (key, v) in [("site", &agent.site), ("id", &agent.id)] {
        if !schema::valid_ident(v) {
            let span = parse::value_span(t.get_ref(), key).unwrap_or(t.span());
            diags.error(
                span,
                "agent",
                format!("{key} {v:?} must be 1–64 characters of letters, digits, '-', '_' or '.' (it is part of MQTT topics)"),
            );
        }
    }
    Some(agent)
}

#[allow(clippy::too_many_arguments)]
fn load_device(
    index: usize,
    dt: &STable<'_, '_>,
    devices: &mut Vec<Device>,
    tags: &mut Vec<Tag>,
    device_spans: &mut Vec<Spans>,
    tag_spans: &mut Vec<Spans>,
    event_spans: &mut Vec<Spans>,
    diags: &mut Diagnostics,
) {
    let t = dt.get_ref();
    let name = str_key(t, "name")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("#{}", index + 1));
    let subject = format!("device '{name}'");
    let protocol = str_key(t, "protocol").map(str::to_owned);
    let spans = parse::key_spans(dt);
    let Some((protocol, proto)) = protocol_of(dt, protocol, &spans, &subject, diags) else {
        return;
    };
    let mut allowed = vec![parse::fields_of::<DeviceCommon>()];
    allowed.extend(proto.device_keys(&protocol));
    let mut subtables = vec!["tag"];
    subtables.extend_from_slice(proto.device_subtables());
    report_unknown_keys(dt, &allowed, &subtables, &subject, diags);
    let common: Option<DeviceCommon> = part(dt, &subject, diags);
    let driver = proto.device(&protocol, dt, &spans, &subject, diags);
    // When a part failed (already reported), go on with defaults so that the tags' own problems
    // are reported too; the map is rejected anyway.
    let common = common.unwrap_or_else(|| DeviceCommon {
        name: name.clone(),
        protocol: protocol.clone(),
        poll_interval: schema::DEFAULT_POLL_INTERVAL,
        description: None,
    });
    if !schema::valid_ident(&common.name) {
        diags.error(
            spans.of("name"),
            &subject,
            "device name must be 1–64 characters of letters, digits, '-', '_' or '.'",
        );
    }
    if common.poll_interval < Duration::from_millis(10) {
        diags.error(
            spans.of("poll_interval"),
            &subject,
            "poll_interval must be at least 10ms",
        );
    }
    let device_index = devices.len();
    let mut device = Device {
        name: common.name.clone(),
        description: common.description,
        poll_interval: common.poll_interval,
        driver,
        tags: Vec::new(),
        events: Vec::new(),
    };
    if let Some(v) = t.get("tag") {
        let mut tag_keys = vec![parse::fields_of::<TagCommon>()];
        tag_keys.extend(proto.tag_keys(&device.driver));
        for (ti, tt) in as_table_array(v, "device.tag", &subject, diags)
            .into_iter()
            .enumerate()
        {
            let ts = tag_subject(&subject, &tt, ti);
            let tspans = parse::key_spans(&tt);
            report_unknown_keys(&tt, &tag_keys, &[], &ts, diags);
            let tc: Option<TagCommon> = part(&tt, &ts, diags);
            let source = proto.tag(&device.driver, &tt, &tspans, &ts, diags);
            let (Some(tc), Some(source)) = (tc, source) else {
                continue;
            };
            let rollover = check_tag_semantics(&tc, &source, &tspans, &ts, diags);
            let id = tags.len() as TagId;
            device.tags.push(id);
            tags.push(Tag {
                id,
                device: device_index,
                name: tc.name,
                unit: tc.unit,
                description: tc.description,
                kind: tc.kind,
                deadband: tc.deadband,
                max_silence: tc.max_silence,
                rollover,
                priority: tc.priority.unwrap_or(if tc.kind == TagKind::Totalizer {
                    Priority::High
                } else {
                    Priority::Normal
                }),
                source,
            });
            tag_spans.push(tspans);
        }
    }
    if let Some(v) = t.get("event") {
        let (evs, spans) = events::load(
            v,
            proto,
            &device.driver,
            device.poll_interval,
            &subject,
            diags,
        );
        device.events = evs;
        event_spans.extend(spans);
    }
    if !t.contains_key("tag") && !t.contains_key("event") {
        diags.warning(dt.span(), &subject, "device has no [[device.tag]] tables");
    }
    devices.push(device);
    device_spans.push(spans);
}

/// The device's `protocol` and its config part; reports a missing or unknown protocol.
fn protocol_of(
    dt: &STable<'_, '_>,
    protocol: Option<String>,
    spans: &Spans,
    subject: &str,
    diags: &mut Diagnostics,
) -> Option<(String, &'static dyn registry::ProtocolConfig)> {
    match protocol {
        Some(p) => match registry::for_protocol(&p) {
            Some(c) => Some((p, c)),
            None => {
                diags.error(
                    spans.of("protocol"),
                    subject,
                    format!(
                        "unknown protocol {p:?}; supported: {}",
                        registry::supported_list()
                    ),
                );
                None
            }
        },
        None => {
            let span = if dt.get_ref().contains_key("protocol") {
                spans.of("protocol")
            } else {
                dt.span()
            };
            diags.error(
                span,
                subject,
                format!("missing `protocol` ({})", registry::supported_list()),
            );
            None
        }
    }
}

fn tag_subject(device_subject: &str, tt: &STable<'_, '_>, index: usize) -> String {
    match str_key(tt.get_ref(), "name") {
        Some(n) => format!("{device_subject} tag '{n}'"),
        None => format!("{device_subject} tag #{}", index + 1),
    }
}

/// Checks on the protocol-independent keys of one tag; returns the effective rollover.
fn check_tag_semantics(
    tc: &TagCommon,
    source: &TagSource,
    spans: &Spans,
    subject: &str,
    diags: &mut Diagnostics,
) -> Option<f64> {
    if !schema::valid_tag_name(&tc.name) {
        diags.error(
            spans.of("name"),
            subject,
            "tag name must be '/'-separated segments of letters, digits, '-', '_' or '.', e.g. \"tank-farm/tk-101/level\"",
        );
    }
    let numeric = source.is_numeric();
    if tc.kind == TagKind::Totalizer && !numeric {
        diags.error(
            spans.of("kind"),
            subject,
            format!("a totalizer must be numeric, not {}", source.data_type()),
        );
    }
    if tc.deadband.is_some() && !numeric {
        diags.error(
            spans.of("deadband"),
            subject,
            format!(
                "deadband applies to numeric tags, not {}",
                source.data_type()
            ),
        );
    }
    if tc.max_silence.is_zero() {
        diags.error(
            spans.of("max_silence"),
            subject,
            "max_silence must be greater than zero",
        );
    }
    match (tc.kind, tc.rollover) {
        (TagKind::Totalizer, Some(r)) if r > 0.0 && r.is_finite() => Some(r),
        (TagKind::Totalizer, Some(r)) => {
            diags.error(
                spans.of("rollover"),
                subject,
                format!("rollover {r} must be a positive number"),
            );
            None
        }
        (TagKind::Totalizer, None) => source.default_rollover(),
        (_, Some(_)) => {
            diags.error(
                spans.of("rollover"),
                subject,
                "rollover applies only to kind = \"totalizer\"",
            );
            None
        }
        (_, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OPC UA `[[device.event]]`: locations parsed like OPC UA tags, the trigger's `u16`
    /// width is the default rollover, a `u32` one too, `integer` has none.
    #[test]
    fn opcua_event_definitions_load_with_the_type_width_as_rollover() {
        let text = |ty: &str, extra: &str| {
            format!(
                r#"[agent]
site = "t"
id = "gw"

[[device]]
name = "ua"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/"

  [[device.event]]
  name = "bay1"
  trigger = {{ node = "ns=2;s=Seq", type = "{ty}" }}
  {extra}
  handshake = {{ node = "ns=2;s=Ack", type = "u16", value = "seq" }}
  fields = [{{ name = "bol", node = "ns=2;s=Bol", type = "string" }}]
"#
            )
        };
        let (m, _) = parse_str("a.toml", &text("u16", "")).expect("loads");
        let (_, def) = m.events().next().expect("one definition");
        assert_eq!(def.seq_rollover, 65_535);
        assert!(def.handshake.is_some());
        assert_eq!(
            def.fields[0].source.opcua().map(|t| t.node.text.as_str()),
            Some("ns=2;s=Bol")
        );
        let (m, _) = parse_str("a.toml", &text("uint32", "")).expect("loads");
        assert_eq!(
            m.events().next().map(|(_, d)| d.seq_rollover),
            Some(u64::from(u32::MAX))
        );
        let (m, _) = parse_str("a.toml", &text("integer", "seq_rollover = 9999")).expect("loads");
        assert_eq!(m.events().next().map(|(_, d)| d.seq_rollover), Some(9999));
        // Above the width's maximum: refused with the key's position.
        assert!(parse_str("a.toml", &text("u16", "seq_rollover = 70000")).is_err());
    }

    /// Loading part by part gives exactly what one whole parse gives (map and diagnostics),
    /// for the shipped example and every fixture map (valid ones, and ones with errors and
    /// warnings in several devices).
    #[test]
    fn parsing_by_parts_equals_the_whole_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tagmaps");
        let mut files =
            vec![concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.example.toml").to_owned()];
        for e in std::fs::read_dir(dir).expect("fixtures") {
            let p = e.expect("entry").path().join("agent.toml");
            if p.exists() {
                files.push(p.display().to_string());
            }
        }
        assert!(files.len() > 10);
        let show = |r: Result<(TagMap, Vec<Diagnostic>), ConfigError>| match r {
            Ok((m, d)) => format!("{:?} {:?} {:?} {d:?}", m.devices, m.tags, m.agent),
            Err(ConfigError::Invalid(d)) => format!("invalid {d:?}"),
            Err(e) => format!("{e}"),
        };
        for f in files {
            let text = std::fs::read_to_string(&f).expect("readable");
            assert_eq!(
                show(parse_str(&f, &text)),
                show(parse_whole(&f, &text)),
                "{f}"
            );
        }
    }

    /// A part that does not stand alone (a `[[device]]` line inside a multi-line string, a
    /// top-level table after the devices) makes the whole document be parsed: same result.
    #[test]
    fn parts_that_do_not_stand_alone_fall_back_to_the_whole_parse() {
        let head = "[agent]\nsite = \"s\"\nid = \"gw\"\n";
        let dev = |n: u32| {
            format!("\n[[device]]\nname = \"d{n}\"\nprotocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"\n\n[[device.tag]]\nname = \"a/t{n}\"\nregister = \"holding\"\naddress = 0\n")
        };
        let cut_string = format!("{head}description = \"\"\"\n[[device]]\n\"\"\"\n{}", dev(1));
        let table_after = format!(
            "{head}{}{}\n[buffer]\ncommit_interval = \"1s\"\n",
            dev(1),
            dev(2)
        );
        let starts = |t: &str| device_parts(t).map(|p| p.len());
        assert_eq!(starts(&cut_string), Some(2));
        assert!(parse_parts(
            "x.toml",
            &cut_string,
            &device_parts(&cut_string).unwrap_or_default()
        )
        .is_none());
        let (m, _) = parse_str("x.toml", &cut_string).expect("valid as a whole");
        assert_eq!(m.devices.len(), 1);
        assert_eq!(m.agent.description.as_deref(), Some("[[device]]\n"));
        assert!(parse_parts(
            "x.toml",
            &table_after,
            &device_parts(&table_after).unwrap_or_default()
        )
        .is_none());
        let (m, _) = parse_str("x.toml", &table_after).expect("valid as a whole");
        assert_eq!(
            (m.devices.len(), m.buffer.commit_interval),
            (2, Duration::from_secs(1))
        );
        // A bad value in the second device is located in the file, not in its part.
        let bad = format!(
            "{head}{}{}",
            dev(1),
            dev(2).replace("address = 0", "address = -1")
        );
        let Err(ConfigError::Invalid(d)) = parse_str("x.toml", &bad) else {
            panic!("address -1 must be refused")
        };
        let line = bad
            .lines()
            .position(|l| l == "address = -1")
            .expect("present")
            + 1;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            (d[0].line, d[0].subject.as_str()),
            (line, "device 'd2' tag 'a/t2'")
        );
    }

    /// The shipped example is the documentation: it must load without errors.
    #[test]
    fn example_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.example.toml");
        match load(Path::new(path)) {
            Ok((map, warnings)) => {
                assert!(!map.tags.is_empty());
                assert!(warnings.iter().all(|w| w.severity == Severity::Warning));
            }
            Err(e) => panic!(
                "example config: {:#?}",
                match &e {
                    ConfigError::Invalid(d) => d.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    ConfigError::Io { .. } => vec![],
                }
            ),
        }
    }

    /// A secret given with the wrong type (`security_code = 123456`, an integer): the error
    /// names the file, line and column and the key, never the value.
    #[test]
    fn a_mistyped_secret_is_not_echoed() {
        let text = "[agent]\nsite = \"s\"\nid = \"gw\"\n\n[[device]]\nname = \"atg\"\nprotocol = \"tls-350\"\npoll_interval = \"5s\"\nhost = \"127.0.0.1\"\nsecurity_code = 987654\n  [[device.tag]]\n  name = \"t1/volume\"\n  tank = 1\n  field = \"volume\"\n";
        let Err(ConfigError::Invalid(d)) = parse_str("a.toml", text) else {
            panic!("a mistyped security code must not load");
        };
        let shown: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(
            shown.iter().any(|s| s.starts_with("a.toml:10:")),
            "{shown:?}"
        );
        assert!(shown.iter().all(|s| !s.contains("987654")), "{shown:?}");
    }

    /// The security code: inline (works, warned, checked at load), from a file (read and
    /// checked when the runtime starts), never from two places at once.
    #[test]
    fn the_security_code_comes_inline_or_from_a_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let map = |keys: &str| {
            format!(
                "[agent]\nsite = \"s\"\nid = \"gw\"\n\n[[device]]\nname = \"atg\"\nprotocol = \"tls-350\"\npoll_interval = \"5s\"\nhost = \"127.0.0.1\"\n{keys}\n  [[device.tag]]\n  name = \"t1/volume\"\n  tank = 1\n  field = \"volume\"\n"
            )
        };
        let load = |keys: &str| parse_str("a.toml", &map(keys));
        let code_of = |m: &TagMap| {
            m.devices[0]
                .driver
                .tls350()
                .map(|t| t.read_security_code().map(|c| c.expose().to_owned()))
        };
        let (m, warnings) = load("security_code = \"ABC123\"").expect("inline loads");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!((warnings[0].line, warnings[0].column), (10, 17));
        assert!(warnings[0].message.contains(
            "`security_code`: the console's security code is written in the configuration file"
        ));
        assert!(
            !format!("{:?}", m.devices).contains("ABC123"),
            "Debug hides it"
        );
        assert_eq!(code_of(&m), Some(Ok("ABC123".into())));

        let file = dir.path().join("code");
        std::fs::write(&file, "XYZ789\n").expect("write");
        let keys = format!("security_code_file = {:?}", file.display().to_string());
        let (m, warnings) = load(&keys).expect("file loads");
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(code_of(&m), Some(Ok("XYZ789".into())));
        std::fs::write(&file, "short\n").expect("write");
        let e = code_of(&m).and_then(Result::err).expect("bad code refused");
        assert!(e.contains("6 printable") && !e.contains("short"), "{e}");
        std::fs::remove_file(&file).expect("rm");
        let e = code_of(&m)
            .and_then(Result::err)
            .expect("missing file refused");
        assert!(e.contains("cannot read secret file"), "{e}");

        let (m, _) = load("").expect("no code");
        assert_eq!(code_of(&m), Some(Ok(String::new())));
        let both = format!("security_code = \"ABC123\"\n{keys}");
        assert!(load(&both).is_err(), "two sources refused");
        assert!(
            load("security_code = \"123\"").is_err(),
            "a bad inline code is an error"
        );
    }
}
