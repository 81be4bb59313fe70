//! Route series: finished HTTP exchanges counted per (pool, method, grouped route), bounded
//! by `max_routes` (past it new series count under `* other`).
use herdwatch_protocol::http::Exchange;

use super::{Aggregates, remember_pid};
use crate::{
    model::{FinishedExchange, Label, RouteStats},
    pipeline::connections::RequestCost,
};

/// A route series: the pool that served it, the method and the grouped route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RouteKey {
    pool: Label,
    method: herdwatch_protocol::CompactString,
    route: Label,
}

/// A [`RouteKey`] borrowed from a finished exchange: looking a series up builds no key (no
/// reference counts taken and dropped, no method copied) unless the series is new.
#[derive(Clone, Copy)]
struct RouteKeyRef<'a> {
    pool: &'a str,
    method: &'a str,
    route: &'a str,
}

impl std::hash::Hash for RouteKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        RouteKeyRef {
            pool: &self.pool,
            method: &self.method,
            route: &self.route,
        }
        .hash(h)
    }
}

impl std::hash::Hash for RouteKeyRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.pool.hash(h);
        self.method.hash(h);
        self.route.hash(h);
    }
}

impl From<&RouteKeyRef<'_>> for RouteKey {
    fn from(key: &RouteKeyRef<'_>) -> Self {
        Self {
            pool: key.pool.into(),
            method: key.method.into(),
            route: key.route.into(),
        }
    }
}

impl hashbrown::Equivalent<RouteKey> for RouteKeyRef<'_> {
    fn equivalent(&self, key: &RouteKey) -> bool {
        // Pools and routes are interned: usually the very same text.
        let same = |a: &str, b: &str| std::ptr::eq(a, b) || a == b;
        same(self.pool, &key.pool) && same(self.route, &key.route) && self.method == key.method
    }
}

/// Route names interned; past this the set starts over (a crawler's random paths).
const ROUTE_INTERN_MAX: usize = 4096;

/// Route series by key, hashed with the key's borrowed form.
pub(super) type RouteMap = hashbrown::HashMap<RouteKey, RouteStats, rustc_hash::FxBuildHasher>;

impl Aggregates {
    /// The route a request target groups into.
    pub fn route_of(&mut self, target: &str) -> Label {
        let mut route = std::mem::take(&mut self.route_scratch);
        self.grouper.route_into(target, &mut route);
        let known = self.route_names.get(route.as_str()).cloned();
        let label = known.unwrap_or_else(|| {
            if self.route_names.len() >= ROUTE_INTERN_MAX {
                self.route_names.clear();
            }
            let label: Label = route.as_str().into();
            self.route_names.insert(label.clone());
            label
        });
        self.route_scratch = route;
        label
    }

    /// Counts a finished exchange of `pid` under its route series and hands it to the
    /// subscribers.
    pub fn record_exchange(&mut self, pid: u32, x: &Exchange, cost: Option<&RequestCost>) {
        let grouped;
        let route = match cost {
            Some(c) => &c.route,
            None => {
                grouped = self.route_of(&x.request.target);
                &grouped
            }
        };
        let pool = self.pool_of_pid.get(&pid);
        let key = RouteKeyRef {
            pool: pool.unwrap_or(&self.no_pool),
            method: &x.request.method,
            route,
        };
        let entry = route_series(&mut self.routes, self.max_routes, key);
        let finished = FinishedExchange {
            pool: pool.map(|p| &**p),
            method: &entry.method,
            route: &entry.route,
            status: x.status,
            started_ns: x.started_ns,
            finished_ns: x.finished_ns,
            cpu_ns: cost.map_or(0, |c| c.cpu_ns),
            db_wait_ns: cost.map_or(0, |c| c.db_wait_ns),
            queries: cost.map_or(&[], |c| &c.query_spans),
        };
        for sink in &mut self.sinks {
            sink.exchange(&finished);
        }
        count_exchange(entry, pid, x, cost);
    }

    /// Routes, most total time first.
    pub fn routes(&self) -> Vec<RouteStats> {
        let mut v: Vec<_> = self.routes.values().cloned().collect();
        v.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.route.cmp(&b.route)));
        v
    }
}

/// The series `key` counts under, created if new (`* other` once `max_routes` are known).
/// One hash, one probe: found, or inserted in the slot the probe ended at.
fn route_series<'a>(
    routes: &'a mut RouteMap,
    max_routes: usize,
    mut key: RouteKeyRef<'_>,
) -> &'a mut RouteStats {
    if routes.len() >= max_routes && !routes.contains_key(&key) {
        key.method = "*";
        key.route = "other";
    }
    let hash = std::hash::BuildHasher::hash_one(routes.hasher(), key);
    match routes
        .raw_entry_mut()
        .from_hash(hash, |k| hashbrown::Equivalent::equivalent(&key, k))
    {
        hashbrown::hash_map::RawEntryMut::Occupied(e) => e.into_mut(),
        hashbrown::hash_map::RawEntryMut::Vacant(e) => {
            let stats = RouteStats {
                pool: key.pool.to_string(),
                method: key.method.to_string(),
                route: key.route.to_string(),
                ..Default::default()
            };
            e.insert_hashed_nocheck(hash, RouteKey::from(&key), stats).1
        }
    }
}

/// Adds one exchange to its series: count, latency by status, and what it cost.
fn count_exchange(entry: &mut RouteStats, pid: u32, x: &Exchange, cost: Option<&RequestCost>) {
    let took = x.finished_ns.saturating_sub(x.started_ns);
    entry.requests += 1;
    remember_pid(&mut entry.pids, pid);
    entry.total_ns += took;
    entry.max_ns = entry.max_ns.max(took);
    entry.latency.record(took);
    match x.status {
        Some(s) => {
            *entry.by_status.entry(s).or_default() += 1;
            entry.latency_by_status.entry(s).or_default().record(took);
        }
        None => {
            entry.unanswered += 1;
            entry.unanswered_latency.record(took);
        }
    }
    if let Some(c) = cost {
        entry.cpu_ns += c.cpu_ns;
        entry.db_wait_ns += c.db_wait_ns;
        entry.queries += c.queries;
    }
}
