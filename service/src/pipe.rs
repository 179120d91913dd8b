//! Command-line output into a closed pipe (`edge-agent buffer dump | head`).
//!
//! Rust ignores SIGPIPE, so a write to a pipe whose reader is gone fails with EPIPE and
//! `println!` panics with "failed printing to stdout: Broken pipe". A CLI should instead stop
//! quietly like every Unix filter. Two choices exist: restore the default SIGPIPE action (the
//! process is killed by the signal; shells report status 141, which `set -o pipefail` treats as a
//! failure, and the signal would also hit any socket written without `MSG_NOSIGNAL`) or exit 0
//! when standard output is gone. We exit 0: `cmd | head` succeeds under `pipefail`, and network
//! writes keep their ordinary error handling.
//!
//! [`exit_quietly_on_broken_pipe`] installs a panic hook that recognises exactly the panic of
//! `print!`/`println!` on a broken standard output and exits the process with status 0 and no
//! message; every other panic goes to the previous hook unchanged.

use std::io::Write as _;

/// Install the hook (call first thing in `main`).
pub fn exit_quietly_on_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The payload of a formatted panic is a String, of a literal one a &str.
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if msg.is_some_and(is_stdout_broken_pipe) {
            // Nothing more can be written: flushing the rest of stdout would fail the same way.
            let _ = std::io::stderr().flush();
            std::process::exit(0);
        }
        previous(info);
    }));
}

/// The message `print!`/`println!` panic with when standard output's reader is gone.
fn is_stdout_broken_pipe(msg: &str) -> bool {
    msg.starts_with("failed printing to stdout") && msg.to_ascii_lowercase().contains("broken pipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_broken_stdout_panic_is_recognised() {
        // EPIPE as the OS reports it (Linux: 32).
        let e = std::io::Error::from_raw_os_error(32);
        // The exact text `std::io::_print` panics with.
        assert!(is_stdout_broken_pipe(&format!(
            "failed printing to stdout: {e}"
        )));
        assert!(!is_stdout_broken_pipe(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_stdout_broken_pipe(
            "failed printing to stdout: No space left on device"
        ));
        assert!(!is_stdout_broken_pipe("index out of bounds"));
    }
}
