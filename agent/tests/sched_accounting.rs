//! The agent's per-process CPU and run-queue figures against the kernel's own
//! /proc/<pid>/schedstat, for real processes started after the agent attached.
mod common;

use std::{process::Command, time::Duration};

use common::*;

const BURN_SECONDS: f64 = 1.0;

/// Burns `seconds` of CPU (process time, so preemption does not shorten the burn), says
/// "done", then blocks on stdin so /proc/<pid>/schedstat stays readable and still.
fn burner(seconds: f64) -> String {
    format!(
        "import sys,time\nt=time.process_time()\nwhile time.process_time()-t<{seconds}: pass\nprint('done',flush=True)\nsys.stdin.readline()\n"
    )
}

/// Sleeps 1 s in two sleeps after 0.3 s of CPU. The CPU is there so that 2 % of its on-CPU
/// time is well above the kernel's own bookkeeping skew: on a wakeup from an idle CPU the
/// scheduler skips a clock update (rq_clock_skip_update) and books the idle-exit latency —
/// ~30 µs on this VM — as on-CPU time, which a pure sleeper's ~50 ms would feel at 2 %.
const SLEEPER: &str = "import sys,time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\ntime.sleep(0.5)\ntime.sleep(0.5)\nprint('done',flush=True)\nsys.stdin.readline()\n";

/// One measurement: (name, agent on-CPU, schedstat on-CPU) for the burner and the sleeper,
/// plus the totals for the other checks.
async fn measure_on_cpu() -> (
    Vec<(&'static str, u64, u64)>,
    herdwatch::procs::CpuTotals,
    herdwatch::procs::CpuTotals,
    String,
) {
    let agent = start_agent().await;
    let mut burn = Proc::spawn(Command::new("python3").args(["-c", &burner(BURN_SECONDS)]));
    let mut sleep = Proc::spawn(Command::new("python3").args(["-c", SLEEPER]));
    burn.wait_line("done");
    sleep.wait_line("done");
    // Both now block on stdin: their counters are closed and still.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snap = agent.snapshot_now().await.expect("snapshot");
    let mut rows = Vec::new();
    for (name, proc) in [("burner", &burn), ("sleeper", &sleep)] {
        let kernel = schedstat(proc.pid(), 0);
        let ours = snap
            .process(proc.pid())
            .unwrap_or_else(|| panic!("{name} not in snapshot"))
            .totals;
        rows.push((name, ours.on_cpu_ns, kernel));
    }
    let totals = |pid| snap.process(pid).map(|p| p.totals).unwrap_or_default();
    (
        rows,
        totals(burn.pid()),
        totals(sleep.pid()),
        format!("{:?}", snap.agent.kernel),
    )
}

#[test]
fn on_cpu_matches_schedstat_and_sleep_shows_as_sleep() {
    if !kernel_available("on_cpu_matches_schedstat_and_sleep_shows_as_sleep") {
        return;
    }
    runtime().block_on(async {
        let (rows, burner_totals, sleeper, drops) = measure_on_cpu().await;
        for (name, ours, kernel) in &rows {
            let err = relative_error(*ours, *kernel);
            eprintln!(
                "{name}: agent on-CPU {ours} ns, schedstat {kernel} ns, error {:.3}%",
                err * 100.0
            );
            // The kernel-side loss counters say why, if this ever fails.
            assert!(
                err <= 0.02,
                "{name}: on-CPU {ours} ns vs schedstat {kernel} ns; kernel-side losses {drops}"
            );
        }
        assert!(
            burner_totals.on_cpu_ns as f64 >= BURN_SECONDS * 0.95e9,
            "burner burnt {} ns",
            burner_totals.on_cpu_ns
        );
        eprintln!(
            "sleeper: sleep {} ns, blocked {} ns, on-CPU {} ns",
            sleeper.sleep_ns, sleeper.blocked_ns, sleeper.on_cpu_ns
        );
        // Two 0.5 s sleeps, each closed by its wakeup, in interruptible sleep.
        assert!(
            sleeper.sleep_ns >= 950_000_000,
            "sleeper slept {} ns",
            sleeper.sleep_ns
        );
        assert!(sleeper.sleep_ns > 2 * sleeper.on_cpu_ns, "mostly asleep");
        assert!(sleeper.voluntary_switches >= 2);
        assert!(
            burner_totals.sleep_ns < sleeper.sleep_ns / 2,
            "burner mostly ran: {burner_totals:?}"
        );
    });
}

#[test]
fn run_queue_delay_of_two_pinned_burners_matches_schedstat() {
    if !kernel_available("run_queue_delay_of_two_pinned_burners_matches_schedstat") {
        return;
    }
    let cpu = (std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        - 1)
    .to_string();
    runtime().block_on(async {
        let agent = start_agent().await;
        let script = burner(BURN_SECONDS);
        let mut a = Proc::spawn(Command::new("taskset").args(["-c", &cpu, "python3", "-c", &script]));
        let mut b = Proc::spawn(Command::new("taskset").args(["-c", &cpu, "python3", "-c", &script]));
        a.wait_line("done");
        b.wait_line("done");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let snap = agent.snapshot_now().await.expect("snapshot");
        for (name, proc) in [("a", &a), ("b", &b)] {
            let kernel = schedstat(proc.pid(), 1);
            let ours = snap.process(proc.pid()).unwrap_or_else(|| panic!("{name} not in snapshot")).totals;
            let err = relative_error(ours.run_delay_ns, kernel);
            eprintln!(
                "pinned {name}: agent run-queue delay {} ns, schedstat {kernel} ns, error {:.3}%; involuntary switches {}",
                ours.run_delay_ns,
                err * 100.0,
                ours.involuntary_switches
            );
            // Sharing one CPU with an equal burner, each waits a large part of a second.
            assert!(kernel > 300_000_000, "{name} barely waited ({kernel} ns): was it really pinned?");
            assert!(err <= 0.05, "{name}: run delay {} ns vs schedstat {kernel} ns ({:.2}% off)", ours.run_delay_ns, err * 100.0);
            assert!(ours.involuntary_switches > 0);
        }
    });
}
