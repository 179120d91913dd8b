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
//!
//! The drivers never see the tag map: the entry points take a [`Plant`] (`impl Into<Plant>`,
//! which `config` implements for `&TagMap`: the devices and tags with the agent's site, id and
//! buffer path) and each runtime is built from its own device's [`DeviceView`].
//!
//! Live reload works per *unit* (`unit_key`: a device, or all units of one RTU bus): units whose
//! devices and tags are unchanged keep running, the others are stopped and started again with
//! the new map. `spawn_unit` is the one place that starts a unit's tasks per protocol.

pub mod device;
pub mod events;
pub mod filter;
pub mod gps;
pub mod health;
pub mod lines;
pub mod modbus;
pub mod opcua;
pub mod plant;
pub mod registry;
pub mod serial;
pub mod stats;
pub mod tls350;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use device::{Device, DeviceDriver, Tag, TagSource};
pub use plant::{AgentContext, DeviceView, Plant};

use crate::model::{GapRow, Reading, TagId};
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

/// A driver output with the tag-map generation whose tag ids it carries (live reload: units
/// that keep running across a reload still use the ids of the map they were started with).
#[derive(Debug, Clone, PartialEq)]
pub struct Tagged {
    /// Generation of the tag map the output's tag ids refer to (0: the map loaded at start).
    pub generation: u64,
    /// What the driver produced.
    pub output: Output,
}

/// The key of a *unit*: the devices polled by one set of tasks, started, stopped and restarted
/// together — a device, or every device on one shared RTU bus.
pub fn unit_key(d: &Device) -> String {
    match &d.driver {
        DeviceDriver::Modbus(m) => match &m.link {
            Link::Rtu(s) => format!("bus {}", s.path),
            Link::Tcp { .. } => format!("device {}", d.name),
        },
        DeviceDriver::Gps(_) | DeviceDriver::Tls350(_) | DeviceDriver::OpcUa(_) => {
            format!("device {}", d.name)
        }
    }
}

/// The devices of every unit of `plant`, in tag-map order.
fn units_of(plant: &Plant<'_>) -> BTreeMap<String, Vec<usize>> {
    let mut units: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, d) in plant.devices.iter().enumerate() {
        units.entry(unit_key(d)).or_default().push(i);
    }
    units
}

/// What a unit polls, independent of tag ids and device indexes: equal fingerprints mean the
/// unit can keep running across a reload. A 128-bit hash of the devices' and tags' settings (their
/// `Debug` form, which shows every field, with ids and indexes zeroed) rather than a copy of them:
/// a copy doubled the memory the tag map takes.
fn fingerprint(plant: &Plant<'_>, devices: &[usize]) -> u128 {
    use std::fmt::Write as _;
    use std::hash::{DefaultHasher, Hasher};
    /// Feeds formatted text to two hashers with different seeds.
    struct Feed(DefaultHasher, DefaultHasher);
    impl std::fmt::Write for Feed {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.write(s.as_bytes());
            self.1.write(s.as_bytes());
            Ok(())
        }
    }
    let mut feed = Feed(DefaultHasher::new(), DefaultHasher::new());
    feed.1.write_u64(0x9e37_79b9_7f4a_7c15);
    for &i in devices {
        let d = &plant.devices[i];
        // Writing to a hasher cannot fail.
        let _ = write!(
            feed,
            "{:?}",
            Device {
                tags: Vec::new(),
                events: Vec::new(),
                ..d.clone()
            }
        );
        let _ = write!(feed, "{:?}", d.events);
        for &t in &d.tags {
            let tag = &plant.tags[t as usize];
            let _ = write!(
                feed,
                "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?};",
                tag.name,
                tag.unit,
                tag.description,
                tag.kind,
                tag.deadband,
                tag.max_silence,
                tag.rollover,
                tag.priority,
                tag.source
            );
        }
        feed.0.write_u8(0xff);
        feed.1.write_u8(0xff);
    }
    (u128::from(feed.0.finish()) << 64) | u128::from(feed.1.finish())
}

/// Spawn the tasks of one unit (`devices`: one device, or the devices of one RTU bus), sending
/// their outputs to `out` and stopping when `shutdown` turns true. The unit's event definitions
/// run with `event_opts` (on TCP one task per definition; on a bus inside the bus task).
fn spawn_unit(
    plant: &Plant<'_>,
    devices: &[usize],
    stats: &[Arc<DeviceStats>],
    out: &OutputTx,
    shutdown: &watch::Receiver<bool>,
    event_opts: &events::EventOptions,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut bus: Option<(modbus::config::SerialSettings, Vec<_>)> = None;
    let mut bus_events: Vec<modbus::poller::BusEvent> = Vec::new();
    // The capture loop of one event definition of device `i` (any protocol).
    let new_runner = |def: &events::EventDef, i: usize| {
        events::Runner::new(
            def.clone(),
            out.clone(),
            event_opts.clone(),
            stats[i].clone(),
            shutdown.clone(),
        )
    };
    for &i in devices {
        let unit = plant.device(i);
        match &unit.device.driver {
            DeviceDriver::Modbus(m) => {
                if let Some(rt) = modbus::DeviceRuntime::new(&unit, None) {
                    match &m.link {
                        Link::Tcp { .. } => {
                            tasks.push(tokio::spawn(modbus::run_tcp(
                                rt,
                                out.clone(),
                                shutdown.clone(),
                                stats[i].clone(),
                            )));
                        }
                        Link::Rtu(s) => {
                            bus.get_or_insert_with(|| (s.clone(), Vec::new()))
                                .1
                                .push((rt, stats[i].clone()));
                        }
                    }
                }
                for def in &unit.device.events {
                    let Some(ev) = modbus::events::ModbusEvent::new(def, m, stats[i].clone())
                    else {
                        continue;
                    };
                    let runner = new_runner(def, i);
                    match &m.link {
                        Link::Tcp { .. } => tasks.push(tokio::spawn(events::run(
                            runner,
                            ev.own_link(),
                            shutdown.clone(),
                        ))),
                        Link::Rtu(s) => {
                            bus.get_or_insert_with(|| (s.clone(), Vec::new()));
                            bus_events.push(modbus::poller::BusEvent {
                                device: i,
                                ev,
                                runner,
                            });
                        }
                    }
                }
            }
            DeviceDriver::Gps(_) => {
                if let Some(rt) = gps::GpsRuntime::new(&unit, None) {
                    tasks.push(tokio::spawn(gps::run(
                        rt,
                        out.clone(),
                        shutdown.clone(),
                        stats[i].clone(),
                    )));
                }
            }
            DeviceDriver::Tls350(_) => {
                if let Some(rt) = tls350::TlsRuntime::new(&unit, None) {
                    tasks.push(tokio::spawn(tls350::run(
                        rt,
                        out.clone(),
                        shutdown.clone(),
                        stats[i].clone(),
                    )));
                }
            }
            DeviceDriver::OpcUa(o) => {
                if let Some(rt) = opcua::DeviceRuntime::new(&unit, None) {
                    tasks.push(tokio::spawn(opcua::run(
                        rt,
                        out.clone(),
                        shutdown.clone(),
                        stats[i].clone(),
                    )));
                }
                // One task and one session per event definition.
                for def in &unit.device.events {
                    let pki = opcua::pki::dir_for(unit.device, unit.agent);
                    let Some(ev) = opcua::events::OpcUaEvent::new(
                        def,
                        o,
                        pki,
                        opcua::pki::Identity::of(unit.agent),
                        stats[i].clone(),
                    ) else {
                        continue;
                    };
                    let runner = new_runner(def, i);
                    tasks.push(tokio::spawn(events::run(runner, ev, shutdown.clone())));
                }
            }
        }
    }
    if let Some((serial, units)) = bus {
        tasks.push(tokio::spawn(modbus::run_rtu_bus(
            serial,
            units,
            bus_events,
            out.clone(),
            shutdown.clone(),
        )));
    }
    tasks
}

/// Where units send their outputs.
#[derive(Clone)]
enum Sink {
    /// Straight to the caller's channel (no reload: `read`, tests).
    Direct(OutputTx),
    /// Through a per-unit forwarder that tags each output with the unit's generation.
    Tagged(mpsc::Sender<Tagged>),
}

/// The running tasks of one unit.
struct Unit {
    fingerprint: u128,
    generation: u64,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Unit {
    fn start(
        plant: &Plant<'_>,
        devices: &[usize],
        stats: &[Arc<DeviceStats>],
        sink: &Sink,
        generation: u64,
        event_opts: &events::EventOptions,
    ) -> Unit {
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        match sink {
            Sink::Direct(out) => {
                tasks.extend(spawn_unit(plant, devices, stats, out, &rx, event_opts))
            }
            Sink::Tagged(out) => {
                let (tx, mut unit_rx) = mpsc::channel::<Output>(16);
                tasks.extend(spawn_unit(plant, devices, stats, &tx, &rx, event_opts));
                let out = out.clone();
                // Ends when the unit's tasks have ended (their senders dropped) and everything
                // they sent is forwarded.
                tasks.push(tokio::spawn(async move {
                    while let Some(output) = unit_rx.recv().await {
                        if out.send(Tagged { generation, output }).await.is_err() {
                            return;
                        }
                    }
                }));
            }
        }
        Unit {
            fingerprint: fingerprint(plant, devices),
            generation,
            shutdown,
            tasks,
        }
    }

    async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "driver task ended abnormally");
            }
        }
    }
}

/// What a reload changes, by unit key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Units whose devices and tags are identical: they keep polling.
    pub keep: Vec<String>,
    /// Units that changed: stopped and started again with the new map.
    pub restart: Vec<String>,
    /// Units only in the new map.
    pub add: Vec<String>,
    /// Units only in the old map.
    pub remove: Vec<String>,
}

/// Units being stopped for a reload; `join` waits until their tasks have ended and every output
/// they produced is in the acquisition channel (keep receiving from it meanwhile).
pub struct Stopping(Vec<Unit>);

impl Stopping {
    /// Wait for the stopped units.
    pub async fn join(self) {
        futures::future::join_all(self.0.into_iter().map(Unit::stop)).await;
    }
}

/// Running acquisition tasks.
pub struct Acquisition {
    units: BTreeMap<String, Unit>,
    sink: Sink,
    event_opts: events::EventOptions,
    generation: u64,
    /// Counters per device, indexed like `Plant::devices` of the current map.
    pub stats: Vec<Arc<DeviceStats>>,
}

impl Acquisition {
    /// Spawn the driver tasks for `map` (a tag map, or any [`Plant`]), sending each cycle's
    /// readings to `out`. Event definitions run too, with [`events::EventOptions::default`]: no
    /// ledger (a record counts as committed once handed over), handshakes written.
    pub fn start<'a>(map: impl Into<Plant<'a>>, out: OutputTx) -> Self {
        Self::start_with(map, out, events::EventOptions::default())
    }

    /// Like [`Acquisition::start`], with explicit event options: with the buffer's ledger
    /// (`run`), definitions resume after their persisted cursor and write a handshake only once
    /// the buffer committed the record; `read` writes no handshake at all.
    pub fn start_with<'a>(
        map: impl Into<Plant<'a>>,
        out: OutputTx,
        event_opts: events::EventOptions,
    ) -> Self {
        Self::start_sink(map.into(), Sink::Direct(out), event_opts)
    }

    /// Like `start_with`, with outputs tagged by tag-map generation so the map can be reloaded
    /// (`plan_reload`, `stop_for_reload`, `start_reloaded`).
    pub fn start_tagged<'a>(
        map: impl Into<Plant<'a>>,
        out: mpsc::Sender<Tagged>,
        event_opts: events::EventOptions,
    ) -> Self {
        Self::start_sink(map.into(), Sink::Tagged(out), event_opts)
    }

    fn start_sink(plant: Plant<'_>, sink: Sink, event_opts: events::EventOptions) -> Self {
        let stats: Vec<Arc<DeviceStats>> = plant.devices.iter().map(|_| Arc::default()).collect();
        let units = units_of(&plant)
            .into_iter()
            .map(|(k, devs)| (k, Unit::start(&plant, &devs, &stats, &sink, 0, &event_opts)))
            .collect();
        Acquisition {
            units,
            sink,
            event_opts,
            generation: 0,
            stats,
        }
    }

    /// The generation of the current map (0 at start, +1 per reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Generations still used by running units (older ones need no id translation any more).
    pub fn live_generations(&self) -> std::collections::BTreeSet<u64> {
        self.units.values().map(|u| u.generation).collect()
    }

    /// Compare the running units with those of `new`.
    pub fn plan_reload<'a>(&self, new: impl Into<Plant<'a>>) -> ReloadPlan {
        let new = new.into();
        let mut plan = ReloadPlan::default();
        let next = units_of(&new);
        for (k, devs) in &next {
            match self.units.get(k) {
                Some(u) if u.fingerprint == fingerprint(&new, devs) => plan.keep.push(k.clone()),
                Some(_) => plan.restart.push(k.clone()),
                None => plan.add.push(k.clone()),
            }
        }
        plan.remove = self
            .units
            .keys()
            .filter(|k| !next.contains_key(*k))
            .cloned()
            .collect();
        plan
    }

    /// Signal the units `plan` restarts or removes to stop; `join` the result while receiving.
    pub fn stop_for_reload(&mut self, plan: &ReloadPlan) -> Stopping {
        let mut out = Vec::new();
        for k in plan.restart.iter().chain(&plan.remove) {
            if let Some(u) = self.units.remove(k) {
                let _ = u.shutdown.send(true);
                out.push(u);
            }
        }
        Stopping(out)
    }

    /// Switch to `new` (after `stop_for_reload` was joined): start the restarted and added units
    /// under the next generation; device counters carry over by device name.
    pub fn start_reloaded<'a, 'b>(
        &mut self,
        old: impl Into<Plant<'a>>,
        new: impl Into<Plant<'b>>,
        plan: &ReloadPlan,
    ) {
        let (old, new) = (old.into(), new.into());
        self.generation += 1;
        let by_name: std::collections::HashMap<&str, &Arc<DeviceStats>> = old
            .devices
            .iter()
            .zip(&self.stats)
            .map(|(d, s)| (d.name.as_str(), s))
            .collect();
        let stats: Vec<Arc<DeviceStats>> = new
            .devices
            .iter()
            .map(|d| {
                by_name
                    .get(d.name.as_str())
                    .map(|s| (*s).clone())
                    .unwrap_or_default()
            })
            .collect();
        let next = units_of(&new);
        for k in plan.restart.iter().chain(&plan.add) {
            if let Some(devs) = next.get(k) {
                let u = Unit::start(
                    &new,
                    devs,
                    &stats,
                    &self.sink,
                    self.generation,
                    &self.event_opts,
                );
                self.units.insert(k.clone(), u);
            }
        }
        self.stats = stats;
    }

    /// Stop every driver task and wait for it to finish its current request.
    pub async fn stop(self) {
        Stopping(self.units.into_values().collect()).join().await;
    }
}

/// Tag ids of `old` → ids of the same tag (device and tag name) in `new`, indexed by old id.
pub fn translate_ids<'a, 'b>(
    old: impl Into<Plant<'a>>,
    new: impl Into<Plant<'b>>,
) -> Vec<Option<TagId>> {
    let (old, new) = (old.into(), new.into());
    let ids: std::collections::HashMap<(&str, &str), TagId> = new
        .tags
        .iter()
        .map(|t| ((new.devices[t.device].name.as_str(), t.name.as_str()), t.id))
        .collect();
    old.tags
        .iter()
        .map(|t| {
            ids.get(&(old.devices[t.device].name.as_str(), t.name.as_str()))
                .copied()
        })
        .collect()
}

/// Read the trigger and the record on display of every event definition once (for
/// `read --once`): `(definition name, trigger value and record, or why not)`, in tag-map order.
pub async fn read_events_once<'a>(
    map: impl Into<Plant<'a>>,
) -> Vec<(
    String,
    Result<(u64, flowsquare_wire::Event), events::IoError>,
)> {
    let plant = map.into();
    let mut out = Vec::new();
    for (i, def) in plant.events() {
        let device = &plant.devices[i];
        if let Some(o) = device.driver.opcua() {
            let pki = opcua::pki::dir_for(device, &plant.agent);
            let identity = opcua::pki::Identity::of(&plant.agent);
            let stats = Arc::new(DeviceStats::default());
            if let Some(mut io) = opcua::events::OpcUaEvent::new(def, o, pki, identity, stats) {
                out.push((def.name.clone(), events::run::read_once(def, &mut io).await));
            }
            continue;
        }
        let Some(m) = device.driver.modbus() else {
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
pub async fn read_once<'a>(map: impl Into<Plant<'a>>, only: Option<&[TagId]>) -> Vec<Reading> {
    let plant = map.into();
    let mut handles = Vec::new();
    let mut buses: BTreeMap<String, Vec<modbus::DeviceRuntime>> = BTreeMap::new();
    for (i, d) in plant.devices.iter().enumerate() {
        let unit = plant.device(i);
        let m = match &d.driver {
            DeviceDriver::Modbus(m) => m,
            DeviceDriver::Gps(_) => {
                if let Some(rt) = gps::GpsRuntime::new(&unit, only).filter(|r| !r.tags.is_empty()) {
                    handles.push(tokio::spawn(gps::read_once(rt)));
                }
                continue;
            }
            DeviceDriver::Tls350(_) => {
                if let Some(rt) =
                    tls350::TlsRuntime::new(&unit, only).filter(|r| !r.tags.is_empty())
                {
                    handles.push(tokio::spawn(tls350::read_once(rt)));
                }
                continue;
            }
            DeviceDriver::OpcUa(_) => {
                if let Some(rt) = opcua::DeviceRuntime::new(&unit, only) {
                    if !rt.tags.is_empty() {
                        handles.push(tokio::spawn(async move { opcua::read_once(&rt).await }));
                    }
                }
                continue;
            }
        };
        let Some(rt) = modbus::DeviceRuntime::new(&unit, only) else {
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
