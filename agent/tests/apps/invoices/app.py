"""Invoices: several statements sharing one db.query.summary (`SELECT invoices`), and a cache
that every gunicorn sync worker refills at once on wall-clock boundaries (a thundering herd).

Routes (each request runs exactly the statements listed; the counts are the ground truth):
  /api/summary, /api/overdue, /api/revenue, /api/kpis, /api/home
      the aggregate below on a cache miss, nothing on a hit (cache per worker, expiring every
      HERD_TTL_S seconds on wall-clock boundaries: every worker misses together)
  /api/invoice/<id>     SELECT id, amount FROM invoices WHERE id = %s
  /api/open-count       SELECT count(*) FROM invoices WHERE status = %s AND customer = %s
  /health               no statement

Each cache miss appends "<unix ms> <bucket> <pid>" to HERD_LOG as its query is sent, so the test
knows every burst's onset on the app's own clock and how many workers refilled in it.
"""
import os
import time

from flask import Flask, jsonify

TTL_S = float(os.environ.get("HERD_TTL_S", "5"))
HERD_LOG = os.environ.get("HERD_LOG")

STATS_SQL = """
SELECT count(*) FILTER (WHERE status = 'paid')    AS paid,
       count(*) FILTER (WHERE status = 'overdue') AS overdue,
       sum(amount)                                AS revenue
FROM invoices
"""

app = Flask(__name__)
_conn = None
_cache = {"bucket": None, "value": None}


def db():
    global _conn
    if _conn is None:
        import psycopg

        _conn = psycopg.connect(os.environ["PG_DSN"], autocommit=True)
    return _conn


def stats():
    bucket = int(time.time() // TTL_S)
    if _cache["bucket"] != bucket:
        conn = db()
        if HERD_LOG:
            with open(HERD_LOG, "a") as f:
                f.write(f"{int(time.time() * 1000)} {bucket} {os.getpid()}\n")
        row = conn.execute(STATS_SQL).fetchone()
        _cache.update(bucket=bucket, value={"paid": row[0], "overdue": row[1], "revenue": float(row[2])})
    return _cache["value"]


def herd_route(name):
    def handler():
        return jsonify(stats())

    app.add_url_rule(f"/api/{name}", name, handler)


for _name in ["summary", "overdue", "revenue", "kpis", "home"]:
    herd_route(_name)


@app.get("/api/invoice/<int:invoice_id>")
def invoice(invoice_id):
    row = db().execute("SELECT id, amount FROM invoices WHERE id = %s", (invoice_id,)).fetchone()
    return jsonify(id=row[0], amount=float(row[1]))


@app.get("/api/open-count")
def open_count():
    row = db().execute(
        "SELECT count(*) FROM invoices WHERE status = %s AND customer = %s", ("open", 7)
    ).fetchone()
    return jsonify(open=row[0])


@app.get("/health")
def health():
    return jsonify(ok=True)
