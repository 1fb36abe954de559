"""A plain ASGI application that subprocess tests serve with ``--api tests.webapp:app``, and
the small HTTP clients the tests call it with.

Routes (all ``GET``, answering JSON):

* ``/pid``: this process's pid; ``?block=S`` first holds the event loop for S seconds, so
  the other workers of a shared port take the next connections.
* ``/echo?topic=T&value=V``: calls ``echo(value=V)`` on topic T through the service's own
  connections (``scope["state"]["aiosvc"]``), and says which pid answered.
* ``/lifespan``: whether the lifespan startup was handed the service's connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from aiosvc.connections import Connections

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_lifespan_saw: dict[str, Any] = {}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    connections: Connections = scope["state"]["aiosvc"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    status, body = 200, {"pid": os.getpid()}
    if scope["path"] == "/pid":
        if "block" in query:
            # Holds this worker's loop on purpose: the other workers accept meanwhile.
            time.sleep(float(query["block"]))  # noqa: ASYNC251
    elif scope["path"] == "/echo":
        client = connections.rpc_client(query["topic"])
        body["echo"] = await client.call(None, "echo", value=query["value"])
    elif scope["path"] == "/lifespan":
        body["connections"] = _lifespan_saw.get("connections") is connections
    else:
        status, body = 404, {"error": f"no route {scope['path']}"}
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _lifespan_saw["connections"] = scope["state"]["aiosvc"]
            log.info("webapp: lifespan startup, with the service's connections")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- clients


def get_json(url: str, timeout: float = 10.0) -> Any:
    """``GET url`` from another process (blocking): the JSON body of a 200 answer."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def try_get_json(url: str, timeout: float = 10.0) -> Any | None:
    """Like :func:`get_json`, but None when the connection fails or is cut."""
    try:
        return get_json(url, timeout)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


async def request(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """``GET path`` on the event loop (for a server in this process): (status, body).

    Raises:
        ConnectionError: the connection was refused, or closed before an answer.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        # HTTP/1.0: the body ends where the connection does, never chunked.
        writer.write(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError(f"GET {path}: the connection closed without an answer")
    return int(head.split()[1]), body
