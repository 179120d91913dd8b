//! In-process Modbus TCP: serve_tcp on 127.0.0.1:0, read and write with tokio-modbus's client,
//! inject faults through FaultHandle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use site_sim::clock::Clock;
use site_sim::modbus::{
    serve_tcp, ExceptionRule, MapConfig, RegisterKind, SimError, Simulator, Value, WriteEvent,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_modbus::client::{tcp, Context, Reader as _, Writer as _};
use tokio_modbus::{ExceptionCode, ProtocolError, Slave};

/// Bound for every request that is expected to succeed.
const ANSWER: Duration = Duration::from_secs(5);
/// How long a request to a silent unit is given before it counts as unanswered.
const NO_ANSWER: Duration = Duration::from_millis(300);

const MAP: &str = r#"
[[unit]]
id = 1
[[unit.register]]
kind = "holding"
address = 0
type = "f32"
value = 12.5
[[unit.register]]
kind = "holding"
address = 2
type = "f32"
order = "CDAB"
value = 12.5
[[unit.register]]
kind = "input"
address = 0
type = "u32"
order = "CDAB"
generator = { kind = "counter", rate_per_s = 100.0, rollover = 100000.0 }
[[unit.register]]
kind = "input"
address = 10
type = "string"
length = 6
value = "TK-101"
[[unit.register]]
kind = "coil"
address = 3
value = true
[[unit.register]]
kind = "discrete"
address = 0
generator = { kind = "ramp", step = 1.0, min = 0.0, max = 1.0, every = "1s" }

[[unit]]
id = 2
strict = true
[[unit.register]]
kind = "holding"
address = 10
type = "i16"
value = -5

[[unit]]
id = 3
[unit.faults]
exception = { code = 2, kind = "holding", from = 100, to = 110 }
"#;

struct Server {
    addr: SocketAddr,
    sim: Arc<Simulator>,
    clock: Clock,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), SimError>>,
}

impl Server {
    async fn start() -> Server {
        let clock = Clock::manual();
        let sim = Arc::new(
            Simulator::with_clock(&MapConfig::from_toml_str(MAP).unwrap(), clock.clone()).unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_tcp(listener, sim.clone(), async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            sim,
            clock,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self, unit: u8) -> Context {
        tokio::time::timeout(ANSWER, tcp::connect_slave(self.addr, Slave(unit)))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(ANSWER, self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server result");
    }
}

async fn holding(ctx: &mut Context, addr: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
    tokio::time::timeout(ANSWER, ctx.read_holding_registers(addr, n))
        .await
        .expect("answer in time")
        .expect("transport ok")
}

#[tokio::test]
async fn reads_typed_values_and_generators() {
    let srv = Server::start().await;
    let mut c = srv.client(1).await;
    assert_eq!(
        holding(&mut c, 0, 4).await,
        Ok(vec![0x4148, 0x0000, 0x0000, 0x4148])
    );
    // Unmapped addresses read 0 on a non-strict unit.
    assert_eq!(holding(&mut c, 4, 3).await, Ok(vec![0, 0, 0]));

    srv.clock.set(Duration::from_millis(12_345)); // counter 1234.5, floored
    let input = c.read_input_registers(0, 2).await.unwrap().unwrap();
    assert_eq!(input, [1234, 0]);
    srv.clock.set(Duration::from_secs(70_000)); // 7_000_000 wraps at 100_000 → 0
    assert_eq!(c.read_input_registers(0, 2).await.unwrap().unwrap(), [0, 0]);
    srv.clock.set(Duration::from_secs(700)); // 70_000 = 0x0001_1170, CDAB
    assert_eq!(
        c.read_input_registers(0, 2).await.unwrap().unwrap(),
        [0x1170, 0x0001]
    );

    assert_eq!(
        c.read_input_registers(10, 3).await.unwrap().unwrap(),
        [
            u16::from_be_bytes(*b"TK"),
            u16::from_be_bytes(*b"-1"),
            u16::from_be_bytes(*b"01")
        ]
    );
    assert_eq!(
        c.read_coils(2, 3).await.unwrap().unwrap(),
        [false, true, false]
    );
    srv.clock.set(Duration::from_secs(1));
    assert_eq!(c.read_discrete_inputs(0, 1).await.unwrap().unwrap(), [true]);
    srv.clock.set(Duration::from_secs(2));
    assert_eq!(
        c.read_discrete_inputs(0, 1).await.unwrap().unwrap(),
        [false]
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn writes_are_stored_and_override_the_map() {
    let srv = Server::start().await;
    let unit = srv.sim.unit(1).unwrap().clone();
    let mut writes = unit.subscribe_writes();
    let mut c = srv.client(1).await;
    c.write_multiple_registers(0, &[0x42C8, 0x0000])
        .await
        .unwrap()
        .unwrap(); // 100.0
    assert_eq!(
        unit.value(RegisterKind::Holding, 0).unwrap(),
        Value::Float(100.0)
    );
    assert_eq!(holding(&mut c, 0, 2).await, Ok(vec![0x42C8, 0]));
    c.write_single_register(50, 7).await.unwrap().unwrap();
    c.write_single_coil(3, false).await.unwrap().unwrap();
    c.write_multiple_coils(8, &[true, false, true])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        c.read_coils(3, 8).await.unwrap().unwrap(),
        [false, false, false, false, false, true, false, true]
    );
    // The generator is overridden too.
    c.write_single_register(51, 9).await.unwrap().unwrap();
    assert_eq!(holding(&mut c, 50, 2).await, Ok(vec![7, 9]));

    let first = tokio::time::timeout(ANSWER, writes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        WriteEvent {
            unit: 1,
            kind: RegisterKind::Holding,
            address: 0,
            values: vec![0x42C8, 0]
        }
    );
    assert_eq!(unit.stats().writes, 5);
    // The library can reset what clients wrote.
    unit.clear_writes();
    assert_eq!(holding(&mut c, 0, 2).await, Ok(vec![0x4148, 0]));
    srv.shutdown().await;
}

#[tokio::test]
async fn strict_units_unknown_units_and_exception_ranges() {
    let srv = Server::start().await;
    let mut strict = srv.client(2).await;
    assert_eq!(holding(&mut strict, 10, 1).await, Ok(vec![0xFFFB]));
    assert_eq!(
        holding(&mut strict, 9, 2).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        strict.write_single_register(11, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );

    let mut unknown = srv.client(42).await;
    assert_eq!(
        holding(&mut unknown, 0, 1).await,
        Err(ExceptionCode::GatewayTargetDevice)
    );

    let mut c = srv.client(3).await;
    assert_eq!(holding(&mut c, 99, 1).await, Ok(vec![0]));
    assert_eq!(
        holding(&mut c, 99, 2).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        holding(&mut c, 110, 5).await,
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(holding(&mut c, 111, 5).await, Ok(vec![0; 5]));
    // Reads only: writes into the range still work, and other tables are unaffected.
    assert_eq!(c.write_single_register(105, 1).await.unwrap(), Ok(()));
    assert_eq!(c.read_input_registers(105, 1).await.unwrap(), Ok(vec![0]));
    // Quantity limits.
    assert_eq!(
        holding(&mut c, 200, 126).await,
        Err(ExceptionCode::IllegalDataValue)
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn faults_toggle_at_run_time() {
    let srv = Server::start().await;
    let faults = srv.sim.faults(1).unwrap();
    let unit = srv.sim.unit(1).unwrap().clone();
    let mut c = srv.client(1).await;
    assert!(holding(&mut c, 0, 1).await.is_ok());

    // Silent: the client gets no answer at all.
    faults.set_silent(true);
    let before = unit.requests();
    let r = tokio::time::timeout(NO_ANSWER, c.read_holding_registers(0, 1)).await;
    assert!(r.is_err(), "a silent unit must not answer: {r:?}");
    assert!(unit.wait_for_requests(before + 1, ANSWER).await);
    assert_eq!(unit.stats().silenced, 1);
    faults.set_silent(false);
    // The timed-out request was never answered, so the same connection works again.
    assert_eq!(holding(&mut c, 0, 1).await, Ok(vec![0x4148]));

    // Exception injected at run time, then removed.
    faults.add_exception(ExceptionRule::new(4, Some(RegisterKind::Holding), 0, 0));
    assert_eq!(
        holding(&mut c, 0, 2).await,
        Err(ExceptionCode::ServerDeviceFailure)
    );
    assert_eq!(holding(&mut c, 1, 1).await, Ok(vec![0]));
    faults.clear_exceptions();
    assert_eq!(holding(&mut c, 0, 1).await, Ok(vec![0x4148]));

    // Delay.
    faults.set_delay(Some(Duration::from_millis(150)));
    let t0 = Instant::now();
    assert_eq!(holding(&mut c, 0, 1).await, Ok(vec![0x4148]));
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
    faults.set_delay(None);

    // Garbage on every 2nd answer: a function-code mismatch, the connection stays usable.
    faults.set_garbage_every(2);
    let answers = unit.stats().answers;
    let mut results = Vec::new();
    for _ in 0..4 {
        results.push(
            tokio::time::timeout(ANSWER, c.read_holding_registers(0, 2))
                .await
                .unwrap(),
        );
    }
    let garbled: Vec<bool> = results
        .iter()
        .map(|r| {
            matches!(
                r,
                Err(tokio_modbus::Error::Protocol(
                    ProtocolError::FunctionCodeMismatch { .. }
                ))
            )
        })
        .collect();
    let expected: Vec<bool> = (answers + 1..=answers + 4).map(|n| n % 2 == 0).collect();
    assert_eq!(garbled, expected, "{results:?}");
    assert!(results
        .iter()
        .zip(&expected)
        .all(|(r, g)| *g || matches!(r, Ok(Ok(w)) if w == &[0x4148, 0])));
    faults.set_garbage_every(0);

    // Wrong unit id on every answer: a header mismatch.
    faults.set_wrong_unit_every(1);
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
    faults.set_wrong_unit_every(0);
    assert_eq!(holding(&mut c, 0, 1).await, Ok(vec![0x4148]));

    // Drop the connection on every 3rd request of a connection.
    faults.set_drop_connection_every(3);
    let mut c = srv.client(1).await;
    assert!(holding(&mut c, 0, 1).await.is_ok());
    assert!(holding(&mut c, 0, 1).await.is_ok());
    let r = tokio::time::timeout(ANSWER, c.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert!(r.is_err(), "the 3rd request must fail: {r:?}");
    let mut c = srv.client(1).await;
    assert!(holding(&mut c, 0, 1).await.is_ok());
    assert_eq!(unit.stats().dropped_connections, 1);
    faults.clear();
    srv.shutdown().await;
}

#[tokio::test]
async fn faults_from_the_map_file() {
    let map = r#"
        [[unit]]
        id = 7
        [unit.faults]
        silent = true
        [[unit]]
        id = 8
        [unit.faults]
        exceptions = [{ code = 6, from = 0, to = 9 }, { code = 3, kind = "input", from = 20 }]
    "#;
    let sim = Arc::new(Simulator::from_toml_str(map).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_tcp(listener, sim.clone(), std::future::pending()));
    let mut silent = tcp::connect_slave(addr, Slave(7)).await.unwrap();
    assert!(
        tokio::time::timeout(NO_ANSWER, silent.read_holding_registers(0, 1))
            .await
            .is_err()
    );
    let mut c = tcp::connect_slave(addr, Slave(8)).await.unwrap();
    assert_eq!(
        holding(&mut c, 5, 1).await,
        Err(ExceptionCode::ServerDeviceBusy)
    );
    assert_eq!(
        c.read_coils(9, 1).await.unwrap(),
        Err(ExceptionCode::ServerDeviceBusy)
    );
    assert_eq!(
        c.read_input_registers(20, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(c.read_input_registers(21, 1).await.unwrap(), Ok(vec![0]));
    // Turning the silent unit's fault off at run time makes it answer.
    sim.faults(7).unwrap().set_silent(false);
    let mut silent = tcp::connect_slave(addr, Slave(7)).await.unwrap();
    assert_eq!(holding(&mut silent, 0, 1).await, Ok(vec![0]));
    server.abort();
}

#[tokio::test]
async fn the_tokio_modbus_service_impl_works_in_tokio_modbus_servers() {
    use site_sim::modbus::{SimService, Transport};
    use tokio_modbus::server::tcp::{accept_tcp_connection, Server as TmServer};

    let sim = Arc::new(Simulator::from_toml_str(MAP).unwrap());
    let service = SimService::new(sim.clone(), Transport::Tcp);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = TmServer::new(listener);
    let task = tokio::spawn(async move {
        let new_service = |_addr| Ok(Some(service.clone()));
        let on_connected =
            |stream, addr| async move { accept_tcp_connection(stream, addr, new_service) };
        let _ = server.serve(&on_connected, |_err| {}).await;
    });
    let mut c = tcp::connect_slave(addr, Slave(1)).await.unwrap();
    assert_eq!(holding(&mut c, 0, 2).await, Ok(vec![0x4148, 0]));
    sim.faults(1).unwrap().set_garbage_every(1);
    let r = tokio::time::timeout(ANSWER, c.read_holding_registers(0, 2))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            Err(tokio_modbus::Error::Protocol(
                ProtocolError::FunctionCodeMismatch { .. }
            ))
        ),
        "{r:?}"
    );
    sim.faults(1).unwrap().clear();
    sim.faults(1).unwrap().set_silent(true);
    assert!(
        tokio::time::timeout(NO_ANSWER, c.read_holding_registers(0, 1))
            .await
            .is_err()
    );
    task.abort();
}

#[tokio::test]
async fn several_listeners_are_independent_devices() {
    let map = MapConfig::from_toml_str(MAP).unwrap();
    let mut addrs = Vec::new();
    let mut sims = Vec::new();
    for _ in 0..3 {
        let sim = Arc::new(Simulator::new(&map).unwrap());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(l.local_addr().unwrap());
        tokio::spawn(serve_tcp(l, sim.clone(), std::future::pending()));
        sims.push(sim);
    }
    let mut c0 = tcp::connect_slave(addrs[0], Slave(1)).await.unwrap();
    c0.write_single_register(0, 1).await.unwrap().unwrap();
    let mut c1 = tcp::connect_slave(addrs[1], Slave(1)).await.unwrap();
    assert_eq!(holding(&mut c1, 0, 1).await, Ok(vec![0x4148]));
    assert_eq!(holding(&mut c0, 0, 1).await, Ok(vec![1]));
    assert_eq!(sims[2].unit(1).unwrap().requests(), 0);
}
