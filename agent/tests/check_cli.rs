//! `herdwatch check` as a user without CAP_BPF must fail with a clear, actionable message.
mod common;

use std::{os::unix::fs::PermissionsExt as _, process::Command};

#[test]
fn check_without_capabilities_fails_clearly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip(
            "check_without_capabilities_fails_clearly",
            "needs root to drop to nobody with setpriv",
        );
        return;
    }
    // The build dir may sit under /root (mode 700): copy the binary where nobody can run it.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let bin = dir.path().join("herdwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_herdwatch"), &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin)
        .arg("check")
        .current_dir(dir.path())
        .output()
        .expect("setpriv runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "check must fail without privileges");
    let caps = stdout
        .lines()
        .find(|l| l.contains("capabilities"))
        .expect("a capabilities line");
    assert!(
        caps.starts_with("FAIL") && caps.contains("CAP_BPF") && caps.contains("fix"),
        "{caps}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("load")),
        "the load check failed too:\n{stdout}"
    );
    assert!(!stdout.contains("panicked"), "no panic");
}

#[test]
fn check_as_root_passes_every_line() {
    if !common::kernel_available("check_as_root_passes_every_line") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_herdwatch"))
        .arg("check")
        .output()
        .expect("check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed as root:\n{stdout}");
    for (name, _, _) in herdwatch::probes::PROGRAMS {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{name} attached:\n{stdout}"
        );
    }
}

#[test]
fn kernel_log_lines_reach_the_agent_log_at_debug_level() {
    use std::io::{BufRead as _, BufReader};
    if !common::kernel_available("kernel_log_lines_reach_the_agent_log_at_debug_level") {
        return;
    }
    let mut agent = Command::new(env!("CARGO_BIN_EXE_herdwatch"))
        .args(["run", "--json", "--interval-ms", "300"])
        .env("HERDWATCH_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent starts");
    // Read the log from the start: at debug level aya alone writes more than a pipe holds
    // (~77 KB of relocation lines) before the first snapshot, and an unread pipe stops the
    // agent there.
    let stderr = BufReader::new(agent.stderr.take().expect("stderr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let stdout = agent.stdout.take().expect("stdout");
    // The first JSON snapshot means the programs are attached.
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a snapshot line");
    assert!(first.starts_with('{'), "{first}");
    let mut child = Command::new("/bin/true").spawn().expect("spawn true");
    let pid = child.id();
    let _ = child.wait();
    let want = format!("exec pid={pid} ");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut found = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(&want) => {
                found = line.contains("DEBUG");
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        found,
        "no DEBUG kernel log line {want:?} in the agent's log"
    );
}

#[test]
fn run_once_prints_one_full_interval() {
    if !common::kernel_available("run_once_prints_one_full_interval") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_herdwatch"))
        .args(["run", "--once", "--json", "--interval-ms", "300"])
        .env("HERDWATCH_API_SOCKET", "")
        .env("HERDWATCH_PROMETHEUS_LISTEN", "")
        .output()
        .expect("herdwatch runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON snapshot");
    let interval = snap["interval_ms"].as_u64().unwrap_or(0);
    // The rates cover a whole interval, not the instant the agent started.
    assert!(interval >= 300, "interval_ms = {interval}");
    assert!(
        snap["host"]["cpu_utilization"].is_number(),
        "{}",
        snap["host"]
    );
}
