//! `herdwatch check` as a user without CAP_BPF must fail with a clear, actionable message.
mod common;

use std::{os::unix::fs::PermissionsExt as _, process::Command};

#[test]
fn check_without_capabilities_fails_clearly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip("check_without_capabilities_fails_clearly", "needs root to drop to nobody with setpriv");
        return;
    }
    // The build dir may sit under /root (mode 700): copy the binary where nobody can run it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.path().join("herdwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_herdwatch"), &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(&bin)
        .arg("check")
        .current_dir(dir.path())
        .output()
        .expect("setpriv runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "check must fail without privileges");
    let caps = stdout.lines().find(|l| l.contains("capabilities")).expect("a capabilities line");
    assert!(caps.starts_with("FAIL") && caps.contains("CAP_BPF") && caps.contains("fix"), "{caps}");
    assert!(stdout.lines().any(|l| l.starts_with("FAIL") && l.contains("load")), "the load check failed too:\n{stdout}");
    assert!(!stdout.contains("panicked"), "no panic");
}

#[test]
fn check_as_root_passes_every_line() {
    if !common::kernel_available("check_as_root_passes_every_line") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_herdwatch")).arg("check").output().expect("check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed as root:\n{stdout}");
    for (name, _, _) in herdwatch::probes::PROGRAMS {
        assert!(stdout.lines().any(|l| l.starts_with("ok") && l.contains(name)), "{name} attached:\n{stdout}");
    }
}
