//! The birth message of a tag map (the catalog the cloud resolves tag ids with) and the
//! uplink's view of a tag map ([`crate::uplink::Catalog`]).

use flowsquare_wire as wire;

use super::{TagMap, TriggerMode};
use crate::model::now_ms;

/// The birth message of a tag map.
pub fn birth(map: &TagMap) -> wire::Birth {
    wire::Birth {
        tags: map.tags.iter().map(|t| tag_info(map, t)).collect(),
        ..birth_without_tags(map)
    }
}

/// The catalog entry of one tag.
fn tag_info(map: &TagMap, t: &super::Tag) -> wire::TagInfo {
    wire::TagInfo {
        id: t.id,
        name: t.name.clone(),
        unit: t.unit.clone(),
        kind: t.kind.as_str().into(),
        device: map.devices[t.device].name.clone(),
        description: t.description.clone(),
        data_type: t.source.data_type().into(),
        poll_interval_ms: map.devices[t.device].poll_interval.as_millis() as u64,
    }
}

/// The birth message with an empty tag list.
fn birth_without_tags(map: &TagMap) -> wire::Birth {
    wire::Birth {
        v: 1,
        site: map.agent.site.clone(),
        agent: map.agent.id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        config_hash: map.hash.clone(),
        started_ms: now_ms(),
        devices: map
            .devices
            .iter()
            .map(|d| wire::DeviceInfo {
                name: d.name.clone(),
                protocol: d.driver.protocol().into(),
                description: d.description.clone(),
            })
            .collect(),
        tags: Vec::new(),
        events: map
            .events()
            .map(|(di, e)| wire::EventInfo {
                name: e.name.clone(),
                kind: e.kind.clone(),
                device: map.devices[di].name.clone(),
                description: e.description.clone(),
                trigger: e.trigger.mode.as_str().into(),
                seq_rollover: (e.trigger.mode == TriggerMode::Sequence).then_some(e.seq_rollover),
                fields: e
                    .fields
                    .iter()
                    .map(|f| wire::EventFieldInfo {
                        name: f.name.clone(),
                        data_type: f.source.data_type().into(),
                        unit: f.unit.clone(),
                    })
                    .collect(),
            })
            .collect(),
        buffer: None,
    }
}

/// The encoded birth of `map` (made at `started_ms`), naming the buffer it sends from: the JSON
/// of [`birth`] with `buffer` set, written tag by tag straight from the map (at 100,000 tags a
/// whole `wire::Birth` would hold ~35 MB of strings at once beside the ~12 MB of JSON). It is
/// made again for every connection rather than kept (the map is kept anyway).
fn birth_of(map: &TagMap, started_ms: i64, identity: &wire::messages::BufferIdentity) -> Vec<u8> {
    use serde::ser::Serializer;
    /// The tags of the catalog, serialized one at a time.
    struct Tags<'a>(&'a TagMap);
    impl serde::Serialize for Tags<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.tags.iter().map(|t| tag_info(self.0, t)))
        }
    }
    /// `wire::Birth`'s fields, in its order and with its rules, borrowing.
    #[derive(serde::Serialize)]
    struct Out<'a> {
        v: u32,
        site: &'a str,
        agent: &'a str,
        agent_version: &'a str,
        config_hash: &'a str,
        started_ms: i64,
        devices: &'a [wire::DeviceInfo],
        tags: Tags<'a>,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        events: &'a [wire::EventInfo],
        buffer: Option<&'a wire::messages::BufferIdentity>,
    }
    let b = birth_without_tags(map);
    let out = Out {
        v: b.v,
        site: &b.site,
        agent: &b.agent,
        agent_version: &b.agent_version,
        config_hash: &b.config_hash,
        started_ms,
        devices: &b.devices,
        tags: Tags(map),
        events: &b.events,
        buffer: Some(identity),
    };
    // Cannot fail: strings, integers and `wire` structs whose derived `Serialize` never errors
    // (the same argument as `wire`'s own message encoding).
    serde_json::to_vec(&out).unwrap_or_default()
}

impl crate::uplink::Catalog for TagMap {
    fn site(&self) -> &str {
        &self.agent.site
    }

    fn agent(&self) -> &str {
        &self.agent.id
    }

    fn config_hash(&self) -> &str {
        &self.hash
    }

    fn tag_count(&self) -> usize {
        self.tags.len()
    }

    fn birth_json(&self, started_ms: i64, identity: &wire::messages::BufferIdentity) -> Vec<u8> {
        birth_of(self, started_ms, identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed birth is exactly `birth(map)` with the buffer identity (the shipped example
    /// has every kind of device, tag and event definition).
    #[test]
    fn streamed_birth_equals_the_wire_birth() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/agent.example.toml");
        let (map, _) = crate::config::load(std::path::Path::new(path)).expect("example loads");
        let identity = wire::messages::BufferIdentity {
            epoch: 42,
            created_ms: 1_700_000_000_000,
            origin: "new".into(),
            note: None,
        };
        let mut expected = birth(&map);
        expected.buffer = Some(identity.clone());
        let streamed =
            wire::Birth::decode(&birth_of(&map, expected.started_ms, &identity)).expect("decodes");
        assert!(!expected.tags.is_empty() && !expected.events.is_empty());
        assert_eq!(streamed, expected);
    }
}
