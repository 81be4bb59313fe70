//! `herdwatch findings` reads a running agent over its API socket, and says clearly what to do
//! when there is no agent to ask.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::Proc;

#[test]
fn findings_without_an_agent_fail_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_herdwatch"))
        .arg("findings")
        .env("HERDWATCH_API_SOCKET", dir.path().join("api.sock"))
        .output()
        .expect("herdwatch runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("api.sock") && stderr.contains("herdwatch run"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn findings_come_from_the_running_agent() {
    if !common::kernel_available("findings_come_from_the_running_agent") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("run/api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herdwatch"));
    cmd.args(["run", "--json", "--interval-ms", "300"])
        .env("HERDWATCH_API_SOCKET", &socket)
        .env("HERDWATCH_PROMETHEUS_LISTEN", "");
    let _agent = Proc::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the agent never served its API");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&socket).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "only root may read findings");
    let ask = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_herdwatch"))
            .args(args)
            .env("HERDWATCH_API_SOCKET", &socket)
            .env("HERDWATCH_PROMETHEUS_LISTEN", "")
            .output()
            .expect("herdwatch runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let json = ask(&["findings", "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert!(parsed.is_array(), "{json}");
    assert!(ask(&["findings"]).contains("FINDINGS"));
    // A second agent on the same socket refuses to start rather than stealing it.
    let out = Command::new(env!("CARGO_BIN_EXE_herdwatch"))
        .args(["run", "--once"])
        .env("HERDWATCH_API_SOCKET", &socket)
        .env("HERDWATCH_PROMETHEUS_LISTEN", "")
        .output()
        .expect("herdwatch runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serves"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
