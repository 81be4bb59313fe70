"""Mixed traffic for the attribution tests: a Starlette app (asyncpg) whose routes run
different statements, some on the same table and with the same summary, five of them sharing
one aggregate behind a cache that expires for every route and worker at once (a herd).

Each response lists, in `x-statements`, the statements it ran, so the test knows the truth per
route. `GET /statements` returns the SQL of each statement key. Lines that issue a statement
end in `# site:<key>`, so the test can find the line a call site must name.
"""
import os
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from statements import SQL, cache_epoch

_pool = None


async def db():
    # One pool per worker process, created in its event loop.
    global _pool
    if _pool is None:
        import asyncpg

        _pool = await asyncpg.create_pool(os.environ["PG_DSN"], min_size=2, max_size=6)
    return _pool


_cache = {}


async def totals(route, ran):
    """The shared aggregate, cached per route until the period's end (all expire together)."""
    epoch = cache_epoch()
    hit = _cache.get(route)
    if hit is not None and hit[0] == epoch:
        return hit[1], None
    pool = await db()
    value = await pool.fetchval(SQL["totals"], 0)  # site:totals
    _cache[route] = (epoch, value)
    ran.append("totals")
    return value, epoch


def answer(body, ran, status=200, refill=None):
    headers = {"x-statements": ",".join(ran)}
    if refill is not None:
        # Which cache period this request refilled: the test counts the bursts from it.
        headers["x-refill-epoch"] = str(refill)
    return PlainTextResponse(f"{body}\n", status_code=status, headers=headers)


def shared_route(name):
    async def handler(request):
        ran = []
        value, refill = await totals(name, ran)
        return answer(f"{name} {value}", ran, refill=refill)

    return handler


async def invoice(request):
    ran = []
    pool = await db()
    row = await pool.fetchrow(SQL["by_id"], request.path_params["invoice_id"])  # site:by_id
    ran.append("by_id")
    return answer(row, ran)


async def create_invoice(request):
    ran = []
    pool = await db()
    new_id = await pool.fetchval(SQL["insert"], 1 + int(time.time() * 1000) % 50, 12.5)  # site:insert
    ran.append("insert")
    return answer(new_id, ran, status=201)


async def customer(request):
    ran = []
    pool = await db()
    customer_id = request.path_params["customer_id"]
    row = await pool.fetchrow(SQL["customer"], customer_id)  # site:customer
    ran.append("customer")
    spent = await pool.fetchval(SQL["customer_sum"], customer_id)  # site:customer_sum
    ran.append("customer_sum")
    return answer(f"{row} {spent}", ran)


async def health(request):
    return answer("ok", [])


async def statements(request):
    return JSONResponse(SQL)


app = Starlette(
    routes=[
        Route("/dashboard", shared_route("dashboard")),
        Route("/summary", shared_route("summary")),
        Route("/kpi", shared_route("kpi")),
        Route("/overview", shared_route("overview")),
        Route("/stats", shared_route("stats")),
        Route("/invoices/{invoice_id:int}", invoice),
        Route("/invoices", create_invoice, methods=["POST"]),
        Route("/customers/{customer_id:int}", customer),
        Route("/health", health),
        Route("/statements", statements),
    ]
)
