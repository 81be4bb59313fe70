"""A small Starlette API served by uvicorn in the tests."""
import asyncio

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def index(request):
    return PlainTextResponse("ok\n")


async def sleep(request):
    seconds = min(float(request.query_params.get("s", "1")), 30.0)
    await asyncio.sleep(seconds)
    return PlainTextResponse(f"slept {seconds}\n")


app = Starlette(routes=[Route("/", index), Route("/sleep", sleep)])
