//! The pipeline's state: the one owner of the process table, the connection table and the
//! aggregates. It applies process and socket events as they come and produces the
//! accounting snapshot every interval; what others do with it is theirs.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
};

use super::{
    accounting::{Accounting, PoolInputs, command_line},
    aggregates::Aggregates,
    connections::Connections,
    sampler::{SystemCaches, SystemSampler},
};
use crate::{
    config::Config,
    host,
    model::{ActivityObserver, AgentStats, PoolView, RecordSink, Snapshot},
    net::seed,
    probes::{ProcessEvent, maps::KernelMaps, reader::RingCounters, socket_events::SocketEvent},
    procs::{Pool, ProcessTable, pools},
};

pub struct PipelineState {
    table: ProcessTable,
    maps: KernelMaps,
    reader: Arc<RingCounters>,
    pools: Vec<Pool>,
    pools_generation: u64,
    connections: Connections,
    aggregates: Aggregates,
    socket_reader: Arc<RingCounters>,
    pg_ports: Vec<u16>,
    pool_views: Vec<PoolView>,
    /// Processes that exited holding traced sockets: their kernel map entries are swept at
    /// the next snapshot (exit closes fds without close(), which the kernel side never sees).
    exited_with_sockets: HashSet<u32>,
    /// What the snapshots remember of the previous one (rates, cumulative pool CPU).
    accounting: Accounting,
    /// The real sampler's caches (thread groups, cgroup files).
    system: SystemCaches,
    interpreters: crate::procs::python::Interpreters,
    /// Pool workers registered for frame walking, and whether their interpreter is readable.
    python_workers: HashMap<u32, bool>,
    /// `python_frames`: off = no worker is registered with the kernel side.
    walk_python: bool,
}

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
            accounting: Accounting::new(host::read_ticks()),
            system: SystemCaches::default(),
            interpreters: Default::default(),
            python_workers: HashMap::new(),
            walk_python: config.python_frames,
            table,
            maps,
            reader,
            pools: Vec::new(),
            pools_generation: u64::MAX,
        })
    }

    /// Hands every finished exchange and query to `sink` from now on (an exporter).
    pub fn subscribe(&mut self, sink: Box<dyn RecordSink>) {
        self.aggregates.subscribe(sink);
        // Pools already known are announced to it at the next discovery.
        self.pools_generation = u64::MAX;
    }

    /// Hands finished records to `sinks` instead of the subscribers so far, which are
    /// returned (an exporter restarted by a reload).
    pub fn replace_subscribers(
        &mut self,
        sinks: Vec<Box<dyn RecordSink>>,
    ) -> Vec<Box<dyn RecordSink>> {
        self.pools_generation = u64::MAX;
        self.aggregates.replace_subscribers(sinks)
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
                crate::pipeline::connections::PythonProcess::new(asyncio, layout),
            );
            self.python_workers.insert(pid, layout.is_some());
        }
        for (pid, code) in self.connections.take_walk_boundaries() {
            if let Err(e) = self.maps.set_walk_boundary(pid, code) {
                // The process may have exited since its stack; its walks stay whole.
                tracing::debug!("pid {pid}: walk boundary not set: {e}");
            }
        }
    }

    fn python_stats(&self) -> crate::model::PythonStats {
        let readable = self.python_workers.values().filter(|r| **r).count();
        let (tasks, codes, [walk_boundaries, walk_boundaries_missing]) =
            self.connections.python_state();
        let (stacks_walked, walk_ns) = self.maps.python_walks();
        crate::model::PythonStats {
            stacks_walked,
            walk_ns,
            processes_readable: readable,
            processes_unreadable: self.python_workers.len() - readable,
            tasks_tracked: tasks,
            code_objects: codes.code_objects,
            code_objects_unreadable: codes.unreadable,
            walk_boundaries,
            walk_boundaries_missing,
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
            self.system.forget_thread(*tid);
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
                    let cmdline = command_line(&p.cmdline);
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

    /// Route patterns from a config reload, used for requests from now on.
    pub fn set_route_grouper(&mut self, grouper: herdwatch_protocol::route::RouteGrouper) {
        self.aggregates.set_route_grouper(grouper);
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
        let mut sampler = SystemSampler {
            maps: &self.maps,
            caches: &mut self.system,
        };
        let accounts = self.accounting.processes(&mut sampler, self.table.iter());
        if !self.exited_with_sockets.is_empty() {
            self.maps.forget_sockets_of(&self.exited_with_sockets);
            self.exited_with_sockets.clear();
        }
        if self.pools_generation != self.table.generation {
            self.rediscover_pools();
        }
        self.connections
            .expire_tasks(accounts.now_mono_ns, &mut self.aggregates);
        self.hand_over_queries(observer);
        let serving = self.connections.open_requests_by_pid();
        let aggregates = &self.aggregates;
        let mut sampler = SystemSampler {
            maps: &self.maps,
            caches: &mut self.system,
        };
        let pool_views = self.accounting.pools(
            &mut sampler,
            &accounts,
            &PoolInputs {
                pools: &self.pools,
                serving: &serving,
                db_wait_of: &|pid| aggregates.db_wait_of(pid),
            },
        );
        let host = self.accounting.host(&mut sampler, accounts.interval_ns);
        let accounting = &self.accounting;
        self.system
            .retain_cgroups(|path| accounting.watches_cgroup(path));
        self.pool_views = pool_views.clone();
        let agent = self.agent_stats(accounts.threads_tracked);
        Snapshot {
            taken_at_unix_ms: host::unix_ms(),
            interval_ms: accounts.interval_ns / 1_000_000,
            host,
            processes: accounts.processes,
            pools: pool_views,
            lifecycle: self.table.drain_lifecycle(),
            queries: self.aggregates.queries(),
            routes: self.aggregates.routes(),
            findings: Vec::new(),
            pool_events: Vec::new(),
            agent,
        }
    }

    /// The process table changed: pools are found again, and the kernel side, the Python
    /// frame walker and the subscribers learn the new workers.
    fn rediscover_pools(&mut self) {
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

    /// The agent's own counters: what it receives, tracks and loses. The exporters' losses
    /// are added by whoever owns the exporters.
    fn agent_stats(&self, threads_tracked: usize) -> AgentStats {
        AgentStats {
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
            connects_known_not_postgres: self.maps.connects_known_not_postgres(),
            connections: self.connections.stats,
            detector_records_dropped: self.aggregates.outbox_dropped,
            python: self.python_stats(),
            export: Default::default(),
            resident_bytes: crate::procs::own_usage::resident_bytes(),
            tables: crate::model::TableSizes {
                processes: self.table.len(),
                kernel_threads: threads_tracked,
                thread_groups: self.system.thread_groups_cached(),
                process_totals: self.accounting.processes_remembered(),
                connections: self.connections.stats.open,
                connection_threads: self.connections.threads_tracked(),
                db_wait_processes: self.aggregates.db_wait_processes(),
                tasks: self.connections.python_state().0,
                kernel_marked_processes: self.maps.marked_processes(),
                python_workers: self.python_workers.len(),
            },
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

/// (comm, command line) of a live process: read fresh from /proc, since a process that just
/// exec'd may still carry its parent's command line in the table; the table otherwise.
fn process_name(table: &ProcessTable, pid: u32) -> Option<(String, String)> {
    match crate::procs::table::read_process(pid) {
        Ok(p) => Some((p.comm, command_line(&p.cmdline))),
        Err(_) => table
            .get(pid)
            .map(|p| (p.comm.clone(), command_line(&p.cmdline))),
    }
}

#[cfg(test)]
mod tests {
    use herdwatch_protocol::{postgres::Outcome, route::RouteGrouper};

    use super::*;
    use crate::pipeline::aggregates::Caller;

    #[test]
    fn processes_that_queried_then_exited_leave_no_db_wait_behind() {
        let mut connections = Connections::new(1024);
        let mut aggregates = Aggregates::new(16, 16, RouteGrouper::default());
        let query = crate::pipeline::aggregates::tests::q(Some("SELECT 1"), None, Outcome::Ok);
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
