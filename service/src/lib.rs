//! Running under systemd as a `Type=notify` service, without linking libsystemd; and the
//! shared data clock.
//!
//! # Layout
//! - `clock.rs`: the data clock — real, or a simulated clock shared by several processes through
//!   `FLOWSQUARE_CLOCK=sim:<sim_start_ms>:<real_start_ms>:<speed>` (`clock::now_ms()`);
//! - `notify.rs`: the `sd_notify` datagram protocol over `$NOTIFY_SOCKET` (path or abstract
//!   `@name` socket): `READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`; the
//!   watchdog period from `$WATCHDOG_USEC`/`$WATCHDOG_PID`. Outside systemd every call is a no-op.
//! - `watchdog.rs`: pure progress bookkeeping: the service pings the watchdog only while every
//!   loop it depends on shows progress, so a wedged process is restarted by systemd.
//! - `pipe.rs`: command-line output into a closed pipe (`… | head`) exits 0 quietly instead of
//!   panicking with "Broken pipe".
//! - `secret.rs`: secrets from a file or a systemd credential (`LoadCredential=`), inline ones
//!   flagged; the one redaction of passwords in URLs and connection strings (`redact`,
//!   `SecretUrl`), used wherever a URL is logged or printed.
//! - `private.rs`: the files and directories the services create are 0600/0700 whatever the
//!   umask.
//! - `text.rs`: configuration files as UTF-8, or an error at the first bad byte's line:column.

pub mod clock;
mod notify;
pub mod pipe;
pub mod private;
pub mod secret;
pub mod text;
mod watchdog;

pub use notify::{message, Notifier};
pub use watchdog::{Progress, Stall};
