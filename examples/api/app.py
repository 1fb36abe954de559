"""A plain ASGI application (no web framework needed) over the services' RPC.

The API service hands every request the connections of the service that serves it
(``scope["state"]["aiosvc"]``, an :class:`aiosvc.connections.Connections`): RPC clients on
the service's own broker connection and its service group. No global state, no connection
of the app's own, so any number of API workers can serve it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiosvc
from aiosvc.connections import Connections

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

VOLUME = re.compile(r"^/volumes/(?P<volume_id>[\w.-]+)$")
NO_VALID_HOST = "examples.scheduler.manager.NoValidHost"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    connections: Connections = scope["state"]["aiosvc"]
    method, path = scope["method"], scope["path"]
    try:
        if method == "POST" and path == "/volumes":
            status, body = await create_volume(connections, await _json_body(receive))
        elif method == "GET" and (match := VOLUME.match(path)):
            status, body = await show_volume(connections, match["volume_id"])
        elif method == "GET" and path == "/services":
            status, body = 200, [r.to_dict() for r in await connections.servicegroup.list()]
        else:
            status, body = 404, {"error": f"no route for {method} {path}"}
    except ValueError as exc:
        status, body = 400, {"error": str(exc)}
    except aiosvc.MessagingTimeout:
        status, body = 504, {"error": "the services did not answer in time"}
    await _respond(send, status, body)


async def create_volume(connections: Connections, body: Any) -> tuple[int, Any]:
    """Ask the scheduler to place the volume: 202 with the host it chose."""
    if not isinstance(body, dict) or not isinstance(body.get("size_gb"), int):
        raise ValueError('the body must be a JSON object like {"size_gb": 1}')
    volume_id = str(body.get("volume_id") or uuid.uuid4())
    scheduler = connections.rpc_client("scheduler")
    try:
        placed = await scheduler.call(
            None, "create_volume", volume_id=volume_id, size_gb=body["size_gb"]
        )
    except aiosvc.RemoteError as exc:
        if exc.exc_type == NO_VALID_HOST:
            return 507, {"error": exc.value}
        raise
    return 202, {**placed, "status": "creating"}


async def show_volume(connections: Connections, volume_id: str) -> tuple[int, Any]:
    """Look for the volume on every volume host that is up."""
    volume = connections.rpc_client("volume", version="1.1")
    for record in await connections.servicegroup.list(binary="aiosvc-volume"):
        if record.is_up:
            for found in await volume.prepare(server=record.host).call(None, "list_volumes"):
                if found.get("id") == volume_id:
                    return 200, {**found, "host": record.host}
    return 404, {"error": f"no volume {volume_id}"}


async def _json_body(receive: Receive) -> Any:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    try:
        return json.loads(b"".join(chunks) or b"null")
    except ValueError:
        raise ValueError("the body is not JSON") from None


async def _respond(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
