//! The snapshot's accounting: CPU and run-queue delay per process, worker states and time
//! shares per pool, cumulative pool CPU by mode, cgroup and host utilisation. Pure arithmetic
//! over readings a [`Sampler`] takes, and over what it remembers from the previous snapshot.
use std::collections::{HashMap, HashSet, VecDeque};

use herdwatch_common::{CpuCurrent, ThreadCounters};

use super::sampler::Sampler;
use crate::{
    host::{self, CpuTicks},
    model::{CgroupView, HostView, PoolView, ProcessView, TimeShare, WorkerView},
    procs::{CpuTotals, Pool, table::ProcessInfo, worker_state::WorkerState},
};

/// Command lines are cut to this many bytes in the views.
pub const CMDLINE_MAX: usize = 200;

/// Pool names whose cumulative CPU is kept; past this the ones not currently running go.
const MAX_POOL_TOTALS: usize = 256;

/// Samples of busy workers kept per pool (at the default 2 s interval, 10 minutes).
const BUSY_HISTORY: usize = 300;

/// Shortest span a cgroup's utilisation is measured over. A CPU quota is enforced per CFS
/// period (100 ms by default): over a window of one or two periods a group at its quota reads
/// anywhere from a third to twice of it, and one such dip broke a sustained saturation.
/// Snapshots taken closer together than this report the last full window's figure.
const CGROUP_WINDOW_NS: u64 = 500_000_000;

/// The start of the cgroup's current measuring window, and the utilisation of the last
/// complete one.
#[derive(Debug, Clone, Copy)]
struct CgroupWindow {
    usage_ns: u64,
    at_ns: u64,
    utilization: Option<f64>,
}

impl CgroupWindow {
    fn start(usage_ns: u64, at_ns: u64) -> Self {
        Self {
            usage_ns,
            at_ns,
            utilization: None,
        }
    }

    /// The window after a reading of `usage_ns` at `now_ns`: closed (utilisation of the
    /// quota over it, new window from here) once it spans `CGROUP_WINDOW_NS`.
    fn advance(self, usage_ns: u64, now_ns: u64, capacity_cpus: f64) -> Self {
        let span = now_ns.saturating_sub(self.at_ns);
        if span < CGROUP_WINDOW_NS {
            return self;
        }
        Self {
            usage_ns,
            at_ns: now_ns,
            utilization: Some(
                usage_ns.saturating_sub(self.usage_ns) as f64
                    / span as f64
                    / capacity_cpus.max(0.001),
            ),
        }
    }
}

/// A pool's cumulative time since the agent started watching it, ns.
#[derive(Debug, Default, Clone, Copy)]
struct PoolTotals {
    user_ns: u64,
    system_ns: u64,
    run_delay_ns: u64,
}

/// What one snapshot's processes came to.
#[derive(Debug)]
pub struct ProcessAccounts {
    /// Wall time since the previous snapshot, ns (0 for the first).
    pub interval_ns: u64,
    pub now_mono_ns: u64,
    /// Every process, highest CPU first.
    pub processes: Vec<ProcessView>,
    pub threads_tracked: usize,
}

/// What the pool accounting needs besides the readings.
pub struct PoolInputs<'a> {
    pub pools: &'a [Pool],
    /// HTTP requests open per worker.
    pub serving: &'a HashMap<u32, usize>,
    /// Cumulative DB wait of a process, ns.
    pub db_wait_of: &'a dyn Fn(u32) -> u64,
}

/// The accounting's memory of the previous snapshot.
#[derive(Debug, Default)]
pub struct Accounting {
    prev_totals: HashMap<u32, CpuTotals>,
    prev_taken_mono_ns: u64,
    /// (CPU ns, run-queue delay ns) per pool name since the agent started (bounded by
    /// `MAX_POOL_TOTALS`: pools that come and go under new names).
    pool_totals: HashMap<String, PoolTotals>,
    /// (utime, stime) ticks of pool processes at the last snapshot.
    prev_user_system: HashMap<u32, (u64, u64)>,
    /// DB wait totals per worker at the previous snapshot.
    prev_db_wait: HashMap<u32, u64>,
    /// Busy-worker samples per pool master, newest last.
    busy_history: HashMap<u32, VecDeque<usize>>,
    /// CPU cgroup path per pool master (None: the root one), and the previous (usage ns,
    /// monotonic ns) per cgroup path.
    cgroups: HashMap<u32, Option<String>>,
    prev_cgroup_usage: HashMap<String, CgroupWindow>,
    prev_ticks: Option<CpuTicks>,
}

impl Accounting {
    /// Processes whose totals are remembered from the previous snapshot.
    pub fn processes_remembered(&self) -> usize {
        self.prev_totals.len()
    }

    /// `ticks`: the host's tick counters now, so the first interval has utilisation.
    pub fn new(ticks: Option<CpuTicks>) -> Self {
        Self {
            prev_ticks: ticks,
            ..Self::default()
        }
    }

    /// Whether a pool's cgroup at `path` is still watched.
    pub fn watches_cgroup(&self, path: &str) -> bool {
        self.cgroups.values().flatten().any(|p| p == path)
    }

    /// CPU and run-queue delay of every process since the previous call.
    pub fn processes<'a>(
        &mut self,
        sampler: &mut dyn Sampler,
        table: impl Iterator<Item = &'a ProcessInfo>,
    ) -> ProcessAccounts {
        let now_mono = sampler.monotonic_ns();
        let interval_ns = if self.prev_taken_mono_ns == 0 {
            0
        } else {
            now_mono.saturating_sub(self.prev_taken_mono_ns)
        };
        let (live, threads_tracked) = live_totals(sampler, now_mono);
        let rate = |cur: u64, prev: u64| per_ns(cur.saturating_sub(prev), interval_ns);
        let (count, _) = table.size_hint();
        let mut processes = Vec::with_capacity(count);
        let mut new_prev = HashMap::with_capacity(count);
        for info in table {
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
                cmdline: command_line(&info.cmdline),
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
        ProcessAccounts {
            interval_ns,
            now_mono_ns: now_mono,
            processes,
            threads_tracked,
        }
    }

    /// One view per pool: worker states, time shares, cumulative CPU, cgroup use.
    pub fn pools(
        &mut self,
        sampler: &mut dyn Sampler,
        accounts: &ProcessAccounts,
        input: &PoolInputs<'_>,
    ) -> Vec<PoolView> {
        let by_pid: HashMap<u32, &ProcessView> =
            accounts.processes.iter().map(|p| (p.pid, p)).collect();
        let mut views: Vec<PoolView> = input
            .pools
            .iter()
            .map(|pool| pool_view(sampler, pool, &by_pid, input))
            .collect();
        self.time_shares(&mut views, accounts.interval_ns, input.db_wait_of);
        self.cumulative_cpu(sampler, &mut views, &by_pid, accounts.interval_ns);
        self.busy_history(&mut views);
        self.cgroups(sampler, &mut views, input.pools, accounts.now_mono_ns);
        views
    }

    /// How the workers' wall time went over the interval: on CPU, waiting on the database,
    /// or neither.
    fn time_shares(
        &mut self,
        views: &mut [PoolView],
        interval_ns: u64,
        db_wait_of: &dyn Fn(u32) -> u64,
    ) {
        let mut db_now = HashMap::new();
        for view in views.iter_mut() {
            let mut cpu_ns = 0.0;
            let mut db_ns = 0u64;
            for w in &view.worker_states {
                cpu_ns += w.cpu_percent / 100.0 * interval_ns as f64;
                let total = db_wait_of(w.pid);
                db_ns +=
                    total.saturating_sub(self.prev_db_wait.get(&w.pid).copied().unwrap_or(total));
                db_now.insert(w.pid, total);
            }
            let wall = interval_ns as f64 * view.worker_states.len() as f64;
            if wall > 0.0 {
                let on_cpu = (cpu_ns / wall).clamp(0.0, 1.0);
                let db_wait = (db_ns as f64 / wall).clamp(0.0, 1.0 - on_cpu);
                view.time_share = Some(TimeShare {
                    on_cpu,
                    db_wait,
                    other: 1.0 - on_cpu - db_wait,
                });
            }
        }
        self.prev_db_wait = db_now;
    }

    /// CPU by mode and run-queue delay, cumulative per pool name, so a master restart or
    /// worker churn keeps counting.
    fn cumulative_cpu(
        &mut self,
        sampler: &mut dyn Sampler,
        views: &mut [PoolView],
        by_pid: &HashMap<u32, &ProcessView>,
        interval_ns: u64,
    ) {
        let mut user_system_now = HashMap::new();
        for view in views.iter_mut() {
            let (mut user_step, mut system_step, mut delay_step) = (0.0, 0.0, 0.0);
            for pid in view.pool.members() {
                let Some(p) = by_pid.get(&pid) else { continue };
                let cpu_step = p.cpu_percent / 100.0 * interval_ns as f64;
                // The scheduler's on-CPU time is exact; the kernel's tick counts say which
                // share of it was user and which system. Workers' ticks were read with their
                // state; only a master that is not a worker is read here.
                let ticks = match view.worker_states.iter().find(|w| w.pid == pid) {
                    Some(w) => w.user_system_ticks,
                    None => sampler.user_system_ticks(pid),
                };
                let user_share = user_share(ticks, self.prev_user_system.get(&pid));
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
        }
        self.prev_user_system = user_system_now;
        if self.pool_totals.len() > MAX_POOL_TOTALS {
            let running: HashSet<&String> = views.iter().map(|v| &v.name).collect();
            self.pool_totals.retain(|name, _| running.contains(name));
        }
    }

    /// Busy workers at each of the last snapshots, per pool master.
    fn busy_history(&mut self, views: &mut [PoolView]) {
        for view in views.iter_mut() {
            let history = self.busy_history.entry(view.pool.master).or_default();
            if history.len() == BUSY_HISTORY {
                history.pop_front();
            }
            history.push_back(view.busy_workers);
            view.busy_history = history.iter().copied().collect();
        }
        let masters: HashSet<u32> = views.iter().map(|v| v.pool.master).collect();
        self.busy_history.retain(|m, _| masters.contains(m));
    }

    /// Each pool master's CPU cgroup (looked up once per master) and its use of its quota.
    fn cgroups(
        &mut self,
        sampler: &mut dyn Sampler,
        views: &mut [PoolView],
        pools: &[Pool],
        now_mono: u64,
    ) {
        self.cgroups
            .retain(|m, _| pools.iter().any(|p| p.master == *m));
        let mut cgroup_usage = HashMap::new();
        for view in views.iter_mut() {
            let path = self
                .cgroups
                .entry(view.pool.master)
                .or_insert_with(|| sampler.cgroup_of(view.pool.master))
                .clone();
            let Some(path) = path else { continue };
            let Some(reading) = sampler.read_cgroup(&path) else {
                continue;
            };
            let capacity = reading.limit_cpus.unwrap_or(sampler.cpu_count() as f64);
            let window = self
                .prev_cgroup_usage
                .get(&path)
                .copied()
                .unwrap_or(CgroupWindow::start(reading.usage_ns, now_mono))
                .advance(reading.usage_ns, now_mono, capacity);
            let cpu_utilization = window.utilization;
            cgroup_usage.insert(path.clone(), window);
            view.cgroup = Some(CgroupView {
                path,
                limit_cpus: reading.limit_cpus,
                cpu_utilization,
            });
        }
        self.prev_cgroup_usage = cgroup_usage;
    }

    /// Host CPU count and utilisation over the interval.
    pub fn host(&mut self, sampler: &mut dyn Sampler, interval_ns: u64) -> HostView {
        let ticks = sampler.host_ticks();
        let cpu_utilization = match (self.prev_ticks, ticks) {
            (Some(a), Some(b)) if interval_ns > 0 => host::utilization(a, b),
            _ => None,
        };
        self.prev_ticks = ticks.or(self.prev_ticks);
        HostView {
            cpus: sampler.cpu_count(),
            cpu_utilization,
        }
    }
}

/// `part` ns per ns of `interval_ns` (0 over an empty interval).
fn per_ns(part: u64, interval_ns: u64) -> f64 {
    if interval_ns == 0 {
        0.0
    } else {
        part as f64 / interval_ns as f64
    }
}

/// The share of CPU time spent in user mode, from (utime, stime) ticks now and at the
/// previous snapshot; all of it when the ticks say nothing.
fn user_share(ticks: Option<(u64, u64)>, prev: Option<&(u64, u64)>) -> f64 {
    match (ticks, prev) {
        (Some((u, s)), Some((pu, ps))) if u + s > pu + ps => {
            u.saturating_sub(*pu) as f64 / (u + s - pu - ps) as f64
        }
        (Some((u, s)), _) if u + s > 0 => u as f64 / (u + s) as f64,
        _ => 1.0,
    }
}

/// Per process: its live threads' counters summed, and how many threads that is; plus the
/// number of threads the kernel side tracks.
fn live_totals(
    sampler: &mut dyn Sampler,
    now_mono: u64,
) -> (HashMap<u32, (CpuTotals, u32)>, usize) {
    let running = sampler.running_now();
    let threads = sampler.threads();
    let count = threads.len();
    let mut per_process: HashMap<u32, (CpuTotals, u32)> = HashMap::new();
    for (tid, mut c) in threads {
        let tgid = if c.tgid != 0 {
            c.tgid
        } else {
            match sampler.tgid_of(tid) {
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
    sampler: &mut dyn Sampler,
    pool: &Pool,
    by_pid: &HashMap<u32, &ProcessView>,
    input: &PoolInputs,
) -> PoolView {
    let serving = input.serving;
    let listeners = sampler.listeners(pool.master, &pool.workers);
    let worker_states: Vec<WorkerView> = pool
        .workers
        .iter()
        .map(|pid| {
            let view = by_pid.get(pid);
            let (state, user_system_ticks) = sampler.worker(*pid);
            WorkerView {
                pid: *pid,
                state: match state {
                    WorkerState::Idle if serving.contains_key(pid) => WorkerState::Serving,
                    state => state,
                },
                cpu_percent: view.map(|v| v.cpu_percent).unwrap_or(0.0),
                totals: view.map(|v| v.totals).unwrap_or_default(),
                db_wait_ns: (input.db_wait_of)(*pid),
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

/// A command line as the views show it: one line of printable text, bounded.
pub fn command_line(argv: &[String]) -> String {
    truncate(&printable(&argv.join(" ")), CMDLINE_MAX)
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
mod tests;
