//! The run loop: the [`Model`] stepped by the (simulated) clock and exposed over the existing
//! servers — Modbus TCP (tank-farm PLC unit 1, gantry bays units 10+n with the batch-record
//! interface of `modbus/gantry.rs`), OPC UA (the `opcua` tanks), a TLS-350 console (TCP), NMEA
//! on pseudo-terminals (one per truck, `<run-dir>/<truck>.tty`), an MQTT TCP relay (the broker
//! outage fault cuts it) — and the paperwork POSTed to cloud-ingest (discharges, ePODs).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flowsquare_service::clock::Clock;
use opcua::types::{DataValue, DateTime, StatusCode, Variant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::config::{Server, TerminalConfig};
use super::error::TerminalError;
use super::faults::Windows;
use super::maps;
use super::model::{Batch, Model, Record};
use crate::modbus::{
    self, values::encode, Ack, BatchRecord, DataType, Gantry, GantryConfig, RegisterKind,
    Simulator, Value, WordOrder,
};
use crate::opcua::{OpcUaSim, OpcUaSimConfig};
use crate::tls350::{Console, ConsoleConfig, DeliveryConfig, SharedConsole};

/// Holding register of the jetty meter's net totalizer (f64) on the PLC.
pub const JETTY_REGISTER: u16 = 200;
/// Registers per Modbus tank on the PLC: level, temperature, density, water (f64 each).
pub const TANK_STRIDE: u16 = 20;
/// Holding register of a bay meter's net totalizer (f64) on its unit.
pub const BAY_TOTAL_REGISTER: u16 = 0;
/// Modbus unit of bay `n`.
pub fn bay_unit(n: u16) -> u8 {
    u8::try_from(10 + n).unwrap_or(u8::MAX)
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The terminal file.
    pub config_path: PathBuf,
    /// Faults added on the command line (`--fault KIND:key=value,…`).
    pub faults: Vec<String>,
    /// The clock (sim start and speed).
    pub clock: Clock,
    /// Modbus TCP listen address.
    pub modbus: SocketAddr,
    /// OPC UA listen address.
    pub opcua: SocketAddr,
    /// TLS-350 listen address.
    pub tls350: SocketAddr,
    /// MQTT relay listen address.
    pub mqtt_listen: SocketAddr,
    /// The broker the relay forwards to (HOST:PORT).
    pub broker: String,
    /// Directory for the pty links and the OPC UA PKI.
    pub run_dir: PathBuf,
    /// Write the agent maps (with the bound addresses) here.
    pub write_maps: Option<PathBuf>,
    /// cloud-ingest's ePOD endpoint (`http://HOST:PORT/api/v1/epods`); discharges are posted
    /// beside it (`…/api/v1/discharges`).
    pub epod_url: Option<String>,
    /// Bearer token (operator) for it.
    pub token: Option<String>,
    /// Real time between model steps.
    pub tick: Duration,
    /// Real time between NMEA fixes on each pty.
    pub nmea_interval: Duration,
    /// The agents' poll interval written into the maps (real time, e.g. `200ms`).
    pub poll: String,
}

/// One bound endpoint, printed as `listening <what> <addr>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// modbus, opcua, tls350, mqtt-relay, pty.
    pub what: String,
    /// Address, URL or path.
    pub addr: String,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TerminalError {
    let what = what.into();
    move |source| TerminalError::Io { what, source }
}

fn server(what: &str) -> impl FnOnce(String) -> TerminalError + '_ {
    move |message| TerminalError::Server {
        what: what.into(),
        message,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn f64_words(x: f64) -> Vec<u16> {
    encode(DataType::F64, WordOrder::ABCD, &Value::Float(x), 0).unwrap_or_default()
}

/// Load the config and its strapping tables and build the model at the clock's start.
pub fn build_model(path: &Path, faults: &[String], start_ms: i64) -> Result<Model, TerminalError> {
    let cfg = TerminalConfig::load_with_faults(path, faults)?;
    let mut tables = Vec::new();
    for t in &cfg.tanks {
        let p = cfg.table_path(path, t);
        tables.push(std::fs::read_to_string(&p).map_err(io(format!("reading {}", p.display())))?);
    }
    Model::new(cfg, &tables, start_ms).map_err(|message| TerminalError::Table {
        file: path.to_owned(),
        message,
    })
}

/// Run until `stop` resolves. `announce` gets the endpoints once everything is bound.
pub async fn run(
    opts: Options,
    announce: impl FnOnce(&[Endpoint]),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TerminalError> {
    let clock = opts.clock;
    // Day 0 is a UTC midnight: the shared clock's origin (a process joining late replays the
    // physics from there), or under the real clock today's midnight. Before the origin (a
    // lead-in) the terminal is still.
    let start_ms = match clock {
        Clock::Sim { sim_start_ms, .. } => sim_start_ms,
        Clock::Real => clock.now_ms().div_euclid(super::model::DAY_MS) * super::model::DAY_MS,
    };
    let model = build_model(&opts.config_path, &opts.faults, start_ms)?;
    let cfg = model.config().clone();
    let windows = Windows::new(&cfg, start_ms);
    std::fs::create_dir_all(&opts.run_dir)
        .map_err(io(format!("creating {}", opts.run_dir.display())))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut endpoints = Vec::new();

    // Modbus: unit 1 the tank PLC, units 10+n the bays.
    let mut map = String::from("[[unit]]\nid = 1\nname = \"tank-farm-plc\"\n");
    for b in &cfg.bays {
        map.push_str(&format!(
            "[[unit]]\nid = {}\nname = \"bay-{}\"\n",
            bay_unit(b.number),
            b.number
        ));
    }
    let sim =
        Arc::new(Simulator::from_toml_str(&map).map_err(|e| server("modbus")(e.to_string()))?);
    let plc = sim
        .unit(1)
        .cloned()
        .ok_or_else(|| server("modbus")("no unit 1".into()))?;
    let mut bays = Vec::new();
    for b in &cfg.bays {
        let unit = sim
            .unit(bay_unit(b.number))
            .cloned()
            .ok_or_else(|| server("modbus")(format!("no unit for bay {}", b.number)))?;
        let g = Gantry::new(
            unit.clone(),
            GantryConfig {
                bay: b.number,
                ack: Ack::Coil,
                ..GantryConfig::default()
            },
        );
        bays.push(BayState {
            gantry: g,
            unit,
            queue: VecDeque::new(),
            shown: false,
        });
    }
    let l = TcpListener::bind(opts.modbus)
        .await
        .map_err(io(format!("binding modbus {}", opts.modbus)))?;
    let modbus_addr = l.local_addr().map_err(io("modbus address"))?;
    endpoints.push(Endpoint {
        what: "modbus".into(),
        addr: modbus_addr.to_string(),
    });
    {
        let mut rx = stop_rx.clone();
        tokio::spawn(modbus::serve_tcp(l, sim.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }

    // OPC UA.
    let opc_tanks: Vec<usize> = (0..cfg.tanks.len())
        .filter(|&i| cfg.tanks[i].server == Server::Opcua)
        .collect();
    let mut ocfg = OpcUaSimConfig::new(opts.run_dir.join("pki-opcua"), Duration::from_secs(3600));
    for &i in &opc_tanks {
        for f in OPC_FIELDS {
            ocfg.extra.push(format!("{}.{f}", cfg.tanks[i].id));
        }
    }
    let l = TcpListener::bind(opts.opcua)
        .await
        .map_err(io(format!("binding opcua {}", opts.opcua)))?;
    let opc = OpcUaSim::start(ocfg, l)
        .await
        .map_err(|e| server("opcua")(e.to_string()))?;
    endpoints.push(Endpoint {
        what: "opcua".into(),
        addr: opc.endpoint.clone(),
    });

    // TLS-350 at the station with a console.
    let tls_tank = cfg.stations.iter().find_map(|s| s.tls_tank).unwrap_or(1);
    let console_cfg = ConsoleConfig::from_toml_str(&format!(
        "[[tank]]\nnumber = {tls_tank}\nproduct = \"1\"\nvolume = 20000.0\nheight = 1500.0\ntemperature = 30.0\n"
    ))
    .map_err(server("tls350"))?;
    let console: SharedConsole = Arc::new(Mutex::new(Console::new(console_cfg)));
    let l = TcpListener::bind(opts.tls350)
        .await
        .map_err(io(format!("binding tls350 {}", opts.tls350)))?;
    let tls_addr = l.local_addr().map_err(io("tls350 address"))?;
    endpoints.push(Endpoint {
        what: "tls350".into(),
        addr: tls_addr.to_string(),
    });
    {
        let mut rx = stop_rx.clone();
        tokio::spawn(crate::tls350::serve_tcp(l, console.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }

    // MQTT relay.
    let l = TcpListener::bind(opts.mqtt_listen)
        .await
        .map_err(io(format!("binding the mqtt relay {}", opts.mqtt_listen)))?;
    let relay_addr = l.local_addr().map_err(io("relay address"))?;
    endpoints.push(Endpoint {
        what: "mqtt-relay".into(),
        addr: relay_addr.to_string(),
    });
    let (down_tx, down_rx) = watch::channel(false);
    tokio::spawn(relay(l, opts.broker.clone(), down_rx));

    // Model shared with the NMEA writers.
    let model = Arc::new(Mutex::new(model));
    let mut ptys = Vec::new();
    for k in 0..cfg.trucks.len() {
        let link = opts
            .run_dir
            .join(format!("{}.tty", cfg.trucks[k].id.to_lowercase()));
        let pty = super::pty::Pty::open(&link)?;
        endpoints.push(Endpoint {
            what: "pty".into(),
            addr: link.display().to_string(),
        });
        ptys.push(link);
        tokio::spawn(nmea_writer(
            pty,
            model.clone(),
            k,
            opts.nmea_interval,
            stop_rx.clone(),
        ));
    }

    if let Some(dir) = &opts.write_maps {
        let addrs = maps::Addrs {
            modbus: modbus_addr,
            opcua: opc.endpoint.clone(),
            tls350: tls_addr,
            mqtt: relay_addr,
            run_dir: opts.run_dir.clone(),
            nmea_interval: opts.nmea_interval,
        };
        maps::write_all(&cfg, &addrs, dir, &opts.poll)?;
    }

    // Paperwork to cloud-ingest.
    let (paper_tx, paper_rx) = mpsc::unbounded_channel::<Record>();
    if let Some(url) = &opts.epod_url {
        let api = Api::parse(url).map_err(|message| TerminalError::Server {
            what: "--epod-url".into(),
            message,
        })?;
        tokio::spawn(poster(
            api,
            opts.token.clone().unwrap_or_default(),
            cfg.clone(),
            paper_rx,
        ));
    } else {
        drop(paper_rx);
    }

    announce(&endpoints);

    let modbus_tanks: Vec<usize> = (0..cfg.tanks.len())
        .filter(|&i| cfg.tanks[i].server == Server::Modbus)
        .collect();
    let mut tick = tokio::time::interval(opts.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut last_day = -1;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        let now = clock.now_ms();
        let active = windows.at(now);
        plc.faults().set_silent(active.tank_plc_silent);
        lock(&console).config_mut().faults.silent = active.tls350_silent;
        if *down_tx.borrow() != active.broker_down {
            tracing::warn!(
                down = active.broker_down,
                "fault: mqtt relay {}",
                if active.broker_down {
                    "cut"
                } else {
                    "restored"
                }
            );
            let _ = down_tx.send(active.broker_down);
        }
        let records = {
            let mut m = lock(&model);
            m.advance_to(now);
            let day = m.day_of(now);
            if day != last_day {
                last_day = day;
                tracing::info!(day, date = %super::model::day_label(now), stock_l = m.stock_l(), "sim day");
            }
            for (j, &i) in modbus_tanks.iter().enumerate() {
                let g = m.gauge(i);
                let base = TANK_STRIDE * j as u16;
                for (off, v) in [
                    (0, g.level_mm),
                    (4, g.temp_c),
                    (8, g.density_kgm3),
                    (12, g.water_mm),
                ] {
                    let _ = plc.set_words(RegisterKind::Holding, base + off, &f64_words(v));
                }
            }
            let _ = plc.set_words(
                RegisterKind::Holding,
                JETTY_REGISTER,
                &f64_words(m.jetty_total_l()),
            );
            for (b, st) in bays.iter().enumerate() {
                let _ = st.unit.set_words(
                    RegisterKind::Holding,
                    BAY_TOTAL_REGISTER,
                    &f64_words(m.meter_total_l(b)),
                );
            }
            let ts = DateTime::from((now + 11_644_473_600_000) * 10_000);
            for &i in &opc_tanks {
                let g = m.gauge(i);
                for (f, v) in
                    OPC_FIELDS
                        .iter()
                        .zip([g.level_mm, g.temp_c, g.density_kgm3, g.water_mm])
                {
                    opc.set(
                        &format!("{}.{f}", cfg.tanks[i].id),
                        DataValue {
                            value: Some(Variant::Double(v)),
                            status: Some(StatusCode::Good),
                            source_timestamp: Some(ts),
                            server_timestamp: Some(ts),
                            ..Default::default()
                        },
                    );
                }
            }
            m.drain()
        };
        for r in records {
            match r {
                Record::Batch(b) => {
                    if let Some(st) = bays.get_mut(b.bay) {
                        st.queue.push_back(b);
                    }
                }
                Record::StationDelivery(d) => {
                    let mut c = lock(&console);
                    let before = c.config().tanks.first().map_or(0.0, |t| t.volume);
                    let after = before + d.gross_l as f32;
                    let code = |ms: i64| crate::tls350::console_time(ms, 0);
                    c.add_delivery(
                        d.tank,
                        DeliveryConfig {
                            start: code(d.start_ms),
                            end: code(d.end_ms),
                            start_volume: before,
                            end_volume: after,
                            start_tc_volume: Some(before * 0.995),
                            end_tc_volume: Some(before * 0.995 + d.net_l as f32),
                            start_water: 0.0,
                            end_water: 0.0,
                            start_temperature: 30.0,
                            end_temperature: 30.0,
                            start_height: 0.0,
                            end_height: 0.0,
                        },
                    );
                    // The station sells it on: keep the tank from overflowing.
                    if let Some(t) = c.config_mut().tanks.first_mut() {
                        t.volume = 20_000.0;
                    }
                }
                other => {
                    let _ = paper_tx.send(other);
                }
            }
        }
        // Each bay shows its next record once the agent acknowledged the one on display.
        for st in &mut bays {
            if st.queue.is_empty() || (st.shown && !st.gantry.acked()) {
                continue;
            }
            if let Some(b) = st.queue.pop_front() {
                st.gantry.publish(record_of(&b));
                st.shown = true;
            }
        }
    }
    let _ = stop_tx.send(true);
    opc.stop().await;
    for p in ptys {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

const OPC_FIELDS: [&str; 4] = ["Level", "Temperature", "Density", "Water"];

struct BayState {
    gantry: Arc<Gantry>,
    unit: Arc<modbus::Unit>,
    queue: VecDeque<Batch>,
    shown: bool,
}

fn record_of(b: &Batch) -> BatchRecord {
    let secs = |ms: i64| u32::try_from(ms.div_euclid(1000)).unwrap_or(0);
    BatchRecord {
        seq: 0,
        bay: 0,
        arm: 1,
        compartment: b.compartment,
        product: b.product.clone(),
        bol: b.bol.clone(),
        preset: b.gross_l.round() as u32,
        gross: b.gross_l as f32,
        nsv: b.nsv_l as f32,
        avg_temp: b.temp_c as f32,
        density: b.density_15c as f32,
        meter_factor: 1.0,
        start_time: secs(b.start_ms),
        end_time: secs(b.end_ms),
        start_total: b.start_total_l.round() as u32,
        end_total: b.end_total_l.round() as u32,
        truck: b.truck.clone(),
        meter: b.meter.clone(),
    }
}

/// NMEA checksum line.
fn sentence(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{sum:02X}\r\n")
}

fn dm(v: f64, lat: bool) -> (String, char) {
    let a = v.abs();
    let d = a.trunc();
    let m = (a - d) * 60.0;
    let hemi = match (lat, v < 0.0) {
        (true, false) => 'N',
        (true, true) => 'S',
        (false, false) => 'E',
        (false, true) => 'W',
    };
    if lat {
        (format!("{:02}{:07.4}", d as u32, m), hemi)
    } else {
        (format!("{:03}{:07.4}", d as u32, m), hemi)
    }
}

/// GGA + RMC of a fix at sim time `ms`.
pub fn nmea_fix(ms: i64, lat: f64, lon: f64, knots: f64, course: f64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let hms = format!(
        "{:02}{:02}{:02}.{:02}",
        t.hour(),
        t.minute(),
        t.second(),
        ms.rem_euclid(1000) / 10
    );
    let date = format!(
        "{:02}{:02}{:02}",
        t.day(),
        u8::from(t.month()),
        t.year() % 100
    );
    let (la, ns) = dm(lat, true);
    let (lo, ew) = dm(lon, false);
    let mut s = sentence(&format!(
        "GPGGA,{hms},{la},{ns},{lo},{ew},1,09,0.9,12.0,M,-32.0,M,,"
    ));
    s.push_str(&sentence(&format!(
        "GPRMC,{hms},A,{la},{ns},{lo},{ew},{knots:.1},{course:.1},{date},,,A"
    )));
    s
}

async fn nmea_writer(
    pty: super::pty::Pty,
    model: Arc<Mutex<Model>>,
    k: usize,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let text = {
            let m = lock(&model);
            let (la, lo, kn, co) = m.truck_fix(k);
            nmea_fix(m.now_ms(), la, lo, kn, co)
        };
        // Nobody reading (no agent yet): the sentence is dropped, as on a real wire.
        pty.write_nonblocking(text.as_bytes());
    }
}

/// Forward TCP connections to `broker`; while `down` is true every connection is cut and new
/// ones are closed at once.
async fn relay(l: TcpListener, broker: String, down: watch::Receiver<bool>) {
    loop {
        let Ok((client, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if *down.borrow() {
            drop(client);
            continue;
        }
        let broker = broker.clone();
        let mut down = down.clone();
        tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(&broker).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            let a = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if uw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            let b = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = a => {}
                _ = b => {}
                _ = down.wait_for(|d| *d) => {}
            }
        });
    }
}

/// Where the paperwork goes: `http://HOST:PORT/PREFIX/epods` and `…/PREFIX/discharges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    /// HOST:PORT.
    pub host: String,
    /// Path of the ePOD endpoint (`/api/v1/epods`).
    pub epods: String,
    /// Path of the discharge endpoint beside it (`/api/v1/discharges`).
    pub discharges: String,
}

impl Api {
    /// From the ePOD endpoint URL; a bare `http://HOST:PORT` means `/api/v1/epods`.
    pub fn parse(url: &str) -> Result<Api, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: expected http://HOST:PORT/api/v1/epods"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if host.is_empty() || !host.contains(':') {
            return Err(format!("{url:?}: expected http://HOST:PORT/api/v1/epods"));
        }
        let path = if path.is_empty() {
            "/api/v1/epods"
        } else {
            path
        };
        let prefix = path
            .strip_suffix("/epods")
            .ok_or_else(|| format!("{url:?}: the path must end in /epods (e.g. /api/v1/epods)"))?;
        Ok(Api {
            host: host.to_owned(),
            epods: path.to_owned(),
            discharges: format!("{prefix}/discharges"),
        })
    }
}

/// Minimal HTTP/1.1 POST; returns (status, body).
async fn post(host: &str, path: &str, token: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(host)
        .await
        .map_err(|e| format!("connecting to {host}: {e}"))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "no HTTP status in {:?}",
                text.chars().take(80).collect::<String>()
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// POST until accepted (2xx) or a duplicate (409); other answers are retried every second.
async fn post_until_done(host: &str, path: &str, token: &str, body: &str) -> Option<String> {
    loop {
        match post(host, path, token, body).await {
            Ok((s, b)) if (200..300).contains(&s) => return Some(b),
            Ok((409, _)) => return None,
            Ok((s, b))
                if (400..500).contains(&s)
                    && s != 401
                    && s != 403
                    && s != 404
                    && s != 408
                    && s != 429 =>
            {
                tracing::error!(status = s, %path, body = %b, "cloud-ingest refused a record; not retried");
                return None;
            }
            Ok((s, b)) => {
                tracing::warn!(status = s, %path, body = %b, "cloud-ingest did not accept; retrying")
            }
            Err(e) => tracing::warn!(error = %e, %path, "cloud-ingest unreachable; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn poster(
    api: Api,
    token: String,
    cfg: TerminalConfig,
    mut rx: mpsc::UnboundedReceiver<Record>,
) {
    let mut ids: Vec<Option<i64>> = vec![None; cfg.discharges.len()];
    while let Some(r) = rx.recv().await {
        match r {
            Record::DischargeOpened { index, at_ms, bl_l } => {
                let d = &cfg.discharges[index];
                let body = serde_json::json!({
                    "site": cfg.site, "vessel": d.vessel, "parcel": d.parcel, "product": d.product,
                    "bl_l": bl_l, "tanks": d.tanks, "meters": [cfg.jetty.meter], "opened_at": at_ms,
                });
                if let Some(b) =
                    post_until_done(&api.host, &api.discharges, &token, &body.to_string()).await
                {
                    ids[index] = serde_json::from_str::<serde_json::Value>(&b)
                        .ok()
                        .and_then(|v| v["data"][0]["id"].as_i64());
                    tracing::info!(parcel = %d.parcel, id = ?ids[index], "discharge opened");
                }
            }
            Record::DischargeClosed {
                index,
                at_ms,
                ship_l,
            } => {
                let Some(id) = ids[index] else {
                    tracing::warn!(parcel = %cfg.discharges[index].parcel, "discharge not opened in cloud-ingest; not closed");
                    continue;
                };
                let body = serde_json::json!({ "closed_at": at_ms, "ship_l": ship_l });
                post_until_done(
                    &api.host,
                    &format!("{}/{id}/close", api.discharges),
                    &token,
                    &body.to_string(),
                )
                .await;
            }
            Record::Epod(e) => {
                let body = serde_json::json!({
                    "trip": e.trip, "bol": e.bol, "truck": e.truck, "station": e.station,
                    "delivered_at": e.delivered_ms, "receiver": e.receiver, "lat": e.lat, "lon": e.lon,
                    "compartments": e.compartments.iter().map(|c| serde_json::json!({
                        "compartment": c.compartment, "product": c.product, "gross_l": c.gross_l, "net_l": c.net_l,
                    })).collect::<Vec<_>>(),
                });
                post_until_done(&api.host, &api.epods, &token, &body.to_string()).await;
                tracing::info!(bol = %e.bol, truck = %e.truck, "epod posted");
            }
            Record::Batch(_) | Record::StationDelivery(_) => {}
        }
    }
}
