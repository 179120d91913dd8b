//! The demo's guards for a newcomer: `scripts/demo --help` prints help without building, and
//! `--dir` never empties a directory that is not the demo's own unless told to.

use std::process::Command;

use flowsquare_tests::workspace_root;

const BIN: &str = env!("CARGO_BIN_EXE_flowsquare-demo");

/// A non-empty directory that no demo made is refused (exit 1, nothing deleted); with --force
/// the refusal is gone (the run then goes on, so only the absence of the refusal is checked).
#[test]
fn dir_refuses_a_non_empty_directory_that_is_not_a_demo_dir() {
    let tmp = tempfile::tempdir().expect("tmp");
    let precious = tmp.path().join("precious.txt");
    std::fs::write(&precious, "keep me").expect("write");
    let out = Command::new(BIN)
        .arg("--dir")
        .arg(tmp.path())
        .args(["--port", "0"])
        .output()
        .expect("run flowsquare-demo");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a previous demo directory"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert!(precious.exists(), "the demo deleted a file it did not make");
}

/// `scripts/demo --help` answers at once and never runs cargo: a `cargo` first on PATH that
/// records being called must stay uncalled.
#[test]
fn scripts_demo_help_never_builds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let called = tmp.path().join("cargo-was-called");
    let fake = tmp.path().join("cargo");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", called.display()),
    )
    .expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!(
        "{}:{}",
        tmp.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for arg in ["--help", "-h"] {
        let out = Command::new("bash")
            .arg(workspace_root().join("scripts/demo"))
            .arg(arg)
            .env("PATH", &path)
            .output()
            .expect("run scripts/demo");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{arg}: {text}");
        assert!(text.contains("--dir"), "{arg}: {text}");
        assert!(!called.exists(), "scripts/demo {arg} ran cargo");
    }
}
