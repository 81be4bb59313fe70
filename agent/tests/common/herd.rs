//! The thundering-herd workload shared by the herd replay and the dashboards test: four
//! uvicorn workers serving seven dashboard endpoints that all need one expensive
//! `count(*) FILTER (...)` over 1.2 M payments, cached per worker for `ttl_s`.
use std::process::Command;

use super::{Proc, apps_dir, postgres::Postgres, venv};

/// The seven endpoints, all running the same query on a cache miss.
pub const ENDPOINTS: [&str; 7] = [
    "GET /api/dashboard",
    "GET /api/payments/summary",
    "GET /api/refunds",
    "GET /api/large-payments",
    "GET /api/kpis",
    "GET /api/home",
    "GET /api/finance/overview",
];

/// A table of 1.2 M payments, built with generate_series.
pub fn payments(pg: &Postgres) {
    pg.sql(
        "CREATE TABLE payments AS SELECT g AS id, \
         (ARRAY['paid','refunded','pending'])[1 + g % 3] AS status, \
         (g % 1000)::numeric AS amount FROM generate_series(1, 1200000) g",
    );
    pg.sql("ANALYZE payments");
}

/// The herd app on `port`, its per-worker cache expiring every `ttl_s` seconds.
pub fn uvicorn(pg: &Postgres, port: u16, ttl_s: u64) -> Proc {
    Proc::spawn(
        Command::new(venv().join("bin/uvicorn"))
            .args(["herd.app:app", "--workers", "4", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--app-dir"])
            .arg(apps_dir())
            .args(["--log-level", "warning"])
            .env("PG_DSN", pg.tcp_url())
            .env("HERD_TTL_S", ttl_s.to_string()),
    )
}
