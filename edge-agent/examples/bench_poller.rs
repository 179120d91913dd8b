//! Benchmark baseline (scripts/bench-footprint), not part of the agent: "the simplest possible
//! poller". A bare tokio-modbus loop per device that sends exactly the read requests of the
//! agent's plan (`edge-agent plan --format json`) every interval and throws the values away:
//! no decoding, no buffer, no uplink. The agent's CPU and memory are compared with this.
//!
//!   cargo run --release -p edge-agent --example bench_poller -- PLAN.json PORTS HOST [INTERVAL_MS]
//!
//! PORTS holds one TCP port per line, in the order of the plan's devices (the simulator's
//! `--ports-file`); every device is Modbus unit 1. Every second it prints `requests <total>`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio_modbus::client::Reader;
use tokio_modbus::Slave;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [plan, ports, host, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: bench_poller PLAN.json PORTS HOST [INTERVAL_MS]");
    };
    let interval = Duration::from_millis(rest.first().map_or(Ok(1000), |s| s.parse())?);
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plan)?)?;
    let ports: Vec<u16> = std::fs::read_to_string(ports)?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // (function code, start, count) of every request of each device's cycle; the plan itself
    // (tag names and all) is dropped before polling starts.
    let plans: Vec<Vec<(u64, u16, u16)>> = plan["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            d["requests"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let n = |k: &str| r[k].as_u64().unwrap_or(0);
                    (n("function"), n("start") as u16, n("count") as u16)
                })
                .collect()
        })
        .collect();
    drop(plan);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    let done = Arc::new(AtomicU64::new(0));
    for (reqs, port) in plans.into_iter().zip(ports) {
        let addr = format!("{host}:{port}").parse()?;
        let done = done.clone();
        tokio::spawn(async move {
            let Ok(mut ctx) = tokio_modbus::client::tcp::connect_slave(addr, Slave(1)).await else {
                eprintln!("cannot connect to {addr}");
                return;
            };
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for &(f, start, count) in &reqs {
                    let ok = match f {
                        1 => ctx.read_coils(start, count).await.is_ok(),
                        2 => ctx.read_discrete_inputs(start, count).await.is_ok(),
                        3 => ctx.read_holding_registers(start, count).await.is_ok(),
                        _ => ctx.read_input_registers(start, count).await.is_ok(),
                    };
                    if ok {
                        done.fetch_add(1, Relaxed);
                    }
                }
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        println!("requests {}", done.load(Relaxed));
    }
}
