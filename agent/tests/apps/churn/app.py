"""Connection churn: every request is its own TCP connection (the client says
`Connection: close`), and `/db` opens its own PostgreSQL connection, queries, and closes it.

  /ping     no statement
  /db       SELECT 1 on a fresh connection (PG_DSN)
"""
import os

import psycopg


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/db":
        with psycopg.connect(os.environ["PG_DSN"], autocommit=True) as conn:
            conn.execute("SELECT 1").fetchone()
    body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [body]
