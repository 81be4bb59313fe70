//! Shared helpers for the kernel integration tests: root/venv requirements with recorded skip
//! reasons, child processes that are killed when the test ends, polling for a snapshot.
#![allow(dead_code)]

pub mod cgroup;
pub mod checkout;
pub mod dashboards;
pub mod herd;
pub mod load;
pub mod pki;
pub mod postgres;

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use herdwatch::{Agent, Config, model::Snapshot};

/// Records that `test` was skipped and why, for `cargo xtask test`'s summary, and prints it.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
    if let Some(dir) = std::env::var_os("HERDWATCH_SKIP_DIR") {
        let _ = std::fs::write(
            PathBuf::from(dir).join(test.replace("::", "_")),
            format!("{test}: {reason}"),
        );
    }
}

/// True when the test may load eBPF programs; otherwise records a skip.
pub fn kernel_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root to load eBPF programs (CI runs as root)");
        return false;
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        skip(test, "kernel has no BTF (/sys/kernel/btf/vmlinux)");
        return false;
    }
    true
}

/// The test venv built by `cargo xtask test`. Missing is a failure, not a skip: the harness
/// always provides it, and a silent skip would hide a broken setup.
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("HERDWATCH_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/herdwatch/venv")
        });
    assert!(
        dir.join("bin/gunicorn").exists(),
        "no test venv at {} — run the tests through `cargo xtask test`, which builds it",
        dir.display()
    );
    dir
}

pub fn apps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_http(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server on port {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// gunicorn serving the Flask shop (`shop.app:app`) with `workers` sync workers on
/// 127.0.0.1:`port`, talking to PostgreSQL at `pg_dsn` when given.
pub fn gunicorn_shop(workers: u32, port: u16, pg_dsn: Option<&str>) -> Proc {
    let mut cmd = Command::new(venv().join("bin/gunicorn"));
    cmd.args([
        "--workers",
        &workers.to_string(),
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--chdir",
    ])
    .arg(apps_dir())
    .args(["--timeout", "60", "shop.app:app"]);
    if let Some(dsn) = pg_dsn {
        cmd.env("PG_DSN", dsn);
    }
    Proc::spawn(&mut cmd)
}

/// uvicorn serving the Starlette API (`api.main:app`) with `workers` workers on
/// 127.0.0.1:`port`, talking to PostgreSQL at `pg_dsn` (a URL) when given.
pub fn uvicorn_api(workers: u32, port: u16, pg_dsn: Option<&str>) -> Proc {
    let mut cmd = Command::new(venv().join("bin/uvicorn"));
    cmd.args([
        "api.main:app",
        "--workers",
        &workers.to_string(),
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .arg("--app-dir")
    .arg(apps_dir())
    .args(["--log-level", "warning"]);
    if let Some(dsn) = pg_dsn {
        cmd.env("PG_DSN", dsn);
    }
    Proc::spawn(&mut cmd)
}

/// gunicorn serving `app` (a module under the test apps) with `workers` sync workers on
/// 127.0.0.1:`port`; the caller adds the app's environment.
pub fn gunicorn_command(app: &str, workers: u32, port: u16) -> Command {
    let mut cmd = Command::new(venv().join("bin/gunicorn"));
    cmd.args(["--workers", &workers.to_string()])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .arg("--chdir")
        .arg(apps_dir())
        .args(["--timeout", "120", app]);
    cmd
}

/// A real Prometheus on 127.0.0.1:`port` with `dir/prometheus.yml`, its data under `dir`.
pub fn prometheus(dir: &std::path::Path, port: u16) -> Proc {
    Proc::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}/prometheus.yml", dir.display()))
            .arg(format!("--storage.tsdb.path={}/tsdb", dir.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
    )
}

/// `GET path` on a fresh connection to 127.0.0.1:`port`; the whole response as text.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: herdwatch-test\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    response
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed (with its process group) when dropped.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        use std::os::unix::process::CommandExt as _;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Proc {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until one equals `want`.
    pub fn wait_line(&mut self, want: &str) {
        let out = self.stdout.as_mut().expect("stdout piped");
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).expect("reading child stdout");
            assert!(n > 0, "child exited before printing {want:?}");
            if line.trim() == want {
                return;
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Field `index` (0-based) of /proc/<pid>/schedstat: 0 = on-CPU ns, 1 = run-queue wait ns.
pub fn schedstat(pid: u32, index: usize) -> u64 {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("schedstat readable");
    text.split_whitespace()
        .nth(index)
        .and_then(|f| f.parse().ok())
        .expect("schedstat field")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub async fn start_agent() -> Agent {
    start_agent_with(test_config()).await
}

/// The tests' config: a short interval, defaults otherwise.
pub fn test_config() -> Config {
    Config {
        interval_ms: 500,
        api_socket: None,
        prometheus_listen: None,
        // Tests that persist state say where (a temporary directory).
        state_dir: None,
        ..Config::default()
    }
}

pub async fn start_agent_with(config: Config) -> Agent {
    Agent::start(&config)
        .await
        .unwrap_or_else(|e| panic!("agent start: {e}"))
}

/// Polls fresh snapshots until `check` returns Some, or panics after `timeout` with `what`.
pub async fn wait_for<T>(
    agent: &Agent,
    timeout: Duration,
    what: &str,
    check: impl FnMut(&Arc<Snapshot>) -> Option<T>,
) -> T {
    wait_for_or_explain(agent, timeout, what, check, |_| String::new()).await
}

/// `wait_for`, whose timeout panic also says what `explain` finds in the last snapshot.
pub async fn wait_for_or_explain<T>(
    agent: &Agent,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&Arc<Snapshot>) -> Option<T>,
    explain: impl Fn(&Snapshot) -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let snap = agent.snapshot_now().await.expect("snapshot");
        if let Some(v) = check(&snap) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}{}",
            explain(&snap)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the agent shows the pool of `master` with `workers` workers; returns it.
pub async fn pool_ready(agent: &Agent, master: u32, workers: usize) -> herdwatch::model::PoolView {
    wait_for(
        agent,
        Duration::from_secs(30),
        &format!("the pool of {master} with {workers} workers"),
        |s| {
            s.pool_of_master(master)
                .filter(|p| p.pool.workers.len() == workers && p.worker_states.len() == workers)
                .cloned()
        },
    )
    .await
}

/// |a - b| / b, for comparing with the kernel's own figure b.
pub fn relative_error(a: u64, b: u64) -> f64 {
    (a as f64 - b as f64).abs() / (b as f64).max(1.0)
}
