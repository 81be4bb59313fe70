//! The live terminal view: pools with busy/idle workers and accept queues, top processes by CPU
//! and by run-queue delay. A pure function of a snapshot, so it is testable and `--once` prints
//! exactly what the live view shows.
use std::fmt::Write as _;

use crate::{
    detect::naming::{QUERY_TEXT_CHARS, bounded},
    model::Snapshot,
    procs::worker_state::WorkerState,
};

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

    render_pools(s, &mut out);
    render_processes(s, &mut out);
    render_routes_and_queries(s, &mut out);
    out.push_str(&render_findings(&s.findings, 5));
    out
}

/// The pools panel: each pool's workers and how their time went.
fn render_pools(s: &Snapshot, out: &mut String) {
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
                    WorkerState::Serving => "serving",
                    WorkerState::Idle => "idle",
                    WorkerState::Unknown => "?",
                };
                format!("{}:{mark} {:.0}%", w.pid, w.cpu_percent)
            })
            .collect();
        let _ = writeln!(out, "    workers {}", workers.join("  "));
        if let Some(t) = pool.time_share {
            let _ = writeln!(
                out,
                "    worker time: {:.0}% on CPU · {:.0}% waiting on PostgreSQL · {:.0}% other",
                t.on_cpu * 100.0,
                t.db_wait * 100.0,
                t.other * 100.0
            );
        }
    }
}

/// The top processes by CPU and by run-queue delay.
fn render_processes(s: &Snapshot, out: &mut String) {
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
}

/// The findings panel: active first, each with its cause and what stops it recurring.
pub fn render_findings(findings: &[crate::model::Finding], max: usize) -> String {
    let mut out = String::new();
    let active = findings.iter().filter(|f| f.active).count();
    let _ = writeln!(
        out,
        "\nFINDINGS ({active} active, {} known)",
        findings.len()
    );
    if findings.is_empty() {
        let _ = writeln!(out, "  (none: no repeating pattern seen)");
    }
    for f in findings.iter().take(max) {
        let _ = writeln!(
            out,
            "  {} {} {:?} {:?} ×{} since {} · last {}",
            if f.active { "●" } else { "○" },
            f.id,
            f.kind,
            f.severity,
            f.occurrences,
            crate::model::pool_event::clock_text(f.first_seen_unix_ms),
            crate::model::pool_event::clock_text(f.last_seen_unix_ms),
        );
        let _ = writeln!(out, "      cause: {}", f.root_cause);
        let _ = writeln!(out, "      stops it recurring: {}", f.prevention);
        let _ = writeln!(out, "      proposal: {}", f.remediation);
        for a in &f.annotations {
            let _ = writeln!(out, "      linked: {a}");
        }
    }
    out
}

fn per_request_ms(total_ns: u64, n: u64) -> f64 {
    total_ns as f64 / n.max(1) as f64 / 1e6
}

fn render_routes_and_queries(s: &Snapshot, out: &mut String) {
    for (title, key) in [("TOP ROUTES BY CPU", 0usize), ("TOP ROUTES BY DB WAIT", 1)] {
        let mut routes: Vec<_> = s.routes.iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(if key == 0 { r.cpu_ns } else { r.db_wait_ns }));
        let _ = writeln!(out, "\n{title} (since start)");
        if routes.is_empty() {
            let _ = writeln!(out, "  (no HTTP requests traced yet)");
        }
        for r in routes.into_iter().take(TOP) {
            let errors: u64 = r
                .by_status
                .iter()
                .filter(|(code, _)| **code >= 500)
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(
                out,
                "  {:<6} {:<32} {:>7} req  CPU {:>7.1} s ({:>6.1} ms/req)  DB wait {:>7.1} s ({:>6.1} ms/req)  {} queries  {} 5xx",
                r.method,
                r.route,
                r.requests,
                r.cpu_ns as f64 / 1e9,
                per_request_ms(r.cpu_ns, r.requests),
                r.db_wait_ns as f64 / 1e9,
                per_request_ms(r.db_wait_ns, r.requests),
                r.queries,
                errors
            );
        }
    }
    let _ = writeln!(out, "\nTOP QUERIES BY TOTAL TIME (since start)");
    if s.queries.is_empty() {
        let _ = writeln!(out, "  (no PostgreSQL queries traced yet)");
    }
    for q in s.queries.iter().take(TOP) {
        // The statement's own (normalised, bounded) text: many statements share a summary.
        let _ = writeln!(
            out,
            "  {} {:>7} calls  {:>7.1} s total  {:>6.1} ms mean  {} errors  from {}\n    {}",
            q.id,
            q.calls,
            q.total_ns as f64 / 1e9,
            per_request_ms(q.total_ns, q.calls),
            q.errors,
            if q.routes.is_empty() {
                "-".to_string()
            } else {
                q.routes
                    .iter()
                    .map(|r| format!("{} ×{}", r.route, r.calls))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            bounded(&q.normalized, QUERY_TEXT_CHARS)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostView, ProcessView};

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
        assert!(text.contains("no HTTP requests traced yet"), "{text}");
        assert!(text.contains("no PostgreSQL queries traced yet"), "{text}");
    }
}
