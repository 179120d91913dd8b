//! Files and directories only the service's user may read: directories 0700, files 0600, set
//! explicitly (whatever the umask; a service run by hand usually has 022).

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the directories the services create.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files the services create.
pub const FILE_MODE: u32 = 0o600;

/// Create `dir` and whichever of its parents are missing, each 0700. Directories that exist
/// already are left as they are (a buffer in the working directory must not change its mode).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.as_os_str().is_empty() && !p.exists() {
        missing.push(p);
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => std::fs::set_permissions(d, Permissions::from_mode(DIR_MODE))?,
            // Made meanwhile by someone else: theirs, left alone.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Make the existing file `path` 0600; a missing file is not an error.
pub fn restrict_file(path: &Path) -> io::Result<()> {
    match std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Options that create a file 0600 (and [`restrict_file`] after opening makes an existing one
/// 0600 too).
pub fn open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Create (or truncate) `path` for writing, 0600 whatever the umask.
pub fn create_file(path: &Path) -> io::Result<std::fs::File> {
    let f = open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// The permission bits of `path` (tests, `check` output).
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_directories_and_files_are_private_whatever_the_umask() {
        let base = std::env::temp_dir().join(format!("fs-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("base");
        std::fs::set_permissions(&base, Permissions::from_mode(0o755)).expect("chmod");
        let deep = base.join("a").join("b");
        create_dir_all(&deep).expect("create");
        assert_eq!(
            mode_of(&base).expect("base"),
            0o755,
            "an existing directory is kept"
        );
        assert_eq!(mode_of(&base.join("a")).expect("a"), 0o700);
        assert_eq!(mode_of(&deep).expect("b"), 0o700);
        create_dir_all(&deep).expect("again");
        let f = deep.join("f");
        std::fs::write(&f, "x").expect("write");
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).expect("chmod");
        restrict_file(&f).expect("restrict");
        assert_eq!(mode_of(&f).expect("f"), 0o600);
        restrict_file(&deep.join("missing")).expect("missing is fine");
        drop(create_file(&deep.join("g")).expect("g"));
        assert_eq!(mode_of(&deep.join("g")).expect("g"), 0o600);
        let _ = std::fs::remove_dir_all(&base);
    }
}
