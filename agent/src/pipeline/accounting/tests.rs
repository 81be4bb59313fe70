//! The accounting on made-up readings: no root, no kernel maps, no /proc.
use std::collections::HashMap;

use herdwatch_common::{CpuCurrent, ThreadCounters};

use super::*;
use crate::{
    net::Listener,
    procs::{PoolKind, cgroup::CpuReading, table::ProcessInfo},
};

/// Readings set by the test; each snapshot reads whatever is set now.
#[derive(Default)]
struct FakeSampler {
    now_ns: u64,
    threads: Vec<(u32, ThreadCounters)>,
    running: Vec<CpuCurrent>,
    tgids: HashMap<u32, u32>,
    workers: HashMap<u32, (WorkerState, Option<(u64, u64)>)>,
    ticks: HashMap<u32, (u64, u64)>,
    accept_queue: Option<u32>,
    cgroup: Option<(String, CpuReading)>,
    cgroup_lookups: usize,
    host: Option<CpuTicks>,
}

impl Sampler for FakeSampler {
    fn monotonic_ns(&mut self) -> u64 {
        self.now_ns
    }
    fn threads(&mut self) -> Vec<(u32, ThreadCounters)> {
        self.threads.clone()
    }
    fn running_now(&mut self) -> Vec<CpuCurrent> {
        self.running.clone()
    }
    fn tgid_of(&mut self, tid: u32) -> Option<u32> {
        self.tgids.get(&tid).copied()
    }
    fn worker(&mut self, pid: u32) -> (WorkerState, Option<(u64, u64)>) {
        self.workers
            .get(&pid)
            .copied()
            .unwrap_or((WorkerState::Unknown, None))
    }
    fn user_system_ticks(&mut self, pid: u32) -> Option<(u64, u64)> {
        self.ticks.get(&pid).copied()
    }
    fn listeners(&mut self, _master: u32, _workers: &[u32]) -> Vec<Listener> {
        self.accept_queue
            .map(|q| Listener {
                inode: 1,
                transport: crate::net::Transport::Tcp,
                address: "127.0.0.1:8000".into(),
                port: Some(8000),
                accept_queue: Some(q),
            })
            .into_iter()
            .collect()
    }
    fn cgroup_of(&mut self, _pid: u32) -> Option<String> {
        self.cgroup_lookups += 1;
        self.cgroup.as_ref().map(|(path, _)| path.clone())
    }
    fn read_cgroup(&mut self, path: &str) -> Option<CpuReading> {
        self.cgroup
            .as_ref()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| *r)
    }
    fn host_ticks(&mut self) -> Option<CpuTicks> {
        self.host
    }
    fn cpu_count(&mut self) -> usize {
        4
    }
}

const MS: u64 = 1_000_000;

fn process(pid: u32, ppid: u32, argv: &[&str]) -> ProcessInfo {
    ProcessInfo::scanned_python(pid, ppid, argv)
}

fn thread(tgid: u32, on_cpu_ns: u64, run_delay_ns: u64) -> ThreadCounters {
    ThreadCounters {
        tgid,
        on_cpu_ns,
        run_delay_ns,
        ..ThreadCounters::default()
    }
}

fn gunicorn() -> Pool {
    Pool {
        kind: PoolKind::Gunicorn,
        master: 10,
        workers: vec![11, 12],
        app: Some("shop.app:app".into()),
        worker_class: "sync".into(),
        configured_workers: Some(2),
        configured_binds: Vec::new(),
        distinct_by: None,
    }
}

fn no_db_wait(_: u32) -> u64 {
    0
}

#[test]
fn process_cpu_and_run_delay_are_rates_over_the_interval() {
    let table = [
        process(10, 1, &["gunicorn", "shop.app:app"]),
        process(11, 10, &[]),
    ];
    let mut sampler = FakeSampler {
        now_ns: 1_000 * MS,
        threads: vec![(100, thread(10, 10 * MS, 0)), (101, thread(0, 0, 0))],
        tgids: [(101, 11)].into(),
        ..FakeSampler::default()
    };
    let mut accounting = Accounting::new(None);
    let first = accounting.processes(&mut sampler, table.iter());
    assert_eq!(first.interval_ns, 0);
    assert!(first.processes.iter().all(|p| p.cpu_percent == 0.0));
    assert_eq!(first.threads_tracked, 2);

    // One second later: the master used 500 ms and waited 20 ms for a CPU; the worker's
    // thread, never switched out, has run for the last 250 ms (its slice counts).
    sampler.now_ns = 2_000 * MS;
    let mut running = thread(0, 0, 0);
    running.switched_in_at_ns = 1_750 * MS;
    sampler.threads = vec![(100, thread(10, 510 * MS, 20 * MS)), (101, running)];
    sampler.running = vec![CpuCurrent {
        tid: 101,
        _reserved: 0,
        since_ns: 1_750 * MS,
    }];
    let second = accounting.processes(&mut sampler, table.iter());
    assert_eq!(second.interval_ns, 1_000 * MS);
    let by_pid: HashMap<u32, &ProcessView> = second.processes.iter().map(|p| (p.pid, p)).collect();
    assert!((by_pid[&10].cpu_percent - 50.0).abs() < 1e-9);
    assert!((by_pid[&10].run_delay_ms_per_s - 20.0).abs() < 1e-9);
    assert!((by_pid[&11].cpu_percent - 25.0).abs() < 1e-9);
    assert_eq!(second.processes[0].pid, 10, "highest CPU first");
    assert_eq!(by_pid[&10].cmdline, "gunicorn shop.app:app");
}

#[test]
fn pools_get_worker_states_time_shares_and_cumulative_cpu_by_mode() {
    let table = [
        process(10, 1, &["gunicorn"]),
        process(11, 10, &[]),
        process(12, 10, &[]),
    ];
    let pools = [gunicorn()];
    let mut sampler = FakeSampler {
        now_ns: 1_000 * MS,
        threads: vec![(11, thread(11, 0, 0)), (12, thread(12, 0, 0))],
        workers: [
            (11, (WorkerState::Idle, Some((0, 0)))),
            (12, (WorkerState::Idle, Some((0, 0)))),
        ]
        .into(),
        accept_queue: Some(7),
        ..FakeSampler::default()
    };
    let serving: HashMap<u32, usize> = [(12, 1)].into();
    let db_wait: HashMap<u32, u64> = [(11, 0), (12, 0)].into();
    let mut accounting = Accounting::new(None);
    let accounts = accounting.processes(&mut sampler, table.iter());
    let db = |pid: u32| db_wait.get(&pid).copied().unwrap_or(0);
    let inputs = PoolInputs {
        pools: &pools,
        serving: &serving,
        db_wait_of: &db,
    };
    let first = accounting.pools(&mut sampler, &accounts, &inputs);
    assert_eq!(
        first[0].busy_workers, 1,
        "idle in poll with a request open = serving"
    );
    assert_eq!(first[0].worker_states[1].state, WorkerState::Serving);
    assert_eq!(first[0].active_requests, 1);
    assert_eq!(first[0].accept_queue(), Some(7));
    assert_eq!(first[0].time_share, None, "no interval yet");

    // One second: worker 11 ran 400 ms (3 of 4 ticks user) and waited 300 ms on the DB.
    sampler.now_ns = 2_000 * MS;
    sampler.threads = vec![(11, thread(11, 400 * MS, 0)), (12, thread(12, 0, 0))];
    sampler
        .workers
        .insert(11, (WorkerState::Running, Some((30, 10))));
    let db_wait: HashMap<u32, u64> = [(11, 300 * MS), (12, 0)].into();
    let db = |pid: u32| db_wait.get(&pid).copied().unwrap_or(0);
    let accounts = accounting.processes(&mut sampler, table.iter());
    let inputs = PoolInputs {
        pools: &pools,
        serving: &serving,
        db_wait_of: &db,
    };
    let second = accounting.pools(&mut sampler, &accounts, &inputs);
    let view = &second[0];
    assert_eq!(view.busy_workers, 2);
    assert_eq!(view.busy_history, vec![1, 2]);
    let share = view.time_share.expect("an interval passed");
    // Two workers' wall time: 2 s; 400 ms on CPU, 300 ms on the DB.
    assert!((share.on_cpu - 0.2).abs() < 1e-9, "{share:?}");
    assert!((share.db_wait - 0.15).abs() < 1e-9, "{share:?}");
    assert_eq!(view.cpu_time_ns, 400 * MS);
    assert_eq!(view.cpu_user_ns, 300 * MS);
    assert_eq!(view.cpu_system_ns, 100 * MS);
    let waits: Vec<(u32, u64)> = view
        .worker_states
        .iter()
        .map(|w| (w.pid, w.db_wait_ns))
        .collect();
    assert_eq!(
        waits,
        vec![(11, 300 * MS), (12, 0)],
        "each worker's DB wait"
    );
}

#[test]
fn a_cgroup_is_looked_up_once_and_its_use_is_a_share_of_its_quota() {
    let table = [process(10, 1, &["gunicorn"])];
    let pools = [Pool {
        workers: Vec::new(),
        ..gunicorn()
    }];
    let quota = |usage_ns| CpuReading {
        usage_ns,
        limit_cpus: Some(2.0),
    };
    let mut sampler = FakeSampler {
        now_ns: 1_000 * MS,
        cgroup: Some(("/kubepods/pod1/shop".into(), quota(0))),
        host: Some(CpuTicks::new(100, 1_000)),
        ..FakeSampler::default()
    };
    let serving = HashMap::new();
    let inputs = PoolInputs {
        pools: &pools,
        serving: &serving,
        db_wait_of: &no_db_wait,
    };
    let mut accounting = Accounting::new(sampler.host);
    let accounts = accounting.processes(&mut sampler, table.iter());
    let first = accounting.pools(&mut sampler, &accounts, &inputs);
    let host = accounting.host(&mut sampler, accounts.interval_ns);
    assert_eq!(host.cpu_utilization, None, "no interval yet");
    let cgroup = first[0].cgroup.as_ref().expect("limited cgroup");
    assert_eq!(cgroup.cpu_utilization, None);
    assert_eq!(cgroup.limit_cpus, Some(2.0));

    // One second, one CPU-second used of a two-CPU quota; the host was busy 3 ticks of 4.
    sampler.now_ns = 2_000 * MS;
    sampler.cgroup = Some(("/kubepods/pod1/shop".into(), quota(1_000 * MS)));
    sampler.host = Some(CpuTicks::new(400, 1_400));
    let accounts = accounting.processes(&mut sampler, table.iter());
    let second = accounting.pools(&mut sampler, &accounts, &inputs);
    let host = accounting.host(&mut sampler, accounts.interval_ns);
    let used = second[0].cgroup.as_ref().and_then(|c| c.cpu_utilization);
    assert_eq!(used, Some(0.5));
    assert_eq!(host.cpu_utilization, Some(0.75));
    assert_eq!(host.cpus, 4);
    assert_eq!(sampler.cgroup_lookups, 1, "looked up once per master");
    assert!(accounting.watches_cgroup("/kubepods/pod1/shop"));
}

/// Snapshots closer together than the measuring window (a test polling every 200 ms between
/// periodic ones) report the last full window: a group at its quota, throttled within one
/// CFS period, must not read as a third of it over a 50 ms slice.
#[test]
fn a_cgroup_is_measured_over_half_a_second_at_least() {
    let table = [process(10, 1, &["gunicorn"])];
    let pools = [Pool {
        workers: Vec::new(),
        ..gunicorn()
    }];
    let reading = |usage_ns| CpuReading {
        usage_ns,
        limit_cpus: Some(0.5),
    };
    let mut sampler = FakeSampler {
        now_ns: 1_000 * MS,
        cgroup: Some(("/pod/shop".into(), reading(0))),
        ..FakeSampler::default()
    };
    let serving = HashMap::new();
    let inputs = PoolInputs {
        pools: &pools,
        serving: &serving,
        db_wait_of: &no_db_wait,
    };
    let mut accounting = Accounting::new(None);
    let mut utilization_at = |now_ms: u64, usage_ms: u64| {
        sampler.now_ns = now_ms * MS;
        sampler.cgroup = Some(("/pod/shop".into(), reading(usage_ms * MS)));
        let accounts = accounting.processes(&mut sampler, table.iter());
        let views = accounting.pools(&mut sampler, &accounts, &inputs);
        views[0].cgroup.as_ref().and_then(|c| c.cpu_utilization)
    };
    assert_eq!(utilization_at(1_000, 0), None);
    assert_eq!(utilization_at(1_200, 100), None, "no full window yet");
    // 500 ms of half a CPU: at the quota.
    assert_eq!(utilization_at(1_500, 250), Some(1.0));
    // 50 ms later, throttled all along: still the last full window's figure.
    assert_eq!(utilization_at(1_550, 250), Some(1.0));
    // A full window at a fifth of the quota.
    assert_eq!(utilization_at(2_000, 300), Some(0.2));
}

#[test]
fn command_lines_are_printable_and_bounded() {
    assert_eq!(command_line(&["a\nb".into(), "c".into()]), "a b c");
    let long = command_line(&["é".repeat(150)]);
    assert!(long.len() <= CMDLINE_MAX + "…".len() && long.ends_with('…'));
}
