//! In-process Modbus RTU: serve_rtu over an in-memory pipe (raw bytes and tokio-modbus's RTU
//! client), and over a socat pseudo-terminal pair when socat is installed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use site_sim::modbus::{open_serial, serve_rtu, SerialConfig, SimError, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_modbus::client::{rtu, Context, Reader as _, Writer as _};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{ExceptionCode, ProtocolError, Slave};

const ANSWER: Duration = Duration::from_secs(5);
const NO_ANSWER: Duration = Duration::from_millis(300);

const MAP: &str = r#"
[[unit]]
id = 1
[[unit.register]]
kind = "holding"
address = 0
type = "f32"
value = 12.5

[[unit]]
id = 2
[[unit.register]]
kind = "holding"
address = 0
type = "u16"
value = 2

[[unit]]
id = 3
[unit.faults]
silent = true
"#;

fn crc16(data: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc.to_le_bytes()
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    f.extend(crc16(body));
    f
}

fn start_pipe() -> (
    DuplexStream,
    Arc<Simulator>,
    JoinHandle<Result<(), SimError>>,
) {
    let sim = Arc::new(Simulator::from_toml_str(MAP).unwrap());
    let (client, server) = tokio::io::duplex(4096);
    let task = tokio::spawn(serve_rtu(server, sim.clone(), std::future::pending()));
    (client, sim, task)
}

async fn read_exactly(io: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(ANSWER, io.read_exact(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    buf
}

#[tokio::test]
async fn raw_frames_noise_garbage_and_wrong_unit() {
    let (mut io, sim, task) = start_pipe();
    // Noise before a valid request is skipped.
    let mut req = vec![0xAA, 0x55, 0x00];
    req.extend(frame(&[1, 3, 0, 0, 0, 2]));
    io.write_all(&req).await.unwrap();
    assert_eq!(
        read_exactly(&mut io, 9).await,
        frame(&[1, 3, 4, 0x41, 0x48, 0, 0])
    );

    // An unknown function code on a configured unit: IllegalFunction.
    io.write_all(&frame(&[2, 0x41, 1, 2])).await.unwrap();
    assert_eq!(read_exactly(&mut io, 5).await, frame(&[2, 0xC1, 1]));

    // Wrong unit id: valid frame, unit id + 1.
    sim.faults(1).unwrap().set_wrong_unit_every(1);
    io.write_all(&frame(&[1, 3, 0, 0, 0, 1])).await.unwrap();
    assert_eq!(
        read_exactly(&mut io, 7).await,
        frame(&[2, 3, 2, 0x41, 0x48])
    );
    sim.faults(1).unwrap().set_wrong_unit_every(0);

    // Garbage: same length, unit id kept, CRC wrong.
    sim.faults(1).unwrap().set_garbage_every(1);
    io.write_all(&frame(&[1, 3, 0, 0, 0, 1])).await.unwrap();
    let g = read_exactly(&mut io, 7).await;
    assert_eq!(g[0], 1);
    assert_ne!(crc16(&g[..5]), [g[5], g[6]], "{g:02X?}");
    sim.faults(1).unwrap().clear();

    // Broadcast write: stored by every unit, no answer; then a normal read answers.
    io.write_all(&frame(&[0, 6, 0, 9, 0, 42])).await.unwrap();
    io.write_all(&frame(&[2, 3, 0, 9, 0, 1])).await.unwrap();
    assert_eq!(read_exactly(&mut io, 7).await, frame(&[2, 3, 2, 0, 42]));
    assert_eq!(
        sim.unit(1)
            .unwrap()
            .words(site_sim::modbus::RegisterKind::Holding, 9, 1),
        [42]
    );

    // Closing the pipe ends the server cleanly.
    drop(io);
    tokio::time::timeout(ANSWER, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

async fn read1(ctx: &mut Context, addr: u16) -> Result<Vec<u16>, ExceptionCode> {
    tokio::time::timeout(ANSWER, ctx.read_holding_registers(addr, 1))
        .await
        .expect("answer in time")
        .expect("transport ok")
}

#[tokio::test]
async fn units_share_the_bus() {
    let (io, sim, _task) = start_pipe();
    let mut c = rtu::attach_slave(io, Slave(1));
    assert_eq!(
        tokio::time::timeout(ANSWER, c.read_holding_registers(0, 2))
            .await
            .unwrap()
            .unwrap(),
        Ok(vec![0x4148, 0])
    );
    c.set_slave(Slave(2));
    assert_eq!(read1(&mut c, 0).await, Ok(vec![2]));
    c.write_single_register(5, 77).await.unwrap().unwrap();
    assert_eq!(read1(&mut c, 5).await, Ok(vec![77]));

    // A silent unit and an unknown unit never answer.
    c.set_slave(Slave(3));
    assert!(
        tokio::time::timeout(NO_ANSWER, c.read_holding_registers(0, 1))
            .await
            .is_err()
    );
    assert_eq!(sim.unit(3).unwrap().stats().silenced, 1);
    c.set_slave(Slave(99));
    assert!(
        tokio::time::timeout(NO_ANSWER, c.read_holding_registers(0, 1))
            .await
            .is_err()
    );

    // Run-time toggling: unit 3 starts answering.
    sim.faults(3).unwrap().set_silent(false);
    c.set_slave(Slave(3));
    assert_eq!(read1(&mut c, 0).await, Ok(vec![0]));

    // Wrong unit id: tokio-modbus reports a header mismatch.
    sim.faults(2).unwrap().set_wrong_unit_every(1);
    c.set_slave(Slave(2));
    let r = tokio::time::timeout(ANSWER, c.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            Err(tokio_modbus::Error::Protocol(
                ProtocolError::HeaderMismatch { .. }
            ))
        ),
        "{r:?}"
    );
    sim.faults(2).unwrap().clear();

    // Garbage: the master sees no valid answer (CRC error or timeout)…
    sim.faults(1).unwrap().set_garbage_every(1);
    c.set_slave(Slave(1));
    match tokio::time::timeout(NO_ANSWER, c.read_holding_registers(0, 1)).await {
        Err(_) | Ok(Err(_)) => {}
        Ok(Ok(r)) => panic!("garbage decoded as a valid answer: {r:?}"),
    }
    sim.faults(1).unwrap().clear();
    // …and once the line is quiet again the bus works. Wait for the server's resync window so
    // the leftover garbage bytes in the client's buffer are not mistaken for the answer.
    let r = tokio::time::timeout(ANSWER, async {
        loop {
            if let Ok(Ok(Ok(w))) =
                tokio::time::timeout(NO_ANSWER, c.read_holding_registers(0, 1)).await
            {
                break w;
            }
        }
    })
    .await
    .expect("the bus recovers");
    assert_eq!(r, [0x4148]);
}

struct Socat {
    child: tokio::process::Child,
    dir: PathBuf,
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn serves_a_socat_pseudo_terminal() {
    if std::process::Command::new("socat")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("socat not installed: skipping the pseudo-terminal test");
        return;
    }
    let dir = std::env::temp_dir().join(format!("site-sim-pty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    let child = tokio::process::Command::new("socat")
        .arg("-d")
        .arg("-d")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _socat = Socat {
        child,
        dir: dir.clone(),
    };
    tokio::time::timeout(ANSWER, async {
        while !(a.exists() && b.exists()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("socat creates both ptys");

    let sim = Arc::new(Simulator::from_toml_str(MAP).unwrap());
    let server_port = open_serial(&SerialConfig::new(a.display().to_string(), 9600)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_rtu(server_port, sim, async move {
        let _ = stopped.await;
    }));
    let client_port = open_serial(&SerialConfig::new(b.display().to_string(), 9600)).unwrap();
    let mut c = rtu::attach_slave(client_port, Slave(1));
    assert_eq!(
        tokio::time::timeout(ANSWER, c.read_holding_registers(0, 2))
            .await
            .unwrap()
            .unwrap(),
        Ok(vec![0x4148, 0])
    );
    c.set_slave(Slave(2));
    assert_eq!(read1(&mut c, 0).await, Ok(vec![2]));
    let _ = stop.send(());
    tokio::time::timeout(ANSWER, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn opening_a_missing_port_is_an_error_not_a_panic() {
    let err = open_serial(&SerialConfig::new("/nonexistent/tty", 9600)).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tty"), "{err}");
    let mut bad = SerialConfig::new("/dev/null", 9600);
    bad.stop_bits = 3;
    assert!(open_serial(&bad)
        .unwrap_err()
        .to_string()
        .contains("stop bits"));
}
