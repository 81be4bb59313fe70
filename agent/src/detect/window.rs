//! Per-interval deltas of the cumulative route and query statistics: what happened since the
//! previous snapshot, which is what detectors reason about.
use std::collections::HashMap;

use crate::model::{Histogram, QueryStats, RouteStats};

#[derive(Debug, Clone, Default)]
pub struct RouteWindow {
    pub method: String,
    pub route: String,
    pub requests: u64,
    pub total_ns: u64,
    pub cpu_ns: u64,
    pub db_wait_ns: u64,
    pub latency: Histogram,
    /// Processes that recently served the route.
    pub pids: Vec<u32>,
}

impl RouteWindow {
    pub fn label(&self) -> String {
        format!("{} {}", self.method, self.route)
    }
}

#[derive(Debug, Clone, Default)]
pub struct QueryWindow {
    pub id: String,
    pub summary: String,
    /// Normalised text (literals stripped), for naming the statement to a person.
    pub normalized: String,
    /// The application line issuing most of its calls (`file:line in function()`).
    pub call_site: Option<String>,
    pub calls: u64,
    pub total_ns: u64,
    pub pids: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct Windows {
    /// Keyed by (pool, method, route), as the route series are: two pools serving one route
    /// are two series, each with its own deltas.
    prev_routes: HashMap<(String, String, String), RouteStats>,
    prev_queries: HashMap<String, (u64, u64)>,
}

impl Windows {
    /// Deltas since the previous call (the first call's deltas are everything so far).
    pub fn advance(
        &mut self,
        routes: &[RouteStats],
        queries: &[QueryStats],
    ) -> (Vec<RouteWindow>, Vec<QueryWindow>) {
        let mut rw = Vec::new();
        let mut next_routes = HashMap::with_capacity(routes.len());
        for r in routes {
            let key = (r.pool.clone(), r.method.clone(), r.route.clone());
            let prev = self.prev_routes.get(&key);
            let requests = r.requests - prev.map(|p| p.requests).unwrap_or(0).min(r.requests);
            if requests > 0 {
                let sub = |now: u64, f: fn(&RouteStats) -> u64| {
                    now.saturating_sub(prev.map(f).unwrap_or(0))
                };
                let mut latency = r.latency.clone();
                if let Some(p) = prev {
                    for (a, b) in latency.0.iter_mut().zip(&p.latency.0) {
                        *a = a.saturating_sub(*b);
                    }
                }
                rw.push(RouteWindow {
                    method: r.method.clone(),
                    route: r.route.clone(),
                    requests,
                    total_ns: sub(r.total_ns, |p| p.total_ns),
                    cpu_ns: sub(r.cpu_ns, |p| p.cpu_ns),
                    db_wait_ns: sub(r.db_wait_ns, |p| p.db_wait_ns),
                    latency,
                    pids: r.pids.clone(),
                });
            }
            next_routes.insert(key, r.clone());
        }
        self.prev_routes = next_routes;
        let mut qw = Vec::new();
        let mut next_queries = HashMap::with_capacity(queries.len());
        for q in queries {
            let (calls, total) = self.prev_queries.get(&q.id).copied().unwrap_or((0, 0));
            if q.calls > calls {
                qw.push(QueryWindow {
                    id: q.id.clone(),
                    summary: q.summary.clone(),
                    normalized: q.normalized.clone(),
                    call_site: q
                        .call_sites
                        .iter()
                        .max_by_key(|s| s.calls)
                        .map(|s| s.site.to_string()),
                    calls: q.calls - calls,
                    total_ns: q.total_ns.saturating_sub(total),
                    pids: q.pids.clone(),
                });
            }
            next_queries.insert(q.id.clone(), (q.calls, q.total_ns));
        }
        self.prev_queries = next_queries;
        (rw, qw)
    }
}

/// Adds `b` into `a` bucket by bucket.
pub fn merge(a: &mut Histogram, b: &Histogram) {
    if a.0.len() < b.0.len() {
        a.0.resize(b.0.len(), 0);
    }
    for (x, y) in a.0.iter_mut().zip(&b.0) {
        *x += y;
    }
}

/// "≤ 50 ms", "≤ 2.5 s", "> 30 s".
pub fn bound_text(ms: Option<u64>) -> String {
    match ms {
        Some(ms) if ms >= 1000 => format!("≤ {} s", ms as f64 / 1000.0),
        Some(ms) => format!("≤ {ms} ms"),
        None => "> 30 s".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(pool: &str, requests: u64, total_ns: u64) -> RouteStats {
        RouteStats {
            pool: pool.into(),
            method: "GET".into(),
            route: "/api/items".into(),
            requests,
            total_ns,
            ..RouteStats::default()
        }
    }

    #[test]
    fn two_pools_serving_one_route_keep_their_own_deltas() {
        let mut windows = Windows::default();
        windows.advance(&[route("shop", 10, 100), route("admin", 3, 30)], &[]);
        let (deltas, _) = windows.advance(&[route("shop", 12, 120), route("admin", 4, 45)], &[]);
        let requests: Vec<(u64, u64)> = deltas.iter().map(|w| (w.requests, w.total_ns)).collect();
        assert_eq!(requests, vec![(2, 20), (1, 15)]);
    }
}
