//! Pool lifecycle: worker exits, respawns and master reloads (a deploy), derived from how each
//! pool's membership changes between snapshots, kept per pool so findings can cite the reload
//! that came just before them.
use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::model::PoolView;

use crate::model::pool_event::{PoolChange, PoolEvent};

#[derive(Debug, Default)]
struct Membership {
    master: u32,
    workers: BTreeSet<u32>,
    /// Workers started and exited recently (for reload detection), with times.
    started: VecDeque<u64>,
    exited: VecDeque<u64>,
}

const EVENTS_PER_POOL: usize = 64;
/// Replacements this close together count as one reload.
const RELOAD_WINDOW_MS: u64 = 30_000;

#[derive(Debug, Default)]
pub struct LifecycleLog {
    pools: HashMap<String, Membership>,
    events: HashMap<String, VecDeque<PoolEvent>>,
}

impl LifecycleLog {
    /// Compares membership with the previous snapshot; returns the events found now.
    pub fn observe(&mut self, pools: &[PoolView], now_unix_ms: u64) -> Vec<PoolEvent> {
        let mut found = Vec::new();
        for view in pools {
            let workers: BTreeSet<u32> = view.pool.workers.iter().copied().collect();
            let m = self.pools.entry(view.name.clone()).or_default();
            let known = m.master == view.pool.master;
            if known {
                for pid in workers.difference(&m.workers) {
                    m.started.push_back(now_unix_ms);
                    found.push((
                        view.name.clone(),
                        m.master,
                        PoolChange::WorkerStarted { pid: *pid },
                    ));
                }
                for pid in m.workers.difference(&workers) {
                    m.exited.push_back(now_unix_ms);
                    found.push((
                        view.name.clone(),
                        m.master,
                        PoolChange::WorkerExited { pid: *pid },
                    ));
                }
                for q in [&mut m.started, &mut m.exited] {
                    while q
                        .front()
                        .is_some_and(|t| t + RELOAD_WINDOW_MS < now_unix_ms)
                    {
                        q.pop_front();
                    }
                }
                let n = workers.len().max(1);
                let half = n.div_ceil(2).max(2);
                if m.started.len() >= half && m.exited.len() >= half {
                    found.push((
                        view.name.clone(),
                        m.master,
                        PoolChange::Reload {
                            replaced: m.exited.len().min(m.started.len()),
                            workers: n,
                        },
                    ));
                    m.started.clear();
                    m.exited.clear();
                }
            }
            m.master = view.pool.master;
            m.workers = workers;
        }
        let names: BTreeSet<&String> = pools.iter().map(|p| &p.name).collect();
        self.pools.retain(|k, _| names.contains(k));
        let mut out = Vec::with_capacity(found.len());
        for (pool, master, change) in found {
            let event = PoolEvent {
                at_unix_ms: now_unix_ms,
                pool: pool.clone(),
                master,
                change,
            };
            let q = self.events.entry(pool).or_default();
            if q.len() == EVENTS_PER_POOL {
                q.pop_front();
            }
            q.push_back(event.clone());
            out.push(event);
        }
        out
    }

    /// Reloads and worker exits of `pool` in `[from, to]`, described, oldest first.
    pub fn notes(&self, pool: &str, from_unix_ms: u64, to_unix_ms: u64) -> Vec<String> {
        let Some(events) = self.events.get(pool) else {
            return Vec::new();
        };
        let in_range: Vec<&PoolEvent> = events
            .iter()
            .filter(|e| e.at_unix_ms >= from_unix_ms && e.at_unix_ms <= to_unix_ms)
            .collect();
        let reloaded = in_range
            .iter()
            .any(|e| matches!(e.change, PoolChange::Reload { .. }));
        in_range
            .into_iter()
            // A reload explains its own starts and exits; list them only without one.
            .filter(|e| match e.change {
                PoolChange::Reload { .. } => true,
                PoolChange::WorkerExited { .. } => !reloaded,
                PoolChange::WorkerStarted { .. } => false,
            })
            .map(PoolEvent::describe)
            .collect()
    }

    pub fn recent(&self) -> Vec<PoolEvent> {
        let mut v: Vec<PoolEvent> = self.events.values().flatten().cloned().collect();
        v.sort_by_key(|e| e.at_unix_ms);
        v
    }
}
