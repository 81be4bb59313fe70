//! The pipeline's state and the per-interval snapshot computation.
use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use herdwatch_common::{CpuCurrent, ThreadCounters};

use std::collections::HashSet;

use crate::{
    config::Config,
    host::{self, CpuTicks},
    model::{
        ActivityObserver, AgentStats, HostView, PoolView, ProcessView, RecordSink, Snapshot,
        WorkerView,
    },
    net::{listen, seed},
    probes::{ProcessEvent, maps::KernelMaps, reader::RingCounters, socket_events::SocketEvent},
    procs::{
        CpuTotals, Pool, ProcessTable, pools,
        worker_state::{self, WorkerState},
    },
};

use super::{aggregates::Aggregates, connections::Connections};

/// Bound on the tid → tgid cache for threads not yet seen switching out.
const TID_CACHE_MAX: usize = 65_536;
const CMDLINE_MAX: usize = 200;

pub struct PipelineState {
    table: ProcessTable,
    maps: KernelMaps,
    reader: Arc<RingCounters>,
    pools: Vec<Pool>,
    pools_generation: u64,
    prev_totals: HashMap<u32, CpuTotals>,
    /// (CPU ns, run-queue delay ns) per pool name since the agent started (bounded by
    /// `MAX_POOL_TOTALS`: pools that come and go under new names).
    pool_totals: HashMap<String, PoolTotals>,
    /// (utime, stime) ticks of pool processes at the last snapshot.
    prev_user_system: HashMap<u32, (u64, u64)>,
    prev_taken_mono_ns: u64,
    prev_ticks: Option<CpuTicks>,
    tid_to_tgid: HashMap<u32, u32>,
    connections: Connections,
    aggregates: Aggregates,
    socket_reader: Arc<RingCounters>,
    pg_ports: Vec<u16>,
    pool_views: Vec<PoolView>,
    /// Processes that exited holding traced sockets: their kernel map entries are swept at
    /// the next snapshot (exit closes fds without close(), which the kernel side never sees).
    exited_with_sockets: HashSet<u32>,
    /// DB wait totals per worker at the previous snapshot.
    prev_db_wait: HashMap<u32, u64>,
    /// Busy-worker samples per pool master, newest last.
    busy_history: HashMap<u32, std::collections::VecDeque<usize>>,
    /// CPU cgroup per pool master, and the previous (usage ns, monotonic ns) per cgroup path.
    cgroups: HashMap<u32, Option<crate::procs::cgroup::CpuCgroup>>,
    prev_cgroup_usage: HashMap<String, (u64, u64)>,
    interpreters: crate::procs::python::Interpreters,
    /// Pool workers registered for frame walking, and whether their interpreter is readable.
    python_workers: HashMap<u32, bool>,
    /// `python_frames`: off = no worker is registered with the kernel side.
    walk_python: bool,
}

/// A pool's cumulative time since the agent started watching it, ns.
#[derive(Debug, Default, Clone, Copy)]
struct PoolTotals {
    user_ns: u64,
    system_ns: u64,
    run_delay_ns: u64,
}

/// Pool names whose cumulative CPU is kept; past this the ones not currently running go.
const MAX_POOL_TOTALS: usize = 256;

/// Samples of busy workers kept per pool (at the default 2 s interval, 10 minutes).
const BUSY_HISTORY: usize = 300;

impl PipelineState {
    pub fn new(
        table: ProcessTable,
        mut maps: KernelMaps,
        reader: Arc<RingCounters>,
        socket_reader: Arc<RingCounters>,
        config: &Config,
    ) -> crate::error::Result<Self> {
        maps.set_pg_ports(&config.postgres_ports)?;
        let mut connections = Connections::new(config.max_connections);
        if let Some(dir) = config.state_dir() {
            connections.statement_book = super::statement_book::StatementBook::open(dir);
        }
        Ok(Self {
            connections,
            aggregates: Aggregates::new(
                config.max_fingerprints,
                config.max_routes,
                config.route_grouper(),
            ),
            socket_reader,
            pg_ports: config.postgres_ports.clone(),
            pool_views: Vec::new(),
            exited_with_sockets: HashSet::new(),
            prev_db_wait: HashMap::new(),
            busy_history: HashMap::new(),
            cgroups: HashMap::new(),
            prev_cgroup_usage: HashMap::new(),
            interpreters: Default::default(),
            python_workers: HashMap::new(),
            walk_python: config.python_frames,
            table,
            maps,
            reader,
            pools: Vec::new(),
            pools_generation: u64::MAX,
            prev_totals: HashMap::new(),
            pool_totals: HashMap::new(),
            prev_user_system: HashMap::new(),
            prev_taken_mono_ns: 0,
            prev_ticks: host::read_ticks(),
            tid_to_tgid: HashMap::new(),
        })
    }

    /// Hands every finished exchange and query to `sink` from now on (an exporter).
    pub fn subscribe(&mut self, sink: Box<dyn RecordSink>) {
        self.aggregates.subscribe(sink);
        // Pools already known are announced to it at the next discovery.
        self.pools_generation = u64::MAX;
    }

    /// Tells the aggregates which pool each pool process belongs to, and the subscribers
    /// each pool's name (an exporter gives each pool its own service).
    fn name_pools(&mut self) {
        let mut pool_of_pid = rustc_hash::FxHashMap::default();
        for pool in &self.pools {
            let name: crate::model::Label = pool.name().into();
            pool_of_pid.insert(pool.master, name.clone());
            for w in &pool.workers {
                pool_of_pid.insert(*w, name.clone());
            }
            let table = &self.table;
            self.aggregates.pool_found(&name, pool, &|| {
                table
                    .get(pool.master)
                    .map(|p| p.cmdline.clone())
                    .unwrap_or_default()
            });
        }
        self.aggregates.set_pools(pool_of_pid);
    }

    /// Decodes a socket record in place and applies it; a malformed one is counted
    /// (`herdwatch.agent.dropped{reason="malformed"}`) and skipped.
    pub fn apply_socket_record(&mut self, record: &[u8], observer: &mut dyn ActivityObserver) {
        match crate::probes::socket_events::decode(record) {
            Ok(event) => self.apply_socket(event, observer),
            Err(err) => {
                self.socket_reader.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("{err}");
            }
        }
    }

    /// Registers new pool workers for frame walking (their interpreter found in their memory
    /// map) and forgets workers that left. A worker whose interpreter cannot be read is still
    /// registered with the pipeline, so its asyncio queries are counted as heuristic.
    fn sync_python(&mut self) {
        let mut current = HashMap::new();
        for pool in &self.pools {
            for &w in &pool.workers {
                current.insert(w, pool.runs_asyncio());
            }
        }
        self.python_workers.retain(|pid, _| {
            let keep = current.contains_key(pid);
            if !keep {
                self.maps.forget_python(*pid);
                self.connections.forget_python(*pid);
            }
            keep
        });
        for (pid, asyncio) in current {
            if self.python_workers.contains_key(&pid) {
                continue;
            }
            let found = if self.walk_python {
                self.interpreters.discover(pid, asyncio)
            } else {
                Err(crate::procs::python::Unreadable::Off)
            };
            let layout = match found {
                Ok(interp) => match self.maps.set_python(pid, &interp.process) {
                    Ok(()) => {
                        tracing::debug!(
                            "pid {pid}: CPython {}.{} ({}), frames walked",
                            interp.major,
                            interp.minor,
                            interp.file.display()
                        );
                        Some(interp.layout.code)
                    }
                    Err(e) => {
                        tracing::warn!("pid {pid}: {e}");
                        None
                    }
                },
                Err(e) => {
                    tracing::info!(
                        "pid {pid}: Python frames cannot be read ({e}); its queries are paired with requests by thread{}",
                        if asyncio {
                            ", a guess on asyncio workers (counted as heuristic)"
                        } else {
                            ""
                        }
                    );
                    None
                }
            };
            self.connections.set_python(
                pid,
                crate::pipeline::connections::PythonProcess { asyncio, layout },
            );
            self.python_workers.insert(pid, layout.is_some());
        }
    }

    fn python_stats(&self) -> crate::model::PythonStats {
        let readable = self.python_workers.values().filter(|r| **r).count();
        let (tasks, codes) = self.connections.python_state();
        let (stacks_walked, walk_ns) = self.maps.python_walks();
        crate::model::PythonStats {
            stacks_walked,
            walk_ns,
            processes_readable: readable,
            processes_unreadable: self.python_workers.len() - readable,
            tasks_tracked: tasks,
            code_objects: codes.code_objects,
            code_objects_unreadable: codes.unreadable,
        }
    }

    pub fn apply_socket(&mut self, event: SocketEvent<'_>, observer: &mut dyn ActivityObserver) {
        self.connections.apply(event, &mut self.aggregates);
        self.hand_over_queries(observer);
    }

    /// Hands the queries started, answered and finished since the last call to `observer`.
    fn hand_over_queries(&mut self, observer: &mut dyn ActivityObserver) {
        for q in self.aggregates.starts.drain(..) {
            observer.query_started(&q);
        }
        for q in self.aggregates.ends.drain(..) {
            observer.query_ended(&q);
        }
        if !self.aggregates.outbox.is_empty() {
            let table = &self.table;
            for q in self.aggregates.outbox.drain(..) {
                observer.query_finished(&q, &|pid| process_name(table, pid));
            }
        }
    }

    /// Traces the sockets that were open before we started: connections to PostgreSQL ports
    /// from any process, and connections pool workers accepted on their listeners. Call after
    /// the first snapshot, which discovers the pools.
    pub fn seed_existing_sockets(&mut self) -> usize {
        let mut http_ports: HashMap<u32, HashSet<u16>> = HashMap::new();
        for view in &self.pool_views {
            let ports: HashSet<u16> = view.listeners.iter().filter_map(|l| l.port).collect();
            for w in &view.pool.workers {
                http_ports
                    .entry(*w)
                    .or_default()
                    .extend(ports.iter().copied());
            }
        }
        let pids: Vec<u32> = self.table.iter().map(|p| p.pid).collect();
        let processes: Vec<_> = self.table.iter().collect();
        for port in seed::local_postgres_ports(&processes) {
            if !self.pg_ports.contains(&port) {
                match self.maps.set_pg_ports(&[port]) {
                    Ok(()) => {
                        tracing::info!("local PostgreSQL/PgBouncer listens on port {port}");
                        self.pg_ports.push(port);
                    }
                    Err(e) => tracing::warn!("cannot add PostgreSQL port {port}: {e}"),
                }
            }
        }
        let found = seed::existing_sockets(&pids, &self.pg_ports, &http_ports);
        let mut tracked = 0;
        for (pid, fd, kind) in found {
            match self.maps.track_socket(pid, fd, kind) {
                Ok(()) => tracked += 1,
                Err(e) => tracing::warn!("cannot trace existing socket {pid}/{fd}: {e}"),
            }
        }
        tracked
    }

    pub fn apply(&mut self, event: &ProcessEvent, observer: &mut dyn ActivityObserver) {
        if let ProcessEvent::Exit {
            tid,
            tgid,
            group_dead,
            timestamp_ns,
            ..
        } = event
        {
            self.tid_to_tgid.remove(tid);
            if *group_dead
                && process_exited(
                    &mut self.connections,
                    &mut self.aggregates,
                    *tgid,
                    *timestamp_ns,
                )
            {
                self.exited_with_sockets.insert(*tgid);
            }
        }
        self.table.apply(event);
        match event {
            ProcessEvent::Exec {
                pid, timestamp_ns, ..
            } => {
                if let Some(p) = self.table.get(*pid) {
                    let cmdline = truncate(&printable(&p.cmdline.join(" ")), CMDLINE_MAX);
                    observer.process_exec(*pid, *timestamp_ns, &p.comm, &cmdline);
                }
            }
            ProcessEvent::Exit {
                tgid,
                group_dead: true,
                ..
            } => {
                let cpu = self
                    .table
                    .exited()
                    .filter(|e| e.pid == *tgid)
                    .last()
                    .map(|e| e.totals.on_cpu_ns)
                    .unwrap_or(0);
                observer.process_exit(*tgid, cpu);
            }
            _ => {}
        }
    }

    /// Thread group of a thread the kernel side has not attributed yet (never switched out
    /// since we attached, e.g. a CPU hog alone on its CPU).
    fn resolve_tgid(&mut self, tid: u32) -> Option<u32> {
        if let Some(tgid) = self.tid_to_tgid.get(&tid) {
            return Some(*tgid);
        }
        let tgid = procfs::process::Process::new(tid as i32)
            .and_then(|p| p.status())
            .ok()
            .map(|s| s.tgid as u32)?;
        if self.tid_to_tgid.len() >= TID_CACHE_MAX {
            self.tid_to_tgid.clear();
        }
        self.tid_to_tgid.insert(tid, tgid);
        Some(tgid)
    }

    fn live_totals(&mut self, now_mono: u64) -> (HashMap<u32, (CpuTotals, u32)>, usize) {
        let running = self.maps.running_now();
        let threads = self.maps.threads();
        let count = threads.len();
        let mut per_process: HashMap<u32, (CpuTotals, u32)> = HashMap::new();
        for (tid, mut c) in threads {
            let tgid = if c.tgid != 0 {
                c.tgid
            } else {
                match self.resolve_tgid(tid) {
                    Some(t) => t,
                    None => continue,
                }
            };
            include_running_slice(&mut c, &running, tid, now_mono);
            let entry = per_process.entry(tgid).or_default();
            entry.0.add_thread(&c);
            entry.1 += 1;
        }
        (per_process, count)
    }

    /// Looks up unknown statement texts in PostgreSQL from now on (`monitor_dsn`).
    pub fn set_statement_monitor(&mut self, link: super::statement_monitor::MonitorLink) {
        self.connections.statement_book.monitor = Some(link);
    }

    /// An answer of the statement monitor.
    pub fn apply_statement_answer(&mut self, answer: &super::statement_monitor::Answer) {
        self.connections.apply_statement_answer(answer);
    }

    /// Statement-monitor counters, when it runs.
    pub fn statement_monitor_stats(&self) -> Option<super::statement_monitor::MonitorStats> {
        self.connections
            .statement_book
            .monitor
            .as_ref()
            .map(|m| m.stats)
    }

    /// Writes what must survive a restart (the statement book) now: at shutdown.
    pub fn persist(&mut self) {
        self.connections.statement_book.save();
    }

    /// The accounting snapshot: findings and pool events are left empty for the detectors,
    /// which run on it afterwards (`observer` receives the queries of expired Tasks).
    pub fn snapshot(&mut self, observer: &mut dyn ActivityObserver) -> Snapshot {
        self.connections
            .statement_book
            .save_if_due(std::time::Instant::now());
        let now_mono = host::monotonic_ns();
        let interval_ns = if self.prev_taken_mono_ns == 0 {
            0
        } else {
            now_mono.saturating_sub(self.prev_taken_mono_ns)
        };
        let (live, threads_tracked) = self.live_totals(now_mono);
        if !self.exited_with_sockets.is_empty() {
            self.maps.forget_sockets_of(&self.exited_with_sockets);
            self.exited_with_sockets.clear();
        }
        let rate = |cur: u64, prev: u64| -> f64 {
            if interval_ns == 0 {
                0.0
            } else {
                cur.saturating_sub(prev) as f64 / interval_ns as f64
            }
        };

        let mut processes = Vec::with_capacity(self.table.len());
        let mut new_prev = HashMap::with_capacity(self.table.len());
        for info in self.table.iter() {
            let mut totals = info.exited_threads;
            let mut threads = 0;
            if let Some((t, n)) = live.get(&info.pid) {
                totals.add(t);
                threads = *n;
            }
            let prev = self.prev_totals.get(&info.pid).copied().unwrap_or_default();
            processes.push(ProcessView {
                pid: info.pid,
                ppid: info.ppid,
                comm: info.comm.clone(),
                cmdline: truncate(&printable(&info.cmdline.join(" ")), CMDLINE_MAX),
                totals,
                cpu_percent: 100.0 * rate(totals.on_cpu_ns, prev.on_cpu_ns),
                run_delay_ms_per_s: 1000.0 * rate(totals.run_delay_ns, prev.run_delay_ns),
                threads,
            });
            new_prev.insert(info.pid, totals);
        }
        processes.sort_by(|a, b| {
            b.cpu_percent
                .total_cmp(&a.cpu_percent)
                .then(a.pid.cmp(&b.pid))
        });
        self.prev_totals = new_prev;
        self.prev_taken_mono_ns = now_mono;

        if self.pools_generation != self.table.generation {
            self.pools = pools::discover(&self.table);
            self.pools_generation = self.table.generation;
            // Connections these processes accept are HTTP server connections.
            let workers: HashSet<u32> = self
                .pools
                .iter()
                .flat_map(|p| p.workers.iter().copied())
                .collect();
            self.maps.sync_http_servers(&workers);
            self.sync_python();
            self.name_pools();
        }
        self.connections
            .expire_tasks(now_mono, &mut self.aggregates);
        self.hand_over_queries(observer);
        let by_pid: HashMap<u32, &ProcessView> = processes.iter().map(|p| (p.pid, p)).collect();
        let serving = self.connections.open_requests_by_pid();
        let mut pool_views: Vec<PoolView> = self
            .pools
            .iter()
            .map(|pool| pool_view(pool, &by_pid, &serving))
            .collect();
        let mut db_now = HashMap::new();
        let mut user_system_now = HashMap::new();
        for view in &mut pool_views {
            let mut cpu_ns = 0.0;
            let mut db_ns = 0u64;
            for w in &view.worker_states {
                cpu_ns += w.cpu_percent / 100.0 * interval_ns as f64;
                let total = self.aggregates.db_wait_of(w.pid);
                db_ns +=
                    total.saturating_sub(self.prev_db_wait.get(&w.pid).copied().unwrap_or(total));
                db_now.insert(w.pid, total);
            }
            let wall = interval_ns as f64 * view.worker_states.len() as f64;
            if wall > 0.0 {
                let on_cpu = (cpu_ns / wall).clamp(0.0, 1.0);
                let db_wait = (db_ns as f64 / wall).clamp(0.0, 1.0 - on_cpu);
                view.time_share = Some(crate::model::TimeShare {
                    on_cpu,
                    db_wait,
                    other: 1.0 - on_cpu - db_wait,
                });
            }
            // Cumulative per pool name, so a master restart or worker churn keeps counting.
            let (mut user_step, mut system_step, mut delay_step) = (0.0, 0.0, 0.0);
            for pid in view.pool.members() {
                let Some(p) = by_pid.get(&pid) else { continue };
                let cpu_step = p.cpu_percent / 100.0 * interval_ns as f64;
                // The scheduler's on-CPU time is exact; the kernel's tick counts say which
                // share of it was user and which system. Workers' ticks were read with their
                // state; only a master that is not a worker is read here.
                let ticks = match view.worker_states.iter().find(|w| w.pid == pid) {
                    Some(w) => w.user_system_ticks,
                    None => worker_state::user_system_ticks(pid),
                };
                let user_share = match (ticks, self.prev_user_system.get(&pid)) {
                    (Some((u, s)), Some((pu, ps))) if u + s > pu + ps => {
                        u.saturating_sub(*pu) as f64 / (u + s - pu - ps) as f64
                    }
                    (Some((u, s)), _) if u + s > 0 => u as f64 / (u + s) as f64,
                    _ => 1.0,
                };
                if let Some(t) = ticks {
                    user_system_now.insert(pid, t);
                }
                user_step += cpu_step * user_share;
                system_step += cpu_step * (1.0 - user_share);
                delay_step += p.run_delay_ms_per_s / 1000.0 * interval_ns as f64;
            }
            let totals = self.pool_totals.entry(view.name.clone()).or_default();
            totals.user_ns += user_step as u64;
            totals.system_ns += system_step as u64;
            totals.run_delay_ns += delay_step as u64;
            view.cpu_user_ns = totals.user_ns;
            view.cpu_system_ns = totals.system_ns;
            view.cpu_time_ns = totals.user_ns + totals.system_ns;
            view.run_delay_ns = totals.run_delay_ns;
            let history = self.busy_history.entry(view.pool.master).or_default();
            if history.len() == BUSY_HISTORY {
                history.pop_front();
            }
            history.push_back(view.busy_workers);
            view.busy_history = history.iter().copied().collect();
        }
        self.prev_db_wait = db_now;
        self.prev_user_system = user_system_now;
        if self.pool_totals.len() > MAX_POOL_TOTALS {
            let running: HashSet<&String> = pool_views.iter().map(|v| &v.name).collect();
            self.pool_totals.retain(|name, _| running.contains(name));
        }
        self.cgroups
            .retain(|m, _| self.pools.iter().any(|p| p.master == *m));
        let mut cgroup_usage = HashMap::new();
        for view in &mut pool_views {
            let cgroup = self
                .cgroups
                .entry(view.pool.master)
                .or_insert_with(|| {
                    crate::procs::cgroup::of_pid(view.pool.master).filter(|c| !c.is_root())
                })
                .clone();
            let Some(cgroup) = cgroup else { continue };
            let Some(reading) = cgroup.read() else {
                continue;
            };
            let capacity = reading.limit_cpus.unwrap_or(host::cpu_count() as f64);
            let cpu_utilization = self
                .prev_cgroup_usage
                .get(&cgroup.path)
                .filter(|(_, at)| now_mono > *at)
                .map(|(used, at)| {
                    reading.usage_ns.saturating_sub(*used) as f64
                        / (now_mono - at) as f64
                        / capacity.max(0.001)
                });
            cgroup_usage.insert(cgroup.path.clone(), (reading.usage_ns, now_mono));
            view.cgroup = Some(crate::model::CgroupView {
                path: cgroup.path.clone(),
                limit_cpus: reading.limit_cpus,
                cpu_utilization,
            });
        }
        self.prev_cgroup_usage = cgroup_usage;
        let masters: HashSet<u32> = self.pools.iter().map(|p| p.master).collect();
        self.busy_history.retain(|m, _| masters.contains(m));
        self.pool_views = pool_views.clone();

        let ticks = host::read_ticks();
        let cpu_utilization = match (self.prev_ticks, ticks) {
            (Some(a), Some(b)) if interval_ns > 0 => host::utilization(a, b),
            _ => None,
        };
        self.prev_ticks = ticks.or(self.prev_ticks);

        let agent = AgentStats {
            events_received: self.reader.received.load(Ordering::Relaxed),
            events_channel_full: self.reader.channel_full.load(Ordering::Relaxed),
            events_malformed: self.reader.malformed.load(Ordering::Relaxed),
            kernel: self.maps.drops(),
            process_scans: self.table.scans,
            process_scan_skipped: self.table.scan_skipped,
            processes_tracked: self.table.len(),
            threads_tracked,
            socket_events_received: self.socket_reader.received.load(Ordering::Relaxed),
            socket_events_malformed: self.socket_reader.malformed.load(Ordering::Relaxed),
            connections: self.connections.stats,
            detector_records_dropped: self.aggregates.outbox_dropped,
            python: self.python_stats(),
            // The exporters' own losses are added by whoever owns the exporters.
            export: Default::default(),
        };
        let host = HostView {
            cpus: host::cpu_count(),
            cpu_utilization,
        };
        let queries = self.aggregates.queries();
        let routes = self.aggregates.routes();
        Snapshot {
            taken_at_unix_ms: host::unix_ms(),
            interval_ms: interval_ns / 1_000_000,
            host,
            processes,
            pools: pool_views,
            lifecycle: self.table.drain_lifecycle(),
            queries,
            routes,
            findings: Vec::new(),
            pool_events: Vec::new(),
            agent,
        }
    }
}

/// A whole process exited: its connections end (their open requests recorded as unanswered)
/// and its DB wait total is forgotten, so the per-pid totals hold live processes only.
/// Returns whether it held traced sockets.
fn process_exited(
    connections: &mut Connections,
    aggregates: &mut Aggregates,
    tgid: u32,
    timestamp_ns: u64,
) -> bool {
    let dropped = connections.drop_process(tgid, timestamp_ns, aggregates);
    aggregates.forget_pid(tgid);
    dropped > 0
}

/// Adds the slice a thread is running right now, so a thread that has not been switched out
/// for a while still shows its CPU. Only for threads a CPU really runs now: a switch-out the
/// kernel never reported must not turn into an ever-growing slice.
fn include_running_slice(c: &mut ThreadCounters, running: &[CpuCurrent], tid: u32, now_mono: u64) {
    let on_a_cpu = running
        .iter()
        .any(|r| r.tid == tid && r.since_ns == c.switched_in_at_ns);
    if on_a_cpu && c.switched_in_at_ns != 0 && now_mono > c.switched_in_at_ns {
        c.on_cpu_ns += now_mono - c.switched_in_at_ns;
    }
}

fn pool_view(
    pool: &Pool,
    by_pid: &HashMap<u32, &ProcessView>,
    serving: &HashMap<u32, usize>,
) -> PoolView {
    let listeners = listen::listeners_of(pool.master, &pool.workers);
    let worker_states: Vec<WorkerView> = pool
        .workers
        .iter()
        .map(|pid| {
            let view = by_pid.get(pid);
            let (state, user_system_ticks) = worker_state::sample(*pid);
            WorkerView {
                pid: *pid,
                state: match state {
                    WorkerState::Idle if serving.contains_key(pid) => WorkerState::Serving,
                    state => state,
                },
                cpu_percent: view.map(|v| v.cpu_percent).unwrap_or(0.0),
                totals: view.map(|v| v.totals).unwrap_or_default(),
                user_system_ticks,
            }
        })
        .collect();
    let busy_workers = worker_states.iter().filter(|w| w.state.is_busy()).count();
    let active_requests = pool.workers.iter().filter_map(|pid| serving.get(pid)).sum();
    let cpu_percent = pool
        .members()
        .filter_map(|pid| by_pid.get(&pid))
        .map(|v| v.cpu_percent)
        .sum();
    PoolView {
        name: pool.name(),
        pool: pool.clone(),
        listeners,
        worker_states,
        busy_workers,
        active_requests,
        busy_history: Vec::new(),
        cpu_percent,
        cpu_time_ns: 0,
        cpu_user_ns: 0,
        cpu_system_ns: 0,
        run_delay_ns: 0,
        time_share: None,
        cgroup: None,
    }
}

/// (comm, command line) of a live process: read fresh from /proc, since a process that just
/// exec'd may still carry its parent's command line in the table; the table otherwise.
fn process_name(table: &ProcessTable, pid: u32) -> Option<(String, String)> {
    match crate::procs::table::read_process(pid) {
        Ok(p) => Some((
            p.comm,
            truncate(&printable(&p.cmdline.join(" ")), CMDLINE_MAX),
        )),
        Err(_) => table.get(pid).map(|p| {
            (
                p.comm.clone(),
                truncate(&printable(&p.cmdline.join(" ")), CMDLINE_MAX),
            )
        }),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Command lines may hold newlines and escape sequences; the terminal view must not obey them.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use herdwatch_protocol::{
        postgres::{Outcome, QueryEvent, QueryProtocol},
        route::RouteGrouper,
    };

    use super::*;
    use crate::pipeline::aggregates::Caller;

    #[test]
    fn processes_that_queried_then_exited_leave_no_db_wait_behind() {
        let mut connections = Connections::new(1024);
        let mut aggregates = Aggregates::new(16, 16, RouteGrouper::default());
        let query = QueryEvent {
            sql: Some("SELECT 1".into()),
            sql_truncated: false,
            statement: None,
            protocol: QueryProtocol::Simple,
            started_ns: 10,
            first_response_ns: Some(20),
            finished_ns: 30,
            rows: 1,
            command: None,
            outcome: Outcome::Ok,
            sqlstate: None,
        };
        for pid in 1..=10_000 {
            aggregates.record_query((pid, 3), None, &query, Caller::default(), Vec::new());
            assert_eq!(aggregates.db_wait_of(pid), 20);
        }
        assert_eq!(aggregates.db_wait_pids(), 10_000);
        for pid in 1..=10_000 {
            process_exited(&mut connections, &mut aggregates, pid, 40);
        }
        assert_eq!(aggregates.db_wait_pids(), 0);
    }
}
