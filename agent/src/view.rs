//! The live terminal view: pools with busy/idle workers and accept queues, top processes by CPU
//! and by run-queue delay. A pure function of a snapshot, so it is testable and `--once` prints
//! exactly what the live view shows.
use std::fmt::Write as _;

use crate::{pipeline::Snapshot, procs::worker_state::WorkerState};

const TOP: usize = 10;

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let util = s
        .host
        .cpu_utilization
        .map(|u| format!("{:.1}%", u * 100.0))
        .unwrap_or_else(|| "…".into());
    let _ = writeln!(
        out,
        "herdwatch — host CPU {util} of {} CPUs · {} processes · {} threads · interval {} ms",
        s.host.cpus, s.agent.processes_tracked, s.agent.threads_tracked, s.interval_ms
    );
    let drops =
        s.agent.events_channel_full + s.agent.kernel.events_dropped + s.agent.events_malformed;
    if drops > 0 {
        let _ = writeln!(
            out,
            "! dropped events: {} ring buffer full, {} channel full, {} malformed",
            s.agent.kernel.events_dropped, s.agent.events_channel_full, s.agent.events_malformed
        );
    }

    let _ = writeln!(out, "\nPOOLS");
    if s.pools.is_empty() {
        let _ = writeln!(out, "  (no gunicorn or uvicorn pools found)");
    }
    for pool in &s.pools {
        let listeners: Vec<String> = pool
            .listeners
            .iter()
            .map(|l| match l.accept_queue {
                Some(q) => format!("{} (accept queue {q})", l.address),
                None => l.address.clone(),
            })
            .collect();
        let _ = writeln!(
            out,
            "  {} [{}] master {} · {}/{} workers busy · CPU {:.1}% · {}",
            pool.name,
            pool.pool.worker_class,
            pool.pool.master,
            pool.busy_workers,
            pool.worker_states.len(),
            pool.cpu_percent,
            if listeners.is_empty() {
                "no listen socket found".to_string()
            } else {
                listeners.join(", ")
            }
        );
        let workers: Vec<String> = pool
            .worker_states
            .iter()
            .map(|w| {
                let mark = match w.state {
                    WorkerState::Running => "run",
                    WorkerState::Blocked => "blocked",
                    WorkerState::Idle => "idle",
                    WorkerState::Unknown => "?",
                };
                format!("{}:{mark} {:.0}%", w.pid, w.cpu_percent)
            })
            .collect();
        let _ = writeln!(out, "    workers {}", workers.join("  "));
    }

    let _ = writeln!(out, "\nTOP PROCESSES BY CPU (% of one CPU)");
    for p in s.processes.iter().filter(|p| p.cpu_percent > 0.0).take(TOP) {
        let _ = writeln!(
            out,
            "  {:>7} {:>6.1}%  {:<16} {}",
            p.pid, p.cpu_percent, p.comm, p.cmdline
        );
    }
    let _ = writeln!(out, "\nTOP PROCESSES BY RUN-QUEUE DELAY (ms waited per s)");
    let mut by_delay: Vec<_> = s
        .processes
        .iter()
        .filter(|p| p.run_delay_ms_per_s > 0.0)
        .collect();
    by_delay.sort_by(|a, b| b.run_delay_ms_per_s.total_cmp(&a.run_delay_ms_per_s));
    for p in by_delay.into_iter().take(TOP) {
        let _ = writeln!(
            out,
            "  {:>7} {:>7.1}  max wait {:>6.1} ms  {:<16} {}",
            p.pid,
            p.run_delay_ms_per_s,
            p.totals.run_delay_max_ns as f64 / 1e6,
            p.comm,
            p.cmdline
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::snapshot::{HostView, ProcessView};

    #[test]
    fn renders_processes_and_empty_pools() {
        let s = Snapshot {
            host: HostView {
                cpus: 2,
                cpu_utilization: Some(0.915),
            },
            processes: vec![ProcessView {
                pid: 42,
                ppid: 1,
                comm: "python3".into(),
                cmdline: "python3 burn.py".into(),
                totals: Default::default(),
                cpu_percent: 99.5,
                run_delay_ms_per_s: 12.0,
                threads: 1,
            }],
            ..Default::default()
        };
        let text = render(&s);
        assert!(text.contains("host CPU 91.5% of 2 CPUs"), "{text}");
        assert!(text.contains("no gunicorn or uvicorn pools"), "{text}");
        assert!(text.contains("42   99.5%"), "{text}");
        assert!(text.contains("12.0"), "{text}");
    }
}
