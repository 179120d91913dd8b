//! Fault injection, per unit, changeable at run time through a [`FaultHandle`].
//!
//! What each fault does on the wire:
//!
//! * `silent`: the request is read and dropped; nothing is sent (the client times out).
//!   Requests to a silent unit still count in [`crate::modbus::UnitStats::requests`].
//! * `delay`: the answer is sent after sleeping this long. On RTU the whole bus waits (the
//!   requests are served one at a time, as on a real line).
//! * `exceptions`: a read touching `[from, to]` of the given table (or any table) is
//!   answered with the exception code instead of data; with `writes = true`, writes too.
//!   The first matching rule wins.
//! * `drop_connection_every = N` (TCP only; ignored on RTU): the Nth, 2Nth, … request of a
//!   TCP connection (counted per connection and unit) is neither executed nor answered: the
//!   server closes the connection instead.
//! * `garbage_every = N`: the Nth, 2Nth, … answer of the unit is replaced by garbage of the
//!   same length as the real answer (the request itself *is* executed, so a write is stored):
//!   - TCP: the MBAP header stays valid (same transaction id, protocol id 0, correct length,
//!     same unit id) so the stream stays in sync; the PDU is function code `0x00` followed
//!     by pseudo-random bytes. A tokio-modbus client reports a function-code mismatch and
//!     can go on using the connection.
//!   - RTU: the unit id byte is kept, every other byte is pseudo-random and the CRC is
//!     deliberately wrong (line noise): a master sees a CRC error or a timeout.
//!   - Through the tokio-modbus [`Service`](tokio_modbus::server::Service) impl (when the
//!     service is plugged into tokio-modbus's own servers), garbage is
//!     `Response::Custom(0x00, pseudo-random bytes)`, the closest that API allows.
//! * `wrong_unit_every = N`: the Nth, 2Nth, … answer carries unit id `id + 1` (256 wraps to
//!   1, never 0) instead of `id`, with a valid frame (MBAP on TCP, CRC on RTU) and the real
//!   PDU. A tokio-modbus client reports a header mismatch. Not possible through the
//!   tokio-modbus `Service` impl (its servers copy the request header): ignored there.
//!
//! `garbage_every` and `wrong_unit_every` count answers (exceptions included, silent
//! requests excluded) with one counter per unit; when both hit the same answer, garbage
//! wins.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::config::{ExceptionConfig, FaultConfig};
use super::generator::splitmix64;
use super::values::RegisterKind;

/// An address range answered with an exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionRule {
    /// Modbus exception code (2 = IllegalDataAddress, 4 = ServerDeviceFailure, …).
    pub code: u8,
    /// Table; `None` = any table.
    pub kind: Option<RegisterKind>,
    /// First address.
    pub from: u16,
    /// Last address, inclusive.
    pub to: u16,
    /// Also for writes (otherwise reads only).
    pub writes: bool,
}

impl ExceptionRule {
    /// A read-only rule for `[from, to]` of `kind` (`None` = any table).
    pub fn new(code: u8, kind: Option<RegisterKind>, from: u16, to: u16) -> Self {
        ExceptionRule {
            code,
            kind,
            from,
            to,
            writes: false,
        }
    }

    /// Does a request on `kind` covering `count` addresses from `address` touch this range?
    pub fn matches(&self, kind: RegisterKind, address: u16, count: u16, is_write: bool) -> bool {
        if is_write && !self.writes {
            return false;
        }
        if self.kind.is_some_and(|k| k != kind) || count == 0 {
            return false;
        }
        let first = u32::from(address);
        let last = first + u32::from(count) - 1;
        first <= u32::from(self.to) && last >= u32::from(self.from)
    }

    fn from_config(c: &ExceptionConfig) -> Result<Self, String> {
        if c.code == 0 {
            return Err("exception code 0 is not a Modbus exception (use 1–255)".into());
        }
        let to = c.to.unwrap_or(c.from);
        if to < c.from {
            return Err(format!(
                "exception range to = {to} is below from = {}",
                c.from
            ));
        }
        Ok(ExceptionRule {
            code: c.code,
            kind: c.kind,
            from: c.from,
            to,
            writes: c.writes,
        })
    }
}

/// The faults of one unit (see the module documentation for what each does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Never answer.
    pub silent: bool,
    /// Sleep before answering.
    pub delay: Option<Duration>,
    /// Exception ranges, first match wins.
    pub exceptions: Vec<ExceptionRule>,
    /// TCP: close the connection on every Nth request (0 = never).
    pub drop_connection_every: u32,
    /// Replace every Nth answer with garbage (0 = never).
    pub garbage_every: u32,
    /// Send every Nth answer with a wrong unit id (0 = never).
    pub wrong_unit_every: u32,
}

impl Faults {
    /// Faults as configured in the map (`exception` and `exceptions` are merged, `exception`
    /// first).
    pub fn from_config(c: &FaultConfig) -> Result<Self, String> {
        let exceptions = c
            .exception
            .iter()
            .chain(&c.exceptions)
            .map(ExceptionRule::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Faults {
            silent: c.silent,
            delay: c.delay.map(|d| d.0),
            exceptions,
            drop_connection_every: c.drop_connection_every,
            garbage_every: c.garbage_every,
            wrong_unit_every: c.wrong_unit_every,
        })
    }

    /// The exception code for a request, if a rule matches.
    pub fn exception_for(
        &self,
        kind: RegisterKind,
        address: u16,
        count: u16,
        is_write: bool,
    ) -> Option<u8> {
        self.exceptions
            .iter()
            .find(|r| r.matches(kind, address, count, is_write))
            .map(|r| r.code)
    }
}

/// Shared, mutable faults of one unit. Cloning is cheap and every clone controls the same unit;
/// a change applies from the next request on.
#[derive(Debug, Clone, Default)]
pub struct FaultHandle(Arc<RwLock<Faults>>);

impl FaultHandle {
    /// A handle holding `faults`.
    pub fn new(faults: Faults) -> Self {
        FaultHandle(Arc::new(RwLock::new(faults)))
    }

    /// A snapshot of the current faults.
    pub fn get(&self) -> Faults {
        self.read(Faults::clone)
    }

    /// Run `f` on the current faults without cloning them.
    pub fn read<R>(&self, f: impl FnOnce(&Faults) -> R) -> R {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replace all faults.
    pub fn set(&self, faults: Faults) {
        self.update(|f| *f = faults);
    }

    /// Change the faults in place.
    pub fn update(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// Remove every fault.
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// Turn `silent` on or off.
    pub fn set_silent(&self, silent: bool) {
        self.update(|f| f.silent = silent);
    }

    /// Set or remove the answer delay.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.update(|f| f.delay = delay);
    }

    /// Add an exception range (after the existing ones).
    pub fn add_exception(&self, rule: ExceptionRule) {
        self.update(|f| f.exceptions.push(rule));
    }

    /// Remove every exception range.
    pub fn clear_exceptions(&self) {
        self.update(|f| f.exceptions.clear());
    }

    /// Set `drop_connection_every` (0 = off).
    pub fn set_drop_connection_every(&self, n: u32) {
        self.update(|f| f.drop_connection_every = n);
    }

    /// Set `garbage_every` (0 = off).
    pub fn set_garbage_every(&self, n: u32) {
        self.update(|f| f.garbage_every = n);
    }

    /// Set `wrong_unit_every` (0 = off).
    pub fn set_wrong_unit_every(&self, n: u32) {
        self.update(|f| f.wrong_unit_every = n);
    }
}

/// Is the `count`th event (1-based) one of every `every`th?
pub(crate) fn nth(every: u32, count: u64) -> bool {
    every > 0 && count > 0 && count % u64::from(every) == 0
}

/// The unit id a `wrong_unit_every` answer carries.
pub fn wrong_unit_id(id: u8) -> u8 {
    match id.wrapping_add(1) {
        0 => 1,
        other => other,
    }
}

/// `len` pseudo-random bytes from `seed`.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut state = seed;
    while out.len() < len {
        state = splitmix64(state);
        out.extend(state.to_le_bytes().iter().take(len - out.len()));
    }
    out
}

/// A garbage PDU of `len` bytes (at least 1): function code 0x00, then noise.
pub(crate) fn garbage_pdu(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend(noise(len.saturating_sub(1), seed));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_overlapping_ranges() {
        let r = ExceptionRule::new(2, Some(RegisterKind::Holding), 100, 110);
        assert!(r.matches(RegisterKind::Holding, 100, 1, false));
        assert!(r.matches(RegisterKind::Holding, 95, 6, false));
        assert!(!r.matches(RegisterKind::Holding, 95, 5, false));
        assert!(r.matches(RegisterKind::Holding, 110, 125, false));
        assert!(!r.matches(RegisterKind::Holding, 111, 10, false));
        assert!(!r.matches(RegisterKind::Input, 100, 1, false));
        assert!(!r.matches(RegisterKind::Holding, 100, 1, true));
        let any = ExceptionRule {
            writes: true,
            ..ExceptionRule::new(4, None, 0, 0)
        };
        assert!(any.matches(RegisterKind::Coil, 0, 1, true));
        assert!(any.matches(RegisterKind::Input, 0, 1, false));
        assert!(!any.matches(RegisterKind::Input, 65_535, 1, false));
    }

    #[test]
    fn handle_clones_share_state() {
        let h = FaultHandle::default();
        let h2 = h.clone();
        h.set_silent(true);
        h.add_exception(ExceptionRule::new(3, None, 5, 5));
        assert!(h2.get().silent);
        assert_eq!(
            h2.read(|f| f.exception_for(RegisterKind::Holding, 5, 1, false)),
            Some(3)
        );
        h2.clear();
        assert_eq!(h.get(), Faults::default());
    }

    #[test]
    fn helpers() {
        assert!(!nth(0, 5));
        assert!(!nth(3, 0));
        assert!(nth(3, 3) && nth(3, 6) && !nth(3, 4));
        assert_eq!(wrong_unit_id(1), 2);
        assert_eq!(wrong_unit_id(255), 1);
        assert_eq!(garbage_pdu(5, 1).len(), 5);
        assert_eq!(garbage_pdu(5, 1)[0], 0);
        assert_eq!(garbage_pdu(0, 1).len(), 1);
        assert_eq!(noise(13, 7), noise(13, 7));
    }
}
