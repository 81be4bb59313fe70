//! `cargo xtask bench sched`: the cost of tracing on a context-switch-heavy workload. A socketpair
//! ping-pong between two threads is timed interleaved, round by round, with no tracer, with
//! herdwatch attached and with an equivalent bpftrace one-liner; the medians' ratios are printed.
//! Nothing is asserted: the figure is for people, since these machines are shared and noisy.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::setup;

const ROUND_TRIPS: u32 = 200_000;
const BPFTRACE_PROGRAM: &str = "tracepoint:sched:sched_switch { @[args->prev_pid] = count(); }";

/// Pins the calling thread to `cpu`, so both sides of the ping-pong share one CPU and every
/// round trip is two direct context switches (no idle exits or cross-CPU wakeups, which on a
/// VM cost more than the switches and would hide the tracer's cost).
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; pid 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

const BENCH_CPU: usize = 0;

/// One round trip = two blocking reads = two context switches on the shared CPU.
fn ping_pong(round_trips: u32) -> anyhow::Result<Duration> {
    let (mut a, mut b) = UnixStream::pair()?;
    pin_to(BENCH_CPU)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        pin_to(BENCH_CPU)?;
        let mut byte = [0u8; 1];
        for _ in 0..round_trips {
            b.read_exact(&mut byte)?;
            b.write_all(&byte)?;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut byte = [7u8; 1];
    for _ in 0..round_trips {
        a.write_all(&byte)?;
        a.read_exact(&mut byte)?;
    }
    let took = start.elapsed();
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(took)
}

struct Tracer {
    child: Child,
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // SIGINT lets bpftrace and herdwatch detach cleanly.
        send_signal(self.child.id(), 2);
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

fn send_signal(pid: u32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Starts a tracer and waits until its stdout prints a line saying it is attached.
fn start_tracer(cmd: &mut Command, ready: &str) -> anyhow::Result<Tracer> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let stdout = child.stdout.take().context("tracer stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let tracer = Tracer { child };
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains(ready) => break,
            Some(Ok(_)) => continue,
            _ => bail!("tracer exited before it was ready ({cmd:?})"),
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(tracer)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn sched(rounds: u32) -> anyhow::Result<()> {
    let root = setup::workspace_root();
    setup::run_checked(
        Command::new("cargo")
            .args(["build", "--release", "--quiet", "--package", "herdwatch"])
            .current_dir(&root),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let herdwatch = target.join("release/herdwatch");
    let bpftrace_available = Command::new("bpftrace")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);

    let rounds_measured = sched_rounds(rounds, &herdwatch, bpftrace_available)?;
    report_sched(rounds, rounds_measured);
    Ok(())
}

/// Round-trip times of each tracer setting, one list per setting.
#[derive(Default)]
struct SchedRounds {
    none: Vec<Duration>,
    traced: Vec<Duration>,
    sched_only: Vec<Duration>,
    bpftrace: Vec<Duration>,
}

/// Runs the interleaved rounds: untraced, the agent, the agent without socket tracing, and
/// bpftrace's scheduler one-liner where installed.
fn sched_rounds(
    rounds: u32,
    herdwatch: &std::path::Path,
    bpftrace_available: bool,
) -> anyhow::Result<SchedRounds> {
    let SchedRounds {
        mut none,
        mut traced,
        mut sched_only,
        mut bpftrace,
    } = SchedRounds::default();
    ping_pong(ROUND_TRIPS / 10)?; // warm-up
    for round in 1..=rounds.max(1) {
        none.push(ping_pong(ROUND_TRIPS)?);
        {
            let _agent = start_tracer(
                Command::new(herdwatch).args(["run", "--json", "--interval-ms", "1000"]),
                "{",
            )?;
            traced.push(ping_pong(ROUND_TRIPS)?);
        }
        {
            // Like for like with the bpftrace one-liner: scheduler tracepoints only.
            let _agent = start_tracer(
                Command::new(herdwatch).args([
                    "run",
                    "--json",
                    "--interval-ms",
                    "1000",
                    "--no-socket-tracing",
                ]),
                "{",
            )?;
            sched_only.push(ping_pong(ROUND_TRIPS)?);
        }
        if bpftrace_available {
            let _bt = start_tracer(
                Command::new("bpftrace").args([
                    "-e",
                    &format!("BEGIN {{ printf(\"attached\\n\"); }} {BPFTRACE_PROGRAM}"),
                ]),
                "attached",
            )?;
            bpftrace.push(ping_pong(ROUND_TRIPS)?);
        }
        eprintln!(
            "round {round}/{rounds}: none {:?}, herdwatch {:?}{}",
            none.last().copied().unwrap_or_default(),
            traced.last().copied().unwrap_or_default(),
            bpftrace
                .last()
                .map(|d| format!(", bpftrace {d:?}"))
                .unwrap_or_default()
        );
    }
    Ok(SchedRounds {
        none,
        traced,
        sched_only,
        bpftrace,
    })
}

fn report_sched(rounds: u32, measured: SchedRounds) {
    let SchedRounds {
        none,
        traced,
        sched_only,
        bpftrace,
    } = measured;
    let base = median(none).as_secs_f64();
    let per_rt = |d: f64| d / f64::from(ROUND_TRIPS) * 1e6;
    println!(
        "bench sched: {ROUND_TRIPS} socketpair round trips between two threads pinned to CPU {BENCH_CPU}, median of {rounds} interleaved rounds"
    );
    println!("  no tracer : {:.2} µs/round trip", per_rt(base));
    let hw = median(traced).as_secs_f64();
    let hs = median(sched_only).as_secs_f64();
    println!(
        "  herdwatch, all probes (scheduler + read/write syscall tracepoints): {:.2} µs/round trip, slowdown ratio {:.3}",
        per_rt(hw),
        hw / base
    );
    println!(
        "  herdwatch, scheduler and process probes only (--no-socket-tracing): {:.2} µs/round trip, slowdown ratio {:.3}",
        per_rt(hs),
        hs / base
    );
    if bpftrace.is_empty() {
        println!("  bpftrace  : not installed (apt-get install bpftrace), no comparison");
    } else {
        let bt = median(bpftrace).as_secs_f64();
        println!(
            "  bpftrace sched_switch one-liner: {:.2} µs/round trip, slowdown ratio {:.3}",
            per_rt(bt),
            bt / base
        );
        println!(
            "  like for like, herdwatch scheduler probes vs bpftrace: {:.3} (goal ≤ 1)",
            hs / bt
        );
        println!(
            "  herdwatch with socket tracing vs bpftrace: {:.3}",
            hw / bt
        );
    }
}

/// Replays the recorded socket-event stream through decode, parse and stitch on one core
/// (agent/benches/pipeline.rs) and prints events/s.
pub fn pipeline() -> anyhow::Result<()> {
    let root = setup::workspace_root();
    setup::run_checked(
        Command::new("cargo")
            .args([
                "bench",
                "--quiet",
                "--package",
                "herdwatch",
                "--bench",
                "pipeline",
            ])
            .current_dir(&root),
    )
}

/// Runs one `#[ignore]`d test of the agent as a benchmark (it needs the suite's real services
/// and apps), in release mode when `release` (timings of the agent itself matter).
pub fn ignored_test(file: &str, test: &str, release: bool) -> anyhow::Result<()> {
    let venv = setup::test_prerequisites()?;
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--package", "herdwatch", "--test", file]);
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--ignored", "--exact", test, "--nocapture"])
        .env("HERDWATCH_TEST_VENV", venv);
    setup::run_checked(&mut cmd)
}
