"""Long-lived clients with server-side prepared statements, for the statement-book test.

usage: prepared_clients.py LIBPQ_DSN URL N [PAUSE_MS]
Opens one psycopg 3 connection (statements prepared with prepare=True: Parse once as _pg3_N,
then Bind/Execute by name) and one asyncpg connection (its statement cache prepares each query
once as __asyncpg_stmt_N__), prints "ready", then for every line read on stdin runs each of
its statements N times on the same connections and prints "done". The connections live as
long as the process, as a web worker's pool does: statements prepared in one round are
executed by name only in the next. PAUSE_MS (default 0) waits between statements, as a web
worker's connection idles between requests.
"""
import asyncio
import sys

import asyncpg
import psycopg

PSYCOPG = [
    "SELECT id, total FROM orders WHERE customer = %s",
    "SELECT count(*) FROM orders WHERE total > %s",
]
ASYNCPG = [
    "SELECT customer FROM orders WHERE id = $1",
    "SELECT max(total) FROM orders WHERE customer = $1",
]


async def main():
    dsn, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pause = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
    sync_conn = psycopg.connect(dsn, autocommit=True)
    async_conn = await asyncpg.connect(url)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        for i in range(n):
            for sql in PSYCOPG:
                sync_conn.execute(sql, (i,), prepare=True).fetchall()
                await asyncio.sleep(pause)
            for sql in ASYNCPG:
                await async_conn.fetch(sql, i)
                await asyncio.sleep(pause)
        print("done", flush=True)


asyncio.run(main())
