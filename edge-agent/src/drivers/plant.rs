//! What the drivers run from, without the tag map: the devices and tags of a loaded map
//! ([`Plant`]), one device with its own tags ([`DeviceView`], what each driver runtime is built
//! from) and what a driver needs of the agent besides its device ([`AgentContext`]).
//!
//! `config/` builds a `Plant` from its `TagMap` (`From<&TagMap>`), so the entry points of
//! `drivers/mod.rs` (`Acquisition`, `read_once`, `translate_ids`) take `impl Into<Plant>` and
//! are called with the map; below them every runtime gets only its own device.

use std::path::PathBuf;

use super::events::EventDef;
use super::{Device, Tag};
use crate::model::TagId;

/// What a driver needs of the agent besides its own device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentContext {
    /// `[agent] site` (the OPC UA certificate's identity).
    pub site: String,
    /// `[agent] id`.
    pub id: String,
    /// The buffer database (`[buffer] path`, or its default): the drivers' state files live next
    /// to it (TLS-350 delivery trackers, the OPC UA PKI).
    pub buffer_path: PathBuf,
}

/// The devices and tags of a loaded tag map, with the agent they run in.
#[derive(Debug, Clone)]
pub struct Plant<'a> {
    /// Devices in file order (`Tag::device` indexes this).
    pub devices: &'a [Device],
    /// All tags; `TagId` indexes this.
    pub tags: &'a [Tag],
    /// The agent.
    pub agent: AgentContext,
}

impl<'a> Plant<'a> {
    /// Device `index` (an index of `devices`) with its own tags.
    pub fn device(&self, index: usize) -> DeviceView<'_> {
        let device = &self.devices[index];
        DeviceView {
            index,
            device,
            tags: device
                .tags
                .iter()
                .map(|&id| &self.tags[id as usize])
                .collect(),
            agent: &self.agent,
        }
    }

    /// Every event definition with the index of its device, in file order.
    pub fn events(&self) -> impl Iterator<Item = (usize, &'a EventDef)> {
        self.devices
            .iter()
            .enumerate()
            .flat_map(|(i, d)| d.events.iter().map(move |e| (i, e)))
    }
}

/// One device with its own tags: what a driver runtime is built from.
#[derive(Debug, Clone)]
pub struct DeviceView<'a> {
    /// Index of the device in the tag map (its counters; `Tag::device` of its tags).
    pub index: usize,
    /// The device.
    pub device: &'a Device,
    /// Its tags, in file order.
    pub tags: Vec<&'a Tag>,
    /// The agent it runs in.
    pub agent: &'a AgentContext,
}

impl<'a> DeviceView<'a> {
    /// Its tags, only those in `only` when given (`read --tag`), in file order.
    pub fn tags_in<'s>(&'s self, only: Option<&'s [TagId]>) -> impl Iterator<Item = &'a Tag> + 's {
        self.tags
            .iter()
            .copied()
            .filter(move |t| only.is_none_or(|o| o.contains(&t.id)))
    }
}
