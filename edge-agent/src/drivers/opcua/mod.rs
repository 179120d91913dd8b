//! OPC UA client acquisition (async-opcua).
//!
//! - `config.rs`: the OPC UA keys of a tag map and their resolved types;
//! - `status.rs`: StatusCode → quality, Variant → value (pure);
//! - `session.rs`: one session (security, identity, PKI), read/write/browse — the API other
//!   features reuse;
//! - `pki.rs`: the agent's certificate (made once, reused) and the trusted/rejected server
//!   certificates;
//! - `events.rs`: the event-capture binding (gantry batch records: trigger, field block and
//!   handshake over Read/Write, one session per definition);
//! - `run.rs`: the run loop (subscription or polling, reconnect with backoff);
//! - `error.rs`: link/session errors.

pub mod checks;
pub mod config;
pub mod error;
pub mod events;
pub mod pki;
pub mod run;
pub mod session;
pub mod status;

pub use error::{OpcUaError, OpcUaResult};
pub use run::{run, DeviceRuntime};
pub use session::OpcUaSession;

use crate::model::{now_ms, Quality, Reading};

/// Connect, read every tag once (Read service, whatever the mode), close.
pub async fn read_once(rt: &DeviceRuntime) -> Vec<Reading> {
    let s = match OpcUaSession::connect(
        &rt.dev,
        &rt.pki,
        &rt.identity,
        &format!("flowsquare {} read", rt.name),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(device = %rt.name, error = %e, "OPC UA connect failed");
            return rt.all_bad(Quality::BadCommunication, &e.to_string(), None);
        }
    };
    let mut readings = Vec::new();
    let mut ids = Vec::new();
    let mut idx = Vec::new();
    let ts = now_ms();
    for t in &rt.tags {
        match s.resolve(&t.source.node) {
            Ok(n) => {
                ids.push(n);
                idx.push(t);
            }
            Err(why) => readings.push(Reading::bad(t.id, ts, Quality::BadDevice, why)),
        }
    }
    let started = std::time::Instant::now();
    match s.read_nodes(&ids).await {
        Ok(values) => {
            let rtt = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            for (t, dv) in idx.iter().zip(values.iter()) {
                let (mut r, _) = status::reading_of(t.id, dv, t.source.data_type, ts);
                r.ts_ms = ts;
                r.rtt_us = rtt;
                readings.push(r);
            }
        }
        Err(e) => {
            for t in idx {
                readings.push(Reading::bad(
                    t.id,
                    ts,
                    Quality::BadCommunication,
                    e.to_string(),
                ));
            }
        }
    }
    s.close().await;
    readings
}
