//! Least privilege, proven (issue 15, item 4 and defect 5): the agent as `nobody` holding
//! exactly the four capabilities of `herdwatch::check::capabilities::NEEDED` traces a gunicorn
//! pool run by another user (root) and its PostgreSQL queries, payloads included, raises a
//! finding naming that pool and route, and serves `/metrics` and its API; with any one of the
//! four removed, `herdwatch check` fails and names that capability and what it is for.
mod common;

use std::{
    io::BufRead as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{postgres::Postgres, *};
use herdwatch::{
    check::capabilities::{self, Needed},
    protocol::fingerprint::fingerprint,
};

/// `cap_bpf` → `bpf`, the spelling setpriv takes.
fn setpriv_name(cap: &Needed) -> String {
    cap.name.trim_start_matches("CAP_").to_ascii_lowercase()
}

/// `program` as nobody:nogroup with no supplementary groups, holding exactly `caps`
/// (inheritable, ambient and bounding sets; the ambient set makes them effective after exec).
fn as_nobody_with(program: &Path, caps: &[Needed]) -> Command {
    let mut set = String::from("-all");
    for cap in caps {
        set.push_str(",+");
        set.push_str(&setpriv_name(cap));
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(program);
    cmd
}

/// The binary copied where nobody may run it (the build dir may sit under /root, mode 700).
fn binary_for_nobody(dir: &Path) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bin = dir.join("herdwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_herdwatch"), &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod bin");
    bin
}

/// A directory nobody may write (the API socket, the state).
fn writable_dir(path: PathBuf) -> PathBuf {
    std::fs::create_dir(&path).expect("mkdir");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    path
}

/// One field of /proc/<pid>/status.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// What the test saw in the agent's snapshots, for the failure message.
#[derive(Debug, Default)]
struct Seen {
    pool_workers: Option<usize>,
    query_calls: u64,
    query_text: Option<String>,
    route_requests: u64,
}

impl Seen {
    fn complete(&self, workers: usize) -> bool {
        self.pool_workers == Some(workers) && self.query_calls > 0 && self.route_requests > 0
    }

    fn update(&mut self, snap: &serde_json::Value, master: u32, query_id: &str) {
        let pools = snap["pools"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(pool) = pools
            .iter()
            .find(|p| p["master"].as_u64() == Some(u64::from(master)))
        {
            self.pool_workers = pool["workers"].as_array().map(Vec::len);
        }
        let queries = snap["queries"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(q) = queries.iter().find(|q| q["id"].as_str() == Some(query_id)) {
            self.query_calls = self.query_calls.max(q["calls"].as_u64().unwrap_or(0));
            self.query_text = q["normalized"].as_str().map(str::to_string);
        }
        let routes = snap["routes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let db_requests = routes
            .iter()
            .filter(|r| r["method"] == "GET" && r["route"] == "/db")
            .filter_map(|r| r["requests"].as_u64())
            .sum::<u64>();
        self.route_requests = self.route_requests.max(db_requests);
    }
}

const WORKERS: usize = 2;
const SLEEP_SQL: &str = "SELECT pg_sleep(0.2)";

#[test]
fn nobody_with_the_four_capabilities_traces_pools_queries_and_serves_metrics() {
    let name = "nobody_with_the_four_capabilities_traces_pools_queries_and_serves_metrics";
    if !common::kernel_available(name) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = binary_for_nobody(dir.path());
    let run_dir = writable_dir(dir.path().join("run"));
    let state_dir = writable_dir(dir.path().join("state"));

    // PostgreSQL runs as `postgres`, gunicorn as root: both other users than the agent.
    let pg = Postgres::start();
    let app_port = free_port();
    let app = gunicorn_shop(WORKERS as u32, app_port, Some(&pg.tcp_dsn()));
    wait_http(app_port);

    let metrics_port = free_port();
    let socket = run_dir.join("api.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "interval_ms = 500\napi_socket = {socket:?}\nprometheus_listen = \"127.0.0.1:{metrics_port}\"\n\
             state_dir = {state_dir:?}\npostgres_ports = [{}]\n\
             [detect.saturation]\ncpu = 0.01\nfor_s = 1\nrun_queue_ms_per_s_per_cpu = 1000000.0\n",
            pg.port
        ),
    )
    .expect("write config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let mut agent = Proc::spawn(
        as_nobody_with(&bin, &capabilities::NEEDED)
            .arg("--config")
            .arg(&config)
            .args(["run", "--json"])
            .env("HERDWATCH_LOG", "warn"),
    );
    let stdout = agent.stdout.take().expect("agent stdout");
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let Ok(value) = serde_json::from_str(&line) else {
                continue;
            };
            if tx.send(value).is_err() {
                return;
            }
        }
    });

    // Once it has printed a snapshot the agent runs (setpriv execs in place, so the pid is
    // the agent's): as nobody, holding exactly the four.
    let first = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("the agent prints snapshots");
    assert!(first["pools"].is_array(), "a snapshot: {first:.200}");
    assert_eq!(
        status_field(agent.pid(), "Uid:").split_whitespace().next(),
        Some("65534")
    );
    let cap_eff = status_field(agent.pid(), "CapEff:");
    let expected: u64 = capabilities::NEEDED.iter().map(|c| 1u64 << c.bit).sum();
    assert_eq!(
        u64::from_str_radix(&cap_eff, 16).ok(),
        Some(expected),
        "the agent holds exactly the four (CapEff {cap_eff})"
    );

    // Requests that each make one query, until the agent has seen them (or the deadline).
    // Only now: psycopg prepares a statement at its sixth run, and a statement prepared
    // before the agent watched is seen by name, without its text.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http_get(app_port, "/db");
                // CPU for the saturation finding to name the pool and route by.
                let _ = http_get(app_port, "/cpu");
            }
        })
    };

    let query_id = fingerprint(SLEEP_SQL).hex_id();
    let master = app.pid();
    let mut seen = Seen::default();
    // Generous: loading and verifying the programs takes seconds on a busy 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !seen.complete(WORKERS) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(snap) => seen.update(&snap, master, &query_id),
            Err(_) => break,
        }
    }
    eprintln!("as nobody: {seen:?}");
    assert_eq!(
        seen.pool_workers,
        Some(WORKERS),
        "the root-owned pool found: {seen:?}"
    );
    assert!(seen.query_calls > 0, "{SLEEP_SQL} counted: {seen:?}");
    assert!(
        seen.query_text
            .as_deref()
            .is_some_and(|t| t.contains("pg_sleep")),
        "the query's text came from the captured payload: {seen:?}"
    );
    assert!(
        seen.route_requests > 0,
        "GET /db requests counted: {seen:?}"
    );

    // A finding, read over the API by the same unprivileged user without any capability:
    // a saturation (at a threshold any host passes) naming the pool and the route whose CPU
    // the kernel programs attributed.
    let read_findings = || {
        let out = as_nobody_with(&bin, &[])
            .arg("--config")
            .arg(&config)
            .args(["findings", "--json"])
            .output()
            .expect("findings runs");
        assert!(
            out.status.success(),
            "findings over the API: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("findings JSON")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let saturation = loop {
        let findings = read_findings();
        if let Some(f) = findings.into_iter().find(|f| {
            // Another service serving the same app on this host adds its binds to the name.
            f["kind"] == "saturation"
                && f["subject"]["pool"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("gunicorn shop.app:app"))
        }) {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no saturation finding naming the pool as nobody"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.join();
    eprintln!("as nobody, a finding: {saturation:.400}");
    assert!(
        saturation["subject"]["routes"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.ends_with("/cpu")))),
        "the route burning CPU is named: {saturation}"
    );

    let metrics = http_get(metrics_port, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics:.200}");
    assert!(
        metrics.contains("http_route=\"/db\""),
        "/metrics carries the traced route:\n{metrics:.2000}"
    );

    drop(agent);
    drop(app);
}

/// `herdwatch check` as nobody, once per capability set, all at once: most of a check is the
/// kernel verifying the programs, and the runs share nothing. (passed, stdout) per set.
fn checks_with(bin: &Path, sets: &[Vec<Needed>]) -> Vec<(bool, String)> {
    let children: Vec<_> = sets
        .iter()
        .map(|caps| {
            as_nobody_with(bin, caps)
                .arg("check")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("check runs")
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("check finishes");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            assert!(!stdout.contains("panicked"), "no panic:\n{stdout}");
            (out.status.success(), stdout)
        })
        .collect()
}

fn failed_line<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find(|l| l.starts_with("FAIL") && l.split_whitespace().nth(1) == Some(name))
}

/// Whether tracefs is closed to other users here (mode 0700), so that reading it is what
/// CAP_DAC_READ_SEARCH buys; a world-readable tracefs needs no capability to read.
fn tracefs_closed() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .any(|m| m.permissions().mode() & 0o005 == 0)
}

#[test]
fn check_names_each_missing_capability_and_what_it_is_for() {
    let name = "check_names_each_missing_capability_and_what_it_is_for";
    if !common::kernel_available(name) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = binary_for_nobody(dir.path());

    // The whole set first, then the set without each one.
    let mut sets = vec![capabilities::NEEDED.to_vec()];
    sets.extend(capabilities::NEEDED.iter().map(|removed| {
        capabilities::NEEDED
            .into_iter()
            .filter(|c| c != removed)
            .collect::<Vec<_>>()
    }));
    let mut results = checks_with(&bin, &sets).into_iter();
    let (passed, stdout) = results.next().expect("the whole set's check");
    assert!(
        passed,
        "check passes as nobody with exactly the four:\n{stdout}"
    );

    for removed in capabilities::NEEDED {
        let (passed, stdout) = results.next().expect("one check per removed capability");
        assert!(!passed, "check passes without {}:\n{stdout}", removed.name);
        let caps = failed_line(&stdout, "capabilities").unwrap_or_else(|| {
            panic!(
                "a failed capabilities line without {}:\n{stdout}",
                removed.name
            )
        });
        let lacking = caps
            .split_once("lacks ")
            .and_then(|(_, rest)| rest.split_once("; fix"))
            .map(|(lacking, _)| lacking)
            .unwrap_or_else(|| panic!("the line says what it lacks: {caps}"));
        assert!(
            lacking.contains(removed.name) && lacking.contains(removed.purpose),
            "names {} and what it is for: {caps}",
            removed.name
        );
        assert_eq!(
            lacking.matches("CAP_").count(),
            1,
            "names only the missing one: {caps}"
        );

        // The check that really failed for want of it names it too, not a wrong cause.
        let functional = match removed.name {
            "CAP_BPF" => Some("load"),
            "CAP_SYS_PTRACE" => Some("process access"),
            "CAP_DAC_READ_SEARCH" if tracefs_closed() => Some("tracefs"),
            _ => None,
        };
        if let Some(check) = functional {
            let first = check.split(' ').next().unwrap_or(check);
            let line = failed_line(&stdout, first).unwrap_or_else(|| {
                panic!(
                    "the {check} check failed without {}:\n{stdout}",
                    removed.name
                )
            });
            assert!(line.contains(removed.name), "{line}");
            assert!(!line.contains("not mounted"), "tracefs is mounted: {line}");
        }
        if removed.name == "CAP_PERFMON" {
            assert!(
                stdout.lines().any(|l| l.starts_with("FAIL")
                    && l.split_whitespace().nth(1) != Some("capabilities")
                    && l.contains("CAP_PERFMON")),
                "a load or attach line names CAP_PERFMON:\n{stdout}"
            );
        }
    }
}
