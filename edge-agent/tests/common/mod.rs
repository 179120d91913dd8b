//! Shared helpers for the agent's integration tests: the simulator in-process, acquisition with a
//! channel, waiting for readings with a deadline.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::config::{parse_str, TagMap};
use edge_agent::drivers::{Acquisition, Output};
use edge_agent::model::Reading;
use site_sim::modbus::{serve_tcp, MapConfig, Simulator};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A simulated Modbus TCP device served in-process.
pub struct SimTcp {
    pub addr: SocketAddr,
    pub sim: Arc<Simulator>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimTcp {
    /// Serve `map` on 127.0.0.1:0.
    pub async fn start(map: &str) -> SimTcp {
        let sim = Arc::new(
            Simulator::new(&MapConfig::from_toml_str(map).expect("sim map")).expect("simulator"),
        );
        Self::serve(sim, "127.0.0.1:0").await
    }

    /// Serve an existing simulator on `addr` (used to come back on the same port).
    pub async fn serve(sim: Arc<Simulator>, addr: &str) -> SimTcp {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let s = sim.clone();
        let task = tokio::spawn(async move {
            let _ = serve_tcp(listener, s, async move {
                let _ = stopped.await;
            })
            .await;
        });
        SimTcp {
            addr,
            sim,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stop serving (closes the listener and every connection).
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Parse a tag map given as text.
pub fn map(text: &str) -> TagMap {
    match parse_str("test.toml", text) {
        Ok((m, _)) => m,
        Err(e) => panic!("tag map invalid: {e:?}"),
    }
}

/// Acquisition running with its output channel.
pub struct Running {
    pub acq: Option<Acquisition>,
    pub rx: mpsc::Receiver<Output>,
    /// Events (and their gaps) seen so far.
    pub events: Vec<Output>,
    pub seen: Vec<Reading>,
}

impl Running {
    pub fn start(map: &TagMap) -> Running {
        let (tx, rx) = mpsc::channel(1024);
        Running {
            acq: Some(Acquisition::start(map, tx)),
            rx,
            seen: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Receive readings until `pred` holds over everything seen so far, or `timeout` passes.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&[Reading]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.seen) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Output::Readings(b))) => self.seen.extend(b),
                Ok(Some(e)) => self.events.push(e),
                _ => return pred(&self.seen),
            }
        }
    }

    /// Receive until `pred` holds over the events (and their gaps) seen so far, or `timeout`.
    pub async fn until_events(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&[flowsquare_wire::Event], &[edge_agent::buffer::GapRow]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let (evs, gaps) = self.captured();
            if pred(&evs, &gaps) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Output::Readings(b))) => self.seen.extend(b),
                Ok(Some(e)) => self.events.push(e),
                _ => {
                    let (evs, gaps) = self.captured();
                    return pred(&evs, &gaps);
                }
            }
        }
    }

    /// Keep receiving until `cond` holds over the whole state (readings, events, stats), or
    /// `timeout` passes; never blocks the runtime between checks.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut cond: impl FnMut(&Running) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left.min(Duration::from_millis(50)), self.rx.recv()).await {
                Ok(Some(Output::Readings(b))) => self.seen.extend(b),
                Ok(Some(e)) => self.events.push(e),
                Ok(None) => return cond(self),
                Err(_) => {}
            }
        }
    }

    /// Every event and gap received so far, in order.
    pub fn captured(&self) -> (Vec<flowsquare_wire::Event>, Vec<edge_agent::buffer::GapRow>) {
        let mut evs = Vec::new();
        let mut gaps = Vec::new();
        for o in &self.events {
            if let Output::Events { events, gaps: g } = o {
                evs.extend(events.iter().cloned());
                gaps.extend(g.iter().cloned());
            }
        }
        (evs, gaps)
    }

    pub async fn stop(&mut self) {
        if let Some(a) = self.acq.take() {
            a.stop().await;
        }
    }
}
