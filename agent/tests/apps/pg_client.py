"""psycopg 3 client for the socket-tracing tests.

usage: pg_client.py DSN N [--wait]
Runs, N times each: a simple-protocol query with a literal (ClientCursor), an extended-protocol
query with a parameter, a server-side prepared statement (prepare=True), a pipeline of two
queries, and one failing query (undefined table). With --wait it first prepares its statement,
prints "ready" and waits for a line on stdin (so the agent can start after the statement was
prepared), then prints "done" at the end and waits again.
"""
import sys

import psycopg

dsn, n = sys.argv[1], int(sys.argv[2])
wait = "--wait" in sys.argv

conn = psycopg.connect(dsn, autocommit=True)
if wait:
    conn.execute("SELECT id, total FROM orders WHERE customer = %s", (0,), prepare=True)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        conn.execute("SELECT id, total FROM orders WHERE customer = %s", (i,), prepare=True).fetchall()
    print("done", flush=True)
    sys.stdin.readline()
    sys.exit(0)

simple = psycopg.ClientCursor(conn)
for i in range(n):
    simple.execute("SELECT id, total FROM orders WHERE id = %s", (i,))
    simple.fetchall()
    conn.execute("SELECT count(*) FROM orders WHERE total > %s", (i,)).fetchall()
    conn.execute("SELECT id, total FROM orders WHERE customer = %s", (i,), prepare=True).fetchall()
    with conn.pipeline():
        conn.execute("UPDATE orders SET total = total + 1 WHERE id = %s", (i,))
        conn.execute("SELECT total FROM orders WHERE id = %s", (i,))
    try:
        conn.execute("SELECT * FROM missing_table WHERE id = %s", (i,))
    except psycopg.errors.UndefinedTable:
        pass
print("done", flush=True)
