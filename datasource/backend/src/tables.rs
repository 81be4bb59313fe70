//! Pools, routes and queries of every host that answered, one row per host and thing, each
//! carrying its `host`.
use grafana_plugin_sdk::{data::Frame, prelude::*};
use herdwatch_proto::v1 as pb;

use crate::query::Query;

/// The route as the query JSON names it: `METHOD /template`.
pub fn route_name(route: &pb::Route) -> String {
    if route.method.is_empty() {
        route.route.clone()
    } else {
        format!("{} {}", route.method, route.route)
    }
}

/// The latency below which `q` of the samples fell, in ms: the upper bound of the bucket that
/// holds that rank; past the last bound, the slowest seen.
pub fn quantile_ms(h: Option<&pb::LatencyHistogram>, q: f64, max_ns: u64) -> Option<f64> {
    let h = h?;
    let total: u64 = h.counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in h.counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(match h.upper_bounds_ms.get(i) {
                Some(bound) => *bound as f64,
                None => max_ns as f64 / 1e6,
            });
        }
    }
    None
}

fn per_request_ms(ns: u64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| ns as f64 / requests as f64 / 1e6)
}

pub fn pools_frame<'a>(
    answers: impl IntoIterator<Item = (&'a str, &'a pb::Snapshot)>,
    query: &Query,
) -> Frame {
    let mut rows = Vec::new();
    for (host, snap) in answers {
        if !query.wants_host(host) {
            continue;
        }
        for pool in &snap.pools {
            if !query.pool.is_empty() && pool.name != query.pool {
                continue;
            }
            rows.push((host.to_string(), pool));
        }
    }
    let busy: Vec<u32> = rows.iter().map(|(_, p)| p.busy_workers).collect();
    Frame::new("pools").with_fields([
        rows.iter()
            .map(|(h, _)| h.clone())
            .collect::<Vec<_>>()
            .into_field("host"),
        rows.iter()
            .map(|(_, p)| p.name.clone())
            .collect::<Vec<_>>()
            .into_field("pool"),
        rows.iter()
            .map(|(_, p)| p.master_pid)
            .collect::<Vec<_>>()
            .into_field("master_pid"),
        rows.iter()
            .map(|(_, p)| p.workers.len() as u32)
            .collect::<Vec<_>>()
            .into_field("workers"),
        busy.clone().into_field("busy"),
        rows.iter()
            .zip(&busy)
            .map(|((_, p), b)| (p.workers.len() as u32).saturating_sub(*b))
            .collect::<Vec<_>>()
            .into_field("idle"),
        rows.iter()
            .map(|(_, p)| p.accept_queue)
            .collect::<Vec<_>>()
            .into_opt_field("accept_queue"),
        rows.iter()
            .map(|(_, p)| p.active_requests)
            .collect::<Vec<_>>()
            .into_field("active_requests"),
        rows.iter()
            .map(|(_, p)| p.cpu_percent)
            .collect::<Vec<_>>()
            .into_field("cpu_percent"),
    ])
}

/// Routes per host and pool: requests per second between this answer's agent snapshot and
/// the last one the plugin saw (`rates`), and per-request figures over the agent's whole run
/// (the agent counts since it started).
pub fn routes_frame<'a>(
    answers: impl IntoIterator<Item = (&'a str, &'a pb::Snapshot)>,
    query: &Query,
    rates: &crate::rates::RouteRates,
) -> Frame {
    // (host, route, requests per second)
    let mut rows: Vec<(String, &pb::Route, Option<f64>)> = Vec::new();
    for (host, snap) in answers {
        if !query.wants_host(host) {
            continue;
        }
        for route in &snap.routes {
            let name = route_name(route);
            if (!query.pool.is_empty() && route.pool != query.pool)
                || (!query.route.is_empty() && name != query.route)
            {
                continue;
            }
            let rate = rates.per_s(
                host,
                &route.pool,
                &name,
                route.requests,
                snap.taken_at_unix_ms,
            );
            rows.push((host.to_string(), route, rate));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.total_ns));
    rows.truncate(query.limit());
    Frame::new("routes").with_fields([
        rows.iter()
            .map(|(h, _, _)| h.clone())
            .collect::<Vec<_>>()
            .into_field("host"),
        rows.iter()
            .map(|(_, r, _)| r.pool.clone())
            .collect::<Vec<_>>()
            .into_field("pool"),
        rows.iter()
            .map(|(_, r, _)| route_name(r))
            .collect::<Vec<_>>()
            .into_field("route"),
        rows.iter()
            .map(|(_, r, _)| r.requests)
            .collect::<Vec<_>>()
            .into_field("requests"),
        rows.iter()
            .map(|(_, _, rate)| *rate)
            .collect::<Vec<_>>()
            .into_opt_field("requests_per_s"),
        rows.iter()
            .map(|(_, r, _)| quantile_ms(r.latency.as_ref(), 0.99, r.max_ns))
            .collect::<Vec<_>>()
            .into_opt_field("p99_ms"),
        rows.iter()
            .map(|(_, r, _)| per_request_ms(r.cpu_ns, r.requests))
            .collect::<Vec<_>>()
            .into_opt_field("cpu_per_request_ms"),
        rows.iter()
            .map(|(_, r, _)| per_request_ms(r.db_wait_ns, r.requests))
            .collect::<Vec<_>>()
            .into_opt_field("db_wait_per_request_ms"),
    ])
}

/// Routes served by `pool` on this host, as `METHOD /template`.
fn routes_of_pool(snap: &pb::Snapshot, pool: &str) -> Vec<String> {
    snap.routes
        .iter()
        .filter(|r| r.pool == pool)
        .map(route_name)
        .collect()
}

pub fn queries_frame<'a>(
    answers: impl IntoIterator<Item = (&'a str, &'a pb::Snapshot)>,
    query: &Query,
) -> Frame {
    let mut rows: Vec<(String, &pb::Query)> = Vec::new();
    for (host, snap) in answers {
        if !query.wants_host(host) {
            continue;
        }
        let pool_routes = (!query.pool.is_empty()).then(|| routes_of_pool(snap, &query.pool));
        for q in &snap.queries {
            let in_pool = pool_routes
                .as_ref()
                .is_none_or(|routes| q.routes.iter().any(|r| routes.contains(&r.route)));
            let on_route =
                query.route.is_empty() || q.routes.iter().any(|r| r.route == query.route);
            let has_text =
                query.text_contains.is_empty() || q.normalized_text.contains(&query.text_contains);
            if in_pool && on_route && has_text {
                rows.push((host.to_string(), q));
            }
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.total_ns));
    rows.truncate(query.limit());
    Frame::new("queries").with_fields([
        rows.iter()
            .map(|(h, _)| h.clone())
            .collect::<Vec<_>>()
            .into_field("host"),
        rows.iter()
            .map(|(_, q)| q.id.clone())
            .collect::<Vec<_>>()
            .into_field("id"),
        rows.iter()
            .map(|(_, q)| q.summary.clone())
            .collect::<Vec<_>>()
            .into_field("summary"),
        rows.iter()
            .map(|(_, q)| q.normalized_text.clone())
            .collect::<Vec<_>>()
            .into_field("text"),
        rows.iter()
            .map(|(_, q)| {
                q.call_sites
                    .iter()
                    .max_by_key(|c| c.calls)
                    .and_then(|c| c.site.as_ref())
                    .map(|s| s.display.clone())
            })
            .collect::<Vec<_>>()
            .into_opt_field("call_site"),
        rows.iter()
            .map(|(_, q)| {
                q.routes
                    .iter()
                    .map(|r| r.route.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect::<Vec<_>>()
            .into_field("routes"),
        rows.iter()
            .map(|(_, q)| q.calls)
            .collect::<Vec<_>>()
            .into_field("calls"),
        rows.iter()
            .map(|(_, q)| per_request_ms(q.total_ns, q.calls))
            .collect::<Vec<_>>()
            .into_opt_field("mean_ms"),
        rows.iter()
            .map(|(_, q)| quantile_ms(q.latency.as_ref(), 0.99, q.max_ns))
            .collect::<Vec<_>>()
            .into_opt_field("p99_ms"),
    ])
}

/// A template variable's choice: `{text, value}`.
#[derive(Debug, serde::Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Choice {
    pub text: String,
    pub value: String,
}

impl Choice {
    fn same(v: &str) -> Self {
        Self {
            text: v.to_string(),
            value: v.to_string(),
        }
    }
}

/// `/hosts`, `/pools`, `/routes?pool=`, `/queries?pool=`: the values a variable may take,
/// sorted and without repeats.
pub fn choices<'a>(
    what: &str,
    pool: &str,
    answers: impl IntoIterator<Item = (&'a str, &'a pb::Snapshot)>,
) -> Option<Vec<Choice>> {
    let mut out = Vec::new();
    for (host, snap) in answers {
        match what {
            "hosts" => out.push(Choice::same(host)),
            "pools" => out.extend(snap.pools.iter().map(|p| Choice::same(&p.name))),
            "routes" => out.extend(
                snap.routes
                    .iter()
                    .filter(|r| pool.is_empty() || r.pool == pool)
                    .map(|r| Choice::same(&route_name(r))),
            ),
            "queries" => {
                let routes = (!pool.is_empty()).then(|| routes_of_pool(snap, pool));
                out.extend(
                    snap.queries
                        .iter()
                        .filter(|q| {
                            routes
                                .as_ref()
                                .is_none_or(|rs| q.routes.iter().any(|r| rs.contains(&r.route)))
                        })
                        .map(|q| Choice {
                            text: if q.summary.is_empty() {
                                q.id.clone()
                            } else {
                                format!("{} ({})", q.summary, q.id)
                            },
                            value: q.id.clone(),
                        }),
                )
            }
            _ => return None,
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bucket_that_holds_the_rank() {
        let h = pb::LatencyHistogram {
            upper_bounds_ms: vec![1, 5, 25],
            counts: vec![90, 9, 1, 0],
        };
        assert_eq!(quantile_ms(Some(&h), 0.99, 0), Some(5.0));
        let slow = pb::LatencyHistogram {
            upper_bounds_ms: vec![1],
            counts: vec![1, 99],
        };
        assert_eq!(quantile_ms(Some(&slow), 0.99, 2_500_000_000), Some(2500.0));
        assert_eq!(quantile_ms(None, 0.99, 0), None);
    }

    fn snapshot() -> pb::Snapshot {
        pb::Snapshot {
            pools: vec![pb::Pool {
                name: "gunicorn shop.app:app".into(),
                busy_workers: 3,
                workers: vec![pb::Worker::default(); 4],
                accept_queue: Some(7),
                ..Default::default()
            }],
            routes: vec![pb::Route {
                pool: "gunicorn shop.app:app".into(),
                method: "GET".into(),
                route: "/invoices/{id}".into(),
                requests: 10,
                cpu_ns: 20_000_000,
                db_wait_ns: 50_000_000,
                ..Default::default()
            }],
            queries: vec![pb::Query {
                id: "00000000000000ab".into(),
                summary: "SELECT invoices".into(),
                normalized_text: "SELECT * FROM invoices WHERE id = $1".into(),
                routes: vec![pb::RouteCalls {
                    route: "GET /invoices/{id}".into(),
                    calls: 10,
                }],
                calls: 10,
                total_ns: 30_000_000,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn query(json: serde_json::Value) -> Query {
        let w = crate::query::Window {
            from: crate::findings::time(0),
            to: crate::findings::time(1),
            interval_ms: 1000,
        };
        Query::parse("A", &json, "", &w).expect("query")
    }

    #[test]
    fn tables_carry_the_host_and_filter() {
        let (a, b) = (snapshot(), snapshot());
        let answers = || [("node-a", &a), ("node-b", &b)];
        let pools = pools_frame(answers(), &query(serde_json::json!({"queryType": "pools"})));
        pools.check().expect("valid");
        assert_eq!(pools.fields()[0].values().len(), 2);
        let routes = routes_frame(
            answers(),
            &query(
                serde_json::json!({"queryType": "routes", "hosts": ["node-b"], "route": "GET /invoices/{id}"}),
            ),
            &crate::rates::RouteRates::default(),
        );
        routes.check().expect("valid");
        assert_eq!(routes.fields()[0].values().len(), 1);
        let queries = queries_frame(
            answers(),
            &query(
                serde_json::json!({"queryType": "queries", "pool": "gunicorn shop.app:app", "textContains": "invoices", "limit": 1}),
            ),
        );
        queries.check().expect("valid");
        assert_eq!(queries.fields()[0].values().len(), 1, "limit 1");
        let none = queries_frame(
            answers(),
            &query(serde_json::json!({"queryType": "queries", "pool": "uvicorn other:app"})),
        );
        assert_eq!(none.fields()[0].values().len(), 0);
    }

    #[test]
    fn choices_are_sorted_and_unique() {
        let (a, b) = (snapshot(), snapshot());
        let answers = || [("node-b", &a), ("node-a", &b)];
        let hosts = choices("hosts", "", answers()).expect("known");
        assert_eq!(
            hosts.iter().map(|c| c.value.as_str()).collect::<Vec<_>>(),
            ["node-a", "node-b"]
        );
        assert_eq!(choices("pools", "", answers()).expect("known").len(), 1);
        assert_eq!(
            choices("routes", "gunicorn shop.app:app", answers()).expect("known")[0].value,
            "GET /invoices/{id}"
        );
        assert!(
            choices("routes", "nope", answers())
                .expect("known")
                .is_empty()
        );
        let q = choices("queries", "gunicorn shop.app:app", answers()).expect("known");
        assert_eq!(q[0].text, "SELECT invoices (00000000000000ab)");
        assert!(choices("tables", "", answers()).is_none());
    }
}
