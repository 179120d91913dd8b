//! A pseudo-terminal pair made by the simulator (libc `openpty`), its slave published under a
//! stable symlink (`<run-dir>/trk-01.tty`) for the agent's tag map. The simulator writes the
//! master side without blocking: with nobody reading, sentences are dropped as on a real wire.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::error::TerminalError;

/// The master side and the published link.
#[derive(Debug)]
pub struct Pty {
    master: OwnedFd,
    // Held open so the slave never hangs up between agent connections.
    _slave: OwnedFd,
    /// The slave device (`/dev/pts/N`).
    pub slave_path: PathBuf,
}

impl Pty {
    /// Open a pair and point `link` at its slave (replacing an old link).
    pub fn open(link: &Path) -> Result<Pty, TerminalError> {
        let err = |what: &str| TerminalError::Io {
            what: format!("{what} for {}", link.display()),
            source: std::io::Error::last_os_error(),
        };
        let (mut m, mut s) = (-1, -1);
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: openpty writes two fds and a NUL-terminated name into buffers we own; no
        // termios or window size is passed.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                name.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(err("openpty"));
        }
        // SAFETY: openpty succeeded, so both fds are open and owned by nobody else.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        // SAFETY: the fd is valid; F_SETFL with O_NONBLOCK only changes its flags.
        unsafe {
            let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        // SAFETY: openpty NUL-terminates the name within the 128 bytes.
        let slave_path = PathBuf::from(
            unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        );
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&slave_path, link).map_err(|e| TerminalError::Io {
            what: format!("linking {} to {}", link.display(), slave_path.display()),
            source: e,
        })?;
        Ok(Pty {
            master,
            _slave: slave,
            slave_path,
        })
    }

    /// Write what fits now; the rest is dropped.
    pub fn write_nonblocking(&self, bytes: &[u8]) {
        // SAFETY: writing from a valid buffer of `bytes.len()` bytes to an open fd.
        let _ = unsafe { libc::write(self.master.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    }
}
