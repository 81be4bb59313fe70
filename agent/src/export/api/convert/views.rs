//! The snapshot's views on the wire: host, pools and workers, routes, queries, pool events and
//! the agent's own counts. One way only: clients read these, the agent never reads them back.
use herdwatch_proto::v1 as pb;

use crate::{
    model::{
        AgentStats, ConnectionStats, HostView, LATENCY_BUCKETS_MS, PoolChange, PoolEvent, PoolView,
        PythonStats, QueryStats, RouteStats, Snapshot, WorkerView,
    },
    net::{Listener, Transport},
    probes::maps::KernelDrops,
    procs::{CpuTotals, PoolKind, worker_state::WorkerState},
};

/// Counts that fit u32 on the wire (workers, requests in flight); saturates rather than wraps.
fn count32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn histogram(counts: &[u64]) -> pb::LatencyHistogram {
    pb::LatencyHistogram {
        upper_bounds_ms: LATENCY_BUCKETS_MS.to_vec(),
        counts: counts.to_vec(),
    }
}

impl From<&Snapshot> for pb::Snapshot {
    fn from(s: &Snapshot) -> Self {
        Self {
            taken_at_unix_ms: s.taken_at_unix_ms,
            interval_ms: s.interval_ms,
            host: Some(pb::Host::from(&s.host)),
            pools: s.pools.iter().map(pb::Pool::from).collect(),
            routes: s.routes.iter().map(pb::Route::from).collect(),
            queries: s.queries.iter().map(pb::Query::from).collect(),
            findings: s.findings.iter().map(pb::Finding::from).collect(),
            pool_events: s.pool_events.iter().map(pb::PoolEvent::from).collect(),
            agent: Some(pb::AgentStats::from(&s.agent)),
        }
    }
}

impl From<&HostView> for pb::Host {
    fn from(h: &HostView) -> Self {
        Self {
            cpus: count32(h.cpus),
            cpu_utilization: h.cpu_utilization,
            name: crate::host::node_name().to_string(),
        }
    }
}

impl From<PoolKind> for pb::PoolKind {
    fn from(kind: PoolKind) -> Self {
        match kind {
            PoolKind::Gunicorn => Self::Gunicorn,
            PoolKind::Uvicorn => Self::Uvicorn,
        }
    }
}

impl From<WorkerState> for pb::WorkerState {
    fn from(state: WorkerState) -> Self {
        match state {
            WorkerState::Running => Self::Running,
            WorkerState::Blocked => Self::Blocked,
            WorkerState::Serving => Self::Serving,
            WorkerState::Idle => Self::Idle,
            WorkerState::Unknown => Self::Unknown,
        }
    }
}

impl From<&CpuTotals> for pb::CpuTotals {
    fn from(t: &CpuTotals) -> Self {
        Self {
            on_cpu_ns: t.on_cpu_ns,
            sleep_ns: t.sleep_ns,
            blocked_ns: t.blocked_ns,
            other_off_ns: t.other_off_ns,
            run_delay_ns: t.run_delay_ns,
            run_delay_count: t.run_delay_count,
            run_delay_max_ns: t.run_delay_max_ns,
            voluntary_switches: t.voluntary_switches,
            involuntary_switches: t.involuntary_switches,
        }
    }
}

impl From<&WorkerView> for pb::Worker {
    fn from(w: &WorkerView) -> Self {
        Self {
            pid: w.pid,
            state: pb::WorkerState::from(w.state).into(),
            cpu_percent: w.cpu_percent,
            totals: Some(pb::CpuTotals::from(&w.totals)),
            db_wait_ns: w.db_wait_ns,
        }
    }
}

impl From<&Listener> for pb::Listener {
    fn from(l: &Listener) -> Self {
        let transport = match l.transport {
            Transport::Tcp => pb::Transport::Tcp,
            Transport::Unix => pb::Transport::Unix,
        };
        Self {
            transport: transport.into(),
            address: l.address.clone(),
            port: l.port.map(u32::from),
            accept_queue: l.accept_queue,
        }
    }
}

impl From<&PoolView> for pb::Pool {
    fn from(p: &PoolView) -> Self {
        Self {
            name: p.name.clone(),
            kind: pb::PoolKind::from(p.pool.kind).into(),
            master_pid: p.pool.master,
            app: p.pool.app.clone(),
            worker_class: p.pool.worker_class.clone(),
            configured_workers: p.pool.configured_workers,
            configured_binds: p.pool.configured_binds.clone(),
            listeners: p.listeners.iter().map(pb::Listener::from).collect(),
            workers: p.worker_states.iter().map(pb::Worker::from).collect(),
            busy_workers: count32(p.busy_workers),
            active_requests: count32(p.active_requests),
            busy_history: p.busy_history.iter().copied().map(count32).collect(),
            cpu_percent: p.cpu_percent,
            cpu_time_ns: p.cpu_time_ns,
            cpu_user_ns: p.cpu_user_ns,
            cpu_system_ns: p.cpu_system_ns,
            run_delay_ns: p.run_delay_ns,
            time_share: p.time_share.map(|t| pb::TimeShare {
                on_cpu: t.on_cpu,
                db_wait: t.db_wait,
                other: t.other,
            }),
            cgroup: p.cgroup.as_ref().map(|c| pb::Cgroup {
                path: c.path.clone(),
                limit_cpus: c.limit_cpus,
                cpu_utilization: c.cpu_utilization,
            }),
            accept_queue: p.accept_queue(),
        }
    }
}

impl From<&RouteStats> for pb::Route {
    fn from(r: &RouteStats) -> Self {
        Self {
            pool: r.pool.clone(),
            method: r.method.clone(),
            route: r.route.clone(),
            requests: r.requests,
            statuses: r
                .by_status
                .iter()
                .map(|(status, count)| pb::StatusCount {
                    status: u32::from(*status),
                    count: *count,
                })
                .collect(),
            unanswered: r.unanswered,
            total_ns: r.total_ns,
            max_ns: r.max_ns,
            latency: Some(histogram(&r.latency.0)),
            cpu_ns: r.cpu_ns,
            db_wait_ns: r.db_wait_ns,
            queries: r.queries,
            pids: r.pids.clone(),
        }
    }
}

impl From<&QueryStats> for pb::Query {
    fn from(q: &QueryStats) -> Self {
        Self {
            id: q.id.clone(),
            summary: q.summary.clone(),
            operation: q.operation.clone(),
            // The normalised text only: the model never holds a raw literal to leak.
            normalized_text: q.normalized.clone(),
            calls: q.calls,
            errors: q.errors,
            errors_by_sqlstate: q
                .errors_by_sqlstate
                .iter()
                .map(|(sqlstate, count)| pb::SqlstateCount {
                    sqlstate: sqlstate.clone(),
                    count: *count,
                })
                .collect(),
            aborted: q.aborted,
            rows: q.rows,
            total_ns: q.total_ns,
            max_ns: q.max_ns,
            latency: Some(histogram(&q.latency.0)),
            text_unknown: q.text_unknown,
            pids: q.pids.clone(),
            routes: q
                .routes
                .iter()
                .map(|r| pb::RouteCalls {
                    route: r.route.clone(),
                    calls: r.calls,
                })
                .collect(),
            call_sites: q
                .call_sites
                .iter()
                .map(|s| pb::CallSiteCalls {
                    site: Some(pb::CallSite {
                        file: s.site.file.to_string(),
                        line: s.site.line,
                        function: s.site.function.to_string(),
                        display: s.site.to_string(),
                    }),
                    calls: s.calls,
                })
                .collect(),
            heuristic_calls: q.heuristic_calls,
        }
    }
}

impl From<&PoolEvent> for pb::PoolEvent {
    fn from(e: &PoolEvent) -> Self {
        use pb::pool_event::Change;
        let change = match &e.change {
            PoolChange::WorkerStarted { pid } => {
                Change::WorkerStarted(pb::WorkerStarted { pid: *pid })
            }
            PoolChange::WorkerExited { pid } => {
                Change::WorkerExited(pb::WorkerExited { pid: *pid })
            }
            PoolChange::Reload { replaced, workers } => Change::Reload(pb::Reload {
                replaced: count32(*replaced),
                workers: count32(*workers),
            }),
        };
        Self {
            at_unix_ms: e.at_unix_ms,
            pool: e.pool.clone(),
            master_pid: e.master,
            change: Some(change),
            description: e.describe(),
        }
    }
}

impl From<&KernelDrops> for pb::KernelDrops {
    fn from(k: &KernelDrops) -> Self {
        Self {
            events_dropped: k.events_dropped,
            thread_insert_failed: k.thread_insert_failed,
            read_failed: k.read_failed,
            missed_switch_out: k.missed_switch_out,
            socket_events_dropped: k.socket_events_dropped,
            socket_insert_failed: k.socket_insert_failed,
            payload_read_failed: k.payload_read_failed,
        }
    }
}

impl From<&ConnectionStats> for pb::ConnectionStats {
    fn from(c: &ConnectionStats) -> Self {
        Self {
            open: c.open as u64,
            opened: c.opened,
            closed: c.closed,
            evicted: c.evicted,
            data_events: c.data_events,
            bytes_seen: c.bytes_seen,
            bytes_captured: c.bytes_captured,
            protocol_errors: c.protocol_errors,
            postgres_queries: c.postgres_queries,
            http_exchanges: c.http_exchanges,
            queries_in_requests: c.queries_in_requests,
            queries_by_task: c.queries_by_task,
            queries_outside_tasks: c.queries_outside_tasks,
            queries_task_unanswered: c.queries_task_unanswered,
            queries_heuristic: c.queries_heuristic,
            py_stacks: c.py_stacks,
            py_stacks_truncated: c.py_stacks_truncated,
            py_stacks_without_thread: c.py_stacks_without_thread,
            py_stacks_unreadable: c.py_stacks_unreadable,
        }
    }
}

impl From<&PythonStats> for pb::PythonStats {
    fn from(p: &PythonStats) -> Self {
        Self {
            processes_readable: p.processes_readable as u64,
            processes_unreadable: p.processes_unreadable as u64,
            tasks_tracked: p.tasks_tracked as u64,
            code_objects: p.code_objects as u64,
            code_objects_unreadable: p.code_objects_unreadable,
            stacks_walked: p.stacks_walked,
            walk_ns: p.walk_ns,
        }
    }
}

impl From<&AgentStats> for pb::AgentStats {
    fn from(a: &AgentStats) -> Self {
        Self {
            events_received: a.events_received,
            events_channel_full: a.events_channel_full,
            events_malformed: a.events_malformed,
            kernel: Some(pb::KernelDrops::from(&a.kernel)),
            process_scans: a.process_scans,
            process_scan_skipped: a.process_scan_skipped,
            processes_tracked: a.processes_tracked as u64,
            threads_tracked: a.threads_tracked as u64,
            socket_events_received: a.socket_events_received,
            socket_events_malformed: a.socket_events_malformed,
            connections: Some(pb::ConnectionStats::from(&a.connections)),
            detector_records_dropped: a.detector_records_dropped,
            python: Some(pb::PythonStats::from(&a.python)),
            resident_bytes: a.resident_bytes,
            tables: a
                .tables
                .entries()
                .into_iter()
                .map(|(table, entries)| pb::TableSize {
                    table: table.to_string(),
                    entries: entries as u64,
                })
                .collect(),
            drops: a
                .drops()
                .into_iter()
                .map(|(reason, count)| pb::DropCount {
                    reason: reason.to_string(),
                    count,
                })
                .collect(),
        }
    }
}
