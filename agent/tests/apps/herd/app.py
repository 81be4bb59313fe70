"""Replay of the thundering-herd incident (shared/incidents/thundering-herd-auto-healer.txt).

A dashboard API under uvicorn. Every endpoint shows a slice of the same expensive aggregate,
cached per worker process. The cache entry expires on wall-clock boundaries (every
HERD_TTL_S seconds), so all workers miss together, and every request that arrives while its
worker's cache is cold runs the query itself: there is no single-flight. That is the bug
herdwatch must name: one fingerprint, many copies at once, issued from every endpoint.
"""
import os
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

TTL_S = float(os.environ.get("HERD_TTL_S", "15"))

# The query every endpoint needs on a cache miss (COUNT(*) FILTER over >= 1 M rows).
STATS_SQL = """
SELECT count(*) FILTER (WHERE status = 'paid')     AS paid,
       count(*) FILTER (WHERE status = 'refunded') AS refunded,
       count(*) FILTER (WHERE amount > $1)          AS large,
       count(*)                                     AS total
FROM payments
"""

_pool = None
_cache = {"bucket": None, "value": None}


async def db():
    global _pool
    if _pool is None:
        import asyncpg

        _pool = await asyncpg.create_pool(os.environ["PG_DSN"], min_size=1, max_size=8)
    return _pool


async def stats():
    bucket = int(time.time() // TTL_S)
    if _cache["bucket"] == bucket:
        return _cache["value"]
    # Cache miss: no lock, so every concurrent request runs the query (the herd).
    pool = await db()
    row = await pool.fetchrow(STATS_SQL, 500)
    _cache.update(bucket=bucket, value=dict(row))
    return _cache["value"]


def endpoint(field):
    async def handler(request):
        s = await stats()
        return JSONResponse({field: s[field] if field in s else s})

    return handler


async def health(request):
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/api/dashboard", endpoint("total")),
        Route("/api/payments/summary", endpoint("paid")),
        Route("/api/refunds", endpoint("refunded")),
        Route("/api/large-payments", endpoint("large")),
        Route("/api/kpis", endpoint("all")),
        Route("/api/home", endpoint("total")),
        Route("/api/finance/overview", endpoint("paid")),
        Route("/health", health),
    ]
)
