//! The edge agent's house is one-way: every arrow between the top-level folders of
//! `edge-agent/src` points down.
//!
//! The allowed order, bottom to top (a folder may import only folders listed before it):
//!
//! ```text
//! model     Reading, Value, Quality, time policy; the tag vocabulary (kind, deadband, priority);
//!           gap rows (enum reason); event cursor, digest, trigger mode, handshake value, the
//!           EventLedger trait the buffer implements
//! settings  diagnostics with file:line:column, spanned TOML parsing, durations
//! drivers   acquisition, each protocol with its own config; the registry (the one match over
//!           the protocols) and the resolved Device/Tag/EventDef it builds; the Plant/DeviceView
//!           the runtimes are built from (never the TagMap); serial.rs for every serial driver
//! buffer    the store-and-forward SQLite buffer (gets `TagClasses`, not the tag map)
//! metrics   Prometheus/OpenMetrics exposition of buffer and driver figures
//! uplink    MQTT to the cloud (gets a `Catalog`, implemented by config for `TagMap`)
//! config    the tag-map assembler: common keys, parsing through the drivers' registry,
//!           validation, `TagMap` (and its `Plant` for the drivers), the birth catalog
//! sink      printing readings (JSON lines, tables)
//! runtime   the service: pipeline stage, readiness/watchdog, live reload
//! cli       the subcommands (wiring only)
//! ```
//!
//! The test scans every `.rs` file under `src/`, collects the folder-to-folder imports
//! (`crate::x::…`, `use crate::{x, y::…}`, `super::super::…` reaching another folder) and fails
//! naming the file and line of every edge that points up, and every cycle.
//!
//! No edge points up any more: [`REMAINING`] is empty. Should one have to be tolerated for a
//! while, it is listed there and here, and the test fails once it is gone, so the list stays
//! true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The allowed order, bottom to top.
const ORDER: &[&str] = &[
    "model", "settings", "drivers", "buffer", "metrics", "uplink", "config", "sink", "runtime",
    "cli",
];

/// Upward edges that remain (see the module doc); the test fails if one of them disappears so
/// that this list stays true.
const REMAINING: &[(&str, &str)] = &[];

/// Files at the top of `src/` that are not folders of the house.
const ROOTS: &[&str] = &["lib", "main"];

/// One import: from folder, to folder, where.
#[derive(Debug, Clone)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a file: `drivers/modbus/mod.rs` → [drivers, modbus].
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code of a line without its `//` comment (string literals with `//` are rare enough in
/// import positions to ignore).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level folders a line of code names.
fn targets(code: &str, module: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    // `crate::x` and `crate::{x, y::z}`.
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let boundary = i == 0 || {
            let c = rest.as_bytes()[i - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let after = &rest[i + "crate::".len()..];
        if boundary {
            if let Some(group) = after.strip_prefix('{') {
                // Top-level names of the group (depth 0 only).
                let mut depth = 0;
                let mut start = true;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            start = true;
                            continue;
                        }
                        _ => {}
                    }
                    if start && depth == 0 && (c.is_ascii_alphabetic() || c == '_') {
                        out.push(ident_at(&group[j..]));
                        start = false;
                    } else if !c.is_whitespace() {
                        start = false;
                    }
                }
            } else {
                out.push(ident_at(after));
            }
        }
        rest = after;
    }
    // `super::super::x` (relative paths leaving the folder).
    let mut rest = code;
    while let Some(i) = rest.find("super::") {
        let boundary = i == 0 || {
            let c = rest.as_bytes()[i - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let mut after = &rest[i..];
        let mut ups = 0;
        while let Some(a) = after.strip_prefix("super::") {
            ups += 1;
            after = a;
        }
        if boundary && ups >= module.len() {
            // Reaches the crate root: the next name is a top-level folder (fewer `super`s stay
            // inside the file's own folder; inside an inline `mod tests` one more `super` is
            // needed, so a name that is not a folder is ignored by the caller).
            out.push(ident_at(after));
        }
        rest = &rest[i + "super::".len() * ups.max(1)..];
    }
    out
}

/// The top-level modules declared in `lib.rs` (`pub mod x;`).
fn folders(src: &Path) -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_owned())
        })
        .collect()
}

fn edges() -> Vec<Edge> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let folders = folders(&src);
    assert!(
        folders.len() >= 8,
        "lib.rs declares the folders: {folders:?}"
    );
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let module = module_path(rel);
        let Some(from) = module.first().cloned() else {
            continue;
        };
        if ROOTS.contains(&from.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            for to in targets(code_of(line), &module) {
                if to != from && folders.contains(&to) {
                    out.push(Edge {
                        from: from.clone(),
                        to,
                        at: format!("src/{}:{}", rel.display(), n + 1),
                    });
                }
            }
        }
    }
    out
}

fn rank(folder: &str) -> usize {
    ORDER
        .iter()
        .position(|f| *f == folder)
        .unwrap_or_else(|| {
            panic!("folder `{folder}` is not in the layering order: add it to ORDER (and to the module doc and ARCHITECTURE.md)")
        })
}

#[test]
fn the_scanner_reads_every_import_form() {
    let m = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        targets("use crate::config::{Tag, TagMap};", &m("drivers/mod")),
        ["config"]
    );
    assert_eq!(
        targets("use crate::{buffer::Buffer, model};", &m("uplink/run")),
        ["buffer", "model"]
    );
    assert_eq!(
        targets("    let x = crate::uplink::birth(&map);", &m("cli/run")),
        ["uplink"]
    );
    assert_eq!(
        targets(
            "use super::super::super::config::Tag;",
            &m("drivers/modbus/run")
        ),
        ["config"]
    );
    assert!(targets("use super::super::nmea::frame;", &m("drivers/gps/fix")).is_empty());
    assert!(targets("use super::state::Cursor;", &m("drivers/events/run")).is_empty());
    assert!(targets("let a = my_crate::config::x;", &m("cli/run")).is_empty());
}

#[test]
fn every_arrow_between_folders_points_down() {
    let all = edges();
    assert!(!all.is_empty(), "the scanner found no imports at all");
    let remaining: BTreeSet<(String, String)> = REMAINING
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut up: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for e in &all {
        if rank(&e.to) > rank(&e.from) {
            up.entry((e.from.clone(), e.to.clone()))
                .or_default()
                .push(e.at.clone());
        }
    }
    let new: Vec<String> = up
        .iter()
        .filter(|(k, _)| !remaining.contains(*k))
        .map(|((a, b), at)| format!("{a} -> {b} (points up) at {}", at.join(", ")))
        .collect();
    assert!(
        new.is_empty(),
        "imports pointing up the house (allowed order, bottom to top: {}):\n{}",
        ORDER.join(" < "),
        new.join("\n")
    );
    let gone: Vec<String> = remaining
        .iter()
        .filter(|k| !up.contains_key(*k))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    assert!(
        gone.is_empty(),
        "these upward edges are gone: remove them from REMAINING and the module doc: {}",
        gone.join(", ")
    );
}

#[test]
fn no_two_folders_import_each_other_and_no_cycle_outside_the_remaining_edges() {
    let all = edges();
    let remaining: BTreeSet<(String, String)> = REMAINING
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    // The graph without the remaining (documented) upward edges must have no cycle.
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for e in &all {
        if remaining.contains(&(e.from.clone(), e.to.clone())) {
            continue;
        }
        graph
            .entry(e.from.clone())
            .or_default()
            .entry(e.to.clone())
            .or_insert(e.at.clone());
    }
    // Depth-first search for a back edge; report the cycle with one import per arrow.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in graph.get(n).map(|m| m.keys()).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == m).expect("on stack");
                    let mut cycle = stack[i..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &graph, &mut state, &mut Vec::new()) {
                let arrows: Vec<String> = c
                    .windows(2)
                    .map(|w| format!("{} -> {} at {}", w[0], w[1], graph[&w[0]][&w[1]]))
                    .collect();
                panic!(
                    "folders import each other in a cycle:\n{}",
                    arrows.join("\n")
                );
            }
        }
    }
}
