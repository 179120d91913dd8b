//! Running under systemd as a `Type=notify` service, without linking libsystemd.
//!
//! # Layout
//! - `notify.rs`: the `sd_notify` datagram protocol over `$NOTIFY_SOCKET` (path or abstract
//!   `@name` socket): `READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`; the
//!   watchdog period from `$WATCHDOG_USEC`/`$WATCHDOG_PID`. Outside systemd every call is a no-op.
//! - `watchdog.rs`: pure progress bookkeeping: the service pings the watchdog only while every
//!   loop it depends on shows progress, so a wedged process is restarted by systemd.

mod notify;
mod watchdog;

pub use notify::{message, Notifier};
pub use watchdog::{Progress, Stall};
