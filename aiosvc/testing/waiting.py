"""Waiting, with a deadline, for a condition (:func:`wait_until`) or for casts (:func:`handled`).

A cast returns once the broker has the message, before any service ran it. Instead of
sleeping, wrap the cast in :func:`handled`::

    async with handled(service):
        await client.cast(None, "delete_volume", volume_id="v1")
    # delete_volume has run (and its message was acknowledged)
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from ..exceptions import ServiceError
from ..rpc.server import RPCServer
from ..service import Service

__all__ = ["handled", "wait_until"]


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float = 5.0,
    interval: float = 0.01,
) -> None:
    """Return as soon as ``predicate()`` is true; fail after ``timeout`` seconds.

    For conditions no event signals (a counter in a manager, a queue's length in the
    broker). Raises ``TimeoutError`` naming the predicate when it never became true.
    """
    with anyio.move_on_after(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(interval)
    raise TimeoutError(
        f"{getattr(predicate, '__name__', predicate)!r} still false after {timeout}s"
    )


def _rpc_server(service: Service) -> RPCServer:
    if service.rpc_server is None:
        raise ServiceError(f"{service!r} is not started: it handles no messages")
    return service.rpc_server


@contextlib.asynccontextmanager
async def handled(*services: Service, count: int = 1, timeout: float = 5.0) -> AsyncIterator[None]:
    """Wait, when the block ends, until ``services`` have handled ``count`` more messages.

    The count is taken when the block begins, so a message handled before the test gets
    to wait is counted all the same. A message counts once its method has run (or
    raised) and it was acknowledged; a call's reply has been sent by then. With several
    services (a fanout cast, say) their messages add up. The wait is skipped when the
    block raises.

    Raises:
        TimeoutError: fewer than ``count`` messages handled within ``timeout`` seconds.
        ServiceError: a service is not started.
        TypeError: no service given.
    """
    if not services:
        raise TypeError("handled() needs the service(s) that should handle the message")
    servers = [_rpc_server(service) for service in services]

    def total() -> int:
        return sum(server.handled for server in servers)

    target = total() + count

    def all_handled() -> bool:
        return total() >= target

    yield
    try:
        await wait_until(all_handled, timeout=timeout, interval=0.002)
    except TimeoutError:
        names = ", ".join(service.binary for service in services)
        done = total() - target + count
        raise TimeoutError(
            f"{names} handled {done} of {count} message(s) within {timeout}s"
        ) from None
