"""The attribution routes as a Flask app (psycopg, one connection per thread) for gunicorn's
sync and gthread workers. Same statements, same `x-statements` truth, same `# site:` marks."""
import os
import re
import threading
import time

import psycopg
from flask import Flask, jsonify

from statements import SQL, cache_epoch

app = Flask(__name__)
_local = threading.local()
_cache = {}
_cache_lock = threading.Lock()


def psycopg_sql(key):
    # psycopg takes %s and sends $1… on the wire: the server sees the same text as asyncpg's.
    return re.sub(r"\$\d+", "%s", SQL[key])


def db():
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["PG_DSN"], autocommit=True)
        _local.conn = conn
    return conn


def answer(body, ran, status=200, refill=None):
    headers = {"x-statements": ",".join(ran)}
    if refill is not None:
        # Which cache period this request refilled: the test counts the bursts from it.
        headers["x-refill-epoch"] = str(refill)
    return f"{body}\n", status, headers


def totals(route, ran):
    epoch = cache_epoch()
    with _cache_lock:
        hit = _cache.get(route)
    if hit is not None and hit[0] == epoch:
        return hit[1], None
    value = db().execute(psycopg_sql("totals"), (0,)).fetchone()  # site:totals
    with _cache_lock:
        _cache[route] = (epoch, value)
    ran.append("totals")
    return value, epoch


def shared_route(name):
    def handler():
        ran = []
        value, refill = totals(name, ran)
        return answer(f"{name} {value}", ran, refill=refill)

    handler.__name__ = f"shared_{name}"
    return handler


for _name in ("dashboard", "summary", "kpi", "overview", "stats"):
    app.add_url_rule(f"/{_name}", view_func=shared_route(_name))


@app.get("/invoices/<int:invoice_id>")
def invoice(invoice_id):
    row = db().execute(psycopg_sql("by_id"), (invoice_id,)).fetchone()  # site:by_id
    return answer(row, ["by_id"])


@app.post("/invoices")
def create_invoice():
    new_id = db().execute(psycopg_sql("insert"), (1 + int(time.time() * 1000) % 50, 12.5)).fetchone()  # site:insert
    return answer(new_id, ["insert"], status=201)


@app.get("/customers/<int:customer_id>")
def customer(customer_id):
    conn = db()
    row = conn.execute(psycopg_sql("customer"), (customer_id,)).fetchone()  # site:customer
    spent = conn.execute(psycopg_sql("customer_sum"), (customer_id,)).fetchone()  # site:customer_sum
    return answer(f"{row} {spent}", ["customer", "customer_sum"])


@app.get("/health")
def health():
    return answer("ok", [])


@app.get("/statements")
def statements():
    return jsonify(SQL)
