//! GPS acquisition through real pseudo-terminals (socat): recorded NMEA sentences (southern and
//! western hemispheres, corrupted checksums, partial lines, fix loss) fed by the test, the
//! site-sim truck feeder, and the real gpsd reading the pty (its JSON over TCP).

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{map, Running};
use edge_agent::model::{Quality, Reading, Value};
use flowsquare_tests::{external, wait_until, PtyPair};
use site_sim::modbus::SerialConfig;
use site_sim::nmea::{feed_path, FeederConfig};
use tokio::sync::oneshot;

const RECORDED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/nmea/santiago-south-west.nmea"
);
/// GPS time of the recording's first epoch, 2024-06-15T10:15:00Z.
const RECORDED_T0: i64 = 1_718_446_500_000;

const FIELDS: [&str; 8] = [
    "latitude",
    "longitude",
    "altitude",
    "speed",
    "heading",
    "fix_quality",
    "satellites",
    "hdop",
];

fn agent_map(device: &str, fields: &[&str]) -> String {
    let mut s = format!("[agent]\nsite = \"test\"\nid = \"gw\"\n\n[[device]]\nname = \"truck-gps\"\n{device}\npoll_interval = \"100ms\"\n");
    for f in fields {
        s.push_str(&format!(
            "  [[device.tag]]\n  name = \"truck/{f}\"\n  field = \"{f}\"\n"
        ));
    }
    s
}

/// The lines of one `# section:` of the recording, with CR LF (bytes kept as recorded).
fn section(name: &str) -> Vec<u8> {
    let raw = std::fs::read(RECORDED).expect("recording");
    let mut out = Vec::new();
    let mut on = false;
    for line in raw.split(|&b| b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"# section: ") {
            on = rest.trim_ascii() == name.as_bytes();
            continue;
        }
        if on && !line.starts_with(b"#") && !line.is_empty() {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    assert!(!out.is_empty(), "section {name}");
    out
}

fn write(path: &std::path::Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open pty");
    f.write_all(bytes).expect("write pty");
}

fn latest(rs: &[Reading], tag: u32) -> Option<&Reading> {
    rs.iter().rev().find(|r| r.tag == tag)
}

fn float(r: Option<&Reading>) -> f64 {
    match r.and_then(|r| r.value.clone()) {
        Some(Value::Float(f)) => f,
        Some(Value::Int(i)) => i as f64,
        _ => f64::NAN,
    }
}

fn extra(run: &Running, name: &str) -> f64 {
    run.acq
        .as_ref()
        .map(|a| a.stats[0].extras())
        .unwrap_or_default()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map_or(0.0, |(_, f)| f.value)
}

#[tokio::test]
async fn recorded_sentences_with_faults_and_fix_loss_over_a_pty() {
    let pty = PtyPair::new().expect("pty pair (socat)");
    // The recording is from 2024: its GPS time is kept only with a bound that wide.
    let m = map(&agent_map(
        &format!(
            "protocol = \"nmea\"\nserial = \"{}\"\nbaud = 9600\nmax_clock_skew = \"3650d\"",
            pty.b.display()
        ),
        &FIELDS,
    ));
    let mut run = Running::start(&m);

    // 1. A good fix. The agent may open its port after the first lines: feed until seen.
    let mut fixed = false;
    for _ in 0..20 {
        write(&pty.a, &section("fix"));
        if run
            .until(Duration::from_millis(500), |rs| {
                latest(rs, 0).is_some_and(|r| r.quality == Quality::Good)
                    && latest(rs, 2).is_some_and(|r| r.quality == Quality::Good)
            })
            .await
        {
            fixed = true;
            break;
        }
    }
    assert!(fixed, "no good fix: {:?}", run.seen.last());
    let lat = float(latest(&run.seen, 0));
    let lon = float(latest(&run.seen, 1));
    assert!((lat + 33.45).abs() < 1e-9, "southern latitude {lat}");
    assert!((lon + 70.66).abs() < 1e-9, "western longitude {lon}");
    assert!(
        (float(latest(&run.seen, 3)) - 20.0).abs() < 1e-9,
        "VTG km/h"
    );
    assert_eq!(float(latest(&run.seen, 5)), 1.0);
    assert_eq!(float(latest(&run.seen, 6)), 8.0);
    assert_eq!(
        latest(&run.seen, 0).map(|r| r.ts_ms),
        Some(RECORDED_T0),
        "stamped with GPS time"
    );
    // The gateway clock is ~2.5 years ahead of the recording: the offset says so.
    let offset = extra(&run, "gps_clock_offset_ms");
    let expected = edge_agent::model::now_ms() - RECORDED_T0;
    assert!(
        (offset - expected as f64).abs() < 60_000.0,
        "offset {offset} vs {expected}"
    );

    // 2. Corrupted checksum, a partial line running into a full sentence, garbage, garbled
    //    checksum digits: counted and dropped; the good sentences among them still count.
    let (cs0, bad0) = (
        extra(&run, "nmea_checksum_errors"),
        extra(&run, "nmea_bad_sentences"),
    );
    write(&pty.a, &section("faults"));
    let moved = run
        .until(Duration::from_secs(10), |rs| {
            (float(latest(rs, 0)) + 33.449_833).abs() < 1e-5
                && float(latest(rs, 5)) == 2.0
                && latest(rs, 0).map(|r| r.ts_ms) == Some(RECORDED_T0 + 1000)
        })
        .await;
    assert!(
        moved,
        "good sentences between the bad ones are used: {:?}",
        run.seen.last()
    );
    assert!(
        run.wait_for(Duration::from_secs(5), |run| {
            extra(run, "nmea_checksum_errors") - cs0 >= 1.0
                && extra(run, "nmea_bad_sentences") - bad0 >= 3.0
        })
        .await
    );
    assert_eq!(extra(&run, "nmea_checksum_errors") - cs0, 1.0);
    assert_eq!(extra(&run, "nmea_bad_sentences") - bad0, 3.0);
    assert!(
        run.acq
            .as_ref()
            .map_or(0, |a| a.stats[0].snapshot().decode_errors)
            >= 4
    );

    // 3. Fix loss: positions bad with the reason, receiver status good (0 satellites, quality 0).
    write(&pty.a, &section("fixloss"));
    let lost = run
        .until(Duration::from_secs(10), |rs| {
            latest(rs, 0).is_some_and(|r| r.quality == Quality::BadDevice)
                && float(latest(rs, 5)) == 0.0
        })
        .await;
    assert!(lost, "fix loss reported: {:?}", run.seen.last());
    let r = latest(&run.seen, 0).cloned();
    assert!(
        r.as_ref()
            .and_then(|r| r.error.clone())
            .unwrap_or_default()
            .contains("no fix"),
        "{r:?}"
    );
    assert_eq!(latest(&run.seen, 6).map(|r| r.quality), Some(Quality::Good));
    assert_eq!(float(latest(&run.seen, 6)), 0.0);

    // 4. Silence: after max_age every tag is bad-communication, none silently missing.
    let silent = run
        .until(Duration::from_secs(15), |rs| {
            let n = rs.len();
            n >= 8
                && rs[n - 8..]
                    .iter()
                    .all(|r| r.quality == Quality::BadCommunication)
        })
        .await;
    run.stop().await;
    assert!(silent, "silence reported");
    // One reading per tag per cycle, good or bad.
    let per_tag: Vec<usize> = (0..8)
        .map(|t| run.seen.iter().filter(|r| r.tag == t).count())
        .collect();
    assert!(
        per_tag.windows(2).all(|w| w[0].abs_diff(w[1]) <= 1),
        "{per_tag:?}"
    );
}

fn feeder(pty: &PtyPair, toml: &str) -> oneshot::Sender<()> {
    let cfg = FeederConfig::from_toml_str(toml).expect("feeder config");
    let serial = SerialConfig::new(pty.a.display().to_string(), 9600);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = feed_path(&serial, cfg, async move {
            let _ = stopped.await;
        })
        .await
        {
            eprintln!("feeder: {e}");
        }
    });
    stop
}

#[tokio::test]
async fn the_moving_truck_feeder_with_a_clock_offset_and_corrupt_sentences() {
    let pty = PtyPair::new().expect("pty pair (socat)");
    let _stop = feeder(
        &pty,
        "talker = \"GN\"\ninterval = \"100ms\"\ntime_offset_ms = -1500\n[truck]\nspeed_kmh = 90.0\nroute = [[51.5, -0.2], [51.6, -0.1]]\n[faults]\ncorrupt_every = 5\n",
    );
    let m = map(&agent_map(
        &format!(
            "protocol = \"nmea\"\nserial = \"{}\"\nbaud = 9600",
            pty.b.display()
        ),
        &FIELDS,
    ));
    let mut run = Running::start(&m);
    let ok = run
        .until(Duration::from_secs(20), |rs| {
            rs.iter()
                .filter(|r| r.tag == 1 && r.quality == Quality::Good)
                .count()
                >= 10
        })
        .await;
    let cs = extra(&run, "nmea_checksum_errors");
    let offset = extra(&run, "gps_clock_offset_ms");
    run.stop().await;
    assert!(ok, "truck positions: {:?}", run.seen.last());
    let lons: Vec<f64> = run
        .seen
        .iter()
        .filter(|r| r.tag == 1 && r.quality == Quality::Good)
        .map(|r| float(Some(r)))
        .collect();
    assert!(lons.iter().all(|l| *l < 0.0 && *l > -0.21), "{lons:?}");
    assert!(lons.last() > lons.first(), "the truck moves east: {lons:?}");
    assert!(cs >= 1.0, "corrupted sentences counted");
    // Gateway ahead of GPS by 1.5 s, plus pty latency.
    assert!((1400.0..3000.0).contains(&offset), "clock offset {offset}");
}

/// 1994-03-01T10:00:00Z minus the gateway clock now: the feeder's receiver lives in 1994.
fn offset_to_1994() -> i64 {
    762_516_000_000 - edge_agent::model::now_ms()
}

/// A receiver reporting 1994 (a GPS week-number rollover): readings carry the gateway's time,
/// quality `time-substituted`, the GPS time kept in `error`, counted per device; with
/// `timestamps = "gateway"` they are good, stamped with the gateway's time, GPS time noted.
async fn receiver_in_1994(device_extra: &str) -> (Vec<Reading>, f64, i64, i64) {
    let pty = PtyPair::new().expect("pty pair (socat)");
    let _stop = feeder(
        &pty,
        &format!(
            "interval = \"100ms\"\ntime_offset_ms = {}\n",
            offset_to_1994()
        ),
    );
    let m = map(&agent_map(
        &format!(
            "protocol = \"nmea\"\nserial = \"{}\"\nbaud = 9600\n{device_extra}",
            pty.b.display()
        ),
        &FIELDS[..2],
    ));
    let started = edge_agent::model::now_ms();
    let mut run = Running::start(&m);
    let ok = run
        .until(Duration::from_secs(20), |rs| {
            rs.iter()
                .filter(|r| r.tag == 1 && r.value.is_some())
                .count()
                >= 5
        })
        .await;
    let substituted = extra(&run, "time_substituted");
    run.stop().await;
    assert!(ok, "positions: {:?}", run.seen.last());
    let ended = edge_agent::model::now_ms();
    let with_value: Vec<Reading> = run
        .seen
        .iter()
        .filter(|r| r.value.is_some())
        .cloned()
        .collect();
    (with_value, substituted, started, ended)
}

#[tokio::test]
async fn a_receiver_reporting_1994_gets_the_gateway_time_and_says_so() {
    let (rs, substituted, started, ended) = receiver_in_1994("").await;
    for r in &rs {
        assert_eq!(r.quality, Quality::TimeSubstituted, "{r:?}");
        assert!((started..=ended).contains(&r.ts_ms), "gateway time: {r:?}");
        let e = r.error.as_deref().unwrap_or("");
        assert!(e.starts_with("source time 1994-03-01T"), "{e}");
        assert!(e.contains(" d)"), "{e}");
    }
    assert!(
        substituted >= rs.len() as f64,
        "{substituted} < {}",
        rs.len()
    );
}

#[tokio::test]
async fn timestamps_gateway_stamps_the_gateway_time_and_keeps_readings_good() {
    let (rs, substituted, started, ended) = receiver_in_1994("timestamps = \"gateway\"").await;
    for r in &rs {
        assert_eq!(r.quality, Quality::Good, "{r:?}");
        assert!((started..=ended).contains(&r.ts_ms), "gateway time: {r:?}");
        assert!(
            r.error
                .as_deref()
                .unwrap_or("")
                .starts_with("source time 1994-03-01T"),
            "{r:?}"
        );
    }
    assert_eq!(substituted, 0.0);
}

#[tokio::test]
async fn read_once_listens_until_every_tag_is_good() {
    let pty = PtyPair::new().expect("pty pair (socat)");
    let _stop = feeder(&pty, "interval = \"100ms\"\n");
    let m = map(&agent_map(
        &format!(
            "protocol = \"nmea\"\nserial = \"{}\"\nbaud = 4800\nmax_age = \"10s\"",
            pty.b.display()
        ),
        &FIELDS,
    ));
    let rs = edge_agent::drivers::read_once(&m, None).await;
    assert_eq!(rs.len(), 8);
    assert!(rs.iter().all(|r| r.quality == Quality::Good), "{rs:?}");
    assert!(
        float(rs.first()) < -33.0,
        "southern hemisphere default route"
    );
}

/// gpsd as a child process, killed on drop.
struct Gpsd(Child);

impl Drop for Gpsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gpsd_binary() -> Option<std::path::PathBuf> {
    ["/usr/sbin/gpsd", "/usr/bin/gpsd", "/usr/local/sbin/gpsd"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

#[tokio::test]
async fn gpsd_source_reads_the_real_gpsd() {
    let Some(bin) = gpsd_binary() else {
        external::missing("gpsd (apt-get install gpsd)");
        return;
    };
    let pty = PtyPair::new().expect("pty pair (socat)");
    let _stop = feeder(
        &pty,
        "interval = \"200ms\"\n[truck]\nroute = [[-33.45, -70.66], [-33.40, -70.60]]\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let _gpsd = Gpsd(
        Command::new(bin)
            .args(["-N", "-n", "-b", "-S", &port.to_string()])
            .arg(&pty.b)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gpsd"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "gpsd listens"
    );
    let fields = [
        "latitude",
        "longitude",
        "altitude",
        "speed",
        "heading",
        "fix_quality",
    ];
    let probe = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args([
            "probe",
            "gpsd",
            "--port",
            &port.to_string(),
            "--seconds",
            "2s",
        ])
        .output()
        .await
        .expect("probe gpsd");
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "{text}");
    assert!(
        text.contains("\"class\":\"TPV\"") && text.contains("latitude -33."),
        "{text}"
    );
    let m = map(&agent_map(
        &format!("protocol = \"gpsd\"\nhost = \"127.0.0.1\"\nport = {port}"),
        &fields,
    ));
    let mut run = Running::start(&m);
    let ok = run
        .until(Duration::from_secs(20), |rs| {
            let n = rs.len();
            n >= 6 && rs[n - 6..].iter().all(|r| r.quality == Quality::Good)
        })
        .await;
    let offset = extra(&run, "gps_clock_offset_ms");
    run.stop().await;
    assert!(
        ok,
        "gpsd fix: {:?}",
        &run.seen[run.seen.len().saturating_sub(6)..]
    );
    let n = run.seen.len();
    let last = &run.seen[n - 6..];
    assert!(float(Some(&last[0])) < -33.39 && float(Some(&last[0])) > -33.46);
    assert!(float(Some(&last[1])) < -70.59);
    assert!(
        (float(Some(&last[3])) - 60.0).abs() < 0.5,
        "speed km/h {:?}",
        last[3]
    );
    assert!(float(Some(&last[5])) >= 1.0);
    assert!(offset.abs() < 5_000.0, "clock offset {offset}");
}

#[tokio::test]
async fn probe_nmea_prints_decoded_and_dropped_sentences() {
    let pty = PtyPair::new().expect("pty pair (socat)");
    let _stop = feeder(&pty, "interval = \"100ms\"\n[faults]\ncorrupt_every = 3\n");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["probe", "nmea", "--serial"])
        .arg(&pty.b)
        .args(["--baud", "9600", "--seconds", "1500ms"])
        .output()
        .await
        .expect("run edge-agent");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("RMC valid lat -33."), "{text}");
    assert!(text.contains("DROPPED: checksum mismatch"), "{text}");
    assert!(text.contains("sentence(s) decoded"), "{text}");
}

#[test]
fn gps_and_tank_gauge_devices_are_in_the_birth_catalog() {
    let m = map(&format!(
        "{}\n[[device]]\nname = \"atg\"\nprotocol = \"tls-350\"\nhost = \"10.0.0.2\"\n  [[device.tag]]\n  name = \"tank-1/volume\"\n  tank = 1\n  field = \"volume\"\n",
        agent_map("protocol = \"gpsd\"", &["latitude", "satellites"])
    ));
    let b = edge_agent::config::birth(&m);
    let protocols: Vec<&str> = b.devices.iter().map(|d| d.protocol.as_str()).collect();
    assert_eq!(protocols, vec!["gpsd", "tls-350"]);
    let types: Vec<(&str, &str)> = b
        .tags
        .iter()
        .map(|t| (t.name.as_str(), t.data_type.as_str()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("truck/latitude", "f64"),
            ("truck/satellites", "i64"),
            ("tank-1/volume", "f64")
        ]
    );
}

#[tokio::test]
async fn a_missing_port_gives_bad_readings_with_the_reason_not_a_panic() {
    let dir = tempfile::tempdir().expect("tmp");
    let m = map(&agent_map(
        &format!(
            "protocol = \"nmea\"\nserial = \"{}\"\nmax_age = \"300ms\"",
            dir.path().join("no-such-port").display()
        ),
        &["latitude"],
    ));
    let rs = edge_agent::drivers::read_once(&m, None).await;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].quality, Quality::BadCommunication);
    assert!(
        rs[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("no-such-port"),
        "{rs:?}"
    );
}
