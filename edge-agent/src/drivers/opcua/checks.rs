//! Checks of the OPC UA devices and tags across the tag map (run by the loader through
//! `ProtocolConfig::check`).

use std::collections::HashMap;

use crate::drivers::{Device, Tag};
use crate::settings::parse::Spans;
use crate::settings::Diagnostics;

/// Two tags of one OPC UA device on the same node: usually a copy-paste slip.
pub fn same_node(d: &Device, tags: &[Tag], tag_spans: &[Spans], diags: &mut Diagnostics) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for &id in &d.tags {
        let Some(o) = tags[id as usize].source.opcua() else {
            continue;
        };
        let key = o.node.text.trim();
        match first.get(key) {
            Some(&f) => diags.warning(
                tag_spans[id as usize].of("node"),
                format!("device '{}' tag '{}'", d.name, tags[id as usize].name),
                format!(
                    "same node as tag '{}' (line {})",
                    tags[f].name,
                    diags.line_of(tag_spans[f].table.start)
                ),
            ),
            None => {
                first.insert(key, id as usize);
            }
        }
    }
}
