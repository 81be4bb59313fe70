//! What `top` knows of the agent: the latest snapshot as it came off the wire, and the request
//! rate of each route, measured as the difference of its request count between two successive
//! snapshots over the time between them (the agent publishes counts since it started, not
//! rates).
use std::collections::HashMap;

use herdwatch_proto::v1 as pb;

/// A route as served by one pool: the same path in two pools is two routes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteKey {
    pub pool: String,
    pub method: String,
    pub route: String,
}

impl RouteKey {
    pub fn of(r: &pb::Route) -> Self {
        Self {
            pool: r.pool.clone(),
            method: r.method.clone(),
            route: r.route.clone(),
        }
    }

    /// One string per route, for keeping a selection across refreshes.
    pub fn text(&self) -> String {
        format!("{}\u{1f}{}\u{1f}{}", self.pool, self.method, self.route)
    }
}

#[derive(Debug, Default)]
pub struct Model {
    latest: Option<pb::Snapshot>,
    /// Requests per second of each route over the last interval; absent until two
    /// snapshots were seen, or when the count went down (the agent restarted).
    rates: HashMap<RouteKey, f64>,
}

impl Model {
    pub fn snapshot(&self) -> Option<&pb::Snapshot> {
        self.latest.as_ref()
    }

    pub fn rate(&self, key: &RouteKey) -> Option<f64> {
        self.rates.get(key).copied()
    }

    /// Takes a new snapshot. The same snapshot again (a reconnected watch begins with the
    /// latest one) keeps the rates it had; an older one (clock step) is taken without rates.
    pub fn ingest(&mut self, next: pb::Snapshot) {
        let Some(prev) = self.latest.as_ref() else {
            self.latest = Some(next);
            return;
        };
        if next.taken_at_unix_ms == prev.taken_at_unix_ms {
            self.latest = Some(next);
            return;
        }
        self.rates.clear();
        if next.taken_at_unix_ms > prev.taken_at_unix_ms {
            let seconds = (next.taken_at_unix_ms - prev.taken_at_unix_ms) as f64 / 1000.0;
            let before: HashMap<RouteKey, u64> = prev
                .routes
                .iter()
                .map(|r| (RouteKey::of(r), r.requests))
                .collect();
            for r in &next.routes {
                let key = RouteKey::of(r);
                // A route new since the last snapshot started from zero.
                let was = before.get(&key).copied().unwrap_or(0);
                if let Some(delta) = r.requests.checked_sub(was) {
                    self.rates.insert(key, delta as f64 / seconds);
                }
            }
        }
        self.latest = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at: u64, routes: &[(&str, &str, u64)]) -> pb::Snapshot {
        pb::Snapshot {
            taken_at_unix_ms: at,
            routes: routes
                .iter()
                .map(|(pool, route, requests)| pb::Route {
                    pool: (*pool).into(),
                    method: "GET".into(),
                    route: (*route).into(),
                    requests: *requests,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn key(pool: &str, route: &str) -> RouteKey {
        RouteKey {
            pool: pool.into(),
            method: "GET".into(),
            route: route.into(),
        }
    }

    #[test]
    fn rates_are_count_differences_over_time_per_pool() {
        let mut m = Model::default();
        m.ingest(snap(10_000, &[("a", "/x", 100), ("b", "/x", 5)]));
        assert_eq!(m.rate(&key("a", "/x")), None, "one snapshot has no rate");
        m.ingest(snap(
            12_000,
            &[("a", "/x", 160), ("b", "/x", 5), ("b", "/y", 4)],
        ));
        assert_eq!(m.rate(&key("a", "/x")), Some(30.0));
        assert_eq!(m.rate(&key("b", "/x")), Some(0.0));
        assert_eq!(m.rate(&key("b", "/y")), Some(2.0));
        // The same snapshot again (a reconnect) keeps the rates.
        m.ingest(snap(
            12_000,
            &[("a", "/x", 160), ("b", "/x", 5), ("b", "/y", 4)],
        ));
        assert_eq!(m.rate(&key("a", "/x")), Some(30.0));
        // A restarted agent counts from zero: no negative rate is made up.
        m.ingest(snap(13_000, &[("a", "/x", 3)]));
        assert_eq!(m.rate(&key("a", "/x")), None);
    }
}
