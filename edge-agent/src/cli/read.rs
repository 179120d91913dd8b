//! `edge-agent read`.

use std::path::Path;
use std::process::ExitCode;

use tokio::sync::mpsc;

use super::CliError;
use crate::config::TagMap;
use crate::drivers::{self, Acquisition, Output};
use crate::model::{Reading, TagId};
use crate::sink;

fn print(map: &TagMap, readings: &mut [Reading], format: &str) {
    readings.sort_by_key(|r| r.tag);
    if format == "jsonl" {
        let mut s = String::new();
        for r in readings {
            s.push_str(&sink::json_line(map, r));
            s.push('\n');
        }
        print!("{s}");
    } else {
        print!("{}", sink::table(map, readings));
    }
}

pub async fn run(
    path: &Path,
    names: &[String],
    once: bool,
    format: &str,
) -> Result<ExitCode, CliError> {
    let mut map = super::load_map(path)?;
    // `read` persists nothing: OPC UA sessions get a temporary copy of their PKI (no key is
    // written into the configured directory, or into the working directory by default).
    let _pki = ephemeral_pki(&mut map).map_err(|e| CliError::Usage(e.to_string()))?;
    let only: Option<Vec<TagId>> = if names.is_empty() {
        None
    } else {
        let mut ids = Vec::new();
        for n in names {
            match map.tag_by_name(n) {
                Some(t) => ids.push(t.id),
                None => {
                    return Err(CliError::Usage(format!(
                        "no tag named {n:?} in {}",
                        path.display()
                    )))
                }
            }
        }
        Some(ids)
    };
    if once {
        let mut readings = drivers::read_once(&map, only.as_deref()).await;
        print(&map, &mut readings, format);
        let unreachable = no_device_answered(&map, &readings);
        if only.is_none() {
            // Event definitions: the trigger value and the record on display.
            for (name, res) in drivers::read_events_once(&map).await {
                match res {
                    Ok((trigger, e)) if format == "jsonl" => {
                        let _ = trigger;
                        println!("{}", sink::event_line(&e));
                    }
                    Ok((trigger, e)) => {
                        println!("event {name}: trigger = {trigger}; record on display:");
                        println!("  {}", sink::event_line(&e));
                    }
                    Err(e) if format == "jsonl" => println!(
                        "{}",
                        serde_json::json!({"event_source": name, "error": e.to_string()})
                    ),
                    Err(e) => println!("event {name}: cannot read: {e}"),
                }
            }
        }
        if let Some(first_error) = unreachable {
            eprintln!("{}", no_answer_hint(path, &first_error));
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (tx, mut rx) = mpsc::channel::<Output>(64);
    // `read` persists nothing, so it never acknowledges a record to a PLC.
    let acq = Acquisition::start_with(
        &map,
        tx,
        drivers::events::EventOptions {
            ledger: None,
            write_handshake: false,
        },
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Output::Readings(mut b)) => {
                    if let Some(o) = &only {
                        b.retain(|r| o.contains(&r.tag));
                    }
                    print(&map, &mut b, format);
                }
                Some(Output::Events { events, gaps }) => {
                    for e in &events {
                        println!("{}", sink::event_line(e));
                    }
                    for g in &gaps {
                        println!("{}", sink::gap_line(g));
                    }
                }
                None => break,
            },
            _ = &mut ctrl_c => break,
        }
    }
    acq.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// When no device answered at all (every reading of every polled device is a communication
/// failure): the first error, to report with [`no_answer_hint`].
fn no_device_answered(map: &TagMap, readings: &[Reading]) -> Option<String> {
    use crate::model::Quality;
    if readings.is_empty()
        || readings
            .iter()
            .any(|r| r.quality != Quality::BadCommunication)
    {
        return None;
    }
    let first = &readings[0];
    let device = map
        .tags
        .get(first.tag as usize)
        .and_then(|t| map.devices.get(t.device))
        .map(|d| d.name.as_str())
        .unwrap_or("?");
    Some(format!(
        "{device}: {}",
        first.error.as_deref().unwrap_or("no answer")
    ))
}

/// The message of a `read --once` in which no device answered: what failed and what to check,
/// with the command that starts the simulator the demo's tag map polls.
fn no_answer_hint(path: &Path, first_error: &str) -> String {
    format!(
        "edge-agent: no device answered ({first_error}). Is each device (or simulator) running and \
         reachable at the host/port in {}? To try the demo's tag map (config/demo/agent.toml), start \
         its simulator first, from the repository root:\n  \
         flowsquare-sim modbus --map config/sim/modbus-demo.toml --tcp 127.0.0.1:5020\n\
         (target/release/flowsquare-sim or target/debug/flowsquare-sim after a build; see README, \
         \"Try read and browse against the simulator\").",
        path.display()
    )
}

/// Point every OPC UA device of `map` at one temporary PKI seeded from the first device's
/// configured one (when it exists); kept alive by the caller, removed on drop.
fn ephemeral_pki(
    map: &mut TagMap,
) -> Result<Option<crate::drivers::opcua::pki::EphemeralPki>, crate::drivers::opcua::OpcUaError> {
    use crate::drivers::opcua::pki;
    let Some(first) = map.devices.iter().find(|d| d.driver.opcua().is_some()) else {
        return Ok(None);
    };
    let configured = pki::dir_for(first, &map.agent_context());
    let tmp = pki::EphemeralPki::new(configured.is_dir().then_some(configured.as_path()))?;
    for d in &mut map.devices {
        if let crate::config::DeviceDriver::OpcUa(o) = &mut d.driver {
            o.pki_dir = Some(tmp.path().to_path_buf());
        }
    }
    Ok(Some(tmp))
}
