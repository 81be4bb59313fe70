//! `herdwatch config` and the environment layer as a user meets them: the effective config
//! with each value's source, an unknown variable refused before anything loads, and
//! `HERDWATCH_PROMETHEUS_LISTEN=""` really serving no `/metrics`.
mod common;

use std::{io::BufRead as _, os::unix::fs::PermissionsExt as _, process::Command};

use common::Proc;

fn herdwatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herdwatch"));
    // Whatever the caller's shell had set must not leak into what is checked.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERDWATCH_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[test]
fn config_prints_each_value_with_where_it_came_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herdwatch.toml");
    std::fs::write(&file, "max_routes = 50\ninterval_ms = 500\n").expect("write");
    let out = herdwatch()
        .arg("--config")
        .arg(&file)
        .args(["config", "--interval-ms", "700"])
        .env("HERDWATCH_DETECT__HERD__MIN_COPIES", "6")
        .env("HERDWATCH_PROMETHEUS_LISTEN", "")
        .env("HERDWATCH_POSTGRES_PORTS", "[5433, 6433]")
        .output()
        .expect("herdwatch runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let file_name = file.display().to_string();
    assert_eq!(line("interval_ms "), "interval_ms = 700 # --interval-ms");
    assert_eq!(
        line("max_routes "),
        format!("max_routes = 50 # {file_name}")
    );
    assert_eq!(
        line("min_copies "),
        "min_copies = 6 # HERDWATCH_DETECT__HERD__MIN_COPIES"
    );
    assert_eq!(
        line("# prometheus_listen "),
        "# prometheus_listen = (unset) # HERDWATCH_PROMETHEUS_LISTEN"
    );
    assert_eq!(
        line("postgres_ports "),
        "postgres_ports = [5433, 6433] # HERDWATCH_POSTGRES_PORTS"
    );
    assert_eq!(
        line("max_connections "),
        "max_connections = 65536 # default"
    );
    // What it prints is a config file that loads.
    let table: toml::Table = toml::from_str(&stdout).expect("the output is TOML");
    assert_eq!(table["interval_ms"].as_integer(), Some(700));
}

#[test]
fn an_unknown_variable_stops_the_agent_before_anything_loads() {
    let out = herdwatch()
        .args(["run", "--once"])
        .env("HERDWATCH_PROMETHEUS_LISTN", "")
        .output()
        .expect("herdwatch runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("HERDWATCH_PROMETHEUS_LISTN")
            && stderr.contains("did you mean HERDWATCH_PROMETHEUS_LISTEN"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A bad value names the variable and the problem.
    let out = herdwatch()
        .args(["config"])
        .env("HERDWATCH_DETECT__SATURATION__CPU", "lots")
        .output()
        .expect("herdwatch runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("HERDWATCH_DETECT__SATURATION__CPU")
            && stderr.contains("not a number"),
        "{stderr}"
    );
}

/// The local ports of the TCP sockets in LISTEN state on this host (`/proc/net/tcp{,6}`),
/// by socket inode.
fn listening_ports() -> Vec<(String, u16)> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let fields: Vec<&str> = l.split_whitespace().collect();
                    if fields.get(3) != Some(&"0A") {
                        return None;
                    }
                    let port = fields.get(1)?.rsplit(':').next()?;
                    let port = u16::from_str_radix(port, 16).ok()?;
                    Some((fields.get(9)?.to_string(), port))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The socket inodes the process holds.
fn socket_inodes(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|target| {
                    let t = target.to_string_lossy().to_string();
                    t.strip_prefix("socket:[")
                        .and_then(|s| s.strip_suffix(']'))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_empty_prometheus_listen_serves_no_metrics() {
    if !common::kernel_available("an_empty_prometheus_listen_serves_no_metrics") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("api.sock");
    let token = dir.path().join("token");
    std::fs::write(&token, "config-cli-test-token-0123456789").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The API also on TCP: the one listener the agent must hold, which shows the check below
    // sees the agent's listeners at all.
    let api_port = common::free_port();
    let mut cmd = herdwatch();
    cmd.args(["run", "--json", "--interval-ms", "1000"])
        .env("HERDWATCH_API_SOCKET", &socket)
        .env("HERDWATCH_API_LISTEN", format!("127.0.0.1:{api_port}"))
        .env("HERDWATCH_API_INSECURE", "true")
        .env("HERDWATCH_API_TOKEN_FILE", &token)
        .env("HERDWATCH_STATE_DIR", "")
        .env("HERDWATCH_PROMETHEUS_LISTEN", "");
    let mut agent = Proc::spawn(&mut cmd);
    // The first snapshot is printed once the agent has started, every listener bound.
    let mut first = String::new();
    let read = agent
        .stdout
        .as_mut()
        .expect("stdout piped")
        .read_line(&mut first)
        .expect("reading the agent's output");
    assert!(read > 0 && first.starts_with('{'), "no snapshot: {first:?}");
    assert!(socket.exists(), "the API socket is served");
    let held = socket_inodes(agent.pid());
    let mut ports: Vec<u16> = listening_ports()
        .into_iter()
        .filter(|(inode, _)| held.contains(inode))
        .map(|(_, port)| port)
        .collect();
    ports.dedup();
    assert_eq!(
        ports,
        vec![api_port],
        "HERDWATCH_PROMETHEUS_LISTEN=\"\": the agent's only TCP listener is the API's"
    );
}
