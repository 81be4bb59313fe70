"""The statements of the attribution apps (asyncio and sync), by key, and the shared cache's clock."""
import os
import time

SQL = {
    # The herd: one aggregate behind five routes' caches.
    "totals": "SELECT count(*) FILTER (WHERE status = 'paid') AS paid, "
    "count(*) FILTER (WHERE status = 'open') AS open FROM invoices WHERE amount > $1",
    # Same table, same summary (`SELECT invoices`), other statements.
    "by_id": "SELECT id, amount, status FROM invoices WHERE id = $1",
    "customer_sum": "SELECT sum(amount) FROM invoices WHERE customer_id = $1",
    "insert": "INSERT INTO invoices (customer_id, amount, status) VALUES ($1, $2, 'open') RETURNING id",
    "customer": "SELECT id, name FROM customers WHERE id = $1",
}

CACHE_PERIOD_S = float(os.environ.get("CACHE_PERIOD_S", "4"))


def cache_epoch():
    """Which period the wall clock is in: every worker's and route's cache turns over at once."""
    return int(time.time() // CACHE_PERIOD_S)
