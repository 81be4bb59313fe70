//! Requests per second for the routes frame. An agent counts a route's requests since it
//! started, so a rate needs two readings: the plugin keeps the last one it saw per (host,
//! pool, route), stamped with the agent's own snapshot time, and answers with the rate between
//! that reading and this one — what Prometheus' `rate()` makes of two samples. The first
//! query after a start, an agent restart (counts going down) or a long pause has no rate.
use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

/// Readings kept at most; when full, old ones go first, then all (rates resume a query later).
const MAX_READINGS: usize = 20_000;
/// Readings closer than this are the same agent snapshot (several panels asking at once):
/// they answer with the rate already computed and keep the older reading as the base.
const MIN_SPAN_MS: u64 = 1_000;
/// An older reading says nothing about the rate now.
const MAX_SPAN_MS: u64 = 15 * 60_000;

/// The plugin process's readings, shared by every datasource instance (they ask the same
/// agents).
pub static ROUTE_RATES: LazyLock<RouteRates> = LazyLock::new(RouteRates::default);

#[derive(Debug, Default)]
pub struct RouteRates {
    readings: Mutex<HashMap<(String, String, String), Reading>>,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    requests: u64,
    at_ms: u64,
    /// The rate from the reading before this one, if there was one.
    per_s: Option<f64>,
}

impl RouteRates {
    /// Requests per second of `route` of `pool` on `host`, which had served `requests` when
    /// the agent took its snapshot at `at_ms`.
    pub fn per_s(
        &self,
        host: &str,
        pool: &str,
        route: &str,
        requests: u64,
        at_ms: u64,
    ) -> Option<f64> {
        // A poisoned lock only means another query panicked mid-update: the readings are
        // still numbers, so go on with them.
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        let key = (host.to_string(), pool.to_string(), route.to_string());
        if let Some(before) = readings.get(&key).copied() {
            let span = at_ms.saturating_sub(before.at_ms);
            let counts_on = requests >= before.requests && at_ms >= before.at_ms;
            if counts_on && span < MIN_SPAN_MS {
                return before.per_s;
            }
            if counts_on && span <= MAX_SPAN_MS {
                let per_s = Some((requests - before.requests) as f64 * 1000.0 / span as f64);
                readings.insert(
                    key,
                    Reading {
                        requests,
                        at_ms,
                        per_s,
                    },
                );
                return per_s;
            }
        } else if readings.len() >= MAX_READINGS {
            readings.retain(|_, r| at_ms.saturating_sub(r.at_ms) <= MAX_SPAN_MS);
            if readings.len() >= MAX_READINGS {
                readings.clear();
            }
        }
        readings.insert(
            key,
            Reading {
                requests,
                at_ms,
                per_s: None,
            },
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_needs_two_readings_a_second_apart() {
        let rates = RouteRates::default();
        assert_eq!(rates.per_s("a", "p", "GET /x", 100, 10_000), None);
        // The same snapshot asked again by another panel: still no rate, base kept.
        assert_eq!(rates.per_s("a", "p", "GET /x", 100, 10_000), None);
        assert_eq!(rates.per_s("a", "p", "GET /x", 150, 15_000), Some(10.0));
        // Another panel on the same snapshot gets the same answer.
        assert_eq!(rates.per_s("a", "p", "GET /x", 150, 15_000), Some(10.0));
        assert_eq!(rates.per_s("a", "p", "GET /x", 170, 25_000), Some(2.0));
    }

    #[test]
    fn hosts_pools_and_routes_have_their_own_readings() {
        let rates = RouteRates::default();
        rates.per_s("a", "p", "GET /x", 0, 0);
        rates.per_s("b", "p", "GET /x", 1_000, 0);
        assert_eq!(rates.per_s("a", "p", "GET /x", 10, 1_000), Some(10.0));
        assert_eq!(rates.per_s("b", "p", "GET /x", 1_020, 2_000), Some(10.0));
        assert_eq!(rates.per_s("a", "q", "GET /x", 10, 1_000), None);
    }

    #[test]
    fn a_restarted_agent_or_a_long_pause_starts_over() {
        let rates = RouteRates::default();
        rates.per_s("a", "p", "GET /x", 500, 0);
        // Counts went down: the agent restarted.
        assert_eq!(rates.per_s("a", "p", "GET /x", 20, 5_000), None);
        assert_eq!(rates.per_s("a", "p", "GET /x", 40, 10_000), Some(4.0));
        assert_eq!(
            rates.per_s("a", "p", "GET /x", 100, 10_000 + MAX_SPAN_MS + 1),
            None
        );
    }

    #[test]
    fn the_readings_stay_bounded() {
        let rates = RouteRates::default();
        for i in 0..(MAX_READINGS as u64 + 10) {
            rates.per_s("a", "p", &format!("GET /{i}"), i, 1_000);
        }
        let kept = rates.readings.lock().map(|r| r.len()).unwrap_or_default();
        assert!(kept <= MAX_READINGS, "{kept}");
    }
}
