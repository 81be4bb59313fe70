"""Overhead bench, uvicorn target (plain ASGI, asyncio, asyncpg; no framework; TCP_NODELAY on).

Routes:
  /ping            no statement
  /invoices/<id>   SELECT id, amount FROM invoices WHERE id = $1 (primary key), through a
                   per-worker asyncpg pool of 4 connections made at lifespan startup
"""
import asyncio.base_events
import os
import socket

import asyncpg

_pool = None


def _set_nodelay(sock):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# TCP_NODELAY on every accepted connection, as uvloop (uvicorn[standard]) sets it. Plain asyncio
# sets it only on sockets whose `proto` is IPPROTO_TCP, and `uvicorn --workers N` binds its
# listener with proto 0, so the accepted sockets kept Nagle: a response written in two sends
# then waited for wrk's delayed ACK (~40 ms), capping each connection at ~25 req/s. Patched
# here, before the worker accepts anything (its transports look the function up at each accept).
asyncio.base_events._set_nodelay = _set_nodelay


async def _lifespan(receive, send):
    global _pool
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _pool = await asyncpg.create_pool(os.environ["PG_DSN"], min_size=4, max_size=4)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    path = scope["path"]
    status = 200
    if path == "/ping":
        body = b"pong\n"
    elif path.startswith("/invoices/") and path[10:].isdigit():
        row = await _pool.fetchrow("SELECT id, amount FROM invoices WHERE id = $1", int(path[10:]))
        body = f"{row[0]} {row[1]}\n".encode() if row else b"none\n"
    else:
        status, body = 404, b"not found\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
