"""A small Starlette API served by uvicorn in the tests (asyncpg: extended protocol)."""
import asyncio
import os

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

_pool = None


async def db():
    # One pool per worker process, created in its event loop.
    global _pool
    if _pool is None:
        import asyncpg

        _pool = await asyncpg.create_pool(os.environ["PG_DSN"], min_size=1, max_size=4)
    return _pool


async def index(request):
    return PlainTextResponse("ok\n")


async def sleep(request):
    seconds = min(float(request.query_params.get("s", "1")), 30.0)
    await asyncio.sleep(seconds)
    return PlainTextResponse(f"slept {seconds}\n")


async def order(request):
    pool = await db()
    row = await pool.fetchrow("SELECT id, total FROM orders WHERE id = $1", int(request.path_params["order_id"]))
    return PlainTextResponse(f"{row}\n")


async def broken(request):
    pool = await db()
    try:
        await pool.fetch("SELECT * FROM missing_table WHERE id = $1", 1)
    except Exception:
        return PlainTextResponse("database error\n", status_code=500)
    return PlainTextResponse("unexpected\n")


app = Starlette(
    routes=[
        Route("/", index),
        Route("/sleep", sleep),
        Route("/orders/{order_id:int}", order),
        Route("/broken", broken),
    ]
)
