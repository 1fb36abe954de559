"""Small helpers for asyncio tasks that more than one layer needs.

* :func:`cancel_requested`: tell a real cancellation of the current task from a stray
  ``CancelledError`` raised by something it awaited.
* :func:`unwrap_group`: the single error inside nested exception groups, so users see the
  real cause of a failure in a task group.
* :func:`as_async`: a callable that runs a plain ``def`` in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

import anyio.to_thread

__all__ = ["as_async", "cancel_requested", "unwrap_group"]

P = ParamSpec("P")


def cancel_requested() -> bool:
    """Whether the current task is being cancelled (as opposed to a stray CancelledError)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return True
    return task is None or task.cancelling() > 0


def unwrap_group(exc: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def as_async(func: Callable[P, Any]) -> Callable[P, Awaitable[Any]]:
    """``func`` if it is a coroutine function; else a coroutine function that runs it in a
    worker thread, so a blocking ``def`` never stalls the event loop."""
    if inspect.iscoroutinefunction(func):
        return func

    @functools.wraps(func)
    async def in_thread(*args: P.args, **kwargs: P.kwargs) -> Any:
        return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))

    return in_thread
