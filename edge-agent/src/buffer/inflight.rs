//! `buffer.db.inflight`: how many readings were handed to the buffer writer, so that a crash
//! window can say how many readings it lost.
//!
//! The run loop (through [`super::Buffer::append`]) records the running total of readings it
//! handed to the writer with one plain `pwrite` per hand-over (no fsync: the page cache survives
//! a process crash, which is what this is for). The writer records the committed total in the
//! same counter space in `meta.committed_total`, in each commit transaction. After a crash,
//! `handed − committed` readings were handed over and never committed: the count of the
//! `unclean-shutdown` gap. When the file is missing, damaged, of another buffer epoch or behind
//! the committed total (a power loss can lose page-cache writes), the count is unknown.
//!
//! Layout (28 bytes, little endian): magic `FSIF`, buffer epoch u64, handed total u64, check
//! u64 (`epoch ^ handed`, rotated, xor a constant: a half-written or zeroed file fails it).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const MAGIC: &[u8; 4] = b"FSIF";
const LEN: usize = 28;

fn check(epoch: u64, handed: u64) -> u64 {
    (epoch ^ handed).rotate_left(17) ^ 0x5EED_F10A_5C0A_2E01
}

fn encode(epoch: u64, handed: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..4].copy_from_slice(MAGIC);
    b[4..12].copy_from_slice(&epoch.to_le_bytes());
    b[12..20].copy_from_slice(&handed.to_le_bytes());
    b[20..28].copy_from_slice(&check(epoch, handed).to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decode a side file's bytes: `(epoch, handed)` when consistent.
pub fn decode(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() != LEN || &b[..4] != MAGIC {
        return None;
    }
    let (epoch, handed) = (u64_at(b, 4), u64_at(b, 12));
    (u64_at(b, 20) == check(epoch, handed) && epoch != 0).then_some((epoch, handed))
}

/// The side file of the database at `db`.
pub fn side_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.inflight", db.display()))
}

/// Read a side file: `(epoch, handed)`, or `None` when missing or inconsistent.
pub fn read(path: &Path) -> Option<(u64, u64)> {
    decode(&std::fs::read(path).ok()?)
}

/// The readings lost in a crash, when the side file can tell: `handed − committed` if the file
/// belongs to `epoch` and is not behind the committed total.
pub fn lost(side: Option<(u64, u64)>, epoch: u64, committed: u64) -> Option<u64> {
    let (e, handed) = side?;
    (e == epoch && handed >= committed).then(|| handed - committed)
}

/// The open side file of a running buffer.
#[derive(Debug)]
pub struct Inflight {
    file: File,
    epoch: u64,
    /// Handed total written last; `None` after a failed write (the file is then left
    /// inconsistent on purpose, so a crash count is "unknown", never wrong).
    total: Mutex<Option<u64>>,
}

impl Inflight {
    /// Create (or overwrite) the side file for `epoch`, starting at the committed total.
    pub fn create(path: &Path, epoch: u64, committed: u64) -> std::io::Result<Inflight> {
        let file = flowsquare_service::private::open_options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        flowsquare_service::private::restrict_file(path)?;
        file.set_len(LEN as u64)?;
        file.write_all_at(&encode(epoch, committed), 0)?;
        Ok(Inflight {
            file,
            epoch,
            total: Mutex::new(Some(committed)),
        })
    }

    /// `n` more readings were handed to the writer (called before they are sent to it).
    pub fn add(&self, n: u64) {
        let Ok(mut g) = self.total.lock() else {
            return;
        };
        let Some(t) = *g else { return };
        let t = t + n;
        match self.file.write_all_at(&encode(self.epoch, t), 0) {
            Ok(()) => *g = Some(t),
            Err(e) => {
                *g = None;
                // Best effort: an inconsistent file makes a crash count "unknown".
                let _ = self.file.write_all_at(&[0u8; LEN], 0);
                tracing::error!(error = %e, "cannot write the buffer's in-flight counter; a crash window will be reported with an unknown count");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_inconsistent_files() {
        let b = encode(7, 1234);
        assert_eq!(decode(&b), Some((7, 1234)));
        let mut bad = b;
        bad[13] ^= 1;
        assert_eq!(decode(&bad), None, "a flipped bit fails the check");
        assert_eq!(decode(&[0u8; LEN]), None, "zeroed");
        assert_eq!(decode(&b[..20]), None, "short");
        assert_eq!(lost(Some((7, 1234)), 7, 1200), Some(34));
        assert_eq!(
            lost(Some((7, 1234)), 8, 1200),
            None,
            "another buffer's file"
        );
        assert_eq!(
            lost(Some((7, 1000)), 7, 1200),
            None,
            "behind the committed total"
        );
        assert_eq!(lost(None, 7, 0), None);
    }

    #[test]
    fn the_file_follows_the_handed_total() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("b.db.inflight");
        let f = Inflight::create(&p, 9, 100).expect("create");
        assert_eq!(read(&p), Some((9, 100)));
        f.add(5);
        f.add(7);
        assert_eq!(read(&p), Some((9, 112)));
    }
}
