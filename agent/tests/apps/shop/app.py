"""A small Flask shop served by gunicorn in the tests (psycopg 3, one connection per worker).

/cpu burns about 50 ms of CPU in Python; /db waits 200 ms in PostgreSQL; /orders/<id> runs a
server-side prepared statement (prepare=True); /customers/<id> a simple-protocol query with the
literal in its text (ClientCursor); /report two queries in pipeline mode; /broken fails in SQL
(undefined table → HTTP 500); /sleep?s=N blocks the worker without touching the database, to
fill workers and grow the accept queue. PG_DSN may point at TCP or the Unix socket.
"""
import os
import time

from flask import Flask, request

app = Flask(__name__)
_conn = None


def db():
    # One connection per worker process, opened after the fork.
    global _conn
    if _conn is None:
        import psycopg

        _conn = psycopg.connect(os.environ["PG_DSN"], autocommit=True)
    return _conn


@app.get("/")
def index():
    return "ok\n"


@app.get("/sleep")
def sleep():
    seconds = min(float(request.args.get("s", "1")), 30.0)
    time.sleep(seconds)
    return f"slept {seconds}\n"


@app.get("/cpu")
def cpu():
    start = time.thread_time()
    n = 0
    while time.thread_time() - start < 0.05:
        n += 1
    return f"spun {n}\n"


@app.get("/db")
def slow_db():
    db().execute("SELECT pg_sleep(0.2)").fetchall()
    return "slept in the database\n"


@app.get("/orders/<int:order_id>")
def order(order_id):
    row = db().execute("SELECT id, total FROM orders WHERE id = %s", (order_id,), prepare=True).fetchone()
    return f"{row}\n"


@app.get("/customers/<int:customer>")
def customer(customer):
    import psycopg

    cur = psycopg.ClientCursor(db())
    cur.execute("SELECT count(*) FROM orders WHERE customer = %s", (customer,))
    return f"{cur.fetchone()}\n"


@app.get("/report")
def report():
    conn = db()
    with conn.pipeline():
        a = conn.execute("SELECT sum(total) FROM orders WHERE customer = %s", (1,))
        b = conn.execute("SELECT max(total) FROM orders WHERE customer = %s", (2,))
    return f"{a.fetchone()} {b.fetchone()}\n"


@app.get("/broken")
def broken():
    try:
        db().execute("SELECT * FROM missing_table WHERE id = %s", (1,)).fetchall()
    except Exception:
        return "database error\n", 500
    return "unexpected\n"
