//! What the pipeline publishes every interval: read-only, cheap to clone behind an Arc, and the
//! one thing the terminal view, `--json` and the tests read.
use serde::Serialize;

use super::{ConnectionStats, ExportDrops, Finding, PoolEvent, QueryStats, RouteStats};
use crate::{
    net::Listener,
    probes::maps::KernelDrops,
    procs::{CpuTotals, Pool, worker_state::WorkerState},
};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub taken_at_unix_ms: u64,
    /// Wall time the rates below are computed over (0 for the first snapshot).
    pub interval_ms: u64,
    pub host: HostView,
    /// Every live process, highest CPU first.
    pub processes: Vec<ProcessView>,
    pub pools: Vec<PoolView>,
    pub lifecycle: Vec<crate::procs::table::Lifecycle>,
    /// PostgreSQL query fingerprints since start, most total time first.
    pub queries: Vec<QueryStats>,
    /// HTTP routes since start, most total time first.
    pub routes: Vec<RouteStats>,
    /// Findings, active first (bounded; ids stable per pattern).
    pub findings: Vec<Finding>,
    /// Recent worker exits, starts and reloads per pool, oldest first.
    pub pool_events: Vec<PoolEvent>,
    pub agent: AgentStats,
}

impl Snapshot {
    pub fn process(&self, pid: u32) -> Option<&ProcessView> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// The fingerprint whose normalised text equals that of `sql`.
    pub fn query_like(&self, sql: &str) -> Option<&QueryStats> {
        let id = herdwatch_protocol::fingerprint::fingerprint(sql).hex_id();
        self.queries.iter().find(|q| q.id == id)
    }

    pub fn pool_of_master(&self, master: u32) -> Option<&PoolView> {
        self.pools.iter().find(|p| p.pool.master == master)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostView {
    pub cpus: usize,
    /// Share of all CPUs busy over the interval, 0..=1 (None on the first snapshot).
    pub cpu_utilization: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: String,
    /// Since the agent started watching the process.
    pub totals: CpuTotals,
    /// CPU over the interval, in % of one CPU.
    pub cpu_percent: f64,
    /// Run-queue wait over the interval, ms per second of wall time (summed over threads).
    pub run_delay_ms_per_s: f64,
    pub threads: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub pid: u32,
    pub state: WorkerState,
    pub cpu_percent: f64,
    pub totals: CpuTotals,
    /// Time its PostgreSQL queries took since the agent started (ns).
    pub db_wait_ns: u64,
    /// (utime, stime) ticks read with `state`, to split the pool's CPU by mode.
    #[serde(skip)]
    pub user_system_ticks: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    pub name: String,
    #[serde(flatten)]
    pub pool: Pool,
    pub listeners: Vec<Listener>,
    pub worker_states: Vec<WorkerView>,
    pub busy_workers: usize,
    /// HTTP requests read and not yet answered by the workers.
    pub active_requests: usize,
    /// Busy workers at each of the last snapshots, oldest first (bounded).
    pub busy_history: Vec<usize>,
    /// Master and workers together, % of one CPU.
    pub cpu_percent: f64,
    /// CPU used by the pool's processes since the agent started watching it, ns; cumulative
    /// across worker exits and restarts (`process.cpu.time`).
    pub cpu_time_ns: u64,
    /// `cpu_time_ns` split by the kernel's user/system tick counts of the same processes.
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    /// Time the pool's runnable threads waited for a CPU since then, ns.
    pub run_delay_ns: u64,
    /// How the workers' wall time was spent over the interval (None on the first snapshot).
    pub time_share: Option<TimeShare>,
    /// The master's CPU cgroup, when it is not the root one.
    pub cgroup: Option<CgroupView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupView {
    pub path: String,
    /// CPU quota in CPUs (None = no quota).
    pub limit_cpus: Option<f64>,
    /// CPU used over the interval as a share of the quota (or of all CPUs without one).
    pub cpu_utilization: Option<f64>,
}

/// Shares (0..=1) of the workers' wall time over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TimeShare {
    pub on_cpu: f64,
    pub db_wait: f64,
    /// Neither: waiting for requests, other I/O, run-queue delay, locks.
    pub other: f64,
}

impl PoolView {
    /// Sum of the TCP accept queues (None when no listener exposes one).
    pub fn accept_queue(&self) -> Option<u32> {
        self.listeners
            .iter()
            .filter_map(|l| l.accept_queue)
            .reduce(|a, b| a + b)
    }
}

impl AgentStats {
    /// Events lost, by where they were lost (`herdwatch.agent.dropped{reason}`).
    pub fn drops(&self) -> [(&'static str, u64); 18] {
        [
            ("kernel_ring_full", self.kernel.events_dropped),
            ("kernel_socket_ring_full", self.kernel.socket_events_dropped),
            ("channel_full", self.events_channel_full),
            (
                "malformed",
                self.events_malformed + self.socket_events_malformed,
            ),
            ("connections_evicted", self.connections.evicted),
            ("detector_queue_full", self.detector_records_dropped),
            ("otlp_span_queue_full", self.export.spans_queue_full),
            ("otlp_spans_failed", self.export.spans_failed),
            ("otlp_logs_failed", self.export.logs_failed),
            (
                "otlp_metric_exports_failed",
                self.export.metric_exports_failed,
            ),
            (
                "api_connection_refused",
                self.export.api_connections_refused,
            ),
            ("api_watch_refused", self.export.api_watches_refused),
            ("api_watcher_too_slow", self.export.api_watchers_too_slow),
            ("api_unauthenticated", self.export.api_unauthenticated),
            (
                "api_response_too_large",
                self.export.api_responses_too_large,
            ),
            ("accept_failed", self.export.accept_failed),
            (
                "metrics_connection_refused",
                self.export.metrics_connections_refused,
            ),
            ("protocol_errors", self.connections.protocol_errors),
        ]
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentStats {
    pub events_received: u64,
    pub events_channel_full: u64,
    pub events_malformed: u64,
    pub kernel: KernelDrops,
    /// Full /proc scans so far (1 = only the seed at start).
    pub process_scans: u64,
    pub process_scan_skipped: u64,
    pub processes_tracked: usize,
    pub threads_tracked: usize,
    pub socket_events_received: u64,
    pub socket_events_malformed: u64,
    /// TCP connects not traced because their destination already showed, on an earlier
    /// connection, that it does not speak PostgreSQL (the kernel's destination cache).
    pub connects_known_not_postgres: u64,
    pub connections: ConnectionStats,
    /// Query records (starts, ends, finished queries) the detectors never saw because
    /// their queue between two pipeline events was full.
    pub detector_records_dropped: u64,
    pub python: PythonStats,
    pub export: ExportDrops,
    /// Resident memory of the agent process (bytes).
    pub resident_bytes: u64,
    /// Entries in the agent's tables: bounded, and back where they were after churn.
    pub tables: TableSizes,
}

/// Entries in each table the agent keeps per process, thread or connection — what churn
/// must not grow. (The maps with a fixed size, like the fingerprint table, are bounded by
/// their configured limits and are not listed.)
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TableSizes {
    /// The process table.
    pub processes: usize,
    /// The kernel's per-thread counters, walked at every snapshot.
    pub kernel_threads: usize,
    /// Thread id → thread group cache (threads not yet seen switching out).
    pub thread_groups: usize,
    /// Per-process totals remembered from the previous snapshot.
    pub process_totals: usize,
    /// Open connections, and the per-thread cursors of the connection table.
    pub connections: usize,
    pub connection_threads: usize,
    /// DB wait totals per process.
    pub db_wait_processes: usize,
    /// asyncio Tasks tracked.
    pub tasks: usize,
    /// Thread groups the agent marked for the kernel side (pool workers, seeded sockets).
    pub kernel_marked_processes: usize,
    /// Python workers registered for frame walking.
    pub python_workers: usize,
}

impl TableSizes {
    /// (name, entries) of every table, in a fixed order.
    pub fn entries(&self) -> [(&'static str, usize); 10] {
        [
            ("processes", self.processes),
            ("kernel_threads", self.kernel_threads),
            ("thread_groups", self.thread_groups),
            ("process_totals", self.process_totals),
            ("connections", self.connections),
            ("connection_threads", self.connection_threads),
            ("db_wait_processes", self.db_wait_processes),
            ("tasks", self.tasks),
            ("kernel_marked_processes", self.kernel_marked_processes),
            ("python_workers", self.python_workers),
        ]
    }
}

/// Python processes whose frames the kernel side walks, and what naming them costs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PythonStats {
    /// Pool workers whose interpreter was found and has a known layout.
    pub processes_readable: usize,
    /// Pool workers whose interpreter cannot be read (stripped, unknown version): their
    /// asyncio queries are paired by the thread heuristic and counted as such.
    pub processes_unreadable: usize,
    /// asyncio Tasks tracked (bound to a request or holding finished queries).
    pub tasks_tracked: usize,
    pub code_objects: usize,
    pub code_objects_unreadable: u64,
    /// Workers whose walks stop at their server's request runner (`Handle._run`,
    /// `handle_request`) instead of going on through the server's loop to the chain's end.
    pub walk_boundaries: usize,
    /// Workers whose stacks were searched for that runner without finding it (uvloop, another
    /// server): their walks go on to the chain's end.
    pub walk_boundaries_missing: usize,
    /// Python stacks the kernel side walked, and the kernel time they took in all (ns).
    pub stacks_walked: u64,
    pub walk_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_records_the_detectors_missed_are_counted_as_drops() {
        let stats = AgentStats {
            detector_records_dropped: 7,
            ..AgentStats::default()
        };
        let drops: std::collections::HashMap<_, _> = stats.drops().into_iter().collect();
        assert_eq!(drops.get("detector_queue_full"), Some(&7));
    }

    #[test]
    fn protocol_errors_and_failed_accepts_are_drop_reasons() {
        let mut stats = AgentStats::default();
        stats.connections.protocol_errors = 3;
        stats.export.accept_failed = 2;
        stats.export.metrics_connections_refused = 1;
        let drops: std::collections::HashMap<_, _> = stats.drops().into_iter().collect();
        assert_eq!(drops.get("protocol_errors"), Some(&3));
        assert_eq!(drops.get("accept_failed"), Some(&2));
        assert_eq!(drops.get("metrics_connection_refused"), Some(&1));
    }
}
