//! What the accounting reads from the machine at each snapshot — the kernel's per-thread
//! counters, worker states, listen queues, cgroup and host CPU — behind one small trait, so
//! the accounting can be tested with made-up readings and the real reads stay in one place.
use std::collections::HashMap;

use herdwatch_common::{CpuCurrent, ThreadCounters};

use crate::{
    host::{self, CpuTicks},
    net::{Listener, listen},
    probes::maps::KernelMaps,
    procs::{
        cgroup::{self, CpuCgroup, CpuReading},
        worker_state::{self, WorkerState},
    },
};

/// The readings a snapshot's accounting takes.
pub trait Sampler {
    /// CLOCK_MONOTONIC, ns (the kernel's timestamps are on it).
    fn monotonic_ns(&mut self) -> u64;
    /// Scheduler counters of every thread the kernel side tracks, by thread id.
    fn threads(&mut self) -> Vec<(u32, ThreadCounters)>;
    /// The thread each CPU runs right now, and since when.
    fn running_now(&mut self) -> Vec<CpuCurrent>;
    /// Thread group of a thread the kernel side has not attributed yet.
    fn tgid_of(&mut self, tid: u32) -> Option<u32>;
    /// A worker's state and its (utime, stime) ticks, read together.
    fn worker(&mut self, pid: u32) -> (WorkerState, Option<(u64, u64)>);
    /// (utime, stime) ticks of a process that is not a worker (a master).
    fn user_system_ticks(&mut self, pid: u32) -> Option<(u64, u64)>;
    /// The listen sockets of a pool, with their accept queues.
    fn listeners(&mut self, master: u32, workers: &[u32]) -> Vec<Listener>;
    /// The CPU cgroup of `pid` by path, when it is not the root one.
    fn cgroup_of(&mut self, pid: u32) -> Option<String>;
    /// CPU used so far by the cgroup at `path`, and its limit.
    fn read_cgroup(&mut self, path: &str) -> Option<CpuReading>;
    /// The host's CPU tick counters.
    fn host_ticks(&mut self) -> Option<CpuTicks>;
    fn cpu_count(&mut self) -> usize;
}

/// Bound on the tid → tgid cache for threads not yet seen switching out.
const TID_CACHE_MAX: usize = 65_536;

/// What the real sampler keeps between snapshots.
#[derive(Debug, Default)]
pub struct SystemCaches {
    tid_to_tgid: HashMap<u32, u32>,
    /// The cgroups handed out by path, so reading one finds its files again.
    cgroups: HashMap<String, CpuCgroup>,
}

impl SystemCaches {
    /// Threads whose thread group is cached.
    pub fn thread_groups_cached(&self) -> usize {
        self.tid_to_tgid.len()
    }

    /// A thread exited: its cached thread group goes.
    pub fn forget_thread(&mut self, tid: u32) {
        self.tid_to_tgid.remove(&tid);
    }

    /// Keeps only the cgroups `keep` still names (pools come and go).
    pub fn retain_cgroups(&mut self, keep: impl Fn(&str) -> bool) {
        self.cgroups.retain(|path, _| keep(path));
    }
}

/// Reads the kernel maps, /proc and /sys.
pub struct SystemSampler<'a> {
    pub maps: &'a KernelMaps,
    pub caches: &'a mut SystemCaches,
}

impl Sampler for SystemSampler<'_> {
    fn monotonic_ns(&mut self) -> u64 {
        host::monotonic_ns()
    }

    fn threads(&mut self) -> Vec<(u32, ThreadCounters)> {
        self.maps.threads()
    }

    fn running_now(&mut self) -> Vec<CpuCurrent> {
        self.maps.running_now()
    }

    fn tgid_of(&mut self, tid: u32) -> Option<u32> {
        let cache = &mut self.caches.tid_to_tgid;
        if let Some(tgid) = cache.get(&tid) {
            return Some(*tgid);
        }
        let tgid = procfs::process::Process::new(tid as i32)
            .and_then(|p| p.status())
            .ok()
            .map(|s| s.tgid as u32)?;
        if cache.len() >= TID_CACHE_MAX {
            cache.clear();
        }
        cache.insert(tid, tgid);
        Some(tgid)
    }

    fn worker(&mut self, pid: u32) -> (WorkerState, Option<(u64, u64)>) {
        worker_state::sample(pid)
    }

    fn user_system_ticks(&mut self, pid: u32) -> Option<(u64, u64)> {
        worker_state::user_system_ticks(pid)
    }

    fn listeners(&mut self, master: u32, workers: &[u32]) -> Vec<Listener> {
        listen::listeners_of(master, workers)
    }

    fn cgroup_of(&mut self, pid: u32) -> Option<String> {
        let found = cgroup::of_pid(pid).filter(|c| !c.is_root())?;
        let path = found.path.clone();
        self.caches.cgroups.insert(path.clone(), found);
        Some(path)
    }

    fn read_cgroup(&mut self, path: &str) -> Option<CpuReading> {
        self.caches.cgroups.get(path)?.read()
    }

    fn host_ticks(&mut self) -> Option<CpuTicks> {
        host::read_ticks()
    }

    fn cpu_count(&mut self) -> usize {
        host::cpu_count()
    }
}
