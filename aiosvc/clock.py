"""Where time comes from: :class:`Clock`, and the real one, :class:`MonotonicClock`.

Everything that schedules (periodic tasks, state reports) reads the time and waits through
a clock it is given, never through a module-level function, so a test hands the same
:class:`aiosvc.testing.FakeClock` to a manager and its service and moves time itself.
"""

from __future__ import annotations

from typing import Protocol

import anyio

__all__ = ["Clock", "MonotonicClock"]


class Clock(Protocol):
    """The time source of schedules; a fake one drives them in tests."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``."""
        ...


class MonotonicClock:
    """The event loop's monotonic clock (the default)."""

    def now(self) -> float:
        return anyio.current_time()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)
