//! The run loop of one event definition: read the trigger every `poll_interval`, and when a
//! new record is on display read its fields, check the trigger did not move meanwhile (a torn
//! record), hand it to the buffer, wait until it is committed, then write the handshake.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowsquare_wire::{Event, WireValue};
use tokio::sync::watch;

use super::def::EventDef;
use super::error::IoError;
use super::state::{digest, is_blank, Cursor, Missed, Step, Tracker};
use crate::drivers::stats::DeviceStats;
use crate::drivers::{Output, OutputTx};
use crate::model::now_ms;
use crate::model::TriggerMode;
use crate::model::{GapReason, GapRow, SharedLedger};

/// Longest wait for the buffer to confirm a commit; past it the record is read again.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The fields of one record as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// Decoded fields, in definition order.
    pub fields: Vec<(String, WireValue)>,
    /// Fields that were read but could not be decoded: (name, why).
    pub bad: Vec<(String, String)>,
}

/// The I/O an event definition needs from its device. One implementation per protocol
/// (`drivers/modbus/events.rs`); the loop and the bookkeeping are shared.
pub trait EventIo: Send {
    /// Read the trigger (a sequence number, or a flag as 0/1).
    fn read_trigger(&mut self) -> impl Future<Output = Result<u64, IoError>> + Send;
    /// Read the field block.
    fn read_record(&mut self) -> impl Future<Output = Result<Record, IoError>> + Send;
    /// Write the handshake for the record the PLC numbers `plc_seq`.
    fn write_handshake(&mut self, plc_seq: u64)
        -> impl Future<Output = Result<(), IoError>> + Send;
    /// Drop the link (after an error, or at the end).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// The event's fields: the record's, plus `plc_seq` (sequence mode) and `bad_fields` when
/// some could not be decoded (the record is kept; it must never be lost for one bad value).
pub fn event_fields(def: &EventDef, plc_seq: u64, rec: Record) -> Vec<(String, WireValue)> {
    let mut f = rec.fields;
    if def.trigger.mode == TriggerMode::Sequence {
        f.push(("plc_seq".into(), WireValue::Int(plc_seq as i64)));
    }
    if !rec.bad.is_empty() {
        let list: Vec<String> = rec.bad.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        f.push(("bad_fields".into(), WireValue::Text(list.join("; "))));
    }
    f
}

/// Read the trigger and the record once (for `read --once`): the trigger value and the record
/// on display as an event numbered by the trigger.
pub async fn read_once<B: EventIo>(def: &EventDef, io: &mut B) -> Result<(u64, Event), IoError> {
    let v = io.read_trigger().await?;
    let rec = io.read_record().await?;
    io.close().await;
    Ok((
        v,
        Event {
            source: def.name.clone(),
            kind: def.kind.clone(),
            seq: v,
            ts_ms: now_ms(),
            fields: event_fields(def, v, rec),
        },
    ))
}

/// How captured records are handled.
#[derive(Clone)]
pub struct EventOptions {
    /// The buffer's commit confirmations and persisted cursors (`None`: nothing is persisted,
    /// e.g. tests reading the output channel; a record then counts as committed once handed
    /// over).
    pub ledger: Option<SharedLedger>,
    /// Write handshakes to the PLC (false for `edge-agent read`, which persists nothing: a PLC
    /// must never be told a record is safe when it is not).
    pub write_handshake: bool,
}

impl Default for EventOptions {
    fn default() -> Self {
        EventOptions {
            ledger: None,
            write_handshake: true,
        }
    }
}

/// The state of one event definition's capture, without its I/O binding: a task per
/// definition drives it with [`run`]; a loop that owns a shared link (a Modbus RTU bus) calls
/// [`Runner::poll`] with a binding that borrows that link.
pub struct Runner {
    def: EventDef,
    tracker: Tracker,
    out: OutputTx,
    ledger: Option<SharedLedger>,
    acks: bool,
    stats: Arc<DeviceStats>,
    failing: bool,
    failed_now: bool,
    handshake_failing: bool,
    /// Trigger value at which a blank record was skipped: not read again while it stays.
    blank_at: Option<u64>,
    shutdown: watch::Receiver<bool>,
}

/// The output channel closed: the agent is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl Runner {
    /// A runner for `def`, resuming after the ledger's cursor (if any). `shutdown` ends a wait
    /// for the buffer's confirmation (the record is committed with the last outputs and
    /// acknowledged at the next start).
    pub fn new(
        def: EventDef,
        out: OutputTx,
        opts: EventOptions,
        stats: Arc<DeviceStats>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let EventOptions {
            ledger,
            write_handshake,
        } = opts;
        let last = ledger.as_ref().and_then(|l| l.cursor(&def.name));
        if let Some(c) = last {
            tracing::info!(event = %def.name, seq = c.seq, acked = c.acked, "event capture resumes after the last committed record");
        }
        Runner {
            tracker: Tracker::new(def.trigger.mode, def.seq_rollover, last),
            acks: write_handshake && def.handshake.is_some(),
            def,
            out,
            ledger,
            stats,
            failing: false,
            failed_now: false,
            handshake_failing: false,
            blank_at: None,
            shutdown,
        }
    }

    /// Its definition.
    pub fn def(&self) -> &EventDef {
        &self.def
    }

    /// One poll over `io`: read the trigger and act on it. `Ok(true)`: poll again at once (the
    /// trigger moved while the record was read).
    pub async fn poll<B: EventIo>(&mut self, io: &mut B) -> Result<bool, Stopped> {
        self.failed_now = false;
        let r = self.step(io).await;
        if !self.failed_now && self.failing {
            tracing::info!(event = %self.def.name, "event reads work again");
            self.failing = false;
        }
        r
    }
}

/// Run `runner` on `io` every `poll_interval` until `shutdown` turns true.
pub async fn run<B: EventIo>(mut runner: Runner, mut io: B, mut shutdown: watch::Receiver<bool>) {
    let interval = runner.def.poll_interval;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        match runner.poll(&mut io).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(Stopped) => break,
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
    }
    io.close().await;
}

impl Runner {
    fn fail(&mut self, what: &str, e: &IoError) {
        self.failed_now = true;
        if !self.failing {
            tracing::warn!(event = %self.def.name, error = %e, "event {what} failed; retrying every poll");
        }
        self.failing = true;
    }

    async fn step<B: EventIo>(&mut self, io: &mut B) -> Result<bool, Stopped> {
        let value = match io.read_trigger().await {
            Ok(v) => v,
            Err(e) => {
                self.fail("trigger read", &e);
                if matches!(e, IoError::Link(_)) {
                    io.close().await;
                }
                return Ok(false);
            }
        };
        self.stats
            .set("event_trigger", "last trigger value read", value as f64);
        match self.tracker.observe(value) {
            Step::Unchanged { unacked } => {
                if let (Some(seq), true) = (unacked, self.acks) {
                    self.handshake(io, seq).await;
                }
                Ok(false)
            }
            Step::Capture { .. } if self.blank_at == Some(value) => Ok(false),
            Step::Capture { seq, missed } => self.capture(io, value, seq, missed, None).await,
            Step::Verify { seq, digest } => {
                self.capture(io, value, seq, Missed::None, Some(digest))
                    .await
            }
        }
    }

    async fn capture<B: EventIo>(
        &mut self,
        io: &mut B,
        value: u64,
        seq: u64,
        missed: Missed,
        same_as: Option<u64>,
    ) -> Result<bool, Stopped> {
        let rec = match io.read_record().await {
            Ok(r) => r,
            Err(e) => {
                self.fail("record read", &e);
                if matches!(e, IoError::Link(_)) {
                    io.close().await;
                }
                return Ok(false);
            }
        };
        // The PLC may have written the next record while this one was read.
        match io.read_trigger().await {
            Ok(v) if v == value => {}
            Ok(_) => {
                self.stats.add(
                    "events_torn_reads",
                    "records read again because the trigger moved during the read",
                    1.0,
                );
                return Ok(true);
            }
            Err(e) => {
                self.fail("trigger re-read", &e);
                return Ok(false);
            }
        }
        self.blank_at = None;
        if is_blank(
            self.def.trigger.mode,
            value,
            &rec.fields,
            !rec.bad.is_empty(),
        ) {
            tracing::debug!(event = %self.def.name, "the record on display is blank (sequence 0, every field zero or empty): not an event");
            self.stats.add(
                "events_blank_skipped",
                "blank records (sequence 0, every field zero or empty) not captured",
                1.0,
            );
            self.blank_at = Some(value);
            return Ok(false);
        }
        if !rec.bad.is_empty() {
            self.stats.add(
                "events_bad_fields",
                "event fields that could not be decoded (kept in bad_fields)",
                rec.bad.len() as f64,
            );
        }
        let ts_ms = now_ms();
        let fields = event_fields(&self.def, self.tracker.plc_seq(seq), rec);
        let dg = digest(&fields);
        if same_as == Some(dg) {
            // Restart with the flag still high: it is the committed record.
            self.tracker.matched();
            if let Some(c) = self.tracker.last().filter(|c| !c.acked) {
                if self.acks {
                    self.handshake(io, c.seq).await;
                }
            }
            return Ok(false);
        }
        let mut gaps = Vec::new();
        let from = self.tracker.last().map_or(ts_ms, |c| c.ts_ms);
        let count = match missed {
            Missed::None => None,
            Missed::Count(n) => Some(n),
            Missed::Unknown => Some(0),
        };
        if let Some(n) = count {
            tracing::warn!(
                event = %self.def.name, seq, missed = n,
                "event sequence skipped {}: reporting a missed-event gap",
                if n == 0 { "an unknown number of records (jump of more than half the range)".to_string() } else { format!("{n} record(s)") }
            );
            gaps.push(GapRow {
                tags: Vec::new(),
                range: from..ts_ms,
                count: n,
                reason: GapReason::MissedEvent,
            });
        }
        let event = Event {
            source: self.def.name.clone(),
            kind: self.def.kind.clone(),
            seq,
            ts_ms,
            fields,
        };
        if self
            .out
            .send(Output::Events {
                events: vec![event],
                gaps,
            })
            .await
            .is_err()
        {
            return Err(Stopped);
        }
        if let Some(l) = &self.ledger {
            let mut stop = self.shutdown.clone();
            let committed = tokio::select! {
                c = l.wait_committed(&self.def.name, seq, COMMIT_TIMEOUT) => c,
                _ = stop.wait_for(|s| *s) => {
                    tracing::info!(event = %self.def.name, seq, "stopping before the buffer confirmed the record: it is committed with the last outputs, its handshake is written at the next start");
                    return Err(Stopped);
                }
            };
            if !committed {
                tracing::warn!(event = %self.def.name, seq, "the buffer did not confirm the record within {}s; reading it again", COMMIT_TIMEOUT.as_secs());
                return Ok(false);
            }
        }
        self.tracker.committed(Cursor {
            seq,
            digest: dg,
            ts_ms,
            acked: false,
        });
        self.stats
            .add("events_captured", "event records captured", 1.0);
        if let Some(n) = count {
            self.stats.add(
                "events_missed",
                "event records skipped by the device's sequence (reported as gaps)",
                n as f64,
            );
        }
        if self.acks {
            self.handshake(io, seq).await;
        }
        Ok(false)
    }

    async fn handshake<B: EventIo>(&mut self, io: &mut B, seq: u64) {
        match io.write_handshake(self.tracker.plc_seq(seq)).await {
            Ok(()) => {
                if self.handshake_failing {
                    tracing::info!(event = %self.def.name, seq, "handshake written");
                }
                self.handshake_failing = false;
                self.tracker.acked();
                self.stats
                    .add("events_handshakes", "handshakes written to the device", 1.0);
                if let Some(l) = &self.ledger {
                    l.mark_acked(&self.def.name, seq).await;
                }
            }
            Err(e) => {
                self.stats.add(
                    "events_handshake_failures",
                    "handshake writes that failed (retried every poll)",
                    1.0,
                );
                if !self.handshake_failing {
                    tracing::warn!(event = %self.def.name, seq, error = %e, "handshake write failed; retrying every poll");
                }
                self.handshake_failing = true;
                if matches!(e, IoError::Link(_)) {
                    io.close().await;
                }
            }
        }
    }
}
