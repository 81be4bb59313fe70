//! Detectors: from the pipeline's queries and snapshots to findings that name the repeating
//! cause. Each detector has one job and one file; this module feeds them and keeps the book.
pub mod cron;
pub mod db_pool;
pub mod finding;
pub mod finding_store;
pub mod herd;
pub mod lifecycle;
pub mod naming;
pub mod saturation;
pub mod starvation;
pub mod sustain;
pub mod task_name;
pub mod window;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{
    host,
    model::{
        ActivityObserver, Finding, HostView, PoolEvent, PoolView, ProcessView, QueryEnd, QueryObs,
        QueryStart, QueryStats, RouteStats, Snapshot,
    },
};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    pub herd: herd::HerdConfig,
    pub starvation: starvation::StarvationConfig,
    pub saturation: saturation::SaturationConfig,
    /// The PostgreSQL connection-pool detector (`detect.pool` in the config file).
    pub pool: db_pool::DbPoolConfig,
    pub cron: cron::CronConfig,
    /// Findings kept (active ones are never dropped for a resolved one).
    pub max_findings: Option<usize>,
}

impl DetectConfig {
    pub fn validate(&self) -> Result<(), String> {
        let share = |name: &str, v: f64| {
            if v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(format!("{name} = {v} must be in (0, 1]"))
            }
        };
        share("detect.saturation.cpu", self.saturation.cpu)?;
        share("detect.starvation.busy_share", self.starvation.busy_share)?;
        if self.herd.min_copies < 2 {
            return Err("detect.herd.min_copies must be at least 2".into());
        }
        if self.herd.window_ms == 0 || self.herd.baseline_s == 0 {
            return Err("detect.herd.window_ms and baseline_s must be positive".into());
        }
        if self.cron.periods_s.is_empty() || self.cron.periods_s.contains(&0) {
            return Err("detect.cron.periods_s must list positive periods".into());
        }
        for port in self.pool.limits.keys() {
            port.parse::<u16>()
                .map_err(|_| format!("detect.pool.limits: {port:?} is not a port"))?;
        }
        Ok(())
    }
}

/// What one snapshot gives the detectors.
pub struct TickInput<'a> {
    pub interval_ms: u64,
    pub host: &'a HostView,
    pub processes: &'a [ProcessView],
    pub pools: &'a [PoolView],
    pub routes: &'a [RouteStats],
    pub queries: &'a [QueryStats],
}

const MAX_CGROUP_DETECTORS: usize = 64;
const MAX_EXEC_PENDING: usize = 4096;
/// How long a process is watched for a CPU burst after its exec, ms.
const EXEC_PENDING_MS: u64 = 600_000;

pub struct Detectors {
    herd: herd::HerdDetector,
    starvation: starvation::StarvationDetector,
    saturation: saturation::SaturationDetector,
    /// One per CPU-limited cgroup of a pool (bounded).
    cgroup_saturation: HashMap<String, saturation::SaturationDetector>,
    /// Processes exec'd recently: pid → (start unix ms, comm, command line).
    exec_pending: HashMap<u32, (u64, String, String)>,
    db_pool: db_pool::DbPoolDetector,
    cron: cron::CronDetector,
    lifecycle: lifecycle::LifecycleLog,
    windows: window::Windows,
    book: finding::FindingBook,
    /// Where the book is kept across restarts (`state_dir`); None = this run only.
    store: Option<finding_store::FindingStore>,
    host: String,
    /// Wall clock minus the kernel's monotonic clock, ms.
    unix_minus_mono_ms: i128,
}

/// The detectors follow queries and processes as the pipeline sees them.
impl ActivityObserver for Detectors {
    fn query_started(&mut self, q: &QueryStart) {
        self.on_query_start(q);
    }

    fn query_ended(&mut self, q: &QueryEnd) {
        self.on_query_end(q);
    }

    fn query_finished(&mut self, q: &QueryObs, name: &dyn Fn(u32) -> Option<(String, String)>) {
        self.on_query(q, name);
    }

    fn process_exec(&mut self, pid: u32, timestamp_ns: u64, comm: &str, cmdline: &str) {
        self.on_exec(pid, timestamp_ns, comm, cmdline);
    }

    fn process_exit(&mut self, pid: u32, cpu_ns: u64) {
        self.on_exit(pid, cpu_ns);
    }
}

impl Detectors {
    /// Runs every detector on the pipeline's accounting snapshot and stores the findings and
    /// recent pool lifecycle events in it.
    pub fn complete(&mut self, snap: &mut Snapshot) {
        let (findings, pool_events) = self.tick(&TickInput {
            interval_ms: snap.interval_ms,
            host: &snap.host,
            processes: &snap.processes,
            pools: &snap.pools,
            routes: &snap.routes,
            queries: &snap.queries,
        });
        snap.findings = findings;
        snap.pool_events = pool_events;
    }

    pub fn new(config: &DetectConfig) -> Self {
        Self {
            herd: herd::HerdDetector::new(config.herd.clone()),
            starvation: starvation::StarvationDetector::new(config.starvation.clone()),
            saturation: saturation::SaturationDetector::new(config.saturation.clone()),
            cgroup_saturation: HashMap::new(),
            exec_pending: HashMap::new(),
            db_pool: db_pool::DbPoolDetector::new(config.pool.clone()),
            cron: cron::CronDetector::new(config.cron.clone()),
            lifecycle: lifecycle::LifecycleLog::default(),
            windows: window::Windows::default(),
            book: finding::FindingBook::new(config.max_findings.unwrap_or(256)),
            store: None,
            host: host::node_name().to_string(),
            unix_minus_mono_ms: host::unix_minus_monotonic_ns() / 1_000_000,
        }
    }

    /// New thresholds from a config reload: each detector keeps its history (windows,
    /// baselines, onsets) and judges it by the new values from its next tick on. The finding
    /// book's bound (`max_findings`) is not changed here: it takes effect at a restart.
    pub fn reconfigure(&mut self, config: &DetectConfig) {
        self.herd.reconfigure(config.herd.clone());
        self.starvation.config = config.starvation.clone();
        self.saturation.config = config.saturation.clone();
        for detector in self.cgroup_saturation.values_mut() {
            detector.config = config.saturation.clone();
        }
        self.db_pool.config = config.pool.clone();
        self.cron.config = config.cron.clone();
    }

    /// Keeps the finding book in `dir` from now on, starting from what a previous run left
    /// there (occurrences count on across restarts).
    pub fn keep_findings_in(&mut self, dir: &std::path::Path) {
        let (store, findings) = finding_store::FindingStore::open(dir);
        self.book.restore(findings);
        self.store = store;
    }

    /// Writes the finding book now, when it is kept: at shutdown.
    pub fn persist(&mut self) {
        if let Some(store) = &mut self.store {
            store.save(&self.book);
        }
    }

    /// Occurrences and resolutions since the last call (for OTLP logs).
    pub fn take_transitions(&mut self) -> Vec<(crate::model::Transition, Finding)> {
        self.book.take_transitions()
    }

    /// A process exec'd (kernel monotonic ns): remembered until its CPU use is known.
    pub fn on_exec(&mut self, pid: u32, timestamp_ns: u64, comm: &str, cmdline: &str) {
        if self.exec_pending.len() >= MAX_EXEC_PENDING
            && let Some(oldest) = self
                .exec_pending
                .iter()
                .min_by_key(|(_, e)| e.0)
                .map(|(pid, _)| *pid)
        {
            // Forget the oldest: a burst of execs must not grow memory.
            self.exec_pending.remove(&oldest);
        }
        let start = ((timestamp_ns / 1_000_000) as i128 + self.unix_minus_mono_ms).max(0) as u64;
        self.exec_pending
            .insert(pid, (start, comm.to_string(), cmdline.to_string()));
    }

    /// A process exited having used `cpu_ns`.
    pub fn on_exit(&mut self, pid: u32, cpu_ns: u64) {
        if let Some((start, comm, cmdline)) = self.exec_pending.remove(&pid) {
            self.cron.on_cpu_burst(pid, &comm, &cmdline, start, cpu_ns);
        }
    }

    /// Feeds one query just sent: a herd shows in its starts, long before its copies end.
    pub fn on_query_start(&mut self, q: &QueryStart) {
        self.herd.on_query_start(q);
    }

    /// Feeds one query answered, before its request is known.
    pub fn on_query_end(&mut self, q: &QueryEnd) {
        self.herd.on_query_end(q);
    }

    /// Feeds one finished query; `name` resolves a pid to (comm, command line) and is called
    /// only for processes the cron detector has not met.
    pub fn on_query(&mut self, q: &QueryObs, name: impl FnOnce(u32) -> Option<(String, String)>) {
        self.herd.on_query(q);
        self.db_pool.on_query(q);
        let start_unix = (q.started_ms as i128 + self.unix_minus_mono_ms).max(0) as u64;
        self.cron.on_query(q, start_unix, name);
    }

    /// Runs every detector on one snapshot's data; returns the findings and recent pool
    /// lifecycle events.
    pub fn tick(&mut self, input: &TickInput) -> (Vec<Finding>, Vec<PoolEvent>) {
        let now_unix = host::unix_ms();
        let now_mono = host::monotonic_ns() / 1_000_000;
        let offset = self.unix_minus_mono_ms;
        let to_unix = move |mono_ms: u64| (mono_ms as i128 + offset).max(0) as u64;
        self.lifecycle.observe(input.pools, now_unix);
        let (routes, queries) = self.windows.advance(input.routes, input.queries);
        let mut signals = self.herd.tick(now_mono, input.queries, &self.host, to_unix);
        signals.extend(self.starvation.tick(&starvation::StarvationInput {
            now_unix_ms: now_unix,
            host: &self.host,
            pools: input.pools,
            routes: &routes,
            queries: &queries,
            lifecycle: &self.lifecycle,
        }));
        let host_pattern = format!("host {}", self.host);
        signals.extend(self.saturation.tick(&saturation::SaturationInput {
            now_unix_ms: now_unix,
            interval_ms: input.interval_ms,
            host: &self.host,
            pattern: &host_pattern,
            scope: "Host CPU",
            capacity_cpus: input.host.cpus.max(1) as f64,
            cpu_utilization: input.host.cpu_utilization,
            processes: input.processes,
            pools: input.pools,
            routes: &routes,
        }));
        signals.extend(self.cgroup_saturation_tick(input, &routes, now_unix));
        signals.extend(
            self.db_pool
                .tick(now_mono as f64, input.processes, &self.host, to_unix),
        );
        self.herd.set_proxies(self.db_pool.proxy_pids());
        signals.extend(self.cron_tick(input, now_unix));
        for s in signals {
            self.book.apply(s, now_unix);
        }
        if let Some(store) = &mut self.store {
            store.save_if_due(&self.book, std::time::Instant::now());
        }
        (self.book.list(), self.lifecycle.recent())
    }

    /// A pool whose cgroup has a CPU quota saturates at the quota, whatever the host does:
    /// one saturation detector per limited cgroup (bounded).
    fn cgroup_saturation_tick(
        &mut self,
        input: &TickInput,
        routes: &[window::RouteWindow],
        now_unix: u64,
    ) -> Vec<finding::Signal> {
        let mut signals = Vec::new();
        let mut limited = HashSet::new();
        for pool in input.pools {
            let Some(cg) = &pool.cgroup else { continue };
            let Some(limit) = cg.limit_cpus else { continue };
            if self.cgroup_saturation.len() >= MAX_CGROUP_DETECTORS
                && !self.cgroup_saturation.contains_key(&cg.path)
            {
                continue;
            }
            limited.insert(cg.path.clone());
            let members: HashSet<u32> = std::iter::once(pool.pool.master)
                .chain(pool.pool.workers.iter().copied())
                .collect();
            let processes: Vec<ProcessView> = input
                .processes
                .iter()
                .filter(|p| members.contains(&p.pid))
                .cloned()
                .collect();
            let pool_routes: Vec<window::RouteWindow> = routes
                .iter()
                .filter(|r| r.pids.iter().any(|p| members.contains(p)))
                .cloned()
                .collect();
            let config = self.saturation.config.clone();
            let detector = self
                .cgroup_saturation
                .entry(cg.path.clone())
                .or_insert_with(|| saturation::SaturationDetector::new(config));
            signals.extend(detector.tick(&saturation::SaturationInput {
                now_unix_ms: now_unix,
                interval_ms: input.interval_ms,
                host: &self.host,
                pattern: &format!("cgroup {}", cg.path),
                scope: &format!("CPU of cgroup {} (quota {limit} CPUs)", cg.path),
                capacity_cpus: limit,
                cpu_utilization: cg.cpu_utilization,
                processes: &processes,
                pools: std::slice::from_ref(pool),
                routes: &pool_routes,
            }));
        }
        self.cgroup_saturation
            .retain(|path, _| limited.contains(path));
        signals
    }

    /// Execs that used enough CPU become bursts, then the cron detector runs with the pool
    /// processes and proxies excluded from its tasks.
    fn cron_tick(&mut self, input: &TickInput, now_unix: u64) -> Vec<finding::Signal> {
        // Processes still running: a burst once they have used enough CPU.
        let cpu_of: HashMap<u32, u64> = input
            .processes
            .iter()
            .map(|p| (p.pid, p.totals.on_cpu_ns))
            .collect();
        let min_cpu = self.cron.config.min_cpu_ms * 1_000_000;
        let ripe: Vec<u32> = self
            .exec_pending
            .iter()
            .filter(|(pid, (start, _, _))| {
                cpu_of.get(pid).is_some_and(|c| *c >= min_cpu) || start + EXEC_PENDING_MS < now_unix
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in ripe {
            let cpu = cpu_of.get(&pid).copied().unwrap_or(0);
            self.on_exit(pid, cpu);
        }
        let mut not_tasks: HashSet<u32> = self.db_pool.proxy_pids().collect();
        for p in input.pools {
            not_tasks.insert(p.pool.master);
            not_tasks.extend(p.pool.workers.iter().copied());
        }
        // Cron tasks name their top statements by text and id, never by summary alone: three
        // statements on one table would all read `SELECT invoices`.
        let query_names: Vec<(&str, String)> = input
            .queries
            .iter()
            .map(|q| (q.id.as_str(), naming::query_name(&q.id, &q.normalized)))
            .collect();
        let summaries: HashMap<&str, &str> = query_names
            .iter()
            .map(|(id, name)| (*id, name.as_str()))
            .collect();
        let db_pool = &self.db_pool;
        self.cron
            .tick(now_unix, &not_tasks, &summaries, &self.host, |from, to| {
                db_pool.pressure_between(from, to)
            })
    }
}
