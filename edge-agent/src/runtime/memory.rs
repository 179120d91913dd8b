//! Memory the agent needed only to start: handed back once it runs.
//!
//! Loading a tag map and starting every stage touches code and heap the running agent never
//! uses again (the TOML parser, validation, the command line, the birth, SQLite's schema and
//! checks). Both stay resident unless handed back: the free heap with `malloc_trim`, and the
//! start-up code's pages of the executable with `madvise(MADV_PAGEOUT)` (Linux ≥ 5.4; older
//! kernels refuse it and nothing changes). The executable's pages are clean file pages: the ones
//! the running agent executes come back on their first use, from the page cache or the file.
//! Measured by `scripts/bench-footprint` (RssFile at 10,000 tags: 10.2 MB before, see
//! benches/README.md for after).

/// Give back the free heap and the executable's pages (called when the agent is ready, and by
/// `run` right after loading the tag map for the heap).
pub fn release_after_start() {
    trim_heap();
    page_out_executable();
}

/// Return free heap pages of every malloc arena to the kernel.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `MADV_PAGEOUT` over the read-only and executable mappings of our own executable file.
fn page_out_executable() {
    #[cfg(target_os = "linux")]
    {
        let (Ok(exe), Ok(maps)) = (
            std::fs::read_link("/proc/self/exe"),
            std::fs::read_to_string("/proc/self/maps"),
        ) else {
            return;
        };
        let exe = exe.to_string_lossy();
        for (start, end) in exe_ranges(&maps, &exe) {
            // SAFETY: the range is a whole mapping of our executable that /proc/self/maps lists
            // as not writable; paging out clean file pages changes no content, only residency
            // (they are read back on the next access). The result is ignored on purpose: an
            // older kernel answers EINVAL and the pages simply stay.
            unsafe {
                let (addr, len) = (start as *mut libc::c_void, end - start);
                // No read-ahead on later faults: only the pages the agent executes come back,
                // not their 64 KiB neighbourhoods.
                libc::madvise(addr, len, libc::MADV_RANDOM);
                libc::madvise(addr, len, libc::MADV_PAGEOUT);
            }
        }
    }
}

/// The (start, end) of every non-writable mapping of file `exe` in a `/proc/self/maps` text.
fn exe_ranges(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3)?;
            if path != exe || perms.as_bytes().get(1) == Some(&b'w') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (b > a).then_some((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_read_only_mappings() {
        let maps = "\
557383c9d000-557383fef000 r--p 00000000 fe:00 5548093    /opt/fs/edge-agent
557383fef000-5573849e0000 r-xp 00351000 fe:00 5548093    /opt/fs/edge-agent
557384a49000-557384a51000 rw-p 00da9000 fe:00 5548093    /opt/fs/edge-agent
557384a51000-557384a52000 rw-p 00000000 00:00 0
7fc0932a0000-7fc0933f6000 r-xp 00026000 fe:00 326279    /usr/lib/x86_64-linux-gnu/libc.so.6
";
        assert_eq!(
            exe_ranges(maps, "/opt/fs/edge-agent"),
            vec![
                (0x557383c9d000, 0x557383fef000),
                (0x557383fef000, 0x5573849e0000)
            ]
        );
    }

    #[test]
    fn releasing_twice_is_harmless() {
        release_after_start();
        release_after_start();
    }
}
