//! Acquisition: the drivers that poll field devices and hand readings to the next stage.
//!
//! `Acquisition::start` spawns one task per Modbus TCP device and one per RTU bus; every cycle
//! sends one batch (`Vec<Reading>`, one reading per tag, good or bad) on the channel it was given.
//! `Acquisition::stop` signals the tasks and waits for them (drivers stop first in the ordered
//! shutdown). `read_once` polls every device once, for `edge-agent read --once`.

pub mod filter;
pub mod health;
pub mod modbus;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{DeviceDriver, TagMap};
use crate::model::{Reading, TagId};
use modbus::config::Link;
use stats::DeviceStats;

/// Running acquisition tasks.
pub struct Acquisition {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Counters per device, indexed like `TagMap::devices`.
    pub stats: Vec<Arc<DeviceStats>>,
}

impl Acquisition {
    /// Spawn the driver tasks for `map`, sending each cycle's readings to `out`.
    pub fn start(map: &TagMap, out: mpsc::Sender<Vec<Reading>>) -> Self {
        let (shutdown, rx) = watch::channel(false);
        let stats: Vec<Arc<DeviceStats>> = map.devices.iter().map(|_| Arc::default()).collect();
        let mut tasks = Vec::new();
        let mut buses: BTreeMap<String, (modbus::config::SerialSettings, Vec<_>)> = BTreeMap::new();
        for (i, d) in map.devices.iter().enumerate() {
            let DeviceDriver::Modbus(m) = &d.driver;
            let rt = modbus::DeviceRuntime::new(map, i, None);
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
        for (_, (serial, units)) in buses {
            tasks.push(tokio::spawn(modbus::run_rtu_bus(
                serial,
                units,
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

/// Poll every device (or only the tags in `only`) once; devices in parallel, units of one RTU bus
/// one after another. Readings come back in tag-map order.
pub async fn read_once(map: &TagMap, only: Option<&[TagId]>) -> Vec<Reading> {
    let mut handles = Vec::new();
    let mut buses: BTreeMap<String, Vec<modbus::DeviceRuntime>> = BTreeMap::new();
    for (i, d) in map.devices.iter().enumerate() {
        let rt = modbus::DeviceRuntime::new(map, i, only);
        if rt.requests.is_empty() {
            continue;
        }
        let DeviceDriver::Modbus(m) = &d.driver;
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
