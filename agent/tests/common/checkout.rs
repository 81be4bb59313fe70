//! The checkout shop of the starvation incident (apps/checkout): its schema and its gunicorn,
//! shared by the starvation replay and the alerting end-to-end test.
use std::path::Path;

use super::{Proc, postgres::Postgres};

/// Products, orders, and 1.5 M order lines with no index on customer_id (the v2 scan).
pub fn schema(pg: &Postgres, order_lines: u32) {
    pg.sql("CREATE TABLE products (id int PRIMARY KEY, price numeric)");
    pg.sql("INSERT INTO products SELECT g, g * 0.5 FROM generate_series(1, 1000) g");
    pg.sql("CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int, items int)");
    pg.sql(&format!(
        "CREATE TABLE order_lines AS SELECT g AS id, g % 5000 AS customer_id, g % 97 AS sku \
         FROM generate_series(1, {order_lines}) g"
    ));
    pg.sql("ANALYZE order_lines");
}

/// gunicorn serving `checkout.app:app` with `workers` sync workers on 127.0.0.1:`port`; the
/// app version is read from `version_file` at each (re)load.
pub fn gunicorn(
    workers: u32,
    port: u16,
    dsn: &str,
    version_file: &Path,
    env: &[(&str, &str)],
) -> Proc {
    let mut cmd = super::gunicorn_command("checkout.app:app", workers, port);
    cmd.env("PG_DSN", dsn)
        .env("CHECKOUT_VERSION_FILE", version_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(&mut cmd)
}

pub const LOAD: [&str; 4] = [
    "GET /api/products/17",
    "POST /api/checkout",
    "GET /api/products/512",
    "POST /api/checkout",
];
