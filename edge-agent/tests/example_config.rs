//! `config/agent.example.toml` promises to show every key. These tests hold it to that: the
//! accepted keys come from the same field lists the loader uses to reject unknown keys
//! (`settings::parse::fields_of` over the config structs, each protocol's `ProtocolConfig`), not
//! from a hand-written list, so a key added to a struct without documenting it fails here. The
//! shipped example must also pass `check --deny-warnings`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use edge_agent::config::events::{RawEvent, RawField, RawHandshake, RawTrigger};
use edge_agent::config::schema::{AgentConfig, DEVICE_COMMON_KEYS, TAG_COMMON_KEYS};
use edge_agent::drivers::registry::{for_protocol, PROTOCOLS};
use edge_agent::settings::parse::fields_of;
use flowsquare_tests::workspace_root;

const BIN: &str = env!("CARGO_BIN_EXE_edge-agent");

fn example_path() -> std::path::PathBuf {
    workspace_root().join("config/agent.example.toml")
}

/// Where a key sits: "agent", "buffer", "uplink", "device:<protocol>", "tag:<protocol>",
/// "event", "event.trigger", "event.field", "event.handshake".
type Documented = BTreeMap<String, BTreeSet<String>>;

fn add_keys(doc: &mut Documented, place: &str, t: &toml::Table) {
    doc.entry(place.to_owned())
        .or_default()
        .extend(t.keys().cloned());
}

/// Keys set in the example (inline tables included).
fn set_keys(text: &str) -> Documented {
    let root: toml::Table = text.parse().expect("the example parses as TOML");
    let mut doc = Documented::new();
    for s in ["agent", "buffer", "uplink"] {
        if let Some(toml::Value::Table(t)) = root.get(s) {
            add_keys(&mut doc, s, t);
        }
    }
    let devices = root.get("device").and_then(|d| d.as_array()).cloned();
    for d in devices.unwrap_or_default() {
        let Some(d) = d.as_table() else { continue };
        let proto = d.get("protocol").and_then(|p| p.as_str()).unwrap_or("");
        add_keys(&mut doc, &format!("device:{proto}"), d);
        for t in d
            .get("tag")
            .and_then(|t| t.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(t) = t.as_table() {
                add_keys(&mut doc, &format!("tag:{proto}"), t);
            }
        }
        for e in d
            .get("event")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            let Some(e) = e.as_table() else { continue };
            add_keys(&mut doc, "event", e);
            for sub in ["trigger", "handshake"] {
                if let Some(t) = e.get(sub).and_then(|t| t.as_table()) {
                    add_keys(&mut doc, &format!("event.{sub}"), t);
                }
            }
            for sub in ["field", "fields"] {
                for f in e.get(sub).and_then(|f| f.as_array()).into_iter().flatten() {
                    if let Some(f) = f.as_table() {
                        add_keys(&mut doc, "event.field", f);
                    }
                }
            }
        }
    }
    doc
}

/// Keys shown commented out (`# key = value`: optional keys without a default), by the table
/// header they follow (the protocol of the last `[[device]]` for device and tag tables).
fn commented_keys(text: &str) -> Documented {
    let mut doc = Documented::new();
    let mut place = String::new();
    let mut proto = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            place = match l {
                "[agent]" | "[buffer]" | "[uplink]" => l.trim_matches(['[', ']']).to_owned(),
                "[[device]]" => "device".into(),
                "[[device.tag]]" => "tag".into(),
                "[[device.event]]" => "event".into(),
                _ => String::new(),
            };
            if place == "device" {
                proto.clear();
            }
            continue;
        }
        if let Some(p) = l.strip_prefix("protocol = ") {
            proto = p.trim_matches('"').to_owned();
        }
        let Some(rest) = l.strip_prefix('#') else {
            continue;
        };
        let Some((key, _)) = rest.trim().split_once(" = ") else {
            continue;
        };
        if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !place.is_empty() {
            let where_ = match place.as_str() {
                "device" | "tag" => format!("{place}:{proto}"),
                p => p.to_owned(),
            };
            doc.entry(where_).or_default().insert(key.to_owned());
        }
    }
    doc
}

/// Every key the loader accepts, by place, from the structs' own field lists.
fn accepted_keys() -> Documented {
    let mut acc = Documented::new();
    let mut put = |place: String, lists: Vec<&'static [&'static str]>| {
        let set = acc.entry(place).or_default();
        for l in lists {
            set.extend(l.iter().map(|k| (*k).to_owned()));
        }
    };
    put("agent".into(), vec![fields_of::<AgentConfig>()]);
    put(
        "buffer".into(),
        vec![fields_of::<edge_agent::buffer::BufferConfig>()],
    );
    put(
        "uplink".into(),
        vec![fields_of::<edge_agent::uplink::UplinkConfig>()],
    );
    // Tag keys depend on the resolved device: take them from the example's own devices.
    let (map, _) = edge_agent::config::load(&example_path()).expect("the example loads");
    for p in PROTOCOLS {
        let proto = for_protocol(p).expect("every listed protocol has a loader");
        let mut dev = vec![DEVICE_COMMON_KEYS];
        dev.extend(proto.device_keys(p));
        put(format!("device:{p}"), dev);
        for d in map.devices.iter().filter(|d| d.driver.protocol() == *p) {
            let mut tag = vec![TAG_COMMON_KEYS];
            tag.extend(proto.tag_keys(&d.driver));
            put(format!("tag:{p}"), tag);
        }
    }
    put("event".into(), vec![fields_of::<RawEvent>()]);
    put("event.trigger".into(), vec![fields_of::<RawTrigger>()]);
    put("event.field".into(), vec![fields_of::<RawField>()]);
    put("event.handshake".into(), vec![fields_of::<RawHandshake>()]);
    acc
}

#[test]
fn the_example_shows_every_key_the_loader_accepts() {
    let text = std::fs::read_to_string(example_path()).expect("read the example");
    let mut shown = set_keys(&text);
    for (place, keys) in commented_keys(&text) {
        shown.entry(place).or_default().extend(keys);
    }
    let accepted = accepted_keys();
    // A device or tag key is documented once for every protocol that accepts it: the common
    // keys (and Modbus TCP/RTU's shared ones) are explained at their first use, not repeated.
    let shown_in = |place: &str, k: &str| -> bool {
        match place.split_once(':') {
            Some((kind, _)) => accepted.iter().any(|(q, acc)| {
                q.split_once(':').is_some_and(|(qk, _)| qk == kind)
                    && acc.contains(k)
                    && shown.get(q).is_some_and(|s| s.contains(k))
            }),
            None => shown.get(place).is_some_and(|s| s.contains(k)),
        }
    };
    let mut missing = Vec::new();
    for (place, keys) in &accepted {
        for k in keys {
            if !shown_in(place, k) {
                missing.push(format!("{place}: {k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys the loader accepts that config/agent.example.toml does not show:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_protocol_has_a_device_in_the_example() {
    let (map, _) = edge_agent::config::load(&example_path()).expect("the example loads");
    for p in PROTOCOLS {
        assert!(
            map.devices.iter().any(|d| d.driver.protocol() == *p),
            "no {p} device in config/agent.example.toml"
        );
    }
}

#[test]
fn the_example_passes_check_with_deny_warnings() {
    let out = Command::new(BIN)
        .args(["check", "--deny-warnings", "--config"])
        .arg(example_path())
        .output()
        .expect("run edge-agent check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The demo's tag maps load without a single warning: the hand-written one (config/demo) and
/// those `flowsquare-sim terminal --write-maps` generates for the demo's terminal (at the
/// simulator's default poll interval and a fast one), so `scripts/demo` starts quietly.
#[test]
fn the_demo_tag_maps_load_without_warnings() {
    let root = workspace_root();
    let mut maps = Vec::new();
    let demo = root.join("config/demo/agent.toml");
    maps.push((
        demo.display().to_string(),
        std::fs::read_to_string(&demo).expect("read config/demo/agent.toml"),
    ));
    let terminal = site_sim::terminal::TerminalConfig::load(&root.join("config/sim/terminal.toml"))
        .expect("load config/sim/terminal.toml");
    let run_dir = tempfile::tempdir().expect("tmp");
    let addrs = site_sim::terminal::maps::Addrs {
        modbus: "127.0.0.1:5020".parse().expect("addr"),
        opcua: "opc.tcp://127.0.0.1:4840/".into(),
        tls350: "127.0.0.1:10001".parse().expect("addr"),
        mqtt: "127.0.0.1:1883".parse().expect("addr"),
        run_dir: run_dir.path().to_path_buf(),
        // The simulator's default fix rate (`flowsquare-sim terminal --nmea-interval`), as the
        // demo runs it: the truck maps declare it as their `fix_interval`.
        nmea_interval: std::time::Duration::from_millis(100),
    };
    for poll in ["200ms", "1s", "2s"] {
        for (name, text) in site_sim::terminal::maps::all(&terminal, &addrs, poll) {
            maps.push((format!("{name} (poll {poll})"), text));
        }
    }
    for (name, text) in maps {
        match edge_agent::config::parse_str(&name, &text) {
            Ok((_, diags)) => assert!(diags.is_empty(), "{name}: {diags:?}"),
            Err(e) => panic!("{name}: {e:?}"),
        }
    }
}
