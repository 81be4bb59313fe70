//! A recorded-shape snapshot for the unit tests, built by hand from the wire types: two pools
//! that both serve `POST /api/checkout` (so the pool must tell the two routes apart), queries
//! with call sites, an active starvation finding and a resolved herd. Two snapshots two
//! seconds apart, so routes have rates.
use herdwatch_proto::v1 as pb;

use super::state::UiState;

pub const SHOP: &str = "gunicorn shop.app:app";
pub const API: &str = "uvicorn api.main:app";
pub const STARVATION_CAUSE: &str = "POST /api/checkout holds all 4 workers of gunicorn shop.app:app waiting on PostgreSQL for `SELECT ... FROM order_lines WHERE order_id = $1`";

fn histogram(counts: [u64; 5]) -> pb::LatencyHistogram {
    pb::LatencyHistogram {
        upper_bounds_ms: vec![10, 50, 250, 2000],
        counts: counts.to_vec(),
    }
}

fn route(
    pool: &str,
    method: &str,
    path: &str,
    requests: u64,
    cpu_ms: u64,
    db_ms: u64,
) -> pb::Route {
    pb::Route {
        pool: pool.into(),
        method: method.into(),
        route: path.into(),
        requests,
        statuses: vec![pb::StatusCount {
            status: 200,
            count: requests,
        }],
        total_ns: requests * 40_000_000,
        max_ns: 1_800_000_000,
        // p99 falls in the 2000 ms bucket for checkout on the shop, 50 ms elsewhere.
        latency: Some(if path == "/api/checkout" && pool == SHOP {
            histogram([requests - requests / 10, 0, 0, requests / 10, 0])
        } else {
            histogram([requests - 1, 1, 0, 0, 0])
        }),
        cpu_ns: requests * cpu_ms * 1_000_000,
        db_wait_ns: requests * db_ms * 1_000_000,
        ..Default::default()
    }
}

fn pool(name: &str, class: &str, busy: u32, queue: u32, share: (f64, f64, f64)) -> pb::Pool {
    let workers = (0..4)
        .map(|i| pb::Worker {
            pid: 100 + i,
            state: if i < busy {
                pb::WorkerState::Serving as i32
            } else {
                pb::WorkerState::Idle as i32
            },
            cpu_percent: 10.0,
            totals: None,
            db_wait_ns: 0,
        })
        .collect();
    pb::Pool {
        name: name.into(),
        kind: pb::PoolKind::Gunicorn as i32,
        worker_class: class.into(),
        workers,
        busy_workers: busy,
        cpu_percent: 40.0 * f64::from(busy),
        time_share: Some(pb::TimeShare {
            on_cpu: share.0,
            db_wait: share.1,
            other: share.2,
        }),
        accept_queue: Some(queue),
        ..Default::default()
    }
}

fn query(id: &str, text: &str, site: &str, calls: u64, mean_ms: u64, route: &str) -> pb::Query {
    let (file, rest) = site.split_once(':').unwrap_or((site, ""));
    pb::Query {
        id: id.into(),
        summary: text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
        operation: "SELECT".into(),
        normalized_text: text.into(),
        calls,
        total_ns: calls * mean_ms * 1_000_000,
        routes: vec![pb::RouteCalls {
            route: route.into(),
            calls,
        }],
        call_sites: vec![pb::CallSiteCalls {
            site: Some(pb::CallSite {
                file: file.into(),
                line: rest
                    .split(' ')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
                function: "create_order".into(),
                display: site.into(),
            }),
            calls,
        }],
        ..Default::default()
    }
}

fn findings() -> Vec<pb::Finding> {
    let starvation = pb::Finding {
        id: "starvation-3f9a".into(),
        kind: pb::FindingKind::Starvation as i32,
        severity: pb::Severity::Critical as i32,
        active: true,
        occurrences: 2,
        first_seen_unix_ms: 1_000_000,
        last_seen_unix_ms: 1_002_000,
        subject: Some(pb::Subject {
            host: "web-1".into(),
            pool: Some(SHOP.into()),
            route: Some("POST /api/checkout".into()),
            query_summary: Some("SELECT order_lines".into()),
            ..Default::default()
        }),
        evidence: vec![
            pb::Evidence {
                name: "busy workers".into(),
                value: 4.0,
                unit: "workers".into(),
            },
            pb::Evidence {
                name: "p99 during".into(),
                value: 1800.0,
                unit: "ms".into(),
            },
        ],
        root_cause: STARVATION_CAUSE.into(),
        prevention: "Move the order_lines lookup out of the request or index order_id".into(),
        remediation: "Add an index on order_lines(order_id); raise workers to 8 meanwhile".into(),
        ..Default::default()
    };
    let herd = pb::Finding {
        id: "herd-77c1".into(),
        kind: pb::FindingKind::ThunderingHerd as i32,
        severity: pb::Severity::Warning as i32,
        active: false,
        occurrences: 5,
        first_seen_unix_ms: 900_000,
        last_seen_unix_ms: 950_000,
        subject: Some(pb::Subject {
            host: "web-1".into(),
            query_summary: Some("SELECT events".into()),
            ..Default::default()
        }),
        root_cause:
            "8 workers fire `SELECT count(*) FILTER (...) FROM events` at once on a cache miss"
                .into(),
        prevention: "single-flight the dashboard counts".into(),
        remediation: "wrap the count in a lock keyed by the cache key".into(),
        ..Default::default()
    };
    vec![starvation, herd]
}

/// The snapshot at `at` with `extra` more requests on every route than at the start.
pub fn snapshot(at: u64, extra: u64) -> pb::Snapshot {
    pb::Snapshot {
        taken_at_unix_ms: at,
        interval_ms: 2000,
        host: Some(pb::Host {
            cpus: 2,
            cpu_utilization: Some(0.93),
            name: "node-a".into(),
        }),
        pools: vec![
            pool(SHOP, "sync", 4, 17, (0.08, 0.87, 0.05)),
            pool(
                API,
                "uvicorn.workers.UvicornWorker",
                1,
                0,
                (0.30, 0.10, 0.60),
            ),
        ],
        routes: vec![
            route(SHOP, "POST", "/api/checkout", 1000 + extra, 3, 900),
            route(SHOP, "GET", "/orders/{id}", 5000 + 3 * extra, 2, 4),
            route(API, "POST", "/api/checkout", 200 + extra / 10, 7, 12),
            route(API, "GET", "/health", 90, 1, 0),
        ],
        queries: vec![
            query(
                "a1b2c3d4e5f60718",
                "SELECT id, qty FROM order_lines WHERE order_id = $1",
                "shop/checkout.py:88 in create_order()",
                9000,
                190,
                "POST /api/checkout",
            ),
            query(
                "0f0e0d0c0b0a0908",
                "SELECT * FROM orders WHERE id = $1",
                "shop/orders.py:21 in show()",
                20000,
                1,
                "GET /orders/{id}",
            ),
        ],
        findings: findings(),
        ..Default::default()
    }
}

/// A UI that has seen two snapshots, 2 s apart (100 more checkouts on the shop: 50/s).
pub fn state() -> UiState {
    let mut s = UiState::new("/run/herdwatch/api.sock".into());
    s.ingest(snapshot(1_000_000, 0), 1_000_100);
    s.ingest(snapshot(1_002_000, 100), 1_002_100);
    s
}
