//! `cargo xtask bench overhead`: what the release agent costs the apps it watches, on real
//! services, measured side by side in one run. PostgreSQL with 100 k invoices, a gunicorn sync
//! app (3 workers, psycopg) and a uvicorn app (asyncio, 2 workers, asyncpg) from
//! `apps/overhead/`; Debian's `wrk -t2 -c8` loads each target in rounds alternating no agent /
//! agent (and, on gunicorn `/ping`, a bpftrace peer doing comparable per-syscall work). The
//! agent is the release binary with its embedded defaults, run as a separate process and
//! stopped with SIGTERM after each round; its CPU comes from /proc/<pid>/stat.
//!
//! Nothing is asserted: these machines are shared and noisy, so the goals are printed next to
//! the figures with ✓/✗ (ignored in the suite; the bench runs it).
//!
//! `HERDWATCH_OVERHEAD_PROFILE=ping|invoices|uvicorn` (`1` = ping) adds one traced round on
//! that target at the end with `kernel.bpf_stats_enabled` on (per-program ns per run of the
//! agent's programs) and, when `perf` is installed, `perf record --call-graph dwarf` of the
//! agent for 10 s (top symbols printed). `HERDWATCH_OVERHEAD_PROFILE_ONLY=1` skips the rounds
//! and runs just that profile (for iterating on one cost). `HERDWATCH_OVERHEAD_AGENT=<binary>`
//! runs another build of the agent instead of this one (before/after comparisons).
mod common;

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{postgres::Postgres, *};

const ROUNDS: usize = 5;
const LOAD_S: u64 = 8;
const IDLE_S: u64 = 30;
const INVOICES: u32 = 100_000;

const GOAL_RATIO: f64 = 0.97;
const GOAL_CPU_PER_1K: f64 = 1.0;
const GOAL_IDLE: f64 = 0.5;
const GOAL_RSS_MIB: f64 = 50.0;

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Untraced,
    Agent,
    Bpftrace,
}

struct Target {
    name: &'static str,
    port: u16,
    /// URL path, or None for random `/invoices/<id>` from a wrk Lua script.
    path: Option<&'static str>,
    modes: Vec<Mode>,
    gunicorn: bool,
}

#[derive(Default, Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    errors: u64,
    /// The tracer's CPU over the loaded window, in % of one core.
    cpu_pct: Option<f64>,
    hwm_kib: Option<u64>,
    /// The whole machine's busy CPU time (user, nice, system, irq, softirq; not idle, iowait
    /// or steal) per request served, in µs: what a request costs, apps, kernel, wrk and
    /// tracer together. Unlike throughput it does not move when a neighbour on the host
    /// steals CPU, so its traced/untraced ratio is the steadier estimate of the overhead.
    busy_us_per_request: f64,
    /// CPU stolen by the hypervisor during the round, % of the machine.
    steal_pct: f64,
    /// Other eBPF tracers (herdwatch or bpftrace processes not ours) running during the round:
    /// their programs run in the apps' syscalls too, in every mode.
    others: usize,
}

/// Pids of herdwatch and bpftrace processes on the host other than `ours`.
fn other_tracers(ours: Option<u32>) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| Some(*pid) != ours && *pid != std::process::id())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| matches!(c.trim(), "herdwatch" | "bpftrace"))
        })
        .collect()
}

/// utime + stime of `pid` (all threads) in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat readable");
    let after = &text[text.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / ticks_per_second()
}

/// The unit of /proc's CPU times (USER_HZ).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// The machine's (busy, steal, all) CPU ticks so far, from the `cpu` line of /proc/stat.
fn machine_ticks() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").expect("/proc/stat readable");
    let fields: Vec<u64> = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .expect("cpu line")
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    let all = (0..8).map(at).sum();
    (busy, at(7), all)
}

/// Read and write calls of one `dd` run in `bystander_syscall_cost`.
const DD_CALLS: u64 = 2_000_000;

/// CPU seconds of the children reaped so far (user + system).
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU ns per call of a `dd` copying one byte per call, a process no tracer wants: what the
/// agent's syscall programs cost everyone else on the host.
fn dd_ns_per_call() -> f64 {
    let before = children_cpu();
    let status = Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1"])
        .arg(format!("count={}", DD_CALLS / 2))
        .stderr(Stdio::null())
        .status()
        .expect("dd runs");
    assert!(status.success(), "dd failed");
    1e9 * (children_cpu() - before) / DD_CALLS as f64
}

/// (untraced ns per call, ns added by the agent) for a bystander's reads and writes, the
/// median of paired rounds. The agent is measured while it runs (not yet reaped), so only
/// dd's own CPU is in the figure.
fn bystander_syscall_cost(dir: &Path) -> (f64, f64) {
    eprintln!("bystander syscalls: dd bs=1, {ROUNDS} rounds");
    let mut base = Vec::new();
    let mut added = Vec::new();
    for _ in 0..ROUNDS {
        let untraced = dd_ns_per_call();
        let agent = start_agent(dir);
        let traced = dd_ns_per_call();
        drop(agent);
        base.push(untraced);
        added.push(traced - untraced);
    }
    (median(base), median(added))
}

/// A `Vm*:` line of /proc/<pid>/status in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status readable");
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A tracer process (the agent or bpftrace), started and ready; SIGTERM when dropped.
struct Tracer {
    child: Child,
    last_line: Arc<Mutex<String>>,
    /// How it is stopped: SIGTERM for the agent (as a service manager would), SIGINT for
    /// bpftrace (its documented way to detach).
    stop_signal: i32,
}

impl Tracer {
    /// Spawns `cmd` and waits until its stdout prints a line starting with `ready`.
    fn start(cmd: &mut Command, ready: &str, stop_signal: i32) -> Tracer {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let last_line = Arc::new(Mutex::new(String::new()));
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with(ready) => {
                    *last_line.lock().expect("lock") = line;
                    break;
                }
                Some(Ok(_)) => continue,
                _ => panic!("{cmd:?} exited before it was ready"),
            }
        }
        eprintln!(
            "  {} ready after {:.1} s",
            cmd.get_program().to_string_lossy(),
            started.elapsed().as_secs_f64()
        );
        // Keep draining, so it never blocks on a full pipe; keep the latest line.
        let keep = last_line.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                *keep.lock().expect("lock") = line;
            }
        });
        Tracer {
            child,
            last_line,
            stop_signal,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's latest JSON snapshot: socket records received and lost in the kernel.
    fn socket_records(&self) -> Option<(u64, u64)> {
        let line = self.last_line.lock().expect("lock").clone();
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        let agent = v.get("agent")?;
        Some((
            agent.get("socket_events_received")?.as_u64()?,
            agent.pointer("/kernel/socket_events_dropped")?.as_u64()?,
        ))
    }
}

impl Tracer {
    /// The latest snapshot's `agent.<path>` counter (a JSON pointer below `agent`).
    fn agent_counter(&self, path: &str) -> Option<u64> {
        let line = self.last_line.lock().expect("lock").clone();
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        v.get("agent")?.pointer(path)?.as_u64()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // SAFETY: signalling the process this harness started.
        unsafe { libc::kill(self.child.id() as i32, self.stop_signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release agent with its embedded defaults; only where it listens and writes moves to
/// `dir` (port 9464, /run/herdwatch and /var/lib/herdwatch may be another agent's).
fn start_agent(dir: &Path) -> Tracer {
    let config = dir.join("herdwatch.toml");
    std::fs::write(
        &config,
        format!(
            "prometheus_listen = \"127.0.0.1:{}\"\napi_socket = \"{}\"\nstate_dir = \"{}\"\n",
            free_port(),
            dir.join("api.sock").display(),
            dir.join("state").display()
        ),
    )
    .expect("agent config");
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    Tracer::start(
        Command::new(agent_binary())
            .arg("--config")
            .arg(&config)
            .args(["run", "--json"])
            .env_remove("HERDWATCH_CONFIG")
            .stderr(log),
        // The first snapshot: programs attached, /proc seeded, one interval traced.
        "{",
        libc::SIGTERM,
    )
}

/// The agent under test: this build's, or `HERDWATCH_OVERHEAD_AGENT` (another build of it, to
/// compare two versions' programs on the same machine in the same hour).
fn agent_binary() -> PathBuf {
    std::env::var_os("HERDWATCH_OVERHEAD_AGENT").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_herdwatch")),
        PathBuf::from,
    )
}

/// bpftrace doing per-syscall work comparable to the agent's socket programs on the same
/// calls of `pids`: the buffer pointer kept at entry, a payload prefix copied into a map at
/// exit (200 B), accept4/close counted; it prints nothing while tracing.
fn bpftrace_program(pids: &[u32]) -> String {
    let filter = pids
        .iter()
        .map(|p| format!("pid == {p}"))
        .collect::<Vec<_>>()
        .join(" || ");
    let enter = |call: &str, buf: &str| {
        format!(
            "tracepoint:syscalls:sys_enter_{call} /{filter}/ {{ @buf[tid] = (uint64)args->{buf}; }}\n"
        )
    };
    let mut p = String::from("BEGIN { printf(\"attached\\n\"); }\n");
    p += &enter("read", "buf");
    p += &enter("write", "buf");
    p += &enter("sendto", "buff");
    p += &enter("recvfrom", "ubuf");
    p += &format!(
        "tracepoint:syscalls:sys_exit_read,tracepoint:syscalls:sys_exit_write,\
         tracepoint:syscalls:sys_exit_sendto,tracepoint:syscalls:sys_exit_recvfrom /{filter}/ {{\n\
         if (args->ret > 0 && @buf[tid] != 0) {{ @prefix[tid] = buf(@buf[tid], 200); @bytes[tid] = sum(args->ret); }}\n\
         delete(@buf[tid]);\n}}\n\
         tracepoint:syscalls:sys_exit_accept4,tracepoint:syscalls:sys_exit_close /{filter}/ {{ @calls[tid] = count(); }}\n\
         END {{ clear(@buf); clear(@prefix); clear(@bytes); clear(@calls); }}\n"
    );
    p
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// One `wrk -t2 -c8` run of `seconds` against `target`: requests/s and errors.
fn wrk(target: &Target, seconds: u64, script: &Path) -> (f64, u64) {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c8", &format!("-d{seconds}s")]);
    match target.path {
        Some(path) => cmd.arg(format!("http://127.0.0.1:{}{path}", target.port)),
        None => cmd
            .arg("-s")
            .arg(script)
            .arg(format!("http://127.0.0.1:{}/", target.port)),
    };
    let out = cmd.output().expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"));
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|f| f.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (rps, errors)
}

/// One loaded round of `target` under `mode`.
fn round(target: &Target, mode: Mode, dir: &Path, script: &Path, bt: &str) -> Sample {
    let tracer = match mode {
        Mode::Untraced => None,
        Mode::Agent => Some(start_agent(dir)),
        Mode::Bpftrace => Some(Tracer::start(
            Command::new("bpftrace")
                .args(["-e", bt])
                // 200 B is bpftrace 0.17's longest buffer (the agent copies 512 B + a 128 B tail).
                .env("BPFTRACE_STRLEN", "200")
                .stderr(Stdio::null()),
            "attached",
            libc::SIGINT,
        )),
    };
    let others = other_tracers(tracer.as_ref().map(Tracer::pid)).len();
    let cpu0 = tracer.as_ref().map(|t| cpu_seconds(t.pid()));
    let ticks0 = machine_ticks();
    let start = Instant::now();
    let (rps, errors) = wrk(target, LOAD_S, script);
    let window = start.elapsed().as_secs_f64();
    let ticks1 = machine_ticks();
    let cpu_pct = tracer
        .as_ref()
        .zip(cpu0)
        .map(|(t, c0)| 100.0 * (cpu_seconds(t.pid()) - c0) / window);
    let hwm_kib = tracer
        .as_ref()
        .filter(|_| mode == Mode::Agent)
        .map(|t| status_kib(t.pid(), "VmHWM:"));
    let records = tracer.as_ref().and_then(Tracer::socket_records);
    let busy_s = (ticks1.0 - ticks0.0) as f64 / ticks_per_second();
    let s = Sample {
        rps,
        errors,
        busy_us_per_request: 1e6 * busy_s / (rps * window).max(1.0),
        steal_pct: 100.0 * (ticks1.1 - ticks0.1) as f64 / (ticks1.2 - ticks0.2).max(1) as f64,
        cpu_pct,
        hwm_kib,
        others,
    };
    eprintln!(
        "  {:<36} {:<9} {:>8.0} req/s, {:.0} µs CPU per request (steal {:.1} %){}{}{}{}",
        target.name,
        format!("{mode:?}"),
        rps,
        s.busy_us_per_request,
        s.steal_pct,
        if errors > 0 {
            format!(" ({errors} errors)")
        } else {
            String::new()
        },
        cpu_pct
            .map(|c| format!(", tracer CPU {c:.1} % of a core"))
            .unwrap_or_default(),
        records
            .map(|(r, d)| format!(", socket records {r} (last snapshot), lost in kernel {d}"))
            .unwrap_or_default(),
        if others > 0 {
            format!(" [{others} other tracer(s) on the host]")
        } else {
            String::new()
        }
    );
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[test]
#[ignore = "a benchmark: `cargo xtask bench overhead`"]
fn overhead() {
    if !kernel_available("overhead") {
        return;
    }
    let begun = Instant::now();
    let bpf_stats_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|v| v.trim() == "1");
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE invoices (id int PRIMARY KEY, customer int NOT NULL, amount numeric NOT NULL, status text NOT NULL)",
    );
    pg.sql(&format!(
        "INSERT INTO invoices SELECT g, g % 1000, (g % 997) * 1.25, \
         (ARRAY['open','paid','overdue'])[g % 3 + 1] FROM generate_series(1, {INVOICES}) g"
    ));
    pg.sql("VACUUM ANALYZE invoices");

    let gport = free_port();
    let mut gcmd = gunicorn_command("overhead.wsgi:app", 3, gport);
    gcmd.env("PG_DSN", pg.tcp_dsn()).stderr(Stdio::null());
    let gunicorn = Proc::spawn(&mut gcmd);
    let uport = free_port();
    let mut ucmd = Command::new(venv().join("bin/uvicorn"));
    ucmd.args(["overhead.asgi:app", "--workers", "2", "--host", "127.0.0.1"])
        .args(["--port", &uport.to_string(), "--log-level", "warning"])
        .args(["--no-access-log", "--app-dir"])
        .arg(apps_dir())
        .env("PG_DSN", pg.tcp_url())
        .stderr(Stdio::null());
    let _uvicorn = Proc::spawn(&mut ucmd);
    wait_http(gport);
    wait_http(uport);

    let script = dir.path().join("invoices.lua");
    std::fs::write(
        &script,
        format!(
            "math.randomseed(12)\nrequest = function()\n  return wrk.format(\"GET\", \"/invoices/\" .. math.random(1, {INVOICES}))\nend\n"
        ),
    )
    .expect("wrk script");
    let bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let targets = [
        Target {
            name: "gunicorn sync ×3  GET /ping",
            port: gport,
            path: Some("/ping"),
            modes: if bpftrace {
                vec![Mode::Untraced, Mode::Agent, Mode::Bpftrace]
            } else {
                vec![Mode::Untraced, Mode::Agent]
            },
            gunicorn: true,
        },
        Target {
            name: "gunicorn sync ×3  GET /invoices/<id>",
            port: gport,
            path: None,
            modes: vec![Mode::Untraced, Mode::Agent],
            gunicorn: true,
        },
        Target {
            name: "uvicorn ×2        GET /invoices/<id>",
            port: uport,
            path: None,
            modes: vec![Mode::Untraced, Mode::Agent],
            gunicorn: false,
        },
    ];
    // Warm-up: workers import, connect to PostgreSQL, fill caches.
    for t in &targets {
        wrk(t, 2, &script);
        if t.path.is_some() {
            // The /ping target shares its server with /invoices: open the connections too.
            wrk(&targets[1], 2, &script);
        }
    }
    let workers = children(gunicorn.pid());
    assert_eq!(workers.len(), 3, "gunicorn workers: {workers:?}");
    let profiled = std::env::var("HERDWATCH_OVERHEAD_PROFILE")
        .ok()
        .map(|t| match t.as_str() {
            "invoices" => &targets[1],
            "uvicorn" => &targets[2],
            _ => &targets[0],
        });
    if let Some(target) = profiled
        && std::env::var_os("HERDWATCH_OVERHEAD_PROFILE_ONLY").is_some()
    {
        if std::env::var_os("HERDWATCH_OVERHEAD_PROFILE_SYSTEM").is_some() {
            system_profile(target, dir.path(), &script);
        } else {
            profile(target, dir.path(), &script);
        }
        return;
    }
    let bt = bpftrace_program(&workers);

    let mut samples: Vec<Vec<(Mode, Sample)>> = targets.iter().map(|_| Vec::new()).collect();
    for r in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", r + 1);
        for (t, target) in targets.iter().enumerate() {
            let mut modes = target.modes.clone();
            let n = modes.len();
            modes.rotate_left(r % n);
            for mode in modes {
                let s = round(target, mode, dir.path(), &script, &bt);
                samples[t].push((mode, s));
            }
        }
    }

    let bystander = bystander_syscall_cost(dir.path());

    // Idle: the apps stay up, nothing loads them.
    eprintln!("idle agent, {IDLE_S} s");
    let time_wait = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|t| {
            let tcp = t.lines().find(|l| l.starts_with("TCP:"))?.to_string();
            let mut f = tcp.split_whitespace();
            f.find(|w| *w == "tw")?;
            f.next()?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let (idle_pct, idle_rss, idle_hwm, idle_others) = {
        let agent = start_agent(dir.path());
        let others = other_tracers(Some(agent.pid())).len();
        std::thread::sleep(Duration::from_secs(2));
        let c0 = cpu_seconds(agent.pid());
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(IDLE_S));
        let pct = 100.0 * (cpu_seconds(agent.pid()) - c0) / start.elapsed().as_secs_f64();
        (
            pct,
            status_kib(agent.pid(), "VmRSS:"),
            status_kib(agent.pid(), "VmHWM:"),
            others,
        )
    };

    let pick = |t: usize, mode: Mode, f: &dyn Fn(&Sample) -> Option<f64>| {
        median(
            samples[t]
                .iter()
                .filter(|(m, _)| *m == mode)
                .filter_map(|(_, s)| f(s))
                .collect(),
        )
    };
    // Each round's traced run against the same round's untraced run, minutes apart at most:
    // the host's speed drifts by more than the agent costs (untraced /ping ran 4204, 3985,
    // 5249 req/s in three rounds of one run), so ratios of separate medians mix that drift in.
    // Per round, `f` of the traced run over `f` of the same round's untraced run.
    let paired = |t: usize, mode: Mode, f: fn(&Sample) -> f64| -> Vec<f64> {
        let of = |m: Mode| {
            samples[t]
                .iter()
                .filter(move |(x, _)| *x == m)
                .map(move |(_, s)| f(s))
        };
        of(mode)
            .zip(of(Mode::Untraced))
            .map(|(a, b)| a / b)
            .collect()
    };
    let round_ratios = |t: usize, mode: Mode| paired(t, mode, |s| s.rps);
    // Requests per busy CPU-second of the machine: traced/untraced is the throughput ratio a
    // CPU-bound host would see, without the hypervisor's steal in it.
    let cost_ratios = |t: usize, mode: Mode| paired(t, mode, |s| 1.0 / s.busy_us_per_request);
    let spread = |ratios: &[f64]| {
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "bench overhead: wrk -t2 -c8 -d{LOAD_S}s per round, {ROUNDS} rounds per mode (order rotated each round); throughput medians, ratio = median of the rounds' own traced/untraced ratios (their range after it); {cpus} CPUs, nothing pinned"
    );
    println!(
        "  agent: {} run --json (embedded defaults: socket tracing and Python frames on, 2000 ms interval; only its Prometheus port, API socket and state dir moved to a temp dir)",
        agent_binary().display()
    );
    println!(
        "  {:<36} {:>10} {:>10} {:>7} {:>11}  {:<10} {:>17}  goal   {:>10} {:>11}",
        "target",
        "untraced",
        "traced",
        "ratio",
        "(rounds)",
        "goal",
        "agent CPU/1k rps",
        "cost ratio",
        "(rounds)"
    );
    let mut ping_ratio = f64::NAN;
    for (t, target) in targets.iter().enumerate() {
        let base = pick(t, Mode::Untraced, &|s| Some(s.rps));
        let traced = pick(t, Mode::Agent, &|s| Some(s.rps));
        let ratios = round_ratios(t, Mode::Agent);
        let ratio = median(ratios.clone());
        let per_1k = pick(t, Mode::Agent, &|s| Some(s.cpu_pct? / (s.rps / 1000.0)));
        let costs = cost_ratios(t, Mode::Agent);
        let cost = median(costs.clone());
        if t == 0 {
            ping_ratio = ratio;
        }
        let ratio_goal = if target.gunicorn {
            format!("≥ {GOAL_RATIO} {}", mark(ratio >= GOAL_RATIO))
        } else {
            "—".to_string()
        };
        let cost_goal = if target.gunicorn {
            mark(cost >= GOAL_RATIO)
        } else {
            ""
        };
        println!(
            "  {:<36} {:>6.0} r/s {:>6.0} r/s {:>7.3} {:>11}  {:<10} {:>9.2} % core  ≤ {GOAL_CPU_PER_1K} % {}   {:>8.3} {} {:>11}",
            target.name,
            base,
            traced,
            ratio,
            spread(&ratios),
            ratio_goal,
            per_1k,
            mark(per_1k <= GOAL_CPU_PER_1K),
            cost,
            cost_goal,
            spread(&costs)
        );
    }
    println!(
        "  (agent CPU = its process's utime+stime over the loaded window; its eBPF programs run in the apps' syscalls and show in the ratio)"
    );
    let steal = median(samples.iter().flatten().map(|(_, s)| s.steal_pct).collect());
    println!(
        "  (cost ratio = requests per busy CPU-second of the whole machine, traced over untraced, paired by round: the throughput a CPU-bound host keeps, without the {steal:.1} % median steal of this run's hypervisor in it)"
    );
    let errors: u64 = samples.iter().flatten().map(|(_, s)| s.errors).sum();
    if errors > 0 {
        println!("  (wrk counted {errors} errors or non-2xx responses in all rounds)");
    }
    if bpf_stats_on {
        println!(
            "  ⚠ kernel.bpf_stats_enabled was already 1 (someone else's): every eBPF program run was also timed"
        );
    }
    let contaminated = samples
        .iter()
        .flatten()
        .filter(|(_, s)| s.others > 0)
        .count();
    if contaminated > 0 {
        println!(
            "  ⚠ {contaminated} of {} rounds ran while another herdwatch or bpftrace was tracing this host: its programs ran in every mode, 'untraced' included",
            samples.iter().flatten().count()
        );
    }
    if bpftrace {
        let bt_ratios = round_ratios(0, Mode::Bpftrace);
        let bt_ratio = median(bt_ratios.clone());
        let bt_cpu = pick(0, Mode::Bpftrace, &|s| s.cpu_pct);
        let bt_cost = median(cost_ratios(0, Mode::Bpftrace));
        println!(
            "  peer on gunicorn /ping: bpftrace (enter+exit of read/write/sendto/recvfrom, 200 B prefix into a map; accept4/close counted; the 3 workers' pids only) ratio {bt_ratio:.3} (rounds {}), cost ratio {bt_cost:.3}, its userspace {bt_cpu:.1} % of a core; herdwatch {ping_ratio:.3} ({})",
            spread(&bt_ratios),
            if ping_ratio >= bt_ratio {
                "at or above the floor ✓"
            } else {
                "below the floor ✗"
            }
        );
    } else {
        println!("  peer: bpftrace not installed, no comparison");
    }
    println!(
        "  idle agent ({IDLE_S} s, default interval, apps up and unloaded, {time_wait} TCP sockets in TIME_WAIT left by the load): {idle_pct:.2} % of a core (goal ≤ {GOAL_IDLE} % {}){}",
        mark(idle_pct <= GOAL_IDLE),
        if idle_others > 0 {
            format!(
                " [{idle_others} other tracer(s) on the host: their load is not ours, but the host was not idle]"
            )
        } else {
            String::new()
        }
    );
    println!(
        "  a process nobody traces (dd bs=1, {DD_CALLS} reads and writes, median of {ROUNDS} paired rounds): {:.0} ns per call untraced, {:+.0} ns with the agent",
        bystander.0, bystander.1
    );
    let peak_kib = samples
        .iter()
        .flatten()
        .filter_map(|(_, s)| s.hwm_kib)
        .max()
        .unwrap_or(0)
        .max(idle_hwm);
    let steady_mib = idle_rss as f64 / 1024.0;
    println!(
        "  RSS: peak {:.1} MiB (VmHWM, max over traced rounds and idle); steady {steady_mib:.1} MiB (VmRSS at the end of idle; goal ≤ {GOAL_RSS_MIB} MiB {})",
        peak_kib as f64 / 1024.0,
        mark(steady_mib <= GOAL_RSS_MIB)
    );
    println!("  took {:.0} s", begun.elapsed().as_secs_f64());

    if let Some(target) = profiled {
        profile(target, dir.path(), &script);
    }
}

/// (program id, run_time_ns, run_cnt) of every eBPF program `pid` holds an fd of.
fn agent_programs(pid: u32) -> Vec<(u32, u64, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.expect("fdinfo entry").path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(ns), Some(n)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            out.push((id as u32, ns, n));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// One traced round on `target` with the kernel's per-program run time of this agent's
/// programs and, if there is `perf`, where the agent's own CPU goes.
fn profile(target: &Target, dir: &Path, script: &Path) {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("bpf_stats_enabled");
    let agent = start_agent(dir);
    let data = dir.join("perf.data");
    let perf = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "--call-graph",
            "dwarf",
            "-o",
        ])
        .arg(&data)
        .args(["-p", &agent.pid().to_string(), "--", "sleep", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let counters = |a: &Tracer| {
        [
            "/socket_events_received",
            "/python/stacks_walked",
            "/python/walk_ns",
        ]
        .map(|p| a.agent_counter(p).unwrap_or(0))
    };
    let before = counters(&agent);
    let cpu_before = cpu_seconds(agent.pid());
    let (rps, _) = wrk(target, 10, script);
    let agent_cpu = cpu_seconds(agent.pid()) - cpu_before;
    // The agent prints a snapshot a second: wait for one taken after the load.
    std::thread::sleep(Duration::from_millis(2500));
    let after = counters(&agent);
    let perf_ok = perf.and_then(|mut p| p.wait()).is_ok_and(|s| s.success());
    println!();
    println!(
        "profile: one traced round of {} for 10 s at {rps:.0} req/s, kernel.bpf_stats_enabled on",
        target.name
    );
    let requests = (rps * 10.0).max(1.0);
    let per_request = |i: usize| (after[i] - before[i]) as f64 / requests;
    let walks = after[1] - before[1];
    println!(
        "  per request: {:.1} socket records, {:.1} Python stack walks of {:.0} ns each; agent CPU {:.2} % of a core per 1k req/s (perf and bpf_stats on)",
        per_request(0),
        per_request(1),
        (after[2] - before[2]) as f64 / walks.max(1) as f64,
        100.0 * agent_cpu / 10.0 / (rps / 1000.0)
    );
    // The agent's own programs: the bpf fds it holds (fdinfo has id, run time and count), so
    // another agent on the host is not counted; names from the kernel's program list.
    let names: std::collections::HashMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect();
    let mut rows: Vec<(String, u64, u64)> = agent_programs(agent.pid())
        .into_iter()
        .map(|(id, ns, n)| (names.get(&id).cloned().unwrap_or(format!("id {id}")), ns, n))
        .filter(|(_, _, n)| *n > 0)
        .collect();
    if rows.is_empty() {
        println!("  no per-program figures (no run counts in the agent's fdinfo)");
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    println!(
        "  {:<18} {:>12} {:>10} {:>8}",
        "program", "runs", "total ms", "ns/run"
    );
    for (name, ns, n) in rows {
        println!(
            "  {name:<18} {n:>12} {:>10.1} {:>8.0}",
            ns as f64 / 1e6,
            ns as f64 / n as f64
        );
    }
    drop(agent);
    if !perf_ok {
        println!("  perf record failed or perf is missing: no userspace profile");
        return;
    }
    let keep = PathBuf::from("/tmp/herdwatch-overhead-perf.data");
    let _ = std::fs::copy(&data, &keep);
    let report = |extra: &[&str]| {
        Command::new("perf")
            .args(["report", "--no-children", "--stdio", "-g", "none", "-i"])
            .arg(&keep)
            .args(extra)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let top = |text: String| {
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(15)
        {
            println!("  {}", line.trim_end());
        }
    };
    println!(
        "  perf (cpu-clock 999 Hz, dwarf call graphs) of the agent, self time, top 15 of all (data kept at {}):",
        keep.display()
    );
    top(report(&["--sort", "dso,symbol"]));
    println!("  top 15 in the agent's own code (self, share of all its samples):");
    top(report(&["--sort", "symbol", "--dsos", "herdwatch"]));
    println!(
        "  top 10 agent functions by inclusive time (children: the kernel work they cause too):"
    );
    let inclusive = Command::new("perf")
        .args([
            "report",
            "--children",
            "--stdio",
            "-g",
            "none",
            "--sort",
            "symbol",
            "-i",
        ])
        .arg(&keep)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in inclusive
        .lines()
        .filter(|l| l.contains("herdwatch::") && !l.contains("(inlined)"))
        .take(10)
    {
        println!("  {}", line.trim_end());
    }
}

/// CPU µs per request by symbol (kernel and user, every process) over one `wrk` round of
/// `target`, from a system-wide `perf record`; and the requests served.
fn machine_symbols(
    target: &Target,
    script: &Path,
    name: &str,
) -> Option<(Vec<(String, f64)>, f64)> {
    const HZ: f64 = 999.0;
    // Kept after the run, for `perf report -i` on other sort keys.
    let data = PathBuf::from(format!("/tmp/herdwatch-overhead-system-{name}.data"));
    let mut perf = Command::new("perf")
        .args(["record", "-a", "-g", "-e", "cpu-clock", "-F", "999", "-o"])
        .arg(&data)
        .args(["--", "sleep", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let (rps, _) = wrk(target, 10, script);
    if !perf.wait().is_ok_and(|s| s.success()) {
        return None;
    }
    let out = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-g",
            "none",
            "-n",
            "--sort",
            "dso,symbol",
            "-i",
        ])
        .arg(&data)
        .output()
        .ok()?;
    let requests = (rps * 10.0).max(1.0);
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            // "  12.34%   5678  dso  [k] symbol"
            let mut f = l.split_whitespace();
            f.next()?;
            let samples: f64 = f.next()?.parse().ok()?;
            let symbol = f.collect::<Vec<_>>().join(" ");
            Some((symbol, 1e6 * samples / HZ / requests))
        })
        .collect();
    Some((rows, rps))
}

/// Where the traced machine spends more CPU per request than the untraced one.
fn system_profile(target: &Target, dir: &Path, script: &Path) {
    let Some((untraced, base_rps)) = machine_symbols(target, script, "untraced") else {
        println!("perf record -a failed or perf is missing: no system profile");
        return;
    };
    let agent = start_agent(dir);
    let traced = machine_symbols(target, script, "traced");
    drop(agent);
    let Some((traced, rps)) = traced else {
        println!("perf record -a failed during the traced round");
        return;
    };
    let total = |rows: &[(String, f64)]| rows.iter().map(|r| r.1).sum::<f64>();
    println!();
    println!(
        "system profile of {} (perf cpu-clock 999 Hz, all CPUs, 10 s each): untraced {base_rps:.0} req/s, {:.0} µs CPU per request; traced {rps:.0} req/s, {:.0} µs",
        target.name,
        total(&untraced),
        total(&traced)
    );
    let before: std::collections::HashMap<&str, f64> =
        untraced.iter().map(|(s, v)| (s.as_str(), *v)).collect();
    let mut grown: Vec<(&str, f64, f64)> = traced
        .iter()
        .map(|(s, v)| {
            (
                s.as_str(),
                before.get(s.as_str()).copied().unwrap_or(0.0),
                *v,
            )
        })
        .collect();
    grown.sort_by(|a, b| (b.2 - b.1).total_cmp(&(a.2 - a.1)));
    println!(
        "  {:>9} {:>9} {:>9}  symbol (µs per request)",
        "untraced", "traced", "grown"
    );
    for (symbol, a, b) in grown.into_iter().take(30) {
        println!("  {a:>9.2} {b:>9.2} {:>+9.2}  {symbol}", b - a);
    }
}
