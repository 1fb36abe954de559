"""``FakeClock``: time that moves only when a test says so.

Give it to ``Service.create(..., clock=clock)`` (or ``await aiosvc_service(Manager,
clock=aiosvc_clock)``): the manager's periodic tasks and the service's state reports then
wait on it, and ``await clock.advance(60)`` runs everything that falls due in those 60
seconds, in order, at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["FakeClock", "wait_all_tasks_blocked"]


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
    """A clock that moves only when told; implements :class:`aiosvc.clock.Clock`.

    Give it to ``Service.create(..., clock=clock)`` or to a manager, ``VolumeManager(
    clock=clock)``: its periodic tasks and its service's state reports then run on it.
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
