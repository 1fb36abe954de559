"""Helpers for testing services built on aiosvc.

* :class:`FakeClock`: drive periodic tasks and state reports without waiting:
  ``await clock.advance(60)`` runs everything that falls due in those 60 seconds, in order.
* :func:`wait_until`: wait, with a deadline, for a condition no event signals.
* :func:`isolated_settings`: settings on a private in-memory broker and store, so tests
  never see each other's queues or records.
* The pytest plugin (:mod:`aiosvc.testing.plugin`, loaded automatically when aiosvc is
  installed) provides the ``aiosvc_settings``, ``aiosvc_clock`` and ``aiosvc_service``
  fixtures.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

from ..settings import Settings

__all__ = ["FakeClock", "isolated_settings", "wait_until"]


def _blocked(task: asyncio.Task[Any]) -> bool:
    waiter = task._fut_waiter  # type: ignore[attr-defined]
    return waiter is not None and not waiter.done()


async def wait_all_tasks_blocked() -> None:
    """Return once every other task waits on something: anyio's check, polled faster.

    anyio's asyncio version sleeps 0.1 s whenever a task can still run, and a task just
    woken by :meth:`FakeClock.advance` always can: 100 wake-ups would take 10 s or more.
    This one spins with ``sleep(0)`` first and falls back to anyio's after a while (a
    worker thread still running, say).
    """
    this = asyncio.current_task()
    for _ in range(1000):
        await asyncio.sleep(0)
        if all(task is this or _blocked(task) for task in asyncio.all_tasks()):
            return
    await anyio.wait_all_tasks_blocked()


class FakeClock:
    """A clock that moves only when told; implements :class:`aiosvc.periodic.Clock`.

    Give it to ``Service.create(..., clock=clock)`` or set ``manager.periodic.clock``.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), event))
        await event.wait()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of fake time (for task bodies that should take a while)."""
        await self.sleep_until(self._now + seconds)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline, in order.

        After each wake-up it waits until every task is blocked again, so what a woken
        task does (including sleeping again within the window) happens before time moves on.
        Work a task hands to a worker thread (a ``def`` periodic task, say) counts as
        blocked: wait for its effect with :func:`wait_until`.
        """
        if seconds < 0:
            raise ValueError("a clock cannot go back")
        target = self._now + seconds
        await wait_all_tasks_blocked()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            event.set()
            await wait_all_tasks_blocked()
        self._now = target
        await wait_all_tasks_blocked()


def isolated_settings(**overrides: Any) -> Settings:
    """Settings on a broker and store of their own, with test-friendly timings.

    No fuzzy delay on first runs; a short graceful timeout. ``overrides`` win.
    """
    name = f"test-{uuid.uuid4().hex[:12]}"
    values: dict[str, Any] = {
        "transport_url": f"memory://{name}",
        "database_url": f"memory://{name}",
        "host": "test-host",
        "periodic_fuzzy_delay": 0,
        "graceful_shutdown_timeout": 5,
        "rpc_response_timeout": 5,
    }
    values.update(overrides)
    return Settings.load(**values)


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
