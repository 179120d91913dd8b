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
    let map = super::load_map(path)?;
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
