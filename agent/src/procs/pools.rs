//! Worker pools: a gunicorn or uvicorn master and its workers, derived from the process table.
use std::collections::HashMap;

use serde::Serialize;

use super::{
    cmdline::{ServerCmd, classify, is_helper_process},
    table::ProcessTable,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Gunicorn,
    Uvicorn,
}

/// A pool's shape: who the master is and which processes are its workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub kind: PoolKind,
    pub master: u32,
    pub workers: Vec<u32>,
    /// `module:attribute` served, e.g. `shop.app:app`.
    pub app: Option<String>,
    pub worker_class: String,
    /// Workers the command line asked for (None = the server's default).
    pub configured_workers: Option<u32>,
    /// Addresses from the command line; the real listen sockets come from /proc.
    pub configured_binds: Vec<String>,
    /// What tells this pool apart when another on the host serves the same app with the same
    /// server (`gunicorn app:app` is every second service): its bind, else its master's pid.
    /// None when its name is unique. See [`tell_twins_apart`].
    pub distinct_by: Option<String>,
}

impl Pool {
    /// The master, then each worker that is not the master (a single-process uvicorn is both).
    pub fn members(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.master)
            .chain(self.workers.iter().copied().filter(|w| *w != self.master))
    }

    /// Whether its workers serve many requests per thread on an asyncio event loop (uvicorn,
    /// or gunicorn with an ASGI worker class) rather than one per thread (sync, gthread).
    pub fn runs_asyncio(&self) -> bool {
        match self.kind {
            PoolKind::Uvicorn => true,
            PoolKind::Gunicorn => {
                let class = self.worker_class.to_ascii_lowercase();
                ["uvicorn", "asgi", "aiohttp"]
                    .iter()
                    .any(|w| class.contains(w))
            }
        }
    }

    /// A stable, human name: `gunicorn shop.app:app`; `gunicorn app:app on 127.0.0.1:8001`
    /// when another pool would have the same; `gunicorn pid 123` when the app is unknown.
    /// Routes, findings and series are keyed by it, so it must not change with a restart.
    pub fn name(&self) -> String {
        let mut name = self.base_name();
        if let Some(distinct) = &self.distinct_by {
            name.push_str(" on ");
            name.push_str(distinct);
        }
        name
    }

    /// The name before twins are told apart.
    fn base_name(&self) -> String {
        let kind = match self.kind {
            PoolKind::Gunicorn => "gunicorn",
            PoolKind::Uvicorn => "uvicorn",
        };
        match &self.app {
            Some(app) => format!("{kind} {app}"),
            None => format!("{kind} pid {}", self.master),
        }
    }
}

/// Finds every pool in the table.
///
/// A master is a server process whose parent is not the same kind of server; its workers are
/// its children (gunicorn forks them: same argv; uvicorn spawns them through multiprocessing:
/// a `python -c "from multiprocessing.spawn …"` argv, so any child but a helper counts). A
/// uvicorn without children is a single-process pool that is its own worker.
pub fn discover(table: &ProcessTable) -> Vec<Pool> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut servers: HashMap<u32, ServerCmd> = HashMap::new();
    for p in table.iter() {
        children.entry(p.ppid).or_default().push(p.pid);
        if let Some(cmd) = classify(&p.cmdline) {
            servers.insert(p.pid, cmd);
        }
    }
    let same_kind = |a: &ServerCmd, b: &ServerCmd| {
        matches!(
            (a, b),
            (ServerCmd::Gunicorn { .. }, ServerCmd::Gunicorn { .. })
                | (ServerCmd::Uvicorn { .. }, ServerCmd::Uvicorn { .. })
        )
    };
    let mut pools = Vec::new();
    for (&pid, cmd) in &servers {
        let Some(info) = table.get(pid) else { continue };
        if let Some(parent) = servers.get(&info.ppid)
            && same_kind(parent, cmd)
        {
            continue; // a worker; its master builds the pool
        }
        if let ServerCmd::Gunicorn {
            title_role: Some(role),
            ..
        } = cmd
            && role == "worker"
        {
            continue; // orphaned worker title; not a master
        }
        let mut workers = workers_of(table, cmd, children.get(&pid));
        let (kind, worker_class, configured_workers, binds) = match cmd {
            ServerCmd::Gunicorn {
                worker_class,
                workers,
                binds,
                ..
            } => (
                PoolKind::Gunicorn,
                worker_class.clone(),
                *workers,
                binds.clone(),
            ),
            ServerCmd::Uvicorn { workers, binds, .. } => (
                PoolKind::Uvicorn,
                "uvicorn".to_string(),
                *workers,
                binds.clone(),
            ),
        };
        if workers.is_empty() && kind == PoolKind::Uvicorn {
            workers.push(pid);
        }
        pools.push(Pool {
            kind,
            master: pid,
            workers,
            app: cmd.app().map(String::from),
            worker_class,
            configured_workers,
            configured_binds: binds,
            distinct_by: None,
        });
    }
    pools.sort_by_key(|p| p.master);
    tell_twins_apart(&mut pools);
    pools
}

/// Pools that would share a name get [`Pool::distinct_by`]: the binds from their command
/// lines when those differ (stable across restarts, so a finding keeps its id), else the
/// master's pid. Without it, two services both run as `gunicorn app:app` merge into one
/// pool's routes, lifecycle and findings.
pub fn tell_twins_apart(pools: &mut [Pool]) {
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, p) in pools.iter().enumerate() {
        by_name.entry(p.base_name()).or_default().push(i);
    }
    for twins in by_name.values().filter(|t| t.len() > 1) {
        let binds: Vec<String> = twins
            .iter()
            .map(|&i| pools[i].configured_binds.join(","))
            .collect();
        let unique: std::collections::HashSet<&String> = binds.iter().collect();
        let binds_differ = unique.len() == binds.len() && binds.iter().all(|b| !b.is_empty());
        for (&i, bind) in twins.iter().zip(binds) {
            pools[i].distinct_by = Some(if binds_differ {
                bind
            } else {
                format!("pid {}", pools[i].master)
            });
        }
    }
}

/// A master's workers among its children, sorted: gunicorn workers are forks of the master
/// (the same program); any child of a uvicorn master but a helper process.
fn workers_of(table: &ProcessTable, cmd: &ServerCmd, children: Option<&Vec<u32>>) -> Vec<u32> {
    let mut workers: Vec<u32> = children
        .map(|kids| {
            kids.iter()
                .copied()
                .filter(|kid| {
                    let Some(k) = table.get(*kid) else {
                        return false;
                    };
                    match cmd {
                        ServerCmd::Gunicorn { .. } => {
                            matches!(classify(&k.cmdline), Some(ServerCmd::Gunicorn { .. }))
                        }
                        ServerCmd::Uvicorn { .. } => !is_helper_process(&k.cmdline),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    workers.sort_unstable();
    workers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::ProcessEvent;

    fn fork(t: &mut ProcessTable, pid: u32, ppid: u32) {
        t.apply(&ProcessEvent::NewTask {
            tid: pid,
            tgid: pid,
            parent_tid: ppid,
            parent_tgid: ppid,
            is_thread: false,
            comm: "python3".into(),
            timestamp_ns: 0,
        });
    }

    #[test]
    fn gunicorn_master_and_forked_workers() {
        let mut t = ProcessTable::default();
        t.insert_for_test(
            100,
            1,
            "/venv/bin/gunicorn -w 2 -b 127.0.0.1:8000 shop.app:app",
        );
        fork(&mut t, 101, 100);
        fork(&mut t, 102, 100);
        let pools = discover(&t);
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].master, 100);
        assert_eq!(pools[0].workers, vec![101, 102]);
        assert_eq!(pools[0].app.as_deref(), Some("shop.app:app"));
        assert_eq!(pools[0].kind, PoolKind::Gunicorn);
    }

    #[test]
    fn uvicorn_spawned_workers_skip_the_resource_tracker() {
        let mut t = ProcessTable::default();
        t.insert_for_test(200, 1, "/venv/bin/python -m uvicorn api:app --workers 2");
        t.insert_for_test(201, 200, "/venv/bin/python -c from multiprocessing.spawn import spawn_main; --multiprocessing-fork");
        t.insert_for_test(202, 200, "/venv/bin/python -c from multiprocessing.spawn import spawn_main; --multiprocessing-fork");
        t.insert_for_test(
            203,
            200,
            "/venv/bin/python -c from multiprocessing.resource_tracker import main;main(6)",
        );
        let pools = discover(&t);
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].workers, vec![201, 202]);
        assert_eq!(pools[0].configured_workers, Some(2));
    }

    #[test]
    fn single_process_uvicorn_is_its_own_worker() {
        let mut t = ProcessTable::default();
        t.insert_for_test(300, 1, "uvicorn app:app");
        assert_eq!(discover(&t)[0].workers, vec![300]);
    }

    #[test]
    fn two_services_serving_the_same_app_are_two_pools_by_name() {
        let mut t = ProcessTable::default();
        t.insert_for_test(100, 1, "/srv/a/bin/gunicorn -w 1 -b 127.0.0.1:8001 app:app");
        fork(&mut t, 101, 100);
        t.insert_for_test(
            200,
            1,
            "/srv/b/bin/gunicorn -w 1 --bind 127.0.0.1:8002 app:app",
        );
        fork(&mut t, 201, 200);
        t.insert_for_test(
            300,
            1,
            "/venv/bin/gunicorn -w 1 -b 127.0.0.1:9000 shop.app:app",
        );
        fork(&mut t, 301, 300);
        let names: Vec<String> = discover(&t).iter().map(Pool::name).collect();
        assert_eq!(
            names,
            [
                "gunicorn app:app on 127.0.0.1:8001",
                "gunicorn app:app on 127.0.0.1:8002",
                "gunicorn shop.app:app",
            ]
        );
        // Same binds on the command line (e.g. both from a config file): the masters' pids.
        let mut t = ProcessTable::default();
        t.insert_for_test(400, 1, "uvicorn main:app");
        t.insert_for_test(500, 1, "uvicorn main:app");
        let names: Vec<String> = discover(&t).iter().map(Pool::name).collect();
        assert_eq!(
            names,
            ["uvicorn main:app on pid 400", "uvicorn main:app on pid 500"]
        );
    }
}
