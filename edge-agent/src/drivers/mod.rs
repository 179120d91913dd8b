//! Acquisition: the drivers that poll field devices and hand readings to the next stage.
//!
//! `Acquisition::start` spawns the driver tasks (one per Modbus TCP device, one per RTU bus, one
//! per GPS receiver, one per TLS-350 console, one per OPC UA device, one per event definition of
//! a TCP or OPC UA device — RTU event definitions run in their bus task);
//! every cycle a driver sends an [`Output`] on the channel it was given: the cycle's readings
//! (one per tag, good or bad), or business events it captured with any gaps it detected.
//! `Acquisition::stop` signals the tasks and waits for them (drivers stop first in the ordered
//! shutdown). `read_once` polls every device once and `read_events_once` reads every event
//! definition's trigger and record once, for `edge-agent read --once`.

pub mod events;
pub mod filter;
pub mod gps;
pub mod health;
pub mod lines;
pub mod modbus;
pub mod opcua;
pub mod stats;
pub mod tls350;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::buffer::GapRow;
use crate::config::{DeviceDriver, TagMap};
use crate::model::{Reading, TagId};
use modbus::config::Link;
use stats::DeviceStats;

/// What a driver hands to the next stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// One cycle's readings: one per tag read, good or bad.
    Readings(Vec<Reading>),
    /// Business records (gantry batch records, deliveries): never dropped by the buffer; with
    /// the gaps found while capturing them (e.g. skipped sequence numbers).
    Events {
        /// The records, in capture order.
        events: Vec<flowsquare_wire::Event>,
        /// Losses detected (reported to the cloud like data).
        gaps: Vec<GapRow>,
    },
}

/// The sending side of the acquisition channel.
pub type OutputTx = mpsc::Sender<Output>;

/// Running acquisition tasks.
pub struct Acquisition {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Counters per device, indexed like `TagMap::devices`.
    pub stats: Vec<Arc<DeviceStats>>,
}

impl Acquisition {
    /// Spawn the driver tasks for `map`, sending each cycle's readings to `out`. Event
    /// definitions run too, with [`events::EventOptions::default`]: no ledger (a record counts
    /// as committed once handed over), handshakes written.
    pub fn start(map: &TagMap, out: OutputTx) -> Self {
        Self::start_with(map, out, events::EventOptions::default())
    }

    /// Like [`Acquisition::start`], with explicit event options: with the buffer's ledger
    /// (`run`), definitions resume after their persisted cursor and write a handshake only once
    /// the buffer committed the record; `read` writes no handshake at all.
    pub fn start_with(map: &TagMap, out: OutputTx, event_opts: events::EventOptions) -> Self {
        let (shutdown, rx) = watch::channel(false);
        let stats: Vec<Arc<DeviceStats>> = map.devices.iter().map(|_| Arc::default()).collect();
        let mut tasks = Vec::new();
        let mut buses: BTreeMap<String, (modbus::config::SerialSettings, Vec<_>)> = BTreeMap::new();
        for (i, d) in map.devices.iter().enumerate() {
            match &d.driver {
                DeviceDriver::Modbus(m) => {
                    let Some(rt) = modbus::DeviceRuntime::new(map, i, None) else {
                        continue;
                    };
                    match &m.link {
                        Link::Tcp { .. } => {
                            tasks.push(tokio::spawn(modbus::run_tcp(
                                rt,
                                out.clone(),
                                rx.clone(),
                                stats[i].clone(),
                            )));
                        }
                        Link::Rtu(s) => {
                            buses
                                .entry(s.path.clone())
                                .or_insert_with(|| (s.clone(), Vec::new()))
                                .1
                                .push((rt, stats[i].clone()));
                        }
                    }
                }
                DeviceDriver::Gps(_) => {
                    if let Some(rt) = gps::GpsRuntime::new(map, i, None) {
                        tasks.push(tokio::spawn(gps::run(
                            rt,
                            out.clone(),
                            rx.clone(),
                            stats[i].clone(),
                        )));
                    }
                }
                DeviceDriver::Tls350(_) => {
                    if let Some(rt) = tls350::TlsRuntime::new(map, i, None) {
                        tasks.push(tokio::spawn(tls350::run(
                            rt,
                            out.clone(),
                            rx.clone(),
                            stats[i].clone(),
                        )));
                    }
                }
                DeviceDriver::OpcUa(_) => {
                    let Some(rt) = opcua::DeviceRuntime::new(map, i, None) else {
                        continue;
                    };
                    tasks.push(tokio::spawn(opcua::run(
                        rt,
                        out.clone(),
                        rx.clone(),
                        stats[i].clone(),
                    )));
                }
            }
        }
        let mut bus_events: BTreeMap<String, Vec<modbus::poller::BusEvent>> = BTreeMap::new();
        for (i, def) in map.events() {
            if let Some(o) = map.devices[i].driver.opcua() {
                let pki = opcua::pki::dir_for(map, i);
                let Some(ev) = opcua::events::OpcUaEvent::new(def, o, pki, stats[i].clone()) else {
                    continue;
                };
                let runner = events::Runner::new(
                    def.clone(),
                    out.clone(),
                    event_opts.clone(),
                    stats[i].clone(),
                    rx.clone(),
                );
                tasks.push(tokio::spawn(events::run(runner, ev, rx.clone())));
                continue;
            }
            let Some(m) = map.devices[i].driver.modbus() else {
                continue;
            };
            let Some(ev) = modbus::events::ModbusEvent::new(def, m, stats[i].clone()) else {
                continue;
            };
            let runner = events::Runner::new(
                def.clone(),
                out.clone(),
                event_opts.clone(),
                stats[i].clone(),
                rx.clone(),
            );
            match &m.link {
                Link::Tcp { .. } => {
                    tasks.push(tokio::spawn(events::run(runner, ev.own_link(), rx.clone())));
                }
                Link::Rtu(s) => {
                    bus_events
                        .entry(s.path.clone())
                        .or_default()
                        .push(modbus::poller::BusEvent {
                            device: i,
                            ev,
                            runner,
                        });
                }
            }
        }
        for (path, (serial, units)) in buses {
            let evs = bus_events.remove(&path).unwrap_or_default();
            tasks.push(tokio::spawn(modbus::run_rtu_bus(
                serial,
                units,
                evs,
                out.clone(),
                rx.clone(),
            )));
        }
        Acquisition {
            shutdown,
            tasks,
            stats,
        }
    }

    /// Stop every driver task and wait for it to finish its current request.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "driver task ended abnormally");
            }
        }
    }
}

/// Read the trigger and the record on display of every event definition once (for
/// `read --once`): `(definition name, trigger value and record, or why not)`, in tag-map order.
pub async fn read_events_once(
    map: &TagMap,
) -> Vec<(
    String,
    Result<(u64, flowsquare_wire::Event), events::IoError>,
)> {
    let mut out = Vec::new();
    for (i, def) in map.events() {
        if let Some(o) = map.devices[i].driver.opcua() {
            let pki = opcua::pki::dir_for(map, i);
            let stats = Arc::new(DeviceStats::default());
            if let Some(mut io) = opcua::events::OpcUaEvent::new(def, o, pki, stats) {
                out.push((def.name.clone(), events::run::read_once(def, &mut io).await));
            }
            continue;
        }
        let Some(m) = map.devices[i].driver.modbus() else {
            continue;
        };
        let Some(ev) = modbus::events::ModbusEvent::new(def, m, Arc::new(DeviceStats::default()))
        else {
            continue;
        };
        let mut io = ev.own_link();
        out.push((def.name.clone(), events::run::read_once(def, &mut io).await));
    }
    out
}

/// Poll every device (or only the tags in `only`) once; devices in parallel, units of one RTU bus
/// one after another. Readings come back in tag-map order.
pub async fn read_once(map: &TagMap, only: Option<&[TagId]>) -> Vec<Reading> {
    let mut handles = Vec::new();
    let mut buses: BTreeMap<String, Vec<modbus::DeviceRuntime>> = BTreeMap::new();
    for (i, d) in map.devices.iter().enumerate() {
        let m = match &d.driver {
            DeviceDriver::Modbus(m) => m,
            DeviceDriver::Gps(_) => {
                if let Some(rt) = gps::GpsRuntime::new(map, i, only).filter(|r| !r.tags.is_empty())
                {
                    handles.push(tokio::spawn(gps::read_once(rt)));
                }
                continue;
            }
            DeviceDriver::Tls350(_) => {
                if let Some(rt) =
                    tls350::TlsRuntime::new(map, i, only).filter(|r| !r.tags.is_empty())
                {
                    handles.push(tokio::spawn(tls350::read_once(rt)));
                }
                continue;
            }
            DeviceDriver::OpcUa(_) => {
                if let Some(rt) = opcua::DeviceRuntime::new(map, i, only) {
                    if !rt.tags.is_empty() {
                        handles.push(tokio::spawn(async move { opcua::read_once(&rt).await }));
                    }
                }
                continue;
            }
        };
        let Some(rt) = modbus::DeviceRuntime::new(map, i, only) else {
            continue;
        };
        if rt.requests.is_empty() {
            continue;
        }
        match &m.link {
            Link::Tcp { host, port } => {
                let (host, port) = (host.clone(), *port);
                handles.push(tokio::spawn(async move {
                    let stats = DeviceStats::default();
                    let mut link = None;
                    let (unit, timeout) = (rt.dev.unit, rt.dev.timeout);
                    let o = modbus::poll_cycle(
                        &rt,
                        &mut link,
                        || modbus::transport::connect_tcp(&host, port, unit, timeout),
                        &stats,
                    )
                    .await;
                    o.readings
                }));
            }
            Link::Rtu(s) => buses.entry(s.path.clone()).or_default().push(rt),
        }
    }
    for (_, units) in buses {
        handles.push(tokio::spawn(async move {
            let stats = DeviceStats::default();
            let mut link = None;
            let mut all = Vec::new();
            for rt in &units {
                let Link::Rtu(serial) = &rt.dev.link else {
                    continue;
                };
                let o = modbus::poll_cycle(
                    rt,
                    &mut link,
                    || std::future::ready(modbus::transport::open_rtu(serial, rt.dev.unit)),
                    &stats,
                )
                .await;
                all.extend(o.readings);
            }
            all
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        match h.await {
            Ok(r) => out.extend(r),
            Err(e) => tracing::error!(error = %e, "read task ended abnormally"),
        }
    }
    out.sort_by_key(|r| r.tag);
    out
}
