"""Replay of the checkout deploy incident (shared/incidents/checkout-deploy-worker-starvation.txt).

A Flask shop under gunicorn with 4 sync workers. The app version is read from the file named
by CHECKOUT_VERSION_FILE when a worker imports the module, so `kill -HUP <master>` (gunicorn
reloads workers and, without --preload, re-imports the app) is the deploy.

v1: POST /api/checkout inserts an order (a few ms).
v2: the deploy adds a synchronous "fraud check" inside checkout: a count over the customer's
    order lines, on a 1.5 M-row table with no index on customer_id. Every checkout now holds
    its worker for hundreds of milliseconds while PostgreSQL scans, the 4 workers all sit
    blocked on the database, the accept queue grows and CPU pegs: blocked-worker starvation.
"""
import os

from flask import Flask, jsonify, request

VERSION = open(os.environ["CHECKOUT_VERSION_FILE"]).read().strip()

app = Flask(__name__)
_conn = None


def db():
    # One connection per worker process, opened after the fork.
    global _conn
    if _conn is None:
        import psycopg

        # Behind PgBouncer in transaction mode, server-side prepared statements must be off.
        threshold = None if os.environ.get("PG_NO_PREPARE") else 5
        _conn = psycopg.connect(os.environ["PG_DSN"], autocommit=True, prepare_threshold=threshold)
    return _conn


@app.get("/api/products/<int:product_id>")
def product(product_id):
    row = db().execute("SELECT id, price FROM products WHERE id = %s", (product_id,)).fetchone()
    return jsonify(id=row[0], price=float(row[1]))


@app.post("/api/checkout")
def checkout():
    customer = 1 + os.getpid() % 500
    conn = db()
    if VERSION == "v2":
        # The deploy's change: a synchronous check on the request path.
        (lines,) = conn.execute(  # site:scan
            "SELECT count(*) FROM order_lines WHERE customer_id = %s", (customer,)
        ).fetchone()
    else:
        lines = None
    (order_id,) = conn.execute(
        "INSERT INTO orders (customer_id, items) VALUES (%s, %s) RETURNING id",
        (customer, (request.get_json(silent=True) or {}).get("items", 1)),
    ).fetchone()
    return jsonify(order=order_id, version=VERSION, previous_lines=lines)
