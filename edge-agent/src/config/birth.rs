//! The birth message of a tag map (the catalog the cloud resolves tag ids with) and the
//! uplink's view of a tag map ([`crate::uplink::Catalog`]).

use flowsquare_wire as wire;

use super::{TagMap, TriggerMode};
use crate::model::now_ms;

/// The birth message of a tag map.
pub fn birth(map: &TagMap) -> wire::Birth {
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
        tags: map
            .tags
            .iter()
            .map(|t| wire::TagInfo {
                id: t.id,
                name: t.name.clone(),
                unit: t.unit.clone(),
                kind: t.kind.as_str().into(),
                device: map.devices[t.device].name.clone(),
                description: t.description.clone(),
                data_type: t.source.data_type().into(),
                poll_interval_ms: map.devices[t.device].poll_interval.as_millis() as u64,
            })
            .collect(),
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

    fn birth(&self) -> wire::Birth {
        birth(self)
    }
}
