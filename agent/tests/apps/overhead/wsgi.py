"""Overhead bench, gunicorn sync target (plain WSGI, no framework: the app costs as little as it
can, so the tracer's share of each request is as visible as it gets).

Routes:
  /ping            no statement
  /invoices/<id>   SELECT id, amount FROM invoices WHERE id = %s (primary key), on one psycopg
                   connection per worker, opened on the worker's first query
"""
import os

import psycopg

_conn = None


def _db():
    global _conn
    if _conn is None:
        _conn = psycopg.connect(os.environ["PG_DSN"], autocommit=True)
    return _conn


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    status = "200 OK"
    if path == "/ping":
        body = b"pong\n"
    elif path.startswith("/invoices/") and path[10:].isdigit():
        row = _db().execute(
            "SELECT id, amount FROM invoices WHERE id = %s", (int(path[10:]),)
        ).fetchone()
        body = f"{row[0]} {row[1]}\n".encode() if row else b"none\n"
    else:
        status, body = "404 Not Found", b"not found\n"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
