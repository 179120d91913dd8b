//! Log capture for the library's tests: one global subscriber for the whole test binary,
//! installed by the first test that asks, writing every event (DEBUG and up) into one buffer.
//!
//! A thread's own subscriber (`tracing::subscriber::set_default`) is not reliable while tests
//! run in parallel: another test dropping its subscriber rebuilds the callsites' interest cache,
//! and this thread's events can then be skipped (seen: a refusal test lost every line after its
//! second). Tests read the shared text and look for their own lines (by request id, or by names
//! only they use); a check that something is *never* logged is only stronger on the whole text.

use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let w = Buf(Arc::clone(&buf));
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::set_global_default(sub)
            .expect("no other global subscriber in the library's tests");
        buf
    })
}

/// Start capturing (before the code under test runs).
pub(crate) fn start() {
    buffer();
}

/// Everything captured so far, from every test of the binary.
pub(crate) fn text() -> String {
    String::from_utf8_lossy(&buffer().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}
